"""ZeroMQ sockets, endpoints, their limits and their authentication: the only module that imports zmq.

The aggregator binds one ROUTER socket; every rank connects one DEALER. DEALER/ROUTER keeps each
rank's messages in order and lets the aggregator answer one rank (welcome, file replies, the
acknowledged goodbye). Endpoints:

* ``tcp``: the default. Bound on the advertised interface only (``SIMVUE_HPC_HOST``, default the
  address this host's name resolves to) at a random port; the endpoint names that address.
* ``ipc``: a socket file (mode 0600) for ranks on one node, removed at close and before a rebind.

Security (zguide "Ironhouse"): the host makes a per-run CURVE key pair for the aggregator and one for
the ranks (:func:`new_credentials`). The ranks' credential is the run's secret itself,
``<token>:<server public key>:<client secret key>`` in hex, so it travels wherever the secret does
(MPI broadcast, ``SIMVUE_HPC_SECRET``, the rendezvous file). The aggregator's secret key never leaves
the host. A ZAP handler on the aggregator's context accepts only the ranks' public key, so a peer
without the credential is refused during the handshake: none of its bytes reach the aggregator.

Bounds (:class:`Limits`, each an ``HPCSettings`` field): the largest message, the bytes queued per
peer, the listen backlog and how long a peer may take to finish its handshake.

ZeroMQ errors are mapped to :class:`~simvue_hpc.errors.TransportError` here, once.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import resource
import secrets
import socket
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils import z85

from . import threads
from .errors import TransportError

log = logging.getLogger(__name__)

POLLIN = zmq.POLLIN
# File descriptors the aggregator process needs besides one per connected rank.
FD_MARGIN = 64
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"simvue_hpc"
KEY_BYTES = 32


@dataclass(frozen=True)
class Limits:
    """What one peer may cost the aggregator; the defaults are ``HPCSettings``' defaults.

    ``max_message_bytes``: a larger message disconnects its sender (ZMQ_MAXMSGSIZE); it must exceed a
    rank's largest batch (``max_buffered_points`` x 28 bytes plus names) and a file chunk (1 MiB).
    ``peer_buffer_bytes``: the most one peer may have queued inside ZeroMQ at the aggregator; the
    receive high-water mark is ``peer_buffer_bytes // max_message_bytes`` messages (at least 1).
    ``backlog``: connections the kernel queues before the aggregator accepts them (a connect storm
    of many ranks at start; capped by ``net.core.somaxconn``).
    ``handshake_timeout``: seconds a peer has to complete its handshake (and so its authentication)
    before it is dropped, which frees its file descriptor.
    """

    max_message_bytes: int = 64 << 20
    peer_buffer_bytes: int = 1 << 30
    backlog: int = 4096
    handshake_timeout: float = 10.0

    @property
    def rcvhwm(self) -> int:
        return max(1, self.peer_buffer_bytes // self.max_message_bytes)

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        """The limits named in an ``HPCSettings`` (fields it lacks keep their defaults)."""
        names = ("max_message_bytes", "peer_buffer_bytes", "backlog", "handshake_timeout")
        return cls(**{n: getattr(settings, n) for n in names if hasattr(settings, n)})


@dataclass(frozen=True)
class RankKeys:
    """What a rank needs for CURVE: the aggregator's public key and its own key pair (32 bytes each)."""

    server_public: bytes
    public: bytes
    secret: bytes


def new_credentials() -> tuple[str, str]:
    """A new run's secret (the ranks' credential) and the aggregator's CURVE secret key, both hex."""
    server_public, server_secret = zmq.curve_keypair()
    _, client_secret = zmq.curve_keypair()
    token = secrets.token_hex(16)
    secret = f"{token}:{z85.decode(server_public).hex()}:{z85.decode(client_secret).hex()}"
    return secret, z85.decode(server_secret).hex()


