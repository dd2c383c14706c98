"""The ranks of a run on a time line, as inline SVG: when each joined, and how it left.

Each rank is a bar from its join to its close (green), its loss (red, with a cross) or, while
it is still in the run, to now (blue); a rank that never came (missing) is a grey tick. Drawn by
hand so that the report needs nothing but the standard library for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

WIDTH, LEFT, RIGHT, TOP, AXIS = 960, 70, 20, 10, 34
MAX_HEIGHT = 640
COLOURS = {"closed": "#2ca02c", "lost": "#d62728", "joined": "#1f77b4", "missing": "#7f7f7f"}


@dataclass
class Life:
    """One rank's time in the run (microseconds since the epoch; None where unknown)."""

    rank: int
    host: str
    joined_us: int | None
    left_us: int | None
    state: str


def lives(rank_changes: list[dict[str, Any]]) -> list[Life]:
    """Each rank's life from the RANK records in log order: the first join, the last state."""
    out: dict[int, Life] = {}
    for p in rank_changes:
        rank, state, t = p.get("rank"), str(p.get("state") or "joined"), p.get("time_us")
        if not isinstance(rank, int):
            continue
        t = t if isinstance(t, int) else None
        life = out.setdefault(rank, Life(rank, str(p.get("host") or "?"), None, None, state))
        if state == "joined":
            life.joined_us = life.joined_us if life.joined_us is not None else t
            life.left_us = None
        else:
            life.left_us = t
        life.state = state
    return [out[r] for r in sorted(out)]


def svg(ranks: list[Life], start_us: int, end_us: int) -> str:
    """The timeline of ranks between start_us and end_us (the run's start and its end or now)."""
    n = max(1, len(ranks))
    row = max(0.2, min(16.0, MAX_HEIGHT / n))
    height = TOP + row * n + AXIS
    span = max(1, end_us - start_us)
    plot_w = WIDTH - LEFT - RIGHT

    def x(t: int | None, default: int) -> float:
        t = default if t is None else min(max(t, start_us), end_us)
        return LEFT + (t - start_us) / span * plot_w

    parts = [
        f'<svg class="timeline" width="{WIDTH}" height="{height:.0f}" '
        f'viewBox="0 0 {WIDTH} {height:.1f}" role="img" aria-label="ranks over time">'
    ]
    label_every = max(1, round(12 / row))
    # ranks that ended badly are drawn last and at least 2 px high, so that among thousands of
    # sub-pixel rows the one that died still shows
    order = sorted(range(len(ranks)), key=lambda i: ranks[i].state in ("lost", "missing"))
    for i in order:
        life = ranks[i]
        y = TOP + i * row
        colour = COLOURS.get(life.state, COLOURS["joined"])
        x0, x1 = x(life.joined_us, start_us), x(life.left_us, end_us)
        tip = f"rank {life.rank} on {life.host}: {life.state}"
        h = max(row * 0.8, 2.0 if life.state in ("lost", "missing") else 0.2)
        if life.state == "missing":
            x0, x1 = LEFT, LEFT + 3
        w = max(x1 - x0, 1.0)
        parts.append(f'<rect x="{x0:.1f}" y="{y:.2f}" width="{w:.1f}" height="{h:.2f}" fill="{colour}">')
        parts.append(f"<title>{escape(tip)}</title></rect>")
        if life.state == "lost" and row >= 4:
            c, r = y + row * 0.4, min(row * 0.4, 6)
            parts.append(
                f'<path d="M{x1 - r:.1f},{c - r:.1f}L{x1 + r:.1f},{c + r:.1f}M{x1 - r:.1f},{c + r:.1f}'
                f'L{x1 + r:.1f},{c - r:.1f}" stroke="#000" stroke-width="1.5"/>'
            )
    for i in range(0, len(ranks), label_every):
        y = TOP + i * row
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + row * 0.4 + 4:.1f}" text-anchor="end" font-size="11">{ranks[i].rank}</text>'
        )
    base = TOP + row * n + 4
    parts.append(f'<line x1="{LEFT}" y1="{base:.1f}" x2="{WIDTH - RIGHT}" y2="{base:.1f}" stroke="#444"/>')
    for k in range(6):
        tx = LEFT + k * plot_w / 5
        seconds = span * k / 5 / 1e6
        parts.append(f'<line x1="{tx:.1f}" y1="{base:.1f}" x2="{tx:.1f}" y2="{base + 4:.1f}" stroke="#444"/>')
        parts.append(
            f'<text x="{tx:.1f}" y="{base + 16:.1f}" text-anchor="middle" font-size="11">{seconds:.3g} s</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
