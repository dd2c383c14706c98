"""SimvueClient against the Simvue-compatible test server: every call round-trips, faults are retried.

Retries wait through an injected fake sleep that advances a fake clock, so no test waits for real beyond
what the server itself takes. Every test also checks that the token shows up in no log record.
"""

from __future__ import annotations

import hashlib
import http.server
import logging
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests

from simvue_hpc import __version__
from simvue_hpc.config import ServerSettings
from simvue_hpc.errors import (
    AuthenticationError,
    ConfigurationError,
    OutcomeUnknown,
    ServerError,
    ServerUnavailable,
    SimvueHPCError,
    ValidationError,
)
from simvue_hpc.server import RetryPolicy, SimvueClient, format_timestamp
from tests.helpers import wait_until
from tests.server.auth import TokenIssuer
from tests.server.server import SimvueTestServer

pytest_plugins = ["tests.server.fixtures"]

POLICY = RetryPolicy(total=4, backoff_factor=0.5, backoff_max=8.0, jitter=0.0)


class FakeTime:
    """An injected sleep that only records, and a clock that the sleeps advance."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def sent() -> list[requests.PreparedRequest]:
    """Every request the client's session sent (filled by a response hook)."""
    return []


@pytest.fixture
def make_client(
    simvue_server: SimvueTestServer, fake_time: FakeTime, sent: list[requests.PreparedRequest]
) -> Iterator[Callable[..., SimvueClient]]:
    clients: list[SimvueClient] = []

    def _make(
        policy: RetryPolicy = POLICY, url: str | None = None, token: str | None = None, **settings: Any
    ) -> SimvueClient:
        session = requests.Session()
        session.hooks["response"].append(lambda r, *_, **__: sent.append(r.request))
        server = ServerSettings(
            url=url or simvue_server.url, token=token or simvue_server.token, source="the test", **settings
        )
        client = SimvueClient(
            server, policy, session=session, sleep=fake_time.sleep, clock=fake_time.clock, rng=random.Random(0)
        )
        clients.append(client)
        return client

    yield _make
    for client in clients:
        client.close()
        client.session.close()


@pytest.fixture
def client(make_client: Callable[..., SimvueClient]) -> SimvueClient:
    return make_client()


