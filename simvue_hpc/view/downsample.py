"""Reduce a series to what a plot of a given pixel width can show, keeping its extremes.

A line of a million points drawn 1,000 pixels wide shows, in each pixel column, the span from the
lowest to the highest value there. Keeping each column's minimum and maximum point (in x order)
draws the same picture from 2,000 points; a spike is never averaged away.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def columns(x: npt.ArrayLike, buckets: int) -> tuple[IntArray, FloatArray]:
    """Each point's column (0..k-1) and each column's x: exact x values when at most buckets differ."""
    xs = np.asarray(x, dtype=np.float64)
    if xs.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    uniq, inverse = np.unique(xs, return_inverse=True)
    if len(uniq) <= buckets:
        return inverse.astype(np.int64).ravel(), uniq
    lo, hi = float(uniq[0]), float(uniq[-1])
    col = np.minimum(((xs - lo) / (hi - lo) * buckets).astype(np.int64), buckets - 1)
    used, col = np.unique(col, return_inverse=True)
    centres = lo + (used + 0.5) * (hi - lo) / buckets
    return col.astype(np.int64).ravel(), centres


def minmax(x: npt.ArrayLike, y: npt.ArrayLike, buckets: int) -> tuple[FloatArray, FloatArray]:
    """The points to draw of a line: all of them when few, else each column's min and max, in x order."""
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    if len(xs) <= 2 * buckets:
        return xs, ys
    finite = ~np.isnan(ys)
    xs, ys = xs[finite], ys[finite]
    col, _ = columns(xs, buckets)
    by_value = np.lexsort((ys, col))  # grouped by column, ascending value inside each
    starts = np.flatnonzero(np.r_[True, col[by_value][1:] != col[by_value][:-1]])
    ends = np.r_[starts[1:], len(by_value)] - 1
    keep = np.unique(np.concatenate([by_value[starts], by_value[ends]]))  # unique sorts: x order again
    return xs[keep], ys[keep]


def envelope(
    x: npt.ArrayLike, low: npt.ArrayLike, high: npt.ArrayLike, buckets: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """A band from low to high per column: the lowest low and highest high of the points in it."""
    col, centres = columns(x, buckets)
    lo = np.full(len(centres), np.inf)
    hi = np.full(len(centres), -np.inf)
    np.fmin.at(lo, col, np.asarray(low, dtype=np.float64))
    np.fmax.at(hi, col, np.asarray(high, dtype=np.float64))
    lo[np.isinf(lo)] = np.nan
    hi[np.isinf(hi)] = np.nan
    return centres, lo, hi


def quantiles(
    x: npt.ArrayLike, y: npt.ArrayLike, buckets: int, qs: Sequence[float]
) -> tuple[FloatArray, list[FloatArray]]:
    """Per column, the given quantiles (0..1) of every point in it (e.g. every rank at a step)."""
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    finite = ~np.isnan(ys)
    col, centres = columns(xs[finite], buckets)
    ys = ys[finite]
    if ys.size == 0:
        return centres, [np.zeros(0) for _ in qs]
    order = np.lexsort((ys, col))
    sorted_y = ys[order]
    counts = np.bincount(col, minlength=len(centres))
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    present = counts > 0
    out = []
    for q in qs:
        pos = starts + np.floor(q * (counts - 1) + 0.5).astype(np.int64).clip(0)
        values = np.full(len(centres), np.nan)
        values[present] = sorted_y[pos[present]]
        out.append(values)
    return centres, out
