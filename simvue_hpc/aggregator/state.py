"""The aggregator's sans-I/O core: messages and clock ticks in, actions out.

``AggregatorState.handle(identity, seq, message, now)`` and ``tick(now)`` return lists of actions
(replies to ranks, records for the store, file bytes to write, and finally ``Finish``); the loop in
``loop.py`` performs them. ``now`` is a monotonic clock in seconds for every timeout; record times
come from the injected ``wall_ns`` clock. Nothing here sleeps, reads a socket or touches the disk,
so the tests drive it with an injected clock.

When a step is final
    Per metric, the *contributors* are the ranks that have logged it. A rank's *progress* is the
    largest step it has sent; because a rank's messages arrive in order and its steps only grow,
    every point it will ever send for a step below its progress has arrived. Step ``s`` of a metric
    is therefore final once every live contributor's progress exceeds ``s`` (or the contributor has
    closed or been lost). Until the metric's set of contributors is *settled* (all expected ranks
    joined and every live rank has logged it; in a pool, where ranks come and go, every live rank
    that logs anything has logged it and ``JOIN_GRACE`` has passed; or ``step_timeout`` since the
    metric first appeared) nothing of it is final, so a slow rank's first step is not mistaken for a
    single-rank metric.
    Points waiting longer than ``step_timeout`` are forced out (the bounded wait). A point that
    arrives for a step already final is *late*: it is reduced among the late points and stored as
    a record flagged ``late``, never dropped.
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
from ..names import is_sha256
from ..protocol import (
    AlertDefinition,
    AlertState,
    Event,
    FileChunk,
    FileOffer,
    FileReply,
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
from ..relay.partials import Partials, accumulate, finalize
from ..relay.partials import merge as merge_partials
from ..relay.root import RelayedPartials
from ..relay.wire import PartialBatch
from .reduce import Reduction, group_reduce

log = logging.getLogger(__name__)

INT64_MIN = np.iinfo(np.int64).min
INT64_MAX = np.iinfo(np.int64).max
LIVE, CLOSED, LOST = "live", "closed", "lost"
LIVE_RANKS = "simvue_hpc/live_ranks"  # the aggregator's metric of how many ranks are live
JOIN_GRACE = 1.0  # seconds a new metric waits for pool children that may still be connecting


# ---------------------------------------------------------------------------------------------- actions
@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``message`` to the rank behind ``identity``."""

    identity: bytes
    message: Message


@dataclass(frozen=True, slots=True)
class Append:
    """Append a record to the run's store."""

    type: RecordType
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True, eq=False)
class AppendMetrics:
    """Append reduced metric columns to the store."""

    names: list[str]
    name_id: np.ndarray
    step: np.ndarray
    time_us: np.ndarray
    value: np.ndarray
    late: bool = False


@dataclass(frozen=True, slots=True)
class FileWrite:
    """Write ``data`` at ``offset`` of the file being received; on ``final`` commit it and call
    :meth:`AggregatorState.file_done` with the outcome."""

    sha256: str
    offset: int
    data: bytes
    final: bool


@dataclass(frozen=True, slots=True)
class FileDiscard:
    """Drop a partly received file."""

    sha256: str


@dataclass(frozen=True, slots=True)
class Finish:
    """The run is over; the loop flushes the store and stops."""

    status: str


Action = Reply | Append | AppendMetrics | FileWrite | FileDiscard | Finish


# ---------------------------------------------------------------------------------------------- state
@dataclass(frozen=True)
class AggregatorConfig:
    """Timing and identity of one run's aggregator. Times are seconds."""

    run_id: str
    run_name: str
    secret: str
    expected_ranks: int | None = None  # the MPI world size; None when ranks come and go (pools)
    host_rank: int | None = 0  # whose goodbye starts the close; None: the loop calls begin_close
    step_timeout: float = 10.0
    rank_timeout: float = 60.0
    close_timeout: float = 60.0
    system_metrics_interval: float = 30.0
    terminate_grace: float = 5.0
    reductions: Mapping[str, Reduction] = field(default_factory=dict)


@dataclass
class _Peer:
    identity: bytes
    rank: int
    host: str
    pid: int
    last_seen: float
    next_seq: int = 1
    state: str = LIVE
    progress: int = INT64_MIN
    received_points: int = 0
    sent_points: int = 0
    dropped_points: int = 0


@dataclass
class _Metric:
    gid: int
    name: str
    reduction: Reduction
    first_seen: float
    contributors: set[int] = field(default_factory=set)
    settled: bool = False
    emitted: bool = False


