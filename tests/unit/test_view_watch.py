"""Tests of ``simvue-hpc watch``: the incremental tail of a log, and the live view in a real terminal."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from simvue_hpc.store import RecordType, RunWriter
from simvue_hpc.view.watch import Tail, render
from tests.helpers import wait_until
from tests.integration.terminal import Terminal

T0 = 1_700_000_000_000_000
RUN = "WATCHrun00000000000000"


def _start(root: Path) -> RunWriter:
    w = RunWriter.create(root, RUN)
    w.append(RecordType.RUN, {"id": RUN, "name": "live", "created_us": T0})
    w.append(RecordType.STATUS, {"status": "running", "time_us": T0})
    w.append(RecordType.RANK, {"rank": 0, "host": "n1", "pid": 1, "state": "joined", "time_us": T0})
    w.append(RecordType.RANK, {"rank": 1, "host": "n1", "pid": 2, "state": "joined", "time_us": T0})
    w.flush()
    return w


def _log(w: RunWriter, step: int, value: float, late: bool = False) -> None:
    w.append_metrics(["loss", "acc"], [0, 1], [step, step], [T0 + step, T0 + step], [value, -value], late=late)
    w.flush()


def test_the_tail_reads_only_what_was_appended(tmp_path: Path) -> None:
    w = _start(tmp_path)
    tail = Tail(tmp_path / RUN)
    assert tail.poll() == 4 and tail.view.name == "live" and tail.last == {}
    _log(w, 1, 0.5)
    _log(w, 2, 0.25)
    assert tail.poll() == 2
    assert (tail.last["loss"].step, tail.last["loss"].value, tail.last["loss"].points) == (2, 0.25, 2)
    assert tail.poll() == 0  # nothing new: nothing read again
    _log(w, 1, 9.0, late=True)  # a late point counts but does not hide the newer one
    tail.poll()
    assert (tail.last["loss"].step, tail.last["loss"].value, tail.last["loss"].points) == (2, 0.25, 3)
    offset = tail.offset
    with open(tmp_path / RUN / "records.svr", "ab") as f:  # half a record: the writer is mid-append
        f.write(b"\x10\x00\x00\x00\x00")
    assert tail.poll() == 0 and tail.offset == offset and not tail.ended
    w.close()


def test_the_screen_says_what_is_going_on(tmp_path: Path) -> None:
    from rich.console import Console

    w = _start(tmp_path)
    _log(w, 3, 1.5)
    w.append(RecordType.EVENT, {"message": "halfway", "time_us": T0 + 5, "rank": 1, "host": "n1", "level": "info"})
    w.append(RecordType.RANK, {"rank": 1, "host": "n1", "pid": 2, "state": "lost", "time_us": T0 + 6})
    w.append(RecordType.ALERT_STATE, {"name": "too-high", "status": "critical", "time_us": T0 + 7, "message": "x"})
    w.flush()
    tail = Tail(tmp_path / RUN)
    tail.poll()
    console = Console(width=120, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render(tail, T0 + 10_000_000))
    text = console.export_text()
    assert "live" in text and "running" in text
    assert "ranks: 1 joined, 1 lost  lost: 1" in text
    assert "alerts firing: too-high" in text
    assert re.search(r"loss\s+│\s+3\s+│\s+1\.5\s+│\s+1", text)
    assert "1@n1" in text and "halfway" in text
    w.close()


def test_watch_follows_a_run_until_another_process_ends_it(tmp_path: Path) -> None:
    w = _start(tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "simvue_hpc.cli",
        "--root",
        str(tmp_path),
        "watch",
        "live",
        "--interval",
        "0.2",
        "--timeout",
        "120",
    ]
    with Terminal(cmd) as term:
        wait_until(lambda: "live" in term.screen() and "2 joined" in term.screen(), timeout=60)
        _log(w, 1, 0.123)
        wait_until(lambda: "0.123" in term.screen(), timeout=60)  # a new value appears while the run goes on
        for step in range(2, 40):
            _log(w, step, float(np.float64(step) / 8))
        w.append(RecordType.EVENT, {"message": "checkpoint 7", "time_us": T0 + 50, "rank": 1, "host": "n1"})
        w.flush()
        wait_until(lambda: "checkpoint 7" in term.screen() and "4.875" in term.screen(), timeout=60)
        assert term.proc.poll() is None  # still watching: the run has not ended
        w.append(RecordType.RANK, {"rank": 0, "host": "n1", "pid": 1, "state": "closed", "time_us": T0 + 60})
        w.append(RecordType.RANK, {"rank": 1, "host": "n1", "pid": 2, "state": "closed", "time_us": T0 + 60})
        w.append(RecordType.END, {"status": "completed", "time_us": T0 + 61})
        w.close()
        assert term.proc.wait(timeout=60) == 0  # it stops by itself when the run ends
        screen = term.screen()
    assert "the run ended: completed" in screen
    assert "2 closed" in screen
    assert "\x1b[" in screen  # drawn as a live terminal view, not printed once


def test_without_rich_the_message_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from simvue_hpc.cli import main

    _start(tmp_path).close()
    monkeypatch.setitem(sys.modules, "rich.live", None)
    assert main(["--root", str(tmp_path), "watch", "live", "--timeout", "0"]) == 1
    err = capsys.readouterr().err
    assert "rich" in err and "pip install 'simvue_hpc[watch]'" in err


def test_watch_gives_up_after_its_timeout_on_a_run_that_never_ends(tmp_path: Path) -> None:
    from rich.console import Console

    from simvue_hpc.view.watch import watch

    w = _start(tmp_path)
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # an injected clock: no real waiting
        slept.append(seconds)
        now[0] += seconds
        _log(w, len(slept), float(len(slept)))

    console = Console(file=open(os.devnull, "w"), width=100)  # noqa: SIM115
    assert watch(tmp_path / RUN, interval=1.0, timeout=5.0, console=console, clock=lambda: now[0], sleep=sleep) is False
    assert slept == [1.0] * 5
    w.close()


def test_cli_exit_codes(tmp_path: Path) -> None:
    from simvue_hpc.cli import main

    w = _start(tmp_path)
    assert main(["--root", str(tmp_path), "watch", "live", "--timeout", "0"]) == 3  # gave up: still running
    w.append(RecordType.END, {"status": "completed", "time_us": T0 + 1})
    w.close()
    assert main(["--root", str(tmp_path), "watch", "live", "--timeout", "0"]) == 0  # the run has ended
