"""A run's log folded into a :class:`RunView`, the runs of a store listed, a run found by id or name."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..errors import RunNotFound, StoreError
from ..records import Record, RecordType
from .format import RECORDS_NAME
from .reader import Damage, read_records

__all__ = ["MetricSeries", "RunView", "find_run", "fold_record", "list_runs", "load_run", "run_dirs"]

if TYPE_CHECKING:
    from .summary import MetricSummaries

logger = logging.getLogger(__name__)


@dataclass
class MetricSeries:
    """Every point of one metric, in record order."""

    step: npt.NDArray[np.int64]
    time_us: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    late: int = 0  # points that came in records flagged late

    def __len__(self) -> int:
        return len(self.step)


@dataclass
class RunView:
    """A run folded from its records: the state a reader (CLI, uploader) needs."""

    id: str
    run_dir: Path
    name: str | None = None
    folder: str = "/"
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    created_us: int | None = None
    system: dict[str, Any] = field(default_factory=dict)
    job: dict[str, Any] = field(default_factory=dict)
    status: str = "created"
    ended_us: int | None = None
    end: dict[str, Any] | None = None  # the END payload (missing/lost ranks, counters)
    ranks: dict[int, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    alert_states: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> its last ALERT_STATE
    folder_details: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, MetricSeries] = field(default_factory=dict)
    damage: list[Damage] = field(default_factory=list)  # unreadable byte ranges of the log, in order
    summary: MetricSummaries | None = None  # per-metric summary, from load_summary (metrics then empty)

    @property
    def metric_count(self) -> int:
        """The number of metrics with points, whichever loader made the view."""
        return len(self.summary) if self.summary is not None else len(self.metrics)

    @property
    def damaged(self) -> bool:
        """Whether records were lost to damage (an incomplete record at the end of a run that has
        not ended, as a running writer leaves it, does not count)."""
        return any(not d.torn or self.end is not None for d in self.damage)


def load_run(run_dir: Path | str) -> RunView:
    """Fold a run's records into a RunView; metrics are concatenated once, at the end."""
    run_dir = Path(run_dir)
    view = RunView(id=run_dir.name, run_dir=run_dir)
    names: dict[str, int] = {}  # metric name -> global id, in order of first appearance
    gids: list[npt.NDArray[np.int64]] = []
    steps: list[npt.NDArray[np.int64]] = []
    times: list[npt.NDArray[np.int64]] = []
    values: list[npt.NDArray[np.float64]] = []
    late_flags: list[bool] = []
    for rec in read_records(run_dir / RECORDS_NAME, damage=view.damage):
        p = rec.payload
        match rec.type:
            case RecordType.METRICS:
                lookup = np.array([names.setdefault(n, len(names)) for n in p["names"]], dtype=np.int64)
                gids.append(lookup[p["name_id"]])
                steps.append(p["step"])
                times.append(p["time_us"])
                values.append(p["value"])
                late_flags.append(p["late"])
            case _:
                fold_record(view, rec)
    if gids:
        gid = np.concatenate(gids)
        order = np.argsort(gid, kind="stable")  # groups points by metric, keeping record order
        lengths = [len(g) for g in gids]
        late = np.repeat(np.array(late_flags, dtype=bool), lengths)[order]
        step = np.concatenate(steps)[order]
        time_us = np.concatenate(times)[order]
        value = np.concatenate(values)[order]
        bounds = np.cumsum(np.bincount(gid, minlength=len(names)))
        lo = 0
        for name, i in names.items():
            hi = int(bounds[i])
            if hi > lo:
                view.metrics[name] = MetricSeries(
                    step[lo:hi], time_us[lo:hi], value[lo:hi], int(np.count_nonzero(late[lo:hi]))
                )
            lo = hi
    return view


