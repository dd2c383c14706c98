"""A full disk under the store: the aggregator does not die; the run stops accepting data, every rank is
told (``Notice("stopped", "disk full")``), and the run ends ``failed``.

Runs on a real 3 MiB tmpfs (mounting needs root; without it the test is skipped with the reason)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import zmq

from simvue_hpc.aggregator.hosts import ThreadHost
from simvue_hpc.aggregator.loop import AggregatorSpec
from simvue_hpc.protocol import Goodbye, GoodbyeAck, Hello, MetricBatch, Notice, Welcome, decode, encode
from simvue_hpc.store import new_run_id

SECRET = "disk-full-secret"
NAMES = [f"metric_{i:02d}" for i in range(50)]


def test_a_full_disk_stops_the_run_and_tells_the_ranks(small_fs: Path) -> None:
    run_id = new_run_id()
    spec = AggregatorSpec(
        run_id=run_id, run_name="full", secret=SECRET, root=str(small_fs), run={"id": run_id, "name": "full"},
        expected_ranks=1, host_rank=0,
    )  # fmt: skip
    host = ThreadHost(spec, "ipc")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(host.endpoint)
        seq = 0

        def send(msg: object) -> None:
            nonlocal seq
            sock.send_multipart(encode(msg, seq))  # type: ignore[arg-type]
            seq += 1

        def receive(timeout_ms: int) -> object | None:
            if not sock.poll(timeout_ms):
                return None
            return decode(sock.recv_multipart())[1]

        send(Hello(SECRET, 0, 1, "node0", os.getpid(), "test"))
        assert isinstance(receive(10_000), Welcome)
        rng = np.random.default_rng(0)
        notice = None
        sent = 0
        for step in range(400):  # about 40 MB of incompressible values for 3 MiB of disk
            n = 2000
            send(
                MetricBatch(
                    NAMES,
                    (np.arange(n) % len(NAMES)).astype(np.uint32),
                    np.full(n, step, np.int64),
                    np.full(n, 1_700_000_000_000_000_000 + step, np.int64),
                    rng.random(n),
                )
            )
            sent += n
            notice = receive(20 if step % 10 else 200)
            if notice is not None:
                break
        assert notice == Notice("stopped", "disk full"), notice
        send(Goodbye(sent, 0))
        ack = receive(10_000)
        while isinstance(ack, Notice):
            ack = receive(10_000)
        assert isinstance(ack, GoodbyeAck)
        assert host.wait(30) == "failed"
        assert host.alive() is False
    finally:
        sock.close(0)
        ctx.term()
