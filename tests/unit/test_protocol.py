"""Tests of the wire protocol: round trips of every message type, golden bytes, and decoding errors."""

from __future__ import annotations

import struct
from dataclasses import MISSING, fields, replace
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simvue_hpc import protocol as p
from simvue_hpc.aggregator.accumulate import accumulate
from simvue_hpc.errors import ProtocolError, ProtocolVersionError, SimvueHPCError
from simvue_hpc.protocol import (
    HEADER_SIZE,
    MAGIC,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    MsgType,
    decode,
    decode_header,
    encode,
)
from simvue_hpc.relay.wire import PartialBatch

I64 = (-(2**63), 2**63 - 1)
U64_MAX = 2**64 - 1
T0 = 1_700_000_000_000_000_000

# --------------------------------------------------------------------------------------------- strategies
text = st.text(max_size=40)  # any unicode (hypothesis leaves out lone surrogates, which msgpack cannot encode)
ints = st.integers(min_value=I64[0], max_value=U64_MAX)  # every int msgpack encodes
small_ints = st.integers(min_value=-(2**40), max_value=2**40)
scalars = st.none() | st.booleans() | ints | st.floats(allow_nan=False) | text | st.binary(max_size=20)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
metadata = st.dictionaries(text, values, max_size=5)
tags = st.lists(text, max_size=4)
reductions = st.dictionaries(
    text, st.lists(st.sampled_from(["mean", "min", "max", "sum", "std", "count", "per_rank"]), max_size=3), max_size=3
)


@st.composite
def metric_batches(draw: st.DrawFn, max_points: int = 200) -> p.MetricBatch:
    names = draw(st.lists(text, min_size=1, max_size=6))
    n = draw(st.integers(0, max_points))
    ids = draw(st.lists(st.integers(0, len(names) - 1), min_size=n, max_size=n))
    steps = draw(st.lists(st.integers(*I64), min_size=n, max_size=n))
    times = draw(st.lists(st.integers(*I64), min_size=n, max_size=n))
    vals = draw(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=n, max_size=n))
    return p.MetricBatch(
        names,
        np.array(ids, dtype=np.uint32),
        np.array(steps, dtype=np.int64),
        np.array(times, dtype=np.int64),
        np.array(vals, dtype=np.float64),
    )


@st.composite
def partial_batches(draw: st.DrawFn) -> PartialBatch:
    """A relay's accumulators of random points (the same columns a relay sends)."""
    batch = draw(metric_batches(max_points=60))
    partials = accumulate(batch.name_id.astype(np.int64), batch.step, batch.time_ns, batch.value)
    contributors = draw(st.dictionaries(st.sampled_from(batch.names), st.integers(0, 2**31 - 1), max_size=3))
    ranks = draw(st.integers(0, 2**31 - 1))
    return PartialBatch(batch.names, draw(st.integers(*I64)), contributors, partials, ranks, draw(reductions))


