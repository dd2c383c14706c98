"""The local store: one append-only, checksummed, crash-safe record log per run.

The aggregator is the single writer of a run (:class:`RunWriter`); the CLI and the uploader read
it (:func:`read_records`, :func:`load_run`), possibly while the aggregator is still appending.

* :mod:`.format`: the on-disk layout and record format (the specification), encoding, decoding;
* :mod:`.reader`: records one by one, a run folded into a :class:`RunView`, listing and lookup;
* :mod:`.writer`: :class:`RunWriter` and :class:`FileSink`.
"""

from __future__ import annotations

from ..records import Record, RecordType
from .format import (
    FILES_DIR,
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    RECORDS_NAME,
    default_root,
    new_run_id,
)
from .reader import MetricSeries, RunView, find_run, list_runs, load_run, read_records
from .writer import FileSink, RunWriter

__all__ = [
    "FILES_DIR",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "RECORDS_NAME",
    "FileSink",
    "MetricSeries",
    "Record",
    "RecordType",
    "RunView",
    "RunWriter",
    "default_root",
    "find_run",
    "list_runs",
    "load_run",
    "new_run_id",
    "read_records",
]
