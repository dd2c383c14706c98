"""Tests of the numpy reduction per (metric, step) against plain Python, and of the reduction specs."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simvue_hpc.aggregator.reduce import (
    DEFAULT_OPERATIONS,
    OPERATIONS,
    PER_RANK,
    Reduction,
    group_reduce,
    parse_reductions,
)
from simvue_hpc.errors import ConfigurationError

I64 = np.iinfo(np.int64)

points = st.lists(
    st.tuples(
        st.integers(0, 4),  # metric
        st.one_of(st.integers(-3, 6), st.sampled_from([int(I64.min), int(I64.max)])),  # step
        st.integers(int(I64.min), int(I64.max)),  # time_ns
        st.one_of(
            st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
            st.floats(-1e-6, 1e-6, allow_nan=False, allow_infinity=False),
            st.integers(-1000, 1000).map(float),
        ).filter(lambda v: v == 0 or abs(v) > 1e-100),  # squared deviations must not underflow
    ),
    max_size=120,
)


def columns(pts: list[tuple[int, int, int, float]], metric_dtype: Any = np.int64) -> tuple[np.ndarray, ...]:
    if not pts:
        return (np.empty(0, metric_dtype), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64))
    m, s, t, v = zip(*pts, strict=True)
    return np.array(m, metric_dtype), np.array(s, np.int64), np.array(t, np.int64), np.array(v, np.float64)


def reference(pts: list[tuple[int, int, int, float]]) -> dict[tuple[int, int], dict[str, float]]:
    groups: dict[tuple[int, int], list[tuple[int, float]]] = defaultdict(list)
    for m, s, t, v in pts:
        groups[(m, s)].append((t, v))
    out = {}
    for key, group in groups.items():
        vals = [v for _, v in group]
        out[key] = {
            "count": len(vals),
            "sum": math.fsum(vals),
            "mean": math.fsum(vals) / len(vals),
            "min": min(vals),
            "max": max(vals),
            "std": statistics.pstdev(vals),
            "time_ns": max(t for t, _ in group),
            "scale": max(abs(v) for v in vals),
        }
    return out


@settings(max_examples=150, deadline=None)
@given(pts=points, metric_dtype=st.sampled_from([np.int64, np.uint32, np.int32]))
def test_group_reduce_matches_plain_python(pts: list[tuple[int, int, int, float]], metric_dtype: Any) -> None:
    groups = group_reduce(*columns(pts, metric_dtype))
    ref = reference(pts)
    keys = list(zip(groups.metric.tolist(), groups.step.tolist(), strict=True))
    assert keys == sorted(ref), "one entry per (metric, step), sorted by metric then step"
    n = len(keys)
    for col in (groups.time_ns, groups.count, groups.sum, groups.min, groups.max, groups.mean, groups.std):
        assert len(col) == n
    for i, key in enumerate(keys):
        r = ref[key]
        tol = 1e-12 * r["count"] * r["scale"] + 1e-300
        assert groups.count[i] == r["count"]
        assert groups.time_ns[i] == r["time_ns"]
        assert groups.min[i] == r["min"]
        assert groups.max[i] == r["max"]
        assert math.isclose(groups.sum[i], r["sum"], rel_tol=1e-12, abs_tol=tol)
        assert math.isclose(groups.mean[i], r["mean"], rel_tol=1e-12, abs_tol=tol)
        assert math.isclose(groups.std[i], r["std"], rel_tol=1e-9, abs_tol=1e-7 * r["scale"] + 1e-300)
        assert r["min"] <= groups.mean[i] <= r["max"] or math.isclose(groups.mean[i], r["min"], abs_tol=tol)
        assert groups.std[i] >= 0
        for op in OPERATIONS:
            assert groups.column(op).dtype == np.float64
            assert groups.column(op)[i] == pytest.approx(float(getattr(groups, op)[i]))


@settings(max_examples=60, deadline=None)
@given(pts=points, seed=st.integers(0, 2**32 - 1))
def test_group_reduce_ignores_input_order(pts: list[tuple[int, int, int, float]], seed: int) -> None:
    a = group_reduce(*columns(pts))
    shuffled = list(pts)
    np.random.default_rng(seed).shuffle(shuffled)  # type: ignore[arg-type]
    b = group_reduce(*columns(shuffled))
    for name in ("metric", "step", "time_ns", "count", "min", "max"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    for name in ("sum", "mean", "std"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    value=st.floats(-1e9, 1e9, allow_nan=False),
    n=st.integers(1, 50),
    step=st.integers(int(I64.min), int(I64.max)),
)
def test_identical_values_have_zero_spread(value: float, n: int, step: int) -> None:
    groups = group_reduce(np.zeros(n, np.int64), np.full(n, step), np.arange(n), np.full(n, value))
    assert groups.count.tolist() == [n]
    assert groups.min[0] == groups.max[0] == value
    assert groups.mean[0] == pytest.approx(value, rel=1e-12, abs=1e-300)
    assert groups.std[0] == pytest.approx(0.0, abs=1e-9 * abs(value) + 1e-300)
    assert groups.step[0] == step
    assert groups.time_ns[0] == n - 1


def test_std_is_accurate_for_a_large_offset() -> None:
    """Two passes: a naive E[x²]-E[x]² would lose every digit here."""
    v = 1e9 + np.array([1.0, 2.0, 3.0, 4.0])
    groups = group_reduce(np.zeros(4, np.int64), np.zeros(4, np.int64), np.zeros(4, np.int64), v)
    assert groups.std[0] == pytest.approx(statistics.pstdev([1.0, 2.0, 3.0, 4.0]), rel=1e-9)


def test_group_reduce_small_example() -> None:
    metric = np.array([1, 0, 1, 0, 0], np.uint32)
    step = np.array([5, 2, 5, 2, 3], np.int64)
    t = np.array([10, 20, 30, 5, 7], np.int64)
    v = np.array([1.0, 2.0, 3.0, 6.0, -1.0])
    g = group_reduce(metric, step, t, v)
    assert g.metric.tolist() == [0, 0, 1]
    assert g.step.tolist() == [2, 3, 5]
    assert g.time_ns.tolist() == [20, 7, 30]
    assert g.count.tolist() == [2, 1, 2]
    assert g.sum.tolist() == [8.0, -1.0, 4.0]
    assert g.mean.tolist() == [4.0, -1.0, 2.0]
    assert g.min.tolist() == [2.0, -1.0, 1.0]
    assert g.max.tolist() == [6.0, -1.0, 3.0]
    assert g.std.tolist() == [2.0, 0.0, 1.0]


def test_group_reduce_empty() -> None:
    g = group_reduce(*columns([]))
    for name in ("metric", "step", "time_ns", "count", "sum", "min", "max", "mean", "std"):
        assert len(getattr(g, name)) == 0
    assert g.column("mean").dtype == np.float64


def test_group_reduce_accepts_float32_values() -> None:
    g = group_reduce(np.zeros(2, np.int64), np.zeros(2, np.int64), np.zeros(2, np.int64), np.array([0.1, 0.2], "f4"))
    assert g.sum.dtype == np.float64
    assert g.sum[0] == pytest.approx(0.3, rel=1e-6)


# --------------------------------------------------------------------------------------------- specs
def test_default_reduction() -> None:
    r = Reduction()
    assert r.operations == DEFAULT_OPERATIONS == ("mean", "min", "max")
    assert not r.per_rank
    assert r.output_names("loss") == ["loss", "loss.min", "loss.max"]
    assert r.spec() == ["mean", "min", "max"]


@pytest.mark.parametrize(
    ("spec", "ops", "per_rank"),
    [
        ("sum", ("sum",), False),
        (["sum"], ("sum",), False),
        (("max", "mean"), ("max", "mean"), False),
        (["count", "std", "min"], ("count", "std", "min"), False),
        ("per_rank", (), True),
        (["per_rank"], (), True),
    ],
)
def test_parse(spec: Any, ops: tuple[str, ...], per_rank: bool) -> None:
    r = Reduction.parse("m", spec)
    assert r.operations == ops
    assert r.per_rank is per_rank


@settings(max_examples=80, deadline=None)
@given(ops=st.permutations(OPERATIONS).flatmap(lambda p: st.integers(1, len(p)).map(lambda k: p[:k])))
def test_spec_is_the_inverse_of_parse(ops: list[str]) -> None:
    r = Reduction.parse("x", ops)
    assert r.spec() == list(ops)
    assert Reduction.parse("x", r.spec()) == r
    names = r.output_names("x")
    assert names[0] == "x"
    assert names[1:] == [f"x.{op}" for op in ops[1:]]
    assert len(set(names)) == len(names)


def test_per_rank_spec_round_trip() -> None:
    r = Reduction.parse("x", PER_RANK)
    assert r.spec() == [PER_RANK]
    assert Reduction.parse("x", r.spec()) == r
    assert r.output_names("x") == []


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ([], "at least one"),
        ((), "at least one"),
        ("median", "'median' is not one of"),
        (["mean", "avg"], "'avg' is not one of"),
        (["mean", "mean"], "must not repeat"),
        (["per_rank", "mean"], "'per_rank' is not one of"),
        (["MEAN"], "'MEAN' is not one of"),
        ("", "'' is not one of"),
    ],
)
def test_parse_rejects(spec: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        Reduction.parse("gpu/temp λ", spec)
    assert isinstance(info.value, ValueError)
    assert "reductions['gpu/temp λ']" in str(info.value)


def test_parse_reductions() -> None:
    assert parse_reductions(None) == {}
    assert parse_reductions({}) == {}
    got = parse_reductions({"loss": "sum", "acc": ["max", "min"], "x": "per_rank"})
    assert got == {
        "loss": Reduction(("sum",)),
        "acc": Reduction(("max", "min")),
        "x": Reduction((), per_rank=True),
    }


@pytest.mark.parametrize("specs", [["loss"], "loss", 5, [("loss", "sum")]])
def test_parse_reductions_needs_a_mapping(specs: Any) -> None:
    with pytest.raises(ConfigurationError, match="mapping"):
        parse_reductions(specs)


def test_parse_reductions_names_the_bad_metric() -> None:
    with pytest.raises(ValueError, match=r"reductions\['throughput'\].*'avg'"):
        parse_reductions({"loss": "sum", "throughput": ["avg"]})


def test_every_operation_is_a_groups_column() -> None:
    g = group_reduce(np.array([0]), np.array([0]), np.array([0]), np.array([2.0]))
    for op, expected in zip(OPERATIONS, (2.0, 2.0, 2.0, 2.0, 0.0, 1.0), strict=True):
        assert g.column(op).tolist() == [expected]
    assert list(OPERATIONS) == ["mean", "min", "max", "sum", "std", "count"]
