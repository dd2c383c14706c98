"""A run summarised without materialising its points: one row per metric, computed in one pass.

:func:`load_run` builds every metric's full series, which a run of 100,000 metrics makes slow and
large. :func:`load_summary` folds the same records into a :class:`RunView` whose ``summary`` holds,
per metric, the number of points, the lowest and highest step, the minimum and maximum of the
finite values, the last value at the highest step and the number of late points. Each METRICS record is reduced with
a few vectorised numpy passes on its own columns (views of the payload, never copied) and merged
into per-metric arrays, so memory grows with the number of metrics, not of points. A name filter
skips the metrics not asked for before any of their points are looked at.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ..records import RecordType
from .format import RECORDS_NAME
from .reader import read_records
from .runs import RunView, fold_record

__all__ = ["MetricRow", "MetricSummaries", "load_summary"]

NameFilter = Callable[[str], bool]
I64 = np.iinfo(np.int64)
_CACHE_SIZE = 64  # names lists remembered (the aggregator repeats the same lists record after record)


class MetricRow(NamedTuple):
    """One metric's summary."""

    name: str
    points: int
    first_step: int  # the lowest step
    last_step: int  # the highest step
    min: float  # over the finite values; NaN when there is none
    max: float
    last: float  # the value of the last point logged at the highest step (late points come after)
    late: int  # points stored as late


_INT_FILL = {"points": 0, "first_step": I64.max, "last_step": I64.min, "late": 0}
_FLOAT_COLUMNS = ("min", "max", "last")


@dataclass(frozen=True)
class MetricSummaries:
    """Per-metric summary columns, one row per metric with points, in order of first appearance."""

    names: list[str]
    points: npt.NDArray[np.int64]
    first_step: npt.NDArray[np.int64]
    last_step: npt.NDArray[np.int64]
    min: npt.NDArray[np.float64]
    max: npt.NDArray[np.float64]
    last: npt.NDArray[np.float64]
    late: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[MetricRow]:
        columns = (self.points, self.first_step, self.last_step, self.min, self.max, self.last, self.late)
        for name, *values in zip(self.names, *(c.tolist() for c in columns), strict=True):
            yield MetricRow(name, *values)


class _Names(NamedTuple):
    names: list[str]  # the names list these describe
    lookup: npt.NDArray[np.int64]  # local name id -> global id (after remap)
    wanted: npt.NDArray[np.bool_] | None  # by local name id; None: every name
    remap: npt.NDArray[np.intp] | None  # local name id -> index into lookup, when names repeat


