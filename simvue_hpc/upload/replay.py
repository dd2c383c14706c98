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

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ServerSettings
from ..errors import StoreError
from ..records import Record, RecordType
from ..server import SimvueClient, format_timestamp
from ..store import FILES_DIR, RECORDS_NAME, read_records
from .items import (
    FINAL_STATUSES,
    MAX_BYTES_PER_POST,
    MAX_RECORDS_PER_POST,
    approx_size,
    event_items,
    job_metadata,
    kind_of,
    metric_items,
)
from .state import STATE_NAME, UploadState

log = logging.getLogger(__name__)

POST_INTERVAL = 1.0  # seconds between two POSTs of one kind
SCAN_BYTES = 8 << 20  # records read per round, so one round stays short


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
            kind = kind_of(record.type)
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
            "metadata": {**(p.get("metadata") or {}), "simvue_hpc": job_metadata(job)},
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
            answer = self._call(
                self.client.register_artifact,
                {
                    "name": p["name"],
                    "original_path": p.get("original_path"),
                    "size": p["size"],
                    "mime_type": p.get("mime_type") or "application/octet-stream",
                    "checksum": sha,
                    "metadata": {"rank": p.get("rank"), "host": p.get("host")},
                },
            )
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
        job = job_metadata(dict(self._run.get("job") or {}))
        job.update(
            hosts=sorted(self.state.hosts),
            ranks_joined=len(self.state.ranks),
            missing_ranks=p.get("missing_ranks", []),
            lost_ranks=p.get("lost_ranks", []),
            counters=p.get("counters", {}),
        )
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
                size = approx_size(item)
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
        return metric_items(record.payload, self._run.get("created_us"))

    def _event_items(self, record: Record) -> list[dict[str, Any]]:
        return event_items(record.payload)

    # ------------------------------------------------------------------------------------------ helpers
    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.requests += 1
        return method(*args, **kwargs)

    def _advance(self, kind: str, end: int) -> None:
        self.state.cursors[kind] = [end, 0]
        self._save()

    def _save(self) -> None:
        self.state.save(self._state_path)
