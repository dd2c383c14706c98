"""``simvue-hpc run -- COMMAND``: one run for a whole job, whatever COMMAND is.

The sidecar hosts the run's aggregator in a thread of its own process, then runs COMMAND (``srun
./app``, ``mpiexec -n 64 python sim.py``, a shell script) with the run's endpoint and secret in its
environment (``SIMVUE_HPC_ENDPOINT``, ``SIMVUE_HPC_SECRET``, ``SIMVUE_HPC_RUN_ID`` and
``SIMVUE_HPC_OWNER=sidecar``). Every process COMMAND starts that calls ``Simvue().init()``, or that
uses the C client, attaches to that run with the rank its launcher gave it; rank 0's ``init``
arguments update the run's name, metadata, tags, description and folder.

What the sidecar adds around COMMAND:

* its stdout and stderr are forwarded live to the sidecar's own, and their last ``TAIL_LINES``
  lines are recorded in the run as two events when it ends (a failed job's last words are where
  the run is, without the batch system's output file);
* the run's status follows COMMAND's end: exit code 0 -> ``completed`` (unless a rank said
  otherwise), any other code -> ``failed`` with the code in the reason, killed by a signal ->
  ``terminated`` (a crash signal such as SIGSEGV or SIGABRT -> ``failed``);
* SIGTERM and SIGINT (``scancel``, a Slurm time limit, Ctrl-C) are forwarded to COMMAND, and the run
  is then ``terminated`` however COMMAND ends; SIGHUP, SIGUSR1 and SIGUSR2 (``sbatch --signal``) are
  forwarded as they are. COMMAND stays in the sidecar's process group, so it can read the terminal;
  a Ctrl-C typed there reaches it from the terminal, and the sidecar does not send it a second one;
* under Slurm the run records the job id, node list and task count.

The sidecar's exit code is COMMAND's (128 + N when COMMAND was killed by signal N; 127 when it
could not be started), so it can stand in front of COMMAND in any job script.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

from .aggregator.hosts import ThreadHost
from .config import HPCSettings
from .errors import ConfigurationError
from .runspec import attach_environment, host_spec, job_info, run_fields

log = logging.getLogger(__name__)

TAIL_LINES = 100  # lines of each stream kept for the run
MAX_LINE = 2000  # bytes kept of one line (the rest is cut, marked with an ellipsis)
DRAIN_TIMEOUT = 5.0  # once COMMAND has ended, how long ranks that did not say goodbye still get
PUMP_JOIN_TIMEOUT = 5.0  # how long to wait for the pipes' end once COMMAND has exited
STOPPING = (signal.SIGTERM, signal.SIGINT)  # forwarded, and the run is then terminated
FORWARDED = (*STOPPING, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
CRASHES = frozenset({signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL})


# ---------------------------------------------------------------------------------------------- output
class Tail:
    """The last ``lines`` lines of a byte stream, each cut at ``max_line`` bytes."""

    def __init__(self, lines: int = TAIL_LINES, max_line: int = MAX_LINE) -> None:
        self._lines: collections.deque[bytes] = collections.deque(maxlen=lines)
        self._partial = bytearray()
        self._cut = False
        self._max_line = max_line
        self._max_lines = lines
        self.total_lines = 0

    def feed(self, data: bytes) -> None:
        parts = data.split(b"\n")
        for part in parts[:-1]:
            self._append(part)
            self._end_line()
        self._append(parts[-1])

    def _append(self, part: bytes) -> None:
        room = self._max_line - len(self._partial)
        if len(part) > room:
            self._cut = True
            part = part[: max(room, 0)]
        self._partial += part

    def _end_line(self) -> None:
        line = bytes(self._partial).rstrip(b"\r")
        self._lines.append(line + ("…".encode() if self._cut else b""))
        self._partial.clear()
        self._cut = False
        self.total_lines += 1

    def _kept_lines(self) -> list[bytes]:
        lines = list(self._lines)
        if self._partial or self._cut:  # an unfinished last line counts as one
            lines.append(bytes(self._partial) + ("…".encode() if self._cut else b""))
        return lines[-self._max_lines :] if self._max_lines else []

    def text(self) -> str:
        """The kept lines, decoded leniently."""
        return "\n".join(line.decode("utf-8", errors="replace") for line in self._kept_lines())

    def kept(self) -> int:
        return len(self._kept_lines())

    def omitted(self) -> int:
        unfinished = 1 if self._partial or self._cut else 0
        return self.total_lines + unfinished - self.kept()


class Pump(threading.Thread):
    """Copies one of COMMAND's pipes to the sidecar's own stream as it comes, keeping a tail."""

    def __init__(self, source: IO[bytes], sink: IO[bytes] | None, stream: str) -> None:
        super().__init__(name=f"simvue_hpc-{stream}", daemon=True)
        self.stream = stream
        self._fd = source.fileno()
        self._source = source
        self._sink = sink
        self.tail = Tail()

    def run(self) -> None:
        try:
            while data := os.read(self._fd, 65536):
                self.tail.feed(data)
                if self._sink is not None:
                    try:
                        self._sink.write(data)
                        self._sink.flush()
                    except (OSError, ValueError):  # our own output is gone: keep draining COMMAND's
                        self._sink = None
        except OSError as exc:
            log.warning("reading the command's %s failed: %s", self.stream, exc)
        finally:
            with contextlib.suppress(OSError):
                self._source.close()


# ---------------------------------------------------------------------------------------------- the sidecar
def describe_exit(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with code {returncode}"
    return f"was killed by {_signal_name(-returncode)}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(returncode: int) -> int:
    """The sidecar's own exit code for COMMAND's: the same, or 128 + N for a death by signal N."""
    return returncode if returncode >= 0 else 128 - returncode


def outcome(returncode: int, received: int | None) -> tuple[str | None, str]:
    """The run's status (None: leave it to the ranks, i.e. completed) and the reason, from how
    COMMAND ended and the stopping signal the sidecar received, if any."""
    how = f"the command {describe_exit(returncode)}"
    if received is not None:
        return "terminated", f"simvue-hpc run received {_signal_name(received)}; {how}"
    if returncode == 0:
        return None, how
    if returncode < 0 and -returncode not in CRASHES:
        return "terminated", how
    return "failed", how


def sidecar_job_info(
    command: Sequence[str], settings: HPCSettings, ranks: int | None, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The run's job block: runspec.job_info's, with the command and Slurm's task count and array."""
    env = os.environ if env is None else env
    job = job_info(ranks, "sidecar", settings)
    job.update(
        aggregator="sidecar",
        command=list(command),
        slurm_ntasks=_int_or_none(env.get("SLURM_NTASKS")),
        slurm_array_job_id=env.get("SLURM_ARRAY_JOB_ID"),
        slurm_array_task_id=env.get("SLURM_ARRAY_TASK_ID"),
    )
    return job


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def child_environment(env: Mapping[str, str], endpoint: str, secret: str, run_id: str) -> dict[str, str]:
    """COMMAND's environment: the sidecar's, with the run to attach to."""
    return {**env, **attach_environment(endpoint, secret, run_id, "sidecar")}


