"""Locations: local paths and fsspec URLs, storage options, and keeping credentials out of messages."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import fsspec

from ..errors import InputError

_SECRET_KEYS = re.compile(r"(secret|token|password|key|credential|session)", re.IGNORECASE)


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
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ValueError, ImportError) as exc:
        raise InputError(f"cannot open {strip_url(url)}: {describe_error(exc)}") from None
    return fs, path


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a storage error, free of credentials."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    name = type(exc).__name__
    lowered = (name + " " + text).lower()
    if any(s in lowered for s in ("accessdenied", "access denied", "invalidaccesskeyid", "signaturedoesnotmatch",
                                  "forbidden", "403", "permission", "credentials")):
        return "access denied (check the credentials in the storage options or the environment)"
    if isinstance(exc, FileNotFoundError) or "nosuchbucket" in lowered or "not found" in lowered:
        return "not found"
    text = re.sub(r"://[^/@\s]*@", "://", text)  # user:password@ in a quoted URL
    # NAME=value, NAME: value, "NAME": "value" and NAMEvalue forms all lose the value
    return re.sub(r"""(?i)(secret|token|password)([\w-]*['"]?\s*[:=]\s*['"]?[^\s,;'"]*|[^,;\s]*)""", r"\1=***", text)
