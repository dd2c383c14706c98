"""When a step is final, and what is stored for it: the incremental reduction.

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

How: arriving points are staged as they come and folded once, at the next :meth:`StepFinality.reduce`,
into the open groups: running accumulators per (metric, step) (:mod:`.accumulate`) for metrics of
several ranks; the points themselves for a metric of one rank (stored as logged) and for ``per_rank``
metrics. Each point is folded once; what later folds and ticks look at are the open groups (one per
(metric, step), whatever the number of ranks). A group is stored and released as soon as it is final.
Watermarks follow the ranks' progress: the smallest progress among live ranks is a lazily cleaned heap,
and each metric counts its live contributors, so a metric logged by every live rank (the usual case) is
final up to that minimum, found in O(1) amortised.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from ..config import HPCSettings
from ..protocol import MetricBatch
from ..relay.wire import PartialBatch
from .accumulate import Partials, accumulate, merge
from .actions import AppendMetrics
from .columns import combined, concat, grown
from .output import StoredColumns
from .peers import INT64_MAX, INT64_MIN, Roster
from .reduce import Reduction

JOIN_GRACE = 1.0  # seconds a new metric waits for pool children that may still be connecting
RAW, PER_RANK, REDUCED = 0, 1, 2  # how a metric's points are kept and stored


@dataclass
class _Metric:
    gid: int
    name: str
    reduction: Reduction
    first_seen: float
    contributors: set[int] = field(default_factory=set)
    relayed: dict[int, int] = field(default_factory=dict)  # node relay's rank -> its ranks logging this
    live_contributors: int = 0
    settled: bool = False
    emitted: bool = False
    raw: list[tuple[np.ndarray, ...]] = field(default_factory=list)  # (step, rank, time_ns, value, arrived)

    @property
    def mode(self) -> int:
        if self.reduction.per_rank:
            return PER_RANK
        ranks = len(self.contributors) - len(self.relayed) + sum(self.relayed.values())
        return RAW if ranks <= 1 else REDUCED


class StepFinality:
    """The metrics' open groups, their final steps, and the storing of what became final."""

    def __init__(
        self, roster: Roster, settings: HPCSettings, reductions: Mapping[str, Reduction], counters: dict[str, int]
    ) -> None:
        self._roster = roster
        self._step_timeout = settings.step_timeout
        self._max_metrics = settings.max_metrics
        self._max_open_steps = settings.max_open_steps
        self.bounds_passed: list[str] = []  # one message per bound, the first time it is passed
        self._bounds_told: set[str] = set()
        self._reductions = dict(reductions)
        self._counters = counters
        self._metrics: dict[str, _Metric] = {}
        self._by_gid: list[_Metric] = []
        self._final_step = np.full(16, INT64_MIN, dtype=np.int64)
        self._mode = np.zeros(16, dtype=np.int8)
        self._columns = StoredColumns()
        self._staged: list[tuple[np.ndarray, ...]] = []  # (gid, step, rank, time_ns, value) per batch
        self._staged_at: list[float] = []
        self._open = Partials.empty()
        self._raw_gids: set[int] = set()  # metrics with points kept as logged
        self._live: set[int] = set()
        self._progress: dict[int, int] = {}
        self._heap: list[tuple[int, int]] = []  # (progress, rank), stale entries removed lazily
        self._rank_metrics: dict[int, set[int]] = {}
        self._staged_partials: list[Partials] = []  # relays' rows, folded once per reduce
        self._names: dict[int, tuple[list[str], np.ndarray, np.ndarray, bool]] = {}  # see _names_of

    # ------------------------------------------------------------------------------------------ ranks
    def joined(self, rank: int) -> None:
        """A rank said hello (a new link): live, with no progress yet."""
        self._progress[rank] = INT64_MIN
        self.set_live(rank, True)
        heapq.heappush(self._heap, (INT64_MIN, rank))

    def set_live(self, rank: int, live: bool) -> None:
        """A rank's liveness changed (closed, lost, back): its metrics count it, or no longer."""
        if live == (rank in self._live):
            return
        delta = 1 if live else -1
        if live:
            self._live.add(rank)
            heapq.heappush(self._heap, (self._progress.get(rank, INT64_MIN), rank))
        else:
            self._live.discard(rank)
            self._names.pop(rank, None)
        for gid in self._rank_metrics.get(rank, ()):
            self._by_gid[gid].live_contributors += delta

    def request_reductions(self, specs: Mapping[str, Any]) -> list[str]:
        """A rank's reductions (its HELLO): each applies unless its metric is already stored; returns
        what was wrong with those ignored."""
        problems = []
        for name, spec in specs.items():
            try:
                self.set_reduction(name, Reduction.parse(name, spec))
            except ValueError as exc:
                problems.append(str(exc))
        return problems

    def set_reduction(self, name: str, reduction: Reduction) -> None:
        """A rank asked for ``reduction`` of ``name``: it applies unless the metric is already stored."""
        self._reductions[name] = reduction
        metric = self._metrics.get(name)
        if metric is not None and not metric.emitted:
            metric.reduction = reduction
            self._mode[metric.gid] = metric.mode

    def reduction_of(self, name: str) -> Reduction:
        """The reduction ``name`` is (or will be) stored with."""
        metric = self._metrics.get(name)
        return metric.reduction if metric is not None else self._reductions.get(name, Reduction())

    def final_step(self, name: str) -> int:
        """The largest step of ``name`` stored as final; INT64_MAX for a name the run does not keep
        (past ``max_metrics``), whose points are dropped and counted."""
        metric = self._metrics.get(name)
        if metric is None:
            return INT64_MAX if len(self._by_gid) >= self._max_metrics else INT64_MIN
        return int(self._final_step[metric.gid])

    # ------------------------------------------------------------------------------------------ points
    def ingest(self, rank: int, batch: MetricBatch, now: float) -> None:
        """Take a rank's batch of points; they wait, staged, until the next :meth:`reduce` folds them."""
        if len(batch.value) == 0:
            return
        lut, contributed, capped = self._names_of(rank, batch.names, now)
        name_id = batch.name_id
        if not contributed[name_id].all():
            for i in np.unique(name_id[~contributed[name_id]]).tolist():
                if lut[i] >= 0:
                    self._contribute(self._by_gid[int(lut[i])], rank)
                    contributed[i] = True
        gid = lut[name_id]
        step = np.asarray(batch.step, dtype=np.int64)
        time_ns = np.asarray(batch.time_ns, dtype=np.int64)
        value = np.asarray(batch.value, dtype=np.float64)
        low, top = int(step.min()), int(step.max())
        if capped or low == INT64_MIN or top == INT64_MAX:
            step_ok = (step > INT64_MIN) & (step < INT64_MAX)
            keep = step_ok & (gid >= 0)
            self._over_bound(
                "max_metrics",
                f"the run has {self._max_metrics} distinct metric names (the max_metrics bound): "
                "points of further names are dropped",
                int(np.count_nonzero(step_ok & (gid < 0))),
            )
            self._over_bound(
                "step",
                "steps must lie strictly between -2**63 and 2**63 - 1 (the bound of the step range): "
                "points at those limits are dropped",
                int(np.count_nonzero(~step_ok)),
            )
            top = int(step[step_ok].max()) if step_ok.any() else INT64_MIN
            gid, step, time_ns, value = gid[keep], step[keep], time_ns[keep], value[keep]
        if top > self._progress.get(rank, INT64_MIN):
            self._progress[rank] = top
            if rank in self._live:
                heapq.heappush(self._heap, (top, rank))
        if len(gid):
            self._staged.append((gid, step, np.full(len(step), rank, dtype=np.int64), time_ns, value))
            self._staged_at.append(now)

    def _names_of(self, rank: int, names: list[str], now: float) -> tuple[np.ndarray, np.ndarray, bool]:
        """For a rank's list of names (the same list message after message): each name's metric id (-1
        past ``max_metrics``), whether the rank already contributes to it, and whether any is past the cap."""
        cached = self._names.get(rank)
        if cached is None or cached[0] != names:
            metrics = [self._metric(name, now) for name in names]
            lut = np.array([-1 if m is None else m.gid for m in metrics], dtype=np.int64)
            contributed = np.array([m is not None and rank in m.contributors for m in metrics], dtype=bool)
            cached = self._names[rank] = (list(names), lut, contributed, bool((lut < 0).any()))
        return cached[1], cached[2], cached[3]

    def ingest_partials(self, relay: int, batch: PartialBatch, now: float) -> int:
        """A node relay's accumulators: merged into the open groups as its ranks' points would be folded;
        its ``through`` is its progress. Returns the points they stand for."""
        lut = np.full(len(batch.names), -1, dtype=np.int64)
        for i, name in enumerate(batch.names):
            metric = self._metric(name, now)
            if metric is not None:
                lut[i] = metric.gid
        for name, ranks in batch.contributors.items():
            metric = self._metrics.get(name)
            if metric is not None and ranks > 0 and metric.relayed.get(relay) != ranks:
                metric.relayed[relay] = ranks
                if relay not in metric.contributors:
                    self._contribute(metric, relay)
                self._mode[metric.gid] = metric.mode
        progress = batch.through + 1 if batch.through < INT64_MAX else INT64_MAX
        if progress > self._progress.get(relay, INT64_MIN):
            self._progress[relay] = progress
            if relay in self._live:
                heapq.heappush(self._heap, (progress, relay))
        rows = batch.partials
        if not len(rows):
            return 0
        gid = lut[rows.key]
        keep = gid >= 0
        if not keep.all():
            self._over_bound(
                "max_metrics",
                f"the run has {self._max_metrics} distinct metric names (the "
                "max_metrics bound): points of further names are dropped",
                int(rows.count[~keep].sum()),
            )
        rows = replace(rows, key=gid, arrived=np.full(len(gid), now))
        self._staged_partials.append(rows if keep.all() else rows.select(keep))  # folded once per reduce
        return int(batch.partials.count[keep].sum())

    def _fold_partials(self, out: list[AppendMetrics]) -> None:
        """Relays' staged rows into the open groups, in one merge; rows for stored steps are late."""
        if not self._staged_partials:
            return
        rows = Partials(
            *(np.concatenate([getattr(p, f.name) for p in self._staged_partials]) for f in fields(Partials))
        )
        self._staged_partials = []
        late = rows.step <= self._final_step[rows.key]
        if late.any():
            self._counters["late_points"] += int(rows.count[late].sum())
            self._emit(combined(rows.select(late)), [], out, late=True)
            rows = rows.select(~late)
        reduced = self._mode[rows.key] == REDUCED
        if reduced.any():
            self._open = merge(self._open, combined(rows.select(reduced)))
        if not reduced.all():  # one rank in the whole job logs it: its points, as logged (count 1 each)
            single = rows.select(~reduced)
            n = len(single)
            self._keep_raw(
                single.key, single.step, np.full(n, -1, np.int64), single.time_ns, single.mean, single.arrived
            )
        self._cap_open_steps()

    def reduce(self, now: float, final: bool) -> list[AppendMetrics]:
        """Fold the staged points in; store the late ones and what became final (everything when ``final``)."""
        out: list[AppendMetrics] = []
        self._fold(now, out)
        self._fold_partials(out)
        pending = set(np.unique(self._open.key).tolist()) | self._raw_gids
        if not pending:
            return out
        nmetrics = len(self._by_gid)
        wm = self._watermarks(pending, now, final)
        ready = self._open.step <= wm[self._open.key]
        groups = self._open.select(ready)
        raw_ready: list[tuple[int, tuple[np.ndarray, ...]]] = []
        for gid in sorted(self._raw_gids):
            metric = self._by_gid[gid]
            chunk = concat(metric.raw)
            take = chunk[0] <= wm[gid]
            if take.any():
                raw_ready.append((gid, tuple(c[take] for c in chunk)))
                rest = tuple(c[~take] for c in chunk)
                metric.raw = [rest] if len(rest[0]) else []
            else:
                metric.raw = [chunk]
            if not metric.raw:
                self._raw_gids.discard(gid)
        if not len(groups) and not raw_ready:
            return out
        self._open = self._open.select(~ready)
        top = np.full(nmetrics, INT64_MIN, dtype=np.int64)
        np.maximum.at(top, groups.key, groups.step)
        for gid, (step, *_) in raw_ready:
            top[gid] = max(int(top[gid]), int(step.max()))
        final_now = np.where(wm == INT64_MAX, top, wm)
        np.maximum(self._final_step[:nmetrics], final_now, out=self._final_step[:nmetrics])
        self._emit(groups, raw_ready, out, late=False)
        return out

    # ------------------------------------------------------------------------------------------ internals
    def _metric(self, name: str, now: float) -> _Metric | None:
        """The metric of ``name``, new if need be; None past ``max_metrics``."""
        metric = self._metrics.get(name)
        if metric is None:
            if len(self._by_gid) >= self._max_metrics:
                return None
            reduction = self._reductions.get(name, Reduction())
            metric = _Metric(len(self._by_gid), name, reduction, first_seen=now)
            self._metrics[name] = metric
            self._by_gid.append(metric)
            if metric.gid >= len(self._final_step):
                self._final_step = grown(self._final_step, INT64_MIN)
                self._mode = grown(self._mode, 0)
            self._mode[metric.gid] = metric.mode
        return metric

    def _over_bound(self, bound: str, message: str, dropped: int) -> None:
        """Points dropped past a bound: counted; the first time, a message for the run's events."""
        if dropped <= 0:
            return
        self._counters["points_over_bounds"] += dropped
        if bound not in self._bounds_told:
            self._bounds_told.add(bound)
            self.bounds_passed.append(f"{message} (dropped and counted in points_over_bounds)")

    def _cap_open_steps(self) -> None:
        """Each metric keeps at most ``max_open_steps`` open steps: its oldest; later ones are dropped."""
        cap = self._max_open_steps
        dropped = 0
        if len(self._open) > cap:
            key = self._open.key
            starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
            sizes = np.diff(np.append(starts, len(key)))
            if sizes.max() > cap:
                within = np.arange(len(key)) - np.repeat(starts, sizes)
                over = within >= cap
                dropped += int(self._open.count[over].sum())
                self._open = self._open.select(~over)
        for gid in self._raw_gids:
            metric = self._by_gid[gid]
            if sum(len(c[0]) for c in metric.raw) <= cap:
                continue
            chunk = concat(metric.raw)
            if len(chunk[0]) > cap:
                order = np.argsort(chunk[0], kind="stable")[:cap]
                order.sort()
                dropped += len(chunk[0]) - cap
                metric.raw = [tuple(c[order] for c in chunk)]
        self._over_bound(
            "max_open_steps",
            f"a metric has {cap} steps waiting to be final (the max_open_steps bound): points of later steps are "
            "dropped",
            dropped,
        )

    def _contribute(self, metric: _Metric, rank: int) -> None:
        metric.contributors.add(rank)
        self._rank_metrics.setdefault(rank, set()).add(metric.gid)
        if rank in self._live:
            metric.live_contributors += 1
        self._mode[metric.gid] = metric.mode

    def _fold(self, now: float, out: list[AppendMetrics]) -> None:
        """Staged points into the open groups (each point once); late ones stored at once."""
        for g in [g for g in self._raw_gids if self._mode[g] == REDUCED]:  # a second rank joined the metric
            metric = self._by_gid[g]
            r_step, _, r_t_ns, r_value, r_arrived = concat(metric.raw)
            fresh = accumulate(np.full(len(r_step), g), r_step, r_t_ns, r_value, r_arrived)
            self._open = merge(self._open, fresh)
            metric.raw = []
            self._raw_gids.discard(g)
        if not self._staged:
            return
        gid, step, rank, t_ns, value = concat(self._staged)
        # One arrival time for the fold, its oldest batch's: a group may be forced out at most one
        # tick early, and the points need no column of their own.
        arrived = min(self._staged_at)
        self._staged, self._staged_at = [], []
        late = step <= self._final_step[gid]
        if late.any():
            self._counters["late_points"] += int(late.sum())
            self._emit_points(gid[late], step[late], rank[late], t_ns[late], value[late], out, late=True)
            keep = ~late
            gid, step, rank, t_ns, value = (c[keep] for c in (gid, step, rank, t_ns, value))
        reduced = self._mode[gid] == REDUCED
        if reduced.all():
            self._open = merge(self._open, accumulate(gid, step, t_ns, value, arrived))
        else:
            if reduced.any():
                fresh = accumulate(gid[reduced], step[reduced], t_ns[reduced], value[reduced], arrived)
                self._open = merge(self._open, fresh)
            kept = ~reduced
            n = int(np.count_nonzero(kept))
            self._keep_raw(gid[kept], step[kept], rank[kept], t_ns[kept], value[kept], np.full(n, arrived))
        self._cap_open_steps()

    def _keep_raw(self, gid: np.ndarray, *cols: np.ndarray) -> None:
        order = np.argsort(gid, kind="stable")
        gid = gid[order]
        cols = tuple(c[order] for c in cols)
        starts = np.flatnonzero(np.r_[True, gid[1:] != gid[:-1]])
        ends = np.r_[starts[1:], len(gid)]
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            g = int(gid[a])
            self._by_gid[g].raw.append(tuple(c[a:b] for c in cols))
            self._raw_gids.add(g)

    def _watermarks(self, pending: set[int], now: float, final: bool) -> np.ndarray:
        """Per metric, the largest final step (``INT64_MIN``: none; ``INT64_MAX``: all)."""
        nmetrics = len(self._by_gid)
        if final:
            return np.full(nmetrics, INT64_MAX, dtype=np.int64)
        wm = np.full(nmetrics, INT64_MIN, dtype=np.int64)
        low = self._lowest_live_progress()
        for gid in pending:
            wm[gid] = self._watermark(self._by_gid[gid], now, low)
        cutoff = now - self._step_timeout
        old = self._open.arrived <= cutoff
        if old.any():
            np.maximum.at(wm, self._open.key[old], self._open.step[old])
        for gid in self._raw_gids:
            for step, _, _, _, arrived in self._by_gid[gid].raw:
                forced = step[arrived <= cutoff]
                if len(forced):
                    wm[gid] = max(int(wm[gid]), int(forced.max()))
        return wm

    def _watermark(self, metric: _Metric, now: float, lowest: int) -> int:
        """Largest final step of ``metric`` from the contributors' progress alone."""
        if not metric.settled:
            age = now - metric.first_seen
            if self._roster.expected is None:
                # Ranks come and go (a pool): wait for those that log at all, not for a parent that
                # never does, after a short grace for children still connecting.
                logging = (r for r in self._live if self._progress.get(r, INT64_MIN) > INT64_MIN)
                ready = all(r in metric.contributors for r in logging) and age >= min(JOIN_GRACE, self._step_timeout)
            else:
                ready = self._roster.all_joined() and metric.live_contributors == len(self._live)
            if ready or age >= self._step_timeout:
                metric.settled = True
        if not metric.settled:
            # Even with no live contributor left (all closed or lost): a rank that has not joined
            # or not logged the metric yet may still send points for any of its steps.
            return INT64_MIN
        if metric.live_contributors == 0:
            return INT64_MAX
        if metric.live_contributors == len(self._live):
            low = lowest  # every live rank logs it: the heap's minimum
        else:
            low = min(self._progress.get(r, INT64_MIN) for r in metric.contributors if r in self._live)
        return low - 1 if low > INT64_MIN else INT64_MIN

    def _lowest_live_progress(self) -> int:
        heap = self._heap
        if len(heap) > 4 * len(self._live) + 64:  # many stale entries: rebuild
            heap[:] = [(self._progress.get(r, INT64_MIN), r) for r in self._live]
            heapq.heapify(heap)
        while heap and (heap[0][1] not in self._live or self._progress.get(heap[0][1], INT64_MIN) != heap[0][0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else INT64_MAX

    def _emit_points(
        self,
        gid: np.ndarray,
        step: np.ndarray,
        rank: np.ndarray,
        t_ns: np.ndarray,
        value: np.ndarray,
        out: list[AppendMetrics],
        late: bool,
    ) -> None:
        """Store points as their metrics' modes say: reduced among themselves, or as logged."""
        reduced = self._mode[gid] == REDUCED
        groups = accumulate(gid[reduced], step[reduced], t_ns[reduced], value[reduced])
        raw: list[tuple[int, tuple[np.ndarray, ...]]] = []
        if not reduced.all():
            kept = ~reduced
            g_k, cols = gid[kept], (step[kept], rank[kept], t_ns[kept], value[kept])
            raw = [(int(g), tuple(c[g_k == g] for c in cols)) for g in np.unique(g_k)]
        self._emit(groups, raw, out, late)

    def _emit(
        self, groups: Partials, raw: list[tuple[int, tuple[np.ndarray, ...]]], out: list[AppendMetrics], late: bool
    ) -> None:
        """Turn final groups and points into stored columns: one AppendMetrics."""
        action = self._columns.build(self._by_gid, groups, raw, late)
        if action is not None:
            self._counters["points_stored"] += len(action.value)
            out.append(action)
