"""Write the golden frames of the wire protocol: tests/data/golden/*.bin and index.json.

Each ``.bin`` holds the frames of one message as ``simvue_hpc.protocol.encode`` produces them:
a u32 LE frame count, then for each frame a u32 LE length and its bytes. ``index.json`` describes
the input of each (message type, sequence number, fields) so that another encoder (the C client's,
``c/tests/test_encoder.c``) can be checked against the same bytes, and ``tests/unit/test_golden_frames.py``
checks that the Python encoder still produces them. Neither side may drift.

In the index, METRICS values are given by their IEEE 754 bits (``value_bits``, 16 hex digits, so
NaN payloads and -0.0 are exact) next to a readable ``value``; FILE_CHUNK data as ``data_hex``.

Run ``python tests/data/make_golden.py`` after a deliberate change of the protocol, and review the diff.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np

from simvue_hpc import protocol as p
from simvue_hpc.protocol import MESSAGE_TYPES, PROTOCOL_VERSION, MsgType, encode

GOLDEN = Path(__file__).resolve().parent / "golden"
INDEX = GOLDEN / "index.json"
FORMAT = (
    "each .bin: u32 LE number of frames, then per frame a u32 LE length and the frame's bytes; "
    "the frames are simvue_hpc.protocol.encode(message, seq)"
)
T = 1_700_000_000_123_456_789  # a time_ns
SHA_HELLO = hashlib.sha256(b"hello\n").hexdigest()
RANK_TO_AGGREGATOR = {
    MsgType.HELLO, MsgType.METRICS, MsgType.EVENT, MsgType.RUN_UPDATE, MsgType.FOLDER, MsgType.ALERT,
    MsgType.FILE_OFFER, MsgType.FILE_CHUNK, MsgType.STATUS, MsgType.HEARTBEAT, MsgType.GOODBYE,
}  # fmt: skip


def f64(bits: int) -> float:
    """The double with these IEEE 754 bits."""
    return float(struct.unpack("<d", struct.pack("<Q", bits))[0])


def bits(value: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", value))[0])


def metrics(
    names: list[str], name_id: list[int], step: list[int], time_ns: list[int], value: list[float]
) -> p.MetricBatch:
    return p.MetricBatch(
        names=names,
        name_id=np.array(name_id, dtype=np.uint32),
        step=np.array(step, dtype=np.int64),
        time_ns=np.array(time_ns, dtype=np.int64),
        value=np.array(value, dtype=np.float64),
    )


def _many() -> p.MetricBatch:
    names = [f"m{k:02d}" for k in range(19)] + ["a_rather_long_metric_name/with/sub.parts"]
    n = 300
    return metrics(
        names,
        [k % 20 for k in range(n)],
        [k // 20 for k in range(n)],
        [T + 1000 * k for k in range(n)],
        [k * 0.25 - 10.0 for k in range(n)],
    )


# (file name, sequence number, message): the inputs of c/tests/test_encoder.c, in the same order.
CASES: list[tuple[str, int, p.Message]] = [
    ("hello_spec", 0, p.Hello("k3y", 0, 2, "n1", 4242, "c 1")),
    (
        "hello_reductions",
        0,
        p.Hello(
            "0123456789abcdef0123456789abcdef",
            -1,
            0,
            "nœud-017.cluster",
            4_000_000,
            "simvue_hpc-c 0.1.0",
            {"loss": ["mean", "max"], "mpi.rank": ["per_rank"], "sum/x": ["sum", "min", "std", "count"]},
        ),
    ),
    ("hello_big_numbers", 0, p.Hello("s", 70_000, 100_000, "h", 128, "x")),
    ("hello_liveness", 0, p.Hello("s", 3, 8, "h", 77, "x", start_time=123_456_789, pid_ns=4_026_531_836)),
    ("metrics_spec", 1, metrics(["loss", "acc"], [0, 1], [3, 3], [T, T], [0.5, 0.75])),
    (
        "metrics_special",
        0xFFFFFFFF,
        metrics(
            ["température", "loss/ñ", "x"],
            [0, 1, 2, 0, 1, 2, 2],
            [0, 0, 0, 1, 1, 1, 1 << 40],
            [T, T, T, T + 1, T + 1, T + 1, 0],
            [
                f64(0x7FF8000000000000),
                float("inf"),
                float("-inf"),
                -0.0,
                f64(0x7FF8000000000123),
                1.7976931348623157e308,
                5e-324,
            ],
        ),
    ),
    ("metrics_many", 2, _many()),
    ("metrics_empty", 3, metrics([], [], [], [], [])),
    ("event_info", 4, p.Event("hello from C", T, "info")),
    ("event_str8", 5, p.Event("event " * 20, T + 1, "error")),
    ("event_str16_unicode", 300, p.Event("ünïcødé ✓ " * 30, T + 2, "warning")),
    ("file_offer", 6, p.FileOffer(SHA_HELLO, 6, "data.txt", "output", "/tmp/run/data.txt", "text/plain", T)),
    ("file_chunk", 7, p.FileChunk(SHA_HELLO, 0, False, bytes(range(256)) + b"hello" * 10)),
    ("file_chunk_final_empty", 8, p.FileChunk(SHA_HELLO, 1 << 20, True, b"")),
    ("status", 9, p.Status("failed", "rank 3 crashed")),
    ("heartbeat", 10, p.Heartbeat(T, 123_456, 0)),
    ("goodbye_empty", 11, p.Goodbye(0, 0)),
    ("goodbye_dropped", 65536, p.Goodbye(5_000_000_000, 70_000, {"loss": 69_999, "énergie": 1})),
    # the aggregator's messages: the C client decodes them
    ("welcome_spec", 0, p.Welcome(0, "r1", "demo")),
    ("welcome_assigned", 0, p.Welcome(3, "abcdefghijklmnopqrstuv", "c-client-run")),
    ("welcome_budget", 0, p.Welcome(7, "r2", "budget", 0.25)),
    ("reject", 0, p.Reject("wrong secret for this run")),
    ("file_reply_need", 1, p.FileReply(SHA_HELLO, "need")),
    ("file_reply_error", 2, p.FileReply(SHA_HELLO, "error", "chunk out of order or past the size")),
    ("goodbye_ack", 3, p.GoodbyeAck(4_000_000_000)),
    ("notice", 4, p.Notice("warning", "slow down")),
]


# ---------------------------------------------------------------------------------------------- JSON <-> message
def to_json(name: str, seq: int, msg: p.Message) -> dict[str, Any]:
    """The index entry of one case."""
    fields: dict[str, Any]
    if isinstance(msg, p.MetricBatch):
        fields = {
            "names": list(msg.names),
            "name_id": msg.name_id.tolist(),
            "step": msg.step.tolist(),
            "time_ns": msg.time_ns.tolist(),
            "value": [repr(float(v)) for v in msg.value.tolist()],
            "value_bits": [f"{bits(v):016x}" for v in msg.value.tolist()],
        }
    elif isinstance(msg, p.FileChunk):
        fields = {"sha256": msg.sha256, "offset": msg.offset, "final": msg.final, "data_hex": msg.data.hex()}
    else:
        fields = msg.body()
    direction = "R->A" if msg.TYPE in RANK_TO_AGGREGATOR else "A->R"
    return {"name": name, "file": f"{name}.bin", "type": msg.TYPE.name, "direction": direction, "seq": seq,
            "fields": fields}  # fmt: skip


def from_json(entry: dict[str, Any]) -> p.Message:
    """The message an index entry describes."""
    cls = MESSAGE_TYPES[MsgType[entry["type"]]]
    fields = entry["fields"]
    if cls is p.MetricBatch:
        return metrics(fields["names"], fields["name_id"], fields["step"], fields["time_ns"],
                       [f64(int(b, 16)) for b in fields["value_bits"]])  # fmt: skip
    if cls is p.FileChunk:
        return p.FileChunk(fields["sha256"], fields["offset"], fields["final"], bytes.fromhex(fields["data_hex"]))
    return cls(**fields)


# ---------------------------------------------------------------------------------------------- .bin files
def pack_frames(frames: list[Any]) -> bytes:
    out = [struct.pack("<I", len(frames))]
    for frame in frames:
        data = bytes(frame)
        out.append(struct.pack("<I", len(data)))
        out.append(data)
    return b"".join(out)


def unpack_frames(data: bytes) -> list[bytes]:
    (count,) = struct.unpack_from("<I", data, 0)
    pos, frames = 4, []
    for _ in range(count):
        (n,) = struct.unpack_from("<I", data, pos)
        frames.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} trailing bytes")
    return frames


def index() -> dict[str, Any]:
    return {
        "protocol_version": PROTOCOL_VERSION,
        "format": FORMAT,
        "generator": "tests/data/make_golden.py",
        "cases": [to_json(name, seq, msg) for name, seq, msg in CASES],
    }


def index_text() -> str:
    """index.json's exact text: one case per line, so that a change shows as a readable diff."""
    doc = index()
    cases = doc.pop("cases")
    head = json.dumps(doc, ensure_ascii=False)[:-1]
    lines = ",\n".join("  " + json.dumps(case, ensure_ascii=False) for case in cases)
    return f'{head}, "cases": [\n{lines}\n]}}\n'


def main() -> int:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name, seq, msg in CASES:
        (GOLDEN / f"{name}.bin").write_bytes(pack_frames(encode(msg, seq)))
    INDEX.write_text(index_text(), encoding="utf-8")
    print(f"wrote {len(CASES)} golden messages to {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
