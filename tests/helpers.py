"""Helpers shared by integration tests: read the one run in a store, compute expected reductions."""

from __future__ import annotations

import contextlib
import hashlib
import math
import multiprocessing as mp
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.context import ForkContext
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simvue_hpc.store import RecordType, RunView, RunWriter, list_runs

if TYPE_CHECKING:
    from simvue_hpc import Simvue

Point = tuple[str, int, float]  # metric, step, value


def only_run(root: Path) -> RunView:
    runs = list_runs(root)
    assert len(runs) == 1, f"expected one run in {root}, found {[r.name for r in runs]}"
    return runs[0]


def series(run: RunView, name: str) -> dict[int, float]:
    """A stored metric as {step: value}; fails if a step is stored twice."""
    s = run.metrics[name]
    out: dict[int, float] = {}
    for step, value in zip(s.step.tolist(), s.value.tolist(), strict=True):
        assert step not in out, f"{name}: step {step} stored twice"
        out[step] = value
    return out


def expected(points_by_rank: Iterable[Iterable[Point]]) -> dict[str, dict[int, float]]:
    """What the store must hold by default: a metric from one rank as is; from several, its mean
    with .min and .max companions per step."""
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    ranks: dict[str, set[int]] = defaultdict(set)
    for rank, points in enumerate(points_by_rank):
        for metric, step, value in points:
            values[metric][step].append(value)
            ranks[metric].add(rank)
    out: dict[str, dict[int, float]] = {}
    for metric, steps in values.items():
        if len(ranks[metric]) == 1:
            out[metric] = {s: v[0] for s, v in steps.items()}
            continue
        out[metric] = {s: math.fsum(v) / len(v) for s, v in steps.items()}
        out[f"{metric}.min"] = {s: min(v) for s, v in steps.items()}
        out[f"{metric}.max"] = {s: max(v) for s, v in steps.items()}
    return out


OWN_METRICS = ("simvue_hpc/", "resources/")  # what the aggregator records itself: live ranks, resources


def user_metrics(run: RunView) -> set[str]:
    return {name for name in run.metrics if not name.startswith(OWN_METRICS)}


def assert_store_matches(run: RunView, want: dict[str, dict[int, float]]) -> None:
    assert user_metrics(run) == set(want), f"stored {sorted(user_metrics(run))}, expected {sorted(want)}"
    for name, steps in want.items():
        got = series(run, name)
        assert sorted(got) == sorted(steps), f"{name}: steps differ"
        np.testing.assert_allclose([got[s] for s in sorted(steps)], [steps[s] for s in sorted(steps)],
                                   rtol=1e-12, atol=1e-12, err_msg=name)  # fmt: skip
        assert run.metrics[name].late == 0, f"{name}: late points"


def wait_until(
    condition: Callable[[], object],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str | Callable[[], str] = "",
) -> None:
    """Poll ``condition`` until it is truthy; fail the test (never hang) after ``timeout`` seconds.

    ``what`` names the condition in the failure; a callable is asked only then (e.g. a job's output).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {said or condition}")
        time.sleep(interval)


def store_file(w: RunWriter, path: Path, category: str, **record: Any) -> None:
    """Store ``path``'s bytes in a run being written and append its FILE record: name, category,
    sha256 and size, then ``record``'s fields."""
    content = path.read_bytes()
    sha = hashlib.sha256(content).hexdigest()
    with w.begin_file(sha) as sink:
        sink.write(content)
        sink.commit()
    w.append(RecordType.FILE, {"name": path.name, "category": category, "sha256": sha, "size": len(content), **record})


def fork_pool_run(workers: int, name: str, **options: Any) -> tuple[ForkContext, Barrier, Simvue]:
    """A fork context, a barrier for ``workers`` and a started run named ``name``: what a test keeps in
    module globals before its pool forks, so that the workers inherit them."""
    from simvue_hpc import Simvue

    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(workers)
    run = Simvue(**options)
    run.init(name=name)
    return ctx, barrier, run


# A rank (``python -c``) that attaches to the run in its environment and logs until the aggregator is
# gone: it prints ``lost: <why>`` when the AggregatorLost comes, then ``closed`` once close() returned.
RANK_UNTIL_LOST = """
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


@contextlib.contextmanager
def rank_until_lost() -> Iterator[subprocess.Popen[str]]:
    """Run RANK_UNTIL_LOST beside the test's own rank; on leaving, it must have seen AggregatorLost and
    closed by itself (its close_timeout is 600 s: ending at all shows nobody waited). Killed if left over."""
    proc = subprocess.Popen([sys.executable, "-c", RANK_UNTIL_LOST], stdout=subprocess.PIPE, text=True)
    try:
        yield proc
        out, _ = proc.communicate(timeout=120)
        assert "lost: " in out and out.rstrip().endswith("closed"), out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_every_step_once(view: RunView, name: str, steps: int, expected: np.ndarray) -> None:
    """Metric ``name`` holds steps 0..steps-1 exactly once each, none late, with the ``expected`` values."""
    series = view.metrics[name]
    order = np.argsort(series.step, kind="stable")
    assert series.late == 0, f"{name}: late points"
    np.testing.assert_array_equal(series.step[order], np.arange(steps), err_msg=name)
    np.testing.assert_array_equal(series.value[order], expected, err_msg=name)
