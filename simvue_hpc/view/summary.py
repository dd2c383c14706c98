"""What ``simvue-hpc show`` and ``list`` say about runs, as data (``--json``) and as text.

The text is made from the same data, so the two never disagree. A run of 100,000 metrics
starts with its summary; the metric table is cut to :data:`MAX_METRIC_ROWS` unless a pattern
chooses the metrics (``--metrics 'loss*'``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..store import MetricSeries, RunView
from .history import Series, matcher

MAX_EVENTS = 50  # in the text; the data has them all
MAX_METRIC_ROWS = 200  # in the text when no pattern is given


# --- data ----------------------------------------------------------------------------------------


def iso(us: int | None) -> str | None:
    """Microseconds since the epoch as ISO 8601 UTC, or None."""
    if not isinstance(us, int):
        return None
    try:
        return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return None


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def metric_row(name: str, s: MetricSeries | Series) -> dict[str, Any]:
    """One metric's summary: points, step range, min, max, the value at its last step (NaN as None), late points."""
    late = s.late if isinstance(s.late, int) else int(np.count_nonzero(s.late))
    if not len(s):
        return {
            "name": name,
            "points": 0,
            "first_step": None,
            "last_step": None,
            "min": None,
            "max": None,
            "last": None,
            "late": late,
        }
    finite = s.value[np.isfinite(s.value)]
    last = len(s) - 1 - int(np.argmax(s.step[::-1]))  # the last point of the highest step (late points come after)
    return {
        "name": name,
        "points": len(s),
        "first_step": int(s.step.min()),
        "last_step": int(s.step[last]),
        "min": float(finite.min()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "last": _finite(float(s.value[last])),
        "late": late,
    }


def run_entry(v: RunView) -> dict[str, Any]:
    """A run as ``list --json`` gives it."""
    return {
        "id": v.id,
        "name": v.name,
        "status": v.status,
        "damaged": v.damaged,
        "folder": v.folder,
        "tags": v.tags,
        "ranks": len(v.ranks),
        "metrics": v.metric_count,
        "start_us": v.created_us,
        "end_us": v.ended_us,
        "start": iso(v.created_us),
        "end": iso(v.ended_us),
    }


def run_data(v: RunView, pattern: str | None = None, limit: int | None = None) -> dict[str, Any]:
    """A run as ``show --json`` gives it: every field of the text, with all events.

    pattern (shell-style, see :func:`.history.matcher`) chooses the metrics listed; limit cuts
    their list (the text's), and ``metrics_listed`` says how many made it.
    """
    end = v.end or {}
    want = matcher(None if pattern is None else [pattern])
    names = [n for n in v.metrics if want(n)]
    listed = names if limit is None else names[:limit]
    states = Counter(str(p.get("state") or "-") for p in v.ranks.values())
    data = run_entry(v)
    del data["metrics"], data["ranks"]
    data |= {
        "description": v.description,
        "missing_ranks": list(end.get("missing_ranks") or []),
        "lost_ranks": list(end.get("lost_ranks") or []),
        "metadata": v.metadata,
        "job": v.job,
        "system": v.system,
        "counters": dict(end.get("counters") or {}),
        "summary": {
            "metrics": len(v.metrics),
            "points": sum(len(s) for s in v.metrics.values()),
            "late_points": sum(s.late for s in v.metrics.values()),
            "events": len(v.events),
            "files": len(v.files),
            "alerts": len(v.alerts),
            "ranks": len(v.ranks),
            "ranks_by_state": dict(sorted(states.items())),
        },
        "metric_pattern": pattern,
        "metrics_matching": len(names),
        "metrics_listed": len(listed),
        "metrics": [metric_row(n, v.metrics[n]) for n in listed],
        "events": [
            {k: e.get(k) for k in ("time_us", "rank", "host", "level", "message")} | {"time": iso(e.get("time_us"))}
            for e in v.events
        ],
        "files": [
            {k: f.get(k) for k in ("name", "category", "size", "sha256", "mime_type", "original_path", "rank", "host")}
            for f in v.files
        ],
        "alerts": [
            {
                "name": a.get("name"),
                "state": v.alert_states.get(str(a.get("name")), {}).get("status", "ok"),
                "definition": a,
            }
            for a in v.alerts
        ],
        "ranks": [
            {
                "rank": r,
                "host": p.get("host"),
                "pid": p.get("pid"),
                "state": p.get("state"),
                "time_us": p.get("time_us"),
            }
            for r, p in sorted(v.ranks.items())
        ],
    }
    return data


def to_json(data: Any, indent: int | None = None) -> str:
    """JSON text of data; numpy scalars and bytes become plain values, NaN and infinities null."""
    try:  # the fast path: the C encoder, when nothing needs converting
        return json.dumps(data, indent=indent, allow_nan=False, default=_scalar)
    except ValueError:  # a NaN somewhere (metadata, an event): convert everything, then encode
        return json.dumps(_plain(data), indent=indent, allow_nan=False)


def _scalar(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, bytes):
        return x.hex()
    return str(x)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, bytes):
        return x.hex()
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return str(x)


# --- text ----------------------------------------------------------------------------------------


