"""The ``Simvue`` class every process of a job calls: the seed's API, with the official client's
names as aliases.

Every rank calls the same methods; where the process stands (``roles.py``) decides whether it also
hosts the aggregator. A child forked from a process that holds a run attaches to that run on its
first call, so ``Pool`` and ``ProcessPoolExecutor`` workers log into their parent's run unchanged.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import mimetypes
import multiprocessing.util
import os
import platform
import signal
import socket
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from . import roles, transport
from .aggregator.loop import AggregatorSpec, ProcessHost, ThreadHost
from .aggregator.reduce import parse_reductions
from .alerts import event_alert, metric_alert, metric_range_alert, metric_threshold_alert, user_alert
from .config import HPCSettings, ServerSettings
from .errors import ConfigurationError, RoleError, RunAborted, ServerUnavailable, SimvueHPCError
from .names import check_folder, check_metadata, check_run_name, check_tags, generate_name
from .protocol import AlertDefinition, AlertState, Event, FolderDetails, RunUpdate, Status
from .server import RetryPolicy, SimvueClient
from .store import default_root, new_run_id
from .worker import Worker

log = logging.getLogger(__name__)

CATEGORIES = ("code", "input", "output")
_live: weakref.WeakSet[Simvue] = weakref.WeakSet()
_current: Simvue | None = None


class Simvue:
    """One process's handle on the job's run.

    ``reductions`` maps metric names to how they are reduced across ranks (``"sum"``,
    ``["max", "mean"]``, ``"per_rank"``; default mean with ``.min`` and ``.max``). Other keyword
    arguments are settings (see :class:`~simvue_hpc.config.HPCSettings`).
    """

    def __init__(self, *, reductions: Mapping[str, str | Sequence[str]] | None = None, **settings: Any) -> None:
        self._settings = HPCSettings.load(settings)
        self._reductions = {k: r.spec() for k, r in parse_reductions(reductions).items()}
        self._worker: Worker | None = None
        self._host: ThreadHost | ProcessHost | None = None
        self._exported: dict[str, str | None] = {}
        self._rendezvous: Path | None = None
        self._upload_timeout = 0.0
        self._status_sent = False
        self._marks_termination = True  # a SIGTERM to this process means the job is being stopped
        self._forked = False
        self._closed = False
        self.status: str | None = None
        self.uploaded: bool | None = None  # on the host, once closed: None when no server is configured

    # ------------------------------------------------------------------------------------------ identity
    @property
    def id(self) -> str | None:
        """The run's id (the directory name in the local store)."""
        return self._worker.run_id if self._worker else None

    @property
    def name(self) -> str | None:
        return self._worker.run_name if self._worker else None

    @property
    def rank(self) -> int | None:
        """This process's rank in the run (given by the aggregator to pool children)."""
        return self._worker.rank if self._worker else None

    # ------------------------------------------------------------------------------------------ init
    def init(
        self,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        description: str | None = None,
        folder: str = "/",
    ) -> bool:
        """Start the run (on the aggregator's host) or join it (everywhere else).

        Under MPI every rank must call it: it broadcasts the aggregator's endpoint once."""
        if self._worker is not None:
            raise SimvueHPCError("init() was already called on this run")
        run = {
            "name": check_run_name(name) if name is not None else None,
            "metadata": check_metadata(metadata),
            "tags": check_tags(tags),
            "description": description if description is None else str(description),
            "folder": check_folder(folder),
        }
        placement = roles.detect()
        if placement.kind == "attach":
            self._marks_termination = placement.owner == "sidecar"  # a pool's terminate() is routine
            self._connect(placement.endpoint, placement.secret, placement.rank, placement.size)
            if placement.owner == "sidecar" and self._worker is not None and self._worker.rank == 0:
                # rank 0's arguments complete the sidecar's; defaults (folder "/") do not override them
                given = {k: v for k, v in run.items() if v not in (None, [], {}) and (k, v) != ("folder", "/")}
                self._worker.send(RunUpdate(**given))
        elif placement.kind == "mpi":
            self._init_mpi(placement, run)
        elif placement.kind == "launcher":
            self._init_launcher(placement, run)
        else:
            endpoint, secret = self._start_host(run, placement)
            self._connect(endpoint, secret, 0, 1)
        self._export_environment()
        _register(self)
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
        self._connect(info[0], info[1], placement.rank, placement.size)

    def _init_launcher(self, placement: roles.Placement, run: dict[str, Any]) -> None:
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
        spec = host_spec(
            run, job_info(placement, self._settings), self._settings, self._reductions,
            expected_ranks=placement.size if placement.kind in ("mpi", "launcher") else None, host_rank=0,
        )  # fmt: skip
        self._upload_timeout = float(spec.server["upload_timeout"]) if spec.server else 0.0
        kind = self._settings.transport
        if self._settings.aggregator == "thread":
            self._host = ThreadHost(spec, kind)
        else:
            self._host = ProcessHost(spec, kind, self._settings.connect_timeout)
        return self._host.endpoint, spec.secret

    def _connect(self, endpoint: str, secret: str, rank: int, size: int) -> None:
        worker = Worker(endpoint, secret, rank, size, self._settings, self._reductions)
        worker.start()
        self._worker = worker
        # The hot path without a frame of its own: run.log is the worker's log from now on.
        vars(self).update(log=worker.log, log_metrics=worker.log)

    def _export_environment(self) -> None:
        """Children started from here (pools, subprocesses) join this run through the environment."""
        w = self._worker
        if w is None or os.environ.get(roles.ENDPOINT_VAR) == w.endpoint:
            return
        values = {roles.ENDPOINT_VAR: w.endpoint, roles.SECRET_VAR: w.secret, roles.RUN_VAR: w.run_id,
                  roles.OWNER_VAR: "parent"}  # fmt: skip
        for key, value in values.items():
            self._exported[key] = os.environ.get(key)
            os.environ[key] = value

    # ------------------------------------------------------------------------------------------ recording
    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> bool:
        """Record metrics (name -> number) at ``step`` (default: one more than this rank's last)."""
        worker = self._worker
        if worker is None:
            worker = self._attach_after_fork()
        return worker.log(metrics, step)

    def event(self, message: str) -> bool:
        """Record a timestamped event; the aggregator adds this rank and host."""
        if not isinstance(message, str):
            raise ConfigurationError(f"event message must be a string, got {type(message).__name__}")
        self._need_worker().send(Event(message, time.time_ns(), "info"))
        return True

    def save(self, path: str | os.PathLike[str], category: str, name: str | None = None) -> bool:
        """Store a copy of a file with the run (once, however many ranks save the same bytes)."""
        if category not in CATEGORIES:
            raise ConfigurationError(f"category must be one of {', '.join(CATEGORIES)}, not {category!r}")
        file = Path(path)
        if not file.is_file():
            raise ConfigurationError(f"path {str(file)!r} is not a readable file")
        mime = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        self._need_worker().save(file, name or file.name, category, mime)
        return True

    def folder_details(
        self, path: str, metadata: Mapping[str, Any] | None = None, tags: Sequence[str] | None = None,
        description: str | None = None,
    ) -> bool:  # fmt: skip
        """Set a folder's metadata, tags and description."""
        message = FolderDetails(check_folder(path), check_metadata(metadata) or None, check_tags(tags) or None,
                                description)  # fmt: skip
        self._need_worker().send(message)
        return True

    def add_alert(
        self, name: str, type: str, metric: str, frequency: float, window: float,
        threshold: float | None = None, range_low: float | None = None, range_high: float | None = None,
    ) -> bool:  # fmt: skip
        """Define an alert on a metric (``type`` is the rule, e.g. ``"is above"``; times in minutes)."""
        definition = metric_alert(name, type, metric, frequency, window, threshold, range_low, range_high)
        self._need_worker().send(AlertDefinition(definition))
        return True

    def create_metric_threshold_alert(
        self, name: str, metric: str, threshold: float, rule: str, *, description: str | None = None,
        window: float | None = None, frequency: float = 1, aggregation: str = "average", notification: str = "none",
        trigger_abort: bool = False, attach_to_run: bool = True,
    ) -> str:  # fmt: skip
        """The official client's metric threshold alert (``is above``/``is below``; minutes).
        Evaluated by the aggregator on the reduced values; returns the alert's name, its id here."""
        definition = metric_threshold_alert(
            name, metric, threshold, rule, description=description, window=window, frequency=frequency,
            aggregation=aggregation, notification=notification, trigger_abort=trigger_abort,
        )  # fmt: skip
        self._need_worker().send(AlertDefinition(definition))
        return name

    def create_metric_range_alert(
        self, name: str, metric: str, range_low: float, range_high: float, rule: str, *,
        description: str | None = None, window: float | None = None, frequency: float = 1,
        aggregation: str = "average", notification: str = "none", trigger_abort: bool = False,
        attach_to_run: bool = True,
    ) -> str:  # fmt: skip
        """The official client's metric range alert (``is inside range``/``is outside range``)."""
        definition = metric_range_alert(
            name, metric, range_low, range_high, rule, description=description, window=window, frequency=frequency,
            aggregation=aggregation, notification=notification, trigger_abort=trigger_abort,
        )  # fmt: skip
        self._need_worker().send(AlertDefinition(definition))
        return name

    def create_event_alert(
        self, name: str, pattern: str, *, description: str | None = None, frequency: float = 1,
        notification: str = "none", trigger_abort: bool = False, attach_to_run: bool = True,
    ) -> str:  # fmt: skip
        """Critical when an event containing ``pattern`` is recorded (by any rank)."""
        definition = event_alert(name, pattern, frequency, notification=notification, description=description,
                                 abort=trigger_abort)  # fmt: skip
        self._need_worker().send(AlertDefinition(definition))
        return name

    def create_user_alert(
        self, name: str, *, description: str | None = None, notification: str = "none",
        trigger_abort: bool = False, attach_to_run: bool = True,
    ) -> str:  # fmt: skip
        """An alert whose state the code sets with :meth:`log_alert`."""
        definition = user_alert(name, notification=notification, description=description, abort=trigger_abort)
        self._need_worker().send(AlertDefinition(definition))
        return name

    def log_alert(self, identifier: str | None = None, name: str | None = None, state: str = "critical") -> bool:
        """Set a user alert's state, ``ok`` or ``critical``."""
        alert = name or identifier
        if not alert:
            raise ConfigurationError("log_alert needs the alert's name (or identifier)")
        if state not in ("ok", "critical"):
            raise ConfigurationError(f"alert state must be 'ok' or 'critical', not {state!r}")
        self._need_worker().send(AlertState(alert, state))
        return True

    # the official client's names
    log_metrics = log
    log_event = event

    def save_file(self, file_path: str | os.PathLike[str], category: str, name: str | None = None, **_: Any) -> bool:
        """The official client's name for :meth:`save`."""
        return self.save(file_path, category, name)

    # ------------------------------------------------------------------------------------------ close
    def close(self) -> bool:
        """Flush and leave the run; on the host, wait for the other ranks (bounded) and end it."""
        global _closing
        if self._closed or self._worker is None:
            return False
        self._closed = True
        _closing += 1
        try:
            return self._close()
        finally:
            _closing -= 1

    def _close(self) -> bool:
        assert self._worker is not None
        if _signalled is not None and self._marks_termination and not self._status_sent:
            with contextlib.suppress(SimvueHPCError):
                self._worker.send(Status("terminated", f"signal {signal.Signals(_signalled).name} on rank "
                                                       f"{self._worker.rank} ({socket.gethostname()})"))  # fmt: skip
        # An aggregator that already died will not acknowledge: do not wait for it.
        dead = self._host is not None and not self._host.alive()
        acknowledged = self._worker.close(timeout=1.0 if dead else None)
        if dead:
            log.error("the aggregator of run %s died; what it had not stored is lost", self._worker.run_id)
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
        return acknowledged

    def __enter__(self) -> Simvue:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None and self._worker is not None and not self._closed:
            failed = not (isinstance(exc, SystemExit) and exc.code in (0, None))
            if failed:
                stopped = isinstance(exc, (KeyboardInterrupt, RunAborted)) or (
                    isinstance(exc, SystemExit) and _signalled is not None
                )
                status = "terminated" if stopped else "failed"
                self._status_sent = True
                where = f"rank {self._worker.rank} on {socket.gethostname()}"
                text = "".join(traceback.format_exception(exc_type, exc, tb))
                try:
                    self._worker.send(Event(f"{exc_type.__name__} on {where}:\n{text}", time.time_ns(), "error"))
                    self._worker.send(Status(status, f"{exc_type.__name__}: {exc}"))
                except SimvueHPCError as err:
                    log.warning("could not record the failure: %s", err)
        self.close()

    # ------------------------------------------------------------------------------------------ forks
    def _need_worker(self) -> Worker:
        return self._worker if self._worker is not None else self._attach_after_fork()

    def _after_fork(self) -> None:
        """In a forked child: the parent's connection is not ours; join the run anew when used."""
        if self._worker is not None:
            self._worker.abandon()
        self._worker = None
        for name in ("log", "log_metrics"):  # back to the method that attaches on first use
            vars(self).pop(name, None)
        self._host = None
        self._exported = {}
        self._rendezvous = None
        self._forked = not self._closed
        self._closed = False

    def _attach_after_fork(self) -> Worker:
        if not self._forked:
            raise SimvueHPCError("call init() before recording anything")
        placement = roles.detect()
        if placement.kind != "attach":
            raise RoleError("this forked process cannot find its parent's run (SIMVUE_HPC_ENDPOINT is not set)")
        self._forked = False
        self._marks_termination = False
        self._connect(placement.endpoint, placement.secret, placement.rank, placement.size)
        _register(self, child=True)
        assert self._worker is not None
        return self._worker


