"""``simvue-hpc plot``, ``report``, ``export`` and ``watch``: looking at a run (simvue_hpc.view)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..store import find_run
from ..view.history import load_history, matcher
from .app import arg, command

RUN = arg("run", metavar="RUN", help="run id, unique id prefix, or unique run name")


def _default_path(run: str, suffix: str) -> Path:
    """``<run name>.<suffix>`` in the current directory, the name made safe for a file."""
    return Path(re.sub(r"[^A-Za-z0-9_.-]+", "_", run).strip("._") or "run").with_suffix(suffix)


@command(
    "plot",
    RUN,
    arg("metrics", nargs="+", metavar="METRIC", help="metric names or shell patterns ('loss', 'resources/*')"),
    arg("-o", "--output", type=Path, metavar="FILE", help="FILE.png, .svg or .pdf (default: <run name>.png)"),
    arg("--x", choices=("step", "time"), default="step", help="x axis: step, or seconds since the run started"),
    arg("--since", type=float, metavar="X", help="start of the x range (a step, or seconds)"),
    arg("--until", type=float, metavar="X", help="end of the x range"),
)
def cmd_plot(args: argparse.Namespace) -> int:
    """Plot metrics: the mean with the min-max band across ranks, alerts and events marked."""
    from ..view import plot

    history = load_history(find_run(args.root, args.run), matcher(args.metrics))
    v = history.view
    axis = plot.Axis(args.x, args.since, args.until, origin_us=v.created_us or 0)
    path = plot.save(plot.render(history, axis), args.output or _default_path(v.name or v.id, ".png"))
    print(path)
    return 0


@command(
    "report",
    RUN,
    arg("-o", "--output", type=Path, metavar="FILE", help="FILE.html (default: <run name>.html)"),
)
def cmd_report(args: argparse.Namespace) -> int:
    """Write one self-contained HTML page about a run (plots, ranks, events, alerts, files)."""
    from ..view import report

    history = load_history(find_run(args.root, args.run))
    path = report.write(history, args.output or _default_path(history.view.name or history.view.id, ".html"))
    print(path)
    return 0


@command(
    "export",
    RUN,
    arg("--metrics", type=Path, required=True, metavar="FILE", help="FILE.csv or FILE.parquet (needs pyarrow)"),
    arg("--only", action="append", metavar="PATTERN", help="export only matching metrics (repeatable)"),
)
def cmd_export(args: argparse.Namespace) -> int:
    """Export a run's metric points as a table: metric, step, time_us, value, late."""
    from ..view.export import export_metrics

    history = load_history(find_run(args.root, args.run), matcher(args.only))
    rows = export_metrics(history, args.metrics)
    print(f"{args.metrics}: {rows} points of {len(history.series)} metrics")
    return 0


@command(
    "watch",
    RUN,
    arg("--interval", type=float, default=1.0, metavar="S", help="seconds between refreshes (default 1)"),
    arg("--timeout", type=float, metavar="S", help="stop after S seconds even if the run goes on (exit 3)"),
)
def cmd_watch(args: argparse.Namespace) -> int:
    """Follow a run live in the terminal until it ends: last values, ranks, events.

    Exits 0 when the run ends, 3 when --timeout passes first."""
    from ..view.watch import watch

    ended = watch(find_run(args.root, args.run), interval=args.interval, timeout=args.timeout)
    return 0 if ended else 3
