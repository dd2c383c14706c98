"""Pure conversions from the store's records to the server's: which stream a record belongs to,
metric and event items, and their approximate encoded size."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..records import RecordType
from ..server import format_timestamp

MAX_RECORDS_PER_POST = 16_000
MAX_BYTES_PER_POST = 1_000_000
FINAL_STATUSES = ("completed", "failed", "terminated", "lost")


def kind_of(rtype: RecordType) -> str:
    """The upload stream a store record belongs to: ``metrics``, ``events`` or ``run``."""
    if rtype == RecordType.METRICS:
        return "metrics"
    if rtype == RecordType.EVENT:
        return "events"
    return "run"


def job_metadata(job: dict[str, Any]) -> dict[str, Any]:
    """The job fields shown in the run's ``metadata.simvue_hpc`` on the server."""
    keys = ("ranks", "launcher", "host", "slurm_job_id", "slurm_nodelist", "aggregator", "transport")
    return {k: job.get(k) for k in keys if job.get(k) is not None}


def approx_size(item: dict[str, Any]) -> int:
    """msgpack size of one metric or event record, closely enough for the 1 MB limit."""
    values = item.get("values")
    if values is not None:
        return 64 + sum(len(k) + 10 for k in values)
    return 64 + len(item.get("message", ""))


def metric_items(p: dict[str, Any], created_us: int | None) -> list[dict[str, Any]]:
    """Server metric records of one METRICS payload: one per (step, time), with every name logged then.
    ``time`` counts seconds from ``created_us`` (the run's start; else the payload's first time)."""
    step, t_us, value, name_id = p["step"], p["time_us"], p["value"], p["name_id"]
    if len(step) == 0:
        return []
    names = p["names"]
    start_us = int(created_us or t_us.min())
    order = np.lexsort((t_us, step))
    s, t, v, n = step[order], t_us[order], value[order], name_id[order]
    cut = np.flatnonzero((s[1:] != s[:-1]) | (t[1:] != t[:-1])) + 1
    items = []
    for lo, hi in zip(np.r_[0, cut], np.r_[cut, len(s)], strict=True):
        t0 = int(t[lo])
        items.append(
            {
                "values": {names[int(i)]: float(x) for i, x in zip(n[lo:hi], v[lo:hi], strict=True)},
                "time": (t0 - start_us) / 1e6,
                "timestamp": format_timestamp(t0),
                "step": int(s[lo]),
            }
        )
    return items


def event_items(p: dict[str, Any]) -> list[dict[str, Any]]:
    """The server event of one EVENT payload."""
    where = f"[rank {p['rank']} on {p['host']}] " if p.get("rank") is not None else ""
    level = p.get("level") or "info"
    return [{"message": f"{where}{p['message']}", "timestamp": format_timestamp(int(p["time_us"])), "log_level": level}]
