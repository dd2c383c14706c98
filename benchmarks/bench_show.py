"""Reading a run with many metrics: time and peak memory of the store's loaders and of ``show``.

A run of ``--metrics`` metrics x ``--steps`` steps is written as the aggregator writes it (one
``append_metrics`` call per step holding every metric, split by the writer into records of at most
1 MiB), plus some events and ranks. Each reader then runs in a fresh process, which reports its
own wall time, CPU time and peak RSS (``ru_maxrss``), imports of simvue_hpc included:

    load_summary   one pass, a summary row per metric, no per-point objects (what ``show`` needs)
    load_run       every point of every metric as a MetricSeries (what plots and exports need)
    show (CLI)     ``simvue-hpc show RUN`` end to end, output discarded

The target for ``show`` of 100,000 metrics is under 2 s and 200 MB.

Usage::

    python benchmarks/bench_show.py                   # 100,000 metrics x 20 steps
    python benchmarks/bench_show.py --metrics 100000 --steps 100
    python benchmarks/bench_show.py --quick           # CI smoke
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

T0 = 1_700_000_000_000_000

_MEASURE = """
import json, resource, sys, time
t = time.perf_counter()
u = resource.getrusage(resource.RUSAGE_SELF)
cpu0 = u.ru_utime + u.ru_stime
{body}
u = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"seconds": time.perf_counter() - t, "cpu": u.ru_utime + u.ru_stime - cpu0,
                   "peak_mib": u.ru_maxrss / 1024}}), file=sys.stderr)
"""

READERS = {
    "load_summary": "from simvue_hpc.store import load_summary\nv = load_summary(sys.argv[1])\nn = v.metric_count",
    "load_run": "from simvue_hpc.store import load_run\nv = load_run(sys.argv[1])\nn = v.metric_count",
    "show (CLI)": (
        "import contextlib, io\nfrom simvue_hpc.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    main(['show', sys.argv[2]])"
    ),
}


def write_run(root: Path, metrics: int, steps: int) -> Path:
    """The benchmark's run; returns its directory."""
    import numpy as np

    from simvue_hpc.store import RecordType, RunWriter

    names = [f"layer_{i // 100:04d}/param_{i % 100:02d}/grad_norm" for i in range(metrics)]
    ids = np.arange(metrics, dtype=np.uint32)
    rng = np.random.default_rng(0)
    with RunWriter.create(root, "bench_show_run_00000000") as w:
        w.append(RecordType.RUN, {"id": "bench_show_run_00000000", "name": "wide", "created_us": T0})
        w.append(RecordType.STATUS, {"status": "running", "time_us": T0})
        for rank in range(4):
            w.append(RecordType.RANK, {"rank": rank, "host": "node", "pid": 100 + rank, "state": "joined"})
        for step in range(steps):
            values = rng.normal(size=metrics)
            w.append_metrics(names, ids, np.full(metrics, step), np.full(metrics, T0 + step), values)
            w.append(RecordType.EVENT, {"message": f"step {step} done", "time_us": T0 + step, "rank": 0})
        w.append(RecordType.END, {"status": "completed", "time_us": T0 + steps})
    return w.run_dir


def measure(name: str, run_dir: Path, env: dict[str, str]) -> dict[str, float]:
    """Run one reader in a fresh process; its wall time and peak RSS."""
    code = _MEASURE.format(body=READERS[name])
    proc = subprocess.run(
        [sys.executable, "-c", code, str(run_dir), run_dir.name],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr}")
    result: dict[str, float] = json.loads(proc.stderr.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each reader; the median time is shown")
    parser.add_argument("--skip-full", action="store_true", help="do not time load_run")
    parser.add_argument("--quick", action="store_true", help="CI smoke: 2,000 metrics x 3 steps, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.metrics, args.steps, args.repeat = 2_000, 3, 1
    with C.TempRoot("bench_show_") as tmp:
        env = C.isolated_env(tmp)
        store = Path(env["SIMVUE_OFFLINE_DIRECTORY"])
        t = time.perf_counter()
        run_dir = write_run(store, args.metrics, args.steps)
        size = (run_dir / "records.svr").stat().st_size
        print(
            f"run: {args.metrics:,} metrics x {args.steps} steps = {args.metrics * args.steps:,} points, "
            f"{size / 2**20:.1f} MiB log (written in {time.perf_counter() - t:.1f} s)"
        )
        print(f"{'reader':<14} {'wall (median)':>14} {'CPU (median)':>13} {'peak RSS':>10}")
        for name in READERS:
            if name == "load_run" and args.skip_full:
                continue
            runs = [measure(name, run_dir, env) for _ in range(max(1, args.repeat))]
            seconds = C.median(r["seconds"] for r in runs)
            cpu = C.median(r["cpu"] for r in runs)
            peak = max(r["peak_mib"] for r in runs)
            print(f"{name:<14} {seconds:>12.2f} s {cpu:>11.2f} s {peak:>7.0f} MiB")
    print("target for show of 100,000 metrics: < 2 s and < 200 MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
