"""Tests of the local store: format, round trips, crash safety, saved files, run lookup."""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simvue_hpc.durable import lock_file
from simvue_hpc.errors import ConfigurationError, RunNotFound, StoreError
from simvue_hpc.store import (
    HEADER_SIZE,
    MAGIC,
    Damage,
    Record,
    RecordType,
    RunWriter,
    default_root,
    find_run,
    list_runs,
    load_run,
    new_run_id,
    read_records,
)
from simvue_hpc.store import format as store_format
from simvue_hpc.store import writer as store_writer

I64 = np.iinfo(np.int64)
T0 = 1_700_000_000_000_000

PAYLOADS: dict[RecordType, dict[str, Any]] = {
    RecordType.RUN: {
        "id": "run1",
        "name": "first",
        "folder": "/proj",
        "description": "a test run",
        "tags": ["a", "b"],
        "metadata": {"lr": 0.1, "layers": [1, 2], "nested": {"x": None}},
        "created_us": T0,
        "system": {"hostname": "n1", "cpus": 64},
        "job": {"scheduler": "slurm", "id": "42", "size": 4},
    },
    RecordType.RUN_UPDATE: {"name": "renamed", "metadata": {"epochs": 3}, "tags": ["b", "c"]},
    RecordType.FOLDER: {"path": "/proj", "metadata": {"k": 1}, "tags": ["t"], "description": None},
    RecordType.STATUS: {"status": "running", "time_us": T0 + 1},
    RecordType.EVENT: {"message": "héllo", "time_us": T0 + 2, "rank": 3, "host": "n2", "level": "info"},
    RecordType.FILE: {
        "name": "out.bin",
        "category": "output",
        "sha256": "0" * 64,
        "size": 12,
        "original_path": "/tmp/out.bin",
        "mime_type": "application/octet-stream",
        "rank": 0,
        "host": "n1",
        "time_us": T0 + 3,
    },
    RecordType.ALERT: {"name": "too-high", "source": "metrics", "threshold": 2.5, "frequency": 1},
    RecordType.RANK: {"rank": 3, "host": "n2", "pid": 999, "state": "joined", "time_us": T0 + 4},
    RecordType.END: {
        "status": "completed",
        "time_us": T0 + 5,
        "missing_ranks": [7],
        "lost_ranks": [],
        "counters": {"points": 10, "raw": b"\x00\xff"},
    },
}


def _metrics() -> dict[str, Any]:
    """A METRICS record's columns with awkward values."""
    return {
        "names": ["loss", "acc", "λ"],
        "name_id": np.array([0, 1, 2, 0, 1, 2], dtype=np.uint32),
        "step": np.array([I64.min, -1, 0, 1, 2**53 + 1, I64.max], dtype=np.int64),
        "time_us": np.array([0, T0, T0, I64.max, I64.min, 7], dtype=np.int64),
        "value": np.array([np.nan, np.inf, -np.inf, -0.0, 5e-324, 1.7976931348623157e308]),
    }


