"""Frozen settings, read from keyword arguments and the environment; never touches the network.

Every field of :class:`HPCSettings` can be set with ``SIMVUE_HPC_<FIELD>`` (for example
``SIMVUE_HPC_CLOSE_TIMEOUT=30``); keyword arguments to ``Simvue(...)`` win over the environment.
Times are seconds.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigurationError

_CHOICES = {
    "transport": ("tcp", "ipc"),
    "aggregator": ("process", "thread"),
    "overflow": ("block", "drop"),
}


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

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _CHOICES:
                if value not in _CHOICES[f.name]:
                    raise ConfigurationError(f"{f.name} must be one of {', '.join(_CHOICES[f.name])}, not {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigurationError(f"{f.name} must be a positive number, not {value!r}")
        if self.batch_points > self.max_buffered_points:
            raise ConfigurationError("batch_points must not exceed max_buffered_points")

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
