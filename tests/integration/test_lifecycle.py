"""Alerts, abort, liveness, resource metrics and the run's lifecycle, decided at the aggregator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from simvue_hpc import RunAborted, Simvue
from simvue_hpc.errors import RunStopped
from simvue_hpc.store import list_runs, load_run
from tests.helpers import fork_pool_run, only_run, rank_until_lost, wait_until

pytest_plugins = ["tests.server.fixtures"]

WORKERS = 4
FAST_MINUTES = 0.005  # 0.3 s: alert frequency and window for tests
_run: Simvue | None = None
_barrier: Any = None


def test_metric_alert_fires_and_recovers_offline(store: Path) -> None:
    with Simvue(aggregator="thread") as run:
        run.init(name="alerting")
        run.create_metric_threshold_alert("x high", "x", 10, "is above", frequency=FAST_MINUTES, window=FAST_MINUTES)
        for value, seconds in ((20.0, 1.2), (1.0, 1.2)):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                run.log({"x": value})
                time.sleep(0.005)
    view = only_run(store)
    assert view.alert_states["x high"]["status"] == "ok"
    messages = [e["message"] for e in view.events]
    critical = [m for m in messages if "'x high' is critical" in m]
    recovered = [m for m in messages if "'x high' is ok" in m]
    assert critical and recovered and messages.index(critical[0]) < messages.index(recovered[0])
    assert view.status == "completed"


def test_user_and_event_alerts(store: Path) -> None:
    with Simvue(aggregator="thread") as run:
        run.init(name="user-alerts")
        run.create_user_alert("manual")
        run.create_event_alert("diverged", "diverg", frequency=FAST_MINUTES)
        run.log_alert(name="manual", state="critical")
        run.event("the solver diverged at step 10")
        wait_until(lambda: any("'diverged' is critical" in e["message"] for e in only_run(store).events), 30)
    view = only_run(store)
    assert view.alert_states["manual"]["status"] == "critical"
    assert any("'diverged' is critical" in e["message"] for e in view.events)


def _until_aborted(task: int) -> tuple[int, float]:
    assert _run is not None
    _barrier.wait(timeout=60)
    step = 0
    try:
        while True:
            _run.log({"u": 100.0 if task == 0 and step > 50 else 1.0}, step=step)
            step += 1
            time.sleep(0.002)
    except RunAborted:
        return step, time.monotonic()


def test_alert_with_abort_stops_every_rank(store: Path) -> None:
    global _run, _barrier
    ctx, _barrier, _run = fork_pool_run(WORKERS, "abort-on-alert", heartbeat_interval=0.5)
    _run.create_metric_threshold_alert(
        "runaway", "u.max", 50, "is above", frequency=FAST_MINUTES, window=FAST_MINUTES, trigger_abort=True
    )
    with ctx.Pool(WORKERS) as pool:
        results = pool.map(_until_aborted, range(WORKERS), chunksize=1)
    _run.close()
    assert all(steps > 50 for steps, _ in results)  # every rank stopped, after the metric crossed
    view = only_run(store)
    assert view.status == "terminated"
    assert any("aborted" in e["message"] and "runaway" in e["message"] for e in view.events)


def test_server_abort_reaches_every_rank(simvue_online: Any, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    global _run, _barrier
    monkeypatch.setenv("SIMVUE_ABORT_INTERVAL", "0.5")  # the flag is read every abort_interval (default 5 s)
    ctx, _barrier, _run = fork_pool_run(WORKERS, "abort-from-server")
    with ctx.Pool(WORKERS) as pool:
        pending = pool.map_async(_until_aborted, range(WORKERS), chunksize=1)
        wait_until(simvue_online.db.runs, 30, what="the run on the server")
        (doc,) = simvue_online.db.runs()
        asked = time.monotonic()
        simvue_online.set_abort(doc["id"])
        results = pending.get(timeout=60)  # every rank stopped (no timing asserted: machines are noisy)
    _run.close()
    assert len(results) == WORKERS and all(when >= asked for _, when in results)
    assert simvue_online.db.run(doc["id"])["status"] == "terminated"


def test_live_ranks_and_resource_metrics(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    global _run, _barrier
    monkeypatch.setenv("SIMVUE_HPC_SYSTEM_METRICS_INTERVAL", "0.2")
    monkeypatch.setenv("SIMVUE_HPC_HEARTBEAT_INTERVAL", "0.2")  # live_ranks is recorded at most this often
    ctx, _barrier, _run = fork_pool_run(WORKERS, "liveness")
    with ctx.Pool(WORKERS) as pool:
        pool.map(_burn, range(WORKERS), chunksize=1)
    _run.close()
    view = only_run(store)
    live = view.metrics["simvue_hpc/live_ranks"].value.tolist()
    assert max(live) == WORKERS + 1 and live[-1] == 0
    cpu = view.metrics["resources/cpu.usage.percentage"].value
    memory = view.metrics["resources/cpu.usage.memory"].value
    assert len(cpu) >= 3 and cpu.max() > 10 and memory.min() > 10  # MB: a Python process is larger


def _burn(task: int) -> None:
    assert _run is not None
    _barrier.wait(timeout=60)
    end = time.monotonic() + 1.5
    x = 0.0
    while time.monotonic() < end:
        x += sum(i * i for i in range(1000))
        _run.log({"x": x})


LOGGER = textwrap.dedent(
    """
    import sys, time
    from simvue_hpc import Simvue
    run = Simvue()
    run.init(name="sigterm")
    step = 0
    while True:
        run.log({"x": float(step)})
        step += 1
        if step == 200:
            print("ready", flush=True)
        time.sleep(0.001)
    """
)


def test_sigterm_marks_the_run_terminated_and_keeps_every_point(store: Path, tmp_path: Path) -> None:
    script = tmp_path / "logger.py"
    script.write_text(LOGGER)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 128 + signal.SIGTERM
    view = only_run(store)
    assert view.status == "terminated"
    (rank,) = view.ranks.values()
    assert rank["state"] == "closed" and rank["sent_points"] == rank["received_points"] >= 200
    assert len(view.metrics["x"].value) == rank["received_points"]


STUCK_LOGGER = textwrap.dedent(
    """
    import ctypes
    from simvue_hpc import Simvue
    run = Simvue()
    run.init(name="stuck")
    for step in range(500):
        run.log({"x": float(step)})
    print("ready", flush=True)
    # The main thread now waits in C for what never comes, as a code blocked in a library call does:
    # a pthread mutex locked twice. A signal does not interrupt that wait, so no Python handler runs.
    mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER on Linux
    libc = ctypes.CDLL(None)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)
    """
)


def test_sigterm_ends_a_rank_whose_main_thread_is_stuck_in_c(store: Path, tmp_path: Path) -> None:
    """SIGTERM reaches the process, but its main thread never comes back to run the handler (a blocking
    C call, or the signal landing just before a wait, as a pool worker's queue lock under
    ``Pool.terminate``): the process still ends, as SIGTERM's default action would, with its points
    flushed, its goodbye said and the run marked terminated."""
    script = tmp_path / "stuck.py"
    script.write_text(STUCK_LOGGER)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    view = only_run(store)
    assert view.status == "terminated"
    (rank,) = view.ranks.values()
    assert rank["state"] == "closed" and rank["sent_points"] == rank["received_points"] == 500
    assert view.metrics["x"].value.tolist() == [float(s) for s in range(500)]


MPI_LOGGER = textwrap.dedent(
    """
    import os, sys, time
    from mpi4py import MPI
    from simvue_hpc import Simvue
    run = Simvue(rank_timeout=3)
    run.init(name="mpi-killed")
    comm = MPI.COMM_WORLD
    open(os.path.join(sys.argv[1], f"pid_{comm.rank}"), "w").write(str(os.getpid()))
    step = 0
    while True:
        run.log({"x": float(step)})
        step += 1
        time.sleep(0.001)
    """
)


def _wait_for_end(store: Path, timeout: float) -> Any:
    def ended() -> bool:
        runs = list_runs(store)
        return bool(runs) and runs[0].end is not None

    wait_until(ended, timeout, interval=0.2, what="the run's end")
    return load_run(list_runs(store)[0].run_dir)


@pytest.mark.mpi
def test_a_close_in_another_thread_is_waited_for(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SIGTERM backstop closes the run from its own thread; if the main thread then wakes and its
    exit handlers close too, their close must not return (and the process end) before the first one
    has delivered everything."""
    run = Simvue(aggregator="thread")
    run.init(name="two-closers")
    for step in range(1000):
        run.log({"x": float(step)}, step=step)
    reporter = run._reporter
    assert reporter is not None
    slow_close = reporter.close

    def close_slowly(timeout: float | None = None) -> bool:
        time.sleep(0.5)  # the first close is still delivering when the second one comes
        return slow_close(timeout)

    monkeypatch.setattr(reporter, "close", close_slowly)
    first = threading.Thread(target=run.close)
    first.start()
    wait_until(lambda: run._closed, 10, what="the first close to begin")
    assert run.close() is False  # the second close does nothing itself ...
    assert run.status == "completed"  # ... but returns only once the first has ended the run
    first.join(10)
    view = only_run(store)
    assert view.status == "completed" and len(view.metrics["x"].value) == 1000


