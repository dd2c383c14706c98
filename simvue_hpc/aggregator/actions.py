"""What the aggregator's state machine asks its loop to do: the actions ``handle`` and ``tick`` return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..protocol import Message
from ..records import RecordType


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``message`` to the rank behind ``identity``."""

    identity: bytes
    message: Message


@dataclass(frozen=True, slots=True)
class Append:
    """Append a record to the run's store."""

    type: RecordType
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True, eq=False)
class AppendMetrics:
    """Append reduced metric columns to the store."""

    names: list[str]
    name_id: np.ndarray
    step: np.ndarray
    time_us: np.ndarray
    value: np.ndarray
    late: bool = False

    @classmethod
    def series(cls, values: dict[str, float], step: int, time_us: int) -> AppendMetrics:
        """One point per name, all at ``step`` and ``time_us``."""
        n = len(values)
        return cls(
            names=list(values),
            name_id=np.arange(n, dtype=np.uint32),
            step=np.full(n, step, dtype=np.int64),
            time_us=np.full(n, time_us, dtype=np.int64),
            value=np.array(list(values.values()), dtype=np.float64),
        )


@dataclass(frozen=True, slots=True)
class FileWrite:
    """Write ``data`` at ``offset`` of the file being received; on ``final`` commit it and call
    ``AggregatorState.file_done`` with the outcome."""

    sha256: str
    offset: int
    data: bytes
    final: bool


@dataclass(frozen=True, slots=True)
class FileDiscard:
    """Drop a partly received file."""

    sha256: str


@dataclass(frozen=True, slots=True)
class Finish:
    """The run is over; the loop flushes the store and stops."""

    status: str


Action = Reply | Append | AppendMetrics | FileWrite | FileDiscard | Finish
