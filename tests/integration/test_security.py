"""Hostile peers against a real run (loopback only): the traffic is encrypted, peers without the run's
credentials never reach the aggregator, a connection flood does not keep a late rank out, and fuzz
campaigns from unauthenticated and authenticated peers leave the aggregator alive, its memory bounded
and the honest ranks' data exact. Every hostile child process stops by itself."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from simvue_hpc import Simvue, transport
from tests.helpers import only_run, series, wait_until

REPO = Path(__file__).resolve().parents[2]
HOSTILE = [sys.executable, "-m", "tests.integration.hostile"]
MiB = 1 << 20

HONEST = textwrap.dedent(
    """
    import sys
    from simvue_hpc import Simvue
    tag, steps = sys.argv[1], int(sys.argv[2])
    with Simvue() as run:
        run.init()
        for step in range(steps):
            run.log({f"honest_{tag}": step * 0.25}, step=step)
    print("done", flush=True)
    """
)


@pytest.fixture
def honest_script(tmp_path: Path) -> Path:
    script = tmp_path / "honest.py"
    script.write_text(HONEST)
    return script


def _start_honest(script: Path, tag: str, steps: int, endpoint: str | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if endpoint is not None:
        env["SIMVUE_HPC_ENDPOINT"] = endpoint
    return subprocess.Popen([sys.executable, str(script), tag, str(steps)], env=env, stdout=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str], timeout: float = 120) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0 and out.strip() == "done", (proc.returncode, out)


def _assert_honest(store: Path, steps: dict[str, int], statuses: tuple[str, ...] = ("completed",)) -> None:
    view = only_run(store)
    assert view.status in statuses
    for tag, n in steps.items():
        assert series(view, f"honest_{tag}") == {s: s * 0.25 for s in range(n)}, tag


def _aggregator() -> psutil.Process:
    """This run's aggregator child (a dead one of an earlier test may linger as a zombie)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and "simvue_hpc.aggregator" in " ".join(proc.cmdline()):
                found.append(proc)
    (agg,) = found
    return agg


def _host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    return host, int(port)


@pytest.fixture
def host_run(store: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Simvue]:
    monkeypatch.setenv("SIMVUE_HPC_CLOSE_TIMEOUT", "5")  # ranks the attackers opened never say goodbye
    run = Simvue(transport="tcp")
    run.init(name="under-attack")
    try:
        yield run
    finally:
        run.close()