def test_rank_killed_with_sigkill_under_mpiexec(store: Path, tmp_path: Path) -> None:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    script = tmp_path / "mpi_logger.py"
    script.write_text(MPI_LOGGER)
    proc = subprocess.Popen([str(mpiexec), "-n", "3", sys.executable, str(script), str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    pids = [tmp_path / f"pid_{r}" for r in range(3)]
    wait_until(lambda: all(p.exists() and p.read_text() for p in pids), 60, what="every rank's pid file")
    time.sleep(0.5)
    os.kill(int(pids[2].read_text()), signal.SIGKILL)
    proc.wait(60)  # the launcher tears the job down
    view = _wait_for_end(store, 60)  # the aggregator outlives the job, bounded by rank_timeout
    assert view.status == "failed"  # the host died without closing the run
    assert 2 in view.end["lost_ranks"] or 2 in view.end["missing_ranks"]
    assert len(view.metrics["x"].value) > 0


def _aggregator_pids() -> set[int]:
    """This process's aggregator children that still run (earlier tests may leave zombies)."""
    import psutil

    pids = set()
    for child in psutil.Process().children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "simvue_hpc.aggregator" in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.Error:
            continue
    return pids


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP])
def test_a_dead_or_stopped_aggregator_is_an_error_on_every_rank_and_nobody_waits(
    store: Path, monkeypatch: pytest.MonkeyPatch, how: signal.Signals
) -> None:
    """The aggregator killed (its connections close) or stopped (it no longer answers ZeroMQ's
    pings): the ranks used to log on into the void and wait the whole close timeout. Now the next
    call raises AggregatorLost once and close() does not wait for an answer."""
    monkeypatch.setenv("SIMVUE_HPC_RANK_TIMEOUT", "2")  # how long unanswered pings mean "gone"
    monkeypatch.setenv("SIMVUE_HPC_AGGREGATOR_RESTARTS", "0")  # the floor: no new aggregator takes over
    before = _aggregator_pids()
    run = Simvue(close_timeout=600)
    run.init(name="lost-aggregator")
    (aggregator,) = _aggregator_pids() - before
    try:
        with rank_until_lost():
            run.log({"v": 0.0})
            wait_until(lambda: len(only_run(store).ranks) == 2, 60, what="the other rank to join")
            os.kill(aggregator, how)
            with pytest.raises(RunStopped):  # AggregatorLost, once; the calls before it are buffered
                for step in range(1, 20_000):
                    run.log({"v": float(step)})
                    time.sleep(0.001)
            assert run.log({"v": -1.0}) is False  # later calls drop
    finally:
        os.kill(aggregator, signal.SIGKILL)
    run.close()  # returns: the error was raised already
