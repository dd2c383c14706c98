"""Durable small files: one advisory lock helper and one atomic, private JSON write.

Everything the package keeps on disk beside a run's record log (the uploader's cursors, the
rendezvous file, lock files) goes through these two functions, so that each rule lives once:

* :func:`lock_file` takes an exclusive, non-blocking ``flock``. File systems that cannot lock
  (Lustre mounted without ``-o flock``, some NFS setups) are tolerated: the caller goes on
  unlocked, as the lock only guards against a second writer by mistake.
* :func:`atomic_write_json` replaces a file so that a reader sees the old or the new content,
  never a mix, and a crash of the machine loses neither: temporary file, fsync, rename, fsync of
  the directory. The file is created with mode 0600 (it may hold a secret).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
from pathlib import Path
from typing import IO, Any

__all__ = ["PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE", "atomic_write_json", "fsync_dir", "lock_file", "write_all"]

log = logging.getLogger(__name__)

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def lock_file(f: int | IO[Any], what: Path | str = "") -> bool:
    """Take an exclusive advisory lock on an open file, without waiting.

    Returns True when this process holds the lock (until the file is closed) or when the file
    system cannot lock at all (logged at debug level); False when another process holds it.
    """
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:  # e.g. Lustre mounted without flock: go on unlocked
        log.debug("cannot lock %s (%s); continuing without a lock", what or f, exc)
    return True


def write_all(fd: int, data: bytes | bytearray | memoryview) -> int:
    """``os.write`` until every byte is written; returns the count. An OSError leaves the bytes
    written before it in the file (the caller decides what to truncate)."""
    view = memoryview(data)
    total = len(view)
    while view:
        view = view[os.write(fd, view) :]
    return total


def fsync_dir(directory: Path | str) -> None:
    """fsync a directory, making a rename or a creation in it durable (where the file system allows)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on directories
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: Path | str, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as JSON: write a temporary file (mode 0600), fsync it, rename
    it over ``path``, fsync the directory. Raises OSError (the temporary file is removed) or
    TypeError/ValueError if obj is not JSON-serialisable (nothing is written)."""
    path = Path(path)
    data = json.dumps(obj).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
