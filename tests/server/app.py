"""The WSGI application: authentication, fault injection, request log, routing and test hooks.

API routes live under `/api` and need `Authorization: Bearer <token>`; artifact bytes go through
`/storage/{id}` (signed URLs, no token); test-only hooks live under `/_test` (no token, never faulted):

- `POST /_test/faults` a spec or a list of specs (see `FaultController.add`); `GET` lists, `DELETE` clears
- `POST /_test/runs/{run_id}/abort` `{"status": true, "reason": ...}` sets the run's abort flag
- `GET /_test/requests` the request log; `DELETE` clears it
- `POST /_test/token` `{"ttl": seconds, "subject": ...}` issues a token
"""

from __future__ import annotations

import hashlib
import http
import io
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from .api_alerts import AlertsApi
from .api_artifacts import ArtifactsApi
from .api_data import DataApi
from .api_runs import FoldersApi, RunsApi
from .common import ServerState
from .faults import FaultController, FaultDecision
from .requestlog import RequestLog, RequestRecord
from .validation import ValidationFailed
from .web import HTTPError, Request, Response, Router, json_response

StartResponse = Callable[..., Any]


class _Dropped(Exception):
    pass


def _read_chunked(stream: io.BufferedIOBase) -> bytes:
    out = bytearray()
    while True:
        size = int(stream.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while stream.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(out)
        out += stream.read(size)
        stream.readline()


def _read_body(environ: dict[str, Any]) -> bytes:
    stream = environ["wsgi.input"]
    if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
        return _read_chunked(stream)
    length = int(environ.get("CONTENT_LENGTH") or 0)
    return stream.read(length) if length > 0 else b""


class SimvueApp:
    """WSGI callable implementing the Simvue REST API 1.x subset described in the API document."""

    def __init__(self, state: ServerState, faults: FaultController, log: RequestLog) -> None:
        self.state = state
        self.faults = faults
        self.log = log
        self.errors: list[str] = []  # tracebacks of unexpected exceptions (answered 500)
        self.router = Router()
        self.runs = RunsApi(state)
        for api in (
            FoldersApi(state),
            self.runs,
            DataApi(state, self.runs),
            ArtifactsApi(state, self.runs),
            AlertsApi(state, self.runs),
        ):
            api.register(self.router)
        router = self.router
        router.add("GET", "/api/version", lambda req: json_response({"version": state.settings.version}))
        router.add("GET", "/api/nosim/version", lambda req: json_response({"version": state.settings.nosim_version}))
        router.add("POST", "/_test/faults", self._add_faults)
        router.add("GET", "/_test/faults", lambda req: json_response([r.as_dict() for r in faults.rules()]))
        router.add("DELETE", "/_test/faults", self._clear_faults)
        router.add("POST", "/_test/runs/{run_id}/abort", self._set_abort)
        router.add("GET", "/_test/requests", lambda req: json_response([r.as_dict() for r in log.records()]))
        router.add("DELETE", "/_test/requests", self._clear_log)
        router.add("POST", "/_test/token", self._issue_token)

    # --- WSGI ----------------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        arrived, clock = time.time(), time.perf_counter()
        req = Request(
            method=environ["REQUEST_METHOD"].upper(),
            path=environ.get("PATH_INFO") or "/",
            query_string=environ.get("QUERY_STRING", ""),
            headers={k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
            | {"content-type": environ.get("CONTENT_TYPE", "")},
            body=_read_body(environ),
            environ=environ,
        )
        faultable = not req.path.startswith("/_test")
        decision = self.faults.decide(req.method, req.path) if faultable else FaultDecision()
        if decision.delay:
            time.sleep(decision.delay)
        response: Response | None = None
        try:
            if decision.drop and not decision.after_processing:
                raise _Dropped
            response = self._fault_response(decision) if decision.status else self.handle(req)
            if decision.drop:
                raise _Dropped
        except _Dropped:
            self._record(req, arrived, clock, None, response, decision)
            raise ConnectionAbortedError("fault injection: connection dropped") from None
        self._record(req, arrived, clock, None if decision.truncate else response.status, response, decision)
        if decision.stall:
            time.sleep(decision.stall)  # processed; the answer comes after the client gave up waiting
        reason = http.HTTPStatus(response.status).phrase
        headers = [*response.headers.items(), ("Content-Length", str(len(response.body)))]
        start_response(f"{response.status} {reason}", headers)
        if decision.truncate:  # the connection closes after half the promised body
            return [response.body[: len(response.body) // 2]]
        return [response.body]

    def _record(
        self,
        req: Request,
        arrived: float,
        clock: float,
        status: int | None,
        response: Response | None,
        decision: FaultDecision,
    ) -> None:
        self.log.append(
            RequestRecord(
                time=arrived,
                method=req.method,
                path=req.path,
                query=req.query_string,
                status=status,
                request_bytes=len(req.body),
                response_bytes=len(response.body) if response and status is not None else 0,
                duration=time.perf_counter() - clock,
                body_sha256=hashlib.sha256(req.body).hexdigest() if req.body else "",
                fault=decision.label,
                body=req.body,
                content_type=req.headers.get("content-type", ""),
            )
        )

    @staticmethod
    def _fault_response(decision: FaultDecision) -> Response:
        assert decision.status is not None
        headers = {}
        if decision.retry_after is not None:
            headers["Retry-After"] = f"{decision.retry_after:g}"
        return json_response({"detail": f"Injected fault: {decision.status}"}, decision.status, headers)

    def handle(self, req: Request) -> Response:
        """Authenticate and dispatch one request; errors become JSON answers."""
        try:
            if req.path.startswith("/api"):
                self._authenticate(req)
            handler, params = self.router.resolve(req.method, req.path)
            return handler(req, **params)
        except ValidationFailed as e:
            return json_response({"detail": e.errors}, 422)
        except HTTPError as e:
            return json_response({"detail": e.detail}, e.status, e.headers)
        except Exception:
            self.errors.append(traceback.format_exc())
            return json_response({"detail": "Internal Server Error"}, 500)

    def _authenticate(self, req: Request) -> None:
        scheme, _, token = req.headers.get("authorization", "").partition(" ")
        claims = self.state.tokens.verify(token.strip()) if scheme.lower() == "bearer" else None
        if claims is None:
            raise HTTPError(401, "Could not validate credentials", {"WWW-Authenticate": "Bearer"})
        req.claims = claims

    # --- test hooks ----------------------------------------------------------------------------------

    def _add_faults(self, req: Request) -> Response:
        data = req.data()
        specs = data if isinstance(data, list) else [data]
        try:
            rules = [self.faults.add(spec) for spec in specs]
        except (TypeError, ValueError, AttributeError) as e:
            raise HTTPError(400, f"Bad fault spec: {e}") from e
        return json_response({"ids": [r.id for r in rules]})

    def _clear_faults(self, req: Request) -> Response:
        self.faults.clear()
        return json_response({})

    def _set_abort(self, req: Request, run_id: str) -> Response:
        data = req.data() or {}
        self.runs.set_abort(run_id, bool(data.get("status", True)), data.get("reason"))
        return json_response({})

    def _clear_log(self, req: Request) -> Response:
        self.log.clear()
        return json_response({})

    def _issue_token(self, req: Request) -> Response:
        data = req.data() or {}
        token = self.state.tokens.issue(
            ttl=float(data.get("ttl", 24 * 3600)), subject=str(data.get("subject", "test-user"))
        )
        return json_response({"token": token})
