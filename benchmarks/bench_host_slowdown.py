"""How much hosting the aggregator slows rank 0's own work: thread aggregator against process aggregator.

Rank 0 (this process) runs a fixed CPU-bound kernel (per iteration: one 5-point stencil update of a
numpy grid, a pure-Python loop, and in the tracked cases one ``run.log`` of 3 metrics) for a fixed
number of iterations, while K logger processes log 10 metrics each at a fixed rate into the same
run. Rank 0's wall time for the kernel is measured in four configurations:

    (a) none      no tracking at all: no run, no loggers
    (b) thread    rank 0 hosts the aggregator as a thread (``Simvue(aggregator="thread")``)
    (c) process   rank 0 hosts the aggregator as a child process (``Simvue()``, the default)
    (d) elsewhere the run is hosted by a DIFFERENT process (with its aggregator thread); rank 0 and
                  the loggers attach to it

(d) carries everything but the hosting: the loggers' CPU load on the machine, the aggregator's
CPU load on the machine, rank 0's own ``run.log`` calls and I/O thread. So the cost of hosting
alone is (b) - (d) for the thread and (c) - (d) for the child process; (d) - (a) is what the
loggers and the aggregator cost rank 0 by sharing the machine's cores.

The K loggers are ``multiprocessing`` processes (forked before the run exists, attached through
``SIMVUE_HPC_ENDPOINT``/``SIMVUE_HPC_SECRET``, exactly as pool workers and ``simvue-hpc run``
children attach), not an ``mpiexec`` job: what the aggregator does per point and per message does
not depend on how the ranks were launched, and MPICH's busy-polling progress engine in idle ranks
would add CPU load of its own on a 2-core machine and blur the figure being measured. They are
paced by absolute deadlines (``t0 + i / rate``, logging every due step at each wake, sleeping at
least 1 ms), so the load they offer does not depend on how much CPU rank 0 leaves them.

The configurations are interleaved (a, b, c, d, a, b, ...) over ``--rounds`` rounds, each
measuring ``--reps`` kernel runs once the loggers have logged for ``--warmup`` seconds (default
12 s: past the default ``step_timeout`` of 10 s, before which a metric that not every live rank
logs is held unreduced by the aggregator; see README.md); every figure is a median.

``--pin`` binds rank 0 to the first CPU and the other processes to the rest, as an MPI launcher
binding ranks to cores would: rank 0's threads and child processes (the aggregator, in both modes)
then share rank 0's core.

Usage::

    python benchmarks/bench_host_slowdown.py                 # K=8 loggers x 2000 Hz x 10 metrics
    python benchmarks/bench_host_slowdown.py --quick         # CI smoke
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

CONFIGS = ("none", "thread", "process", "elsewhere")
PIN_CONFIGS = ("none", "thread", "process", "process-unbound", "elsewhere")
ENV_KEYS = ("SIMVUE_HPC_ENDPOINT", "SIMVUE_HPC_SECRET", "SIMVUE_HPC_RUN_ID", "SIMVUE_HPC_OWNER")


# ---------------------------------------------------------------------------------------------- the kernel
def kernel(iters: int, n: int, inner: int, log=None) -> float:  # type: ignore[no-untyped-def]
    """Fixed work: a stencil update of an n x n grid and a pure-Python loop per iteration."""
    import numpy as np

    u = np.zeros((n, n))
    u[0, :] = 1.0
    checksum = 0
    for it in range(iters):
        u[1:-1, 1:-1] = 0.25 * (u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:])
        s = 0
        for j in range(inner):
            s += (j * j) % 7
        checksum += s
        if log is not None:
            log({"residual": float(u[1, 1]), "iteration": it, "checksum": s})
    return float(u.sum()) + checksum


# ---------------------------------------------------------------------------------------------- processes
def attach_env(info: dict[str, str]) -> None:
    for key in ENV_KEYS:
        os.environ.pop(key, None)
    os.environ.update(info)


def logger(conn, idx: int, hz: float, nmetrics: int, cpus: set[int] | None) -> None:  # type: ignore[no-untyped-def]
    """Waits for the run's endpoint, attaches, logs at ``hz`` until told to stop, closes."""
    pin(cpus)
    info = conn.recv()
    attach_env(info)
    import simvue_hpc

    run = simvue_hpc.attach()
    names = [f"m{j}" for j in range(nmetrics)]
    conn.send("ready")
    t0 = conn.recv()  # common start
    period = 1.0 / hz
    i = 0
    mono = time.monotonic
    while True:
        if conn.poll(0):
            conn.recv()
            break
        now = mono()
        while t0 + i * period <= now:
            base = float(idx + i)
            run.log({n: base + k for k, n in enumerate(names)}, step=i)
            i += 1
        time.sleep(max(0.001, t0 + i * period - mono()))
    elapsed = mono() - t0
    run.close()
    conn.send({"calls": i, "rate": i / elapsed})


