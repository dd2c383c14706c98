"""Toward 100,000 ranks: 1,000 simulated node relays feed one root aggregator; does it keep up, exactly?

No machine here runs 100,000 ranks, so this plays their node relays: ``--relays`` DEALER connections
(one per node, over ipc) into a real root aggregator (``AggregatorService`` in its own process, the
loop a job's aggregator runs). Relay k stands for ``--ranks-per-relay`` ranks that each log
``--metrics`` values at ``--hz``: every ``--flush`` seconds it sends one PARTIALS message holding
the accumulators of the steps its ranks completed since (what a relay's pre-reduction produces; the
relay process itself is not simulated). Rank l of relay k logs ``g(l, m, s) + k`` with
``g = ((31 l + 17 m + 7 s) mod 1024) / 4``, exact in binary, so the root's stored count, sum, min,
max and mean are checked bit for bit against closed forms and std to 1e-12 relative.

Printed: relays connected and acknowledged, connect (HELLO to WELCOME) p50/max over the connect
storm, close (GOODBYE to GOODBYE_ACK) max, the root's CPU share while the relays send (100 % = one
core) and peak RSS, PARTIALS messages per second, stored records, late records, exactness.

Usage::

    python benchmarks/bench_relay_sim.py                      # 1,000 relays x 100 ranks, 60 s
    python benchmarks/bench_relay_sim.py --flush 1.0          # relays flush once a second
    python benchmarks/bench_relay_sim.py --quick              # 50 relays, 3 s
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from bench_scale import OPS, Sampler

SECRET = "relay-sim-secret"


def _root(conn: Any, root_dir: str, run_id: str, metrics: int) -> None:
    """The root aggregator's process: bind, report the endpoint, run until told to close."""
    from simvue_hpc.aggregator.loop import AggregatorService, AggregatorSpec

    spec = AggregatorSpec(
        run_id=run_id,
        run_name="relay-sim",
        secret=SECRET,
        root=root_dir,
        run={"id": run_id, "name": "relay-sim"},
        expected_ranks=None,
        host_rank=None,
        reductions={f"m{m:02d}": list(OPS) for m in range(metrics)},
    )
    service = AggregatorService(spec)
    conn.send(service.bind("ipc"))

    def wait_close() -> None:
        conn.recv()
        service.request_close()

    threading.Thread(target=wait_close, daemon=True).start()
    conn.send(service.run())


class Template:
    """The accumulators of one relay's ranks at one step, for relay 0; relay k's are shifted by k."""

    def __init__(self, ranks: int, metrics: int, step: int) -> None:
        local = np.arange(ranks)
        self.g = [((31 * local + 17 * m + 7 * step) % 1024) * 0.25 for m in range(metrics)]
        self.sum = np.array([g.sum() for g in self.g])  # exact: multiples of 1/4 below 2**40
        self.min = np.array([g.min() for g in self.g])
        self.max = np.array([g.max() for g in self.g])
        self.mean = np.array([g.mean() for g in self.g])
        self.m2 = np.array([((g - g.mean()) ** 2).sum() for g in self.g])


def _step_rows(relays: int, ranks: int, metrics: int, steps: list[int], now_ns: int) -> dict[str, np.ndarray]:
    """Columns shaped (relays, rows per message [, 3]): the rows of ``steps`` for every relay."""
    k = np.arange(relays, dtype=np.int64)[:, None]
    temps = [Template(ranks, metrics, s) for s in steps]
    rows = len(steps) * metrics

    def cat(attr: str) -> np.ndarray:
        return np.concatenate([getattr(t, attr) for t in temps])

    full = (relays, rows)
    return {
        "key": np.broadcast_to(np.tile(np.arange(metrics, dtype=np.uint32), len(steps)), full).copy(),
        "step": np.broadcast_to(np.repeat(np.array(steps, dtype=np.int64), metrics), full).copy(),
        "time_ns": np.full(full, now_ns, dtype=np.int64),
        "count": np.full(full, ranks, dtype=np.int64),
        "sum_hi": cat("sum")[None, :] + ranks * k,  # exact: the relay's ranks each add k
        "sum_lo": np.zeros(full),
        "min": cat("min")[None, :] + k,
        "max": cat("max")[None, :] + k,
        "m2": np.broadcast_to(cat("m2"), full).copy(),
    }


