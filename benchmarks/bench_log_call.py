"""Per-call cost of ``run.log({3 metrics})`` in one process: simvue_hpc against the official client.

Each variant runs in its own fresh interpreter (so one's threads and caches cannot slow another),
with HOME and the offline store moved to a temporary directory, one after the other in one run of
this script; every figure is the median over repetitions of a timed loop of ``--calls`` calls::

    for i in range(calls):
        run.log({"loss": 0.5, "accuracy": 0.9, "learning_rate": 1e-3})

Variants
    floor           an empty Python function called with the same dict: the loop's own cost on this
                    machine (subtract it, or use it to scale the figures to another machine)
    hpc-buffer      simvue_hpc's hot path alone: ``Outbox.add`` (``run.log`` after ``init``) with no I/O thread
    hpc-process     ``Simvue()`` (aggregator in a child process, the default)
    hpc-thread      ``Simvue(aggregator="thread")`` (aggregator thread in this process: it and the
                    I/O thread compete with the caller for the GIL)
    official        ``simvue.Run(mode="offline")``, ``init``, ``log_metrics`` (simvue==2.6.2);
                    its cache goes to $SIMVUE_OFFLINE_DIRECTORY; HOME is a temporary directory, the
                    working directory too, so no user or project configuration is read. Offline mode
                    still insists on a server URL and a JWT-shaped token: a dummy of each is set, and
                    nothing is ever sent.

Usage::

    python benchmarks/bench_log_call.py            # 200k calls x 7 reps (official: 5k x 5)
    python benchmarks/bench_log_call.py --quick    # CI smoke: a few seconds
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

METRICS = {"loss": 0.5, "accuracy": 0.9, "learning_rate": 1e-3}
VARIANTS = ("floor", "hpc-buffer", "hpc-process", "hpc-thread", "official")


# ---------------------------------------------------------------------------------------------- children
def _timed(log, calls: int, reps: int, warmup: int, cpu: list[float] | None = None) -> list[float]:
    """Wall ns per call of ``log`` for each repetition (the dict literal is built in the loop, as in
    user code); the calling thread's CPU ns per call are appended to ``cpu``."""
    perf = time.perf_counter_ns
    tt = time.thread_time_ns
    for _ in range(warmup):
        log({"loss": 0.5, "accuracy": 0.9, "learning_rate": 1e-3})
    out = []
    for _ in range(reps):
        c0 = tt()
        t0 = perf()
        for _ in range(calls):
            log({"loss": 0.5, "accuracy": 0.9, "learning_rate": 1e-3})
        out.append((perf() - t0) / calls)
        if cpu is not None:
            cpu.append((tt() - c0) / calls)
    return out


