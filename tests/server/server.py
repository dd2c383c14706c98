"""`SimvueTestServer`: the app served from a background thread, with Python-side helpers for tests."""

from __future__ import annotations

import pathlib
import socketserver
import tempfile
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from .app import SimvueApp
from .auth import TokenIssuer
from .common import ServerState, Settings
from .db import Store
from .faults import FaultController
from .requestlog import RequestLog, RequestRecord


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can stall on hosts without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class DbView:
    """Read access to what the server stored, for assertions."""

    def __init__(self, store: Store, log: RequestLog) -> None:
        self._store = store
        self._log = log

    @property
    def path(self) -> pathlib.Path:
        return self._store.path

    def runs(self) -> list[dict[str, Any]]:
        """Stored run documents (alerts as ids; includes `abort`, `abort_reason`, `last_seen`)."""
        return self._store.all("runs")

    def run(self, run_id: str) -> dict[str, Any] | None:
        return self._store.get("runs", run_id)

    def folders(self) -> list[dict[str, Any]]:
        return self._store.all("folders")

    def metrics(self, run_id: str, name: str | None = None) -> list[dict[str, Any]]:
        """One row per value: name, value, step, time, timestamp, batch (the POST it came in)."""
        return self._store.metrics(run_id, None if name is None else [name])

    def events(self, run_id: str) -> list[dict[str, Any]]:
        return self._store.events(run_id)

    def artifacts(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Artifact documents (with `category` when listed for a run) plus the uploaded `content`."""
        pairs: list[tuple[dict[str, Any] | None, str | None]]
        if run_id is None:
            pairs = [(doc, None) for doc in self._store.all("artifacts")]
        else:
            pairs = [(self._store.get("artifacts", a), c) for a, c in self._store.run_artifacts(run_id)]
        out = []
        for doc, category in pairs:
            if doc is not None:
                extra: dict[str, Any] = {"category": category} if category else {}
                out.append(doc | extra | {"content": self._store.blob(doc["id"])})
        return out

    def alerts(self) -> list[dict[str, Any]]:
        return self._store.all("alerts")

    def alert_state(self, alert_id: str, run_id: str) -> str | None:
        return self._store.alert_state(alert_id, run_id)

    def heartbeats(self, run_id: str) -> list[float]:
        """Epoch times of the heartbeats received for a run."""
        return self._store.heartbeats(run_id)

    def requests_log(self, path: str | None = None, method: str | None = None) -> list[RequestRecord]:
        return self._log.records(path, method)


class SimvueTestServer:
    """A Simvue-compatible server on `host:port` (port 0: any free port), run in a daemon thread.

    >>> with SimvueTestServer() as server:
    ...     requests.get(f"{server.url}/api/version", headers={"Authorization": f"Bearer {server.token}"})
    """

    def __init__(
        self,
        db_path: str | pathlib.Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        settings: Settings | None = None,
        secret: bytes | None = None,
    ) -> None:
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if db_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="simvue-test-server-")
            db_path = pathlib.Path(self._tmpdir.name, "simvue.sqlite")
        self.store = Store(db_path)
        self.tokens = TokenIssuer(secret)
        self.settings = settings or Settings()
        self.faults = FaultController()
        self.log = RequestLog()
        self.app = SimvueApp(ServerState(self.store, self.tokens, self.settings), self.faults, self.log)
        self.db = DbView(self.store, self.log)
        self.token = self.tokens.issue()
        self.fail_on_errors = True  # read by the pytest fixture: unexpected server exceptions fail the test
        self._httpd = _ThreadingWSGIServer((host, port), _QuietHandler)
        self._httpd.set_app(self.app)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL without `/api` (what SIMVUE_URL is set to)."""
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def issue_token(self, *, ttl: float = 24 * 3600, subject: str = "test-user") -> str:
        """A new valid token (negative `ttl`: already expired)."""
        return self.tokens.issue(ttl=ttl, subject=subject)

    def set_abort(self, run_id: str, status: bool = True, reason: str | None = None) -> None:
        """Raise (or clear) a run's abort flag, as a user pressing abort in the UI would."""
        self.app.runs.set_abort(run_id, status, reason)

    def requests_log(self, path: str | None = None, method: str | None = None) -> list[RequestRecord]:
        return self.log.records(path, method)

    def errors(self) -> list[str]:
        """Tracebacks of unexpected server-side exceptions (each was answered 500)."""
        return list(self.app.errors)

    def start(self) -> SimvueTestServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="simvue-test-server", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
        self.store.close()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> SimvueTestServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