def expected(relays: int, ranks: int, metrics: int, steps: int) -> dict[tuple[str, int], float]:
    """The stored values in closed form (sums exact, std from exact rationals)."""
    out: dict[tuple[str, int], float] = {}
    n = relays * ranks
    for s in range(steps):
        t = Template(ranks, metrics, s)
        for m in range(metrics):
            g = [Fraction(x) for x in t.g[m].tolist()]
            total = relays * sum(g) + ranks * Fraction(relays * (relays - 1), 2)
            t_mean = sum(g) / ranks
            t_m2 = sum((x - t_mean) ** 2 for x in g)
            var = t_m2 / ranks + Fraction(relays * relays - 1, 12)
            name = f"m{m:02d}"
            out[(name, s)] = float(total) / n  # mean = sum / count, both exact floats
            out[(f"{name}.sum", s)] = float(total)
            out[(f"{name}.count", s)] = float(n)
            out[(f"{name}.min", s)] = float(min(g))
            out[(f"{name}.max", s)] = float(max(g)) + relays - 1
            out[(f"{name}.std", s)] = math.sqrt(var)
    return out


def _cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def feed(endpoint: str, args: argparse.Namespace, root_pid: int) -> dict[str, Any]:
    """Play the relays: connect storm, PARTIALS every flush interval, goodbyes."""
    import msgpack
    import zmq

    from simvue_hpc.protocol import Goodbye, Hello, MsgType, decode, encode
    from simvue_hpc.relay.wire import COLUMNS, ROW

    ctx = zmq.Context()
    socks = []
    for _ in range(args.relays):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 10000)
        s.connect(endpoint)
        socks.append(s)
    index = {s: i for i, s in enumerate(socks)}
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)

    def await_replies(kind: type, sent_at: list[float], what: str) -> list[float]:
        took = [math.nan] * len(socks)
        left = len(socks)
        deadline = time.monotonic() + 120
        while left and time.monotonic() < deadline:
            for sock, _ in poller.poll(1000):
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    _, msg = decode(frames)
                    i = index[sock]
                    if isinstance(msg, kind) and math.isnan(took[i]):
                        took[i] = time.monotonic() - sent_at[i]
                        left -= 1
        if left:
            print(f"   {left} relays got no {what}")
        return took

    from simvue_hpc.protocol import GoodbyeAck, Welcome

    sent_at = []
    for k, s in enumerate(socks):  # the connect storm: every relay at once
        sent_at.append(time.monotonic())
        s.send_multipart(encode(Hello(SECRET, -1, 0, f"node{k}", 1, "simvue_hpc-relay-sim"), 0))
    connect = await_replies(Welcome, sent_at, "WELCOME")
    seq = [1] * len(socks)
    names = [f"m{m:02d}" for m in range(args.metrics)]
    contributors = dict.fromkeys(names, args.ranks_per_relay)
    steps_total = round(args.seconds * args.hz)
    per_flush = max(1, round(args.flush * args.hz))
    t0 = time.monotonic()
    cpu0 = _cpu_of(root_pid)
    sent_msgs = 0
    worst_lag = 0.0
    header = bytes([0x53, 0x56, 1, int(MsgType.PARTIALS)])
    for first in range(0, steps_total, per_flush):
        steps = list(range(first, min(first + per_flush, steps_total)))
        due = t0 + (steps[-1] + 1) / args.hz  # the last of these steps is complete
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        worst_lag = max(worst_lag, -delay)
        cols = _step_rows(args.relays, args.ranks_per_relay, args.metrics, steps, time.time_ns())
        body = msgpack.packb(
            {"names": names, "count": len(steps) * args.metrics, "through": steps[-1], "contributors": contributors},
            use_bin_type=True,
        )
        packed = np.empty((args.relays, len(steps) * args.metrics), dtype=ROW)
        for name, _ in COLUMNS:
            packed[name] = cols[name]
        for k, s in enumerate(socks):
            s.send_multipart([header + seq[k].to_bytes(4, "little"), body, packed[k].tobytes()], copy=False)
            seq[k] += 1
            sent_msgs += 1
    t_sent = time.monotonic()
    time.sleep(1.0 / args.hz)  # the last message's reduction, as the root would get it in a steady stream
    cpu1 = _cpu_of(root_pid)
    points = steps_total * args.metrics * args.ranks_per_relay
    sent_at = []
    for k, s in enumerate(socks):
        sent_at.append(time.monotonic())
        s.send_multipart(encode(Goodbye(points, 0), seq[k]))
    close = await_replies(GoodbyeAck, sent_at, "GOODBYE_ACK")
    for s in socks:
        s.close(0)
    ctx.term()
    return {
        "connect": connect,
        "close": close,
        "messages": sent_msgs,
        "t0": t0,
        "t_sent": t_sent,
        "worst_lag": worst_lag,
        "steps": steps_total,
        "root_cpu_sending": cpu1 - cpu0,
    }