MESSAGES: dict[type[p.Message], st.SearchStrategy[Any]] = {
    PartialBatch: partial_batches(),
    p.Hello: st.builds(
        p.Hello,
        secret=text,
        rank=small_ints,
        size=small_ints,
        host=text,
        pid=small_ints,
        client=text,
        reductions=reductions,
        resend=st.booleans(),
        resume=st.booleans(),
        acked_points=st.integers(0, 2**62),
    ),
    p.Welcome: st.builds(p.Welcome, rank=ints, run_id=text, run_name=text),
    p.Reject: st.builds(p.Reject, reason=text),
    p.MetricBatch: metric_batches(),
    p.Event: st.builds(p.Event, message=text, time_ns=ints, level=text),
    p.RunUpdate: st.builds(
        p.RunUpdate,
        name=st.none() | text,
        metadata=st.none() | metadata,
        tags=st.none() | tags,
        description=st.none() | text,
        folder=st.none() | text,
    ),
    p.FolderDetails: st.builds(
        p.FolderDetails, path=text, metadata=st.none() | metadata, tags=st.none() | tags, description=st.none() | text
    ),
    p.AlertDefinition: st.builds(p.AlertDefinition, definition=metadata),
    p.FileOffer: st.builds(
        p.FileOffer, sha256=text, size=ints, name=text, category=text, original_path=text, mime_type=text, time_ns=ints
    ),
    p.FileChunk: st.builds(p.FileChunk, sha256=text, offset=ints, final=st.booleans(), data=st.binary(max_size=300)),
    p.FileReply: st.builds(p.FileReply, sha256=text, status=st.sampled_from(["need", "stored", "error"]), reason=text),
    p.Status: st.builds(p.Status, status=text, reason=text),
    p.Heartbeat: st.builds(p.Heartbeat, time_ns=ints, sent_points=ints, dropped_points=ints),
    p.Goodbye: st.builds(
        p.Goodbye, sent_points=ints, dropped_points=ints, dropped=st.dictionaries(text, ints, max_size=4)
    ),
    p.GoodbyeAck: st.builds(p.GoodbyeAck, received_points=ints),
    p.Notice: st.builds(p.Notice, kind=st.sampled_from(["warning", "abort"]), message=text),
    p.AlertState: st.builds(p.AlertState, name=text, state=st.sampled_from(["ok", "critical"])),
    p.Resources: st.builds(
        p.Resources,
        time_ns=ints,
        cpu_percent=st.floats(0, 1e4),
        memory_mb=st.floats(0, 1e7),
        gpus=st.lists(
            st.tuples(st.integers(0, 7).map(float), st.floats(0, 100), st.floats(0, 100)).map(list), max_size=4
        ),
    ),
    p.Ack: st.builds(p.Ack, seq=st.integers(0, 2**32 - 1)),
}
any_message = st.one_of(*MESSAGES.values())
seqs = st.integers(min_value=0, max_value=2**32 - 1)


def as_bytes(frames: list[Any]) -> list[bytes]:
    return [bytes(f) for f in frames]


def as_views(frames: list[Any]) -> list[memoryview]:
    return [memoryview(bytes(f)) for f in frames]


def body_of(msg: p.Message) -> dict[str, Any]:
    return msgpack.unpackb(as_bytes(encode(msg, 0))[1], raw=False)


def frames_with_body(msg: p.Message, body: Any, seq: int = 0) -> list[bytes]:
    frames = as_bytes(encode(msg, seq))
    frames[1] = msgpack.packb(body, use_bin_type=True)
    return frames


def header(mtype: int, seq: int = 0, version: int = PROTOCOL_VERSION, magic: bytes = MAGIC) -> bytes:
    return struct.pack("<2sBBI", magic, version, mtype, seq)


# --------------------------------------------------------------------------------------------- round trips
def test_every_message_type_has_a_strategy() -> None:
    assert set(MESSAGES) == set(MESSAGE_TYPES.values())
    assert {cls.TYPE for cls in MESSAGES} == set(MsgType)


@pytest.mark.parametrize("cls", list(MESSAGES), ids=lambda c: c.__name__)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seq=seqs)
def test_round_trip(cls: type[p.Message], data: st.DataObject, seq: int) -> None:
    msg = data.draw(MESSAGES[cls])
    frames = encode(msg, seq)
    assert memoryview(frames[0]).nbytes == HEADER_SIZE
    for variant in (frames, as_bytes(frames), as_views(frames)):
        got_seq, got = decode(variant)
        assert got_seq == seq
        assert type(got) is cls
        assert got == msg


@settings(max_examples=40, deadline=None)
@given(msg=any_message, seq=st.integers(min_value=-(2**40), max_value=2**40))
def test_sequence_wraps_at_2_32(msg: p.Message, seq: int) -> None:
    got_seq, _ = decode(encode(msg, seq))
    assert got_seq == seq % 2**32


@pytest.mark.parametrize(("seq", "expected"), [(2**32 - 1, 2**32 - 1), (2**32, 0), (2**32 + 5, 5), (-1, 2**32 - 1)])
def test_sequence_wraparound_edges(seq: int, expected: int) -> None:
    assert decode(encode(p.Reject("x"), seq))[0] == expected
    assert decode_header(encode(p.Reject("x"), seq)[0]) == (expected, MsgType.REJECT)


def test_metric_batch_empty() -> None:
    empty = p.MetricBatch(
        [], np.empty(0, np.uint32), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64)
    )
    frames = encode(empty, 0)
    assert len(frames) == 6
    assert [memoryview(f).nbytes for f in frames[2:]] == [0, 0, 0, 0]
    _, got = decode(as_views(frames))
    assert got == empty
    assert len(got.value) == 0


