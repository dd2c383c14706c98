"""The official client (`simvue==2.6.2`) against the test server: a full session, read back both ways."""

from __future__ import annotations

import hashlib
import pathlib
import threading
import time
from collections.abc import Callable

import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from tests.server import SimvueTestServer
from tests.server.auth import TokenIssuer

simvue = pytest.importorskip("simvue")

pytest_plugins = ["tests.server.fixtures"]

pytestmark = pytest.mark.timeout(60)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def test_official_client_session_round_trip(simvue_env: SimvueTestServer, tmp_path: pathlib.Path) -> None:
    server = simvue_env
    input_file = pathlib.Path("input.txt")
    input_file.write_text("alpha beta\n")

    with simvue.Run() as run:
        run.config(abort_on_alert="ignore")
        run._heartbeat_interval = 1  # official default is 60 s; the first heartbeat is sent at once anyway
        assert run.init(
            name="conformance-run",
            folder="/conformance/official",
            metadata={"alpha": 1, "beta": "text"},
            tags=["t1", "t2"],
            description="official client session",
            timeout=30,
        )
        for step in range(5):
            run.log_metrics({"loss": 1.0 / (step + 1), "acc": step * 0.1})
        run.log_event("starting")
        run.log_event("careful now", log_level="warning")
        assert run.save_file(input_file, category="input")
        assert run.save_object({"answer": 42}, category="output", name="result")
        threshold_id = run.create_metric_threshold_alert(
            name="loss-too-high", metric="loss", threshold=10.0, rule="is above", frequency=1
        )
        # the server evaluates an alert when data arrives: this point comes after the alert is attached
        run.log_metrics({"loss": 0.1, "acc": 0.5})
        user_alert_id = run.create_user_alert(name="manual-check")
        assert run.log_alert(identifier=user_alert_id, state="critical")
        assert run.update_metadata({"gamma": 3})
        assert run.set_folder_details(metadata={"owner": "tests"}, tags=["folder-tag"], description="a folder")
        run_id = run.id
        wait_for(lambda: len(server.db.heartbeats(run_id)) >= 2)

    # --- what the server stored -----------------------------------------------------------------------
    (stored,) = server.db.runs()
    assert stored["id"] == run_id and len(run_id) == 22 and run_id.isalnum()
    assert stored["name"] == "conformance-run"
    assert stored["status"] == "completed"
    assert stored["folder"] == "/conformance/official"
    assert stored["tags"] == ["t1", "t2"]
    assert stored["description"] == "official client session"
    assert stored["heartbeat_timeout"] == 30
    assert {"alpha": 1, "beta": "text", "gamma": 3}.items() <= stored["metadata"].items()
    assert "python" in stored["metadata"]  # the client's environment metadata, merged, not replaced
    assert stored["system"]["cpu"]["arch"]
    assert stored["started"] and stored["endtime"]
    assert set(stored["alerts"]) == {threshold_id, user_alert_id}

    loss = server.db.metrics(run_id, "loss")
    assert [m["value"] for m in loss] == pytest.approx([1.0, 0.5, 1 / 3, 0.25, 0.2, 0.1])
    assert [m["step"] for m in loss] == [0, 1, 2, 3, 4, 5]
    assert all(m["time"] >= 0 for m in loss)
    assert [m["value"] for m in server.db.metrics(run_id, "acc")] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    events = server.db.events(run_id)
    assert [(e["message"], e["log_level"]) for e in events] == [("starting", "info"), ("careful now", "warning")]

    artifacts = {a["name"]: a for a in server.db.artifacts(run_id)}
    assert set(artifacts) == {"input.txt", "result"}
    assert artifacts["input.txt"]["content"] == b"alpha beta\n"
    assert artifacts["input.txt"]["category"] == "input"
    assert artifacts["input.txt"]["checksum"] == hashlib.sha256(b"alpha beta\n").hexdigest()
    assert artifacts["result"]["category"] == "output"
    assert all(a["uploaded"] for a in artifacts.values())

    assert server.db.alert_state(user_alert_id, run_id) == "critical"
    assert server.db.alert_state(threshold_id, run_id) == "ok"  # evaluated by the server: loss never > 10
    assert len(server.db.heartbeats(run_id)) >= 2
    (folder,) = [f for f in server.db.folders() if f["path"] == "/conformance/official"]
    assert folder["metadata"] == {"owner": "tests"} and folder["tags"] == ["folder-tag"]

    log = server.requests_log()
    assert all(r.status is not None and r.status < 400 for r in log), [(r.path, r.status) for r in log]
    assert len(server.db.requests_log("/metrics", "POST")) >= 1
    assert server.log.duplicates() == []  # nothing was sent twice
    assert server.log.max_rate("/metrics", "POST", window=0.9) <= 1  # the client's 1 POST/s batching

    # --- read back through the official client --------------------------------------------------------
    client = simvue.Client()
    run_obj = client.get_run(run_id)
    assert run_obj.name == "conformance-run"
    assert run_obj.status == "completed"
    assert run_obj.tags == ["t1", "t2"]
    assert run_obj.folder == "/conformance/official"
    assert run_obj.metadata["gamma"] == 3
    assert run_obj.endtime is not None
    assert sorted(run_obj.alerts) == sorted([threshold_id, user_alert_id])

    values = client.get_metric_values(["loss", "acc"], "step", run_ids=[run_id])
    assert values["loss"][(0, run_id)] == pytest.approx(1.0)
    assert values["loss"][(4, run_id)] == pytest.approx(0.2)
    assert values["acc"][(2, run_id)] == pytest.approx(0.2)
    assert {"loss", "acc"} <= set(client.get_metrics_names(run_id))
    assert [e["message"] for e in client.get_events(run_id)] == ["starting", "careful now"]
    assert [e["message"] for e in client.get_events(run_id, message_contains="careful")] == ["careful now"]

    assert {a.name for _, a in client.list_artifacts(run_id)} == {"input.txt", "result"}
    assert client.get_artifact(run_id, "result") == {"answer": 42}
    out_dir = tmp_path / "downloads"
    out_dir.mkdir()
    client.get_artifact_as_file(run_id, "input.txt", output_dir=out_dir)
    assert (out_dir / "input.txt").read_bytes() == b"alpha beta\n"

    assert client.get_alerts(run_id=run_id) == ["manual-check"]
    assert sorted(client.get_alerts(run_id=run_id, critical_only=False)) == ["loss-too-high", "manual-check"]
    folder_obj = client.get_folder("/conformance/official")
    assert folder_obj is not None and folder_obj.description == "a folder"
    assert [i for i, _ in client.get_runs(filters=["has tag.t1"])] == [run_id]
    assert list(client.get_runs(filters=["name == someone-else"])) == []


