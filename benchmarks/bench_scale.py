"""Thousands of C-client processes, one run: does the aggregator keep up, and is every value exact?

Part 1 (the default). ``svh_scale_driver`` (``benchmarks/scale_driver.c``, built here with CMake
against the project's C client) forks N processes under ``simvue-hpc run --ranks N`` (the sidecar
hosts the run's aggregator); each plays an MPI rank (``OMPI_COMM_WORLD_RANK/SIZE``; with
``--nodes K`` also ``SIMVUE_HPC_NODE``, K simulated nodes; with ``--relays`` also a node relay per
simulated node, ``benchmarks/scale_job.sh``, and ``SIMVUE_HPC_HIERARCHY=node``), calls
``svh_connect_env``, waits until every rank is connected (as ranks leave ``MPI_Init``), logs
``--metrics`` values per step with ``svh_log_many`` at ``--hz`` for ``--seconds``, then
``svh_close``. Every value is a known function of (rank, metric, step), exact in binary, so each
stored reduction is checked against the inputs: count, sum, min and max bit for bit, mean and std
to 1e-12 relative. Printed: processes acknowledged (connected, and close returned OK), connect p50/max, close
max, wall time, the sidecar's CPU share over the job (100 % = one core: it hosts the aggregator)
and peak RSS (VmHWM), stored (metric, step) records and late ones, exactness.

Part 2 (``--compare``). N processes each log the same metrics with the official client
``simvue==2.6.2`` (one offline run per process: the only way it has to cover a job) against
simvue_hpc's one run (``Simvue().init()`` in the parent, N forked children log into it): CPU
seconds per logged point summed over every process (all descendants, the aggregator included),
and the files each leaves on disk.

Usage::

    python benchmarks/bench_scale.py --procs 1024 --seconds 20          # flat
    python benchmarks/bench_scale.py --procs 1024 --seconds 20 --nodes 8 --relays
    python benchmarks/bench_scale.py --quick                            # CI smoke: N=64, 2 s
    python benchmarks/bench_scale.py --compare --procs 16,64 --seconds 10
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

OPS = ("mean", "min", "max", "sum", "std", "count")


def value(rank: np.ndarray, metric: int, step: int) -> np.ndarray:
    """The driver's value(): multiples of 1/4 in [-100, 155.75], so sums are exact."""
    return ((rank * 31 + metric * 17 + step * 7) % 1024) * 0.25 - 100.0


