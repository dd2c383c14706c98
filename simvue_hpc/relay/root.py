"""The aggregator's side of node relays: pending partials, merged with the flat points when final.

A relay is one peer of the aggregator that contributes to a metric for many ranks at once: its
PARTIALS carry accumulators per (metric, step) and ``through``, the step up to which its ranks are
complete (the aggregator's watermark treats it as that peer's progress), and per metric how many of
its ranks log it (so a metric logged by one rank in the whole job is still stored as it is, and one
logged by many is reduced). Pure: numpy only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .partials import Partials, merge
from .wire import PartialBatch


class RelayedPartials:
    """Partials waiting for their step to be final, and the ranks counted behind each relay."""

    def __init__(self) -> None:
        self._pending: list[tuple[Partials, np.ndarray]] = []  # (rows, each row's arrival time)
        self._ranks: dict[int, dict[int, int]] = {}  # gid -> relay rank -> its ranks logging the metric

    def add(self, relay_rank: int, lut: np.ndarray, msg: PartialBatch, now: float) -> int:
        """Keep ``msg``'s rows (metric ids mapped through ``lut``); returns the points they stand for."""
        for name, n in msg.contributors.items():
            index = msg.names.index(name) if name in msg.names else -1
            if index >= 0:
                self._ranks.setdefault(int(lut[index]), {})[relay_rank] = n
        rows = msg.partials
        if not len(rows):
            return 0
        self._pending.append((dataclasses.replace(rows, metric=lut[rows.metric]), np.full(len(rows), now)))
        return int(rows.count.sum())

    def ranks_behind(self, gid: int) -> tuple[int, set[int]]:
        """``(ranks, relays)``: how many ranks log metric ``gid`` through relays, and which relays."""
        per_relay = self._ranks.get(gid, {})
        return sum(per_relay.values()), set(per_relay)

    def pending_gids(self) -> np.ndarray:
        if not self._pending:
            return np.empty(0, dtype=np.int64)
        return np.unique(self._collect()[0].metric)

    def _collect(self) -> tuple[Partials, np.ndarray]:
        """Every pending row as one Partials (concatenated once per tick), with its arrival time."""
        if len(self._pending) > 1:
            rows = Partials(
                *(np.concatenate([getattr(p, f.name) for p, _ in self._pending]) for f in dataclasses.fields(Partials))
            )
            self._pending = [(rows, np.concatenate([t for _, t in self._pending]))]
        return self._pending[0]

    def force_old(self, wm: np.ndarray, now: float, step_timeout: float) -> None:
        """Rows waiting longer than ``step_timeout`` push their metric's watermark to their step."""
        if not self._pending:
            return
        rows, arrived = self._collect()
        old = arrived <= now - step_timeout
        if old.any():
            np.maximum.at(wm, rows.metric[old], rows.step[old])

    def take(self, wm: np.ndarray, final_step: np.ndarray) -> tuple[Partials, Partials]:
        """``(ready, late)``: rows whose step is now final, and rows for steps already final; the rest wait."""
        if not self._pending:
            return Partials.empty(), Partials.empty()
        rows, arrived = self._collect()
        late = rows.step <= final_step[rows.metric]
        ready = (rows.step <= wm[rows.metric]) & ~late
        rest = ~(late | ready)
        self._pending = [(rows.rows(rest), arrived[rest])] if rest.any() else []
        return merge([rows.rows(ready)]), merge([rows.rows(late)])