class _Summariser:
    """Per-metric accumulators, grown as names appear."""

    def __init__(self, keep: NameFilter | None) -> None:
        self._keep = keep
        self._index: dict[str, int] = {}
        self._names: list[str] = []
        self._wanted: list[bool] = []
        self._cache: dict[tuple[int, str, str], _Names] = {}
        self._cols: dict[str, npt.NDArray[Any]] = {}
        self._grow(1024)

    def _grow(self, need: int) -> None:
        size = len(self._cols["points"]) if self._cols else 0
        if need <= size:
            return
        cap = max(need, 2 * size)
        for key in (*_INT_FILL, *_FLOAT_COLUMNS):
            grown = np.full(cap, _INT_FILL[key], np.int64) if key in _INT_FILL else np.full(cap, np.nan)
            if key in self._cols:
                grown[:size] = self._cols[key]
            self._cols[key] = grown

    def _lookup(self, names: list[str]) -> _Names:
        """What a record's names list maps to (remembered for the next records with the same list)."""
        key = (len(names), names[0], names[-1]) if names else (0, "", "")
        hit = self._cache.get(key)
        if hit is not None and (hit.names is names or hit.names == names):  # the reader shares repeated lists
            return hit
        ids = []
        for name in names:
            gid = self._index.get(name)
            if gid is None:
                gid = self._index[name] = len(self._names)
                self._names.append(name)
                self._wanted.append(self._keep is None or bool(self._keep(name)))
            ids.append(gid)
        lookup = np.array(ids, dtype=np.int64)
        self._grow(len(self._names))
        wanted = None if self._keep is None else np.array(self._wanted, dtype=bool)[lookup]
        remap = None
        if len(set(ids)) != len(ids):  # a names list repeating a name: count by global id
            lookup, inverse = np.unique(lookup, return_inverse=True)
            remap = inverse.reshape(-1)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        found = self._cache[key] = _Names(names, lookup, wanted, remap)
        return found

    def add(self, payload: dict[str, Any]) -> None:
        """Fold one METRICS payload (columns as decoded by the reader)."""
        _, lookup, wanted, remap = self._lookup(payload["names"])
        name_id, step, value = (payload[k] for k in ("name_id", "step", "value"))
        if wanted is not None:
            rows = wanted[name_id]
            if not rows.all():
                name_id, step, value = name_id[rows], step[rows], value[rows]
        if not len(name_id):
            return
        local = name_id.astype(np.intp) if remap is None else remap[name_id]
        finite = np.where(np.isfinite(value), value, np.nan)
        k, n = len(lookup), len(local)
        count = np.bincount(local, minlength=k)
        if n == k and count.max() == 1:  # one point per metric, as the aggregator writes a step
            lo = np.empty(k)
            lo[local] = finite
            hi = lo
            low = np.empty(k, dtype=np.int64)
            low[local] = step
            high = low
            last = np.empty(k)
            last[local] = value
        else:
            lo, hi = np.full(k, np.nan), np.full(k, np.nan)
            np.fmin.at(lo, local, finite)
            np.fmax.at(hi, local, finite)
            low, high = np.full(k, I64.max), np.full(k, I64.min)
            np.minimum.at(low, local, step)
            np.maximum.at(high, local, step)
            at_high = np.flatnonzero(step == high[local])  # the points at their metric's highest step
            where = np.full(k, -1)
            np.maximum.at(where, local[at_high], at_high)  # the last of them
            last = value[where]
        present = np.flatnonzero(count)
        g = lookup[present]
        c = self._cols
        c["points"][g] += count[present]
        c["first_step"][g] = np.minimum(c["first_step"][g], low[present])
        newer = high[present] >= c["last_step"][g]  # a later record at the same step wins
        c["last"][g[newer]] = last[present[newer]]
        c["last_step"][g] = np.maximum(c["last_step"][g], high[present])
        c["min"][g] = np.fmin(c["min"][g], lo[present])
        c["max"][g] = np.fmax(c["max"][g], hi[present])
        if payload.get("late"):
            c["late"][g] += count[present]

    def result(self) -> MetricSummaries:
        rows = np.flatnonzero(self._cols["points"][: len(self._names)])
        cols = {key: col[rows] for key, col in self._cols.items()}
        return MetricSummaries(names=[self._names[i] for i in rows.tolist()], **cols)


def _name_filter(metrics: str | NameFilter | None) -> NameFilter | None:
    if metrics is None or callable(metrics):
        return metrics
    pattern = str(metrics)
    return lambda name: fnmatch.fnmatchcase(name, pattern)


def load_summary(run_dir: Path | str, metrics: str | NameFilter | None = None) -> RunView:
    """Fold a run's records into a RunView whose ``summary`` summarises each metric (``metrics``
    stays empty). metrics selects names: a glob pattern (``loss*``) or a predicate."""
    run_dir = Path(run_dir)
    view = RunView(id=run_dir.name, run_dir=run_dir)
    acc = _Summariser(_name_filter(metrics))
    for rec in read_records(run_dir / RECORDS_NAME, damage=view.damage, copy=False, names_cache={}):
        if rec.type is RecordType.METRICS:
            acc.add(rec.payload)
        else:
            fold_record(view, rec)
    view.summary = acc.result()
    return view