def host(conn, cpus: set[int] | None, settings: dict) -> None:  # type: ignore[no-untyped-def]
    """Configuration (d): another process hosts the run (aggregator thread in it), idle otherwise."""
    pin(cpus)
    from simvue_hpc import Simvue

    run = Simvue(aggregator="thread", **settings)
    run.init(name="bench-host-slowdown-elsewhere", folder="/bench")
    conn.send({k: os.environ[k] for k in ENV_KEYS if k in os.environ})
    conn.recv()  # everyone else has closed
    run.close()
    conn.send(run.status)


def pin(cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)


def _thread_cpu(tid: int) -> float:
    with open(f"/proc/self/task/{tid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def unbind_aggregator() -> None:
    """Let every thread of the aggregator child run on any CPU (it inherited rank 0's binding)."""
    import psutil

    allowed = set(range(os.cpu_count() or 1))
    for child in psutil.Process().children():
        if "simvue_hpc.aggregator" in " ".join(child.cmdline()):
            for tid in os.listdir(f"/proc/{child.pid}/task"):
                os.sched_setaffinity(int(tid), allowed)


def aggregator_cpu_probe(config: str, host_pid: int | None):  # type: ignore[no-untyped-def]
    """A function returning the aggregator's CPU seconds so far (None if it cannot be found)."""
    import threading

    import psutil

    if config == "thread":
        for th in threading.enumerate():
            if th.name == "simvue_hpc-aggregator" and th.native_id is not None:
                tid = th.native_id
                return lambda: _thread_cpu(tid)
    elif config in ("process", "process-unbound"):
        for child in psutil.Process().children():
            if "simvue_hpc.aggregator" in " ".join(child.cmdline()):
                return lambda: sum(child.cpu_times()[:2])
    elif config == "elsewhere" and host_pid is not None:
        proc = psutil.Process(host_pid)  # the hosting process: its aggregator thread and an idle worker
        return lambda: sum(proc.cpu_times()[:2])
    return None


# ---------------------------------------------------------------------------------------------- one configuration
def measure(config: str, args, iters: int) -> dict:  # type: ignore[no-untyped-def]
    ctx = mp.get_context("fork")
    loggers = []
    host_proc = host_conn = None
    run = None
    result: dict = {"config": config}
    if config != "none":
        for k in range(args.loggers):  # forked before this process starts any run
            a, b = ctx.Pipe()
            p = ctx.Process(target=logger, args=(b, k + 1, args.hz, args.metrics, args.others), daemon=True)
            p.start()
            loggers.append((p, a))
        if config == "elsewhere":
            host_conn, b = ctx.Pipe()
            host_proc = ctx.Process(target=host, args=(b, args.others, args.settings), daemon=True)
            host_proc.start()
            info = host_conn.recv()
            attach_env(info)
            import simvue_hpc

            run = simvue_hpc.attach()
        else:
            from simvue_hpc import Simvue

            run = Simvue(aggregator=config.split("-")[0], **args.settings)
            run.init(name=f"bench-host-slowdown-{config}", folder="/bench")
            info = {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
            if config == "process-unbound":
                unbind_aggregator()
        for _, conn in loggers:
            conn.send(info)
        for _, conn in loggers:
            assert conn.recv() == "ready"
        t0 = time.monotonic() + 0.05
        for _, conn in loggers:
            conn.send(t0)
        time.sleep(args.warmup)
    log = run.log if run is not None else None
    probe = aggregator_cpu_probe(config, host_proc.pid if host_proc else None) if config != "none" else None
    times, cpus = [], []
    a0 = probe() if probe else None
    t_a0 = time.perf_counter()
    for _ in range(args.reps):
        c0 = time.thread_time()
        w0 = time.perf_counter_ns()
        kernel(iters, args.grid, args.inner, log)
        times.append((time.perf_counter_ns() - w0) / 1e9)
        cpus.append(time.thread_time() - c0)
    if probe and a0 is not None:
        result["agg_share"] = (probe() - a0) / (time.perf_counter() - t_a0)
    result["wall"] = times
    result["cpu"] = cpus
    if config != "none":
        for _, conn in loggers:
            conn.send("stop")
        stats = [conn.recv() for _, conn in loggers]
        result["logger_rate"] = C.median(s["rate"] for s in stats)
        for p, _ in loggers:
            p.join(30)
        assert run is not None
        run.close()
        if host_conn is not None and host_proc is not None:
            host_conn.send("close")
            result["status"] = host_conn.recv()
            host_proc.join(30)
        else:
            result["status"] = run.status
        for key in ENV_KEYS:
            os.environ.pop(key, None)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for CI smoke runs")
    ap.add_argument("-K", "--loggers", type=int, help="logger processes (default 8; --quick 2)")
    ap.add_argument("--hz", type=float, default=2000.0, help="log calls per second per logger (10 metrics each)")
    ap.add_argument("--metrics", type=int, default=10)
    ap.add_argument("--seconds", type=float, help="target kernel time without tracking (default 1.0)")
    ap.add_argument("--reps", type=int, help="kernel runs per configuration and round (default 3)")
    ap.add_argument("--rounds", type=int, help="rounds over the configurations (default 3)")
    ap.add_argument("--grid", type=int, default=128)
    ap.add_argument("--inner", type=int, default=2000, help="pure-Python loop length per iteration")
    ap.add_argument("--warmup", type=float,
                    help="seconds of logging before measuring (default 12: past the default step_timeout of 10 s, "
                         "so the steady state is measured; --quick 0.3)")  # fmt: skip
    ap.add_argument(
        "--configs",
        help="comma-separated subset of " + ",".join(PIN_CONFIGS) + " (default: all but "
        "process-unbound, which --pin adds: the aggregator child re-bound to every CPU after it starts)",
    )
    ap.add_argument("--pin", action="store_true",
                    help="bind rank 0 (and so its threads and children) to CPU 0 and every other process to the "
                         "other CPUs, as mpiexec --bind-to core would")  # fmt: skip
    C.add_settings_args(ap)
    args = ap.parse_args()
    args.settings = C.parse_settings(args.set)
    args.loggers = args.loggers or (2 if args.quick else 8)
    args.seconds = args.seconds or (0.2 if args.quick else 1.0)
    args.reps = args.reps or (1 if args.quick else 3)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 12.0)
    configs = [c for c in (args.configs or ",".join(PIN_CONFIGS if args.pin else CONFIGS)).split(",") if c]
    args.others = None
    if args.pin:
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) < 2:
            raise SystemExit("--pin needs at least 2 CPUs")
        args.others = set(allowed[1:])
        pin({allowed[0]})

    C.header("bench_host_slowdown: rank 0's compute time while hosting the aggregator")
    if args.settings:
        print(f"   settings: {args.settings}")
    if args.pin:
        print(f"   pinned: rank 0 (its threads and children) on CPU {sorted(os.sched_getaffinity(0))}, "
              f"loggers and the other host on CPUs {sorted(args.others)}")  # fmt: skip
    with C.TempRoot("simvue-bench-host-", keep=args.keep) as tmp:
        C.isolate_this_process(tmp)
        # calibrate the iteration count on the idle machine
        kernel(20, args.grid, args.inner)
        t = time.perf_counter()
        kernel(50, args.grid, args.inner)
        per_iter = (time.perf_counter() - t) / 50
        iters = max(10, int(args.seconds / per_iter))
        print(f"   kernel: {iters} iterations of a {args.grid}x{args.grid} stencil update + a {args.inner}-step "
              f"Python loop ({per_iter * 1e3:.2f} ms each, idle)")  # fmt: skip
        print(f"   loggers: K={args.loggers} processes x {args.hz:g} calls/s x {args.metrics} metrics = "
              f"{C.fmt_rate(args.loggers * args.hz * args.metrics)} points offered; rank 0 logs 3 metrics per "
              f"iteration when tracked")  # fmt: skip
        results: dict[str, list[dict]] = {c: [] for c in configs}
        for r in range(args.rounds):
            for c in configs:
                res = measure(c, args, iters)
                results[c].append(res)
                print(f"   round {r + 1} {c:15s}: " + ", ".join(f"{w:.3f}" for w in res["wall"]) + " s"
                      + (f" (loggers at {res['logger_rate']:.0f} Hz, aggregator CPU "
                         f"{100 * res.get('agg_share', 0):.0f} %"
                         f" of a core, run {res.get('status')})" if c != "none" else ""),
                      flush=True)  # fmt: skip
    wall = {c: C.median(w for res in rs for w in res["wall"]) for c, rs in results.items()}
    agg = {c: C.median(res.get("agg_share", float("nan")) for res in rs) for c, rs in results.items()}
    cpu = {c: C.median(w for res in rs for w in res["cpu"]) for c, rs in results.items()}

    def paired(c: str, ref: str) -> list[float]:
        """Per round: this configuration's median over that round's median of ``ref`` (drift cancels)."""
        if ref not in results or c not in results:
            return []
        return [C.median(x["wall"]) / C.median(y["wall"]) - 1 for x, y in zip(results[c], results[ref], strict=True)]

    def pct(values: list[float]) -> str:
        if not values:
            return ""
        med = 100 * C.median(values)
        return f"{med:+.1f} %" + (f" [{100 * min(values):+.0f}..{100 * max(values):+.0f}]" if len(values) > 1 else "")

    labels = {"none": "(a) no tracking", "thread": "(b) hosts a thread aggregator",
              "process": "(c) hosts a process aggregator",
              "process-unbound": "(c') process aggregator, unbound",
              "elsewhere": "(d) run hosted elsewhere"}  # fmt: skip
    rows = []
    for c in configs:
        vs_d = pct(paired(c, "elsewhere")) if c.startswith(("thread", "process")) else ""
        share = f"{100 * agg[c]:.0f} %" if c != "none" else ""
        rows.append([labels[c], f"{wall[c]:.3f} s", f"{cpu[c]:.3f} s", pct(paired(c, "none")) if c != "none" else "",
                     vs_d, share])  # fmt: skip
    print()
    print("   slowdowns are medians over rounds of per-round ratios (each round's own (a) or (d)), [min..max]")
    C.table(rows, ["rank 0", "wall (median)", "main-thread CPU", "vs (a)", "hosting cost vs (d)", "aggregator CPU"])
    costs = {c: 100 * C.median(paired(c, "elsewhere")) for c in configs if c.startswith(("thread", "process"))
             and paired(c, "elsewhere")}  # fmt: skip
    if costs:
        print()
        print("   target: hosting slows rank 0 by < 5 %: " + "; ".join(
            f"{c} {v:+.1f} % -> {'MET' if v < 5 else 'NOT MET'}" for c, v in costs.items()))  # fmt: skip
        best = min(costs, key=costs.__getitem__)
        print(f"   cheapest for rank 0 here: {best}")
    for a, b in (("thread", "process"), ("thread", "process-unbound"), ("process", "process-unbound")):
        if a in results and b in results:
            print(f"   {a} against {b}, paired per round: rank 0 is {pct(paired(a, b))} slower with {a}")
    if args.quick:
        print("   (--quick: sizes too small for these figures to mean much)")
    C.emit_json({"bench": "host_slowdown", "wall": wall, "cpu": cpu, "aggregator_share": agg, "pinned": args.pin,
                 "hosting_cost_pct": costs})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
