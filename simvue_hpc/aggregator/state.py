"""The aggregator's sans-I/O core: messages and clock ticks in, actions out.

``AggregatorState.handle(identity, seq, message, now)`` and ``tick(now)`` return lists of actions
(replies to ranks, records for the store, file bytes to write, and finally ``Finish``); the loop in
``loop.py`` performs them. ``now`` is a monotonic clock (seconds) for every timeout; record times come
from the injected ``wall_ns`` clock. Nothing here sleeps, reads a socket or touches the disk.

The state owns the ranks' lifecycle (hello, sequence numbers, goodbye, loss), the run's status and close,
events and alerts; it hands points to :mod:`.finality`, files to :mod:`.files`, resources to :mod:`.rollup`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import protocol as proto
from ..alerts import AlertEvaluator, Transition
from ..config import HPCSettings
from ..records import RecordType
from ..relay.wire import PartialBatch
from .actions import Action, Append, AppendMetrics, Finish, Reply
from .admission import Admission
from .counters import COUNTERS
from .files import FileTransfers
from .finality import StepFinality
from .peers import CLOSED, LIVE, LOST, Peer, Roster
from .reduce import Reduction
from .resume import AckTracker, drop_stored
from .rollup import LiveRanks, ResourceRollup

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
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._roster = Roster(config.expected_ranks)
        self._steps = StepFinality(self._roster, self._settings, config.reductions, self.counters)
        self._files = FileTransfers()
        self._resources = ResourceRollup(self._settings.system_metrics_interval, now)
        self._alerts = AlertEvaluator()
        self._admission = Admission(
            config.secret, config.expected_ranks, config.host_rank, self._settings, self._roster, self.counters
        )
        self._ending: set[str] = set()  # failed, terminated: what decides the final status
        self._close_deadline: float | None = None  # None: not closing
        self.finished = False
        self.aborted: str | None = None
        self.stopped: str | None = None  # why the run no longer accepts data
        self._silence_due = now
        self._live = LiveRanks(self._settings.heartbeat_interval, now)
        self._acks = AckTracker()
        self._stored: dict[str, int] = {}  # after a restart: stored name -> largest final step (resume)
        self._handlers: dict[type[proto.Message], _Handler] = {
            proto.MetricBatch: self._on_metrics,
            PartialBatch: self._on_partials,
            proto.Resources: lambda peer, msg, now, out: self._resources.observe(peer.identity, msg, now),
            proto.Event: self._on_event,
            proto.Heartbeat: self._on_heartbeat,
            proto.Goodbye: self._on_goodbye,
            proto.FileOffer: lambda peer, msg, now, out: self._files.offer(
                peer.identity, peer.rank, peer.host, msg, out
            ),
            proto.FileChunk: lambda peer, msg, now, out: self._files.chunk(peer.identity, msg, out),
            proto.RunUpdate: self._on_run_update,
            proto.FolderDetails: lambda peer, msg, now, out: out.append(Append(RecordType.FOLDER, msg.body())),
            proto.AlertDefinition: self._on_alert_definition,
            proto.AlertState: self._on_alert_state,
            proto.Status: self._on_status,
        }

    # ------------------------------------------------------------------------------------------ input
    def handle(self, identity: bytes, seq: int, msg: proto.Message, now: float) -> list[Action]:
        """Apply one message from ``identity``."""
        out: list[Action] = []
        if self.finished:
            out.append(Reply(identity, proto.Reject("the run is closed")))
            return out
        if isinstance(msg, proto.Hello):
            self._hello(identity, seq, msg, now, out)
            return out
        peer = self._roster.get(identity)
        if peer is None:
            self._admission.stranger(identity, out)
            return out
        gap = peer.sequence(seq)
        if gap:
            self.counters["messages_lost"] += gap
            self._event(f"{gap} message(s) from rank {peer.rank} on {peer.host} lost in transit", "warning", out)
        peer.last_seen = now
        if peer.state == LOST:
            self._roster.set_state(peer, LIVE)
            self._record_rank(peer, "joined", out, returned=True)
            self._event(f"rank {peer.rank} on {peer.host} is back", "warning", out)
            self._live_changed(peer)
        handler = self._handlers.get(type(msg))
        problem = (
            self._admission.invalid(msg) if handler else f"{{}} sent {type(msg).__name__}, which ranks do not send"
        )
        if handler is None or problem:
            self.counters["protocol_errors"] += 1
            self._complain(identity, peer, problem or "", now, out)
        else:
            handler(peer, msg, now, out)
            self._notes(out)
            self._acks.received(identity, seq, msg if isinstance(msg, proto.MetricBatch) else None)
        return out

    def resume(self, stored_steps: Mapping[str, int], rank_states: Mapping[int, str], now: float) -> list[Action]:
        """This aggregator took over a run whose aggregator died: resent points of steps already stored
        (``stored_steps``: stored name -> largest final step) are dropped, and the ranks that had closed
        or were lost (``rank_states``, from the log) are known as such, so nobody waits for them."""
        self._stored = dict(stored_steps)
        for rank, state in rank_states.items():
            if state in (CLOSED, LOST) and rank not in self._roster.by_rank:
                self._roster.add(Peer(b"\0stored-%d" % rank, rank, "", 0, now, state=state))
        out: list[Action] = []
        self._event("the aggregator restarted: the ranks resend what was not stored", "warning", out)
        return out

    def acks(self, now: float) -> list[Action]:
        """ACKs for the ranks that asked for them, once what they acknowledge is in the store (the loop
        calls this after each flush)."""
        return [Reply(identity, proto.Ack(seq)) for identity, seq in self._acks.due(now, self._steps.final_step)]

    def protocol_error(self, identity: bytes, reason: str, now: float) -> list[Action]:
        """A message from ``identity`` could not be decoded or applied: counted and answered, never fatal;
        reported at most once a minute per peer."""
        self.counters["protocol_errors"] += 1
        peer = self._roster.get(identity)
        out: list[Action] = []
        if peer is None:
            out.append(Reply(identity, proto.Reject(reason)))
        self._complain(identity, peer, f"undecodable message from {{}}: {reason}", now, out)
        return out

    def set_status(
        self, status: str, reason: str = "", rank: int | None = None, host: str | None = None
    ) -> list[Action]:
        """A rank, the host or the sidecar sets the run's status: ``failed`` or ``terminated`` decide the
        final status (terminated over failed over completed); every status is recorded as given."""
        if status in ("failed", "terminated"):
            self._ending.add(status)
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
        out.extend(Reply(peer.identity, proto.Notice("abort", reason)) for peer in self._roster.live())
        return out

    def stop(self, reason: str, now: float) -> list[Action]:
        """The run can keep nothing more (the store's disk is full): it fails with ``reason``, every rank
        is told (``Notice("stopped")``: its next call raises), later points are dropped and counted, and
        the run closes once the ranks have said goodbye."""
        if self.stopped is not None or self.finished:
            return []
        self.stopped = reason
        log.error("the run stopped accepting data: %s", reason)
        out = self.set_status("failed", reason)
        out.extend(Reply(peer.identity, proto.Notice("stopped", reason)) for peer in self._roster.live())
        self.begin_close(now)
        return out

    def tick(self, now: float) -> list[Action]:
        """Timers: lost ranks, final steps, alerts, resources, the end of the run."""
        out: list[Action] = []
        if self.finished:
            return out
        if now >= self._silence_due:  # a scan of the ranks, a few times per rank_timeout
            self._silence_due = now + min(1.0, self._settings.rank_timeout / 10)
            for peer in list(self._roster.live()):
                if now - peer.last_seen > self._settings.rank_timeout:
                    self._lose(peer, f"silent for {now - peer.last_seen:.0f} s", out)
        self._store_final(now, out, final=False)
        self._record_live(now, out)
        for transition in self._alerts.evaluate(self._wall_ns() // 1000):
            self._transition(transition, out)
        if self._resources.due(now):
            rolled = self._resources.roll_up(now, self._live_host)
            if rolled is not None:
                self._series(rolled[1], rolled[0], out)
        if self._close_deadline is not None:
            done = self._roster.live_count == 0 and self._roster.all_joined()
            if done or now >= self._close_deadline:
                self._finish(now, out)
        return out

    def live_pids_on(self, host: str) -> dict[bytes, tuple[int, int, int]]:
        """Live ranks on ``host`` (the aggregator's own) as (pid, start time, pid namespace), so the loop
        can see which have exited."""
        return {p.identity: (p.pid, p.start_time, p.pid_ns) for p in self._roster.live() if p.host == host}

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
        return self._close_deadline is not None

    def next_deadline(self, now: float) -> float:
        """Latest time the loop may wait before calling :meth:`tick` again."""
        return now + min(0.05, self._settings.step_timeout / 4)  # alerts and resources are due far less often

    def ranks(self) -> dict[int, str]:
        """Rank -> state, for reports."""
        return {p.rank: p.state for p in self._roster}

    # ------------------------------------------------------------------------------------------ messages
    def _hello(self, identity: bytes, seq: int, msg: proto.Hello, now: float, out: list[Action]) -> None:
        rank = self._admission.admit(identity, msg, out)
        self._notes(out)
        if rank is None:
            return
        peer = Peer(identity, rank, msg.host, msg.pid, now, seq + 1, start_time=msg.start_time, pid_ns=msg.pid_ns)
        for gone in self._roster.add(peer):
            if gone.rank != rank:
                self._steps.set_live(gone.rank, False)
        self._steps.joined(rank)
        for problem in self._steps.request_reductions(msg.reductions):
            self._event(f"rank {rank}: ignored reduction: {problem}", "warning", out)
        if msg.resend:
            self._acks.watch(identity, seq)
        if msg.resume:
            peer.received_points = msg.acked_points  # stored before the restart
        self._record_rank(peer, "joined", out, **({"resumed": True} if msg.resume else {}))
        welcome = proto.Welcome(rank, self.config.run_id, self.config.run_name, self._admission.flush_interval())
        out.append(Reply(identity, welcome))
        if self.aborted is not None:
            out.append(Reply(identity, proto.Notice("abort", self.aborted)))
        if self.stopped is not None:
            out.append(Reply(identity, proto.Notice("stopped", self.stopped)))
        self._live_changed(peer)

    def _on_metrics(self, peer: Peer, batch: proto.MetricBatch, now: float, out: list[Action]) -> None:
        n = len(batch.value)
        peer.received_points += n
        self.counters["points_received"] += n
        if self.stopped is not None:
            self.counters["points_after_stop"] += n
            return
        if self._stored:
            batch, dropped = drop_stored(batch, peer.rank, self._steps.reduction_of, self._stored)
            self.counters["points_already_stored"] += dropped
        self._steps.ingest(peer.rank, batch, now)

    def _on_partials(self, peer: Peer, batch: PartialBatch, now: float, out: list[Action]) -> None:
        """A node relay's pre-reduced points (relay/): its ranks count as joined, its rows are merged."""
        for problem in self._steps.request_reductions(batch.reductions):
            self._event(f"rank {peer.rank} (a node relay): ignored reduction: {problem}", "warning", out)
        self._roster.relayed[peer.rank] = batch.ranks
        n = self._steps.ingest_partials(peer.rank, batch, now)
        peer.received_points += n
        self.counters["points_received"] += n

    def _on_event(self, peer: Peer, msg: proto.Event, now: float, out: list[Action]) -> None:
        self.counters["events"] += 1
        time_us = msg.time_ns // 1000
        self._alerts.observe_event(msg.message, time_us)
        payload = {"message": msg.message, "time_us": time_us, "rank": peer.rank, "host": peer.host}
        out.append(Append(RecordType.EVENT, {**payload, "level": msg.level}))

    def _on_heartbeat(self, peer: Peer, msg: proto.Heartbeat, now: float, out: list[Action]) -> None:
        peer.sent_points = msg.sent_points
        peer.dropped_points = msg.dropped_points

    def _on_goodbye(self, peer: Peer, msg: proto.Goodbye, now: float, out: list[Action]) -> None:
        if peer.state == CLOSED:  # a repeated goodbye: acknowledge again, count nothing twice
            out.append(Reply(peer.identity, proto.GoodbyeAck(peer.received_points)))
            return
        self._roster.set_state(peer, CLOSED)
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
        out.append(Reply(peer.identity, proto.GoodbyeAck(peer.received_points)))
        self._files.forget(peer.identity, out)
        self._acks.forget(peer.identity)
        self._live_changed(peer)
        if self.config.host_rank is not None and peer.rank == self.config.host_rank:
            self.begin_close(now)

    def _on_run_update(self, peer: Peer, msg: proto.RunUpdate, now: float, out: list[Action]) -> None:
        update = {k: v for k, v in msg.body().items() if v is not None}
        if update:
            out.append(Append(RecordType.RUN_UPDATE, update))

    def _on_alert_definition(self, peer: Peer, msg: proto.AlertDefinition, now: float, out: list[Action]) -> None:
        try:
            new = self._alerts.add(dict(msg.definition), self._wall_ns() // 1000)
        except ValueError as exc:
            self._event(f"alert from rank {peer.rank} not evaluated: {exc}", "warning", out)
        else:
            if new:  # every rank may define it: recorded, and registered with the server, once
                out.append(Append(RecordType.ALERT, dict(msg.definition)))

    def _on_alert_state(self, peer: Peer, msg: proto.AlertState, now: float, out: list[Action]) -> None:
        try:
            transitions = self._alerts.set_user_state(msg.name, msg.state, self._wall_ns() // 1000)
        except ValueError as exc:
            self._event(f"alert state from rank {peer.rank} ignored: {exc}", "warning", out)
        else:
            for transition in transitions:
                self._transition(transition, out)

    def _on_status(self, peer: Peer, msg: proto.Status, now: float, out: list[Action]) -> None:
        out += self.set_status(msg.status, msg.reason, rank=peer.rank, host=peer.host)

    # ------------------------------------------------------------------------------------------ helpers
    def _live_host(self, identity: bytes) -> str | None:
        peer = self._roster.get(identity)
        return peer.host if peer is not None and peer.state == LIVE else None

    def _complain(self, identity: bytes, peer: Peer | None, text: str, now: float, out: list[Action]) -> None:
        """A peer's protocol error, reported at most once a minute (a rank's as an event); ``text`` has
        ``{}`` where the peer is named."""
        said = self._admission.complaint(identity, peer, text, now)
        if said is not None:
            self._event(said, "warning", out)

    def _notes(self, out: list[Action]) -> None:
        """Bounds passed for the first time, recorded as warning events."""
        for notes in (self._admission.notes, self._steps.bounds_passed):
            while notes:
                self._event(notes.pop(0), "warning", out)

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
        self._roster.set_state(peer, LOST)
        self._record_rank(peer, "lost", out)
        behind = self._roster.relayed.get(peer.rank)
        whose = f" (the node relay of {behind} rank(s): they are lost with it)" if behind else ""
        self._event(f"rank {peer.rank} on {peer.host} lost{whose}: {why}", "warning", out)
        self._files.forget(peer.identity, out)
        self._live_changed(peer)

    def _store_final(self, now: float, out: list[Action], final: bool) -> None:
        for action in self._steps.reduce(now, final):
            self._append_metrics(action, out)
        self._notes(out)

    def _append_metrics(self, action: AppendMetrics, out: list[Action]) -> None:
        """Store reduced points; the alerts see exactly what is stored."""
        out.append(action)
        self._alerts.observe_metrics(action.names, action.name_id, action.time_us, action.value)

    def _series(self, values: dict[str, float], step: int, out: list[Action]) -> None:
        """One point per name at ``step``, now: the aggregator's own metrics (live ranks, resources)."""
        self._append_metrics(AppendMetrics.series(values, step, self._wall_ns() // 1000), out)

    def _live_changed(self, peer: Peer) -> None:
        self._steps.set_live(peer.rank, peer.state == LIVE)
        self._live.changed()

    def _record_live(self, now: float, out: list[Action], final: bool = False) -> None:
        several = (self.config.expected_ranks or 0) > 1 or len(self._roster.by_rank) > 1
        point = self._live.take(now, self._roster.live_count, several, final)
        if point is not None:
            self._series({LIVE_RANKS: point[1]}, point[0], out)

    def _transition(self, transition: Transition, out: list[Action]) -> None:
        """An alert changed state: an event and an ALERT_STATE record; an abort if it asks for one."""
        level = "warning" if transition.status == "critical" else "info"
        self._event(transition.message, level, out)
        payload = {key: getattr(transition, key) for key in ("name", "status", "time_us", "message")}
        out.append(Append(RecordType.ALERT_STATE, payload))
        if transition.abort:
            out += self.abort(f"alert '{transition.name}' is critical")

    def _finish(self, now: float, out: list[Action]) -> None:
        self._store_final(now, out, final=True)
        self._record_live(now, out, final=True)
        missing, never = self._roster.unfinished()
        for rank in missing:
            self._record_rank(self._roster.by_rank[rank], "missing", out)
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
