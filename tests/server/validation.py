"""Request-body validation producing FastAPI-style 422 details.

The rules follow docs/server-api.md (the regexes are those of the official client
`simvue.models`). Every `validate_*` function returns a normalised copy of the body or raises
`ValidationFailed` with all problems found.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

RUN_NAME_PATTERN = r"^[a-zA-Z0-9\-\_\s\/\.:]+$"
FOLDER_PATTERN = r"^/.*"
METRIC_NAME_PATTERN = r"^[a-zA-Z0-9\-\_\s\/\.:=><+\(\)%]+$"
KEY_PATTERN = r"^[\w\-\s\.]+$"
CHECKSUM_PATTERN = r"^[0-9a-fA-F]{64}$"
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"

RUN_STATUSES = ("created", "running", "completed", "failed", "terminated", "lost")
NOTIFICATION_STATES = ("none", "all", "error", "lost")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
CATEGORIES = ("code", "input", "output")
ALERT_SOURCES = ("metrics", "events", "user")
THRESHOLD_RULES = ("is above", "is below")
RANGE_RULES = ("is inside range", "is outside range")
AGGREGATIONS = ("average", "sum", "at least one", "all")
ALERT_NOTIFICATIONS = ("none", "email")
ALERT_STATES = ("ok", "critical")

_TIMESTAMP_SHAPE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{1,6}$")

Loc = tuple[str | int, ...]
_MISSING: Any = object()


class ValidationFailed(Exception):
    """Carries FastAPI-style error items: {"type", "loc", "msg", "input"}."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self.errors = errors


class Checker:
    """Collects errors while checking one request; `done()` raises if any were found."""

    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []

    def fail(self, loc: Loc, msg: str, type_: str, value: Any = None) -> Literal[False]:
        """Record an error; False, for the checks that return whether the value passed."""
        self.errors.append({"type": type_, "loc": list(loc), "msg": msg, "input": value})
        return False

    def done(self) -> None:
        if self.errors:
            raise ValidationFailed(self.errors)

    def mapping(self, value: Any, loc: Loc) -> dict[str, Any] | None:
        if isinstance(value, Mapping):
            return dict(value)
        self.fail(loc, "Input should be a valid dictionary", "dict_type", value)
        return None

    def field(self, data: Mapping[str, Any], key: str, loc: Loc, *, required: bool = False) -> Any:
        """Return data[key], recording a `missing` error when required and absent."""
        if key in data:
            return data[key]
        if required:
            self.fail((*loc, key), "Field required", "missing", dict(data))
        return _MISSING

    def string(self, value: Any, loc: Loc, *, pattern: str | None = None, nullable: bool = False) -> bool:
        if value is None and nullable:
            return True
        if not isinstance(value, str):
            return self.fail(loc, "Input should be a valid string", "string_type", value)
        if pattern and not re.match(pattern, value):
            return self.fail(loc, f"String should match pattern '{pattern}'", "string_pattern_mismatch", value)
        return True

    def number(self, value: Any, loc: Loc, *, nullable: bool = False) -> bool:
        if value is None and nullable:
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return self.fail(loc, "Input should be a valid number", "float_type", value)
        return True

    def integer(self, value: Any, loc: Loc, *, minimum: int | None = None, nullable: bool = False) -> bool:
        if value is None and nullable:
            return True
        if isinstance(value, bool) or not isinstance(value, int):
            return self.fail(loc, "Input should be a valid integer", "int_type", value)
        if minimum is not None and value < minimum:
            return self.fail(loc, f"Input should be greater than or equal to {minimum}", "greater_than_equal", value)
        return True

    def boolean(self, value: Any, loc: Loc) -> bool:
        if not isinstance(value, bool):
            return self.fail(loc, "Input should be a valid boolean", "bool_type", value)
        return True

    def choice(self, value: Any, loc: Loc, options: Iterable[str]) -> bool:
        options = tuple(options)
        if value not in options:
            expected = ", ".join(f"'{o}'" for o in options[:-1]) + f" or '{options[-1]}'"
            return self.fail(loc, f"Input should be {expected}", "literal_error", value)
        return True

    def timestamp(self, value: Any, loc: Loc, *, nullable: bool = False) -> bool:
        if value is None and nullable:
            return True
        if not self.string(value, loc):
            return False
        try:
            if not _TIMESTAMP_SHAPE.match(value):
                raise ValueError(value)
            try:
                datetime.datetime.fromisoformat(value)  # fast path; the shape check makes it strict
            except ValueError:  # Python 3.10 only parses 3 or 6 fraction digits
                datetime.datetime.strptime(value, TIMESTAMP_FORMAT)
        except ValueError:
            return self.fail(loc, f"Value error, timestamp must use format {TIMESTAMP_FORMAT}", "value_error", value)
        return True

    def string_list(self, value: Any, loc: Loc, *, pattern: str | None = None) -> bool:
        if not isinstance(value, list):
            return self.fail(loc, "Input should be a valid list", "list_type", value)
        return all([self.string(item, (*loc, i), pattern=pattern) for i, item in enumerate(value)])

    def keyed_mapping(self, value: Any, loc: Loc, *, nullable: bool = True) -> bool:
        """A dict whose keys follow the tag/metadata key rule."""
        if value is None and nullable:
            return True
        data = self.mapping(value, loc)
        if data is None:
            return False
        ok = True
        for key in data:
            if not isinstance(key, str) or not re.match(KEY_PATTERN, key):
                self.fail(
                    (*loc, str(key), "[key]"),
                    f"String should match pattern '{KEY_PATTERN}'",
                    "string_pattern_mismatch",
                    key,
                )
                ok = False
        return ok


