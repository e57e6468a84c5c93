"""``isovol view``: serve a local output over HTTP on 127.0.0.1 for neuroglancer and napari.

Browsers load a zarr image from another origin (neuroglancer's page) only with CORS headers, and zarr v3
reads the index at the end of each shard and then single chunks with byte-range requests (``Range: bytes=a-b``
and the suffix form ``bytes=-n``), so the standard library's file server is extended by exactly those two:
CORS headers on every answer (and the preflight ``OPTIONS``), and single byte ranges (206 / 416).  Files and
folders whose names start with a dot (the run bookkeeping in ``.isovol/``) are not served.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class ZarrRequestHandler(SimpleHTTPRequestHandler):
    """Static files of one folder with CORS and single byte ranges."""

    _remaining: int | None = None

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "Range")
        self.send_header("Access-Control-Expose-Headers", "Content-Range, Content-Length, Accept-Ranges")
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def do_OPTIONS(self) -> None:  # noqa: N802 - the name http.server dispatches to
        self.send_response(HTTPStatus.NO_CONTENT)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s " + format, self.address_string(), *args)

    def _hidden(self) -> bool:
        parts = unquote(urlsplit(self.path).path).split("/")
        return any(p.startswith(".") for p in parts if p)

    def send_head(self) -> Any:
        self._remaining = None  # set by a range answer, for copyfile
        if self._hidden():
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        header = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not header or not os.path.isfile(path):
            return super().send_head()
        return self._send_range(path, header)

    def _send_range(self, path: str, header: str) -> Any:
        size = os.path.getsize(path)
        m = _RANGE.match(header.strip())
        if m is None or (not m.group(1) and not m.group(2)):
            return self._unsatisfiable(size)
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:  # a suffix: the last n bytes
            start, end = max(size - int(m.group(2)), 0), size - 1
        if start >= size or end < start:
            return self._unsatisfiable(size)
        f = open(path, "rb")  # noqa: SIM115 - closed by copyfile's caller, as in http.server
        f.seek(start)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._remaining = end - start + 1
        return f

    def _unsatisfiable(self, size: int) -> None:
        self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
        self.send_header("Content-Range", f"bytes */{size}")
        self.send_header("Content-Length", "0")
        self.end_headers()
        return None

    def copyfile(self, source: Any, outputfile: Any) -> None:
        remaining = self._remaining
        if remaining is None:
            return super().copyfile(source, outputfile)
        self._remaining = None
        while remaining > 0:
            buf = source.read(min(remaining, 1 << 20))
            if not buf:
                break
            outputfile.write(buf)
            remaining -= len(buf)


def make_server(folder: str, port: int = 8000, host: str = HOST) -> ThreadingHTTPServer:
    """A server for ``folder`` on ``host:port`` (port 0: any free one), not yet serving."""
    handler = partial(ZarrRequestHandler, directory=folder)
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def viewer_lines(url: str, name: str) -> list[str]:
    """What to paste where: neuroglancer's source and the napari command for the served image."""
    return [
        f"serving {name} at {url}",
        f"neuroglancer: add a layer with source  zarr3://{url}",
        f"napari:       napari --plugin napari-ome-zarr {url}",
    ]


def open_napari(url: str) -> subprocess.Popen | None:
    """Start napari on the served image when it is installed; None (and a warning) when it is not."""
    exe = shutil.which("napari")
    if exe is None:
        log.warning("napari is not installed here; open the image with the command above where it is")
        return None
    return subprocess.Popen([exe, "--plugin", "napari-ome-zarr", url])
