"""The HTML report in a real headless Chromium: it loads with no error, fetches nothing, is not blank.

The browser's checks are first shown to catch what they look for, on pages made to fail them.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simvue_hpc.cli import main
from tests.integration import chromium
from tests.unit.view_runs import RUN_ID, make_run


def _grey(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)


@pytest.fixture(scope="module")
def browser() -> None:
    assert chromium.binary(), "no chromium: scripts/install_chromium.sh installs it"


def test_the_checks_catch_errors_requests_and_blank_pages(browser: None, tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body><p>x</p>'
        '<img src="missing.png"><img src="http://127.0.0.1:9/x.png">'
        '<script>console.error("boom"); notDefined();</script></body></html>'
    )
    seen = chromium.load(bad, tmp_path / "profile")
    text = "\n".join(seen.errors)
    assert "boom" in text and "exception" in text and "ERR_FILE_NOT_FOUND" in text
    assert seen.requests == ["http://127.0.0.1:9/x.png"]
    blank = tmp_path / "blank.html"
    blank.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body></body></html>')
    seen = chromium.load(blank, tmp_path / "profile2")
    assert seen.errors == [] and seen.requests == []
    assert _grey(seen.screenshot).std() < 1.0  # what a blank page looks like to the test below


def test_the_report_loads_cleanly_and_shows_the_run(browser: None, tmp_path: Path) -> None:
    make_run(tmp_path / "store")
    page = tmp_path / "report.html"
    assert main(["--root", str(tmp_path / "store"), "report", RUN_ID, "-o", str(page)]) == 0
    seen = chromium.load(page, tmp_path / "profile")
    assert seen.errors == []
    assert seen.requests == []  # nothing but the file itself and its inline data
    grey = _grey(seen.screenshot)
    assert grey.shape == (seen.height, seen.width)
    assert seen.height > 2500  # the details, four plots, the time line and the tables
    assert grey.std() > 20
    # every part of the page has something on it: no blank stretch of 800 pixels
    for top in range(0, seen.height - 800, 400):
        assert grey[top : top + 800].std() > 5, f"blank from y={top}"
    (tmp_path / "report.png").write_bytes(seen.screenshot)


def test_the_report_of_a_real_run_loads_cleanly(browser: None, store: Path, tmp_path: Path) -> None:
    from simvue_hpc import Simvue

    with Simvue() as run:
        run.init(name="real", metadata={"n": 3}, tags=["browser"])
        for step in range(50):
            run.log({"residual": 1.0 / (step + 1), "energy": step * 0.5})
        run.event("converged")
        run.save(__file__, "code")
    page = tmp_path / "real.html"
    assert main(["report", "real", "-o", str(page)]) == 0
    seen = chromium.load(page, tmp_path / "profile")
    assert seen.errors == [] and seen.requests == []
    assert _grey(seen.screenshot).std() > 20
    html = page.read_text()
    assert 'alt="residual"' in html and 'alt="energy"' in html and "converged" in html
