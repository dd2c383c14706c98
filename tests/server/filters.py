"""The list filters of the Simvue REST API (`filters=["name == x", "has tag.y", ...]`).

Supported forms, as the official client writes them (`simvue.api.objects.filter`):
`<field> == | != | > | < | >= | <= <value>`, `<field> contains | not contains <value>`,
`<field> exists | not exists`, `has tag.<t>`, `has not tag.<t>`, `starred`, and time windows such as
`created < 3h` (h, d or y) on created/started/modified/ended. Fields are dotted paths into a "filter view"
of the object; a field whose value is a list matches when any element matches.
"""

from __future__ import annotations

import datetime
import json
import operator
import re
from collections.abc import Callable, Iterable
from typing import Any

from .validation import TIMESTAMP_FORMAT, Checker

Predicate = Callable[[dict[str, Any]], bool]

_TIME_FIELDS = {"created", "started", "modified", "ended", "endtime"}
_WITHIN = re.compile(r"^(\d+)([hdy])$")
_BINARY = re.compile(r"^(?P<field>\S+)\s+(?P<op>==|!=|>=|<=|>|<|not contains|contains)\s+(?P<value>.*)$")
_EXISTS = re.compile(r"^(?P<field>\S+)\s+(?P<op>not exists|exists)$")
_TAG = re.compile(r"^has\s+(?P<neg>not\s+)?tag\.(?P<tag>.+)$")
_UNITS = {"h": 3600.0, "d": 86400.0, "y": 365.0 * 86400.0}
_ORDERINGS: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}


class FilterError(ValueError):
    pass


def _lookup(doc: Any, path: str) -> list[Any]:
    """All values at a dotted path; lists along the way fan out."""
    values = [doc]
    for part in path.split("."):
        found: list[Any] = []
        for value in values:
            items = value if isinstance(value, list) else [value]
            found += [item[part] for item in items if isinstance(item, dict) and part in item]
        values = found
    flat: list[Any] = []
    for value in values:
        flat += value if isinstance(value, list) else [value]
    return flat


def _coerce(target: Any, text: str) -> Any:
    if isinstance(target, bool):
        return text.strip().lower() in ("true", "1", "yes")
    if isinstance(target, (int, float)):
        try:
            return float(text)
        except ValueError:
            return text
    return text


def _compare(actual: Any, op: str, text: str) -> bool:
    if actual is None:
        return op in ("!=", "not contains")
    if op in ("contains", "not contains"):
        found = text in str(actual)
        return found if op == "contains" else not found
    expected = _coerce(actual, text)
    if op == "==":
        return actual == expected or str(actual) == text
    if op == "!=":
        return not (actual == expected or str(actual) == text)
    try:
        return bool(_ORDERINGS[op](actual, expected))
    except TypeError:
        return False


def _age_seconds(timestamp: Any) -> float | None:
    if not isinstance(timestamp, str):
        return None
    try:
        moment = datetime.datetime.strptime(timestamp, TIMESTAMP_FORMAT)
    except ValueError:
        return None
    return (datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - moment).total_seconds()


def parse_filter(text: str) -> Predicate:
    """Compile one filter expression."""
    expr = text.strip()
    if expr == "starred":
        return lambda doc: bool(doc.get("starred"))
    if match := _TAG.match(expr):
        tag, negate = match["tag"], bool(match["neg"])
        return lambda doc: (tag in (doc.get("tags") or [])) != negate
    if match := _EXISTS.match(expr):
        field, negate = match["field"], match["op"] == "not exists"
        return lambda doc: bool(_lookup(doc, field)) != negate
    if match := _BINARY.match(expr):
        field, op, value = match["field"], match["op"], match["value"].strip()
        within = _WITHIN.match(value)
        if field in _TIME_FIELDS and op == "<" and within:
            limit = int(within[1]) * _UNITS[within[2]]
            key = "endtime" if field == "ended" else field

            def _recent(doc: dict[str, Any]) -> bool:
                age = _age_seconds(doc.get(key))
                return age is not None and age < limit

            return _recent
        if op in ("!=", "not contains"):
            return lambda doc: all(_compare(v, op, value) for v in _lookup(doc, field))
        return lambda doc: any(_compare(v, op, value) for v in _lookup(doc, field))
    raise FilterError(f"Unsupported filter expression '{text}'")


def parse_filters(raw: str | None) -> list[Predicate]:
    """Parse the `filters` query parameter (a JSON list of strings); 422 on malformed input."""
    if not raw:
        return []
    checker = Checker()
    try:
        items = json.loads(raw)
    except json.JSONDecodeError:
        items = None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        checker.fail(("query", "filters"), "Filters must be a JSON list of strings", "value_error", raw)
        checker.done()
    predicates: list[Predicate] = []
    for i, item in enumerate(items):
        try:
            predicates.append(parse_filter(item))
        except FilterError as e:
            checker.fail(("query", "filters", i), str(e), "value_error", item)
    checker.done()
    return predicates


def apply_filters(
    docs: Iterable[dict[str, Any]], raw: str | None, view: Callable[[dict[str, Any]], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Keep the documents whose filter view satisfies every filter."""
    predicates = parse_filters(raw)
    return [doc for doc in docs if all(p(view(doc)) for p in predicates)]
