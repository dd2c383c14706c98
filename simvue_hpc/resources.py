"""Resource use of a rank's process, and of its node's GPUs, for the run's ``resources/*`` metrics.

Every rank samples its own process (psutil: CPU percent since the last sample, resident memory);
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

import psutil

from .durable import lock_file
from .protocol import Resources

log = logging.getLogger(__name__)


class ResourceSampler:
    """Samples this process; and the node's GPUs if this process holds the node's GPU lock."""

    def __init__(self, run_id: str) -> None:
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the baseline: the first real sample covers the interval since
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
        with self._process.oneshot():
            cpu = self._process.cpu_percent(None)
            rss = self._process.memory_info().rss
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
