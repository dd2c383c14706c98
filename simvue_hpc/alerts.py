"""Alert definitions: validated in the process that makes them, in the Simvue server's format.

``frequency`` and ``window`` are minutes, as in the seed API. The definition is recorded with the
run (and registered with the server by the uploader).
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigurationError
from .worker import check_metric_name

THRESHOLD_RULES = ("is above", "is below")
RANGE_RULES = ("is outside range", "is inside range")
AGGREGATIONS = ("average", "sum", "at least one", "all")
NOTIFICATIONS = ("none", "email")


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
