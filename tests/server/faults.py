"""Fault injection: error answers, slow answers and dropped connections, on demand.

A rule applies to requests whose path starts with `path` (given with or without the leading `/api`) and
whose method is `method` (both optional). It lasts for `count` matching requests, or until `until`
seconds from now, or both (whichever ends first); with neither it lasts for one request. Delay rules
add up and do not stop the request; of the other rules the oldest matching one shapes the answer.
Test-only paths (`/_test/...`) are never faulted.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from typing import Any, Literal

FaultKind = Literal["status", "delay", "drop", "stall", "truncate"]


@dataclasses.dataclass
class FaultRule:
    kind: FaultKind
    status: int = 503
    retry_after: float | None = None
    delay: float = 0.0
    remaining: int | None = 1
    until: float | None = None  # epoch seconds
    path: str | None = None
    method: str | None = None
    after_processing: bool = False  # drop: handle the request, then lose the answer
    id: int = 0
    hits: int = 0

    def live(self, now: float) -> bool:
        return (self.remaining is None or self.remaining > 0) and (self.until is None or now < self.until)

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method:
            return False
        return not self.path or path.startswith(self.path) or path.startswith(f"/api{self.path}")

    def describe(self) -> str:
        if self.kind == "status":
            return f"status {self.status}"
        if self.kind == "delay":
            return f"delay {self.delay}s"
        if self.kind == "stall":
            return f"stall {self.delay}s after processing"
        if self.kind == "truncate":
            return "truncated answer after processing"
        return "drop after processing" if self.after_processing else "drop"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FaultDecision:
    """What the server does to one request."""

    delay: float = 0.0
    status: int | None = None
    retry_after: float | None = None
    drop: bool = False
    after_processing: bool = False
    stall: float = 0.0  # handle the request, then hold the answer this long (past a client's timeout)
    truncate: bool = False  # handle the request, then send half the answer and close
    label: str | None = None


class FaultController:
    """Thread-safe set of fault rules, shared by the Python API and POST /_test/faults."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._ids = itertools.count(1)

    def _add(self, rule: FaultRule, count: int | None, until: float | None) -> FaultRule:
        rule.remaining = count if count is not None or until is not None else 1
        rule.until = time.time() + until if until is not None else None
        with self._lock:
            rule.id = next(self._ids)
            self._rules.append(rule)
        return rule

    def fail(
        self,
        count: int | None = 1,
        *,
        status: int = 503,
        until: float | None = None,
        path: str | None = None,
        method: str | None = None,
        retry_after: float | None = None,
    ) -> FaultRule:
        """Answer `status` to the next `count` matching requests (or for `until` seconds)."""
        rule = FaultRule("status", status=status, retry_after=retry_after, path=path, method=method)
        return self._add(rule, count, until)

    def fail_for(self, seconds: float, *, status: int = 503, **match: Any) -> FaultRule:
        """Answer `status` to every matching request for the next `seconds`."""
        return self.fail(None, status=status, until=seconds, **match)

    def rate_limit(
        self, count: int | None = 1, *, retry_after: float = 1.0, until: float | None = None, **match: Any
    ) -> FaultRule:
        """Answer 429 with a `Retry-After` header."""
        return self.fail(count, status=429, retry_after=retry_after, until=until, **match)

    def delay(self, seconds: float, count: int | None = None, *, until: float | None = None, **match: Any) -> FaultRule:
        """Hold matching requests for `seconds` before answering them normally."""
        return self._add(FaultRule("delay", delay=seconds, **match), count, until)

    def drop(
        self,
        count: int | None = 1,
        *,
        until: float | None = None,
        after_processing: bool = False,
        **match: Any,
    ) -> FaultRule:
        """Close the connection without an answer (after handling the request if `after_processing`)."""
        return self._add(FaultRule("drop", after_processing=after_processing, **match), count, until)

    def stall(self, seconds: float, count: int | None = 1, *, until: float | None = None, **match: Any) -> FaultRule:
        """Handle matching requests, then hold each answer for `seconds` (a client times out meanwhile)."""
        return self._add(FaultRule("stall", delay=seconds, after_processing=True, **match), count, until)

    def truncate(self, count: int | None = 1, *, until: float | None = None, **match: Any) -> FaultRule:
        """Handle matching requests, then send the status, headers and half the body, and close."""
        return self._add(FaultRule("truncate", after_processing=True, **match), count, until)

    def add(self, spec: dict[str, Any]) -> FaultRule:
        """Add a rule from a JSON spec: {"kind": "status"|"rate_limit"|"delay"|"drop", ...}."""
        spec = dict(spec)
        kind = spec.pop("kind", "status")
        count = spec.pop("count", None)
        until = spec.pop("until", None)
        match = {k: spec.pop(k) for k in ("path", "method") if k in spec}
        if kind == "status":
            return self.fail(count, until=until, **match, **spec)
        if kind == "rate_limit":
            return self.rate_limit(count, until=until, **match, **spec)
        if kind == "delay":
            return self.delay(spec.pop("seconds", spec.pop("delay", 0.0)), count, until=until, **match)
        if kind == "drop":
            return self.drop(count, until=until, **match, **spec)
        if kind == "stall":
            return self.stall(spec.pop("seconds", spec.pop("delay", 1.0)), count, until=until, **match)
        if kind == "truncate":
            return self.truncate(count, until=until, **match)
        raise ValueError(f"unknown fault kind '{kind}'")

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[FaultRule]:
        """Rules still in force."""
        now = time.time()
        with self._lock:
            self._rules = [r for r in self._rules if r.live(now)]
            return [dataclasses.replace(r) for r in self._rules]

    def decide(self, method: str, path: str) -> FaultDecision:
        """Consume the rules matching this request and say what to do with it."""
        now = time.time()
        delay, terminal, labels = 0.0, None, []
        with self._lock:
            for rule in self._rules:
                if not rule.live(now) or not rule.matches(method, path):
                    continue
                if rule.kind == "delay":
                    delay += rule.delay
                elif terminal is None:
                    terminal = rule
                else:
                    continue
                rule.hits += 1
                if rule.remaining is not None:
                    rule.remaining -= 1
                labels.append(rule.describe())
            self._rules = [r for r in self._rules if r.live(now)]
        label = ", ".join(labels) or None
        if terminal is None:
            return FaultDecision(delay=delay, label=label)
        if terminal.kind == "drop":
            return FaultDecision(delay=delay, drop=True, after_processing=terminal.after_processing, label=label)
        if terminal.kind == "stall":
            return FaultDecision(delay=delay, stall=terminal.delay, label=label)
        if terminal.kind == "truncate":
            return FaultDecision(delay=delay, truncate=True, label=label)
        return FaultDecision(delay=delay, status=terminal.status, retry_after=terminal.retry_after, label=label)