def parse_body(body: Any, loc: Loc = ("body",)) -> dict[str, Any]:
    """The body as a dict, or a 422 when it is not a JSON/msgpack object."""
    checker = Checker()
    data = checker.mapping(body, loc)
    checker.done()
    assert data is not None
    return data


# --- folders -------------------------------------------------------------------------------------------


def validate_folder_path(body: Any) -> str:
    data = parse_body(body)
    checker = Checker()
    path = checker.field(data, "path", ("body",), required=True)
    if path is not _MISSING:
        checker.string(path, ("body", "path"), pattern=FOLDER_PATTERN)
    checker.done()
    return str(path)


def validate_folder_update(body: Any) -> dict[str, Any]:
    data = parse_body(body)
    checker = Checker()
    out: dict[str, Any] = {}
    for key, value in data.items():
        loc: Loc = ("body", key)
        if key in ("description", "name"):
            checker.string(value, loc, nullable=True)
        elif key == "tags":
            checker.string_list(value, loc, pattern=KEY_PATTERN)
        elif key == "metadata":
            checker.keyed_mapping(value, loc)
        elif key == "ttl":
            checker.integer(value, loc, minimum=0, nullable=True)
        elif key == "starred":
            checker.boolean(value, loc)
        elif key == "visibility":
            checker.mapping(value, loc)
        else:
            continue  # unknown keys are ignored, as FastAPI models without extra="forbid" do
        out[key] = value
    checker.done()
    return out


# --- runs ----------------------------------------------------------------------------------------------

_RUN_FIELDS = (
    "name",
    "folder",
    "status",
    "description",
    "tags",
    "metadata",
    "system",
    "heartbeat_timeout",
    "alerts",
    "notifications",
    "visibility",
    "ttl",
    "started",
    "endtime",
)


def validate_run(body: Any, *, create: bool) -> dict[str, Any]:
    """Validate POST /runs (create=True) or PUT /runs/{id} (create=False)."""
    data = parse_body(body)
    checker = Checker()
    if create:
        checker.field(data, "folder", ("body",), required=True)
    out: dict[str, Any] = {}
    for key in _RUN_FIELDS:
        if key not in data:
            continue
        value, loc = data[key], ("body", key)
        if key == "name":
            checker.string(value, loc, pattern=RUN_NAME_PATTERN, nullable=create)
        elif key == "folder":
            checker.string(value, loc, pattern=FOLDER_PATTERN)
        elif key == "status":
            checker.choice(value, loc, RUN_STATUSES)
        elif key == "description":
            checker.string(value, loc, nullable=True)
        elif key == "tags":
            if value is not None:
                checker.string_list(value, loc, pattern=KEY_PATTERN)
        elif key == "metadata":
            checker.keyed_mapping(value, loc)
        elif key in ("system", "visibility"):
            if value is not None:
                checker.mapping(value, loc)
        elif key in ("heartbeat_timeout", "ttl"):
            checker.integer(value, loc, minimum=0, nullable=True)
        elif key == "alerts":
            if value is not None:
                checker.string_list(value, loc)
        elif key == "notifications":
            notif = checker.mapping(value, loc) if value is not None else None
            if notif is not None and "state" in notif:
                checker.choice(notif["state"], (*loc, "state"), NOTIFICATION_STATES)
        elif key in ("started", "endtime"):
            checker.timestamp(value, loc, nullable=True)
        out[key] = value
    checker.done()
    return out


