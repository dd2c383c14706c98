"""``python -m simvue_hpc.aggregator``: the aggregator as a child process of its host.

Protocol with the host: the host writes the JSON spec as one line on stdin; the child answers
``{"endpoint": ...}`` (or ``{"error": ...}``) as one line on stdout, runs the run, and prints
``{"status": ...}`` when it is over. The end of stdin means the host is done or dead. SIGTERM marks
the run terminated and ends it after ``terminate_grace``; SIGUSR1 (the host giving up waiting) ends
it at once; everything received is kept either way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from types import FrameType

from ..errors import SimvueHPCError
from .loop import AggregatorService, AggregatorSpec


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m simvue_hpc.aggregator")
    parser.add_argument("--transport", default="tcp")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="simvue_hpc aggregator: %(levelname)s %(message)s")
    stop = threading.Event()
    service: AggregatorService | None = None
    terminating = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        # SIGTERM (scancel, a time limit) ends the run as terminated after a short grace for the
        # ranks' last data; a second SIGTERM ends it at once.
        nonlocal terminating
        if service is not None and not terminating:
            terminating = True
            service.request_terminate(f"signal {signal.Signals(signum).name}")
        else:
            stop.set()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()  # the host gave up waiting: store what is pending and end now

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR1, on_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host decides; a terminal's Ctrl-C is for it
    _unbind_from_host_cpu()
    stdin_fd = sys.stdin.fileno()
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(stdin_fd, 1 << 16)
        if not chunk:
            return 2
        line += chunk
    out = sys.stdout
    try:
        service = AggregatorService(AggregatorSpec.from_json(line.decode()))
        endpoint = service.bind(args.transport)
    except (SimvueHPCError, OSError, ValueError, TypeError) as exc:
        print(json.dumps({"error": str(exc)}), file=out, flush=True)
        return 1
    print(json.dumps({"endpoint": endpoint}), file=out, flush=True)
    status = service.run(control_fd=stdin_fd, stop=stop)
    print(json.dumps({"status": status, "uploaded": service.uploaded}), file=out, flush=True)
    return 0


def _unbind_from_host_cpu() -> None:
    """A child inherits its host's CPU binding (``--bind-to core``), and would then compete with rank
    0 for rank 0's core: let it run on any CPU the job may use (the kernel keeps it within the job's
    cpuset). Measured in benchmarks/README.md."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))


if __name__ == "__main__":
    sys.exit(main())