class Sidecar:
    """One COMMAND under one run: start it, forward its output and signals, end the run."""

    def __init__(
        self,
        host: ThreadHost,
        command: Sequence[str],
        env: Mapping[str, str],
        settings: HPCSettings,
        upload_timeout: float = 0.0,
        stdout: IO[bytes] | None = None,
        stderr: IO[bytes] | None = None,
    ) -> None:
        self.host = host
        self.command = list(command)
        self.env = dict(env)
        self.settings = settings
        self.upload_timeout = upload_timeout
        self.stdout = stdout if stdout is not None else sys.stdout.buffer
        self.stderr = stderr if stderr is not None else sys.stderr.buffer
        self.proc: subprocess.Popen[bytes] | None = None
        self.received: int | None = None  # the first stopping signal received
        self._pending: list[int] = []  # signals received before COMMAND had started
        self._terminal_interrupts = _terminal_interrupts()
        self.status: str | None = None  # the run's final status, once over

    # ------------------------------------------------------------------------------------------ signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum in STOPPING and self.received is None:
            self.received = signum
        if signum == signal.SIGINT and self._terminal_interrupts:
            return  # the terminal's Ctrl-C went to COMMAND too (same process group): once is enough
        proc = self.proc
        if proc is None:
            self._pending.append(signum)
        elif proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    def _install(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {int(s): signal.signal(s, self._on_signal) for s in FORWARDED}

    # ------------------------------------------------------------------------------------------ main
    def main(self) -> int:
        """Run COMMAND to its end and close the run; returns the sidecar's exit code."""
        started = time.monotonic()
        previous = self._install()
        pumps: list[Pump] = []
        try:
            try:
                self.proc = subprocess.Popen(self.command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            except OSError as exc:
                code = 127 if isinstance(exc, FileNotFoundError) else 126
                print(f"simvue-hpc run: cannot start {self.command[0]!r}: {exc}", file=sys.stderr)
                self._end("failed", f"the command could not be started: {exc}", [])
                return code
            for signum in self._pending:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signum)
            self._pending.clear()
            assert self.proc.stdout is not None and self.proc.stderr is not None
            pumps = [Pump(self.proc.stdout, self.stdout, "stdout"), Pump(self.proc.stderr, self.stderr, "stderr")]
            for pump in pumps:
                pump.start()
            returncode = self.proc.wait()
            deadline = time.monotonic() + PUMP_JOIN_TIMEOUT
            for pump in pumps:  # what COMMAND wrote last; a grandchild holding a pipe is not waited for
                pump.join(max(0.0, deadline - time.monotonic()))
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        status, reason = outcome(returncode, self.received)
        elapsed = time.monotonic() - started
        self._end(status, f"{reason} after {elapsed:.1f} s", pumps)
        return exit_code(returncode)

    def _end(self, status: str | None, reason: str, pumps: Sequence[Pump]) -> None:
        failed = status in ("failed", "terminated")
        for pump in pumps:
            tail = pump.tail
            if not tail.kept():
                continue
            more = f", {tail.omitted()} earlier line(s) not kept" if tail.omitted() else ""
            level = "error" if failed and pump.stream == "stderr" else "info"
            self._record(f"{pump.stream} of the command, last {tail.kept()} line(s){more}:\n{tail.text()}", level)
        self._record(reason, "error" if failed else "info")
        self.host.request_close(status, reason)
        self.status = self.host.wait(min(self.settings.close_timeout, DRAIN_TIMEOUT))
        if self.host.alive():  # finished, still uploading
            self.status = self.host.wait(self.upload_timeout + 10)

    def _record(self, message: str, level: str) -> None:
        """An event from the sidecar itself (rank None, this host), through the aggregator's loop,
        which stores it before the close requested after it and shows it to event alerts."""
        self.host.record_event(message, level)


def _terminal_interrupts() -> bool:
    """Whether a SIGINT to the sidecar comes from its terminal's Ctrl-C, which the terminal sends to
    the whole foreground process group, COMMAND included."""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def parse_metadata(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a VALUE that is JSON (a number, true, a list...) is kept as that."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"--metadata {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def run(
    command: Sequence[str],
    *,
    name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    tags: Sequence[str] | None = None,
    description: str | None = None,
    folder: str | None = "/",
    ranks: int | None = None,
) -> int:
    """Run ``command`` as one Simvue run; returns the exit code the sidecar exits with."""
    command = list(command)
    if not command:
        raise ConfigurationError("no command to run: simvue-hpc run [OPTIONS] -- COMMAND [ARGS...]")
    if ranks is not None and (isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1):
        raise ConfigurationError(f"ranks must be a positive integer, not {ranks!r}")
    fields = run_fields(name, metadata, tags, description, folder)
    settings = HPCSettings.load()
    job = sidecar_job_info(command, settings, ranks)
    spec = host_spec(fields, job, settings, expected_ranks=ranks, host_rank=None)
    host = ThreadHost(spec, settings.transport)
    upload_timeout = spec.server.upload_timeout if spec.server else 0.0
    env = child_environment(os.environ, host.endpoint, spec.secret, spec.run_id)
    print(f"simvue-hpc run: run {spec.run_name} ({spec.run_id}) at {host.endpoint}", file=sys.stderr, flush=True)
    sidecar = Sidecar(host, command, env, settings, upload_timeout)
    code = sidecar.main()
    outcome_line = f"simvue-hpc run: run {spec.run_name} {sidecar.status or 'not closed'}; exit code {code}"
    print(outcome_line, file=sys.stderr, flush=True)
    return code
