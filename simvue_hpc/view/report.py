"""One self-contained HTML page about a run, to open from a file on any laptop after ``scp``.

The page has the run's details and counters, a plot per metric (the renderer of ``plot``,
embedded as PNG data), the ranks on a time line (:mod:`.timeline`), events with their ranks,
alerts and their changes, saved files with their checksums and the resource metrics. It loads
nothing from anywhere (no URL, no script, no font): everything is inline.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import MissingExtra
from . import timeline
from .history import RunHistory
from .plot import Panel, panels, png_bytes, render
from .summary import iso, metric_row, size

logger = logging.getLogger(__name__)

MAX_PLOTS = 40  # metric plots on one page; the rest are listed, for `simvue-hpc plot`
MAX_ROWS = 1000  # rows of the events and alert-change tables
RESOURCES = "resources/"

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1000px;margin:0 auto;padding:0 16px 40px}
header{background:#1d2330;color:#fff;padding:18px 16px}
header div{max-width:1000px;margin:0 auto}
h1{margin:0;font-size:22px} h2{margin:28px 0 8px;font-size:18px;border-bottom:1px solid #d0d4dc;padding-bottom:4px}
nav a{color:#9cc3ff;margin-right:14px;text-decoration:none}
section{background:#fff;border:1px solid #e1e4ea;border-radius:6px;padding:4px 16px 14px;margin-top:16px}
table{border-collapse:collapse;width:100%;font-size:13px} th,td{text-align:left;padding:3px 8px;vertical-align:top}
tr:nth-child(even) td{background:#f3f5f8} th{border-bottom:1px solid #c8cdd6}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap} td{overflow-wrap:anywhere}
code,.mono{font-family:ui-monospace,monospace;font-size:12px}
.status{display:inline-block;padding:1px 10px;border-radius:10px;font-size:13px;margin-left:10px;background:#58606e}
.s-completed{background:#2ca02c}.s-failed,.s-lost{background:#d62728}.s-running{background:#1f77b4}
.s-terminated{background:#ff7f0e}
.critical{color:#d62728;font-weight:600}.ok{color:#2ca02c}.warning{color:#b8860b}.error{color:#d62728}
figure{margin:12px 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
.note{color:#58606e;font-size:13px}
table.kv th{width:28%;font-weight:600;border-bottom:none}
details{margin-top:10px} summary{cursor:pointer;font-weight:600;font-size:15px;margin:6px 0}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
"""


