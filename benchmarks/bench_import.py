"""What joining a run costs a rank that does not host the aggregator: memory (USS) and time.

The parent starts a real run (its aggregator in a child process, the default) and exports the run
to its environment as a pool's parent does. Each measured rank is a fresh interpreter started with
that environment; it records, after ``import numpy`` (the baseline every scientific code pays
anyway) and again after ``import simvue_hpc``, ``Simvue()`` and ``init()`` (the handshake with the
aggregator), its unique set size (the ``Private_*`` fields of /proc/self/smaps_rollup: the memory
that is this rank's alone, which is what 128 ranks on a node add up to) and the wall time spent.
It also lists the modules a joining rank must not load (the uploader, the aggregator, requests,
urllib3, psutil, mpi4py when MPI is not in use): the script exits 1 if any was loaded.

Usage::

    python benchmarks/bench_import.py            # 15 ranks, one after the other
    python benchmarks/bench_import.py --quick    # CI smoke: 3 ranks
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

FORBIDDEN = (
    "requests",
    "urllib3",
    "psutil",
    "mpi4py",
    "simvue_hpc.upload",
    "simvue_hpc.server",
    "simvue_hpc.store",
    "simvue_hpc.aggregator.loop",
    "simvue_hpc.aggregator.state",
)
TARGET_MIB = 8.0
TARGET_MS = 80.0


def uss_bytes() -> int:
    """This process's unique set size: its private pages, clean and dirty (and huge pages)."""
    total = 0
    with open("/proc/self/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Private_"):
                total += int(line.split()[1]) * 1024
    return total


def child() -> dict[str, object]:
    t0 = time.perf_counter()
    import numpy  # noqa: F401 - the baseline

    t1 = time.perf_counter()
    uss0 = uss_bytes()
    t2 = time.perf_counter()
    import simvue_hpc

    run = simvue_hpc.Simvue()
    run.init()
    t3 = time.perf_counter()
    uss1 = uss_bytes()
    loaded = sorted(m for m in FORBIDDEN if m in sys.modules)
    run.log({"joined": 1.0})
    run.close()
    return {
        "numpy_ms": (t1 - t0) * 1e3,
        "join_ms": (t3 - t2) * 1e3,
        "numpy_uss": uss0,
        "join_uss": uss1 - uss0,
        "forbidden": loaded,
        "rank": run.rank,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for CI smoke runs")
    ap.add_argument("--ranks", type=int, help="ranks measured, one after the other (default 15)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("CHILD " + json.dumps(child()), flush=True)
        return 0
    ranks = args.ranks or (3 if args.quick else 15)
    C.header("bench_import: what joining a run costs a rank that does not host the aggregator")
    results: list[dict] = []
    with C.TempRoot("simvue-bench-import-") as tmp:
        C.isolate_this_process(tmp)
        from simvue_hpc import Simvue

        host = Simvue()
        host.init(name="bench-import", folder="/bench")
        env = {**C.isolated_env(tmp), **{k: v for k, v in os.environ.items() if k.startswith("SIMVUE_HPC_")}}
        cmd = [C.python(), str(Path(__file__).resolve()), "--child"]
        try:
            for i in range(ranks + 1):  # the first one warms the page cache and is not counted
                proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=120)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD ")]
                if proc.returncode != 0 or not lines:
                    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
                    raise SystemExit(f"rank {i} failed (exit {proc.returncode})")
                if i:
                    results.append(json.loads(lines[-1][6:]))
        finally:
            host.close()
    mib = 2**20
    join_mib = C.median(r["join_uss"] / mib for r in results)
    join_ms = C.median(r["join_ms"] for r in results)
    rows = [
        [
            "import numpy (baseline)",
            f"{C.median(r['numpy_uss'] / mib for r in results):.1f} MiB",
            f"{C.median(r['numpy_ms'] for r in results):.1f} ms",
        ],
        ["+ import simvue_hpc, Simvue().init() (joining)", f"+{join_mib:.1f} MiB", f"+{join_ms:.1f} ms"],
        [
            "  min .. max",
            f"{min(r['join_uss'] for r in results) / mib:.1f} .. {max(r['join_uss'] for r in results) / mib:.1f} MiB",
            f"{min(r['join_ms'] for r in results):.1f} .. {max(r['join_ms'] for r in results):.1f} ms",
        ],
    ]
    print()
    C.table(rows, ["ranks measured: " + str(len(results)), "USS", "wall time"])
    forbidden = sorted({m for r in results for m in r["forbidden"]})
    print()
    print(f"   modules a joining rank must not load: {', '.join(forbidden) if forbidden else 'none loaded'}")
    for what, value, target, unit in (("memory", join_mib, TARGET_MIB, "MiB"), ("time", join_ms, TARGET_MS, "ms")):
        verdict = "MET" if value <= target else "NOT MET"
        print(f"   target: {what} <= {target:.0f} {unit} above numpy: {value:.1f} {unit} -> {verdict}")
    if args.quick:
        print("   (--quick: too few ranks for these figures to mean much)")
    C.emit_json({"bench": "import", "join_uss_mib": join_mib, "join_ms": join_ms, "forbidden": forbidden})
    return 1 if forbidden else 0


if __name__ == "__main__":
    sys.exit(main())
