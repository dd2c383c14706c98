"""A rank's Reporter against a scripted aggregator: a real ROUTER socket driven by the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from simvue_hpc import transport
from simvue_hpc.config import HPCSettings
from simvue_hpc.errors import AggregatorLost, ReporterDied, RunStopped
from simvue_hpc.procinfo import process_identity
from simvue_hpc.protocol import Goodbye, GoodbyeAck, Hello, Message, MetricBatch, Notice, Welcome, decode, encode
from simvue_hpc.reporter import Reporter
from tests.helpers import wait_until

SECRET = "s3cret"


class ScriptedAggregator:
    """A ROUTER the test answers by hand."""

    def __init__(self, tmp: Path) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"ipc://{tmp}/agg.sock"
        self.sock.bind(self.endpoint)
        self.identity = b""
        self.seq = 0

    def recv(self, timeout: float = 10.0) -> Message:
        if not self.sock.poll(int(timeout * 1000)):
            raise AssertionError(f"nothing from the rank within {timeout} s")
        identity, *frames = self.sock.recv_multipart()
        self.identity = identity
        return decode(frames)[1]

    def recv_until(self, kind: type[Message], timeout: float = 10.0) -> list[Message]:
        """Every message up to and including the first of ``kind``."""
        got: list[Message] = []
        deadline = time.monotonic() + timeout
        while not got or not isinstance(got[-1], kind):
            got.append(self.recv(max(0.01, deadline - time.monotonic())))
        return got

    def send(self, message: Message) -> None:
        self.sock.send_multipart([self.identity, *encode(message, self.seq)])
        self.seq += 1

    def accept(self, flush_interval: float = 0.0) -> Hello:
        hello = self.recv()
        assert isinstance(hello, Hello)
        self.send(Welcome(max(hello.rank, 0), "run-id", "run-name", flush_interval))
        return hello

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def agg(tmp_path: Path) -> Iterator[ScriptedAggregator]:
    scripted = ScriptedAggregator(tmp_path)
    yield scripted
    if not scripted.sock.closed:
        scripted.close()


def started(agg: ScriptedAggregator, flush_interval: float = 0.0, **settings: Any) -> tuple[Reporter, Hello]:
    options: dict[str, Any] = {"heartbeat_interval": 60.0, "system_metrics_interval": 60.0, "close_timeout": 30.0}
    options.update(settings)
    reporter = Reporter(agg.endpoint, SECRET, 0, 1, HPCSettings.load(options, environ={}))
    answer: list[Hello] = []
    side = threading.Thread(target=lambda: answer.append(agg.accept(flush_interval)))
    side.start()
    reporter.start()
    side.join(10)
    return reporter, answer[0]


def test_hello_says_which_process_this_is(agg: ScriptedAggregator) -> None:
    reporter, hello = started(agg)
    start_time, pid_ns = process_identity()
    assert hello.pid == os.getpid() and hello.start_time == start_time > 0
    assert hello.pid_ns == pid_ns == os.stat("/proc/self/ns/pid").st_ino
    with open("/proc/self/stat") as fh:  # field 22, counted after the command name's parenthesis
        assert int(fh.read().rsplit(")", 1)[1].split()[19]) == start_time
    reporter.close(timeout=0.1)


def test_welcome_flush_interval_is_obeyed(agg: ScriptedAggregator) -> None:
    interval = 0.3
    reporter, _ = started(agg, interval)
    t0 = time.time_ns()
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        reporter.log({"x": 1.0})
        time.sleep(0.005)
    t1 = time.time_ns()
    closer = _close_in_thread(reporter)
    batches = [m for m in agg.recv_until(Goodbye) if isinstance(m, MetricBatch)]
    agg.send(GoodbyeAck(0))
    closer.join(10)
    assert sum(len(b.value) for b in batches) == reporter.sent_points > 0
    # Never more often than told: at most one batch per interval over the time the rank logged
    # (plus the one the close flushes). A slow machine only makes the bound looser.
    assert len(batches) <= (t1 - t0) / 1e9 / interval + 2, len(batches)


def _close_in_thread(reporter: Reporter) -> threading.Thread:
    closer = threading.Thread(target=reporter.close)
    closer.start()
    return closer


def test_a_stopped_notice_raises_once_then_drops(agg: ScriptedAggregator) -> None:
    reporter, _ = started(agg)
    reporter.log({"x": 1.0})
    agg.send(Notice("stopped", "disk full"))
    wait_until(lambda: reporter.outbox.stopped is not None, 10, what="the notice to arrive")
    with pytest.raises(RunStopped, match="disk full"):
        reporter.log({"x": 2.0})
    assert reporter.log({"x": 3.0}) is False
    assert reporter.send(Notice("warning", "ignored")) is False
    closer = _close_in_thread(reporter)
    goodbye = agg.recv_until(Goodbye)[-1]
    assert isinstance(goodbye, Goodbye) and goodbye.dropped_points == 1
    agg.send(GoodbyeAck(1))
    closer.join(10)
    assert not closer.is_alive() and reporter.acknowledged


def test_a_vanished_aggregator_is_an_error_and_close_does_not_wait(
    agg: ScriptedAggregator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("simvue_hpc.reporter.RECONNECT_GRACE", 0.2)
    reporter, _ = started(agg, close_timeout=600.0)
    reporter.log({"x": 1.0})
    agg.recv()  # the batch
    agg.close()  # the aggregator process is gone: its end of the connection closes
    wait_until(lambda: reporter.outbox.stopped is not None, 20, what="the rank to notice")
    with pytest.raises(AggregatorLost, match=r"connection to the aggregator .* was lost"):
        reporter.log({"x": 2.0})
    assert reporter.log({"x": 3.0}) is False
    closer = _close_in_thread(reporter)
    closer.join(20)  # close_timeout is 600 s: returning at all shows it did not wait for an answer
    assert not closer.is_alive() and not reporter.acknowledged


def test_a_failure_in_the_io_thread_reaches_the_caller(
    agg: ScriptedAggregator, monkeypatch: pytest.MonkeyPatch
) -> None:
    reporter, _ = started(agg)
    broken = RuntimeError("encoder broke")
    real = transport.send

    def failing(sock: Any, frames: Any, block: bool = False) -> bool:
        if len(frames) > 2:  # a METRICS message (header, body, payload frames)
            raise broken
        return real(sock, frames, block)

    monkeypatch.setattr("simvue_hpc.reporter.transport.send", failing)
    reporter.log({"x": 1.0})
    wait_until(lambda: reporter.outbox.stopped is not None, 10, what="the thread to fail")
    with pytest.raises(ReporterDied, match="encoder broke") as info:
        reporter.log({"x": 2.0})
    assert info.value.__cause__ is broken
    assert reporter.log({"x": 3.0}) is False
    closer = _close_in_thread(reporter)
    closer.join(20)
    assert not closer.is_alive()


JOINING = textwrap.dedent(
    """
    import sys, time
    import simvue_hpc.reporter as reporter_module

    real = reporter_module.Reporter._await_welcome

    def slow(self):
        sys.stdout.write("hello sent\\n")
        sys.stdout.flush()
        return real(self)

    reporter_module.Reporter._await_welcome = slow
    import simvue_hpc
    run = simvue_hpc.attach()
    run.log({"never": 1.0})
    time.sleep(60)
    """
)


def test_sigterm_while_joining_still_says_goodbye(agg: ScriptedAggregator, tmp_path: Path) -> None:
    """A pool's terminate() can reach a worker before its WELCOME: the worker must leave the run
    cleanly, not vanish after its HELLO (the aggregator would wait for it until it times out)."""
    env = {
        **os.environ,
        "SIMVUE_HPC_ENDPOINT": agg.endpoint,
        "SIMVUE_HPC_SECRET": SECRET,
        "SIMVUE_HPC_RUN_ID": "run-id",
        "SIMVUE_OFFLINE_DIRECTORY": str(tmp_path / "store"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    child = subprocess.Popen([sys.executable, "-c", JOINING], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "hello sent\n"
        hello = agg.recv()
        assert isinstance(hello, Hello) and hello.pid == child.pid
        child.send_signal(signal.SIGTERM)
        time.sleep(0.2)  # the signal is there before the WELCOME (no harm if not: the goodbye follows anyway)
        agg.send(Welcome(1, "run-id", "run-name"))
        goodbye = agg.recv_until(Goodbye, timeout=30)[-1]
        assert isinstance(goodbye, Goodbye)
        agg.send(GoodbyeAck(0))
        assert child.wait(30) != 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
