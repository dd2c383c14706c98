"""ZeroMQ sockets, endpoints and their limits: the only module that imports zmq.

The aggregator binds one ROUTER socket; every rank connects one DEALER. DEALER/ROUTER keeps each
rank's messages in order and lets the aggregator answer one rank (welcome, file replies, the
acknowledged goodbye). Endpoints:

* ``tcp``: the default. Bound on every interface at a random port and advertised with this host's
  name, so ranks on other nodes can reach it; ``SIMVUE_HPC_HOST`` overrides the advertised address.
* ``ipc``: a socket file for ranks on one node.

ZeroMQ errors are mapped to :class:`~simvue_hpc.errors.TransportError` here, once.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import tempfile
from collections.abc import Sequence
from typing import Any

import zmq

from .errors import TransportError

log = logging.getLogger(__name__)

POLLIN = zmq.POLLIN
# File descriptors the aggregator process needs besides one per connected rank.
FD_MARGIN = 64


def context() -> zmq.Context[Any]:
    """A fresh context (never the global one: forked children must not share it)."""
    return zmq.Context()


def bind_router(ctx: zmq.Context[Any], kind: str, run_id: str, rcvhwm: int = 10_000) -> tuple[zmq.Socket[Any], str]:
    """Bind the aggregator's ROUTER; returns the socket and the endpoint ranks connect to."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.SNDHWM, 10_000)
    sock.setsockopt(zmq.LINGER, 1000)
    try:
        if kind == "tcp":
            host = os.environ.get("SIMVUE_HPC_HOST") or socket.gethostname()
            port = sock.bind_to_random_port("tcp://*")
            endpoint = f"tcp://{host}:{port}"
        elif kind == "ipc":
            path = os.path.join(tempfile.gettempdir(), f"simvue_hpc-{run_id}.sock")
            endpoint = f"ipc://{path}"
            sock.bind(endpoint)
        else:
            raise TransportError(f"transport must be tcp or ipc, not {kind!r}")
    except zmq.ZMQError as exc:
        sock.close(0)
        raise TransportError(f"cannot bind the aggregator ({kind}): {exc}") from None
    return sock, endpoint


def connect_dealer(
    ctx: zmq.Context[Any], endpoint: str, sndhwm: int, ping: float = 0.0, ping_timeout: float = 0.0
) -> zmq.Socket[Any]:
    """A rank's DEALER connected to ``endpoint``; at most ``sndhwm`` messages queue inside zmq.

    With ``ping`` (seconds), ZeroMQ pings the peer that often and drops the connection when no
    answer came within ``ping_timeout``: a stopped or unreachable aggregator then shows as a
    disconnection (:func:`watch_connection`), like a dead one."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.RCVHWM, 1000)
    sock.setsockopt(zmq.LINGER, 0)
    if ping > 0:
        sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, int(ping * 1000)))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, int(max(ping_timeout, ping) * 1000)))
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise TransportError(f"cannot connect to the aggregator at {endpoint}: {exc}") from None
    return sock


def send(sock: zmq.Socket[Any], frames: Sequence[Any], block: bool = False) -> bool:
    """Send one multipart message; False when it would block (HWM reached) and ``block`` is off."""
    try:
        sock.send_multipart(frames, flags=0 if block else zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return False
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EHOSTUNREACH:  # ROUTER_MANDATORY: the peer is gone
            return False
        raise TransportError(f"send failed: {exc}") from None
    return True


def recv(sock: zmq.Socket[Any]) -> list[Any] | None:
    """One multipart message without blocking (frames as zero-copy buffers), or None."""
    try:
        frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return None
    return [f.buffer for f in frames]


def poller(*items: tuple[Any, int]) -> zmq.Poller:
    """A poller over sockets and raw file descriptors."""
    p = zmq.Poller()
    for item, flags in items:
        p.register(item, flags)
    return p


def watch_connection(sock: zmq.Socket[Any]) -> zmq.Socket[Any]:
    """A socket that reports when ``sock`` has a working connection to its peer (the ZeroMQ
    handshake done, not merely a TCP connection: a stopped process's kernel still accepts those) and
    when it drops (a dead aggregator closes its end at once); read it with :func:`connection_changes`."""
    return sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)


def connection_changes(monitor: zmq.Socket[Any]) -> list[bool]:
    """The changes the monitor has seen since the last call: True connected, False disconnected."""
    from zmq.utils.monitor import recv_monitor_message

    changes: list[bool] = []
    while True:
        try:
            event = recv_monitor_message(monitor, flags=zmq.NOBLOCK)
        except zmq.Again:
            return changes
        changes.append(event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED)


def close(sock: zmq.Socket[Any] | None, linger_ms: int = 0) -> None:
    """Close a socket without ever waiting longer than ``linger_ms``."""
    if sock is not None and not sock.closed:
        sock.close(linger_ms)


def raise_fd_limit(expected_ranks: int | None) -> int:
    """Raise the soft open-file limit to the hard one and check that ``expected_ranks`` fit.

    Past the limit an ipc aggregator aborts and a tcp one spins, so a job too large for the limit
    fails here, at start, with a message saying what to change.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.debug("could not raise RLIMIT_NOFILE: %s", exc)
    if expected_ranks is not None and expected_ranks + FD_MARGIN > soft:
        raise TransportError(
            f"{expected_ranks} ranks need {expected_ranks + FD_MARGIN} open files at the aggregator but the "
            f"limit is {soft} (hard {hard}): raise it with `ulimit -n` in the job script"
        )
    return soft