def _assert_columns_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Columns equal bit for bit (NaN payloads and -0.0 included)."""
    assert got["names"] == list(want["names"])
    for key, dtype in (("name_id", "<u4"), ("step", "<i8"), ("time_us", "<i8"), ("value", "<f8")):
        assert got[key].dtype == np.dtype(dtype)
        assert got[key].tobytes() == np.asarray(want[key]).astype(dtype).tobytes()


def _write_sample(root: Path, run_id: str = "run1") -> tuple[Path, list[int]]:
    """A run holding one record of every type; returns the log path and the offsets."""
    with RunWriter.create(root, run_id) as w:
        offsets = [w.append(t, p) for t, p in PAYLOADS.items()]
        offsets.append(w.append_metrics(**_metrics()))
        offsets.append(w.append(RecordType.EVENT, {"message": "last", "time_us": T0, "rank": None}))
    return w.records_path, offsets


def _raw_record(code: int, data: bytes) -> bytes:
    """A record with a valid CRC for whatever type and payload bytes."""
    return struct.pack("<IIB", len(data), zlib.crc32(data, zlib.crc32(bytes((code,)))), code) + data


# --- format and round trips ----------------------------------------------------------------------


def test_create_writes_the_header_and_layout(tmp_path: Path) -> None:
    w = RunWriter.create(tmp_path / "deep" / "root", "abc")
    w.close()
    assert w.run_dir == tmp_path / "deep" / "root" / "abc"
    assert w.records_path == w.run_dir / "records.svr"
    assert (w.run_dir / "files").is_dir()
    assert w.records_path.read_bytes() == MAGIC + struct.pack("<HHI", 1, 0, 0)
    assert HEADER_SIZE == 16
    assert list(read_records(w.records_path)) == []


def test_every_record_type_round_trips(tmp_path: Path) -> None:
    path, offsets = _write_sample(tmp_path)
    records = list(read_records(path))
    assert [r.offset for r in records] == offsets
    assert records[0].offset == HEADER_SIZE
    assert all(a.end == b.offset for a, b in itertools.pairwise(records))
    assert records[-1].end == path.stat().st_size
    for rec, (rtype, payload) in zip(records, PAYLOADS.items(), strict=False):
        assert rec.type is rtype
        assert rec.payload == payload
    metrics = records[len(PAYLOADS)]
    assert metrics.type is RecordType.METRICS
    _assert_columns_equal(metrics.payload, _metrics())
    assert metrics.payload["late"] is False
    assert records[-1].payload == {"message": "last", "time_us": T0, "rank": None}


def test_read_records_from_an_offset(tmp_path: Path) -> None:
    path, offsets = _write_sample(tmp_path)
    assert [r.offset for r in read_records(path, offsets[3])] == offsets[3:]
    with pytest.raises(ConfigurationError):
        list(read_records(path, 3))


def test_metrics_late_flag_lists_and_empty_records(tmp_path: Path) -> None:
    with RunWriter.create(tmp_path, "r") as w:
        w.append_metrics(["m"], [0, 0], [1, 2], [T0, T0], [1, 2], late=True)
        w.append_metrics([], [], [], [], [])
        w.append_metrics(["a", "b"], np.array([1], dtype=np.int8), [5], [T0], np.array([3], dtype=np.float32))
    late, empty, small = (r.payload for r in read_records(w.records_path))
    assert late["late"] is True
    _assert_columns_equal(
        late, {"names": ["m"], "name_id": [0, 0], "step": [1, 2], "time_us": [T0] * 2, "value": [1, 2]}
    )
    assert len(empty["step"]) == 0 and empty["names"] == []
    _assert_columns_equal(small, {"names": ["a", "b"], "name_id": [1], "step": [5], "time_us": [T0], "value": [3.0]})


def test_raw_metrics_payload_through_append(tmp_path: Path) -> None:
    cols = _metrics()
    payload = {k: (v if k == "names" else v.astype(store_format.METRIC_COLUMNS[k]).tobytes()) for k, v in cols.items()}
    with RunWriter.create(tmp_path, "r") as w:
        w.append(RecordType.METRICS, payload)
        with pytest.raises(ConfigurationError, match="METRICS"):
            w.append(RecordType.METRICS, {**payload, "step": payload["step"][:-8]})
        with pytest.raises(ConfigurationError, match="METRICS"):
            w.append(RecordType.METRICS, {"names": ["x"]})
    (rec,) = read_records(w.records_path)
    _assert_columns_equal(rec.payload, cols)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"step": [1]}, "step"),
        ({"value": [1.0, 2.0, 3.0]}, "value"),
        ({"time_us": [[1, 2]]}, "time_us"),
        ({"name_id": [0, 2]}, "name_id"),
        ({"name_id": [0, -1]}, "name_id"),
        ({"step": [0.5, 1.5]}, "step"),
        ({"value": ["a", "b"]}, "value"),
        ({"step": np.array([2**63, 0], dtype=np.uint64)}, "step"),
        ({"names": ["a", 3]}, "names"),
    ],
)
def test_append_metrics_rejects_bad_columns(tmp_path: Path, kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {
        "names": ["a", "b"],
        "name_id": [0, 1],
        "step": [0, 1],
        "time_us": [0, 1],
        "value": [0, 1],
    }
    with RunWriter.create(tmp_path, "r") as w, pytest.raises(ConfigurationError, match=field):
        w.append_metrics(**{**args, **kwargs})
    assert list(read_records(w.records_path)) == []


def test_append_rejects_unknown_types_and_unserialisable_payloads(tmp_path: Path) -> None:
    with RunWriter.create(tmp_path, "r") as w:
        with pytest.raises(ConfigurationError, match="record type"):
            w.append(99, {})
        with pytest.raises(ConfigurationError, match="EVENT"):
            w.append(RecordType.EVENT, {"message": object()})
        w.append(int(RecordType.STATUS), {"status": "running", "n": np.int64(3), "x": np.float32(0.5)})
    (rec,) = read_records(w.records_path)
    assert rec.type is RecordType.STATUS and rec.payload == {"status": "running", "n": 3, "x": 0.5}


def test_create_refuses_existing_runs_and_bad_ids(tmp_path: Path) -> None:
    RunWriter.create(tmp_path, "r").close()
    with pytest.raises(StoreError, match="already exists"):
        RunWriter.create(tmp_path, "r")
    for bad in ("", "../x", "a/b", ".hidden", "x" * 200):
        with pytest.raises(ConfigurationError):
            RunWriter.create(tmp_path, bad)


def test_bad_headers_raise(tmp_path: Path) -> None:
    path = tmp_path / "records.svr"
    with pytest.raises(StoreError):
        list(read_records(path))
    for data in (b"", MAGIC, b"NOTOURS!" + bytes(8), MAGIC + struct.pack("<HHI", 2, 0, 0)):
        path.write_bytes(data)
        with pytest.raises(StoreError):
            list(read_records(path))


def test_writer_lifecycle(tmp_path: Path) -> None:
    w = RunWriter.create(tmp_path, "r")
    w.append(RecordType.STATUS, {"status": "running"})
    assert list(read_records(w.records_path)) == []  # still buffered in the writer
    w.flush()
    assert len(list(read_records(w.records_path))) == 1  # a concurrent reader sees it
    w.append(RecordType.STATUS, {"status": "done"})
    w.sync()
    assert len(list(read_records(w.records_path))) == 2
    w.append(RecordType.STATUS, {"status": "again"})
    w.close()
    w.close()
    assert len(list(read_records(w.records_path))) == 3
    with pytest.raises(StoreError, match="closed"):
        w.append(RecordType.STATUS, {})
    with pytest.raises(StoreError, match="closed"):
        w.flush()


def test_large_buffers_are_written_before_flush(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_writer, "FLUSH_THRESHOLD", 100)
    with RunWriter.create(tmp_path, "r") as w:
        for i in range(10):
            w.append(RecordType.EVENT, {"message": "x" * 40, "i": i})
        assert len(list(read_records(w.records_path))) >= 8
    assert [r.payload["i"] for r in read_records(w.records_path)] == list(range(10))


def test_the_writer_holds_the_log_locked(tmp_path: Path) -> None:
    w = RunWriter.create(tmp_path, "r")
    with open(w.records_path, "rb") as other:
        assert not lock_file(other)  # a second writer would be refused
        w.close()
        assert lock_file(other)


def test_a_failed_write_leaves_no_torn_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = RunWriter.create(tmp_path, "r")
    w.append(RecordType.STATUS, {"status": "one"})
    w.flush()
    w.append(RecordType.STATUS, {"status": "two"})
    real_write = os.write

    def half_then_full(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(StoreError, match="Input/output"):
        w.flush()
    monkeypatch.undo()
    w.append(RecordType.STATUS, {"status": "three"})
    w.close()
    assert [r.payload["status"] for r in read_records(w.records_path)] == ["one", "two", "three"]


# --- crash safety --------------------------------------------------------------------------------


@pytest.mark.parametrize("last", ["event", "metrics"])
def test_truncation_anywhere_in_the_last_record_keeps_the_others(tmp_path: Path, last: str) -> None:
    with RunWriter.create(tmp_path, "r") as w:
        for rtype in (RecordType.RUN, RecordType.STATUS, RecordType.RANK):
            w.append(rtype, PAYLOADS[rtype])
        if last == "event":
            w.append(RecordType.EVENT, PAYLOADS[RecordType.EVENT])
        else:
            w.append_metrics(**_metrics())
    data = w.records_path.read_bytes()
    records = list(read_records(w.records_path))
    assert len(records) == 4
    good, torn = records[:3], records[3]
    cut_path = tmp_path / "cut.svr"
    for cut in range(torn.offset, torn.end):
        cut_path.write_bytes(data[:cut])
        assert list(read_records(cut_path)) == good, cut
    for i in range(torn.offset, torn.end):
        corrupt = bytearray(data)
        corrupt[i] ^= 0xFF
        cut_path.write_bytes(bytes(corrupt))
        assert list(read_records(cut_path)) == good, i


_EMPTY = {"name_id": b"", "step": b"", "time_us": b"", "value": b""}


def test_valid_crc_but_undecodable_records_are_skipped_as_damage(tmp_path: Path) -> None:
    path, _ = _write_sample(tmp_path)
    n = len(list(read_records(path)))
    size = path.stat().st_size
    for bad, reason in (
        (_raw_record(200, msgpack.packb({})), "unknown record type"),
        (_raw_record(RecordType.EVENT, b"\xc1"), "undecodable payload"),  # never-used msgpack byte
        (_raw_record(RecordType.EVENT, msgpack.packb([1, 2])), "undecodable payload"),  # not a map
        (
            _raw_record(RecordType.METRICS, msgpack.packb({"names": [], "name_id": b"\x01", "step": b""})),
            "undecodable payload",
        ),
        (_raw_record(RecordType.METRICS, msgpack.packb({"names": [1], **_EMPTY})), "undecodable payload"),
        (_raw_record(RecordType.METRICS, msgpack.packb({"names": "ab", **_EMPTY})), "undecodable payload"),
        (_raw_record(RecordType.METRICS, msgpack.packb({"names": [], **_EMPTY}) + b"\x00"), "undecodable payload"),
        (_raw_record(RecordType.METRICS, msgpack.packb([["a"], 1])), "undecodable payload"),
    ):
        tail = bad + _raw_record(RecordType.STATUS, msgpack.packb({"status": "after"}))
        copy = tmp_path / "copy.svr"
        copy.write_bytes(path.read_bytes() + tail)
        for cache in (None, {}):
            damage: list[Damage] = []
            records = list(read_records(copy, damage=damage, names_cache=cache))
            assert len(records) == n + 1 and records[-1].payload == {"status": "after"}
            assert damage == [Damage(size, size + len(bad), reason, records=1)]


# --- property test -------------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=I64.min, max_value=I64.max)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_plain = st.tuples(
    st.sampled_from([t for t in RecordType if t is not RecordType.METRICS]),
    st.dictionaries(st.text(max_size=10), _values, max_size=6),
)


@st.composite
def _metric_columns(draw: st.DrawFn) -> tuple[RecordType, dict[str, Any]]:
    names = draw(st.lists(st.text(max_size=8), min_size=1, max_size=4, unique=True))
    n = draw(st.integers(0, 12))
    ints = st.integers(I64.min, I64.max)
    return RecordType.METRICS, {
        "names": names,
        "name_id": np.array(draw(st.lists(st.integers(0, len(names) - 1), min_size=n, max_size=n)), dtype=np.uint32),
        "step": np.array(draw(st.lists(ints, min_size=n, max_size=n)), dtype=np.int64),
        "time_us": np.array(draw(st.lists(ints, min_size=n, max_size=n)), dtype=np.int64),
        "value": np.array(draw(st.lists(st.floats(), min_size=n, max_size=n)), dtype=np.float64),
        "late": draw(st.booleans()),
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_plain | _metric_columns(), max_size=15), st.integers(1, 4))
def test_random_record_sequences_round_trip(records: list[tuple[RecordType, dict[str, Any]]], flush_every: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with RunWriter.create(tmp, "r") as w:
            for i, (rtype, payload) in enumerate(records):
                if rtype is RecordType.METRICS:
                    w.append_metrics(**payload)
                else:
                    w.append(rtype, payload)
                if i % flush_every == 0:
                    w.flush()
        got = list(read_records(w.records_path))
    assert len(got) == len(records)
    for rec, (rtype, payload) in zip(got, records, strict=True):
        assert rec.type is rtype
        if rtype is RecordType.METRICS:
            _assert_columns_equal(rec.payload, payload)
            assert rec.payload["late"] is payload["late"]
        else:
            assert rec.payload == payload


# --- saved files ---------------------------------------------------------------------------------


def _tmp_files(w: RunWriter) -> list[Path]:
    return sorted(w.run_dir.joinpath("files").glob(".tmp-*"))


def test_begin_file_with_the_right_checksum(tmp_path: Path) -> None:
    content = os.urandom(3000)
    sha = hashlib.sha256(content).hexdigest()
    with RunWriter.create(tmp_path, "r") as w:
        assert not (w.files_dir / sha).exists()
        sink = w.begin_file(sha)
        for i in range(0, len(content), 1000):
            sink.write(content[i : i + 1000])
        assert sink.commit() == sha
        assert sink.size == len(content)
        assert (w.files_dir / sha).is_file()
        assert (w.run_dir / "files" / sha).read_bytes() == content
        assert _tmp_files(w) == []
        with pytest.raises(StoreError):
            sink.write(b"more")


def test_begin_file_with_the_wrong_checksum(tmp_path: Path) -> None:
    sha = hashlib.sha256(b"expected").hexdigest()
    with RunWriter.create(tmp_path, "r") as w:
        sink = w.begin_file(sha)
        sink.write(b"something else")
        with pytest.raises(StoreError, match="checksum mismatch"):
            sink.commit()
        assert not (w.files_dir / sha).exists()
        assert _tmp_files(w) == []
        sink.abort()  # idempotent


def test_abort_and_context_manager_drop_the_temp_file(tmp_path: Path) -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    with RunWriter.create(tmp_path, "r") as w:
        sink = w.begin_file(sha)
        sink.write(b"x")
        assert len(_tmp_files(w)) == 1
        sink.abort()
        assert _tmp_files(w) == []
        with w.begin_file(sha) as s:
            s.write(b"x")
        assert _tmp_files(w) == [] and not (w.files_dir / sha).exists()
        with w.begin_file(sha) as s:
            s.write(b"x")
            s.commit()
        assert (w.files_dir / sha).is_file()
        for bad in ("ABC", "../" + "0" * 61, "G" * 64):
            with pytest.raises(ConfigurationError):
                w.begin_file(bad)


# --- folding, listing, lookup --------------------------------------------------------------------


def test_load_run_folds_the_records(tmp_path: Path) -> None:
    with RunWriter.create(tmp_path, "run1") as w:
        for rtype, payload in PAYLOADS.items():
            if rtype is not RecordType.END:
                w.append(rtype, payload)
        w.append_metrics(["loss", "acc"], [0, 1, 0], [0, 0, 1], [T0, T0, T0 + 1], [1.0, 0.5, 0.8])
        w.append(RecordType.RANK, {**PAYLOADS[RecordType.RANK], "state": "closed"})
        w.append(RecordType.RANK, {"rank": 0, "host": "n1", "pid": 1, "state": "lost"})
        w.append_metrics(["acc", "new"], [0, 1], [9, 1], [T0, T0], [7.0, 0.25], late=True)
        w.append_metrics(["loss"], [0], [2], [T0 + 2], [np.nan])
        w.append(RecordType.END, PAYLOADS[RecordType.END])
    view = load_run(w.run_dir)
    run = PAYLOADS[RecordType.RUN]
    assert (view.id, view.name, view.folder, view.description) == ("run1", "renamed", "/proj", "a test run")
    assert view.tags == ["a", "b", "c"]
    assert view.metadata == {**run["metadata"], "epochs": 3}
    assert (view.created_us, view.system, view.job) == (T0, run["system"], run["job"])
    assert (view.status, view.ended_us, view.end) == ("completed", T0 + 5, PAYLOADS[RecordType.END])
    assert view.ranks == {
        3: {**PAYLOADS[RecordType.RANK], "state": "closed"},
        0: {"rank": 0, "host": "n1", "pid": 1, "state": "lost"},
    }
    assert view.events == [PAYLOADS[RecordType.EVENT]]
    assert view.files == [PAYLOADS[RecordType.FILE]]
    assert view.alerts == [PAYLOADS[RecordType.ALERT]]
    assert view.folder_details == [PAYLOADS[RecordType.FOLDER]]
    assert list(view.metrics) == ["loss", "acc", "new"]
    loss, acc, new = view.metrics.values()
    assert loss.step.tolist() == [0, 1, 2] and loss.time_us.tolist() == [T0, T0 + 1, T0 + 2]
    np.testing.assert_array_equal(loss.value, [1.0, 0.8, np.nan])
    assert (acc.step.tolist(), acc.value.tolist(), acc.late, len(acc)) == ([0, 9], [0.5, 7.0], 1, 2)
    assert (new.step.tolist(), new.value.tolist(), new.late) == ([1], [0.25], 1)
    assert loss.late == 0


def test_load_run_of_a_run_without_records(tmp_path: Path) -> None:
    RunWriter.create(tmp_path, "bare").close()
    view = load_run(tmp_path / "bare")
    assert (view.id, view.name, view.status, view.metrics, view.ended_us) == (
        "bare",
        None,
        "created",
        {},
        None,
    )


def _make_run(root: Path, run_id: str, name: str, created_us: int, rename: str | None = None) -> None:
    with RunWriter.create(root, run_id) as w:
        w.append(RecordType.RUN, {**PAYLOADS[RecordType.RUN], "id": run_id, "name": name, "created_us": created_us})
        if rename is not None:
            w.append(RecordType.RUN_UPDATE, {"name": rename})


def test_list_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert list_runs(tmp_path / "nowhere") == []
    assert list_runs(tmp_path) == []
    _make_run(tmp_path, "bbb", "later", T0 + 10)
    _make_run(tmp_path, "aaa", "sooner", T0)
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "records.svr").write_bytes(b"garbage")
    (tmp_path / "stray.txt").write_text("x")
    with caplog.at_level(logging.WARNING):
        runs = list_runs(tmp_path)
    assert [(v.id, v.name) for v in runs] == [("aaa", "sooner"), ("bbb", "later")]
    assert "broken" in caplog.text and "not-a-run" not in caplog.text


def test_find_run(tmp_path: Path) -> None:
    _make_run(tmp_path, "abc123", "alpha", T0)
    _make_run(tmp_path, "abd456", "beta", T0)
    _make_run(tmp_path, "xyz789", "zeta", T0, rename="gamma")
    assert find_run(tmp_path, "abc123") == tmp_path / "abc123"
    assert find_run(tmp_path, "abd") == tmp_path / "abd456"
    assert find_run(tmp_path, "beta") == tmp_path / "abd456"
    assert find_run(tmp_path, "gamma") == tmp_path / "xyz789"  # renamed by RUN_UPDATE
    assert find_run(str(tmp_path), "x") == tmp_path / "xyz789"
    with pytest.raises(RunNotFound, match=r"abc123 \(alpha\).*abd456 \(beta\)"):
        find_run(tmp_path, "ab")
    with pytest.raises(RunNotFound, match="no run"):
        find_run(tmp_path, "zeta")  # the old name of xyz789 is gone
    with pytest.raises(RunNotFound, match="no run"):
        find_run(tmp_path, "delta")
    with pytest.raises(RunNotFound):
        find_run(tmp_path, "")
    with pytest.raises(RunNotFound):
        find_run(tmp_path / "nowhere", "abc123")


def test_find_run_is_ambiguous_when_a_prefix_and_a_name_disagree(tmp_path: Path) -> None:
    _make_run(tmp_path, "qrs", "one", T0)
    _make_run(tmp_path, "zzz", "q", T0)
    with pytest.raises(RunNotFound, match="matches 2 runs"):
        find_run(tmp_path, "q")


def test_new_run_id() -> None:
    ids = {new_run_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 22 and i.isalnum() and i.isascii() for i in ids)


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SIMVUE_OFFLINE_DIRECTORY", str(tmp_path / "offline"))
    assert default_root() == tmp_path / "offline"
    monkeypatch.delenv("SIMVUE_OFFLINE_DIRECTORY")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "simvue_hpc"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / ".local" / "share" / "simvue_hpc"


def test_record_is_frozen() -> None:
    rec = Record(16, 30, RecordType.STATUS, {})
    with pytest.raises(AttributeError):
        rec.offset = 0  # type: ignore[misc]


# --- reopening after a writer died ----------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_reopen_truncates_a_damaged_tail_and_appends_after_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    path, offsets = _write_sample(tmp_path)
    size = path.stat().st_size
    if damage == "truncate":
        os.truncate(path, size - 3)
    else:
        data = bytearray(path.read_bytes())
        data[offsets[-1] + 12] ^= 0x01
        path.write_bytes(bytes(data))
    removed = path.stat().st_size - offsets[-1]
    with caplog.at_level(logging.WARNING, logger="simvue_hpc.store"):
        w = RunWriter.reopen(tmp_path, "run1")
    assert f"truncating {removed} unreadable bytes" in caplog.text
    assert path.stat().st_size == offsets[-1]
    assert w.append(RecordType.STATUS, {"status": "resumed"}) == offsets[-1]
    w.close()
    records = list(read_records(path))
    assert [r.offset for r in records] == offsets
    assert records[-1].payload == {"status": "resumed"}


def test_reopen_keeps_the_records_after_damage_in_the_middle(tmp_path: Path) -> None:
    path, offsets = _write_sample(tmp_path)
    data = bytearray(path.read_bytes())
    data[offsets[2] + 12] ^= 0x01
    path.write_bytes(bytes(data))
    size = path.stat().st_size
    with RunWriter.reopen(tmp_path, "run1") as w:
        assert w.append(RecordType.STATUS, {"status": "more"}) == size
    damage: list[Damage] = []
    records = list(read_records(path, damage=damage))
    assert [r.offset for r in records] == [o for o in offsets if o != offsets[2]] + [size]
    assert [(d.start, d.end) for d in damage] == [(offsets[2], offsets[3])]


def test_reopen_refusals_and_leftovers(tmp_path: Path) -> None:
    w = RunWriter.create(tmp_path, "r")
    (w.files_dir / ".tmp-0123456789abcdef").write_bytes(b"partial")  # as a killed sink leaves
    with pytest.raises(StoreError, match="another writer"):
        RunWriter.reopen(tmp_path, "r")
    w.close()
    with pytest.raises(RunNotFound):
        RunWriter.reopen(tmp_path, "missing")
    for bad in ("", "../x", "a/b"):
        with pytest.raises(ConfigurationError):
            RunWriter.reopen(tmp_path, bad)
    with pytest.raises(ConfigurationError, match="max_record_bytes"):
        RunWriter.reopen(tmp_path, "r", max_record_bytes=10)
    RunWriter.reopen(tmp_path, "r").close()
    assert list(w.files_dir.iterdir()) == []


def test_a_names_cache_shares_repeated_names_lists(tmp_path: Path) -> None:
    with RunWriter.create(tmp_path, "r") as w:
        for step in range(3):
            w.append_metrics(["a", "b"], [0, 1], [step, step], [T0, T0], [1.0, 2.0])
        w.append_metrics(["b", "a"], [0, 1], [5, 5], [T0, T0], [3.0, 4.0])
    plain = list(read_records(w.records_path))
    cached = list(read_records(w.records_path, names_cache={}))
    for a, b in zip(plain, cached, strict=True):
        _assert_columns_equal(b.payload, a.payload)
    assert cached[0].payload["names"] is cached[1].payload["names"] is cached[2].payload["names"]
    assert cached[3].payload["names"] == ["b", "a"]
