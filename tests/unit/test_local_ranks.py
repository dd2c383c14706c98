"""The aggregator tells at once that a rank on its own host is gone: exited, a zombie, or its pid now
another process's (real processes, read through /proc)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from simvue_hpc.procinfo import process_gone
from tests.helpers import wait_until


def stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def test_a_live_process_is_not_gone_and_a_reused_pid_is() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = int(stat_fields(proc.pid)[19])
        ns = os.stat("/proc/self/ns/pid").st_ino
        assert process_gone(proc.pid, start, ns) is False
        assert process_gone(proc.pid, start + 1, ns) is True  # the pid now names another process
        assert process_gone(proc.pid, start, ns + 1) is None  # another pid namespace: cannot tell
        assert process_gone(proc.pid, 0, 0) is None  # a client that did not say
    finally:
        proc.kill()
        proc.wait()


def test_a_zombie_and_an_exited_process_are_gone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    start = int(stat_fields(proc.pid)[19])
    ns = os.stat("/proc/self/ns/pid").st_ino
    wait_until(lambda: stat_fields(proc.pid)[0] == "Z", 30, what="the child to exit")  # not reaped yet
    assert process_gone(proc.pid, start, ns) is True  # os.kill(pid, 0) still succeeds on a zombie
    os.kill(proc.pid, 0)
    proc.wait()
    assert process_gone(proc.pid, start, ns) is True
