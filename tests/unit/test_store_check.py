"""Verifying runs: ``check_run`` and ``simvue-hpc check``, and ``list`` marking a damaged run."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from simvue_hpc.cli import main
from simvue_hpc.store import RecordType, RunWriter, check_run, check_store, read_records

T0 = 1_700_000_000_000_000


def _run(root: Path, run_id: str, name: str, end: bool = True) -> Path:
    content = b"saved bytes"
    sha = hashlib.sha256(content).hexdigest()
    with RunWriter.create(root, run_id) as w:
        w.append(RecordType.RUN, {"id": run_id, "name": name, "created_us": T0})
        w.append(RecordType.STATUS, {"status": "running", "time_us": T0})
        for i in range(5):
            w.append(RecordType.EVENT, {"message": f"event number {i}", "time_us": T0 + i})
        with w.begin_file(sha) as sink:
            sink.write(content)
            sink.commit()
        w.append(RecordType.FILE, {"name": "out.txt", "sha256": sha, "size": len(content)})
        if end:
            w.append(RecordType.END, {"status": "completed", "time_us": T0 + 9})
    return w.records_path


def _flip(path: Path, record: int) -> tuple[int, int]:
    """Flip a byte inside the payload of the record-th record; returns its byte range."""
    rec = list(read_records(path))[record]
    data = bytearray(path.read_bytes())
    data[rec.offset + 15] ^= 0x40
    path.write_bytes(bytes(data))
    return rec.offset, rec.end


def test_an_intact_run_checks_ok(tmp_path: Path) -> None:
    path = _run(tmp_path, "good", "fine")
    result = check_run(path.parent)
    assert result.ok and not result.damage and result.ended
    assert (result.name, result.status, result.records["EVENT"]) == ("fine", "completed", 5)
    assert result.lines() == [f"good (fine, completed): ok, 9 records in {path.stat().st_size} bytes"]


def test_damage_says_what_is_lost(tmp_path: Path) -> None:
    path = _run(tmp_path, "bad", "hurt")
    start, end = _flip(path, 3)  # the second event
    result = check_run(path.parent)
    assert not result.ok and result.status == "completed" and result.records["EVENT"] == 4
    text = "\n".join(result.lines())
    assert "DAMAGED" in text
    assert f"bytes {start}-{end} ({end - start} bytes): checksum mismatch; 1 record (EVENT) lost" in text


def test_a_damaged_end_and_a_missing_file(tmp_path: Path) -> None:
    path = _run(tmp_path, "r", "x")
    _flip(path, 8)  # END
    sha = hashlib.sha256(b"saved bytes").hexdigest()
    (path.parent / "files" / sha).unlink()
    result = check_run(path.parent)
    assert not result.ok and result.status == "running" and result.missing_files == [sha]
    text = "\n".join(result.lines())
    assert "no END record" in text and f"file {sha} is missing" in text


def test_a_torn_tail_of_a_running_run_is_not_a_loss(tmp_path: Path) -> None:
    path = _run(tmp_path, "live", "writing", end=False)
    with open(path, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00\x06\x82")  # a record header, its payload not yet written
    result = check_run(path.parent)
    assert result.ok and len(result.damage) == 1 and result.damage[0].torn
    assert "still writing" in "\n".join(result.lines())


def test_an_unreadable_log(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "records.svr").write_bytes(b"not a log at all")
    (result,) = check_store(tmp_path)
    assert not result.ok and "UNREADABLE" in result.lines()[0]


def test_cli_check_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(tmp_path, "AAgood", "fine")
    assert main(["--root", str(tmp_path), "check"]) == 0
    assert "AAgood (fine, completed): ok" in capsys.readouterr().out
    path = _run(tmp_path, "BBbad", "hurt")
    _flip(path, 2)
    assert main(["--root", str(tmp_path), "check"]) == 1
    out = capsys.readouterr().out
    assert "AAgood (fine, completed): ok" in out and "BBbad (hurt, completed): DAMAGED" in out
    assert main(["--root", str(tmp_path), "check", "AAgood"]) == 0
    assert "BBbad" not in capsys.readouterr().out
    assert main(["--root", str(tmp_path), "check", "hurt"]) == 1
    assert "DAMAGED" in capsys.readouterr().out
    assert main(["--root", str(tmp_path), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    bad = next(line for line in lines if line.startswith("BBbad"))
    good = next(line for line in lines if line.startswith("AAgood"))
    assert "completed (damaged)" in bad and "damaged" not in good
    os.truncate(path, 10)
    assert main(["--root", str(tmp_path), "check", "BBbad"]) == 1
    assert "UNREADABLE" in capsys.readouterr().out
