"""Mergeable accumulators per (metric, step): what a node relay sends up instead of its ranks' points.

A :class:`Partials` holds, per (metric, step) key, everything the stored reductions need: count,
min, max, the latest time, Welford's mean and M2 (for std), and the sum in a form whose merge is
exact, so that reducing a step's points in one place or in any tree of partial reductions stores
the same count, sum, min and max, bit for bit, and the same mean and std to ~1e-15 relative.

Why the sum needs care
    Floating-point addition is not associative: summing the same points in another grouping (per node,
    then across nodes) or another arrival order rounds differently. Here each finite value ``v`` is
    cut, exactly, into integer digits of 40 bits on a grid fixed by the exponent: digit ``k`` is
    ``trunc(v / 2**(40 k))`` after the higher digits are removed (``math.ldexp``, no rounding). A key
    keeps the three digits ``top, top-1, top-2`` below the key's largest magnitude (``top`` depends only
    on the largest ``|v|``, so on the set of values, never on their order) and adds each digit as an
    int64: integer addition is associative, so any grouping gives the same digits. What lies below the
    three digits (less than 2**-80 of the largest value) is dropped the same way in every grouping. The
    final sum is a fixed function of the digits: reproducible, and exact whenever the true sum is a
    float64 (integers, dyadic values). Digits stay exact for up to 2**23 points per key.

Non-finite values are counted apart (flags): a NaN, or both infinities, make the sum NaN; one
infinity makes it that infinity; std is then NaN, min and max propagate NaN as numpy does.

Pure: numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

DIGIT_BITS = 40
DIGITS = 3
NAN_FLAG, POS_INF_FLAG, NEG_INF_FLAG = 1, 2, 4
_INT64_MIN = np.iinfo(np.int64).min


@dataclass(frozen=True, slots=True, eq=False)
class Partials:
    """Columns of accumulators, one row per key (a key may repeat until :func:`merge`)."""

    metric: np.ndarray  # int64: the metric's id in the caller's table
    step: np.ndarray  # int64
    count: np.ndarray  # int64: all points
    finite: np.ndarray  # int64: the finite ones (mean, m2 and the digits are over these)
    top: np.ndarray  # int64: index of the highest digit kept
    digits: np.ndarray  # int64 (n, DIGITS): digits top, top-1, top-2 of the sum
    flags: np.ndarray  # uint8: NAN_FLAG | POS_INF_FLAG | NEG_INF_FLAG seen
    min: np.ndarray  # float64
    max: np.ndarray  # float64
    mean: np.ndarray  # float64: Welford mean of the finite values (0 if none)
    m2: np.ndarray  # float64: sum of squared deviations from it
    time_ns: np.ndarray  # int64: the latest time

    def __len__(self) -> int:
        return len(self.step)

    def rows(self, keep: np.ndarray) -> Partials:
        """The rows selected by a boolean mask or an index array."""
        return Partials(*(getattr(self, f.name)[keep] for f in fields(self)))

    @staticmethod
    def empty() -> Partials:
        i = np.empty(0, np.int64)
        f = np.empty(0, np.float64)
        return Partials(i, i, i, i, i, np.empty((0, DIGITS), np.int64), np.empty(0, np.uint8), f, f, f, f, i)


def _top_of(absval: np.ndarray) -> np.ndarray:
    """Index of the digit holding the leading bit: ``|v| < 2**(40 (top + 1))``."""
    _, exp = np.frexp(absval)
    return (exp.astype(np.int64) - 1) // DIGIT_BITS


def _cut(value: np.ndarray, top: np.ndarray) -> np.ndarray:
    """The digits ``top, top-1, top-2`` of each finite value, exactly (the rest is dropped)."""
    out = np.empty((len(value), DIGITS), dtype=np.int64)
    rest = value.copy()
    for j in range(DIGITS):
        shift = (DIGIT_BITS * (top - j)).astype(np.int32)
        digit = np.trunc(np.ldexp(rest, -shift))
        out[:, j] = digit.astype(np.int64)
        rest = rest - np.ldexp(digit, shift)  # exact: removes the leading bits
    return out


def _keys(metric: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(key of each point, metric of each key, step of each key)``, keys sorted by (metric, step)."""
    m_lo, s_lo = int(metric.min()), int(step.min())
    span = int(step.max()) - s_lo + 1
    nkeys = (int(metric.max()) - m_lo + 1) * span
    if nkeys <= max(4 * len(step), 1 << 16):  # dense: count into the (metric, step) box
        box = (metric - m_lo) * span + (step - s_lo)
        present = np.flatnonzero(np.bincount(box, minlength=nkeys))
        lut = np.empty(nkeys, dtype=np.int64)
        lut[present] = np.arange(len(present))
        return lut[box], present // span + m_lo, present % span + s_lo
    pairs, inverse = np.unique(np.stack([metric, step]), axis=1, return_inverse=True)
    return inverse.ravel(), pairs[0], pairs[1]


