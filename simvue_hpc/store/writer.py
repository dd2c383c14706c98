"""Writing a run's record log: :class:`RunWriter`, the run's single writer, and :class:`FileSink`,
which receives one saved file.

:meth:`RunWriter.flush` hands the bytes to the OS (safe against a process crash);
:meth:`RunWriter.sync` and :meth:`RunWriter.close` also fsync (safe against a machine crash). A
failed write is truncated back to the last whole record that reached the file, so the log never
holds a torn record before later appends. Saved files are fsynced before their atomic rename. The
writer holds an advisory lock on the log (:func:`simvue_hpc.durable.lock_file`) so that two
writers never interleave. Run directories are created 0700 and files 0600.
:meth:`RunWriter.reopen` appends to the log of a run whose writer died (an aggregator restarted,
or the host writing the END its aggregator could not): a record the dead writer cut short is
truncated, damage in the middle is left for readers to skip.

Bounded records and a full disk
-------------------------------
A METRICS batch whose record would exceed ``max_record_bytes`` (default
:data:`~simvue_hpc.store.format.MAX_RECORD_BYTES`, 1 MiB) is split into several records, each
naming only the metrics it holds; other records are written as given (their size is bounded by
the protocol's message size). So when the disk fills up, everything written before stays
readable, and at most one buffer (``FLUSH_THRESHOLD``) of records is lost.

On ENOSPC or EDQUOT (from a write, or from fsync on file systems that report it late) the writer
raises :class:`~simvue_hpc.errors.StoreFull` after truncating the log back to the last whole
record on disk; the buffered records that did not fit are dropped and counted in
:attr:`RunWriter.discarded_records` (an ``append`` whose buffer flush failed did not accept its
record either). The writer stays usable: a small final record (the run
marked failed) may still fit in what the truncation freed. Any other write error raises
:class:`~simvue_hpc.errors.StoreError` and keeps the records that did not reach the file in the
buffer, to be written by the next flush.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import os
import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from ..durable import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, fsync_dir, lock_file, write_all
from ..errors import ConfigurationError, RunNotFound, StoreError, StoreFull
from ..records import RecordType
from .format import (
    FILES_DIR,
    HEADER_SIZE,
    MAX_RECORD_BYTES,
    METRIC_COLUMNS,
    RECORD_HEADER_SIZE,
    RECORDS_NAME,
    TMP_PREFIX,
    check_run_id,
    check_sha256,
    decode_metrics,
    file_header,
    frame,
    metric_column,
    pack_payload,
)
from .reader import Damage, read_records

__all__ = ["FLUSH_THRESHOLD", "FileSink", "RunWriter"]

logger = logging.getLogger(__name__)

FLUSH_THRESHOLD = 1 << 20  # buffered bytes that trigger a write to the OS inside append
MIN_RECORD_BYTES = 4096  # the smallest max_record_bytes accepted
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _check_max_record_bytes(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"max_record_bytes must be an integer, not {value!r}")
    if value < MIN_RECORD_BYTES:
        raise ConfigurationError(f"max_record_bytes must be at least {MIN_RECORD_BYTES}, not {value}")


@contextlib.contextmanager
def _locked_or_closed(fd: int, path: Path, what: str) -> Iterator[None]:
    """Lock a run's opened log for this writer, then run the block; on any failure ``fd`` is closed
    and an OSError becomes a StoreError saying ``what`` failed."""
    try:
        if not lock_file(fd, path):
            raise StoreError(f"{path} is open by another writer")
        yield
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, OSError):
            raise _os_error(what, path, exc) from exc
        raise


def _os_error(what: str, path: Path, exc: OSError) -> StoreError:
    """StoreFull for a full disk or quota, StoreError for anything else."""
    if exc.errno in _FULL:
        return StoreFull(f"{what} {path}: the disk is full ({exc.strerror})")
    return StoreError(f"{what} {path}: {exc}")


class FileSink:
    """Receives one saved file into ``files/``: visible only once commit verified its sha256."""

    def __init__(self, files_dir: Path, sha256: str) -> None:
        self._files_dir = files_dir
        self._expected = check_sha256(sha256)
        self._hash = hashlib.sha256()
        self.size = 0
        self._tmp = files_dir / f"{TMP_PREFIX}{secrets.token_hex(8)}"
        try:
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
            self._file: IO[bytes] | None = os.fdopen(fd, "wb")
        except OSError as exc:
            raise _os_error("cannot create", self._tmp, exc) from exc

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
            raise _os_error("cannot write", self._tmp, exc) from exc

    def commit(self) -> str:
        """Verify the sha256, then atomically rename into ``files/<sha256>``; returns the sha256."""
        f = self._open_file()
        digest = self._hash.hexdigest()
        if digest != self._expected:
            self.abort()
            raise StoreError(f"checksum mismatch: expected sha256 {self._expected}, got {digest}")
        try:
            f.flush()
            os.fsync(f.fileno())
            f.close()
            self._file = None
            os.replace(self._tmp, self._files_dir / digest)
            fsync_dir(self._files_dir)  # the rename survives a crash of the machine too
        except OSError as exc:
            self.abort()
            raise _os_error("cannot store file", self._files_dir / digest, exc) from exc
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

    def __init__(self, run_dir: Path, fd: int, end: int, max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        """Use :meth:`create` or :meth:`reopen`."""
        self._run_dir = run_dir
        self._fd: int | None = fd
        self._end = end  # offset after the last accepted record (buffered or not)
        self._flushed = end  # offset after the last record handed to the OS
        self._buf = bytearray()
        self._bounds: list[int] = []  # the end offset of each buffered record, ascending
        self._mutex = threading.Lock()
        self._max_record = max_record_bytes
        self.discarded_records = 0  # records accepted, then dropped because the disk was full

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
    def create(cls, root: Path | str, run_id: str, max_record_bytes: int = MAX_RECORD_BYTES) -> RunWriter:
        """Create a new run under root and write the log header; StoreError if it exists.

        max_record_bytes bounds the size of a METRICS record (header included): bigger batches
        are split."""
        _check_max_record_bytes(max_record_bytes)
        run_dir = Path(root) / check_run_id(run_id)
        try:
            run_dir.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
            run_dir.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError as exc:
            raise StoreError(f"run {run_id} already exists in {root}") from exc
        except OSError as exc:
            raise StoreError(f"cannot create {run_dir}: {exc}") from exc
        path = run_dir / RECORDS_NAME
        try:
            (run_dir / FILES_DIR).mkdir(mode=PRIVATE_DIR_MODE)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, PRIVATE_FILE_MODE)
        except OSError as exc:
            raise _os_error("cannot create", path, exc) from exc
        with _locked_or_closed(fd, path, "cannot write"):
            write_all(fd, file_header())
            for directory in (run_dir, run_dir.parent):  # the new entries survive a machine crash
                fsync_dir(directory)
        return cls(run_dir, fd, HEADER_SIZE, max_record_bytes)

    @classmethod
    def reopen(cls, root: Path | str, run_id: str, max_record_bytes: int = MAX_RECORD_BYTES) -> RunWriter:
        """Open an existing run to append more (after its writer died: an aggregator restarted,
        or the host recording the end of a run its aggregator could not finish).

        Damage at the end of the log (a record cut short by the dead writer) is truncated;
        damage in the middle stays, readers skip it. Temporary files a dead writer left in
        ``files/`` are removed. RunNotFound if there is no such run; StoreError if another
        writer holds it."""
        _check_max_record_bytes(max_record_bytes)
        run_dir = Path(root) / check_run_id(run_id)
        path = run_dir / RECORDS_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError as exc:
            raise RunNotFound(f"no run {run_id!r} in {root}") from exc
        except OSError as exc:
            raise _os_error("cannot open", path, exc) from exc
        with _locked_or_closed(fd, path, "cannot reopen"):
            damage: list[Damage] = []
            end = HEADER_SIZE
            for rec in read_records(path, damage=damage, copy=False):
                end = rec.end
            size = os.fstat(fd).st_size
            if size > end:
                logger.warning("%s: truncating %d unreadable bytes at its end (offset %d)", path, size - end, end)
                os.ftruncate(fd, end)
            for tmp in (run_dir / FILES_DIR).glob(f"{TMP_PREFIX}*"):
                tmp.unlink(missing_ok=True)
        return cls(run_dir, fd, end, max_record_bytes)

    def append(self, rtype: RecordType | int, payload: Mapping[str, Any]) -> int:
        """Append one record; returns its offset. METRICS payloads must be already columnar."""
        try:
            rtype = RecordType(rtype)
        except ValueError as exc:
            raise ConfigurationError(f"unknown record type {rtype!r}") from exc
        if rtype is RecordType.METRICS:
            try:
                cols = decode_metrics(payload, copy=False)
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigurationError(f"METRICS payload: {exc}") from exc
            return self.append_metrics(**cols)
        return self._append_raw(rtype, pack_payload(rtype, payload))

    def append_metrics(
        self,
        names: Sequence[str],
        name_id: npt.ArrayLike,
        step: npt.ArrayLike,
        time_us: npt.ArrayLike,
        value: npt.ArrayLike,
        late: bool = False,
    ) -> int:
        """Append the points as METRICS records (one, or several of at most max_record_bytes);
        returns the offset of the first. ConfigurationError names a bad field."""
        names = list(names)
        if not all(isinstance(n, str) for n in names):
            raise ConfigurationError("names must all be strings")
        given = {"name_id": name_id, "step": step, "time_us": time_us, "value": value}
        cols = {key: metric_column(key, data, METRIC_COLUMNS[key]) for key, data in given.items()}
        n = len(cols["name_id"])
        for key, col in cols.items():
            if len(col) != n:
                raise ConfigurationError(f"{key} has {len(col)} values but name_id has {n}")
        if n and int(cols["name_id"].max()) >= len(names):
            raise ConfigurationError(f"name_id values must be < len(names) = {len(names)}")
        offsets = [self._append_raw(RecordType.METRICS, data) for data in self._metric_payloads(names, cols, late)]
        return offsets[0]

    def _metric_payloads(self, names: list[str], cols: dict[str, npt.NDArray[Any]], late: bool) -> list[bytes]:
        """Encoded METRICS payloads of at most max_record_bytes each (a single point always fits
        one record): too big a batch is cut into runs of consecutive points, each with its own
        names (in the batch's order)."""
        payload: dict[str, Any] = {"names": names, **{k: c.tobytes() for k, c in cols.items()}}
        if late:
            payload["late"] = True
        data = pack_payload(RecordType.METRICS, payload)
        n = len(cols["name_id"])
        if len(data) + RECORD_HEADER_SIZE <= self._max_record or n <= 1:
            return [data]
        parts = min(n, max(2, -(-len(data) // (self._max_record * 7 // 8))))
        cuts = np.linspace(0, n, parts + 1).astype(np.int64).tolist()
        out: list[bytes] = []
        for lo, hi in itertools.pairwise(cuts):
            if hi > lo:
                used, local = np.unique(cols["name_id"][lo:hi], return_inverse=True)
                part = {key: col[lo:hi] for key, col in cols.items()}
                part["name_id"] = local.reshape(-1).astype(METRIC_COLUMNS["name_id"])
                out += self._metric_payloads([names[i] for i in used.tolist()], part, late)
        return out

    def _append_raw(self, rtype: RecordType, data: bytes) -> int:
        head = frame(rtype, data)
        with self._mutex:
            self._fd_or_raise()
            if self._buf and len(self._buf) + len(head) + len(data) > FLUSH_THRESHOLD:
                self._flush_locked()  # before accepting, so a failure never half-accepts a record
            start = self._end
            self._buf += head
            self._buf += data
            self._end += len(head) + len(data)
            self._bounds.append(self._end)
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
            write_all(fd, self._buf)
        except OSError as exc:
            raise self._recover_locked(fd, exc) from exc
        self._buf.clear()
        self._bounds.clear()
        self._flushed = self._end

    def _recover_locked(self, fd: int, exc: OSError) -> StoreError:
        """After a failed write: keep the whole records that reached the file, truncate the torn
        rest; on a full disk drop the records still buffered. Returns the error to raise."""
        try:
            size = os.fstat(fd).st_size
        except OSError:
            size = self._flushed  # nothing known to have reached the file
        done = sum(1 for b in self._bounds if b <= size)  # whole records on disk
        whole = self._bounds[done - 1] if done else self._flushed
        base = whole  # where the next byte will land
        if size > whole:
            try:
                os.ftruncate(fd, whole)  # never leave a torn record before later appends
            except OSError:  # the torn bytes stay; readers resynchronise past them
                base = size
        # a new buffer: the failed write's memoryview may still hold the old one
        self._buf = bytearray(self._buf[whole - self._flushed :])
        self._bounds = [b + base - whole for b in self._bounds[done:]]
        self._flushed = base
        self._end = self._bounds[-1] if self._bounds else base
        error = _os_error("cannot write", self.records_path, exc)
        if isinstance(error, StoreFull):
            self.discarded_records += len(self._bounds)
            self._buf = bytearray()
            self._bounds.clear()
            self._end = base
        return error

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
                raise _os_error("cannot fsync", self.records_path, exc) from exc

    def close(self) -> None:
        """Flush, fsync and close; idempotent."""
        with self._mutex:
            if self._fd is None:
                return
            try:
                self._flush_locked()
                os.fsync(self._fd)
            except OSError as exc:
                raise _os_error("cannot fsync", self.records_path, exc) from exc
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

    def begin_file(self, sha256: str) -> FileSink:
        """Start receiving a file whose content must hash to sha256."""
        return FileSink(self.files_dir, sha256)
