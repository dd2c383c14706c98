"""Runs written straight into a store with RunWriter, for the tests of the views (plot, report...)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simvue_hpc.store import RecordType, RunWriter
from tests.helpers import store_file

T0 = 1_700_000_000_000_000
RUN_ID = "VIEWrun000000000000000"
STEPS = 100
STEP_US = 100_000  # 0.1 s between steps


def step_time(step: int) -> int:
    return T0 + step * STEP_US


def make_run(root: Path, *, wide_ranks: int = 40, end: bool = True, extra_metrics: int = 0) -> str:
    """A finished 4-rank run with a reduced metric (loss: mean 0, band -1..1 in the middle half),
    a per_rank metric of 4 ranks (temp), one of wide_ranks ranks (load), a late point, events,
    an alert that fired and cleared, a saved file and a lost rank; extra_metrics more (m0, m1...)."""
    steps = np.arange(STEPS, dtype=np.int64)
    times = T0 + steps * STEP_US
    with RunWriter.create(root, RUN_ID) as w:
        w.append(
            RecordType.RUN,
            {
                "id": RUN_ID,
                "name": "view-test",
                "folder": "/tests/view",
                "description": "a run for the views",
                "tags": ["mpi", "test"],
                "metadata": {"cells": 1000, "solver": "cg"},
                "created_us": T0,
                "system": {"hostname": "node1", "python": "3.11"},
                "job": {"scheduler": "slurm", "id": "4242"},
            },
        )
        w.append(RecordType.STATUS, {"status": "running", "time_us": T0})
        for rank in range(4):
            w.append(
                RecordType.RANK,
                {
                    "rank": rank,
                    "host": f"node{rank // 2 + 1}",
                    "pid": 100 + rank,
                    "state": "joined",
                    "time_us": T0 + rank * 1000,
                },
            )
        band = np.where((steps >= 25) & (steps < 75), 1.0, 0.1)
        names = ["loss", "loss.min", "loss.max"]
        for k, values in enumerate((np.zeros(STEPS), -band, band)):
            w.append_metrics(names, np.full(STEPS, k), steps, times, values)
        temp = ["temp/rank_0", "temp/rank_1", "temp/rank_2", "temp/rank_3"]
        for r in range(4):
            w.append_metrics(temp, np.full(STEPS, r), steps, times, 10.0 * r + np.sin(steps / 10))
        load = [f"load/rank_{r}" for r in range(wide_ranks)]
        for r in range(wide_ranks):
            w.append_metrics(load, np.full(STEPS, r), steps, times, r + steps / 10.0)
        w.append_metrics(["resources/cpu_percent"], np.zeros(STEPS, dtype=np.int64), steps, times, 50 + steps % 7)
        if extra_metrics:
            n = extra_metrics
            zeros = np.zeros(n, dtype=np.int64)
            w.append_metrics([f"m{i}" for i in range(n)], np.arange(n), zeros, zeros + T0, np.ones(n))
        w.append_metrics(names, [0, 1, 2], [10, 10, 10], [step_time(90)] * 3, [0.5, 0.4, 0.6], late=True)
        w.append(
            RecordType.EVENT,
            {"message": "checkpoint written", "time_us": step_time(50), "rank": 0, "host": "node1", "level": "info"},
        )
        w.append(
            RecordType.EVENT,
            {"message": "rank 3 out of memory", "time_us": step_time(60), "rank": 3, "host": "node2", "level": "error"},
        )
        w.append(
            RecordType.ALERT,
            {
                "name": "loss-spread",
                "source": "metrics",
                "alert": {"rule": "is above", "metric": "loss.max", "threshold": 0.5},
            },
        )
        w.append(
            RecordType.ALERT_STATE,
            {"name": "loss-spread", "status": "critical", "time_us": step_time(25), "message": "loss.max 1 > 0.5"},
        )
        w.append(
            RecordType.ALERT_STATE,
            {"name": "loss-spread", "status": "ok", "time_us": step_time(75), "message": "back to normal"},
        )
        store_file(w, Path(__file__), "code", rank=0, host="node1", time_us=step_time(99))
        w.append(RecordType.RANK, {"rank": 3, "host": "node2", "pid": 103, "state": "lost", "time_us": step_time(60)})
        if end:
            for rank in range(3):
                w.append(
                    RecordType.RANK,
                    {
                        "rank": rank,
                        "host": f"node{rank // 2 + 1}",
                        "pid": 100 + rank,
                        "state": "closed",
                        "time_us": step_time(99) + rank,
                    },
                )
            counters = {"points_received": 12345, "points_stored": 1234, "late_points": 3, "dropped_points": 0}
            w.append(
                RecordType.END,
                {"status": "failed", "time_us": step_time(99) + 10, "lost_ranks": [3], "counters": counters},
            )
    return RUN_ID
