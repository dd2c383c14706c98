"""The aggregator's tick while a backlog grows: its cost must follow what arrives, not what waits.

``--ranks`` ranks log ``--metrics`` metrics, one step per 100 ms (one METRICS message per rank and step);
rank 0 sends nothing, so no step becomes final and every point waits (the slow-rank case). The state
machine is driven in this thread with an injected clock (no sockets), ticking every 50 ms as the loop
does. Printed: the CPU time of a tick at several backlog sizes, and of handling one message.

Usage::

    python benchmarks/bench_backlog.py                 # 256 ranks x 10 metrics, 60 steps
    python benchmarks/bench_backlog.py --quick         # CI smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for CI smoke runs")
    ap.add_argument("--ranks", type=int)
    ap.add_argument("--metrics", type=int, default=10)
    ap.add_argument("--steps", type=int)
    args = ap.parse_args()
    ranks = args.ranks or (16 if args.quick else 256)
    steps = args.steps or (10 if args.quick else 60)

    import numpy as np

    from simvue_hpc.aggregator.state import AggregatorConfig, AggregatorState
    from simvue_hpc.protocol import Hello, MetricBatch, decode, encode

    C.header("bench_backlog: tick cost while nothing can be final")
    names = [f"metric_{m:02d}" for m in range(args.metrics)]
    config = AggregatorConfig("bench", "bench", "s", expected_ranks=ranks, host_rank=None)
    state = AggregatorState(config, 0.0)
    for r in range(ranks):
        state.handle(b"rank-%d" % r, 0, Hello("s", r, ranks, "node", r, "bench"), 0.0)
    rng = np.random.default_rng(0)
    now, ticks, handle_s, messages = 0.0, [], 0.0, 0
    for step in range(steps):
        n = len(names)
        batch = MetricBatch(
            names,
            np.arange(n, dtype=np.uint32),
            np.full(n, step, np.int64),
            np.full(n, time.time_ns(), np.int64),
            rng.random(n),
        )
        frames = encode(batch, step + 1)
        t0 = time.process_time()
        for r in range(1, ranks):  # rank 0 is the slow one
            state.handle(b"rank-%d" % r, step + 1, decode(frames)[1], now)
        handle_s += time.process_time() - t0
        messages += ranks - 1
        for _ in range(2):
            now += 0.05
            t0 = time.process_time()
            state.tick(now)
            ticks.append(time.process_time() - t0)
    marks = sorted({max(1, steps // 6), steps // 2, steps - 1})
    waiting = [f"{s * (ranks - 1) * len(names):,}" for s in marks]
    cost = [C.fmt_ns(1e9 * np.mean(ticks[2 * s : 2 * s + 2])) for s in marks]
    rows = [[f"{s} steps", w, c] for s, w, c in zip(marks, waiting, cost, strict=True)]
    C.table(rows, ["backlog", "points waiting", "CPU per tick"])
    print(f"   handling one message (decode + handle): {C.fmt_ns(1e9 * handle_s / messages)}")
    C.emit_json(
        {
            "bench": "backlog",
            "tick_s": {str(s): float(np.mean(ticks[2 * s : 2 * s + 2])) for s in marks},
            "handle_s": handle_s / messages,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
