"""The test server's own behaviour over plain HTTP: validation, alerts, faults, log, standalone mode."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import time
from typing import Any

import msgpack
import pytest
import requests

from tests.server import SimvueTestServer

pytest_plugins = ["tests.server.fixtures"]

pytestmark = pytest.mark.timeout(60)

TS = "2024-01-01T00:00:00.000000"


class Api:
    """Tiny authenticated client for the tests below."""

    def __init__(self, server: SimvueTestServer) -> None:
        self.server = server
        self.session = requests.Session()
        self.session.headers.update(server.headers())

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> requests.Response:
        return self.session.request(method, f"{self.server.api_url}{path}", json=body, params=params, timeout=10)

    def msgpack(self, path: str, body: Any) -> requests.Response:
        headers = {"Content-Type": "application/msgpack"}
        return self.session.post(f"{self.server.api_url}{path}", data=msgpack.packb(body), headers=headers, timeout=10)

    def new_run(self, **fields: Any) -> str:
        response = self.call("POST", "/runs", {"folder": "/tests", "status": "running", **fields})
        assert response.status_code == 200, response.text
        return str(response.json()["id"])


@pytest.fixture
def api(simvue_server: SimvueTestServer) -> Api:
    return Api(simvue_server)


def metric_batch(run_id: str, *values: dict[str, Any], start_step: int = 0) -> dict[str, Any]:
    records = [{"values": v, "time": float(i), "timestamp": TS, "step": start_step + i} for i, v in enumerate(values)]
    return {"run": run_id, "metrics": records}


def test_folders_conflict_and_update(api: Api) -> None:
    first = api.call("POST", "/folders", {"path": "/a/b"})
    second = api.call("POST", "/folders", {"path": "/a/b"})
    assert first.status_code == 200 and second.status_code == 409
    assert second.json()["id"] == first.json()["id"]
    assert api.call("POST", "/folders", {"path": "no-slash"}).status_code == 422
    assert api.call("PUT", f"/folders/{first.json()['id']}", {"tags": ["x"], "description": "d"}).json() == {}
    listed = api.call("GET", "/folders", filters=json.dumps(["path == /a/b"])).json()
    assert listed["count"] == 1 and listed["data"][0]["tags"] == ["x"]


def test_run_update_merges_metadata_and_sets_times(api: Api) -> None:
    run_id = api.new_run(name="r1", metadata={"a": 1, "b": 2}, status="created")
    assert api.call("GET", f"/runs/{run_id}").json()["started"] is None
    assert api.call("PUT", f"/runs/{run_id}", {"metadata": {"b": 3, "c": 4}, "status": "running"}).json() == {}
    doc = api.call("GET", f"/runs/{run_id}").json()
    assert doc["metadata"] == {"a": 1, "b": 3, "c": 4} and doc["started"]
    api.call("PUT", f"/runs/{run_id}", {"status": "completed"})
    doc = api.call("GET", f"/runs/{run_id}").json()
    assert doc["status"] == "completed" and doc["endtime"]
    bad = api.call("PUT", f"/runs/{run_id}", {"status": "done", "tags": ["ok", "no!"], "metadata": {"bad key!": 1}})
    assert bad.status_code == 422
    assert {tuple(d["loc"]) for d in bad.json()["detail"]} == {
        ("body", "status"),
        ("body", "tags", 1),
        ("body", "metadata", "bad key!", "[key]"),
    }
    assert api.call("DELETE", f"/runs/{run_id}").status_code == 200
    assert api.call("GET", f"/runs/{run_id}").status_code == 404


def test_run_list_filters_and_pagination(api: Api) -> None:
    ids = [api.new_run(name=f"run-{i}", tags=["even" if i % 2 == 0 else "odd"], metadata={"i": i}) for i in range(5)]
    runs = api.call("GET", "/runs", filters=json.dumps(["has tag.even", "metadata.i >= 2"])).json()
    assert [r["id"] for r in runs["data"]] == [ids[2], ids[4]] and runs["count"] == 2
    page = api.call("GET", "/runs", start=1, count=2).json()
    assert [r["id"] for r in page["data"]] == ids[1:3] and page["count"] == 5
    assert api.call("GET", "/runs", filters=json.dumps(["folder.path == /tests"])).json()["count"] == 5
    assert api.call("GET", "/runs", filters=json.dumps(["nonsense"])).status_code == 422


def test_metrics_validation_and_read_back(api: Api) -> None:
    run_id = api.new_run()
    assert api.msgpack("/metrics", metric_batch(run_id, {"x": 1, "y": 2.5}, {"x": 2})).json() == {}
    bad = api.msgpack("/metrics", metric_batch(run_id, {"x": "high"}, {"bad name!": 1}))
    assert bad.status_code == 422
    assert [d["type"] for d in bad.json()["detail"]] == ["float_type", "string_pattern_mismatch"]
    assert api.msgpack("/metrics", {"metrics": []}).json()["detail"][0]["loc"] == ["body", "run"]
    assert api.msgpack("/metrics", metric_batch("0" * 22, {"x": 1})).status_code == 404
    read = api.call("GET", "/metrics", runs=json.dumps([run_id]), metrics=json.dumps(["x"]), xaxis="step").json()
    assert read == {
        run_id: {
            "x": [
                {"value": 1.0, "step": 0, "time": 0.0, "timestamp": TS},
                {"value": 2.0, "step": 1, "time": 1.0, "timestamp": TS},
            ]
        }
    }
    assert api.call("GET", "/metrics/names", runs=json.dumps([run_id])).json() == ["x", "y"]


def test_events_round_trip(api: Api) -> None:
    run_id = api.new_run()
    events = [{"message": f"m{i}", "timestamp": TS} for i in range(3)]
    assert api.msgpack("/events", {"run": run_id, "events": events}).json() == {}
    page = api.call("GET", "/events", run=run_id, start=1, count=1).json()
    assert page == {"data": [{"message": "m1", "timestamp": TS, "log_level": "info"}], "count": 3}
    bad = api.msgpack("/events", {"run": run_id, "events": [{"message": "x", "timestamp": TS, "log_level": "loud"}]})
    assert bad.status_code == 422


def test_alert_validation_and_deduplication(api: Api) -> None:
    definition: dict[str, Any] = {
        "name": "too-hot",
        "source": "metrics",
        "notification": "none",
        "alert": {"rule": "is above", "metric": "temp", "threshold": 5, "frequency": 1, "window": 1},
    }
    first = api.call("POST", "/alerts", definition, deduplicate=True).json()["id"]
    assert api.call("POST", "/alerts", definition, deduplicate=True).json()["id"] == first
    assert api.call("POST", "/alerts", definition).json()["id"] != first
    bad_cases = [
        {**definition, "alert": {**definition["alert"], "rule": "is sideways"}},
        {**definition, "alert": {"rule": "is inside range", "metric": "temp", "range_low": 5, "range_high": 1}},
        {**definition, "alert": {"rule": "is above", "metric": "temp"}},
        {"name": "no source"},
    ]
    for body in bad_cases:
        response = api.call("POST", "/alerts", body, deduplicate=True)
        assert response.status_code == 422, body
        assert response.json()["detail"][0]["msg"]
    assert api.call("GET", "/alerts").json()["count"] == 2


def test_metric_alert_raises_abort_flag(api: Api, simvue_server: SimvueTestServer) -> None:
    alert = {
        "name": "loss-explodes",
        "source": "metrics",
        "abort": True,
        "alert": {"rule": "is above", "metric": "loss", "threshold": 10, "aggregation": "at least one"},
    }
    alert_id = api.call("POST", "/alerts", alert, deduplicate=True).json()["id"]
    run_id = api.new_run(alerts=[alert_id])
    api.msgpack("/metrics", metric_batch(run_id, {"loss": 1.0}))
    assert api.call("GET", f"/runs/{run_id}/abort").json() == {"status": False}
    assert api.call("GET", f"/alerts/{alert_id}/status/{run_id}").json() == {"status": "ok"}
    api.msgpack("/metrics", metric_batch(run_id, {"loss": 50.0}, start_step=1))
    assert api.call("GET", f"/runs/{run_id}/abort").json() == {"status": True}
    assert simvue_server.db.alert_state(alert_id, run_id) == "critical"
    assert api.call("PUT", f"/alerts/{alert_id}/status/{run_id}", {"status": "ok"}).status_code == 422


def test_artifact_upload_download_and_dedup(api: Api, simvue_server: SimvueTestServer) -> None:
    import hashlib

    run_id = api.new_run()
    content = b"some bytes"
    body = {"name": "blob.bin", "checksum": hashlib.sha256(content).hexdigest(), "size": len(content)}
    body |= {"mime_type": "application/octet-stream", "original_path": "/tmp/blob.bin", "metadata": {}}
    registered = api.call("POST", "/artifacts", body).json()
    assert requests.put(registered["url"], data=content, timeout=10).status_code == 200  # no auth header
    assert requests.put(registered["url"].replace("sig=", "sig=x"), data=b"", timeout=10).status_code == 403
    api.call("PUT", f"/artifacts/{registered['id']}", {"uploaded": True})
    assert api.call("PUT", f"/runs/{run_id}/artifacts/{registered['id']}", {"category": "output"}).json() == {}
    assert api.call("PUT", f"/runs/{run_id}/artifacts/{registered['id']}", {"category": "x"}).status_code == 422
    (listed,) = api.call("GET", f"/runs/{run_id}/artifacts").json()
    assert listed["category"] == "output" and listed["uploaded"] is True
    assert requests.get(listed["url"], timeout=10).content == content
    assert api.call("POST", "/artifacts", body).json() == {"id": registered["id"], "url": None}
    assert simvue_server.db.artifacts(run_id)[0]["content"] == content


def test_lost_run_after_heartbeat_timeout(api: Api) -> None:
    run_id = api.new_run(heartbeat_timeout=1)
    assert api.call("PUT", f"/runs/{run_id}/heartbeat").json() == {}
    time.sleep(1.2)
    assert api.call("GET", f"/runs/{run_id}").json()["status"] == "lost"
    api.call("PUT", f"/runs/{run_id}/heartbeat")
    assert api.call("GET", f"/runs/{run_id}").json()["status"] == "running"


def test_faults_through_http_hook(api: Api, simvue_server: SimvueTestServer) -> None:
    hook = f"{simvue_server.url}/_test/faults"
    requests.post(hook, json={"kind": "status", "status": 503, "until": 0.3, "path": "/version"}, timeout=10)
    assert api.call("GET", "/version").status_code == 503
    assert api.call("GET", "/version").status_code == 503
    time.sleep(0.35)
    assert api.call("GET", "/version").status_code == 200

    requests.post(hook, json={"kind": "delay", "seconds": 0.3, "method": "GET"}, timeout=10)
    started = time.monotonic()
    assert api.call("GET", "/version").status_code == 200
    assert time.monotonic() - started >= 0.3

    requests.post(hook, json=[{"kind": "drop"}, {"kind": "rate_limit", "retry_after": 1}], timeout=10)
    assert len(requests.get(hook, timeout=10).json()) == 2
    with pytest.raises(requests.ConnectionError):
        api.call("GET", "/version")
    assert api.call("GET", "/version").status_code == 429
    requests.post(hook, json={"kind": "status", "count": 5}, timeout=10)
    requests.delete(hook, timeout=10)
    assert api.call("GET", "/version").status_code == 200


def test_drop_after_processing_shows_duplicates(api: Api, simvue_server: SimvueTestServer) -> None:
    run_id = api.new_run()
    simvue_server.faults.drop(1, after_processing=True, path="/events")
    body = {"run": run_id, "events": [{"message": "once", "timestamp": TS}]}
    with pytest.raises(requests.ConnectionError):
        api.msgpack("/events", body)
    assert api.msgpack("/events", body).status_code == 200  # a naive retry
    assert [e["message"] for e in simvue_server.db.events(run_id)] == ["once", "once"]
    (group,) = simvue_server.log.duplicates("/events", successful_only=False)
    assert [r.status for r in group] == [None, 200]


def test_stalled_and_truncated_answers_come_after_processing(api: Api, simvue_server: SimvueTestServer) -> None:
    run_id = api.new_run()
    body = msgpack.packb({"run": run_id, "events": [{"message": "kept", "timestamp": TS}]})
    url, headers = f"{simvue_server.api_url}/events", {**simvue_server.headers(), "Content-Type": "application/msgpack"}
    simvue_server.faults.stall(1.0, path="/events")
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(url, data=body, headers=headers, timeout=0.2)
    simvue_server.faults.truncate(1, path="/events")
    with pytest.raises(requests.exceptions.RequestException):
        requests.post(url, data=body, headers=headers, timeout=10).json()
    assert [e["message"] for e in simvue_server.db.events(run_id)] == ["kept", "kept"]
    assert [r.fault for r in simvue_server.log.records("/events")] == [
        "stall 1.0s after processing",
        "truncated answer after processing",
    ]


def test_request_log_rates(api: Api, simvue_server: SimvueTestServer) -> None:
    for _ in range(5):
        api.call("GET", "/version")
    assert simvue_server.log.count("/version", "GET") == 5
    assert sum(simvue_server.log.per_second("/version").values()) == 5
    assert simvue_server.log.max_rate("/version") == 5
    assert requests.get(f"{simvue_server.url}/_test/requests", timeout=10).json()[0]["path"] == "/api/version"


def test_standalone_entry_point() -> None:
    repo = pathlib.Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.server", "--port", "0"], cwd=repo, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip().removeprefix("SIMVUE_URL=")
        token = process.stdout.readline().strip().removeprefix("SIMVUE_TOKEN=")
        response = requests.get(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert response.json() == {"version": "1.3.0"}
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_an_unnamed_run_is_named_adjective_noun(api: Api) -> None:
    names = set()
    for _ in range(5):
        answer = api.call("POST", "/runs", {"folder": "/", "status": "running"}).json()
        assert re.fullmatch(r"[a-z]+-[a-z]+", answer["name"]), answer["name"]
        assert api.call("GET", f"/runs/{answer['id']}").json()["name"] == answer["name"]
        names.add(answer["name"])
    assert all(not name.startswith("run-") for name in names)
