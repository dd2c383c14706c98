"""How long the documented pool idioms take to end, and does every worker say goodbye?

Each repetition runs, in a fresh interpreter as a user's script would::

    run = simvue_hpc.Simvue(); run.init(...)
    with ctx.Pool(4, initializer=simvue_hpc.init_worker) as pool:   # or ProcessPoolExecutor
        pool.map(task, range(8))                                      # each task logs 50 steps
    run.close()

under fork, spawn and forkserver. ``Pool.__exit__`` terminates the workers (SIGTERM, sometimes while
one is blocked on the queue lock the pool's parent holds for good), so the figure that matters is
the time from ``map`` returning to ``close`` returning: the workers' flush, their goodbyes and the
run's end. Printed per case: median and max of that time, and the repetitions in which a worker was
recorded anything but ``closed`` or a point was missing.

Usage::

    python benchmarks/bench_pool_close.py --reps 20
    python benchmarks/bench_pool_close.py --quick     # CI smoke: 2 repetitions per case
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

WORKERS, TASKS, STEPS = 4, 8, 50

SCRIPT = f"""
import multiprocessing as mp, sys, time
from concurrent.futures import ProcessPoolExecutor
import simvue_hpc

def task(t):
    run = simvue_hpc.current_run()
    for step in range({STEPS}):
        run.log({{f"task{{t}}": float(t * 1000 + step)}}, step=step)
    return t

if __name__ == "__main__":
    method, kind = sys.argv[1], sys.argv[2]
    ctx = mp.get_context(method)
    run = simvue_hpc.Simvue()
    run.init(name=f"{{kind}}-{{method}}")
    if kind == "pool":
        with ctx.Pool({WORKERS}, initializer=simvue_hpc.init_worker) as pool:
            pool.map(task, range({TASKS}))
            mapped = time.perf_counter()
    else:
        with ProcessPoolExecutor({WORKERS}, mp_context=ctx, initializer=simvue_hpc.init_worker) as ex:
            list(ex.map(task, range({TASKS})))
            mapped = time.perf_counter()
    run.close()
    print(run.status, time.perf_counter() - mapped)
"""


def one(method: str, kind: str, tmp: Path) -> tuple[float, bool]:
    """Seconds from map's return to close's; whether every worker closed with every point."""
    from simvue_hpc.store import list_runs

    script = tmp / "pool_job.py"
    script.write_text(SCRIPT)
    env = C.isolated_env(tmp)
    proc = subprocess.run(
        [sys.executable, str(script), method, kind], env=env, cwd=tmp, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        print(proc.stderr[-2000:])
        return float("nan"), False
    status, seconds = proc.stdout.split()
    (view,) = list_runs(Path(env["SIMVUE_OFFLINE_DIRECTORY"]))
    points = sum(len(view.metrics[f"task{t}"].value) for t in range(TASKS) if f"task{t}" in view.metrics)
    closed = all(r["state"] == "closed" for r in view.ranks.values())
    ok = status == "completed" and closed and points == TASKS * STEPS
    if not ok:
        states = {rank: (r["state"], r.get("received_points")) for rank, r in view.ranks.items()}
        print(f"   {kind} / {method}: {status}, {points} of {TASKS * STEPS} points, ranks {states}")
        print("   " + proc.stderr[-1500:].replace("\n", "\n   "))
    return float(seconds), ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="CI smoke: 2 repetitions per case")
    ap.add_argument("--only", help="one case, e.g. pool/forkserver")
    args = ap.parse_args()
    reps = 2 if args.quick else args.reps
    C.header("bench_pool_close: the documented pool idioms, from map's return to close's")
    rows, bad = [], 0
    for kind in ("pool", "executor"):
        for method in ("fork", "spawn", "forkserver"):
            if args.only and args.only != f"{kind}/{method}":
                continue
            times, failed = [], 0
            for _ in range(reps):
                with tempfile.TemporaryDirectory() as d:
                    seconds, ok = one(method, kind, Path(d))
                times.append(seconds)
                failed += not ok
            bad += failed
            rows.append((f"{kind} / {method}", reps, f"{C.median(times):.3f} s", f"{max(times):.3f} s", failed))
            C.emit_json({"kind": kind, "method": method, "reps": reps, "seconds": times, "failed": failed})
    C.table(rows, ("idiom / start method", "reps", "median", "max", "lost worker or point"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