def test_abort_flag_reaches_official_client(simvue_env: SimvueTestServer) -> None:
    aborted = threading.Event()
    with simvue.Run(abort_callback=lambda _run: aborted.set()) as run:
        run.config(abort_on_alert="ignore", disable_resources_metrics=True)
        run._heartbeat_interval = 1
        run.init(name="abort-me", folder="/conformance/abort")
        wait_for(lambda: len(simvue_env.db.heartbeats(run.id)) >= 1)
        simvue_env.set_abort(run.id, reason="stop please")
        assert aborted.wait(10)
        run_id = run.id
    stored = simvue_env.db.run(run_id)
    assert stored is not None and stored["abort_reason"] == "stop please"


def test_bad_token_reported_as_auth_failure(simvue_env: SimvueTestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    foreign = TokenIssuer(b"some other server's secret").issue()  # JWT-shaped, unexpired, wrong signature
    monkeypatch.setenv("SIMVUE_TOKEN", foreign)
    with pytest.raises(RuntimeError, match="Unauthorised token"):
        simvue.Run()
    expired = simvue_env.issue_token(ttl=-60)
    monkeypatch.setenv("SIMVUE_TOKEN", expired)
    with pytest.raises(RuntimeError, match="expired"):  # the client refuses it before asking
        simvue.Client()
    for token in (foreign, expired, "not-a-jwt"):
        response = requests.get(f"{simvue_env.api_url}/version", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
        assert response.json() == {"detail": "Could not validate credentials"}
    assert requests.get(f"{simvue_env.api_url}/runs").status_code == 401  # no header at all


def test_bad_run_name_answers_422(simvue_server: SimvueTestServer) -> None:
    from simvue.api.request import post as sv_post
    from simvue.utilities import parse_validation_response

    url = f"{simvue_server.api_url}/runs"
    response = requests.post(url, json={"name": "no!good", "folder": "/x"}, headers=simvue_server.headers())
    assert response.status_code == 422
    (issue,) = response.json()["detail"]
    assert issue["loc"] == ["body", "name"] and issue["type"] == "string_pattern_mismatch"
    assert "name" in parse_validation_response(response.json())
    with pytest.raises(ValueError, match="Validation error"):  # the official client's request layer
        sv_post(url, headers=simvue_server.headers(), params={}, data={"name": "no!good", "folder": "/x"})
    assert simvue_server.db.runs() == []


def test_503_twice_then_success(simvue_server: SimvueTestServer) -> None:
    simvue_server.faults.fail(2, status=503, path="/runs", method="POST")
    session = requests.Session()
    retry = Retry(total=3, status_forcelist=[503], allowed_methods=None, backoff_factor=0)
    session.mount("http://", HTTPAdapter(max_retries=retry))
    response = session.post(
        f"{simvue_server.api_url}/runs", json={"name": "after-faults", "folder": "/f"}, headers=simvue_server.headers()
    )
    assert response.status_code == 200
    log = simvue_server.requests_log("/runs", "POST")
    assert [r.status for r in log] == [503, 503, 200]
    assert [r.fault for r in log] == ["status 503", "status 503", None]
    assert [r["name"] for r in simvue_server.db.runs()] == ["after-faults"]


def test_429_carries_retry_after(simvue_server: SimvueTestServer) -> None:
    simvue_server.faults.rate_limit(1, retry_after=2, path="/version")
    url = f"{simvue_server.api_url}/version"
    limited = requests.get(url, headers=simvue_server.headers())
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2"
    assert "detail" in limited.json()
    assert requests.get(url, headers=simvue_server.headers()).status_code == 200
