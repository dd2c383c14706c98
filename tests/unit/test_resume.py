"""Acknowledgements and resending across an aggregator's restart, driven with an injected clock.

The rank's :class:`ResendBuffer` keeps what an ACK has not covered; the aggregator's state acknowledges a
link only up to messages whose points are in steps stored as final, and a restarted aggregator drops the
resent points of steps its predecessor stored. No sockets, no sleeping.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from simvue_hpc.aggregator.reduce import Reduction
from simvue_hpc.aggregator.resume import ACK_INTERVAL, AckTracker, batch_tops, drop_stored, stored_through
from simvue_hpc.protocol import Ack, Event, Heartbeat, Hello, MetricBatch, decode, encode
from simvue_hpc.resend import ResendBuffer, resendable
from tests.unit.test_state import Harness, ident, stored

INT64_MIN = int(np.iinfo(np.int64).min)


def batch(points: list[tuple[str, int, float]]) -> MetricBatch:
    names = sorted({p[0] for p in points})
    n = len(points)
    return MetricBatch(
        names,
        np.array([names.index(p[0]) for p in points], dtype=np.uint32),
        np.array([p[1] for p in points], dtype=np.int64),
        np.full(n, 7, dtype=np.int64),
        np.array([p[2] for p in points], dtype=np.float64),
    )


# --------------------------------------------------------------------------------------------- the rank's buffer
def test_the_buffer_forgets_only_what_an_ack_covers() -> None:
    buf = ResendBuffer(100)
    for seq in range(1, 6):
        buf.add(seq, batch([("x", seq, 1.0)]), 10)
    assert buf.ack(3) == 30 and buf.points == 20 and buf.acked_points == 30
    assert buf.ack(3) == 0  # a repeated ACK frees nothing
    held = buf.take()
    assert [int(m.step[0]) for m, _ in held] == [4, 5] and [p for _, p in held] == [10, 10]  # type: ignore[attr-defined]
    assert len(buf) == 0 and buf.points == 0


def test_the_buffer_acks_across_the_sequence_wrap() -> None:
    buf = ResendBuffer(100)
    for seq in (0xFFFFFFFE, 0xFFFFFFFF, 0, 1):
        buf.add(seq, Event("e", 1), 0)
    buf.ack(0)  # covers the two before the wrap and 0, not 1
    assert len(buf) == 1
    buf.ack(0xFFFFFFFF)  # an older ACK arriving late covers nothing more
    assert len(buf) == 1


def test_passing_the_bound_forgets_the_oldest_and_counts_them() -> None:
    buf = ResendBuffer(25)
    notices = [buf.add(seq, batch([("x", seq, 1.0)]), 10) for seq in range(1, 5)]
    assert notices[:2] == [None, None] and notices[3] is None  # reported once, when first passed
    assert notices[2] is not None and "resend_buffer_points" in notices[2]
    assert buf.forgotten_points == 20 and buf.forgotten_messages == 2 and buf.points == 20
    events = ResendBuffer(3)
    for seq in range(5):
        events.add(seq, Event("e", 1), 0)  # a message without points costs one
    assert len(events) == 3 and events.forgotten_messages == 2


def test_what_is_resent() -> None:
    assert resendable(batch([("x", 1, 1.0)])) and resendable(Event("e", 1))
    assert not resendable(Heartbeat(1, 0, 0))
    with pytest.raises(ValueError, match="resend_buffer_points"):
        ResendBuffer(0)


def test_hello_and_ack_on_the_wire() -> None:
    plain = Hello("s", 1, 2, "h", 3, "c")
    assert b"resume" not in bytes(encode(plain, 0)[1])  # defaults are not sent: old HELLOs are unchanged
    resumed = Hello("s", 1, 2, "h", 3, "c", resend=True, resume=True, acked_points=12)
    assert decode(encode(resumed, 0)) == (0, resumed)
    assert decode(encode(Ack(41), 9)) == (9, Ack(41))


# --------------------------------------------------------------------------------------------- the aggregator's side
def test_a_batch_is_acknowledged_once_every_metric_of_it_is_final_up_to_its_steps() -> None:
    final: dict[str, int] = {"x": INT64_MIN, "y": INT64_MIN}
    acks = AckTracker(interval=1.0)
    acks.watch(b"r", 0)
    acks.received(b"r", 1, batch([("x", 0, 1.0), ("y", 2, 1.0)]))
    acks.received(b"r", 2, None)  # an event: stored when applied
    acks.received(b"r", 3, batch([("x", 1, 1.0)]))
    assert acks.due(0.0, final.__getitem__) == [(b"r", 0)]  # only the HELLO
    final["x"] = 5
    assert acks.due(0.5, final.__getitem__) == []  # not before the interval
    assert acks.due(1.0, final.__getitem__) == []  # y's step 2 is not final: nothing moved
    final["y"] = 2
    assert acks.due(2.0, final.__getitem__) == [(b"r", 3)]
    assert acks.due(3.0, final.__getitem__) == []  # sent once
    acks.forget(b"r")
    acks.received(b"r", 4, None)
    assert acks.due(4.0, final.__getitem__) == []


def test_steps_at_the_int64_limits_do_not_hold_a_batch_back() -> None:
    top = int(np.iinfo(np.int64).max)
    assert batch_tops(batch([("x", top, 1.0), ("x", 3, 1.0), ("y", INT64_MIN, 1.0)])) == {"x": 3}


def test_stored_through_follows_the_stored_names() -> None:
    final = {"x": 4, "x.min": 4, "z": 9, "p/rank_1": 7}
    assert stored_through("x", 0, Reduction(), final) == 4
    assert stored_through("z", 0, Reduction(("sum",)), final) == 9  # one rank: stored under its own name
    per_rank = Reduction((), per_rank=True)
    assert stored_through("p", 1, per_rank, final) == 7 and stored_through("p", 2, per_rank, final) == INT64_MIN
    assert stored_through("new", 0, Reduction(), final) == INT64_MIN


def test_resent_points_already_stored_are_dropped() -> None:
    resent = batch([("x", 3, 1.0), ("x", 4, 2.0), ("x", 5, 3.0), ("y", 0, 4.0)])
    kept, dropped = drop_stored(resent, 0, lambda name: Reduction(), {"x": 4})
    assert dropped == 2
    assert kept.step.tolist() == [5, 0] and kept.value.tolist() == [3.0, 4.0]
    same, none = drop_stored(resent, 0, lambda name: Reduction(), {})
    assert same is resent and none == 0


# --------------------------------------------------------------------------------------------- the state machine
def _acks(h: Harness) -> dict[bytes, int]:
    out = h.state.acks(h.now)
    h.actions.extend(out)
    return {identity: m.seq for identity, m in ((a.identity, a.message) for a in out) if isinstance(m, Ack)}  # type: ignore[attr-defined]


def _hello(h: Harness, rank: int, **kw: Any) -> None:
    h.hello(rank, resend=True, **kw)


def test_the_state_acknowledges_a_rank_only_up_to_what_is_stored() -> None:
    h = Harness(expected_ranks=2)
    _hello(h, 0)
    h.hello(1)  # a rank that did not ask for ACKs (the C client) gets none
    assert _acks(h) == {ident(0): 0}
    h.log(0, [("x", 0, 1.0)])  # seq 1
    h.log(1, [("x", 0, 3.0)])
    h.log(0, [("x", 1, 1.0)])  # seq 2
    h.tick()
    h.now += ACK_INTERVAL
    assert _acks(h) == {}  # step 0 is not final: rank 1 has not passed it
    h.log(1, [("x", 1, 3.0)])
    h.tick()
    h.now += ACK_INTERVAL
    assert _acks(h) == {ident(0): 1}  # step 0 stored; step 1 waits for both ranks to pass it
    assert stored(h.actions)[("x", 0)] == 2.0


def test_a_restarted_state_drops_what_was_stored_and_knows_who_closed() -> None:
    h = Harness(expected_ranks=3)
    h.state.resume({"x": 1, "x.min": 1, "x.max": 1}, {2: "closed", 0: "joined"}, h.now)
    _hello(h, 0, resume=True, acked_points=4)
    _hello(h, 1, resume=True, acked_points=4)
    for rank in (0, 1):
        h.log(rank, [("x", 1, 5.0), ("x", 2, 10.0 + rank)])  # step 1 resent, already stored
    h.tick()
    for rank in (0, 1):
        h.goodbye(rank)  # rank 2 closed before the restart: nobody waits for it
    h.tick()
    assert h.state.counters["points_already_stored"] == 2
    values = stored(h.actions)
    assert ("x", 1) not in values and values[("x", 2)] == 10.5
    assert h.state.finished
    assert h.state._roster.by_identity[ident(0)].received_points == 6  # acked before + resent
