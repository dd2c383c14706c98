"""What has reached the server, per run (``upload.json`` beside the records), and the lock that lets
only one uploader (live or ``sync``) work on a run at a time."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from ..durable import PRIVATE_FILE_MODE, atomic_write_json, lock_file
from ..errors import StoreError
from ..store import RECORDS_NAME

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
    # Exactly-once: a request that is not safe to repeat is noted here before it is sent, and cleared
    # once its answer came; a note left over (a lost answer, a crash) is reconciled with the server
    # before anything else is sent. {"kind": "run" | "metrics" | "events" | "dead", ...}
    pending: dict[str, Any] | None = None
    events_sent: int = 0  # events the server confirmed holding (the run's own and dead letters)
    # Items the server refused (a 4xx that sending again cannot change): skipped, each reported as
    # an event in the run and in sync's summary. {"what", "reason", "time_us"}
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    dead_posted: int = 0  # dead letters already posted as events
    alert_defs: dict[str, str] = field(default_factory=dict)  # alert name -> its definition as JSON
    int_metrics: dict[str, bool] = field(default_factory=dict)  # metric -> every value so far was whole
    last_status: dict[str, Any] | None = None  # the last final STATUS record: status, time_us, reason
    last_time_us: int = 0  # the latest time of any record seen
    closed_as: str | None = None  # the status set on a run that has no END (sync only)

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
def upload_lock(run_dir: Path, role: str = "an upload", wait: float = 0.0) -> Iterator[IO[str]]:
    """Only one uploader per run (live or sync). Waits up to ``wait`` seconds for another holder to let
    go, then raises :class:`StoreError` naming it. ``role`` is written in the lock file for that message."""
    path = Path(run_dir) / LOCK_NAME
    fh = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE), "r+")
    deadline = time.monotonic() + wait
    while not lock_file(fh, path):  # file systems without flock: proceed, uploads are still resumable
        if time.monotonic() >= deadline:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise StoreError(f"run {Path(run_dir).name} is being uploaded by {holder}")
        time.sleep(0.2)
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"{role}, pid {os.getpid()} on {os.uname().nodename}")
        fh.flush()
        yield fh
    finally:
        fh.close()  # releases the lock


def writer_alive(run_dir: Path) -> bool:
    """Whether a process still writes the run's records (its writer holds a lock on the log). On a file
    system without locks this cannot be told, and the answer is False."""
    try:
        fd = os.open(Path(run_dir) / RECORDS_NAME, os.O_RDONLY)
    except OSError:
        return False
    try:
        return not lock_file(fd, RECORDS_NAME)
    finally:
        os.close(fd)  # releases the lock if it was taken