# ---------------------------------------------------------------------------------------------- build
def build_driver(build_dir: Path) -> Path:
    """Configure and build the C client and the driver (incremental when ``build_dir`` exists)."""
    exe = build_dir / "bin" / "svh_scale_driver"
    configure = [
        "cmake",
        "-S",
        str(C.REPO),
        "-B",
        str(build_dir),
        "-DCMAKE_BUILD_TYPE=Release",
        "-DSIMVUE_HPC_FORTRAN=OFF",
        "-DSIMVUE_HPC_MPI_EXAMPLE=OFF",
        "-DSIMVUE_HPC_BUILD_TESTS=OFF",
    ]
    for cmd in (configure, ["cmake", "--build", str(build_dir), "--target", "svh_scale_driver", "-j2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"build failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return exe


# ---------------------------------------------------------------------------------------------- sampling
class Sampler(threading.Thread):
    """Polls one process's own CPU time (not its children's) and VmHWM until it exits."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True, name="sampler")
        self.pid, self.interval = pid, interval
        self.cpu = 0.0
        self.hwm = 0
        self.threads = 0
        self._halt = threading.Event()

    def run(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._halt.is_set():
            try:
                with open(f"/proc/{self.pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                self.cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
                self.threads = max(self.threads, int(fields[17]))
                with open(f"/proc/{self.pid}/status") as fh:
                    for line in fh:
                        if line.startswith("VmHWM:"):
                            self.hwm = max(self.hwm, int(line.split()[1]) * 1024)
            except (OSError, IndexError, ValueError):
                return
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()


# ---------------------------------------------------------------------------------------------- part 1
def run_c_job(
    exe: Path,
    procs: int,
    seconds: float,
    hz: float,
    metrics: int,
    nodes: int,
    tmp: Path,
    settings: list[str],
    relays: bool = False,
) -> dict[str, Any]:
    """One job under the sidecar; returns its figures and the run directory."""
    out_csv = tmp / "driver.csv"
    extra = {"SIMVUE_HPC_TRANSPORT": "ipc"}
    for item in settings:
        key, _, val = item.partition("=")
        extra[f"SIMVUE_HPC_{key.upper()}"] = val
    extra["PYTHON"] = sys.executable
    env = C.isolated_env(tmp, extra)
    cmd = [
        sys.executable,
        "-c",
        "import sys; from simvue_hpc.cli import main; sys.exit(main())",
        "run",
        "--ranks",
        str(procs),
        "--name",
        f"scale-{procs}",
        "--",
        *([str(C.HERE / "scale_job.sh"), str(nodes), str(procs)] if relays and nodes > 0 else []),
        str(exe),
        "--procs",
        str(procs),
        "--seconds",
        str(seconds),
        "--hz",
        str(hz),
        "--metrics",
        str(metrics),
        "--nodes",
        str(nodes),
        "--out",
        str(out_csv),
    ]
    load_before = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=env["HOME"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sampler = Sampler(proc.pid)
    sampler.start()
    output, _ = proc.communicate()
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    job_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    sampler.stop()
    sampler.join()
    text = output.decode(errors="replace")
    rows = list(csv.DictReader(out_csv.open())) if out_csv.exists() else []
    return {
        "rc": proc.returncode,
        "wall": wall,
        "cpu": sampler.cpu,
        "job_cpu": job_cpu,
        "hwm": sampler.hwm,
        "threads": sampler.threads,
        "rows": rows,
        "output": text,
        "load": load_before,
    }


def check_store(store: Path, procs: int, steps: int, metrics: int) -> dict[str, Any]:
    """Every stored (metric, step) against the inputs; late records counted apart."""
    from simvue_hpc.store import list_runs

    runs = list_runs(store)
    if len(runs) != 1:
        return {"error": f"{len(runs)} runs in the store"}
    run = runs[0]
    stored: dict[str, dict[int, float]] = {}
    late_records = 0
    late_points = 0
    duplicates = 0
    for p in C.metric_payloads(run.run_dir):
        if p["late"]:
            late_records += 1
            late_points += len(p["value"])
            continue
        names = p["names"]
        for nid, step, val in zip(p["name_id"].tolist(), p["step"].tolist(), p["value"].tolist(), strict=True):
            series = stored.setdefault(names[nid], {})
            duplicates += step in series
            series[step] = val
    ranks = np.arange(procs, dtype=np.int64)
    exact = mismatched = missing = 0
    worst = {"mean": 0.0, "std": 0.0}
    first_bad: list[str] = []
    for m in range(metrics):
        for s in range(steps):
            v = value(ranks, m, s)
            mean = math.fsum(v.tolist()) / procs
            want = {
                "sum": math.fsum(v.tolist()),
                "min": float(v.min()),
                "max": float(v.max()),
                "count": float(procs),
                "mean": mean,
                "std": math.sqrt(math.fsum(((v - mean) ** 2).tolist()) / procs),
            }
            for op in OPS:
                name = f"m{m:02d}" if op == "mean" else f"m{m:02d}.{op}"
                got = stored.get(name, {}).get(s)
                if got is None:
                    missing += 1
                    continue
                if op in worst:
                    rel = abs(got - want[op]) / max(abs(want[op]), 1e-300)
                    worst[op] = max(worst[op], rel)
                    ok = rel <= 1e-12
                else:
                    ok = got == want[op]
                exact += ok
                if not ok:
                    mismatched += 1
                    if len(first_bad) < 5:
                        first_bad.append(f"{name}@{s}: {got!r} != {want[op]!r}")
    end = run.end or {}
    return {
        "records": exact + mismatched,
        "expected": metrics * steps * len(OPS),
        "exact": exact,
        "mismatched": mismatched,
        "missing": missing,
        "duplicates": duplicates,
        "late_records": late_records,
        "late_points": late_points,
        "worst_rel": worst,
        "first_bad": first_bad,
        "status": run.status,
        "live_ranks_points": len(run.metrics.get("simvue_hpc/live_ranks", ())),
        "counters": end.get("counters", {}),
    }


def part1(args: argparse.Namespace) -> int:
    exe = build_driver(Path(args.build_dir))
    bad = 0
    for procs in args.procs:
        for nodes in args.nodes:
            with C.TempRoot("bench_scale_", keep=args.keep) as tmp:
                r = run_c_job(exe, procs, args.seconds, args.hz, args.metrics, nodes, tmp, args.set, args.relays)
                steps = round(args.seconds * args.hz)
                check = check_store(tmp / "store", procs, steps, args.metrics)
            rows = r["rows"]
            acked = sum(1 for x in rows if x["connect_rc"] == "0" and x["close_rc"] == "0" and x["done"] == "1")
            connect = sorted(float(x["connect_s"]) for x in rows)
            close = [float(x["close_s"]) for x in rows]
            started = [float(x["start_s"]) + float(x["connect_s"]) for x in rows]  # after the first fork
            logged = [int(x["steps"]) for x in rows]
            active = max(r["wall"], 1e-9)
            res = {
                "procs": procs,
                "nodes": nodes,
                "relays": bool(args.relays and nodes),
                "seconds": args.seconds,
                "hz": args.hz,
                "metrics": args.metrics,
                "acknowledged": acked,
                "connect_p50": connect[len(connect) // 2] if connect else None,
                "connect_max": max(connect, default=None),
                "close_max": max(close, default=None),
                "all_connected_after": round(max(started, default=0.0), 2),
                "steps_min": min(logged, default=0),
                "wall": round(r["wall"], 2),
                "sidecar_cpu_s": round(r["cpu"], 2),
                "job_cpu_s": round(r["job_cpu"], 1),
                "cpu_share": round(r["cpu"] / active, 3),
                "peak_rss_mib": round(r["hwm"] / 2**20, 1),
                "sidecar_threads": r["threads"],
                "rc": r["rc"],
                "load_before": [round(x, 2) for x in r["load"]],
                **check,
            }
            print(
                f"-- N={procs} nodes={nodes}{' (relays)' if res['relays'] else ''}: {acked}/{procs} acknowledged, "
                f"connect p50 {res['connect_p50']:.3f} s "
                f"max {res['connect_max']:.3f} s, "
                f"all connected {res['all_connected_after']} s after the first fork, "
                f"close max {res['close_max']:.3f} s, wall {res['wall']} s, "
                f"sidecar CPU {res['cpu_share'] * 100:.0f} % of a core ({res['sidecar_cpu_s']} s), peak RSS "
                f"{res['peak_rss_mib']} MiB; every process of the job {res['job_cpu_s']} CPU-s; "
                f"records {check.get('records')}/{check.get('expected')}, exact "
                f"{check.get('exact')}, late records {check.get('late_records')} ({check.get('late_points')} "
                f"points), missing {check.get('missing')}, worst rel mean/std {check.get('worst_rel')}; "
                f"load before {res['load_before']}"
            )
            if check.get("first_bad"):
                print("   first mismatches:", check["first_bad"])
            ok = acked == procs and check.get("mismatched") == 0 and check.get("missing") == 0
            if not ok:
                bad += 1
                print(r["output"][-3000:])
            C.emit_json(res)
    return 1 if bad else 0


# ---------------------------------------------------------------------------------------------- part 2
def _paced_steps(seconds: float, hz: float) -> Iterator[int]:
    """Steps 0, 1, ... at ``hz`` a second for ``seconds``, each yielded when it is due."""
    start = time.monotonic()
    for s in range(round(seconds * hz)):
        delay = start + s / hz - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield s


def _official_child(rank: int, seconds: float, hz: float, metrics: int) -> None:
    import simvue

    run = simvue.Run(mode="offline")
    run.init(name=f"bench-scale-official-{rank}", folder="/bench")
    names = [f"m{m:02d}" for m in range(metrics)]
    for s in _paced_steps(seconds, hz):
        run.log_metrics({n: float(value(np.int64(rank), m, s)) for m, n in enumerate(names)}, step=s)
    run.close()


def _hpc_child(run: Any, rank: int, seconds: float, hz: float, metrics: int) -> None:
    names = [f"m{m:02d}" for m in range(metrics)]
    for s in _paced_steps(seconds, hz):
        run.log({n: float(value(np.int64(rank), m, s)) for m, n in enumerate(names)}, step=s)
    run.close()


def compare_worker(impl: str, procs: int, seconds: float, hz: float, metrics: int) -> None:
    """Runs in its own interpreter; the caller measures it and all its descendants."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    if impl == "official":
        children = [ctx.Process(target=_official_child, args=(r, seconds, hz, metrics)) for r in range(procs)]
        for c in children:
            c.start()
        for c in children:
            c.join()
        return
    from simvue_hpc import Simvue

    run = Simvue()
    run.init(name="bench-scale-hpc", folder="/bench")
    children = [ctx.Process(target=_hpc_child, args=(run, r + 1, seconds, hz, metrics)) for r in range(procs)]
    for c in children:
        c.start()
    for c in children:
        c.join()
    run.close()


def part2(args: argparse.Namespace) -> int:
    rows = []
    for procs in args.procs:
        for impl in ("official", "simvue_hpc"):
            with C.TempRoot("bench_scale_cmp_", keep=args.keep) as tmp:
                extra = {}
                if impl == "official":
                    extra = {"SIMVUE_URL": "http://127.0.0.1:9/api", "SIMVUE_TOKEN": C.fake_jwt()}
                env = C.isolated_env(tmp, extra)
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.monotonic()
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--compare-worker",
                        impl,
                        "--procs",
                        str(procs),
                        "--seconds",
                        str(args.seconds),
                        "--hz",
                        str(args.hz),
                        "--metrics",
                        str(args.metrics),
                    ],
                    env=env,
                    cwd=env["HOME"],
                    check=True,
                )
                wall = time.monotonic() - t0
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                files = sum(len(f) for _, _, f in os.walk(tmp / "store"))
                home_files = sum(len(f) for _, _, f in os.walk(tmp / "home"))
            points = procs * round(args.seconds * args.hz) * args.metrics
            rows.append(
                [procs, impl, points, f"{cpu:.1f}", f"{cpu / points * 1e6:.0f}", files, home_files, f"{wall:.1f}"]
            )
            C.emit_json(
                {
                    "part": "compare",
                    "procs": procs,
                    "impl": impl,
                    "points": points,
                    "cpu_s": cpu,
                    "cpu_us_per_point": cpu / points * 1e6,
                    "store_files": files,
                    "home_files": home_files,
                    "wall": wall,
                }
            )
    C.table(
        rows, ["N", "client", "points", "CPU s (all procs)", "CPU µs/point", "store files", "other files", "wall s"]
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", default="256", help="comma-separated process counts (default 256)")
    ap.add_argument("--nodes", default="0", help="comma-separated simulated node counts; 0 = flat (default 0)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--metrics", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="CI smoke size: N=64, 2 s, flat and 2 node relays")
    ap.add_argument("--compare", action="store_true", help="part 2: the official client side by side")
    ap.add_argument("--compare-worker", choices=("official", "simvue_hpc"), help=argparse.SUPPRESS)
    ap.add_argument("--relays", action="store_true", help="with --nodes K: a node relay per simulated node")
    ap.add_argument("--set", action="append", default=[], help="NAME=VALUE: SIMVUE_HPC_NAME for the job")
    ap.add_argument("--build-dir", default=str(C.REPO / "build" / "bench_scale"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if args.compare_worker:
        compare_worker(args.compare_worker, int(args.procs), args.seconds, args.hz, args.metrics)
        return 0
    if args.quick:
        args.procs, args.seconds, args.nodes = ("64" if not args.compare else "4"), 2.0, "0,2"
        args.relays = True  # the smoke run covers the flat job and one through 2 node relays
    args.procs = [int(p) for p in str(args.procs).split(",")]
    args.nodes = [int(n) for n in str(args.nodes).split(",")]
    C.header("bench_scale: C-client processes into one run" if not args.compare else "bench_scale --compare")
    return part2(args) if args.compare else part1(args)


if __name__ == "__main__":
    sys.exit(main())