def accumulate(metric: np.ndarray, step: np.ndarray, time_ns: np.ndarray, value: np.ndarray) -> Partials:
    """Accumulators of raw points, one row per (metric, step) present; each point touched O(1) times."""
    value = np.asarray(value, dtype=np.float64)
    if len(value) == 0:
        return Partials.empty()
    metric = np.asarray(metric, dtype=np.int64)
    step = np.asarray(step, dtype=np.int64)
    key, k_metric, k_step = _keys(metric, step)
    nk = len(k_metric)
    is_finite = np.isfinite(value)
    clean = np.where(is_finite, value, 0.0)
    count = np.bincount(key, minlength=nk).astype(np.int64)
    finite = np.bincount(key, weights=is_finite, minlength=nk).astype(np.int64)
    top = np.full(nk, _INT64_MIN, dtype=np.int64)
    np.maximum.at(top, key[is_finite], _top_of(np.abs(clean[is_finite])))
    top = np.where(finite > 0, top, 0)
    cut = _cut(clean, top[key])
    digits = np.zeros((nk, DIGITS), dtype=np.int64)
    if int(count.max()) <= 1 << (52 - DIGIT_BITS):  # float sums of < 2**52 are exact
        for j in range(DIGITS):
            digits[:, j] = np.bincount(key, weights=cut[:, j], minlength=nk).astype(np.int64)
    else:
        for j in range(DIGITS):
            np.add.at(digits[:, j], key, cut[:, j])
    flags = np.zeros(nk, dtype=np.uint8)
    for flag, mask in ((NAN_FLAG, np.isnan(value)), (POS_INF_FLAG, value == np.inf), (NEG_INF_FLAG, value == -np.inf)):
        if mask.any():
            flags[np.unique(key[mask])] |= flag
    low = np.full(nk, np.inf)
    high = np.full(nk, -np.inf)
    with np.errstate(invalid="ignore"):  # NaN propagates into min and max, as in the flat reducer
        np.minimum.at(low, key, value)
        np.maximum.at(high, key, value)
    mean = np.bincount(key, weights=clean, minlength=nk) / np.maximum(finite, 1)
    dev = np.where(is_finite, clean - mean[key], 0.0)
    with np.errstate(over="ignore"):  # beyond ~1e154 the squares overflow to inf, as in the flat reducer
        m2 = np.bincount(key, weights=dev * dev, minlength=nk)
    latest = np.full(nk, _INT64_MIN, dtype=np.int64)
    np.maximum.at(latest, key, np.asarray(time_ns, dtype=np.int64))
    return Partials(k_metric, k_step, count, finite, top, digits, flags, low, high, mean, m2, latest)


