"""Whole-file writes on a local disk: temp file, fsync, rename (or link, for a file that must not exist yet).
A reader sees the old file or the new one, never half of one, and a kill leaves at most a ``.tmp-*`` file
beside it."""

from __future__ import annotations

import errno
import os
import tempfile


def atomic_write(path: str, data: bytes) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def exclusive_write(path: str, data: bytes) -> bool:
    """Publish ``path`` whole, only if no file has that name yet: True if this call made it, False if one was
    there.  The bytes go to a temp file that is then hard-linked into place -- link(2) fails on an existing name,
    so of two concurrent callers exactly one wins, and a reader never sees half a file.  Where the filesystem has
    no hard links, an O_EXCL create is as exclusive (a reader may then see the file before it is whole)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:  # no hard links here (some network and FUSE filesystems)
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise
            return _create_excl(path, data)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _create_excl(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True
