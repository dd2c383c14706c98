"""Surviving the aggregator's death: what the store (the run's write-ahead log) says a new aggregator
must know, and the end a host writes when no aggregator can take over.

:func:`read_progress` folds a run's log into :class:`StoredProgress`: the largest step stored as final
per stored metric name (late records do not count), the last state of every rank, whether the run
already ended. A restarted aggregator (``AggregatorSpec.resume``) drops the resent points of steps
already stored and knows which ranks closed before it started. :func:`record_lost` is the floor:
the run is marked ``failed`` with the reason, never left ``running``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
    ended: bool = False
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
            out.ended = True
        elif rec.type == RecordType.EVENT and str(p.get("message", "")).startswith(RESTART_EVENT):
            out.restarts += 1
    return out


def record_lost(root: str | Path, run_id: str, reason: str) -> bool:
    """The run's aggregator died and none took over: append ``failed`` (with ``reason``) and an END to
    its log, unless it already ended. Returns whether the run is now ended in the store."""
    try:
        writer = RunWriter.reopen(root, run_id)
    except StoreError as exc:
        log.error("run %s: could not record that its aggregator died (%s): %s", run_id, reason, exc)
        return False
    try:
        if read_progress(writer.run_dir).ended:
            return True
        now_us = time.time_ns() // 1000
        writer.append(RecordType.STATUS, {"status": "failed", "time_us": now_us, "rank": None, "reason": reason})
        end = {"status": "failed", "time_us": now_us, "missing_ranks": [], "lost_ranks": [], "reason": reason}
        writer.append(RecordType.END, end)
        writer.flush()
        writer.sync()
    except (StoreError, OSError) as exc:
        log.error("run %s: could not record that its aggregator died (%s): %s", run_id, reason, exc)
        return False
    finally:
        writer.close()
    return True
