"""The ``simvue-hpc`` console script: inspect the runs in the local store, and upload them.

Each subcommand is one function decorated with :func:`command`, which registers its name, its
help (the docstring's first line) and its arguments; ``main`` builds the parser from that registry.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SimvueHPCError
from .store import (
    MetricSeries,
    RunView,
    check_run,
    check_store,
    default_root,
    find_run,
    list_runs,
    load_run,
    load_summary,
)

logger = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]
MAX_EVENTS = 50


@dataclass(frozen=True)
class _Command:
    name: str
    handler: Handler
    arguments: tuple[tuple[tuple[str, ...], dict[str, Any]], ...]


_COMMANDS: list[_Command] = []


def arg(*flags: str, **kwargs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One argument of a subcommand, as given to ``ArgumentParser.add_argument``."""
    return flags, kwargs


def command(name: str, *arguments: tuple[tuple[str, ...], dict[str, Any]]) -> Callable[[Handler], Handler]:
    """Register a subcommand handler under name with its arguments."""

    def register(handler: Handler) -> Handler:
        _COMMANDS.append(_Command(name, handler, arguments))
        return handler

    return register


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="simvue-hpc",
        description="Inspect the simvue_hpc runs in the local store and upload them to a Simvue server.",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        metavar="DIR",
        help="the local store (default: $SIMVUE_OFFLINE_DIRECTORY, else $XDG_DATA_HOME/simvue_hpc)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in _COMMANDS:
        doc = (cmd.handler.__doc__ or "").strip()
        p = sub.add_parser(cmd.name, help=doc.splitlines()[0] if doc else None, description=doc or None)
        for flags, kwargs in cmd.arguments:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(handler=cmd.handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``simvue-hpc``; returns the exit code (1 on a simvue_hpc error)."""
    args = build_parser().parse_args(argv)
    if args.root is None:
        args.root = default_root()
    try:
        code: int = args.handler(args)
        sys.stdout.flush()
    except SimvueHPCError as exc:
        print(f"simvue-hpc: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


# --- formatting ----------------------------------------------------------------------------------


def _time(us: int | None) -> str:
    """Microseconds since the epoch as local ``YYYY-MM-DD HH:MM:SS``; ``-`` if unknown."""
    if us is None:
        return "-"
    try:
        return datetime.fromtimestamp(us // 1_000_000).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError, TypeError):
        return str(us)


def _size(n: int) -> str:
    """A byte count for humans."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _value(v: Any) -> str:
    """A metadata value on one line: strings as is, anything else as JSON."""
    return v if isinstance(v, str) else json.dumps(v, default=str)


def _num(v: float) -> str:
    return f"{v:.6g}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Rows aligned in columns under headers (numeric-looking columns right-aligned)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    right = [all(_is_number(r[i]) for r in rows) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
        return (indent + "  ".join(parts)).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return s in ("-", "")
    return True


def _who(rank: Any, host: Any) -> str:
    return f"{'-' if rank is None else rank}@{host or '?'}"


def _metric_row(name: str, s: MetricSeries) -> list[str]:
    finite = s.value[~np.isnan(s.value)]
    lo, hi = (_num(float(finite.min())), _num(float(finite.max()))) if finite.size else ("nan", "nan")
    return [
        name,
        str(len(s)),
        f"{s.step[0]}..{s.step[-1]}",
        lo,
        hi,
        _num(float(s.value[-1])),
        str(s.late) if s.late else "",
    ]


# --- commands ------------------------------------------------------------------------------------


@command("list")
def cmd_list(args: argparse.Namespace) -> int:
    """List the runs in the store."""
    runs = list_runs(args.root, load_summary)
    if not runs:
        print(f"no runs in {args.root}")
        return 0
    rows = [
        [
            v.id,
            v.name or "-",
            f"{v.status} (damaged)" if v.damaged else v.status,
            str(len(v.ranks)),
            str(v.metric_count),
            _time(v.created_us),
            _time(v.ended_us),
            v.folder,
        ]
        for v in runs
    ]
    print("\n".join(_table(["ID", "NAME", "STATUS", "RANKS", "METRICS", "START", "END", "FOLDER"], rows)))
    return 0


@command("show", arg("run", metavar="RUN", help="run id, unique id prefix, or unique run name"))
def cmd_show(args: argparse.Namespace) -> int:
    """Show one run: metadata, metrics, events, files, alerts and ranks."""
    print("\n".join(_show_lines(load_run(find_run(args.root, args.run)))))
    return 0


def _show_lines(v: RunView) -> list[str]:
    """The text of ``show`` for one run."""
    fields = [
        ("name", v.name or "-"),
        ("id", v.id),
        ("folder", v.folder),
        ("status", v.status),
        ("description", v.description or "-"),
        ("tags", ", ".join(v.tags) or "-"),
        ("start", _time(v.created_us)),
        ("end", _time(v.ended_us)),
    ]
    end = v.end or {}
    for key in ("missing_ranks", "lost_ranks"):
        if ranks := end.get(key):
            fields.append((key.replace("_", " "), ", ".join(map(str, ranks))))
    out = [f"{k + ':':<15}{val}" for k, val in fields]
    for title, mapping in (("metadata", v.metadata), ("job", v.job)):
        out.append(f"{title}:" if mapping else f"{title + ':':<15}-")
        out += [f"  {k}: {_value(val)}" for k, val in mapping.items()]

    out += ["", f"metrics ({len(v.metrics)})"]
    if v.metrics:
        rows = [_metric_row(name, s) for name, s in v.metrics.items()]
        out += _table(["NAME", "POINTS", "STEPS", "MIN", "MAX", "LAST", "LATE"], rows, "  ")

    out += ["", f"events ({len(v.events)})"]
    if len(v.events) > MAX_EVENTS:
        out.append(f"  ... {len(v.events) - MAX_EVENTS} earlier events omitted")
    for e in v.events[-MAX_EVENTS:]:
        level = e.get("level")
        tag = f" [{level}]" if level and level != "info" else ""
        out.append(f"  {_time(e.get('time_us'))}  {_who(e.get('rank'), e.get('host'))}{tag}  {e.get('message', '')}")

    out += ["", f"files ({len(v.files)})"]
    if v.files:
        rows = [
            [
                str(f.get("name", "?")),
                str(f.get("category", "-")),
                _size(int(f.get("size") or 0)),
                str(f.get("sha256", ""))[:12],
            ]
            for f in v.files
        ]
        out += _table(["NAME", "CATEGORY", "SIZE", "SHA256"], rows, "  ")

    out += ["", f"alerts ({len(v.alerts)})"]
    for a in v.alerts:
        name = a.get("name", "?")
        state = v.alert_states.get(str(name), {}).get("status", "ok")
        rule = a.get("alert") or {}
        what = ", ".join(f"{k}={_value(val)}" for k, val in rule.items()) or a.get("source", "")
        out.append(f"  {name} [{state}]: {what}")

    out += ["", f"ranks ({len(v.ranks)})"]
    if v.ranks:
        rows = [
            [str(r), str(p.get("host") or "?"), str(p.get("pid") or "-"), str(p.get("state") or "-")]
            for r, p in sorted(v.ranks.items())
        ]
        out += _table(["RANK", "HOST", "PID", "STATE"], rows, "  ")
    return out


@command("check", arg("run", nargs="?", metavar="RUN", help="run id, unique id prefix or name; default: every run"))
def cmd_check(args: argparse.Namespace) -> int:
    """Verify runs (record log and saved files) and say what is lost; exit 1 if anything is."""
    results = [check_run(find_run(args.root, args.run))] if args.run else check_store(args.root)
    for result in results:
        print("\n".join(result.lines()))
    return 0 if all(r.ok for r in results) else 1


@command(
    "sync",
    arg("runs", nargs="*", metavar="RUN", help="runs to upload (id, id prefix or name); default: every run"),
    arg("--quiet", action="store_true", help="no progress bar"),
    arg("--wait", type=float, default=600.0, metavar="S", help="how long to wait for another sync of a run (s)"),
)
def cmd_sync(args: argparse.Namespace) -> int:
    """Upload runs from the local store to the Simvue server (resumes; never uploads twice).

    Exit code 0 when everything the store holds is on the server, 1 when a run failed, 75 when the
    server was unavailable (try again later)."""
    from .upload.sync import sync

    return sync(args.root, args.runs, quiet=args.quiet, wait=args.wait)


@command(
    "run",
    arg("--name", help="the run's name (default: rank 0's init() name, else a generated one)"),
    arg("--folder", default="/", help="the run's folder (default /)"),
    arg("--tag", action="append", default=[], metavar="TAG", help="a tag (repeatable)"),
    arg(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a metadata entry (repeatable); a JSON VALUE (number, true, list) is kept as such",
    ),
    arg("--description", help="the run's description"),
    arg("--ranks", type=int, metavar="N", help="how many ranks will join (recorded missing if they do not)"),
    arg("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="the job's command, after --"),
)
def cmd_run(args: argparse.Namespace) -> int:
    """Run COMMAND (srun ./app, mpiexec -n 8 python sim.py...) as one run that its ranks join.

    Hosts the run's aggregator, gives COMMAND the run's endpoint in its environment, forwards its
    output and SIGTERM/SIGINT, records the last lines of its output and sets the run's status from
    its exit code, which is also this command's."""
    from .sidecar import parse_metadata, run

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    os.environ["SIMVUE_OFFLINE_DIRECTORY"] = str(args.root)  # the run's store, for COMMAND's ranks too
    return run(command, name=args.name, metadata=parse_metadata(args.metadata), tags=args.tag,
               description=args.description, folder=args.folder, ranks=args.ranks)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
