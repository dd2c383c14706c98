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
    """Folds records into a RunHistory; fed in pieces by the live view as the log grows."""

    def __init__(self, view: RunView, want: MetricFilter) -> None:
        self.history = RunHistory(view)
        self._want = want
        self._chunks: dict[str, list[tuple[Any, ...]]] = {}
        self._decided: dict[str, bool] = {}

    def feed(self, records: Iterable[Record]) -> int:
        """Fold records in; returns the offset after the last one (0 if none came)."""
        end = 0
        for rec in records:
            self._fold(rec)
            end = rec.end
        return end

    def _fold(self, rec: Record) -> None:
        p, v = rec.payload, self.history.view
        match rec.type:
            case RecordType.METRICS:
                self._metrics(p)
            case RecordType.RUN:
                v.id = str(p.get("id") or v.id)
                v.name = p.get("name")
                v.folder = p.get("folder") or "/"
                v.description = p.get("description")
                v.tags = list(dict.fromkeys(p.get("tags") or []))
                v.metadata = dict(p.get("metadata") or {})
                v.created_us = p.get("created_us")
                v.system = dict(p.get("system") or {})
                v.job = dict(p.get("job") or {})
            case RecordType.RUN_UPDATE:
                for key in ("name", "description", "folder"):
                    if key in p:
                        setattr(v, key, p[key])
                v.metadata.update(p.get("metadata") or {})
                v.tags = list(dict.fromkeys([*v.tags, *(p.get("tags") or [])]))
            case RecordType.STATUS:
                v.status = p.get("status", v.status)
            case RecordType.END:
                v.status = p.get("status", v.status)
                v.ended_us = p.get("time_us")
                v.end = p
            case RecordType.RANK if isinstance(p.get("rank"), int):
                v.ranks[p["rank"]] = p
                self.history.rank_changes.append(p)
            case RecordType.EVENT:
                v.events.append(p)
            case RecordType.FILE:
                v.files.append(p)
            case RecordType.ALERT:
                v.alerts.append(p)
            case RecordType.ALERT_STATE:
                v.alert_states[str(p.get("name"))] = p
                self.history.alert_changes.append(p)
            case RecordType.FOLDER:
                v.folder_details.append(p)

    def _metrics(self, p: dict[str, Any]) -> None:
        names: list[str] = p["names"]
        keep = [i for i, n in enumerate(names) if self._decide(n)]
        if not keep:
            return
        name_id = p["name_id"]
        late = bool(p["late"])
        for i in keep:
            sel = name_id == i
            if sel.any():
                self._chunks.setdefault(names[i], []).append((p["step"][sel], p["time_us"][sel], p["value"][sel], late))

    def _decide(self, name: str) -> bool:
        wanted = self._decided.get(name)
        if wanted is None:
            wanted = self._decided[name] = bool(self._want(name))
        return wanted

    def finish(self) -> RunHistory:
        """The history so far, with the series of the points fed until now."""
        series = self.history.series
        for name, chunks in self._chunks.items():
            parts = [series[name]] if name in series else []
            steps = [s.step for s in parts] + [c[0] for c in chunks]
            times = [s.time_us for s in parts] + [c[1] for c in chunks]
            values = [s.value for s in parts] + [c[2] for c in chunks]
            lates = [s.late for s in parts] + [np.full(len(c[0]), c[3], dtype=bool) for c in chunks]
            series[name] = Series(
                np.concatenate(steps), np.concatenate(times), np.concatenate(values), np.concatenate(lates)
            )
        self._chunks.clear()
        return self.history
