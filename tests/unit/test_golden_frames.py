"""The Python encoder still produces the golden frames that the C client's encoder is checked against
(``c/tests/test_encoder.c``, run by ctest): if either side changes the bytes, one of the two fails."""

from __future__ import annotations

import json
from typing import Any

import pytest

from simvue_hpc.protocol import MsgType, decode, encode
from tests.data.make_golden import CASES, GOLDEN, INDEX, from_json, index_text, unpack_frames

ENTRIES: list[dict[str, Any]] = json.loads(INDEX.read_text(encoding="utf-8"))["cases"]


def test_index_is_what_the_generator_writes() -> None:
    assert INDEX.read_text(encoding="utf-8") == index_text(), (
        "tests/data/golden/index.json is stale: run `python tests/data/make_golden.py` and review the diff"
    )


def test_every_golden_file_is_indexed() -> None:
    on_disk = {p.name for p in GOLDEN.glob("*.bin")}
    assert on_disk == {e["file"] for e in ENTRIES}
    assert [e["name"] for e in ENTRIES] == [name for name, _, _ in CASES]


def test_every_message_a_c_rank_sends_has_golden_frames() -> None:
    covered = {MsgType[e["type"]] for e in ENTRIES}
    sent_by_the_c_client = {
        MsgType.HELLO, MsgType.METRICS, MsgType.EVENT, MsgType.FILE_OFFER, MsgType.FILE_CHUNK, MsgType.STATUS,
        MsgType.HEARTBEAT, MsgType.GOODBYE,
    }  # fmt: skip
    read_by_the_c_client = {MsgType.WELCOME, MsgType.REJECT, MsgType.FILE_REPLY, MsgType.GOODBYE_ACK, MsgType.NOTICE}
    assert sent_by_the_c_client | read_by_the_c_client <= covered


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_python_encoder_reproduces_the_golden_frames(entry: dict[str, Any]) -> None:
    golden = unpack_frames((GOLDEN / entry["file"]).read_bytes())
    frames = [bytes(f) for f in encode(from_json(entry), entry["seq"])]
    assert len(frames) == len(golden)
    for k, (got, want) in enumerate(zip(frames, golden, strict=True)):
        assert got == want, f"{entry['name']} frame {k}:\n got  {got.hex(' ')}\n want {want.hex(' ')}"


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_golden_frames_decode_to_their_input(entry: dict[str, Any]) -> None:
    seq, message = decode(unpack_frames((GOLDEN / entry["file"]).read_bytes()))
    assert seq == entry["seq"]
    assert message == from_json(entry)