def rank_keys(secret: str) -> RankKeys | None:
    """The CURVE keys inside a run's secret, or None for a secret without keys (no encryption)."""
    parts = secret.split(":")
    if len(parts) != 3:
        return None
    try:
        server_public, client_secret = bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
    except ValueError:
        raise TransportError("the run's secret holds malformed keys") from None
    if len(server_public) != KEY_BYTES or len(client_secret) != KEY_BYTES:
        raise TransportError("the run's secret holds keys of the wrong length")
    return RankKeys(server_public, _public_of(client_secret), client_secret)


def _public_of(secret_key: bytes) -> bytes:
    return z85.decode(zmq.curve_public(z85.encode(secret_key)))


class _ZapHandler:
    """Answers the ZAP requests of one context: CURVE clients with the ranks' key pass, others do not.

    Runs in its own thread (ZeroMQ asks it synchronously during each handshake); refusals are
    counted and the first is logged, never one line per attempt.
    """

    def __init__(self, ctx: zmq.Context[Any], allowed: bytes) -> None:
        self._allowed = allowed
        self.refused = 0
        self._stop = threading.Event()
        self._sock = ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            self._sock.close(0)
            raise TransportError(f"cannot start the authentication handler: {exc}") from None
        self._thread = threads.start(self._serve, "simvue_hpc-zap")

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._sock.poll(100):
                    continue
                request = self._sock.recv_multipart()
                self._sock.send_multipart(self._answer(request))
        except zmq.ZMQError as exc:  # the context is going away
            log.debug("authentication handler stopped: %s", exc)
        finally:
            self._sock.close(0)

    def _answer(self, request: list[bytes]) -> list[bytes]:
        if len(request) < 6:
            return [b"1.0", request[1] if len(request) > 1 else b"", b"400", b"malformed request", b"", b""]
        version, request_id, domain, _address, _identity, mechanism, *credentials = request
        ok = (
            version == b"1.0"
            and domain == ZAP_DOMAIN
            and mechanism == b"CURVE"
            and len(credentials) == 1
            and hmac.compare_digest(credentials[0], self._allowed)
        )
        if ok:
            return [b"1.0", request_id, b"200", b"OK", b"rank", b""]
        self.refused += 1
        if self.refused == 1:
            log.warning("refused a connection without this run's credentials (further refusals are counted)")
        return [b"1.0", request_id, b"400", b"unknown key", b"", b""]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


# What bind_router set up beside a socket, undone by close(): the ZAP handler, the ipc socket file.
_ATTACHED: dict[zmq.Socket[Any], tuple[_ZapHandler | None, str | None]] = {}


def context() -> zmq.Context[Any]:
    """A fresh context (never the global one: forked children must not share it)."""
    return zmq.Context()


def ipc_path(run_id: str) -> str:
    """The socket file of a run's ipc endpoint."""
    return os.path.join(tempfile.gettempdir(), f"simvue_hpc-{run_id}.sock")