def _groups(metric: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(order, starts)``: rows sorted by (metric, step) and where each key's run begins."""
    order = np.lexsort((step, metric))
    m, s = metric[order], step[order]
    change = np.empty(len(order), dtype=bool)
    if len(order):
        change[0] = True
        np.not_equal(m[1:], m[:-1], out=change[1:])
        change[1:] |= s[1:] != s[:-1]
    return order, np.flatnonzero(change)


def merge(parts: list[Partials]) -> Partials:
    """One row per key: the rows of every part combined, in any order, with the same result."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return Partials.empty()
    cat = (
        parts[0]
        if len(parts) == 1
        else Partials(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Partials)))
    )
    order, starts = _groups(cat.metric, cat.step)
    p = cat.rows(order)
    n = len(p)
    sizes = np.diff(np.append(starts, n))
    count = np.add.reduceat(p.count, starts)
    finite = np.add.reduceat(p.finite, starts)
    # digits: align every row on its key's top digit, then add as integers (exact, associative)
    top = np.maximum.reduceat(np.where(p.finite > 0, p.top, _INT64_MIN), starts)
    key_top = np.repeat(top, sizes)
    gap = np.where(p.finite > 0, key_top - p.top, DIGITS)
    aligned = np.zeros_like(p.digits)
    for d in range(DIGITS):
        rows = gap == d
        if rows.any():
            aligned[rows, d:] = p.digits[rows, : DIGITS - d]
    digits = np.add.reduceat(aligned, starts, axis=0)
    # mean and m2 (Chan et al.): over the finite values only
    safe = np.maximum(finite, 1)
    weighted = np.add.reduceat(p.mean * p.finite, starts)
    mean = weighted / safe
    dev = p.mean - np.repeat(mean, sizes)
    with np.errstate(over="ignore", invalid="ignore"):
        m2 = np.add.reduceat(p.m2 + p.finite * dev * dev, starts)
    with np.errstate(invalid="ignore"):
        low, high = np.minimum.reduceat(p.min, starts), np.maximum.reduceat(p.max, starts)
    return Partials(
        metric=p.metric[starts],
        step=p.step[starts],
        count=count,
        finite=finite,
        top=np.where(finite > 0, top, 0),
        digits=digits,
        flags=np.bitwise_or.reduceat(p.flags, starts),
        min=low,
        max=high,
        mean=np.where(finite > 0, mean, 0.0),
        m2=np.where(finite > 0, m2, 0.0),
        time_ns=np.maximum.reduceat(p.time_ns, starts),
    )


def total(p: Partials) -> np.ndarray:
    """The sum of each key: a fixed function of its digits (and flags)."""
    d = p.digits.copy()
    for j in range(DIGITS - 1, 0, -1):  # carry so that the lower digits lie in [0, 2**40)
        carry = d[:, j] >> DIGIT_BITS
        d[:, j] -= carry << DIGIT_BITS
        d[:, j - 1] += carry
    with np.errstate(over="ignore", invalid="ignore"):  # a sum past 1.8e308 is inf, as in the flat reducer
        low = np.ldexp(d[:, 2].astype(np.float64), (DIGIT_BITS * (p.top - 2)).astype(np.int32))
        mid = np.ldexp(d[:, 1].astype(np.float64), (DIGIT_BITS * (p.top - 1)).astype(np.int32))
        high = np.ldexp(d[:, 0].astype(np.float64), (DIGIT_BITS * p.top).astype(np.int32))
        out = high + (mid + low)
    out[(p.flags & POS_INF_FLAG) > 0] = np.inf
    out[(p.flags & NEG_INF_FLAG) > 0] = -np.inf
    both = POS_INF_FLAG | NEG_INF_FLAG
    out[((p.flags & NAN_FLAG) > 0) | ((p.flags & both) == both)] = np.nan
    return out


@dataclass(frozen=True, slots=True, eq=False)
class Reduced:
    """The stored reductions of each key of a merged :class:`Partials`."""

    metric: np.ndarray
    step: np.ndarray
    time_ns: np.ndarray
    count: np.ndarray
    sum: np.ndarray
    min: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    def column(self, op: str) -> np.ndarray:
        """The values of operation ``op`` as float64."""
        return np.asarray(getattr(self, op), dtype=np.float64)


def finalize(p: Partials) -> Reduced:
    """count, sum, min, max, mean (= sum / count) and population std of each key of a merged Partials."""
    s = total(p)
    count = p.count
    nonfinite = p.flags > 0
    std = np.sqrt(p.m2 / np.maximum(p.finite, 1))
    std[nonfinite] = np.nan
    with np.errstate(invalid="ignore"):
        return Reduced(p.metric, p.step, p.time_ns, count, s, p.min, p.max, s / count, std)