def attach(**settings: Any) -> Simvue:
    """Join the run this process was started into (by a pool's parent or ``simvue-hpc run``)."""
    run = Simvue(**settings)
    if roles.detect().kind != "attach":
        raise RoleError(f"no run to attach to: {roles.ENDPOINT_VAR} is not set in this process")
    run.init()
    _register(run, child=True)
    return run


def init_worker() -> None:
    """``Pool(initializer=simvue_hpc.init_worker)``: attach once per worker process."""
    global _current
    _current = attach()


def current_run() -> Simvue:
    """This process's run: the one ``init_worker``/``attach`` made, or the last one initialised."""
    global _current
    if _current is None:
        _current = attach()
    return _current


def host_spec(
    run: Mapping[str, Any], job: Mapping[str, Any], settings: HPCSettings,
    reductions: Mapping[str, list[str]] | None = None, *, expected_ranks: int | None, host_rank: int | None,
) -> AggregatorSpec:  # fmt: skip
    """A new run's aggregator spec: a fresh id and secret, the RUN record (``run``'s checked fields, a
    generated name if none, the system block and ``job``) and the server settings after one check of
    the server (None offline). Used by the host's ``init`` and by ``simvue-hpc run``."""
    run_id = new_run_id()
    secret, curve_secret = transport.new_credentials()
    server = _checked_server()
    name = run["name"] or generate_name()
    record = {
        "id": run_id, **run, "name": name, "created_us": time.time_ns() // 1000,
        "system": system_info(), "job": dict(job),
    }  # fmt: skip
    return AggregatorSpec(
        run_id=run_id, run_name=name, secret=secret, root=str(default_root()), run=record,
        expected_ranks=expected_ranks, host_rank=host_rank, settings=settings.to_dict(),
        reductions=dict(reductions or {}), server=server, curve_secret=curve_secret,
    )  # fmt: skip


