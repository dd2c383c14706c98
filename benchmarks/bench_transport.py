"""What CURVE encryption and the aggregator's socket limits cost: throughput of one rank's DEALER into
the aggregator's ROUTER over loopback tcp, plaintext against CURVE, at two message sizes.

Variants (each ``--messages`` messages from one DEALER, the ROUTER receiving in the same process on
another thread, both built by ``simvue_hpc.transport`` with its default limits)::

    null   a secret without keys: plaintext ZMTP
    curve  ``transport.new_credentials()``: CurveZMQ with the ZAP handler admitting the ranks' key

Also printed: how long a connection that never finishes its handshake holds a file descriptor at
the aggregator (``handshake_timeout``, measured with a raw socket and a 1 s setting).

Usage::

    python benchmarks/bench_transport.py            # 200k small and 2k large messages x 3 reps
    python benchmarks/bench_transport.py --quick    # CI smoke: about a second
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from simvue_hpc import transport

os.environ.setdefault("SIMVUE_HPC_HOST", "127.0.0.1")  # loopback only


def _throughput(curve: bool, size: int, messages: int) -> float:
    """Messages per second from one DEALER into the ROUTER."""
    ctx = transport.context()
    secret, server_key = transport.new_credentials() if curve else ("plain", "")
    router, endpoint = transport.bind_router(ctx, "tcp", uuid.uuid4().hex, secret=secret, server_key=server_key)
    dealer = transport.connect_dealer(ctx, endpoint, sndhwm=64, secret=secret if curve else "")
    payload = os.urandom(size)
    done = threading.Event()

    def receive() -> None:
        got = 0
        poller = transport.poller((router, transport.POLLIN))
        while got < messages:
            poller.poll(1000)
            while transport.recv(router) is not None:
                got += 1
        done.set()

    try:
        transport.send(dealer, [b"warm-up"], block=True)
        while transport.recv(router) is None:
            time.sleep(0.001)
        receiver = threading.Thread(target=receive)
        start = time.perf_counter()
        receiver.start()
        for _ in range(messages):
            transport.send(dealer, [payload], block=True)
        done.wait(120)
        elapsed = time.perf_counter() - start
        receiver.join()
    finally:
        transport.close(dealer)
        transport.close(router)
        ctx.term()
    return messages / elapsed


def _handshake_hold() -> float:
    """Seconds until the aggregator drops a peer that never finishes its handshake (setting: 1 s)."""
    ctx = transport.context()
    secret, key = transport.new_credentials()
    limits = transport.Limits(handshake_timeout=1.0)
    router, endpoint = transport.bind_router(ctx, "tcp", uuid.uuid4().hex, secret=secret, server_key=key, limits=limits)
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    try:
        idle = socket.create_connection((host, int(port)), timeout=30)
        start = time.perf_counter()
        while idle.recv(4096):
            pass
        held = time.perf_counter() - start
        idle.close()
    finally:
        transport.close(router)
        ctx.term()
    return held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a CI smoke run")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    cases: list[tuple[str, int, int]] = [("1 KiB", 1024, 200_000), ("1 MiB", 1 << 20, 2_000)]
    reps = args.reps
    if args.quick:
        cases, reps = [("1 KiB", 1024, 5_000), ("1 MiB", 1 << 20, 50)], 1
    print(f"{'message':>8} {'mode':>6} {'msg/s':>12} {'MB/s':>9}")
    rates: dict[tuple[str, str], Any] = {}
    for label, size, n in cases:
        for mode in ("null", "curve"):
            rate = statistics.median(_throughput(mode == "curve", size, n) for _ in range(reps))
            rates[label, mode] = rate
            print(f"{label:>8} {mode:>6} {rate:12,.0f} {rate * size / 1e6:9.1f}")
    for label, _, _ in cases:
        print(f"CURVE costs {1 - rates[label, 'curve'] / rates[label, 'null']:.0%} of plaintext throughput at {label}")
    print(f"a peer that never finishes its handshake is dropped after {_handshake_hold():.2f} s (setting 1 s)")


if __name__ == "__main__":
    main()
