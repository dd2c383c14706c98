"""load_summary: each metric summarised in one pass agrees with the full series of load_run."""

from __future__ import annotations

import fnmatch
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simvue_hpc.store import RecordType, RunView, RunWriter, list_runs, load_run, load_summary

T0 = 1_700_000_000_000_000
I64 = np.iinfo(np.int64)


def _expected(view: RunView) -> dict[str, tuple[Any, ...]]:
    """The summary rows computed from full series."""
    out = {}
    for name, s in view.metrics.items():
        finite = s.value[np.isfinite(s.value)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (np.nan, np.nan)
        last = len(s) - 1 - int(np.argmax(s.step[::-1]))  # the last point at the highest step
        out[name] = (len(s), int(s.step.min()), int(s.step[last]), lo, hi, float(s.value[last]), s.late)
    return out


def _rows(view: RunView) -> dict[str, tuple[Any, ...]]:
    assert view.summary is not None
    return {row.name: tuple(row)[1:] for row in view.summary}


def _same(a: dict[str, tuple[Any, ...]], b: dict[str, tuple[Any, ...]]) -> bool:
    """Equal, NaN equal to NaN."""
    return a.keys() == b.keys() and all(
        all(x == y or (x != x and y != y) for x, y in zip(a[k], b[k], strict=True)) for k in a
    )


@st.composite
def _batches(draw: st.DrawFn) -> list[dict[str, Any]]:
    pool = ["loss", "acc", "lr", "gpu/0", "x.y", "λ"]
    out = []
    for _ in range(draw(st.integers(0, 6))):
        names = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4))  # may repeat a name
        n = draw(st.integers(0, 15))
        value = st.floats(allow_nan=True, allow_infinity=True)
        out.append(
            {
                "names": names,
                "name_id": draw(st.lists(st.integers(0, len(names) - 1), min_size=n, max_size=n)),
                "step": draw(st.lists(st.integers(-2, 2) | st.integers(I64.min, I64.max), min_size=n, max_size=n)),
                "time_us": draw(st.lists(st.integers(0, 2**62), min_size=n, max_size=n)),
                "value": draw(st.lists(value, min_size=n, max_size=n)),
                "late": draw(st.booleans()),
            }
        )
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_batches(), st.sampled_from([None, "l*", "gpu/*", "nothing"]))
def test_summary_agrees_with_the_full_series(batches: list[dict[str, Any]], pattern: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with RunWriter.create(tmp, "r") as w:
            w.append(RecordType.RUN, {"id": "r", "name": "sum", "created_us": T0})
            for batch in batches:
                w.append_metrics(**batch)
                w.append(RecordType.EVENT, {"message": "between", "time_us": T0})
        full = load_run(w.run_dir)
        summary = load_summary(w.run_dir, pattern)
    want = _expected(full)
    if pattern is not None:
        want = {k: v for k, v in want.items() if fnmatch.fnmatchcase(k, pattern)}
    assert _same(_rows(summary), want)
    assert summary.summary is not None and summary.summary.names == [n for n in full.metrics if n in want]
    assert summary.metrics == {} and summary.events == full.events and summary.name == "sum"


def test_many_metrics_split_records_and_a_predicate(tmp_path: Path) -> None:
    names = [f"m{i:05d}" for i in range(20_000)]
    with RunWriter.create(tmp_path, "big", max_record_bytes=64 << 10) as w:
        for step in range(3):
            ids = np.arange(len(names))
            w.append_metrics(names, ids, np.full(len(names), step), np.full(len(names), T0 + step), ids * 1.0 + step)
    view = load_summary(w.run_dir)
    assert view.metric_count == 20_000 and view.summary is not None
    assert view.summary.points.tolist() == [3] * 20_000
    assert view.summary.last.tolist() == [i + 2.0 for i in range(20_000)]
    assert view.summary.first_step.tolist() == [0] * 20_000 and view.summary.last_step.tolist() == [2] * 20_000
    assert view.summary.names == names
    odd = load_summary(w.run_dir, lambda n: n.endswith("1"))
    assert odd.summary is not None and odd.summary.names == [n for n in names if n.endswith("1")]
    assert _same(_rows(view), _expected(load_run(w.run_dir)))


def test_list_runs_with_the_summary_loader(tmp_path: Path) -> None:
    with RunWriter.create(tmp_path, "r") as w:
        w.append(RecordType.RUN, {"id": "r", "created_us": T0})
        w.append_metrics(["a", "b"], [0, 1, 1], [0, 0, 1], [T0] * 3, [1.0, 2.0, 3.0])
    (full,) = list_runs(tmp_path)
    (quick,) = list_runs(tmp_path, load_summary)
    assert full.metric_count == quick.metric_count == 2
    assert quick.metrics == {} and len(full.metrics) == 2