def test_metric_batch_large_with_special_values() -> None:
    n = 200_000
    rng = np.random.default_rng(1)
    names = ["loss", "λ/ünï", "a b:c", "🚀"]
    value = rng.standard_normal(n)
    value[::7] = np.nan
    value[1::11] = np.inf
    value[2::13] = -np.inf
    value[3::17] = -0.0
    value[4] = np.finfo(np.float64).tiny / 4  # subnormal
    batch = p.MetricBatch(
        names,
        rng.integers(0, len(names), n).astype(np.uint32),
        np.arange(n, dtype=np.int64) + I64[1] - n,
        rng.integers(I64[0], I64[1], n, dtype=np.int64),
        value,
    )
    frames = encode(batch, 9)
    assert [memoryview(f).nbytes for f in frames[2:]] == [4 * n, 8 * n, 8 * n, 8 * n]
    for variant in (frames, as_bytes(frames), as_views(frames)):
        _, got = decode(variant)
        assert isinstance(got, p.MetricBatch)
        assert got == batch
        # bit for bit, so the sign of -0.0 and the NaN payloads survive
        assert got.value.view(np.uint64).tolist() == batch.value.view(np.uint64).tolist()
        assert got.name_id.dtype == np.dtype("<u4") and got.step.dtype == np.dtype("<i8")
        assert got.time_ns.dtype == np.dtype("<i8") and got.value.dtype == np.dtype("<f8")


def test_metric_batch_encodes_other_dtypes_as_the_wire_dtypes() -> None:
    batch = p.MetricBatch(
        ["a"], np.array([0, 0], np.int64), np.array([1, 2], np.int32), np.array([5, 6], np.uint64),
        np.array([1.5, 2.5], np.float32),
    )  # fmt: skip
    frames = as_bytes(encode(batch, 0))
    assert frames[2] == b"\x00" * 8
    assert frames[3] == struct.pack("<qq", 1, 2)
    assert frames[4] == struct.pack("<qq", 5, 6)
    assert frames[5] == struct.pack("<dd", 1.5, 2.5)
    assert decode(frames)[1] == batch


def test_metric_batch_big_endian_input_is_sent_little_endian() -> None:
    batch = p.MetricBatch(
        ["a"], np.array([0], ">u4"), np.array([258], ">i8"), np.array([T0], ">i8"), np.array([0.5], ">f8")
    )
    frames = as_bytes(encode(batch, 0))
    assert frames[3] == struct.pack("<q", 258)
    assert frames[5] == struct.pack("<d", 0.5)


def test_unknown_body_keys_are_ignored() -> None:
    frames = frames_with_body(p.Reject("x"), {"reason": "full", "new_optional_field": [1, 2]})
    assert decode(frames)[1] == p.Reject("full")
    frames = frames_with_body(p.Heartbeat(0, 0, 0), {"zzz": 1, "dropped_points": 2, "sent_points": 3, "time_ns": 4})
    assert decode(frames)[1] == p.Heartbeat(time_ns=4, sent_points=3, dropped_points=2)


def test_optional_fields_take_their_defaults() -> None:
    assert decode(frames_with_body(p.Event("m", 1), {"message": "m", "time_ns": 1}))[1] == p.Event("m", 1, "info")
    assert decode(frames_with_body(p.Hello("s", 0, 1, "h", 1, "c"), {
        "secret": "s", "rank": 0, "size": 1, "host": "h", "pid": 1, "client": "c",
    }))[1] == p.Hello("s", 0, 1, "h", 1, "c", {})  # fmt: skip
    assert decode(frames_with_body(p.RunUpdate(), {}))[1] == p.RunUpdate()
    assert decode(frames_with_body(p.Goodbye(1, 2), {"sent_points": 1, "dropped_points": 2}))[1] == p.Goodbye(1, 2, {})


def test_float_values_in_maps_stay_float64() -> None:
    value = 0.1 + 0.2  # not representable in float32
    _, got = decode(encode(p.RunUpdate(metadata={"x": value}), 0))
    assert isinstance(got, p.RunUpdate) and got.metadata == {"x": value}


