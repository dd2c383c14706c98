"""Pure helpers of the metrics and events streams: cutting store records into POST-sized batches,
and working out after an ambiguous failure what the server is still missing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..records import Record
from .items import MAX_BYTES_PER_POST, MAX_RECORDS_PER_POST, approx_size

Cursor = list[int]  # [offset of a store record, items of that record already uploaded]


@dataclass
class Batch:
    """Server records built from store records, and where the stream's cursor goes once they are up."""

    items: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0
    cursor: Cursor | None = None


def build_batch(
    records: Iterable[Record],
    cursor: Cursor,
    convert: Callable[[Record], list[dict[str, Any]]],
    scan_end: int | None,
    stop: Cursor | None = None,
) -> Batch:
    """Items from ``cursor`` up to the size limits (a store record may be split), or up to ``stop``
    (the end of a batch sent before, rebuilt identically). With nothing of this kind before the scan's
    end, the cursor skips ahead to it."""
    batch = Batch()
    offset, done = cursor
    for record in records:
        if record.end <= offset:
            continue
        if stop is not None and record.offset >= stop[0] and not (record.offset == stop[0] and stop[1] > 0):
            return batch
        items = convert(record)
        skip = done if record.offset == offset else 0
        for i in range(skip, len(items)):
            if stop is not None and [record.offset, i] == stop:
                return batch
            item = items[i]
            size = approx_size(item)
            full = len(batch.items) >= MAX_RECORDS_PER_POST or batch.size + size > MAX_BYTES_PER_POST
            if stop is None and batch.items and full:
                batch.cursor = [record.offset, i]
                return batch
            batch.items.append(item)
            batch.size += size
        batch.cursor = [record.end, 0]
    if stop is None and batch.cursor is None and scan_end is not None and scan_end > offset:
        batch.cursor = [scan_end, 0]
    return batch


def missing_metrics(items: list[dict[str, Any]], stored: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The part of ``items`` the server does not hold, given the points it answered for their names.

    A point is known by (name, step, timestamp); the timestamp is microsecond-exact, so a step logged
    twice at different times counts twice. An item whose every value is stored is dropped, one with
    some values stored keeps only the others."""
    have = Counter(
        (name, int(p["step"]), str(p["timestamp"]))
        for name, points in stored.items()
        for p in points
        if isinstance(p, dict) and "step" in p and "timestamp" in p
    )
    out = []
    for item in items:
        values = {}
        for name, value in item["values"].items():
            key = (name, int(item["step"]), str(item["timestamp"]))
            if have[key] > 0:
                have[key] -= 1
            else:
                values[name] = value
        if values:
            out.append({**item, "values": values})
    return out


def stored_events(server_count: int, before: int, sent: int) -> int:
    """How many of ``sent`` events reached the server, given its event count now and ``before`` (the
    count the uploader had confirmed before sending them). A server stores a batch in order, so they are
    the first ones."""
    return min(max(server_count - before, 0), sent)


def is_rejection(status: int | None) -> bool:
    """A refusal of one item that sending it again cannot change: a 4xx other than 401/403 (the token),
    409 (already there) and 429 (slow down). A 404 may mean the run is gone: the caller checks."""
    return status is not None and 400 <= status < 500 and status not in (401, 403, 409, 429)
