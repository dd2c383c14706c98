"""Server-side evaluation of metric and event alerts, as official servers do.

Evaluation happens when data arrives (`frequency` is not simulated). A metric alert aggregates the values
of its metric whose `time` lies within `window * settings.alert_window_unit` seconds of the newest value;
an event alert goes critical when a message contains its pattern. A critical alert with `abort: true`
raises the run's abort flag.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .common import ServerState


def _satisfies(definition: dict[str, Any], value: float) -> bool:
    rule = definition["rule"]
    if rule == "is above":
        return value > definition["threshold"]
    if rule == "is below":
        return value < definition["threshold"]
    inside = definition["range_low"] < value < definition["range_high"]
    return inside if rule == "is inside range" else not inside


def metric_alert_fires(definition: dict[str, Any], values: list[float]) -> bool:
    if not values:
        return False
    aggregation = definition.get("aggregation", "average")
    if aggregation == "at least one":
        return any(_satisfies(definition, v) for v in values)
    if aggregation == "all":
        return all(_satisfies(definition, v) for v in values)
    total = float(sum(values))
    return _satisfies(definition, total if aggregation == "sum" else total / len(values))


def _attached(state: ServerState, run: dict[str, Any], source: str) -> Iterable[dict[str, Any]]:
    for alert_id in run.get("alerts") or []:
        alert = state.store.get("alerts", alert_id)
        if alert and alert.get("enabled", True) and alert.get("source") == source:
            yield alert


def _record(state: ServerState, run: dict[str, Any], alert: dict[str, Any], status: str) -> None:
    state.store.set_alert_state(alert["id"], run["id"], status)
    if status == "critical" and alert.get("abort"):

        def _abort(doc: dict[str, Any]) -> None:
            doc["abort"] = True
            doc["abort_reason"] = f"alert '{alert['name']}' is critical"

        state.store.update("runs", run["id"], _abort)


def on_metrics(state: ServerState, run: dict[str, Any], names: set[str]) -> None:
    for alert in _attached(state, run, "metrics"):
        definition = alert["alert"]
        if definition["metric"] not in names:
            continue
        points = state.store.metrics(run["id"], [definition["metric"]])
        newest = max(p["time"] for p in points)
        horizon = newest - definition["window"] * state.settings.alert_window_unit
        values = [float(p["value"]) for p in points if p["time"] >= horizon]
        _record(state, run, alert, "critical" if metric_alert_fires(definition, values) else "ok")


def on_events(state: ServerState, run: dict[str, Any], messages: list[str]) -> None:
    for alert in _attached(state, run, "events"):
        pattern = alert["alert"]["pattern"]
        if any(pattern in message for message in messages):
            _record(state, run, alert, "critical")
        elif state.store.alert_state(alert["id"], run["id"]) is None:
            _record(state, run, alert, "ok")
