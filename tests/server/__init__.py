"""A Simvue-compatible HTTP server for the tests (REST API 1.x, as the official client 2.6.x speaks it)."""

from .common import Settings
from .faults import FaultController, FaultRule
from .requestlog import RequestLog, RequestRecord
from .server import DbView, SimvueTestServer

__all__ = [
    "DbView",
    "FaultController",
    "FaultRule",
    "RequestLog",
    "RequestRecord",
    "Settings",
    "SimvueTestServer",
]
