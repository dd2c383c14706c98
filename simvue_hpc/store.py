"""The local store: one append-only, checksummed, crash-safe record log per run.

The aggregator is the single writer of a run (:class:`RunWriter`); the CLI and the uploader read
it (:func:`read_records`, :func:`load_run`), possibly while the aggregator is still appending.

Layout
------
::

    <root>/                          default_root(): $SIMVUE_OFFLINE_DIRECTORY, else
    │                                $XDG_DATA_HOME/simvue_hpc (~/.local/share/simvue_hpc)
    └── <run_id>/                    22 base62 characters (new_run_id)
        ├── records.svr              the record log described below
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

Crash safety
------------
Records are only ever appended. A reader stops, silently, at the first record that is torn or
corrupt: its length runs past the end of the file, its CRC does not match, its type is unknown
or its payload is not a decodable msgpack map. A run killed mid-write therefore keeps every
record before the torn one, and a reader racing the writer sees a consistent prefix.
:meth:`RunWriter.open` truncates such a tail before appending again. :meth:`RunWriter.flush`
hands the bytes to the OS (safe against a process crash); :meth:`RunWriter.sync` and
:meth:`RunWriter.close` also fsync (safe against a machine crash). Saved files are fsynced
before their atomic rename. The writer holds an advisory ``flock`` on the log, where the
filesystem supports it, so that two writers never interleave.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import string
import struct
import sys
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import msgpack
import numpy as np
import numpy.typing as npt

from .errors import ConfigurationError, RunNotFound, StoreError
from .names import is_sha256
from .records import Record, RecordType, msgpack_default

if sys.platform != "win32":
    import fcntl

__all__ = [
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "FileSink",
    "MetricSeries",
    "Record",
    "RecordType",
    "RunView",
    "RunWriter",
    "default_root",
    "find_run",
    "list_runs",
    "load_run",
    "new_run_id",
    "read_records",
]

logger = logging.getLogger(__name__)

MAGIC = b"SVHPCREC"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sHHI")
_RECORD = struct.Struct("<IIB")
HEADER_SIZE = _HEADER.size
RECORD_HEADER_SIZE = _RECORD.size
RECORDS_NAME = "records.svr"
FILES_DIR = "files"
FLUSH_THRESHOLD = 1 << 20  # buffered bytes that trigger a write to the OS inside append
_MAX_PAYLOAD = 0xFFFFFFFF
_TMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20
_BASE62 = string.digits + string.ascii_letters
_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_METRIC_COLUMNS = {"name_id": "<u4", "step": "<i8", "time_us": "<i8", "value": "<f8"}


@dataclass
class MetricSeries:
    """Every point of one metric, in record order."""

    step: npt.NDArray[np.int64]
    time_us: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    late: int = 0  # points that came in records flagged late

    def __len__(self) -> int:
        return len(self.step)


@dataclass
class RunView:
    """A run folded from its records: the state a reader (CLI, uploader) needs."""

    id: str
    run_dir: Path
    name: str | None = None
    folder: str = "/"
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    created_us: int | None = None
    system: dict[str, Any] = field(default_factory=dict)
    job: dict[str, Any] = field(default_factory=dict)
    status: str = "created"
    ended_us: int | None = None
    end: dict[str, Any] | None = None  # the END payload (missing/lost ranks, counters)
    ranks: dict[int, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    alert_states: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> its last ALERT_STATE
    folder_details: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, MetricSeries] = field(default_factory=dict)


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


# --- encoding ------------------------------------------------------------------------------------


def _pack(rtype: RecordType, payload: Mapping[str, Any]) -> bytes:
    """Encode a payload, turning serialisation failures into ConfigurationError."""
    try:
        data: bytes = msgpack.packb(dict(payload), use_bin_type=True, default=msgpack_default)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigurationError(f"{rtype.name} payload: {exc}") from exc
    if len(data) > _MAX_PAYLOAD:
        raise ConfigurationError(f"{rtype.name} payload: {len(data)} bytes exceeds the 4 GiB record limit")
    return data


def _decode_metrics(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Decode a columnar METRICS payload into numpy arrays; ValueError/KeyError/TypeError if bad."""
    names = payload["names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise TypeError("names must be a list of strings")
    cols = {key: np.frombuffer(payload[key], dtype=dt).copy() for key, dt in _METRIC_COLUMNS.items()}
    n = len(cols["name_id"])
    for key, col in cols.items():
        if len(col) != n:
            raise ValueError(f"{key} has {len(col)} values but name_id has {n}")
    if n and int(cols["name_id"].max()) >= len(names):
        raise ValueError(f"name_id {int(cols['name_id'].max())} is out of range for {len(names)} names")
    return {"names": names, **cols, "late": bool(payload.get("late", False))}


def _column(name: str, data: npt.ArrayLike, dtype: str) -> npt.NDArray[Any]:
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


# --- reading -------------------------------------------------------------------------------------


def _check_header(data: bytes, path: Path) -> None:
    """Raise StoreError unless data is a header this version can read."""
    if len(data) < HEADER_SIZE:
        raise StoreError(f"{path}: no record-log header (empty, or still being created)")
    magic, version, _flags, _reserved = _HEADER.unpack(data)
    if magic != MAGIC:
        raise StoreError(f"{path}: not a simvue_hpc record log (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise StoreError(f"{path}: unsupported record-log format version {version}")


def _decode(offset: int, end: int, code: int, data: bytes) -> Record | None:
    """Decode one CRC-checked record; None if it cannot be (which ends the valid log)."""
    try:
        rtype = RecordType(code)
        payload = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if not isinstance(payload, dict):
            return None
        if rtype is RecordType.METRICS:
            payload = _decode_metrics(payload)
    except Exception:  # any decoding failure, whatever msgpack or numpy raise, is a corrupt record
        return None
    return Record(offset, end, rtype, payload)


def read_records(path: Path | str, start: int = HEADER_SIZE) -> Iterator[Record]:
    """Yield the records of a log from offset start, stopping silently at a torn or corrupt one.

    Raises StoreError if the file cannot be read or its header is missing or not ours.
    """
    path = Path(path)
    if start < HEADER_SIZE:
        raise ConfigurationError(f"start must be >= {HEADER_SIZE}, got {start}")
    try:
        with open(path, "rb") as f:
            _check_header(f.read(HEADER_SIZE), path)
            size = os.fstat(f.fileno()).st_size
            offset = f.seek(start)
            while True:
                head = f.read(RECORD_HEADER_SIZE)
                if len(head) < RECORD_HEADER_SIZE:
                    return
                length, crc, code = _RECORD.unpack(head)
                end = offset + RECORD_HEADER_SIZE + length
                if end > size:  # the writer may have appended since; never read past the end
                    size = os.fstat(f.fileno()).st_size
                    if end > size:
                        return
                data = f.read(length)
                if len(data) < length or zlib.crc32(data, zlib.crc32(head[8:])) != crc:
                    return
                record = _decode(offset, end, code, data)
                if record is None:
                    return
                yield record
                offset = end
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc


def load_run(run_dir: Path | str) -> RunView:
    """Fold a run's records into a RunView; metrics are concatenated once, at the end."""
    run_dir = Path(run_dir)
    view = RunView(id=run_dir.name, run_dir=run_dir)
    names: dict[str, int] = {}  # metric name -> global id, in order of first appearance
    gids: list[npt.NDArray[np.int64]] = []
    steps: list[npt.NDArray[np.int64]] = []
    times: list[npt.NDArray[np.int64]] = []
    values: list[npt.NDArray[np.float64]] = []
    late_flags: list[bool] = []
    for rec in read_records(run_dir / RECORDS_NAME):
        p = rec.payload
        match rec.type:
            case RecordType.METRICS:
                lookup = np.array([names.setdefault(n, len(names)) for n in p["names"]], dtype=np.int64)
                gids.append(lookup[p["name_id"]])
                steps.append(p["step"])
                times.append(p["time_us"])
                values.append(p["value"])
                late_flags.append(p["late"])
            case RecordType.RUN:
                view.id = str(p.get("id") or view.id)
                view.name = p.get("name")
                view.folder = p.get("folder") or "/"
                view.description = p.get("description")
                view.tags = _union([], p.get("tags") or [])
                view.metadata = dict(p.get("metadata") or {})
                view.created_us = p.get("created_us")
                view.system = dict(p.get("system") or {})
                view.job = dict(p.get("job") or {})
            case RecordType.RUN_UPDATE:
                for key in ("name", "description", "folder"):
                    if key in p:
                        setattr(view, key, p[key])
                view.metadata.update(p.get("metadata") or {})
                view.tags = _union(view.tags, p.get("tags") or [])
            case RecordType.STATUS:
                view.status = p.get("status", view.status)
            case RecordType.END:
                view.status = p.get("status", view.status)
                view.ended_us = p.get("time_us")
                view.end = p
            case RecordType.RANK if isinstance(p.get("rank"), int):
                view.ranks[p["rank"]] = p
            case RecordType.EVENT:
                view.events.append(p)
            case RecordType.FILE:
                view.files.append(p)
            case RecordType.ALERT:
                view.alerts.append(p)
            case RecordType.ALERT_STATE:
                view.alert_states[str(p.get("name"))] = p
            case RecordType.FOLDER:
                view.folder_details.append(p)
    if gids:
        gid = np.concatenate(gids)
        order = np.argsort(gid, kind="stable")  # groups points by metric, keeping record order
        lengths = [len(g) for g in gids]
        late = np.repeat(np.array(late_flags, dtype=bool), lengths)[order]
        step = np.concatenate(steps)[order]
        time_us = np.concatenate(times)[order]
        value = np.concatenate(values)[order]
        bounds = np.cumsum(np.bincount(gid, minlength=len(names)))
        lo = 0
        for name, i in names.items():
            hi = int(bounds[i])
            if hi > lo:
                view.metrics[name] = MetricSeries(
                    step[lo:hi], time_us[lo:hi], value[lo:hi], int(np.count_nonzero(late[lo:hi]))
                )
            lo = hi
    return view


def _union(tags: list[str], more: Sequence[str]) -> list[str]:
    """Tags in tags, then the new ones of more, each once, order kept."""
    out = list(tags)
    for tag in more:
        if tag not in out:
            out.append(tag)
    return out


def _run_dirs(root: Path) -> list[Path]:
    """The directories of root that hold a record log (others, e.g. simvue's own, are ignored)."""
    try:
        if not root.is_dir():
            return []
        return sorted(d for d in root.iterdir() if (d / RECORDS_NAME).is_file())
    except OSError as exc:
        raise StoreError(f"cannot list {root}: {exc}") from exc


def list_runs(root: Path | str) -> list[RunView]:
    """Every readable run under root, oldest first; unreadable ones are logged and skipped."""
    views = []
    for run_dir in _run_dirs(Path(root)):
        try:
            views.append(load_run(run_dir))
        except StoreError as exc:
            logger.warning("skipping run %s: %s", run_dir.name, exc)
    views.sort(key=lambda v: (v.created_us or 0, v.id))
    return views


def _run_name(run_dir: Path) -> str | None:
    """The run's current name (RUN, then RUN_UPDATE), or None if it has none or is unreadable."""
    name = None
    try:
        for rec in read_records(run_dir / RECORDS_NAME):
            if rec.type in (RecordType.RUN, RecordType.RUN_UPDATE) and "name" in rec.payload:
                name = rec.payload["name"]
    except StoreError:
        return None
    return name if isinstance(name, str) else None


def find_run(root: Path | str, key: str) -> Path:
    """The directory of the run whose id is key, or whose id starts with / name equals key.

    An exact id wins; otherwise id prefixes and names are matched together, and anything but
    exactly one match raises RunNotFound (listing the candidates when ambiguous).
    """
    root = Path(root)
    if not key:
        raise RunNotFound("empty run id or name")
    dirs = _run_dirs(root)
    for run_dir in dirs:
        if run_dir.name == key:
            return run_dir
    named = {d: _run_name(d) for d in dirs}
    matches = [d for d in dirs if d.name.startswith(key) or named[d] == key]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RunNotFound(f"no run in {root} has id or name {key!r}")
    listing = ", ".join(f"{d.name} ({named[d] or 'unnamed'})" for d in matches[:10])
    more = f" and {len(matches) - 10} more" if len(matches) > 10 else ""
    raise RunNotFound(f"{key!r} matches {len(matches)} runs: {listing}{more}")


# --- writing -------------------------------------------------------------------------------------


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write until every byte is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _lock(fd: int, path: Path) -> None:
    """Take the writer's exclusive advisory lock; filesystems without flock are tolerated."""
    if sys.platform == "win32":
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise StoreError(f"{path} is open by another writer") from exc
    except OSError as exc:  # e.g. Lustre mounted without flock
        logger.debug("cannot lock %s (%s); continuing without a lock", path, exc)


def _check_run_id(run_id: str) -> str:
    """A run id is one safe path component: 1-128 of [A-Za-z0-9_.-], starting alphanumeric."""
    if not isinstance(run_id, str) or not _RUN_ID_RE.fullmatch(run_id):
        raise ConfigurationError(f"run_id must be 1-128 of [A-Za-z0-9_.-], starting alphanumeric: {run_id!r}")
    return run_id


def _check_sha256(sha256: str) -> str:
    if not is_sha256(sha256):
        raise ConfigurationError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    return sha256


class FileSink:
    """Receives one saved file into ``files/``: visible only once commit verified its sha256."""

    def __init__(self, files_dir: Path, sha256: str | None) -> None:
        self._files_dir = files_dir
        self._expected = sha256
        self._hash = hashlib.sha256()
        self.size = 0
        self._tmp = files_dir / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
        try:
            self._file: IO[bytes] | None = open(self._tmp, "xb")  # noqa: SIM115 - closed in commit/abort
        except OSError as exc:
            raise StoreError(f"cannot create {self._tmp}: {exc}") from exc

    def _open_file(self) -> IO[bytes]:
        if self._file is None:
            raise StoreError("file sink is already committed or aborted")
        return self._file

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append a chunk of the file's content."""
        f = self._open_file()
        self._hash.update(data)
        try:
            self.size += f.write(data)
        except OSError as exc:
            self.abort()
            raise StoreError(f"cannot write {self._tmp}: {exc}") from exc

    def commit(self) -> str:
        """Verify the sha256, then atomically rename into ``files/<sha256>``; returns the sha256."""
        f = self._open_file()
        digest = self._hash.hexdigest()
        if self._expected is not None and digest != self._expected:
            self.abort()
            raise StoreError(f"checksum mismatch: expected sha256 {self._expected}, got {digest}")
        try:
            f.flush()
            os.fsync(f.fileno())
            f.close()
            self._file = None
            os.replace(self._tmp, self._files_dir / digest)
        except OSError as exc:
            self.abort()
            raise StoreError(f"cannot store file {digest}: {exc}") from exc
        return digest

    def abort(self) -> None:
        """Drop what was written; idempotent."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> FileSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()  # a no-op after commit


class RunWriter:
    """The single writer of one run's log: buffered appends, flush/sync/close, saved files."""

    def __init__(self, run_dir: Path, fd: int, end: int) -> None:
        """Use :meth:`create` or :meth:`open`."""
        self._run_dir = run_dir
        self._fd: int | None = fd
        self._end = end  # offset after the last accepted record (buffered or not)
        self._flushed = end  # offset after the last record handed to the OS
        self._buf = bytearray()
        self._mutex = threading.Lock()

    @property
    def run_dir(self) -> Path:
        return self._run_dir

    @property
    def records_path(self) -> Path:
        return self._run_dir / RECORDS_NAME

    @property
    def files_dir(self) -> Path:
        return self._run_dir / FILES_DIR

    @classmethod
    def create(cls, root: Path | str, run_id: str) -> RunWriter:
        """Create a new run under root and write the log header; StoreError if it exists."""
        run_dir = Path(root) / _check_run_id(run_id)
        try:
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            run_dir.mkdir()
        except FileExistsError as exc:
            raise StoreError(f"run {run_id} already exists in {root}") from exc
        except OSError as exc:
            raise StoreError(f"cannot create {run_dir}: {exc}") from exc
        path = run_dir / RECORDS_NAME
        try:
            (run_dir / FILES_DIR).mkdir()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)
        except OSError as exc:
            raise StoreError(f"cannot create {path}: {exc}") from exc
        try:
            _lock(fd, path)
            _write_all(fd, _HEADER.pack(MAGIC, FORMAT_VERSION, 0, 0))
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError):
                raise StoreError(f"cannot write {path}: {exc}") from exc
            raise
        return cls(run_dir, fd, HEADER_SIZE)

    @classmethod
    def open(cls, root: Path | str, run_id: str) -> RunWriter:
        """Reopen an existing run for appending, truncating a torn or corrupt tail first."""
        run_dir = Path(root) / _check_run_id(run_id)
        path = run_dir / RECORDS_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError as exc:
            raise RunNotFound(f"no run {run_id!r} in {root}") from exc
        except OSError as exc:
            raise StoreError(f"cannot open {path}: {exc}") from exc
        try:
            _lock(fd, path)
            end = HEADER_SIZE
            for rec in read_records(path):
                end = rec.end
            size = os.fstat(fd).st_size
            if size > end:
                logger.warning(
                    "%s: truncating %d bytes of torn or corrupt records after offset %d",
                    path,
                    size - end,
                    end,
                )
                os.ftruncate(fd, end)
            files_dir = run_dir / FILES_DIR
            files_dir.mkdir(exist_ok=True)
            for tmp in files_dir.glob(f"{_TMP_PREFIX}*"):  # left by a writer that died mid-file
                tmp.unlink(missing_ok=True)
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError):
                raise StoreError(f"cannot reopen {path}: {exc}") from exc
            raise
        return cls(run_dir, fd, end)

    def append(self, rtype: RecordType | int, payload: Mapping[str, Any]) -> int:
        """Append one record; returns its offset. METRICS payloads must be already columnar."""
        try:
            rtype = RecordType(rtype)
        except ValueError as exc:
            raise ConfigurationError(f"unknown record type {rtype!r}") from exc
        if rtype is RecordType.METRICS:
            try:
                _decode_metrics(payload)
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigurationError(f"METRICS payload: {exc}") from exc
        return self._append_raw(rtype, _pack(rtype, payload))

    def append_metrics(
        self,
        names: Sequence[str],
        name_id: npt.ArrayLike,
        step: npt.ArrayLike,
        time_us: npt.ArrayLike,
        value: npt.ArrayLike,
        late: bool = False,
    ) -> int:
        """Append one METRICS record from columns; ConfigurationError names a bad field."""
        names = list(names)
        if not all(isinstance(n, str) for n in names):
            raise ConfigurationError("names must all be strings")
        given = {"name_id": name_id, "step": step, "time_us": time_us, "value": value}
        cols = {key: _column(key, data, _METRIC_COLUMNS[key]) for key, data in given.items()}
        n = len(cols["name_id"])
        for key, col in cols.items():
            if len(col) != n:
                raise ConfigurationError(f"{key} has {len(col)} values but name_id has {n}")
        if n and int(cols["name_id"].max()) >= len(names):
            raise ConfigurationError(f"name_id values must be < len(names) = {len(names)}")
        payload: dict[str, Any] = {"names": names, **{k: c.tobytes() for k, c in cols.items()}}
        if late:
            payload["late"] = True
        return self._append_raw(RecordType.METRICS, _pack(RecordType.METRICS, payload))

    def _append_raw(self, rtype: RecordType, data: bytes) -> int:
        head = _RECORD.pack(len(data), zlib.crc32(data, zlib.crc32(bytes((rtype,)))), rtype)
        with self._mutex:
            self._fd_or_raise()
            if self._buf and len(self._buf) + len(head) + len(data) > FLUSH_THRESHOLD:
                self._flush_locked()  # before accepting, so a failure never half-accepts a record
            start = self._end
            self._buf += head
            self._buf += data
            self._end += len(head) + len(data)
            return start

    def _fd_or_raise(self) -> int:
        if self._fd is None:
            raise StoreError(f"{self.records_path} is closed")
        return self._fd

    def _flush_locked(self) -> None:
        fd = self._fd_or_raise()
        if not self._buf:
            return
        try:
            _write_all(fd, self._buf)
        except OSError as exc:
            with contextlib.suppress(OSError):  # never leave a torn record before later appends
                os.ftruncate(fd, self._flushed)
            raise StoreError(f"cannot write {self.records_path}: {exc}") from exc
        self._buf.clear()
        self._flushed = self._end

    def flush(self) -> None:
        """Hand buffered records to the OS: a crash of this process then loses none of them."""
        with self._mutex:
            self._flush_locked()

    def sync(self) -> None:
        """Flush, then fsync: the records survive a crash of the machine too."""
        with self._mutex:
            self._flush_locked()
            try:
                os.fsync(self._fd_or_raise())
            except OSError as exc:
                raise StoreError(f"cannot fsync {self.records_path}: {exc}") from exc

    def close(self) -> None:
        """Flush, fsync and close; idempotent."""
        with self._mutex:
            if self._fd is None:
                return
            try:
                self._flush_locked()
                os.fsync(self._fd)
            except OSError as exc:
                raise StoreError(f"cannot fsync {self.records_path}: {exc}") from exc
            finally:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def has_file(self, sha256: str) -> bool:
        """Whether files/<sha256> is already stored (saved files are deduplicated by content)."""
        return (self.files_dir / _check_sha256(sha256)).is_file()

    def begin_file(self, sha256: str) -> FileSink:
        """Start receiving a file whose content must hash to sha256."""
        return FileSink(self.files_dir, _check_sha256(sha256))

    def store_file_from_path(self, path: Path | str) -> tuple[str, int]:
        """Copy a local file into the store; returns (sha256, size)."""
        sink = FileSink(self.files_dir, None)
        with sink:
            try:
                with open(path, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        sink.write(chunk)
            except OSError as exc:
                raise StoreError(f"cannot read {path}: {exc}") from exc
            return sink.commit(), sink.size
