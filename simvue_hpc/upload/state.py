"""What has reached the server, per run (``upload.json`` beside the records), and the lock that lets
only one uploader (live or ``sync``) work on a run at a time."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from ..durable import PRIVATE_FILE_MODE, atomic_write_json, lock_file
from ..errors import StoreError

log = logging.getLogger(__name__)

STATE_NAME = "upload.json"
LOCK_NAME = "upload.lock"


@dataclass
class UploadState:
    """What has reached the server; saved as ``upload.json`` next to the run's records."""

    server: str = ""
    run_id: str | None = None
    cursors: dict[str, list[int]] = field(default_factory=dict)  # kind -> [offset, items done in that record]
    folders: dict[str, str] = field(default_factory=dict)  # path -> folder id
    artifacts: dict[str, str] = field(default_factory=dict)  # sha256 -> artifact id
    alerts: list[str] = field(default_factory=list)  # alert ids attached to the run
    alert_ids: dict[str, str] = field(default_factory=dict)  # user alert name -> id, for their states
    hosts: list[str] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    done: bool = False

    @classmethod
    def load(cls, path: Path) -> UploadState:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path} is unreadable: {exc}") from None
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))


@contextlib.contextmanager
def upload_lock(run_dir: Path) -> Iterator[IO[str]]:
    """Only one uploader per run (live or sync): StoreError when another holds it."""
    path = Path(run_dir) / LOCK_NAME
    fh = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE), "r+")
    if not lock_file(fh, path):  # file systems without flock: proceed, uploads are still resumable
        holder = fh.read().strip() or "another process"
        fh.close()
        raise StoreError(f"run {Path(run_dir).name} is being uploaded by {holder}")
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {os.uname().nodename}")
        fh.flush()
        yield fh
    finally:
        fh.close()  # releases the lock
