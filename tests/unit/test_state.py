"""Tests of the aggregator's sans-I/O state machine, driven with an injected clock: no sockets, no sleeping."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import fields
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simvue_hpc import protocol as p
from simvue_hpc.aggregator.actions import Action, Append, AppendMetrics, FileDiscard, FileWrite, Finish, Reply
from simvue_hpc.aggregator.reduce import Reduction
from simvue_hpc.aggregator.state import AggregatorConfig, AggregatorState
from simvue_hpc.alerts import metric_alert, user_alert
from simvue_hpc.config import HPCSettings
from simvue_hpc.store import RecordType
from tests.helpers import OWN_METRICS

SECRET = "s3cret"
SETTINGS = {f.name for f in fields(HPCSettings)}
WALL0 = 1_700_000_000_000_000_000
SHA = "a" * 64
SHA2 = "b" * 64


# --------------------------------------------------------------------------------------------- harness
class Harness:
    """One AggregatorState, a fake monotonic clock and a fake wall clock; every action is kept."""

    def __init__(self, **config: Any) -> None:
        config.setdefault("expected_ranks", 2)
        timing = {k: config.pop(k) for k in list(config) if k in SETTINGS}
        self.now = 100.0
        self.wall = WALL0
        self.state = AggregatorState(
            AggregatorConfig(
                run_id="run-1", run_name="the-run", secret=SECRET, settings=HPCSettings(**timing), **config
            ),
            self.now,
            wall_ns=self._wall,
        )
        self.seq: dict[bytes, int] = {}
        self.names: dict[bytes, list[str]] = defaultdict(list)
        self.actions: list[Action] = []

    def _wall(self) -> int:
        self.wall += 1000
        return self.wall

    # --- driving
    def send(self, who: bytes, msg: p.Message, seq: int | None = None) -> list[Action]:
        if seq is None:
            seq = self.seq.get(who, 0)
        self.seq[who] = seq + 1
        out = self.state.handle(who, seq, msg, self.now)
        self.actions.extend(out)
        return out

    def hello(self, rank: int, who: bytes | None = None, secret: str = SECRET, **kw: Any) -> list[Action]:
        who = ident(rank) if who is None else who
        kw.setdefault("size", self.state.config.expected_ranks or 1)
        self.seq[who] = 0
        return self.send(who, p.Hello(secret=secret, rank=rank, host=f"node{rank}", pid=1000 + rank, client="t", **kw))

    def log(self, who: bytes | int, points: list[tuple[str, int, float]]) -> list[Action]:
        """One METRICS message of (name, step, value) points, names listed as the worker does (all so far)."""
        who = ident(who) if isinstance(who, int) else who
        names = self.names[who]
        for name, _, _ in points:
            if name not in names:
                names.append(name)
        n = len(points)
        batch = p.MetricBatch(
            names=list(names),
            name_id=np.array([names.index(p[0]) for p in points], dtype=np.uint32),
            step=np.array([p[1] for p in points], dtype=np.int64),
            time_ns=np.array([WALL0 + 1000 * (p[1] if abs(p[1]) < 2**40 else 0) + 7 for p in points]).reshape(n),
            value=np.array([p[2] for p in points], dtype=np.float64).reshape(n),
        )
        return self.send(who, batch)

    def goodbye(self, who: bytes | int, sent: int | None = None, dropped: dict[str, int] | None = None) -> list[Action]:
        who = ident(who) if isinstance(who, int) else who
        peer = self.state._roster.by_identity[who]
        sent = peer.received_points if sent is None else sent
        dropped = dropped or {}
        return self.send(who, p.Goodbye(sent, sum(dropped.values()), dropped))

    def tick(self, dt: float = 0.0) -> list[Action]:
        self.now += dt
        out = self.state.tick(self.now)
        self.actions.extend(out)
        return out

    def file_done(self, sha: str, ok: bool, reason: str = "") -> list[Action]:
        out = self.state.file_done(sha, ok, reason)
        self.actions.extend(out)
        return out


def ident(rank: int) -> bytes:
    return b"\x00id-%d" % rank


def replies(actions: list[Action], who: bytes | int | None = None) -> list[p.Message]:
    who = ident(who) if isinstance(who, int) else who
    return [a.message for a in actions if isinstance(a, Reply) and (who is None or a.identity == who)]


def records(actions: list[Action], rtype: RecordType) -> list[dict[str, Any]]:
    return [a.payload for a in actions if isinstance(a, Append) and a.type == rtype]


def events(actions: list[Action], level: str | None = None) -> list[str]:
    return [p["message"] for p in records(actions, RecordType.EVENT) if level is None or p["level"] == level]


def stored(actions: list[Action], late: bool | None = False) -> dict[tuple[str, int], float]:
    """(name, step) -> value over every AppendMetrics (of the given lateness); a key may appear only once."""
    out: dict[tuple[str, int], float] = {}
    for a in actions:
        if isinstance(a, AppendMetrics) and a.names[0].startswith(OWN_METRICS):
            continue  # the aggregator's own series (live ranks, resources) are tested on their own
        if isinstance(a, AppendMetrics) and (late is None or a.late == late):
            assert len(a.name_id) == len(a.step) == len(a.time_us) == len(a.value)
            assert a.name_id.dtype == np.uint32
            for i, s, v in zip(a.name_id.tolist(), a.step.tolist(), a.value.tolist(), strict=True):
                key = (a.names[i], s)
                assert key not in out, f"{key} stored twice"
                out[key] = v
    return out


def metric_actions(actions: list[Action]) -> list[AppendMetrics]:
    return [a for a in actions if isinstance(a, AppendMetrics) and not a.names[0].startswith(OWN_METRICS)]


def finishes(actions: list[Action]) -> list[str]:
    return [a.status for a in actions if isinstance(a, Finish)]


def joined(h: Harness, *ranks: int) -> None:
    for r in ranks:
        out = h.hello(r)
        assert replies(out, r) == [p.Welcome(r, "run-1", "the-run")]


# --------------------------------------------------------------------------------------------- handshake
def test_hello_welcomes_and_records_the_rank() -> None:
    h = Harness()
    out = h.hello(0)
    assert replies(out) == [p.Welcome(0, "run-1", "the-run")]
    (rank,) = records(out, RecordType.RANK)
    assert rank == {"rank": 0, "host": "node0", "pid": 1000, "state": "joined", "time_us": (WALL0 + 1000) // 1000}
    assert h.state.ranks() == {0: "live"}


def test_welcome_shares_the_message_rate_budget_among_the_ranks() -> None:
    h = Harness(expected_ranks=4096, message_rate_budget=20_000.0)
    (msg,) = replies(h.hello(17))
    assert isinstance(msg, p.Welcome) and msg.flush_interval == pytest.approx(4096 / 20_000)
    small = Harness(expected_ranks=8)  # 8 ranks at the default interval stay far below the budget
    (msg,) = replies(small.hello(0))
    assert isinstance(msg, p.Welcome) and msg.flush_interval == 0.0
    pool = Harness(expected_ranks=None, message_rate_budget=100.0)  # ranks come and go: those live now
    intervals = []
    for k in range(5):
        (msg,) = replies(pool.hello(-1, who=b"w%d" % k))
        assert isinstance(msg, p.Welcome)
        intervals.append(msg.flush_interval)
    assert intervals == pytest.approx([0.0, 0.0, 0.03, 0.04, 0.05])


def test_the_process_identity_of_a_local_rank_is_kept() -> None:
    h = Harness()
    h.hello(0, start_time=12345, pid_ns=4026531836)
    h.hello(1)
    assert h.state.live_pids_on("node0") == {ident(0): (1000, 12345, 4026531836)}
    assert h.state.live_pids_on("node1") == {ident(1): (1001, 0, 0)}


def test_hello_with_the_wrong_secret_is_rejected() -> None:
    h = Harness()
    out = h.hello(0, secret="guess")
    assert len(out) == 1
    (msg,) = replies(out, 0)
    assert isinstance(msg, p.Reject) and "secret" in msg.reason
    assert h.state.ranks() == {}
    # the rejected identity cannot send data either
    out = h.log(0, [("a", 0, 1.0)])
    assert [type(m) for m in replies(out, 0)] == [p.Reject]
    assert h.state.counters["points_received"] == 0


def test_duplicate_live_rank_is_rejected() -> None:
    h = Harness()
    joined(h, 0)
    out = h.hello(0, who=b"other")
    (msg,) = replies(out, b"other")
    assert isinstance(msg, p.Reject) and "already connected" in msg.reason and "node0" in msg.reason
    assert records(out, RecordType.RANK) == []
    assert h.state.ranks() == {0: "live"}


def test_a_rank_whose_holder_is_lost_may_join_again_from_a_new_identity() -> None:
    h = Harness(rank_timeout=5.0)
    joined(h, 0, 1)
    h.tick(6.0)
    assert h.state.ranks() == {0: "lost", 1: "lost"}
    out = h.hello(1, who=b"new")
    assert replies(out, b"new") == [p.Welcome(1, "run-1", "the-run")]


def test_same_identity_saying_hello_again_is_welcomed() -> None:
    h = Harness()
    joined(h, 0)
    out = h.hello(0)
    assert replies(out, 0) == [p.Welcome(0, "run-1", "the-run")]
    assert h.state.ranks() == {0: "live"}


def test_rank_minus_one_is_given_a_rank_past_the_world() -> None:
    h = Harness(expected_ranks=4)
    joined(h, 0, 1, 2, 3)
    got = [replies(h.hello(-1, who=b"w%d" % i))[0] for i in range(3)]
    assert [m.rank for m in got if isinstance(m, p.Welcome)] == [4, 5, 6]
    assert set(h.state.ranks()) == {0, 1, 2, 3, 4, 5, 6}


def test_rank_minus_one_before_the_world_joined_still_avoids_world_ranks() -> None:
    h = Harness(expected_ranks=4)
    out = h.hello(-1, who=b"w")
    (msg,) = replies(out)
    assert isinstance(msg, p.Welcome) and msg.rank >= 4


def test_rank_minus_one_in_a_pool_counts_from_one() -> None:
    h = Harness(expected_ranks=None)
    joined(h, 0)
    got = [replies(h.hello(-1, who=b"w%d" % i))[0] for i in range(3)]
    assert [m.rank for m in got if isinstance(m, p.Welcome)] == [1, 2, 3]
    h2 = Harness(expected_ranks=None)
    (msg,) = replies(h2.hello(-1, who=b"first"))
    assert isinstance(msg, p.Welcome) and msg.rank == 1


def test_messages_before_hello_get_one_reject() -> None:
    h = Harness()
    out = []
    out += h.log(0, [("a", 0, 1.0)])
    out += h.send(ident(0), p.Heartbeat(1, 0, 0))
    out += h.send(ident(0), p.Event("x", 1))
    msgs = replies(out, 0)
    assert len(msgs) == 1 and isinstance(msgs[0], p.Reject) and "HELLO" in msgs[0].reason
    assert records(out, RecordType.EVENT) == []
    # a hello afterwards is welcomed, and a later stray identity gets its own reject
    assert replies(h.hello(0), 0) == [p.Welcome(0, "run-1", "the-run")]
    assert len(replies(h.send(b"stray", p.Heartbeat(1, 0, 0)))) == 1


def test_protocol_error_from_unknown_peer_is_rejected_and_from_a_rank_is_recorded() -> None:
    h = Harness()
    out = h.state.protocol_error(b"who", "bad magic", h.now)
    assert replies(out) == [p.Reject("bad magic")]
    joined(h, 0)
    out = h.state.protocol_error(ident(0), "truncated header", h.now)
    assert replies(out) == []
    assert any("truncated header" in e and "rank 0" in e for e in events(out, "warning"))
    assert h.state.counters["protocol_errors"] == 2


def test_aggregator_messages_from_a_rank_are_counted_as_errors() -> None:
    h = Harness()
    joined(h, 0)
    out = h.send(ident(0), p.GoodbyeAck(3))
    assert replies(out) == []
    assert events(out, "warning") == ["rank 0 on node0 sent GoodbyeAck, which ranks do not send"]
    assert h.send(ident(0), p.GoodbyeAck(4)) == []  # reported once a minute, counted each time
    assert h.state.counters["protocol_errors"] == 2


# --------------------------------------------------------------------------------------------- sequence numbers
def test_sequence_gap_is_recorded_as_lost_in_transit() -> None:
    h = Harness()
    joined(h, 0)
    assert events(h.send(ident(0), p.Heartbeat(1, 0, 0), seq=1)) == []
    out = h.send(ident(0), p.Heartbeat(2, 0, 0), seq=4)
    (msg,) = events(out, "warning")
    assert "2 message(s)" in msg and "rank 0" in msg and "lost in transit" in msg
    assert h.state.counters["messages_lost"] == 2
    assert events(h.send(ident(0), p.Heartbeat(3, 0, 0), seq=5)) == []
    assert h.state.counters["messages_lost"] == 2


def test_sequence_wraps_around_without_a_gap() -> None:
    h = Harness()
    h.seq[ident(0)] = 2**32 - 2
    h.send(ident(0), p.Hello(SECRET, 0, 2, "node0", 1, "t"), seq=2**32 - 2)
    assert events(h.send(ident(0), p.Heartbeat(1, 0, 0), seq=2**32 - 1)) == []
    assert events(h.send(ident(0), p.Heartbeat(1, 0, 0), seq=0)) == []
    assert events(h.send(ident(0), p.Heartbeat(1, 0, 0), seq=1)) == []
    out = h.send(ident(0), p.Heartbeat(1, 0, 0), seq=3)
    assert len(events(out, "warning")) == 1
    assert h.state.counters["messages_lost"] == 1


def test_gap_across_the_wraparound() -> None:
    h = Harness()
    h.send(ident(0), p.Hello(SECRET, 0, 2, "node0", 1, "t"), seq=2**32 - 2)
    out = h.send(ident(0), p.Heartbeat(1, 0, 0), seq=1)  # 2**32-1 and 0 went missing
    assert h.state.counters["messages_lost"] == 2
    assert len(events(out, "warning")) == 1


# --------------------------------------------------------------------------------------------- metrics
def test_single_rank_metric_is_stored_as_is() -> None:
    h = Harness(expected_ranks=1)
    joined(h, 0)
    h.log(0, [("loss", 0, 0.5), ("loss", 1, 0.25), ("loss", 2, 0.125)])
    out = h.tick()
    assert stored(out) == {("loss", 0): 0.5, ("loss", 1): 0.25}  # the newest step waits
    (append,) = metric_actions(out)
    assert append.names == ["loss"]
    assert append.time_us.tolist() == [(WALL0 + 7) // 1000, (WALL0 + 1007) // 1000]
    h.goodbye(0)
    out = h.tick()
    assert stored(out) == {("loss", 2): 0.125}
    assert finishes(out) == ["completed"]
    assert not any(name.endswith((".min", ".max")) for a in metric_actions(h.actions) for name in a.names)
    assert h.state.counters["points_stored"] == 3 == h.state.counters["points_received"]


def test_metric_of_one_rank_among_several_is_stored_as_is() -> None:
    h = Harness(expected_ranks=2)
    joined(h, 0, 1)
    h.log(0, [("loss", 0, 1.5), ("both", 0, 1.0)])
    h.log(1, [("both", 0, 3.0)])
    h.log(0, [("loss", 1, 2.5), ("both", 1, 1.0)])
    h.log(1, [("both", 1, 3.0)])
    h.tick()
    h.goodbye(0)
    h.goodbye(1)
    h.tick()
    assert stored(h.actions) == {
        ("loss", 0): 1.5,
        ("loss", 1): 2.5,
        **{(n, s): v for s in (0, 1) for n, v in (("both", 2.0), ("both.min", 1.0), ("both.max", 3.0))},
    }


def test_metric_of_several_ranks_is_stored_as_mean_min_max() -> None:
    h = Harness(expected_ranks=3)
    joined(h, 0, 1, 2)
    for r, v in ((0, 1.0), (1, 2.0), (2, 6.0)):
        h.log(r, [("x", 0, v), ("x", 1, 10 * v)])
    out = h.tick()
    assert stored(out) == {("x", 0): 3.0, ("x.min", 0): 1.0, ("x.max", 0): 6.0}
    (append,) = metric_actions(out)
    assert sorted(append.names) == ["x", "x.max", "x.min"]
    assert append.time_us.tolist() == [(WALL0 + 7) // 1000] * 3  # the latest time of the group
    for r in (0, 1, 2):
        h.goodbye(r)
    out = h.tick()
    assert stored(out) == {("x", 1): 30.0, ("x.min", 1): 10.0, ("x.max", 1): 60.0}
    assert finishes(out) == ["completed"]


def _two_ranks_log(h: Harness, name: str, values: tuple[float, float], steps: int = 2) -> None:
    joined(h, 0, 1)
    for s in range(steps):
        h.log(0, [(name, s, values[0] + s)])
        h.log(1, [(name, s, values[1] + s)])
    h.goodbye(0)
    h.goodbye(1)
    h.tick()


def test_custom_reductions_from_the_config() -> None:
    h = Harness(reductions={"x": Reduction.parse("x", ["sum", "std", "count"])})
    _two_ranks_log(h, "x", (1.0, 3.0))
    assert stored(h.actions) == {
        ("x", 0): 4.0,
        ("x.std", 0): 1.0,
        ("x.count", 0): 2.0,
        ("x", 1): 6.0,
        ("x.std", 1): 1.0,
        ("x.count", 1): 2.0,
    }


def test_per_rank_reduction() -> None:
    h = Harness(reductions={"x": Reduction.parse("x", "per_rank")})
    _two_ranks_log(h, "x", (1.0, 3.0))
    assert stored(h.actions) == {
        ("x/rank_0", 0): 1.0,
        ("x/rank_1", 0): 3.0,
        ("x/rank_0", 1): 2.0,
        ("x/rank_1", 1): 4.0,
    }


def test_per_rank_applies_to_a_single_rank_too() -> None:
    h = Harness(expected_ranks=1, reductions={"x": Reduction.parse("x", "per_rank")})
    joined(h, 0)
    h.log(0, [("x", 0, 1.0)])
    h.goodbye(0)
    h.tick()
    assert stored(h.actions) == {("x/rank_0", 0): 1.0}


def test_custom_reductions_from_the_hello() -> None:
    h = Harness()
    h.hello(0, reductions={"x": ["max", "sum"], "y": ["per_rank"]})
    joined(h, 1)
    for s in range(2):
        h.log(0, [("x", s, 1.0), ("y", s, 5.0)])
        h.log(1, [("x", s, 3.0), ("y", s, 7.0)])
    h.goodbye(0)
    h.goodbye(1)
    h.tick()
    got = stored(h.actions)
    assert {k: v for k, v in got.items() if k[1] == 0} == {
        ("x", 0): 3.0,
        ("x.sum", 0): 4.0,
        ("y/rank_0", 0): 5.0,
        ("y/rank_1", 0): 7.0,
    }


def test_hello_reductions_override_the_config_before_the_metric_is_stored() -> None:
    h = Harness(reductions={"x": Reduction.parse("x", "sum")})
    joined(h, 0)
    h.log(0, [("x", 0, 1.0)])
    h.hello(1, reductions={"x": ["min"]})
    h.log(1, [("x", 0, 3.0)])
    h.goodbye(0)
    h.goodbye(1)
    h.tick()
    assert stored(h.actions) == {("x", 0): 1.0}


def test_invalid_hello_reductions_are_ignored_with_a_warning() -> None:
    h = Harness()
    out = h.hello(0, reductions={"x": ["median"], "y": ["sum"]})
    assert replies(out, 0) == [p.Welcome(0, "run-1", "the-run")]
    (msg,) = events(out, "warning")
    assert "ignored reduction" in msg and "'x'" in msg and "median" in msg
    joined(h, 1)
    for r in (0, 1):
        h.log(r, [("x", 0, 1.0 + r), ("y", 0, 1.0 + r)])
        h.goodbye(r)
    h.tick()
    assert stored(h.actions) == {("x", 0): 1.5, ("x.min", 0): 1.0, ("x.max", 0): 2.0, ("y", 0): 3.0}


# --------------------------------------------------------------------------------------------- when a step is final
def test_a_step_is_final_once_every_contributor_is_past_it() -> None:
    h = Harness()
    joined(h, 0, 1)
    h.log(0, [("a", 0, 1.0)])
    h.log(1, [("a", 0, 3.0)])
    assert stored(h.tick()) == {}  # the newest step waits: a rank may still send more of it
    h.log(0, [("a", 1, 1.0)])
    assert stored(h.tick()) == {}  # rank 1 has not moved past step 0 yet
    h.log(1, [("a", 1, 5.0)])
    assert stored(h.tick()) == {("a", 0): 2.0, ("a.min", 0): 1.0, ("a.max", 0): 3.0}
    assert stored(h.tick()) == {}  # emitted once
    h.log(0, [("a", 2, 0.0)])
    assert stored(h.tick()) == {}
    h.log(1, [("b", 7, 0.0)])  # another metric moves rank 1 on too
    assert stored(h.tick()) == {("a", 1): 3.0, ("a.min", 1): 1.0, ("a.max", 1): 5.0}
    assert stored(h.actions, late=True) == {}


def test_points_of_one_step_in_several_messages_are_reduced_together() -> None:
    h = Harness()
    joined(h, 0, 1)
    h.log(0, [("a", 0, 1.0)])
    h.log(0, [("b", 0, 1.0)])
    h.log(1, [("a", 0, 3.0), ("b", 0, 4.0)])
    h.tick()
    h.log(0, [("a", 1, 0.0), ("b", 1, 0.0)])
    h.log(1, [("a", 1, 0.0), ("b", 1, 0.0)])
    out = h.tick()
    assert stored(out) == {
        ("a", 0): 2.0,
        ("a.min", 0): 1.0,
        ("a.max", 0): 3.0,
        ("b", 0): 2.5,
        ("b.min", 0): 1.0,
        ("b.max", 0): 4.0,
    }
    assert len(metric_actions(out)) == 1


def test_nothing_is_final_until_every_expected_rank_joined() -> None:
    h = Harness(expected_ranks=4, step_timeout=10.0)
    joined(h, 0, 1)
    for r in (0, 1):
        h.log(r, [("a", s, float(r)) for s in range(3)])
    assert stored(h.tick()) == {}
    assert stored(h.tick(5.0)) == {}
    joined(h, 2, 3)
    assert stored(h.tick()) == {}  # ranks 2 and 3 have not logged "a" yet
    for r in (2, 3):
        h.log(r, [("a", s, float(r)) for s in range(2)])
    out = h.tick()
    assert stored(out) == {("a", 0): 1.5, ("a.min", 0): 0.0, ("a.max", 0): 3.0}
    assert stored(h.actions, late=True) == {}


def test_step_timeout_forces_steps_out_and_later_points_are_late() -> None:
    h = Harness(expected_ranks=4, step_timeout=10.0, rank_timeout=1000.0)
    joined(h, 0, 1)
    for r in (0, 1):
        h.log(r, [("a", 0, 1.0 + r), ("a", 1, 5.0 + r)])
    assert stored(h.tick(9.0)) == {}
    out = h.tick(1.0)  # step_timeout since the points arrived: forced out, newest step included
    assert stored(out) == {
        ("a", 0): 1.5,
        ("a.min", 0): 1.0,
        ("a.max", 0): 2.0,
        ("a", 1): 5.5,
        ("a.min", 1): 5.0,
        ("a.max", 1): 6.0,
    }
    joined(h, 2, 3)
    h.log(2, [("a", 0, 10.0)])
    h.log(3, [("a", 0, 20.0), ("a", 2, 0.0)])
    out = h.tick()
    late = [a for a in metric_actions(out) if a.late]
    assert len(late) == 1
    assert stored(out, late=True) == {("a", 0): 15.0, ("a.min", 0): 10.0, ("a.max", 0): 20.0}
    assert h.state.counters["late_points"] == 2
    for r in range(4):
        h.goodbye(r)
    out = h.tick()
    assert stored(out) == {("a", 2): 0.0, ("a.min", 2): 0.0, ("a.max", 2): 0.0}
    assert finishes(out) == ["completed"]
    (end,) = records(out, RecordType.END)
    assert end["counters"]["late_points"] == 2
    assert end["counters"]["points_received"] == 7


def test_a_late_point_of_a_single_rank_metric_is_stored_raw_and_late() -> None:
    h = Harness(expected_ranks=1, step_timeout=10.0)
    joined(h, 0)
    h.log(0, [("a", 5, 1.0)])
    assert stored(h.tick(10.0)) == {("a", 5): 1.0}
    h.log(0, [("a", 3, 2.0)])  # steps went backwards: step 3 is already final
    out = h.tick()
    assert stored(out, late=True) == {("a", 3): 2.0}
    assert h.state.counters["late_points"] == 1


def test_a_single_rank_metric_waits_for_step_timeout_while_other_ranks_are_live() -> None:
    h = Harness(step_timeout=10.0)
    joined(h, 0, 1)
    h.log(0, [("loss", 0, 1.0), ("loss", 1, 2.0)])
    h.log(1, [("other", 0, 1.0)])
    assert stored(h.tick(5.0)) == {}
    assert stored(h.tick(5.0)) == {("loss", 0): 1.0, ("loss", 1): 2.0, ("other", 0): 1.0}


def test_metric_of_a_closed_rank_waits_for_ranks_that_may_still_log_it() -> None:
    """A rank that closed must not make the metric final while other live ranks have not logged it yet."""
    h = Harness(step_timeout=10.0)
    joined(h, 0, 1)
    h.log(0, [("a", 0, 1.0)])
    h.goodbye(0)
    h.tick()
    h.log(1, [("a", 0, 3.0)])
    h.goodbye(1)
    h.tick()
    assert stored(h.actions, late=True) == {}
    assert stored(h.actions) == {("a", 0): 2.0, ("a.min", 0): 1.0, ("a.max", 0): 3.0}


# --------------------------------------------------------------------------------------------- lost ranks
def test_a_silent_rank_is_lost_and_stops_holding_steps_back() -> None:
    h = Harness(step_timeout=1000.0, rank_timeout=5.0, close_timeout=1000.0)
    joined(h, 0, 1)
    h.log(0, [("a", 0, 1.0)])
    h.log(1, [("a", 0, 3.0)])
    h.tick(3.0)
    h.log(0, [("a", 1, 2.0), ("a", 2, 2.0)])
    assert stored(h.tick()) == {}
    out = h.tick(3.0)  # rank 1 silent for 6 s, rank 0 for 3 s
    (rank,) = records(out, RecordType.RANK)
    assert rank["rank"] == 1 and rank["state"] == "lost"
    (msg,) = events(out, "warning")
    assert "rank 1" in msg and "lost" in msg
    assert h.state.ranks() == {0: "live", 1: "lost"}
    assert stored(out) == {
        ("a", 0): 2.0,
        ("a.min", 0): 1.0,
        ("a.max", 0): 3.0,
        ("a", 1): 2.0,
        ("a.min", 1): 2.0,
        ("a.max", 1): 2.0,
    }
    # a lost rank that speaks again is recorded back; its old steps are late
    out = h.log(1, [("a", 1, 4.0)])
    (rank,) = records(out, RecordType.RANK)
    assert rank["rank"] == 1 and rank["state"] == "joined" and rank["returned"] is True
    assert any("rank 1" in e and "back" in e for e in events(out, "warning"))
    assert h.state.ranks() == {0: "live", 1: "live"}
    out = h.tick()
    assert stored(out, late=True) == {("a", 1): 4.0, ("a.min", 1): 4.0, ("a.max", 1): 4.0}


def test_heartbeats_keep_a_rank_alive() -> None:
    h = Harness(rank_timeout=5.0)
    joined(h, 0, 1)
    for _ in range(5):
        h.now += 4.0
        h.send(ident(0), p.Heartbeat(1, 0, 0))
        h.send(ident(1), p.Heartbeat(1, 0, 0))
        assert records(h.tick(), RecordType.RANK) == []
    assert h.state.ranks() == {0: "live", 1: "live"}


def test_losing_every_contributor_makes_its_steps_final() -> None:
    h = Harness(step_timeout=1000.0, rank_timeout=5.0, close_timeout=1000.0)
    joined(h, 0, 1)
    h.log(0, [("a", 0, 1.0)])
    h.log(1, [("a", 0, 3.0)])
    out = h.tick(6.0)
    assert h.state.ranks() == {0: "lost", 1: "lost"}
    assert stored(out) == {("a", 0): 2.0, ("a.min", 0): 1.0, ("a.max", 0): 3.0}


# --------------------------------------------------------------------------------------------- goodbye
def test_goodbye_is_acknowledged_and_recorded() -> None:
    h = Harness(host_rank=None)
    joined(h, 0, 1)
    h.log(1, [("a", 0, 1.0), ("a", 1, 1.0)])
    h.log(1, [("a", 2, 1.0)])
    out = h.send(ident(1), p.Goodbye(3, 0, {}))
    assert replies(out, 1) == [p.GoodbyeAck(3)]
    (rank,) = records(out, RecordType.RANK)
    assert rank["rank"] == 1 and rank["state"] == "closed"
    assert rank["sent_points"] == 3 and rank["received_points"] == 3 and rank["dropped_points"] == 0
    assert events(out) == []
    assert h.state.ranks() == {0: "live", 1: "closed"}
    assert not h.state.closing


def test_goodbye_reporting_drops_records_a_warning() -> None:
    h = Harness(host_rank=None)
    joined(h, 0)
    h.log(0, [("a", 0, 1.0)])
    out = h.send(ident(0), p.Goodbye(1, 5, {"loss": 3, "acc": 2}))
    assert replies(out, 0) == [p.GoodbyeAck(1)]
    (msg,) = events(out, "warning")
    assert "dropped 5 point(s)" in msg and "loss: 3" in msg and "acc: 2" in msg
    assert h.state.counters["dropped_points"] == 5


def test_goodbye_with_a_mismatch_records_a_warning() -> None:
    h = Harness(host_rank=None)
    joined(h, 0)
    h.log(0, [("a", 0, 1.0), ("a", 1, 1.0)])
    out = h.send(ident(0), p.Goodbye(5, 0, {}))
    assert replies(out, 0) == [p.GoodbyeAck(2)]
    (msg,) = events(out, "warning")
    assert "sent 5 point(s)" in msg and "2 arrived" in msg


# --------------------------------------------------------------------------------------------- closing
def test_host_goodbye_starts_the_close_and_the_run_ends_when_all_closed() -> None:
    h = Harness(expected_ranks=3)
    joined(h, 0, 1, 2)
    h.log(1, [("a", 0, 1.0)])
    h.goodbye(0)
    assert h.state.closing
    assert finishes(h.tick(1.0)) == []
    h.goodbye(1)
    assert finishes(h.tick(1.0)) == []
    h.goodbye(2)
    out = h.tick()
    assert finishes(out) == ["completed"]
    assert h.state.finished
    (end,) = records(out, RecordType.END)
    assert end["status"] == "completed" and end["missing_ranks"] == [] and end["lost_ranks"] == []
    assert end["counters"]["points_received"] == 1
    assert stored(h.actions) == {("a", 0): 1.0}
    assert isinstance(out[-1], Finish)


def test_the_close_waits_for_close_timeout_then_records_missing_ranks() -> None:
    h = Harness(expected_ranks=3, close_timeout=5.0, rank_timeout=1000.0)
    joined(h, 0, 1)
    h.log(1, [("a", 0, 1.0), ("a", 1, 2.0)])
    h.goodbye(0)
    assert finishes(h.tick(4.9)) == []
    out = h.tick(0.1)
    assert finishes(out) == ["completed"]
    ranks = records(out, RecordType.RANK)
    assert {(r["rank"], r["state"]) for r in ranks} == {(1, "missing"), (2, "missing")}
    never = next(r for r in ranks if r["rank"] == 2)
    assert never["joined"] is False and never["host"] is None
    (end,) = records(out, RecordType.END)
    assert end["missing_ranks"] == [1, 2]
    assert any("rank(s) [1, 2]" in e for e in events(out, "warning"))
    assert stored(h.actions) == {("a", 0): 1.0, ("a", 1): 2.0}  # everything pending is stored


def test_expected_ranks_that_never_joined_hold_the_close_until_the_timeout() -> None:
    h = Harness(expected_ranks=2, close_timeout=5.0)
    joined(h, 0)
    h.goodbye(0)
    assert finishes(h.tick(1.0)) == []
    out = h.tick(4.0)
    assert finishes(out) == ["completed"]
    (end,) = records(out, RecordType.END)
    assert end["missing_ranks"] == [1]


def test_lost_ranks_are_recorded_at_the_end() -> None:
    h = Harness(rank_timeout=5.0, close_timeout=100.0)
    joined(h, 0, 1)
    h.goodbye(0)
    out = h.tick(6.0)
    assert finishes(out) == ["completed"]
    (end,) = records(out, RecordType.END)
    assert end["lost_ranks"] == [1] and end["missing_ranks"] == []


def test_begin_close_without_a_host_rank() -> None:
    h = Harness(expected_ranks=None, host_rank=None)
    joined(h, 0)
    h.goodbye(0)
    assert not h.state.closing
    assert finishes(h.tick(1.0)) == []
    h.state.begin_close(h.now)
    assert finishes(h.tick()) == ["completed"]


def test_status_failed_makes_the_run_failed() -> None:
    h = Harness()
    joined(h, 0, 1)
    out = h.send(ident(1), p.Status("failed", "ValueError: boom"))
    (status,) = records(out, RecordType.STATUS)
    assert status["status"] == "failed" and status["rank"] == 1 and status["reason"] == "ValueError: boom"
    h.goodbye(0)
    h.goodbye(1)
    out = h.tick()
    assert finishes(out) == ["failed"]
    (end,) = records(out, RecordType.END)
    assert end["status"] == "failed"


def test_finish_now_stores_everything_pending() -> None:
    h = Harness()
    joined(h, 0, 1)
    h.log(0, [("a", 0, 1.0)])
    out = h.state.finish_now(h.now)
    assert stored(out) == {("a", 0): 1.0}
    assert finishes(out) == ["completed"]
    assert h.state.finish_now(h.now) == []


def test_after_finish_every_message_is_rejected() -> None:
    h = Harness(expected_ranks=1)
    joined(h, 0)
    h.goodbye(0)
    h.tick()
    assert h.state.finished
    for msg in (
        p.Hello(SECRET, 1, 1, "n", 1, "t"),
        p.Heartbeat(1, 0, 0),
        p.Event("x", 1),
        p.Goodbye(0, 0),
        p.MetricBatch(["a"], np.zeros(1, np.uint32), np.zeros(1, np.int64), np.zeros(1, np.int64), np.ones(1)),
    ):
        for who in (ident(0), b"new"):
            out = h.state.handle(who, 9, msg, h.now)
            assert len(out) == 1 and isinstance(replies(out)[0], p.Reject)
    assert h.state.tick(h.now + 1000) == []
    assert h.state.finish_now(h.now) == []


# --------------------------------------------------------------------------------------------- other records
def test_event_run_update_folder_and_alert_records() -> None:
    h = Harness()
    joined(h, 0, 1)
    out = h.send(ident(1), p.Event("hello world", 12_345_678, "error"))
    assert records(out, RecordType.EVENT) == [
        {"message": "hello world", "time_us": 12_345, "rank": 1, "host": "node1", "level": "error"}
    ]
    assert h.state.counters["events"] == 1
    out = h.send(ident(0), p.RunUpdate(name="n", tags=["a"], metadata={"lr": 0.1}))
    assert records(out, RecordType.RUN_UPDATE) == [{"name": "n", "tags": ["a"], "metadata": {"lr": 0.1}}]
    assert h.send(ident(0), p.RunUpdate()) == []
    out = h.send(ident(0), p.FolderDetails("/p", tags=["t"]))
    assert records(out, RecordType.FOLDER) == [{"path": "/p", "metadata": None, "tags": ["t"], "description": None}]
    definition = metric_alert("al", "is above", "x", frequency=1, window=1, threshold=3)
    out = h.send(ident(0), p.AlertDefinition(definition))
    assert records(out, RecordType.ALERT) == [definition]
    # every rank of an MPI job defines it: recorded (and so registered with the server) once
    out = h.send(ident(1), p.AlertDefinition(definition))
    assert records(out, RecordType.ALERT) == [] and events(out) == []
    # the same name defined differently: refused with a warning
    other = metric_alert("al", "is above", "x", frequency=1, window=1, threshold=4)
    out = h.send(ident(1), p.AlertDefinition(other))
    assert records(out, RecordType.ALERT) == [] and any("defined differently" in m for m in events(out, "warning"))
    # an invalid definition (only a broken client sends one) is refused with a warning, not recorded:
    # the server would refuse it too, and its 422 would stop the upload
    out = h.send(ident(0), p.AlertDefinition({"name": "bad", "source": "metrics"}))
    assert records(out, RecordType.ALERT) == [] and any("not evaluated" in m for m in events(out, "warning"))


# --------------------------------------------------------------------------------------------- issue 4
def test_abort_tells_every_live_rank_and_later_joiners_and_terminates_the_run() -> None:
    h = Harness(expected_ranks=3)
    joined(h, 0, 1)
    out = h.state.abort("stop now")
    assert replies(out, 0) == [p.Notice("abort", "stop now")] and replies(out, 1) == [p.Notice("abort", "stop now")]
    assert h.state.abort("again") == []  # once
    late = h.hello(2)
    assert replies(late, 2) == [p.Welcome(2, "run-1", "the-run"), p.Notice("abort", "stop now")]
    for r in (0, 1, 2):
        h.goodbye(r)
    (end,) = records(h.tick(), RecordType.END)
    assert end["status"] == "terminated"


def live_series(h: Harness) -> list[tuple[int, float]]:
    return [
        (int(a.step[0]), float(a.value[0]))
        for a in h.actions
        if isinstance(a, AppendMetrics) and a.names == ["simvue_hpc/live_ranks"]
    ]


def test_live_ranks_metric_follows_joins_goodbyes_and_losses() -> None:
    h = Harness(expected_ranks=3, rank_timeout=5.0, heartbeat_interval=1.0)
    joined(h, 0, 1, 2)
    h.tick()
    h.goodbye(2)
    h.tick(1.0)
    h.tick(5.5)  # 0 and 1 lost
    assert live_series(h) == [(0, 3.0), (1, 2.0), (2, 0.0)]


def test_live_ranks_is_recorded_at_most_once_per_heartbeat_interval() -> None:
    h = Harness(expected_ranks=None, host_rank=0, heartbeat_interval=5.0, rank_timeout=1000.0)
    joined(h, 0)
    for k in range(1, 200):  # pool workers come and go, many times a second
        h.hello(-1, who=b"w%d" % k)
        h.tick(0.01)
        h.goodbye(b"w%d" % k)
        h.tick(0.01)
    h.hello(-1, who=b"last")
    h.tick(5.0)
    series = live_series(h)
    assert 1 <= len(series) <= 3, series  # 4 s of churn: once at the start, once after each interval
    assert series[-1][1] == 2.0 and [s for s, _ in series] == list(range(len(series)))
    h.goodbye(b"last")
    h.goodbye(0)
    h.tick()
    assert live_series(h)[-1][1] == 0.0  # the end is recorded


def test_a_single_rank_run_has_no_live_ranks_series() -> None:
    h = Harness(expected_ranks=1)
    joined(h, 0)
    h.log(0, [("x", 0, 1.0)])
    h.tick(10.0)
    h.goodbye(0)
    h.tick()
    assert finishes(h.actions) == ["completed"]
    assert live_series(h) == []


def test_resources_are_summed_per_node_and_over_nodes() -> None:
    h = Harness(expected_ranks=3, system_metrics_interval=1.0)
    joined(h, 0, 1, 2)  # hosts node0, node1, node2
    h.state._roster.by_identity[ident(1)].host = "node0"  # ranks 0 and 1 share a node
    h.send(ident(0), p.Resources(1, 50.0, 100.0, [[0, 80.0, 40.0]]))
    h.send(ident(1), p.Resources(1, 30.0, 200.0))
    h.send(ident(2), p.Resources(1, 100.0, 50.0, [[0, 20.0, 10.0]]))
    out = h.tick(1.0)
    (a,) = [a for a in out if isinstance(a, AppendMetrics) and a.names[0].startswith("resources/")]
    got = dict(zip(a.names, a.value.tolist(), strict=True))
    assert got["resources/cpu.usage.percentage"] == 180.0 and got["resources/cpu.usage.memory"] == 350.0
    assert got["resources/gpu.utilisation.percent.0"] == 50.0 and got["resources/gpu.utilisation.memory.0"] == 25.0
    assert got["resources/node0/cpu.usage.percentage"] == 80.0 and got["resources/node2/cpu.usage.memory"] == 50.0


def test_terminate_closes_within_the_grace_and_marks_terminated() -> None:
    h = Harness(close_timeout=100.0, terminate_grace=2.0)
    joined(h, 0, 1)
    h.state.terminate("signal SIGTERM", h.now)
    assert finishes(h.tick(1.0)) == []
    out = h.tick(1.5)
    assert finishes(out) == ["terminated"]
    assert records(out, RecordType.END)[0]["missing_ranks"] == [0, 1]


def test_an_alert_transition_is_an_event_a_state_record_and_maybe_an_abort() -> None:
    h = Harness()
    joined(h, 0, 1)
    definition = metric_alert("hot", "is above", "t", frequency=0.01, window=0.05, threshold=5, abort=True)
    h.send(ident(0), p.AlertDefinition(definition))
    for step in range(3):
        h.log(0, [("t", step, 9.0)])
        h.log(1, [("t", step, 9.0)])
    h.goodbye(1)
    h.wall += 700_000_000  # 0.7 s later on the wall clock: one frequency (0.6 s) has passed
    out = h.tick(1.0)
    assert records(out, RecordType.ALERT_STATE)[0]["status"] == "critical"
    assert any("'hot' is critical" in m for m in events(out, "warning"))
    assert replies(out, 0) == [p.Notice("abort", "alert 'hot' is critical")]


def test_user_alert_state_from_a_rank() -> None:
    h = Harness()
    joined(h, 0, 1)
    h.send(ident(0), p.AlertDefinition(user_alert("manual")))
    out = h.send(ident(1), p.AlertState("manual", "critical"))
    assert records(out, RecordType.ALERT_STATE)[0]["status"] == "critical"
    out = h.send(ident(1), p.AlertState("nonexistent", "critical"))
    assert records(out, RecordType.ALERT_STATE) == [] and events(out, "warning")


# --------------------------------------------------------------------------------------------- files
def offer(sha: str = SHA, size: int = 6, name: str = "out.txt", category: str = "output") -> p.FileOffer:
    return p.FileOffer(sha, size, name, category, f"/tmp/{name}", "text/plain", 5_000_000)


def test_file_transfer() -> None:
    h = Harness()
    joined(h, 0, 1)
    assert replies(h.send(ident(0), offer()), 0) == [p.FileReply(SHA, "need")]
    assert h.send(ident(0), p.FileChunk(SHA, 0, False, b"abc")) == [FileWrite(SHA, 0, b"abc", False)]
    # rank 1 offers the same bytes meanwhile: it waits, no answer yet
    assert h.send(ident(1), offer(name="copy.txt")) == []
    assert h.send(ident(0), p.FileChunk(SHA, 3, True, b"def")) == [FileWrite(SHA, 3, b"def", True)]
    out = h.file_done(SHA, True)
    assert replies(out, 0) == [p.FileReply(SHA, "stored")]
    assert replies(out, 1) == [p.FileReply(SHA, "stored")]
    files = records(out, RecordType.FILE)
    assert [(f["name"], f["rank"], f["host"]) for f in files] == [("out.txt", 0, "node0"), ("copy.txt", 1, "node1")]
    assert files[0] == {
        "name": "out.txt",
        "category": "output",
        "sha256": SHA,
        "size": 6,
        "original_path": "/tmp/out.txt",
        "mime_type": "text/plain",
        "rank": 0,
        "host": "node0",
        "time_us": 5_000,
    }
    # once stored, an offer is answered at once; the same (sha256, name, category) is recorded once
    out = h.send(ident(1), offer())
    assert replies(out, 1) == [p.FileReply(SHA, "stored")]
    assert records(out, RecordType.FILE) == []
    out = h.send(ident(1), offer(category="input"))
    assert replies(out, 1) == [p.FileReply(SHA, "stored")]
    assert len(records(out, RecordType.FILE)) == 1
    assert h.file_done(SHA, True) == []  # nothing open any more


def test_waiter_with_the_same_name_gets_no_second_record() -> None:
    h = Harness()
    joined(h, 0, 1)
    h.send(ident(0), offer())
    h.send(ident(1), offer())
    h.send(ident(0), p.FileChunk(SHA, 0, True, b"abcdef"))
    out = h.file_done(SHA, True)
    assert len(records(out, RecordType.FILE)) == 1
    assert replies(out, 1) == [p.FileReply(SHA, "stored")]


def test_failed_transfer_promotes_the_next_waiter() -> None:
    h = Harness(expected_ranks=3)
    joined(h, 0, 1, 2)
    h.send(ident(0), offer())
    h.send(ident(1), offer())
    h.send(ident(2), offer())
    h.send(ident(0), p.FileChunk(SHA, 0, True, b"abcdef"))
    out = h.file_done(SHA, False, "checksum mismatch")
    assert replies(out, 0) == [p.FileReply(SHA, "error", "checksum mismatch")]
    assert replies(out, 1) == [p.FileReply(SHA, "need")]
    assert replies(out, 2) == []
    assert records(out, RecordType.FILE) == []
    # the old owner cannot send any more; the promoted one can
    (msg,) = replies(h.send(ident(0), p.FileChunk(SHA, 0, True, b"abcdef")), 0)
    assert isinstance(msg, p.FileReply) and msg.status == "error"
    assert h.send(ident(1), p.FileChunk(SHA, 0, True, b"abcdef")) == [FileWrite(SHA, 0, b"abcdef", True)]
    out = h.file_done(SHA, True)
    assert replies(out, 1) == [p.FileReply(SHA, "stored")]
    assert replies(out, 2) == [p.FileReply(SHA, "stored")]
    assert len(records(out, RecordType.FILE)) == 1


def test_owner_closing_mid_transfer_discards_and_promotes() -> None:
    h = Harness(host_rank=None)
    joined(h, 0, 1)
    h.send(ident(0), offer())
    h.send(ident(0), p.FileChunk(SHA, 0, False, b"abc"))
    h.send(ident(1), offer())
    out = h.goodbye(0)
    assert FileDiscard(SHA) in out
    assert replies(out, 1) == [p.FileReply(SHA, "need")]
    assert replies(out, 0) == [p.GoodbyeAck(0)]


def test_owner_lost_mid_transfer_discards_and_promotes() -> None:
    h = Harness(rank_timeout=5.0)
    joined(h, 0, 1)
    h.send(ident(0), offer())
    h.now += 3.0
    h.send(ident(1), offer())
    out = h.tick(3.0)
    assert FileDiscard(SHA) in out
    assert replies(out, 1) == [p.FileReply(SHA, "need")]


def test_a_closing_waiter_is_forgotten() -> None:
    h = Harness(host_rank=None)
    joined(h, 0, 1)
    h.send(ident(0), offer())
    h.send(ident(1), offer())
    h.goodbye(1)
    h.send(ident(0), p.FileChunk(SHA, 0, True, b"abcdef"))
    out = h.file_done(SHA, True)
    assert replies(out, 1) == []
    assert len(records(out, RecordType.FILE)) == 1


@pytest.mark.parametrize(
    "chunk",
    [p.FileChunk(SHA, 1, False, b"bc"), p.FileChunk(SHA, 0, False, b"abcdefg"), p.FileChunk(SHA, 3, True, b"def")],
    ids=["gap", "past the size", "skipped first"],
)
def test_out_of_order_chunk_is_an_error(chunk: p.FileChunk) -> None:
    h = Harness()
    joined(h, 0, 1)
    h.send(ident(0), offer())
    h.send(ident(1), offer())
    out = h.send(ident(0), chunk)
    assert FileDiscard(SHA) in out
    assert not any(isinstance(a, FileWrite) for a in out)
    (msg,) = replies(out, 0)
    assert isinstance(msg, p.FileReply) and msg.status == "error" and "order" in msg.reason
    assert replies(out, 1) == [p.FileReply(SHA, "need")]


def test_chunk_without_an_offer_is_an_error() -> None:
    h = Harness()
    joined(h, 0, 1)
    (msg,) = replies(h.send(ident(0), p.FileChunk(SHA2, 0, True, b"x")))
    assert isinstance(msg, p.FileReply) and msg.status == "error"
    h.send(ident(0), offer())
    (msg,) = replies(h.send(ident(1), p.FileChunk(SHA, 0, True, b"abcdef")))  # not the owner
    assert isinstance(msg, p.FileReply) and msg.status == "error"
    assert h.send(ident(0), p.FileChunk(SHA, 0, True, b"abcdef")) == [FileWrite(SHA, 0, b"abcdef", True)]


def test_finish_discards_open_transfers() -> None:
    h = Harness()
    joined(h, 0, 1)
    h.send(ident(0), offer())
    h.send(ident(1), offer(SHA2))
    out = h.state.finish_now(h.now)
    assert {a.sha256 for a in out if isinstance(a, FileDiscard)} == {SHA, SHA2}
    assert h.state.file_done(SHA, True) == []


# --------------------------------------------------------------------------------------------- exactness
@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[list[list[tuple[str, int, float]]]], list[int], list[bool]]:
    """K ranks; per rank a list of messages, each a list of (metric, step, value) in increasing step order."""
    k = draw(st.integers(1, 4))
    plans = []
    for _ in range(k):
        steps = sorted(draw(st.sets(st.integers(0, 8), max_size=6)))
        calls = []
        for s in steps:
            names = draw(st.sets(st.sampled_from(["a", "b", "c"]), min_size=1))
            calls.append([(n, s, float(draw(st.integers(-1000, 1000)))) for n in sorted(names)])
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(calls) - 1)), max_size=len(calls))))
        bounds = [0, *[c for c in cuts if c < len(calls)], len(calls)]
        plans.append([[p for call in calls[a:b] for p in call] for a, b in pairwise(bounds) if b > a])
    total = sum(len(p) + 2 for p in plans)  # hello and goodbye around each rank's messages
    order = draw(st.permutations([r for r in range(k) for _ in range(len(plans[r]) + 2)]))
    ticks = draw(st.lists(st.booleans(), min_size=total, max_size=total))
    return k, plans, order, ticks


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_exactly_the_reductions_of_what_was_logged(scenario: Any) -> None:
    k, plans, order, ticks = scenario
    h = Harness(expected_ranks=k, host_rank=0)
    position = [0] * k
    for r, tick in zip(order, ticks, strict=True):
        i = position[r]
        position[r] += 1
        if i == 0:
            joined(h, r)
        elif i <= len(plans[r]):
            h.log(r, plans[r][i - 1])
        else:
            assert replies(h.goodbye(r), r) == [p.GoodbyeAck(sum(len(m) for m in plans[r]))]
        if tick:
            h.tick()
    h.tick()
    assert h.state.finished and finishes(h.actions) == ["completed"]
    (end,) = records(h.actions, RecordType.END)
    assert end["missing_ranks"] == [] and end["lost_ranks"] == []

    logged: dict[tuple[str, int], list[float]] = defaultdict(list)
    contributors: dict[str, set[int]] = defaultdict(set)
    for r, messages in enumerate(plans):
        for message in messages:
            for name, step, value in message:
                logged[(name, step)].append(value)
                contributors[name].add(r)
    expected: dict[tuple[str, int], float] = {}
    for (name, step), vals in logged.items():
        if len(contributors[name]) == 1:
            (expected[(name, step)],) = vals
        else:
            expected[(name, step)] = sum(vals) / len(vals)
            expected[(f"{name}.min", step)] = min(vals)
            expected[(f"{name}.max", step)] = max(vals)
    assert stored(h.actions, late=True) == {}
    assert h.state.counters["late_points"] == 0
    assert stored(h.actions) == expected
    assert h.state.counters["points_received"] == sum(len(v) for v in logged.values())


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), dts=st.lists(st.sampled_from([0.0, 0.5, 3.0, 6.0, 12.0]), min_size=40, max_size=40))
def test_no_point_is_ever_dropped_whatever_the_timing(scenario: Any, dts: list[float]) -> None:
    """Timeouts force steps out, ranks get lost and come back: every accepted point is still stored once."""
    k, plans, order, ticks = scenario
    per_rank = Reduction.parse("any", "per_rank")
    h = Harness(
        expected_ranks=k, step_timeout=5.0, rank_timeout=10.0, close_timeout=20.0,
        reductions={n: per_rank for n in "abc"},
    )  # fmt: skip
    position = [0] * k
    accepted: set[tuple[str, int]] = set()
    for j, (r, tick) in enumerate(zip(order, ticks, strict=True)):
        h.now += dts[j % len(dts)]
        i = position[r]
        position[r] += 1
        if h.state.finished:
            break
        if i == 0:
            joined(h, r)
        elif i <= len(plans[r]):
            h.log(r, plans[r][i - 1])
            accepted.update((f"{n}/rank_{r}", s) for n, s, _ in plans[r][i - 1])
        else:
            h.goodbye(r)
        if tick:
            h.tick()
    h.tick(100.0)
    h.tick(100.0)
    assert h.state.finished
    assert set(stored(h.actions, late=None)) == accepted
    assert h.state.counters["points_stored"] == len(accepted) == h.state.counters["points_received"]


@pytest.mark.parametrize("sha", ["../../etc/passwd", "A" * 64, "a" * 63, "", "g" * 64, "a" * 64 + "\n"])
def test_offer_of_a_malformed_sha256_is_an_error(sha: str) -> None:
    """The store cannot take such a name (and must never see a path), so the offer is refused at once."""
    h = Harness()
    joined(h, 0)
    (msg,) = replies(h.send(ident(0), offer(sha)), 0)
    assert isinstance(msg, p.FileReply) and msg.status == "error" and "sha256" in msg.reason
    (msg,) = replies(h.send(ident(0), p.FileChunk(sha, 0, True, b"abcdef")), 0)
    assert isinstance(msg, p.FileReply) and msg.status == "error"
    assert not any(isinstance(a, FileWrite) for a in h.actions)


# --------------------------------------------------------------------------------------------- robustness
def test_a_rank_back_from_lost_on_a_new_link_is_not_listed_lost_at_the_end() -> None:
    h = Harness(rank_timeout=5.0, close_timeout=100.0)
    joined(h, 0, 1)
    h.tick(6.0)  # both lost
    h.hello(1, who=b"new")
    h.send(ident(0), p.Heartbeat(0, 0, 0))  # rank 0 speaks again on its old link
    h.send(b"new", p.Goodbye(0, 0, {}))
    out = h.goodbye(0)
    out += h.tick()
    (end,) = records(out, RecordType.END)
    assert end["lost_ranks"] == [] and end["missing_ranks"] == []
    assert finishes(out) == ["completed"]


def test_a_repeated_goodbye_is_acknowledged_and_counted_once() -> None:
    h = Harness()
    joined(h, 0, 1)
    h.log(1, [("x", 0, 1.0)])
    h.goodbye(1, dropped={"x": 3})
    out = h.goodbye(1, dropped={"x": 3})
    assert replies(out, 1) == [p.GoodbyeAck(1)]
    assert records(out, RecordType.RANK) == [] and events(out) == []
    assert h.state.counters["dropped_points"] == 3


def test_a_chunk_after_the_final_one_is_an_error() -> None:
    h = Harness()
    joined(h, 0, 1)
    h.send(ident(0), offer())
    h.send(ident(0), p.FileChunk(SHA, 0, True, b"abcdef"))
    out = h.send(ident(0), p.FileChunk(SHA, 6, True, b""))
    assert [a for a in out if isinstance(a, FileWrite)] == []
    assert replies(out, 0) == [p.FileReply(SHA, "error", "chunk out of order or past the size")]


# --------------------------------------------------------------------------------------------- bounds
def over_bounds_events(h: Harness) -> list[str]:
    return [e for e in events(h.actions, "warning") if "dropped" in e and "bound" in e]


def test_protocol_errors_are_logged_once_per_peer_per_minute(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    joined(h, 0)
    with caplog.at_level(logging.WARNING, logger="simvue_hpc.aggregator"):
        for _ in range(1000):
            h.actions += h.state.protocol_error(ident(0), "truncated header", h.now)
            h.actions += h.state.protocol_error(b"stranger", "bad magic", h.now)
            h.now += 0.01
        assert len(caplog.records) == 2  # one per peer, not 2,000 lines
        h.now += 60.0
        h.actions += h.state.protocol_error(ident(0), "truncated header", h.now)
        assert len(caplog.records) == 3 and "999 more" in caplog.records[-1].getMessage()
    assert h.state.counters["protocol_errors"] == 2001
    assert len([e for e in events(h.actions, "warning") if "undecodable" in e]) == 2
    # an unknown peer is still answered each time: it must learn that it is not welcome
    assert sum(1 for m in replies(h.actions, b"stranger") if isinstance(m, p.Reject)) == 1000


def test_distinct_metric_names_are_capped() -> None:
    h = Harness(expected_ranks=1, max_metrics=3)
    joined(h, 0)
    h.log(0, [(f"m{k}", 0, float(k)) for k in range(5)])
    h.log(0, [(f"m{k}", 1, float(k)) for k in range(5)])
    h.goodbye(0)
    h.tick()
    assert {name for name, _ in stored(h.actions)} == {"m0", "m1", "m2"}
    assert h.state.counters["points_over_bounds"] == 4
    (warning,) = over_bounds_events(h)
    assert "max_metrics" in warning and "3" in warning
    (end,) = records(h.actions, RecordType.END)
    assert end["counters"]["points_over_bounds"] == 4


def test_open_steps_of_a_metric_are_capped() -> None:
    h = Harness(expected_ranks=2, max_open_steps=10, step_timeout=1000.0, rank_timeout=1000.0)
    joined(h, 0, 1)
    h.log(1, [("a", 0, 0.0)])  # rank 1 stays at step 0: rank 0's later steps wait for it
    for s in range(30):
        h.log(0, [("a", s, 1.0)])
        h.tick()
    assert h.state.counters["points_over_bounds"] == 20  # steps 0-9 are open, 10-29 past the bound
    (warning,) = over_bounds_events(h)
    assert "max_open_steps" in warning
    h.goodbye(0)
    h.goodbye(1)
    h.tick()
    assert sorted({s for _, s in stored(h.actions)}) == list(range(10))


def test_steps_at_the_int64_limits_are_rejected() -> None:
    h = Harness(expected_ranks=1)
    joined(h, 0)
    lo, hi = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
    h.log(0, [("a", lo, 1.0), ("a", 5, 2.0), ("a", hi, 3.0)])
    h.log(0, [("a", hi, 4.0)])
    h.goodbye(0)
    h.tick()
    assert stored(h.actions) == {("a", 5): 2.0}
    assert h.state.counters["points_over_bounds"] == 3
    (warning,) = over_bounds_events(h)
    assert "step" in warning


def test_peers_are_capped_at_the_world_plus_a_margin() -> None:
    h = Harness(expected_ranks=2, peer_margin=1)
    joined(h, 0, 1)
    (ok,) = replies(h.hello(-1, who=b"extra"))
    assert isinstance(ok, p.Welcome) and ok.rank == 2
    for k in range(3):
        (no,) = replies(h.hello(-1, who=b"more%d" % k))
        assert isinstance(no, p.Reject) and "3 ranks" in no.reason
    assert h.state.counters["peers_refused"] == 3
    assert len([e for e in events(h.actions, "warning") if "peer_margin" in e]) == 1
    assert replies(h.hello(1), 1) == [p.Welcome(1, "run-1", "the-run")]  # a known rank may say hello again


def test_a_pool_caps_the_ranks_live_at_once() -> None:
    h = Harness(expected_ranks=None, max_peers=3)
    joined(h, 0)
    for k in range(2):
        assert isinstance(replies(h.hello(-1, who=b"w%d" % k))[0], p.Welcome)
    assert isinstance(replies(h.hello(-1, who=b"w9"))[0], p.Reject)
    h.goodbye(b"w0")
    assert isinstance(replies(h.hello(-1, who=b"w10"))[0], p.Welcome)  # a closed worker frees its place


# --------------------------------------------------------------------------------------------- stopping
def test_stop_tells_every_rank_and_fails_the_run() -> None:
    h = Harness(expected_ranks=3, close_timeout=100.0)
    joined(h, 0, 1)
    h.log(0, [("x", 0, 1.0)])
    out = h.state.stop("disk full", h.now)
    h.actions += out
    assert replies(out, 0) == [p.Notice("stopped", "disk full")] and replies(out, 1) == [
        p.Notice("stopped", "disk full")
    ]
    assert [(r["status"], r["reason"]) for r in records(out, RecordType.STATUS)] == [("failed", "disk full")]
    assert h.state.stop("disk full again", h.now) == []  # once
    late = h.hello(2)
    assert replies(late, 2) == [p.Welcome(2, "run-1", "the-run"), p.Notice("stopped", "disk full")]
    assert h.log(1, [("x", 0, 2.0), ("y", 0, 1.0)]) == []  # no longer accepted: dropped and counted
    assert h.state.counters["points_after_stop"] == 2
    for r in (0, 1, 2):
        h.goodbye(r)
    out = h.tick()
    assert finishes(out) == ["failed"]
    (end,) = records(out, RecordType.END)
    assert end["counters"]["points_after_stop"] == 2


def test_memory_follows_what_is_open_not_the_length_of_the_run() -> None:
    """Two ranks, 10 metrics, 6,000 steps: what the state holds after 6,000 steps is what it held after
    1,000 (closed steps are released at once); the stored actions are dropped as the loop drops them."""
    import gc
    import tracemalloc

    state = AggregatorState(AggregatorConfig("r", "r", SECRET, expected_ranks=2, host_rank=None), 0.0)
    for r in (0, 1):
        state.handle(ident(r), 0, p.Hello(SECRET, r, 2, "node", r, "t"), 0.0)
    names = [f"m{k}" for k in range(10)]
    now = 0.0
    held = []
    tracemalloc.start()
    try:
        for step in range(6_000):
            for r in (0, 1):
                n = len(names)
                batch = p.MetricBatch(
                    names, np.arange(n, dtype=np.uint32), np.full(n, step), np.full(n, step), np.full(n, 1.0 * r)
                )
                state.handle(ident(r), step + 1, batch, now)
            now += 0.01
            if step % 10 == 9:
                state.tick(now)
            if step in (999, 5_999):
                gc.collect()
                held.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert held[1] - held[0] < 64 * 1024, held  # 100,000 more points went through
    assert state.counters["points_stored"] > 3 * 5_990 * 10


def test_well_formed_but_impossible_messages_are_refused_and_counted() -> None:
    h = Harness(expected_ranks=2, system_metrics_interval=1.0)
    joined(h, 0, 1)
    h.send(ident(0), p.Resources(1, 50.0, 100.0, [[1.0] * 100]))  # not [index, utilisation, memory]
    h.send(ident(1), p.Resources(1, float("nan"), 100.0))
    h.send(ident(0), p.Status("bogus", "r"))
    h.send(ident(0), p.Status("{0} {x}", "braces"))
    out = h.tick(1.0)  # the roll-up ignores what was refused
    assert not [a for a in out if isinstance(a, AppendMetrics) and a.names[0].startswith("resources/")]
    assert records(h.actions, RecordType.STATUS) == []
    assert h.state.counters["protocol_errors"] == 4
    for r in (0, 1):
        h.goodbye(r)
    assert finishes(h.tick()) == ["completed"]


def test_hello_with_an_impossible_rank_or_host_is_rejected() -> None:
    h = Harness(expected_ranks=4, peer_margin=2)
    for kw in ({"rank": 2**62}, {"rank": 6}):
        (msg,) = replies(h.send(b"odd", p.Hello(SECRET, size=4, host="n", pid=1, client="t", **kw)))  # type: ignore[arg-type]
        assert isinstance(msg, p.Reject) and "rank" in msg.reason
    (msg,) = replies(h.send(b"long", p.Hello(SECRET, 1, 4, "h" * 300, 1, "t")))
    assert isinstance(msg, p.Reject) and "host" in msg.reason
    assert replies(h.hello(5), 5) == [p.Welcome(5, "run-1", "the-run")]  # within the margin
