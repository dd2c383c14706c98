"""The store under a full disk, bounded record sizes, and the store's file modes.

The disk-full tests run on a real 3 MiB tmpfs (mounting needs root; without it they are skipped
with the reason) and, for EDQUOT and fsync, on a fake ``os`` layer."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simvue_hpc.errors import ConfigurationError, StoreError, StoreFull
from simvue_hpc.store import Damage, RecordType, RunWriter, load_run, read_records
from simvue_hpc.store.format import MAX_RECORD_BYTES

T0 = 1_700_000_000_000_000
NAMES = [f"metric_{i:02d}" for i in range(50)]


def _batch(first: int, n: int) -> dict[str, Any]:
    """n points of 50 metrics whose values count up from first, one step per 50 points."""
    values = np.arange(first, first + n, dtype=np.float64)
    ids = np.arange(first, first + n) % len(NAMES)
    steps = np.arange(first, first + n) // len(NAMES)
    return {"names": NAMES, "name_id": ids, "step": steps, "time_us": steps + T0, "value": values}


def _points(path: Path) -> np.ndarray:
    parts = [r.payload["value"] for r in read_records(path) if r.type is RecordType.METRICS]
    return np.concatenate(parts) if parts else np.zeros(0)


def test_a_full_disk_keeps_everything_written_before_it(small_fs: Path) -> None:
    w = RunWriter.create(small_fs, "run")
    w.append(RecordType.RUN, {"id": "run", "name": "full", "created_us": T0})
    sent = 0
    with pytest.raises(StoreFull):
        for _ in range(1000):  # 200,000 points (5.6 MB of columns) per call: more than the disk
            w.append_metrics(**_batch(sent, 200_000))
            sent += 200_000
            w.flush()
    damage: list[Damage] = []
    records = list(read_records(w.records_path, damage=damage))
    assert damage == [] and records[-1].end == w.records_path.stat().st_size  # no torn record left
    assert all(r.end - r.offset <= MAX_RECORD_BYTES for r in records)
    kept = _points(w.records_path)
    np.testing.assert_array_equal(kept, np.arange(len(kept)))  # a prefix of what was logged, in order
    assert len(kept) * 28 > 2 * 2**20  # most of the 3 MiB holds points
    # the writer stays usable: the run can still be marked failed where a few bytes are free
    w.append(RecordType.END, {"status": "failed", "reason": "disk full", "time_us": T0 + 1})
    w.close()
    view = load_run(w.run_dir)
    assert view.status == "failed" and view.end is not None and view.end["reason"] == "disk full"
    assert not view.damage


def test_a_full_disk_while_saving_a_file(small_fs: Path) -> None:
    content = os.urandom(4 << 20)
    with RunWriter.create(small_fs, "run") as w:
        sink = w.begin_file(hashlib.sha256(content).hexdigest())
        with pytest.raises(StoreFull):
            for i in range(0, len(content), 1 << 16):
                sink.write(content[i : i + (1 << 16)])
            sink.commit()
        assert list((w.run_dir / "files").iterdir()) == []  # the partial file is gone


@pytest.mark.parametrize(("code", "full"), [(errno.EDQUOT, True), (errno.ENOSPC, True), (errno.EIO, False)])
def test_a_failed_write_keeps_whole_records_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, full: bool
) -> None:
    w = RunWriter.create(tmp_path, "r")
    w.append(RecordType.STATUS, {"status": "one"})
    w.flush()
    for name in ("two", "three", "four"):
        w.append(RecordType.STATUS, {"status": name})
    real_write = os.write
    cut = len(w._buf) // 2  # "two" and part of "three" reach the disk

    def partial_then_fail(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[:cut]))
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", partial_then_fail)
    with pytest.raises(StoreFull if full else StoreError) as info:
        w.flush()
    assert isinstance(info.value, StoreFull) is full
    monkeypatch.undo()
    assert [r.payload["status"] for r in read_records(w.records_path)] == ["one", "two"]
    assert w.records_path.stat().st_size == list(read_records(w.records_path))[-1].end
    w.append(RecordType.STATUS, {"status": "five"})
    w.close()
    # a full disk drops what did not fit; another error keeps it to write again
    want = ["one", "two", "five"] if full else ["one", "two", "three", "four", "five"]
    assert [r.payload["status"] for r in read_records(w.records_path)] == want
    assert w.discarded_records == (2 if full else 0)


def test_fsync_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = RunWriter.create(tmp_path, "r")
    w.append(RecordType.STATUS, {"status": "one"})

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StoreFull):
        w.sync()
    monkeypatch.undo()
    w.close()


def test_big_metric_batches_are_split_into_bounded_records(tmp_path: Path) -> None:
    names = [f"a_long_metric_name_{i:05d}" for i in range(5000)]
    rng = np.random.default_rng(1)
    n = 100_000
    cols = {
        "names": names,
        "name_id": rng.integers(0, len(names), n),
        "step": np.arange(n),
        "time_us": np.arange(n) + T0,
        "value": rng.normal(size=n),
    }
    with RunWriter.create(tmp_path, "whole", max_record_bytes=2**32) as w:
        w.append_metrics(**cols, late=True)
    with RunWriter.create(tmp_path, "split", max_record_bytes=64 << 10) as w:
        w.append_metrics(**cols, late=True)
    whole = list(read_records(tmp_path / "whole" / "records.svr"))
    split = list(read_records(tmp_path / "split" / "records.svr"))
    assert len(whole) == 1 and len(split) > 40
    assert all(r.end - r.offset <= 64 << 10 for r in split) and all(r.payload["late"] for r in split)
    a, b = load_run(tmp_path / "whole"), load_run(tmp_path / "split")
    assert sorted(a.metrics) == sorted(b.metrics)
    for name, series in a.metrics.items():
        other = b.metrics[name]
        assert series.step.tobytes() == other.step.tobytes() and series.value.tobytes() == other.value.tobytes()
        assert series.time_us.tobytes() == other.time_us.tobytes() and series.late == other.late
    with pytest.raises(ConfigurationError, match="max_record_bytes"):
        RunWriter.create(tmp_path, "tiny", max_record_bytes=100)


def test_the_store_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with RunWriter.create(tmp_path / "root", "r") as w:
            content = b"secret"
            with w.begin_file(hashlib.sha256(content).hexdigest()) as sink:
                sink.write(content)
                sink.commit()
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert modes.pop("root") == 0o700
    assert modes.pop("root/r") == 0o700
    assert modes.pop("root/r/files") == 0o700
    assert set(modes.values()) == {0o600}, modes  # the record log and the saved file


def test_a_torn_write_that_cannot_be_truncated_is_skipped_by_readers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = RunWriter.create(tmp_path, "r")
    w.append(RecordType.STATUS, {"status": "one"})
    w.flush()
    for name in ("two", "three"):
        w.append(RecordType.STATUS, {"status": name})
    real_write = os.write
    cut = len(w._buf) * 3 // 4  # "two" and half of "three"

    def partial_then_fail(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[:cut]))
        raise OSError(errno.EIO, "Input/output error")

    def no_truncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "write", partial_then_fail)
    monkeypatch.setattr(os, "ftruncate", no_truncate)
    with pytest.raises(StoreError):
        w.flush()
    monkeypatch.undo()
    offset = w.append(RecordType.STATUS, {"status": "four"})
    w.close()
    damage: list[Damage] = []
    records = list(read_records(w.records_path, damage=damage))
    assert [r.payload["status"] for r in records] == ["one", "two", "three", "four"]
    assert records[-1].offset == offset  # offsets stay true after the torn bytes
    assert len(damage) == 1 and damage[0].end == records[2].offset
