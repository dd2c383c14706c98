"""The on-disk format of the local store: layout, record log, encoding and decoding of payloads.

This module is the specification; the reader and the writer only move bytes it defines.

Layout
------
::

    <root>/                          default_root(): $SIMVUE_OFFLINE_DIRECTORY, else
    │                                $XDG_DATA_HOME/simvue_hpc (~/.local/share/simvue_hpc)
    └── <run_id>/                    22 base62 characters (new_run_id); mode 0700
        ├── records.svr              the record log described below; mode 0600
        └── files/
            ├── <sha256>             a saved file's bytes, named by their lowercase sha256 hex
            └── .tmp-<random>        a file being received; renamed to <sha256> once verified

Record log (``records.svr``), all integers little-endian
-------------------------------------------------------
File header, 16 bytes::

    offset  size  field
    0       8     magic      b"SVHPCREC"
    8       2     version    uint16, FORMAT_VERSION = 1
    10      2     flags      uint16, 0
    12      4     reserved   uint32, 0

then records back to back, each::

    0       4     length     uint32, payload size in bytes
    4       4     crc32      uint32, zlib.crc32 over the type byte followed by the payload
    8       1     type       uint8, a RecordType
    9       length payload   msgpack (use_bin_type=True) of a map with string keys

Record types and their payload maps (times are int64 microseconds since the Unix epoch, UTC):

====  ==========  ==========================================================================
1     RUN         run created: id, name, folder, description, tags, metadata, created_us,
                  system, job
2     RUN_UPDATE  any of name, metadata (merged into the existing map), tags (union, order
                  kept), description, folder
3     FOLDER      path, metadata, tags, description
4     STATUS      status, time_us
5     METRICS     columnar points: names [str]; name_id, step, time_us, value as raw bytes of
                  <u4, <i8, <i8, <f8 arrays of one length; name_id[i] indexes names; optional
                  late (bool: the points arrived after the run had moved on)
6     EVENT       message, time_us, rank, host, level
7     FILE        name, category, sha256, size, original_path, mime_type, rank, host, time_us;
                  the bytes are in files/<sha256>, committed before this record is appended
8     ALERT       an alert definition, stored as given
9     RANK        rank, host, pid, state ("joined" | "closed" | "lost" | "missing"), time_us,
                  optional counters
10    END         status, time_us, optional missing_ranks, lost_ranks, counters
11    ALERT_STATE name, status ("ok" | "critical"), time_us, message: an alert changed state
====  ==========  ==========================================================================

A METRICS record is at most ``MAX_RECORD_BYTES`` (1 MiB, a setting of the writer) unless it
holds a single point: the writer splits bigger batches into several records, each with the names
it uses. Other records have no bound of their own.

A record is valid when its length stays inside the file, its CRC matches, its type is one of
the above and its payload decodes to a map (for METRICS: columns of one length whose name_id
values index names). Anything else is damage; the reader's docstring says how it is handled.
"""

from __future__ import annotations

import os
import re
import secrets
import string
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from ..errors import ConfigurationError, StoreError
from ..names import is_sha256
from ..records import Record, RecordType, msgpack_default

__all__ = [
    "FILES_DIR",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_RECORD_BYTES",
    "METRIC_COLUMNS",
    "RECORDS_NAME",
    "RECORD_HEADER_SIZE",
    "check_header",
    "check_run_id",
    "check_sha256",
    "decode_metrics",
    "decode_record",
    "default_root",
    "file_header",
    "frame",
    "metric_column",
    "new_run_id",
    "pack_payload",
]

MAGIC = b"SVHPCREC"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sHHI")
RECORD = struct.Struct("<IIB")
HEADER_SIZE = HEADER.size
RECORD_HEADER_SIZE = RECORD.size
RECORDS_NAME = "records.svr"
FILES_DIR = "files"
TMP_PREFIX = ".tmp-"
MAX_PAYLOAD = 0xFFFFFFFF
MAX_RECORD_BYTES = 1 << 20  # default bound of a METRICS record, header included: bigger batches are split
METRIC_COLUMNS = {"name_id": "<u4", "step": "<i8", "time_us": "<i8", "value": "<f8"}
_BASE62 = string.digits + string.ascii_letters
_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


# --- layout --------------------------------------------------------------------------------------


def default_root() -> Path:
    """The store root: $SIMVUE_OFFLINE_DIRECTORY, else the XDG data directory."""
    if env := os.environ.get("SIMVUE_OFFLINE_DIRECTORY"):
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME", "")
    base = Path(data) if os.path.isabs(data) else Path.home() / ".local" / "share"
    return base / "simvue_hpc"


def new_run_id() -> str:
    """A fresh 22-character base62 run id (about 131 random bits)."""
    return "".join(secrets.choice(_BASE62) for _ in range(22))


def check_run_id(run_id: str) -> str:
    """A run id is one safe path component: 1-128 of [A-Za-z0-9_.-], starting alphanumeric."""
    if not isinstance(run_id, str) or not _RUN_ID_RE.fullmatch(run_id):
        raise ConfigurationError(f"run_id must be 1-128 of [A-Za-z0-9_.-], starting alphanumeric: {run_id!r}")
    return run_id


def check_sha256(sha256: str) -> str:
    """A saved file's name: 64 lowercase hex digits."""
    if not is_sha256(sha256):
        raise ConfigurationError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    return sha256


# --- encoding ------------------------------------------------------------------------------------


def file_header() -> bytes:
    """The 16 bytes a record log starts with."""
    return HEADER.pack(MAGIC, FORMAT_VERSION, 0, 0)