# --------------------------------------------------------------------------------------------- golden bytes
GOLDEN: list[tuple[p.Message, int, list[str]]] = [
    (p.Reject("no"), 3, ["5356010303000000", "81a6726561736f6ea26e6f"]),
    (p.GoodbyeAck(300), 2**32 - 1, ["5356010fffffffff", "81af72656365697665645f706f696e7473cd012c"]),
    (
        p.Heartbeat(time_ns=T0, sent_points=70000, dropped_points=0),
        7,
        [
            "5356010d07000000",
            "83a774696d655f6e73cf17979cfe362a0000ab73656e745f706f696e7473ce00011170ae64726f707065645f706f696e747300",
        ],
    ),
    (
        p.Hello(secret="k", rank=-1, size=4, host="n1", pid=4242, client="c", reductions={"x": ["sum"]}),
        0,
        [
            "5356010100000000",
            "87a6736563726574a16ba472616e6bffa473697a6504a4686f7374a26e31a3706964cd1092a6636c69656e74a163"
            "aa726564756374696f6e7381a17891a373756d",
        ],
    ),
    (
        p.FileChunk("ab", 0, True, b"\x00\x01"),
        5,
        ["5356010a05000000", "83a6736861323536a26162a66f666673657400a566696e616cc3", "0001"],
    ),
    (
        p.RunUpdate(name="é", metadata={"lr": 0.5, "ok": True, "n": None, "neg": -200, "b": b"\xff"}),
        1,
        [
            "5356010601000000",
            "85a46e616d65a2c3a9a86d6574616461746185a26c72cb3fe0000000000000a26f6bc3a16ec0a36e6567d1ff38a162c401ff"
            "a474616773c0ab6465736372697074696f6ec0a6666f6c646572c0",
        ],
    ),
    (
        p.MetricBatch(["loss"], np.array([0], np.uint32), np.array([3]), np.array([T0]), np.array([0.5])),
        1,
        [
            "5356010401000000",
            "82a56e616d657391a46c6f7373a5636f756e7401",
            "00000000",
            "0300000000000000",
            "00002a36fe9c9717",
            "000000000000e03f",
        ],
    ),
    (
        p.MetricBatch(
            ["loss", "acc"], np.array([0, 1], np.uint32), np.array([7, 7]), np.array([T0, T0]), np.array([0.25, -1.0])
        ),
        2,
        [
            "5356010402000000",
            "82a56e616d657392a46c6f7373a3616363a5636f756e7402",
            "0000000001000000",
            "07000000000000000700000000000000",
            "00002a36fe9c971700002a36fe9c9717",
            "000000000000d03f000000000000f0bf",
        ],
    ),
]


@pytest.mark.parametrize(("msg", "seq", "expected"), GOLDEN, ids=lambda x: type(x).__name__)
def test_golden_frames(msg: p.Message, seq: int, expected: list[str]) -> None:
    assert [bytes(f).hex() for f in encode(msg, seq)] == expected
    assert decode([bytes.fromhex(h) for h in expected]) == (seq, msg)


def test_golden_msgpack_choices() -> None:
    """The encoder's choices that a C encoder must copy (docs/protocol.md)."""

    def enc(value: Any) -> str:
        return msgpack.packb(value, use_bin_type=True).hex()

    assert enc(127) == "7f"
    assert enc(128) == "cc80"
    assert enc(2**16) == "ce00010000"
    assert enc(-32) == "e0"
    assert enc(-33) == "d0df"
    assert enc(-129) == "d1ff7f"
    assert enc(2**63) == "cf8000000000000000"
    assert enc(1.0) == "cb3ff0000000000000"
    assert enc("a" * 31)[:2] == "bf"
    assert enc("a" * 32)[:4] == "d920"
    assert enc("a" * 256)[:6] == "da0100"
    assert enc(b"ab") == "c4026162"
    assert enc([None, True, False]) == "93c0c3c2"
    assert enc(list(range(16)))[:6] == "dc0010"
    assert enc({str(i): 0 for i in range(16)})[:6] == "de0010"


def test_header_layout() -> None:
    frames = as_bytes(encode(p.Notice("warning", "m"), 0x01020304))
    assert frames[0] == b"SV\x01\x10\x04\x03\x02\x01"
    assert len(frames) == 2


# --------------------------------------------------------------------------------------------- header errors
def test_wrong_magic() -> None:
    frames = as_bytes(encode(p.Reject("x"), 0))
    with pytest.raises(ProtocolError, match="magic") as info:
        decode([header(MsgType.REJECT, magic=b"SX"), frames[1]])
    assert not isinstance(info.value, ProtocolVersionError)


