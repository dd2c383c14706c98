"""simvue_hpc's own threads, started with the asynchronous signals blocked.

The kernel hands a signal sent to the process (SIGTERM from ``scancel`` or ``Pool.terminate``,
SIGINT) to any one thread that does not block it, and Python runs handlers only in the main thread,
when that thread next runs Python code. Blocking those signals in every thread simvue_hpc starts
leaves the user's main thread as their only target, as libzmq does for its own threads.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

# Signals raised by a fault in the thread itself stay deliverable to it.
_SYNCHRONOUS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT, signal.SIGTRAP}
BLOCKED = signal.valid_signals() - _SYNCHRONOUS - {signal.SIGKILL, signal.SIGSTOP}


def start(target: Callable[..., Any], name: str, args: tuple[Any, ...] = ()) -> threading.Thread:
    """Start a daemon thread running ``target(*args)`` with :data:`BLOCKED` masked from its first
    instruction (a thread inherits its creator's mask; the creator's own is restored at once)."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return thread


@contextlib.contextmanager
def unmasked() -> Iterator[None]:
    """Around starting a process from one of these threads: a child inherits its creator's signal
    mask, even across exec, and would otherwise never receive SIGTERM."""
    old = signal.pthread_sigmask(signal.SIG_UNBLOCK, BLOCKED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
