"""The wire protocol between ranks and the aggregator: messages <-> lists of frames.

Pure: this module never imports zmq; the transport only moves the frames it produces. The normative
specification, precise enough for the C client, is ``docs/protocol.md``; in short, every message is
one multipart ZeroMQ message of

* frame 0, the 8-byte header: ``b"SV"``, protocol version (u8), message type (u8), sequence (u32 LE);
* frame 1, the body: a msgpack map whose keys are the message's fields, in the order declared below;
* frames 2.., raw little-endian payloads (metric columns, file bytes) for the types that carry them.

The sequence number counts the sender's messages on one connection from 0 (the HELLO), so the
aggregator can prove that nothing was lost between a rank and itself.
"""

from __future__ import annotations

import struct
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from enum import IntEnum
from typing import Any, ClassVar, Union

import msgpack
import numpy as np

from .errors import ProtocolError, ProtocolVersionError

PROTOCOL_VERSION = 1
MAGIC = b"SV"
_HEADER = struct.Struct("<2sBBI")
HEADER_SIZE = _HEADER.size  # 8

NAME_ID_DTYPE = np.dtype("<u4")
STEP_DTYPE = np.dtype("<i8")
TIME_DTYPE = np.dtype("<i8")  # nanoseconds since the Unix epoch, UTC
VALUE_DTYPE = np.dtype("<f8")
_METRIC_COLUMNS: tuple[tuple[str, np.dtype[Any]], ...] = (
    ("name_id", NAME_ID_DTYPE),
    ("step", STEP_DTYPE),
    ("time_ns", TIME_DTYPE),
    ("value", VALUE_DTYPE),
)

Buffer = bytes | bytearray | memoryview


class MsgType(IntEnum):
    """Message type codes (header byte 3)."""

    HELLO = 1
    WELCOME = 2
    REJECT = 3
    METRICS = 4
    EVENT = 5
    RUN_UPDATE = 6
    FOLDER = 7
    ALERT = 8
    FILE_OFFER = 9
    FILE_CHUNK = 10
    FILE_REPLY = 11
    STATUS = 12
    HEARTBEAT = 13
    GOODBYE = 14
    GOODBYE_ACK = 15
    NOTICE = 16
    ALERT_STATE = 17
    RESOURCES = 18
    PARTIALS = 19  # relay -> aggregator; the message class is simvue_hpc.relay.wire.PartialBatch


class Message:
    """Base of all messages; subclasses are frozen dataclasses whose fields are the body's keys."""

    TYPE: ClassVar[MsgType]
    _checks: ClassVar[tuple[tuple[str, Callable[[Any], bool], str], ...]] = ()

    def body(self) -> dict[str, Any]:
        """The msgpack body, keys in declaration order (the order C encoders must follow)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def payload_frames(self) -> list[Buffer]:
        """Raw frames after the body; none for most types."""
        return []

    @classmethod
    def from_frames(cls, body: dict[str, Any], extra: Sequence[Buffer]) -> Message:
        if extra:
            raise ProtocolError(f"{cls.TYPE.name} carries no payload frames, got {len(extra)}")
        return cls(**_checked(cls, body))


# ---------------------------------------------------------------------------------------------- handshake
@dataclass(frozen=True, slots=True)
class Hello(Message):
    """First message of every rank: who it is and the run's secret. ``rank=-1`` asks to be given one."""

    TYPE = MsgType.HELLO
    secret: str
    rank: int
    size: int
    host: str
    pid: int
    client: str
    reductions: dict[str, list[str]] = field(default_factory=dict)
    start_time: int = 0  # the process's start, clock ticks since boot (/proc/<pid>/stat field 22); 0: unknown
    pid_ns: int = 0  # the inode of the process's pid namespace (/proc/self/ns/pid); 0: unknown

    def body(self) -> dict[str, Any]:
        """As every message's, without ``start_time``/``pid_ns`` when unknown (0): a client that
        does not know them sends the HELLO it always sent."""
        out = Message.body(self)
        for key in ("start_time", "pid_ns"):
            if not out[key]:
                del out[key]
        return out


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """The aggregator accepts a rank; ``rank`` is the one it will be known by. ``flush_interval``
    (seconds, 0 = the rank's own default) is the shortest interval at which the rank may send METRICS:
    the aggregator's share of its message-rate budget."""

    TYPE = MsgType.WELCOME
    rank: int
    run_id: str
    run_name: str
    flush_interval: float = 0.0


