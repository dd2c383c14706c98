"""Writing a run's record log: :class:`RunWriter`, the run's single writer, and :class:`FileSink`,
which receives one saved file.

:meth:`RunWriter.flush` hands the bytes to the OS (safe against a process crash);
:meth:`RunWriter.sync` and :meth:`RunWriter.close` also fsync (safe against a machine crash). A
failed write is truncated back to the last whole record, so the log never holds a torn record
before later appends. Saved files are fsynced before their atomic rename. The writer holds an
advisory lock on the log (:func:`simvue_hpc.durable.lock_file`) so that two writers never
interleave.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy.typing as npt

from ..durable import lock_file, write_all
from ..errors import ConfigurationError, StoreError
from ..records import RecordType
from .format import (
    FILES_DIR,
    HEADER_SIZE,
    METRIC_COLUMNS,
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

__all__ = ["FLUSH_THRESHOLD", "FileSink", "RunWriter"]

FLUSH_THRESHOLD = 1 << 20  # buffered bytes that trigger a write to the OS inside append


class FileSink:
    """Receives one saved file into ``files/``: visible only once commit verified its sha256."""

    def __init__(self, files_dir: Path, sha256: str) -> None:
        self._files_dir = files_dir
        self._expected = check_sha256(sha256)
        self._hash = hashlib.sha256()
        self.size = 0
        self._tmp = files_dir / f"{TMP_PREFIX}{secrets.token_hex(8)}"
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
        if digest != self._expected:
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
        """Use :meth:`create`."""
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
        run_dir = Path(root) / check_run_id(run_id)
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
            if not lock_file(fd, path):
                raise StoreError(f"{path} is open by another writer")
            write_all(fd, file_header())
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError):
                raise StoreError(f"cannot write {path}: {exc}") from exc
            raise
        return cls(run_dir, fd, HEADER_SIZE)

    def append(self, rtype: RecordType | int, payload: Mapping[str, Any]) -> int:
        """Append one record; returns its offset. METRICS payloads must be already columnar."""
        try:
            rtype = RecordType(rtype)
        except ValueError as exc:
            raise ConfigurationError(f"unknown record type {rtype!r}") from exc
        if rtype is RecordType.METRICS:
            try:
                decode_metrics(payload)
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigurationError(f"METRICS payload: {exc}") from exc
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
        """Append one METRICS record from columns; ConfigurationError names a bad field."""
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
        payload: dict[str, Any] = {"names": names, **{k: c.tobytes() for k, c in cols.items()}}
        if late:
            payload["late"] = True
        return self._append_raw(RecordType.METRICS, pack_payload(RecordType.METRICS, payload))

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

    def begin_file(self, sha256: str) -> FileSink:
        """Start receiving a file whose content must hash to sha256."""
        return FileSink(self.files_dir, sha256)
