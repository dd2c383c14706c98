"""The uploader: replays a run's local store to a Simvue server, live or afterwards.

The store is the source of truth; uploading is a replay of it, the same code live (a thread next
to the aggregator) and afterwards (``simvue-hpc sync``). The replay runs three streams, each with
its own cursor in ``upload.json`` beside the records:

* ``run``: every record that is not a metric or an event, in order: folder, run creation,
  updates, files, alerts, and last the final status, which waits until the other two streams have
  passed it (so a run the server shows ``completed`` has all its data);
* ``metrics`` and ``events``: batched, at most one POST per second each, within the size limits.

A cursor moves only after the server accepted what lies before it, and is saved at once
(atomically), so a replay after a crash or a network outage resumes where it stopped. The one gap
is a crash between a POST's answer and the cursor's save: that batch is sent again.

The number of requests per second depends on the rates above and the heartbeat, never on the
number of ranks: the aggregator has already reduced the ranks' values into the store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from .config import ServerSettings
from .durable import PRIVATE_FILE_MODE, atomic_write_json, lock_file
from .errors import ServerError, ServerUnavailable, StoreError, ValidationError
from .server import RetryPolicy, SimvueClient, format_timestamp
from .store import FILES_DIR, RECORDS_NAME, Record, RecordType, read_records

log = logging.getLogger(__name__)

STATE_NAME = "upload.json"
LOCK_NAME = "upload.lock"
MAX_RECORDS_PER_POST = 16_000
MAX_BYTES_PER_POST = 1_000_000
POST_INTERVAL = 1.0  # seconds between two POSTs of one kind
SCAN_BYTES = 8 << 20  # records read per round, so one round stays short
FINAL_STATUSES = ("completed", "failed", "terminated", "lost")


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


@dataclass
class _Batch:
    """Server records built from store records, and where the cursor goes once they are accepted."""

    items: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0
    cursor: list[int] | None = None


class Uploader:
    """One run's replay. :meth:`poll` does one round of work; call it until it returns True."""

    def __init__(
        self,
        run_dir: Path,
        client: SimvueClient,
        settings: ServerSettings,
        live: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.client = client
        self.settings = settings
        self.live = live
        self._clock = clock
        self._records = self.run_dir / RECORDS_NAME
        self._state_path = self.run_dir / STATE_NAME
        self.state = UploadState.load(self._state_path)
        if self.state.server and self.state.server != settings.api_url:
            raise StoreError(
                f"run {self.run_dir.name} was uploaded to {self.state.server}, not {settings.api_url}; "
                f"remove {self._state_path} to upload it again elsewhere"
            )
        self.state.server = settings.api_url or ""
        self._run: dict[str, Any] = {}
        self._scan_end: int | None = None
        self._load_run_record()
        self._last_post = {"metrics": -1e18, "events": -1e18}
        self._next_heartbeat = clock()
        self.abort_requested = False
        self.requests = 0

    # ------------------------------------------------------------------------------------------ driving
    def poll(self) -> bool:
        """Upload what can be uploaded now; True once the whole run, final status included, is up."""
        if self.state.done:
            return True
        now = self._clock()
        scan = self._scan()
        self._run_stream(scan["run"])
        if self.state.run_id is not None:
            self._post("metrics", scan["metrics"], now)
            self._post("events", scan["events"], now)
            if self.live and now >= self._next_heartbeat:
                self.client.heartbeat(self.state.run_id)
                self.abort_requested = self.client.abort_requested(self.state.run_id)
                self.requests += 2
                self._next_heartbeat = now + self.settings.heartbeat_interval
            self._finish_if_ready(scan)
        return self.state.done

    def pending_bytes(self) -> int:
        """Bytes of records not yet uploaded by the slowest stream (for progress reports)."""
        size = self._records.stat().st_size
        return 0 if self.state.done else max(0, size - min(self._cursor(k)[0] for k in ("run", "metrics", "events")))

    # ------------------------------------------------------------------------------------------ reading
    def _cursor(self, kind: str) -> list[int]:
        return self.state.cursors.setdefault(kind, [0, 0])

    def _scan(self) -> dict[str, list[Record]]:
        """New records per stream, from the earliest cursor, at most about SCAN_BYTES of them."""
        start = min(self._cursor(k)[0] for k in ("run", "metrics", "events"))
        out: dict[str, list[Record]] = {"run": [], "metrics": [], "events": []}
        self._scan_end = None
        for record in read_records(self._records, start) if start else read_records(self._records):
            kind = _kind(record.type)
            if record.offset >= self._cursor(kind)[0]:
                out[kind].append(record)
            if self._scan_end is None:
                start = record.offset
            self._scan_end = record.end
            if record.end - start > SCAN_BYTES:
                break
        return out

    def _load_run_record(self) -> None:
        """The RUN record (the run's start and job), needed by every stream, also on a resumed replay."""
        for record in read_records(self._records):
            if record.type == RecordType.RUN:
                self._run = dict(record.payload)
            return

    # ------------------------------------------------------------------------------------------ run stream
    def _run_stream(self, records: list[Record]) -> None:
        for record in records:
            if record.type == RecordType.END:
                return  # sent by _finish_if_ready once metrics and events have passed it
            self._apply(record)
            self._advance("run", record.end)

    def _apply(self, record: Record) -> None:
        p = record.payload
        if record.type == RecordType.RUN:
            self._run = dict(p)
            if self.state.run_id is None:
                self._create_run(p)
        elif record.type == RecordType.RUN_UPDATE:
            body = {k: p[k] for k in ("name", "metadata", "tags", "description") if k in p}
            if body and self.state.run_id:
                self._call(self.client.update_run, self.state.run_id, body)
        elif record.type == RecordType.FOLDER:
            folder_id = self._folder(p["path"])
            details = {k: p[k] for k in ("metadata", "tags", "description") if p.get(k) is not None}
            if details:
                self._call(self.client.update_folder, folder_id, **details)
        elif record.type == RecordType.FILE:
            self._file(p)
        elif record.type == RecordType.ALERT:
            alert_id = self._call(self.client.create_alert, dict(p))
            if p.get("source") == "user":
                self.state.alert_ids[str(p["name"])] = alert_id
            if alert_id not in self.state.alerts:
                self.state.alerts.append(alert_id)
                self._call(self.client.update_run, self.state.run_id, {"alerts": list(self.state.alerts)})
        elif record.type == RecordType.ALERT_STATE:
            # Metric and event alerts are evaluated by the server too, on the same reduced values;
            # only a user alert's state comes from the run.
            alert_id = self.state.alert_ids.get(str(p.get("name")))
            if alert_id is not None:
                self._call(self.client.set_alert_status, alert_id, self.state.run_id, p["status"])
        elif record.type == RecordType.RANK:
            host, rank = p.get("host"), p.get("rank")
            if host and host not in self.state.hosts:
                self.state.hosts.append(host)
            if isinstance(rank, int) and rank not in self.state.ranks and p.get("state") == "joined":
                self.state.ranks.append(rank)
        # STATUS records of single ranks are kept in the store; the run's status is sent with END.

    def _create_run(self, p: dict[str, Any]) -> None:
        self._folder(p.get("folder") or "/")
        job = dict(p.get("job") or {})
        body: dict[str, Any] = {
            "name": p.get("name"),
            "folder": p.get("folder") or "/",
            "status": "running",
            "description": p.get("description"),
            "tags": list(p.get("tags") or []),
            "metadata": {**(p.get("metadata") or {}), "simvue_hpc": _job_metadata(job)},
            "system": p.get("system"),
            # lost after three missed heartbeats, and never sooner than the official clients' 180 s
            "heartbeat_timeout": max(180, math.ceil(3 * self.settings.heartbeat_interval)) if self.live else None,
            "alerts": [],
            "notifications": {"state": "none"},
        }
        if p.get("created_us"):
            body["started"] = format_timestamp(int(p["created_us"]))
        self.state.run_id = self._call(self.client.create_run, body)
        self._save()

    def _folder(self, path: str) -> str:
        folder_id = self.state.folders.get(path)
        if folder_id is None:
            folder_id = self.state.folders[path] = self._call(self.client.create_folder, path)
            self._save()
        return folder_id

    def _file(self, p: dict[str, Any]) -> None:
        sha = p["sha256"]
        artifact_id = self.state.artifacts.get(sha)
        if artifact_id is None:
            answer = self._call(self.client.register_artifact, {
                "name": p["name"], "original_path": p.get("original_path"), "size": p["size"],
                "mime_type": p.get("mime_type") or "application/octet-stream", "checksum": sha,
                "metadata": {"rank": p.get("rank"), "host": p.get("host")},
            })  # fmt: skip
            artifact_id = answer["id"]
            if answer.get("url"):  # no url: the server already holds these bytes
                self._call(
                    self.client.upload_artifact, answer["url"], self.run_dir / FILES_DIR / sha, answer.get("fields")
                )
                self._call(self.client.mark_uploaded, artifact_id)
            self.state.artifacts[sha] = artifact_id
            self._save()
        self._call(self.client.attach_artifact, self.state.run_id, artifact_id, p["category"])

    def _finish_if_ready(self, scan: dict[str, list[Record]]) -> None:
        ends = [r for r in scan["run"] if r.type == RecordType.END]
        if not ends:
            return
        end = ends[0]
        if any(self._cursor(k)[0] < end.offset for k in ("metrics", "events")):
            return
        p = end.payload
        status = p.get("status") if p.get("status") in FINAL_STATUSES else "completed"
        job = _job_metadata(dict(self._run.get("job") or {}))
        job.update(hosts=sorted(self.state.hosts), ranks_joined=len(self.state.ranks),
                   missing_ranks=p.get("missing_ranks", []), lost_ranks=p.get("lost_ranks", []),
                   counters=p.get("counters", {}))  # fmt: skip
        body = {"status": status, "endtime": format_timestamp(int(p["time_us"])), "metadata": {"simvue_hpc": job}}
        self._call(self.client.update_run, self.state.run_id, body)
        self._advance("run", end.end)
        self.state.done = True
        self._save()

    # ------------------------------------------------------------------------------------------ metrics, events
    def _post(self, kind: str, records: list[Record], now: float) -> None:
        batch = self._batch(kind, records)
        if batch.cursor is None or (batch.items and now - self._last_post[kind] < POST_INTERVAL):
            return
        if batch.items:
            post = self.client.post_metrics if kind == "metrics" else self.client.post_events
            self._call(post, self.state.run_id, batch.items)
            self._last_post[kind] = now
        self.state.cursors[kind] = batch.cursor
        self._save()

    def _batch(self, kind: str, records: list[Record]) -> _Batch:
        """Up to the size limits, from the stream's cursor; a store record may be split."""
        batch = _Batch()
        offset, done = self._cursor(kind)
        convert = self._metric_items if kind == "metrics" else self._event_items
        for record in records:
            items = convert(record)
            skip = done if record.offset == offset else 0
            for i in range(skip, len(items)):
                item = items[i]
                size = _approx_size(item)
                if batch.items and (len(batch.items) >= MAX_RECORDS_PER_POST or batch.size + size > MAX_BYTES_PER_POST):
                    batch.cursor = [record.offset, i]
                    return batch
                batch.items.append(item)
                batch.size += size
            batch.cursor = [record.end, 0]
        if batch.cursor is None and self._scan_end is not None and self._scan_end > offset:
            batch.cursor = [self._scan_end, 0]  # nothing of this kind before the scan's end: skip ahead
        return batch

    def _metric_items(self, record: Record) -> list[dict[str, Any]]:
        """Server metric records: one per (step, time) of a store record, with every name logged then."""
        p = record.payload
        step, t_us, value, name_id = p["step"], p["time_us"], p["value"], p["name_id"]
        if len(step) == 0:
            return []
        names = p["names"]
        start_us = int(self._run.get("created_us") or t_us.min())
        order = np.lexsort((t_us, step))
        s, t, v, n = step[order], t_us[order], value[order], name_id[order]
        cut = np.flatnonzero((s[1:] != s[:-1]) | (t[1:] != t[:-1])) + 1
        items = []
        for lo, hi in zip(np.r_[0, cut], np.r_[cut, len(s)], strict=True):
            t0 = int(t[lo])
            items.append({
                "values": {names[int(i)]: float(x) for i, x in zip(n[lo:hi], v[lo:hi], strict=True)},
                "time": (t0 - start_us) / 1e6,
                "timestamp": format_timestamp(t0),
                "step": int(s[lo]),
            })  # fmt: skip
        return items

    def _event_items(self, record: Record) -> list[dict[str, Any]]:
        p = record.payload
        where = f"[rank {p['rank']} on {p['host']}] " if p.get("rank") is not None else ""
        level = p.get("level") or "info"
        return [
            {"message": f"{where}{p['message']}", "timestamp": format_timestamp(int(p["time_us"])), "log_level": level}
        ]

    # ------------------------------------------------------------------------------------------ helpers
    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.requests += 1
        return method(*args, **kwargs)

    def _advance(self, kind: str, end: int) -> None:
        self.state.cursors[kind] = [end, 0]
        self._save()

    def _save(self) -> None:
        self.state.save(self._state_path)


def _kind(rtype: RecordType) -> str:
    if rtype == RecordType.METRICS:
        return "metrics"
    if rtype == RecordType.EVENT:
        return "events"
    return "run"


def _job_metadata(job: dict[str, Any]) -> dict[str, Any]:
    keys = ("ranks", "launcher", "host", "slurm_job_id", "slurm_nodelist", "aggregator", "transport")
    return {k: job.get(k) for k in keys if job.get(k) is not None}


def _approx_size(item: dict[str, Any]) -> int:
    """msgpack size of one metric or event record, closely enough for the 1 MB limit."""
    values = item.get("values")
    if values is not None:
        return 64 + sum(len(k) + 10 for k in values)
    return 64 + len(item.get("message", ""))


# ---------------------------------------------------------------------------------------------- locking
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


# ---------------------------------------------------------------------------------------------- live upload
class LiveUpload:
    """The uploader as a thread beside the aggregator, while the run goes on."""

    LIVE_POLICY = RetryPolicy(total=2, backoff_max=5.0)

    def __init__(self, run_dir: Path, settings: ServerSettings) -> None:
        self._run_dir = Path(run_dir)
        self._settings = settings
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock_cm = upload_lock(self._run_dir)
        self._lock_cm.__enter__()
        self._uploader = Uploader(self._run_dir, SimvueClient(settings, policy=self.LIVE_POLICY), settings, live=True)
        self._thread = threading.Thread(target=self._main, name="simvue_hpc-upload", daemon=True)
        self._thread.start()

    @property
    def abort_requested(self) -> bool:
        return self._uploader.abort_requested

    def _main(self) -> None:
        delay = 0.0
        try:
            while not self._stop.wait(delay):
                try:
                    if self._uploader.poll():
                        self._done.set()
                        return
                    delay = 0.2
                except ServerUnavailable as exc:
                    delay = min(max(delay * 2, 1.0), 30.0)
                    log.warning("upload paused, the server is unavailable (%s); retrying in %.0f s", exc, delay)
                except (ValidationError, ServerError, StoreError) as exc:
                    log.error("upload of run %s stopped: %s; it stays in the local store", self._run_dir.name, exc)
                    return
        finally:
            self._uploader.client.close()

    def finish(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the upload to complete; True if it did."""
        self._thread.join(timeout)  # the thread ends when the upload is complete, or cannot go on
        done = self._done.is_set()
        self._stop.set()
        self._thread.join(5)
        self._lock_cm.__exit__(None, None, None)
        if not done:
            log.warning(
                "run %s: the upload did not finish within %.0f s; the rest stays in the local store: "
                "run `simvue-hpc sync %s` to finish it",
                self._run_dir.name, timeout, self._run_dir.name,
            )  # fmt: skip
        return done
