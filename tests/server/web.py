"""Minimal WSGI request/response/routing layer (standard library plus msgpack)."""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

import msgpack

from .validation import Checker

Handler = Callable[..., "Response"]


class HTTPError(Exception):
    """An error answer with a JSON `{"detail": ...}` body."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def not_found(kind: str, id_: str) -> HTTPError:
    return HTTPError(404, f"{kind} '{id_}' not found")


@dataclasses.dataclass
class Response:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = dataclasses.field(default_factory=lambda: {"Content-Type": "application/json"})


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, allow_nan=False, separators=(",", ":")).encode()
    return Response(status, body, {"Content-Type": "application/json", **(headers or {})})


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query_string: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    environ: dict[str, Any]
    claims: dict[str, Any] | None = None

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; the last value wins for repeated names."""
        return dict(urllib.parse.parse_qsl(self.query_string, keep_blank_values=True))

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.query.get(name)
        return default if value is None else value.strip().lower() in ("true", "1", "yes")

    def int_param(self, name: str, default: int) -> int:
        value = self.query.get(name)
        if value in (None, "", "None"):
            return default
        try:
            return int(value)
        except ValueError:
            checker = Checker()
            checker.fail(("query", name), "Input should be a valid integer", "int_parsing", value)
            checker.done()
            raise AssertionError("unreachable") from None

    def json_list_param(self, name: str, *, required: bool = False) -> list[Any] | None:
        """A query parameter holding a JSON list (e.g. `runs=["id1","id2"]`)."""
        value = self.query.get(name)
        checker = Checker()
        if value is None:
            if required:
                checker.fail(("query", name), "Field required", "missing")
                checker.done()
            return None
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, list):
            checker.fail(("query", name), "Input should be a JSON list", "list_type", value)
            checker.done()
        return parsed

    def data(self) -> Any:
        """The body decoded as msgpack or JSON (by Content-Type, falling back to trying both)."""
        content_type = self.headers.get("content-type", "")
        decoders = [_msgpack, _json] if "msgpack" in content_type else [_json, _msgpack]
        if not self.body:
            return None
        for decode in decoders:
            try:
                return decode(self.body)
            except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
                continue
        checker = Checker()
        checker.fail(("body",), "Body is neither JSON nor msgpack", "json_invalid")
        checker.done()
        return None

    def base_url(self) -> str:
        """scheme://host:port this request was sent to."""
        host = self.headers.get("host") or f"{self.environ['SERVER_NAME']}:{self.environ['SERVER_PORT']}"
        return f"{self.environ.get('wsgi.url_scheme', 'http')}://{host}"


def _json(body: bytes) -> Any:
    return json.loads(body)


def _msgpack(body: bytes) -> Any:
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


class Router:
    """Maps (method, path pattern) to handlers; `{name}` in a pattern captures one path segment."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern.rstrip("/") or "/")
        self._routes.append((method.upper(), re.compile(f"^{regex}/?$"), handler))

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def _decorator(handler: Handler) -> Handler:
            self.add(method, pattern, handler)
            return handler

        return _decorator

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        allowed = False
        for route_method, regex, handler in self._routes:
            if match := regex.match(path):
                if route_method == method:
                    return handler, match.groupdict()
                allowed = True
        if allowed:
            raise HTTPError(405, "Method Not Allowed")
        raise HTTPError(404, "Not Found")
