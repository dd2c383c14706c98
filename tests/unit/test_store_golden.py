"""The record log's bytes are fixed: a log written before the store became a package
(tests/data/store/records_v1.svr) is read back exactly, and today's writer produces the same bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from simvue_hpc.store import RecordType, RunWriter, read_records

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "store" / "records_v1.svr"
T0 = 1_700_000_000_000_000

RECORDS: list[tuple[RecordType, dict[str, Any]]] = [
    (RecordType.RUN, {"id": "golden", "name": "g", "folder": "/f", "tags": ["a"], "metadata": {"k": 1.5}}),
    (RecordType.STATUS, {"status": "running", "time_us": T0}),
    (RecordType.EVENT, {"message": "héllo", "time_us": T0 + 1, "rank": 0, "host": "n", "level": "info"}),
    (RecordType.RANK, {"rank": 0, "host": "n", "pid": 7, "state": "joined", "time_us": T0 + 2}),
    (RecordType.ALERT_STATE, {"name": "hot", "status": "critical", "time_us": T0 + 3, "message": "x > 1"}),
    (RecordType.END, {"status": "completed", "time_us": T0 + 9, "missing_ranks": [], "counters": {"n": 3}}),
]
METRICS = {
    "names": ["loss", "λ"],
    "name_id": np.array([0, 1, 0], dtype=np.uint32),
    "step": np.array([0, 0, -(2**63)], dtype=np.int64),
    "time_us": np.array([T0, T0, T0 + 5], dtype=np.int64),
    "value": np.array([0.5, np.nan, -0.0]),
    "late": True,
}


def write_golden(root: Path) -> Path:
    """The golden run, as the writer writes it; returns its log."""
    with RunWriter.create(root, "golden") as w:
        for rtype, payload in RECORDS[:-1]:
            w.append(rtype, payload)
        w.append_metrics(**METRICS)
        w.append(*RECORDS[-1])
    return w.records_path


def test_the_writer_still_writes_the_golden_bytes(tmp_path: Path) -> None:
    assert write_golden(tmp_path).read_bytes() == GOLDEN.read_bytes()


def test_the_golden_log_reads_back() -> None:
    records = list(read_records(GOLDEN))
    assert [r.type for r in records] == [t for t, _ in RECORDS[:-1]] + [RecordType.METRICS, RecordType.END]
    for rec, (_, payload) in zip(records[:-2], RECORDS[:-1], strict=True):
        assert rec.payload == payload
    metrics = records[-2].payload
    assert metrics["names"] == METRICS["names"] and metrics["late"] is True
    for key in ("name_id", "step", "time_us", "value"):
        assert metrics[key].tobytes() == METRICS[key].tobytes()
    assert records[-1].payload == RECORDS[-1][1]
