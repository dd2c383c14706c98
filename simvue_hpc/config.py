"""Frozen settings, read from keyword arguments, the environment and configuration files; never touches the network.

Every field of :class:`HPCSettings` can be set with ``SIMVUE_HPC_<FIELD>`` (for example
``SIMVUE_HPC_CLOSE_TIMEOUT=30``); keyword arguments to ``Simvue(...)`` win over the environment.
Times are seconds.

:class:`ServerSettings` says where the Simvue server is and how to talk to it; it reads the files users of
Simvue already have (``simvue.toml``, the older ``simvue.ini``) and the ``SIMVUE_*`` variables. Its token is
never shown: not in its repr, not in any error message.
"""

from __future__ import annotations

import configparser
import dataclasses
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from .errors import ConfigurationError
from .redact import redact_url

POINT_WIRE_BYTES = 28  # one point in a METRICS message: name id (4), step, time and value (8 each)

_CHOICES = {
    "transport": ("tcp", "ipc"),
    "aggregator": ("process", "thread"),
    "overflow": ("block", "drop"),
    "on_abort": ("raise", "terminate"),
    "hierarchy": ("auto", "flat", "node"),
}
_NON_NEGATIVE = ("aggregator_restarts",)


@dataclass(frozen=True)
class HPCSettings:
    """How ranks buffer and send, and how long everyone waits for whom."""

    transport: str = "tcp"  # how ranks reach the aggregator (tcp works across nodes)
    aggregator: str = "process"  # rank 0 hosts the aggregator in a child process or a thread
    flush_interval: float = 0.02  # a rank's buffer leaves at least this often ...
    batch_points: int = 4096  # ... or as soon as it holds this many points
    max_buffered_points: int = 1_000_000  # per rank, not yet handed to ZeroMQ
    overflow: str = "block"  # when the buffer is full: wait (up to overflow_timeout), or drop at once
    overflow_timeout: float = 10.0
    heartbeat_interval: float = 5.0
    rank_timeout: float = 60.0  # a rank silent this long is recorded as lost
    step_timeout: float = 10.0  # bounded wait for the slowest rank of a step
    close_timeout: float = 60.0  # the longest close() waits: for the acknowledgement, for other ranks
    connect_timeout: float = 30.0
    file_timeout: float = 300.0
    system_metrics_interval: float = 30.0  # how often each rank reports its CPU, memory (and GPUs)
    terminate_grace: float = 5.0  # after SIGTERM, how long the aggregator waits for the ranks' last data
    on_abort: str = "raise"  # when the run is aborted: log() raises RunAborted, or the rank gets SIGTERM
    # the aggregator's bounds: what passes one is dropped, counted and recorded once (an event)
    # METRICS messages per second from all ranks: sets their flush interval. What one aggregator keeps up with
    # while the ranks share its machine (4,096 ranks on 2 cores: benchmarks/README.md, section 7).
    message_rate_budget: float = 2_000.0
    max_metrics: int = 10_000  # distinct metric names per run
    max_open_steps: int = 100_000  # steps of one metric waiting to be final
    peer_margin: int = 64  # ranks beyond the expected number (the world size) that may join; pools: max_peers
    max_peers: int = 4096  # ranks at once when their number is not known in advance (pools, the sidecar)
    # What one peer may cost the aggregator (see transport.Limits): a larger message disconnects its sender;
    # at most peer_buffer_bytes queue per peer; the listen backlog for connect storms; the seconds a peer
    # has to finish its (authenticated) handshake before it is dropped.
    max_message_bytes: int = 64 << 20
    peer_buffer_bytes: int = 1 << 30
    backlog: int = 4096
    handshake_timeout: float = 10.0
    hierarchy: str = "flat"  # node: a relay per node pre-reduces its ranks' points; auto: when ranks span nodes
    # Surviving the aggregator's death: how many times the host starts a new one (0: the run fails), and
    # how many points a rank keeps, sent but not yet acknowledged as stored, to resend to the new one.
    aggregator_restarts: int = 3
    resend_buffer_points: int = 1_000_000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _CHOICES:
                if value not in _CHOICES[f.name]:
                    raise ConfigurationError(f"{f.name} must be one of {', '.join(_CHOICES[f.name])}, not {value!r}")
            elif f.name in _NON_NEGATIVE:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ConfigurationError(f"{f.name} must be a non-negative integer, not {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigurationError(f"{f.name} must be a positive number, not {value!r}")
        if self.batch_points > self.max_buffered_points:
            raise ConfigurationError("batch_points must not exceed max_buffered_points")
        largest_batch = self.max_buffered_points * POINT_WIRE_BYTES + (1 << 20)  # columns, plus names
        if largest_batch > self.max_message_bytes:
            raise ConfigurationError(
                f"max_message_bytes must exceed a rank's largest METRICS message: max_buffered_points x "
                f"{POINT_WIRE_BYTES} bytes + 1 MiB = {largest_batch}, not {self.max_message_bytes}"
            )

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> HPCSettings:
        """Defaults, then ``SIMVUE_HPC_*`` variables, then ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"SIMVUE_HPC_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(f, raw)
        for key, value in (overrides or {}).items():
            if key not in {f.name for f in fields(cls)}:
                raise ConfigurationError(f"unknown setting {key!r}")
            values[key] = value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigurationError(f"SIMVUE_HPC_{f.name.upper()} must be a number, not {raw!r}") from None
    return raw


# --- the Simvue server ---------------------------------------------------------------------------------

TOML_NAMES = ("simvue.toml", ".simvue.toml")
INI_NAMES_CWD = ("simvue.ini",)
INI_NAMES_HOME = (".simvue.ini", "simvue.ini")
_FLOAT_ENV = {
    "heartbeat_interval": "SIMVUE_HEARTBEAT_INTERVAL",
    "upload_timeout": "SIMVUE_UPLOAD_TIMEOUT",
    "abort_interval": "SIMVUE_ABORT_INTERVAL",
    "retry_budget": "SIMVUE_RETRY_BUDGET",
}


@dataclass(frozen=True, repr=False)
class ServerSettings:
    """Where the Simvue server is, the token to show it, and how long to wait for it (seconds).

    ``online`` is true when both ``url`` and ``token`` are set; otherwise runs stay in the local store.
    ``source`` says where ``url``/``token`` were read from (``"environment"`` or a file path), for messages.
    The token is never shown: ``repr``/``str`` print ``token='***'``.
    """

    url: str | None = None
    token: str | None = None
    heartbeat_interval: float = 60.0
    upload_timeout: float = 60.0  # how long close() waits for the upload to finish
    request_timeout: float = 30.0  # every HTTP request: connect and read
    abort_interval: float = 5.0  # how often a live run reads the server's abort flag (one GET per run)
    retry_attempts: int = 5  # sync: attempts per request before a run is given up for now ...
    retry_budget: float = 30.0  # ... and seconds of retrying per run
    event_prefix: bool = True  # events of a run of several ranks are shown as "[rank R on HOST] message"
    offline_cache: str | None = None  # [offline] cache of simvue.toml, or SIMVUE_OFFLINE_DIRECTORY
    source: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("url", "token", "offline_cache", "source"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                # The value itself is not echoed: it could be the token.
                raise ConfigurationError(f"{name} must be a string or None, not {type(value).__name__}")
        if self.token is not None and re.search(r"[\s\x00-\x1f\x7f]", self.token):
            raise ConfigurationError("token must not contain whitespace or control characters")
        if not isinstance(self.event_prefix, bool):
            raise ConfigurationError(f"event_prefix must be True or False, not {self.event_prefix!r}")
        if isinstance(self.retry_attempts, bool) or not isinstance(self.retry_attempts, int) or self.retry_attempts < 1:
            raise ConfigurationError(f"retry_attempts must be a whole number >= 1, not {self.retry_attempts!r}")
        for name in ("heartbeat_interval", "upload_timeout", "request_timeout", "abort_interval", "retry_budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
                raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
        if self.url is not None and not re.match(r"^https?://[^/\s]+", self.url):
            raise ConfigurationError(
                f"url must start with http:// or https:// followed by a host, not {redact_url(self.url)!r}"
            )

    @property
    def online(self) -> bool:
        """Both a server URL and a token are configured."""
        return bool(self.url) and bool(self.token)

    @property
    def api_url(self) -> str | None:
        """Where the REST API lives: ``url`` + ``/api`` unless it already ends in ``/api``; no trailing slash."""
        if not self.url:
            return None
        base = self.url.rstrip("/")
        return base if base.endswith("/api") else f"{base}/api"

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            shown = "'***'" if f.name == "token" and value is not None else repr(value)
            parts.append(f"{f.name}={shown}")
        return f"ServerSettings({', '.join(parts)})"

    __str__ = __repr__

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-serialisable, for a process boundary (the aggregator child's spec). The
        result holds the token: it is never logged or written to disk."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerSettings:
        """The settings :meth:`to_dict` made; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(f"unknown server setting(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        home: str | os.PathLike[str] | None = None,
    ) -> ServerSettings:
        """Settings from the environment and at most one configuration file; never touches the network.

        The configuration file is the FIRST of these that exists; the others are ignored, so a URL and a
        token always come from the same file:

        1. ``simvue.toml`` or ``.simvue.toml`` (the current format), looking in ``cwd``, then in each parent
           directory up to ``/`` (in each directory ``simvue.toml`` before ``.simvue.toml``; the nearest
           directory wins), then in ``home``. Sections: ``[server] url, token`` and ``[offline] cache``.
        2. ``simvue.ini`` (the seed era's format, ``[server] url, token``) in ``cwd``, then ``~/.simvue.ini``,
           then ``~/simvue.ini``.

        So when both a ``simvue.toml`` and a ``simvue.ini`` exist, ``simvue.toml`` wins.

        Environment variables win over the file, one field at a time: ``SIMVUE_URL``, ``SIMVUE_TOKEN``,
        ``SIMVUE_OFFLINE_DIRECTORY`` (the offline cache), ``SIMVUE_HEARTBEAT_INTERVAL``,
        ``SIMVUE_UPLOAD_TIMEOUT``, ``SIMVUE_ABORT_INTERVAL`` and ``SIMVUE_RETRY_BUDGET`` (positive
        seconds), ``SIMVUE_RETRY_ATTEMPTS`` (a whole number >= 1), ``SIMVUE_EVENT_PREFIX`` (0 turns the
        ``[rank R on HOST]`` prefix of events off). An empty variable counts as unset.

        ``environ`` defaults to ``os.environ``, ``cwd`` to the current directory and ``home`` to ``$HOME``
        of ``environ`` (else the user's home directory). A file that cannot be read or parsed raises
        :class:`ConfigurationError` naming the file, without echoing its contents.
        """
        env = os.environ if environ is None else environ
        start = Path(os.path.abspath(cwd)) if cwd is not None else Path.cwd()  # parents of "." are none
        home_dir = Path(os.path.abspath(home)) if home is not None else _home(env)
        values: dict[str, Any] = {}
        path = find_config_file(start, home_dir)
        if path is not None:
            values = _read_toml(path) if path.suffix == ".toml" else _read_ini(path)
            if values.get("url") or values.get("token"):
                values["source"] = str(path)
        env_url, env_token = (env.get(name, "").strip() for name in ("SIMVUE_URL", "SIMVUE_TOKEN"))
        if env_url:
            values["url"] = env_url
        if env_token:
            values["token"] = env_token
        if env_url or env_token:
            values["source"] = "environment" if not values.get("source") else f"environment and {values['source']}"
        if env.get("SIMVUE_OFFLINE_DIRECTORY", "").strip():
            values["offline_cache"] = env["SIMVUE_OFFLINE_DIRECTORY"].strip()
        for name, variable in _FLOAT_ENV.items():
            raw = env.get(variable, "").strip()
            if raw:
                try:
                    values[name] = float(raw)
                except ValueError:
                    raise ConfigurationError(f"{variable} must be a positive number of seconds, not {raw!r}") from None
                if not 0 < values[name] < math.inf:
                    raise ConfigurationError(f"{variable} must be a positive number of seconds, not {raw!r}")
        raw = env.get("SIMVUE_EVENT_PREFIX", "").strip().lower()
        if raw:
            if raw not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
                raise ConfigurationError(f"SIMVUE_EVENT_PREFIX must be 0 or 1, not {raw!r}")
            values["event_prefix"] = raw in ("1", "true", "yes", "on")
        raw = env.get("SIMVUE_RETRY_ATTEMPTS", "").strip()
        if raw:
            if not raw.isdigit() or int(raw) < 1:
                raise ConfigurationError(f"SIMVUE_RETRY_ATTEMPTS must be a whole number >= 1, not {raw!r}")
            values["retry_attempts"] = int(raw)
        return cls(**values)


def find_config_file(cwd: Path, home: Path | None) -> Path | None:
    """The configuration file :meth:`ServerSettings.load` reads (see there for the order), or None."""
    candidates: list[Path] = []
    for directory in (cwd, *cwd.parents):
        candidates += [directory / name for name in TOML_NAMES]
    if home is not None:
        candidates += [home / name for name in TOML_NAMES]
    candidates += [cwd / name for name in INI_NAMES_CWD]
    if home is not None:
        candidates += [home / name for name in INI_NAMES_HOME]
    for candidate in candidates:
        try:
            if candidate.is_file():
                return candidate
        except OSError:  # an unreadable directory on the way up
            continue
    return None


def _home(env: Mapping[str, str]) -> Path | None:
    if env.get("HOME"):
        return Path(env["HOME"])
    try:
        return Path.home()
    except RuntimeError:  # no home directory can be determined
        return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigurationError(f"configuration file {path} is not UTF-8 text") from None
    except OSError as e:
        raise ConfigurationError(
            f"configuration file {path} cannot be read: {e.strerror or type(e).__name__}"
        ) from None


def _string(path: Path, table: Mapping[str, Any], section: str, key: str) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"configuration file {path}: [{section}] {key} must be a string")
    return value.strip() or None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(_read_text(path))
    except tomllib.TOMLDecodeError as e:
        # tomllib's messages quote single characters and key names; drop every quoted part to be safe.
        reason = re.sub(r"'[^']*'|\"[^\"]*\"", "...", str(e))
        raise ConfigurationError(f"configuration file {path} is not valid TOML: {reason}") from None
    values: dict[str, Any] = {}
    for section, keys in (("server", {"url": "url", "token": "token"}), ("offline", {"cache": "offline_cache"})):
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise ConfigurationError(f"configuration file {path}: [{section}] must be a table")
        for key, field_name in keys.items():
            value = _string(path, table, section, key)
            if value is not None:
                values[field_name] = value
    return values


def _read_ini(path: Path) -> dict[str, Any]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(_read_text(path), source=str(path))
    except configparser.Error as e:
        # configparser's messages quote whole lines (which may hold the token): report line numbers only.
        if isinstance(e, configparser.ParsingError):
            lines = ", ".join(str(n) for n, _ in getattr(e, "errors", [])) or "?"
            reason = f"cannot parse line {lines}"
            if isinstance(e, configparser.MissingSectionHeaderError):
                reason = f"line {e.lineno} comes before any [section] header"
        elif isinstance(e, (configparser.DuplicateOptionError, configparser.DuplicateSectionError)):
            what = f"option {e.option!r} in " if isinstance(e, configparser.DuplicateOptionError) else ""
            reason = f"{what}section [{e.section}] appears twice (line {e.lineno})"
        else:
            reason = type(e).__name__
        raise ConfigurationError(f"configuration file {path} is not a valid INI file: {reason}") from None
    if not parser.has_section("server"):
        return {}
    server = parser["server"]
    values = {key: (server.get(key) or "").strip() for key in ("url", "token")}
    return {key: value for key, value in values.items() if value}
