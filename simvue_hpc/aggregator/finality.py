"""When a step is final, and what is stored for it.

Per metric, the *contributors* are the ranks that have logged it. A rank's *progress* is the largest
step it has sent; because a rank's messages arrive in order and its steps only grow, every point it will
ever send for a step below its progress has arrived. Step ``s`` of a metric is therefore final once every
live contributor's progress exceeds ``s`` (or the contributor has closed or been lost). Until the
metric's set of contributors is *settled* (all expected ranks joined and every live rank has logged it;
in a pool, where ranks come and go, every live rank that logs anything has logged it and ``JOIN_GRACE``
has passed; or ``step_timeout`` since the metric first appeared) nothing of it is final, so a slow rank's
first step is not mistaken for a single-rank metric.

Points waiting longer than ``step_timeout`` are forced out (the bounded wait). A point that arrives for a
step already final is *late*: it is reduced among the late points and stored as a record flagged
``late``, never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..protocol import MetricBatch
from .actions import AppendMetrics
from .peers import INT64_MAX, INT64_MIN, LIVE, Peer, Roster
from .reduce import Reduction, group_reduce

JOIN_GRACE = 1.0  # seconds a new metric waits for pool children that may still be connecting


@dataclass
class _Metric:
    gid: int
    name: str
    reduction: Reduction
    first_seen: float
    contributors: set[int] = field(default_factory=set)
    settled: bool = False
    emitted: bool = False


class StepFinality:
    """The metrics' pending points, their final steps, and the reduction of what became final."""

    def __init__(
        self, roster: Roster, step_timeout: float, reductions: Mapping[str, Reduction], counters: dict[str, int]
    ) -> None:
        self._roster = roster
        self._step_timeout = step_timeout
        self._reductions = dict(reductions)
        self._counters = counters
        self._metrics: dict[str, _Metric] = {}
        self._by_gid: list[_Metric] = []
        self._final_step = np.full(16, INT64_MIN, dtype=np.int64)
        self._out_ids: dict[str, int] = {}
        self._out_names: list[str] = []
        self._chunks: list[tuple[np.ndarray, ...]] = []

    def set_reduction(self, name: str, reduction: Reduction) -> None:
        """A rank asked for ``reduction`` of ``name``: it applies unless the metric is already stored."""
        self._reductions[name] = reduction
        metric = self._metrics.get(name)
        if metric is not None and not metric.emitted:
            metric.reduction = reduction

    def ingest(self, peer: Peer, batch: MetricBatch, now: float) -> None:
        """Take a rank's batch of points; they wait until their step is final."""
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
        peer.progress = max(peer.progress, int(batch.step.max()))
        self._chunks.append(
            (
                lut[batch.name_id],
                batch.step.astype(np.int64),
                np.full(n, peer.rank, dtype=np.int64),
                batch.time_ns.astype(np.int64),
                batch.value.astype(np.float64),
                np.full(n, now),
            )
        )

    def reduce(self, now: float, final: bool) -> list[AppendMetrics]:
        """Store what became final (everything when ``final``): late points and ready points."""
        out: list[AppendMetrics] = []
        if not self._chunks:
            return out
        if len(self._chunks) > 1:
            cols = [np.concatenate(c) for c in zip(*self._chunks, strict=True)]
        else:
            cols = list(self._chunks[0])
        gid, step, rank, t_ns, value, arrived = cols
        late = step <= self._final_step[gid]
        nmetrics = len(self._by_gid)
        wm = np.full(nmetrics, INT64_MAX if final else INT64_MIN, dtype=np.int64)
        if not final:
            for g in np.unique(gid):
                wm[g] = self._watermark(self._by_gid[int(g)], now)
            old = arrived <= now - self._step_timeout
            if old.any():
                np.maximum.at(wm, gid[old], step[old])
        ready = (step <= wm[gid]) & ~late
        if late.any():
            self._counters["late_points"] += int(late.sum())
            self._emit(gid[late], step[late], rank[late], t_ns[late], value[late], out, late=True)
        if ready.any():
            g_r, s_r = gid[ready], step[ready]
            self._emit(g_r, s_r, rank[ready], t_ns[ready], value[ready], out, late=False)
            top = np.full(nmetrics, INT64_MIN, dtype=np.int64)
            np.maximum.at(top, g_r, s_r)
            final_now = np.where(wm == INT64_MAX, top, wm)
            np.maximum(self._final_step[:nmetrics], final_now, out=self._final_step[:nmetrics])
        keep = ~(ready | late)
        self._chunks = [tuple(c[keep] for c in cols)] if keep.any() else []
        return out

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

    def _watermark(self, metric: _Metric, now: float) -> int:
        """Largest final step of ``metric`` from the contributors' progress alone."""
        ranks = self._roster.by_rank
        live = [p for r in metric.contributors if (p := ranks.get(r)) is not None and p.state == LIVE]
        if not metric.settled:
            age = now - metric.first_seen
            live_ranks = list(self._roster.live())
            if self._roster.expected is None:
                # Ranks come and go (a pool): wait for those that log at all, not for a parent that
                # never does, after a short grace for children still connecting.
                everyone = {p.rank for p in live_ranks if p.progress > INT64_MIN}
                ready = everyone <= metric.contributors and age >= min(JOIN_GRACE, self._step_timeout)
            else:
                ready = self._roster.all_joined() and {p.rank for p in live_ranks} <= metric.contributors
            if ready or age >= self._step_timeout:
                metric.settled = True
        if not metric.settled:
            # Even with no live contributor left (all closed or lost): a rank that has not joined
            # or not logged the metric yet may still send points for any of its steps.
            return INT64_MIN
        if not live:
            return INT64_MAX
        low = min(p.progress for p in live)
        return low - 1 if low > INT64_MIN else INT64_MIN

    def _out_id(self, name: str) -> int:
        oid = self._out_ids.get(name)
        if oid is None:
            oid = self._out_ids[name] = len(self._out_names)
            self._out_names.append(name)
        return oid

    def _emit(
        self,
        gid: np.ndarray,
        step: np.ndarray,
        rank: np.ndarray,
        t_ns: np.ndarray,
        value: np.ndarray,
        out: list[AppendMetrics],
        late: bool,
    ) -> None:
        """Turn final points into stored columns: raw for single-rank metrics, reduced otherwise."""
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        mode = np.empty(len(self._by_gid), dtype=np.int8)  # 0 raw, 1 per rank, 2 reduced
        for metric in self._by_gid:
            metric_mode = 1 if metric.reduction.per_rank else (0 if len(metric.contributors) <= 1 else 2)
            mode[metric.gid] = metric_mode
        point_mode = mode[gid]
        for g in np.unique(gid):
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
        if reduced.any():
            groups = group_reduce(gid[reduced], step[reduced], t_ns[reduced], value[reduced])
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
        self._counters["points_stored"] += len(values)
        out.append(
            AppendMetrics(
                names=[self._out_names[int(i)] for i in used],
                name_id=local.astype(np.uint32),
                step=np.concatenate([p[1] for p in parts]),
                time_us=np.concatenate([p[2] for p in parts]) // 1000,
                value=values,
                late=late,
            )
        )
