"""Surviving the aggregator's death: what the store (the run's write-ahead log) says a new aggregator
must know, and the end a host writes when no aggregator can take over.

:func:`read_progress` folds a run's log into :class:`StoredProgress`: the largest step stored as final
per stored metric name (late records do not count), the last state of every rank, whether the run
already ended. A restarted aggregator (``AggregatorSpec.resume``) drops the resent points of steps
already stored and knows which ranks closed before it started. :func:`record_lost` is the floor:
the run is marked ``failed`` with the reason, never left ``running``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import threads
from ..errors import StoreError
from ..records import RecordType
from ..store import RunWriter, read_records
from ..store.format import RECORDS_NAME

log = logging.getLogger(__name__)


@dataclass
class StoredProgress:
    """What a run's log holds that a restarted aggregator needs."""

    final_steps: dict[str, int] = field(default_factory=dict)  # stored name -> largest non-late step
    rank_states: dict[int, str] = field(default_factory=dict)  # rank -> its last RANK record's state
    ended: str | None = None  # the status of the run's END, once it has one
    restarts: int = 0  # how many times an aggregator took this run over already


RESTART_EVENT = "the aggregator restarted"


def read_progress(run_dir: Path) -> StoredProgress:
    """Fold the log of ``run_dir`` into :class:`StoredProgress` (damage is skipped, as readers do)."""
    out = StoredProgress()
    for rec in read_records(run_dir / RECORDS_NAME, copy=False):
        p: Any = rec.payload
        if rec.type == RecordType.METRICS:
            if p.get("late") or not len(p["step"]):
                continue
            names, name_id, step = p["names"], np.asarray(p["name_id"]), np.asarray(p["step"])
            top = np.full(len(names), np.iinfo(np.int64).min, dtype=np.int64)
            np.maximum.at(top, name_id.astype(np.int64), step.astype(np.int64))
            for name, s in zip(names, top.tolist(), strict=True):
                if s > out.final_steps.get(name, s - 1):
                    out.final_steps[name] = s
        elif rec.type == RecordType.RANK and isinstance(p.get("rank"), int):
            out.rank_states[p["rank"]] = str(p.get("state"))
        elif rec.type == RecordType.END:
            out.ended = str(p.get("status", "failed"))
        elif rec.type == RecordType.EVENT and str(p.get("message", "")).startswith(RESTART_EVENT):
            out.restarts += 1
    return out


def endpoint_port(endpoint: str) -> int:
    """The tcp port of ``endpoint`` (0 for ipc, whose path follows from the run's id)."""
    if not endpoint.startswith("tcp://"):
        return 0
    return int(endpoint.rsplit(":", 1)[1])


def record_lost(root: str | Path, run_id: str, reason: str) -> str | None:
    """The run's aggregator died and none took over: append ``failed`` (with ``reason``) and an END to
    its log, unless it already ended. Returns the run's final status in the store (None if it could not
    be written)."""
    try:
        writer = RunWriter.reopen(root, run_id)
    except StoreError as exc:
        log.error("run %s: could not record that its aggregator died (%s): %s", run_id, reason, exc)
        return None
    try:
        ended = read_progress(writer.run_dir).ended
        if ended is not None:
            return ended
        now_us = time.time_ns() // 1000
        writer.append(RecordType.STATUS, {"status": "failed", "time_us": now_us, "rank": None, "reason": reason})
        end = {"status": "failed", "time_us": now_us, "missing_ranks": [], "lost_ranks": [], "reason": reason}
        writer.append(RecordType.END, end)
        writer.flush()
        writer.sync()
    except (StoreError, OSError) as exc:
        log.error("run %s: could not record that its aggregator died (%s): %s", run_id, reason, exc)
        return None
    finally:
        writer.close()
    return "failed"


class Restarter:
    """Watches a host's aggregator child and, when it dies, has the host start another (``take_over``),
    at most ``restarts`` times; stopped (:meth:`stop`) when the host ends the run, after which a death is
    the host's to record (:func:`record_lost`)."""

    def __init__(
        self, child: Callable[[], subprocess.Popen[bytes]], take_over: Callable[[], None], restarts: int, run_id: str
    ) -> None:
        self._child = child
        self._take_over = take_over
        self._left = restarts
        self._run_id = run_id
        self._lock = threading.Lock()
        self._stopped = False
        self.restarted = 0
        if restarts > 0:
            threads.start(self._watch, "simvue_hpc-aggregator-watch")

    def may_restart(self) -> bool:
        """Whether a dead child would still be replaced (not one that ended the run: exit status 0)."""
        return not self._stopped and self._left > 0 and self._child().returncode != 0

    def stop(self) -> None:
        """The host is ending the run; waits for a take-over in progress to finish."""
        with self._lock:
            self._stopped = True

    def _watch(self) -> None:
        while True:
            proc = self._child()
            code = proc.wait()
            with self._lock:
                if self._stopped or self._left <= 0 or code == 0:
                    return  # exit status 0: the child ended the run itself (SIGTERM, the host gone)
                self._left -= 1
                why = exit_reason(code)
                log.warning("run %s: the aggregator process died (%s); starting another", self._run_id, why)
                try:
                    self._take_over()
                except Exception as exc:
                    self._left = 0
                    log.error("run %s: no aggregator could take over: %s", self._run_id, exc)
                    return
                self.restarted += 1


def exit_reason(returncode: int | None) -> str:
    """How a child process ended, in words."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exit status {returncode}"
