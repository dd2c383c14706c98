"""The aggregator's sans-I/O core: messages and clock ticks in, actions out.

``AggregatorState.handle(identity, seq, message, now)`` and ``tick(now)`` return lists of actions
(replies to ranks, records for the store, file bytes to write, and finally ``Finish``); the loop in
``loop.py`` performs them. ``now`` is a monotonic clock in seconds for every timeout; record times
come from the injected ``wall_ns`` clock. Nothing here sleeps, reads a socket or touches the disk,
so the tests drive it with an injected clock.

The state owns the ranks' lifecycle (hello, sequence numbers, goodbye, loss), the run's status and
close, events and alerts; it hands metric points to :mod:`.finality` (when a step is final and what
is stored), files to :mod:`.files` and resource reports to :mod:`.rollup`.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..alerts import AlertEvaluator, Transition
from ..config import HPCSettings
from ..protocol import (
    AlertDefinition,
    AlertState,
    Event,
    FileChunk,
    FileOffer,
    FolderDetails,
    Goodbye,
    GoodbyeAck,
    Heartbeat,
    Hello,
    Message,
    MetricBatch,
    Notice,
    Reject,
    Resources,
    RunUpdate,
    Status,
    Welcome,
)
from ..records import RecordType
from .actions import Action, Append, AppendMetrics, Finish, Reply
from .files import FileTransfers
from .finality import StepFinality
from .peers import CLOSED, LIVE, LOST, Peer, Roster
from .reduce import Reduction
from .rollup import ResourceRollup

log = logging.getLogger(__name__)

LIVE_RANKS = "simvue_hpc/live_ranks"  # the aggregator's metric of how many ranks are live

_Handler = Callable[[Peer, Any, float, list[Action]], None]


@dataclass(frozen=True)
class AggregatorConfig:
    """Identity of one run's aggregator; its timing is ``settings`` (seconds)."""

    run_id: str
    run_name: str
    secret: str
    expected_ranks: int | None = None  # the MPI world size; None when ranks come and go (pools)
    host_rank: int | None = 0  # whose goodbye starts the close; None: the loop calls begin_close
    settings: HPCSettings = field(default_factory=HPCSettings)
    reductions: Mapping[str, Reduction] = field(default_factory=dict)


