"""The rank's outbox without sockets or threads: buffering, flush timing, overflow and stopping."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from simvue_hpc.errors import ConfigurationError, ReporterDied, RunAborted, SimvueHPCError
from simvue_hpc.outbox import INT64_MAX, STEP_MAX, Every, Outbox


class Clock:
    """Point timestamps (ns) and the monotonic clock (s), moved by hand."""

    def __init__(self) -> None:
        self.ns = 1_000
        self.s = 100.0

    def time_ns(self) -> int:
        self.ns += 1
        return self.ns

    def monotonic(self) -> float:
        return self.s


def make(clock: Clock, wakes: list[int] | None = None, **kw: Any) -> Outbox:
    options: dict[str, Any] = {"batch_points": 6, "max_points": 20, "flush_interval": 0.5, "overflow": "drop"}
    options.update(kw)
    woken = wakes if wakes is not None else []
    return Outbox(**options, wake=lambda: woken.append(1), clock=clock.time_ns, monotonic=clock.monotonic)


def points(batch: Any) -> list[tuple[str, int, float]]:
    return [
        (batch.names[i], int(s), float(v))
        for i, s, v in zip(batch.name_id.tolist(), batch.step.tolist(), batch.value.tolist(), strict=True)
    ]


def test_columns_become_one_batch_with_default_steps() -> None:
    clock = Clock()
    box = make(clock)
    assert box.add({"a": 1.0, "b": 2})
    assert box.add({"a": 3.0}, step=7)
    assert box.add({"b": True})
    taken = box.take(clock.s)
    assert taken is not None
    batch, n = taken
    assert n == 4 and box.queued_points == 4
    assert points(batch) == [("a", 0, 1.0), ("b", 0, 2.0), ("a", 7, 3.0), ("b", 8, 1.0)]
    assert batch.time_ns.tolist() == [1001, 1001, 1002, 1003]  # one timestamp per call
    assert batch.value.dtype == np.float64 and batch.step.dtype == np.int64
    assert box.take(clock.s) is None and box.empty
    box.sent(4)
    assert (box.queued_points, box.sent_points) == (0, 4)


def test_due_after_the_interval_or_a_full_batch_or_when_closing() -> None:
    clock = Clock()
    box = make(clock)
    assert box.deadline(clock.s) is None and not box.due(clock.s)
    box.add({"a": 1.0})
    assert box.deadline(100.0) == 100.5  # the I/O thread's first look starts the interval
    assert not box.due(100.4) and box.due(100.5)
    box.take(100.5)
    assert box.deadline(101.0) is None
    box.add({"a": 1.0, "b": 1.0, "c": 1.0})
    assert not box.due(101.0)
    box.add({"a": 1.0, "b": 1.0, "c": 1.0})  # six points: a full batch
    assert box.due(101.0)
    box.take(101.0)
    box.add({"a": 2.0})
    box.close()
    assert box.due(102.0)


def test_wakes_the_io_thread_once_per_batch() -> None:
    clock = Clock()
    wakes: list[int] = []
    box = make(clock, wakes, max_points=100)
    for _ in range(5):
        box.add({"a": 1.0, "b": 2.0})  # crosses 6 points on the third call
    assert len(wakes) == 2
    box.take(clock.s)
    box.add({"a": 1.0})
    assert len(wakes) == 3


def test_bad_input_is_a_value_error_and_the_call_stores_nothing() -> None:
    clock = Clock()
    box = make(clock)
    box.add({"good": 1.0})
    bad: list[tuple[Any, Any, str]] = [
        ({"good": 2.0, "bad name!": 1.0}, None, "metric name 'bad name!'"),
        ({"good": 2.0, "x": "1.5"}, None, "value must be a real number"),
        ([("a", 1.0)], None, "metrics must be a mapping"),
        ({"good": 2.0}, -1, "step must be a non-negative integer"),
        ({"good": 2.0}, 1.5, "step must be a non-negative integer"),
        ({"good": 2.0}, True, "step must be a non-negative integer"),
        ({"good": 2.0}, 2**63, "int64"),
    ]
    for metrics, step, message in bad:
        with pytest.raises(ConfigurationError, match=message):
            box.add(metrics, step)
    taken = box.take(clock.s)
    assert taken is not None and points(taken[0]) == [("good", 0, 1.0)]


def test_steps_are_int64_and_default_steps_never_pass_it() -> None:
    clock = Clock()
    box = make(clock)
    with pytest.raises(ConfigurationError, match="int64"):
        box.add({"a": 1.0}, step=INT64_MAX)  # the aggregator's marker for "every step"
    assert box.add({"a": 1.0}, step=STEP_MAX)
    assert box.add({"a": 1.0}, step=np.int64(STEP_MAX))  # numpy integers too
    with pytest.raises(ConfigurationError, match=r"default step .* past the largest int64 step"):
        box.add({"a": 2.0})
    taken = box.take(clock.s)
    assert taken is not None and taken[0].step.tolist() == [STEP_MAX, STEP_MAX]


def test_default_step_follows_the_highest_step_so_far() -> None:
    clock = Clock()
    box = make(clock)
    box.add({"a": 1.0}, step=10)
    box.add({"a": 1.0}, step=3)  # lower steps are accepted (a second task of a sweep, a restart)
    box.add({"a": 1.0})
    taken = box.take(clock.s)
    assert taken is not None and taken[0].step.tolist() == [10, 3, 11]


def test_dropped_calls_still_advance_the_default_step() -> None:
    clock = Clock()
    box = make(clock, max_points=4, batch_points=2)
    assert box.add({"a": 1.0, "b": 1.0})  # step 0
    assert box.add({"a": 1.0, "b": 1.0})  # step 1: the buffer is full
    assert not box.add({"a": 2.0, "b": 2.0})  # step 2: dropped
    assert (box.dropped_points, dict(box.dropped)) == (2, {"a": 1, "b": 1})
    taken = box.take(clock.s)
    assert taken is not None
    box.sent(taken[1])  # room again: the rank takes points once the buffer is half empty
    assert box.add({"a": 3.0, "b": 3.0})
    taken = box.take(clock.s)
    assert taken is not None and taken[0].step.tolist() == [3, 3]


def test_drop_mode_keeps_dropping_until_half_empty() -> None:
    clock = Clock()
    box = make(clock, max_points=4, batch_points=2)
    box.add({"a": 1.0, "b": 1.0})
    box.add({"a": 1.0, "b": 1.0})
    assert not box.add({"a": 1.0})
    taken = box.take(clock.s)
    assert taken is not None
    box.sent(1)  # 3 still queued: more than half of 4
    assert not box.add({"a": 1.0})
    box.sent(3)
    assert box.add({"a": 1.0})
    assert box.dropped_points == 2


def test_block_mode_waits_for_room() -> None:
    clock = Clock()
    box = make(clock, max_points=4, batch_points=2, overflow="block", overflow_timeout=60.0)
    box.add({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0})
    taken = box.take(clock.s)
    assert taken is not None
    result: list[bool] = []
    caller = threading.Thread(target=lambda: result.append(box.add({"a": 2.0})))
    caller.start()
    caller.join(0.05)
    assert caller.is_alive()  # waiting for room
    box.sent(4)
    caller.join(10)
    assert result == [True] and box.dropped_points == 0


def test_block_mode_gives_up_after_the_timeout_and_then_drops_at_once() -> None:
    clock = Clock()
    box = make(clock, max_points=4, batch_points=2, overflow="block", overflow_timeout=0.0)
    box.add({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0})
    assert not box.add({"a": 2.0})
    assert not box.add({"a": 2.0})
    assert box.dropped == {"a": 2}


def test_abort_raises_on_every_call() -> None:
    clock = Clock()
    box = make(clock)
    box.abort("alert 'x' fired")
    for _ in range(2):
        with pytest.raises(RunAborted, match="the run was aborted: alert 'x' fired"):
            box.add({"a": 1.0})


def test_a_stopped_run_raises_once_then_drops_and_counts() -> None:
    clock = Clock()
    box = make(clock)
    box.add({"a": 1.0})
    cause = OverflowError("boom")
    error = ReporterDied("the sending thread failed")
    error.__cause__ = cause
    box.stop(error)
    with pytest.raises(ReporterDied) as info:
        box.add({"a": 2.0})
    assert info.value.__cause__ is cause
    assert not box.add({"a": 3.0, "b": 3.0})
    assert not box.add({"a": 3.0})
    assert box.dropped_calls == 2 and box.dropped == {"a": 2, "b": 1}
    assert box.stopped_here()  # raised once already: later checks say "drop"


def test_closed_outbox_refuses_calls() -> None:
    clock = Clock()
    box = make(clock)
    box.close()
    with pytest.raises(SimvueHPCError, match="closed"):
        box.add({"a": 1.0})


def test_many_names_are_sent_as_the_used_subset() -> None:
    clock = Clock()
    box = make(clock, max_points=1000, batch_points=1000)
    box.add({f"m{i}": float(i) for i in range(100)})
    box.take(clock.s)
    box.add({"m99": 1.0, "m5": 2.0})
    taken = box.take(clock.s)
    assert taken is not None
    batch = taken[0]
    assert sorted(batch.names) == ["m5", "m99"]
    assert points(batch) == [("m99", 1, 1.0), ("m5", 1, 2.0)]


def test_huge_ints_become_infinities() -> None:
    clock = Clock()
    box = make(clock)
    box.add({"a": 10**400, "b": -(10**400)})
    taken = box.take(clock.s)
    assert taken is not None and taken[0].value.tolist() == [float("inf"), float("-inf")]


def test_every_fires_once_per_period() -> None:
    timer = Every(5.0, 100.0)
    assert not timer.due(104.9)
    assert timer.due(105.0)
    assert not timer.due(105.1)
    assert timer.at == 110.0
