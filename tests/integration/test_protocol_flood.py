"""A peer that sends thousands of bad messages: the aggregator answers, counts them and keeps serving the
honest rank, and the job's log gets a line per peer and minute, not one per message."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import zmq

from simvue_hpc.aggregator.hosts import ThreadHost
from simvue_hpc.aggregator.loop import AggregatorSpec
from simvue_hpc.protocol import Goodbye, GoodbyeAck, Hello, MetricBatch, Welcome, decode, encode
from simvue_hpc.store import load_run, new_run_id
from tests.helpers import wait_until

SECRET = "flood-secret"


def test_bad_messages_are_counted_and_reported_once(tmp_path: object, caplog: pytest.LogCaptureFixture) -> None:
    run_id = new_run_id()
    root = str(tmp_path)
    spec = AggregatorSpec(
        run_id=run_id, run_name="flood", secret=SECRET, root=root, run={"id": run_id, "name": "flood"},
        expected_ranks=1, host_rank=0,
    )  # fmt: skip
    caplog.set_level(logging.WARNING, logger="simvue_hpc")
    host = ThreadHost(spec, "ipc")
    ctx = zmq.Context()
    rank, attacker = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    try:
        for sock in (rank, attacker):
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(host.endpoint)
        rank.send_multipart(encode(Hello(SECRET, 0, 1, "node0", os.getpid(), "test"), 0))
        assert rank.poll(10_000) and isinstance(decode(rank.recv_multipart())[1], Welcome)
        bad = 5_000
        for k in range(bad):
            attacker.send_multipart([b"SV\x01\x04" + k.to_bytes(4, "little"), b"\xc1 not msgpack"])
        answered = 0
        while answered < bad and attacker.poll(10_000):  # every bad message is answered with a REJECT
            attacker.recv_multipart()
            answered += 1
        assert answered == bad
        n = 100
        batch = MetricBatch(
            ["x"], np.zeros(n, np.uint32), np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64), np.ones(n)
        )
        rank.send_multipart(encode(batch, 1))
        rank.send_multipart(encode(Goodbye(n, 0), 2))
        assert rank.poll(10_000) and decode(rank.recv_multipart())[1] == GoodbyeAck(n)
        assert host.wait(30) == "completed"
    finally:
        rank.close(0)
        attacker.close(0)
        ctx.term()
    wait_until(lambda: not host.alive(), 10)
    view = load_run(os.path.join(root, run_id))
    assert view.end is not None and view.end["counters"]["protocol_errors"] == bad
    assert len(view.metrics["x"].value) == n
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING and "undecodable" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records][:5]