@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION + 1, 255])
def test_wrong_version(version: int) -> None:
    frames = as_bytes(encode(p.Reject("x"), 0))
    with pytest.raises(ProtocolVersionError):
        decode([header(MsgType.REJECT, version=version), frames[1]])
    with pytest.raises(ProtocolVersionError):  # even for a type this side does not know
        decode([header(200, version=version), frames[1]])


@pytest.mark.parametrize("size", [0, 1, 7, 9, 16])
def test_header_of_wrong_size(size: int) -> None:
    full = header(MsgType.REJECT) + b"\x00" * 8
    body = as_bytes(encode(p.Reject("x"), 0))[1]
    with pytest.raises(ProtocolError, match="header"):
        decode([full[:size], body])
    with pytest.raises(ProtocolError, match="header"):
        decode([memoryview(full[:size]), body])


@pytest.mark.parametrize("count", [0, 1])
def test_too_few_frames(count: int) -> None:
    with pytest.raises(ProtocolError, match="at least 2 frames"):
        decode(as_bytes(encode(p.Reject("x"), 0))[:count])


@pytest.mark.parametrize("mtype", [0, len(MsgType) + 1, 100, 255])
def test_unknown_message_type(mtype: int) -> None:
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode([header(mtype), msgpack.packb({})])


