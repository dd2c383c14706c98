"""The aggregator's death: survived by a restart on the same endpoint, or at least recorded.

The host starts a new aggregator child when its child dies; the ranks reconnect, say they resume, and
resend what was not acknowledged as stored; the new aggregator drops what the store already holds.
Without a restart (``aggregator_restarts=0``, or when none can start) the run is marked failed in the
store with the reason and every rank's next call raises AggregatorLost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from simvue_hpc import Simvue
from simvue_hpc.errors import AggregatorLost
from tests.helpers import assert_every_step_once, only_run, rank_until_lost, wait_until


def aggregator_pid() -> int:
    import psutil

    (child,) = [p for p in psutil.Process().children() if "simvue_hpc.aggregator" in " ".join(p.cmdline())]
    return int(child.pid)


def live_aggregators() -> list[int]:
    import psutil

    pids = []
    for p in psutil.Process().children():
        with contextlib.suppress(psutil.Error):  # one killed and not yet reaped
            if p.status() != psutil.STATUS_ZOMBIE and "simvue_hpc.aggregator" in " ".join(p.cmdline()):
                pids.append(p.pid)
    return pids


def blocked_signals(pid: int) -> int:
    """The signal mask of ``pid``'s main thread (``SigBlk`` in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigBlk for {pid}")


