"""In-memory log of every request the test server received."""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
from typing import Any

import msgpack


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One request. `status` is None when the connection was dropped without an answer."""

    time: float  # epoch seconds at arrival
    method: str
    path: str
    query: str
    status: int | None
    request_bytes: int
    response_bytes: int
    duration: float
    body_sha256: str  # digest of the request body ("" when empty)
    fault: str | None = None  # which injected fault, if any, shaped the answer
    body: bytes = dataclasses.field(default=b"", repr=False)  # the request body as received
    content_type: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable: everything but the body."""
        out = dataclasses.asdict(self)
        del out["body"]
        return out

    def decoded(self) -> Any:
        """The body decoded as msgpack or JSON (None when empty or neither)."""
        if not self.body:
            return None
        try:
            if "msgpack" in self.content_type:
                return msgpack.unpackb(self.body, raw=False, strict_map_key=False)
            return json.loads(self.body)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            return None


def _matches(record: RequestRecord, path: str | None, method: str | None) -> bool:
    if method and record.method != method.upper():
        return False
    return not path or record.path.startswith(path) or record.path.startswith(f"/api{path}")


class RequestLog:
    """Thread-safe list of `RequestRecord`s with a few queries that tests need."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def append(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def records(self, path: str | None = None, method: str | None = None) -> list[RequestRecord]:
        """Records, oldest first; `path` is a prefix, with or without the leading `/api`."""
        with self._lock:
            return [r for r in self._records if _matches(r, path, method)]

    def count(self, path: str | None = None, method: str | None = None) -> int:
        return len(self.records(path, method))

    def per_second(self, path: str | None = None, method: str | None = None) -> dict[int, int]:
        """Number of requests in each whole epoch second."""
        return dict(collections.Counter(int(r.time) for r in self.records(path, method)))

    def max_rate(self, path: str | None = None, method: str | None = None, window: float = 1.0) -> int:
        """Largest number of requests inside any sliding window of `window` seconds."""
        times = sorted(r.time for r in self.records(path, method))
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= window:
                start += 1
            best = max(best, end - start + 1)
        return best

    def duplicates(
        self, path: str | None = None, method: str | None = None, *, successful_only: bool = True
    ) -> list[list[RequestRecord]]:
        """Groups of requests to the same path with an identical, non-empty body."""
        groups: dict[tuple[str, str, str], list[RequestRecord]] = collections.defaultdict(list)
        for r in self.records(path, method):
            if r.body_sha256 and (not successful_only or (r.status is not None and r.status < 300)):
                groups[(r.method, r.path, r.body_sha256)].append(r)
        return [g for g in groups.values() if len(g) > 1]
