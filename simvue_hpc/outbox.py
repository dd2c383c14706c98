"""A rank's outgoing metrics: the column buffer ``log`` appends to, its overflow policy and flush timing.

Pure: no sockets, no threads of its own, injected clocks. ``add`` is ``run.log``: it validates its
input and appends to Python lists under a short lock, with no I/O and no numpy. The reporter's I/O
thread asks ``due(now)`` and ``take(now)`` for the next METRICS message and reports back with
``sent(points)`` once ZeroMQ took it.

Overflow policy (when the aggregator cannot keep up)
    At most ``max_points`` points wait in this process (in the lists, and taken but not yet
    accepted by ZeroMQ). When ``add`` would exceed that bound:

    * ``overflow="block"`` (default): ``add`` waits for room up to ``overflow_timeout`` seconds;
      if none comes, the call's points are dropped and the rank keeps dropping without waiting
      until the buffer is half empty again, so a dead aggregator costs one wait, not one per call.
    * ``overflow="drop"``: the call's points are dropped at once.

    Dropped points are counted per metric (``dropped``) and reported in every heartbeat and in the
    goodbye; the aggregator records them in the run. Nothing is lost silently.

Steps
    A given step must be an integer in [0, 2**63 - 2]: the wire's int64, less its maximum, which the
    aggregator keeps as its marker for "every step". A call without ``step``
    gets one more than the highest step this rank has logged (0 for the first), so default steps
    never reuse a step. A step lower than an earlier one is accepted (a pool worker running a second
    task of a sweep starts again at 0; a code restarted from a checkpoint repeats steps): if the
    aggregator already completed that step, the points are stored as late ones, never dropped. A
    call dropped by the overflow policy still moves the default step on, so later points keep their
    iteration.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .errors import ConfigurationError, RunAborted, RunStopped, SimvueHPCError
from .names import check_metric_name
from .protocol import MetricBatch

log = logging.getLogger(__name__)

INT64_MAX = 2**63 - 1
STEP_MAX = INT64_MAX - 1  # INT64_MAX is the aggregator's marker for "every step"
NAMES_SENT_WHOLE = 64  # up to this many names a batch carries the rank's whole name list


def _coerce(name: str, value: Any) -> float:
    """Slow path of ``add``: bools and numpy numbers are accepted, anything else is an error."""
    if isinstance(value, (bool, np.bool_, np.integer, np.floating)):
        return float(value)
    if isinstance(value, (int, float)):  # subclasses of int and float
        return float(value)
    raise ConfigurationError(
        f"metric {name!r}: value must be a real number (int, float or bool), got {type(value).__name__} {value!r}"
    )


def _float_column(values: list[float]) -> np.ndarray:
    """Values as float64; ints too large for a float become +-inf rather than an error."""
    try:
        return np.array(values, dtype=np.float64)
    except OverflowError:
        return np.array([_safe_float(v) for v in values], dtype=np.float64)


def _safe_float(value: float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _nothing() -> None:
    pass


class Every:
    """A periodic deadline (heartbeats, resource samples) on an injected clock."""

    def __init__(self, interval: float, now: float) -> None:
        self.interval = interval
        self.at = now + interval

    def due(self, now: float) -> bool:
        """True once per period: when ``now`` has reached the deadline, which then moves on."""
        if now < self.at:
            return False
        self.at = now + self.interval
        return True


class Outbox:
    """The column buffer of one rank, shared by the callers of ``add`` and the I/O thread."""

    def __init__(
        self,
        *,
        batch_points: int,
        max_points: int,
        flush_interval: float,
        overflow: str = "block",
        overflow_timeout: float = 10.0,
        wake: Callable[[], None] = _nothing,
        clock: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
        rank: int = 0,
    ) -> None:
        self.batch_points = batch_points
        self.max_points = max_points
        self.flush_interval = flush_interval
        self.overflow = overflow
        self.overflow_timeout = overflow_timeout
        self.rank = rank
        self._wake = wake
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._name_ids: dict[str, int] = {}
        self._names: list[str] = []
        self._ids: list[int] = []
        self._vals: list[float] = []
        self._calls: list[int] = []  # (step, time_ns, points) per call, flat
        self._next_step = 0  # one more than the highest step logged
        self._armed = False  # the lists hold points the I/O thread has not taken
        self._flush_at: float | None = None
        self._closing = False
        self._dropping = False
        self._halt: BaseException | None = None  # set: add raises (abort) or drops (stopped)
        self._stopped_raised = False
        self.queued_points = 0  # taken from the lists, not yet accepted by ZeroMQ
        self.sent_points = 0
        self.dropped_points = 0
        self.dropped: Counter[str] = Counter()
        self.dropped_calls = 0  # calls refused after the run stopped
        self.log = self.add  # the official client's name

    # ------------------------------------------------------------------------------------------ hot path
    def add(self, metrics: Mapping[str, Any], step: int | None = None) -> bool:
        """Buffer one call's metrics; False if the overflow policy (or a stopped run) dropped them."""
        t = self._clock()
        if self._halt is not None:
            return self._halted(metrics, step)
        if metrics.__class__ is not dict and not isinstance(metrics, Mapping):
            raise ConfigurationError(f"metrics must be a mapping of name to number, got {type(metrics).__name__}")
        if step is not None and (step.__class__ is not int or step < 0 or step > STEP_MAX):
            step = _check_step(step)
        lock = self._lock
        n0: int | None = None
        lock.acquire()
        try:
            if self._closing:
                raise SimvueHPCError("this run is closed")
            if step is None:
                step = self._next_step
                if step > STEP_MAX:
                    raise ConfigurationError(f"the default step {step} is past the largest int64 step {STEP_MAX}")
            vals = self._vals
            n0 = len(vals)
            if self._dropping or n0 + self.queued_points + len(metrics) > self.max_points:
                if not self._make_room(metrics, step):
                    return False
                vals = self._vals
                n0 = len(vals)
            ids = self._ids
            get = self._name_ids.get
            for name, value in metrics.items():
                i = get(name)
                if i is None:
                    i = self._new_name(name)
                if value.__class__ is not float and value.__class__ is not int:
                    value = _coerce(name, value)
                ids.append(i)
                vals.append(value)
            if step >= self._next_step:
                self._next_step = step + 1
            n = len(vals)
            self._calls.extend((step, t, n - n0))
            # Wake the I/O thread once per batch: when the buffer stops being empty, and when
            # it crosses batch_points (not on every call past it: each wake is a syscall).
            wake = not self._armed or n0 < self.batch_points <= n
            self._armed = True
        except BaseException:  # an invalid name or value: the call's points are undone, all or nothing
            if n0 is not None:
                del self._ids[n0:]
                del self._vals[n0:]
            raise
        finally:
            lock.release()
        if wake:
            self._wake()
        return True

    def _new_name(self, name: str) -> int:
        check_metric_name(name)
        i = self._name_ids[name] = len(self._names)
        self._names.append(name)
        return i

    def _make_room(self, metrics: Mapping[str, Any], step: int) -> bool:
        """Called with the lock held when the buffer is full: wait or drop, per the policy."""
        if not self._dropping and self.overflow == "block":
            deadline = self._monotonic() + self.overflow_timeout
            while len(self._vals) + self.queued_points + len(metrics) > self.max_points:
                remaining = deadline - self._monotonic()
                if remaining <= 0 or self._closing or self._halt is not None:
                    break
                self._space.wait(remaining)
            else:
                return True
        if self._dropping and self._halt is None and len(self._vals) + self.queued_points <= self.max_points // 2:
            self._dropping = False
            return True
        if not self._dropping:
            log.warning("rank %d: buffer full (%d points); dropping points until it drains", self.rank, self.max_points)
        self._dropping = True
        self._count_dropped(metrics, step)
        return False

    def _count_dropped(self, metrics: Mapping[str, Any], step: int) -> None:
        for name in metrics:
            self.dropped[str(name)] += 1
        self.dropped_points += len(metrics)
        if step >= self._next_step:
            self._next_step = step + 1

    # ------------------------------------------------------------------------------------------ stopping
    def _halted(self, metrics: Mapping[str, Any], step: int | None) -> bool:
        halt = self._halt
        if isinstance(halt, RunAborted):
            raise RunAborted(str(halt))
        self.stopped_here()
        with self._lock:
            self.dropped_calls += 1
            if isinstance(metrics, Mapping):
                use = self._next_step if step is None else step
                self._count_dropped(metrics, use if isinstance(use, int) else self._next_step)
        return False

    def stopped_here(self) -> bool:
        """Whether the run stopped taking this rank's data (an abort aside). The first call that
        finds it stopped raises the reason (a RunStopped); later ones return True: the caller drops."""
        halt = self._halt
        if halt is None or isinstance(halt, RunAborted):
            return False
        if not self._stopped_raised:
            self._stopped_raised = True
            raise halt
        return True

    def abort(self, reason: str) -> None:
        """The run was aborted: every later ``add`` raises RunAborted."""
        self._halt_with(RunAborted(f"the run was aborted: {reason}"))

    def stop(self, error: RunStopped) -> None:
        """The run stopped taking this rank's data: the next call raises ``error``, later ones drop."""
        if self._halt is None or isinstance(self._halt, RunAborted):
            self._halt_with(error)

    def _halt_with(self, error: BaseException) -> None:
        with self._lock:
            if self._halt is None or isinstance(error, RunStopped):
                self._halt = error
            self._space.notify_all()

    @property
    def stopped(self) -> BaseException | None:
        return self._halt

    def close(self) -> None:
        """No more calls: ``add`` raises from now on; what is buffered is due at once."""
        with self._lock:
            self._closing = True
            self._space.notify_all()

    @property
    def closing(self) -> bool:
        return self._closing

    # ------------------------------------------------------------------------------------------ I/O thread side
    @property
    def empty(self) -> bool:
        """Nothing buffered that ``take`` would return."""
        return not self._armed

    def deadline(self, now: float) -> float | None:
        """When the buffered points must leave (None: nothing buffered). Fixed by the first call
        after points arrived, so the I/O thread's clock starts the interval."""
        if not self._armed:
            return None
        if self._flush_at is None:
            self._flush_at = now + self.flush_interval
        return self._flush_at

    def due(self, now: float) -> bool:
        """Whether a METRICS message should be taken now: the interval passed, a batch is full or
        the rank is closing."""
        at = self.deadline(now)
        return at is not None and (now >= at or len(self._vals) >= self.batch_points or self._closing)

    def take(self, now: float) -> tuple[MetricBatch, int] | None:
        """Move the lists into one METRICS message; returns it and its point count (None if empty).
        The points count as queued until ``sent`` says ZeroMQ took them."""
        with self._lock:
            ids, vals, calls = self._ids, self._vals, self._calls
            self._ids, self._vals, self._calls = [], [], []
            self._armed = False
            self._flush_at = None
            self.queued_points += len(vals)
            names = self._names[:]
        if not vals:
            return None
        per_call = np.array(calls, dtype=np.int64).reshape(-1, 3)
        n_per_call = per_call[:, 2]
        id_col = np.array(ids, dtype=np.uint32)
        if len(names) > NAMES_SENT_WHOLE:
            used, inverse = np.unique(id_col, return_inverse=True)
            names = [names[i] for i in used]
            id_col = inverse.astype(np.uint32).ravel()
        batch = MetricBatch(
            names=names,
            name_id=id_col,
            step=np.repeat(per_call[:, 0], n_per_call),
            time_ns=np.repeat(per_call[:, 1], n_per_call),
            value=_float_column(vals),
        )
        return batch, len(vals)

    def sent(self, points: int) -> None:
        """ZeroMQ accepted ``points`` taken points: room for more calls."""
        with self._lock:
            self.queued_points -= points
            self.sent_points += points
            self._space.notify_all()

    def buffered(self) -> int:
        """Points in the lists and taken but not yet sent."""
        return len(self._vals) + self.queued_points


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise ConfigurationError(f"step must be a non-negative integer, got {type(step).__name__} {step!r}")
    if not 0 <= step <= STEP_MAX:
        raise ConfigurationError(f"step must be a non-negative integer of at most {STEP_MAX} (int64), got {step}")
    return int(step)
