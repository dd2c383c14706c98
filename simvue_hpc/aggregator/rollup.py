"""The resource roll-up: the ranks' CPU, memory and GPU reports summed per node and over the job.

Each rank reports its processes every ``system_metrics_interval``; once per interval the roll-up turns
the fresh reports of live ranks into one point per series (the aggregator stores them as its own
metrics under ``resources/``).
"""

from __future__ import annotations

from collections.abc import Callable

from ..protocol import Resources


class ResourceRollup:
    """The latest report of each rank and when the next roll-up is due."""

    def __init__(self, interval: float, now: float) -> None:
        self._interval = interval
        self._reports: dict[bytes, tuple[float, Resources]] = {}
        self._due = now + interval
        self._step = 0

    def observe(self, identity: bytes, report: Resources, now: float) -> None:
        """A rank's report, kept until the next roll-up (a newer one replaces it)."""
        self._reports[identity] = (now, report)

    def forget(self, identity: bytes) -> None:
        """The rank's link is gone: its report counts no more."""
        self._reports.pop(identity, None)

    def due(self, now: float) -> bool:
        """Whether a roll-up is due; if so the next one is scheduled one interval from ``now``."""
        if now < self._due:
            return False
        self._due = now + self._interval
        return True

    def roll_up(self, now: float, live_host: Callable[[bytes], str | None]) -> tuple[int, dict[str, float]] | None:
        """Per node: the sum over its ranks' processes; the job: the sum over nodes (CPU, memory) and
        the mean over nodes (each GPU index). Per-node series only when there are several nodes.
        ``live_host`` gives a live rank's host (None: the rank is not live). Returns the series' step and
        values; None when no report is fresh."""
        fresh = 2 * self._interval
        nodes: dict[str, list[float]] = {}
        gpus: dict[str, dict[int, tuple[float, float]]] = {}
        for identity, (seen, report) in list(self._reports.items()):
            host = live_host(identity)
            if host is None or now - seen > fresh:
                del self._reports[identity]
                continue
            cpu_mem = nodes.setdefault(host, [0.0, 0.0])
            cpu_mem[0] += report.cpu_percent
            cpu_mem[1] += report.memory_mb
            for index, util, mem in report.gpus:
                gpus.setdefault(host, {})[int(index)] = (util, mem)
        if not nodes:
            return None
        values = {
            "resources/cpu.usage.percentage": sum(c for c, _ in nodes.values()),
            "resources/cpu.usage.memory": sum(m for _, m in nodes.values()),
        }
        for index in sorted({i for per_node in gpus.values() for i in per_node}):
            seen_on = [per_node[index] for per_node in gpus.values() if index in per_node]
            values[f"resources/gpu.utilisation.percent.{index}"] = sum(u for u, _ in seen_on) / len(seen_on)
            values[f"resources/gpu.utilisation.memory.{index}"] = sum(m for _, m in seen_on) / len(seen_on)
        if len(nodes) > 1:
            for host, (cpu, mem) in sorted(nodes.items()):
                values[f"resources/{host}/cpu.usage.percentage"] = cpu
                values[f"resources/{host}/cpu.usage.memory"] = mem
                for index, (util, gmem) in sorted(gpus.get(host, {}).items()):
                    values[f"resources/{host}/gpu.utilisation.percent.{index}"] = util
                    values[f"resources/{host}/gpu.utilisation.memory.{index}"] = gmem
        self._step += 1
        return self._step - 1, values


class LiveRanks:
    """The number of live ranks as the aggregator's own metric: only in runs of several ranks, at most
    once per heartbeat interval (and once at the end), and only when it changed."""

    def __init__(self, interval: float, now: float) -> None:
        self._interval = interval
        self._due = now
        self._dirty = False
        self._reported = 0
        self._step = 0

    def changed(self) -> None:
        """A rank joined, closed, was lost or came back."""
        self._dirty = True

    def take(self, now: float, live: int, several: bool, final: bool = False) -> tuple[int, float] | None:
        """The point to record now, (step, live ranks), if any; ``several``: the run has several ranks."""
        if not self._dirty or not several or (now < self._due and not final):
            return None
        self._dirty = False
        if live == self._reported:
            return None
        self._reported = live
        self._step += 1
        self._due = now + self._interval
        return self._step - 1, float(live)