# --- metrics and events --------------------------------------------------------------------------------


def _batch(body: Any, key: str) -> tuple[Checker, Any, Any]:
    """The run id and the list under ``key`` of a batch body, checked (the checker goes on with the items)."""
    data = parse_body(body)
    checker = Checker()
    run = checker.field(data, "run", ("body",), required=True)
    items = checker.field(data, key, ("body",), required=True)
    if run is not _MISSING:
        checker.string(run, ("body", "run"))
    if items is not _MISSING and not isinstance(items, list):
        checker.fail(("body", key), "Input should be a valid list", "list_type", items)
    checker.done()
    return checker, run, items


def validate_metrics(body: Any) -> tuple[str, list[dict[str, Any]]]:
    """Validate a metrics batch; returns (run id, records)."""
    checker, run, records = _batch(body, "metrics")
    for i, record in enumerate(records):
        loc: Loc = ("body", "metrics", i)
        entry = checker.mapping(record, loc)
        if entry is None:
            continue
        for key in ("values", "time", "timestamp", "step"):
            checker.field(entry, key, loc, required=True)
        values = entry.get("values", {})
        if checker.mapping(values, (*loc, "values")) is not None:
            for name, value in values.items():
                vloc: Loc = (*loc, "values", str(name))
                if not isinstance(name, str) or not re.match(METRIC_NAME_PATTERN, name):
                    checker.fail(
                        (*vloc, "[key]"),
                        f"String should match pattern '{METRIC_NAME_PATTERN}'",
                        "string_pattern_mismatch",
                        name,
                    )
                if not isinstance(value, (int, float)):  # bool is an int
                    checker.fail(vloc, "Input should be a valid number", "float_type", value)
        if "time" in entry:
            checker.number(entry["time"], (*loc, "time"))
        if "timestamp" in entry:
            checker.timestamp(entry["timestamp"], (*loc, "timestamp"))
        if "step" in entry:
            checker.integer(entry["step"], (*loc, "step"), minimum=0)
    checker.done()
    return str(run), [dict(r) for r in records]


def validate_events(body: Any) -> tuple[str, list[dict[str, Any]]]:
    """Validate an events batch; returns (run id, events with log_level defaulted to info)."""
    checker, run, events = _batch(body, "events")
    out: list[dict[str, Any]] = []
    for i, event in enumerate(events):
        loc: Loc = ("body", "events", i)
        entry = checker.mapping(event, loc)
        if entry is None:
            continue
        message = checker.field(entry, "message", loc, required=True)
        timestamp = checker.field(entry, "timestamp", loc, required=True)
        level = entry.get("log_level") or "info"
        if message is not _MISSING:
            checker.string(message, (*loc, "message"))
        if timestamp is not _MISSING:
            checker.timestamp(timestamp, (*loc, "timestamp"))
        checker.choice(level, (*loc, "log_level"), LOG_LEVELS)
        out.append({"message": message, "timestamp": timestamp, "log_level": level})
    checker.done()
    return str(run), out


# --- artifacts -----------------------------------------------------------------------------------------


def validate_artifact(body: Any) -> dict[str, Any]:
    data = parse_body(body)
    checker = Checker()
    for key in ("name", "checksum", "size", "mime_type"):
        checker.field(data, key, ("body",), required=True)
    if "name" in data:
        checker.string(data["name"], ("body", "name"), pattern=RUN_NAME_PATTERN)
    if "checksum" in data:
        checker.string(data["checksum"], ("body", "checksum"), pattern=CHECKSUM_PATTERN)
    if "size" in data:
        checker.integer(data["size"], ("body", "size"), minimum=0)
    if "mime_type" in data:
        checker.string(data["mime_type"], ("body", "mime_type"))
    checker.string(data.get("original_path"), ("body", "original_path"), nullable=True)
    if data.get("metadata") is not None:
        checker.mapping(data["metadata"], ("body", "metadata"))
    checker.done()
    return {
        "name": data["name"],
        "checksum": data["checksum"].lower(),
        "size": data["size"],
        "mime_type": data["mime_type"],
        "original_path": data.get("original_path"),
        "metadata": data.get("metadata") or {},
    }