def _kv(rows: Iterable[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{_text(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{cells}</table>'


def _text(v: Any) -> str:
    if v is None or v == "":
        return "-"
    return escape(v if isinstance(v, str) else json.dumps(v, default=str))


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """An HTML table; cells are already escaped HTML."""
    head = "".join(
        f'<th class="num">{escape(h)}</th>' if i in numeric else f"<th>{escape(h)}</th>" for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _when(us: Any) -> str:
    text = iso(us if isinstance(us, int) else None)
    return escape(text.replace("T", " ").replace("+00:00", " UTC")) if text else "-"


def _num(v: float | None) -> str:
    return "nan" if v is None else f"{v:.6g}"


def _duration(a: int | None, b: int | None) -> str:
    if a is None or b is None:
        return "-"
    s = max(0, b - a) / 1e6
    return f"{s:.1f} s" if s < 120 else f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m {int(s % 60):02d}s"


def build(history: RunHistory, now_us: int | None = None) -> str:
    """The HTML page of a run."""
    v = history.view
    now_us = now_us if now_us is not None else time.time_ns() // 1000
    end = v.end or {}
    title = v.name or v.id
    sections = [
        ("details", "Run", _details(history)),
        ("counters", "Counters", _counters(end.get("counters") or {})),
        ("metrics", "Metrics", _metrics(history, resources=False)),
        ("ranks", "Ranks", _ranks(history, now_us)),
        ("events", "Events", _events(v.events)),
        ("alerts", "Alerts", _alerts(history)),
        ("files", "Files", _files(v.files)),
        ("resources", "Resources", _metrics(history, resources=True)),
    ]
    nav = "".join(f'<a href="#{key}">{escape(name)}</a>' for key, name, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{escape(name)}</h2>{html}</section>' for key, name, html in sections)
    status = escape(v.status)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{escape(title)} · simvue_hpc run</title><style>{STYLE}</style></head>'
        f'<body><header><div><h1>{escape(title)}<span class="status s-{status}">{status}</span></h1>'
        f"<nav>{nav}</nav></div></header><main>{body}"
        f'<p class="note">Written by simvue-hpc {escape(__version__)} at {_when(now_us)}'
        f" from {escape(str(v.run_dir))}.</p>"
        "</main></body></html>\n"
    )


def _details(history: RunHistory) -> str:
    v = history.view
    end = v.end or {}
    rows: list[tuple[str, Any]] = [
        ("name", v.name),
        ("id", v.id),
        ("folder", v.folder),
        ("status", v.status),
        ("description", v.description),
        ("tags", ", ".join(v.tags)),
        ("start", None),
        ("end", None),
        ("duration", _duration(v.created_us, v.ended_us)),
        ("ranks", str(len(v.ranks))),
        ("missing ranks", ", ".join(map(str, end.get("missing_ranks") or []))),
        ("lost ranks", ", ".join(map(str, end.get("lost_ranks") or []))),
    ]
    html = _kv(rows).replace("<th>start</th><td>-</td>", f"<th>start</th><td>{_when(v.created_us)}</td>")
    html = html.replace("<th>end</th><td>-</td>", f"<th>end</th><td>{_when(v.ended_us)}</td>")
    for title, mapping, is_open in (("Metadata", v.metadata, " open"), ("Job", v.job, ""), ("System", v.system, "")):
        if mapping:
            table = _kv((str(k), val) for k, val in mapping.items())
            html += f"<details{is_open}><summary>{title} ({len(mapping)})</summary>{table}</details>"
    return html


def _counters(counters: dict[str, Any]) -> str:
    if not counters:
        return '<p class="note">No counters: the run has not ended (they are written with its end).</p>'
    return _table(["counter", "value"], ([escape(str(k)), escape(str(val))] for k, val in counters.items()), (1,))


def _metrics(history: RunHistory, resources: bool) -> str:
    names = [n for n in history.series if n.startswith(RESOURCES) == resources]
    if not names:
        return '<p class="note">None recorded.</p>'
    todo = panels({n: history.series[n] for n in names})
    rows = [_panel_row(p) for p in todo[:MAX_ROWS]]
    html = _table(["metric", "drawn as", "points", "steps", "min", "max", "last", "late"], rows, (2, 4, 5, 6, 7))
    if len(todo) > MAX_ROWS:
        html += f'<p class="note">The first {MAX_ROWS} of {len(todo)} metrics.</p>'
    try:
        figures = []
        for panel in todo[:MAX_PLOTS]:
            fig = render(history, title="", only=[panel])
            data = base64.b64encode(png_bytes(fig)).decode("ascii")
            figures.append(f'<figure><img alt="{escape(panel.name)}" src="data:image/png;base64,{data}"></figure>')
    except MissingExtra as exc:
        return html + f'<p class="note">No plots: {escape(str(exc))}.</p>'
    if len(todo) > MAX_PLOTS:
        rest = ", ".join(p.name for p in todo[MAX_PLOTS : MAX_PLOTS + 50]) + (
            ", ..." if len(todo) > MAX_PLOTS + 50 else ""
        )
        figures.append(
            f'<p class="note">Not drawn here ({len(todo) - MAX_PLOTS}): {escape(rest)}; '
            "use <code>simvue-hpc plot</code>.</p>"
        )
    return html + "".join(figures)


def _panel_row(panel: Panel) -> list[str]:
    """A metric's row: its spread for a band or ranks, its own range for a plain line."""
    parts = list(panel.ranks.values()) or [p for p in (panel.main, panel.low, panel.high) if p is not None]
    rows = [metric_row(panel.name, s) for s in parts]
    lows = [r["min"] for r in rows if r["min"] is not None]
    highs = [r["max"] for r in rows if r["max"] is not None]
    main = metric_row(panel.name, panel.main) if panel.main is not None else None
    kinds = {
        "band": f"{panel.main_label}, min–max band",
        "ranks": f"per rank ({len(panel.ranks)})",
        "line": "as logged",
    }
    kind = kinds[panel.kind]
    first = min((r["first_step"] for r in rows if r["first_step"] is not None), default=None)
    last = max((r["last_step"] for r in rows if r["last_step"] is not None), default=None)
    return [
        escape(panel.name),
        kind,
        str(sum(r["points"] for r in rows)),
        f"{first}..{last}",
        _num(min(lows, default=None)),
        _num(max(highs, default=None)),
        _num(main["last"]) if main else "-",
        str(main["late"] or "") if main else "",
    ]


def _ranks(history: RunHistory, now_us: int) -> str:
    v = history.view
    lives = timeline.lives(history.rank_changes)
    end = v.end or {}
    for rank in end.get("missing_ranks") or []:
        if isinstance(rank, int) and all(life.rank != rank for life in lives):
            lives.append(timeline.Life(rank, "?", None, None, "missing"))
    lives.sort(key=lambda life: life.rank)
    if not lives:
        return '<p class="note">No rank joined.</p>'
    starts = [life.joined_us for life in lives if life.joined_us is not None]
    start = v.created_us or (min(starts) if starts else now_us)
    stop = v.ended_us or max([now_us, *(life.left_us or 0 for life in lives)])
    legend = "".join(f'<span style="background:{c}"></span>{s}' for s, c in timeline.COLOURS.items())
    html = f'<p class="legend">{legend}</p>' + timeline.svg(lives, start, stop)
    odd = [life for life in lives if life.state != "closed"] if len(lives) > 64 else lives
    if odd:
        rows = (
            [
                str(life.rank),
                escape(life.host),
                f'<span class="{_state_class(life.state)}">{escape(life.state)}</span>',
                _when(life.joined_us),
                _when(life.left_us),
            ]
            for life in odd
        )
        html += _table(["rank", "host", "state", "joined", "left"], rows, (0,))
    if len(odd) < len(lives):
        html += f'<p class="note">{len(lives) - len(odd)} more ranks closed normally.</p>'
    return html


def _state_class(state: str) -> str:
    return {"lost": "critical", "missing": "warning", "closed": "ok"}.get(state, "")


def _events(events: list[dict[str, Any]]) -> str:
    if not events:
        return '<p class="note">None.</p>'
    shown = events[-MAX_ROWS:]
    rows = (
        [
            _when(e.get("time_us")),
            escape(str(e.get("rank", "-") if e.get("rank") is not None else "-")),
            escape(str(e.get("host") or "?")),
            f'<span class="{escape(str(e.get("level") or ""))}">{escape(str(e.get("level") or "info"))}</span>',
            escape(str(e.get("message") or "")),
        ]
        for e in shown
    )
    note = f'<p class="note">The last {len(shown)} of {len(events)} events.</p>' if len(shown) < len(events) else ""
    return note + _table(["time", "rank", "host", "level", "message"], rows)


def _alerts(history: RunHistory) -> str:
    v = history.view
    if not v.alerts and not history.alert_changes:
        return '<p class="note">None defined.</p>'
    rows = []
    for a in v.alerts:
        state = str(v.alert_states.get(str(a.get("name")), {}).get("status", "ok"))
        rule = a.get("alert") or {}
        what = ", ".join(f"{k}={_text(val)}" for k, val in rule.items()) if isinstance(rule, dict) else _text(rule)
        rows.append(
            [
                escape(str(a.get("name"))),
                escape(str(a.get("source") or "-")),
                what,
                f'<span class="{_state_class_alert(state)}">{escape(state)}</span>',
            ]
        )
    html = _table(["alert", "source", "rule", "state"], rows)
    changes = history.alert_changes[-MAX_ROWS:]
    if changes:
        rows = [
            [
                _when(c.get("time_us")),
                escape(str(c.get("name"))),
                f'<span class="{_state_class_alert(str(c.get("status")))}">{escape(str(c.get("status")))}</span>',
                escape(str(c.get("message") or "")),
            ]
            for c in changes
        ]
        html += "<h3>State changes</h3>" + _table(["time", "alert", "state", "message"], rows)
    return html


def _state_class_alert(state: str) -> str:
    return "critical" if state == "critical" else "ok"


def _files(files: list[dict[str, Any]]) -> str:
    if not files:
        return '<p class="note">None saved.</p>'
    rows = (
        [
            escape(str(f.get("name") or "?")),
            escape(str(f.get("category") or "-")),
            escape(size(int(f.get("size") or 0))),
            f'<span class="mono">{escape(str(f.get("sha256") or ""))}</span>',
            escape(f"{f.get('rank', '-')}@{f.get('host') or '?'}"),
            escape(str(f.get("original_path") or "-")),
        ]
        for f in files
    )
    return _table(["name", "category", "size", "sha256", "saved by", "original path"], rows, (2,))


def write(history: RunHistory, path: Path) -> Path:
    """Write the page to path (UTF-8)."""
    path.write_text(build(history), encoding="utf-8")
    return path
