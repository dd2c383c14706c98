"""Reduction of the ranks' points per (metric, step) with numpy, and the per-metric reduction spec.

A metric logged by several ranks is stored as its first operation under its own name and the others
as companions ``name.op`` (default: mean, with ``name.min`` and ``name.max``). ``per_rank`` keeps
every rank's value as ``name/rank_<k>``, for small jobs. Standard deviation is the population one
(ddof=0), computed in two passes for accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigurationError

OPERATIONS = ("mean", "min", "max", "sum", "std", "count")
DEFAULT_OPERATIONS = ("mean", "min", "max")
PER_RANK = "per_rank"


@dataclass(frozen=True, slots=True)
class Reduction:
    """How one metric is reduced across ranks."""

    operations: tuple[str, ...] = DEFAULT_OPERATIONS
    per_rank: bool = False

    @classmethod
    def parse(cls, metric: str, spec: str | Sequence[str]) -> Reduction:
        """From ``"sum"``, ``"per_rank"`` or ``["max", "mean"]``; ValueError naming the metric."""
        if isinstance(spec, str):
            spec = [spec]
        ops = tuple(spec)
        if ops == (PER_RANK,):
            return cls(operations=(), per_rank=True)
        if not ops:
            raise ConfigurationError(f"reductions[{metric!r}]: give at least one of {', '.join(OPERATIONS)}")
        for op in ops:
            if op not in OPERATIONS:
                allowed = ", ".join((*OPERATIONS, PER_RANK))
                raise ConfigurationError(f"reductions[{metric!r}]: {op!r} is not one of {allowed}")
        if len(set(ops)) != len(ops):
            raise ConfigurationError(f"reductions[{metric!r}]: operations must not repeat")
        return cls(operations=ops)

    def spec(self) -> list[str]:
        """The inverse of :meth:`parse`, as sent in the handshake."""
        return [PER_RANK] if self.per_rank else list(self.operations)

    def output_names(self, metric: str) -> list[str]:
        """Stored names, one per operation: the first keeps the metric's name."""
        return [metric if i == 0 else f"{metric}.{op}" for i, op in enumerate(self.operations)]


def parse_reductions(specs: Mapping[str, str | Sequence[str]] | None) -> dict[str, Reduction]:
    """Validate a user's ``{metric: spec}`` mapping."""
    if specs is None:
        return {}
    if not isinstance(specs, Mapping):
        raise ConfigurationError("reductions must be a mapping of metric name to operations")
    return {str(name): Reduction.parse(str(name), spec) for name, spec in specs.items()}


@dataclass(frozen=True, slots=True)
class Groups:
    """Points grouped by (metric, step), sorted by metric then step; one entry per group."""

    metric: np.ndarray
    step: np.ndarray
    time_ns: np.ndarray  # the latest time among the group's points
    count: np.ndarray
    sum: np.ndarray
    min: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    def column(self, op: str) -> np.ndarray:
        """The values of operation ``op`` as float64."""
        return np.asarray(getattr(self, op), dtype=np.float64)


def group_reduce(metric: np.ndarray, step: np.ndarray, time_ns: np.ndarray, value: np.ndarray) -> Groups:
    """Reduce equal-length point columns per (metric, step) in a handful of vectorised passes."""
    n = len(value)
    if n == 0:
        empty_i = np.empty(0, np.int64)
        empty_f = np.empty(0, np.float64)
        return Groups(empty_i, empty_i, empty_i, empty_i, empty_f, empty_f, empty_f, empty_f, empty_f)
    dense = _dense_keys(metric, step, n)
    if dense is not None:
        return _reduce_dense(*dense, metric, step, time_ns, np.asarray(value, dtype=np.float64))
    order = np.lexsort((step, metric))
    m = metric[order]
    s = step[order]
    v = np.asarray(value, dtype=np.float64)[order]
    t = time_ns[order]
    change = np.empty(n, dtype=bool)
    change[0] = True
    np.not_equal(m[1:], m[:-1], out=change[1:])
    change[1:] |= s[1:] != s[:-1]
    starts = np.flatnonzero(change)
    count = np.diff(np.append(starts, n))
    total = np.add.reduceat(v, starts)
    mean = total / count
    dev = v - np.repeat(mean, count)
    std = np.sqrt(np.add.reduceat(dev * dev, starts) / count)
    return Groups(
        metric=m[starts],
        step=s[starts],
        time_ns=np.maximum.reduceat(t, starts),
        count=count,
        sum=total,
        min=np.minimum.reduceat(v, starts),
        max=np.maximum.reduceat(v, starts),
        mean=mean,
        std=std,
    )


def _dense_keys(metric: np.ndarray, step: np.ndarray, n: int) -> tuple[np.ndarray, int] | None:
    """``(key, number of keys)`` with key = metric-major, step-minor rank of each point, when the
    (metric, step) space is small enough to count in (about the usual case: steps close together);
    None when it is sparse, and sorting is cheaper."""
    m_lo, m_hi = int(metric.min()), int(metric.max())
    s_lo, s_hi = int(step.min()), int(step.max())
    span = s_hi - s_lo + 1
    keys = (m_hi - m_lo + 1) * span
    if keys > max(4 * n, 1 << 16):
        return None
    return (metric.astype(np.int64) - m_lo) * span + (step.astype(np.int64) - s_lo), keys


def _reduce_dense(
    key: np.ndarray, keys: int, metric: np.ndarray, step: np.ndarray, time_ns: np.ndarray, v: np.ndarray
) -> Groups:
    """The same reductions as the sorting path, by counting into the key space (about 5x faster)."""
    count_all = np.bincount(key, minlength=keys)
    present = np.flatnonzero(count_all)
    first = np.zeros(keys, dtype=np.int64)
    first[key[::-1]] = np.arange(len(key) - 1, -1, -1)  # any point of each key, for its metric and step
    count = count_all[present]
    total = np.bincount(key, weights=v, minlength=keys)[present]
    mean = total / count
    mean_all = np.zeros(keys)
    mean_all[present] = mean
    dev = v - mean_all[key]
    std = np.sqrt(np.bincount(key, weights=dev * dev, minlength=keys)[present] / count)
    low = np.full(keys, np.inf)
    np.minimum.at(low, key, v)
    high = np.full(keys, -np.inf)
    np.maximum.at(high, key, v)
    latest = np.full(keys, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(latest, key, time_ns.astype(np.int64))
    at = first[present]
    return Groups(
        metric=metric[at],
        step=step[at],
        time_ns=latest[present],
        count=count,
        sum=total,
        min=low[present],
        max=high[present],
        mean=mean,
        std=std,
    )