def _checked_server() -> dict[str, Any] | None:
    """The server settings for the aggregator, after one check of the server; None when offline.

    An unreachable server is not an error: the run is recorded locally and uploaded when the
    server is back (or by ``simvue-hpc sync``). A rejected token or an unsupported server is."""
    settings = ServerSettings.load()
    if not settings.online:
        return None
    client = SimvueClient(settings, policy=RetryPolicy(total=1, backoff_max=1.0))
    try:
        client.check()
    except ServerUnavailable as exc:
        log.warning("%s; the run is recorded locally and uploaded when the server answers "
                    "(or later with `simvue-hpc sync`)", exc)  # fmt: skip
    finally:
        client.close()
    return dataclasses.asdict(settings)


def system_info() -> dict[str, Any]:
    """The aggregator host's system block, in the server's format."""
    uname = platform.uname()
    return {
        "cwd": os.getcwd(),
        "hostname": socket.gethostname(),
        "pythonversion": platform.python_version(),
        "platform": {"system": uname.system, "release": uname.release, "version": uname.version},
        "cpu": {"arch": uname.machine, "processor": platform.processor() or uname.machine},
        "gpu": None,
    }


def job_info(placement: roles.Placement, settings: HPCSettings) -> dict[str, Any]:
    """The job's shape, recorded in the run."""
    env = os.environ
    return {
        "ranks": placement.size,
        "launcher": placement.launcher,
        "aggregator": settings.aggregator,
        "transport": settings.transport,
        "host": socket.gethostname(),
        "slurm_job_id": env.get("SLURM_JOB_ID"),
        "slurm_nodelist": env.get("SLURM_JOB_NODELIST"),
        "argv": list(sys.argv),
    }


