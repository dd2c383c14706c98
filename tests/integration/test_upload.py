"""Uploading to a Simvue-compatible server on loopback: live, after an outage, and by `simvue-hpc sync`."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from simvue_hpc import Simvue
from simvue_hpc.cli import main as cli
from simvue_hpc.config import ServerSettings
from simvue_hpc.server import SimvueClient
from simvue_hpc.store import RecordType, RunWriter, new_run_id
from simvue_hpc.upload import Uploader, upload_lock
from tests.helpers import expected, fork_pool_run, only_run, series, wait_until

pytest_plugins = ["tests.server.fixtures"]

WORKERS = 4
_run: Simvue | None = None
_barrier: Any = None


@pytest.fixture
def server(simvue_online: Any) -> Any:
    return simvue_online


def server_run(server: Any) -> dict[str, Any]:
    runs = server.db.runs()
    assert len(runs) == 1, runs
    return runs[0]


def server_series(server: Any, run_id: str) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for row in server.db.metrics(run_id):
        assert row["step"] not in out[row["name"]], f"{row['name']} step {row['step']} uploaded twice"
        out[row["name"]][row["step"]] = row["value"]
    return dict(out)


def assert_server_matches_store(server: Any, store: Path) -> dict[str, Any]:
    """Every stored value is on the server once, under the same name and step."""
    view = only_run(store)
    doc = server_run(server)
    got = server_series(server, doc["id"])
    assert set(got) == set(view.metrics)
    for name in view.metrics:
        assert got[name] == pytest.approx(series(view, name), rel=1e-12), name
    assert not server.log.duplicates("/metrics"), "a metrics batch was sent twice"
    assert not server.log.duplicates("/events"), "an events batch was sent twice"
    return doc


def test_single_process_run_is_uploaded_live(server: Any, store: Path, tmp_path: Path) -> None:
    result = tmp_path / "result.bin"
    result.write_bytes(bytes(range(256)) * 64)
    with Simvue() as run:
        run.init(name="uploaded", folder="/hpc/tests", tags=["t1"], metadata={"nx": 64}, description="d")
        for step in range(300):
            run.log({"residual": 1.0 / (step + 1), "energy": step * 0.5})
        run.event("converged")
        run.save(result, "output")
        run.add_alert("high", "is above", "residual", frequency=1, window=1, threshold=5)
        wait_until(lambda: any(r.path.endswith("/heartbeat") for r in server.requests_log("/runs")), 30)
    assert run.status == "completed" and run.uploaded is True
    doc = assert_server_matches_store(server, store)
    assert (doc["name"], doc["folder"], doc["status"]) == ("uploaded", "/hpc/tests", "completed")
    assert doc["endtime"] and doc["tags"] == ["t1"] and doc["description"] == "d"
    assert doc["metadata"]["nx"] == 64 and doc["metadata"]["simvue_hpc"]["ranks"] == 1
    assert doc["system"]["hostname"] == socket.gethostname()
    events = [e["message"] for e in server.db.events(doc["id"])]
    assert "converged" in events, "a single rank's events are uploaded as logged"
    (artifact,) = server.db.artifacts(doc["id"])
    assert artifact["content"] == result.read_bytes() and artifact["category"] == "output"
    assert artifact["checksum"] == hashlib.sha256(result.read_bytes()).hexdigest()
    (alert,) = server.db.alerts()
    assert alert["id"] in doc["alerts"] and alert["alert"]["threshold"] == 5
    assert len(server.db.heartbeats(doc["id"])) >= 1
    assert server.log.max_rate("/metrics", "POST") <= 1 and server.log.max_rate("/events", "POST") <= 1


def test_exception_uploads_failed_status(server: Any, store: Path) -> None:
    with pytest.raises(RuntimeError), Simvue() as run:
        run.init(name="fails")
        run.log({"x": 1.0})
        raise RuntimeError("boom")
    doc = server_run(server)
    assert doc["status"] == "failed"
    assert any("RuntimeError" in e["message"] for e in server.db.events(doc["id"]))


def _pool_task(task: int) -> None:
    assert _run is not None
    _barrier.wait(timeout=60)
    for step in range(40):
        _run.log({"u": task * 10.0 + step}, step=step)
    _run.save(__file__, "code")  # the same bytes from every worker: uploaded once


def test_pool_of_four_uploads_reductions_and_one_file(server: Any, store: Path) -> None:
    global _run, _barrier
    ctx, _barrier, _run = fork_pool_run(WORKERS, "pool-upload")
    with ctx.Pool(WORKERS) as pool:
        pool.map(_pool_task, range(WORKERS))
        pool.close()
        pool.join()
    _run.close()
    assert _run.uploaded is True
    doc = assert_server_matches_store(server, store)
    want = expected([[("u", s, t * 10.0 + s) for s in range(40)] for t in range(WORKERS)])
    got = server_series(server, doc["id"])
    for name, steps in want.items():
        assert got[name] == pytest.approx(steps), name
    assert len(server.db.artifacts(doc["id"])) == 1
    assert len(server.requests_log("/storage", "PUT")) == 1, "the file's bytes went up once"


def test_outage_of_thirty_seconds_loses_and_duplicates_nothing(server: Any, store: Path) -> None:
    run = Simvue()
    run.init(name="outage")
    step = 0
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # before the outage: uploaded live
        run.log({"a": float(step), "b": -float(step)}, step=step)
        step += 1
        time.sleep(0.001)
    server.faults.fail_for(30.0)
    outage_end = time.monotonic() + 30
    while time.monotonic() < outage_end - 25:  # during it: kept in the store
        run.log({"a": float(step), "b": -float(step)}, step=step)
        step += 1
        time.sleep(0.001)
    run.close()  # waits (up to SIMVUE_UPLOAD_TIMEOUT) for the upload to catch up
    assert run.uploaded is True
    assert any(r.status == 503 for r in server.requests_log("/metrics", "POST"))
    doc = assert_server_matches_store(server, store)
    assert len(server_series(server, doc["id"])["a"]) == step
    assert doc["status"] == "completed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_keeps_the_run_for_sync(
    server: Any, store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIMVUE_URL", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    monkeypatch.setenv("SIMVUE_UPLOAD_TIMEOUT", "1")
    with Simvue() as run:
        run.init(name="offline-first")
        for step in range(500):
            run.log({"x": step * 2.0})
        run.event("done")
    assert run.status == "completed" and run.uploaded is False
    assert server.db.runs() == []

    monkeypatch.setenv("SIMVUE_URL", server.url)
    assert cli(["sync", "--quiet"]) == 0
    assert "uploaded as" in capsys.readouterr().out
    doc = assert_server_matches_store(server, store)
    assert doc["status"] == "completed" and len(server_series(server, doc["id"])["x"]) == 500

    before = len(server.requests_log())
    assert cli(["sync", "--quiet", "offline-first"]) == 0
    assert "already uploaded" in capsys.readouterr().out
    writes = [r for r in server.requests_log()[before:] if r.method != "GET"]
    assert writes == [], "a second sync uploads nothing"


def test_a_bad_name_is_a_clear_error_at_sync(server: Any, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = new_run_id()
    with RunWriter.create(store, run_id) as writer:  # a store written by hand, with a name the server refuses
        writer.append(RecordType.RUN, {"id": run_id, "name": "bad*name", "folder": "/", "created_us": 1})
        writer.append(RecordType.END, {"status": "completed", "time_us": 2})
    assert cli(["sync", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "name" in err and server.token not in err
    assert len(server.requests_log("/runs", "POST")) == 1, "a 422 is never retried"


def test_replay_resumes_after_an_uploader_crash(server: Any, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as offline:  # record without a server first
        offline.delenv("SIMVUE_URL")
        run = Simvue(aggregator="thread")
        run.init(name="resume")
        for step in range(40_000):  # more than one POST's worth
            run.log({"x": float(step)}, step=step)
        run.close()
    run_dir = only_run(store).run_dir
    settings = ServerSettings.load()
    client = SimvueClient(settings)
    first = Uploader(run_dir, client, settings)
    posted = lambda up=first: (up.poll(), server.requests_log("/metrics", "POST"))[1]  # noqa: E731
    wait_until(posted, 60, interval=0.05)
    del first, posted  # the uploader "crashes" after its first metrics batch
    second = Uploader(run_dir, client, settings)
    wait_until(second.poll, 60, interval=0.05)
    assert_server_matches_store(server, store)
    assert len(server_series(server, server_run(server)["id"])["x"]) == 40_000


def test_a_second_sync_waits_for_the_first_and_exits_0(
    server: Any, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as offline:
        offline.delenv("SIMVUE_URL")
        run = Simvue(aggregator="thread")
        run.init(name="locked")
        run.log({"x": 1.0})
        run.close()
    run_dir = only_run(store).run_dir
    codes: list[int] = []
    with upload_lock(run_dir, role="simvue-hpc sync"):  # the "first sync"
        other = threading.Thread(target=lambda: codes.append(cli(["sync", "--quiet", "locked"])))
        other.start()
        wait_until(lambda: len(server.requests_log("/version")) > 0, 30)  # it has checked the server
        assert server.db.runs() == [], "the second sync does not upload a run the first holds"
    other.join(60)
    assert codes == [0]
    doc = assert_server_matches_store(server, store)
    assert doc["status"] == "completed"


def test_a_second_sync_gives_up_waiting_with_a_clear_error(
    server: Any, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Simvue(aggregator="thread")
    run.init(name="held")
    run.close()
    with upload_lock(only_run(store).run_dir, role="simvue-hpc sync"):
        assert cli(["sync", "--quiet", "--wait", "0.5", "held"]) == 1
    assert "being uploaded by simvue-hpc sync" in capsys.readouterr().err