def test_a_killed_aggregator_not_restarted_fails_the_run_with_the_reason(
    store: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The store used to say ``running`` forever, and the host warned that the aggregator 'did not
    finish within 70 s' a second after it had died."""
    monkeypatch.setenv("SIMVUE_HPC_RANK_TIMEOUT", "2")
    monkeypatch.setenv("SIMVUE_HPC_AGGREGATOR_RESTARTS", "0")  # every rank knows no restart will come
    run = Simvue(close_timeout=600)
    run.init(name="killed-not-restarted")
    with rank_until_lost():
        run.log({"v": 0.0})
        wait_until(lambda: len(only_run(store).ranks) == 2, 60, what="the other rank to join")
        os.kill(aggregator_pid(), signal.SIGKILL)
        with pytest.raises(AggregatorLost):
            for step in range(1, 100_000):
                run.log({"v": float(step)})
                time.sleep(0.001)
    with caplog.at_level(logging.WARNING):
        run.close()
    assert run.status == "failed"
    view = only_run(store)
    assert view.status == "failed" and view.end is not None
    assert "killed by SIGKILL" in view.end["reason"]
    assert "did not finish within" not in caplog.text
    assert "killed by SIGKILL" in caplog.text


STEPS = 400
RANK_LOGGING = textwrap.dedent(
    """
    import sys, time
    import simvue_hpc
    run = simvue_hpc.attach(reductions={"x": ["sum", "count"], "y": "per_rank"})
    for step in range(int(sys.argv[1])):
        run.log({"x": float(step), "y": float(step)}, step=step)
        time.sleep(0.01)
    print("acknowledged" if run.close() else "not acknowledged", flush=True)
    """
)


@pytest.mark.parametrize(("transport", "kills"), [("tcp", 1), ("ipc", 2)])
def test_a_killed_aggregator_is_restarted_and_the_run_keeps_every_point_once(
    store: Path, monkeypatch: pytest.MonkeyPatch, transport: str, kills: int
) -> None:
    """SIGKILL of the aggregator mid-run with four ranks (once, or twice: the second restart takes over
    from the first): the host starts another on the same endpoint, the ranks resume and resend what was
    not acknowledged; the run completes with every (metric, step) stored once, reduced over all four
    ranks (no duplicate, no partial or late reduction)."""
    monkeypatch.setenv("SIMVUE_HPC_TRANSPORT", transport)  # the ranks' processes read it too
    run = Simvue(reductions={"x": ["sum", "count"], "y": "per_rank"})
    run.init(name="restarted")
    ranks = [
        subprocess.Popen([sys.executable, "-c", RANK_LOGGING, str(STEPS)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    try:
        wait_until(lambda: len(only_run(store).ranks) == 4, 60, what="the other ranks to join")
        kill_at = [STEPS * (k + 1) // (kills + 2) for k in range(kills)]
        for step in range(STEPS):
            run.log({"x": float(step), "y": float(step)}, step=step)
            time.sleep(0.01)
            if step in kill_at:
                wait_until(lambda: len(only_run(store).ranks) >= 4, 60, what="the ranks to be known")
                os.kill(aggregator_pid(), signal.SIGKILL)
                time.sleep(0.5)  # the host has started the next one before the next kill
        # The new one was started from the host's watching thread, whose signals are blocked: it must
        # not inherit that mask (it could not be terminated).
        wait_until(lambda: len(live_aggregators()) == 1, 60, what="the restarted aggregator")
        assert blocked_signals(live_aggregators()[0]) == 0
        outs = [p.communicate(timeout=120)[0] for p in ranks]
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert run.close()
    assert all(out.strip() == "acknowledged" for out in outs), outs
    assert run.status == "completed"
    view = only_run(store)
    assert view.status == "completed", view.events
    steps = np.arange(STEPS)
    for name, expected in (("x", 4.0 * steps), ("x.count", np.full(STEPS, 4.0))):
        assert_every_step_once(view, name, STEPS, expected)
    per_rank = sorted(n for n in view.metrics if n.startswith("y/rank_"))
    assert len(per_rank) == 4
    for name in per_rank:
        series = view.metrics[name]
        np.testing.assert_array_equal(np.sort(series.step), steps)
    messages = [e["message"] for e in view.events]
    assert sum(m.startswith("the aggregator restarted") for m in messages) == kills
    assert all(r["state"] == "closed" for r in view.ranks.values()), view.ranks


MPI_RANKS = textwrap.dedent(
    """
    import os, sys, time
    import psutil
    from mpi4py import MPI
    from simvue_hpc import Simvue
    comm = MPI.COMM_WORLD
    run = Simvue(reductions={"x": ["sum", "count"]})
    run.init(name="mpi-restarted")
    steps = int(sys.argv[1])
    for step in range(steps):
        run.log({"x": float(step * (comm.rank + 1))}, step=step)
        time.sleep(0.01)
        if comm.rank == 0 and step == steps // 3:
            (agg,) = [p for p in psutil.Process().children() if "simvue_hpc.aggregator" in " ".join(p.cmdline())]
            agg.kill()
    run.close()
    """
)


@pytest.mark.mpi
def test_a_killed_aggregator_is_restarted_under_mpiexec(store: Path, tmp_path: Path) -> None:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    script = tmp_path / "mpi_restart.py"
    script.write_text(MPI_RANKS)
    proc = subprocess.run(
        [str(mpiexec), "-n", "4", sys.executable, str(script), str(STEPS)], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr
    view = only_run(store)
    assert view.status == "completed", view.events
    steps = np.arange(STEPS)
    for name, expected in (("x", 10.0 * steps), ("x.count", np.full(STEPS, 4.0))):
        assert_every_step_once(view, name, STEPS, expected)
    assert any(e["message"].startswith("the aggregator restarted") for e in view.events)
    assert sorted(view.ranks) == [0, 1, 2, 3] and all(r["state"] == "closed" for r in view.ranks.values())


def test_an_aggregator_that_ended_the_run_itself_is_not_restarted(
    store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM (scancel) makes the aggregator end the run as terminated and exit 0: that is no death,
    and a new aggregator must not reopen the ended run."""
    caplog.set_level(logging.WARNING)
    run = Simvue(terminate_grace=0.5)
    run.init(name="terminated")
    run.log({"x": 1.0})
    wait_until(lambda: len(only_run(store).ranks) == 1, 60, what="the rank to join")
    aggregator = aggregator_pid()
    os.kill(aggregator, signal.SIGTERM)
    wait_until(lambda: only_run(store).end is not None, 60, what="the run's end")
    with pytest.raises(AggregatorLost):  # its link is gone for good
        for _ in range(100_000):
            run.log({"x": 1.0})
            time.sleep(0.001)
    run.close()
    view = only_run(store)
    assert view.status == "terminated" and run.status == "terminated"
    assert not any(e["message"].startswith("the aggregator restarted") for e in view.events)
    assert "starting another" not in caplog.text and "take over" not in caplog.text
