"""Acknowledgements to ranks, and the resent points a restarted aggregator must not store twice.

A rank whose HELLO says ``resend`` keeps every data message it sent until an ACK covers it. The
acknowledgement of a link is the highest sequence ``s`` such that every message up to ``s`` is in the
store: a METRICS batch counts once every metric it holds is stored as final up to the batch's largest
step of that metric (points past a bound were dropped and counted: they count as done); every other
message is stored when it is applied. The loop sends ACKs only after the store was flushed, so what a
rank forgets is in the log even if the aggregator is killed the next instant.

After a restart the ranks resend what was not acknowledged; some of it may be stored already (a batch
whose other metrics were not final yet). :func:`stored_through` says up to which step the previous
aggregator stored a metric (from the log, see ``restart.read_progress``): resent points at or below
it are dropped (counted as ``points_already_stored``), the rest is reduced as new.

Pure: no sockets, no store; the state machine calls it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..protocol import MetricBatch
from .peers import INT64_MAX, INT64_MIN
from .reduce import Reduction

SEQ_MASK = 0xFFFFFFFF
ACK_INTERVAL = 0.5  # seconds between two ACKs of one link (sent only when it moved) ...
ACKS_PER_SECOND = 2000.0  # ... or longer with many links: the ACKs of all links stay within this rate


@dataclass
class _Link:
    last_seq: int = 0  # the latest sequence received (the HELLO is 0)
    pending: deque[tuple[int, dict[str, int]]] = field(default_factory=deque)  # (seq, metric -> top step)
    acked: int = -1  # the last acknowledgement sent


class AckTracker:
    """What each acknowledged link has sent and what of it is stored."""

    def __init__(self, interval: float = ACK_INTERVAL) -> None:
        self._links: dict[bytes, _Link] = {}
        self._interval = interval
        self._due = 0.0

    def watch(self, identity: bytes, hello_seq: int = 0) -> None:
        """A link whose HELLO asked for ACKs."""
        self._links[identity] = _Link(last_seq=hello_seq)

    def forget(self, identity: bytes) -> None:
        self._links.pop(identity, None)

    def received(self, identity: bytes, seq: int, batch: MetricBatch | None) -> None:
        """Message ``seq`` of ``identity`` was applied; a METRICS batch waits until its steps are stored."""
        link = self._links.get(identity)
        if link is None:
            return
        link.last_seq = seq
        if batch is not None and len(batch.value):
            tops = batch_tops(batch)
            if tops:
                link.pending.append((seq, tops))

    def due(self, now: float, final_step: Callable[[str], int]) -> list[tuple[bytes, int]]:
        """The (identity, seq) ACKs to send now (at most every ``interval``): links whose acknowledgement
        moved. ``final_step(name)`` is the largest step of a metric stored as final."""
        if now < self._due:
            return []
        self._due = now + max(self._interval, len(self._links) / ACKS_PER_SECOND)
        out: list[tuple[bytes, int]] = []
        for identity, link in self._links.items():
            while link.pending and all(final_step(n) >= top for n, top in link.pending[0][1].items()):
                link.pending.popleft()
            ack = (link.pending[0][0] - 1) & SEQ_MASK if link.pending else link.last_seq
            if ack != link.acked:
                link.acked = ack
                out.append((identity, ack))
        return out


def batch_tops(batch: MetricBatch) -> dict[str, int]:
    """The largest step per metric name of a batch, over the steps the aggregator keeps (strictly
    inside the int64 range: points at the limits are dropped and counted, never stored)."""
    step = np.asarray(batch.step, dtype=np.int64)
    keep = (step > INT64_MIN) & (step < INT64_MAX)
    name_id = np.asarray(batch.name_id, dtype=np.int64)[keep]
    if not len(name_id):
        return {}
    top = np.full(len(batch.names), INT64_MIN, dtype=np.int64)
    np.maximum.at(top, name_id, step[keep])
    return {batch.names[i]: int(top[i]) for i in np.unique(name_id).tolist()}


def stored_through(name: str, rank: int, reduction: Reduction, final_steps: Mapping[str, int]) -> int:
    """Up to which step the previous aggregator stored ``name`` for points of ``rank``: its stored names
    are the reduction's outputs (the first is the metric's own name, also used for a metric of one rank)
    or, for ``per_rank``, one name per rank."""
    if reduction.per_rank:
        return final_steps.get(f"{name}/rank_{rank}", INT64_MIN)
    return max((final_steps.get(n, INT64_MIN) for n in reduction.output_names(name)), default=INT64_MIN)


def drop_stored(
    batch: MetricBatch, rank: int, reduction_of: Callable[[str], Reduction], final_steps: Mapping[str, int]
) -> tuple[MetricBatch, int]:
    """The batch without the points the previous aggregator already stored, and how many were dropped."""
    if not final_steps or not len(batch.value):
        return batch, 0
    through = np.array([stored_through(n, rank, reduction_of(n), final_steps) for n in batch.names], dtype=np.int64)
    step = np.asarray(batch.step, dtype=np.int64)
    name_id = np.asarray(batch.name_id, dtype=np.int64)
    keep = step > through[name_id]
    dropped = int(len(keep) - np.count_nonzero(keep))
    if not dropped:
        return batch, 0
    kept = MetricBatch(list(batch.names), batch.name_id[keep], batch.step[keep], batch.time_ns[keep], batch.value[keep])
    return kept, dropped
