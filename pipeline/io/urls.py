"""Locations: local paths and fsspec URLs, storage options, and keeping credentials out of messages."""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import fsspec

from ..errors import InputError

_SECRET_KEYS = re.compile(r"(secret|token|password|key|credential|session)", re.IGNORECASE)
#: every storage-option value this process was given, masked in every message (a secret may sit anywhere, e.g.
#: pasted into endpoint_url); values shorter than this are too common to mask without garbling messages
_KNOWN: set[str] = set()
_MIN_MASKED = 4
_PLAIN_ENDPOINT = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@?#\s]+/?$", re.IGNORECASE)  # scheme://host[:port]
_USERINFO = re.compile(r"://[^/@\s\"']*@")


def remember_secrets(options: Any) -> None:
    """Note every string value of storage ``options`` (at any depth) to be masked in messages and logs: all of them,
    not only secret-looking keys.  A plain endpoint (``scheme://host:port``) stays readable; an endpoint with
    ``user:password@`` has that part masked wherever it shows."""
    if isinstance(options, dict):
        for v in options.values():
            remember_secrets(v)
    elif isinstance(options, (list, tuple)):
        for v in options:
            remember_secrets(v)
    elif isinstance(options, str) and len(options) >= _MIN_MASKED and not _PLAIN_ENDPOINT.match(options):
        _KNOWN.add(options)
        match = re.match(r"^[a-z][a-z0-9+.-]*://([^/@\s]*)@", options, re.IGNORECASE)
        if match and len(match.group(1)) >= _MIN_MASKED:
            _KNOWN.add(match.group(1))  # user:password, as a client may print it apart from the URL
            _KNOWN.update(p for p in match.group(1).split(":") if len(p) >= _MIN_MASKED)


def mask_secrets(text: str) -> str:
    """``text`` with every remembered storage-option value and every URL's user:password replaced by ***."""
    for value in sorted(_KNOWN, key=len, reverse=True):
        if value in text:
            text = text.replace(value, "***")
    return _USERINFO.sub("://***@", text)


def parse_storage_options(text: str | None) -> dict[str, Any]:
    """Parse ``--storage-options`` JSON into a dict (never echoing its content: it may hold secrets)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--storage-options is not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(value, dict):
        raise InputError("--storage-options must be a JSON object")
    remember_secrets(value)
    return value


def redact_options(options: dict[str, Any]) -> dict[str, Any]:
    """A copy of storage options safe for logs and metadata: secret-looking values replaced."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        if isinstance(v, dict):
            out[k] = redact_options(v)
        elif _SECRET_KEYS.search(str(k)):
            out[k] = "***"
        else:
            out[k] = v
    return out


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return os.path.abspath(url[len("file://") :] if url.startswith("file://") else url)


def strip_url(url: str) -> str:
    """The URL without a trailing slash and without user:password@ parts."""
    url = re.sub(r"://[^/@]*@", "://", url)
    return url.rstrip("/") or url


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and path for a URL (local paths included)."""
    if is_local(url):
        return fsspec.filesystem("file"), local_path(url)
    remember_secrets(storage_options)
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ValueError, ImportError) as exc:
        raise InputError(f"cannot open {strip_url(url)}: {describe_error(exc)}") from None
    return fs, path


def describe_error(exc: BaseException, storage_options: dict[str, Any] | None = None) -> str:
    """A one-line reason for a storage error, free of credentials (and of every storage-option value given to this
    process, ``storage_options`` included)."""
    remember_secrets(storage_options)
    text = mask_secrets(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__
    name = type(exc).__name__
    lowered = (name + " " + text).lower()
    if any(s in lowered for s in ("accessdenied", "access denied", "invalidaccesskeyid", "signaturedoesnotmatch",
                                  "forbidden", "403", "permission", "credentials")):
        return "access denied (check the credentials in the storage options or the environment)"
    if isinstance(exc, FileNotFoundError) or "nosuchbucket" in lowered or "not found" in lowered:
        return "not found"
    text = re.sub(r"://[^/@\s]*@", "://", text)  # user:password@ in a quoted URL (masked as *** above)
    # NAME=value, NAME: value, "NAME": "value" and NAMEvalue forms all lose the value
    return re.sub(r"""(?i)(secret|token|password)([\w-]*['"]?\s*[:=]\s*['"]?[^\s,;'"]*|[^,;\s]*)""", r"\1=***", text)


class MaskSecrets(logging.Filter):
    """A handler filter that masks remembered storage-option values in every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def mask_logs(*loggers: str) -> None:
    """Put MaskSecrets on every handler of ``loggers`` (default: the root and distributed's), once each."""
    for name in loggers or ("", "distributed"):
        for handler in logging.getLogger(name or None).handlers:
            if not any(isinstance(f, MaskSecrets) for f in handler.filters):
                handler.addFilter(MaskSecrets())
