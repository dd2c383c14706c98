"""The aggregator's I/O: one loop that feeds the state machine and performs its actions.

``AggregatorService`` binds the ROUTER socket, creates the run's store, then loops: poll, decode,
``state.handle``, ``state.tick``, perform the actions (replies, store records, file bytes) until
the state says ``Finish``. Two hosts (:mod:`.hosts`) run it: ``ThreadHost`` (a thread of the host process) and
``ProcessHost`` (a child process, ``python -m simvue_hpc.aggregator``), which keeps the
aggregator's work off the host's GIL; benchmarks/README.md has the measurements behind the default.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import transport
from ..config import HPCSettings, ServerSettings
from ..errors import ProtocolError, StoreError, StoreFull
from ..procinfo import pid_alive, process_gone
from ..protocol import GoodbyeAck, Reject, decode, encode
from ..store import FileSink, RecordType, RunWriter
from ..upload import LiveUpload
from . import restart
from .actions import Action, Append, AppendMetrics, FileDiscard, FileWrite, Finish, Reply
from .reduce import parse_reductions
from .state import AggregatorConfig, AggregatorState

log = logging.getLogger(__name__)
MAX_MESSAGES_PER_WAKE = 2000
SYNC_INTERVAL = 1.0


@dataclass(frozen=True)
class AggregatorSpec:
    """Everything an aggregator needs; serialised (:meth:`to_json`) only to reach a child process."""

    run_id: str
    run_name: str
    secret: str
    root: str
    run: dict[str, Any]  # the RUN record: name, folder, description, tags, metadata, system, job
    expected_ranks: int | None = None
    host_rank: int | None = 0
    settings: HPCSettings = field(default_factory=HPCSettings)
    reductions: dict[str, list[str]] = field(default_factory=dict)
    server: ServerSettings | None = field(default=None, repr=False)  # None: offline; holds the token
    curve_secret: str = field(default="", repr=False)  # the aggregator's CURVE key (transport.new_credentials)
    resume: bool = False  # take over the run of an aggregator that died: reopen its store, bind its endpoint
    endpoint: str = ""  # with resume: the endpoint to bind again

    def to_json(self) -> str:
        """The spec as one JSON line for the child process (it holds the secret and the token)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["settings"] = self.settings.to_dict()
        data["server"] = None if self.server is None else self.server.to_dict()
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> AggregatorSpec:
        """The inverse of :meth:`to_json`; the settings are validated again."""
        data = json.loads(text)
        data["settings"] = HPCSettings(**data["settings"])
        data["server"] = None if data["server"] is None else ServerSettings.from_dict(data["server"])
        return cls(**data)


