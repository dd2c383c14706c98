"""A rank's connection to the run's aggregator: the handshake, then an I/O thread around the outbox.

``log`` is :meth:`Outbox.add` itself (no frame of its own). The I/O thread owns the DEALER socket
(ZeroMQ sockets are not thread-safe): it takes METRICS messages from the outbox when they are due,
sends control messages (events, alerts, status), file bytes, heartbeats and resource samples, hands
everything to ZeroMQ until it would block, and finally says goodbye and waits for the
acknowledgement. What it cannot do any more (the thread failed, the aggregator stopped the run or
went silent) reaches the caller as one :class:`~simvue_hpc.errors.RunStopped` on the next call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import threads, transport
from ._version import __version__
from .config import HPCSettings
from .errors import (
    AggregatorLost,
    AggregatorUnreachable,
    ProtocolError,
    ReporterDied,
    RunStopped,
    SimvueHPCError,
    TransportError,
)
from .filechunks import file_chunks, file_digest
from .outbox import Every, Outbox
from .procinfo import process_identity
from .protocol import (
    Ack,
    Event,
    FileOffer,
    FileReply,
    Goodbye,
    GoodbyeAck,
    Heartbeat,
    Hello,
    Message,
    Notice,
    Reject,
    Welcome,
    decode,
    encode,
)
from .relay.placement import is_relay_endpoint
from .resend import ResendBuffer, resendable
from .resources import ResourceSampler

log = logging.getLogger(__name__)

FILE_CHUNKS_IN_FLIGHT = 8
SNDHWM = 64
PUMP_RETRY = 0.005  # how soon the I/O thread tries again when ZeroMQ would block
GOODBYE_LINGER_MS = 1000  # how long a rank that leaves during its handshake tries to deliver its goodbye
RECONNECT_GRACE = 5.0  # a connection to the aggregator lost this long (not re-established) means it is gone
RESTART_GRACE = 15.0  # more, when the host may start a new aggregator (aggregator_restarts)


@dataclass
class _FileWait:
    event: threading.Event = field(default_factory=threading.Event)
    replies: deque[FileReply] = field(default_factory=deque)


class Reporter:
    """One process's connection to the run's aggregator."""

    def __init__(
        self,
        endpoint: str,
        secret: str,
        rank: int,
        size: int,
        settings: HPCSettings,
        reductions: Mapping[str, list[str]] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.settings = settings
        start_time, pid_ns = process_identity()
        # What was sent and not yet acknowledged as stored, for an aggregator that restarts (a node
        # relay's ranks do without: their relay is on their node).
        self._resend = None if is_relay_endpoint(endpoint) else ResendBuffer(settings.resend_buffer_points)
        self._relinked = False  # set when a resumed link is welcomed
        self._monitor: Any = None
        self._grace = RECONNECT_GRACE + (RESTART_GRACE if self._resend and settings.aggregator_restarts else 0.0)
        self._hello = Hello(
            secret=secret,
            rank=rank,
            size=size,
            host=socket.gethostname(),
            pid=os.getpid(),
            client=f"simvue_hpc-python {__version__}",
            reductions=dict(reductions or {}),
            start_time=start_time,
            pid_ns=pid_ns,
            resend=self._resend is not None,
        )
        self.rank = rank
        self.run_id = ""
        self.run_name = ""
        self.outbox = Outbox(
            batch_points=settings.batch_points,
            max_points=settings.max_buffered_points,
            flush_interval=settings.flush_interval,
            overflow=settings.overflow,
            overflow_timeout=settings.overflow_timeout,
            wake=self._wake,
            rank=rank,
        )
        self.log = self.outbox.add  # the hot path, without a frame of this class
        self._controls: deque[tuple[Message, bool]] = deque()
        self._queue: deque[tuple[list[Any], int, bool]] = deque()  # encoded, waiting for ZeroMQ
        self._seq = 1
        self._file_waits: dict[str, _FileWait] = {}
        self._chunk_slots = threading.Semaphore(FILE_CHUNKS_IN_FLIGHT)
        self._closed = False
        self._close_timeout = settings.close_timeout
        self._detached_reason: str | None = None
        self.abort_reason: str | None = None  # set by the aggregator's abort notice
        self.acknowledged = False
        self._ctx: Any = None
        self._sock: Any = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @property
    def secret(self) -> str:
        return self._hello.secret

    @property
    def sent_points(self) -> int:
        return self.outbox.sent_points

    # ------------------------------------------------------------------------------------------ start
    def start(self) -> Welcome:
        """Handshake with the aggregator, then start the I/O thread."""
        self._ctx = transport.context()
        s = self.settings  # an aggregator that stops answering ZeroMQ's pings is as gone as a dead one
        keys = "" if is_relay_endpoint(self.endpoint) else self._hello.secret  # a relay: private ipc, no CURVE
        self._sock = transport.connect_dealer(
            self._ctx, self.endpoint, SNDHWM, keys, ping=s.heartbeat_interval, ping_timeout=s.rank_timeout
        )
        transport.send(self._sock, encode(self._hello, 0), block=True)
        try:
            reply = self._await_welcome()
        except BaseException:  # SIGTERM (a pool's terminate) or Ctrl-C during the handshake
            self._leave_quietly()
            raise
        self.rank, self.run_id, self.run_name = reply.rank, reply.run_id, reply.run_name
        self.outbox.rank = reply.rank
        # The aggregator's share of its message budget: never flush more often than it says.
        self.outbox.flush_interval = max(self.settings.flush_interval, reply.flush_interval)
        sampler = None
        with contextlib.suppress(Exception):  # an odd sandbox without /proc: then no resource metrics
            # Made here, not in the I/O thread: an import in a thread racing a fork (pool workers)
            # leaves the child's import lock held by a thread that does not exist there.
            sampler = ResourceSampler(self.run_id)
        self._thread = threads.start(self._run, "simvue_hpc-io", (sampler,))
        return reply

    def _await_welcome(self) -> Welcome:
        deadline = time.monotonic() + self.settings.connect_timeout
        poller = transport.poller((self._sock, transport.POLLIN))
        while True:
            remaining = deadline - time.monotonic()
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
                return reply
            if isinstance(reply, Reject):
                self._shutdown_socket()
                raise TransportError(f"the aggregator refused this rank: {reply.reason}")

    # ------------------------------------------------------------------------------------------ control path
    def send(self, message: Message) -> bool:
        """Queue a control message (event, run update, alert, status) behind what is buffered.
        False when the run stopped taking this rank's data (the first such call raises why)."""
        if self._closed or self.outbox.closing:
            raise SimvueHPCError("this run is closed")
        if self.outbox.stopped_here():
            self.outbox.dropped_calls += 1
            return False
        self._controls.append((message, False))
        self._wake()
        return True

    def save(self, path: Path, name: str, category: str, mime_type: str) -> str:
        """Send a file unless the aggregator already holds its checksum; returns the sha256."""
        sha, size = file_digest(path)
        wait = self._file_waits.setdefault(sha, _FileWait())
        deadline = time.monotonic() + self.settings.file_timeout
        if not self.send(FileOffer(sha, size, name, category, str(path.resolve()), mime_type, time.time_ns())):
            self._file_waits.pop(sha, None)
            return ""
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
                stopped = self.outbox.stopped
                if isinstance(stopped, RunStopped) and not self.outbox.stopped_here():
                    raise stopped
                raise TransportError(f"file {name!r} was not stored: {self._detached_reason}")
            if not wait.event.wait(max(0.0, deadline - time.monotonic())):
                raise TransportError(
                    f"file {name!r}: no answer from the aggregator within {self.settings.file_timeout} s"
                )
        return wait.replies.popleft()

    def _stream_file(self, path: Path, sha: str, size: int, deadline: float) -> None:
        for chunk in file_chunks(path, sha, size):
            if not self._chunk_slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise TransportError(f"file {path}: the aggregator did not take it within the timeout")
            self._controls.append((chunk, True))
            self._wake()

    # ------------------------------------------------------------------------------------------ close
    def close(self, timeout: float | None = None) -> bool:
        """Flush everything, say goodbye and wait for the acknowledgement; True if acknowledged.

        Never waits longer than ``timeout`` (default ``close_timeout``)."""
        if self._closed:
            return self.acknowledged
        self._close_timeout = self.settings.close_timeout if timeout is None else timeout
        self.outbox.close()
        self._wake()
        if self._thread is not None:
            self._thread.join(self._close_timeout + 5)
        self._closed = True
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

    def _run(self, sampler: ResourceSampler | None) -> None:
        try:
            self._monitor = transport.watch_connection(self._sock)
            self._loop(sampler)
        except Exception as exc:
            log.exception("rank %d: the simvue_hpc I/O thread failed", self.rank)
            self._stop(ReporterDied(f"rank {self.rank}: the thread sending to the aggregator failed: {exc!r}"), exc)
        finally:
            if sampler is not None:
                sampler.close()
            transport.close(self._monitor)
            transport.close(self._sock)
            self._ctx.term()
            for wait in self._file_waits.values():
                wait.event.set()

    def _stop(self, error: RunStopped, cause: BaseException | None = None) -> None:
        """This rank can no longer deliver: the next call raises ``error``, later ones drop."""
        error.__cause__ = cause
        self._detached_reason = str(error)
        self.outbox.stop(error)

    def _loop(self, sampler: ResourceSampler | None) -> None:
        monitor = self._monitor
        poller = transport.poller(
            (self._sock, transport.POLLIN), (self._wake_r, transport.POLLIN), (monitor, transport.POLLIN)
        )
        outbox = self.outbox
        now = time.monotonic()
        lost_since: float | None = None
        heartbeat = Every(self.settings.heartbeat_interval, now)
        resources = Every(self.settings.system_metrics_interval, now)
        close_deadline: float | None = None
        goodbye_queued = False
        while True:
            now = time.monotonic()
            wake_at = min(heartbeat.at, resources.at, outbox.deadline(now) or heartbeat.at)
            if self._queue:
                wake_at = min(wake_at, now + PUMP_RETRY)
            if close_deadline is not None:
                wake_at = min(wake_at, close_deadline)
            if lost_since is not None:
                wake_at = min(wake_at, lost_since + self._grace)
            events = dict(poller.poll(int(max(0.0, wake_at - now) * 1000)))
            if monitor in events:
                changes = transport.connection_changes(monitor)
                for connected in changes:
                    lost_since = None if connected else (lost_since or time.monotonic())
                # First what the link brought before it dropped (a goodbye's acknowledgement), then a new
                # link: the aggregator may have been restarted.
                if changes and not changes[-1] and self._resend is not None and not self._receive():
                    poller.unregister(self._sock)
                    poller.unregister(monitor)
                    self._relink()
                    monitor = self._monitor
                    poller.register(self._sock, transport.POLLIN)
                    poller.register(monitor, transport.POLLIN)
            if self._wake_r in events:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            if self._sock in events:
                self._receive()
                if self._relinked:
                    self._relinked = False
                    lost_since = None
            now = time.monotonic()
            while self._controls:
                message, is_chunk = self._controls.popleft()
                self._enqueue(message, 0, is_chunk)
            if outbox.due(now):
                taken = outbox.take(now)
                if taken is not None:
                    self._enqueue(taken[0], taken[1], False)
            closing = outbox.closing
            if closing and close_deadline is None:
                close_deadline = now + self._close_timeout
            if closing and not goodbye_queued and outbox.empty and not self._controls:
                goodbye = Goodbye(
                    outbox.sent_points + outbox.queued_points, outbox.dropped_points, dict(outbox.dropped)
                )
                self._enqueue(goodbye, 0, False)
                goodbye_queued = True
            self._pump()
            if resources.due(now) and sampler is not None and not closing:
                self._enqueue(sampler.sample(), 0, False)
                self._pump()
            if heartbeat.due(now) and not self._queue and not closing:
                self._enqueue(Heartbeat(time.time_ns(), outbox.sent_points, outbox.dropped_points), 0, False)
                self._pump()
            if self.acknowledged or self._detached_reason:
                return
            if lost_since is not None and time.monotonic() >= lost_since + self._grace:
                lost = AggregatorLost(
                    f"rank {self.rank}: the connection to the aggregator at {self.endpoint} was lost and not "
                    f"re-established within {self._grace:.0f} s; {outbox.buffered()} point(s) not delivered"
                )
                log.error("%s", lost)
                self._stop(lost)
                return
            if close_deadline is not None and time.monotonic() >= close_deadline:
                log.warning(
                    "rank %d: the aggregator did not acknowledge the goodbye within %.0f s; "
                    "%d point(s) sent or queued may not have been stored",
                    self.rank,
                    self._close_timeout,
                    outbox.sent_points + outbox.queued_points,
                )
                return

    def _enqueue(self, message: Message, points: int, is_chunk: bool, resent: int = 0) -> None:
        """Queue ``message`` for ZeroMQ (``points`` new points; ``resent`` points sent before)."""
        if self._resend is not None and resendable(message):
            notice = self._resend.add(self._seq, message, points or resent)
            if notice:  # the bound was passed: said once, in the log and the run's events
                log.warning("rank %d: %s", self.rank, notice)
                self._controls.append((Event(f"rank {self.rank}: {notice}", time.time_ns(), "warning"), False))
        self._queue.append((encode(message, self._seq), points, is_chunk))
        self._seq = (self._seq + 1) & 0xFFFFFFFF

    def _relink(self) -> None:
        """The link to the aggregator dropped (it died; the host may start another on the same endpoint):
        a new socket to it, HELLO saying this rank resumes, then everything not acknowledged, in order
        and renumbered. What ZeroMQ still held for the old link is dropped: the buffer has all of it."""
        assert self._resend is not None
        for _, _, is_chunk in self._queue:
            if is_chunk:
                self._chunk_slots.release()
        self._queue.clear()
        transport.close(self._monitor)
        transport.close(self._sock)
        s = self.settings
        self._sock = transport.connect_dealer(
            self._ctx, self.endpoint, SNDHWM, self._hello.secret, ping=s.heartbeat_interval, ping_timeout=s.rank_timeout
        )
        self._monitor = transport.watch_connection(self._sock)
        self._seq = 0
        held = self._resend.take()
        self._enqueue(
            replace(self._hello, rank=self.rank, resume=True, acked_points=self._resend.acked_points), 0, False
        )
        for message, points in held:
            self._enqueue(message, 0, False, resent=points)
        for sha, wait in self._file_waits.items():  # the new aggregator knows nothing of a transfer
            wait.replies.append(FileReply(sha, "error", "the aggregator restarted during the transfer"))
            wait.event.set()
        log.warning("rank %d: the link to the aggregator dropped; resending %d message(s)", self.rank, len(held))

    def _pump(self) -> None:
        """Hand the queue to ZeroMQ until it would block."""
        freed = 0
        while self._queue:
            frames, points, is_chunk = self._queue[0]
            if not transport.send(self._sock, frames):
                break
            self._queue.popleft()
            freed += points
            if is_chunk:
                self._chunk_slots.release()
        if freed:
            self.outbox.sent(freed)

    def _receive(self) -> bool:
        """Take every message waiting; True once the goodbye is acknowledged."""
        while (frames := transport.recv(self._sock)) is not None:
            try:
                _, message = decode(frames)
            except SimvueHPCError as exc:
                log.warning("rank %d: undecodable message from the aggregator: %s", self.rank, exc)
                continue
            if isinstance(message, GoodbyeAck):
                self.acknowledged = True
            elif isinstance(message, Ack):
                if self._resend is not None:
                    self._resend.ack(message.seq)
            elif isinstance(message, Welcome):
                self._relinked = True  # a resumed link was accepted
            elif isinstance(message, FileReply):
                wait = self._file_waits.get(message.sha256)
                if wait is not None:
                    wait.replies.append(message)
                    wait.event.set()
            elif isinstance(message, Reject):
                log.error("rank %d: the aggregator stopped taking data: %s", self.rank, message.reason)
                self._stop(RunStopped(f"the aggregator refused this rank: {message.reason}"))
            elif isinstance(message, Notice) and message.kind == "stopped":
                log.error("rank %d: the run stopped taking data: %s", self.rank, message.message)
                self.outbox.stop(RunStopped(f"the run stopped taking data: {message.message}"))
            elif isinstance(message, Notice) and message.kind == "abort":
                self._abort(message.message)
            elif isinstance(message, Notice):
                log.warning("rank %d: aggregator notice (%s): %s", self.rank, message.kind, message.message)
        return self.acknowledged

    def _abort(self, reason: str) -> None:
        """The run was aborted: the next ``log`` raises RunAborted in the calling thread, or, with
        ``on_abort="terminate"``, the process gets SIGTERM (handled in its main thread, which flushes
        and closes on the way out; never an exit from this thread)."""
        if self.abort_reason is not None:
            return
        self.abort_reason = reason or "abort requested"
        self.outbox.abort(self.abort_reason)
        log.warning("rank %d: the run was aborted: %s", self.rank, self.abort_reason)
        if self.settings.on_abort == "terminate":
            os.kill(os.getpid(), signal.SIGTERM)

    def _leave_quietly(self) -> None:
        """After a HELLO and no more: a GOODBYE of nothing, so the aggregator does not wait for us."""
        if self._sock is None:
            return
        with contextlib.suppress(Exception):
            transport.send(self._sock, encode(Goodbye(0, 0, {}), 1))
            transport.close(self._sock, linger_ms=GOODBYE_LINGER_MS)
        self._shutdown_socket()

    def _shutdown_socket(self) -> None:
        transport.close(self._sock)
        if self._ctx is not None:
            self._ctx.term()
        self._sock = None