@dataclass
class _Transfer:
    owner: bytes
    offer: FileOffer
    rank: int
    host: str
    offset: int = 0
    complete: bool = False  # the final chunk has come; the commit is under way
    waiters: list[tuple[bytes, FileOffer, int, str]] = field(default_factory=list)


class AggregatorState:
    """All that the aggregator knows about one run; see the module docstring for the rules."""

    def __init__(self, config: AggregatorConfig, now: float, wall_ns: Callable[[], int] = time.time_ns):
        self.config = config
        self._wall_ns = wall_ns
        self._peers: dict[bytes, _Peer] = {}
        self._ranks: dict[int, _Peer] = {}
        self._metrics: dict[str, _Metric] = {}
        self._by_gid: list[_Metric] = []
        self._final_step = np.full(16, INT64_MIN, dtype=np.int64)
        self._reductions = dict(config.reductions)
        self._out_ids: dict[str, int] = {}
        self._out_names: list[str] = []
        self._chunks: list[tuple[np.ndarray, ...]] = []
        self._relayed = RelayedPartials()  # node relays' partial accumulators
        self._relay_ranks: dict[int, int] = {}  # relay's rank -> ranks joined behind it
        self._files: set[str] = set()
        self._file_records: set[tuple[str, str, str]] = set()
        self._transfers: dict[str, _Transfer] = {}
        self._rejected: set[bytes] = set()
        self._ending: dict[str, list[str]] = {}  # failed / terminated -> who said so and why
        self._closing_since: float | None = None
        self._close_deadline: float | None = None
        self.finished = False
        self._alerts = AlertEvaluator()
        self.aborted: str | None = None
        self._live_reported = 0
        self._live_step = 0
        self._resources: dict[bytes, tuple[float, Resources]] = {}
        self._resources_step = 0
        self._resources_due = now + config.system_metrics_interval
        self.counters = {
            "points_received": 0,
            "points_stored": 0,
            "late_points": 0,
            "events": 0,
            "messages_lost": 0,
            "dropped_points": 0,
            "protocol_errors": 0,
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
        peer = self._peers.get(identity)
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
        if isinstance(msg, MetricBatch):
            self._ingest(peer, msg, now)
        elif isinstance(msg, PartialBatch):
            self._apply_reductions(peer.rank, msg.reductions, out)
            self._ingest_partials(peer, msg, now)
        elif isinstance(msg, Resources):
            self._resources[identity] = (now, msg)
        elif isinstance(msg, Event):
            self.counters["events"] += 1
            self._alerts.observe_event(msg.message, msg.time_ns // 1000)
            out.append(Append(RecordType.EVENT, {
                "message": msg.message, "time_us": msg.time_ns // 1000,
                "rank": peer.rank, "host": peer.host, "level": msg.level,
            }))  # fmt: skip
        elif isinstance(msg, Heartbeat):
            peer.sent_points = msg.sent_points
            peer.dropped_points = msg.dropped_points
        elif isinstance(msg, Goodbye):
            self._goodbye(peer, msg, now, out)
        elif isinstance(msg, FileOffer):
            self._file_offer(peer, msg, out)
        elif isinstance(msg, FileChunk):
            self._file_chunk(peer, msg, out)
        elif isinstance(msg, RunUpdate):
            update = {k: v for k, v in msg.body().items() if v is not None}
            if update:
                out.append(Append(RecordType.RUN_UPDATE, update))
        elif isinstance(msg, FolderDetails):
            out.append(Append(RecordType.FOLDER, msg.body()))
        elif isinstance(msg, AlertDefinition):
            try:
                self._alerts.add(dict(msg.definition), self._wall_ns() // 1000)
            except ValueError as exc:
                self._event(f"alert from rank {peer.rank} not evaluated: {exc}", "warning", out)
            else:
                out.append(Append(RecordType.ALERT, dict(msg.definition)))
        elif isinstance(msg, AlertState):
            try:
                transitions = self._alerts.set_user_state(msg.name, msg.state, self._wall_ns() // 1000)
            except ValueError as exc:
                self._event(f"alert state from rank {peer.rank} ignored: {exc}", "warning", out)
            else:
                for transition in transitions:
                    self._transition(transition, now, out)
        elif isinstance(msg, Status):
            out += self.set_status(msg.status, msg.reason, rank=peer.rank, host=peer.host)
        else:
            self.counters["protocol_errors"] += 1
            log.warning("rank %d sent %s, which ranks do not send", peer.rank, type(msg).__name__)
        return out

    def protocol_error(self, identity: bytes, reason: str) -> list[Action]:
        """A message from ``identity`` could not be decoded: counted and answered, never fatal."""
        self.counters["protocol_errors"] += 1
        peer = self._peers.get(identity)
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
        return [Append(RecordType.STATUS, {
            "status": status, "time_us": self._wall_ns() // 1000, "rank": rank, "reason": reason,
        })]  # fmt: skip

    def record_event(self, message: str, level: str, host: str | None) -> list[Action]:
        """An event from outside the ranks (the sidecar): stored like a rank's, seen by event alerts."""
        self.counters["events"] += 1
        time_us = self._wall_ns() // 1000
        self._alerts.observe_event(message, time_us)
        return [Append(RecordType.EVENT, {"message": message, "time_us": time_us, "rank": None, "host": host,
                                          "level": level})]  # fmt: skip

    def begin_close(self, now: float, timeout: float | None = None) -> None:
        """Start the closing countdown (the host said goodbye, died, or the sidecar's command ended);
        the other ranks get ``timeout`` (default ``close_timeout``) to say goodbye."""
        if self._closing_since is None:
            self._closing_since = now
        deadline = now + (self.config.close_timeout if timeout is None else timeout)
        self._close_deadline = deadline if self._close_deadline is None else min(self._close_deadline, deadline)

    def terminate(self, reason: str, now: float) -> list[Action]:
        """SIGTERM or SIGINT reached the aggregator (``scancel``, a time limit): mark the run terminated
        and close within ``terminate_grace``, keeping what the ranks flush meanwhile."""
        out = self.set_status("terminated", reason)
        self.begin_close(now, self.config.terminate_grace)
        return out

    def host_gone(self, now: float) -> list[Action]:
        """The host process ended; without a goodbye it died, and the run failed."""
        host = self._ranks.get(self.config.host_rank) if self.config.host_rank is not None else None
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
        for peer in self._peers.values():
            if peer.state == LIVE:
                out.append(Reply(peer.identity, Notice("abort", reason)))
        return out

    def tick(self, now: float) -> list[Action]:
        """Timers: lost ranks, final steps, the end of the run."""
        out: list[Action] = []
        if self.finished:
            return out
        for peer in self._peers.values():
            if peer.state == LIVE and now - peer.last_seen > self.config.rank_timeout:
                self._lose(peer, f"silent for {now - peer.last_seen:.0f} s", out)
        self._reduce(now, out, final=False)
        for transition in self._alerts.evaluate(self._wall_ns() // 1000):
            self._transition(transition, now, out)
        if now >= self._resources_due:
            self._resources_due = now + self.config.system_metrics_interval
            self._report_resources(now, out)
        if self._closing_since is not None and self._close_deadline is not None:
            done = all(p.state != LIVE for p in self._peers.values()) and self._all_joined()
            if done or now >= self._close_deadline:
                self._finish(now, out)
        return out

    def live_pids_on(self, host: str) -> dict[bytes, int]:
        """Live ranks on ``host`` (the aggregator's own), so the loop can see which have exited."""
        return {p.identity: p.pid for p in self._peers.values() if p.state == LIVE and p.host == host}

    def process_exited(self, identity: bytes) -> list[Action]:
        """The process of a live rank on this host has exited without a goodbye: lost now, rather
        than after ``rank_timeout`` of silence."""
        out: list[Action] = []
        peer = self._peers.get(identity)
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
        out: list[Action] = []
        transfer = self._transfers.pop(sha256, None)
        if transfer is None:
            return out
        if ok:
            self._files.add(sha256)
            self._file_record(transfer.offer, transfer.rank, transfer.host, out)
            out.append(Reply(transfer.owner, FileReply(sha256, "stored")))
            for identity, offer, rank, host in transfer.waiters:
                self._file_record(offer, rank, host, out)
                out.append(Reply(identity, FileReply(sha256, "stored")))
        else:
            out.append(Reply(transfer.owner, FileReply(sha256, "error", reason)))
            self._promote_waiter(transfer, out)
        return out

    # ------------------------------------------------------------------------------------------ queries
    @property
    def closing(self) -> bool:
        return self._closing_since is not None

    def next_deadline(self, now: float) -> float:
        """Latest time the loop may wait before calling :meth:`tick` again."""
        return now + min(0.05, self.config.step_timeout / 4)  # alerts and resources are due far less often

    def ranks(self) -> dict[int, str]:
        """Rank -> state, for reports."""
        return {p.rank: p.state for p in self._peers.values()}

    # ------------------------------------------------------------------------------------------ helpers
    def _hello(self, identity: bytes, seq: int, msg: Hello, now: float, out: list[Action]) -> None:
        if not hmac.compare_digest(msg.secret.encode(), self.config.secret.encode()):
            out.append(Reply(identity, Reject("wrong secret for this run")))
            return
        rank = msg.rank
        existing = self._ranks.get(rank) if rank >= 0 else None
        if existing is not None and existing.identity != identity and existing.state == LIVE:
            out.append(Reply(identity, Reject(
                f"rank {rank} is already connected from {existing.host} (pid {existing.pid}): "
                "are all ranks of this job seeing a world of size 1?"
            )))  # fmt: skip
            return
        if rank < 0:
            # Past the world when there is one; from 1 in a pool (the parent is 0); from 0 under a
            # sidecar, which is no rank itself.
            floor = self.config.expected_ranks or (0 if self.config.host_rank is None else 1)
            rank = max([floor - 1, *self._ranks]) + 1
        peer = _Peer(identity, rank, msg.host, msg.pid, last_seen=now, next_seq=seq + 1)
        old = self._peers.pop(identity, None)
        if old is not None:
            self._ranks.pop(old.rank, None)
        if existing is not None:  # the rank reconnected after closing or being lost: forget the old link
            self._peers.pop(existing.identity, None)
        self._peers[identity] = peer
        self._ranks[rank] = peer
        self._rejected.discard(identity)
        self._apply_reductions(rank, msg.reductions, out)
        self._record_rank(peer, "joined", out)
        out.append(Reply(identity, Welcome(rank, self.config.run_id, self.config.run_name)))
        if self.aborted is not None:
            out.append(Reply(identity, Notice("abort", self.aborted)))
        self._live_changed(out)

    def _apply_reductions(self, rank: int, reductions: dict[str, list[str]], out: list[Action]) -> None:
        """A rank's (or a relay's ranks') reductions apply to the run's metrics not yet stored."""
        for name, spec in reductions.items():
            try:
                reduction = Reduction.parse(name, spec)
            except ValueError as exc:
                self._event(f"rank {rank}: ignored reduction: {exc}", "warning", out)
                continue
            self._reductions[name] = reduction
            metric = self._metrics.get(name)
            if metric is not None and not metric.emitted:
                metric.reduction = reduction

    def _sequence(self, peer: _Peer, seq: int, out: list[Action]) -> None:
        gap = (seq - peer.next_seq) & 0xFFFFFFFF
        if gap and gap < 0x80000000:
            self.counters["messages_lost"] += gap
            self._event(f"{gap} message(s) from rank {peer.rank} on {peer.host} lost in transit", "warning", out)
        peer.next_seq = (seq + 1) & 0xFFFFFFFF

    def _metric(self, name: str, now: float) -> _Metric:
        metric = self._metrics.get(name)
        if metric is None:
            reduction = self._reductions.get(name, Reduction())
            metric = _Metric(len(self._by_gid), name, reduction, first_seen=now)
            self._metrics[name] = metric
            self._by_gid.append(metric)
            if metric.gid >= len(self._final_step):
                grown = np.full(2 * len(self._final_step), INT64_MIN, dtype=np.int64)
                grown[: len(self._final_step)] = self._final_step
                self._final_step = grown
        return metric

    def _ingest(self, peer: _Peer, batch: MetricBatch, now: float) -> None:
        n = len(batch.value)
        if n == 0:
            return
        used = np.bincount(batch.name_id, minlength=len(batch.names)) > 0
        lut = np.empty(len(batch.names), dtype=np.int64)
        for i, name in enumerate(batch.names):
            metric = self._metric(name, now)
            lut[i] = metric.gid
            if used[i]:
                metric.contributors.add(peer.rank)
        peer.received_points += n
        peer.progress = max(peer.progress, int(batch.step.max()))
        self.counters["points_received"] += n
        self._chunks.append((
            lut[batch.name_id], batch.step.astype(np.int64), np.full(n, peer.rank, dtype=np.int64),
            batch.time_ns.astype(np.int64), batch.value.astype(np.float64), np.full(n, now),
        ))  # fmt: skip

    def _ingest_partials(self, peer: _Peer, batch: PartialBatch, now: float) -> None:
        """A relay's accumulators: its ``through`` is its progress, its ranks count as contributors."""
        lut = np.array([self._metric(name, now).gid for name in batch.names], dtype=np.int64)
        for name in batch.contributors:
            if name in self._metrics:
                self._metrics[name].contributors.add(peer.rank)
        self._relay_ranks[peer.rank] = batch.ranks
        n = self._relayed.add(peer.rank, lut, batch, now)
        peer.received_points += n
        peer.progress = max(peer.progress, batch.through + 1)
        self.counters["points_received"] += n

    def _joined(self) -> int:
        """Ranks joined: those connected here, and those behind relays (a relay is not one of them)."""
        return len(self._ranks) - len(self._relay_ranks) + sum(self._relay_ranks.values())

    def _all_joined(self) -> bool:
        expected = self.config.expected_ranks
        return expected is None or self._joined() >= expected

    def _watermark(self, metric: _Metric, now: float) -> int:
        """Largest final step of ``metric`` from the contributors' progress alone."""
        live = [p for r in metric.contributors if (p := self._ranks.get(r)) is not None and p.state == LIVE]
        if not metric.settled:
            age = now - metric.first_seen
            live_ranks = [p for p in self._peers.values() if p.state == LIVE]
            if self.config.expected_ranks is None:
                # Ranks come and go (a pool): wait for those that log at all, not for a parent that
                # never does, after a short grace for children still connecting.
                everyone = {p.rank for p in live_ranks if p.progress > INT64_MIN}
                ready = everyone <= metric.contributors and age >= min(JOIN_GRACE, self.config.step_timeout)
            else:
                ready = self._all_joined() and {p.rank for p in live_ranks} <= metric.contributors
            if ready or age >= self.config.step_timeout:
                metric.settled = True
        if not metric.settled:
            # Even with no live contributor left (all closed or lost): a rank that has not joined
            # or not logged the metric yet may still send points for any of its steps.
            return INT64_MIN
        if not live:
            return INT64_MAX
        low = min(p.progress for p in live)
        return low - 1 if low > INT64_MIN else INT64_MIN

    def _reduce(self, now: float, out: list[Action], final: bool) -> None:
        relayed = self._relayed.pending_gids()
        if not self._chunks and not len(relayed):
            return
        if len(self._chunks) > 1:
            cols = [np.concatenate(c) for c in zip(*self._chunks, strict=True)]
        elif self._chunks:
            cols = list(self._chunks[0])
        else:
            cols = [np.empty(0, np.int64)] * 4 + [np.empty(0), np.empty(0)]
        gid, step, rank, t_ns, value, arrived = cols
        late = step <= self._final_step[gid]
        nmetrics = len(self._by_gid)
        wm = np.full(nmetrics, INT64_MAX if final else INT64_MIN, dtype=np.int64)
        if not final:
            for g in np.union1d(np.unique(gid), relayed):
                wm[g] = self._watermark(self._by_gid[int(g)], now)
            old = arrived <= now - self.config.step_timeout
            if old.any():
                np.maximum.at(wm, gid[old], step[old])
            self._relayed.force_old(wm, now, self.config.step_timeout)
        ready = (step <= wm[gid]) & ~late
        ready_p, late_p = self._relayed.take(wm, self._final_step[:nmetrics])
        if late.any() or len(late_p):
            self.counters["late_points"] += int(late.sum()) + int(late_p.count.sum())
            self._emit(gid[late], step[late], rank[late], t_ns[late], value[late], out, late=True, partials=late_p)
        if ready.any() or len(ready_p):
            g_r, s_r = np.concatenate([gid[ready], ready_p.metric]), np.concatenate([step[ready], ready_p.step])
            self._emit(gid[ready], step[ready], rank[ready], t_ns[ready], value[ready], out, late=False,
                       partials=ready_p)  # fmt: skip
            top = np.full(nmetrics, INT64_MIN, dtype=np.int64)
            np.maximum.at(top, g_r, s_r)
            final_now = np.where(wm == INT64_MAX, top, wm)
            np.maximum(self._final_step[:nmetrics], final_now, out=self._final_step[:nmetrics])
        keep = ~(ready | late)
        self._chunks = [tuple(c[keep] for c in cols)] if keep.any() else []

    def _out_id(self, name: str) -> int:
        oid = self._out_ids.get(name)
        if oid is None:
            oid = self._out_ids[name] = len(self._out_names)
            self._out_names.append(name)
        return oid

    def _emit(
        self, gid: np.ndarray, step: np.ndarray, rank: np.ndarray, t_ns: np.ndarray, value: np.ndarray,
        out: list[Action], late: bool, partials: Partials | None = None,
    ) -> None:  # fmt: skip
        """Turn final points (and relays' partials) into stored columns: raw for single-rank metrics,
        reduced otherwise."""
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        mode = np.empty(len(self._by_gid), dtype=np.int8)  # 0 raw, 1 per rank, 2 reduced
        for metric in self._by_gid:
            behind, relays = self._relayed.ranks_behind(metric.gid)
            ranks = len(metric.contributors - relays) + behind
            metric_mode = 1 if metric.reduction.per_rank else (0 if ranks <= 1 else 2)
            mode[metric.gid] = metric_mode
        if partials is not None and len(partials):
            # a relay's rows of a single-rank metric (or a per-rank one: relays forward no such rows)
            # are stored as that rank's points would be: the value, count 1, is the mean
            single = mode[partials.metric] != 2
            if single.any():
                raw = finalize(partials.rows(single))
                gid = np.concatenate([gid, raw.metric])
                step = np.concatenate([step, raw.step])
                rank = np.concatenate([rank, np.full(len(raw.step), -1, dtype=np.int64)])
                t_ns = np.concatenate([t_ns, raw.time_ns])
                value = np.concatenate([value, raw.mean])
                partials = partials.rows(~single)
        point_mode = mode[gid]
        for g in np.unique(np.concatenate([gid, partials.metric]) if partials is not None else gid):
            self._by_gid[int(g)].emitted = True
        raw = point_mode == 0
        if raw.any():
            lut = np.array([self._out_id(m.name) for m in self._by_gid], dtype=np.int64)
            parts.append((lut[gid[raw]], step[raw], t_ns[raw], value[raw]))
        per_rank = point_mode == 1
        if per_rank.any():
            g_p, r_p = gid[per_rank], rank[per_rank]
            pairs, inverse = np.unique(np.stack([g_p, r_p]), axis=1, return_inverse=True)
            ids = np.array(
                [self._out_id(f"{self._by_gid[int(g)].name}/rank_{int(r)}") for g, r in pairs.T], dtype=np.int64
            )
            parts.append((ids[inverse.ravel()], step[per_rank], t_ns[per_rank], value[per_rank]))
        reduced = point_mode == 2
        if partials is not None and len(partials):  # merge the flat points into the relays' accumulators
            flat = accumulate(gid[reduced], step[reduced], t_ns[reduced], value[reduced])
            groups: Any = finalize(merge_partials([flat, partials]))
        elif reduced.any():
            groups = group_reduce(gid[reduced], step[reduced], t_ns[reduced], value[reduced])
        if (partials is not None and len(partials)) or reduced.any():
            for g in np.unique(groups.metric):
                metric = self._by_gid[int(g)]
                sel = groups.metric == g
                names = metric.reduction.output_names(metric.name)
                for op, name in zip(metric.reduction.operations, names, strict=True):
                    oid = self._out_id(name)
                    col = groups.column(op)[sel]
                    parts.append((np.full(len(col), oid, np.int64), groups.step[sel], groups.time_ns[sel], col))
        if not parts:
            return
        out_id = np.concatenate([p[0] for p in parts])
        used, local = np.unique(out_id, return_inverse=True)
        values = np.concatenate([p[3] for p in parts])
        self.counters["points_stored"] += len(values)
        self._append_metrics(AppendMetrics(
            names=[self._out_names[int(i)] for i in used],
            name_id=local.astype(np.uint32),
            step=np.concatenate([p[1] for p in parts]),
            time_us=np.concatenate([p[2] for p in parts]) // 1000,
            value=values,
            late=late,
        ), out)  # fmt: skip

    def _goodbye(self, peer: _Peer, msg: Goodbye, now: float, out: list[Action]) -> None:
        if peer.state == CLOSED:  # a repeated goodbye: acknowledge again, count nothing twice
            out.append(Reply(peer.identity, GoodbyeAck(peer.received_points)))
            return
        peer.state = CLOSED
        peer.sent_points = msg.sent_points
        peer.dropped_points = msg.dropped_points
        self.counters["dropped_points"] += msg.dropped_points
        self._record_rank(peer, "closed", out, sent_points=msg.sent_points, received_points=peer.received_points,
                          dropped_points=msg.dropped_points)  # fmt: skip
        if msg.dropped_points:
            detail = ", ".join(f"{k}: {v}" for k, v in sorted(msg.dropped.items()))
            self._event(f"rank {peer.rank} on {peer.host} dropped {msg.dropped_points} point(s) when its "
                        f"buffer was full ({detail})", "warning", out)  # fmt: skip
        if msg.sent_points != peer.received_points:
            self._event(f"rank {peer.rank} on {peer.host} sent {msg.sent_points} point(s), "
                        f"{peer.received_points} arrived", "warning", out)  # fmt: skip
        out.append(Reply(peer.identity, GoodbyeAck(peer.received_points)))
        self._drop_transfers_of(peer.identity, out)
        self._live_changed(out)
        if self.config.host_rank is not None and peer.rank == self.config.host_rank:
            self.begin_close(now)

    def _file_offer(self, peer: _Peer, offer: FileOffer, out: list[Action]) -> None:
        sha = offer.sha256
        if not is_sha256(sha):
            out.append(Reply(peer.identity, FileReply(sha, "error", "sha256 must be 64 lowercase hex digits")))
        elif sha in self._files:
            self._file_record(offer, peer.rank, peer.host, out)
            out.append(Reply(peer.identity, FileReply(sha, "stored")))
        elif sha in self._transfers:
            self._transfers[sha].waiters.append((peer.identity, offer, peer.rank, peer.host))
        else:
            self._transfers[sha] = _Transfer(peer.identity, offer, peer.rank, peer.host)
            out.append(Reply(peer.identity, FileReply(sha, "need")))

    def _file_chunk(self, peer: _Peer, chunk: FileChunk, out: list[Action]) -> None:
        transfer = self._transfers.get(chunk.sha256)
        if transfer is None or transfer.owner != peer.identity:
            out.append(Reply(peer.identity, FileReply(chunk.sha256, "error", "no transfer of this file is open")))
            return
        if (
            transfer.complete
            or chunk.offset != transfer.offset
            or transfer.offset + len(chunk.data) > transfer.offer.size
        ):
            out.append(FileDiscard(chunk.sha256))
            out.append(Reply(peer.identity, FileReply(chunk.sha256, "error", "chunk out of order or past the size")))
            del self._transfers[chunk.sha256]
            self._promote_waiter(transfer, out)
            return
        transfer.offset += len(chunk.data)
        transfer.complete = chunk.final
        out.append(FileWrite(chunk.sha256, chunk.offset, chunk.data, chunk.final))

    def _promote_waiter(self, transfer: _Transfer, out: list[Action]) -> None:
        if transfer.waiters:
            identity, offer, rank, host = transfer.waiters[0]
            self._transfers[offer.sha256] = _Transfer(identity, offer, rank, host, waiters=transfer.waiters[1:])
            out.append(Reply(identity, FileReply(offer.sha256, "need")))

    def _drop_transfers_of(self, identity: bytes, out: list[Action]) -> None:
        for sha, transfer in list(self._transfers.items()):
            if transfer.owner == identity:
                del self._transfers[sha]
                out.append(FileDiscard(sha))
                self._promote_waiter(transfer, out)
            else:
                transfer.waiters = [w for w in transfer.waiters if w[0] != identity]

    def _file_record(self, offer: FileOffer, rank: int, host: str, out: list[Action]) -> None:
        key = (offer.sha256, offer.name, offer.category)
        if key in self._file_records:
            return
        self._file_records.add(key)
        out.append(Append(RecordType.FILE, {
            "name": offer.name, "category": offer.category, "sha256": offer.sha256, "size": offer.size,
            "original_path": offer.original_path, "mime_type": offer.mime_type, "rank": rank, "host": host,
            "time_us": offer.time_ns // 1000,
        }))  # fmt: skip

    def _record_rank(self, peer: _Peer, state: str, out: list[Action], **extra: Any) -> None:
        payload = {"rank": peer.rank, "host": peer.host, "pid": peer.pid, "state": state,
                   "time_us": self._wall_ns() // 1000, **extra}  # fmt: skip
        out.append(Append(RecordType.RANK, payload))

    def _event(self, message: str, level: str, out: list[Action]) -> None:
        log.warning(message) if level != "info" else log.info(message)
        out.append(Append(RecordType.EVENT, {"message": message, "time_us": self._wall_ns() // 1000,
                                              "rank": None, "host": None, "level": level}))  # fmt: skip

    def _lose(self, peer: _Peer, why: str, out: list[Action]) -> None:
        peer.state = LOST
        self._record_rank(peer, "lost", out)
        self._event(f"rank {peer.rank} on {peer.host} lost: {why}", "warning", out)
        self._drop_transfers_of(peer.identity, out)
        self._live_changed(out)

    def _append_metrics(self, action: AppendMetrics, out: list[Action]) -> None:
        """Store reduced points; the alerts see exactly what is stored."""
        out.append(action)
        self._alerts.observe_metrics(action.names, action.name_id, action.time_us, action.value)

    def _series(self, values: dict[str, float], step: int, out: list[Action]) -> None:
        """One point per name at ``step``, now: the aggregator's own metrics (live ranks, resources)."""
        n = len(values)
        self._append_metrics(AppendMetrics(
            names=list(values), name_id=np.arange(n, dtype=np.uint32), step=np.full(n, step, dtype=np.int64),
            time_us=np.full(n, self._wall_ns() // 1000, dtype=np.int64),
            value=np.array(list(values.values()), dtype=np.float64),
        ), out)  # fmt: skip

    def _live_changed(self, out: list[Action]) -> None:
        live = sum(1 for p in self._peers.values() if p.state == LIVE)
        if live != self._live_reported:
            self._live_reported = live
            self._series({LIVE_RANKS: float(live)}, self._live_step, out)
            self._live_step += 1

    def _report_resources(self, now: float, out: list[Action]) -> None:
        """Per node: the sum over its ranks' processes; the job: the sum over nodes (CPU, memory) and
        the mean over nodes (each GPU index). Per-node series only when there are several nodes."""
        fresh = 2 * self.config.system_metrics_interval
        nodes: dict[str, list[float]] = {}
        gpus: dict[str, dict[int, tuple[float, float]]] = {}
        for identity, (seen, report) in list(self._resources.items()):
            peer = self._peers.get(identity)
            if peer is None or peer.state != LIVE or now - seen > fresh:
                del self._resources[identity]
                continue
            cpu_mem = nodes.setdefault(peer.host, [0.0, 0.0])
            cpu_mem[0] += report.cpu_percent
            cpu_mem[1] += report.memory_mb
            for index, util, mem in report.gpus:
                gpus.setdefault(peer.host, {})[int(index)] = (util, mem)
        if not nodes:
            return
        values = {
            "resources/cpu.usage.percentage": sum(c for c, _ in nodes.values()),
            "resources/cpu.usage.memory": sum(m for _, m in nodes.values()),
        }
        for index in sorted({i for per_node in gpus.values() for i in per_node}):
            seen_on = [per_node[index] for per_node in gpus.values() if index in per_node]
            values[f"resources/gpu.utilisation.percent.{index}"] = sum(u for u, _ in seen_on) / len(seen_on)
            values[f"resources/gpu.utilisation.memory.{index}"] = sum(m for _, m in seen_on) / len(seen_on)
        if len(nodes) > 1:
            for host, (cpu, mem) in sorted(nodes.items()):
                values[f"resources/{host}/cpu.usage.percentage"] = cpu
                values[f"resources/{host}/cpu.usage.memory"] = mem
                for index, (util, gmem) in sorted(gpus.get(host, {}).items()):
                    values[f"resources/{host}/gpu.utilisation.percent.{index}"] = util
                    values[f"resources/{host}/gpu.utilisation.memory.{index}"] = gmem
        self._series(values, self._resources_step, out)
        self._resources_step += 1

    def _transition(self, transition: Transition, now: float, out: list[Action]) -> None:
        """An alert changed state: an event and an ALERT_STATE record; an abort if it asks for one."""
        level = "warning" if transition.status == "critical" else "info"
        self._event(transition.message, level, out)
        out.append(Append(RecordType.ALERT_STATE, {
            "name": transition.name, "status": transition.status, "time_us": transition.time_us,
            "message": transition.message,
        }))  # fmt: skip
        if transition.abort:
            out += self.abort(f"alert '{transition.name}' is critical")

    def _finish(self, now: float, out: list[Action]) -> None:
        self._reduce(now, out, final=True)
        missing = sorted(p.rank for p in self._peers.values() if p.state == LIVE)
        for rank in missing:
            self._record_rank(self._ranks[rank], "missing", out)
        never = []
        if self.config.expected_ranks is not None and self._joined() < self.config.expected_ranks:
            never = [r for r in range(self.config.expected_ranks) if r not in self._ranks]
            for rank in never:
                out.append(
                    Append(
                        RecordType.RANK,
                        {
                            "rank": rank,
                            "host": None,
                            "pid": None,
                            "state": "missing",
                            "time_us": self._wall_ns() // 1000,
                            "joined": False,
                        },
                    )
                )
        lost = sorted(p.rank for p in self._peers.values() if p.state == LOST)
        if missing or never:
            self._event(f"closed without a goodbye from rank(s) {sorted(missing + never)}", "warning", out)
        for sha in list(self._transfers):
            out.append(FileDiscard(sha))
        self._transfers.clear()
        status = next((s for s in ("terminated", "failed") if s in self._ending), "completed")
        out.append(Append(RecordType.END, {
            "status": status, "time_us": self._wall_ns() // 1000, "missing_ranks": sorted(missing + never),
            "lost_ranks": lost, "counters": dict(self.counters),
        }))  # fmt: skip
        self.finished = True
        out.append(Finish(status))