def fold_record(view: RunView, rec: Record) -> None:
    """Apply one record other than METRICS to a view."""
    p = rec.payload
    match rec.type:
        case RecordType.RUN:
            view.id = str(p.get("id") or view.id)
            view.name = p.get("name")
            view.folder = p.get("folder") or "/"
            view.description = p.get("description")
            view.tags = _union([], p.get("tags") or [])
            view.metadata = dict(p.get("metadata") or {})
            view.created_us = p.get("created_us")
            view.system = dict(p.get("system") or {})
            view.job = dict(p.get("job") or {})
        case RecordType.RUN_UPDATE:
            for key in ("name", "description", "folder"):
                if key in p:
                    setattr(view, key, p[key])
            view.metadata.update(p.get("metadata") or {})
            view.tags = _union(view.tags, p.get("tags") or [])
        case RecordType.STATUS:
            view.status = p.get("status", view.status)
        case RecordType.END:
            view.status = p.get("status", view.status)
            view.ended_us = p.get("time_us")
            view.end = p
        case RecordType.RANK if isinstance(p.get("rank"), int):
            view.ranks[p["rank"]] = p
        case RecordType.EVENT:
            view.events.append(p)
        case RecordType.FILE:
            view.files.append(p)
        case RecordType.ALERT:
            view.alerts.append(p)
        case RecordType.ALERT_STATE:
            view.alert_states[str(p.get("name"))] = p
        case RecordType.FOLDER:
            view.folder_details.append(p)


def _union(tags: list[str], more: Sequence[str]) -> list[str]:
    """Tags in tags, then the new ones of more, each once, order kept."""
    out = list(tags)
    for tag in more:
        if tag not in out:
            out.append(tag)
    return out


def run_dirs(root: Path) -> list[Path]:
    """The directories of root that hold a record log (others, e.g. simvue's own, are ignored)."""
    try:
        if not root.is_dir():
            return []
        return sorted(d for d in root.iterdir() if (d / RECORDS_NAME).is_file())
    except OSError as exc:
        raise StoreError(f"cannot list {root}: {exc}") from exc


def list_runs(root: Path | str, loader: Callable[[Path], RunView] | None = None) -> list[RunView]:
    """Every readable run under root, oldest first; unreadable ones are logged and skipped.

    loader reads one run: load_run (the default, every point) or load_summary (faster)."""
    views = []
    for run_dir in run_dirs(Path(root)):
        try:
            views.append((loader or load_run)(run_dir))
        except StoreError as exc:
            logger.warning("skipping run %s: %s", run_dir.name, exc)
    views.sort(key=lambda v: (v.created_us or 0, v.id))
    return views


def _run_name(run_dir: Path) -> str | None:
    """The run's current name (RUN, then RUN_UPDATE), or None if it has none or is unreadable."""
    name = None
    try:
        for rec in read_records(run_dir / RECORDS_NAME, copy=False):
            if rec.type in (RecordType.RUN, RecordType.RUN_UPDATE) and "name" in rec.payload:
                name = rec.payload["name"]
    except StoreError:
        return None
    return name if isinstance(name, str) else None


def find_run(root: Path | str, key: str) -> Path:
    """The directory of the run whose id is key, or whose id starts with / name equals key.

    An exact id wins; otherwise id prefixes and names are matched together, and anything but
    exactly one match raises RunNotFound (listing the candidates when ambiguous).
    """
    root = Path(root)
    if not key:
        raise RunNotFound("empty run id or name")
    dirs = run_dirs(root)
    for run_dir in dirs:
        if run_dir.name == key:
            return run_dir
    named = {d: _run_name(d) for d in dirs}
    matches = [d for d in dirs if d.name.startswith(key) or named[d] == key]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RunNotFound(f"no run in {root} has id or name {key!r}")
    listing = ", ".join(f"{d.name} ({named[d] or 'unnamed'})" for d in matches[:10])
    more = f" and {len(matches) - 10} more" if len(matches) > 10 else ""
    raise RunNotFound(f"{key!r} matches {len(matches)} runs: {listing}{more}")
