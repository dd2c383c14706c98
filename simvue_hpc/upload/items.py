"""Pure conversions from the store's records to the server's: which stream a record belongs to,
metric and event items, and their approximate encoded size."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

import numpy as np

from ..records import Record, RecordType
from ..server import format_timestamp

MAX_RECORDS_PER_POST = 16_000
MAX_BYTES_PER_POST = 1_000_000
FINAL_STATUSES = ("completed", "failed", "terminated", "lost")
INT_LIMIT = 2**53  # whole numbers beyond this are not exact in float64 anyway
UID_KEY = "simvue_hpc_uid"  # metadata key of the run's unique id, to find it again after a lost answer


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


def integral_names(p: dict[str, Any]) -> dict[str, bool]:
    """Per metric of one METRICS payload: whether every value is a whole number an int can carry exactly."""
    value, name_id = p["value"], p["name_id"]
    whole = np.isfinite(value) & (np.abs(value) < INT_LIMIT)
    whole[whole] = value[whole] == np.floor(value[whole])
    bad = np.zeros(len(p["names"]), dtype=bool)
    np.logical_or.at(bad, name_id[~whole], True)
    seen = np.zeros(len(p["names"]), dtype=bool)
    seen[name_id] = True
    return {name: not bool(bad[i]) for i, name in enumerate(p["names"]) if seen[i]}


def metric_items(p: dict[str, Any], created_us: int | None, ints: Collection[str] = ()) -> list[dict[str, Any]]:
    """Server metric records of one METRICS payload: one per (step, time), with every name logged then.
    ``time`` counts seconds from ``created_us`` (the run's start; else the payload's first time). Values
    of the metrics in ``ints`` that are whole numbers are sent as ints."""
    step, t_us, value, name_id = p["step"], p["time_us"], p["value"], p["name_id"]
    if len(step) == 0:
        return []
    names = p["names"]
    as_int = [name in ints for name in names]
    start_us = int(created_us or t_us.min())
    order = np.lexsort((t_us, step))
    s, t, v, n = step[order], t_us[order], value[order], name_id[order]
    cut = np.flatnonzero((s[1:] != s[:-1]) | (t[1:] != t[:-1])) + 1
    items = []
    for lo, hi in zip(np.r_[0, cut], np.r_[cut, len(s)], strict=True):
        t0 = int(t[lo])
        values: dict[str, int | float] = {}
        for i, x in zip(n[lo:hi].tolist(), v[lo:hi].tolist(), strict=True):
            values[names[i]] = int(x) if as_int[i] and x.is_integer() and abs(x) < INT_LIMIT else x
        items.append(
            {"values": values, "time": (t0 - start_us) / 1e6, "timestamp": format_timestamp(t0), "step": int(s[lo])}
        )
    return items


def event_items(p: dict[str, Any], prefix: bool = False) -> list[dict[str, Any]]:
    """The server event of one EVENT payload: the message as logged; with ``prefix`` (a run of several
    ranks) preceded by ``[rank R on HOST]``."""
    where = f"[rank {p['rank']} on {p['host']}] " if prefix and p.get("rank") is not None else ""
    level = p.get("level") or "info"
    return [{"message": f"{where}{p['message']}", "timestamp": format_timestamp(int(p["time_us"])), "log_level": level}]


def canonical(definition: dict[str, Any]) -> str:
    """An alert definition as JSON with sorted keys, to tell the same definition from another."""
    return json.dumps(definition, sort_keys=True, default=str)


def describe_record(record: Record) -> str:
    """A store record as a dead letter names it."""
    p = record.payload
    name = p.get("name") or p.get("path") or ""
    return f"the {record.type.name.lower().replace('_', ' ')} record {name!r}".replace(" ''", "")


def describe_item(kind: str, item: dict[str, Any]) -> str:
    """A metric or event item as a dead letter names it."""
    if kind == "metrics":
        return f"metric values {sorted(item['values'])} at step {item['step']}"
    return f"the event {item['message'][:80]!r}"


def run_body(p: dict[str, Any], uid: str, heartbeat_timeout: int | None) -> dict[str, Any]:
    """``POST /runs`` for a RUN payload; ``uid`` goes into the metadata to find the run again."""
    body: dict[str, Any] = {
        "name": p.get("name"),
        "folder": p.get("folder") or "/",
        "status": "running",
        "description": p.get("description"),
        "tags": list(p.get("tags") or []),
        "metadata": {**(p.get("metadata") or {}), "simvue_hpc": job_metadata(dict(p.get("job") or {})), UID_KEY: uid},
        "system": p.get("system"),
        "heartbeat_timeout": heartbeat_timeout,
        "alerts": [],
        "notifications": {"state": "none"},
        "visibility": {"tenant": False, "public": False, "users": []},
        "ttl": None,
    }
    if p.get("created_us"):
        body["started"] = format_timestamp(int(p["created_us"]))
    return body


def artifact_body(p: dict[str, Any]) -> dict[str, Any]:
    """``POST /artifacts`` for a FILE payload."""
    return {
        "name": p["name"],
        "original_path": p.get("original_path"),
        "size": p["size"],
        "mime_type": p.get("mime_type") or "application/octet-stream",
        "checksum": p["sha256"],
        "metadata": {"rank": p.get("rank"), "host": p.get("host")},
    }
