"""A process's identity beyond its pid, as a rank reports it (:func:`process_identity`, in its HELLO)
and as the aggregator checks it (:func:`process_gone`): with the start time and the pid namespace, a
local rank that exited, is a zombie or whose pid was reused is seen as gone at once."""

from __future__ import annotations

import contextlib
import os


def process_identity() -> tuple[int, int]:
    """This process's start time (clock ticks since boot) and pid namespace inode; 0 where unknown.
    With the pid they tell the aggregator whether a local rank is still this process."""
    start_time = pid_ns = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/stat", "rb") as fh:
            stat = fh.read()
        start_time = int(stat[stat.rindex(b")") + 2 :].split()[19])  # field 22; the name may hold spaces
    with contextlib.suppress(OSError):
        pid_ns = os.stat("/proc/self/ns/pid").st_ino
    return start_time, pid_ns


def process_gone(pid: int, start_time: int, pid_ns: int) -> bool | None:
    """Whether the process a rank described (pid, start time in clock ticks since boot, pid namespace
    inode) is gone: exited, a zombie, or its pid now another process's. None when this process cannot
    tell: the rank did not say, or its pid namespace is not ours."""
    if not start_time or not pid_ns:
        return None
    try:
        if os.stat("/proc/self/ns/pid").st_ino != pid_ns:
            return None
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[0] in (b"Z", b"X") or int(fields[19]) != start_time


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
