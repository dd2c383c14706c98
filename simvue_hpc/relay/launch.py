"""Starting a node's relay from one of its ranks (``SIMVUE_HPC_HIERARCHY=node`` under MPI).

Under MPI the ranks of a node are found with ``Split_type(COMM_TYPE_SHARED)``; the first rank of each
node other than rank 0 (which hosts the aggregator and connects to it directly) starts
``python -m simvue_hpc.relay`` as its child, tells the node's other ranks its endpoint, and they connect
to it. The relay ends when the node's ranks have closed, or when the rank that started it is gone (its
standard input ends). If the relay cannot start, the node's ranks connect to the aggregator (flat).
"""

from __future__ import annotations

import hashlib
import logging
import os
import select
import subprocess
import sys
import time
from typing import Any

from .placement import node_name

log = logging.getLogger(__name__)


class NodeRelay:
    """The relay process this rank started."""

    def __init__(self, proc: subprocess.Popen[bytes], endpoint: str) -> None:
        self.proc = proc
        self.endpoint = endpoint

    def finish(self, timeout: float) -> None:
        """Wait (bounded) for the relay to end once its ranks have closed, then let it go."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the node relay did not end within %.0f s after its ranks closed; stopping it", timeout)
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # its starter is done: it flushes, says goodbye and ends
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start(upstream: str, secret: str, expected: int, timeout: float) -> NodeRelay | None:
    """Start this node's relay for ``expected`` ranks; None (and a warning) if it does not come up."""
    key = hashlib.sha256(upstream.encode()).hexdigest()[:16]  # one relay socket per run and node
    cmd = [
        sys.executable,
        "-m",
        "simvue_hpc.relay",
        "--upstream",
        upstream,
        "--run-id",
        key,
        "--node",
        node_name(os.environ),
        "--expected",
        str(expected),
        "--watch-stdin",
    ]
    env = {**os.environ, "SIMVUE_HPC_SECRET": secret}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        line += chunk
    if line.startswith(b"READY "):
        return NodeRelay(proc, line.split()[1].decode())
    log.warning("the node relay did not start (%r); this node's ranks connect to the aggregator", line[:200])
    proc.kill()
    proc.wait()
    return None


def node_endpoint(
    comm: Any, rank: int, upstream: str, secret: str, timeout: float, hierarchy: str = "node"
) -> tuple[str, NodeRelay | None]:
    """Collective over ``comm``: the endpoint this rank connects to, and the relay it started (if any).
    ``auto`` uses relays only when the ranks span several nodes."""
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    try:
        if hierarchy == "auto" and comm.allreduce(1 if node.Get_rank() == 0 else 0) < 2:
            return upstream, None  # one node: nothing to pre-reduce
        has_root = node.allreduce(1 if rank == 0 else 0)
        members = node.Get_size() - has_root  # rank 0 connects to its aggregator directly
        if members == 0:
            return upstream, None
        starter = 1 if has_root else 0  # node ranks follow world ranks: rank 0 is first on its node
        relay = start(upstream, secret, members, timeout) if node.Get_rank() == starter else None
        endpoint = node.bcast(relay.endpoint if relay else None, root=starter)
        return (endpoint if endpoint and rank != 0 else upstream), relay
    finally:
        node.Free()
