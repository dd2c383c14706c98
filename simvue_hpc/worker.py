"""A rank's side: a column buffer that ``log`` appends to, and an I/O thread that ships it.

``log`` validates its input, appends to Python lists under a short lock and returns: no I/O, no
numpy, no allocation beyond the lists' growth. The I/O thread owns the DEALER socket (ZeroMQ
sockets are not thread-safe); it turns the lists into numpy columns and sends one message every
``flush_interval`` or as soon as ``batch_points`` are buffered, plus heartbeats, control messages
and file bytes, and finally the acknowledged goodbye.

Overflow policy (when the aggregator cannot keep up)
    At most ``max_buffered_points`` points wait in this process (in the lists and in messages
    that ZeroMQ would not take yet; ZeroMQ itself holds at most ``SNDHWM`` more messages). When
    ``log`` would exceed that bound:

    * ``overflow="block"`` (default): ``log`` waits for room up to ``overflow_timeout`` seconds;
      if none comes, the call's points are dropped and the rank keeps dropping without waiting
      until the buffer is half empty again, so a dead aggregator costs one wait, not one per call.
    * ``overflow="drop"``: the call's points are dropped at once.

    Dropped points are counted per metric and reported in every heartbeat and in the goodbye; the
    aggregator records them in the run (a warning event and the rank's counters). Nothing is lost
    silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import signal
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import transport
from ._version import __version__
from .config import HPCSettings
from .errors import (
    AggregatorUnreachable,
    ConfigurationError,
    ProtocolError,
    RunAborted,
    SimvueHPCError,
    TransportError,
)
from .names import check_metric_name
from .protocol import (
    FileChunk,
    FileOffer,
    FileReply,
    Goodbye,
    GoodbyeAck,
    Heartbeat,
    Hello,
    Message,
    MetricBatch,
    Notice,
    Reject,
    Welcome,
    decode,
    encode,
)
from .resources import ResourceSampler

log = logging.getLogger(__name__)

FILE_CHUNK_BYTES = 1 << 20
FILE_CHUNKS_IN_FLIGHT = 8
SNDHWM = 64
_time_ns = time.time_ns
_monotonic = time.monotonic


def _coerce(name: str, value: Any) -> float:
    """Slow path of ``log``: bools and numpy numbers are accepted, anything else is an error."""
    if isinstance(value, (bool, np.bool_, np.integer, np.floating)):
        return float(value)
    if isinstance(value, (int, float)):  # subclasses of int and float
        return float(value)
    raise ConfigurationError(
        f"metric {name!r}: value must be a real number (int, float or bool), got {type(value).__name__} {value!r}"
    )


def _new_columns() -> tuple[list[int], list[float], list[int]]:
    """Empty buffer columns: name ids and values per point; (step, time, points) per call."""
    return [], [], []


def _float_column(values: list[float]) -> np.ndarray:
    """Values as float64; ints too large for a float become +-inf rather than an error."""
    try:
        return np.array(values, dtype=np.float64)
    except OverflowError:
        return np.array([_safe_float(v) for v in values], dtype=np.float64)


def _safe_float(value: float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


@dataclass
class _FileWait:
    event: threading.Event = field(default_factory=threading.Event)
    replies: deque[FileReply] = field(default_factory=deque)


class Worker:
    """One process's connection to the run's aggregator."""

    def __init__(
        self, endpoint: str, secret: str, rank: int, size: int, settings: HPCSettings,
        reductions: Mapping[str, list[str]] | None = None,
    ) -> None:  # fmt: skip
        self.endpoint = endpoint
        self.settings = settings
        self._hello = Hello(
            secret=secret, rank=rank, size=size, host=socket.gethostname(), pid=os.getpid(),
            client=f"simvue_hpc-python {__version__}", reductions=dict(reductions or {}),
        )  # fmt: skip
        self.rank = rank
        self.run_id = ""
        self.run_name = ""
        # --- the buffer, shared with the I/O thread under _lock
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._name_ids: dict[str, int] = {}
        self._names: list[str] = []
        self._ids, self._vals, self._calls = _new_columns()
        self._name_id = self._name_ids.__getitem__
        self._next_step = 0
        self._armed = False
        self._queued_points = 0  # taken from the lists, not yet accepted by ZeroMQ
        self._dropping = False
        self._dropped: Counter[str] = Counter()
        self.dropped_points = 0
        self._batch_points = settings.batch_points
        self._max_points = settings.max_buffered_points
        # --- control path
        self._controls: deque[tuple[Message, bool]] = deque()
        self._file_waits: dict[str, _FileWait] = {}
        self._chunk_slots = threading.Semaphore(FILE_CHUNKS_IN_FLIGHT)
        self._closing = False
        self._closed = False
        self._detached_reason: str | None = None
        self.abort_reason: str | None = None  # set by the aggregator's abort notice
        self._sampler: ResourceSampler | None = None
        self.acknowledged = False
        self.sent_points = 0
        self._ctx: Any = None
        self._sock: Any = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @property
    def secret(self) -> str:
        return self._hello.secret

    # ------------------------------------------------------------------------------------------ start
    def start(self) -> Welcome:
        """Handshake with the aggregator, then start the I/O thread."""
        self._ctx = transport.context()
        self._sock = transport.connect_dealer(self._ctx, self.endpoint, SNDHWM, self._hello.secret)
        transport.send(self._sock, encode(self._hello, 0), block=True)
        deadline = _monotonic() + self.settings.connect_timeout
        poller = transport.poller((self._sock, transport.POLLIN))
        while True:
            remaining = deadline - _monotonic()
            if remaining <= 0 or not poller.poll(int(remaining * 1000) + 1):
                self._shutdown_socket()
                raise AggregatorUnreachable(
                    f"no answer from the aggregator at {self.endpoint} within {self.settings.connect_timeout} s"
                )
            frames = transport.recv(self._sock)
            if frames is None:
                continue
            try:
                _, reply = decode(frames)
            except ProtocolError as exc:
                self._shutdown_socket()
                raise TransportError(f"the aggregator at {self.endpoint} speaks another protocol: {exc}") from None
            if isinstance(reply, Welcome):
                break
            if isinstance(reply, Reject):
                self._shutdown_socket()
                raise TransportError(f"the aggregator refused this rank: {reply.reason}")
        self.rank, self.run_id, self.run_name = reply.rank, reply.run_id, reply.run_name
        self._seq = 1
        self._outbox: deque[tuple[list[Any], int, bool]] = deque()
        self._thread = threading.Thread(target=self._run, name="simvue_hpc-io", daemon=True)
        self._thread.start()
        return reply

    # ------------------------------------------------------------------------------------------ hot path
    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> bool:
        """Buffer one call's metrics; False if the overflow policy dropped them (module docstring)."""
        t = _time_ns()
        if self.abort_reason is not None:
            raise RunAborted(f"the run was aborted: {self.abort_reason}")
        if metrics.__class__ is not dict and not isinstance(metrics, Mapping):
            raise ConfigurationError(f"metrics must be a mapping of name to number, got {type(metrics).__name__}")
        if step is not None and (step.__class__ is not int or step < 0):
            step = self._check_step(step)
        lock = self._lock
        n0: int | None = None
        lock.acquire()
        try:
            if self._closing:
                raise SimvueHPCError("this run is closed")
            vals = self._vals
            n0 = len(vals)
            if self._dropping or n0 + self._queued_points + len(metrics) > self._max_points:
                if not self._make_room(metrics):
                    return False
                vals = self._vals
                n0 = len(vals)
            ids = self._ids
            get = self._name_ids.get
            name: Any = None
            for name, value in metrics.items():
                i = get(name)
                if i is None:
                    i = self._new_name(name)
                if value.__class__ is not float and value.__class__ is not int:
                    value = _coerce(name, value)
                ids.append(i)
                vals.append(value)
            if step is None:
                step = self._next_step
            self._next_step = step + 1
            n = len(vals)
            self._calls.extend((step, t, n - n0))
            # Wake the I/O thread once per batch: when the buffer stops being empty, and when
            # it crosses batch_points (not on every call past it: each wake is a syscall).
            wake = not self._armed or n0 < self._batch_points <= n
            self._armed = True
        except BaseException:  # an invalid name or value: the call's points are undone, all or nothing
            if n0 is not None:
                del self._ids[n0:]
                del self._vals[n0:]
            raise
        finally:
            lock.release()
        if wake:
            self._wake()
        return True

    def _check_step(self, step: Any) -> int:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise ConfigurationError(f"step must be a non-negative integer, got {type(step).__name__} {step!r}")
        if step < 0:
            raise ConfigurationError(f"step must be a non-negative integer, got {step}")
        return int(step)

    def _new_name(self, name: str) -> int:
        check_metric_name(name)
        i = self._name_ids[name] = len(self._names)
        self._names.append(name)
        return i

    def _make_room(self, metrics: Mapping[str, Any]) -> bool:
        """Called with the lock held when the buffer is full: wait or drop, per the policy."""
        if not self._dropping and self.settings.overflow == "block":
            deadline = _monotonic() + self.settings.overflow_timeout
            while len(self._vals) + self._queued_points + len(metrics) > self._max_points:
                remaining = deadline - _monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._space.wait(remaining)
            else:
                return True
        if (
            self._dropping
            and not self._detached_reason
            and len(self._vals) + self._queued_points <= self._max_points // 2
        ):
            self._dropping = False
            return True
        if not self._dropping:
            log.warning(
                "rank %d: buffer full (%d points); dropping points until it drains", self.rank, self._max_points
            )
        self._dropping = True
        for name in metrics:
            self._dropped[str(name)] += 1
        self.dropped_points += len(metrics)
        return False

    # ------------------------------------------------------------------------------------------ control path
    def send(self, message: Message) -> None:
        """Queue a control message (event, run update, alert, status) behind what is buffered."""
        if self._closed or self._closing:
            raise SimvueHPCError("this run is closed")
        self._controls.append((message, False))
        self._wake()

    def save(self, path: Path, name: str, category: str, mime_type: str) -> str:
        """Send a file unless the aggregator already holds its checksum; returns the sha256."""
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(FILE_CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
        sha = digest.hexdigest()
        wait = self._file_waits.setdefault(sha, _FileWait())
        deadline = _monotonic() + self.settings.file_timeout
        self.send(FileOffer(sha, size, name, category, str(path.resolve()), mime_type, _time_ns()))
        try:
            while True:
                reply = self._next_file_reply(wait, deadline, name)
                if reply.status == "stored":
                    return sha
                if reply.status == "error":
                    raise TransportError(f"file {name!r} was not stored: {reply.reason}")
                self._stream_file(path, sha, size, deadline)
        finally:
            self._file_waits.pop(sha, None)

    def _next_file_reply(self, wait: _FileWait, deadline: float, name: str) -> FileReply:
        while not wait.replies:
            wait.event.clear()
            if wait.replies:
                break
            if self._detached_reason:
                raise TransportError(f"file {name!r} was not stored: {self._detached_reason}")
            if not wait.event.wait(max(0.0, deadline - _monotonic())):
                raise TransportError(
                    f"file {name!r}: no answer from the aggregator within {self.settings.file_timeout} s"
                )
        return wait.replies.popleft()

    def _stream_file(self, path: Path, sha: str, size: int, deadline: float) -> None:
        offset = 0
        with open(path, "rb") as fh:
            while True:
                data = fh.read(FILE_CHUNK_BYTES)
                final = offset + len(data) >= size or not data
                if not self._chunk_slots.acquire(timeout=max(0.0, deadline - _monotonic())):
                    raise TransportError(f"file {path}: the aggregator did not take it within the timeout")
                self._controls.append((FileChunk(sha, offset, final, data), True))
                self._wake()
                offset += len(data)
                if final:
                    return

    # ------------------------------------------------------------------------------------------ close
    def close(self, timeout: float | None = None) -> bool:
        """Flush everything, say goodbye and wait for the acknowledgement; True if acknowledged.

        Never waits longer than ``timeout`` (default ``close_timeout``)."""
        if self._closed:
            return self.acknowledged
        self._close_timeout = self.settings.close_timeout if timeout is None else timeout
        with self._lock:
            self._closing = True
        self._wake()
        if self._thread is not None:
            self._thread.join(self._close_timeout + 5)
        self._closed = True
        with self._lock:
            self._space.notify_all()
        os.close(self._wake_r)
        os.close(self._wake_w)
        return self.acknowledged

    def abandon(self) -> None:
        """Forget the connection without I/O (in a forked child, whose sockets belong to the parent)."""
        self._closed = True
        self._thread = None
        self._sock = None
        self._ctx = None

    # ------------------------------------------------------------------------------------------ I/O thread
    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # BlockingIOError: already signalled (the pipe is full)
            os.write(self._wake_w, b"\x01")

    def _run(self) -> None:
        poller = transport.poller((self._sock, transport.POLLIN), (self._wake_r, transport.POLLIN))
        heartbeat_at = _monotonic() + self.settings.heartbeat_interval
        resources_at = _monotonic() + self.settings.system_metrics_interval
        with contextlib.suppress(Exception):  # psutil can fail in odd sandboxes: then no resource metrics
            self._sampler = ResourceSampler(self.run_id)
        flush_at: float | None = None
        close_deadline: float | None = None
        goodbye_queued = False
        try:
            while True:
                now = _monotonic()
                timeout = min(heartbeat_at, resources_at) - now
                if flush_at is not None:
                    timeout = min(timeout, flush_at - now)
                if self._outbox:
                    timeout = min(timeout, 0.005)
                if close_deadline is not None:
                    timeout = min(timeout, close_deadline - now)
                events = dict(poller.poll(int(max(0.0, timeout) * 1000)))
                if self._wake_r in events:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                if self._sock in events:
                    self._receive()
                now = _monotonic()
                while self._controls:
                    message, is_chunk = self._controls.popleft()
                    self._enqueue(message, 0, is_chunk)
                if self._armed:
                    if flush_at is None:
                        flush_at = now + self.settings.flush_interval
                    if now >= flush_at or len(self._vals) >= self._batch_points or self._closing:
                        self._take_batch()
                        flush_at = None
                if self._closing and close_deadline is None:
                    close_deadline = now + self._close_timeout
                if self._closing and not goodbye_queued and not self._armed and not self._controls:
                    self._enqueue(Goodbye(self.sent_points + self._queued_points, self.dropped_points,
                                          dict(self._dropped)), 0, False)  # fmt: skip
                    goodbye_queued = True
                self._pump()
                if now >= resources_at:
                    resources_at = now + self.settings.system_metrics_interval
                    if self._sampler is not None and not self._closing:
                        self._enqueue(self._sampler.sample(), 0, False)
                        self._pump()
                if now >= heartbeat_at:
                    heartbeat_at = now + self.settings.heartbeat_interval
                    if not self._outbox and not self._closing:
                        self._enqueue(Heartbeat(_time_ns(), self.sent_points, self.dropped_points), 0, False)
                        self._pump()
                if self.acknowledged or self._detached_reason:
                    return
                if close_deadline is not None and _monotonic() >= close_deadline:
                    log.warning(
                        "rank %d: the aggregator did not acknowledge the goodbye within %.0f s; "
                        "%d point(s) sent or queued may not have been stored",
                        self.rank, self._close_timeout, self.sent_points + self._queued_points,
                    )  # fmt: skip
                    return
        except Exception:
            log.exception("rank %d: the simvue_hpc I/O thread failed", self.rank)
            self._detached_reason = "the I/O thread failed"
        finally:
            if self._sampler is not None:
                self._sampler.close()
            transport.close(self._sock)
            self._ctx.term()
            for wait in self._file_waits.values():
                wait.event.set()

    def _enqueue(self, message: Message, points: int, is_chunk: bool) -> None:
        self._outbox.append((encode(message, self._seq), points, is_chunk))
        self._seq = (self._seq + 1) & 0xFFFFFFFF

    def _take_batch(self) -> None:
        """Move the lists into one METRICS message (numpy columns) at the end of the outbox."""
        with self._lock:
            ids, vals, calls = self._ids, self._vals, self._calls
            self._ids, self._vals, self._calls = _new_columns()
            self._armed = False
            self._queued_points += len(vals)
            names = self._names[:]
        if not vals:
            return
        per_call = np.array(calls, dtype=np.int64).reshape(-1, 3)
        n_per_call = per_call[:, 2]
        id_col = np.array(ids, dtype=np.uint32)
        if len(names) > 64:
            used, inverse = np.unique(id_col, return_inverse=True)
            names = [names[i] for i in used]
            id_col = inverse.astype(np.uint32).ravel()
        batch = MetricBatch(
            names=names,
            name_id=id_col,
            step=np.repeat(per_call[:, 0], n_per_call),
            time_ns=np.repeat(per_call[:, 1], n_per_call),
            value=_float_column(vals),
        )
        self._enqueue(batch, len(vals), False)

    def _pump(self) -> None:
        """Hand the outbox to ZeroMQ until it would block."""
        freed = 0
        while self._outbox:
            frames, points, is_chunk = self._outbox[0]
            if not transport.send(self._sock, frames):
                break
            self._outbox.popleft()
            if points:
                self.sent_points += points
                self._queued_points -= points
                freed += points
            if is_chunk:
                self._chunk_slots.release()
        if freed:
            with self._lock:
                self._space.notify_all()

    def _receive(self) -> None:
        while (frames := transport.recv(self._sock)) is not None:
            try:
                _, message = decode(frames)
            except SimvueHPCError as exc:
                log.warning("rank %d: undecodable message from the aggregator: %s", self.rank, exc)
                continue
            if isinstance(message, GoodbyeAck):
                self.acknowledged = True
            elif isinstance(message, FileReply):
                wait = self._file_waits.get(message.sha256)
                if wait is not None:
                    wait.replies.append(message)
                    wait.event.set()
            elif isinstance(message, Reject):
                log.error("rank %d: the aggregator stopped taking data: %s", self.rank, message.reason)
                self._detached_reason = message.reason
                self._dropping = True
            elif isinstance(message, Notice) and message.kind == "abort":
                self._abort(message.message)
            elif isinstance(message, Notice):
                log.warning("rank %d: aggregator notice (%s): %s", self.rank, message.kind, message.message)

    def _abort(self, reason: str) -> None:
        """The run was aborted: the next ``log`` raises RunAborted in the calling thread, or, with
        ``on_abort="terminate"``, the process gets SIGTERM (handled in its main thread, which flushes
        and closes on the way out; never an exit from this thread)."""
        if self.abort_reason is not None:
            return
        self.abort_reason = reason or "abort requested"
        log.warning("rank %d: the run was aborted: %s", self.rank, self.abort_reason)
        if self.settings.on_abort == "terminate":
            os.kill(os.getpid(), signal.SIGTERM)

    def _shutdown_socket(self) -> None:
        transport.close(self._sock)
        if self._ctx is not None:
            self._ctx.term()
        self._sock = None
