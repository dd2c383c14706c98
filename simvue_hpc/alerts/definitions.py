"""Alert definitions in the Simvue server's format: the builders and the validation of received ones.

Definitions are validated in the process that makes them. ``frequency`` and ``window`` are minutes,
as in the seed API (floats allowed). The definition is recorded with the run (and registered with the
server by the uploader). The builders carry the names of the official client 2.6
(``Run.create_metric_threshold_alert``, ``create_metric_range_alert``, ``create_event_alert``,
``create_user_alert``).

:class:`AlertEvaluator` evaluates metric and event alerts on the *reduced* values the aggregator stores,
so alerts work offline too. It is pure: no I/O, no threads, no clock of its own; every time is wall-clock
microseconds since the epoch, given by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypedDict

import numpy as np

from ..errors import ConfigurationError
from ..names import check_metric_name

THRESHOLD_RULES = ("is above", "is below")
RANGE_RULES = ("is outside range", "is inside range")
AGGREGATIONS = ("average", "sum", "at least one", "all")
NOTIFICATIONS = ("none", "email")
SOURCES = ("metrics", "events", "user")
STATES = ("ok", "critical")


def _number(field: str, value: Any, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"{field} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigurationError(f"{field} must be positive, got {value!r}")
    return float(value) if isinstance(value, float) else value


def metric_alert(
    name: str,
    rule: str,
    metric: str,
    frequency: float,
    window: float,
    threshold: float | None = None,
    range_low: float | None = None,
    range_high: float | None = None,
    aggregation: str = "average",
    notification: str = "none",
    description: str | None = None,
    abort: bool = False,
) -> dict[str, Any]:
    """A metric alert definition; ValueError naming the field for anything invalid."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError("alert name must be a non-empty string")
    if rule not in THRESHOLD_RULES + RANGE_RULES:
        raise ConfigurationError(
            f"alert {name!r}: rule {rule!r} is not one of {', '.join(THRESHOLD_RULES + RANGE_RULES)}"
        )
    check_metric_name(metric)
    alert: dict[str, Any] = {
        "rule": rule,
        "metric": metric,
        "frequency": _number(f"alert {name!r}: frequency", frequency, positive=True),
        "window": _number(f"alert {name!r}: window", window, positive=True),
        "aggregation": aggregation,
    }
    if aggregation not in AGGREGATIONS:
        raise ConfigurationError(f"alert {name!r}: aggregation must be one of {', '.join(AGGREGATIONS)}")
    if rule in THRESHOLD_RULES:
        if threshold is None:
            raise ConfigurationError(f"alert {name!r}: rule {rule!r} needs a threshold")
        alert["threshold"] = _number(f"alert {name!r}: threshold", threshold)
    else:
        if range_low is None or range_high is None:
            raise ConfigurationError(f"alert {name!r}: rule {rule!r} needs range_low and range_high")
        low = _number(f"alert {name!r}: range_low", range_low)
        high = _number(f"alert {name!r}: range_high", range_high)
        if low >= high:
            raise ConfigurationError(f"alert {name!r}: range_low ({low}) must be below range_high ({high})")
        alert["range_low"], alert["range_high"] = low, high
    return _envelope(name, "metrics", alert, notification, description, abort)


def _envelope(
    name: str, source: str, alert: dict[str, Any] | None, notification: str, description: str | None, abort: bool
) -> dict[str, Any]:
    if notification not in NOTIFICATIONS:
        raise ConfigurationError(f"alert {name!r}: notification must be one of {', '.join(NOTIFICATIONS)}")
    if description is not None and not isinstance(description, str):
        raise ConfigurationError(f"alert {name!r}: description must be a string or None, got {description!r}")
    definition: dict[str, Any] = {
        "name": name,
        "description": description,
        "notification": notification,
        "source": source,
        "enabled": True,
        "abort": bool(abort),
    }
    if alert is not None:
        definition["alert"] = alert
    return definition