def check(store: Path, args: argparse.Namespace, steps: int) -> dict[str, Any]:
    from simvue_hpc.store import list_runs

    run = list_runs(store)[0]
    stored: dict[tuple[str, int], float] = {}
    late = 0
    for p in C.metric_payloads(run.run_dir):
        if p["late"]:
            late += 1
            continue
        for nid, step, value in zip(p["name_id"].tolist(), p["step"].tolist(), p["value"].tolist(), strict=True):
            stored[(p["names"][nid], step)] = value
    want = expected(args.relays, args.ranks_per_relay, args.metrics, steps)
    exact = bad = missing = 0
    worst = 0.0
    first_bad = []
    for key, value in want.items():
        got = stored.get(key)
        if got is None:
            missing += 1
            continue
        if key[0].endswith(".std"):
            rel = abs(got - value) / value
            worst = max(worst, rel)
            ok = rel <= 1e-12
        else:
            ok = got == value
        exact += ok
        if not ok:
            bad += 1
            if len(first_bad) < 5:
                first_bad.append(f"{key}: {got!r} != {value!r}")
    return {
        "expected": len(want),
        "exact": exact,
        "mismatched": bad,
        "missing": missing,
        "late_records": late,
        "std_worst_rel": worst,
        "first_bad": first_bad,
        "status": run.status,
        "counters": (run.end or {}).get("counters", {}),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--relays", type=int, default=1000)
    ap.add_argument("--ranks-per-relay", type=int, default=100)
    ap.add_argument("--metrics", type=int, default=10)
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--flush", type=float, default=0.1, help="seconds between a relay's PARTIALS (default 0.1)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.relays, args.seconds = 50, 3.0
    C.header(f"bench_relay_sim: {args.relays} relays x {args.ranks_per_relay} ranks into one root aggregator")
    with C.TempRoot("bench_relay_sim_", keep=args.keep) as tmp:
        C.isolate_this_process(tmp)
        from simvue_hpc.store import new_run_id

        ctx = mp.get_context("fork")
        parent, child = ctx.Pipe()
        root = ctx.Process(target=_root, args=(child, str(tmp / "store"), new_run_id(), args.metrics))
        root.start()  # forked before this process has any ZeroMQ context
        endpoint = parent.recv()
        sampler = Sampler(root.pid, interval=0.1)
        sampler.start()
        fed = feed(endpoint, args, root.pid)
        parent.send("close")
        status = parent.recv()
        root.join(60)
        sampler.stop()
        sampler.join()
        result = check(tmp / "store", args, fed["steps"])
    connect = sorted(fed["connect"])
    window = fed["t_sent"] - fed["t0"]
    res = {
        "relays": args.relays,
        "ranks": args.relays * args.ranks_per_relay,
        "flush": args.flush,
        "seconds": args.seconds,
        "status": status,
        "connect_p50": connect[len(connect) // 2],
        "connect_max": max(connect),
        "close_max": max(fed["close"]),
        "messages": fed["messages"],
        "messages_per_s": fed["messages"] / window,
        "root_cpu_s": sampler.cpu,
        "peak_rss_mib": sampler.hwm / 2**20,
        "feeder_worst_lag_s": fed["worst_lag"],
        **result,
    }
    res["root_cpu_share"] = fed["root_cpu_sending"] / (window + 1.0 / args.hz)
    print(
        f"-- {res['ranks']} simulated ranks via {args.relays} relays (flush {args.flush} s, {args.seconds} s): "
        f"connect p50 {res['connect_p50']:.3f} s max {res['connect_max']:.3f} s, close max {res['close_max']:.3f} s; "
        f"{res['messages_per_s']:.0f} PARTIALS/s; root CPU {res['root_cpu_share'] * 100:.0f} % of a core while the "
        f"relays send ({sampler.cpu:.1f} s in all, connect, close incl.), peak RSS {res['peak_rss_mib']:.0f} MiB; "
        f"stored exact {result['exact']}/{result['expected']}, missing {result['missing']}, late records "
        f"{result['late_records']}, std worst rel {result['std_worst_rel']:.1e}; feeder worst lag "
        f"{fed['worst_lag']:.2f} s; status {status}"
    )
    if result["first_bad"]:
        print("   first mismatches:", result["first_bad"])
    C.emit_json(res)
    return 0 if result["mismatched"] == 0 and result["missing"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
