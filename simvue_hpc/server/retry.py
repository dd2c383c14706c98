"""When and how long to wait before sending a failed request again (like urllib3's ``util/retry.py``).

Pure: no I/O, no clock, no random numbers of its own. The client passes the jitter's draw and the
current time in, so the same inputs always give the same answer. Which *exceptions* are worth a retry
is decided where they occur, at the transport boundary (:mod:`simvue_hpc.server.http`).
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import math
import re
from collections.abc import Mapping

from ..errors import ConfigurationError


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """An immutable retry policy.

    ``total`` is the number of retries (so at most ``total + 1`` attempts). Before retry ``n`` (1, 2, ...)
    the client waits :meth:`backoff` seconds: ``backoff_factor * 2 ** (n - 1)``, capped at ``backoff_max``
    and spread by ``± jitter`` (a fraction), or what a ``Retry-After`` header asks for when
    ``respect_retry_after``. ``deadline`` bounds the whole retrying (seconds from the first attempt): no
    retry is started that would wait past it. Only ``statuses`` are retried, and never a 4xx other than
    429 (a 422 above all).
    """

    total: int = 8
    backoff_factor: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.25
    statuses: frozenset[int] = frozenset({429, 502, 503, 504})
    respect_retry_after: bool = True
    deadline: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.total, bool) or not isinstance(self.total, int) or self.total < 0:
            raise ConfigurationError(f"total must be a whole number >= 0, not {self.total!r}")
        for name in ("backoff_factor", "backoff_max"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ConfigurationError(f"{name} must be a number >= 0, not {value!r}")
        if not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"jitter must be a fraction between 0 and 1, not {self.jitter!r}")
        if self.deadline is not None and (not isinstance(self.deadline, (int, float)) or not self.deadline > 0):
            raise ConfigurationError(f"deadline must be a positive number of seconds or None, not {self.deadline!r}")
        object.__setattr__(self, "statuses", frozenset(self.statuses))

    def backoff(self, attempt: int, draw: float = 0.0) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry).

        ``draw`` in ``[-1, 1]`` places the wait inside the jitter band (the client draws it uniformly);
        0 gives the centre of the band, the same as no jitter.
        """
        try:
            base = min(math.ldexp(self.backoff_factor, max(attempt, 1) - 1), self.backoff_max)
        except OverflowError:  # factor * 2**(attempt-1) is past the float range, so past the cap too
            base = self.backoff_max
        if self.jitter:
            base *= 1.0 + self.jitter * min(max(draw, -1.0), 1.0)
        return min(max(base, 0.0), self.backoff_max)

    def retry_after(self, headers: Mapping[str, str], now_wall: float) -> float | None:
        """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP-date), or None.

        ``now_wall`` is the current epoch time, against which an HTTP-date is measured; a date in the past
        means 0. A missing or unreadable header gives None.
        """
        value = header(headers, "Retry-After")
        if value is None or not value.strip():
            return None
        value = value.strip()
        if re.fullmatch(r"\d+(\.\d+)?", value):
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # HTTP-dates are GMT
            when = when.replace(tzinfo=datetime.timezone.utc)
        return max(when.timestamp() - now_wall, 0.0)

    def should_retry(self, status: int) -> bool:
        """Whether an answer with this status is worth another attempt."""
        if 400 <= status < 500 and status != 429:
            return False
        return status in self.statuses

    def gives_up(self, attempt: int, elapsed: float, wait: float) -> bool:
        """Whether attempt number ``attempt`` (1 for the first) was the last: no retries left, or the
        next one would start after the deadline (``elapsed`` seconds since the first attempt)."""
        out_of_time = self.deadline is not None and elapsed + wait > self.deadline
        return attempt > self.total or out_of_time


DEFAULT_POLICY = RetryPolicy()


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value by case-insensitive name (for plain dicts as well as requests' headers)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None
