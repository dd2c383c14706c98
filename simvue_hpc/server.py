"""The Simvue REST API 1.x client (``/work/shared/simvue-server-api.md``), with retries.

:class:`SimvueClient` owns one :class:`requests.Session` and maps every foreign exception into the package's
tree in one place, :meth:`SimvueClient._request`:

- connection errors, timeouts, broken answers and the statuses of :attr:`RetryPolicy.statuses` (429, 502,
  503, 504) are retried with exponential backoff (``Retry-After`` honoured), then raise
  :class:`ServerUnavailable`;
- 401/403 raise :class:`AuthenticationError`; 422 raises :class:`ValidationError` naming the refused fields;
  no other 4xx is retried; other error answers raise :class:`ServerError` with the status and an excerpt;
- a 409 answer to a create that still carries ``"id"`` is the existing object and not an error.

Retries are at least once: a request whose answer was lost (a dropped connection, a read timeout) is sent
again, so a POST of metrics, events or a run may then reach the server twice. Creates of folders, alerts
(``deduplicate=True``) and artifacts are idempotent on the server side.

The token travels only in the ``Authorization`` header of API requests (never to artifact storage URLs) and
appears in no message and no log record. Sleeping, the clock and the jitter's random numbers are injected,
so tests never wait for real.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import email.utils
import io
import json
import logging
import math
import os
import random
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import msgpack
import requests
from requests.auth import AuthBase

from ._version import __version__
from .config import ServerSettings
from .errors import AuthenticationError, ConfigurationError, ServerError, ServerUnavailable, ValidationError
from .records import msgpack_default

logger = logging.getLogger(__name__)

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"
USER_AGENT = f"simvue_hpc/{__version__}"
_EPOCH = datetime.datetime(1970, 1, 1)
_EXCERPT = 200  # characters of an error answer quoted in a ServerError
_CHUNK = 1 << 16  # bytes read at a time when streaming an artifact

_RETRIED_EXCEPTIONS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    ConnectionError,  # the built-in one, for sessions that are not requests'
    TimeoutError,
)
_NEVER_RETRIED_EXCEPTIONS: tuple[type[BaseException], ...] = (
    requests.exceptions.SSLError,  # a certificate problem does not go away by asking again
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
)


def format_timestamp(time_us: int) -> str:
    """Microseconds since the epoch as the API's naive UTC timestamp, ``%Y-%m-%dT%H:%M:%S.%f`` (exact)."""
    return (_EPOCH + datetime.timedelta(microseconds=int(time_us))).strftime(TIMESTAMP_FORMAT)