@dataclass(frozen=True, slots=True)
class Reject(Message):
    """The aggregator refuses a rank (wrong secret, protocol version, run already closed)."""

    TYPE = MsgType.REJECT
    reason: str


# ---------------------------------------------------------------------------------------------- data
@dataclass(frozen=True, slots=True, eq=False)
class MetricBatch(Message):
    """Points of one rank as four equal-length columns; ``name_id`` indexes ``names``."""

    TYPE = MsgType.METRICS
    names: list[str]
    name_id: np.ndarray
    step: np.ndarray
    time_ns: np.ndarray
    value: np.ndarray

    def body(self) -> dict[str, Any]:
        return {"names": list(self.names), "count": len(self.value)}

    def payload_frames(self) -> list[Buffer]:
        return [
            _le_bytes(self.name_id, NAME_ID_DTYPE),
            _le_bytes(self.step, STEP_DTYPE),
            _le_bytes(self.time_ns, TIME_DTYPE),
            _le_bytes(self.value, VALUE_DTYPE),
        ]

    @classmethod
    def from_frames(cls, body: dict[str, Any], extra: Sequence[Buffer]) -> MetricBatch:
        names = body.get("names")
        count = body.get("count")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ProtocolError("METRICS.names must be a list of strings")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ProtocolError("METRICS.count must be a non-negative integer")
        if len(extra) != 4:
            raise ProtocolError(f"METRICS carries 4 payload frames, got {len(extra)}")
        cols = []
        for frame, (label, dtype) in zip(extra, _METRIC_COLUMNS, strict=True):
            nbytes = memoryview(frame).nbytes
            if nbytes != count * dtype.itemsize:
                raise ProtocolError(f"METRICS.{label} has {nbytes} bytes, expected {count} x {dtype.itemsize}")
            cols.append(np.frombuffer(frame, dtype=dtype))
        if count and int(cols[0].max()) >= len(names):
            raise ProtocolError("METRICS.name_id refers past the end of names")
        return cls(names, cols[0], cols[1], cols[2], cols[3])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MetricBatch):
            return NotImplemented
        return (
            list(self.names) == list(other.names)
            and np.array_equal(self.name_id, other.name_id)
            and np.array_equal(self.step, other.step)
            and np.array_equal(self.time_ns, other.time_ns)
            and np.array_equal(self.value, other.value, equal_nan=True)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Event(Message):
    """A timestamped message from a rank; ``level`` is info, warning, error or critical."""

    TYPE = MsgType.EVENT
    message: str
    time_ns: int
    level: str = "info"


@dataclass(frozen=True, slots=True)
class RunUpdate(Message):
    """The run's definition from ``init``: only the keys given are applied (metadata merges)."""

    TYPE = MsgType.RUN_UPDATE
    name: str | None = None
    metadata: dict[str, Any] | None = None
    tags: list[str] | None = None
    description: str | None = None
    folder: str | None = None


@dataclass(frozen=True, slots=True)
class FolderDetails(Message):
    """Metadata, tags and description of a folder (``folder_details``)."""

    TYPE = MsgType.FOLDER
    path: str
    metadata: dict[str, Any] | None = None
    tags: list[str] | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class AlertDefinition(Message):
    """An alert definition, already validated by the rank that made it (see alerts.py)."""

    TYPE = MsgType.ALERT
    definition: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FileOffer(Message):
    """A rank offers a file by checksum; the aggregator answers with a FILE_REPLY."""

    TYPE = MsgType.FILE_OFFER
    sha256: str
    size: int
    name: str
    category: str
    original_path: str
    mime_type: str
    time_ns: int


@dataclass(frozen=True, slots=True)
class FileChunk(Message):
    """Bytes ``[offset, offset+len(data))`` of an offered file; ``final`` on the last one."""

    TYPE = MsgType.FILE_CHUNK
    sha256: str
    offset: int
    final: bool
    data: bytes = b""

    def body(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "offset": self.offset, "final": self.final}

    def payload_frames(self) -> list[Buffer]:
        return [self.data]

    @classmethod
    def from_frames(cls, body: dict[str, Any], extra: Sequence[Buffer]) -> FileChunk:
        if len(extra) != 1:
            raise ProtocolError(f"FILE_CHUNK carries 1 payload frame, got {len(extra)}")
        b = _checked(cls, body)
        return cls(b["sha256"], b["offset"], b["final"], bytes(extra[0]))


@dataclass(frozen=True, slots=True)
class FileReply(Message):
    """``need`` (send the bytes), ``stored`` (done, or already held) or ``error`` (with a reason)."""

    TYPE = MsgType.FILE_REPLY
    sha256: str
    status: str
    reason: str = ""


# ---------------------------------------------------------------------------------------------- lifecycle
@dataclass(frozen=True, slots=True)
class Status(Message):
    """A rank sets the run's status (``failed`` when it raised out of the context manager)."""

    TYPE = MsgType.STATUS
    status: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """Liveness and counters of a rank, sent every heartbeat interval."""

    TYPE = MsgType.HEARTBEAT
    time_ns: int
    sent_points: int
    dropped_points: int


@dataclass(frozen=True, slots=True)
class Goodbye(Message):
    """A rank's last message: what it sent and dropped in all; answered by GOODBYE_ACK."""

    TYPE = MsgType.GOODBYE
    sent_points: int
    dropped_points: int
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GoodbyeAck(Message):
    """The aggregator has read everything the rank sent before its GOODBYE."""

    TYPE = MsgType.GOODBYE_ACK
    received_points: int


@dataclass(frozen=True, slots=True)
class Notice(Message):
    """Aggregator to rank: ``kind`` is ``warning`` or ``abort``."""

    TYPE = MsgType.NOTICE
    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class AlertState(Message):
    """A rank sets the state of a user alert (``ok`` or ``critical``)."""

    TYPE = MsgType.ALERT_STATE
    name: str
    state: str


@dataclass(frozen=True, slots=True)
class Resources(Message):
    """A rank's own CPU and memory use, and its node's GPUs when it is the node's GPU reporter.

    ``gpus`` holds ``[index, utilisation %, memory %]`` per GPU."""

    TYPE = MsgType.RESOURCES
    time_ns: int
    cpu_percent: float
    memory_mb: float
    gpus: list[list[float]] = field(default_factory=list)


MESSAGE_TYPES: dict[MsgType, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello, Welcome, Reject, MetricBatch, Event, RunUpdate, FolderDetails, AlertDefinition,
        FileOffer, FileChunk, FileReply, Status, Heartbeat, Goodbye, GoodbyeAck, Notice, AlertState, Resources,
    )
}  # fmt: skip


