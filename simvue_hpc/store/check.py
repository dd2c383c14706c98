"""Verifying runs in the store: what damage their logs hold, whether their saved files are intact,
and, in words, what is lost."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StoreError
from ..names import is_sha256
from ..records import RecordType
from .format import FILES_DIR, RECORD, RECORD_HEADER_SIZE, RECORDS_NAME
from .reader import Damage, read_records
from .runs import run_dirs

__all__ = ["RunCheck", "check_run", "check_store"]

_CHUNK = 1 << 20


@dataclass
class RunCheck:
    """The verdict on one run."""

    run_dir: Path
    name: str | None = None
    status: str = "created"
    ended: bool = False  # an END record was read
    size: int = 0  # bytes of the log
    records: Counter[str] = field(default_factory=Counter)  # record type name -> records read
    damage: list[Damage] = field(default_factory=list)
    damaged_types: dict[int, str] = field(default_factory=dict)  # damage start -> type its header names
    missing_files: list[str] = field(default_factory=list)  # FILE records whose bytes are absent
    corrupt_files: list[str] = field(default_factory=list)  # bytes that do not hash to their name
    error: str | None = None  # the log could not be read at all

    @property
    def ok(self) -> bool:
        """No record, file or log lost (an incomplete record at the end of a running log is not a loss)."""
        torn_ok = all(d.torn for d in self.damage) and not self.ended
        return self.error is None and (not self.damage or torn_ok) and not self.missing_files + self.corrupt_files

    def lines(self) -> list[str]:
        """What was found, in words."""
        head = f"{self.run_dir.name} ({self.name or 'unnamed'}, {self.status})"
        if self.error is not None:
            return [f"{head}: UNREADABLE: {self.error}"]
        read = sum(self.records.values())
        out = [f"{head}: {'ok' if self.ok else 'DAMAGED'}, {read} records in {self.size} bytes"]
        for d in self.damage:
            kind = self.damaged_types.get(d.start)
            what = f"1 record{f' ({kind})' if kind else ''} lost" if d.records == 1 else "records lost: unknown"
            if d.torn:
                note = "the writer is still writing it" if not self.ended else "lost"
                out.append(f"  bytes {d.start}-{d.end} ({d.size} bytes): {d.reason}; {note}")
            else:
                out.append(f"  bytes {d.start}-{d.end} ({d.size} bytes): {d.reason}; {what}")
        lost = sum(d.size for d in self.damage if not d.torn)
        if lost:
            out.append(f"  {lost} of {self.size} bytes unreadable; every record outside them was kept")
        if self.damage and not self.ended:
            out.append("  no END record: the run's final status is unknown (it may be lost in the damage)")
        out += [f"  file {sha} is missing" for sha in self.missing_files]
        out += [f"  file {sha} does not match its sha256" for sha in self.corrupt_files]
        return out


def _file_ok(path: Path, sha256: str) -> bool:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == sha256


def _header_type(path: Path, offset: int) -> str | None:
    """The record type a damaged record's header names, if it names one."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            head = f.read(RECORD_HEADER_SIZE)
        return RecordType(RECORD.unpack(head)[2]).name if len(head) == RECORD_HEADER_SIZE else None
    except (OSError, ValueError):
        return None


def check_run(run_dir: Path | str) -> RunCheck:
    """Read a run's whole log and hash its saved files."""
    run_dir = Path(run_dir)
    path = run_dir / RECORDS_NAME
    result = RunCheck(run_dir)
    shas: list[str] = []
    try:
        result.size = path.stat().st_size
        for rec in read_records(path, damage=result.damage, copy=False):
            result.records[rec.type.name] += 1
            p = rec.payload
            if rec.type in (RecordType.RUN, RecordType.RUN_UPDATE) and isinstance(p.get("name"), str):
                result.name = p["name"]
            elif rec.type in (RecordType.STATUS, RecordType.END):
                result.status = str(p.get("status", result.status))
                result.ended = result.ended or rec.type is RecordType.END
            elif rec.type is RecordType.FILE:
                shas.append(str(p.get("sha256")))
    except (OSError, StoreError) as exc:
        result.error = str(exc)
        return result
    for d in result.damage:
        if d.records == 1 and (kind := _header_type(path, d.start)):
            result.damaged_types[d.start] = kind
    for sha in dict.fromkeys(shas):
        file = run_dir / FILES_DIR / sha
        if not is_sha256(sha):  # never a path outside files/
            result.corrupt_files.append(sha)
            continue
        try:
            if not _file_ok(file, sha):
                result.corrupt_files.append(sha)
        except FileNotFoundError:
            result.missing_files.append(sha)
        except OSError:
            result.corrupt_files.append(sha)
    return result


def check_store(root: Path | str) -> list[RunCheck]:
    """Every run under root, checked."""
    return [check_run(d) for d in run_dirs(Path(root))]