def _required_choice(body: Any, key: str, choices: tuple[str, ...]) -> str:
    """The body's ``key``, which must be one of ``choices``."""
    data = parse_body(body)
    checker = Checker()
    value = checker.field(data, key, ("body",), required=True)
    if value is not _MISSING:
        checker.choice(value, ("body", key), choices)
    checker.done()
    return str(value)


def validate_category(body: Any) -> str:
    return _required_choice(body, "category", CATEGORIES)


# --- alerts --------------------------------------------------------------------------------------------


def validate_alert(body: Any) -> dict[str, Any]:
    """Validate an alert definition; returns the normalised alert document (without id)."""
    data = parse_body(body)
    checker = Checker()
    name = checker.field(data, "name", ("body",), required=True)
    source = checker.field(data, "source", ("body",), required=True)
    if name is not _MISSING:
        checker.string(name, ("body", "name"), pattern=RUN_NAME_PATTERN)
    if source is not _MISSING:
        checker.choice(source, ("body", "source"), ALERT_SOURCES)
    notification = data.get("notification", "none")
    checker.choice(notification, ("body", "notification"), ALERT_NOTIFICATIONS)
    checker.string(data.get("description"), ("body", "description"), nullable=True)
    for flag in ("enabled", "abort"):
        if flag in data:
            checker.boolean(data[flag], ("body", flag))
    definition: dict[str, Any] | None = None
    if source in ("metrics", "events"):  # these sources carry an alert mapping
        loc: Loc = ("body", "alert")
        alert = checker.mapping(checker.field(data, "alert", ("body",), required=True), loc)
        if alert is not None:
            define = _metric_alert_definition if source == "metrics" else _event_alert_definition
            definition = define(checker, alert, loc)
    checker.done()
    doc: dict[str, Any] = {
        "name": name,
        "description": data.get("description"),
        "notification": notification,
        "source": source,
        "enabled": data.get("enabled", True),
        "abort": data.get("abort", False),
    }
    if definition is not None:
        doc["alert"] = definition
    return doc


def _positive_int(checker: Checker, value: Any, loc: Loc) -> None:
    checker.integer(value, loc, minimum=1)


def _metric_alert_definition(checker: Checker, alert: dict[str, Any], loc: Loc) -> dict[str, Any]:
    rule = checker.field(alert, "rule", loc, required=True)
    metric = checker.field(alert, "metric", loc, required=True)
    if rule is not _MISSING:
        checker.choice(rule, (*loc, "rule"), THRESHOLD_RULES + RANGE_RULES)
    if metric is not _MISSING:
        checker.string(metric, (*loc, "metric"), pattern=METRIC_NAME_PATTERN)
    frequency = alert.get("frequency", 1)
    _positive_int(checker, frequency, (*loc, "frequency"))
    window = alert.get("window") or frequency
    _positive_int(checker, window, (*loc, "window"))
    aggregation = alert.get("aggregation", "average")
    checker.choice(aggregation, (*loc, "aggregation"), AGGREGATIONS)
    out = {"rule": rule, "metric": metric, "frequency": frequency, "window": window, "aggregation": aggregation}
    if rule in THRESHOLD_RULES:
        threshold = checker.field(alert, "threshold", loc, required=True)
        if threshold is not _MISSING and checker.number(threshold, (*loc, "threshold")):
            out["threshold"] = threshold
    elif rule in RANGE_RULES:
        low = checker.field(alert, "range_low", loc, required=True)
        high = checker.field(alert, "range_high", loc, required=True)
        ok = low is not _MISSING and checker.number(low, (*loc, "range_low"))
        ok = high is not _MISSING and checker.number(high, (*loc, "range_high")) and ok
        if ok and not low < high:
            checker.fail(loc, "Value error, range_low must be less than range_high", "value_error", alert)
        out |= {"range_low": low, "range_high": high}
    return out


def _event_alert_definition(checker: Checker, alert: dict[str, Any], loc: Loc) -> dict[str, Any]:
    pattern = checker.field(alert, "pattern", loc, required=True)
    if pattern is not _MISSING:
        checker.string(pattern, (*loc, "pattern"))
    frequency = alert.get("frequency", 1)
    _positive_int(checker, frequency, (*loc, "frequency"))
    return {"pattern": pattern, "frequency": frequency}


def validate_alert_state(body: Any) -> str:
    return _required_choice(body, "status", ALERT_STATES)


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN/inf: such metric values are answered as null."""
    return value if isinstance(value, bool) or math.isfinite(value) else None
