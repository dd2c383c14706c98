"""Looking at a big run: ``simvue-hpc show`` of a run with many metrics, and ``plot``/``report``.

Writes one run of M metrics (10 points each, in records of 10,000 points as the aggregator writes
them), then times each command in a fresh process and reads its peak RSS (ru_maxrss of the child).
The target for ``show``: 100,000 metrics in under 2 s and 200 MB.

    python benchmarks/bench_view.py            # 100,000 metrics
    python benchmarks/bench_view.py --quick    # 2,000 metrics (CI smoke run)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import TempRoot, emit_json, header, isolated_env, python, table

RUN = "BENCHview0000000000000"
RANKS_RUN = "BENCHranks000000000000"


def write_run(root: Path, metrics: int, steps: int = 10, per_record: int = 10_000) -> int:
    from simvue_hpc.store import RecordType, RunWriter

    names = [f"field/cell_{i:06d}" for i in range(metrics)]
    with RunWriter.create(root, RUN) as w:
        w.append(RecordType.RUN, {"id": RUN, "name": "many-metrics", "created_us": 1_700_000_000_000_000})
        points = 0
        for step in range(steps):
            for lo in range(0, metrics, per_record):
                chunk = names[lo : lo + per_record]
                n = len(chunk)
                t = np.full(n, 1_700_000_000_000_000 + step * 1_000_000)
                w.append_metrics(chunk, np.arange(n), np.full(n, step), t, np.random.default_rng(step).random(n))
                points += n
        w.append(RecordType.END, {"status": "completed", "time_us": 1_700_000_000_000_000 + steps * 1_000_000})
    return points


def write_ranks_run(root: Path, ranks: int, steps: int) -> int:
    """A per_rank metric of every rank at every step (``x/rank_<k>``), one record per step."""
    from simvue_hpc.store import RecordType, RunWriter

    names = [f"x/rank_{r}" for r in range(ranks)]
    with RunWriter.create(root, RANKS_RUN) as w:
        w.append(RecordType.RUN, {"id": RANKS_RUN, "name": "many-ranks", "created_us": 0})
        for step in range(steps):
            values = np.random.default_rng(step).normal(size=ranks) + step / 100
            w.append_metrics(names, np.arange(ranks), np.full(ranks, step), np.full(ranks, step * 1000), values)
        for r in range(ranks):
            w.append(RecordType.RANK, {"rank": r, "host": "h", "pid": r, "state": "joined", "time_us": 0})
            w.append(RecordType.RANK, {"rank": r, "host": "h", "pid": r, "state": "closed", "time_us": steps * 1000})
        w.append(RecordType.END, {"status": "completed", "time_us": steps * 1000})
    return ranks * steps


def measure(argv: list[str], env: dict[str, str], out: Path) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MiB) and output bytes of one command in a fresh process (os.wait4)."""
    t0 = time.perf_counter()
    with open(out, "wb") as sink:
        proc = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.DEVNULL)
        _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}")
    return wall, usage.ru_maxrss / 1024, out.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--metrics", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    metrics = 2_000 if args.quick else args.metrics
    header(f"bench_view: show/plot/report of a run with {metrics:,} metrics")
    with TempRoot("bench_view", keep=args.keep) as tmp:
        env = isolated_env(tmp)
        store = tmp / "store"
        t0 = time.perf_counter()
        points = write_run(store, metrics)
        size = (store / RUN / "records.svr").stat().st_size
        print(
            f"run: {metrics:,} metrics, {points:,} points, {size / 2**20:.1f} MiB, written in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        commands = {
            "python -c pass (floor)": None,
            "show": ["show", RUN],
            "show --metrics 'field/cell_0000*'": ["show", RUN, "--metrics", "field/cell_0000*"],
            "show --json": ["show", RUN, "--json"],
            "plot (1 metric)": ["plot", RUN, "field/cell_000001", "-o", str(tmp / "one.png")],
        }
        ranks, steps = (256, 100) if args.quick else (4096, 1000)
        points = write_ranks_run(store, ranks, steps)
        print(f"run: a per_rank metric of {ranks:,} ranks x {steps:,} steps ({points:,} points)")
        commands[f"plot per_rank x {ranks} ranks"] = ["plot", RANKS_RUN, "x", "-o", str(tmp / "ranks.png")]
        commands[f"report of the {ranks}-rank run"] = ["report", RANKS_RUN, "-o", str(tmp / "ranks.html")]
        rows, result = [], {}
        for label, argv in commands.items():
            cmd = [python(), "-c", "pass"] if argv is None else [python(), "-m", "simvue_hpc.cli", *argv]
            wall, rss, out = measure(cmd, env, tmp / "out.txt")
            rows.append([label, f"{wall:.2f} s", f"{rss:.0f} MiB", f"{out / 1024:.0f} KiB"])
            result[label] = {"wall_s": round(wall, 3), "peak_rss_mib": round(rss, 1), "stdout_bytes": out}
        table(rows, ["command", "wall", "peak RSS", "output"])
        emit_json(
            {
                "bench": "view",
                "metrics": metrics,
                "points": points,
                "store_mib": round(size / 2**20, 1),
                "commands": result,
            }
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
