"""The Simvue REST API 1.x client (described in ``docs/server-api.md``), with retries.

:class:`SimvueClient` owns one :class:`requests.Session`. Each request goes through :meth:`_request`,
which sends it, hands a failure to the transport boundary (:mod:`.http`) to be judged, and asks the
:class:`~.retry.RetryPolicy` whether and when to try again:

- connection errors, timeouts, broken answers and the statuses of :attr:`RetryPolicy.statuses` (429, 502,
  503, 504) are retried with exponential backoff (``Retry-After`` honoured), then raise
  :class:`ServerUnavailable`;
- a request that is not safe to repeat (creating a run, posting metrics or events) is never sent twice
  by the client: when its outcome is unknown (the answer was lost, a timeout, a gateway error) it raises
  :class:`OutcomeUnknown` at once, and the caller reads the server's state back before sending again;
- 401/403 raise :class:`AuthenticationError`; 422 raises :class:`ValidationError` naming the refused
  fields; no other 4xx is retried; other error answers raise :class:`ServerError` with the status and an
  excerpt;
- a 409 answer to a create that still carries ``"id"`` is the existing object and not an error.

The token travels only in the ``Authorization`` header of API requests (never to artifact storage URLs) and
appears in no message and no log record. Sleeping, the clock and the jitter's random numbers are injected,
so tests never wait for real.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import io
import json
import logging
import os
import random
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import msgpack
import requests

from .._version import __version__
from ..config import ServerSettings
from ..errors import (
    AuthenticationError,
    ConfigurationError,
    OutcomeUnknown,
    ServerError,
    ServerUnavailable,
    ValidationError,
)
from ..records import msgpack_default
from ..redact import redact_url, scrub
from .http import BearerAuth, Failure, MultipartFile, classify, error_for
from .retry import DEFAULT_POLICY, RetryPolicy

logger = logging.getLogger(__name__)

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"
USER_AGENT = f"simvue_hpc/{__version__}"
_EPOCH = datetime.datetime(1970, 1, 1)
# Answers after which a request that is not safe to repeat may or may not have been processed.
_AMBIGUOUS_STATUSES = frozenset({500, 502, 503, 504})


def format_timestamp(time_us: int) -> str:
    """Microseconds since the epoch as the API's naive UTC timestamp, ``%Y-%m-%dT%H:%M:%S.%f`` (exact)."""
    return (_EPOCH + datetime.timedelta(microseconds=int(time_us))).strftime(TIMESTAMP_FORMAT)


