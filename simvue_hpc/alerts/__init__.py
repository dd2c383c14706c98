"""Alerts: :mod:`.definitions` builds and validates them (in the calling process), :mod:`.evaluator`
evaluates them on the values the aggregator stores."""

from .definitions import (
    AGGREGATIONS,
    NOTIFICATIONS,
    RANGE_RULES,
    SOURCES,
    STATES,
    THRESHOLD_RULES,
    event_alert,
    metric_alert,
    metric_range_alert,
    metric_threshold_alert,
    user_alert,
    validate_definition,
)
from .evaluator import AlertEvaluator, Transition

__all__ = [
    "AGGREGATIONS",
    "NOTIFICATIONS",
    "RANGE_RULES",
    "SOURCES",
    "STATES",
    "THRESHOLD_RULES",
    "AlertEvaluator",
    "Transition",
    "event_alert",
    "metric_alert",
    "metric_range_alert",
    "metric_threshold_alert",
    "user_alert",
    "validate_definition",
]