# --- retries -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before sending a failed request again (like urllib3's ``Retry``).

    ``total`` is the number of retries (so at most ``total + 1`` attempts). Before retry ``n`` (1, 2, ...) the
    client waits ``backoff_factor * 2 ** (n - 1)`` seconds, capped at ``backoff_max`` and spread by
    ``± jitter`` (a fraction), or what a ``Retry-After`` header asks for when ``respect_retry_after``.
    ``deadline`` bounds the whole retrying (seconds from the first attempt): no retry is started that would
    wait past it. Only ``statuses`` are retried, and never a 4xx other than 429 (a 422 above all).
    """

    total: int = 8
    backoff_factor: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.25
    statuses: frozenset[int] = frozenset({429, 502, 503, 504})
    respect_retry_after: bool = True
    deadline: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.total, bool) or not isinstance(self.total, int) or self.total < 0:
            raise ConfigurationError(f"total must be a whole number >= 0, not {self.total!r}")
        for name in ("backoff_factor", "backoff_max"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ConfigurationError(f"{name} must be a number >= 0, not {value!r}")
        if not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"jitter must be a fraction between 0 and 1, not {self.jitter!r}")
        if self.deadline is not None and (not isinstance(self.deadline, (int, float)) or not self.deadline > 0):
            raise ConfigurationError(f"deadline must be a positive number of seconds or None, not {self.deadline!r}")
        object.__setattr__(self, "statuses", frozenset(self.statuses))

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
        try:
            base = min(math.ldexp(self.backoff_factor, max(attempt, 1) - 1), self.backoff_max)
        except OverflowError:  # factor * 2**(attempt-1) is past the float range, so past the cap too
            base = self.backoff_max
        if self.jitter:
            base *= 1.0 + self.jitter * rng.uniform(-1.0, 1.0)
        return min(max(base, 0.0), self.backoff_max)

    def retry_after(self, headers: Mapping[str, str], now_wall: float) -> float | None:
        """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP-date), or None.

        ``now_wall`` is the current epoch time, against which an HTTP-date is measured; a date in the past
        means 0. A missing or unreadable header gives None.
        """
        value = _header(headers, "Retry-After")
        if value is None or not value.strip():
            return None
        value = value.strip()
        if re.fullmatch(r"\d+(\.\d+)?", value):
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # HTTP-dates are GMT
            when = when.replace(tzinfo=datetime.timezone.utc)
        return max(when.timestamp() - now_wall, 0.0)

    def should_retry(self, status_or_exception: int | BaseException) -> bool:
        """Whether an answer with this status, or this failure to get one, is worth another attempt."""
        if isinstance(status_or_exception, BaseException):
            if isinstance(status_or_exception, _NEVER_RETRIED_EXCEPTIONS):
                return False
            return isinstance(status_or_exception, _RETRIED_EXCEPTIONS)
        status = int(status_or_exception)
        if 400 <= status < 500 and status != 429:
            return False
        return status in self.statuses


DEFAULT_POLICY = RetryPolicy()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


# --- the client ----------------------------------------------------------------------------------------


class _BearerAuth(AuthBase):
    """Adds the token to API requests only; an ``auth=`` object also keeps ~/.netrc from replacing it."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(token='***')"


class _MultipartFile:
    """A multipart/form-data body (fields, then the file) read lazily from disk, with a known length."""

    def __init__(self, fields: Mapping[str, Any], filename: str, source: IO[bytes], size: int) -> None:
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        head = b""
        for key, value in fields.items():
            head += (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(str(key))}"\r\n\r\n{value}\r\n'
            ).encode()
        head += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{_quote(filename)}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        self._parts: list[IO[bytes] | bytes] = [head, source, tail]
        self._length = len(head) + size + len(tail)

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        out = b""
        while self._parts and (size < 0 or len(out) < size):
            part = self._parts[0]
            want = -1 if size < 0 else size - len(out)
            if isinstance(part, bytes):
                taken = part if want < 0 else part[:want]
                rest = part[len(taken) :]
                out += taken
                if rest:
                    self._parts[0] = rest
                else:
                    self._parts.pop(0)
            else:
                chunk = part.read(want if want >= 0 else -1)
                out += chunk
                if not chunk or want < 0:
                    self._parts.pop(0)
        return out

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(_CHUNK):
            yield chunk


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")


