"""The aggregator merges node relays' PARTIALS: the stored run equals the flat one.

The same points go once straight from the ranks (flat) and once through relays that pre-reduce their
ranks' points into partial accumulators (one PARTIALS message per flush, ``through`` their ranks'
complete step). Count, sum, min and max must be stored bit for bit the same, mean and std within
1e-12 relative; a single-rank metric is stored as its raw points either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from simvue_hpc.aggregator.accumulate import accumulate
from simvue_hpc.aggregator.reduce import Reduction
from simvue_hpc.aggregator.state import Action, AggregatorConfig, AggregatorState, AppendMetrics
from simvue_hpc.protocol import Goodbye, Hello, MetricBatch, decode, encode
from simvue_hpc.relay.wire import PartialBatch

OPS = ["mean", "min", "max", "sum", "std", "count"]
NAMES = ["a", "b", "solo"]


def _state() -> AggregatorState:
    reductions = {n: Reduction.parse(n, OPS) for n in NAMES}
    config = AggregatorConfig("run", "run", "s", expected_ranks=None, host_rank=None, reductions=reductions)
    return AggregatorState(config, now=0.0, wall_ns=lambda: 1)


def _hello(state: AggregatorState, ident: bytes, rank: int, out: list[Action], now: float) -> None:
    out += state.handle(ident, 0, Hello("s", rank, 0, "h", 1, "test"), now)


def _finish(state: AggregatorState, out: list[Action], now: float) -> dict[tuple[str, int], float]:
    state.begin_close(now, timeout=0.0)
    out += state.tick(now + 1)
    assert state.finished
    stored: dict[tuple[str, int], float] = {}
    for action in out:
        if isinstance(action, AppendMetrics):
            assert not action.late
            columns = (action.name_id.tolist(), action.step.tolist(), action.value.tolist())
            for nid, step, value in zip(*columns, strict=True):
                key = (action.names[nid], step)
                if not key[0].startswith("simvue_hpc/"):
                    assert key not in stored, key
                    stored[key] = value
    return stored


def _points(values: list[float], ranks: int, steps: int) -> list[tuple[int, int, int, float]]:
    """(rank, metric, step, value): a and b from every rank, solo from rank 1 only."""
    out = []
    k = 0
    for r in range(ranks):
        for s in range(steps):
            for m in range(3):
                if m == 2 and r != 1:
                    continue
                out.append((r, m, s, values[k % len(values)]))
                k += 1
    return out


def _flat(points: list[tuple[int, int, int, float]], ranks: int, steps: int) -> dict[tuple[str, int], float]:
    state, out = _state(), []
    for r in range(ranks):
        _hello(state, b"r%d" % r, r, out, 0.0)
    seq = dict.fromkeys(range(ranks), 1)
    for s in range(steps):  # one message per rank and step, interleaved as they would arrive
        for r in range(ranks):
            mine = [p for p in points if p[0] == r and p[2] == s]
            batch = MetricBatch(
                NAMES,
                np.array([p[1] for p in mine], np.uint32),
                np.full(len(mine), s, np.int64),
                np.full(len(mine), 1000 + s, np.int64),
                np.array([p[3] for p in mine]),
            )
            out += state.handle(b"r%d" % r, seq[r], batch, 1.0 + s)
            seq[r] += 1
        out += state.tick(1.5 + s)
    for r in range(ranks):
        out += state.handle(b"r%d" % r, seq[r], Goodbye(0, 0), 100.0)
    return _finish(state, out, 100.0)


def _relayed(
    points: list[tuple[int, int, int, float]], ranks: int, steps: int, nodes: int
) -> dict[tuple[str, int], float]:
    state, out = _state(), []
    node_of = [r * nodes // ranks for r in range(ranks)]
    for k in range(nodes):
        _hello(state, b"relay%d" % k, 1000 + k, out, 0.0)
    for s in range(steps):  # each relay flushes once per step: its ranks' points of that step
        for k in range(nodes):
            mine = [p for p in points if node_of[p[0]] == k and p[2] == s]
            contributors = {NAMES[m]: len({p[0] for p in points if node_of[p[0]] == k and p[1] == m}) for m in range(3)}
            acc = accumulate(
                np.array([p[1] for p in mine], np.int64),
                np.full(len(mine), s, np.int64),
                np.full(len(mine), 1000 + s, np.int64),
                np.array([p[3] for p in mine]),
            )
            msg = PartialBatch(NAMES, s, {n: c for n, c in contributors.items() if c}, acc)
            seq, decoded = decode([bytes(f) for f in encode(msg, s + 1)])  # through the wire format
            out += state.handle(b"relay%d" % k, seq, decoded, 1.0 + s)
        out += state.tick(1.5 + s)
    for k in range(nodes):
        out += state.handle(b"relay%d" % k, steps + 1, Goodbye(0, 0), 100.0)
    return _finish(state, out, 100.0)


def _compare(flat: dict[tuple[str, int], float], relayed: dict[tuple[str, int], float]) -> None:
    assert sorted(flat) == sorted(relayed)
    for key, want in flat.items():
        got = relayed[key]
        op = key[0].rpartition(".")[2] if "." in key[0] else "mean"
        if op in ("std", "mean"):
            assert abs(got - want) <= 1e-12 * abs(want) + 1e-300, (key, got, want)
        elif op in ("min", "max") and got == want == 0.0:
            pass  # a zero extremum's sign follows the order 0.0 and -0.0 came in, which relays do not keep
        else:
            assert np.float64(got).tobytes() == np.float64(want).tobytes(), (key, got, want)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(-(2**30), 2**30).map(lambda i: i / 64), min_size=1, max_size=50),
    st.integers(2, 9),
    st.integers(1, 4),
    st.integers(1, 3),
)
def test_relayed_run_stores_what_the_flat_run_stores(values: list[float], ranks: int, steps: int, nodes: int) -> None:
    nodes = min(nodes, ranks)
    points = _points(values, ranks, steps)
    flat = _flat(points, ranks, steps)
    relayed = _relayed(points, ranks, steps, nodes)
    _compare(flat, relayed)
    # the single-rank metric is stored raw (no companions), as in the flat run
    assert ("solo", 0) in relayed and ("solo.count", 0) not in relayed
    assert relayed[("a.count", 0)] == ranks


def test_partials_before_their_step_is_complete_wait_for_the_relays_through() -> None:
    state, out = _state(), []
    _hello(state, b"relay0", 1000, out, 0.0)
    _hello(state, b"relay1", 1001, out, 0.0)
    acc = accumulate(np.zeros(2, np.int64), np.array([0, 1]), np.zeros(2, np.int64), np.array([1.0, 2.0]))
    out += state.handle(b"relay0", 1, PartialBatch(NAMES, 0, {"a": 3}, acc), 1.0)
    acc1 = accumulate(np.zeros(1, np.int64), np.array([0]), np.zeros(1, np.int64), np.array([5.0]))
    out += state.handle(b"relay1", 1, PartialBatch(NAMES, 0, {"a": 2}, acc1), 1.0)
    stored: Any = [a for a in state.tick(2.0) if isinstance(a, AppendMetrics)]
    values = {(a.names[n], s): v for a in stored for n, s, v in zip(a.name_id, a.step, a.value, strict=True)}
    assert values[("a.sum", 0)] == 6.0 and values[("a.count", 0)] == 2.0
    assert ("a.sum", 1) not in values  # relay 1 has not passed step 1 yet


def test_a_lost_relay_is_reported_with_the_ranks_behind_it() -> None:
    state, out = _state(), []
    _hello(state, b"relay0", 1000, out, 0.0)
    acc = accumulate(np.zeros(1, np.int64), np.array([0]), np.zeros(1, np.int64), np.array([1.0]))
    out += state.handle(b"relay0", 1, PartialBatch(NAMES, 0, {"a": 4}, acc, 4), 1.0)
    events = [
        a.payload["message"] for a in state.tick(1000.0) if getattr(a, "payload", None) and "message" in a.payload
    ]
    assert any("the node relay of 4 rank(s)" in e and "lost" in e for e in events), events