class AggregatorState:
    """All that the aggregator knows about one run; see the module docstring for the rules."""

    def __init__(self, config: AggregatorConfig, now: float, wall_ns: Callable[[], int] = time.time_ns):
        self.config = config
        self._settings = config.settings
        self._wall_ns = wall_ns
        self.counters = {
            "points_received": 0,
            "points_stored": 0,
            "late_points": 0,
            "events": 0,
            "messages_lost": 0,
            "dropped_points": 0,
            "protocol_errors": 0,
        }
        self._roster = Roster(config.expected_ranks)
        self._steps = StepFinality(self._roster, self._settings.step_timeout, config.reductions, self.counters)
        self._files = FileTransfers()
        self._resources = ResourceRollup(self._settings.system_metrics_interval, now)
        self._alerts = AlertEvaluator()
        self._rejected: set[bytes] = set()
        self._ending: dict[str, list[str]] = {}  # failed / terminated -> who said so and why
        self._closing_since: float | None = None
        self._close_deadline: float | None = None
        self.finished = False
        self.aborted: str | None = None
        self._live_reported = 0
        self._live_step = 0
        self._handlers: dict[type[Message], _Handler] = {
            MetricBatch: self._on_metrics,
            Resources: self._on_resources,
            Event: self._on_event,
            Heartbeat: self._on_heartbeat,
            Goodbye: self._on_goodbye,
            FileOffer: self._on_file_offer,
            FileChunk: self._on_file_chunk,
            RunUpdate: self._on_run_update,
            FolderDetails: self._on_folder,
            AlertDefinition: self._on_alert_definition,
            AlertState: self._on_alert_state,
            Status: self._on_status,
        }

    # ------------------------------------------------------------------------------------------ input
    def handle(self, identity: bytes, seq: int, msg: Message, now: float) -> list[Action]:
        """Apply one message from ``identity``."""
        out: list[Action] = []
        if self.finished:
            out.append(Reply(identity, Reject("the run is closed")))
            return out
        if isinstance(msg, Hello):
            self._hello(identity, seq, msg, now, out)
            return out
        peer = self._roster.get(identity)
        if peer is None:
            if identity not in self._rejected:
                self._rejected.add(identity)
                out.append(Reply(identity, Reject("send HELLO first")))
            return out
        self._sequence(peer, seq, out)
        peer.last_seen = now
        if peer.state == LOST:
            peer.state = LIVE
            self._record_rank(peer, "joined", out, returned=True)
            self._event(f"rank {peer.rank} on {peer.host} is back", "warning", out)
            self._live_changed(out)
        handler = self._handlers.get(type(msg))
        if handler is None:
            self.counters["protocol_errors"] += 1
            log.warning("rank %d sent %s, which ranks do not send", peer.rank, type(msg).__name__)
        else:
            handler(peer, msg, now, out)
        return out

    def protocol_error(self, identity: bytes, reason: str) -> list[Action]:
        """A message from ``identity`` could not be decoded: counted and answered, never fatal."""
        self.counters["protocol_errors"] += 1
        peer = self._roster.get(identity)
        who = f"rank {peer.rank}" if peer else "an unknown peer"
        log.warning("undecodable message from %s: %s", who, reason)
        if peer is None:
            return [Reply(identity, Reject(reason))]
        out: list[Action] = []
        self._event(f"undecodable message from rank {peer.rank} on {peer.host}: {reason}", "warning", out)
        return out

    def set_status(
        self, status: str, reason: str = "", rank: int | None = None, host: str | None = None
    ) -> list[Action]:
        """A rank, the host or the sidecar sets the run's status: ``failed`` or ``terminated`` decide the
        final status (terminated over failed over completed); every status is recorded as given."""
        if status in ("failed", "terminated"):
            where = f"rank {rank} on {host}: " if rank is not None else ""
            self._ending.setdefault(status, []).append(f"{where}{reason}")
        payload = {"status": status, "time_us": self._wall_ns() // 1000, "rank": rank, "reason": reason}
        return [Append(RecordType.STATUS, payload)]

    def record_event(self, message: str, level: str, host: str | None) -> list[Action]:
        """An event from outside the ranks (the sidecar): stored like a rank's, seen by event alerts."""
        self.counters["events"] += 1
        time_us = self._wall_ns() // 1000
        self._alerts.observe_event(message, time_us)
        payload = {"message": message, "time_us": time_us, "rank": None, "host": host, "level": level}
        return [Append(RecordType.EVENT, payload)]

    def begin_close(self, now: float, timeout: float | None = None) -> None:
        """Start the closing countdown (the host said goodbye, died, or the sidecar's command ended);
        the other ranks get ``timeout`` (default ``close_timeout``) to say goodbye."""
        if self._closing_since is None:
            self._closing_since = now
        deadline = now + (self._settings.close_timeout if timeout is None else timeout)
        self._close_deadline = deadline if self._close_deadline is None else min(self._close_deadline, deadline)

    def terminate(self, reason: str, now: float) -> list[Action]:
        """SIGTERM or SIGINT reached the aggregator (``scancel``, a time limit): mark the run terminated
        and close within ``terminate_grace``, keeping what the ranks flush meanwhile."""
        out = self.set_status("terminated", reason)
        self.begin_close(now, self._settings.terminate_grace)
        return out

    def host_gone(self, now: float) -> list[Action]:
        """The host process ended; without a goodbye it died, and the run failed."""
        host_rank = self.config.host_rank
        host = self._roster.by_rank.get(host_rank) if host_rank is not None else None
        out: list[Action] = []
        if host is not None and host.state != CLOSED:
            out += self.set_status("failed", f"the host process (rank {host.rank}) died without closing the run")
        self.begin_close(now)
        return out

    def abort(self, reason: str) -> list[Action]:
        """Ask every rank to stop (the server's abort flag, or an alert with abort): each live rank is
        told now, a rank that joins later as soon as it does."""
        out: list[Action] = []
        if self.aborted is not None or self.finished:
            return out
        self.aborted = reason
        self._event(f"the run was aborted: {reason}", "warning", out)
        out += self.set_status("terminated", f"aborted: {reason}")
        out.extend(Reply(peer.identity, Notice("abort", reason)) for peer in self._roster.live())
        return out

    def tick(self, now: float) -> list[Action]:
        """Timers: lost ranks, final steps, alerts, resources, the end of the run."""
        out: list[Action] = []
        if self.finished:
            return out
        for peer in list(self._roster.live()):
            if now - peer.last_seen > self._settings.rank_timeout:
                self._lose(peer, f"silent for {now - peer.last_seen:.0f} s", out)
        self._store_final(now, out, final=False)
        for transition in self._alerts.evaluate(self._wall_ns() // 1000):
            self._transition(transition, out)
        if self._resources.due(now):
            rolled = self._resources.roll_up(now, self._live_host)
            if rolled is not None:
                self._series(rolled[1], rolled[0], out)
        if self._closing_since is not None and self._close_deadline is not None:
            done = not any(True for _ in self._roster.live()) and self._roster.all_joined()
            if done or now >= self._close_deadline:
                self._finish(now, out)
        return out

    def live_pids_on(self, host: str) -> dict[bytes, int]:
        """Live ranks on ``host`` (the aggregator's own), so the loop can see which have exited."""
        return {p.identity: p.pid for p in self._roster.live() if p.host == host}

    def process_exited(self, identity: bytes) -> list[Action]:
        """The process of a live rank on this host has exited without a goodbye: lost now, rather
        than after ``rank_timeout`` of silence."""
        out: list[Action] = []
        peer = self._roster.get(identity)
        if peer is not None and peer.state == LIVE:
            self._lose(peer, f"its process (pid {peer.pid}) exited without saying goodbye", out)
        return out

    def finish_now(self, now: float) -> list[Action]:
        """End the run at once (the loop was asked to stop): everything pending is stored."""
        out: list[Action] = []
        if not self.finished:
            self._finish(now, out)
        return out

    def file_done(self, sha256: str, ok: bool, reason: str = "") -> list[Action]:
        """Outcome of committing a received file (after the ``FileWrite`` with ``final``)."""
        return self._files.done(sha256, ok, reason)

    # ------------------------------------------------------------------------------------------ queries
    @property
    def closing(self) -> bool:
        return self._closing_since is not None

    def next_deadline(self, now: float) -> float:
        """Latest time the loop may wait before calling :meth:`tick` again."""
        return now + min(0.05, self._settings.step_timeout / 4)  # alerts and resources are due far less often

    def ranks(self) -> dict[int, str]:
        """Rank -> state, for reports."""
        return {p.rank: p.state for p in self._roster}

    # ------------------------------------------------------------------------------------------ messages
    def _hello(self, identity: bytes, seq: int, msg: Hello, now: float, out: list[Action]) -> None:
        if not hmac.compare_digest(msg.secret.encode(), self.config.secret.encode()):
            out.append(Reply(identity, Reject("wrong secret for this run")))
            return
        rank = msg.rank
        existing = self._roster.by_rank.get(rank) if rank >= 0 else None
        if existing is not None and existing.identity != identity and existing.state == LIVE:
            reason = (
                f"rank {rank} is already connected from {existing.host} (pid {existing.pid}): "
                "are all ranks of this job seeing a world of size 1?"
            )
            out.append(Reply(identity, Reject(reason)))
            return
        if rank < 0:
            # Past the world when there is one; from 1 in a pool (the parent is 0); from 0 under a
            # sidecar, which is no rank itself.
            floor = self.config.expected_ranks or (0 if self.config.host_rank is None else 1)
            rank = max([floor - 1, *self._roster.by_rank]) + 1
        peer = Peer(identity, rank, msg.host, msg.pid, last_seen=now, next_seq=seq + 1)
        self._roster.add(peer)
        self._rejected.discard(identity)
        for name, spec in msg.reductions.items():
            try:
                reduction = Reduction.parse(name, spec)
            except ValueError as exc:
                self._event(f"rank {rank}: ignored reduction: {exc}", "warning", out)
                continue
            self._steps.set_reduction(name, reduction)
        self._record_rank(peer, "joined", out)
        out.append(Reply(identity, Welcome(rank, self.config.run_id, self.config.run_name)))
        if self.aborted is not None:
            out.append(Reply(identity, Notice("abort", self.aborted)))
        self._live_changed(out)

    def _sequence(self, peer: Peer, seq: int, out: list[Action]) -> None:
        gap = (seq - peer.next_seq) & 0xFFFFFFFF
        if gap and gap < 0x80000000:
            self.counters["messages_lost"] += gap
            self._event(f"{gap} message(s) from rank {peer.rank} on {peer.host} lost in transit", "warning", out)
        peer.next_seq = (seq + 1) & 0xFFFFFFFF

    def _on_metrics(self, peer: Peer, batch: MetricBatch, now: float, out: list[Action]) -> None:
        n = len(batch.value)
        peer.received_points += n
        self.counters["points_received"] += n
        self._steps.ingest(peer, batch, now)

    def _on_resources(self, peer: Peer, msg: Resources, now: float, out: list[Action]) -> None:
        self._resources.observe(peer.identity, msg, now)

    def _on_event(self, peer: Peer, msg: Event, now: float, out: list[Action]) -> None:
        self.counters["events"] += 1
        time_us = msg.time_ns // 1000
        self._alerts.observe_event(msg.message, time_us)
        payload = {"message": msg.message, "time_us": time_us, "rank": peer.rank, "host": peer.host}
        out.append(Append(RecordType.EVENT, {**payload, "level": msg.level}))

    def _on_heartbeat(self, peer: Peer, msg: Heartbeat, now: float, out: list[Action]) -> None:
        peer.sent_points = msg.sent_points
        peer.dropped_points = msg.dropped_points

    def _on_goodbye(self, peer: Peer, msg: Goodbye, now: float, out: list[Action]) -> None:
        if peer.state == CLOSED:  # a repeated goodbye: acknowledge again, count nothing twice
            out.append(Reply(peer.identity, GoodbyeAck(peer.received_points)))
            return
        peer.state = CLOSED
        peer.sent_points = msg.sent_points
        peer.dropped_points = msg.dropped_points
        self.counters["dropped_points"] += msg.dropped_points
        self._record_rank(
            peer,
            "closed",
            out,
            sent_points=msg.sent_points,
            received_points=peer.received_points,
            dropped_points=msg.dropped_points,
        )
        who = f"rank {peer.rank} on {peer.host}"
        if msg.dropped_points:
            detail = ", ".join(f"{k}: {v}" for k, v in sorted(msg.dropped.items()))
            text = f"{who} dropped {msg.dropped_points} point(s) when its buffer was full ({detail})"
            self._event(text, "warning", out)
        if msg.sent_points != peer.received_points:
            self._event(f"{who} sent {msg.sent_points} point(s), {peer.received_points} arrived", "warning", out)
        out.append(Reply(peer.identity, GoodbyeAck(peer.received_points)))
        self._files.forget(peer.identity, out)
        self._live_changed(out)
        if self.config.host_rank is not None and peer.rank == self.config.host_rank:
            self.begin_close(now)

    def _on_file_offer(self, peer: Peer, msg: FileOffer, now: float, out: list[Action]) -> None:
        self._files.offer(peer.identity, peer.rank, peer.host, msg, out)

    def _on_file_chunk(self, peer: Peer, msg: FileChunk, now: float, out: list[Action]) -> None:
        self._files.chunk(peer.identity, msg, out)

    def _on_run_update(self, peer: Peer, msg: RunUpdate, now: float, out: list[Action]) -> None:
        update = {k: v for k, v in msg.body().items() if v is not None}
        if update:
            out.append(Append(RecordType.RUN_UPDATE, update))

    def _on_folder(self, peer: Peer, msg: FolderDetails, now: float, out: list[Action]) -> None:
        out.append(Append(RecordType.FOLDER, msg.body()))

    def _on_alert_definition(self, peer: Peer, msg: AlertDefinition, now: float, out: list[Action]) -> None:
        try:
            self._alerts.add(dict(msg.definition), self._wall_ns() // 1000)
        except ValueError as exc:
            self._event(f"alert from rank {peer.rank} not evaluated: {exc}", "warning", out)
        else:
            out.append(Append(RecordType.ALERT, dict(msg.definition)))

    def _on_alert_state(self, peer: Peer, msg: AlertState, now: float, out: list[Action]) -> None:
        try:
            transitions = self._alerts.set_user_state(msg.name, msg.state, self._wall_ns() // 1000)
        except ValueError as exc:
            self._event(f"alert state from rank {peer.rank} ignored: {exc}", "warning", out)
        else:
            for transition in transitions:
                self._transition(transition, out)

    def _on_status(self, peer: Peer, msg: Status, now: float, out: list[Action]) -> None:
        out += self.set_status(msg.status, msg.reason, rank=peer.rank, host=peer.host)

    # ------------------------------------------------------------------------------------------ helpers
    def _live_host(self, identity: bytes) -> str | None:
        peer = self._roster.get(identity)
        return peer.host if peer is not None and peer.state == LIVE else None

    def _record_rank(self, peer: Peer, state: str, out: list[Action], **extra: Any) -> None:
        payload = {"rank": peer.rank, "host": peer.host, "pid": peer.pid, "state": state}
        out.append(Append(RecordType.RANK, {**payload, "time_us": self._wall_ns() // 1000, **extra}))

    def _event(self, message: str, level: str, out: list[Action]) -> None:
        if level == "info":
            log.info(message)
        else:
            log.warning(message)
        payload = {"message": message, "time_us": self._wall_ns() // 1000, "rank": None, "host": None}
        out.append(Append(RecordType.EVENT, {**payload, "level": level}))

    def _lose(self, peer: Peer, why: str, out: list[Action]) -> None:
        peer.state = LOST
        self._record_rank(peer, "lost", out)
        self._event(f"rank {peer.rank} on {peer.host} lost: {why}", "warning", out)
        self._files.forget(peer.identity, out)
        self._live_changed(out)

    def _store_final(self, now: float, out: list[Action], final: bool) -> None:
        for action in self._steps.reduce(now, final):
            self._append_metrics(action, out)

    def _append_metrics(self, action: AppendMetrics, out: list[Action]) -> None:
        """Store reduced points; the alerts see exactly what is stored."""
        out.append(action)
        self._alerts.observe_metrics(action.names, action.name_id, action.time_us, action.value)

    def _series(self, values: dict[str, float], step: int, out: list[Action]) -> None:
        """One point per name at ``step``, now: the aggregator's own metrics (live ranks, resources)."""
        n = len(values)
        action = AppendMetrics(
            names=list(values),
            name_id=np.arange(n, dtype=np.uint32),
            step=np.full(n, step, dtype=np.int64),
            time_us=np.full(n, self._wall_ns() // 1000, dtype=np.int64),
            value=np.array(list(values.values()), dtype=np.float64),
        )
        self._append_metrics(action, out)

    def _live_changed(self, out: list[Action]) -> None:
        live = sum(1 for _ in self._roster.live())
        if live != self._live_reported:
            self._live_reported = live
            self._series({LIVE_RANKS: float(live)}, self._live_step, out)
            self._live_step += 1

    def _transition(self, transition: Transition, out: list[Action]) -> None:
        """An alert changed state: an event and an ALERT_STATE record; an abort if it asks for one."""
        level = "warning" if transition.status == "critical" else "info"
        self._event(transition.message, level, out)
        payload = {
            "name": transition.name,
            "status": transition.status,
            "time_us": transition.time_us,
            "message": transition.message,
        }
        out.append(Append(RecordType.ALERT_STATE, payload))
        if transition.abort:
            out += self.abort(f"alert '{transition.name}' is critical")

    def _finish(self, now: float, out: list[Action]) -> None:
        self._store_final(now, out, final=True)
        missing = sorted(p.rank for p in self._roster.live())
        for rank in missing:
            self._record_rank(self._roster.by_rank[rank], "missing", out)
        never = []
        if self.config.expected_ranks is not None:
            never = [r for r in range(self.config.expected_ranks) if r not in self._roster.by_rank]
            for rank in never:
                payload = {"rank": rank, "host": None, "pid": None, "state": "missing"}
                out.append(Append(RecordType.RANK, {**payload, "time_us": self._wall_ns() // 1000, "joined": False}))
        lost = sorted(p.rank for p in self._roster if p.state == LOST)
        if missing or never:
            self._event(f"closed without a goodbye from rank(s) {sorted(missing + never)}", "warning", out)
        self._files.discard_all(out)
        status = next((s for s in ("terminated", "failed") if s in self._ending), "completed")
        end = {
            "status": status,
            "time_us": self._wall_ns() // 1000,
            "missing_ranks": sorted(missing + never),
            "lost_ranks": lost,
            "counters": dict(self.counters),
        }
        out.append(Append(RecordType.END, end))
        self.finished = True
        out.append(Finish(status))
