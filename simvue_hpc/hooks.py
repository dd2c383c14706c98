"""Process hooks that end a run however its process ends: atexit, fork, SIGTERM.

* at exit (and in the exit finalizers a multiprocessing child runs) every live run is closed, so
  its buffer is flushed and its goodbye acknowledged;
* in a forked child the parent's connections are forgotten, and the run attaches anew on first use;
* SIGTERM (``scancel``, a time limit, ``Pool.terminate``) unwinds the main thread instead of killing
  the process, so the exit handlers run. Installed only where SIGTERM had its default action.
* a SIGTERM the main thread does not act on within ``TERM_GRACE`` (it waits in a C call that no
  signal interrupts, or the signal came just before such a wait, as a pool worker's queue lock under
  ``Pool.terminate``) is acted on by a thread of ours: the runs are closed and the process exits, as
  SIGTERM's default action would have ended it. Python's handler alone would leave it hanging.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any, Protocol

from . import threads


class Run(Protocol):
    """What the hooks need of a run."""

    def close(self) -> bool: ...

    def _after_fork(self) -> None: ...


log = logging.getLogger(__name__)

live: weakref.WeakSet[Any] = weakref.WeakSet()
current: Any = None  # this process's run: the last one initialised or attached
closing = 0  # closes under way in this process
signalled: int | None = None  # the signal that is ending this process
_installed = False
_deferring = 0  # joins under way: SIGTERM waits for them
_pending: int | None = None  # a SIGTERM that came while deferring
_owner = 0  # the process that installed the SIGTERM handler (a forked child inherits it, not the role)
_wakeup: tuple[int, int] | None = None  # the signal wakeup pipe (read, write) this process installed
TERM_GRACE = 0.5  # seconds the main thread has to act on SIGTERM before the backstop does
_claim = threading.RLock()  # the handler and the backstop: only one acts on a SIGTERM


def register(run: Run, child: bool = False) -> None:
    """Close ``run`` when the process exits, however it exits normally (atexit, or the finalizers a
    multiprocessing child runs), and on SIGTERM in pool children (``Pool.terminate``)."""
    global _installed, current
    live.add(run)
    current = run
    if not _installed:
        _installed = True
        atexit.register(close_all)
        os.register_at_fork(after_in_child=_after_fork_in_child)
    if child:
        import multiprocessing.util  # loaded already in a pool's worker

        multiprocessing.util.Finalize(None, close_all, exitpriority=100)
        # Also when the child's threads shut down, which its bootstrap always does: a SIGTERM landing just
        # as the exit finalizers begin raises SystemExit past them (seen with forkserver pools).
        threading._register_atexit(close_all)  # type: ignore[attr-defined]
    catch_sigterm()


def catch_sigterm() -> None:
    """From now on SIGTERM unwinds the main thread (if SIGTERM still has its default action).

    Called before a rank's handshake too: a pool's ``terminate()`` may come while a worker is still
    joining, and the worker must then leave the run cleanly rather than vanish after its HELLO."""
    global _owner
    if threading.current_thread() is not threading.main_thread():
        return
    handler = signal.getsignal(signal.SIGTERM)
    if handler == signal.SIG_DFL or (handler is _exit_on_sigterm and _owner != os.getpid()):
        _owner = os.getpid()
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        _watch_signals()


def _watch_signals() -> None:
    """Have Python's C-level signal handler write each signal's number to a pipe that a thread of ours
    reads: that thread learns of a SIGTERM even when the main thread never runs the Python handler.
    Only where the wakeup fd is free: an event loop that uses it keeps it (and there is no backstop)."""
    global _wakeup
    if _wakeup is not None:
        return
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    if old != -1:
        signal.set_wakeup_fd(old)
        os.close(r)
        os.close(w)
        return
    _wakeup = (r, w)
    threads.start(_read_signals, "simvue_hpc-signals", (r,))


def _read_signals(fd: int) -> None:
    term_at: float | None = None
    while True:
        timeout = None if term_at is None else max(0.0, term_at + TERM_GRACE - time.monotonic())
        ready, _, _ = select.select([fd], [], [], timeout)
        if ready:
            try:
                data = os.read(fd, 512)
            except BlockingIOError:
                continue
            if signal.SIGTERM in data and term_at is None:
                term_at = time.monotonic()
        elif term_at is not None:
            term_at = None
            _backstop()


def _backstop() -> None:
    """SIGTERM came TERM_GRACE ago and the main thread has not acted on it: close every run from here
    (flush, goodbye, ``terminated``) and exit as the handler would have. Nothing is done when the
    handler did run, or is not ours, or a close or a deferred join is under way."""
    global signalled
    if signal.getsignal(signal.SIGTERM) is not _exit_on_sigterm or _owner != os.getpid():
        return
    with _claim:
        if closing or _exiting() or signalled is not None or _deferring:
            return
        signalled = signal.SIGTERM
    log.info(
        "SIGTERM: the main thread did not act on it within %.1f s; closing the run from another thread", TERM_GRACE
    )
    try:
        close_all()  # a close the main thread began meanwhile is waited for by Simvue.close itself
    finally:
        os._exit(128 + signal.SIGTERM)


def _exiting() -> bool:
    """A multiprocessing child running its exit finalizers."""
    return bool(getattr(sys.modules.get("multiprocessing.util"), "_exiting", False))


def close_all() -> None:
    for run in list(live):
        try:
            run.close()
        except Exception:
            log.exception("closing a run at exit failed")


@contextlib.contextmanager
def sigterm_deferred() -> Iterator[None]:
    """Joining a run (handshake, I/O thread, registration) is not interrupted by SIGTERM: one that
    comes meanwhile takes effect once the run is registered, so the exit handlers close it."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring and _pending is not None:
        signum, _pending = _pending, None
        _exit_on_sigterm(signum, None)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM unwinds the main thread, so the exit handlers flush the buffer, record ``terminated``
    and say goodbye within Slurm's KillWait."""
    global signalled, _pending
    if _owner != os.getpid():
        # A forked child that has not joined the run (the handler came with the fork): SIGTERM's
        # default action, as if simvue_hpc were not there. Unwinding here could run a copy of the
        # parent's stack.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    # A close under way, or a multiprocessing child already running its exit finalizers (ours
    # among them), is exiting anyway and bounded: raising here would abort the flush. One SIGTERM is
    # enough: a second one (a pool's parent terminating its daemon children again on its own way out)
    # must not abort the flush the first one started; nor may the backstop's.
    with _claim:
        if closing or _exiting() or signalled is not None:
            return
        if _deferring:
            _pending = signum
            return
        signalled = signum
    raise SystemExit(128 + signum)


def _after_fork_in_child() -> None:
    global _deferring, _pending, closing, signalled, _wakeup, _claim
    _deferring, _pending, closing, signalled = 0, None, 0, None
    _claim = threading.RLock()  # a fork while the backstop held it would leave the child's held
    if _wakeup is not None:  # the parent's pipe; its reading thread did not come with the fork
        r, w = _wakeup
        _wakeup = None
        with contextlib.suppress(ValueError):
            old = signal.set_wakeup_fd(-1)
            if old != w:
                signal.set_wakeup_fd(old)
        os.close(r)
        os.close(w)
    # Until this child joins the run itself, SIGTERM kills it as it would without simvue_hpc: our
    # handler would unwind a copy of the parent's stack (a pool forking a worker) in the child.
    if signal.getsignal(signal.SIGTERM) is _exit_on_sigterm:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for run in list(live):
        run._after_fork()
    live.clear()
    if current is not None:
        live.add(current)
