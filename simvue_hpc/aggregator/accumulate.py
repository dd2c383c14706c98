"""Mergeable running accumulators of points per (key, step): the incremental reduction core.

A :class:`Partials` holds, for each group (key, step), everything the reductions need: count, sum,
min, max, the sum of squared deviations from the mean (``m2``, for the standard deviation) and the
latest point time. :func:`accumulate` builds one from points; :func:`merge` combines any number of them
into what :func:`accumulate` would have built from all their points at once. So the aggregator folds
each batch of points into its open groups once, and a node relay can pre-reduce its ranks' points and
forward partials that the root merges.

Exactness of a merge, whatever the split of the points into partials and their order:

- ``count``, ``min``, ``max`` and ``time_ns`` are exact.
- ``sum`` is kept as an unevaluated double-double ``sum_hi + sum_lo`` (error-free ``two_sum`` at each
  addition), so the float64 sum it rounds to is the correctly rounded exact sum except when the
  points cancel by more than about 2**53 (then within an ulp or so); ``mean`` is that sum / count.
- ``m2`` combines by Chan et al.'s parallel formula (relative error near 1e-15 of the spread).

Groups are kept sorted by (key, step). Pure numpy: the combination of the entries of a group is a
pairwise tree over all groups at once (about log2(largest group) vectorised rounds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_FIELDS = ("key", "step", "time_ns", "count", "sum_hi", "sum_lo", "min", "max", "m2", "arrived")


@dataclass(frozen=True, slots=True, eq=False)
class Partials:
    """Accumulators of groups (key, step), one entry per group, sorted by key then step."""

    key: np.ndarray  # int64
    step: np.ndarray  # int64
    time_ns: np.ndarray  # int64: the latest time among the group's points
    count: np.ndarray  # int64
    sum_hi: np.ndarray  # float64: the sum is sum_hi + sum_lo
    sum_lo: np.ndarray  # float64
    min: np.ndarray  # float64
    max: np.ndarray  # float64
    m2: np.ndarray  # float64: sum of squared deviations from the group's mean
    arrived: np.ndarray  # float64: when the group's first point arrived (the receiver's clock)

    def __len__(self) -> int:
        return len(self.key)

    @classmethod
    def empty(cls) -> Partials:
        i, f = np.empty(0, np.int64), np.empty(0, np.float64)
        return cls(i, i, i, i, f, f, f, f, f, f)

    @property
    def sum(self) -> np.ndarray:
        return self.sum_hi + self.sum_lo

    @property
    def mean(self) -> np.ndarray:
        return self.sum / self.count

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (ddof=0)."""
        return np.sqrt(np.maximum(self.m2, 0.0) / self.count)

    def column(self, op: str) -> np.ndarray:
        """The values of reduction ``op`` (mean, min, max, sum, std, count) as float64."""
        return np.asarray(getattr(self, op), dtype=np.float64)

    def select(self, index: np.ndarray) -> Partials:
        """The groups at ``index`` (a boolean mask or sorted positions), still sorted."""
        return Partials(*(getattr(self, name)[index] for name in _FIELDS))


def accumulate(
    key: np.ndarray, step: np.ndarray, time_ns: np.ndarray, value: np.ndarray, arrived: float | np.ndarray = 0.0
) -> Partials:
    """The accumulators of equal-length point columns, grouped by (key, step); ``arrived`` is when the
    points arrived (one time for all, or one each), kept as each group's earliest."""
    v = np.asarray(value, dtype=np.float64)
    n = len(v)
    if n == 0:
        return Partials.empty()
    key = np.asarray(key, dtype=np.int64)
    step = np.asarray(step, dtype=np.int64)
    order = _order(key, step)
    if not np.array_equal(order, np.arange(n)):
        key, step, v, time_ns = key[order], step[order], v[order], np.asarray(time_ns)[order]
        if np.ndim(arrived):
            arrived = np.asarray(arrived)[order]
    starts = _starts(key, step)
    count = np.diff(np.append(starts, n))
    hi, lo = _segment_sum(v, starts, count)
    mean = (hi + lo) / count
    dev = v - np.repeat(mean, count)
    if np.ndim(arrived):
        first = np.minimum.reduceat(np.asarray(arrived, dtype=np.float64), starts)
    else:
        first = np.full(len(starts), float(arrived))
    return Partials(
        key=key[starts],
        step=step[starts],
        time_ns=np.maximum.reduceat(np.asarray(time_ns, dtype=np.int64), starts),
        count=count.astype(np.int64),
        sum_hi=hi,
        sum_lo=lo,
        min=np.minimum.reduceat(v, starts),
        max=np.maximum.reduceat(v, starts),
        m2=np.add.reduceat(dev * dev, starts),
        arrived=first,
    )


def merge(*parts: Partials) -> Partials:
    """One :class:`Partials` with the groups of all ``parts``: equal groups combined."""
    parts = tuple(p for p in parts if len(p))
    if not parts:
        return Partials.empty()
    if len(parts) == 1:
        return parts[0]
    return _combine(Partials(*(np.concatenate([getattr(p, name) for p in parts]) for name in _FIELDS)))


