"""PARTIALS (type 19): a node relay's pre-reduced points, as mergeable accumulator columns.

Registered into the protocol's message table on import (``protocol.MESSAGE_TYPES``), so that any
process importing it decodes PARTIALS like every other message. Pure: no zmq. docs/protocol.md 5.19
is the normative description.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import protocol
from ..aggregator.accumulate import Partials
from ..errors import ProtocolError
from ..protocol import Buffer, Message, MsgType

# (column, dtype) in row order; ``key`` indexes the message's names
COLUMNS: tuple[tuple[str, str], ...] = (
    ("key", "<u4"),
    ("step", "<i8"),
    ("time_ns", "<i8"),
    ("count", "<i8"),
    ("sum_hi", "<f8"),
    ("sum_lo", "<f8"),
    ("min", "<f8"),
    ("max", "<f8"),
    ("m2", "<f8"),
)
# one payload frame of packed little-endian rows (68 bytes each): one frame per message, not one per
# column, because a message's cost at the aggregator grows with its number of frames
ROW = np.dtype(list(COLUMNS))


@dataclass(frozen=True, slots=True, eq=False)
class PartialBatch(Message):
    """Accumulators of one relay's ranks per (metric, step); ``partials.key`` indexes ``names``.

    ``through``: every point of the relay's ranks for a step <= ``through`` (of any metric) is in this
    message or an earlier one. ``contributors``: per metric name, how many of the relay's ranks log it.
    ``ranks``: how many ranks have joined the relay so far (the aggregator counts them as joined).
    ``reductions``: those of the relay's ranks' HELLOs not sent up before (as in HELLO)."""

    TYPE = MsgType.PARTIALS
    names: list[str]
    through: int
    contributors: dict[str, int]
    partials: Partials
    ranks: int = 0
    reductions: dict[str, list[str]] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "count": len(self.partials),
            "through": self.through,
            "contributors": dict(self.contributors),
            "ranks": self.ranks,
            "reductions": dict(self.reductions),
        }

    def payload_frames(self) -> list[Buffer]:
        rows = np.empty(len(self.partials), dtype=ROW)
        for name, _ in COLUMNS:
            rows[name] = getattr(self.partials, name)
        return [memoryview(rows.view(np.uint8))]  # type: ignore[arg-type]

    @classmethod
    def from_frames(cls, body: dict[str, Any], extra: Sequence[Buffer]) -> PartialBatch:
        names, count, through = body.get("names"), body.get("count"), body.get("through")
        contributors = body.get("contributors", {})
        ranks = body.get("ranks", 0)
        reductions = body.get("reductions", {})
        if not isinstance(reductions, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(op, str) for op in v)
            for k, v in reductions.items()
        ):
            raise ProtocolError("PARTIALS.reductions must map names to lists of strings")
        if not isinstance(ranks, int) or isinstance(ranks, bool) or not 0 <= ranks < 2**31:
            raise ProtocolError("PARTIALS.ranks must be a non-negative integer")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ProtocolError("PARTIALS.names must be a list of strings")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ProtocolError("PARTIALS.count must be a non-negative integer")
        if not isinstance(through, int) or isinstance(through, bool) or not -(2**63) <= through < 2**63:
            raise ProtocolError("PARTIALS.through must be an int64")
        if not isinstance(contributors, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31
            for k, v in contributors.items()
        ):
            raise ProtocolError("PARTIALS.contributors must map names to non-negative integers")
        if len(extra) != 1:
            raise ProtocolError(f"PARTIALS carries 1 payload frame, got {len(extra)}")
        nbytes = memoryview(extra[0]).nbytes
        if nbytes != count * ROW.itemsize:
            raise ProtocolError(f"PARTIALS rows have {nbytes} bytes, expected {count} x {ROW.itemsize}")
        rows = np.frombuffer(extra[0], dtype=ROW)
        cols = {name: rows[name] for name, _ in COLUMNS}
        if count and int(cols["key"].max()) >= len(names):
            raise ProtocolError("PARTIALS.key refers past the end of names")
        if count and int(cols["count"].min()) < 1:
            raise ProtocolError("PARTIALS.count must be >= 1 in every row")
        native = {name: np.ascontiguousarray(col, dtype=col.dtype.newbyteorder("=")) for name, col in cols.items()}
        native["key"] = native["key"].astype(np.int64)
        native["arrived"] = np.zeros(count)  # the receiver's clock: set when it takes the rows
        return cls(names, through, dict(contributors), Partials(**native), ranks, dict(reductions))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PartialBatch):
            return NotImplemented
        return (
            list(self.names) == list(other.names)
            and (self.through, self.contributors, self.ranks, self.reductions)
            == (other.through, other.contributors, other.ranks, other.reductions)
            and all(
                np.array_equal(getattr(self.partials, name), getattr(other.partials, name), equal_nan=dtype[1] == "f")
                for name, dtype in COLUMNS
            )
        )

    __hash__ = None  # type: ignore[assignment]


protocol.MESSAGE_TYPES[MsgType.PARTIALS] = PartialBatch
protocol._install_checks()  # field checks of the body keys, as for the protocol's own types
