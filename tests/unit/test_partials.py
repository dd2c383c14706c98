"""Mergeable partial accumulators: any tree of partial reductions stores what the flat reduction stores.

Count, sum, min, max, time and mean (= sum / count) must be bit for bit the same however the points are
grouped (per node, per message, in any order); std within 1e-12 relative. Against the flat reducer
(aggregator/reduce.py): count, min, max bit for bit, and the sum exact where the true sum is a float64.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from simvue_hpc.aggregator.reduce import group_reduce
from simvue_hpc.relay.partials import Partials, accumulate, finalize, merge

# beyond ~1e154 squared deviations overflow (std is then inf in the flat reducer too)
FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e150, max_value=1e150)
ANY = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def points(draw: st.DrawFn, values: st.SearchStrategy[float] = FINITE) -> tuple[np.ndarray, ...]:
    rows = draw(
        st.lists(
            st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(0, 2**62), values, st.integers(0, 4)),
            min_size=1,
            max_size=60,
        )
    )
    metric, step, t, v, node = zip(*rows, strict=True)
    return (
        np.array(metric, dtype=np.int64),
        np.array(step, dtype=np.int64),
        np.array(t, dtype=np.int64),
        np.array(v, dtype=np.float64),
        np.array(node, dtype=np.int64),
    )


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal as stored values: the same float64 bits (signed zeros told apart), any NaN equal to any NaN."""
    nan = np.isnan(a)
    return (
        a.shape == b.shape
        and np.array_equal(nan, np.isnan(b))
        and np.array_equal(a[~nan].view(np.int64), b[~nan].view(np.int64))
    )


def _tree(
    metric: np.ndarray, step: np.ndarray, t: np.ndarray, v: np.ndarray, node: np.ndarray, rng: np.random.Generator
) -> Partials:
    """Per node: the points in 1-3 shuffled messages, each accumulated, merged at the node; then the
    nodes' partials merged at the root in a shuffled order, two levels deep."""
    nodes = []
    for k in np.unique(node):
        idx = rng.permutation(np.flatnonzero(node == k))
        messages = np.array_split(idx, int(rng.integers(1, 4)))
        nodes.append(merge([accumulate(metric[i], step[i], t[i], v[i]) for i in messages if len(i)]))
    order = rng.permutation(len(nodes))
    half = len(order) // 2
    return merge([merge([nodes[i] for i in order[:half]]), merge([nodes[i] for i in order[half:]])])


def _check_equivalent(flat: Partials, tree: Partials) -> None:
    a, b = finalize(flat), finalize(tree)
    assert np.array_equal(a.metric, b.metric) and np.array_equal(a.step, b.step)
    for op in ("count", "time_ns"):
        assert np.array_equal(getattr(a, op), getattr(b, op)), op
    for op in ("sum", "min", "max", "mean"):
        assert _same_bits(getattr(a, op), getattr(b, op)), (op, getattr(a, op), getattr(b, op))
    ok = np.isfinite(a.std)
    assert np.array_equal(ok, np.isfinite(b.std))
    scale = np.maximum(np.abs(flat.max), np.abs(flat.min))[ok]
    assert np.all(np.abs(a.std[ok] - b.std[ok]) <= 1e-12 * np.maximum(a.std[ok], 1e-300) + 1e-15 * scale)


@settings(max_examples=80, deadline=None)
@given(points(), st.integers(0, 2**32 - 1))
def test_any_tree_of_partials_stores_what_the_flat_reduction_stores(pts: tuple[np.ndarray, ...], seed: int) -> None:
    metric, step, t, v, node = pts
    _check_equivalent(accumulate(metric, step, t, v), _tree(metric, step, t, v, node, np.random.default_rng(seed)))


@settings(max_examples=60, deadline=None)
@given(points(ANY), st.integers(0, 2**32 - 1))
def test_nan_and_infinities_merge_the_same_way(pts: tuple[np.ndarray, ...], seed: int) -> None:
    metric, step, t, v, node = pts
    flat = finalize(accumulate(metric, step, t, v))
    tree = finalize(_tree(metric, step, t, v, node, np.random.default_rng(seed)))
    for op in ("count", "sum", "min", "max", "mean"):
        assert _same_bits(getattr(flat, op), getattr(tree, op)), op
    for i in range(len(flat.step)):
        sel = v[(metric == flat.metric[i]) & (step == flat.step[i])]
        if np.isnan(sel).any() or (np.inf in sel and -np.inf in sel):
            assert np.isnan(flat.sum[i])
        elif np.isinf(sel).any():
            assert flat.sum[i] == sel[np.isinf(sel)][0]
        if not np.isfinite(sel).all():
            assert np.isnan(flat.std[i])


@settings(max_examples=60, deadline=None)
@given(points(st.integers(-(2**40), 2**40).map(float)))
def test_against_the_flat_reducer_where_sums_are_exact(pts: tuple[np.ndarray, ...]) -> None:
    metric, step, t, v, _ = pts
    ours = finalize(accumulate(metric, step, t, v))
    flat = group_reduce(metric, step, t, v)
    for op in ("count", "sum", "min", "max", "time_ns"):
        assert np.array_equal(ours.column(op), flat.column(op)), op
    np.testing.assert_allclose(ours.mean, flat.mean, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ours.std, flat.std, rtol=1e-12, atol=1e-12 * float(np.abs(v).max() or 1))


@settings(max_examples=60, deadline=None)
@given(points())
def test_sum_is_within_an_ulp_of_the_correctly_rounded_sum(pts: tuple[np.ndarray, ...]) -> None:
    metric, step, t, v, _ = pts
    ours = finalize(accumulate(metric, step, t, v))
    flat = group_reduce(metric, step, t, v)
    assert np.array_equal(ours.min, flat.min) and np.array_equal(ours.max, flat.max)
    for i in range(len(ours.step)):
        sel = v[(metric == ours.metric[i]) & (step == ours.step[i])]
        exact = math.fsum(sel.tolist())
        # three 40-bit digits keep 120 bits below the largest value: the error is far below one ulp of it
        bound = 2 * math.ulp(exact) + 2.0**-100 * float(np.abs(sel).max()) * len(sel)
        assert abs(ours.sum[i] - exact) <= bound, (ours.sum[i], exact)


def test_large_counts_keep_exact_digits() -> None:
    """More points in one key than float digit sums can hold exactly: the int64 path is taken."""
    n = 20_000
    v = np.full(n, 1.0 + 2.0**-30)
    one = accumulate(np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64), v)
    halves = merge(
        [
            accumulate(np.zeros(k, np.int64), np.zeros(k, np.int64), np.zeros(k, np.int64), v[:k])
            for k in (n // 2, n - n // 2)
        ]
    )
    assert finalize(one).sum[0] == n * (1.0 + 2.0**-30) == finalize(halves).sum[0]
    assert finalize(one).count[0] == n


def test_empty_inputs() -> None:
    empty = np.empty(0)
    assert len(accumulate(empty.astype(np.int64), empty.astype(np.int64), empty.astype(np.int64), empty)) == 0
    assert len(merge([])) == 0 and len(merge([Partials.empty()])) == 0