# ---------------------------------------------------------------------------------------------- internals
def _order(key: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Positions sorting the entries by (key, step), stable."""
    n = len(key)
    if n == 0:
        return np.empty(0, np.int64)
    k_lo, k_hi = int(key.min()), int(key.max())
    s_lo, s_hi = int(step.min()), int(step.max())
    span = s_hi - s_lo + 1
    keys = (k_hi - k_lo + 1) * span
    if keys <= max(4 * n, 1 << 16):  # a small key space: one integer sort key
        dense = (key - k_lo) * span + (step - s_lo)
        if keys <= 1 << 16:
            dense = dense.astype(np.uint16)  # numpy sorts 16-bit keys by radix: linear time
        return np.argsort(dense, kind="stable")
    return np.lexsort((step, key))


def _starts(key: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Where each group of sorted (key, step) entries starts."""
    start = np.empty(len(key), dtype=bool)
    start[0] = True
    np.not_equal(key[1:], key[:-1], out=start[1:])
    start[1:] |= step[1:] != step[:-1]
    return np.flatnonzero(start)


def _pairs(group: np.ndarray, within: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One halving round: the entries that survive (even positions in their group), and the pairs
    (a, b) of survivors a absorbing their next entry b of the same group."""
    a = np.flatnonzero(within % 2 == 0)
    b = a + 1
    has = b < len(group)
    has[has] = group[b[has]] == group[a[has]]
    return a, a[has], b[has]


def _segment_sum(v: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Double-double sums of the sorted segments of ``v`` by a pairwise tree: on a (segments x longest)
    matrix padded with -0.0 (which adds exactly) when that is compact, else halving the entries."""
    hi, lo = v.copy(), np.zeros(len(v))
    if len(starts) == len(v):
        return hi, lo
    longest = int(sizes.max())
    within = np.arange(len(v)) - np.repeat(starts, sizes)
    if len(starts) * longest <= 4 * len(v):
        mat = np.full((len(starts), longest), -0.0)
        mat[np.repeat(np.arange(len(starts)), sizes), within] = v
        mhi, mlo = mat, np.zeros_like(mat)
        first = True
        while mhi.shape[1] > 1:
            half = mhi.shape[1] // 2
            if first:  # plain values: their two_sum is already a normalised double-double
                with np.errstate(invalid="ignore", over="ignore"):
                    h, low = _two_sum(mhi[:, :half], mhi[:, half : 2 * half])
                if not np.isfinite(h).all():
                    low = np.where(np.isfinite(h), low, 0.0)
                first = False
            else:
                h, low = _dd_add(mhi[:, :half], mlo[:, :half], mhi[:, half : 2 * half], mlo[:, half : 2 * half])
            if mhi.shape[1] % 2:
                h = np.hstack([h, mhi[:, 2 * half :]])
                low = np.hstack([low, mlo[:, 2 * half :]])
            mhi, mlo = h, low
        return mhi[:, 0].copy(), mlo[:, 0].copy()
    group = np.repeat(np.arange(len(starts)), sizes)
    while len(hi) > len(starts):
        keep, a, b = _pairs(group, within)
        hi[a], lo[a] = _dd_add(hi[a], lo[a], hi[b], lo[b])
        hi, lo, group, within = hi[keep], lo[keep], group[keep], within[keep] // 2
    return hi, lo


def _dd_add(hi_a: np.ndarray, lo_a: np.ndarray, hi_b: np.ndarray, lo_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hi_a + lo_a) + (hi_b + lo_b) as a normalised double-double; an infinite or NaN sum stays as
    plain addition gives it."""
    with np.errstate(invalid="ignore", over="ignore"):
        s, e = _two_sum(hi_a, hi_b)
        hi, lo = _two_sum(s, e + (lo_a + lo_b))
    finite = np.isfinite(s)
    if finite.all():
        return hi, lo
    return np.where(finite, hi, s), np.where(finite, lo, 0.0)


def _combine(p: Partials) -> Partials:
    """Sort the entries by (key, step) and combine the entries of each group (a halving pairwise tree)."""
    n = len(p)
    if n == 0:
        return Partials.empty()
    order = _order(p.key, p.step)
    if np.array_equal(order, np.arange(n)):
        arrays = {name: getattr(p, name) for name in _FIELDS}
    else:
        arrays = {name: getattr(p, name)[order] for name in _FIELDS}
    starts = _starts(arrays["key"], arrays["step"])
    if len(starts) == n:  # every group has one entry
        return Partials(**arrays)
    sizes = np.diff(np.append(starts, n))
    arrays = {name: a.copy() for name, a in arrays.items()}
    group = np.repeat(np.arange(len(starts)), sizes)
    within = np.arange(n) - np.repeat(starts, sizes)
    while len(group) > len(starts):
        keep, a, b = _pairs(group, within)
        _absorb(arrays, a, b)
        arrays = {name: x[keep] for name, x in arrays.items()}
        group, within = group[keep], within[keep] // 2
    return Partials(**arrays)


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``s + e == a + b`` exactly, with ``s`` the rounded sum (Knuth)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def _absorb(arrays: dict[str, np.ndarray], a: np.ndarray, b: np.ndarray) -> None:
    """Entries ``a`` become the combination of entries ``a`` and ``b`` (same groups)."""
    n_a, n_b = arrays["count"][a], arrays["count"][b]
    n = n_a + n_b
    hi_a, lo_a = arrays["sum_hi"][a], arrays["sum_lo"][a]
    hi_b, lo_b = arrays["sum_hi"][b], arrays["sum_lo"][b]
    with np.errstate(invalid="ignore", over="ignore"):
        delta = (hi_b + lo_b) / n_b - (hi_a + lo_a) / n_a
        arrays["m2"][a] = arrays["m2"][a] + arrays["m2"][b] + delta * delta * (n_a * (n_b / n))
    arrays["sum_hi"][a], arrays["sum_lo"][a] = _dd_add(hi_a, lo_a, hi_b, lo_b)
    arrays["count"][a] = n
    arrays["min"][a] = np.minimum(arrays["min"][a], arrays["min"][b])
    arrays["max"][a] = np.maximum(arrays["max"][a], arrays["max"][b])
    arrays["time_ns"][a] = np.maximum(arrays["time_ns"][a], arrays["time_ns"][b])
    arrays["arrived"][a] = np.minimum(arrays["arrived"][a], arrays["arrived"][b])