def remove_ipc_file(run_id: str) -> None:
    """Remove a run's socket file (left behind by an aggregator that was killed)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ipc_path(run_id))


def advertised_address() -> tuple[str, bool]:
    """The address to bind and advertise (``SIMVUE_HPC_HOST`` or this host's name), and whether it is IPv6."""
    host = os.environ.get("SIMVUE_HPC_HOST") or socket.gethostname()
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TransportError(f"cannot resolve {host!r} (set SIMVUE_HPC_HOST to this node's address): {exc}") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # IPv4 first, as ranks most often resolve it
    family, _, _, _, sockaddr = infos[0]
    address = str(sockaddr[0])
    if address.startswith("127.") or address == "::1":
        log.info("the aggregator listens on %s (%s): ranks on other nodes need SIMVUE_HPC_HOST", address, host)
    return address, family == socket.AF_INET6


def bind_router(
    ctx: zmq.Context[Any],
    kind: str,
    run_id: str,
    *,
    secret: str = "",
    server_key: str = "",
    limits: Limits | None = None,
    port: int = 0,
) -> tuple[zmq.Socket[Any], str]:
    """Bind the aggregator's ROUTER; returns the socket and the endpoint ranks connect to.

    With ``server_key`` (from :func:`new_credentials`) the socket is a CURVE server that admits only
    peers holding the keys in ``secret``. ``port`` (tcp) binds that port rather than a free one: an
    aggregator taking over a run binds its predecessor's endpoint.
    """
    limits = limits or Limits()
    zap: _ZapHandler | None = None
    if server_key:
        keys = rank_keys(secret)
        if keys is None:
            raise TransportError("a CURVE aggregator needs a secret made by new_credentials()")
        zap = _ZapHandler(ctx, keys.public)
    sock = ctx.socket(zmq.ROUTER)
    path: str | None = None
    try:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.RCVHWM, limits.rcvhwm)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes)
        sock.setsockopt(zmq.BACKLOG, limits.backlog)
        sock.setsockopt(zmq.HANDSHAKE_IVL, max(1, int(limits.handshake_timeout * 1000)))
        if server_key:
            server_secret = bytes.fromhex(server_key)
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, server_secret)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, _public_of(server_secret))
            sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
            sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        if kind == "tcp":
            address, ipv6 = advertised_address()
            sock.setsockopt(zmq.IPV6, int(ipv6))
            shown = f"[{address}]" if ipv6 else address
            if port:
                sock.bind(f"tcp://{shown}:{port}")
            else:
                port = sock.bind_to_random_port(f"tcp://{shown}")
            endpoint = f"tcp://{shown}:{port}"
        elif kind == "ipc":
            path = ipc_path(run_id)
            remove_ipc_file(run_id)  # a socket file left by a killed aggregator of this run
            endpoint = f"ipc://{path}"
            sock.bind(endpoint)
            os.chmod(path, 0o600)
        else:
            raise TransportError(f"transport must be tcp or ipc, not {kind!r}")
    except (zmq.ZMQError, OSError, ValueError, TransportError) as exc:
        sock.close(0)
        if zap is not None:
            zap.stop()
        if isinstance(exc, TransportError):
            raise
        raise TransportError(f"cannot bind the aggregator ({kind}): {exc}") from None
    _ATTACHED[sock] = (zap, path)
    return sock, endpoint


def connect_dealer(
    ctx: zmq.Context[Any],
    endpoint: str,
    sndhwm: int,
    secret: str = "",
    limits: Limits | None = None,
    ping: float = 0.0,
    ping_timeout: float = 0.0,
) -> zmq.Socket[Any]:
    """A rank's DEALER connected to ``endpoint``; at most ``sndhwm`` messages queue inside zmq.

    When ``secret`` holds CURVE keys the connection is encrypted and authenticated with them.
    With ``ping`` (seconds), ZeroMQ pings the peer that often and drops the connection when no
    answer came within ``ping_timeout``: a stopped or unreachable aggregator then shows as a
    disconnection (:func:`watch_connection`), like a dead one."""
    keys = rank_keys(secret) if secret else None
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.SNDHWM, sndhwm)
        sock.setsockopt(zmq.RCVHWM, 1000)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, (limits or Limits()).max_message_bytes)
        sock.setsockopt(zmq.IPV6, int(endpoint.startswith("tcp://[")))  # an IPv6 aggregator address
        if ping > 0:
            sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, int(ping * 1000)))
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, int(max(ping_timeout, ping) * 1000)))
        if keys is not None:
            sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
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


def refused_peers(sock: zmq.Socket[Any]) -> int:
    """How many connections the authentication of ``sock`` has refused so far."""
    zap, _ = _ATTACHED.get(sock, (None, None))
    return zap.refused if zap is not None else 0


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


# How long a closing aggregator or relay lets its last replies (the goodbye acknowledgements) leave:
# on a loaded machine 200 ms was not always enough, and the rank then never heard that it was done.
# A peer that is gone costs at most this much at close.
FINAL_LINGER_MS = 2000


def close(sock: zmq.Socket[Any] | None, linger_ms: int = 0) -> None:
    """Close a socket without ever waiting longer than ``linger_ms``; stop its authentication handler
    and remove its ipc socket file."""
    if sock is None:
        return
    if not sock.closed:
        sock.close(linger_ms)
    zap, path = _ATTACHED.pop(sock, (None, None))
    if zap is not None:
        zap.stop()
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


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
