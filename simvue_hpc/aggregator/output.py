"""What is stored for final groups and points: the stored names (a metric's own, its reduction's
companions ``name.op``, its per-rank series ``name/rank_<k>``) and the columns of one AppendMetrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from .accumulate import Partials
from .actions import AppendMetrics
from .reduce import Reduction


class StoredMetric(Protocol):
    """What the columns need of a metric: its name and reduction; ``emitted`` is set once stored."""

    name: str
    reduction: Reduction
    emitted: bool


class StoredColumns:
    """Stored names, each given a small integer once, and the building of AppendMetrics."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._names: list[str] = []

    def build(
        self,
        metrics: Sequence[StoredMetric],
        groups: Partials,
        raw: list[tuple[int, tuple[np.ndarray, ...]]],
        late: bool,
    ) -> AppendMetrics | None:
        """One AppendMetrics for final ``groups`` (reduced, by their metric's operations; a ``per_rank``
        metric's groups by the default ones) and ``raw`` points (metric id, (step, rank, time_ns, value,
        ...)): as logged, or per rank. None when there is nothing to store."""
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for gid, (step, rank, t_ns, value, *_) in raw:
            metric = metrics[gid]
            metric.emitted = True
            if metric.reduction.per_rank:
                ranks, inverse = np.unique(rank, return_inverse=True)
                ids = np.array([self._id(f"{metric.name}/rank_{int(r)}") for r in ranks], dtype=np.int64)
                parts.append((ids[inverse.ravel()], step, t_ns, value))
            else:
                parts.append((np.full(len(step), self._id(metric.name), np.int64), step, t_ns, value))
        if len(groups):
            starts = np.flatnonzero(np.r_[True, groups.key[1:] != groups.key[:-1]])
            ends = np.r_[starts[1:], len(groups)]
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
                metric = metrics[int(groups.key[a])]
                metric.emitted = True
                reduction = Reduction() if metric.reduction.per_rank else metric.reduction
                names = reduction.output_names(metric.name)
                for op, name in zip(reduction.operations, names, strict=True):
                    oid = np.full(b - a, self._id(name), np.int64)
                    parts.append((oid, groups.step[a:b], groups.time_ns[a:b], groups.column(op)[a:b]))
        if not parts:
            return None
        used, local = np.unique(np.concatenate([p[0] for p in parts]), return_inverse=True)
        return AppendMetrics(
            names=[self._names[int(i)] for i in used],
            name_id=local.ravel().astype(np.uint32),
            step=np.concatenate([p[1] for p in parts]),
            time_us=np.concatenate([p[2] for p in parts]) // 1000,
            value=np.concatenate([p[3] for p in parts]),
            late=late,
        )

    def _id(self, name: str) -> int:
        oid = self._ids.get(name)
        if oid is None:
            oid = self._ids[name] = len(self._names)
            self._names.append(name)
        return oid
