"""A run's metrics as a table for pandas and friends: CSV always, Parquet when pyarrow is there.

One row per stored point, in long form: ``metric, step, time_us, value, late``. ``time_us`` is
microseconds since the Unix epoch (UTC); ``late`` is true for points that arrived after their step
had been stored. ``pandas.read_csv(path)`` or ``pandas.read_parquet(path)`` reads it back, and
``df.pivot_table(index="step", columns="metric", values="value")`` gives the wide form.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..errors import ConfigurationError, MissingExtra
from .history import RunHistory

COLUMNS = ("metric", "step", "time_us", "value", "late")
FORMATS = (".csv", ".parquet")


def export_metrics(history: RunHistory, path: Path) -> int:
    """Write every point of history's series to path (.csv or .parquet); returns the rows written."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigurationError(f"--metrics must end in .csv or .parquet, got {path.name!r}")
    if suffix == ".parquet":
        return _parquet(history, path)
    rows = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for name, s in history.series.items():
            values = [repr(v) for v in s.value.tolist()]  # repr: the shortest text that reads back exactly
            late = np.where(s.late, "true", "false").tolist()
            writer.writerows(zip([name] * len(s), s.step.tolist(), s.time_us.tolist(), values, late, strict=True))
            rows += len(s)
    return rows


def _parquet(history: RunHistory, path: Path) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingExtra("parquet", "pyarrow", "writing Parquet") from exc
    series = history.series
    names = list(series)
    lengths = [len(s) for s in series.values()]
    codes = np.repeat(np.arange(len(names), dtype=np.int32), lengths)

    def column(attr: str, dtype: str) -> np.ndarray:
        parts = [getattr(s, attr) for s in series.values()]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    table = pa.table(
        {
            "metric": pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(names, pa.string())),
            "step": pa.array(column("step", "int64"), pa.int64()),
            "time_us": pa.array(column("time_us", "int64"), pa.int64()),
            "value": pa.array(column("value", "float64"), pa.float64()),
            "late": pa.array(column("late", "bool"), pa.bool_()),
        }
    )
    pq.write_table(table, path)
    return int(sum(lengths))