# ------------------------------------------------------------------------------------- more builders
def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"alert name must be a non-empty string, got {name!r}")
    return name


def _flag(name: str, field: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigurationError(f"alert {name!r}: {field} must be True or False, got {value!r}")
    return bool(value)


class MetricAlertOptions(TypedDict, total=False):
    """The keyword options of :func:`metric_threshold_alert` and :func:`metric_range_alert`, named as in
    the official client."""

    description: str | None
    window: float | None
    frequency: float
    aggregation: str
    notification: str
    trigger_abort: bool


def metric_threshold_alert(
    name: str,
    metric: str,
    threshold: float,
    rule: str,
    *,
    description: str | None = None,
    window: float | None = None,
    frequency: float = 1,
    aggregation: str = "average",
    notification: str = "none",
    trigger_abort: bool = False,
) -> dict[str, Any]:
    """A metric threshold alert, as ``Run.create_metric_threshold_alert`` of the official client 2.6.

    ``rule`` is ``"is above"`` or ``"is below"`` (strictly); ``frequency`` and ``window`` are minutes, and
    ``window`` defaults to ``frequency``. ValueError naming the field for anything invalid.
    """
    _check_name(name)
    if rule not in THRESHOLD_RULES:
        raise ConfigurationError(
            f"alert {name!r}: rule {rule!r} of a threshold alert is not one of {', '.join(THRESHOLD_RULES)}"
        )
    abort = _flag(name, "trigger_abort", trigger_abort)
    return metric_alert(
        name,
        rule,
        metric,
        frequency,
        frequency if window is None else window,
        threshold=threshold,
        aggregation=aggregation,
        notification=notification,
        description=description,
        abort=abort,
    )


def metric_range_alert(
    name: str,
    metric: str,
    range_low: float,
    range_high: float,
    rule: str,
    *,
    description: str | None = None,
    window: float | None = None,
    frequency: float = 1,
    aggregation: str = "average",
    notification: str = "none",
    trigger_abort: bool = False,
) -> dict[str, Any]:
    """A metric range alert, as ``Run.create_metric_range_alert`` of the official client 2.6.

    ``rule`` is ``"is inside range"`` (``range_low <= x <= range_high``) or ``"is outside range"``;
    ``range_low`` must be below ``range_high``; times in minutes, ``window`` defaults to ``frequency``.
    """
    _check_name(name)
    if rule not in RANGE_RULES:
        raise ConfigurationError(
            f"alert {name!r}: rule {rule!r} of a range alert is not one of {', '.join(RANGE_RULES)}"
        )
    abort = _flag(name, "trigger_abort", trigger_abort)
    return metric_alert(
        name,
        rule,
        metric,
        frequency,
        frequency if window is None else window,
        range_low=range_low,
        range_high=range_high,
        aggregation=aggregation,
        notification=notification,
        description=description,
        abort=abort,
    )


def _abort(name: str, abort: Any, trigger_abort: Any) -> bool:
    """``abort``, or the official client's name for it, ``trigger_abort``."""
    if trigger_abort is None:
        return _flag(name, "abort", abort)
    if _flag(name, "abort", abort):
        raise ConfigurationError(f"alert {name!r}: give abort or trigger_abort, not both")
    return _flag(name, "trigger_abort", trigger_abort)


def event_alert(
    name: str,
    pattern: str,
    frequency: float,
    notification: str = "none",
    description: str | None = None,
    abort: bool = False,
    *,
    trigger_abort: bool | None = None,
) -> dict[str, Any]:
    """An events alert (``Run.create_event_alert``): critical when an event whose message contains
    ``pattern`` arrived since its previous evaluation; evaluated every ``frequency`` minutes.
    ``trigger_abort`` is the official client's name for ``abort``."""
    _check_name(name)
    if not isinstance(pattern, str) or not pattern:
        raise ConfigurationError(f"alert {name!r}: pattern must be a non-empty string, got {pattern!r}")
    alert = {"pattern": pattern, "frequency": _number(f"alert {name!r}: frequency", frequency, positive=True)}
    return _envelope(name, "events", alert, notification, description, _abort(name, abort, trigger_abort))


def user_alert(
    name: str,
    notification: str = "none",
    description: str | None = None,
    abort: bool = False,
    *,
    trigger_abort: bool | None = None,
) -> dict[str, Any]:
    """A user alert (``Run.create_user_alert``): its state is set by the program, never evaluated.
    ``trigger_abort`` is the official client's name for ``abort``."""
    _check_name(name)
    return _envelope(name, "user", None, notification, description, _abort(name, abort, trigger_abort))


_TOP_KEYS = frozenset({"name", "description", "notification", "source", "enabled", "abort", "alert"})
_ALERT_KEYS = {
    "metrics": frozenset(
        {"rule", "metric", "frequency", "window", "aggregation", "threshold", "range_low", "range_high"}
    ),
    "events": frozenset({"pattern", "frequency"}),
}


def validate_definition(definition: Any) -> dict[str, Any]:
    """A definition received from elsewhere (another rank, the store), rebuilt by its builder.

    Returns the canonical definition; ConfigurationError for anything the builders would not make
    (unknown source or field, missing field, or any rule of the builders). A metric alert without
    ``window`` gets ``window = frequency``, as on the server.
    """
    if not isinstance(definition, Mapping):
        raise ConfigurationError(f"an alert definition must be a mapping, got {type(definition).__name__}")
    name = _check_name(definition.get("name"))
    unknown = sorted(map(str, set(definition) - _TOP_KEYS))
    if unknown:
        raise ConfigurationError(f"alert {name!r}: unknown field(s) {', '.join(unknown)}")
    source = definition.get("source")
    if source not in SOURCES:
        raise ConfigurationError(f"alert {name!r}: source {source!r} is not one of {', '.join(SOURCES)}")
    notification = definition.get("notification", "none")
    description = definition.get("description")
    abort = _flag(name, "abort", definition.get("abort", False))
    enabled = _flag(name, "enabled", definition.get("enabled", True))
    alert = definition.get("alert")
    if source == "user":
        if alert is not None:
            raise ConfigurationError(f"alert {name!r}: a user alert has no 'alert' field")
        built = user_alert(name, notification, description, abort)
    else:
        if not isinstance(alert, Mapping):
            raise ConfigurationError(f"alert {name!r}: a {source} alert needs an 'alert' mapping, got {alert!r}")
        unknown = sorted(map(str, set(alert) - _ALERT_KEYS[source]))
        if unknown:
            raise ConfigurationError(f"alert {name!r}: unknown field(s) of a {source} alert: {', '.join(unknown)}")
        spec: dict[str, Any] = {key: None for key in _ALERT_KEYS[source]} | dict(alert)
        if source == "events":
            built = event_alert(name, spec["pattern"], spec["frequency"], notification, description, abort)
        else:
            rule = spec["rule"]
            foreign: tuple[str, ...] = ()
            if rule in THRESHOLD_RULES:
                foreign = ("range_low", "range_high")
            elif rule in RANGE_RULES:
                foreign = ("threshold",)
            for key in foreign:
                if key in alert:
                    raise ConfigurationError(f"alert {name!r}: rule {rule!r} takes no {key}")
            built = metric_alert(
                name,
                rule,
                spec["metric"],
                spec["frequency"],
                spec["frequency"] if "window" not in alert else spec["window"],
                threshold=spec["threshold"],
                range_low=spec["range_low"],
                range_high=spec["range_high"],
                aggregation="average" if "aggregation" not in alert else spec["aggregation"],
                notification=notification,
                description=description,
                abort=abort,
            )
    built["enabled"] = enabled
    return built
