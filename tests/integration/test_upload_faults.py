"""An uploader that cannot stall or duplicate, against the loopback test server and its faults.

Runs are written into the store by hand (a RunWriter, as the aggregator writes them) so that each test
controls exactly what the store holds: a run without END, a definition the server refuses, the same
alert once per rank. Every test bounds its own duration (pytest-timeout), so a stalled sync fails
instead of hanging.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from simvue_hpc import Simvue
from simvue_hpc.cli import main as cli
from simvue_hpc.config import ServerSettings
from simvue_hpc.errors import RunAborted, ServerError
from simvue_hpc.server import SimvueClient
from simvue_hpc.store import RecordType, RunWriter, new_run_id
from simvue_hpc.upload import Uploader
from tests.helpers import wait_until

pytest_plugins = ["tests.server.fixtures"]
pytestmark = pytest.mark.timeout(180)

T0 = 1_700_000_000_000_000  # microseconds
ALERT = {
    "name": "too-hot",
    "source": "metrics",
    "notification": "none",
    "enabled": True,
    "abort": False,
    "description": None,
    "alert": {
        "rule": "is above",
        "metric": "x",
        "threshold": 1e9,
        "frequency": 1,
        "window": 1,
        "aggregation": "average",
    },
}


@pytest.fixture
def server(simvue_online: Any) -> Any:
    return simvue_online


@pytest.fixture(autouse=True)
def token_never_logged(simvue_online: Any, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever goes wrong in these tests, no log line quotes the token."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        assert simvue_online.token not in record.getMessage(), f"token logged by {record.name}"


def hand_run(
    store: Path,
    name: str,
    *,
    steps: int = 50,
    events: int = 5,
    end: str | None = "completed",
    status: dict[str, Any] | None = None,
    alerts: list[dict[str, Any]] = (),  # type: ignore[assignment]
    metric: str = "x",
    file: bytes | None = None,
    ranks: int = 1,
) -> Path:
    """A run as its aggregator writes it; ``end=None`` leaves it without END (its aggregator died)."""
    run_id = new_run_id()
    with RunWriter.create(store, run_id) as writer:
        job = {"ranks": ranks, "launcher": "none"}
        writer.append(RecordType.RUN, {"id": run_id, "name": name, "folder": "/f", "created_us": T0, "job": job})
        writer.append(RecordType.STATUS, {"status": "running", "time_us": T0})
        for definition in alerts:
            writer.append(RecordType.ALERT, definition)
        if file is not None:
            sha = hashlib.sha256(file).hexdigest()
            (writer.files_dir / sha).write_bytes(file)
            payload = {"name": "out.bin", "category": "output", "sha256": sha, "size": len(file), "time_us": T0}
            writer.append(RecordType.FILE, payload)
        for lo in range(0, steps, 10):
            n = min(10, steps - lo)
            s = list(range(lo, lo + n))
            writer.append_metrics([metric], [0] * n, s, [T0 + 1000 * i for i in s], [float(i) for i in s])
        for i in range(events):
            writer.append(RecordType.EVENT, {"message": f"event {i}", "time_us": T0 + i, "rank": None, "level": "info"})
        if status is not None:
            writer.append(RecordType.STATUS, status)
        if end is not None:
            writer.append(RecordType.END, {"status": end, "time_us": T0 + 10**6})
    return store / run_id


def server_runs(server: Any) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in server.db.runs()}


def points(server: Any, run_id: str) -> Counter[tuple[str, int]]:
    return Counter((row["name"], row["step"]) for row in server.db.metrics(run_id))


def assert_exactly_once(server: Any, run_id: str, steps: int, events: int, metric: str = "x") -> None:
    got = points(server, run_id)
    assert got == Counter({(metric, s): 1 for s in range(steps)}), "every point exactly once"
    messages = Counter(e["message"] for e in server.db.events(run_id) if e["message"].startswith("event "))
    assert messages == Counter({f"event {i}": 1 for i in range(events)}), "every event exactly once"


# --- a run without END -------------------------------------------------------------------------------


def test_sync_of_a_run_without_end_uploads_it_marks_it_lost_and_goes_on(
    server: Any, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hand_run(store, "died", end=None)
    hand_run(store, "fine")
    assert cli(["sync", "--quiet"]) == 0
    out = capsys.readouterr().out
    runs = server_runs(server)
    assert runs["died"]["status"] == "lost" and runs["fine"]["status"] == "completed"
    assert runs["died"]["metadata"]["simvue_hpc"]["end_reason"] == "the run stopped without closing"
    for name in ("died", "fine"):
        assert_exactly_once(server, runs[name]["id"], 50, 5)
    assert "no end: marked lost" in out


def test_sync_of_a_run_without_end_keeps_the_known_failure(server: Any, store: Path) -> None:
    hand_run(store, "disk", end=None, status={"status": "failed", "time_us": T0 + 5, "reason": "disk full"})
    assert cli(["sync", "--quiet"]) == 0
    doc = server_runs(server)["disk"]
    assert doc["status"] == "failed" and doc["metadata"]["simvue_hpc"]["end_reason"] == "disk full"
    assert_exactly_once(server, doc["id"], 50, 5)


# --- dead letters --------------------------------------------------------------------------------------


def test_a_refused_alert_is_a_dead_letter_and_everything_else_goes_up(
    server: Any, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = {**ALERT, "name": "half", "alert": {**ALERT["alert"], "frequency": 0.5}}  # the server wants an integer
    hand_run(store, "refused", alerts=[bad])
    assert cli(["sync", "--quiet"]) == 0
    out = capsys.readouterr().out
    doc = server_runs(server)["refused"]
    assert doc["status"] == "completed"
    assert_exactly_once(server, doc["id"], 50, 5)
    dead = [e for e in server.db.events(doc["id"]) if "refused" in e["message"]]
    assert len(dead) == 1 and "half" in dead[0]["message"] and dead[0]["log_level"] == "error"
    assert "not uploaded (refused by the server)" in out and "frequency" in out
    assert len(server.requests_log("/alerts", "POST")) == 1, "a 422 is not retried"
    assert cli(["sync", "--quiet"]) == 0, "and a second sync does not try again"
    assert len(server.requests_log("/alerts", "POST")) == 1


def test_a_refused_metric_point_is_a_dead_letter_and_the_others_go_up(server: Any, store: Path) -> None:
    hand_run(store, "badname", metric="bad*name", steps=3, events=0)
    hand_run(store, "after")
    assert cli(["sync", "--quiet"]) == 0
    runs = server_runs(server)
    assert runs["badname"]["status"] == "completed" and runs["after"]["status"] == "completed"
    dead = [e for e in server.db.events(runs["badname"]["id"]) if "refused" in e["message"]]
    assert len(dead) == 3, "each refused point is found and reported once"
    assert_exactly_once(server, runs["after"]["id"], 50, 5)


# --- the retry budget ---------------------------------------------------------------------------------


def test_a_server_down_costs_at_most_the_retry_budget_then_exit_75(
    server: Any, store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hand_run(store, "one")
    hand_run(store, "two")
    monkeypatch.setenv("SIMVUE_RETRY_ATTEMPTS", "3")
    monkeypatch.setenv("SIMVUE_RETRY_BUDGET", "2")
    server.faults.fail_for(120, path="/runs")
    assert cli(["sync", "--quiet"]) == 75
    err = capsys.readouterr().err
    assert "unavailable" in err and "not tried" in err
    # the first run's create (503: outcome unknown), then its look-ups; the second run is not tried
    assert len(server.requests_log("/runs", "POST")) == 1
    assert len(server.requests_log("/runs", "GET")) <= 3
    assert server.db.runs() == []
    server.faults.clear()
    assert cli(["sync", "--quiet"]) == 0
    assert set(server_runs(server)) == {"one", "two"}


# --- exactly once against lost answers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "method"),
    [("/runs", "POST"), ("/metrics", "POST"), ("/events", "POST"), ("/artifacts", "POST"), ("/alerts", "POST")],
)
def test_a_lost_answer_duplicates_nothing(server: Any, store: Path, path: str, method: str) -> None:
    hand_run(store, "once", alerts=[ALERT], file=b"bytes" * 100, steps=30_000, events=40)
    server.faults.drop(1, after_processing=True, path=path, method=method)
    assert cli(["sync", "--quiet"]) == 0
    assert any(r.status is None for r in server.requests_log(path, method)), "the fault struck"
    (doc,) = server.db.runs()
    assert doc["status"] == "completed"
    assert_exactly_once(server, doc["id"], 30_000, 40)
    assert len(server.db.artifacts(doc["id"])) == 1 and len(server.db.alerts()) == 1
    assert doc["alerts"] == [server.db.alerts()[0]["id"]]


def test_every_kind_of_lost_answer_at_once(server: Any, store: Path) -> None:
    hand_run(store, "all", alerts=[ALERT], file=b"z" * 4096, steps=40_000, events=30)
    for path in ("/runs", "/metrics", "/events", "/artifacts", "/alerts", "/storage"):
        server.faults.drop(1, after_processing=True, path=path)
    server.faults.drop(1, after_processing=True, path="/metrics")  # a second batch too
    assert cli(["sync", "--quiet"]) == 0
    (doc,) = server.db.runs()
    assert_exactly_once(server, doc["id"], 40_000, 30)
    assert [a["content"] for a in server.db.artifacts(doc["id"])] == [b"z" * 4096]


def test_a_crash_between_a_post_and_its_answer_is_reconciled_on_resume(server: Any, store: Path) -> None:
    run_dir = hand_run(store, "crash", steps=100, events=3)
    settings = ServerSettings.load()
    with SimvueClient(settings) as client:
        first = Uploader(run_dir, client, settings)
        server.faults.drop(1, after_processing=True, path="/metrics")
        with pytest.raises(Exception, match="may or may not"):
            for _ in range(10):
                first.poll()
        del first  # the uploader "crashes" with the batch's fate unknown
        second = Uploader(run_dir, client, settings)
        deadline = time.monotonic() + 60
        while not second.poll() and time.monotonic() < deadline:
            time.sleep(0.05)
    (doc,) = server.db.runs()
    assert doc["status"] == "completed"
    assert_exactly_once(server, doc["id"], 100, 3)


def test_a_live_run_whose_answers_are_lost_is_uploaded_once(server: Any, store: Path) -> None:
    for path in ("/runs", "/metrics", "/events"):
        server.faults.drop(1, after_processing=True, path=path, method="POST")
    with Simvue() as run:
        run.init(name="live-once")
        for step in range(2000):
            run.log({"x": float(step)}, step=step)
        for i in range(5):
            run.event(f"event {i}")
    assert run.uploaded is True
    (doc,) = server.db.runs()
    assert doc["status"] == "completed"
    got = points(server, doc["id"])
    assert {k: v for k, v in got.items() if k[0] == "x"} == {("x", s): 1 for s in range(2000)}
    messages = Counter(e["message"] for e in server.db.events(doc["id"]))
    assert all(messages[m] == 1 for m in messages if m.endswith(tuple(f"event {i}" for i in range(5))))


# --- alerts once per run, abort flag every few seconds ------------------------------------------------


def test_an_alert_stored_once_per_rank_is_registered_once(server: Any, store: Path) -> None:
    changed = {**ALERT, "alert": {**ALERT["alert"], "threshold": 5.0}}
    hand_run(store, "ranks", alerts=[ALERT, ALERT, ALERT, ALERT, changed], ranks=4)
    assert cli(["sync", "--quiet"]) == 0
    assert len(server.requests_log("/alerts", "POST")) == 1
    doc = server_runs(server)["ranks"]
    assert len(doc["alerts"]) == 1
    dead = [e["message"] for e in server.db.events(doc["id"]) if "refused" in e["message"]]
    assert len(dead) == 1 and "defined again differently" in dead[0]


def test_the_abort_flag_is_read_every_abort_interval_and_the_heartbeat_every_minute(server: Any, store: Path) -> None:
    run_dir = hand_run(store, "abortable", end=None, steps=0, events=0)
    settings = ServerSettings.load()
    settings = ServerSettings.from_dict({**settings.to_dict(), "heartbeat_interval": 60.0})
    now = [0.0]
    with SimvueClient(settings) as client:
        uploader = Uploader(run_dir, client, settings, live=True, clock=lambda: now[0])
        for second in range(0, 21):
            now[0] = float(second)
            uploader.poll()
            if second == 12:
                server.set_abort(uploader.state.run_id)
        assert uploader.abort_requested is True
    aborts = [r for r in server.requests_log("/runs", "GET") if r.path.endswith("/abort")]
    assert len(aborts) == 5, "at 0, 5, 10, 15 and 20 s (SIMVUE_ABORT_INTERVAL defaults to 5)"
    assert len(server.db.heartbeats(uploader.state.run_id)) == 1


# --- ints stay ints ------------------------------------------------------------------------------------


def _sent_values(server: Any) -> list[Any]:
    return [
        v for r in server.requests_log("/metrics", "POST") for m in r.decoded()["metrics"] for v in m["values"].values()
    ]


def test_whole_values_of_a_single_rank_run_are_uploaded_as_ints(server: Any, store: Path) -> None:
    hand_run(store, "ints", steps=30, events=0)  # values 0.0 .. 29.0 as the store keeps them (float64)
    assert cli(["sync", "--quiet"]) == 0
    values = _sent_values(server)
    assert values == list(range(30)) and all(type(v) is int for v in values)


def test_a_metric_with_a_fraction_is_sent_as_floats_from_then_on_and_reductions_stay_floats(
    server: Any, store: Path
) -> None:
    run_id = new_run_id()
    with RunWriter.create(store, run_id) as writer:
        writer.append(
            RecordType.RUN, {"id": run_id, "name": "mixed", "folder": "/", "created_us": T0, "job": {"ranks": 1}}
        )
        writer.append_metrics(["x"], [0, 0], [0, 1], [T0, T0 + 1], [1.0, 2.0])
        writer.append_metrics(["x"], [0, 0], [2, 3], [T0 + 2, T0 + 3], [2.5, 4.0])
        writer.append(RecordType.END, {"status": "completed", "time_us": T0 + 10})
    hand_run(store, "reduced", steps=10, events=0, ranks=4)
    assert cli(["sync", "--quiet"]) == 0
    runs = {r.decoded()["run"]: r.decoded()["metrics"] for r in server.requests_log("/metrics", "POST")}
    by_name = {server.db.run(run_id)["name"]: batches for run_id, batches in runs.items()}
    mixed = [m["values"]["x"] for m in by_name["mixed"]]
    assert mixed == [1, 2, 2.5, 4.0] and [type(v) for v in mixed] == [int, int, float, float]
    assert all(type(m["values"]["x"]) is float for m in by_name["reduced"])


def test_a_live_run_sees_the_servers_abort_flag_without_waiting_for_a_heartbeat(
    server: Any, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIMVUE_HEARTBEAT_INTERVAL", "60")  # the abort flag no longer rides on the heartbeat
    monkeypatch.setenv("SIMVUE_ABORT_INTERVAL", "0.5")
    run = Simvue()
    run.init(name="abort-me")
    try:
        wait_until(lambda: [r for r in server.requests_log("/runs", "GET") if r.path.endswith("/abort")], 30)
        server.set_abort(server.db.runs()[0]["id"])  # after the first read of the flag

        def aborted() -> bool:
            try:
                run.log({"x": 1.0})
            except RunAborted:
                return True
            return False

        wait_until(aborted, 20, interval=0.1, what="RunAborted from log() after the server's abort flag")
    finally:
        with contextlib.suppress(Exception):
            run.close()
    assert len(server.db.heartbeats(server.db.runs()[0]["id"])) <= 1


def test_progress_moves_through_the_run_across_the_three_streams(server: Any, store: Path) -> None:
    run_dir = hand_run(store, "progress", steps=60_000, events=30)
    settings = ServerSettings.load()
    now = [0.0]
    seen = []
    with SimvueClient(settings) as client:
        uploader = Uploader(run_dir, client, settings, clock=lambda: now[0])
        seen.append(uploader.progress())
        while not uploader.poll():
            now[0] += 1.1  # one metrics POST per second at most
            seen.append(uploader.progress())
        seen.append(uploader.progress())
    fractions = [done / total for done, total in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert len({round(f, 3) for f in fractions if 0.05 < f < 0.95}) >= 3, fractions


def test_two_concurrent_syncs_both_exit_0_and_upload_each_run_once(server: Any, store: Path) -> None:
    for i in range(3):
        hand_run(store, f"c{i}", steps=20_000, events=10)
    env = {**os.environ, "SIMVUE_OFFLINE_DIRECTORY": str(store)}
    command = [sys.executable, "-m", "simvue_hpc.cli", "sync", "--quiet"]
    syncs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    try:
        results = [p.communicate(timeout=150) for p in syncs]
    finally:
        for p in syncs:
            p.kill()
    assert [p.returncode for p in syncs] == [0, 0], results
    runs = server_runs(server)
    assert sorted(runs) == ["c0", "c1", "c2"] and len(server.db.runs()) == 3
    for doc in runs.values():
        assert doc["status"] == "completed"
        assert_exactly_once(server, doc["id"], 20_000, 10)


def test_a_run_deleted_on_the_server_stops_its_upload_with_a_clear_error(server: Any, store: Path) -> None:
    run_dir = hand_run(store, "deleted", steps=100, events=3)
    settings = ServerSettings.load()
    now = [0.0]
    with SimvueClient(settings) as client:
        uploader = Uploader(run_dir, client, settings, clock=lambda: now[0])
        uploader.poll()  # the run is created
        assert uploader.state.run_id is not None
        requests.delete(f"{server.api_url}/runs/{uploader.state.run_id}", headers=server.headers(), timeout=10)
        now[0] += 5
        with pytest.raises(ServerError, match="no longer exists on the server"):
            for _ in range(5):
                uploader.poll()
                now[0] += 5
    assert uploader.state.dead_letters == [], "not a dead letter: the whole upload stops"


@pytest.mark.parametrize("fault", ["stall", "truncate"])
@pytest.mark.parametrize("path", ["/runs", "/metrics", "/events"])
def test_an_answer_that_comes_too_late_or_half_duplicates_nothing(
    server: Any, store: Path, fault: str, path: str
) -> None:
    run_dir = hand_run(store, "late", steps=20_000, events=20)
    settings = ServerSettings.from_dict({**ServerSettings.load().to_dict(), "request_timeout": 0.5})
    if fault == "stall":
        server.faults.stall(2.0, path=path, method="POST")  # processed, answered after the client's timeout
    else:
        server.faults.truncate(1, path=path, method="POST")
    now = [0.0]
    with SimvueClient(settings) as client:
        uploader = Uploader(run_dir, client, settings, clock=lambda: now[0])
        for _ in range(60):
            try:
                if uploader.poll():
                    break
            except ServerError as exc:  # OutcomeUnknown: the next round reads back
                assert "may or may not" in str(exc)
            now[0] += 1.1
    assert uploader.state.done
    assert any(r.fault for r in server.requests_log(path, "POST")), "the fault struck"
    (doc,) = server.db.runs()
    assert_exactly_once(server, doc["id"], 20_000, 20)


MPI_SCRIPT = """
from simvue_hpc import Simvue
with Simvue() as run:
    run.init(name="mpi-alert")
    run.add_alert("too-high", "is above", "x", frequency=1, window=1, threshold=5.0)
    for step in range(5):
        run.log({"x": float(step)}, step=step)
    run.event("done")
"""


@pytest.mark.mpi
def test_under_mpi_the_alert_is_registered_once_and_events_name_their_rank(
    server: Any, store: Path, tmp_path: Path
) -> None:
    mpiexec = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert mpiexec, "mpiexec not found: install the mpi extra"
    script = tmp_path / "alert.py"
    script.write_text(MPI_SCRIPT)
    proc = subprocess.run(
        [mpiexec, "-n", "4", sys.executable, str(script)], capture_output=True, text=True, timeout=150, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert [r.status for r in server.requests_log("/alerts", "POST")] == [200]
    (doc,) = server.db.runs()
    assert doc["status"] == "completed" and len(doc["alerts"]) == 1
    events = sorted(e["message"] for e in server.db.events(doc["id"]))
    assert events == sorted(f"[rank {r} on {socket.gethostname()}] done" for r in range(4))
