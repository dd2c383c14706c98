"""Tests of ``simvue-hpc report``: one self-contained page with everything about a run."""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from simvue_hpc.cli import main
from simvue_hpc.view import report
from simvue_hpc.view.history import load_history
from tests.unit.view_runs import RUN_ID, make_run

VOID = {"meta", "link", "img", "br", "hr", "input", "rect", "path", "line"}  # rect/path/line: self-closed in SVG


class _Checker(HTMLParser):
    """Collects tags, attributes and text, and fails on a tag closed out of order."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(k, v or "") for k, v in attrs]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(k, v or "") for k, v in attrs]

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(html: str) -> _Checker:
    checker = _Checker()
    checker.feed(html)
    checker.close()
    assert checker.stack == [], f"unclosed: {checker.stack}"
    return checker


@pytest.fixture
def page(tmp_path: Path) -> str:
    make_run(tmp_path)
    return report.build(load_history(tmp_path / RUN_ID))


def test_the_page_is_self_contained(page: str) -> None:
    doc = _parse(page)
    assert "script" not in doc.tags and "iframe" not in doc.tags
    for key, value in doc.attrs:
        if key in ("src", "href"):
            assert value.startswith(("data:", "#")), (key, value[:60])
    assert not re.search(r"(https?:)?//[a-z]", re.sub(r'data:[^"]*', "", page)), "an external URL"
    assert "@import" not in page and "url(" not in page


def test_the_page_has_every_part_of_the_run(page: str) -> None:
    doc = _parse(page)
    text = " ".join(doc.text)
    for part in ("Counters", "Metrics", "Ranks", "Events", "Alerts", "Files", "Resources"):
        assert f'<section id="{part.lower()}"><h2>{part}</h2>' in page
    assert '<section id="details"><h2>Run</h2>' in page
    assert "view-test" in text and "failed" in text and "a run for the views" in text and "4242" in text
    assert "points_received" in text and "12345" in text  # the counters
    images = [v for k, v in doc.attrs if k == "src" and v.startswith("data:image/png;base64,")]
    assert len(images) == 4  # loss, temp, load; resources/cpu_percent
    alts = [v for k, v in doc.attrs if k == "alt"]
    assert alts == ["loss", "temp", "load", "resources/cpu_percent"]
    assert "per rank (40)" in text and "mean, min–max band" in text
    # the ranks: one bar each, rank 3 lost, the others closed
    assert "rank 3 on node2: lost" in text and "rank 0 on node1: closed" in text
    assert page.count("<rect") == 4 and page.count('stroke="#000"') == 1  # a cross where rank 3 was lost
    # events with their rank, alerts with their changes, files with their whole checksum
    assert re.search(
        r"<td>3</td><td>node2</td><td><span class=\"error\">error</span></td><td>rank 3 out of memory", page
    )
    assert "loss.max 1 &gt; 0.5" in page and "back to normal" in text
    sha = load_history(Path(re.findall(r"from (/[^<]+)\.</p>", page)[0])).view.files[0]["sha256"]
    assert len(sha) == 64 and sha in text


def test_a_running_run_and_one_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_run(tmp_path, end=False)
    history = load_history(tmp_path / RUN_ID)
    page = report.build(history, now_us=history.view.created_us + 20_000_000)
    _parse(page)
    assert "the run has not ended" in page
    assert "rank 0 on node1: joined" in page and "rank 3 on node2: lost" in page
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    page = report.build(history)
    _parse(page)
    assert "data:image/png" not in page
    assert (
        "No plots: plotting needs matplotlib, which is not installed: pip install &#x27;simvue_hpc[plot]&#x27;" in page
    )


def test_cli_writes_the_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path / "store")
    out = tmp_path / "run.html"
    assert main(["--root", str(tmp_path / "store"), "report", "view-test", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    _parse(out.read_text(encoding="utf-8"))
    assert main(["--root", str(tmp_path / "store"), "report", RUN_ID[:6]]) == 0
    assert Path(capsys.readouterr().out.strip()) == Path("view-test.html")
    assert Path("view-test.html").is_file()


def test_hostile_text_is_shown_never_run(tmp_path: Path) -> None:
    """Names, messages and metadata with markup or maths in them stay text, in the page and the plots."""
    from simvue_hpc.store import RecordType, RunWriter

    run = "HOSTILErun000000000000"
    with RunWriter.create(tmp_path, run) as w:
        w.append(
            RecordType.RUN,
            {
                "id": run,
                "name": "<b>x</b>",
                "created_us": 0,
                "description": "</td></table>",
                "metadata": {"<k>": "<script>alert(1)</script>"},
                "tags": ["a&b"],
            },
        )
        w.append_metrics(["a<b>(%)", "cost $x$"], [0, 1], [0, 0], [0, 0], [1.0, 2.0])
        w.append(RecordType.EVENT, {"message": "<img src=x onerror=alert(1)>", "time_us": 1, "rank": 0, "host": "<h>"})
        w.append(RecordType.ALERT, {"name": "$unbalanced", "source": "metrics", "alert": {"metric": "cost $x$"}})
        w.append(RecordType.ALERT_STATE, {"name": "$unbalanced", "status": "critical", "time_us": 0, "message": "<i>"})
        w.append(RecordType.FILE, {"name": '"><svg onload=alert(1)>', "sha256": "0" * 64, "size": 1, "rank": 0})
    page = report.build(load_history(tmp_path / run))
    doc = _parse(page)
    assert "script" not in doc.tags and "b" not in doc.tags and "i" not in doc.tags
    assert doc.tags.count("img") == 2 and doc.tags.count("svg") == 0  # the two plots; no rank joined: no time line
    assert not any(k.startswith("on") for k, _ in doc.attrs)
    text = " ".join(doc.text)
    for shown in ("<b>x</b>", "</td></table>", "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "a<b>(%)"):
        assert shown in text
