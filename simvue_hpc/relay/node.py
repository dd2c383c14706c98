"""A node relay's sans-I/O core: the node's ranks' messages in, replies to them and one stream upward out.

The relay stands between the ranks of one node and the run's aggregator. To its ranks it speaks the
aggregator's side of the protocol (HELLO → WELCOME, GOODBYE → GOODBYE_ACK, FILE_REPLY routed back);
upward it is one peer of the aggregator that sends:

* PARTIALS instead of its ranks' METRICS: their points accumulated per (metric, step) with the
  aggregator's own mergeable accumulators (``aggregator/accumulate.py``), flushed every flush
  interval, with ``through``: the step up to which every live local rank that logs has sent
  everything (a rank's steps only grow), so the aggregator's watermark treats the relay as one
  contributor whose progress is ``through + 1``;
* the ranks' events, status, run updates, folders, alerts and resources, unchanged (the relay is
  their sender), and their files (offers and chunks up, the aggregator's FILE_REPLY back to every
  local rank waiting for that checksum);
* liveness: a local rank silent for ``rank_timeout`` is reported up as lost (an event) and stops
  holding ``through`` back; the relay's own heartbeats and messages show it alive.

``handle`` and ``tick`` return ``(target, message)`` pairs: ``UP`` for the aggregator, otherwise the
local rank's routing identity. Nothing here sleeps or touches a socket.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..aggregator.accumulate import Partials, accumulate
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
    Reject,
    Resources,
    RunUpdate,
    Status,
    Welcome,
)
from .wire import PartialBatch

log = logging.getLogger(__name__)

UP = b""  # the target of messages for the aggregator
INT64_MIN = -(2**63)
FORWARDED = (Event, Status, RunUpdate, FolderDetails, AlertDefinition, AlertState, Resources)
Out = list[tuple[bytes, Message]]


@dataclass
class _Local:
    identity: bytes
    rank: int
    host: str
    pid: int
    last_seen: float
    live: bool = True
    progress: int = INT64_MIN  # the largest step sent; INT64_MIN: nothing logged yet
    received_points: int = 0


@dataclass
class RelayCore:
    """One node's ranks; ``expected`` is how many the launcher put on this node (None: unknown)."""

    secret: str
    node: str
    expected: int | None
    now: float
    step_timeout: float = 10.0
    rank_timeout: float = 60.0
    wall_ns: Callable[[], int] = time.time_ns
    run_id: str = ""
    run_name: str = ""
    flush_interval: float = 0.0  # the aggregator's budget for this relay, from its WELCOME
    message_budget: float = 1000.0  # METRICS messages per second this relay takes from its ranks
    _locals: dict[bytes, _Local] = field(default_factory=dict)
    _by_rank: dict[int, _Local] = field(default_factory=dict)
    _names: dict[str, int] = field(default_factory=dict)
    _contributors: dict[int, set[int]] = field(default_factory=dict)  # metric id -> local ranks
    _staged: list[tuple[np.ndarray, ...]] = field(default_factory=list)  # (metric id, step, time, value)
    _files: dict[str, list[bytes]] = field(default_factory=dict)  # sha256 -> local ranks waiting
    _reductions: dict[str, list[str]] = field(default_factory=dict)  # from HELLOs, not yet sent up
    _started: float = 0.0
    ended: bool = False

    def __post_init__(self) -> None:
        self._started = self.now

    # -------------------------------------------------------------------------------------- upward
    def welcomed(self, welcome: Welcome) -> None:
        """The aggregator accepted this relay: ranks may now be welcomed into its run."""
        self.run_id, self.run_name, self.flush_interval = welcome.run_id, welcome.run_name, welcome.flush_interval

    def from_aggregator(self, msg: Message) -> Out:
        """A reply of the aggregator: file replies go to the local ranks waiting for them."""
        if isinstance(msg, FileReply):
            waiting = self._files.get(msg.sha256, [])
            if msg.status != "need":
                self._files.pop(msg.sha256, None)
            return [(identity, msg) for identity in waiting[: 1 if msg.status == "need" else None]]
        if isinstance(msg, Reject):
            self.ended = True
        return [(p.identity, msg) for p in self._locals.values() if p.live] if not isinstance(msg, GoodbyeAck) else []

    # -------------------------------------------------------------------------------------- local ranks
    def handle(self, identity: bytes, msg: Message, now: float) -> Out:
        """One message of a local rank."""
        if isinstance(msg, Hello):
            return self._hello(identity, msg, now)
        peer = self._locals.get(identity)
        if peer is None:
            return [(identity, Reject("send HELLO first"))]
        peer.last_seen = now
        if not peer.live:  # back after being reported lost
            peer.live = True
        if isinstance(msg, MetricBatch):
            return self._metrics(peer, msg)
        if isinstance(msg, Goodbye):
            peer.live = False  # closed: it no longer holds ``through`` back
            out = self.flush()
            if msg.sent_points != peer.received_points:
                out.append(
                    (
                        UP,
                        self._event(
                            f"rank {peer.rank} on {self.node} sent {msg.sent_points} point(s), "
                            f"{peer.received_points} reached its relay",
                            "warning",
                        ),
                    )
                )
            if msg.dropped_points:
                out.append(
                    (
                        UP,
                        self._event(
                            f"rank {peer.rank} on {self.node} dropped {msg.dropped_points} "
                            "point(s) when its buffer was full",
                            "warning",
                        ),
                    )
                )
            out.append((identity, GoodbyeAck(peer.received_points)))
            return out
        if isinstance(msg, Heartbeat):
            return []
        if isinstance(msg, FileOffer):
            self._files.setdefault(msg.sha256, []).append(identity)
            return [(UP, msg)]
        if isinstance(msg, FileChunk):
            return [(UP, msg)]
        if isinstance(msg, FORWARDED):
            return [(UP, msg)]
        return []

    def _hello(self, identity: bytes, msg: Hello, now: float) -> Out:
        if not hmac.compare_digest(msg.secret.encode(), self.secret.encode()):
            return [(identity, Reject("wrong secret for this run"))]
        if msg.rank < 0:
            return [(identity, Reject("a rank behind a node relay must know its rank (MPI, Slurm)"))]
        other = self._by_rank.get(msg.rank)
        if other is not None and other.live and other.identity != identity:
            return [(identity, Reject(f"rank {msg.rank} is already connected from {other.host} (pid {other.pid})"))]
        peer = _Local(identity, msg.rank, msg.host, msg.pid, now)
        if other is not None:  # a rank back on a new connection keeps its progress
            peer.progress = other.progress
            self._locals.pop(other.identity, None)
        self._locals[identity] = peer
        self._by_rank[msg.rank] = peer
        self._reductions.update(msg.reductions)
        return [(identity, Welcome(msg.rank, self.run_id, self.run_name, self.rank_flush_interval()))]

    def rank_flush_interval(self) -> float:
        """The ranks' share of this relay's message budget (at least the aggregator's interval)."""
        ranks = max(self.expected or 0, len(self._by_rank) + 1)
        return max(self.flush_interval, ranks / self.message_budget)

    def _metrics(self, peer: _Local, batch: MetricBatch) -> Out:
        n = len(batch.value)
        if n == 0:
            return []
        lut = np.array([self._names.setdefault(name, len(self._names)) for name in batch.names], dtype=np.int64)
        for i in np.flatnonzero(np.bincount(batch.name_id, minlength=len(batch.names))):
            self._contributors.setdefault(int(lut[i]), set()).add(peer.rank)
        # staged as they come, accumulated once per flush: a message costs an append, not a reduction
        self._staged.append((lut[batch.name_id], batch.step, batch.time_ns, batch.value))
        peer.received_points += n
        peer.progress = max(peer.progress, int(batch.step.max()))
        return []

    # -------------------------------------------------------------------------------------- timers
    def through(self) -> int:
        """The step up to which every live local rank that logs has sent all its points."""
        settled = (self.expected is not None and len(self._by_rank) >= self.expected) or (
            self.now - self._started >= self.step_timeout
        )
        if not settled:
            return INT64_MIN
        logging_ranks = [p for p in self._by_rank.values() if p.progress > INT64_MIN]
        live = [p.progress for p in logging_ranks if p.live]
        if live:
            return min(live) - 1
        return max((p.progress for p in logging_ranks), default=INT64_MIN)

    def flush(self) -> Out:
        """Everything accumulated so far as one PARTIALS (also sent empty: ``through`` may have moved)."""
        rows = Partials.empty()
        if self._staged:
            metric, step, time_ns, value = (np.concatenate(c) for c in zip(*self._staged, strict=True))
            rows = accumulate(metric, step, time_ns, value)
            self._staged = []
        names = list(self._names)
        contributors = {names[g]: len(ranks) for g, ranks in self._contributors.items()}
        reductions, self._reductions = self._reductions, {}
        return [(UP, PartialBatch(names, self.through(), contributors, rows, len(self._by_rank), reductions))]

    def tick(self, now: float) -> Out:
        """Lost ranks; the caller flushes on its own interval."""
        self.now = now
        out: Out = []
        for peer in self._by_rank.values():
            if peer.live and now - peer.last_seen > self.rank_timeout:
                peer.live = False
                out.append(
                    (
                        UP,
                        self._event(
                            f"rank {peer.rank} on {self.node} lost: silent for "
                            f"{now - peer.last_seen:.0f} s (behind its node's relay)",
                            "warning",
                        ),
                    )
                )
        return out

    def all_closed(self) -> bool:
        """Every expected local rank has joined and none is live."""
        joined = self.expected is None or len(self._by_rank) >= self.expected
        return joined and bool(self._by_rank) and not any(p.live for p in self._by_rank.values())

    def points(self) -> int:
        return sum(p.received_points for p in self._by_rank.values())

    def _event(self, message: str, level: str) -> Event:
        log.warning(message) if level != "info" else log.info(message)
        return Event(message, self.wall_ns(), level)
