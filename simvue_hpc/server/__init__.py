"""Talking to a Simvue server: the REST client (:mod:`.client`), its retry policy (:mod:`.retry`) and
the transport boundary where ``requests``' failures become the package's errors (:mod:`.http`).

The endpoints used, and the read endpoints used to reconcile after a lost answer, are described in
``docs/server-api.md``.
"""

from __future__ import annotations

from .client import TIMESTAMP_FORMAT, USER_AGENT, SimvueClient, format_timestamp
from .retry import DEFAULT_POLICY, RetryPolicy

__all__ = ["DEFAULT_POLICY", "TIMESTAMP_FORMAT", "USER_AGENT", "RetryPolicy", "SimvueClient", "format_timestamp"]