def local_time(us: int | None) -> str:
    """Microseconds since the epoch as local ``YYYY-MM-DD HH:MM:SS``; ``-`` if unknown."""
    if us is None:
        return "-"
    try:
        return datetime.fromtimestamp(us // 1_000_000).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError, TypeError):
        return str(us)


def size(n: int) -> str:
    """A byte count for humans."""
    amount = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def _value(v: Any) -> str:
    """A metadata value on one line: strings as is, anything else as JSON."""
    return v if isinstance(v, str) else json.dumps(v, default=str)


def _num(v: float | None) -> str:
    return "nan" if v is None else f"{v:.6g}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
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


def list_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    """The table of ``list``."""
    rows = [
        [
            e["id"],
            e["name"] or "-",
            f"{e['status']} (damaged)" if e.get("damaged") else e["status"],
            str(e["ranks"]),
            str(e["metrics"]),
            local_time(e["start_us"]),
            local_time(e["end_us"]),
            e["folder"],
        ]
        for e in entries
    ]
    return table(["ID", "NAME", "STATUS", "RANKS", "METRICS", "START", "END", "FOLDER"], rows)


def summary_line(summary: dict[str, Any]) -> str:
    """One line that says how big the run is."""
    states = ", ".join(f"{n} {state}" for state, n in summary["ranks_by_state"].items())
    return (
        f"{summary['metrics']} metrics ({summary['points']} points, {summary['late_points']} late), "
        f"{summary['events']} events, {summary['files']} files, {summary['alerts']} alerts, "
        f"{summary['ranks']} ranks" + (f" ({states})" if states else "")
    )


def show_lines(d: dict[str, Any]) -> list[str]:
    """The text of ``show`` from :func:`run_data` (called with the text's limit)."""
    fields = [
        ("name", d["name"] or "-"),
        ("id", d["id"]),
        ("folder", d["folder"]),
        ("status", d["status"]),
        ("description", d["description"] or "-"),
        ("tags", ", ".join(d["tags"]) or "-"),
        ("start", local_time(d["start_us"])),
        ("end", local_time(d["end_us"])),
    ]
    for key in ("missing_ranks", "lost_ranks"):
        if d[key]:
            fields.append((key.replace("_", " "), ", ".join(map(str, d[key]))))
    fields.append(("summary", summary_line(d["summary"])))
    out = [f"{k + ':':<15}{val}" for k, val in fields]
    for title in ("metadata", "job", "counters"):
        mapping = d[title]
        if title == "counters" and not mapping:
            continue
        out.append(f"{title}:" if mapping else f"{title + ':':<15}-")
        out += [f"  {k}: {_value(val)}" for k, val in mapping.items()]
    out += ["", _metrics_title(d)]
    if d["metrics"]:
        rows = [
            [
                m["name"],
                str(m["points"]),
                f"{m['first_step']}..{m['last_step']}",
                _num(m["min"]),
                _num(m["max"]),
                _num(m["last"]),
                str(m["late"]) if m["late"] else "",
            ]
            for m in d["metrics"]
        ]
        out += table(["NAME", "POINTS", "STEPS", "MIN", "MAX", "LAST", "LATE"], rows, "  ")
    events = d["events"]
    out += ["", f"events ({len(events)})"]
    if len(events) > MAX_EVENTS:
        out.append(f"  ... {len(events) - MAX_EVENTS} earlier events omitted")
    for e in events[-MAX_EVENTS:]:
        tag = f" [{e['level']}]" if e["level"] and e["level"] != "info" else ""
        out.append(f"  {local_time(e['time_us'])}  {_who(e['rank'], e['host'])}{tag}  {e['message'] or ''}")
    out += ["", f"files ({len(d['files'])})"]
    if d["files"]:
        rows = [
            [str(f["name"] or "?"), str(f["category"] or "-"), size(int(f["size"] or 0)), str(f["sha256"] or "")[:12]]
            for f in d["files"]
        ]
        out += table(["NAME", "CATEGORY", "SIZE", "SHA256"], rows, "  ")
    out += ["", f"alerts ({len(d['alerts'])})"]
    for a in d["alerts"]:
        rule = a["definition"].get("alert") or {}
        what = ", ".join(f"{k}={_value(val)}" for k, val in rule.items()) or a["definition"].get("source", "")
        out.append(f"  {a['name'] or '?'} [{a['state']}]: {what}")
    out += ["", f"ranks ({len(d['ranks'])})"]
    if d["ranks"]:
        rows = [
            [str(r["rank"]), str(r["host"] or "?"), str(r["pid"] or "-"), str(r["state"] or "-")] for r in d["ranks"]
        ]
        out += table(["RANK", "HOST", "PID", "STATE"], rows, "  ")
    return out


def _metrics_title(d: dict[str, Any]) -> str:
    total, matching, listed = d["summary"]["metrics"], d["metrics_matching"], d["metrics_listed"]
    title = (
        f"metrics ({total})"
        if d["metric_pattern"] is None
        else f"metrics ({matching} of {total} match {d['metric_pattern']!r})"
    )
    if listed < matching:
        title += f": the first {listed} listed; choose others with --metrics PATTERN"
    return title
