"""``simvue-hpc watch`` on a real run: a process hosting its own aggregator logs, waits, and ends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import wait_until
from tests.integration.terminal import Terminal

JOB = """
import sys, time
from pathlib import Path
from simvue_hpc import Simvue

go = Path(sys.argv[1])
with Simvue() as run:
    run.init(name="watched")
    for step in range(5):
        run.log({"speed": 1000.25 + step}, step=step)
    run.event("waiting for go")
    deadline = time.monotonic() + 120
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    run.log({"speed": 2000.5}, step=5)
    run.event("finished")
"""


def test_watch_follows_a_real_run_to_its_end(store: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    job = subprocess.Popen([sys.executable, "-c", JOB, str(go)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: (store.is_dir() and any(store.glob("*/records.svr"))) or job.poll() is not None, 60)
        assert job.poll() is None, job.stdout.read() if job.stdout else ""
        cmd = [sys.executable, "-m", "simvue_hpc.cli", "watch", "watched", "--interval", "0.2", "--timeout", "180"]
        with Terminal(cmd) as term:
            # the aggregator stores and flushes as the run goes: the view shows it before the end
            wait_until(lambda: "1004.25" in term.screen() and "waiting for go" in term.screen(), 60, what=term.screen)
            assert term.proc.poll() is None and job.poll() is None
            go.touch()
            assert job.wait(timeout=120) == 0
            assert term.proc.wait(timeout=60) == 0  # the run ended: watch stops by itself
            screen = term.screen()
        assert "2000.5" in screen and "finished" in screen and "the run ended: completed" in screen
    finally:
        if job.poll() is None:
            job.kill()
        job.wait(timeout=30)
