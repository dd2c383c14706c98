"""Evaluation of metric and event alerts on the *reduced* values the aggregator stores, so alerts work
offline too.

Pure: no I/O, no threads, no clock of its own; every time is wall-clock microseconds since the epoch,
given by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from .definitions import STATES, THRESHOLD_RULES, validate_definition

_US_PER_MINUTE = 60_000_000
_MAX_SPAN_US = 2**61  # longer windows and periods are clamped (≈ 73,000 years)
_NEVER = -(2**61)
_COMPACT_SLACK = 1024  # points a series may hold beyond twice its last compacted size


@dataclass(frozen=True, slots=True)
class Transition:
    """An alert whose state changed: ``abort`` is the alert's abort flag when it went critical."""

    name: str
    status: str  # "ok" | "critical"
    time_us: int
    abort: bool
    message: str


def _span_us(minutes: float) -> int:
    return max(1, min(_MAX_SPAN_US, round(minutes * _US_PER_MINUTE)))


def _time(field: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigurationError(f"{field} must be an integer (microseconds since the epoch), got {value!r}")
    return int(value)


def _fmt(x: float) -> str:
    return f"{x:.6g}"


class _Series:
    """The kept points of one watched metric: chunks appended per batch, concatenated lazily."""

    __slots__ = ("base", "chunks", "newest", "size", "window_us")

    def __init__(self, window_us: int) -> None:
        self.window_us = window_us  # the largest window of the alerts on this metric
        self.newest = _NEVER  # the newest point time seen
        self.chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self.size = 0
        self.base = 0  # size after the last compaction

    def horizon(self, now_us: int) -> int:
        """Points at or before this time can be in no window of a later evaluation: those one window
        before the latest evaluation, and those two windows before the newest point (points stamped up to
        one window ahead of the evaluator's clock are still counted exactly)."""
        return max(now_us - self.window_us, self.newest - 2 * self.window_us)

    def add(self, t: np.ndarray, v: np.ndarray, horizon: int) -> None:
        self.chunks.append((t, v))
        self.size += len(t)
        if self.size > 2 * self.base + _COMPACT_SLACK:
            self.compact(horizon)

    def compact(self, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """Keep only the points newer than ``horizon``; return them as (time, value)."""
        if len(self.chunks) == 1:
            t, v = self.chunks[0]
        elif self.chunks:
            t = np.concatenate([c[0] for c in self.chunks])
            v = np.concatenate([c[1] for c in self.chunks])
        else:
            t, v = np.empty(0, np.int64), np.empty(0, np.float64)
        keep = t > horizon
        if not keep.all():
            t, v = t[keep], v[keep]
        self.chunks = [(t, v)] if len(t) else []
        self.size = self.base = len(t)
        return t, v


class _Alert:
    """One added alert: its definition, parsed, and its evaluation state."""

    def __init__(self, definition: dict[str, Any], now_us: int | None) -> None:
        self.definition = definition
        self.name: str = definition["name"]
        self.source: str = definition["source"]
        self.abort: bool = definition["abort"]
        self.enabled: bool = definition["enabled"]
        self.state = "ok"
        spec = definition.get("alert", {})
        self.frequency_us = _span_us(spec["frequency"]) if "frequency" in spec else 0
        self.window_us = _span_us(spec["window"]) if "window" in spec else 0
        self.window_min: float = spec.get("window", 0)
        self.rule: str = spec.get("rule", "")
        self.metric: str = spec.get("metric", "")
        self.aggregation: str = spec.get("aggregation", "")
        self.threshold: float = spec.get("threshold", 0.0)
        self.low: float = spec.get("range_low", 0.0)
        self.high: float = spec.get("range_high", 0.0)
        self.pattern: str = spec.get("pattern", "")
        # the next evaluation; None: due one frequency after the next evaluate() (added without a time)
        self.due_us: int | None = None if now_us is None else now_us + self.frequency_us
        self.matched = 0  # events that matched since the previous evaluation
        self.last_match = ""

    # ---------------------------------------------------------------------------- metric rule
    def test(self, x: np.ndarray) -> np.ndarray:
        """The rule applied to each value of ``x`` (NaN satisfies no rule)."""
        with np.errstate(invalid="ignore"):
            if self.rule == "is above":
                return np.asarray(x > self.threshold)
            if self.rule == "is below":
                return np.asarray(x < self.threshold)
            inside = (x >= self.low) & (x <= self.high)
            if self.rule == "is inside range":
                return np.asarray(inside)
            return np.asarray((x < self.low) | (x > self.high))

    def condition(self) -> str:
        if self.rule in THRESHOLD_RULES:
            return f"{self.rule[3:]} {_fmt(self.threshold)}"
        return f"{self.rule[3:-6]} [{_fmt(self.low)}, {_fmt(self.high)}]"

    def judge(self, x: np.ndarray) -> tuple[bool, str]:
        """Whether the values of one window satisfy the alert, and why, in words."""
        scope = f"{self.metric} over the last {_fmt(self.window_min)} min"
        cond = self.condition()
        if self.aggregation in ("average", "sum"):
            with np.errstate(all="ignore"):
                agg = float(np.mean(x) if self.aggregation == "average" else np.sum(x))
            ok = bool(self.test(np.array([agg]))[0])
            return ok, f"{self.aggregation} of {scope} is {_fmt(agg)}, {cond if ok else 'not ' + cond}"
        hits = self.test(x)
        k, n = int(np.count_nonzero(hits)), len(x)
        ok = k > 0 if self.aggregation == "at least one" else k == n
        return ok, f"{k} of {n} point{'s' if n != 1 else ''} of {scope} {'is' if k == 1 else 'are'} {cond}"


class AlertEvaluator:
    """Evaluates metric and event alerts on the reduced values the aggregator stores.

    Pure: no I/O, no threads, no clock; every time is wall-clock microseconds since the epoch, given by
    the caller. Each alert starts ``"ok"``; a :class:`Transition` is returned only when its state changes.

    Metric points are kept only for watched metrics, and only those that can still fall in a window: newer
    than the largest window of the alerts on the metric before the latest ``evaluate`` time, and newer than
    two such windows before the metric's newest point. Memory stays bounded (about twice what two windows
    hold, as compaction is lazy) whether or not ``evaluate`` is called. The result is exact for points
    stamped up to one window ahead of the evaluator's clock (ranks' clocks ahead of the aggregator's);
    points further ahead may push older ones out early.
    """

    def __init__(self) -> None:
        self._alerts: dict[str, _Alert] = {}
        self._series: dict[str, _Series] = {}
        self._now_us = _NEVER  # the latest evaluate() time

    # ------------------------------------------------------------------------------ definitions
    def add(self, definition: Mapping[str, Any], now_us: int | None = None) -> bool:
        """Add an alert (a definition as the builders make it; validated again here).

        Its first evaluation is due one ``frequency`` after ``now_us``; without ``now_us``, one frequency
        after the next :meth:`evaluate`. Adding an identical definition again changes nothing (returns
        False; True when the alert is new); a different one with the same name is a ConfigurationError:
        alert names are unique within a run.
        """
        canonical = validate_definition(definition)
        when = None if now_us is None else _time("now_us", now_us)
        name = canonical["name"]
        existing = self._alerts.get(name)
        if existing is not None:
            if existing.definition != canonical:
                raise ConfigurationError(
                    f"alert {name!r} is already defined differently in this run (alert names are unique)"
                )
            return False
        alert = _Alert(canonical, when)
        self._alerts[name] = alert
        if alert.source == "metrics":
            series = self._series.get(alert.metric)
            if series is None:
                self._series[alert.metric] = _Series(alert.window_us)
            else:
                series.window_us = max(series.window_us, alert.window_us)
        return True

    # ------------------------------------------------------------------------------ observations
    def observe_metrics(self, names: list[str], name_id: np.ndarray, time_us: np.ndarray, value: np.ndarray) -> None:
        """Take a batch of stored points: point ``i`` is metric ``names[name_id[i]]`` at ``time_us[i]``."""
        if not self._series:
            return
        watched = [(i, self._series[n]) for i, n in enumerate(names) if n in self._series]
        if not watched:
            return
        name_id = np.asarray(name_id)
        time_us = np.asarray(time_us, dtype=np.int64)
        value = np.asarray(value, dtype=np.float64)
        if not (name_id.shape == time_us.shape == value.shape) or name_id.ndim != 1:
            raise ConfigurationError(
                f"observe_metrics: name_id, time_us and value must be 1-d columns of one length, got shapes "
                f"{name_id.shape}, {time_us.shape}, {value.shape}"
            )
        whole = len(names) == 1  # the batch is all one (watched) metric: no selection needed
        for i, series in watched:
            if whole:
                t, v = time_us, value
            else:
                sel = name_id == i
                t, v = time_us[sel], value[sel]  # copies
            if not len(t):
                continue
            series.newest = max(series.newest, int(t.max()))
            horizon = series.horizon(self._now_us)
            keep = t > horizon
            if not keep.all():
                t, v = t[keep], v[keep]  # copies
            elif whole:
                t, v = t.copy(), v.copy()  # never keep the caller's arrays
            if len(t):
                series.add(t, v, horizon)

    def observe_event(self, message: str, time_us: int) -> None:
        """Take an event; the event alerts whose pattern it contains count it at their next evaluation."""
        _time("time_us", time_us)
        for alert in self._alerts.values():
            if alert.source == "events" and alert.enabled and alert.pattern in message:
                alert.matched += 1
                alert.last_match = message

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self, now_us: int) -> list[Transition]:
        """Evaluate every metric and event alert whose ``frequency`` has elapsed since its previous
        evaluation; return the transitions (state changes), in the order the alerts were added.

        A metric alert aggregates its metric's points with time in ``(now - window, now]``; with no point
        there its state does not change. An event alert is critical when an event matched since its
        previous evaluation, ok otherwise.
        """
        now = _time("now_us", now_us)
        self._now_us = max(self._now_us, now)
        windows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        out: list[Transition] = []
        for alert in self._alerts.values():
            if alert.source == "user" or not alert.enabled:
                continue
            if alert.due_us is None:
                alert.due_us = now + alert.frequency_us
                continue
            if now < alert.due_us:
                continue
            alert.due_us = now + alert.frequency_us
            if alert.source == "events":
                critical = alert.matched > 0
                if critical:
                    text = alert.last_match if len(alert.last_match) <= 120 else alert.last_match[:117] + "..."
                    why = f"an event matched {alert.pattern!r}: {text!r}"
                else:
                    why = f"no event matched {alert.pattern!r} since the previous check"
                alert.matched, alert.last_match = 0, ""
            else:
                if alert.metric not in windows:
                    series = self._series[alert.metric]
                    windows[alert.metric] = series.compact(series.horizon(self._now_us))
                t, v = windows[alert.metric]
                x = v[(t > now - alert.window_us) & (t <= now)]
                if not len(x):
                    continue
                critical, why = alert.judge(x)
            transition = self._set(alert, "critical" if critical else "ok", now, why)
            if transition is not None:
                out.append(transition)
        return out

    def set_user_state(self, name: str, state: str, now_us: int) -> list[Transition]:
        """Set the state of a user alert (``"ok"`` or ``"critical"``); a transition if it changed."""
        now = _time("now_us", now_us)
        alert = self._alerts.get(name)
        if alert is None:
            raise ConfigurationError(f"no alert named {name!r} in this run")
        if alert.source != "user":
            raise ConfigurationError(f"alert {name!r} is a {alert.source} alert: only user alerts are set by hand")
        if state not in STATES:
            raise ConfigurationError(f"alert {name!r}: state must be one of {', '.join(STATES)}, got {state!r}")
        transition = self._set(alert, state, now, "set by the user")
        return [] if transition is None else [transition]

    @staticmethod
    def _set(alert: _Alert, state: str, now: int, why: str) -> Transition | None:
        if state == alert.state:
            return None
        alert.state = state
        critical = state == "critical"
        head = f"alert {alert.name!r} is critical" if critical else f"alert {alert.name!r} is ok again"
        return Transition(alert.name, state, now, alert.abort and critical, f"{head}: {why}")
