"""The node relay's sans-I/O core: handshake, pre-reduction, ``through``, goodbyes, liveness, files."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from simvue_hpc.errors import ConfigurationError
from simvue_hpc.protocol import (
    Event,
    FileOffer,
    FileReply,
    Goodbye,
    GoodbyeAck,
    Hello,
    MetricBatch,
    Notice,
    Reject,
    Welcome,
)
from simvue_hpc.relay.node import INT64_MIN, UP, RelayCore
from simvue_hpc.relay.placement import attach_endpoint, relay_endpoint
from simvue_hpc.relay.wire import PartialBatch

SHA = "c" * 64


def _core(expected: int | None = 2) -> RelayCore:
    core = RelayCore("s", "node0", expected, now=0.0, step_timeout=10.0, rank_timeout=60.0, wall_ns=lambda: 5)
    core.welcomed(Welcome(1000, "run-id", "run-name", 0.5))
    return core


def _batch(name: str, steps: list[int], values: list[float]) -> MetricBatch:
    n = len(steps)
    return MetricBatch(
        [name], np.zeros(n, np.uint32), np.array(steps, np.int64), np.zeros(n, np.int64), np.array(values)
    )


def _partials(out: list) -> PartialBatch:
    (target, msg), *_ = [o for o in out if isinstance(o[1], PartialBatch)]
    assert target == UP
    return msg


def test_ranks_are_welcomed_into_the_run_with_the_aggregators_budget() -> None:
    core = _core()
    out = core.handle(b"a", Hello("s", 3, 8, "h", 1, "c", {"x": ["sum"]}), 0.0)
    assert out == [(b"a", Welcome(3, "run-id", "run-name", 0.5))]  # the aggregator's interval: longer than 2 / 1000 s
    assert core.handle(b"b", Hello("wrong", 4, 8, "h", 2, "c"), 0.0)[0][1] == Reject("wrong secret for this run")
    assert isinstance(core.handle(b"c", Hello("s", -1, 0, "h", 3, "c"), 0.0)[0][1], Reject)
    assert isinstance(core.handle(b"d", Hello("s", 3, 8, "h", 4, "c"), 0.0)[0][1], Reject)  # rank 3 is live
    assert core.flush()[0][1].reductions == {"x": ["sum"]}  # sent up once
    assert core.flush()[0][1].reductions == {}


def test_points_are_pre_reduced_and_through_follows_the_slowest_live_rank() -> None:
    core = _core(expected=2)
    core.handle(b"a", Hello("s", 0, 2, "h", 1, "c"), 0.0)
    core.handle(b"a", _batch("loss", [0, 1, 2], [1.0, 2.0, 3.0]), 0.1)
    assert _partials(core.flush()).through == INT64_MIN  # rank 1 has not joined: nothing is complete
    core.handle(b"b", Hello("s", 1, 2, "h", 2, "c"), 0.2)
    core.handle(b"b", _batch("loss", [0, 1], [10.0, 20.0]), 0.3)
    msg = _partials(core.flush())
    assert msg.through == 0 and msg.ranks == 2 and msg.contributors == {"loss": 2}
    rows = msg.partials
    assert rows.step.tolist() == [0, 1] and rows.sum.tolist() == [10.0, 20.0]  # rank 1's only: a's went before
    assert rows.count.tolist() == [1, 1]


def test_goodbye_flushes_then_acknowledges_and_closed_ranks_stop_holding_back() -> None:
    core = _core(expected=2)
    for ident, rank in ((b"a", 0), (b"b", 1)):
        core.handle(ident, Hello("s", rank, 2, "h", rank, "c"), 0.0)
    core.handle(b"a", _batch("x", [0, 1, 2, 3], [1.0] * 4), 0.1)
    core.handle(b"b", _batch("x", [0], [2.0]), 0.1)
    out = core.handle(b"b", Goodbye(1, 0), 0.2)
    assert [type(m) for _, m in out] == [PartialBatch, GoodbyeAck]
    assert out[1] == (b"b", GoodbyeAck(1))
    assert _partials(out).through == 2  # only rank 0 is live, at step 3
    assert not core.all_closed()
    core.handle(b"a", Goodbye(4, 0), 0.3)
    assert core.all_closed() and core.through() == 3 and core.points() == 5


def test_a_silent_rank_is_reported_up_as_lost_and_releases_through() -> None:
    core = _core(expected=2)
    core.handle(b"a", Hello("s", 0, 2, "h", 1, "c"), 0.0)
    core.handle(b"b", Hello("s", 1, 2, "h", 2, "c"), 0.0)
    core.handle(b"a", _batch("x", [0, 1, 2, 3, 4, 5], [1.0] * 6), 50.0)
    core.handle(b"b", _batch("x", [0], [1.0]), 1.0)
    assert core.through() == -1  # rank 1 has sent step 0 only: it may still send more of it
    out = core.tick(70.0)
    assert len(out) == 1 and out[0][0] == UP and isinstance(out[0][1], Event)
    assert "rank 1 on node0 lost" in out[0][1].message and out[0][1].level == "warning"
    assert core.through() == 4


def test_files_go_up_and_replies_come_back_to_the_waiting_rank() -> None:
    core = _core()
    core.handle(b"a", Hello("s", 0, 2, "h", 1, "c"), 0.0)
    offer = FileOffer(SHA, 3, "f", "output", "/f", "text/plain", 1)
    assert core.handle(b"a", offer, 0.1) == [(UP, offer)]
    assert core.from_aggregator(FileReply(SHA, "need")) == [(b"a", FileReply(SHA, "need"))]
    assert core.from_aggregator(FileReply(SHA, "stored")) == [(b"a", FileReply(SHA, "stored"))]
    assert core.from_aggregator(FileReply(SHA, "stored")) == []
    assert core.from_aggregator(Notice("abort", "stop")) == [(b"a", Notice("abort", "stop"))]
    assert core.handle(b"zz", _batch("x", [0], [1.0]), 0.2) == [(b"zz", Reject("send HELLO first"))]


def test_where_a_rank_connects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    env = {"SIMVUE_HPC_NODE": "node 7/a"}
    assert attach_endpoint(env, "tcp://agg:1", "run1") == "tcp://agg:1"  # flat by default
    relay = f"ipc://{tmp_path}/simvue_hpc-run1-node_7_a.sock"
    assert attach_endpoint({**env, "SIMVUE_HPC_HIERARCHY": "node"}, "tcp://agg:1", "run1") == relay
    auto = {**env, "SIMVUE_HPC_HIERARCHY": "auto"}
    assert attach_endpoint(auto, "tcp://agg:1", "run1") == "tcp://agg:1"  # no relay socket: flat
    (tmp_path / "simvue_hpc-run1-node_7_a.sock").touch()
    assert attach_endpoint(auto, "tcp://agg:1", "run1") == relay == relay_endpoint("run1", "node 7/a")
    with pytest.raises(ConfigurationError, match="SIMVUE_HPC_HIERARCHY"):
        attach_endpoint({"SIMVUE_HPC_HIERARCHY": "tree"}, "tcp://agg:1", "run1")
    with pytest.raises(ConfigurationError, match="SIMVUE_HPC_RUN_ID"):
        attach_endpoint({"SIMVUE_HPC_HIERARCHY": "node"}, "tcp://agg:1", "")


def test_the_relays_ranks_share_its_message_budget() -> None:
    core = RelayCore("s", "n", 500, now=0.0, message_budget=1000.0)
    core.welcomed(Welcome(9, "r", "r", 0.05))
    welcome = core.handle(b"a", Hello("s", 0, 500, "h", 1, "c"), 0.0)[0][1]
    assert isinstance(welcome, Welcome) and welcome.flush_interval == 0.5  # 500 ranks, 1000 messages/s
