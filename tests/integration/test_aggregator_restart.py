"""The aggregator's death: survived by a restart on the same endpoint, or at least recorded.

The host starts a new aggregator child when its child dies; the ranks reconnect, say they resume, and
resend what was not acknowledged as stored; the new aggregator drops what the store already holds.
Without a restart (``aggregator_restarts=0``, or when none can start) the run is marked failed in the
store with the reason and every rank's next call raises AggregatorLost.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from simvue_hpc import Simvue
from simvue_hpc.errors import AggregatorLost
from tests.helpers import only_run, wait_until

RANK_UNTIL_LOST = textwrap.dedent(
    """
    import simvue_hpc
    from simvue_hpc.errors import AggregatorLost
    run = simvue_hpc.attach(close_timeout=600)
    step = 0
    try:
        while True:
            run.log({"v": float(step)}, step=step)
            step += 1
    except AggregatorLost as exc:
        print("lost:", exc, flush=True)
    run.close()
    print("closed", flush=True)
    """
)


def aggregator_pid() -> int:
    import psutil

    (child,) = [p for p in psutil.Process().children() if "simvue_hpc.aggregator" in " ".join(p.cmdline())]
    return int(child.pid)


def test_a_killed_aggregator_not_restarted_fails_the_run_with_the_reason(
    store: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The store used to say ``running`` forever, and the host warned that the aggregator 'did not
    finish within 70 s' a second after it had died."""
    monkeypatch.setenv("SIMVUE_HPC_RANK_TIMEOUT", "2")
    run = Simvue(close_timeout=600, aggregator_restarts=0)
    run.init(name="killed-not-restarted")
    other = subprocess.Popen([sys.executable, "-c", RANK_UNTIL_LOST], stdout=subprocess.PIPE, text=True)
    try:
        run.log({"v": 0.0})
        wait_until(lambda: len(only_run(store).ranks) == 2, 60, what="the other rank to join")
        os.kill(aggregator_pid(), signal.SIGKILL)
        with pytest.raises(AggregatorLost):
            for step in range(1, 100_000):
                run.log({"v": float(step)})
                time.sleep(0.001)
        out, _ = other.communicate(timeout=120)  # close_timeout is 600 s: ending at all shows nobody waited
        assert "lost: " in out and out.rstrip().endswith("closed"), out
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    with caplog.at_level(logging.WARNING):
        run.close()
    assert run.status == "failed"
    view = only_run(store)
    assert view.status == "failed" and view.end is not None
    assert "killed by SIGKILL" in view.end["reason"]
    assert "did not finish within" not in caplog.text
    assert "killed by SIGKILL" in caplog.text
