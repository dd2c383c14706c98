"""The uploader's pure parts: batches, what a server is missing after a lost answer, rejections, ints."""

from __future__ import annotations

import numpy as np
import pytest

from simvue_hpc.records import Record, RecordType
from simvue_hpc.upload.batches import build_batch, is_rejection, missing_metrics, stored_events
from simvue_hpc.upload.items import integral_names, metric_items


def _event(offset: int, i: int) -> Record:
    return Record(offset, offset + 10, RecordType.EVENT, {"message": f"e{i}", "time_us": i, "level": "info"})


def _convert(record: Record) -> list[dict[str, object]]:
    return [{"message": record.payload["message"]}]


def test_a_batch_rebuilt_up_to_its_stop_is_the_batch_that_was_sent() -> None:
    records = [_event(16 + 10 * i, i) for i in range(20)]
    sent = build_batch(records, [36, 0], _convert, scan_end=216)
    assert [i["message"] for i in sent.items] == [f"e{i}" for i in range(2, 20)] and sent.cursor == [216, 0]
    assert sent.cursor is not None
    more = [*records, _event(216, 20), _event(226, 21)]  # the store grew meanwhile
    rebuilt = build_batch(more, [36, 0], _convert, scan_end=236, stop=sent.cursor)
    assert rebuilt.items == sent.items


def test_a_batch_with_nothing_of_its_kind_skips_to_the_scan_end() -> None:
    assert build_batch([], [16, 0], _convert, scan_end=500).cursor == [500, 0]
    assert build_batch([], [500, 0], _convert, scan_end=500).cursor is None


def _item(step: int, ts: str, **values: float) -> dict[str, object]:
    return {"values": values, "step": step, "timestamp": ts, "time": 0.0}


def test_missing_metrics_keeps_what_the_server_lacks() -> None:
    items = [_item(0, "t0", a=1.0, b=2.0), _item(1, "t1", a=3.0), _item(1, "t1b", a=4.0)]
    stored = {"a": [{"step": 0, "timestamp": "t0", "value": 1.0}, {"step": 1, "timestamp": "t1", "value": 3.0}]}
    assert missing_metrics(items, stored) == [_item(0, "t0", b=2.0), _item(1, "t1b", a=4.0)]
    assert missing_metrics(items, {}) == items
    everything = {
        "a": [{"step": s, "timestamp": t} for s, t in ((0, "t0"), (1, "t1"), (1, "t1b"))],
        "b": [{"step": 0, "timestamp": "t0"}],
    }
    assert missing_metrics(items, everything) == []


@pytest.mark.parametrize(
    ("count", "before", "sent", "stored"),
    [(10, 10, 5, 0), (15, 10, 5, 5), (12, 10, 5, 2), (30, 10, 5, 5), (3, 10, 5, 0)],
)
def test_stored_events_from_the_count(count: int, before: int, sent: int, stored: int) -> None:
    assert stored_events(count, before, sent) == stored


@pytest.mark.parametrize(
    ("status", "rejected"),
    [
        (400, True),
        (404, True),
        (413, True),
        (422, True),
        (401, False),
        (403, False),
        (409, False),
        (429, False),
        (500, False),
        (None, False),
    ],
)
def test_which_refusals_are_dead_letters(status: int | None, rejected: bool) -> None:
    assert is_rejection(status) is rejected


def _metrics(names: list[str], name_id: list[int], value: list[float]) -> dict[str, object]:
    n = len(value)
    return {
        "names": names,
        "name_id": np.array(name_id, dtype="<u4"),
        "step": np.arange(n, dtype="<i8"),
        "time_us": np.arange(n, dtype="<i8") + 10,
        "value": np.array(value, dtype="<f8"),
    }


def test_integral_names_and_int_conversion() -> None:
    p = _metrics(["a", "b", "c", "unused"], [0, 1, 2, 0, 1], [1.0, 2.5, float("nan"), -7.0, 3.0])
    assert integral_names(p) == {"a": True, "b": False, "c": False}
    assert integral_names(_metrics(["big"], [0], [2.0**60])) == {"big": False}
    items = metric_items(p, created_us=10, ints={"a", "b"})
    values = [v for item in items for v in item["values"].values()]
    assert [type(v) for v in values] == [int, float, float, int, int]  # b's 3.0 is whole: an int when asked