@pytest.fixture(autouse=True)
def token_never_logged(simvue_server: SimvueTestServer, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        text = record.getMessage() + (caplog.handler.format(record) if record.exc_info else "")
        assert simvue_server.token not in text, f"token logged by {record.name}"
        assert "Bearer" not in text


def _no_token(error: BaseException, *tokens: str) -> None:
    for text in (str(error), repr(error)):
        for token in tokens:
            assert token not in text


def _run(client: SimvueClient, **extra: Any) -> str:
    return client.create_run({"name": "heat-2d", "folder": "/hpc/tests", "status": "running", **extra})


# --- every method round-trips --------------------------------------------------------------------------


def test_version_and_check(client: SimvueClient, simvue_server: SimvueTestServer) -> None:
    assert client.version() == "1.3.0"
    assert client.check() == "1.3.0"
    assert client.check(minimum="1.3.0", below="1.3.1") == "1.3.0"


def test_requests_carry_the_headers(
    client: SimvueClient, simvue_server: SimvueTestServer, sent: list[requests.PreparedRequest]
) -> None:
    client.version()
    (request,) = sent
    assert request.headers["Authorization"] == f"Bearer {simvue_server.token}"
    assert request.headers["User-Agent"] == f"simvue_hpc/{__version__}"
    assert request.headers["Accept-Encoding"] == "gzip"


def test_api_url_may_already_end_in_api(
    make_client: Callable[..., SimvueClient], simvue_server: SimvueTestServer
) -> None:
    assert make_client(url=simvue_server.url + "/api/").version() == "1.3.0"


@pytest.mark.parametrize("version", ["2.0.0", "1.0.9", "banana"])
def test_check_refuses_unsupported_versions(
    client: SimvueClient, simvue_server: SimvueTestServer, version: str
) -> None:
    simvue_server.settings.version = version
    with pytest.raises(ServerError, match="version") as info:
        client.check()
    assert "1.1.0 <= version < 2.0.0" in str(info.value)
    assert not isinstance(info.value, (AuthenticationError, ServerUnavailable))


def test_folders(client: SimvueClient, simvue_server: SimvueTestServer) -> None:
    folder_id = client.create_folder("/hpc/tests")
    assert client.create_folder("/hpc/tests") == folder_id  # 409 with the existing id
    assert [s.status for s in simvue_server.requests_log("/folders", "POST")] == [200, 409]
    client.update_folder(folder_id, description="heat", tags=["mpi"], metadata={"nodes": 4})
    (folder,) = simvue_server.db.folders()
    assert folder["id"] == folder_id
    assert folder["path"] == "/hpc/tests"
    assert (folder["description"], folder["tags"], folder["metadata"]) == ("heat", ["mpi"], {"nodes": 4})


def test_runs(client: SimvueClient, simvue_server: SimvueTestServer) -> None:
    run_id = _run(client, tags=["mpi"], metadata={"ranks": 4}, heartbeat_timeout=180)
    stored = simvue_server.db.run(run_id)
    assert stored is not None
    assert (stored["name"], stored["folder"], stored["status"]) == ("heat-2d", "/hpc/tests", "running")
    client.update_run(run_id, {"metadata": {"steps": 10}, "description": "done"})
    end = format_timestamp(int(time.time() * 1e6))
    client.update_run(run_id, {"status": "completed", "endtime": end})
    run = client.get_run(run_id)
    assert run["status"] == "completed"
    assert run["endtime"] == end
    assert run["metadata"] == {"ranks": 4, "steps": 10}
    assert run["tags"] == ["mpi"]
    assert run["description"] == "done"


def test_heartbeat_and_abort(client: SimvueClient, simvue_server: SimvueTestServer) -> None:
    run_id = _run(client)
    client.heartbeat(run_id)
    client.heartbeat(run_id)
    assert len(simvue_server.db.heartbeats(run_id)) == 2
    assert client.abort_requested(run_id) is False
    simvue_server.set_abort(run_id)
    assert client.abort_requested(run_id) is True


def test_metrics(client: SimvueClient, simvue_server: SimvueTestServer, sent: list[requests.PreparedRequest]) -> None:
    run_id = _run(client)
    t0 = 1_700_000_000_000_000
    records = [
        {
            "values": {"loss": 1.0 / (step + 1), "step_ok": True},
            "time": step * 0.5,
            "timestamp": format_timestamp(t0 + step),
            "step": step,
        }
        for step in range(3)
    ]
    client.post_metrics(run_id, records)
    rows = simvue_server.db.metrics(run_id, "loss")
    assert [(r["step"], r["value"], r["time"], r["timestamp"]) for r in rows] == [
        (s, 1.0 / (s + 1), s * 0.5, format_timestamp(t0 + s)) for s in range(3)
    ]
    assert len({r["batch"] for r in rows}) == 1  # one POST
    assert sent[-1].headers["Content-Type"] == "application/msgpack"


def test_metrics_accept_numpy_values(client: SimvueClient, simvue_server: SimvueTestServer) -> None:
    np = pytest.importorskip("numpy")
    run_id = _run(client)
    record = {
        "values": {"x": np.float32(0.5), "n": np.int64(3)},
        "time": 0.0,
        "timestamp": format_timestamp(0),
        "step": np.int64(0),
    }
    client.post_metrics(run_id, [record])
    assert sorted((r["name"], r["value"]) for r in simvue_server.db.metrics(run_id)) == [("n", 3), ("x", 0.5)]


def test_events(client: SimvueClient, simvue_server: SimvueTestServer, sent: list[requests.PreparedRequest]) -> None:
    run_id = _run(client)
    events = [
        {"message": f"step {i}", "timestamp": format_timestamp(1_700_000_000_000_000 + i), "log_level": "info"}
        for i in range(3)
    ]
    client.post_events(run_id, events)
    assert [e["message"] for e in simvue_server.db.events(run_id)] == ["step 0", "step 1", "step 2"]
    assert sent[-1].headers["Content-Type"] == "application/msgpack"


def _artifact_body(name: str, data: bytes) -> dict[str, Any]:
    return {
        "name": name,
        "original_path": f"/scratch/{name}",
        "size": len(data),
        "mime_type": "application/octet-stream",
        "checksum": hashlib.sha256(data).hexdigest(),
        "metadata": {"rank": 0},
    }


def test_artifact_from_bytes(
    client: SimvueClient, simvue_server: SimvueTestServer, sent: list[requests.PreparedRequest]
) -> None:
    run_id = _run(client)
    data = b"mesh " * 1000
    answer = client.register_artifact(_artifact_body("mesh.bin", data))
    assert answer["id"] and answer["url"] and answer["fields"] is None
    client.upload_artifact(answer["url"], data)
    storage = sent[-1]
    assert storage.method == "PUT" and "/storage/" in str(storage.url)
    assert "Authorization" not in storage.headers  # presigned URL: the token stays with the API
    client.mark_uploaded(answer["id"])
    client.attach_artifact(run_id, answer["id"], "input")
    (stored,) = simvue_server.db.artifacts(run_id)
    assert (stored["id"], stored["content"], stored["category"], stored["uploaded"]) == (
        answer["id"],
        data,
        "input",
        True,
    )
    # The same bytes again: the server already has them and answers without a URL.
    again = client.register_artifact(_artifact_body("mesh.bin", data))
    assert again["id"] == answer["id"] and again["url"] is None


def test_artifact_is_streamed_from_a_path(
    client: SimvueClient, simvue_server: SimvueTestServer, sent: list[requests.PreparedRequest], tmp_path: Path
) -> None:
    run_id = _run(client)
    data = random.Random(1).randbytes(3 * 1024 * 1024 + 17)
    path = tmp_path / "checkpoint.h5"
    path.write_bytes(data)
    answer = client.register_artifact(_artifact_body(path.name, data))
    client.upload_artifact(answer["url"], path)
    request = sent[-1]
    assert not isinstance(request.body, (bytes, bytearray))  # a file object, read as it is sent
    assert request.headers["Content-Length"] == str(len(data))
    client.mark_uploaded(answer["id"])
    client.attach_artifact(run_id, answer["id"], "output")
    (stored,) = simvue_server.db.artifacts(run_id)
    assert stored["content"] == data and stored["category"] == "output"


def test_artifact_upload_is_retried_from_the_start_of_the_file(
    client: SimvueClient, simvue_server: SimvueTestServer, fake_time: FakeTime, tmp_path: Path
) -> None:
    data = b"0123456789" * 10_000
    path = tmp_path / "out.dat"
    path.write_bytes(data)
    answer = client.register_artifact(_artifact_body(path.name, data))
    simvue_server.faults.fail(1, status=503, path="/storage")
    client.upload_artifact(answer["url"], str(path))
    assert [r.status for r in simvue_server.requests_log("/storage")] == [503, 200]
    assert fake_time.sleeps == [0.5]
    assert simvue_server.db.artifacts()[0]["content"] == data


class _MultipartSink(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], dict[str, bytes]]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        boundary = self.headers["Content-Type"].partition("boundary=")[2].encode()
        chunks = body.split(b"--" + boundary)
        assert chunks[0] == b"" and chunks[-1] == b"--\r\n"
        parts = {}
        for chunk in chunks[1:-1]:
            head, _, content = chunk[2:-2].partition(b"\r\n\r\n")  # each part is framed by CRLFs
            match = re.search(rb'name="([^"]*)"', head)
            assert match is not None
            parts[match.group(1).decode()] = content
        self.received.append((dict(self.headers.items()), parts))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_artifact_multipart_post_when_fields_come_back(client: SimvueClient, tmp_path: Path) -> None:
    """Object stores with presigned POSTs (S3) answer `fields`: the file goes last, in a multipart form."""
    data = random.Random(2).randbytes(200_000)
    path = tmp_path / "field.npy"
    path.write_bytes(data)
    _MultipartSink.received = []
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MultipartSink)
    thread = threading.Thread(target=sink.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{sink.server_address[1]}/bucket"
        fields = {"key": "runs/abc/field.npy", "policy": "eyJleHBpcmF0aW9uIjoi", "x-amz-signature": "f00d"}
        client.upload_artifact(url, path, fields)
        client.upload_artifact(url, b"small", {"key": "k"})
    finally:
        sink.shutdown()
        sink.server_close()
    (headers, parts), (_, small) = _MultipartSink.received
    assert "Authorization" not in headers
    assert headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert "Transfer-Encoding" not in headers  # a known length: object stores refuse chunked POSTs
    assert parts == {**{k: v.encode() for k, v in fields.items()}, "file": data}
    assert list(parts)[-1] == "file"
    assert small == {"key": b"k", "file": b"small"}


def test_alerts(client: SimvueClient, simvue_server: SimvueTestServer) -> None:
    run_id = _run(client)
    definition = {
        "name": "diverged",
        "description": "set by rank 0",
        "notification": "none",
        "source": "user",
        "enabled": True,
        "abort": False,
    }
    alert_id = client.create_alert(definition)
    assert client.create_alert(dict(definition)) == alert_id  # deduplicated
    assert "deduplicate=True" in simvue_server.requests_log("/alerts", "POST")[0].query
    client.update_run(run_id, {"alerts": [alert_id]})
    client.set_alert_status(alert_id, run_id, "critical")
    assert simvue_server.db.alert_state(alert_id, run_id) == "critical"
    assert client.alert_status(alert_id, run_id) == "critical"
    client.set_alert_status(alert_id, run_id, "ok")
    assert client.alert_status(alert_id, run_id) == "ok"
    assert [a["id"] for a in simvue_server.db.alerts()] == [alert_id]
    assert [a["id"] for a in client.get_run(run_id)["alerts"]] == [alert_id]


def test_context_manager_and_repr(make_client: Callable[..., SimvueClient], simvue_server: SimvueTestServer) -> None:
    with make_client() as client:
        assert client.version() == "1.3.0"
        assert simvue_server.token not in repr(client)
        assert "token='***'" in repr(client)


def test_offline_settings_make_no_client() -> None:
    with pytest.raises(ConfigurationError, match="SIMVUE_URL"):
        SimvueClient(ServerSettings(url="http://127.0.0.1:9"))


# --- retries -------------------------------------------------------------------------------------------


def test_503_twice_then_success(client: SimvueClient, simvue_server: SimvueTestServer, fake_time: FakeTime) -> None:
    simvue_server.faults.fail(2, status=503, path="/folders", method="POST")
    folder_id = client.create_folder("/a")
    assert [r.status for r in simvue_server.requests_log("/folders", "POST")] == [503, 503, 200]
    assert fake_time.sleeps == [0.5, 1.0]
    assert [f["id"] for f in simvue_server.db.folders()] == [folder_id]


def test_a_5xx_to_a_create_that_is_not_safe_to_repeat_is_an_unknown_outcome(
    client: SimvueClient, simvue_server: SimvueTestServer, fake_time: FakeTime
) -> None:
    simvue_server.faults.fail(1, status=502, path="/runs", method="POST")
    with pytest.raises(OutcomeUnknown, match="502"):
        _run(client)
    assert len(simvue_server.requests_log("/runs", "POST")) == 1 and fake_time.sleeps == []


def test_429_to_a_batch_is_retried(client: SimvueClient, simvue_server: SimvueTestServer) -> None:
    run_id = _run(client)
    simvue_server.faults.rate_limit(1, retry_after=1, path="/metrics")
    client.post_metrics(run_id, [{"values": {"x": 1}, "time": 0.0, "timestamp": format_timestamp(0), "step": 0}])
    assert [r.status for r in simvue_server.requests_log("/metrics", "POST")] == [429, 200]
    assert len(simvue_server.db.metrics(run_id)) == 1


def test_backoff_grows_and_is_capped_then_gives_up(
    make_client: Callable[..., SimvueClient], simvue_server: SimvueTestServer, fake_time: FakeTime
) -> None:
    client = make_client(RetryPolicy(total=5, backoff_factor=1.0, backoff_max=4.0, jitter=0.0))
    simvue_server.faults.fail(10, status=502)
    with pytest.raises(ServerUnavailable, match="502") as info:
        client.version()
    assert fake_time.sleeps == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert len(simvue_server.requests_log("/version")) == 6
    _no_token(info.value, simvue_server.token)


def test_jitter_comes_from_the_injected_rng(
    make_client: Callable[..., SimvueClient], simvue_server: SimvueTestServer, fake_time: FakeTime
) -> None:
    policy = RetryPolicy(total=3, backoff_factor=1.0, jitter=0.5)
    client = make_client(policy)
    simvue_server.faults.fail(3, status=504)
    assert client.version() == "1.3.0"
    rng = random.Random(0)
    assert fake_time.sleeps == [policy.backoff(n, rng.uniform(-1.0, 1.0)) for n in (1, 2, 3)]
    assert all(0.5 * 2 ** (n - 1) <= s <= 1.5 * 2 ** (n - 1) for n, s in enumerate(fake_time.sleeps, 1))


def test_429_honours_retry_after(client: SimvueClient, simvue_server: SimvueTestServer, fake_time: FakeTime) -> None:
    run_id = _run(client)
    simvue_server.faults.rate_limit(1, retry_after=3, path="/metrics")
    client.post_metrics(run_id, [{"values": {"x": 1}, "time": 0.0, "timestamp": format_timestamp(0), "step": 0}])
    assert fake_time.sleeps == [3.0]
    assert [r.status for r in simvue_server.requests_log("/metrics")] == [429, 200]
    assert len(simvue_server.db.metrics(run_id)) == 1


def test_retry_after_can_be_ignored(
    make_client: Callable[..., SimvueClient], simvue_server: SimvueTestServer, fake_time: FakeTime
) -> None:
    client = make_client(RetryPolicy(jitter=0.0, respect_retry_after=False))
    simvue_server.faults.rate_limit(1, retry_after=30)
    client.version()
    assert fake_time.sleeps == [0.5]


def test_dropped_connection_is_retried(
    client: SimvueClient, simvue_server: SimvueTestServer, fake_time: FakeTime
) -> None:
    run_id = _run(client)
    simvue_server.faults.drop(1, path=f"/runs/{run_id}/heartbeat")
    client.heartbeat(run_id)
    assert [r.status for r in simvue_server.requests_log(f"/runs/{run_id}/heartbeat")] == [None, 200]
    assert fake_time.sleeps == [0.5]
    assert len(simvue_server.db.heartbeats(run_id)) == 1


@pytest.mark.parametrize("path", ["/metrics", "/events"])
def test_a_batch_whose_answer_is_lost_is_never_sent_again(
    client: SimvueClient, simvue_server: SimvueTestServer, path: str
) -> None:
    """A lost answer cannot be told from a lost request: the client says so instead of repeating it."""
    run_id = _run(client)
    simvue_server.faults.drop(1, after_processing=True, path=path)
    with pytest.raises(OutcomeUnknown, match="may or may not have been processed"):
        if path == "/metrics":
            client.post_metrics(
                run_id, [{"values": {"x": 1}, "time": 0.0, "timestamp": format_timestamp(0), "step": 0}]
            )
        else:
            client.post_events(run_id, [{"message": "m", "timestamp": format_timestamp(0), "log_level": "info"}])
    assert len(simvue_server.requests_log(path, "POST")) == 1
    assert client.event_count(run_id) == (1 if path == "/events" else 0)
    assert len(client.get_metrics(run_id, ["x"]).get("x", [])) == (1 if path == "/metrics" else 0)


def test_a_run_whose_answer_is_lost_is_found_by_its_metadata(
    client: SimvueClient, simvue_server: SimvueTestServer
) -> None:
    simvue_server.faults.drop(1, after_processing=True, path="/runs", method="POST")
    with pytest.raises(OutcomeUnknown):
        _run(client, metadata={"simvue_hpc_uid": "abc123"})
    (found,) = client.find_runs("metadata.simvue_hpc_uid == abc123")
    assert [r["id"] for r in simvue_server.db.runs()] == [found["id"]]
    assert client.find_runs("metadata.simvue_hpc_uid == other") == []


def test_a_request_refused_before_it_left_is_retried_even_when_not_safe_to_repeat(
    make_client: Callable[..., SimvueClient], fake_time: FakeTime
) -> None:
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = make_client(RetryPolicy(total=2, backoff_factor=0.1, jitter=0.0), url=f"http://127.0.0.1:{port}")
    with pytest.raises(ServerUnavailable) as info:
        client.post_metrics("r", [])
    assert not isinstance(info.value, OutcomeUnknown) and len(fake_time.sleeps) == 2


def test_read_timeout_is_retried(
    make_client: Callable[..., SimvueClient], simvue_server: SimvueTestServer, fake_time: FakeTime
) -> None:
    client = make_client(request_timeout=0.3)
    simvue_server.faults.delay(1.0, count=1, path="/version")
    assert client.version() == "1.3.0"
    assert fake_time.sleeps == [0.5]
    # the slow first request is logged when the server finally answers it
    wait_until(lambda: len(simvue_server.requests_log("/version")) >= 2, 5)
    assert len(simvue_server.requests_log("/version")) == 2


def test_deadline_bounds_the_retrying(
    make_client: Callable[..., SimvueClient], simvue_server: SimvueTestServer, fake_time: FakeTime
) -> None:
    client = make_client(RetryPolicy(total=100, backoff_factor=0.5, jitter=0.0, deadline=5.0))
    simvue_server.faults.fail_for(60, status=503)
    with pytest.raises(ServerUnavailable, match="503"):
        client.version()
    simvue_server.faults.clear()
    assert fake_time.sleeps == [0.5, 1.0, 2.0]  # the next wait (4 s) would end past the deadline
    assert sum(fake_time.sleeps) <= 5.0


# --- errors that are not retried -----------------------------------------------------------------------


def test_422_names_the_field_and_is_not_retried(
    client: SimvueClient, simvue_server: SimvueTestServer, fake_time: FakeTime
) -> None:
    with pytest.raises(ValidationError) as info:
        client.create_run({"name": "bad*name!", "folder": "/hpc/tests"})
    message = str(info.value)
    assert "refused name:" in message
    assert "pattern" in message
    assert isinstance(info.value, ValueError)
    assert len(simvue_server.requests_log("/runs", "POST")) == 1
    assert fake_time.sleeps == []
    assert simvue_server.db.runs() == []
    _no_token(info.value, simvue_server.token)


def test_422_lists_every_refused_field(client: SimvueClient, simvue_server: SimvueTestServer) -> None:
    run_id = _run(client)
    with pytest.raises(ValidationError) as info:
        client.update_run(run_id, {"status": "exploded", "tags": ["ok", "not ok!"]})
    assert "status:" in str(info.value) and "tags.1:" in str(info.value)


def test_422_from_a_rate_limited_then_refused_request_is_not_retried_again(
    client: SimvueClient, simvue_server: SimvueTestServer, fake_time: FakeTime
) -> None:
    simvue_server.faults.rate_limit(1, retry_after=1, path="/folders")
    with pytest.raises(ValidationError, match="path"):
        client.create_folder("no-leading-slash")
    assert [r.status for r in simvue_server.requests_log("/folders")] == [429, 422]
    assert fake_time.sleeps == [1.0]


@pytest.mark.parametrize("status", [400, 404, 500, 501])
def test_other_error_answers_are_server_errors(
    client: SimvueClient, simvue_server: SimvueTestServer, fake_time: FakeTime, status: int
) -> None:
    simvue_server.faults.fail(1, status=status, path="/version")
    with pytest.raises(ServerError, match=str(status)) as info:
        client.version()
    assert type(info.value) is ServerError
    assert "Injected fault" in str(info.value)  # an excerpt of the answer
    assert fake_time.sleeps == []
    assert len(simvue_server.requests_log("/version")) == 1


def test_unknown_run_is_a_server_error(client: SimvueClient, simvue_server: SimvueTestServer) -> None:
    with pytest.raises(ServerError, match="404"):
        client.get_run("AAAAAAAAAAAAAAAAAAAAAA")


def test_bad_token_is_refused_by_check(
    make_client: Callable[..., SimvueClient], simvue_server: SimvueTestServer, fake_time: FakeTime
) -> None:
    other = TokenIssuer().issue()  # a well-formed JWT signed by someone else
    client = make_client(token=other)
    with pytest.raises(AuthenticationError, match="rejected the token") as info:
        client.check()
    assert "401" in str(info.value)
    assert fake_time.sleeps == []
    assert len(simvue_server.requests_log("/version")) == 1
    _no_token(info.value, other, simvue_server.token)


def test_expired_token_is_refused_before_any_request(
    make_client: Callable[..., SimvueClient], simvue_server: SimvueTestServer
) -> None:
    expired = simvue_server.issue_token(ttl=-60)
    client = make_client(token=expired)
    with pytest.raises(AuthenticationError, match="expired") as info:
        client.check()
    assert simvue_server.requests_log() == []
    _no_token(info.value, expired)
    with pytest.raises(AuthenticationError):
        client.heartbeat("AAAAAAAAAAAAAAAAAAAAAA")  # the server refuses it too


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server(make_client: Callable[..., SimvueClient], fake_time: FakeTime) -> None:
    port = _closed_port()
    client = make_client(RetryPolicy(total=2, backoff_factor=0.1, jitter=0.0), url=f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(ServerUnavailable) as info:
        client.check()
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert message.startswith(f"cannot reach the Simvue server at http://127.0.0.1:{port}: ")
    assert "refused" in message.lower()
    assert "3 attempts" in message
    assert fake_time.sleeps == [0.1, 0.2]
    _no_token(info.value, client.settings.token or "")


def test_every_error_is_in_the_package_tree(
    make_client: Callable[..., SimvueClient], simvue_server: SimvueTestServer
) -> None:
    client = make_client(RetryPolicy(total=0))
    failures: list[Callable[[], object]] = [
        lambda: client.get_run("nope"),
        lambda: client.create_folder(""),
        lambda: make_client(RetryPolicy(total=0), url=f"http://127.0.0.1:{_closed_port()}").version(),
    ]

    def _unavailable() -> object:
        simvue_server.faults.fail(1, status=503)
        return client.version()

    failures.append(_unavailable)
    for failure in failures:
        with pytest.raises(SimvueHPCError) as info:
            failure()
        assert info.value.__cause__ is None
        assert info.value.__context__ is None or info.value.__suppress_context__
        _no_token(info.value, simvue_server.token)


class _EchoingProxy(http.server.BaseHTTPRequestHandler):
    """A misbehaving proxy that answers every request with an error quoting its Authorization header,
    placed so that the token straddles the 200-character cut of an error excerpt."""

    pad = 190

    def do_GET(self) -> None:
        body = ("x" * self.pad + f" you sent: {self.headers.get('Authorization')} ... and more").encode()
        self.send_response(418)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("pad", [150, 170, 181, 188, 190, 195, 199])
def test_an_echoed_token_straddling_the_cut_never_shows(
    make_client: Callable[..., SimvueClient], simvue_server: SimvueTestServer, pad: int
) -> None:
    _EchoingProxy.pad = pad
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoingProxy)
    thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        client = make_client(url=f"http://127.0.0.1:{proxy.server_address[1]}")
        with pytest.raises(ServerError) as info:
            client.version()
    finally:
        proxy.shutdown()
        proxy.server_close()
    token = simvue_server.token
    for text in (str(info.value), repr(info.value)):
        assert "418" in text
        for n in range(6, len(token) + 1):  # no 6 consecutive characters of the token
            assert not any(token[i : i + n] in text for i in range(len(token) - n + 1)), text