class Tap:
    """A TCP forwarder on loopback that records every byte between a rank and the aggregator."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.captured = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    self.captured += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()


def test_rank_traffic_is_encrypted_on_the_wire(host_run: Simvue, store: Path, honest_script: Path) -> None:
    secret = os.environ["SIMVUE_HPC_SECRET"]
    assert transport.rank_keys(secret) is not None
    tap = Tap(_host_port(os.environ["SIMVUE_HPC_ENDPOINT"]))
    try:
        _finish(_start_honest(honest_script, "tapped_metric_name", 500, f"tcp://127.0.0.1:{tap.port}"))
    finally:
        tap.close()
    host_run.close()
    captured = bytes(tap.captured)
    assert len(captured) > 1000  # the whole rank's conversation went through the tap
    token = secret.split(":")[0]
    for clear in (b"tapped_metric_name", token.encode(), b"secret", b"reductions", b"sent_points"):
        assert clear not in captured, clear
    _assert_honest(store, {"tapped_metric_name": 500})


def test_connection_flood_does_not_keep_a_late_rank_out(host_run: Simvue, store: Path, honest_script: Path) -> None:
    """20,000 connections that ask for CURVE and never authenticate; a rank that starts once they are
    open joins within its connect timeout and its data is exact."""
    host, port = _host_port(os.environ["SIMVUE_HPC_ENDPOINT"])
    floods = [
        subprocess.Popen(
            [*HOSTILE, "flood", host, str(port), "6667", "120"],
            cwd=REPO,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    try:
        opened = [int(f.stdout.readline().split()[1]) for f in floods if f.stdout is not None]
        started = time.monotonic()
        _finish(_start_honest(honest_script, "late", 300))
        joined_after = time.monotonic() - started
    finally:
        for f in floods:
            f.communicate(timeout=60)  # closing stdin ends the flood
    print(f"flood: {sum(opened)} connections open; the late rank finished {joined_after:.1f} s after they were")
    assert sum(opened) >= 19_000, opened
    assert _aggregator().is_running()
    host_run.close()
    _assert_honest(store, {"late": 300})


def _campaign(commands: list[list[str]]) -> int:
    """Run hostile children at once; the number of inputs they sent."""
    procs = [subprocess.Popen(c, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in commands]
    sent = 0
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-2000:]
            sent += int(out.split()[-1])
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    return sent


class PeakRSS:
    """Samples a process's resident memory in a thread; ``peak`` is the largest seen since start."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self.baseline = self.peak = int(proc.memory_info().rss)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, int(self.proc.memory_info().rss))

    def grown(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak - self.baseline


def _fuzz_beside_honest_ranks(
    agg: psutil.Process, honest_script: Path, campaign: list[list[str]], what: str, unit: str, settle: bool = False
) -> None:
    """Run the hostile ``campaign`` while two honest ranks log 20,000 steps each: at least 100,000 hostile
    sends, the aggregator alive and its RSS grown by at most 64 MiB. ``settle``: wait until the aggregator
    has worked through its backlog before measuring."""
    memory = PeakRSS(agg)
    honest = [_start_honest(honest_script, f"during{i}", 20_000) for i in range(2)]
    try:
        sent = _campaign(campaign)
        assert agg.is_running()
        for proc in honest:
            _finish(proc)
    finally:
        for proc in honest:
            proc.kill()
            proc.wait()
    if settle:
        wait_until(lambda: agg.cpu_percent(0.2) < 50, 60, what="the aggregator to work through the campaign")
    grown = memory.grown()
    print(f"{what}: {sent} hostile {unit}, aggregator RSS grew {grown / MiB:.1f} MiB")
    assert sent >= 100_000 and agg.is_running()
    assert grown <= 64 * MiB


def test_fuzz_from_unauthenticated_peers(host_run: Simvue, store: Path, honest_script: Path) -> None:
    host, port = _host_port(os.environ["SIMVUE_HPC_ENDPOINT"])
    agg = _aggregator()
    _finish(_start_honest(honest_script, "before", 200))  # the aggregator has seen a rank come and go
    campaign = [[*HOSTILE, "raw", host, str(port), "26000", str(seed)] for seed in range(4)]
    _fuzz_beside_honest_ranks(agg, honest_script, campaign, "unauthenticated fuzz", "connections")
    host_run.close()
    _assert_honest(store, {"before": 200, "during0": 20_000, "during1": 20_000})


def test_fuzz_from_authenticated_peers(host_run: Simvue, store: Path, honest_script: Path) -> None:
    endpoint, secret = os.environ["SIMVUE_HPC_ENDPOINT"], os.environ["SIMVUE_HPC_SECRET"]
    agg = _aggregator()
    _finish(_start_honest(honest_script, "before", 200))
    campaign = [[*HOSTILE, "authenticated", endpoint, secret, "50000", str(seed)] for seed in range(2)]
    _fuzz_beside_honest_ranks(agg, honest_script, campaign, "authenticated fuzz", "messages", settle=True)
    host_run.close()
    # A peer holding the credentials is a rank of the run: a STATUS "failed" from it may fail the run (as a
    # rank's own failure should); any other status string is refused, and the honest ranks' data is exact.
    _assert_honest(store, {"before": 200, "during0": 20_000, "during1": 20_000}, ("completed", "failed"))


def test_ipc_socket_file_is_removed_when_the_aggregator_was_killed(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIMVUE_HPC_CLOSE_TIMEOUT", "2")
    run = Simvue(transport="ipc")
    run.init(name="killed-aggregator")
    path = Path(os.environ["SIMVUE_HPC_ENDPOINT"].removeprefix("ipc://"))
    assert path.exists() and (path.stat().st_mode & 0o777) == 0o600
    agg = _aggregator()
    agg.kill()
    agg.wait(30)
    assert path.exists()  # a killed process removes nothing itself
    with contextlib.suppress(Exception):  # the close reports the lost aggregator; not what this test is about
        run.close()
    assert not path.exists()
