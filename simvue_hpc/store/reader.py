"""Reading a record log record by record, resynchronising after damage.

Readers never lock: they may run while the aggregator is still appending, and then see a
consistent prefix of the log (the writer only appends whole records to the file's end; a record
still being written is an incomplete record at the end, read later).

Damage
------
A record that is not valid (see :mod:`simvue_hpc.store.format`) does not end the log. The reader
scans forward, byte by byte, for the next offset where a valid record starts: a plausible header
(a known type, a length that stays inside the file, a payload that starts as a msgpack map), then
a matching CRC and a decodable payload. Every intact record after the damage is kept, and the
skipped byte range is reported as a :class:`Damage`. A CRC-32 lets a false start through with a
probability of 2**-32 per plausible offset. To keep the scan from re-checksumming huge spans of a
large log, a candidate longer than ``RESYNC_CHECK_BYTES`` is checked only when another plausible
header (or the end of the file) follows it; a record that long, directly followed by damage to
the next record's header, is then skipped with the damage. (A log crafted to hold a plausible
header at every byte could still make the scan slow; the store is private to its user, 0700.)

An incomplete record at the end of the log (its length runs past the end and nothing valid
follows) is reported too, as ``torn``: a write in progress, or a writer that died mid-record.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import ConfigurationError, StoreError
from ..records import Record, RecordType
from .format import HEADER_SIZE, RECORD, RECORD_HEADER_SIZE, NamesCache, check_header, decode_record

__all__ = ["INCOMPLETE", "Damage", "read_records"]

INCOMPLETE = "incomplete record at the end"
BAD_LENGTH = "bad record length"
BAD_CRC = "checksum mismatch"
BAD_TYPE = "unknown record type"
BAD_PAYLOAD = "undecodable payload"
RESYNC_CHECK_BYTES = 1 << 20
_BLOCK = 1 << 20
_TYPES = np.array(sorted(int(t) for t in RecordType), dtype=np.uint8)
_TYPE_CODES = frozenset(int(t) for t in RecordType)


@dataclass(frozen=True)
class Damage:
    """Bytes of a log that hold no readable record: [start, end), why, and how many records were
    lost when that is known (1 when the damaged record's own length leads to the next valid one)."""

    start: int
    end: int
    reason: str
    records: int | None = None

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def torn(self) -> bool:
        """An incomplete record at the end of the log: a write in progress or cut short."""
        return self.reason == INCOMPLETE


class _Window:
    """Bytes of a (possibly growing) file at absolute offsets, read a block at a time."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._base = 0
        self._buf = b""
        self.size = os.fstat(f.fileno()).st_size

    def refresh(self) -> int:
        self.size = os.fstat(self._f.fileno()).st_size
        return self.size

    def view(self, offset: int, n: int) -> memoryview:
        """n bytes at offset; fewer only at the end of the file."""
        lo = offset - self._base
        if lo < 0 or lo + n > len(self._buf):
            self._f.seek(offset)
            self._buf = self._f.read(max(n, _BLOCK))
            self._base, lo = offset, 0
        return memoryview(self._buf)[lo : lo + n]


def _record_at(win: _Window, offset: int, copy: bool = True, names: NamesCache | None = None) -> Record | str:
    """The valid record at offset, or why there is none."""
    head = win.view(offset, RECORD_HEADER_SIZE)
    if len(head) < RECORD_HEADER_SIZE:
        return INCOMPLETE
    length, crc, code = RECORD.unpack(head)
    end = offset + RECORD_HEADER_SIZE + length
    if end > win.size and end > win.refresh():  # the writer may have appended since
        return BAD_LENGTH
    data = win.view(offset + RECORD_HEADER_SIZE, length)
    if len(data) < length:  # the file shrank under us
        return BAD_LENGTH
    if zlib.crc32(data, zlib.crc32(bytes((code,)))) != crc:
        return BAD_CRC
    if code not in _TYPE_CODES:
        return BAD_TYPE
    return decode_record(offset, end, code, data, copy, names) or BAD_PAYLOAD


def _plausible(block: np.ndarray, count: int) -> np.ndarray:
    """Offsets i < count of block where a record header could start: a known type byte, a payload
    that starts as a msgpack map and, for a non-empty fixmap, a first key that is a string."""
    t = block[8 : 8 + count]
    mark = block[9 : 9 + count]
    key = block[10 : 10 + count]
    ok = np.isin(t, _TYPES)
    fixmap = (mark >= 0x80) & (mark <= 0x8F)
    ok &= fixmap | (mark == 0xDE) | (mark == 0xDF)
    ok &= ~fixmap | (mark == 0x80) | ((key >= 0xA0) & (key <= 0xBF)) | (key == 0xD9)
    return np.flatnonzero(ok)


def _header_follows(win: _Window, offset: int) -> bool:
    """Whether offset is the end of the file or a plausible record header."""
    if offset == win.size:
        return True
    head = np.frombuffer(bytes(win.view(offset, RECORD_HEADER_SIZE + 2)) + b"\0\0", dtype=np.uint8)
    if len(head) < RECORD_HEADER_SIZE + 3 or not len(_plausible(head, 1)):
        return False
    length = int(head[:4].view("<u4")[0])
    return offset + RECORD_HEADER_SIZE + length <= win.size


def _resync(win: _Window, pos: int) -> int | None:
    """The first offset >= pos where a valid record starts, or None."""
    size = win.size
    while pos + RECORD_HEADER_SIZE < size:
        raw = bytes(win.view(pos, _BLOCK + RECORD_HEADER_SIZE + 2))
        at_end = pos + len(raw) >= size
        block = np.frombuffer(raw + (b"\0\0" if at_end else b""), dtype=np.uint8)
        count = max(0, min(len(raw), size - pos - RECORD_HEADER_SIZE)) if at_end else len(raw) - 11
        if count <= 0:
            return None
        for i in _plausible(block, count).tolist():
            offset = pos + i
            length = int(block[i : i + 4].view("<u4")[0])
            end = offset + RECORD_HEADER_SIZE + length
            if length == 0 or end > size or (block[i + 9] == 0x80 and length != 1):
                continue
            if length > RESYNC_CHECK_BYTES and not _header_follows(win, end):
                continue
            if isinstance(_record_at(win, offset), Record):
                return offset
        pos += count
    return None


def _scan(
    f: BinaryIO, start: int, damage: list[Damage] | None, copy: bool, names: NamesCache | None
) -> Iterator[Record]:
    win = _Window(f)
    offset = start
    while offset < win.size or offset < win.refresh():
        found = _record_at(win, offset, copy, names)
        if isinstance(found, Record):
            yield found
            offset = found.end
            continue
        nxt = _resync(win, offset + 1)
        if nxt is None:
            if damage is not None:
                damage.append(Damage(offset, win.size, INCOMPLETE if found == BAD_LENGTH else found))
            return
        if damage is not None:
            length = RECORD.unpack(win.view(offset, RECORD_HEADER_SIZE))[0]
            known = 1 if offset + RECORD_HEADER_SIZE + length == nxt else None
            damage.append(Damage(offset, nxt, found, records=known))
        offset = nxt


def read_records(
    path: Path | str,
    start: int = HEADER_SIZE,
    damage: list[Damage] | None = None,
    copy: bool = True,
    names_cache: NamesCache | None = None,
) -> Iterator[Record]:
    """Yield the valid records of a log from offset start, skipping damage (appended to
    ``damage`` when given, in file order). With copy=False, METRICS columns are read-only views;
    with a names_cache (an empty dict to start), METRICS records repeating a names list share it.

    Raises StoreError if the file cannot be read or its header is missing or not ours.
    """
    path = Path(path)
    if start < HEADER_SIZE:
        raise ConfigurationError(f"start must be >= {HEADER_SIZE}, got {start}")
    try:
        with open(path, "rb") as f:
            check_header(f.read(HEADER_SIZE), path)
            yield from _scan(f, start, damage, copy, names_cache)
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
