"""Tests of ``simvue-hpc plot``: the picture itself (size, band pixels), what is marked, what is read."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from simvue_hpc.cli import main
from simvue_hpc.view import plot
from simvue_hpc.view.history import load_history, matcher
from tests.unit.view_runs import RUN_ID, make_run

WHITE = np.array([255, 255, 255])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    make_run(tmp_path)
    return tmp_path


def _pixels(fig: Figure) -> np.ndarray:
    """The figure drawn as PNG, as an RGB array (drawing also fixes the axes' final positions)."""
    return np.asarray(Image.open(io.BytesIO(plot.png_bytes(fig))).convert("RGB")).astype(int)


def _at(img: np.ndarray, ax: Axes, x: float, y: float) -> np.ndarray:
    """The colour at data point (x, y) of ax."""
    px, py = ax.transData.transform((x, y))
    legend = ax.get_legend()
    assert legend is None or not legend.get_window_extent().contains(px, py), "the legend covers the probe"
    return img[img.shape[0] - round(py), round(px)]


def _labels(ax: Axes) -> list[str]:
    return ax.get_legend_handles_labels()[1]


def test_the_min_max_band_is_shaded_and_the_rest_is_background(root: Path) -> None:
    history = load_history(root / RUN_ID, matcher(["loss"]))
    fig = plot.render(history)
    img = _pixels(fig)
    (ax,) = fig.axes
    assert img.shape == (round(plot.DPI * (0.6 + plot.PANEL_IN)), int(plot.DPI * plot.WIDTH_IN), 3)
    for x, y in ((45, 0.6), (45, -0.6), (65, 0.9), (35, -0.9)):  # inside the wide part of the band
        colour = _at(img, ax, x, y)
        assert not np.array_equal(colour, WHITE), (x, y, colour)
        assert colour[2] > colour[0]  # the band is blue
    for x, y in ((15, 0.6), (85, -0.6), (15, -0.9)):  # outside: the band is only ±0.1 there
        assert np.array_equal(_at(img, ax, x, y), WHITE), (x, y)


def test_per_rank_metrics_are_lines_or_a_quantile_band(root: Path) -> None:
    history = load_history(root / RUN_ID, matcher(["temp", "load"]))
    fig = plot.render(history)
    temp, load = fig.axes
    assert [t for t in _labels(temp) if t.startswith("rank")] == ["rank 0", "rank 1", "rank 2", "rank 3"]
    assert len(temp.get_lines()) == 4
    assert "min–max of 40 ranks" in _labels(load) and "10–90th percentile" in _labels(load)
    assert len(load.get_lines()) == 1  # the median, not 40 lines
    img = _pixels(fig)
    # load/rank_r = r + step/10: at step 45 the ranks span 4.5..43.5; the 10-90th percentile about 8.5..39.5
    assert not np.array_equal(_at(img, load, 45, 25), WHITE)
    assert np.array_equal(_at(img, load, 45, 47), WHITE)


def test_late_points_alerts_and_events_are_marked(root: Path) -> None:
    fig = plot.render(load_history(root / RUN_ID, matcher(["loss", "temp"])))
    loss, temp = fig.axes
    assert "late (1)" in _labels(loss)
    assert {"alert loss-spread fired", "alert loss-spread cleared", "events (2)"} <= set(_labels(loss))
    assert "events (2)" in _labels(temp) and not any(t.startswith("alert") for t in _labels(temp))
    fired = next(c for c in loss.collections if c.get_label() == "alert loss-spread fired")
    assert fired.get_segments()[0][0][0] == pytest.approx(25)  # fired at step 25's time
    mean = next(line for line in loss.get_lines() if line.get_label() == "mean")
    assert 0.5 not in mean.get_ydata()  # the late point is marked, not joined into the line


def test_only_the_asked_metrics_are_read(root: Path) -> None:
    assert set(load_history(root / RUN_ID, matcher(["loss"])).series) == {"loss", "loss.min", "loss.max"}
    assert set(load_history(root / RUN_ID, matcher(["loss.max"])).series) == {"loss.max"}
    assert set(load_history(root / RUN_ID, matcher(["resources/*"])).series) == {"resources/cpu_percent"}
    assert len(load_history(root / RUN_ID).series) == 3 + 4 + 40 + 1


def test_a_large_series_is_cut_to_the_pixel_width(tmp_path: Path) -> None:
    from simvue_hpc.store import RecordType, RunWriter

    n = 200_000
    with RunWriter.create(tmp_path, "BIGrun0000000000000000") as w:
        w.append(RecordType.RUN, {"id": "BIGrun0000000000000000", "name": "big", "created_us": 0})
        values = np.zeros(n)
        values[77_777] = 5.0
        w.append_metrics(["x"], np.zeros(n, dtype=np.int64), np.arange(n), np.arange(n), values)
    fig = plot.render(load_history(tmp_path / "BIGrun0000000000000000"))
    (line,) = fig.axes[0].get_lines()
    assert len(line.get_ydata()) <= 2 * plot.WIDTH_IN * plot.DPI
    assert max(line.get_ydata()) == 5.0


def test_cli_writes_png_svg_and_pdf(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "loss.png"
    assert main(["--root", str(root), "plot", "view-test", "loss", "load", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.size == (int(plot.DPI * plot.WIDTH_IN), round(plot.DPI * (0.6 + 2 * plot.PANEL_IN)))
    svg = tmp_path / "loss.svg"
    assert main(["--root", str(root), "plot", "view-test", "loss", "-o", str(svg), "--x", "time"]) == 0
    text = svg.read_text()
    assert text.startswith("<?xml") and "</svg>" in text and len(text) > 10_000
    assert "fill: #1f77b4; fill-opacity: 0.25" in text  # the band
    pdf = tmp_path / "loss.pdf"
    assert main(["--root", str(root), "plot", "view-test", "l*", "-o", str(pdf)]) == 0
    assert pdf.read_bytes().startswith(b"%PDF")


def test_cli_default_file_and_time_range(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(root), "plot", "VIEW", "loss", "--x", "time", "--since", "2", "--until", "5"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.name == "view-test.png" and path.is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["loss", "-o", "x.jpg"], "-o must end in one of .png, .svg, .pdf"),
        (["nothing"], "no metric to plot"),
        (["*"], "metrics match; plot at most"),
    ],
)
def test_cli_bad_requests_are_clear(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    root = tmp_path / "store"
    make_run(root, extra_metrics=60)
    assert main(["--root", str(root), "plot", "view-test", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("simvue-hpc: ") and message in err


def test_without_matplotlib_the_message_names_the_extra(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["--root", str(root), "plot", "view-test", "loss"]) == 1
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install 'simvue_hpc[plot]'" in err
    assert "Traceback" not in err


def test_a_positive_metric_spanning_decades_gets_a_log_axis(tmp_path: Path) -> None:
    from simvue_hpc.store import RecordType, RunWriter

    with RunWriter.create(tmp_path, "LOGrun0000000000000000") as w:
        w.append(RecordType.RUN, {"id": "LOGrun0000000000000000", "name": "log", "created_us": 0})
        steps = np.arange(50)
        w.append_metrics(
            ["residual", "flat"],
            np.repeat([0, 1], 50),
            np.tile(steps, 2),
            np.tile(steps, 2),
            np.concatenate([10.0 ** -(steps / 10), 1 + steps / 100]),
        )
    residual, flat = plot.render(load_history(tmp_path / "LOGrun0000000000000000")).axes
    assert residual.get_yscale() == "log" and flat.get_yscale() == "linear"


def test_an_event_is_placed_at_each_metrics_own_step(tmp_path: Path) -> None:
    from simvue_hpc.store import RecordType, RunWriter

    run = "MARKrun000000000000000"
    with RunWriter.create(tmp_path, run) as w:
        w.append(RecordType.RUN, {"id": run, "name": "marks", "created_us": 0})
        fast, slow = np.arange(100), np.arange(10)
        w.append_metrics(["fast"], np.zeros(100, dtype=np.int64), fast, fast * 100_000, np.ones(100))
        w.append_metrics(["slow"], np.zeros(10, dtype=np.int64), slow, slow * 1_000_000, np.ones(10))
        w.append(RecordType.EVENT, {"message": "at 5 s", "time_us": 5_000_000, "rank": 0, "host": "h"})
    for kind, expect in (("step", (50, 5)), ("time", (5, 5))):
        fast_ax, slow_ax = plot.render(load_history(tmp_path / run), plot.Axis(kind)).axes
        for ax, x in zip((fast_ax, slow_ax), expect, strict=True):
            (events,) = [c for c in ax.collections if c.get_label() == "events (1)"]
            assert events.get_segments()[0][0][0] == pytest.approx(x)


def test_names_are_shown_as_logged(tmp_path: Path) -> None:
    from simvue_hpc.store import RecordType, RunWriter

    with RunWriter.create(tmp_path, "NAMErun000000000000000") as w:
        w.append(RecordType.RUN, {"id": "NAMErun000000000000000", "name": "cost $x$", "created_us": 0})
        w.append_metrics(["cost $x$"], [0, 0], [0, 1], [0, 1], [1.0, 2.0])
    fig = plot.render(load_history(tmp_path / "NAMErun000000000000000"))
    _pixels(fig)
    assert fig.axes[0].get_title(loc="left") == r"cost \$x\$"  # drawn as the characters logged, not as maths


def test_a_flood_of_events_is_marked_in_part(tmp_path: Path) -> None:
    from simvue_hpc.store import RecordType, RunWriter

    with RunWriter.create(tmp_path, "EVENTrun00000000000000") as w:
        w.append(RecordType.RUN, {"id": "EVENTrun00000000000000", "name": "events", "created_us": 0})
        w.append_metrics(["x"], [0, 0], [0, 1], [0, 10_000], [1.0, 2.0])
        for i in range(1500):
            w.append(RecordType.EVENT, {"message": f"e{i}", "time_us": i, "rank": 0, "host": "h"})
    (ax,) = plot.render(load_history(tmp_path / "EVENTrun00000000000000")).axes
    (events,) = [c for c in ax.collections if str(c.get_label()).startswith("events")]
    assert events.get_label() == "events (the first 1000 of 1500)" and len(events.get_segments()) == 1000
