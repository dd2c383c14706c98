"""Tests of the pixel-width reduction of series: extremes kept, bands and quantiles exact."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from simvue_hpc.view import downsample


def test_few_points_are_kept_as_they_are() -> None:
    x, y = downsample.minmax([3, 1, 2], [30.0, 10.0, 20.0], buckets=10)
    assert x.tolist() == [1, 2, 3] and y.tolist() == [10, 20, 30]


def test_a_single_spike_among_a_million_points_survives() -> None:
    n = 1_000_000
    y = np.zeros(n)
    y[123_457] = 42.0
    y[876_543] = -7.0
    x, kept = downsample.minmax(np.arange(n), y, buckets=1000)
    assert len(kept) <= 2000
    assert kept.max() == 42.0 and kept.min() == -7.0
    assert x[np.argmax(kept)] == 123_457 and x[np.argmin(kept)] == 876_543
    assert np.all(np.diff(x) >= 0)  # still in x order


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=400),
    st.integers(1, 50),
)
def test_every_column_keeps_its_min_and_max(values: list[float], buckets: int) -> None:
    y = np.array(values)
    x = np.arange(len(y), dtype=float)
    kx, ky = downsample.minmax(x, y, buckets)
    if len(y) <= 2 * buckets:
        assert ky.tolist() == y.tolist()
        return
    col, _ = downsample.columns(x, buckets)
    kept_col = col[np.searchsorted(x, kx)]  # each kept point's column
    for c in np.unique(col):
        assert y[col == c].min() == ky[kept_col == c].min()
        assert y[col == c].max() == ky[kept_col == c].max()
    assert len(ky) <= 2 * buckets


def test_envelope_takes_the_lowest_low_and_the_highest_high_per_column() -> None:
    x = np.arange(10)
    low, high = -np.arange(10.0), np.arange(10.0)
    bx, lo, hi = downsample.envelope(x, low, high, buckets=5)
    assert len(bx) == 5
    assert lo.tolist() == [-1, -3, -5, -7, -9] and hi.tolist() == [1, 3, 5, 7, 9]
    bx, lo, hi = downsample.envelope(x, low, high, buckets=100)  # few points: one column per x
    assert bx.tolist() == x.tolist() and lo.tolist() == low.tolist()


def test_quantiles_across_ranks_per_step_match_numpy() -> None:
    rng = np.random.default_rng(7)
    ranks, steps = 101, 20
    y = rng.normal(size=(ranks, steps))
    x = np.tile(np.arange(steps), ranks)
    bx, (q0, q50, q100) = downsample.quantiles(x, y.ravel(), buckets=100, qs=(0, 0.5, 1))
    assert bx.tolist() == list(range(steps))
    assert np.array_equal(q0, y.min(axis=0)) and np.array_equal(q100, y.max(axis=0))
    assert np.array_equal(q50, np.median(y, axis=0))  # 101 ranks: the median is one of them