# --------------------------------------------------------------------------------------------- body errors
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",  # the byte msgpack never uses
        b"\x81\xa6reason",  # truncated map
        b"\x81\xa6reason\xa2no\x80",  # extra data after the map
        b"\x81\xa6reason\xa2\xff\xfe",  # invalid UTF-8 in a str
        b"\x81\x01\xa2no",  # integer map key
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 billion items
    ],
)
def test_bad_msgpack(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode([header(MsgType.REJECT), body])


@pytest.mark.parametrize("body", [[], ["reason", "x"], 5, "reason", None, b"\x81", True, 1.5])
def test_body_not_a_map(body: Any) -> None:
    with pytest.raises(ProtocolError, match="must be a map"):
        decode([header(MsgType.REJECT), msgpack.packb(body, use_bin_type=True)])


def _sample(cls: type[p.Message]) -> p.Message:
    return {
        p.Hello: p.Hello("s", 0, 2, "h", 1, "c", {"x": ["sum"]}),
        p.Welcome: p.Welcome(0, "id", "name"),
        p.Reject: p.Reject("r"),
        p.Event: p.Event("m", 5, "warning"),
        p.RunUpdate: p.RunUpdate("n", {"a": 1}, ["t"], "d", "/f"),
        p.FolderDetails: p.FolderDetails("/f", {"a": 1}, ["t"], "d"),
        p.AlertDefinition: p.AlertDefinition({"name": "a"}),
        p.FileOffer: p.FileOffer("ab", 3, "f.txt", "output", "/tmp/f.txt", "text/plain", 7),
        p.FileChunk: p.FileChunk("ab", 0, True, b"xyz"),
        p.FileReply: p.FileReply("ab", "error", "why"),
        p.Status: p.Status("failed", "boom"),
        p.Heartbeat: p.Heartbeat(1, 2, 3),
        p.Goodbye: p.Goodbye(1, 2, {"a": 2}),
        p.GoodbyeAck: p.GoodbyeAck(1),
        p.Notice: p.Notice("abort", "stop"),
        p.AlertState: p.AlertState("manual", "critical"),
        p.Resources: p.Resources(1, 12.5, 300.0, [[0.0, 80.0, 40.0]]),
        p.Ack: p.Ack(3),
    }[cls]


FIELDED = [cls for cls in MESSAGES if cls not in (p.MetricBatch, PartialBatch)]
REQUIRED = [
    (cls, f.name)
    for cls in FIELDED
    for f in fields(cls)  # type: ignore[arg-type]
    if f.default is MISSING and f.default_factory is MISSING and not (cls is p.FileChunk and f.name == "data")
]


@pytest.mark.parametrize(("cls", "name"), REQUIRED, ids=lambda x: getattr(x, "__name__", x))
def test_missing_required_field(cls: type[p.Message], name: str) -> None:
    msg = _sample(cls)
    body = body_of(msg)
    del body[name]
    with pytest.raises(ProtocolError, match=f"lacks field.*{name}"):
        decode(frames_with_body(msg, body))


# Wrong values per declared type: the first of each list is always wrong for that type.
WRONG: dict[str, list[Any]] = {
    "int": [True, False, "1", 1.0, None, [1], b"1"],
    "str": [1, None, b"s", ["s"], True],
    "bool": [1, 0, "true", None],
    "dict[str, Any]": [[], "x", 1, {b"k": 1}],
    "dict[str, Any] | None": [[], "x", 1, {b"k": 1}],
    "list[str] | None": ["t", [1], [None], [b"t"], {"t": 1}],
    "str | None": [1, b"x", False],
    "dict[str, list[str]]": [[], {"x": "sum"}, {"x": 5}, {"x": [1]}, {b"x": ["sum"]}, {"x": None}],
    "dict[str, int]": [[], {"a": "1"}, {"a": True}, {b"a": 1}, {"a": 1.5}, {"a": None}],
    "float": [True, "1.5", None, [1.0], b"1"],
    "list[list[float]]": [[1.0], [["1"]], [[True]], "x", [[None]], {"a": [1.0]}],
}


def _wrong_cases() -> list[tuple[type[p.Message], str, Any]]:
    cases = []
    for cls in FIELDED:
        for name, _, expected in cls._checks:
            if cls is p.FileChunk and name == "data":
                continue  # the bytes travel in their own frame
            cases.extend((cls, name, bad) for bad in WRONG[expected])
    return cases


@pytest.mark.parametrize(("cls", "name", "bad"), _wrong_cases(), ids=repr)
def test_wrong_field_type(cls: type[p.Message], name: str, bad: Any) -> None:
    msg = _sample(cls)
    body = body_of(msg)
    body[name] = bad
    with pytest.raises(ProtocolError, match=f"{cls.TYPE.name}.{name} has type"):
        decode(frames_with_body(msg, body))


def test_float_values_anywhere_inside_any_are_accepted() -> None:
    msg = p.AlertDefinition({"threshold": 1.5, "nested": {"x": [1, 2.5, None, True]}})
    assert decode(encode(msg, 0))[1] == msg


@pytest.mark.parametrize("cls", FIELDED, ids=lambda c: c.__name__)
def test_payload_frames_count(cls: type[p.Message]) -> None:
    frames = as_bytes(encode(_sample(cls), 0))
    if cls is p.FileChunk:
        for bad in (frames[:2], [*frames, b"more"]):
            with pytest.raises(ProtocolError, match="1 payload frame"):
                decode(bad)
    else:
        assert len(frames) == 2
        with pytest.raises(ProtocolError, match="no payload frames"):
            decode([*frames, b""])


def test_file_chunk_data_comes_from_its_frame() -> None:
    frames = as_bytes(encode(p.FileChunk("ab", 10, False, b"hello"), 0))
    frames[1] = msgpack.packb({"sha256": "ab", "offset": 10, "final": False, "data": b"ignored"})
    assert decode(frames)[1] == p.FileChunk("ab", 10, False, b"hello")


# --------------------------------------------------------------------------------------------- METRICS errors
def _two_points() -> list[bytes]:
    batch = p.MetricBatch(
        ["a", "b"], np.array([0, 1], np.uint32), np.array([1, 2]), np.array([T0, T0]), np.array([0.5, 1.5])
    )
    return as_bytes(encode(batch, 0))


@pytest.mark.parametrize("column", [0, 1, 2, 3])
@pytest.mark.parametrize("delta", [-1, 1, -4, 8])
def test_metrics_wrong_frame_size(column: int, delta: int) -> None:
    frames = _two_points()
    frame = frames[2 + column]
    frames[2 + column] = frame[:delta] if delta < 0 else frame + b"\x00" * delta
    with pytest.raises(ProtocolError, match="bytes, expected"):
        decode(frames)


@pytest.mark.parametrize("count", [0, 1, 3])
def test_metrics_count_disagrees_with_frames(count: int) -> None:
    frames = _two_points()
    frames[1] = msgpack.packb({"names": ["a", "b"], "count": count})
    with pytest.raises(ProtocolError, match="bytes, expected"):
        decode(frames)


@pytest.mark.parametrize("n_extra", [0, 1, 2, 3, 5, 6])
def test_metrics_wrong_number_of_frames(n_extra: int) -> None:
    frames = _two_points()
    frames = frames[: 2 + n_extra] if n_extra <= 4 else frames + [b""] * (n_extra - 4)
    with pytest.raises(ProtocolError, match="4 payload frames"):
        decode(frames)


@pytest.mark.parametrize("bad_id", [2, 3, 2**32 - 1])
def test_metrics_name_id_past_names(bad_id: int) -> None:
    frames = _two_points()
    frames[2] = struct.pack("<II", 0, bad_id)
    with pytest.raises(ProtocolError, match="past the end of names"):
        decode(frames)


def test_metrics_name_id_with_no_names() -> None:
    frames = _two_points()
    frames[1] = msgpack.packb({"names": [], "count": 2})
    with pytest.raises(ProtocolError, match="past the end of names"):
        decode(frames)


@pytest.mark.parametrize(
    "body",
    [
        {"names": ["a", "b"]},
        {"count": 2},
        {"names": "ab", "count": 2},
        {"names": ["a", 1], "count": 2},
        {"names": ["a", b"b"], "count": 2},
        {"names": None, "count": 2},
        {"names": ["a", "b"], "count": True},
        {"names": ["a", "b"], "count": -2},
        {"names": ["a", "b"], "count": "2"},
        {"names": ["a", "b"], "count": 2.0},
    ],
)
def test_metrics_bad_body(body: dict[str, Any]) -> None:
    frames = _two_points()
    frames[1] = msgpack.packb(body, use_bin_type=True)
    with pytest.raises(ProtocolError, match="METRICS"):
        decode(frames)


# --------------------------------------------------------------------------------------------- fuzzing
def _only_protocol_errors(frames: list[Any]) -> None:
    try:
        decode(frames)
    except ProtocolError:
        pass
    except Exception as exc:  # pragma: no cover - the failure message
        raise AssertionError(f"decode raised {type(exc).__name__}: {exc}") from exc


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=7))
def test_fuzz_random_frames(frames: list[bytes]) -> None:
    _only_protocol_errors(frames)
    _only_protocol_errors([memoryview(f) for f in frames])


