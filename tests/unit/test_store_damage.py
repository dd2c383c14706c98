"""A damaged record log: the reader resynchronises on the next valid record, keeps every intact
record after the damage and reports what it skipped (byte ranges, records)."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simvue_hpc.store import HEADER_SIZE, Damage, Record, RecordType, RunWriter, load_run, read_records
from simvue_hpc.store import reader as store_reader

T0 = 1_700_000_000_000_000


def _write_run(root: Path, n_events: int = 20, run_id: str = "r") -> tuple[Path, list[Record]]:
    """A completed run: RUN, STATUS, events and metrics interleaved, END."""
    with RunWriter.create(root, run_id) as w:
        w.append(RecordType.RUN, {"id": run_id, "name": "damaged", "created_us": T0})
        w.append(RecordType.STATUS, {"status": "running", "time_us": T0})
        for i in range(n_events):
            w.append(RecordType.EVENT, {"message": f"event {i} " + "x" * (i * 7 % 50), "time_us": T0 + i})
            w.append_metrics(["loss", "acc"], [0, 1], [i, i], [T0 + i, T0 + i], [1.0 / (i + 1), i / 10])
        w.append(RecordType.END, {"status": "completed", "time_us": T0 + n_events})
    return w.records_path, list(read_records(w.records_path))


def _same(a: Record, b: Record, shift: int = 0) -> bool:
    """The same record (payload and type), possibly moved by shift bytes."""
    if (a.type, a.offset + shift, a.end + shift) != (b.type, b.offset, b.end):
        return False
    if a.type is RecordType.METRICS:
        return a.payload.keys() == b.payload.keys() and all(
            a.payload[k].tobytes() == b.payload[k].tobytes()
            if isinstance(a.payload[k], np.ndarray)
            else a.payload[k] == b.payload[k]
            for k in a.payload
        )
    return a.payload == b.payload


def _read(path: Path) -> tuple[list[Record], list[Damage]]:
    damage: list[Damage] = []
    return list(read_records(path, damage=damage)), damage


def test_flipped_bytes_in_the_middle_lose_only_that_record(tmp_path: Path) -> None:
    path, good = _write_run(tmp_path)
    victim = good[len(good) // 2]
    data = bytearray(path.read_bytes())
    for i in range(victim.offset + 12, victim.offset + 28):  # 16 flipped bytes inside its payload
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    records, damage = _read(path)
    assert [r.offset for r in records] == [r.offset for r in good if r is not victim]
    assert all(_same(a, b) for a, b in zip([r for r in good if r is not victim], records, strict=True))
    assert damage == [Damage(victim.offset, victim.end, "checksum mismatch", records=1)]
    view = load_run(path.parent)
    assert view.status == "completed"  # the END after the damage is kept
    assert view.damaged and view.damage == damage
    assert len(view.events) + len(view.metrics["loss"]) == 2 * 20 - 1  # one event or metrics record lost


def test_a_record_cut_out_of_the_middle(tmp_path: Path) -> None:
    path, good = _write_run(tmp_path)
    victim = good[7]
    data = path.read_bytes()
    cut = victim.offset + 20  # the header says more bytes than remain before the next record
    path.write_bytes(data[:cut] + data[victim.end :])
    records, damage = _read(path)
    removed = victim.end - cut
    want = [r for r in good if r.offset < victim.offset] + [
        Record(r.offset - removed, r.end - removed, r.type, r.payload) for r in good if r.offset > victim.offset
    ]
    assert len(records) == len(want)
    assert all(_same(a, b) for a, b in zip(want, records, strict=True))
    assert damage == [Damage(victim.offset, victim.end - removed, "checksum mismatch", records=None)]


def test_a_torn_tail_is_reported_but_is_not_damage_to_the_run(tmp_path: Path) -> None:
    path, good = _write_run(tmp_path)
    os.truncate(path, good[-1].end - 3)
    records, damage = _read(path)
    assert len(records) == len(good) - 1 and all(map(_same, good, records))
    assert damage == [Damage(good[-1].offset, good[-1].end - 3, "incomplete record at the end", records=None)]
    assert damage[0].torn
    view = load_run(path.parent)
    assert view.status == "running" and not view.damaged and view.damage == damage


def test_a_torn_record_after_the_end_is_damage(tmp_path: Path) -> None:
    path, _ = _write_run(tmp_path, n_events=2)
    with open(path, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00\x06\x82")  # a header whose payload never came
    view = load_run(path.parent)
    assert view.status == "completed" and view.damage[0].torn
    assert view.damaged  # nothing follows an END: what is there was lost


def test_garbage_appended_or_inserted(tmp_path: Path) -> None:
    path, good = _write_run(tmp_path, n_events=3)
    data = path.read_bytes()
    garbage = bytes(range(256)) * 3 + b"\x05\x00\x00\x00" + bytes(40)
    path.write_bytes(data + garbage)
    records, damage = _read(path)
    assert len(records) == len(good) and all(map(_same, good, records))
    assert [(d.start, d.end) for d in damage] == [(len(data), len(data) + len(garbage))]
    at = good[3].offset
    path.write_bytes(data[:at] + garbage + data[at:])
    records, damage = _read(path)
    assert [r.offset for r in records] == [r.offset for r in good[:3]] + [r.offset + len(garbage) for r in good[3:]]
    assert [d.end - d.start for d in damage] == [len(garbage)]


def test_reading_from_an_offset_before_damage(tmp_path: Path) -> None:
    path, good = _write_run(tmp_path)
    data = bytearray(path.read_bytes())
    data[good[10].offset + 4] ^= 1  # its CRC field
    path.write_bytes(bytes(data))
    assert [r.offset for r in read_records(path, good[9].offset)] == [r.offset for r in good[9:] if r is not good[10]]


# --- fuzz ----------------------------------------------------------------------------------------

_mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=8)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=300)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=300)),
)


def _mutate(data: bytes, mutation: tuple[Any, ...], where: list[int | None], sizes: list[int]) -> bytes:
    """Apply a mutation after the file header; where[k] follows record k's offset (None once cut
    off). Whether a record is intact is decided by its bytes: an insert into a run of equal bytes
    can leave a record whole."""
    body = len(data) - HEADER_SIZE
    kind = mutation[0]
    if kind == "truncate":
        cut = HEADER_SIZE + mutation[1] % (body + 1)
        where[:] = [w if w is not None and w + n <= cut else None for w, n in zip(where, sizes, strict=True)]
        return data[:cut]
    if kind == "flip":
        out = bytearray(data)
        for pos, mask in mutation[1]:
            out[HEADER_SIZE + pos % max(body, 1)] ^= mask
        return bytes(out)
    if kind == "insert":
        at, extra = HEADER_SIZE + mutation[1] % (body + 1), mutation[2]
        # a record the insert splits stays where it was: it is intact only if its bytes say so
        where[:] = [w + len(extra) if w is not None and w >= at else w for w in where]
        return data[:at] + extra + data[at:]
    return data + mutation[1]


_SAMPLES: dict[int, tuple[bytes, list[Record]]] = {}


def _sample(n_events: int) -> tuple[bytes, list[Record]]:
    if n_events not in _SAMPLES:
        with tempfile.TemporaryDirectory() as tmp:
            path, good = _write_run(Path(tmp), n_events)
            _SAMPLES[n_events] = (path.read_bytes(), good)
    return _SAMPLES[n_events]


@pytest.mark.timeout(300)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 12), st.lists(_mutation, min_size=1, max_size=3))
def test_fuzz_the_reader_never_raises_and_keeps_every_intact_record(
    n_events: int, mutations: list[tuple[Any, ...]]
) -> None:
    original, good = _sample(n_events)
    where: list[int | None] = [r.offset for r in good]
    sizes = [r.end - r.offset for r in good]
    data = original
    for mutation in mutations:
        if len(data) > HEADER_SIZE or mutation[0] in ("insert", "append"):
            data = _mutate(data, mutation, where, sizes)
    expect = [  # the records whose bytes are all still there (two flips of one byte cancel)
        Record(w, w + n, r.type, r.payload)
        for r, w, n in zip(good, where, sizes, strict=True)
        if w is not None and data[w : w + n] == original[r.offset : r.end]
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.svr"
        path.write_bytes(data)
        records, damage = _read(path)
        cached_damage: list[Damage] = []
        cached = list(read_records(path, damage=cached_damage, names_cache={}))
    assert cached_damage == damage and len(cached) == len(records)  # the names cache changes nothing
    assert all(map(_same, records, cached))
    assert len(records) == len(expect)
    assert all(_same(a, b) for a, b in zip(expect, records, strict=True))
    # what was read and what is reported as damaged cover the file, in order, without overlap
    spans = sorted([(r.offset, r.end) for r in records] + [(d.start, d.end) for d in damage])
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert not spans or (spans[0][0] == HEADER_SIZE and spans[-1][1] == len(data))
    assert all(d.end > d.start for d in damage)


def test_long_candidates_are_checked_when_a_header_or_the_end_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_reader, "RESYNC_CHECK_BYTES", 16)  # every record counts as long
    path, good = _write_run(tmp_path, n_events=4)
    data = bytearray(path.read_bytes())
    data[good[3].offset + 12] ^= 0x01  # damage one record: the next is found through its successor
    data[good[-2].offset + 12] ^= 0x01  # damage the one before END: END is found at the end of the file
    path.write_bytes(bytes(data))
    records, damage = _read(path)
    lost = {good[3].offset, good[-2].offset}
    assert [r.offset for r in records] == [r.offset for r in good if r.offset not in lost]
    assert [(d.start, d.records) for d in damage] == [(good[3].offset, 1), (good[-2].offset, 1)]
    # a long record followed by a damaged header is not checked: it is lost with the damage
    data[good[5].offset + 8] = 0xEE  # good[5]'s type byte: neither a type nor checksum-valid
    path.write_bytes(bytes(data))
    records, damage = _read(path)
    assert good[4].offset not in [r.offset for r in records]
    assert damage[0].start == good[3].offset and damage[0].end == good[6].offset
