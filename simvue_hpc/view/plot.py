"""Plots of a run's metrics: the mean with the spread across ranks, alerts and events marked.

One panel per logged metric. A reduced metric is drawn as its first operation (the mean by
default) with the band from ``.min`` to ``.max`` shaded; a ``per_rank`` metric as one line per
rank, or, past :data:`RANK_LINES` ranks, as bands of quantiles across the ranks. Points that came
late are marked; alert changes and events are vertical lines. Every series is cut to the pixel
width first (:mod:`.downsample`), so a million points draw as fast as a thousand.

matplotlib is optional (``pip install 'simvue_hpc[plot]'``); the Agg renderer is used through
``matplotlib.figure.Figure`` directly, never pyplot, so no display and no global state.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..errors import ConfigurationError, MissingExtra
from . import downsample
from .history import RunHistory, Series, base_name

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

RANK_LINES = 16  # per_rank metrics with more ranks are drawn as quantile bands
MAX_PANELS = 50
MAX_EVENT_MARKS = 1000
LOG_RATIO = 100.0  # a panel whose positive values span this ratio gets a log y axis
FORMATS = (".png", ".svg", ".pdf")
WIDTH_IN, PANEL_IN, DPI = 10.0, 2.8, 100
BAND_COLOUR, LINE_COLOUR = "#1f77b4", "#1f77b4"
_RANK_SUFFIX = "/rank_"


@dataclass
class Panel:
    """What one panel draws: a line with an optional band, or the lines of several ranks."""

    name: str
    main: Series | None = None
    low: Series | None = None
    high: Series | None = None
    ranks: dict[int, Series] = field(default_factory=dict)
    main_label: str = "mean"  # what the main line is: the mean, unless the reduction chose another first

    @property
    def kind(self) -> str:
        if self.ranks:
            return "ranks"
        return "band" if self.low is not None or self.high is not None else "line"


def panels(series: dict[str, Series]) -> list[Panel]:
    """Group stored series into panels by the metric they were logged as, in order of appearance."""
    groups: dict[str, list[str]] = {}
    for name in series:
        groups.setdefault(base_name(name), []).append(name)
    out: list[Panel] = []
    for base, names in groups.items():
        ranks = {int(n.rpartition(_RANK_SUFFIX)[2]): series[n] for n in names if _is_rank_series(n)}
        if ranks:
            out.append(Panel(base, ranks=dict(sorted(ranks.items()))))
            names = [n for n in names if not _is_rank_series(n)]
        if base in series:
            # min and max as companions and no mean among them: the main series is the mean
            low, high = series.get(f"{base}.min"), series.get(f"{base}.max")
            is_mean = low is not None and high is not None and f"{base}.mean" not in series
            out.append(Panel(base, series[base], low, high, main_label="mean" if is_mean else "value"))
            names = [n for n in names if n not in (base, f"{base}.min", f"{base}.max")]
        out += [Panel(n, series[n]) for n in names]
    return out


def _is_rank_series(name: str) -> bool:
    _head, sep, tail = name.rpartition(_RANK_SUFFIX)
    return bool(sep) and tail.isdigit()


def _matplotlib_figure() -> type[Figure]:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingExtra("plot", "matplotlib", "plotting") from exc
    return Figure


@dataclass(frozen=True)
class Axis:
    """The x axis: ``step``, or ``time`` in seconds since the run started; optional bounds on it."""

    kind: str = "step"
    since: float | None = None
    until: float | None = None
    origin_us: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("step", "time"):
            raise ConfigurationError(f"x must be 'step' or 'time', got {self.kind!r}")

    def of(self, s: Series) -> npt.NDArray[np.float64]:
        if self.kind == "step":
            return s.step.astype(np.float64)
        return (s.time_us - self.origin_us) / 1e6

    def keep(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        sel = np.ones(len(x), dtype=bool)
        if self.since is not None:
            sel &= x >= self.since
        if self.until is not None:
            sel &= x <= self.until
        return sel

    @property
    def label(self) -> str:
        return "step" if self.kind == "step" else "time since the run started (s)"


def render(
    history: RunHistory, axis: Axis | None = None, title: str | None = None, only: Sequence[Panel] | None = None
) -> Figure:
    """A figure with one panel per metric of history's series (see :func:`panels`), or of only those."""
    figure_cls = _matplotlib_figure()
    view = history.view
    axis = axis or Axis(origin_us=view.created_us or 0)
    todo = panels(history.series) if only is None else list(only)
    if not todo:
        raise ConfigurationError("no metric to plot: none of the asked names is in the run")
    if len(todo) > MAX_PANELS:
        raise ConfigurationError(f"{len(todo)} metrics match; plot at most {MAX_PANELS} at once")
    height = (0.6 if title != "" else 0.2) + PANEL_IN * len(todo)
    fig = figure_cls(figsize=(WIDTH_IN, height), dpi=DPI, layout="constrained")
    if title != "":  # None: the run's name and status; "": no title (the report has its own)
        fig.suptitle(_literal(title or f"{view.name or view.id}  [{view.status}]"), fontsize=11)
    axes = fig.subplots(len(todo), 1, squeeze=False)[:, 0]
    buckets = int(WIDTH_IN * DPI)
    marks = _marks(history)
    for ax, panel in zip(axes, todo, strict=True):
        _draw(ax, panel, axis, buckets)
        if _spans_decades(ax):
            ax.set_yscale("log")
        _draw_marks(ax, panel, axis, marks)
        ax.set_title(_literal(panel.name), loc="left", fontsize=10)
        ax.set_xlabel(axis.label, fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    return fig


def _literal(text: str) -> str:
    """Text that matplotlib shows as logged: a pair of ``$`` would otherwise typeset mathematics."""
    return text.replace("$", r"\$")


def _spans_decades(ax: Axes) -> bool:
    """Whether the data drawn so far is all positive and spans LOG_RATIO or more (a residual, an error)."""
    low, high = ax.dataLim.y0, ax.dataLim.y1
    return bool(np.isfinite([low, high]).all()) and low > 0 and high >= LOG_RATIO * low


def _draw(ax: Axes, panel: Panel, axis: Axis, buckets: int) -> None:
    if panel.kind == "ranks":
        _draw_ranks(ax, panel, axis, buckets)
        return
    main = panel.main
    if main is None:
        return
    x_all = axis.of(main)
    on_time = axis.keep(x_all) & ~main.late  # late points are marked, not joined into the line
    if panel.kind == "band":
        low, high = panel.low or main, panel.high or main
        for edge in (low, high):
            if len(edge) != len(main):  # companions are written together; never seen otherwise
                raise ConfigurationError(f"{panel.name}: the min/max series do not match the mean's points")
        bx, lo, hi = downsample.envelope(x_all[on_time], low.value[on_time], high.value[on_time], buckets)
        ax.fill_between(bx, lo, hi, color=BAND_COLOUR, alpha=0.25, linewidth=0, label="min–max across ranks")
    x, y = downsample.minmax(x_all[on_time], main.value[on_time], buckets)
    label = panel.main_label if panel.kind == "band" else None
    ax.plot(x, y, color=LINE_COLOUR, linewidth=1.2, label=label)
    late = axis.keep(x_all) & main.late
    if late.any():
        ax.plot(x_all[late], main.value[late], "x", color="#ff7f0e", markersize=5, label=f"late ({int(late.sum())})")


def _draw_ranks(ax: Axes, panel: Panel, axis: Axis, buckets: int) -> None:
    if len(panel.ranks) <= RANK_LINES:
        for rank, s in panel.ranks.items():
            x_all = axis.of(s)
            sel = axis.keep(x_all)
            x, y = downsample.minmax(x_all[sel], s.value[sel], buckets)
            ax.plot(x, y, linewidth=1.0, label=f"rank {rank}")
        return
    xs = np.concatenate([axis.of(s) for s in panel.ranks.values()])
    ys = np.concatenate([s.value for s in panel.ranks.values()])
    sel = axis.keep(xs)
    bx, (q0, q10, q50, q90, q100) = downsample.quantiles(xs[sel], ys[sel], buckets, (0, 0.1, 0.5, 0.9, 1))
    n = len(panel.ranks)
    ax.fill_between(bx, q0, q100, color=BAND_COLOUR, alpha=0.15, linewidth=0, label=f"min–max of {n} ranks")
    ax.fill_between(bx, q10, q90, color=BAND_COLOUR, alpha=0.3, linewidth=0, label="10–90th percentile")
    ax.plot(bx, q50, color=LINE_COLOUR, linewidth=1.2, label="median")


@dataclass
class _Marks:
    """Event and alert times (µs since the epoch), placed on each panel's own x axis when drawn."""

    events: list[int]
    alerts: dict[str, tuple[str | None, list[int], list[int]]]  # name -> (its metric, fired, cleared)


def _marks(history: RunHistory) -> _Marks:
    def times(records: Sequence[dict[str, Any]]) -> list[int]:
        return [t for r in records if isinstance(t := r.get("time_us"), int)]

    metric_of = {str(a.get("name")): (a.get("alert") or {}).get("metric") for a in history.view.alerts}
    alerts = {}
    for name in dict.fromkeys(str(c.get("name")) for c in history.alert_changes):
        changes = [c for c in history.alert_changes if str(c.get("name")) == name]
        fired = times([c for c in changes if c.get("status") == "critical"])
        cleared = times([c for c in changes if c.get("status") != "critical"])
        metric = metric_of.get(name)
        alerts[name] = (metric if isinstance(metric, str) else None, fired, cleared)
    return _Marks(events=times(history.view.events), alerts=alerts)


def _placer(panel: Panel, axis: Axis) -> Callable[[list[int]], list[float]]:
    """Times to x: seconds, or the step this panel's metric was at then (its own steps' times)."""
    parts = list(panel.ranks.values()) or ([panel.main] if panel.main is not None else [])
    all_t = np.concatenate([s.time_us for s in parts]) if parts else np.zeros(0, dtype=np.int64)
    all_s = np.concatenate([s.step for s in parts]) if parts else np.zeros(0, dtype=np.int64)
    order = np.argsort(all_t, kind="stable")

    def place(times_us: list[int]) -> list[float]:
        t = np.array(times_us, dtype=np.int64)
        if axis.kind == "time":
            x = (t - axis.origin_us) / 1e6
        elif len(all_t):
            x = np.interp(t, all_t[order], all_s[order])
        else:
            return []
        return [float(v) for v in x[axis.keep(x)]]

    return place


def _draw_marks(ax: Axes, panel: Panel, axis: Axis, marks: _Marks) -> None:
    """Events on every panel; an alert on its metric's panel, or on all if it watches no metric."""
    across = ax.get_xaxis_transform()
    place = _placer(panel, axis)
    if events := place(marks.events):
        label = f"events ({len(events)})"
        if len(events) > MAX_EVENT_MARKS:  # a line per event stops telling anything long before this
            label = f"events (the first {MAX_EVENT_MARKS} of {len(events)})"
            events = events[:MAX_EVENT_MARKS]
        ax.vlines(events, 0, 1, transform=across, colors="#7f7f7f", lw=0.8, linestyles="dotted", label=label)
    for name, (metric, fired_us, cleared_us) in marks.alerts.items():
        if metric is not None and base_name(metric) != panel.name:
            continue
        if fired := place(fired_us):
            ax.vlines(fired, 0, 1, transform=across, colors="#d62728", lw=1.2, label=_literal(f"alert {name} fired"))
        if cleared := place(cleared_us):
            label = _literal(f"alert {name} cleared")
            ax.vlines(cleared, 0, 1, transform=across, colors="#2ca02c", lw=1.0, linestyles="dashed", label=label)


def save(fig: Figure, path: Path) -> Path:
    """Write the figure as PNG, SVG or PDF, chosen by path's suffix."""
    if path.suffix.lower() not in FORMATS:
        raise ConfigurationError(f"-o must end in one of {', '.join(FORMATS)}, got {path.name!r}")
    fig.savefig(path, dpi=DPI)
    return path


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (for pages that embed it)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
