"""The ``Simvue`` class every process of a job calls: the seed's API, with the official client's
names as aliases.

Every rank calls the same methods; where the process stands (``roles.py``) decides whether it also
hosts the aggregator. A child forked from a process that holds a run attaches to that run on its
first call, so ``Pool`` and ``ProcessPoolExecutor`` workers log into their parent's run unchanged.
A rank that does not host the aggregator never imports it, nor the uploader.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import hooks, roles
from .aggregator.reduce import parse_reductions
from .config import HPCSettings
from .errors import ConfigurationError, RoleError, RunAborted, SimvueHPCError
from .names import check_folder, check_metadata, check_tags
from .official import OfficialAlerts
from .protocol import AlertDefinition, AlertState, Event, FolderDetails, RunUpdate, Status
from .reporter import Reporter
from .runspec import attach_environment, run_fields

if TYPE_CHECKING:
    from .aggregator.hosts import ProcessHost, ThreadHost
    from .relay.launch import NodeRelay

log = logging.getLogger(__name__)

CATEGORIES = ("code", "input", "output")


class Simvue(OfficialAlerts):
    """One process's handle on the job's run.

    ``reductions`` maps metric names to how they are reduced across ranks (``"sum"``,
    ``["max", "mean"]``, ``"per_rank"``; default mean with ``.min`` and ``.max``). Other keyword
    arguments are settings (see :class:`~simvue_hpc.config.HPCSettings`).
    """

    def __init__(self, *, reductions: Mapping[str, str | Sequence[str]] | None = None, **settings: Any) -> None:
        self._settings = HPCSettings.load(settings)
        self._reductions = {k: r.spec() for k, r in parse_reductions(reductions).items()}
        self._reporter: Reporter | None = None
        self._host: ThreadHost | ProcessHost | None = None
        self._exported: dict[str, str | None] = {}
        self._rendezvous: Path | None = None
        self._relay: NodeRelay | None = None  # the node relay this rank started (relay/launch.py)
        self._upload_timeout = 0.0
        self._status_sent = False
        self._marks_termination = True  # a SIGTERM to this process means the job is being stopped
        self._forked = False
        self._closed = False
        self._close_done = threading.Event()  # set once a close has ended, in whichever thread
        self._closer = 0  # the thread that closes
        self._alerts: dict[str, dict[str, Any]] = {}  # the alerts this process defined, by name
        self.status: str | None = None
        self.uploaded: bool | None = None  # on the host, once closed: None when no server is configured

    # ------------------------------------------------------------------------------------------ identity
    @property
    def id(self) -> str | None:
        """The run's id (the directory name in the local store)."""
        return self._reporter.run_id if self._reporter else None

    @property
    def name(self) -> str | None:
        return self._reporter.run_name if self._reporter else None

    @property
    def rank(self) -> int | None:
        """This process's rank in the run (given by the aggregator to pool children)."""
        return self._reporter.rank if self._reporter else None

    # ------------------------------------------------------------------------------------------ init
    def init(
        self,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        description: str | None = None,
        folder: str | None = "/",
    ) -> bool:
        """Start the run (on the aggregator's host) or join it (everywhere else); ``folder=None``
        is the default folder ``/``.

        Under MPI every rank must call it: it broadcasts the aggregator's endpoint once."""
        if self._reporter is not None:
            raise SimvueHPCError("init() was already called on this run")
        run = run_fields(name, metadata, tags, description, folder)
        placement = roles.detect()
        if placement.kind == "attach":
            self._marks_termination = placement.owner == "sidecar"  # a pool's terminate() is routine
            reporter = self._connect(
                placement.endpoint, placement.secret, placement.rank, placement.size, child=placement.owner != "sidecar"
            )
            if placement.owner == "sidecar" and reporter.rank == 0:
                # rank 0's arguments complete the sidecar's; defaults (folder "/") do not override them
                given = {k: v for k, v in run.items() if v not in (None, [], {}) and (k, v) != ("folder", "/")}
                reporter.send(RunUpdate(**given))
        elif placement.kind == "mpi":
            self._init_mpi(placement, run)
        elif placement.kind == "launcher":
            self._init_launcher(placement, run)
        else:
            endpoint, secret = self._start_host(run, placement)
            self._connect(endpoint, secret, 0, 1)
        self._export_environment()
        return True

    def _init_mpi(self, placement: roles.Placement, run: dict[str, Any]) -> None:
        comm = placement.comm
        info: tuple[str, str] | tuple[str, str, str]
        error: BaseException | None = None
        if placement.rank == 0:
            try:
                info = self._start_host(run, placement)
            except BaseException as exc:  # every rank must leave the broadcast, whatever happened
                error = exc
                info = ("error", str(exc), "")
        else:
            info = ("", "")
        info = comm.bcast(info, root=0)
        if error is not None:
            raise error
        if info[0] == "error":
            raise RoleError(f"rank 0 could not start the aggregator: {info[1]}")
        endpoint = info[0]
        if placement.size > 1 and self._settings.hierarchy != "flat":
            from .relay import launch  # each node's first rank starts the node's relay

            endpoint, self._relay = launch.node_endpoint(
                comm, placement.rank, info[0], info[1], self._settings.connect_timeout, self._settings.hierarchy
            )
        self._connect(endpoint, info[1], placement.rank, placement.size)

    def _init_launcher(self, placement: roles.Placement, run: dict[str, Any]) -> None:
        from .store import default_root

        directory = default_root() / ".rendezvous"
        key = roles.job_key(os.environ)
        if placement.rank == 0:
            endpoint, secret = self._start_host(run, placement)
            self._rendezvous = roles.publish(directory, key, {"endpoint": endpoint, "secret": secret})
        else:
            info = roles.wait_published(directory, key, self._settings.connect_timeout * 4)
            endpoint, secret = info["endpoint"], info["secret"]
        self._connect(endpoint, secret, placement.rank, placement.size)

    def _start_host(self, run: dict[str, Any], placement: roles.Placement) -> tuple[str, str]:
        """Start this run's aggregator here; returns its endpoint and the run's secret."""
        from .aggregator.hosts import ProcessHost, ThreadHost
        from .runspec import host_spec, job_info

        job = job_info(placement.size, placement.launcher, self._settings)
        expected = placement.size if placement.kind in ("mpi", "launcher") else None
        spec = host_spec(run, job, self._settings, self._reductions, expected_ranks=expected, host_rank=0)
        self._upload_timeout = spec.server.upload_timeout if spec.server else 0.0
        kind = self._settings.transport
        if self._settings.aggregator == "thread":
            self._host = ThreadHost(spec, kind)
        else:
            self._host = ProcessHost(spec, kind, self._settings.connect_timeout)
        return self._host.endpoint, spec.secret

    def _connect(self, endpoint: str, secret: str, rank: int, size: int, child: bool = False) -> Reporter:
        reporter = Reporter(endpoint, secret, rank, size, self._settings, self._reductions)
        with hooks.sigterm_deferred():  # a SIGTERM now takes effect once the exit handlers can close us
            hooks.catch_sigterm()
            reporter.start()
            self._reporter = reporter
            # The hot path without a frame of its own: run.log is the outbox's add from now on.
            vars(self).update(log=reporter.log, log_metrics=reporter.log)
            hooks.register(self, child=child)
        return reporter

    def _export_environment(self) -> None:
        """Children started from here (pools, subprocesses) join this run through the environment."""
        r = self._reporter
        if r is None or os.environ.get(roles.ENDPOINT_VAR) == r.endpoint:
            return
        for key, value in attach_environment(r.endpoint, r.secret, r.run_id, "parent").items():
            self._exported[key] = os.environ.get(key)
            os.environ[key] = value

    # ------------------------------------------------------------------------------------------ recording
    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> bool:
        """Record metrics (name -> number) at ``step`` (default: one more than this rank's highest)."""
        return self._need_reporter().log(metrics, step)

    def event(self, message: object) -> bool:
        """Record a timestamped event: ``str(message)`` as it is (this rank and host are recorded
        beside it). An exception is recorded as its type and message, with the traceback when it
        is the one being handled (``except Exception as exc: run.event(exc)``)."""
        return self._need_reporter().send(Event(_event_text(message), time.time_ns(), "info"))

    def save(self, filename: str | os.PathLike[str], category: str, name: str | None = None) -> bool:
        """Store a copy of a file with the run (once, however many ranks save the same bytes)."""
        import mimetypes

        if category not in CATEGORIES:
            raise ConfigurationError(f"category must be one of {', '.join(CATEGORIES)}, not {category!r}")
        file = Path(filename)
        if not file.is_file():
            raise ConfigurationError(f"path {str(file)!r} is not a readable file")
        mime = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        return bool(self._need_reporter().save(file, name or file.name, category, mime))

    def folder_details(
        self,
        path: str,
        metadata: Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        description: str | None = None,
    ) -> bool:
        """Set a folder's metadata, tags and description."""
        meta = check_metadata(metadata) or None
        message = FolderDetails(check_folder(path), meta, check_tags(tags) or None, description)
        self._need_reporter().send(message)
        return True

    # ------------------------------------------------------------------------------------------ alerts
    def add_alert(
        self,
        name: str,
        type: str,
        metric: str,
        frequency: float,
        window: float,
        threshold: float | None = None,
        range_low: float | None = None,
        range_high: float | None = None,
    ) -> bool:
        """Define an alert on a metric (``type`` is the rule, e.g. ``"is above"``). ``frequency`` and
        ``window`` are whole minutes, as the Simvue server requires."""
        from .alerts import metric_alert

        for field, minutes in (("frequency", frequency), ("window", window)):
            if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes < 1:
                raise ConfigurationError(
                    f"alert {name!r}: {field} must be a positive integer (minutes), got {minutes!r}"
                )

        self._define(metric_alert(name, type, metric, frequency, window, threshold, range_low, range_high))
        return True

    def _define(self, definition: dict[str, Any]) -> None:
        """Send an alert's definition; the same name again must mean the same alert."""
        name = definition.get("name")
        known = self._alerts.get(name) if isinstance(name, str) else None
        if known is not None and known != definition:
            raise ConfigurationError(f"alert {name!r} is already defined differently in this run: {known}")
        reporter = self._need_reporter()
        if known is None and reporter.send(AlertDefinition(definition)) and isinstance(name, str):
            self._alerts[name] = definition

    def log_alert(self, identifier: str | None = None, name: str | None = None, state: str = "critical") -> bool:
        """Set a user alert's state, ``ok`` or ``critical``."""
        alert = name or identifier
        if not alert:
            raise ConfigurationError("log_alert needs the alert's name (or identifier)")
        if state not in ("ok", "critical"):
            raise ConfigurationError(f"alert state must be 'ok' or 'critical', not {state!r}")
        self._need_reporter().send(AlertState(alert, state))
        return True

    # the official client's names
    log_metrics = log
    log_event = event

    def save_file(self, file_path: str | os.PathLike[str], category: str, name: str | None = None) -> bool:
        """The official client's name for :meth:`save`."""
        return self.save(file_path, category, name)

    # ------------------------------------------------------------------------------------------ close
    def close(self) -> bool:
        """Flush and leave the run; on the host, wait for the other ranks (bounded) and end it."""
        if self._closed and self._reporter is not None and self._closer != threading.get_ident():
            # Closing in another thread (a SIGTERM the main thread slept through): this process must not
            # end, by this thread's return, before that close has delivered everything.
            self._close_done.wait(self._settings.close_timeout + self._upload_timeout + 15)
        if self._closed or self._reporter is None:
            return False
        self._closed = True
        self._closer = threading.get_ident()
        hooks.closing += 1
        try:
            return self._close(self._reporter)
        finally:
            hooks.closing -= 1
            self._close_done.set()

    def _close(self, reporter: Reporter) -> bool:
        if hooks.signalled is not None and self._marks_termination and not self._status_sent:
            signame = signal.Signals(hooks.signalled).name
            with contextlib.suppress(SimvueHPCError):
                reporter.send(
                    Status("terminated", f"signal {signame} on rank {reporter.rank} ({socket.gethostname()})")
                )
        # An aggregator that already died will not acknowledge: do not wait for it.
        dead = self._host is not None and not self._host.alive()
        acknowledged = reporter.close(timeout=1.0 if dead else None)
        if dead:
            log.error("the aggregator of run %s died; what it had not stored is lost", reporter.run_id)
        if self._relay is not None:  # it ends once the node's ranks have closed
            self._relay.finish(self._settings.close_timeout)
            self._relay = None
        if self._host is not None:
            self.status = self._host.wait(self._settings.close_timeout + self._upload_timeout + 10)
            self.uploaded = self._host.uploaded
            self._host = None
        if self._rendezvous is not None:
            self._rendezvous.unlink(missing_ok=True)
        for key, old in self._exported.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        self._exported.clear()
        reporter.outbox.stopped_here()  # the reason the run stopped taking data, unless already raised
        return acknowledged

    def __enter__(self) -> Simvue:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None and self._reporter is not None and not self._closed:
            self._record_failure(self._reporter, exc_type, exc, tb)
        self.close()

    def _record_failure(
        self, reporter: Reporter, exc_type: type[BaseException], exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            return
        stopped = isinstance(exc, (KeyboardInterrupt, RunAborted)) or (
            isinstance(exc, SystemExit) and hooks.signalled is not None
        )
        self._status_sent = True
        where = f"rank {reporter.rank} on {socket.gethostname()}"
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        try:
            reporter.send(Event(f"{exc_type.__name__} on {where}:\n{text}", time.time_ns(), "error"))
            reporter.send(Status("terminated" if stopped else "failed", f"{exc_type.__name__}: {exc}"))
        except SimvueHPCError as err:
            log.warning("could not record the failure: %s", err)

    # ------------------------------------------------------------------------------------------ forks
    def _need_reporter(self) -> Reporter:
        return self._reporter if self._reporter is not None else self._attach_after_fork()

    def _after_fork(self) -> None:
        """In a forked child: the parent's connection is not ours; join the run anew when used."""
        if self._reporter is not None:
            self._reporter.abandon()
        self._reporter = None
        for name in ("log", "log_metrics"):  # back to the method that attaches on first use
            vars(self).pop(name, None)
        self._host = None
        self._exported = {}
        self._rendezvous = None
        self._relay = None
        self._forked = not self._closed
        self._closed = False
        self._close_done = threading.Event()

    def _attach_after_fork(self) -> Reporter:
        if not self._forked:
            raise SimvueHPCError("call init() before recording anything")
        placement = roles.detect()
        if placement.kind != "attach":
            raise RoleError("this forked process cannot find its parent's run (SIMVUE_HPC_ENDPOINT is not set)")
        self._forked = False
        self._marks_termination = False
        return self._connect(placement.endpoint, placement.secret, placement.rank, placement.size, child=True)


def _event_text(message: object) -> str:
    if not isinstance(message, BaseException):
        return str(message)
    text = f"{type(message).__name__}: {message}"
    if sys.exc_info()[1] is message:  # the exception being handled: its traceback too
        text += "\n" + "".join(traceback.format_exception(message)).rstrip("\n")
    return text


def attach(**settings: Any) -> Simvue:
    """Join the run this process was started into (by a pool's parent or ``simvue-hpc run``)."""
    run = Simvue(**settings)
    if roles.detect().kind != "attach":
        raise RoleError(f"no run to attach to: {roles.ENDPOINT_VAR} is not set in this process")
    run.init()
    return run


def init_worker() -> None:
    """``Pool(initializer=simvue_hpc.init_worker)``: attach once per worker process."""
    attach()


def current_run() -> Simvue:
    """This process's run: the one ``init_worker``/``attach`` made, or the last one initialised."""
    run = hooks.current
    if run is None:
        run = attach()
    assert isinstance(run, Simvue)
    return run
