"""Column helpers of the step finality: staged chunks joined, lookup tables grown, and relays' rows
of one group combined into one."""

from __future__ import annotations

import numpy as np

from .accumulate import Partials, merge


def combined(rows: Partials) -> Partials:
    """Rows of possibly repeated groups (several relays' rows of a step) as one row per group, sorted."""
    if len(rows) < 2:
        return rows
    half = len(rows) // 2
    return merge(rows.select(np.arange(half)), rows.select(np.arange(half, len(rows))))


def concat(chunks: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Staged column chunks as one tuple of columns (no copy for a single chunk)."""
    if len(chunks) == 1:
        return chunks[0]
    return tuple(np.concatenate(cols) for cols in zip(*chunks, strict=True))


def grown(array: np.ndarray, fill: int) -> np.ndarray:
    """A lookup table twice as long, the new entries ``fill``."""
    grown = np.full(2 * len(array), fill, dtype=array.dtype)
    grown[: len(array)] = array
    return grown
