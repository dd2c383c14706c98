"""Upload traffic for 4 and 64 processes logging at the same rate per process.

P forked processes join one run and each logs 10 metrics at R Hz for T seconds, while the run
uploads live to the Simvue-compatible test server on loopback (tests/server). From the server's
request log: requests per second (mean and the busiest second), POSTs per kind, and bytes sent per
metric point (per stored point, and per point the ranks logged). The claim to check: the request
rate does not grow with the number of processes, because the aggregator reduces before it uploads.

    python benchmarks/bench_upload.py            # 4 and 64 processes, 100 Hz, 10 s
    python benchmarks/bench_upload.py --quick    # 2 and 4 processes, 1 s (CI smoke)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simvue_hpc import Simvue
from simvue_hpc.store import list_runs
from tests.server.server import SimvueTestServer

METRICS = [f"m{i}" for i in range(10)]
_run: Simvue | None = None


def _child(rate: float, seconds: float, start: float) -> None:
    assert _run is not None
    period = 1.0 / rate
    step = 0
    while True:
        due = start + step * period
        if due >= start + seconds:
            break
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        _run.log({m: step + i * 0.1 for i, m in enumerate(METRICS)}, step=step)
        step += 1
    _run.close()


def measure(procs: int, rate: float, seconds: float, tmp: Path) -> dict[str, float]:
    global _run
    server = SimvueTestServer(tmp / f"server-{procs}.sqlite").start()
    os.environ.update(
        SIMVUE_URL=server.url, SIMVUE_TOKEN=server.token, SIMVUE_OFFLINE_DIRECTORY=str(tmp / f"store-{procs}")
    )
    try:
        _run = Simvue()
        _run.init(name=f"upload-{procs}")
        t0 = time.time()
        ctx = mp.get_context("fork")
        start = time.monotonic() + 0.5
        children = [ctx.Process(target=_child, args=(rate, seconds, start)) for _ in range(procs)]
        for c in children:
            c.start()
        for c in children:
            c.join()
        _run.close()
        t1 = time.time()
        records = [r for r in server.requests_log() if t0 <= r.time <= t1 and r.path.startswith("/api")]
        metrics_posts = [r for r in records if r.path == "/api/metrics" and r.method == "POST"]
        (run_doc,) = server.db.runs()
        stored = len(server.db.metrics(run_doc["id"]))
        logged = sum(int(v.get("sent_points") or 0) for v in list_runs(tmp / f"store-{procs}")[0].ranks.values())
        per_second: dict[int, int] = {}
        for r in records:
            per_second[int(r.time)] = per_second.get(int(r.time), 0) + 1
        metric_bytes = sum(r.request_bytes for r in metrics_posts)
        return {
            "procs": procs,
            "wall": t1 - t0,
            "requests": len(records),
            "req_per_s": len(records) / (t1 - t0),
            "busiest_s": max(per_second.values(), default=0),
            "metric_posts": len(metrics_posts),
            "logged": logged,
            "stored": stored,
            "bytes_per_stored": metric_bytes / max(stored, 1),
            "bytes_per_logged": metric_bytes / max(logged, 1),
            "uploaded": bool(_run.uploaded),
        }
    finally:
        server.stop()
        for key in ("SIMVUE_URL", "SIMVUE_TOKEN"):
            os.environ.pop(key, None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a CI smoke run")
    parser.add_argument("--procs", type=int, nargs="+")
    parser.add_argument("--rate", type=float, default=100.0, help="log calls per second per process")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    procs = args.procs or ([2, 4] if args.quick else [4, 64])
    seconds = 1.0 if args.quick else args.seconds
    for key in [k for k in os.environ if k.startswith("SIMVUE")]:
        del os.environ[key]
    print(f"upload traffic: {len(METRICS)} metrics x {args.rate:.0f} Hz per process, {seconds:.0f} s")
    header = ("procs", "requests", "req/s", "busiest s", "metric POSTs", "points logged", "points stored",
              "B/stored pt", "B/logged pt", "uploaded")  # fmt: skip
    print(" | ".join(header))
    with tempfile.TemporaryDirectory() as tmp:
        for p in procs:
            r = measure(p, args.rate, seconds, Path(tmp))
            print(f"{r['procs']:5.0f} | {r['requests']:8.0f} | {r['req_per_s']:5.2f} | {r['busiest_s']:9.0f} | "
                  f"{r['metric_posts']:12.0f} | {r['logged']:13.0f} | {r['stored']:13.0f} | "
                  f"{r['bytes_per_stored']:11.1f} | {r['bytes_per_logged']:11.2f} | {r['uploaded']}")  # fmt: skip
            if not r["uploaded"]:
                print("the upload did not complete", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
