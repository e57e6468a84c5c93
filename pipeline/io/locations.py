"""Where a URL really points, so that no spelling of one location lets a run write over what it reads.

``./a.ome.zarr/``, ``/abs/a.ome.zarr``, a symlink to it and ``a.ome.zarr/0`` are one folder, or one inside the
other; comparing the strings as typed let ``isovol upsample A B --overwrite`` delete its own input.  A local
location is resolved to its real path and the (st_dev, st_ino) of it and of each existing folder above it
(which also sees through bind mounts and case-insensitive names); an object-store location to its protocol,
normalised endpoint and normalised bucket/key.  Nothing here creates or removes anything.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import fsspec

from ..errors import InputError
from .readers import _split_h5
from .urls import is_local, local_path, strip_url

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Location:
    """A resolved location: ``store`` names the filesystem (``file``, or protocol + endpoint), ``path`` the
    normalised path on it; ``ids`` are the (st_dev, st_ino) of the path and each folder above it, nearest first
    (None where that does not exist yet; empty off a local disk)."""

    store: str
    path: str
    ids: tuple[tuple[int, int] | None, ...] = ()

    def same(self, other: Location) -> bool:
        if self.store != other.store:
            return False
        own = self.ids[0] if self.ids else None
        return self.path == other.path or (own is not None and bool(other.ids) and own == other.ids[0])

    def contains(self, other: Location) -> bool:
        """``other`` is this location or lies anywhere below it."""
        if self.store != other.store:
            return False
        if self.path == other.path or other.path.startswith(self.path.rstrip("/") + "/"):
            return True
        own = self.ids[0] if self.ids else None
        return own is not None and own in other.ids


def resolve(url: str, storage_options: dict[str, Any] | None = None) -> Location:
    """The location ``url`` names (an HDF5 ``file.h5:/dataset`` names its file)."""
    url = _split_h5(url)[0]
    if is_local(url):
        return _local(local_path(url))
    return _remote(url, dict(storage_options or {}))


def check_distinct(input_url: str, output_url: str, input_options: dict[str, Any] | None = None,
                   output_options: dict[str, Any] | None = None) -> None:
    """Refuse (InputError) an output that is the input, lies inside it, or contains it -- whatever the spelling;
    called before anything is created or removed."""
    source, target = resolve(input_url, input_options), resolve(output_url, output_options)
    shown_in, shown_out = strip_url(input_url), strip_url(output_url)
    if source.same(target):
        raise InputError(f"the output must not be the input: {shown_out} is the same location as {shown_in}")
    if target.contains(source):
        raise InputError(f"the output must not contain the input: {shown_in} lies inside {shown_out}")
    if source.contains(target):
        raise InputError(f"the output must not lie inside the input: {shown_out} lies inside {shown_in}")


def _local(path: str) -> Location:
    real = os.path.realpath(path)
    ids: list[tuple[int, int] | None] = []
    head = real
    while True:
        try:
            st = os.stat(head)
            ids.append((st.st_dev, st.st_ino))
        except OSError:
            ids.append(None)
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    return Location("file", real, tuple(ids))


def _remote(url: str, options: dict[str, Any]) -> Location:
    url = re.sub(r"://[^/@]*@", "://", url)  # user:password@ never takes part (nor appears anywhere)
    protocol, rest = url.split("://", 1)
    protocol = protocol.lower()
    try:
        cls = fsspec.get_filesystem_class(protocol)
        names = (cls.protocol,) if isinstance(cls.protocol, str) else tuple(cls.protocol)
        protocol = names[0] if names else protocol  # s3a -> s3, gcs -> gs
        path = cls._strip_protocol(url)
    except (ValueError, ImportError, AttributeError):
        path = rest
    path = posixpath.normpath("/" + str(path).split("?", 1)[0]).lstrip("/")
    return Location(f"{protocol}|{_endpoint(protocol, options)}", path)


def _endpoint(protocol: str, options: dict[str, Any]) -> str:
    """The store's endpoint, normalised (scheme and host lower case, default port, no credentials, no trailing
    slash); an unset one is the environment's (S3) or the protocol's default ("")."""
    client = options.get("client_kwargs") if isinstance(options.get("client_kwargs"), dict) else {}
    value = options.get("endpoint_url") or client.get("endpoint_url")
    if not value and protocol == "s3":
        value = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not value:
        return ""
    parts = urlsplit(str(value).strip())
    scheme = (parts.scheme or "https").lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        port = None
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}{parts.path.rstrip('/')}"
