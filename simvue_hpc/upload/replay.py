"""One run's replay (:class:`Uploader`): three streams with their own cursors, exactly once against
lost answers, dead letters for refused items; the package docstring says how."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ServerSettings
from ..errors import ServerError, StoreError
from ..records import Record, RecordType
from ..server import SimvueClient, format_timestamp
from ..store import FILES_DIR, RECORDS_NAME, read_records
from .batches import build_batch, is_rejection, missing_metrics, stored_events
from .items import (
    FINAL_STATUSES,
    UID_KEY,
    artifact_body,
    canonical,
    describe_item,
    describe_record,
    event_items,
    integral_names,
    job_metadata,
    kind_of,
    metric_items,
    run_body,
)
from .state import STATE_NAME, UploadState

log = logging.getLogger(__name__)

POST_INTERVAL = 1.0  # seconds between two POSTs of one kind
SCAN_BYTES = 8 << 20  # records read per round, so one round stays short
STREAMS = ("run", "metrics", "events")


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
        self._end: Record | None = None
        self._load_run_record()
        self._last_post = {"metrics": -1e18, "events": -1e18}
        self._next_heartbeat = clock()
        self._next_abort = clock()
        self.abort_requested = False
        self.requests = 0
        self.unknown_outcomes = 0  # requests whose answer was lost, reconciled since

    @property
    def uid(self) -> str:
        """The run's unique id in the store, also kept in the server run's metadata to find it again."""
        return str(self._run.get("id") or self.run_dir.name)

    # ------------------------------------------------------------------------------------------ driving
    def poll(self) -> bool:
        """Upload what can be uploaded now; True once the whole run, final status included, is up."""
        if self.state.done:
            return True
        try:
            self._round(self._clock())
        except ServerError as exc:
            if exc.status == 404:
                self._check_run_exists()
            raise
        return self.state.done

    def _round(self, now: float) -> None:
        self._reconcile()
        scan = self._scan()
        self._run_stream(scan["run"])
        if self.state.run_id is not None:
            self._post("metrics", scan["metrics"], now)
            self._post("events", scan["events"], now)
            self._post_dead_letters()
            if self.live:
                self._keep_alive(now)
            self._finish_if_ready()

    def progress(self) -> tuple[int, int]:
        """(bytes done, bytes in all) of the record log summed over the three streams, for progress bars."""
        size = self._records.stat().st_size
        if self.state.done:
            return 3 * size, 3 * size
        return sum(min(self._cursor(k)[0], size) for k in STREAMS), 3 * size

    def caught_up(self) -> bool:
        """Everything the store holds now is on the server (an END, if any, waits to be sent)."""
        size = self._records.stat().st_size
        end = self._end.offset if self._end is not None else size
        return self.state.done or (self._cursor("run")[0] >= end and self.caught_up_to(size))

    @property
    def ended(self) -> bool:
        """The store holds the run's END record."""
        return self._end is not None

    def close_unended(self) -> str:
        """Set the final status of a run whose store has no END, from what is known: the last final
        STATUS record (failed/terminated, with its reason), else ``lost``. Call once :meth:`caught_up`."""
        if self.state.run_id is None:
            raise StoreError(f"run {self.run_dir.name} has no run on the server to close")
        known = self.state.last_status or {}
        status = str(known.get("status") or "lost")
        reason = known.get("reason") or ("the run stopped without closing" if status == "lost" else None)
        time_us = int(known.get("time_us") or self.state.last_time_us or time.time_ns() // 1000)
        info = job_metadata(dict(self._run.get("job") or {}))
        info.update(hosts=sorted(self.state.hosts), ranks_joined=len(self.state.ranks), end_reason=reason)
        body = {"status": status, "endtime": format_timestamp(time_us), "metadata": {"simvue_hpc": info}}
        self._call(self.client.update_run, self.state.run_id, body)
        self.state.closed_as = status
        self._save()
        return status

    # ------------------------------------------------------------------------------------------ reading
    def _cursor(self, kind: str) -> list[int]:
        return self.state.cursors.setdefault(kind, [0, 0])

    def _scan(self) -> dict[str, list[Record]]:
        """New records per stream, from the earliest cursor, at most about SCAN_BYTES of them."""
        start = min(self._cursor(k)[0] for k in STREAMS)
        out: dict[str, list[Record]] = {"run": [], "metrics": [], "events": []}
        self._scan_end = None
        for record in read_records(self._records, start) if start else read_records(self._records):
            kind = kind_of(record.type)
            if record.offset >= self._cursor(kind)[0]:
                out[kind].append(record)
            if record.type == RecordType.END and self._end is None:
                self._end = record
            self._note_time(record)
            if self._scan_end is None:
                start = record.offset
            self._scan_end = record.end
            if record.end - start > SCAN_BYTES:
                break
        return out

    def _note_time(self, record: Record) -> None:
        t = record.payload.get("time_us")
        if record.type == RecordType.METRICS and t is not None:
            t = int(t.max()) if len(t) else None
        if isinstance(t, int) and t > self.state.last_time_us:
            self.state.last_time_us = t

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
                if self._cursor("run")[0] < record.offset:
                    self._advance("run", record.offset)
                return  # sent by _finish_if_ready once metrics and events have passed it
            try:
                self._apply(record)
            except ServerError as exc:
                if record.type == RecordType.RUN or not self._rejected(exc):
                    raise
                self._dead_letter(describe_record(record), exc)
            self._advance("run", record.end)
        if self._scan_end is not None and self._cursor("run")[0] < self._scan_end:
            self._advance("run", self._scan_end)  # no run record before the scan's end: skip ahead

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
            self._alert(dict(p))
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
        elif record.type == RecordType.STATUS and p.get("status") in FINAL_STATUSES:
            # the run's status is sent with END; without END, the last final one is what is known
            self.state.last_status = {"status": p["status"], "time_us": p.get("time_us"), "reason": p.get("reason")}

    def _create_run(self, p: dict[str, Any]) -> None:
        self._folder(p.get("folder") or "/")
        # lost after three missed heartbeats, and never sooner than the official clients' 180 s
        timeout = max(180, math.ceil(3 * self.settings.heartbeat_interval)) if self.live else None
        body = run_body(p, self.uid, timeout)
        self._note_pending({"kind": "run"})
        self.state.run_id = self._call(self.client.create_run, body)
        self.state.pending = None
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
            body = artifact_body(p)
            answer = self._call(self.client.register_artifact, body)  # the server deduplicates by checksum
            artifact_id = answer["id"]
            if answer.get("url"):  # no url: the server already holds these bytes
                path = self.run_dir / FILES_DIR / sha
                self._call(self.client.upload_artifact, answer["url"], path, answer.get("fields"))
                self._call(self.client.mark_uploaded, artifact_id)
            self.state.artifacts[sha] = artifact_id
            self._save()
        self._call(self.client.attach_artifact, self.state.run_id, artifact_id, p["category"])

    def _alert(self, definition: dict[str, Any]) -> None:
        """Register an alert once per run; the same definition again (one per rank) is not sent."""
        name = str(definition.get("name"))
        text = canonical(definition)
        known = self.state.alert_defs.get(name)
        if known == text:
            return
        if known is not None:
            raise ServerError(f"alert {name!r} is defined again differently; the first definition is kept", 400)
        alert_id = self._call(self.client.create_alert, definition)
        if definition.get("source") == "user":
            self.state.alert_ids[name] = alert_id
        if alert_id not in self.state.alerts:
            self.state.alerts.append(alert_id)
            self._call(self.client.update_run, self.state.run_id, {"alerts": list(self.state.alerts)})
        self.state.alert_defs[name] = text
        self._save()

    def _finish_if_ready(self) -> None:
        end = self._end
        if end is None or self._cursor("run")[0] < end.offset or not self.caught_up_to(end.offset):
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
        if self.state.dead_letters:
            job["dead_letters"] = len(self.state.dead_letters)
        body = {"status": status, "endtime": format_timestamp(int(p["time_us"])), "metadata": {"simvue_hpc": job}}
        self._call(self.client.update_run, self.state.run_id, body)
        self._advance("run", end.end)
        self.state.done = True
        self._save()

    def caught_up_to(self, offset: int) -> bool:
        """Metrics and events have passed ``offset``, and nothing sent is left unconfirmed."""
        if self.state.pending is not None or self.state.dead_posted < len(self.state.dead_letters):
            return False
        return all(self._cursor(k)[0] >= offset for k in ("metrics", "events"))

    # ------------------------------------------------------------------------------------------ metrics, events
    def _items(self, kind: str) -> Callable[[Record], list[dict[str, Any]]]:
        if kind == "metrics":
            return lambda record: metric_items(record.payload, self._run.get("created_us"), self._ints(record))
        prefix = self.settings.event_prefix and (self._run.get("job") or {}).get("ranks", 1) != 1
        return lambda record: event_items(record.payload, prefix)

    def _ints(self, record: Record) -> set[str]:
        """Metrics uploaded as ints: those the record says were logged as ints (optional ``ints``), else,
        in a single-rank run (values as logged, no reduction), those whose every value so far is whole."""
        logged = record.payload.get("ints")
        if isinstance(logged, list):
            return {str(name) for name in logged}
        if (self._run.get("job") or {}).get("ranks", 1) != 1:
            return set()
        flags = self.state.int_metrics
        for name, whole in integral_names(record.payload).items():
            flags[name] = flags.get(name, True) and whole
        return {name for name, whole in flags.items() if whole}

    def _post(self, kind: str, records: list[Record], now: float) -> None:
        if self.state.pending is not None:
            return
        batch = build_batch(records, self._cursor(kind), self._items(kind), self._scan_end)
        if batch.cursor is None or (batch.items and now - self._last_post[kind] < POST_INTERVAL):
            return
        if batch.items:
            pending = {"kind": kind, "to": batch.cursor, "before": self.state.events_sent}
            self._last_post[kind] = now
            self._send(kind, batch.items, pending)
        else:
            self.state.cursors[kind] = batch.cursor
            self._save()

    def _send(self, kind: str, items: list[dict[str, Any]], pending: dict[str, Any], total: int | None = None) -> None:
        """Send a batch (or what a reconcile found missing of it) and, once accepted, move the cursor."""
        self._note_pending(pending)
        refused = self._post_items(kind, items)
        if kind == "events":
            self.state.events_sent = int(pending["before"]) + (len(items) if total is None else total) - refused
        self.state.cursors[kind] = list(pending["to"])
        self.state.pending = None
        self._save()

    def _post_items(self, kind: str, items: list[dict[str, Any]]) -> int:
        """POST items; a refused batch is halved until the refused items are found (dead letters)."""
        if not items:
            return 0
        post = self.client.post_metrics if kind == "metrics" else self.client.post_events
        try:
            self._call(post, self.state.run_id, items)
            return 0
        except ServerError as exc:
            if not self._rejected(exc):
                raise
            if len(items) == 1:
                self._dead_letter(describe_item(kind, items[0]), exc)
                return 1
            mid = len(items) // 2
            return self._post_items(kind, items[:mid]) + self._post_items(kind, items[mid:])

    # ------------------------------------------------------------------------------------------ exactly once
    def _note_pending(self, pending: dict[str, Any]) -> None:
        self.state.pending = pending
        self._save()

    def _reconcile(self) -> None:
        """Settle a request whose outcome is unknown by reading the server's state back."""
        pending = self.state.pending
        if pending is None:
            return
        kind = pending["kind"]
        log.info("run %s: reading back the outcome of an unanswered %s request", self.run_dir.name, kind)
        if kind == "run":
            found = self._call(self.client.find_runs, f"metadata.{UID_KEY} == {self.uid}")
            if found:
                self.state.run_id = str(found[0]["id"])
            self.state.pending = None  # not found: the RUN record, still ahead of the cursor, creates it
            self._save()
        elif kind == "metrics":
            items = self._rebuild(kind, pending)
            names = sorted({name for item in items for name in item["values"]})
            stored = self._call(self.client.get_metrics, self.state.run_id, names) if names else {}
            self._send(kind, missing_metrics(items, stored), pending)
        elif kind == "events":
            items = self._rebuild(kind, pending)
            done = stored_events(self._call(self.client.event_count, self.state.run_id), pending["before"], len(items))
            self._send(kind, items[done:], pending, total=len(items))
        else:  # dead letters
            done = stored_events(
                self._call(self.client.event_count, self.state.run_id), pending["before"], pending["n"]
            )
            self._send_dead_letters(pending, skip=done)

    def _rebuild(self, kind: str, pending: dict[str, Any]) -> list[dict[str, Any]]:
        """The items of the batch that was sent, rebuilt from the store (from the cursor to its end)."""
        records = self._scan()[kind]
        return build_batch(records, self._cursor(kind), self._items(kind), None, stop=pending["to"]).items

    # ------------------------------------------------------------------------------------------ dead letters
    def _rejected(self, exc: ServerError) -> bool:
        """Whether a refusal is of the item alone (a dead letter) rather than of the whole upload."""
        if exc.status == 404:
            self._check_run_exists()
        return is_rejection(exc.status)

    def _check_run_exists(self) -> None:
        """After a 404: a clear error if the run itself is gone from the server (deleted)."""
        if self.state.run_id is None:
            return
        try:
            self.client.get_run(self.state.run_id)
        except ServerError as gone:
            if gone.status == 404:
                raise ServerError(
                    f"run {self.state.run_id} no longer exists on the server (deleted?); the local store keeps "
                    f"run {self.run_dir.name}: remove {self._state_path} to upload it again as a new run",
                    404,
                ) from None
            raise

    def _dead_letter(self, what: str, exc: ServerError) -> None:
        log.warning("run %s: the server refused %s, which is skipped: %s", self.run_dir.name, what, exc)
        entry = {"what": what, "reason": str(exc), "time_us": time.time_ns() // 1000}
        self.state.dead_letters.append(entry)
        self._save()

    def _post_dead_letters(self) -> None:
        """Report new dead letters as events in the run (each once)."""
        todo = len(self.state.dead_letters) - self.state.dead_posted
        if todo and self.state.pending is None and self.state.run_id is not None:
            self._send_dead_letters({"kind": "dead", "n": todo, "before": self.state.events_sent}, skip=0)

    def _send_dead_letters(self, pending: dict[str, Any], skip: int) -> None:
        self._note_pending(pending)
        first = self.state.dead_posted
        todo = self.state.dead_letters[first : first + int(pending["n"])]
        events = [
            {
                "message": f"simvue_hpc: the server refused {d['what']}; skipped: {d['reason']}",
                "timestamp": format_timestamp(int(d["time_us"])),
                "log_level": "error",
            }
            for d in todo[skip:]
        ]
        refused = self._post_items_quietly(events)
        self.state.dead_posted = first + len(todo)
        self.state.events_sent = int(pending["before"]) + len(todo) - refused
        self.state.pending = None
        self._save()

    def _post_items_quietly(self, events: list[dict[str, Any]]) -> int:
        if not events:
            return 0
        try:
            self._call(self.client.post_events, self.state.run_id, events)
        except ServerError as exc:
            if not is_rejection(exc.status):
                raise
            log.warning("run %s: the server refused the dead-letter events too: %s", self.run_dir.name, exc)
            return len(events)
        return 0

    # ------------------------------------------------------------------------------------------ helpers
    def _keep_alive(self, now: float) -> None:
        """The heartbeat, and the abort flag read every ``abort_interval`` (one GET per run)."""
        assert self.state.run_id is not None
        if now >= self._next_heartbeat:
            self._call(self.client.heartbeat, self.state.run_id)
            self._next_heartbeat = now + self.settings.heartbeat_interval
        if now >= self._next_abort:
            self.abort_requested = self._call(self.client.abort_requested, self.state.run_id)
            self._next_abort = now + self.settings.abort_interval

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.requests += 1
        return method(*args, **kwargs)

    def _advance(self, kind: str, end: int) -> None:
        self.state.cursors[kind] = [end, 0]
        self._save()

    def _save(self) -> None:
        self.state.save(self._state_path)
