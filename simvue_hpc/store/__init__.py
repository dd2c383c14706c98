"""The local store: one append-only, checksummed, crash-safe record log per run.

The aggregator is the single writer of a run (:class:`RunWriter`); the CLI and the uploader read
it (:func:`read_records`, :func:`load_run`), possibly while the aggregator is still appending.

* :mod:`.format`: the on-disk layout and record format (the specification), encoding, decoding;
* :mod:`.reader`: records one by one, resynchronising after damage (:class:`Damage`);
* :mod:`.runs`: a run folded into a :class:`RunView`, listing and lookup;
* :mod:`.summary`: a run summarised per metric in one pass, without its points (large runs);
* :mod:`.check`: verifying runs (log damage, saved files) and saying what is lost;
* :mod:`.writer`: :class:`RunWriter` and :class:`FileSink`.
"""

from __future__ import annotations

from ..records import Record, RecordType
from .check import RunCheck, check_run, check_store
from .format import (
    FILES_DIR,
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    RECORDS_NAME,
    default_root,
    new_run_id,
)
from .reader import Damage, read_records
from .runs import MetricSeries, RunView, find_run, list_runs, load_run
from .summary import MetricRow, MetricSummaries, load_summary
from .writer import FileSink, RunWriter

__all__ = [
    "FILES_DIR",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "RECORDS_NAME",
    "Damage",
    "FileSink",
    "MetricRow",
    "MetricSeries",
    "MetricSummaries",
    "Record",
    "RecordType",
    "RunCheck",
    "RunView",
    "RunWriter",
    "check_run",
    "check_store",
    "default_root",
    "find_run",
    "list_runs",
    "load_run",
    "load_summary",
    "new_run_id",
    "read_records",
]
