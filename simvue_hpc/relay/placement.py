"""Where a rank connects: the run's aggregator, or its node's relay (``SIMVUE_HPC_HIERARCHY``).

``flat`` (the default) connects every rank to the aggregator's endpoint (``SIMVUE_HPC_ENDPOINT``).
``node``: to its node's relay, ``ipc://<tmpdir>/simvue_hpc-<run id>-<node>.sock``, where the node is
``SIMVUE_HPC_NODE`` (to simulate nodes on one machine, or where the launcher gives no host name of
its own) or else the host name. ``auto``: the relay when its socket exists, else the aggregator. The
C client (``c/src/client.c``, ``relay_from_env``) derives the same names. Pure: no zmq.

A relay is reached without CURVE: its socket file is private to the job's user (mode 0600), never
crosses the network, and the relay checks the run's secret in every HELLO. CURVE protects what
does cross it: a rank's or a relay's link to the aggregator.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from collections.abc import Mapping

from ..errors import ConfigurationError

HIERARCHY_VAR = "SIMVUE_HPC_HIERARCHY"
NODE_VAR = "SIMVUE_HPC_NODE"
HIERARCHIES = ("auto", "flat", "node")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def node_name(env: Mapping[str, str]) -> str:
    """This process's node: ``SIMVUE_HPC_NODE``, else the host name; safe in a file name."""
    return _UNSAFE.sub("_", env.get(NODE_VAR) or socket.gethostname())


def is_relay_endpoint(endpoint: str) -> bool:
    """Whether ``endpoint`` is a node relay's (named by :func:`relay_endpoint`), not an aggregator's."""
    prefix = f"ipc://{os.path.join(tempfile.gettempdir(), 'simvue_hpc-')}"
    return endpoint.startswith(prefix) and "-" in endpoint[len(prefix) :]


def relay_endpoint(run_id: str, node: str) -> str:
    """The ipc endpoint of ``node``'s relay for run ``run_id``."""
    name = f"simvue_hpc-{run_id}-{_UNSAFE.sub('_', node)}.sock"
    return f"ipc://{os.path.join(tempfile.gettempdir(), name)}"


def attach_endpoint(env: Mapping[str, str], endpoint: str, run_id: str) -> str:
    """The endpoint a rank attaching to run ``run_id`` (aggregator at ``endpoint``) connects to."""
    hierarchy = env.get(HIERARCHY_VAR) or "flat"
    if hierarchy not in HIERARCHIES:
        raise ConfigurationError(f"{HIERARCHY_VAR}={hierarchy!r} must be one of {', '.join(HIERARCHIES)}")
    if hierarchy == "flat" or not run_id:
        if hierarchy == "node":
            raise ConfigurationError(f"{HIERARCHY_VAR}=node needs SIMVUE_HPC_RUN_ID (set by the run's host)")
        return endpoint
    relay = relay_endpoint(run_id, node_name(env))
    if hierarchy == "auto" and not os.path.exists(relay[len("ipc://") :]):
        return endpoint
    return relay
