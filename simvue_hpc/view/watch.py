"""Follow a run as it is written: last values, live ranks, events, refreshed once a second.

:class:`Tail` reads only what the aggregator appended since the last look (the log is append
only, so an offset is enough) and keeps, per metric, only its last point: watching a long run
costs neither time nor memory that grows with it. :func:`watch` draws it with rich until the
run's END record arrives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import MissingExtra, StoreError
from ..records import Record, RecordType
from ..store import HEADER_SIZE, RECORDS_NAME, RunView, read_records
from .history import HistoryFolder
from .summary import local_time

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

MAX_METRIC_ROWS = 20
MAX_EVENT_ROWS = 8


@dataclass
class Last:
    """A metric's latest point and how many points it has."""

    step: int
    value: float
    time_us: int
    points: int


class Tail:
    """The state of a run read incrementally from its log."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.offset = HEADER_SIZE
        self._folder = HistoryFolder(RunView(id=run_dir.name, run_dir=run_dir), lambda _name: False)
        self.last: dict[str, Last] = {}
        self.records = 0

    @property
    def view(self) -> RunView:
        return self._folder.history.view

    @property
    def ended(self) -> bool:
        return self.view.end is not None

    def poll(self) -> int:
        """Read the records appended since the last poll; returns how many came."""
        before = self.records
        try:
            end = self._folder.feed(self._tap(read_records(self.run_dir / RECORDS_NAME, self.offset)))
        except StoreError:  # the log is still being created: nothing to read yet
            return 0
        if end:
            self.offset = end
        return self.records - before

    def _tap(self, records: Iterator[Record]) -> Iterator[Record]:
        for rec in records:
            self.records += 1
            if rec.type is RecordType.METRICS:
                self._take(rec.payload)
            yield rec

    def _take(self, p: dict[str, Any]) -> None:
        name_id, step, value, t = p["name_id"], p["step"], p["value"], p["time_us"]
        if not len(name_id):
            return
        ids, first_rev, counts = np.unique(name_id[::-1], return_index=True, return_counts=True)
        at = len(name_id) - 1 - first_rev  # each name's last point in this record
        for i, k, n in zip(ids.tolist(), at.tolist(), counts.tolist(), strict=True):
            name = p["names"][i]
            old = self.last.get(name)
            point = Last(int(step[k]), float(value[k]), int(t[k]), n)
            if old is None:
                self.last[name] = point
            elif point.step >= old.step:  # a late point never hides a newer one
                point.points += old.points
                self.last[name] = point
            else:
                old.points += n


def render(tail: Tail, now_us: int) -> RenderableType:
    """The screen: the run's line, its ranks, the most recently updated metrics and the last events."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    v = tail.view
    states: dict[str, list[int]] = {}
    for rank, p in sorted(v.ranks.items()):
        states.setdefault(str(p.get("state") or "joined"), []).append(rank)
    since = (now_us - v.created_us) / 1e6 if v.created_us else 0.0
    head = Text.assemble(
        (f"{v.name or v.id}", "bold"),
        f"  {v.id}  ",
        (v.status, "bold green" if v.status == "completed" else "bold red" if v.ended_us else "bold blue"),
        f"  started {local_time(v.created_us)} ({since:.0f} s ago)" if v.created_us else "",
    )
    ranks = Text(
        "ranks: "
        + (", ".join(f"{len(r)} {s}" for s, r in states.items()) or "none yet")
        + ("".join(f"  {s}: {_short(r)}" for s, r in states.items() if s in ("lost", "missing")))
    )
    metrics = Table(title=f"metrics ({len(tail.last)})", title_justify="left", expand=False)
    for col, just in (("metric", "left"), ("step", "right"), ("value", "right"), ("points", "right"), ("age", "right")):
        metrics.add_column(col, justify=just)  # type: ignore[arg-type]
    recent = sorted(tail.last.items(), key=lambda kv: (kv[1].time_us, kv[0]), reverse=True)[:MAX_METRIC_ROWS]
    for name, last in sorted(recent):
        age = max(0.0, (now_us - last.time_us) / 1e6)
        metrics.add_row(name, str(last.step), f"{last.value:.6g}", str(last.points), f"{age:.0f} s")
    events = Table(title=f"events ({len(v.events)})", title_justify="left")
    for col in ("time", "rank", "level", "message"):
        events.add_column(col)
    for e in v.events[-MAX_EVENT_ROWS:]:
        by = e.get("rank")
        who = f"{'-' if by is None else by}@{e.get('host') or '?'}"
        events.add_row(local_time(e.get("time_us")), who, str(e.get("level") or "info"), str(e.get("message") or ""))
    firing = [n for n, s in v.alert_states.items() if s.get("status") == "critical"]
    alerts = Text(f"alerts firing: {', '.join(firing)}", style="bold red") if firing else Text("alerts: none firing")
    parts: list[RenderableType] = [head, ranks, alerts, metrics, events]
    if tail.ended:
        parts.append(Text(f"the run ended: {v.status} at {local_time(v.ended_us)}", style="bold"))
    return Group(*parts)


def _short(ranks: list[int], most: int = 10) -> str:
    text = ",".join(map(str, ranks[:most]))
    return text + (f",... ({len(ranks)})" if len(ranks) > most else "")


def watch(
    run_dir: Path,
    interval: float = 1.0,
    timeout: float | None = None,
    console: Console | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Redraw the run every interval seconds until it ends (True) or timeout passes (False)."""
    try:
        from rich.live import Live
    except ImportError as exc:
        raise MissingExtra("watch", "rich", "watching a run") from exc
    tail = Tail(run_dir)
    deadline = None if timeout is None else clock() + timeout
    tail.poll()
    with Live(render(tail, time.time_ns() // 1000), console=console, auto_refresh=False, transient=False) as live:
        while not tail.ended and (deadline is None or clock() < deadline):
            sleep(interval)
            tail.poll()
            live.update(render(tail, time.time_ns() // 1000), refresh=True)
    return tail.ended
