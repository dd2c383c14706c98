"""The transport boundary of the REST client: ``requests``' exceptions and error answers become the
package's own values and exceptions here, and nowhere else.

- :func:`classify` turns an exception raised while sending into a :class:`Failure`: a short reason,
  whether another attempt may help, and whether the server may already have processed the request
  (the answer was lost, or the connection broke after the body left). A request refused before it
  left (connection refused, no connection within the timeout) is never ambiguous.
- :func:`error_for` turns an error answer into :class:`AuthenticationError` (401/403),
  :class:`ValidationError` (422, naming the refused fields) or :class:`ServerError` with the status and
  an excerpt of the answer, the token scrubbed out before anything is cut.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import IO, Any

import requests
from requests.auth import AuthBase

from ..errors import AuthenticationError, ServerError, ValidationError
from ..redact import excerpt, redact_url, scrub

EXCERPT = 200  # characters of an error answer quoted in a ServerError
CHUNK = 1 << 16  # bytes read at a time when streaming an artifact

_RETRIED: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    ConnectionError,  # the built-in one, for sessions that are not requests'
    TimeoutError,
)
_NEVER_RETRIED: tuple[type[BaseException], ...] = (
    requests.exceptions.SSLError,  # a certificate problem does not go away by asking again
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
)
# Failures before the request left this host: the server cannot have seen it.
_NOT_SENT = ("NewConnectionError", "ConnectionRefusedError", "NameResolutionError", "gaierror", "ConnectTimeout")


@dataclasses.dataclass(frozen=True)
class Failure:
    """A request that got no answer: why, whether to try again, and whether it may have been processed."""

    reason: str
    retryable: bool
    ambiguous: bool
    invalid_url: bool = False
    unreachable: bool = False  # not retried, but a failure to reach the server (SSL, a proxy), not of the request


def classify(exc: BaseException, timeout: float, secret: str | None) -> Failure:
    """What an exception raised by ``Session.request`` means for the request that raised it."""
    reason = scrub(describe(exc, timeout), secret)
    invalid_url = isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema))
    if isinstance(exc, _NEVER_RETRIED) or not isinstance(exc, _RETRIED):
        unreachable = isinstance(exc, requests.exceptions.ConnectionError)
        return Failure(reason, retryable=False, ambiguous=False, invalid_url=invalid_url, unreachable=unreachable)
    return Failure(reason, retryable=True, ambiguous=not _never_sent(exc))


def _never_sent(exc: BaseException) -> bool:
    if isinstance(exc, (requests.exceptions.ConnectTimeout, ConnectionRefusedError)):
        return True
    return any(type(inner).__name__ in _NOT_SENT for inner in _chain(exc))


def _chain(exc: BaseException, causes: bool = True) -> list[BaseException]:
    """``exc`` and what it wraps (requests' ConnectionError -> MaxRetryError.reason -> ...), a few deep;
    with ``causes`` also through ``__cause__``/``__context__`` where nothing is wrapped explicitly."""
    out: list[BaseException] = [exc]
    for _ in range(6):
        inner = out[-1]
        args: tuple[Any, ...] = getattr(inner, "args", ())
        reason = getattr(inner, "reason", None)
        if isinstance(reason, BaseException):
            nxt: BaseException | None = reason
        elif len(args) > 1 and isinstance(args[1], BaseException):
            nxt = args[1]
        elif args and isinstance(args[0], BaseException):
            nxt = args[0]
        else:
            nxt = (inner.__cause__ or inner.__context__) if causes else None
        if nxt is None or nxt in out:
            break
        out.append(nxt)
    return out


def describe(exc: BaseException, timeout: float) -> str:
    """A short reason for a failed request, without the noise of urllib3's wrappers."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"no connection within {timeout:g} s"
    if isinstance(exc, (requests.exceptions.ReadTimeout, TimeoutError)):
        return f"no answer within {timeout:g} s"
    inner = _chain(exc, causes=False)[-1]
    text = re.sub(r"^\w*Connection(Pool)?\([^)]*\):\s*", "", str(inner)).strip()
    text = re.sub(r"^<[^>]*>:\s*", "", text)
    if isinstance(exc, requests.exceptions.ChunkedEncodingError) or "RemoteDisconnected" in type(inner).__name__:
        text = f"connection dropped ({text or type(inner).__name__})"
    return text or type(inner).__name__


def error_for(
    response: requests.Response, shown: str, *, authenticated: bool, secret: str | None, server: str, source: str | None
) -> ServerError:
    """The exception for an error answer that is not retried (``shown``: the request, URL redacted)."""
    status = response.status_code
    try:
        body = response.json()
        detail = body.get("detail") if isinstance(body, dict) else None
    except ValueError:
        detail = None
    if status in (401, 403) and authenticated:
        where = f" (token from {source})" if source else ""
        reason = f": {excerpt(str(detail), secret, EXCERPT)}" if detail else ""
        return AuthenticationError(
            f"the Simvue server at {redact_url(server)} rejected the token{where} with {status}{reason}", status
        )
    if status == 422:
        return ValidationError(f"{shown}: {validation_message(detail, secret)}", status)
    quoted = excerpt(response.text or "", secret, EXCERPT)
    return ServerError(f"{shown} answered {status}" + (f": {quoted}" if quoted else ""), status)


def validation_message(detail: Any, secret: str | None) -> str:
    """A FastAPI-style 422 ``detail`` as ``field: message; ...``."""
    if not isinstance(detail, list) or not detail:
        return excerpt(f"the Simvue server refused the request: {detail}", secret, EXCERPT)
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
    return excerpt("the Simvue server refused " + "; ".join(problems), secret, 4 * EXCERPT)


class BearerAuth(AuthBase):
    """Adds the token to API requests only; an ``auth=`` object also keeps ~/.netrc from replacing it."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth(token='***')"


class MultipartFile:
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
        while chunk := self.read(CHUNK):
            yield chunk


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