# ---------------------------------------------------------------------------------------------- codec
def encode(msg: Message, seq: int) -> list[Buffer]:
    """Frames of ``msg`` as sequence number ``seq`` of its sender."""
    header = _HEADER.pack(MAGIC, PROTOCOL_VERSION, int(msg.TYPE), seq & 0xFFFFFFFF)
    body = msgpack.packb(msg.body(), use_bin_type=True)
    return [header, body, *msg.payload_frames()]


def decode(frames: Sequence[Buffer]) -> tuple[int, Message]:
    """``(seq, message)`` from frames; raises ProtocolError (or ProtocolVersionError) on anything else."""
    if len(frames) < 2:
        raise ProtocolError(f"a message has at least 2 frames, got {len(frames)}")
    seq, mtype = decode_header(frames[0])
    cls = MESSAGE_TYPES.get(mtype)  # type: ignore[call-overload]
    if cls is None:
        raise ProtocolError(f"unknown message type {mtype}")
    try:
        body = msgpack.unpackb(frames[1], raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"{cls.TYPE.name} body is not valid msgpack: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"{cls.TYPE.name} body must be a map")
    return seq, cls.from_frames(body, frames[2:])


def decode_header(frame: Buffer) -> tuple[int, int]:
    """``(seq, type code)`` from a header frame."""
    if memoryview(frame).nbytes != HEADER_SIZE:
        raise ProtocolError(f"header must be {HEADER_SIZE} bytes")
    magic, version, mtype, seq = _HEADER.unpack(frame)
    if magic != MAGIC:
        raise ProtocolError("bad magic: not a simvue_hpc message")
    if version != PROTOCOL_VERSION:
        raise ProtocolVersionError(f"protocol version {version}, this side speaks {PROTOCOL_VERSION}")
    return int(seq), int(mtype)


def _le_bytes(array: np.ndarray, dtype: np.dtype[Any]) -> memoryview:
    arr = np.ascontiguousarray(array, dtype=dtype)
    return memoryview(arr.view(np.uint8))  # type: ignore[arg-type]


# --- field checking: derived once from the dataclass annotations ---------------------------------------
Check = Callable[[Any], bool]


def _accept_any(value: Any) -> bool:
    return True


def _validator(hint: Any) -> Check:
    """A predicate that accepts exactly the decoded msgpack values of annotation ``hint``.

    Containers are checked element by element (``dict[str, list[str]]`` rejects ``{"x": 5}``), and a
    bool is never accepted where an int or float is declared, although Python counts it as one."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        options = tuple(_validator(arg) for arg in args)
        return lambda v: any(ok(v) for ok in options)
    if hint is Any:
        return _accept_any
    if hint is type(None):
        return lambda v: v is None
    if origin is list:
        item = _validator(args[0]) if args else _accept_any
        return lambda v: isinstance(v, list) and all(item(x) for x in v)
    if origin is dict:
        key = _validator(args[0]) if args else _accept_any
        val = _validator(args[1]) if args else _accept_any
        return lambda v: isinstance(v, dict) and all(key(k) and val(x) for k, x in v.items())
    if hint is bool:
        return lambda v: isinstance(v, bool)
    if hint is float:
        return lambda v: isinstance(v, (float, int)) and not isinstance(v, bool)
    runtime = origin if origin is not None else hint
    return lambda v: isinstance(v, runtime) and not isinstance(v, bool)


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _install_checks() -> None:
    for cls in MESSAGE_TYPES.values():
        hints = typing.get_type_hints(cls)
        cls._checks = tuple(
            (f.name, _validator(hints[f.name]), _type_name(hints[f.name]))
            for f in fields(cls)  # type: ignore[arg-type]
        )


def _checked(cls: type[Message], body: dict[str, Any]) -> dict[str, Any]:
    """Body restricted to the declared fields, each of its declared type; ProtocolError otherwise."""
    out: dict[str, Any] = {}
    for name, ok, expected in cls._checks:
        if name not in body:
            continue  # a missing field with no default fails below
        value = body[name]
        if not ok(value):
            raise ProtocolError(f"{cls.TYPE.name}.{name} has type {type(value).__name__}, expected {expected}")
        out[name] = value
    # Unknown keys are ignored, so a newer sender of the same version may add optional fields.
    required = {
        f.name
        for f in fields(cls)  # type: ignore[arg-type]
        if f.default is MISSING and f.default_factory is MISSING
    }
    missing = [n for n in required if n not in out]
    if missing:
        raise ProtocolError(f"{cls.TYPE.name} lacks field(s) {', '.join(sorted(missing))}")
    return out


_install_checks()