# ---------------------------------------------------------------------------------------------- process hooks
_hooks_installed = False
_closing = 0  # closes under way in this process
_signalled: int | None = None  # the signal that is ending this process


def _register(run: Simvue, child: bool = False) -> None:
    """Close the run when the process exits, however it exits normally (atexit, or the finalizers a
    multiprocessing child runs), and on SIGTERM in pool children (``Pool.terminate``)."""
    global _hooks_installed, _current
    _live.add(run)
    _current = run
    if not _hooks_installed:
        _hooks_installed = True
        atexit.register(_close_all)
        os.register_at_fork(after_in_child=_after_fork_in_child)
    if child:
        multiprocessing.util.Finalize(None, _close_all, exitpriority=100)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _close_all() -> None:
    for run in list(_live):
        try:
            run.close()
        except Exception:
            log.exception("closing a run at exit failed")


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (scancel, a time limit, Pool.terminate) unwinds the main thread instead of killing the
    process, so the exit handlers flush the buffer, record ``terminated`` and say goodbye within
    Slurm's KillWait. Installed only where SIGTERM had its default action."""
    global _signalled
    # A close under way, or a multiprocessing child already running its exit finalizers (ours
    # among them), is exiting anyway and bounded: raising here would abort the flush.
    if _closing or getattr(multiprocessing.util, "_exiting", False):
        return
    _signalled = signum
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(128 + signum)


def _after_fork_in_child() -> None:
    global _current
    for run in list(_live):
        run._after_fork()
    _live.clear()
    if _current is not None:
        _live.add(_current)
