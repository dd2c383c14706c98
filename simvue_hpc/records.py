"""The record types of a run's log: what the aggregator's state machine emits and the store writes.

Shared by the pure core (which decides what to append) and the store (which encodes it), so the core
never imports the store. The byte format of a record is documented in ``simvue_hpc.store.format``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np


class RecordType(IntEnum):
    """The type byte of a record; ``simvue_hpc.store.format`` lists each payload."""

    RUN = 1
    RUN_UPDATE = 2
    FOLDER = 3
    STATUS = 4
    METRICS = 5
    EVENT = 6
    FILE = 7
    ALERT = 8
    RANK = 9
    END = 10
    ALERT_STATE = 11


@dataclass(frozen=True)
class Record:
    """One record read back: where it lies in the log and its decoded payload.

    A METRICS payload holds numpy arrays under name_id, step, time_us and value, and late as bool.
    """

    offset: int
    end: int
    type: RecordType
    payload: dict[str, Any]


def msgpack_default(obj: object) -> object:
    """msgpack's ``default`` hook for the store and the uploader: numpy scalars as the Python numbers
    they are, numpy arrays as lists."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__}")
