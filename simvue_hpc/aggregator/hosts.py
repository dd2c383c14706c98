"""Hosting the aggregator: in a thread of the host process (:class:`ThreadHost`) or in a child process
(:class:`ProcessHost`, the default), which the host watches and, when it dies, replaces (:mod:`.restart`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from .. import threads, transport
from ..errors import TransportError
from . import restart
from .loop import AggregatorService, AggregatorSpec

log = logging.getLogger(__name__)


class ThreadHost:
    """The aggregator as a thread of this process."""

    def __init__(self, spec: AggregatorSpec, kind: str) -> None:
        self._service = AggregatorService(spec)
        self.endpoint = self._service.bind(kind)
        self._stop = threading.Event()
        self._thread = threads.start(self._main, "simvue_hpc-aggregator")

    def _main(self) -> None:
        try:
            self._service.run(stop=self._stop)
        except Exception as exc:
            log.exception("the simvue_hpc aggregator failed")
            spec = self._service.spec  # the floor: the run is failed in the store, never left running
            restart.record_lost(spec.root, spec.run_id, f"the aggregator thread failed: {exc!r}")

    def alive(self) -> bool:
        return self._thread.is_alive()

    def request_terminate(self, reason: str) -> None:
        self._service.request_terminate(reason)

    def record_event(self, message: str, level: str = "info") -> None:
        self._service.record_event(message, level)

    def request_close(self, status: str | None = None, reason: str = "") -> None:
        self._service.request_close(status, reason)

    @property
    def uploaded(self) -> bool | None:
        return self._service.uploaded

    def wait(self, timeout: float) -> str | None:
        """The final status once the run is over; None if still running after ``timeout``."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(10)
        return self._service.status


class ProcessHost:
    """The aggregator as a child process, fed its spec on stdin; stdin's end tells it we died."""

    def __init__(self, spec: AggregatorSpec, kind: str, start_timeout: float) -> None:
        self._spec, self._kind, self._start_timeout = spec, kind, start_timeout
        self.endpoint: str = ""
        self._proc, self._stdin = self._start(spec)
        self.uploaded: bool | None = None
        self._run_id = spec.run_id
        self._root = spec.root
        # A child that dies is replaced (aggregator_restarts times) on the same endpoint, with the same keys.
        self._restarter = restart.Restarter(
            lambda: self._proc, self._take_over, spec.settings.aggregator_restarts, spec.run_id
        )

    def _start(self, spec: AggregatorSpec) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
        env = dict(os.environ)
        package_parent = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
        with threads.unmasked():  # a restart starts it from the watching thread
            proc = subprocess.Popen(
                [sys.executable, "-m", "simvue_hpc.aggregator", "--transport", self._kind],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(spec.to_json().encode() + b"\n")
        proc.stdin.flush()
        answer = _read_line(proc.stdout, self._start_timeout)
        if not answer or "endpoint" not in answer:
            proc.kill()
            proc.wait()
            reason = answer.get("error") if answer else f"no answer within {self._start_timeout} s"
            raise TransportError(f"the aggregator process did not start: {reason}")
        self.endpoint = answer["endpoint"]
        return proc, proc.stdin

    def _take_over(self) -> None:
        """Start a new aggregator for the run on the dead one's endpoint (called by the restarter)."""
        self._proc, self._stdin = self._start(replace(self._spec, resume=True, endpoint=self.endpoint))

    def alive(self) -> bool:
        return self._proc.poll() is None or self._restarter.may_restart()

    def wait(self, timeout: float) -> str | None:
        """The final status once the child has exited; None if it had to be stopped."""
        self._restarter.stop()  # from now on a child that dies is not replaced: the run is ending
        assert self._proc.stdout is not None
        with contextlib.suppress(OSError):
            self._stdin.close()  # the host is done: the child closes once the other ranks have
        answer = _read_line(self._proc.stdout, timeout)
        if answer is None and self._proc.poll() is None:
            log.warning("the aggregator did not finish within %.0f s; asking it to stop now", timeout)
            self._proc.send_signal(signal.SIGUSR1)
            answer = _read_line(self._proc.stdout, 10)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self.endpoint.startswith("ipc://"):
            transport.remove_ipc_file(self._run_id)  # left behind if the child was killed
        if answer:
            self.uploaded = answer.get("uploaded")
            return answer.get("status")
        return self._died(self._proc.returncode)

    def _died(self, returncode: int | None) -> str | None:
        """The child ended without saying how the run ended: it died. The run is marked failed in the
        store with the reason (never left running); returns the status recorded (None if it could not be)."""
        reason = f"the aggregator process died ({restart.exit_reason(returncode)}) and was not restarted"
        log.error("run %s: %s", self._run_id, reason)
        return restart.record_lost(self._root, self._run_id, reason)


def _read_line(stream: IO[bytes], timeout: float) -> dict[str, Any] | None:
    """One JSON line from a child's stdout within ``timeout``, or None."""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        return None
    line = stream.readline()
    if not line:
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
