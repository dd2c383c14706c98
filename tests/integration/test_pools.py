"""Pool children, executor workers and plain child processes logging into their parent's run."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import simvue_hpc
from simvue_hpc import Simvue
from tests.helpers import assert_store_matches, expected, only_run, wait_until

WORKERS = 4
STEPS = 50
_run: Simvue | None = None  # the parent's run, inherited by forked children
_barrier: Any = None


def value(task: int, step: int) -> float:
    return (task + 1) * 1.5 + step * 0.125 - (task * step) % 7


def task_points(task: int) -> list[tuple[str, int, float]]:
    return [("u", step, value(task, step)) for step in range(STEPS)]


def _log_task(task: int, run: Simvue) -> int:
    _barrier.wait(timeout=60)  # every task in its own process, all at once
    for metric, step, v in task_points(task):
        run.log({metric: v}, step=step)
    run.event(f"task {task} done")
    return os.getpid()


def forked_task(task: int) -> int:
    assert _run is not None
    return _log_task(task, _run)


def spawned_task(task: int) -> int:
    return _log_task(task, simvue_hpc.current_run())


def _init_spawned(barrier: Any) -> None:
    global _barrier
    _barrier = barrier
    simvue_hpc.init_worker()


def check_pool_run(root: Path, pids: list[int]) -> None:
    assert len(set(pids)) == WORKERS, "each task ran in its own process"
    view = only_run(root)
    assert view.status == "completed"
    assert_store_matches(view, expected(task_points(t) for t in range(WORKERS)))
    assert sorted(e["message"] for e in view.events) == [f"task {t} done" for t in range(WORKERS)]
    children = {r: v for r, v in view.ranks.items() if r != 0}
    assert len(children) == WORKERS and {v["pid"] for v in children.values()} == set(pids)
    assert all(v["state"] == "closed" for v in view.ranks.values()), view.ranks
    assert sum(v["received_points"] for v in children.values()) == WORKERS * STEPS


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_fork_pool_logs_into_parent_run(store: Path, mode: str) -> None:
    global _run, _barrier
    ctx = mp.get_context("fork")
    _barrier = ctx.Barrier(WORKERS)
    _run = Simvue(aggregator=mode)
    _run.init(name="pool-fork")
    with ctx.Pool(WORKERS) as pool:
        pids = pool.map(forked_task, range(WORKERS))
        pool.close()  # the workers end normally: their exit finalizers flush and say goodbye
        pool.join()
    _run.close()
    check_pool_run(store, pids)


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_pool_terminate_never_loses_points_silently(store: Path, mode: str) -> None:
    """``with Pool() as p`` ends with terminate(): SIGTERM to each worker, which unwinds through its
    exit handlers (flush, acknowledged goodbye). A worker that still fails to deliver is recorded
    as lost, with an event: points may be missing, but never silently."""
    global _run, _barrier
    ctx = mp.get_context("fork")
    _barrier = ctx.Barrier(WORKERS)
    _run = Simvue(aggregator=mode)
    _run.init(name="pool-terminate")
    with ctx.Pool(WORKERS) as pool:  # __exit__ terminates the workers
        pids = pool.map(forked_task, range(WORKERS))
    _run.close()
    view = only_run(store)
    children = {r: v for r, v in view.ranks.items() if r != 0}
    assert {v["pid"] for v in children.values()} == set(pids)
    for rank, v in children.items():
        if v["state"] == "closed":
            assert v["sent_points"] == v["received_points"] == STEPS
        else:
            assert v["state"] == "lost", v
            assert any(f"rank {rank} " in e["message"] and "lost" in e["message"] for e in view.events)
    if all(v["state"] == "closed" for v in children.values()):
        assert_store_matches(view, expected(task_points(t) for t in range(WORKERS)))


def test_spawn_pool_with_initializer(store: Path) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Manager().Barrier(WORKERS)
    run = Simvue()
    run.init(name="pool-spawn")
    with ctx.Pool(WORKERS, initializer=_init_spawned, initargs=(barrier,)) as pool:
        pids = pool.map(spawned_task, range(WORKERS))
        pool.close()
        pool.join()
    run.close()
    check_pool_run(store, pids)


def test_process_pool_executor(store: Path) -> None:
    global _run, _barrier
    ctx = mp.get_context("fork")
    _barrier = ctx.Barrier(WORKERS)
    _run = Simvue()
    _run.init(name="executor")
    with ProcessPoolExecutor(WORKERS, mp_context=ctx) as ex:
        pids = list(ex.map(forked_task, range(WORKERS)))
    _run.close()
    check_pool_run(store, pids)


def _logger_then_wait(ready: Any) -> None:
    assert _run is not None
    for step in range(100):
        _run.log({"k": float(step)})
    ready.set()
    time.sleep(600)


def test_worker_killed_with_sigkill_is_recorded_lost(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    global _run
    monkeypatch.setenv("SIMVUE_HPC_RANK_TIMEOUT", "2")
    ctx = mp.get_context("fork")
    _run = Simvue()
    _run.init(name="killed")
    ready = ctx.Event()
    child = ctx.Process(target=_logger_then_wait, args=(ready,))
    child.start()
    assert ready.wait(30)
    stored = lambda: "k" in (view := only_run(store)).metrics and len(view.metrics["k"].step) == 100  # noqa: E731
    wait_until(stored, 30, what="the rank's 100 points in the store")
    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    child.join()
    _run.log({"k": 1000.0}, step=1000)
    _run.close()  # returns once the dead rank has been silent for rank_timeout
    view = only_run(store)
    assert view.status == "completed"
    states = {r: v["state"] for r, v in view.ranks.items()}
    assert states[0] == "closed" and states[1] == "lost", view.ranks
    assert any("rank 1" in e["message"] and "lost" in e["message"] for e in view.events)
    assert view.end is not None and view.end["lost_ranks"] == [1]
    assert len(view.metrics["k"].step) == 101  # what the killed rank sent before dying is kept


def _burst_and_exit(n: int, barrier: Any) -> None:
    run = simvue_hpc.attach()
    # All joined before anyone logs: a pool has no world size, so a worker that joins more than
    # JOIN_GRACE after a metric appeared (a slow spawn on a loaded machine) adds late records instead.
    barrier.wait(timeout=120)
    for i in range(n):
        run.log({"p": float(i)}, step=i)
    run.close()
    os._exit(0)  # no interpreter teardown: the acknowledged goodbye is all that protects the data


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_nothing_lost_when_workers_exit_right_after_close(store: Path, transport: str) -> None:
    n, procs = 20_000, 6
    ctx = mp.get_context("spawn")
    with Simvue(transport=transport, reductions={"p": ["mean", "count"]}) as run:
        run.init(name=f"burst-{transport}")
        barrier = ctx.Barrier(procs)
        children = [ctx.Process(target=_burst_and_exit, args=(n, barrier)) for _ in range(procs)]
        for c in children:
            c.start()
        for c in children:
            c.join(120)
            assert c.exitcode == 0
    view = only_run(store)
    counts = view.metrics["p.count"].value
    assert len(counts) == n and counts.sum() == n * procs
    assert view.end is not None and view.end["counters"]["points_received"] == n * procs


JOINING_RANK = """
import sys
import simvue_hpc
run = simvue_hpc.Simvue()
run.init()
run.log({"joined": 1.0})
run.close()
heavy = ("requests", "urllib3", "psutil", "simvue_hpc.upload", "simvue_hpc.server", "simvue_hpc.store",
         "simvue_hpc.aggregator.loop", "simvue_hpc.aggregator.state")