def _version_tuple(text: str) -> tuple[int, int, int] | None:
    match = re.match(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def _pack(body: Any) -> bytes:
    try:
        packed: bytes = msgpack.packb(body, use_bin_type=True, default=msgpack_default)
        return packed
    except (TypeError, ValueError, OverflowError) as e:
        raise ConfigurationError(f"cannot encode the request body as msgpack: {e}") from None


class SimvueClient:
    """Speaks REST API 1.x to one Simvue server over one connection-reusing session.

    Every request has a timeout (``settings.request_timeout``) and goes through the retry policy.
    ``sleep``, ``clock`` and ``rng`` are what the retries wait with, measure the deadline with and jitter
    with. A session passed in gets the ``User-Agent`` and ``Accept-Encoding`` headers and is not closed by
    :meth:`close`. The token is added to API requests only (an ``auth`` object, so ``~/.netrc`` cannot replace
    it) and never to artifact storage URLs. The client is meant for one thread at a time.
    """

    def __init__(
        self,
        settings: ServerSettings,
        policy: RetryPolicy = DEFAULT_POLICY,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not settings.online or settings.api_url is None or settings.token is None:
            raise ConfigurationError(
                "no Simvue server configured: set SIMVUE_URL and SIMVUE_TOKEN, or [server] url and token in simvue.toml"
            )
        self.settings = settings
        self.policy = policy
        self.api_url: str = settings.api_url
        self._sleep = sleep
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._token = settings.token
        self._auth = BearerAuth(settings.token)
        self._owns_session = session is None
        self.session = session if session is not None else requests.Session()
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "gzip"})

    def __repr__(self) -> str:
        return f"SimvueClient(url={redact_url(self.api_url)!r}, token='***')"

    def __enter__(self) -> SimvueClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the session's connections (a session passed in is left open)."""
        if self._owns_session:
            self.session.close()

    # --- the one place where answers and failures are judged --------------------------------------

    def _scrub(self, text: str) -> str:
        return scrub(text, self._token)

    def _url(self, *segments: str) -> str:
        return "/".join([self.api_url, *(urllib.parse.quote(str(s), safe="") for s in segments)])

    def _request(
        self,
        method: str,
        url: str,
        *,
        authenticated: bool = True,
        conflict_ok: bool = False,
        idempotent: bool = True,
        body: Callable[[contextlib.ExitStack[Any]], dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Send one request (retrying as the policy says) and return its decoded JSON answer.

        ``idempotent=False``: the request is never repeated after a failure that may have reached the
        server; :class:`OutcomeUnknown` says so instead. ``body`` makes the keyword arguments of each
        attempt afresh (a file to stream is reopened for every attempt); whatever it enters into the
        ExitStack is closed after the attempt.
        """
        shown = f"{method} {redact_url(url)}"
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            wait: float | None = None
            with contextlib.ExitStack() as stack:
                extra = body(stack) if body is not None else {}  # a local file that fails to open is not ours
                logger.debug("%s (attempt %d)", shown, attempt)
                outcome = self._send(method, url, authenticated, kwargs, extra)
            if isinstance(outcome, Failure):
                self._raise_unless_retryable(outcome, url, shown, idempotent)
                failure = outcome.reason
            else:
                status = outcome.status_code
                if status < 300 or (status == 409 and conflict_ok and self._has_id(outcome)):
                    return self._decode(outcome, shown, authenticated)
                if not idempotent and status in _AMBIGUOUS_STATUSES:
                    raise OutcomeUnknown(f"{shown} answered {status}: it may or may not have been processed", status)
                if not self.policy.should_retry(status):
                    raise self._error(outcome, shown, authenticated)
                failure = f"answered {status}"
                if self.policy.respect_retry_after:
                    wait = self.policy.retry_after(outcome.headers, time.time())
            if wait is None:
                wait = self.policy.backoff(attempt, self._rng.uniform(-1.0, 1.0))
            elapsed = self._clock() - started
            if self.policy.gives_up(attempt, elapsed, wait):
                tries = f"{attempt} attempt{'s' if attempt > 1 else ''} in {elapsed:.1f} s"
                if failure.startswith("answered"):
                    raise ServerUnavailable(f"{shown} {failure} ({tries}); the Simvue server is unavailable")
                raise ServerUnavailable(f"{self._unreachable(url, failure)} ({tries})")
            logger.info("%s: %s; retrying in %.2f s (retry %d of %d)", shown, failure, wait, attempt, self.policy.total)
            self._sleep(wait)

    def _send(
        self, method: str, url: str, authenticated: bool, kwargs: dict[str, Any], extra: dict[str, Any]
    ) -> requests.Response | Failure:
        """One attempt: the answer, or the failure as the transport boundary classifies it."""
        try:
            return self.session.request(
                method,
                url,
                auth=self._auth if authenticated else None,
                timeout=self.settings.request_timeout,
                **kwargs,
                **extra,
            )
        except (requests.exceptions.RequestException, ConnectionError, TimeoutError) as e:
            return classify(e, self.settings.request_timeout, self._token)

    def _raise_unless_retryable(self, failure: Failure, url: str, shown: str, idempotent: bool) -> None:
        if failure.invalid_url:
            raise ConfigurationError(f"invalid Simvue server URL {redact_url(url)!r}: {failure.reason}")
        if not failure.retryable:
            if failure.unreachable:  # SSL, proxy configuration ...
                raise ServerUnavailable(self._unreachable(url, failure.reason))
            raise ServerError(f"{shown} failed: {failure.reason}")
        if failure.ambiguous and not idempotent:
            raise OutcomeUnknown(f"{shown} failed ({failure.reason}): it may or may not have been processed")

    def _unreachable(self, url: str, reason: str) -> str:
        if url.startswith(self.api_url):
            return f"cannot reach the Simvue server at {redact_url(self.settings.url or url)}: {reason}"
        return f"cannot reach the artifact storage at {redact_url(url)}: {reason}"

    @staticmethod
    def _has_id(response: requests.Response) -> bool:
        try:
            data = response.json()
        except ValueError:
            return False
        return isinstance(data, dict) and bool(data.get("id"))

    @staticmethod
    def _decode(response: requests.Response, shown: str, api: bool) -> Any:
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            if api:
                raise ServerError(
                    f"{shown} answered {response.status_code} with a body that is not JSON", response.status_code
                ) from None
            return {}  # artifact storage may answer with anything

    def _error(self, response: requests.Response, shown: str, authenticated: bool) -> ServerError:
        return error_for(
            response,
            shown,
            authenticated=authenticated,
            secret=self._token,
            server=self.settings.url or "",
            source=self.settings.source,
        )

    # --- JSON and msgpack helpers --------------------------------------------------------------------

    def _get(self, *segments: str, params: Mapping[str, Any] | None = None) -> Any:
        return self._request("GET", self._url(*segments), params=params)

    def _put(self, *segments: str, payload: Any = None) -> Any:
        return self._request("PUT", self._url(*segments), json=payload)

    def _create(
        self, *segments: str, payload: Any, params: Mapping[str, Any] | None = None, idempotent: bool = True
    ) -> dict[str, Any]:
        data = self._request(
            "POST", self._url(*segments), json=payload, params=params, conflict_ok=True, idempotent=idempotent
        )
        if not isinstance(data, dict) or not data.get("id"):
            raise ServerError(f"POST {self._url(*segments)} answered without an id")
        return data

    def _post_msgpack(self, path: str, body: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/msgpack"}
        self._request("POST", self._url(path), data=_pack(body), headers=headers, idempotent=False)

    # --- the API -------------------------------------------------------------------------------------

    def version(self) -> str:
        """The server's version (``GET /version``)."""
        data = self._get("version")
        if not isinstance(data, dict) or "version" not in data:
            raise ServerError(f"GET {self._url('version')} answered without a version: is this a Simvue server?")
        return str(data["version"])

    def check(self, minimum: str = "1.1.0", below: str = "2.0.0") -> str:
        """Make sure the server is reachable, accepts the token and speaks a supported version; return it.

        Called once when a run starts. Raises :class:`ServerUnavailable` ("cannot reach the Simvue server at
        URL: ..."), :class:`AuthenticationError` (token rejected, or a JWT that has already expired) or
        :class:`ServerError` (not a Simvue server, or a version outside ``minimum <= version < below``).
        """
        low, high = _version_tuple(minimum), _version_tuple(below)
        if low is None or high is None:
            raise ConfigurationError(f"version bounds must look like 1.2.3, not {minimum!r} and {below!r}")
        expired = _jwt_expiry(self._token)
        if expired is not None and expired <= time.time():
            when = datetime.datetime.fromtimestamp(expired, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            where = f" (from {self.settings.source})" if self.settings.source else ""
            raise AuthenticationError(f"the Simvue token{where} expired on {when}: create a new one in the web UI")
        try:
            version = self.version()
        except (AuthenticationError, ServerUnavailable, ValidationError):
            raise
        except ServerError as e:
            raise ServerError(
                f"{e}; is {redact_url(self.settings.url or '')} the address of a Simvue server?"
            ) from None
        found = _version_tuple(version)
        if found is None or not low <= found < high:
            raise ServerError(
                f"the Simvue server at {redact_url(self.settings.url or '')} runs version {version!r}; "
                f"simvue_hpc supports {minimum} <= version < {below}"
            )
        return version

    def create_folder(self, path: str) -> str:
        """Id of the folder at ``path``, created when absent (``POST /folders``)."""
        return str(self._create("folders", payload={"path": path})["id"])

    def update_folder(self, folder_id: str, **details: Any) -> None:
        """Change a folder's ``metadata``, ``tags``, ``description``, ``name`` or ``ttl``."""
        self._put("folders", folder_id, payload=details)

    def create_run(self, body: dict[str, Any]) -> str:
        """Create a run (``POST /runs``, body as in the API document); return its id.

        Not repeated after a lost answer (:class:`OutcomeUnknown`): look for the run first
        (:meth:`find_runs`) so that a second one is never created."""
        return str(self._create("runs", payload=body, idempotent=False)["id"])

    def find_runs(self, *filters: str, count: int = 100) -> list[dict[str, Any]]:
        """Runs matching every filter (``GET /runs?filters=[...]``), e.g. ``metadata.key == value``."""
        params = {"filters": json.dumps(list(filters)), "start": 0, "count": count}
        data = self._get("runs", params=params)
        runs = data.get("data") if isinstance(data, dict) else None
        return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []

    def get_metrics(self, run_id: str, names: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Every stored point of the named metrics of a run: ``{name: [{"value", "step", "time",
        "timestamp"}, ...]}`` (``GET /metrics``); names without points are absent."""
        params = {"runs": json.dumps([run_id]), "metrics": json.dumps(names), "xaxis": "step"}
        data = self._get("metrics", params=params)
        per_metric = data.get(run_id) if isinstance(data, dict) else None
        return per_metric if isinstance(per_metric, dict) else {}

    def event_count(self, run_id: str) -> int:
        """How many events the server holds for a run (``GET /events``, the list's ``count``)."""
        data = self._get("events", params={"run": run_id, "start": 0, "count": 1})
        count = data.get("count") if isinstance(data, dict) else None
        if isinstance(count, bool) or not isinstance(count, int):
            raise ServerError(f"GET {self._url('events')} answered without a count")
        return count

    def update_run(self, run_id: str, body: dict[str, Any]) -> None:
        """``PUT /runs/{id}``: status, endtime, metadata (merged), tags, alerts, system, description."""
        self._put("runs", run_id, payload=body)

    def get_run(self, run_id: str) -> dict[str, Any]:
        data = self._get("runs", run_id)
        if not isinstance(data, dict):
            raise ServerError(f"GET {self._url('runs', run_id)} answered something that is not a run")
        return data

    def heartbeat(self, run_id: str) -> None:
        self._request("PUT", self._url("runs", run_id, "heartbeat"))

    def abort_requested(self, run_id: str) -> bool:
        """Whether the server asks the run to stop (``GET /runs/{id}/abort``)."""
        data = self._get("runs", run_id, "abort")
        return bool(data.get("status")) if isinstance(data, dict) else False

    def post_metrics(self, run_id: str, records: list[dict[str, Any]]) -> None:
        """One msgpack POST of ``[{"values": {name: number}, "time", "timestamp", "step"}, ...]``; never
        repeated after a lost answer (:class:`OutcomeUnknown`): read back with :meth:`get_metrics`."""
        self._post_msgpack("metrics", {"run": run_id, "metrics": records})

    def post_events(self, run_id: str, events: list[dict[str, Any]]) -> None:
        """One msgpack POST of ``[{"message", "timestamp", "log_level"}, ...]``; never repeated after a
        lost answer (:class:`OutcomeUnknown`): read back with :meth:`event_count`."""
        self._post_msgpack("events", {"run": run_id, "events": events})

    def register_artifact(self, body: dict[str, Any]) -> dict[str, Any]:
        """Register an artifact; returns the answer with ``id``, ``url`` (None: already uploaded) and ``fields``."""
        data = self._create("artifacts", payload=body)
        data.setdefault("url", None)
        data.setdefault("fields", None)
        return data

    def upload_artifact(
        self, url: str, data: bytes | str | os.PathLike[str], fields: Mapping[str, Any] | None = None
    ) -> None:
        """Send an artifact's bytes to the storage URL that :meth:`register_artifact` returned.

        Without ``fields``: ``PUT`` of the raw bytes; with them: a multipart ``POST`` of the fields and
        ``file``. Neither carries the token. A path is streamed from disk (reopened for each attempt), never
        read into memory whole.
        """
        path = None if isinstance(data, (bytes, bytearray, memoryview)) else Path(data)
        size = path.stat().st_size if path is not None else len(data)  # type: ignore[arg-type]
        filename = path.name if path is not None else "file"

        def _source(stack: contextlib.ExitStack[Any]) -> IO[bytes]:
            if path is None:
                return io.BytesIO(bytes(data))  # type: ignore[arg-type]
            return stack.enter_context(path.open("rb"))

        def _body(stack: contextlib.ExitStack[Any]) -> dict[str, Any]:
            if fields:
                multipart = MultipartFile(fields, filename, _source(stack), size)
                return {"data": multipart, "headers": {"Content-Type": multipart.content_type}}
            if path is None:
                return {"data": bytes(data)}  # type: ignore[arg-type]
            return {"data": _source(stack), "headers": {"Content-Type": "application/octet-stream"}}

        self._request("POST" if fields else "PUT", url, authenticated=False, body=_body)

    def mark_uploaded(self, artifact_id: str) -> None:
        self._put("artifacts", artifact_id, payload={"uploaded": True})

    def attach_artifact(self, run_id: str, artifact_id: str, category: str) -> None:
        """Link an artifact to a run as ``code``, ``input`` or ``output``."""
        self._put("runs", run_id, "artifacts", artifact_id, payload={"category": category})

    def create_alert(self, definition: dict[str, Any]) -> str:
        """Create an alert, or find the identical one (``POST /alerts?deduplicate=True``); return its id."""
        return str(self._create("alerts", payload=definition, params={"deduplicate": "True"})["id"])

    def set_alert_status(self, alert_id: str, run_id: str, status: str) -> None:
        """Set a user alert's state for a run (``ok`` or ``critical``)."""
        self._put("alerts", alert_id, "status", run_id, payload={"status": status})

    def alert_status(self, alert_id: str, run_id: str) -> str:
        data = self._get("alerts", alert_id, "status", run_id)
        if not isinstance(data, dict) or "status" not in data:
            raise ServerError(f"GET {self._url('alerts', alert_id, 'status', run_id)} answered without a status")
        return str(data["status"])


def _jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, or None when the token is not a JWT or has none (never raises)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None
