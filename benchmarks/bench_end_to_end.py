"""End to end: P processes each log 10 metrics at 1 kHz for T seconds into ONE run; is every point there?

The parent does ``run = Simvue(reductions=...); run.init(...)`` and starts P processes with the
default ``fork`` method; each child logs through the inherited ``run`` object (it re-attaches to
the parent's run by itself after the fork: a ``run.event`` before the start time makes it do so
outside the timed part), paced by absolute deadlines ``t0 + step / rate`` (when a child falls
behind, it logs every step that is due at once, so the step count is exact and the achieved rate
is what the machine allowed), then calls ``run.close()``. The parent closes last.

Every metric is reduced with ``["mean", "count"]``, so the stored ``<metric>.count`` series says
how many ranks' points went into each stored value: for every metric and step the counts must sum
to P, and over the run to P x steps. The run's RANK records (``sent_points``,
``received_points``, ``dropped_points``) and END counters (``points_received``, ``late_points``,
``dropped_points``) are checked against what the children logged.

The aggregator's CPU share (its process's ``cpu_times`` over the logging window, 100 % = one core)
and its peak memory (``VmHWM`` from ``/proc/<pid>/status``, polled every 0.1 s until it exits) are
reported. With ``--aggregator thread`` the figures are the parent process's (it hosts the aggregator).

Usage::

    python benchmarks/bench_end_to_end.py                    # P=64, T=10 s
    python benchmarks/bench_end_to_end.py --quick            # P=4, T=1 s
    python benchmarks/bench_end_to_end.py -P 16 -T 5 --aggregator thread
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

RUN = None  # the parent's run, inherited by the forked children


def _proc_status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


class Sampler(threading.Thread):
    """Polls a process's CPU times and memory high-water mark until it exits or is stopped."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True, name="sampler")
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.stop_event = threading.Event()
        self.mark_event = threading.Event()
        self.cpu_start = self._cpu()
        self.t_start = time.monotonic()
        self.cpu_last = self.cpu_start
        self.t_last = self.t_start
        self.hwm = 0
        self.rss_max = 0

    def _cpu(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    def reset(self) -> None:
        self.cpu_start, self.t_start = self._cpu(), time.monotonic()

    def run(self) -> None:
        import psutil

        while not self.stop_event.is_set():
            try:
                cpu = self._cpu()
            except psutil.Error:
                return
            st = _proc_status(self.proc.pid)
            if not st:
                return
            self.cpu_last, self.t_last = cpu, time.monotonic()
            self.hwm = max(self.hwm, st.get("VmHWM", 0))
            self.rss_max = max(self.rss_max, st.get("VmRSS", 0))
            self.stop_event.wait(self.interval)


def child(idx: int, t0: float, steps: int, hz: float, nmetrics: int, q) -> None:  # type: ignore[no-untyped-def]
    run = RUN
    assert run is not None
    run.event(f"logger {idx} ready")  # attaches to the parent's run now, outside the timed part
    names = [f"m{j}" for j in range(nmetrics)]
    period = 1.0 / hz
    mono = time.monotonic
    delay = t0 - mono()
    if delay > 0:
        time.sleep(delay)
    i = 0
    max_lag = 0.0
    late_calls = 0
    log = run.log
    while i < steps:
        now = mono()
        due = t0 + i * period
        if due > now:
            time.sleep(due - now)
            continue
        lag = now - due
        if lag > max_lag:
            max_lag = lag
        while i < steps and t0 + i * period <= now:
            if i and t0 + i * period < now - period:
                late_calls += 1
            base = float(idx + i)
            log({n: base + k for k, n in enumerate(names)}, step=i)
            i += 1
    t_last = mono()
    worker = run._reporter
    sent_before_close = worker.sent_points if worker else -1
    tc = mono()
    acknowledged = run.close()
    close_s = mono() - tc
    q.put({
        "idx": idx, "steps": i, "t_last": t_last, "max_lag": max_lag, "late_calls": late_calls,
        "close_s": close_s, "acknowledged": acknowledged,
        "sent_points": worker.sent_points if worker else -1,
        "dropped_points": worker.outbox.dropped_points if worker else -1,
        "rank": worker.rank if worker else None, "sent_before_close": sent_before_close,
    })  # fmt: skip


def find_aggregator(parent_pid: int, mode: str) -> int:
    import psutil

    if mode == "thread":
        return parent_pid
    for p in psutil.Process(parent_pid).children():
        try:
            if "simvue_hpc.aggregator" in " ".join(p.cmdline()):
                return p.pid
        except psutil.Error:
            continue
    raise RuntimeError("aggregator child process not found")


def main() -> int:
    global RUN
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="P=4, T=1 s (CI smoke)")
    ap.add_argument("-P", "--processes", type=int, help="logging processes (default 64)")
    ap.add_argument("-T", "--seconds", type=float, help="logging time at the nominal rate (default 10)")
    ap.add_argument("--hz", type=float, default=1000.0, help="log calls per second per process")
    ap.add_argument("--metrics", type=int, default=10)
    ap.add_argument("--aggregator", default="process", choices=("process", "thread"))
    C.add_settings_args(ap)
    args = ap.parse_args()
    settings = C.parse_settings(args.set)
    P = args.processes or (4 if args.quick else 64)
    T = args.seconds or (1.0 if args.quick else 10.0)
    steps = round(T * args.hz)
    M = args.metrics

    C.header(f"bench_end_to_end: {P} processes x {M} metrics at {args.hz:g} Hz for {T:g} s, one run")
    if settings:
        print(f"   settings: {settings}")
    with C.TempRoot("simvue-bench-e2e-", keep=args.keep) as tmp:
        C.isolate_this_process(tmp)
        from simvue_hpc import Simvue
        from simvue_hpc.store import default_root, load_run

        RUN = run = Simvue(
            reductions={f"m{j}": ["mean", "count"] for j in range(M)}, aggregator=args.aggregator, **settings
        )
        run.init(name="bench-end-to-end", folder="/bench", metadata={"P": P, "T": T, "hz": args.hz})
        agg_pid = find_aggregator(os.getpid(), args.aggregator)
        sampler = Sampler(agg_pid)
        sampler.start()
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        t0 = time.monotonic() + 1.0 + 0.03 * P  # time for every child to fork and attach
        procs = [ctx.Process(target=child, args=(i, t0, steps, args.hz, M, q)) for i in range(P)]
        for p in procs:
            p.start()
        delay = t0 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            print(f"   WARNING: the children started {-delay:.2f} s after t0")
        sampler.reset()
        results = [q.get(timeout=T * 20 + 120) for _ in procs]
        for p in procs:
            p.join(60)
        t_children = time.monotonic()
        cpu_children = sampler.cpu_last - sampler.cpu_start
        wall_children = sampler.t_last - sampler.t_start
        tc = time.monotonic()
        acknowledged = run.close()
        close_s = time.monotonic() - tc
        time.sleep(0.3)
        sampler.stop_event.set()
        sampler.join(5)
        cpu_total = sampler.cpu_last - sampler.cpu_start
        wall_total = sampler.t_last - sampler.t_start
        exitcodes = [p.exitcode for p in procs]
        view = load_run(default_root() / str(run.id))

    import numpy as np

    logged_calls = sum(r["steps"] for r in results)
    logged = logged_calls * M
    sent = sum(r["sent_points"] for r in results)
    dropped = sum(r["dropped_points"] for r in results)
    end = view.end or {}
    counters = end.get("counters", {})
    rank_recs = [v for k, v in view.ranks.items() if k != 0]
    rank_sent = sum(int(v.get("sent_points", 0) or 0) for v in rank_recs)
    rank_recv = sum(int(v.get("received_points", 0) or 0) for v in rank_recs)
    # stored: the count companions
    expected_per_step = P
    count_total = 0
    bad_steps = 0
    late_points_stored = 0
    missing_metrics = []
    for j in range(M):
        series = view.metrics.get(f"m{j}.count")
        if series is None:
            missing_metrics.append(f"m{j}")
            continue
        late_points_stored += series.late
        count_total += int(series.value.sum())
        per_step = np.bincount(series.step, weights=series.value, minlength=steps)
        bad_steps += int(np.count_nonzero(per_step[:steps] != expected_per_step))
        bad_steps += int(np.count_nonzero(per_step[steps:]))
    rates = [r["steps"] / max(1e-9, r["t_last"] - t0) for r in results]
    lags = [r["max_lag"] for r in results]
    print()
    C.table(
        [
            ["points logged (children: calls x metrics)", f"{logged}"],
            ["points sent (children's workers)", f"{sent}"],
            ["points dropped at the children (buffer full)", f"{dropped}"],
            ["RANK records: sent / received", f"{rank_sent} / {rank_recv}"],
            ["END counters: points_received", f"{counters.get('points_received')}"],
            ["END counters: late_points / dropped_points / messages_lost",
             f"{counters.get('late_points')} / {counters.get('dropped_points')} / {counters.get('messages_lost')}"],
            ["stored: sum of <metric>.count over all steps", f"{count_total}"],
            ["stored: (metric, step) whose counts do not sum to P", f"{bad_steps}"],
            ["stored: values from records flagged late", f"{late_points_stored}"],
            ["run status / parent close acknowledged", f"{view.status} / {acknowledged}"],
        ],
        ["check", "value"],
    )  # fmt: skip
    if missing_metrics:
        print(f"   WARNING: no count companion stored for {missing_metrics}")
    ok = (
        logged == sent == rank_sent == rank_recv == counters.get("points_received") == count_total
        and bad_steps == 0 and dropped == 0 and view.status == "completed" and all(e == 0 for e in exitcodes)
    )  # fmt: skip
    print(f"   every point accounted for: {'YES' if ok else 'NO'}")
    print()
    agg_label = "aggregator process" if args.aggregator == "process" else "parent process (hosts the aggregator thread)"
    C.table(
        [
            ["achieved rate per process (median, min)", f"{C.median(rates):.0f} Hz, {min(rates):.0f} Hz"],
            ["worst lag behind the deadline (median, max over processes)", f"{C.median(lags) * 1e3:.1f} ms, "
             f"{max(lags) * 1e3:.1f} ms"],
            ["total logging rate", f"{C.fmt_rate(logged / max(1e-9, max(r['t_last'] for r in results) - t0))} points"],
            ["children's close() (median, max)", f"{C.median(r['close_s'] for r in results) * 1e3:.0f} ms, "
             f"{max(r['close_s'] for r in results) * 1e3:.0f} ms"],
            ["parent's close() after the children", f"{close_s * 1e3:.0f} ms"],
            [f"{agg_label}: CPU while the children ran", f"{100 * cpu_children / max(1e-9, wall_children):.1f} % "
             f"of one core ({cpu_children:.2f} s over {wall_children:.2f} s)"],
            [f"{agg_label}: CPU until it exited", f"{100 * cpu_total / max(1e-9, wall_total):.1f} % "
             f"({cpu_total:.2f} s over {wall_total:.2f} s)"],
            [f"{agg_label}: CPU per million points", f"{cpu_total / max(1, logged) * 1e6:.2f} s"],
            [f"{agg_label}: peak RSS (VmHWM)", f"{sampler.hwm / 2**20:.1f} MiB"],
        ],
        ["measure", "value"],
    )  # fmt: skip
    if args.quick:
        print("   (--quick: sizes too small for these figures to mean much)")
    _ = t_children
    C.emit_json({
        "bench": "end_to_end", "P": P, "T": T, "aggregator": args.aggregator, "logged": logged, "sent": sent,
        "received": counters.get("points_received"), "stored_count_sum": count_total, "bad_steps": bad_steps,
        "late": counters.get("late_points"), "dropped": dropped, "ok": ok,
        "rate_median_hz": C.median(rates), "agg_cpu_share": cpu_children / max(1e-9, wall_children),
        "agg_hwm_mib": sampler.hwm / 2**20,
    })  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