def _redact_url(url: str) -> str:
    """A URL fit for a message: no user:password part, no query string (presigned URLs carry signatures)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _describe(exc: BaseException, timeout: float) -> str:
    """A short reason for a failed request, without the noise of urllib3's wrappers."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"no connection within {timeout:g} s"
    if isinstance(exc, (requests.exceptions.ReadTimeout, TimeoutError)):
        return f"no answer within {timeout:g} s"
    inner: BaseException = exc
    for _ in range(4):  # requests' ConnectionError -> MaxRetryError.reason / ProtocolError(msg, cause)
        args: tuple[Any, ...] = getattr(inner, "args", ())
        reason = getattr(inner, "reason", None)
        if isinstance(reason, BaseException):
            inner = reason
        elif len(args) > 1 and isinstance(args[1], BaseException):
            inner = args[1]
        elif args and isinstance(args[0], BaseException):
            inner = args[0]
        else:
            break
    text = re.sub(r"^\w*Connection(Pool)?\([^)]*\):\s*", "", str(inner)).strip()
    text = re.sub(r"^<[^>]*>:\s*", "", text)
    if isinstance(exc, requests.exceptions.ChunkedEncodingError) or "RemoteDisconnected" in type(inner).__name__:
        text = f"connection dropped ({text or type(inner).__name__})"
    return text or type(inner).__name__


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
        self._auth = _BearerAuth(settings.token)
        self._owns_session = session is None
        self.session = session if session is not None else requests.Session()
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "gzip"})

    def __repr__(self) -> str:
        return f"SimvueClient(url={_redact_url(self.api_url)!r}, token='***')"

    def __enter__(self) -> SimvueClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the session's connections (a session passed in is left open)."""
        if self._owns_session:
            self.session.close()

    # --- the one place where requests' answers and exceptions are judged ------------------------------

    def _scrub(self, text: str) -> str:
        if self._token:
            text = text.replace(self._token, "***").replace(repr(self._token)[1:-1], "***")
        return text

    def _url(self, *segments: str) -> str:
        return "/".join([self.api_url, *(urllib.parse.quote(str(s), safe="") for s in segments)])

    def _request(
        self,
        method: str,
        url: str,
        *,
        authenticated: bool = True,
        conflict_ok: bool = False,
        body: Callable[[contextlib.ExitStack[Any]], dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Send one request (retrying as the policy says) and return its decoded JSON answer.

        ``body`` makes the keyword arguments of each attempt afresh (a file to stream is reopened for every
        attempt); whatever it enters into the ExitStack is closed after the attempt.
        """
        shown = f"{method} {_redact_url(url)}"
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            failure: str
            wait: float | None = None
            error: BaseException | None = None
            with contextlib.ExitStack() as stack:
                extra = body(stack) if body is not None else {}  # a local file that fails to open is not ours
                logger.debug("%s (attempt %d)", shown, attempt)
                try:
                    response = self.session.request(
                        method,
                        url,
                        auth=self._auth if authenticated else None,
                        timeout=self.settings.request_timeout,
                        **kwargs,
                        **extra,
                    )
                except (requests.exceptions.RequestException, ConnectionError, TimeoutError) as e:
                    error = e
            if error is not None:
                reason = self._scrub(_describe(error, self.settings.request_timeout))
                if isinstance(error, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)):
                    raise ConfigurationError(f"invalid Simvue server URL {_redact_url(url)!r}: {reason}") from None
                if not self.policy.should_retry(error):
                    if isinstance(error, requests.exceptions.ConnectionError):  # SSL, proxy configuration ...
                        raise ServerUnavailable(self._unreachable(url, reason)) from None
                    raise ServerError(f"{shown} failed: {reason}") from None
                failure = reason
            else:
                status = response.status_code
                if status < 300 or (status == 409 and conflict_ok and self._has_id(response)):
                    return self._decode(response, shown, authenticated)
                if not self.policy.should_retry(status):
                    raise self._error(response, shown, authenticated)
                failure = f"answered {status}"
                if self.policy.respect_retry_after:
                    wait = self.policy.retry_after(response.headers, time.time())
            if wait is None:
                wait = self.policy.backoff(attempt, self._rng)
            elapsed = self._clock() - started
            out_of_time = self.policy.deadline is not None and elapsed + wait > self.policy.deadline
            if attempt > self.policy.total or out_of_time:
                tries = f"{attempt} attempt{'s' if attempt > 1 else ''} in {elapsed:.1f} s"
                if failure.startswith("answered"):
                    raise ServerUnavailable(f"{shown} {failure} ({tries}); the Simvue server is unavailable")
                raise ServerUnavailable(f"{self._unreachable(url, failure)} ({tries})")
            logger.info("%s: %s; retrying in %.2f s (retry %d of %d)", shown, failure, wait, attempt, self.policy.total)
            self._sleep(wait)

    def _unreachable(self, url: str, reason: str) -> str:
        if url.startswith(self.api_url):
            return f"cannot reach the Simvue server at {_redact_url(self.settings.url or url)}: {reason}"
        return f"cannot reach the artifact storage at {_redact_url(url)}: {reason}"

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
                raise ServerError(f"{shown} answered {response.status_code} with a body that is not JSON") from None
            return {}  # artifact storage may answer with anything

    def _excerpt(self, response: requests.Response) -> str:
        text = re.sub(r"\s+", " ", response.text or "").strip()
        if len(text) > _EXCERPT:
            text = text[:_EXCERPT] + "..."
        return self._scrub(text)

    def _error(self, response: requests.Response, shown: str, authenticated: bool) -> ServerError:
        status = response.status_code
        try:
            detail = response.json().get("detail")
        except (ValueError, AttributeError):
            detail = None
        if status in (401, 403) and authenticated:
            where = f" (token from {self.settings.source})" if self.settings.source else ""
            reason = f": {self._scrub(str(detail))}" if detail else ""
            return AuthenticationError(
                f"the Simvue server at {_redact_url(self.settings.url or '')} rejected the token{where} "
                f"with {status}{reason}"
            )
        if status == 422:
            return ValidationError(f"{shown}: {self._validation_message(detail)}")
        excerpt = self._excerpt(response)
        return ServerError(f"{shown} answered {status}" + (f": {excerpt}" if excerpt else ""))

    def _validation_message(self, detail: Any) -> str:
        if not isinstance(detail, list) or not detail:
            return self._scrub(f"the Simvue server refused the request: {detail}")
        problems = []
        for item in detail:
            if not isinstance(item, dict):
                problems.append(str(item))
                continue
            loc = [str(part) for part in item.get("loc") or []]
            if loc and loc[0] in ("body", "query", "path", "header"):
                loc = loc[1:]
            field = ".".join(loc) or "the request"
            problems.append(f"{field}: {item.get('msg', 'invalid')}")
        return self._scrub("the Simvue server refused " + "; ".join(problems))

    # --- JSON and msgpack helpers --------------------------------------------------------------------

    def _get(self, *segments: str, params: Mapping[str, Any] | None = None) -> Any:
        return self._request("GET", self._url(*segments), params=params)

    def _put(self, *segments: str, payload: Any = None) -> Any:
        return self._request("PUT", self._url(*segments), json=payload)

    def _create(self, *segments: str, payload: Any, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        data = self._request("POST", self._url(*segments), json=payload, params=params, conflict_ok=True)
        if not isinstance(data, dict) or not data.get("id"):
            raise ServerError(f"POST {self._url(*segments)} answered without an id")
        return data

    def _post_msgpack(self, path: str, body: dict[str, Any]) -> None:
        self._request("POST", self._url(path), data=_pack(body), headers={"Content-Type": "application/msgpack"})

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
                f"{e}; is {_redact_url(self.settings.url or '')} the address of a Simvue server?"
            ) from None
        found = _version_tuple(version)
        if found is None or not low <= found < high:
            raise ServerError(
                f"the Simvue server at {_redact_url(self.settings.url or '')} runs version {version!r}; "
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
        """Create a run (``POST /runs``, body as in the API document); return its id."""
        return str(self._create("runs", payload=body)["id"])

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
        """One msgpack POST of ``[{"values": {name: number}, "time", "timestamp", "step"}, ...]``."""
        self._post_msgpack("metrics", {"run": run_id, "metrics": records})

    def post_events(self, run_id: str, events: list[dict[str, Any]]) -> None:
        """One msgpack POST of ``[{"message", "timestamp", "log_level"}, ...]``."""
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
                multipart = _MultipartFile(fields, filename, _source(stack), size)
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
