"""State and helpers shared by the API handlers."""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

from .auth import TokenIssuer
from .db import Store
from .validation import TIMESTAMP_FORMAT, Checker
from .web import Request


@dataclasses.dataclass
class Settings:
    version: str = "1.3.0"
    nosim_version: str = "1.0.0"
    user: str = "test-user"
    # Alert `window` is multiplied by this to get seconds: the API document speaks of minutes.
    alert_window_unit: float = 60.0
    page_limit: int = 100


@dataclasses.dataclass
class ServerState:
    store: Store
    tokens: TokenIssuer
    settings: Settings


def timestamp(moment: datetime.datetime | float | None = None) -> str:
    """Naive UTC timestamp in the API's format."""
    if moment is None:
        moment = datetime.datetime.now(datetime.timezone.utc)
    elif isinstance(moment, (int, float)):
        moment = datetime.datetime.fromtimestamp(moment, datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc).replace(tzinfo=None).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=datetime.timezone.utc)


def sort_docs(docs: list[dict[str, Any]], raw: str | None) -> list[dict[str, Any]]:
    """Apply `sorting=[{"id": column, "desc": bool}, ...]` (dotted columns allowed)."""
    if not raw:
        return docs
    try:
        keys = json.loads(raw)
        assert isinstance(keys, list) and all(isinstance(k, dict) and "id" in k for k in keys)
    except (json.JSONDecodeError, AssertionError):
        checker = Checker()
        checker.fail(("query", "sorting"), "Sorting must be a JSON list of {id, desc}", "value_error", raw)
        checker.done()
        return docs
    for key in reversed(keys):
        column, descending = str(key["id"]), bool(key.get("desc", True))

        def _value(doc: dict[str, Any], column: str = column) -> tuple[int, Any]:
            value: Any = doc
            for part in column.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is None:
                return (2, "")
            return (0, value) if isinstance(value, (int, float)) else (1, str(value))

        docs = sorted(docs, key=_value, reverse=descending)
    return docs


def paginate(req: Request, docs: list[dict[str, Any]], limit: int | None) -> dict[str, Any]:
    """`{"data": docs[start:start+count], "count": len(docs)}`; count 0 or absent means `limit` (None: all)."""
    start = max(req.int_param("start", 0), 0)
    count = req.int_param("count", 0)
    if count <= 0:
        count = limit if limit is not None else len(docs)
    elif limit is not None:
        count = min(count, limit)
    return {"data": docs[start : start + count], "count": len(docs)}