class AggregatorService:
    """Binds, records and loops; used from a thread or as the main of a child process."""

    def __init__(self, spec: AggregatorSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.settings = spec.settings
        self._clock = clock
        self._ctx: Any = None
        self._sock: Any = None
        self._store: RunWriter | None = None
        self._sinks: dict[str, FileSink] = {}
        self._out_seq: dict[bytes, int] = {}
        self._store_full = False  # the disk under the store is full: the run keeps nothing more
        self.endpoint = ""
        self.status: str | None = None
        self._hostname = socket.gethostname()
        self._seen_alive: set[bytes] = set()
        self.uploaded: bool | None = None  # None: no server configured
        self._upload: LiveUpload | None = None
        self._close_request: tuple[str | None, str] | None = None  # set from another thread
        self._terminate_request: str | None = None  # set from a signal handler
        self._events: collections.deque[tuple[str, str]] = collections.deque()  # from other threads
        self._progress: restart.StoredProgress | None = None  # with resume: what the store already holds

    def bind(self, kind: str) -> str:
        """Bind the socket and create the store; errors surface here, in the caller."""
        transport.raise_fd_limit(self.spec.expected_ranks)
        self._ctx = transport.context()
        limits = transport.Limits.from_settings(self.settings)
        spec = self.spec
        port = restart.endpoint_port(spec.endpoint) if spec.resume else 0
        self._sock, self.endpoint = transport.bind_router(
            self._ctx, kind, spec.run_id, secret=spec.secret, server_key=spec.curve_secret, limits=limits, port=port
        )
        try:
            if spec.resume:
                self._store = RunWriter.reopen(Path(spec.root), spec.run_id)
                self._progress = restart.read_progress(self._store.run_dir)
                if self._progress.ended is not None:
                    raise StoreError(f"run {spec.run_id} has ended ({self._progress.ended}): nothing to take over")
            else:
                self._store = RunWriter.create(Path(self.spec.root), self.spec.run_id)
                self._store.append(RecordType.RUN, dict(self.spec.run))
                self._store.append(RecordType.STATUS, {"status": "running", "time_us": time.time_ns() // 1000})
            self._store.flush()
            if self.spec.server is not None:
                self._upload = LiveUpload(self._store.run_dir, self.spec.server)
        except BaseException:
            transport.close(self._sock)
            self._ctx.term()
            raise
        return self.endpoint

    def run(self, control_fd: int | None = None, stop: threading.Event | None = None) -> str:
        """Loop until the run is finished; returns its final status.

        ``control_fd`` is the host's pipe (a child process's stdin): its end of file means the
        host is gone, which starts the close. ``stop`` ends the run at once."""
        assert self._store is not None, "bind() first"
        config = AggregatorConfig(
            run_id=self.spec.run_id,
            run_name=self.spec.run_name,
            secret=self.spec.secret,
            expected_ranks=self.spec.expected_ranks,
            host_rank=self.spec.host_rank,
            settings=self.settings,
            reductions=parse_reductions(self.spec.reductions),
        )
        now = self._clock()
        state = AggregatorState(config, now)
        if self._progress is not None:
            self._perform(state, state.resume(self._progress.final_steps, self._progress.rank_states, now))
        items: list[tuple[Any, int]] = [(self._sock, transport.POLLIN)]
        if control_fd is not None:
            items.append((control_fd, transport.POLLIN))
        poller = transport.poller(*items)
        next_tick = now
        sync_at = now + SYNC_INTERVAL
        try:
            while self.status is None:
                events = dict(poller.poll(int(max(0.0, next_tick - self._clock()) * 1000)))
                now = self._clock()
                if self._sock in events:
                    for i in range(MAX_MESSAGES_PER_WAKE):
                        if i % 64 == 63 and self._clock() >= next_tick:
                            break  # reduce and store what came so far: a burst must not delay the tick
                        frames = transport.recv(self._sock)
                        if frames is None:
                            break
                        identity, body = bytes(frames[0]), frames[1:]
                        try:
                            seq, message = decode(body)
                        except ProtocolError as exc:
                            self._perform(state, state.protocol_error(identity, str(exc), now))
                            continue
                        try:
                            self._perform(state, state.handle(identity, seq, message, now))
                        except (StoreError, OSError):
                            raise  # the store is broken: nothing more can be kept
                        except Exception as exc:  # one bad message must not end the run for everyone
                            log.debug("message %s from %r not applied", type(message).__name__, identity, exc_info=True)
                            self._perform(state, state.protocol_error(identity, f"{type(exc).__name__}: {exc}", now))
                if control_fd is not None and control_fd in events and not _read_or_eof(control_fd):
                    log.info("the host process is gone; closing once the other ranks have")
                    poller.unregister(control_fd)
                    control_fd = None
                    self._perform(state, state.host_gone(now))
                if self._terminate_request is not None:
                    self._perform(state, state.terminate(self._terminate_request, now))
                    self._terminate_request = None
                if self._upload is not None and self._upload.abort_requested and state.aborted is None:
                    self._perform(state, state.abort("abort requested on the Simvue server"))
                while self._events:  # before a close requested after them
                    text, level = self._events.popleft()
                    self._perform(state, state.record_event(text, level, self._hostname))
                if self._close_request is not None:
                    status, reason = self._close_request
                    self._close_request = None
                    if status is not None:
                        self._perform(state, state.set_status(status, reason))
                    state.begin_close(now)
                if stop is not None and stop.is_set():
                    self._perform(state, state.finish_now(now))
                if now >= next_tick:
                    self._perform(state, state.tick(now))
                    next_tick = state.next_deadline(now)
                    self._write(state, self._store.flush)
                    self._perform(state, state.acks(now))  # only what the flush handed to the OS
                if now >= sync_at:
                    self._write(state, self._store.sync)
                    sync_at = now + SYNC_INTERVAL
                    self._check_local_ranks(state)
        finally:
            for sink in self._sinks.values():
                sink.abort()
            try:
                self._store.close()
            except (StoreError, OSError) as exc:
                if not _disk_full(exc):
                    raise
                log.error("the run's last records could not be written: %s", exc)
            transport.close(self._sock, linger_ms=transport.FINAL_LINGER_MS)
            self._ctx.term()
            if self._upload is not None:
                timeout = self.spec.server.upload_timeout if self.spec.server else 0.0
                self.uploaded = self._upload.finish(timeout if self.status else 0.0)
        return self.status or "failed"

    def _check_local_ranks(self, state: AggregatorState) -> None:
        """Ranks on this host whose process has exited (a zombie, or its pid reused) are lost at once.
        A rank that did not say its start time and pid namespace, or lives in another namespace (a
        container may share the host name), counts only once its pid was seen alive."""
        live = state.live_pids_on(self._hostname)
        self._seen_alive &= live.keys()
        for identity, (pid, start_time, pid_ns) in live.items():
            gone = process_gone(pid, start_time, pid_ns)
            if gone is None:
                if pid_alive(pid):
                    self._seen_alive.add(identity)
                    continue
                gone = identity in self._seen_alive
            if gone:
                self._perform(state, state.process_exited(identity))

    def record_event(self, message: str, level: str = "info") -> None:
        """From any thread: an event of this host's own (the sidecar's), stored in order."""
        self._events.append((message, level))

    def request_terminate(self, reason: str) -> None:
        """From a signal handler: mark the run terminated and close it within ``terminate_grace``."""
        self._terminate_request = reason

    def request_close(self, status: str | None = None, reason: str = "") -> None:
        """From any thread: start closing the run (the other ranks get ``close_timeout`` to say
        goodbye), optionally setting its status first. Used by the sidecar when its command ends."""
        self._close_request = (status, reason)

    def _perform(self, state: AggregatorState, actions: list[Action]) -> None:
        assert self._store is not None
        for action in actions:
            if isinstance(action, AppendMetrics):
                if not self._store_full:
                    self._write(
                        state,
                        self._store.append_metrics,
                        action.names,
                        action.name_id,
                        action.step,
                        action.time_us,
                        action.value,
                        action.late,
                    )
            elif isinstance(action, Append):
                self._write(state, self._store.append, action.type, action.payload)
            elif isinstance(action, Reply):
                seq = self._out_seq.pop(action.identity, 0)
                if not isinstance(action.message, (Reject, GoodbyeAck)):  # the link's last word: forget it
                    self._out_seq[action.identity] = seq + 1
                transport.send(self._sock, [action.identity, *encode(action.message, seq)])
            elif isinstance(action, FileWrite):
                self._file_write(state, action)
            elif isinstance(action, FileDiscard):
                sink = self._sinks.pop(action.sha256, None)
                if sink is not None:
                    sink.abort()
            elif isinstance(action, Finish):
                self.status = action.status

    def _write(self, state: AggregatorState, write: Callable[..., Any], *args: Any) -> None:
        """One write to the store; a full disk stops the run (once) instead of ending the loop."""
        try:
            write(*args)
            return
        except (StoreError, OSError) as exc:
            if not _disk_full(exc):
                raise
            why = str(exc)
        self._disk_is_full(state, why)  # outside the handler: the failed write's frames are gone

    def _disk_is_full(self, state: AggregatorState, why: str) -> None:
        if not self._store_full:
            self._store_full = True
            log.error("%s: the run stops accepting data", why)
            self._perform(state, state.stop("disk full", self._clock()))

    def _file_write(self, state: AggregatorState, action: FileWrite) -> None:
        assert self._store is not None
        if self._store_full:
            self._sinks.pop(action.sha256, None)
            self._perform(state, state.file_done(action.sha256, False, "disk full"))
            return
        try:
            sink = self._sinks.get(action.sha256)
            if sink is None:
                sink = self._sinks[action.sha256] = self._store.begin_file(action.sha256)
            sink.write(action.data)
            if not action.final:
                return
            del self._sinks[action.sha256]
            sink.commit()
        except (StoreError, OSError, ValueError) as exc:
            if isinstance(exc, OSError) and not _disk_full(exc):
                raise
            self._sinks.pop(action.sha256, None)
            why, full = str(exc), _disk_full(exc)
        else:
            self._perform(state, state.file_done(action.sha256, True))
            return
        self._perform(state, state.file_done(action.sha256, False, why))
        if full:
            self._disk_is_full(state, why)


def _disk_full(exc: BaseException | None) -> bool:
    """The store's disk (or quota) is full: StoreFull, or ENOSPC/EDQUOT (itself or as the cause)."""
    if isinstance(exc, StoreFull):
        return True
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return exc is not None and _disk_full(exc.__cause__)


def _read_or_eof(fd: int) -> bool:
    try:
        return bool(os.read(fd, 4096))
    except BlockingIOError:
        return True


# ---------------------------------------------------------------------------------------------- hosts
