"""The mergeable accumulators against plain Python and the flat reducer: any split of the points into
partials, merged in any order, gives what one pass over all the points gives."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from simvue_hpc.aggregator.accumulate import Partials, accumulate, merge
from simvue_hpc.aggregator.reduce import group_reduce
from tests.unit.test_reduce import columns, points, reference


def as_dict(p: Partials) -> dict[tuple[int, int], dict[str, float]]:
    out = {}
    for i, key in enumerate(zip(p.key.tolist(), p.step.tolist(), strict=True)):
        out[key] = {op: float(p.column(op)[i]) for op in ("count", "sum", "mean", "min", "max", "std")}
        out[key]["time_ns"] = int(p.time_ns[i])
    return out


def same(a: float, b: float) -> bool:
    """Bit for bit (NaN equal to NaN)."""
    return np.float64(a).tobytes() == np.float64(b).tobytes()


def same_extremum(a: float, b: float) -> bool:
    """Bit for bit, except that a zero extremum may carry either sign: among 0.0 and -0.0 (equal values)
    which one is the minimum depends on the order they came in, which merging does not keep."""
    return same(a, b) or (a == 0.0 and b == 0.0)


def close_std(a: float, b: float, scale: float) -> bool:
    return abs(a - b) <= 1e-12 * max(scale, 1e-300)


@settings(max_examples=200, deadline=None)
@given(pts=points)
def test_accumulate_matches_plain_python(pts: list[tuple[int, int, int, float]]) -> None:
    got = accumulate(*columns(pts))
    keys = list(zip(got.key.tolist(), got.step.tolist(), strict=True))
    ref = reference(pts)
    assert keys == sorted(ref)
    for key, g in as_dict(got).items():
        r = ref[key]
        assert g["count"] == r["count"] and g["time_ns"] == r["time_ns"]
        assert same_extremum(g["min"], r["min"]) and same_extremum(g["max"], r["max"])
        assert same(g["sum"], r["sum"]), (key, g["sum"], r["sum"])  # the correctly rounded exact sum
        assert same(g["mean"], r["mean"])
        assert close_std(g["std"], r["std"], r["scale"])


@settings(max_examples=200, deadline=None)
@given(pts=points, cuts=st.lists(st.integers(0, 120), max_size=6), seed=st.integers(0, 2**32 - 1))
def test_merged_partials_equal_one_pass(pts: list[tuple[int, int, int, float]], cuts: list[int], seed: int) -> None:
    """Split the points (shuffled) into pieces, accumulate each, merge in a random order, even nested."""
    rng = np.random.default_rng(seed)
    shuffled = [pts[i] for i in rng.permutation(len(pts))]
    bounds = sorted({0, len(pts), *(c for c in cuts if c <= len(pts))})
    pieces = [accumulate(*columns(shuffled[a:b])) for a, b in pairwise(bounds)]
    pieces = [pieces[i] for i in rng.permutation(len(pieces))]
    half = len(pieces) // 2
    merged = merge(merge(*pieces[:half]), merge(*pieces[half:]))  # a relay of relays
    whole = accumulate(*columns(pts))
    assert merged.key.tolist() == whole.key.tolist() and merged.step.tolist() == whole.step.tolist()
    ref = reference(pts)
    for key, m in as_dict(merged).items():
        w = as_dict(whole)[key]
        for op in ("count", "sum", "mean", "time_ns"):
            assert same(m[op], w[op]), (key, op, m[op], w[op])
        assert same_extremum(m["min"], w["min"]) and same_extremum(m["max"], w["max"]), (key, m, w)
        assert close_std(m["std"], w["std"], ref[key]["scale"])


@settings(max_examples=100, deadline=None)
@given(pts=points)
def test_accumulate_agrees_with_the_flat_reducer(pts: list[tuple[int, int, int, float]]) -> None:
    acc = accumulate(*columns(pts))
    flat = group_reduce(*columns(pts))
    assert acc.key.tolist() == flat.metric.tolist() and acc.step.tolist() == flat.step.tolist()
    assert acc.count.tolist() == flat.count.tolist() and acc.time_ns.tolist() == flat.time_ns.tolist()
    assert acc.min.tolist() == flat.min.tolist() and acc.max.tolist() == flat.max.tolist()
    scale = np.array([r["scale"] for _, r in sorted(reference(pts).items())])
    for op in ("sum", "mean"):  # the flat reducer rounds at each addition; the accumulators do not
        assert np.all(np.abs(acc.column(op) - flat.column(op)) <= 1e-12 * np.maximum(scale, 1e-300) * acc.count)
    assert np.all(np.abs(acc.std - flat.std) <= 1e-12 * np.maximum(scale, 1e-300))


def test_cancellation_keeps_the_small_terms() -> None:
    """Naive summation loses the 1.0 between the large terms; the double-double sum keeps it, however split."""
    v = np.array([1e16, 1.0, -1e16, 3.0])
    k = np.zeros(4, np.int64)
    whole = accumulate(k, k, k, v)
    assert whole.sum.tolist() == [4.0] and whole.mean.tolist() == [1.0]
    parts = [accumulate(k[i : i + 1], k[i : i + 1], k[i : i + 1], v[i : i + 1]) for i in (2, 0, 3, 1)]
    assert merge(*parts).sum.tolist() == [4.0]


def test_large_offset_std() -> None:
    v = 1e9 + np.array([1.0, 2.0, 3.0, 4.0])
    k = np.zeros(4, np.int64)
    parts = [accumulate(k[:1], k[:1], k[:1], v[i : i + 1]) for i in range(4)]
    assert abs(merge(*parts).std[0] - math.sqrt(1.25)) < 1e-6


def test_empty_and_select() -> None:
    e = accumulate(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))
    assert len(e) == 0 and len(merge(e, Partials.empty())) == 0
    k = np.array([1, 0, 1], np.int64)
    p = accumulate(k, np.array([5, 5, 4]), np.array([7, 8, 9]), np.array([1.0, 2.0, 3.0]))
    assert list(zip(p.key.tolist(), p.step.tolist(), strict=True)) == [(0, 5), (1, 4), (1, 5)]
    assert p.select(p.key == 1).sum.tolist() == [3.0, 1.0]
