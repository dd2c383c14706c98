"""The resource sampler: this process's CPU and memory; the node's GPUs from one process per run and node.

No GPU is needed: a stand-in ``pynvml`` module answers as NVML does (the real one is checked where a
GPU machine is available)."""

from __future__ import annotations

import sys
import types
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from simvue_hpc.resources import ResourceSampler


class _Nvml(types.ModuleType):
    def __init__(self, count: int = 2) -> None:
        super().__init__("pynvml")
        self.count = count
        self.initialised = 0
        self.shutdown = 0

    def nvmlInit(self) -> None:
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.shutdown += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return types.SimpleNamespace(gpu=40 + 10 * handle, memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return types.SimpleNamespace(used=(handle + 1) * 2**30, total=8 * 2**30)


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Nvml]:
    fake = _Nvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    yield fake


def test_samples_this_process() -> None:
    sampler = ResourceSampler(uuid.uuid4().hex)
    sum(i * i for i in range(200_000))
    sample = sampler.sample()
    sampler.close()
    assert sample.cpu_percent >= 0 and sample.memory_mb > 10  # a Python process with numpy loaded
    assert sample.time_ns > 0


def test_one_process_per_run_and_node_reports_the_gpus(nvml: _Nvml) -> None:
    run = uuid.uuid4().hex
    first, second = ResourceSampler(run), ResourceSampler(run)
    try:
        assert first.reports_gpus and not second.reports_gpus
        assert first.sample().gpus == [[0.0, 40.0, 12.5], [1.0, 50.0, 25.0]]
        assert second.sample().gpus == []
    finally:
        first.close()
        second.close()
    assert nvml.initialised == 1 and nvml.shutdown == 1
    third = ResourceSampler(run)  # the lock is free again once its holder closed
    assert third.reports_gpus
    third.close()


def test_no_usable_gpu_means_no_gpu_metrics(nvml: _Nvml) -> None:
    def broken() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    nvml.nvmlInit = broken  # type: ignore[method-assign]
    sampler = ResourceSampler(uuid.uuid4().hex)
    assert not sampler.reports_gpus and sampler.sample().gpus == []
    sampler.close()
