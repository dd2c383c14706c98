"""Resource use of a rank's process, and of its node's GPUs, for the run's ``resources/*`` metrics.

Every rank samples its own process from the kernel's own counters (CPU percent since the last
sample from ``os.times``, resident memory from ``/proc/self/statm``: nothing to import);
the aggregator adds the ranks of a node up and reduces across nodes. GPUs are per node, not per
process: the first rank of the run on a node to take a node-local lock file reports them (NVML,
through the optional ``nvidia-ml-py``), so a 64-rank node queries its GPUs once, not 64 times.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from typing import IO, Any

from .durable import lock_file
from .protocol import Resources

log = logging.getLogger(__name__)


class ResourceSampler:
    """Samples this process; and the node's GPUs if this process holds the node's GPU lock."""

    def __init__(self, run_id: str) -> None:
        self._cpu_at = _cpu_seconds()  # the baseline: the first sample covers the interval since
        self._wall_at = time.monotonic()
        self._lock: IO[str] | None = None
        self._nvml: Any = None
        self._gpus: list[Any] = []
        self._claim_gpus(run_id)

    @property
    def reports_gpus(self) -> bool:
        return self._nvml is not None

    def _claim_gpus(self, run_id: str) -> None:
        try:
            import pynvml  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            return
        path = os.path.join(tempfile.gettempdir(), f"simvue_hpc-{run_id}-gpu.lock")
        fh = open(path, "a")  # noqa: SIM115 - held for the life of the sampler
        if not lock_file(fh, path):
            fh.close()  # another rank of this run on this node reports the GPUs
            return
        try:
            pynvml.nvmlInit()
            self._gpus = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as exc:  # pynvml.NVMLError and its many subclasses: no usable GPU here
            log.debug("no GPU metrics: %s", exc)
            fh.close()
            return
        self._lock = fh
        self._nvml = pynvml

    def sample(self) -> Resources:
        """The message to send now."""
        cpu_now, wall_now = _cpu_seconds(), time.monotonic()
        elapsed = wall_now - self._wall_at
        cpu = 100.0 * (cpu_now - self._cpu_at) / elapsed if elapsed > 0 else 0.0
        self._cpu_at, self._wall_at = cpu_now, wall_now
        rss = _resident_bytes()
        gpus: list[list[float]] = []
        for index, handle in enumerate(self._gpus):
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as exc:  # a GPU that stopped answering is left out of this sample
                log.debug("GPU %d: %s", index, exc)
                continue
            gpus.append([float(index), float(util.gpu), 100.0 * mem.used / mem.total if mem.total else 0.0])
        return Resources(time.time_ns(), float(cpu), rss / 2**20, gpus)

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _cpu_seconds() -> float:
    """CPU time of this process (every thread), user and system."""
    t = os.times()
    return t.user + t.system


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _resident_bytes() -> int:
    """Resident set size of this process (the second field of /proc/self/statm, in pages)."""
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * _PAGE
