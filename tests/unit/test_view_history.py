"""Tests of the view's reader: the same points as the store's reader, only the wanted ones, and the
histories (rank changes, alert changes) the store's view folds away; and the ranks' time line."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simvue_hpc.store import RunView, RunWriter, load_run, read_records
from simvue_hpc.view import timeline
from simvue_hpc.view.history import HistoryFolder, base_name, load_history, matcher
from tests.unit.view_runs import RUN_ID, make_run


def test_every_series_equals_the_store_readers(tmp_path: Path) -> None:
    make_run(tmp_path, extra_metrics=30)
    history = load_history(tmp_path / RUN_ID)
    view = load_run(tmp_path / RUN_ID)
    assert list(history.series) == list(view.metrics)
    for name, s in view.metrics.items():
        h = history.series[name]
        assert h.step.tolist() == s.step.tolist() and h.time_us.tolist() == s.time_us.tolist()
        np.testing.assert_array_equal(h.value, s.value)
        assert int(h.late.sum()) == s.late
    assert (history.view.name, history.view.status, history.view.end) == (view.name, view.status, view.end)
    assert [c["state"] for c in history.rank_changes] == ["joined"] * 4 + ["lost"] + ["closed"] * 3
    assert [c["status"] for c in history.alert_changes] == ["critical", "ok"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["a", "b", "c.max", "d/rank_1", "e"]), min_size=1, max_size=5), max_size=8))
def test_records_with_any_names_lists_split_back_exactly(
    tmp_path_factory: pytest.TempPathFactory, lists: list[list[str]]
) -> None:
    root = tmp_path_factory.mktemp("h")
    expected: dict[str, list[tuple[int, float]]] = {}
    with RunWriter.create(root, "HYPOrun000000000000000") as w:
        for k, names in enumerate(lists):
            names = list(dict.fromkeys(names))
            ids = np.arange(len(names)).repeat(2)[::-1]  # each name twice, out of order
            steps = np.arange(len(ids)) + 100 * k
            values = steps * 0.5
            w.append_metrics(names, ids, steps, steps, values, late=k % 3 == 1)
            for i, s, v in zip(ids.tolist(), steps.tolist(), values.tolist(), strict=True):
                expected.setdefault(names[i], []).append((s, v))
    want = matcher(["a", "c"])  # a, and c's companions: c.max
    history = load_history(root / "HYPOrun000000000000000", want)
    assert set(history.series) == {n for n in expected if n in ("a", "c.max")}
    for name, s in history.series.items():
        assert list(zip(s.step.tolist(), s.value.tolist(), strict=True)) == expected[name]


def test_the_folder_can_be_fed_in_pieces(tmp_path: Path) -> None:
    make_run(tmp_path)
    records = list(read_records(tmp_path / RUN_ID / "records.svr"))
    folder = HistoryFolder(RunView(id=RUN_ID, run_dir=tmp_path / RUN_ID), matcher(["loss"]))
    for start in range(0, len(records), 7):
        folder.feed(records[start : start + 7])
        folder.finish()
    whole = load_history(tmp_path / RUN_ID, matcher(["loss"]))
    for name, s in whole.series.items():
        assert folder.history.series[name].step.tolist() == s.step.tolist()


def test_base_names() -> None:
    assert [base_name(n) for n in ("loss", "loss.max", "loss/rank_12", "a.b", "x/rank_y", "m.count")] == [
        "loss",
        "loss",
        "loss",
        "a.b",
        "x/rank_y",
        "m",
    ]


def test_a_lost_rank_shows_among_thousands() -> None:
    lives = [timeline.Life(r, "h", 0, 1_000_000, "lost" if r == 2500 else "closed") for r in range(4096)]
    svg = timeline.svg(lives, 0, 1_000_000)
    rects = re.findall(r'<rect x="[\d.]+" y="([\d.]+)" width="[\d.]+" height="([\d.]+)" fill="(#\w+)"', svg)
    assert len(rects) == 4096
    assert rects[-1][2] == timeline.COLOURS["lost"] and float(rects[-1][1]) >= 2.0  # drawn last, 2 px at least
    assert all(float(h) < 1 for _, h, c in rects[:-1])