def child(variant: str, calls: int, reps: int) -> dict:
    result: dict = {"variant": variant, "calls": calls}
    cpu: list[float] = []
    result["cpu_ns"] = cpu
    if variant == "floor":

        def noop(metrics, step=None):
            return True

        result["ns"] = _timed(noop, calls, reps, warmup=1000, cpu=cpu)
    elif variant == "hpc-buffer":
        from simvue_hpc.config import HPCSettings
        from simvue_hpc.reporter import Reporter

        total = calls * len(METRICS) * 2
        big = {"batch_points": total, "max_buffered_points": total, "max_message_bytes": max(64 << 20, total * 32)}
        settings = HPCSettings.load(big)
        reporter = Reporter("ipc:///unused", "secret", 0, 1, settings)  # never started: no I/O thread
        ns = []
        for _ in range(reps):
            ns += _timed(reporter.log, calls, 1, warmup=1000, cpu=cpu)
            reporter.outbox.take(0.0)  # empty the lists between repetitions
            reporter.outbox.sent(reporter.outbox.queued_points)
        result["ns"] = ns
    elif variant in ("hpc-process", "hpc-thread"):
        from simvue_hpc import Simvue

        t0 = time.perf_counter()
        run = Simvue(aggregator=variant.split("-")[1])
        run.init(name=f"bench-log-call-{variant}", folder="/bench")
        result["init_s"] = time.perf_counter() - t0
        result["ns"] = _timed(run.log, calls, reps, warmup=10_000, cpu=cpu)
        t0 = time.perf_counter()
        acknowledged = run.close()
        result["close_s"] = time.perf_counter() - t0
        result["acknowledged"] = acknowledged
        result["status"] = run.status
        from simvue_hpc.store import default_root, load_run

        view = load_run(default_root() / str(run.id))
        stored = sum(len(s) for name, s in view.metrics.items() if name in METRICS)  # not the package's own
        result["stored_points"] = stored
        result["logged_points"] = (reps * calls + 10_000) * len(METRICS)
    elif variant == "official":
        t0 = time.perf_counter()
        import simvue

        result["import_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run = simvue.Run(mode="offline")
        run.init(name="bench-log-call-official", folder="/bench")
        result["init_s"] = time.perf_counter() - t0
        result["ns"] = _timed(run.log_metrics, calls, reps, warmup=200, cpu=cpu)
        t0 = time.perf_counter()
        run.close()
        result["close_s"] = time.perf_counter() - t0
        cache = Path(os.environ["SIMVUE_OFFLINE_DIRECTORY"])
        result["cache_files"] = sum(1 for p in cache.rglob("*") if p.is_file())
    else:
        raise SystemExit(f"unknown variant {variant}")
    return result


# ---------------------------------------------------------------------------------------------- parent
def run_variant(tmp: Path, variant: str, calls: int, reps: int, timeout: float) -> dict:
    work = tmp / variant
    work.mkdir(parents=True, exist_ok=True)
    extra = {}
    if variant == "official":
        # offline mode never talks to the server but its configuration demands a URL and a token
        extra = {"SIMVUE_URL": "http://127.0.0.1:9/api", "SIMVUE_TOKEN": C.fake_jwt()}
    env = C.isolated_env(work, extra)
    cmd = [C.python(), str(Path(__file__).resolve()), "--child", variant, "--calls", str(calls), "--reps", str(reps)]
    proc = subprocess.run(cmd, cwd=work / "home", env=env, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"variant {variant} failed (exit {proc.returncode})")
    return json.loads(lines[-1][6:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for CI smoke runs")
    ap.add_argument("--calls", type=int, help="calls per repetition for simvue_hpc (default 200000)")
    ap.add_argument("--reps", type=int, help="repetitions (default 7)")
    ap.add_argument("--official-calls", type=int, help="calls per repetition for the official client (default 5000)")
    ap.add_argument("--official-reps", type=int, help="repetitions for the official client (default 5)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    calls = args.calls or (20_000 if args.quick else 200_000)
    reps = args.reps or (3 if args.quick else 7)
    if args.child:
        print("CHILD " + json.dumps(child(args.child, calls, reps)), flush=True)
        return 0
    off_calls = args.official_calls or (300 if args.quick else 5_000)
    off_reps = args.official_reps or (3 if args.quick else 5)

    C.header("bench_log_call: ns per run.log({3 metrics})")
    variants = [v for v in args.variants.split(",") if v]
    results: dict[str, dict] = {}
    with C.TempRoot("simvue-bench-log-", keep=args.keep) as tmp:
        for v in variants:
            n, r = (off_calls, off_reps) if v == "official" else (calls, reps)
            results[v] = run_variant(tmp, v, n, r, timeout=600)
            print(f"   {v}: done", flush=True)
    med = {v: C.median(res["ns"]) for v, res in results.items()}
    ref = med.get("official")
    rows = []
    for v, res in results.items():
        ns = res["ns"]
        ratio = f"{ref / med[v]:.0f}x" if ref and v != "official" else ("1x" if v == "official" else "n/a")
        rows.append([v, res["calls"], len(ns), C.fmt_ns(med[v]), C.fmt_ns(min(ns)), C.fmt_ns(max(ns)),
                     C.fmt_ns(C.median(res.get("cpu_ns") or [float("nan")])), ratio])  # fmt: skip
    print()
    C.table(rows, ["variant", "calls/rep", "reps", "median/call", "min", "max", "caller CPU/call", "official/this"])
    print()
    for v, res in results.items():
        extras = {k: res[k] for k in ("import_s", "init_s", "close_s", "status", "stored_points", "logged_points",
                                      "cache_files") if k in res}  # fmt: skip
        if extras:
            shown = (f"{k}={round(x, 3) if isinstance(x, float) else x}" for k, x in extras.items())
            print(f"   {v}: " + ", ".join(shown))
    for v, res in results.items():
        print(f"   {v}: per repetition " + ", ".join(C.fmt_ns(x) for x in res["ns"]))
    for v in ("hpc-process", "hpc-thread"):
        res = results.get(v)
        if res and res.get("stored_points") != res.get("logged_points"):
            print(f"   WARNING {v}: logged {res.get('logged_points')} points, stored {res.get('stored_points')}")
    if "hpc-process" in med and ref:
        hpc = med["hpc-process"]
        print()
        print(f"   target: simvue_hpc >= 50x cheaper than the official client: {ref / hpc:.0f}x "
              f"-> {'MET' if ref / hpc >= 50 else 'NOT MET'}")  # fmt: skip
        print(f"   target: under 2 µs per call (default process aggregator): {C.fmt_ns(hpc)} "
              f"-> {'MET' if hpc < 2000 else 'NOT MET'}")  # fmt: skip
    if args.quick:
        print("   (--quick: sizes too small for these figures to mean much)")
    C.emit_json({"bench": "log_call", "median_ns": med})
    return 0


if __name__ == "__main__":
    sys.exit(main())