print(sorted(m for m in heavy if m in sys.modules))
"""


def test_a_joining_rank_loads_neither_the_uploader_nor_the_aggregator(store: Path) -> None:
    with Simvue(aggregator="thread") as run:
        run.init(name="lean")  # exports the run to this process's environment, as for a pool
        proc = subprocess.run([sys.executable, "-c", JOINING_RANK], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    assert only_run(store).metrics["joined"].value.tolist() == [1.0]


IDIOM = """
import multiprocessing as mp, sys
from concurrent.futures import ProcessPoolExecutor
import simvue_hpc
from tests.integration.test_pools import WORKERS, idiom_task

method, kind = sys.argv[1], sys.argv[2]
ctx = mp.get_context(method)
run = simvue_hpc.Simvue()
run.init(name=f"{kind}-{method}")
if kind == "pool":
    with ctx.Pool(WORKERS, initializer=simvue_hpc.init_worker) as pool:
        pool.map(idiom_task, range(2 * WORKERS))
else:
    with ProcessPoolExecutor(WORKERS, mp_context=ctx, initializer=simvue_hpc.init_worker) as ex:
        list(ex.map(idiom_task, range(2 * WORKERS)))
run.close()
print(run.status)
"""


def idiom_task(task: int) -> int:
    run = simvue_hpc.current_run()
    for step in range(STEPS):
        run.log({f"task{task}": value(task, step)}, step=step)
    return os.getpid()


@pytest.mark.parametrize("kind", ["pool", "executor"])
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_documented_pool_idioms_keep_every_point(store: Path, method: str, kind: str) -> None:
    """``with Pool(4, initializer=init_worker) as pool: pool.map(...)`` (whose ``__exit__`` terminates
    the workers: SIGTERM, possibly while one is still joining) and ``ProcessPoolExecutor``: every
    worker flushes and says goodbye. Each case runs in a fresh interpreter, as a user's script does
    (a forkserver started for an earlier run would carry that run's environment)."""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(
        [sys.executable, "-c", IDIOM, method, kind], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    view = only_run(store)
    assert view.status == "completed" and proc.stdout.strip() == "completed"
    tasks = 2 * WORKERS
    try:
        assert_store_matches(view, expected([(f"task{t}", s, value(t, s)) for s in range(STEPS)] for t in range(tasks)))
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\nranks: {view.ranks}\nevents: {view.events}\nstderr: {proc.stderr[-3000:]}"
        ) from None
    lost = {r: v for r, v in view.ranks.items() if v["state"] != "closed"}
    assert not lost, (lost, proc.stderr[-3000:])
