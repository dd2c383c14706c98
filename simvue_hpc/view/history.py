"""A run read for looking at it: the reader's view plus what it folds away.

:func:`simvue_hpc.store.load_run` keeps the last state of each rank and alert and every metric;
plots, the report and the live view also need the history (when each rank joined and left, every
alert change), which points came late, and, on a run of 100,000 metrics, only the few asked for.
:func:`load_history` reads the log once for all of that.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..records import Record, RecordType
from ..store import RECORDS_NAME, RunView, read_records
from ..store.runs import fold_record

MetricFilter = Callable[[str], bool]


@dataclass
class Series:
    """Every point of one stored metric in record order, with the late ones flagged."""

    step: npt.NDArray[np.int64]
    time_us: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    late: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.step)


@dataclass
class RunHistory:
    """A run's details (``view``, whose ``metrics`` stay empty), its chosen series and its changes."""

    view: RunView
    series: dict[str, Series] = field(default_factory=dict)
    rank_changes: list[dict[str, Any]] = field(default_factory=list)  # every RANK record, in order
    alert_changes: list[dict[str, Any]] = field(default_factory=list)  # every ALERT_STATE record

    @property
    def names(self) -> list[str]:
        return list(self.series)


def matcher(patterns: Iterable[str] | None) -> MetricFilter:
    """A filter of metric names by shell-style patterns; every name when patterns is None.

    A name matches a pattern if it matches it whole, or if its base (before ``.op`` or
    ``/rank_<k>``) does, so that asking for ``loss`` brings its min/max band and its ranks.
    """
    if patterns is None:
        return lambda _name: True
    pats = list(patterns)

    def want(name: str) -> bool:
        base = base_name(name)
        return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(base, p) for p in pats)

    return want


def base_name(name: str) -> str:
    """The logged metric a stored name comes from: ``loss`` for ``loss.max`` or ``loss/rank_3``."""
    head, sep, tail = name.rpartition("/rank_")
    if sep and tail.isdigit():
        return head
    head, sep, tail = name.rpartition(".")
    if sep and tail in ("mean", "min", "max", "sum", "std", "count"):
        return head
    return name


def load_history(run_dir: Path | str, want: MetricFilter | None = None) -> RunHistory:
    """Read a run's log once, keeping only the metrics that want accepts (all when None)."""
    run_dir = Path(run_dir)
    folder = HistoryFolder(RunView(id=run_dir.name, run_dir=run_dir), want or (lambda _n: True))
    folder.feed(read_records(run_dir / RECORDS_NAME))
    return folder.finish()


class HistoryFolder:
    """Folds records into a RunHistory; fed in pieces by the live view as the log grows.

    The points of the wanted metrics are kept as whole columns with a run-wide metric id, and
    split into series once, in :meth:`finish` (one stable sort), whatever the number of metrics.
    """

    def __init__(self, view: RunView, want: MetricFilter) -> None:
        self.history = RunHistory(view)
        self._want = want
        self._ids: dict[str, int] = {}  # wanted metric name -> run-wide id
        self._names: list[str] = []
        self._lists: dict[tuple[str, ...], tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]] = {}
        self._columns: list[tuple[npt.NDArray[Any], ...]] = []

    def feed(self, records: Iterable[Record]) -> int:
        """Fold records in; returns the offset after the last one (0 if none came)."""
        end = 0
        for rec in records:
            self._fold(rec)
            end = rec.end
        return end

    def _fold(self, rec: Record) -> None:
        p = rec.payload
        if rec.type == RecordType.METRICS:
            self._metrics(p)
            return
        fold_record(self.history.view, rec)
        if rec.type == RecordType.RANK and isinstance(p.get("rank"), int):
            self.history.rank_changes.append(p)
        elif rec.type == RecordType.ALERT_STATE:
            self.history.alert_changes.append(p)

    def _metrics(self, p: dict[str, Any]) -> None:
        ids, wanted = self._lookup(p["names"])
        name_id = p["name_id"]
        keep = wanted[name_id]
        if not keep.any():
            return
        late = np.full(int(keep.sum()), bool(p["late"]))
        self._columns.append((ids[name_id[keep]], p["step"][keep], p["time_us"][keep], p["value"][keep], late))

    def _lookup(self, names: list[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """A record's names as run-wide ids (-1: not wanted) and a wanted mask; the aggregator
        repeats the same names list record after record, so each list is worked out once."""
        key = tuple(names)
        found = self._lists.get(key)
        if found is None:
            ids = np.array([self._id(n) for n in names], dtype=np.int64)
            found = self._lists[key] = (ids, ids >= 0)
        return found

    def _id(self, name: str) -> int:
        gid = self._ids.get(name)
        if gid is None:
            gid = -1
            if self._want(name):
                gid = self._ids[name] = len(self._names)
                self._names.append(name)
        return gid

    def finish(self) -> RunHistory:
        """The history so far, with the series of the points fed until now."""
        if not self._columns:
            return self.history
        gid, step, time_us, value, late = (np.concatenate(c) for c in zip(*self._columns, strict=True))
        self._columns.clear()
        order = np.argsort(gid, kind="stable")  # grouped by metric, record order kept inside each
        bounds = np.cumsum(np.bincount(gid, minlength=len(self._names)))
        series = self.history.series
        lo = 0
        for i, name in enumerate(self._names):
            hi = int(bounds[i])
            if hi > lo:
                at = order[lo:hi]
                new = Series(step[at], time_us[at], value[at], late[at])
                old = series.get(name)
                series[name] = new if old is None else _joined(old, new)
            lo = hi
        return self.history


def _joined(a: Series, b: Series) -> Series:
    return Series(
        np.concatenate([a.step, b.step]),
        np.concatenate([a.time_us, b.time_us]),
        np.concatenate([a.value, b.value]),
        np.concatenate([a.late, b.late]),
    )
