"""Aggregator ingest throughput, in metric points per second on one core, from batched frames.

Messages are built as the ranks' I/O threads build them (one ``MetricBatch`` per rank per flush:
``--steps`` steps x ``--metrics`` metrics, about ``batch_points`` = 4096 points) for ``--ranks``
ranks and ``--rounds`` rounds, and encoded once, before any timing.

Part 1, in one thread (no sockets), each stage timed separately from a fresh state:

    decode                        protocol.decode of every message
    + handle                      ... then AggregatorState.handle
    + tick                        ... then AggregatorState.tick once per round of ranks (the real
                                  loop ticks every 50 ms; at 5 M points/s that is about one round
                                  of 64 ranks x 4000 points), which reduces and emits final steps
    + store                       ... then the RunWriter appends of the emitted records and a
                                  flush per tick (as the loop does), into a temporary store

Part 2, through real sockets: the aggregator's own loop (``AggregatorService.run``: ROUTER, poll,
decode, handle, tick, store) in this process, fed by one DEALER per rank from another process
that sends the same pre-encoded frames as fast as ZeroMQ takes them. Timed from the feeder's first
batch to the end of ``run()`` (the final reduce, the END record and the store's fsync included).

``--profile`` prints the top entries of a cProfile of the in-thread pipeline (+ store).

Usage::

    python benchmarks/bench_ingest.py                 # 64 ranks x 10 metrics x 400 steps x 20 rounds
    python benchmarks/bench_ingest.py --profile
    python benchmarks/bench_ingest.py --quick         # CI smoke
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing as mp
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SECRET = "bench-secret"


def build_frames(
    ranks: int, metrics: int, steps: int, rounds: int, seed: int = 0
) -> list[list[tuple[bytes, list[bytes]]]]:
    """``frames[round][rank] = (identity, frames)``; hellos are message 0 of each rank (built separately)."""
    import numpy as np

    from simvue_hpc.protocol import MetricBatch, encode

    rng = np.random.default_rng(seed)
    names = [f"metric_{m:02d}" for m in range(metrics)]
    name_id = np.tile(np.arange(metrics, dtype=np.uint32), steps)
    t0 = time.time_ns()
    out = []
    for k in range(rounds):
        step = np.repeat(np.arange(k * steps, (k + 1) * steps, dtype=np.int64), metrics)
        tns = t0 + step * 1_000_000
        row = []
        for r in range(ranks):
            value = rng.standard_normal(steps * metrics)
            batch = MetricBatch(names, name_id, step, tns, value)
            row.append((f"rank-{r}".encode(), [bytes(f) for f in encode(batch, k + 1)]))
        out.append(row)
    return out


def hello_frames(rank: int, ranks: int) -> list[bytes]:
    from simvue_hpc.protocol import Hello, encode

    hello = Hello(secret=SECRET, rank=rank, size=ranks, host="bench", pid=os.getpid(), client="bench")
    return [bytes(f) for f in encode(hello, 0)]


def goodbye_frames(seq: int, sent: int) -> list[bytes]:
    from simvue_hpc.protocol import Goodbye, encode

    return [bytes(f) for f in encode(Goodbye(sent, 0, {}), seq)]


# ---------------------------------------------------------------------------------------------- part 1
def pipeline(frames, ranks: int, stage: str, store_root: Path | None) -> tuple[float, int, dict]:
    """Run one stage over all messages from a fresh state; returns (seconds, points, counters)."""
    from simvue_hpc.aggregator.state import AggregatorConfig, AggregatorState, Append, AppendMetrics
    from simvue_hpc.protocol import decode
    from simvue_hpc.store import RunWriter, new_run_id

    config = AggregatorConfig(run_id="bench", run_name="bench", secret=SECRET, expected_ranks=ranks, host_rank=None)
    now = 1000.0
    state = AggregatorState(config, now)
    for r in range(ranks):
        state.handle(f"rank-{r}".encode(), 0, decode(hello_frames(r, ranks))[1], now)
    writer = RunWriter.create(store_root, new_run_id()) if store_root is not None else None
    do_handle = stage in ("handle", "tick", "store")
    do_tick = stage in ("tick", "store")
    points = 0

    def perform(actions):
        if writer is None:
            return
        for a in actions:
            if isinstance(a, AppendMetrics):
                writer.append_metrics(a.names, a.name_id, a.step, a.time_us, a.value, late=a.late)
            elif isinstance(a, Append):
                writer.append(a.type, a.payload)

    t0 = time.perf_counter_ns()
    for row in frames:
        for identity, fr in row:
            seq, msg = decode(fr)
            points += len(msg.value)
            if do_handle:
                perform(state.handle(identity, seq, msg, now))
        if do_tick:
            now += 0.05
            perform(state.tick(now))
            if writer is not None:
                writer.flush()
    if do_tick:
        perform(state.finish_now(now))
    if writer is not None:
        writer.close()
    seconds = (time.perf_counter_ns() - t0) / 1e9
    return seconds, points, dict(state.counters)


def part1(frames, ranks: int, reps: int, tmp: Path, profile: bool, top: int) -> dict:
    import logging

    logging.getLogger("simvue_hpc").setLevel(logging.ERROR)  # no goodbyes here: "closed without ..." is expected
    stages = ("decode", "handle", "tick", "store")
    labels = {"decode": "decode", "handle": "+ handle", "tick": "+ tick (reduce)", "store": "+ store writes"}
    times: dict[str, list[float]] = {s: [] for s in stages}
    points = 0
    counters: dict = {}
    for rep in range(reps):
        for s in stages:  # interleaved, so drift of the machine hits every stage alike
            root = tmp / f"p1-{rep}-{s}" if s == "store" else None
            sec, points, cnt = pipeline(frames, ranks, s, root)
            times[s].append(sec)
            if s == "store":
                counters = cnt
    rows = []
    result = {}
    for s in stages:
        med = C.median(times[s])
        rate = points / med
        result[s] = rate
        rows.append([labels[s], f"{med * 1e3:.1f} ms", f"{min(times[s]) * 1e3:.1f}-{max(times[s]) * 1e3:.1f} ms",
                     C.fmt_rate(rate), f"{med / points * 1e9:.0f} ns"])  # fmt: skip
    print(f"\n   part 1: in one thread, {points} points per pass, median of {reps}")
    C.table(rows, ["stage (cumulative)", "median", "range", "points/s", "per point"])
    print(f"   counters after the store pass: {counters}")
    if counters.get("points_received") != points:
        print(f"   WARNING: received {counters.get('points_received')} of {points}")
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        pipeline(frames, ranks, "store", tmp / "p1-profile")
        prof.disable()
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        stats.sort_stats("tottime").print_stats(top)
        print(f"\n   cProfile of one pass of decode + handle + tick + store (top {top} by own time):")
        print(_trim_profile(buf.getvalue()))
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
        print(f"   ... and by cumulative time (top {top}):")
        print(_trim_profile(buf.getvalue()))
    logging.getLogger("simvue_hpc").setLevel(logging.NOTSET)
    return result


def _trim_profile(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip().startswith("ncalls")), 0)
    repo = str(C.REPO) + "/"
    site = next((p for p in sys.path if p.endswith("site-packages")), "@@")
    return "\n".join("   " + ln.replace(repo, "").replace(site + "/", "") for ln in lines[start:] if ln.strip())


# ---------------------------------------------------------------------------------------------- part 2
def feeder(conn, ranks: int, frames_args: tuple, offered: float) -> None:
    """Child process: one DEALER per rank, hello, every batch round-robin, goodbye; reports timings."""
    import zmq

    from simvue_hpc.protocol import decode

    frames = build_frames(*frames_args)
    endpoint = conn.recv()
    ctx = zmq.Context()
    socks = []
    for r in range(ranks):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.SNDHWM, 64)
        s.setsockopt(zmq.LINGER, 5000)
        s.connect(endpoint)
        s.send_multipart(hello_frames(r, ranks))
        socks.append(s)
    for s in socks:  # wait for every WELCOME: connection set-up is not part of the timing
        decode(s.recv_multipart())
    conn.send("ready")
    conn.recv()  # go
    t_start = time.monotonic()
    sent = [0] * ranks
    round_points = sum(len(fr[2]) // 4 for _, fr in frames[0])
    for k, row in enumerate(frames):
        if offered > 0:  # absolute deadlines: round k leaves at t_start + k * round_points / offered
            delay = t_start + k * round_points / offered - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        for r, (_, fr) in enumerate(row):
            socks[r].send_multipart(fr, copy=False)
            sent[r] += len(fr[2]) // 4
    t_sent = time.monotonic()
    order = [*range(1, ranks), 0]  # the host rank's goodbye last: it starts the close
    for r in order:
        socks[r].send_multipart(goodbye_frames(len(frames) + 1, sent[r]))
    for r in order:
        while True:
            _, msg = decode(socks[r].recv_multipart())
            if type(msg).__name__ == "GoodbyeAck":
                break
    t_acked = time.monotonic()
    conn.send({"t_start": t_start, "t_sent": t_sent, "t_acked": t_acked, "sent": sum(sent)})
    for s in socks:
        s.close(0)
    ctx.term()


def part2(ranks: int, frames_args: tuple, tmp: Path, transport_kind: str, offered: float, profile: bool,
          top: int) -> dict:  # fmt: skip
    from simvue_hpc.aggregator.finality import StepFinality
    from simvue_hpc.aggregator.loop import AggregatorService, AggregatorSpec
    from simvue_hpc.store import load_run, new_run_id

    ctx = mp.get_context("fork")
    parent_conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=feeder, args=(child_conn, ranks, frames_args, offered), daemon=True)
    proc.start()  # forked before this process has any ZeroMQ context
    run_id = new_run_id()
    spec = AggregatorSpec(run_id=run_id, run_name="bench-ingest", secret=SECRET, root=str(tmp / "p2"),
                          run={"id": run_id, "name": "bench-ingest"}, expected_ranks=ranks, host_rank=0)  # fmt: skip
    service = AggregatorService(spec)
    endpoint = service.bind(transport_kind)
    parent_conn.send(endpoint)
    import threading

    result: dict = {}

    def conduct() -> None:
        msg = parent_conn.recv()
        assert msg == "ready", msg
        result["cpu0"] = time.process_time()
        parent_conn.send("go")
        result.update(parent_conn.recv())

    conductor = threading.Thread(target=conduct, daemon=True)
    conductor.start()
    # diagnostic: how many new points each reduce pass (tick) folds in
    pending: list[int] = []
    original_reduce = StepFinality.reduce

    def counting_reduce(self, now, final):  # type: ignore[no-untyped-def]
        n = sum(len(c[0]) for c in self._staged)
        if n:
            pending.append(n)
        return original_reduce(self, now, final)

    StepFinality.reduce = counting_reduce  # type: ignore[method-assign]
    prof = cProfile.Profile() if profile else None
    try:
        if prof:
            prof.enable()
        status = service.run()
        t_end = time.monotonic()
        cpu1 = time.process_time()
        if prof:
            prof.disable()
    finally:
        StepFinality.reduce = original_reduce  # type: ignore[method-assign]
    conductor.join(60)
    proc.join(30)
    view = load_run(Path(spec.root) / run_id)
    counters = (view.end or {}).get("counters", {})
    seconds = t_end - result["t_start"]
    points = result["sent"]
    rate = points / seconds
    cpu = cpu1 - result["cpu0"]
    how = f"offered at {C.fmt_rate(offered)}" if offered > 0 else "as fast as the feeder can send"
    print(
        f"\n   part 2: real {transport_kind} ROUTER fed by {ranks} DEALERs in another process, {how}; status {status}"
    )
    C.table(
        [[f"{points}", f"{(result['t_sent'] - result['t_start']) * 1e3:.0f} ms", f"{seconds * 1e3:.0f} ms",
          f"{(t_end - result['t_sent']) * 1e3:.0f} ms", f"{cpu * 1e3:.0f} ms", C.fmt_rate(rate),
          C.fmt_rate(points / cpu if cpu > 0 else float("nan"))]],
        ["points", "feeder sent in", "until run() returned", "after last send", "aggregator CPU", "points/s (wall)",
         "points/CPU-s"],
    )  # fmt: skip
    print(f"   counters: {counters}")
    if pending:
        print(f"   reduce passes with new points: {len(pending)}, points per pass median {C.median(pending):.0f}, "
              f"max {max(pending)}")  # fmt: skip
    if counters.get("points_received") != points:
        print(f"   WARNING: the aggregator received {counters.get('points_received')} of {points} points")
    if prof:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
        print(f"\n   cProfile of the aggregator loop (top {top} by own time):")
        print(_trim_profile(buf.getvalue()))
    return {"points_per_s": rate, "points_per_cpu_s": points / cpu if cpu > 0 else None, "offered": offered,
            "max_pending": max(pending) if pending else 0}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for CI smoke runs")
    ap.add_argument("--ranks", type=int)
    ap.add_argument("--metrics", type=int, default=10)
    ap.add_argument("--steps", type=int, default=400, help="steps per batch (default 400: 4000 points)")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--reps", type=int)
    ap.add_argument("--transport", default="tcp", choices=("tcp", "ipc"))
    ap.add_argument("--profile", action="store_true", help="print cProfile top entries")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--offered", default=None,
                    help="comma-separated offered rates for part 2 in points/s, 0 = as fast as possible "
                         "(default 0,2e6,4e6; --quick: 0)")  # fmt: skip
    ap.add_argument("--skip-sockets", action="store_true")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    ranks = args.ranks or (4 if args.quick else 64)
    rounds = args.rounds or (5 if args.quick else 20)
    reps = args.reps or (1 if args.quick else 5)
    frames_args = (ranks, args.metrics, args.steps, rounds)

    C.header("bench_ingest: aggregator ingest, metric points per second")
    print(f"   {ranks} ranks x {args.metrics} metrics x {args.steps} steps per batch x {rounds} rounds "
          f"= {ranks * args.metrics * args.steps * rounds} points in {ranks * rounds} messages")  # fmt: skip
    frames = build_frames(*frames_args)
    nbytes = sum(len(f) for row in frames for _, fr in row for f in fr)
    print(f"   {nbytes / 1e6:.1f} MB of frames, {nbytes / (ranks * rounds) / 1e3:.1f} kB per message")
    with C.TempRoot("simvue-bench-ingest-", keep=args.keep) as tmp:
        r1 = part1(frames, ranks, reps, tmp, args.profile, args.top)
        del frames
        r2 = []
        if not args.skip_sockets:
            offered = [float(x) for x in (args.offered or ("0" if args.quick else "0,2e6,4e6")).split(",")]
            for i, rate in enumerate(offered):
                r2.append(part2(ranks, frames_args, tmp / f"p2-{i}", args.transport, rate, args.profile and i == 0,
                                args.top))  # fmt: skip
    print()
    burst = [r for r in r2 if r["offered"] == 0]
    print(
        f"   target: 5 M points/s from batched frames: in-thread with store {C.fmt_rate(r1['store'])}"
        + (f", through sockets (burst) {C.fmt_rate(burst[0]['points_per_s'])}" if burst else "")
        + f" -> {'MET' if r1['store'] >= 5e6 and all(r['points_per_s'] >= 5e6 for r in burst) else 'NOT MET'}"
    )
    if args.quick:
        print("   (--quick: sizes too small for these figures to mean much)")
    C.emit_json({"bench": "ingest", "in_thread": r1, "sockets": r2})
    return 0


if __name__ == "__main__":
    sys.exit(main())