def pack_payload(rtype: RecordType, payload: Mapping[str, Any]) -> bytes:
    """Encode a payload, turning serialisation failures into ConfigurationError."""
    try:
        data: bytes = msgpack.packb(dict(payload), use_bin_type=True, default=msgpack_default)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigurationError(f"{rtype.name} payload: {exc}") from exc
    if len(data) > MAX_PAYLOAD:
        raise ConfigurationError(f"{rtype.name} payload: {len(data)} bytes exceeds the 4 GiB record limit")
    return data


def frame(rtype: RecordType, data: bytes) -> bytes:
    """The 9-byte record header for an encoded payload."""
    return RECORD.pack(len(data), zlib.crc32(data, zlib.crc32(bytes((rtype,)))), rtype)


def metric_column(name: str, data: npt.ArrayLike, dtype: str) -> npt.NDArray[Any]:
    """Check one metrics column and convert it to its on-disk dtype."""
    arr = np.asarray(data)
    if arr.ndim != 1:
        raise ConfigurationError(f"{name} must be one-dimensional, got shape {arr.shape}")
    target = np.dtype(dtype)
    if arr.size == 0:
        return arr.astype(target)
    if target.kind in "iu":
        if arr.dtype.kind not in "iu":
            raise ConfigurationError(f"{name} must hold integers, got {arr.dtype}")
        info = np.iinfo(target)
        if int(arr.min()) < info.min or int(arr.max()) > info.max:
            raise ConfigurationError(f"{name} values must lie in [{info.min}, {info.max}]")
    elif arr.dtype.kind not in "iuf":
        raise ConfigurationError(f"{name} must hold real numbers, got {arr.dtype}")
    return arr.astype(target)


# --- decoding ------------------------------------------------------------------------------------


def check_header(data: bytes, path: Path) -> None:
    """Raise StoreError unless data is a header this version can read."""
    if len(data) < HEADER_SIZE:
        raise StoreError(f"{path}: no record-log header (empty, or still being created)")
    magic, version, _flags, _reserved = HEADER.unpack(data[:HEADER_SIZE])
    if magic != MAGIC:
        raise StoreError(f"{path}: not a simvue_hpc record log (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise StoreError(f"{path}: unsupported record-log format version {version}")


def decode_metrics(payload: Mapping[str, Any], copy: bool = True, names_checked: bool = False) -> dict[str, Any]:
    """Decode a columnar METRICS payload into numpy arrays; ValueError/KeyError/TypeError if bad.

    With copy=False the arrays are read-only views of the payload's bytes; names_checked skips
    checking a names list already known to be a list of strings."""
    names = payload["names"]
    if not names_checked and (not isinstance(names, list) or (names and set(map(type, names)) != {str})):
        raise TypeError("names must be a list of strings")
    cols = {key: np.frombuffer(payload[key], dtype=dt) for key, dt in METRIC_COLUMNS.items()}
    if copy:
        cols = {key: col.copy() for key, col in cols.items()}
    n = len(cols["name_id"])
    for key, col in cols.items():
        if len(col) != n:
            raise ValueError(f"{key} has {len(col)} values but name_id has {n}")
    if n and int(cols["name_id"].max()) >= len(names):
        raise ValueError(f"name_id {int(cols['name_id'].max())} is out of range for {len(names)} names")
    return {"names": names, **cols, "late": bool(payload.get("late", False))}


NamesCache = dict[bytes, list[str]]
_NAMES_CACHE_SIZE = 64


def _unpack_metrics(data: bytes | memoryview, cache: NamesCache) -> dict[str, Any]:
    """Unpack a METRICS payload as msgpack.unpackb would, but take its names list from cache when
    the same encoded list was seen before (a run repeats its lists record after record): the
    same list object, decoded and checked once."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    payload: dict[Any, Any] = {}
    for _ in range(unpacker.read_map_header()):
        key = unpacker.unpack()
        if key != "names":
            payload[key] = unpacker.unpack()
            continue
        start = unpacker.tell()
        unpacker.skip()
        raw = bytes(data[start : unpacker.tell()])
        names = cache.get(raw)
        if names is None:
            names = msgpack.unpackb(raw, raw=False)
            if not isinstance(names, list) or (names and set(map(type, names)) != {str}):
                raise TypeError("names must be a list of strings")
            if len(cache) >= _NAMES_CACHE_SIZE:
                cache.clear()
            cache[raw] = names
        payload[key] = names
    if unpacker.tell() != len(data):
        raise ValueError("extra bytes after the payload")
    return payload


def decode_record(
    offset: int,
    end: int,
    code: int,
    data: bytes | memoryview,
    copy: bool = True,
    names_cache: NamesCache | None = None,
) -> Record | None:
    """Decode one CRC-checked record; None if it cannot be (an unknown type or a bad payload).

    With copy=False a METRICS record's columns are read-only views of its payload. With a
    names_cache, METRICS records with an identical names list share one list object."""
    try:
        rtype = RecordType(code)
        if rtype is RecordType.METRICS and names_cache is not None:
            payload = decode_metrics(_unpack_metrics(data, names_cache), copy, names_checked=True)
        else:
            payload = msgpack.unpackb(data, raw=False, strict_map_key=False)
            if not isinstance(payload, dict):
                return None
            if rtype is RecordType.METRICS:
                payload = decode_metrics(payload, copy)
    except Exception:  # any decoding failure, whatever msgpack or numpy raise, is a corrupt record
        return None
    return Record(offset, end, rtype, payload)
