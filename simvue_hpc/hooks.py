"""Process hooks that end a run however its process ends: atexit, fork, SIGTERM.

* at exit (and in the exit finalizers a multiprocessing child runs) every live run is closed, so
  its buffer is flushed and its goodbye acknowledged;
* in a forked child the parent's connections are forgotten, and the run attaches anew on first use;
* SIGTERM (``scancel``, a time limit, ``Pool.terminate``) unwinds the main thread instead of killing
  the process, so the exit handlers run. Installed only where SIGTERM had its default action.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import weakref
from typing import Any, Protocol


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
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def close_all() -> None:
    for run in list(live):
        try:
            run.close()
        except Exception:
            log.exception("closing a run at exit failed")


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM unwinds the main thread, so the exit handlers flush the buffer, record ``terminated``
    and say goodbye within Slurm's KillWait."""
    global signalled
    # A close under way, or a multiprocessing child already running its exit finalizers (ours
    # among them), is exiting anyway and bounded: raising here would abort the flush.
    if closing or getattr(sys.modules.get("multiprocessing.util"), "_exiting", False):
        return
    signalled = signum
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(128 + signum)


def _after_fork_in_child() -> None:
    for run in list(live):
        run._after_fork()
    live.clear()
    if current is not None:
        live.add(current)
