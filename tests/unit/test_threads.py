"""simvue_hpc's threads leave process-directed signals to the main thread."""

from __future__ import annotations

import signal
import subprocess
import threading

from simvue_hpc import threads


def test_a_thread_of_ours_blocks_the_asynchronous_signals_and_its_creator_keeps_its_mask() -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    seen: list[set[signal.Signals]] = []
    thread = threads.start(lambda: seen.append(signal.pthread_sigmask(signal.SIG_BLOCK, set())), "probe")
    thread.join(10)
    assert thread.daemon and thread.name == "probe"
    (mask,) = seen
    assert {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGALRM} <= mask
    assert not mask & {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT}
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before


def test_a_plain_thread_would_not_block_them() -> None:
    """What the test above guards against: Python's threads take every signal the kernel hands them."""
    seen: list[set[signal.Signals]] = []
    thread = threading.Thread(target=lambda: seen.append(signal.pthread_sigmask(signal.SIG_BLOCK, set())))
    thread.start()
    thread.join(10)
    assert signal.SIGTERM not in seen[0]


def test_a_process_started_from_a_thread_of_ours_gets_signals() -> None:
    """A child inherits its creator's mask across exec: ``unmasked`` around the start."""

    def start(out: list[str]) -> None:
        with threads.unmasked():
            proc = subprocess.run(["grep", "SigBlk", "/proc/self/status"], capture_output=True, text=True, check=True)
        out.append(proc.stdout.split()[1])
        proc = subprocess.run(["grep", "SigBlk", "/proc/self/status"], capture_output=True, text=True, check=True)
        out.append(proc.stdout.split()[1])

    seen: list[str] = []
    threads.start(start, "starter", (seen,)).join(30)
    assert int(seen[0], 16) == 0
    assert int(seen[1], 16) & (1 << (signal.SIGTERM - 1)), "without it, the child could not be terminated"