@settings(max_examples=300, deadline=None)
@given(
    mtype=st.integers(0, 255), seq=seqs, body=st.binary(max_size=60), extra=st.lists(st.binary(max_size=24), max_size=5)
)
def test_fuzz_valid_header_random_rest(mtype: int, seq: int, body: bytes, extra: list[bytes]) -> None:
    _only_protocol_errors([header(mtype, seq), body, *extra])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cls=st.sampled_from(list(MESSAGES)),
    data=st.data(),
    extra=st.lists(st.binary(max_size=24), max_size=5),
)
def test_fuzz_well_formed_maps_with_random_values(
    cls: type[p.Message], data: st.DataObject, extra: list[bytes]
) -> None:
    """Bodies with the right keys but any values reach the field checks: still only ProtocolError."""
    keys = [name for name, _, _ in cls._checks] + (["count"] if cls in (p.MetricBatch, PartialBatch) else [])
    body = data.draw(st.dictionaries(st.sampled_from(keys) | text, values, max_size=len(keys) + 1))
    frames = [header(cls.TYPE), msgpack.packb(body, use_bin_type=True), *extra]
    try:
        _, msg = decode(frames)
    except ProtocolError:
        return
    # whatever decodes must encode again and round-trip
    assert decode(encode(msg, 0))[1] == msg


@settings(max_examples=100, deadline=None)
@given(msg=any_message, data=st.data())
def test_fuzz_corrupted_valid_messages(msg: p.Message, data: st.DataObject) -> None:
    frames = as_bytes(encode(msg, 0))
    i = data.draw(st.integers(0, len(frames) - 1))
    frame = bytearray(frames[i])
    if frame:
        pos = data.draw(st.integers(0, len(frame) - 1))
        frame[pos] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(frame)))
        frames[i] = bytes(frame[:cut])
    _only_protocol_errors(frames)


def test_protocol_errors_are_simvue_errors() -> None:
    assert issubclass(ProtocolError, SimvueHPCError)
    assert issubclass(ProtocolVersionError, ProtocolError)


def test_messages_are_frozen() -> None:
    msg = p.Reject("x")
    with pytest.raises(AttributeError):
        msg.reason = "y"  # type: ignore[misc]
    assert replace(msg, reason="y") == p.Reject("y")
