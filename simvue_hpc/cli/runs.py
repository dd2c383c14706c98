"""``simvue-hpc list``, ``show`` and ``check``: the runs of the local store, as text or as JSON."""

from __future__ import annotations

import argparse
import sys

from ..store import check_run, check_store, find_run, list_runs, load_run, load_summary
from ..view.summary import MAX_METRIC_ROWS, list_lines, run_data, run_entry, show_lines, to_json
from .app import arg, command

JSON = arg("--json", action="store_true", help="print JSON for scripts instead of text (indented on a terminal)")


def _indent() -> int | None:
    """Indented JSON for a person at a terminal; one compact line (and the fast encoder) for scripts."""
    return 2 if sys.stdout.isatty() else None


@command("list", JSON)
def cmd_list(args: argparse.Namespace) -> int:
    """List the runs in the store."""
    entries = [run_entry(v) for v in list_runs(args.root, load_summary)]
    if args.json:
        print(to_json(entries, _indent()))
    elif not entries:
        print(f"no runs in {args.root}")
    else:
        print("\n".join(list_lines(entries)))
    return 0


@command(
    "show",
    arg("run", metavar="RUN", help="run id, unique id prefix, or unique run name"),
    arg("--metrics", metavar="PATTERN", help="list only the metrics whose name matches PATTERN (shell-style: 'loss*')"),
    JSON,
)
def cmd_show(args: argparse.Namespace) -> int:
    """Show one run: a summary, then metadata, metrics, events, files, alerts and ranks."""
    view = load_run(find_run(args.root, args.run))
    if args.json:
        print(to_json(run_data(view, args.metrics), _indent()))
    else:
        limit = None if args.metrics else MAX_METRIC_ROWS
        print("\n".join(show_lines(run_data(view, args.metrics, limit))))
    return 0


@command("check", arg("run", nargs="?", metavar="RUN", help="run id, unique id prefix or name; default: every run"))
def cmd_check(args: argparse.Namespace) -> int:
    """Verify runs (record log and saved files) and say what is lost; exit 1 if anything is."""
    results = [check_run(find_run(args.root, args.run))] if args.run else check_store(args.root)
    for result in results:
        print("\n".join(result.lines()))
    return 0 if all(r.ok for r in results) else 1
