"""The node relay's process: one ROUTER for the node's ranks (ipc), one DEALER up to the aggregator.

``python -m simvue_hpc.relay --upstream ENDPOINT --run-id ID --node NAME [--expected N]`` (the run's
secret in ``SIMVUE_HPC_SECRET``) handshakes with the aggregator, binds
``ipc://<tmpdir>/simvue_hpc-<run id>-<node>.sock`` (:func:`relay_endpoint`: the name every rank of
the node derives by itself), prints ``READY <endpoint>`` and loops: ranks' messages through
:class:`~simvue_hpc.relay.node.RelayCore`, PARTIALS up every flush interval, a heartbeat up every
``heartbeat_interval``. It ends when every expected rank of the node has closed (a last PARTIALS, then
its GOODBYE up), or when its standard input ends (the rank that started it is gone) or on SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from .. import transport
from ..config import HPCSettings
from ..errors import ProtocolError
from ..protocol import Goodbye, GoodbyeAck, Heartbeat, Hello, Message, Reject, Welcome, decode, encode
from .node import UP, RelayCore
from .placement import NODE_VAR, node_name, relay_endpoint

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.1  # seconds between PARTIALS, unless the aggregator's WELCOME asks for longer
TICK = 0.05


class RelayService:
    """Sockets and timing around one RelayCore."""

    def __init__(
        self,
        upstream: str,
        secret: str,
        run_id: str,
        node: str,
        expected: int | None,
        settings: HPCSettings | None = None,
    ) -> None:
        s = settings or HPCSettings()
        self.heartbeat_interval = s.heartbeat_interval
        self.ctx = transport.context()
        self.up = transport.connect_dealer(self.ctx, upstream, sndhwm=10_000, secret=secret)  # CURVE up
        self.core = RelayCore(secret, node, expected, time.monotonic(), s.step_timeout, s.rank_timeout)
        self._seq = 0
        self._out_seq: dict[bytes, int] = {}
        self._send_up(Hello(secret, -1, 0, node, os.getpid(), "simvue_hpc-relay"))
        welcome = self._await_welcome(s.connect_timeout)
        self.core.welcomed(welcome)
        path = relay_endpoint(run_id, node)[len("ipc://") :]
        if os.path.exists(path):
            os.unlink(path)  # a stale socket of a relay that died
        self.down, self.endpoint = transport.bind_router(self.ctx, "ipc", f"{run_id}-{node_name({NODE_VAR: node})}")

    def _send_up(self, msg: Message) -> None:
        transport.send(self.up, encode(msg, self._seq), block=True)
        self._seq += 1

    def _send_down(self, identity: bytes, msg: Message) -> None:
        seq = self._out_seq.get(identity, 0)
        self._out_seq[identity] = seq + 1
        try:
            transport.send(self.down, [identity, *encode(msg, seq)])
        except Exception as exc:  # the rank is gone (ROUTER_MANDATORY): nothing to deliver
            log.debug("reply to a departed rank dropped: %s", exc)

    def _await_welcome(self, timeout: float) -> Welcome:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.up.poll(100):
                frames = transport.recv(self.up)
                if frames is None:
                    continue
                _, msg = decode(frames)
                if isinstance(msg, Welcome):
                    return msg
                if isinstance(msg, Reject):
                    raise SystemExit(f"the aggregator refused this relay: {msg.reason}")
        raise SystemExit(f"no answer from the aggregator within {timeout:.0f} s")

    def _deliver(self, out: list[tuple[bytes, Message]]) -> None:
        for target, msg in out:
            if target == UP:
                self._send_up(msg)
            else:
                self._send_down(target, msg)

    def run(self, control_fd: int | None = None) -> int:
        """Loop until the node's ranks are done; returns an exit code."""
        stop = False

        def on_term(signum: int, frame: Any) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, on_term)
        items: list[tuple[Any, int]] = [(self.down, transport.POLLIN), (self.up, transport.POLLIN)]
        if control_fd is not None:
            items.append((control_fd, transport.POLLIN))
        poller = transport.poller(*items)
        flush_every = max(FLUSH_INTERVAL, self.core.flush_interval)
        next_flush = time.monotonic() + flush_every
        next_beat = time.monotonic() + self.heartbeat_interval
        while not stop and not self.core.ended:
            events = dict(poller.poll(int(TICK * 1000)))
            now = time.monotonic()
            if self.down in events:
                for _ in range(1000):
                    frames = transport.recv(self.down)
                    if frames is None:
                        break
                    identity = bytes(frames[0])
                    try:
                        _, msg = decode(frames[1:])
                    except ProtocolError as exc:
                        self._send_down(identity, Reject(str(exc)))
                        continue
                    self._deliver(self.core.handle(identity, msg, now))
            if self.up in events:
                while (frames := transport.recv(self.up)) is not None:
                    try:
                        _, reply = decode(frames)
                    except ProtocolError as exc:
                        log.warning("undecodable message from the aggregator: %s", exc)
                        continue
                    self._deliver(self.core.from_aggregator(reply))
            if control_fd is not None and control_fd in events and not os.read(control_fd, 4096):
                stop = True
            self._deliver(self.core.tick(now))
            if now >= next_flush:
                self._deliver(self.core.flush())
                next_flush = now + flush_every
            if now >= next_beat:
                self._send_up(Heartbeat(time.time_ns(), self.core.points(), 0))
                next_beat = now + self.heartbeat_interval
            if self.core.all_closed():
                break
        return self.close()

    def close(self, timeout: float = 10.0) -> int:
        """Last PARTIALS, GOODBYE up, wait for its acknowledgement."""
        self._deliver(self.core.flush())
        self._send_up(Goodbye(self.core.points(), 0))
        acked = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not acked:
            if self.up.poll(100):
                frames = transport.recv(self.up)
                if frames is not None:
                    acked = isinstance(decode(frames)[1], GoodbyeAck)
        transport.close(self.down, linger_ms=transport.FINAL_LINGER_MS)
        transport.close(self.up, linger_ms=1000)
        self.ctx.term()
        path = self.endpoint[len("ipc://") :]
        if os.path.exists(path):
            os.unlink(path)
        return 0 if acked else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simvue_hpc.relay", description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", required=True, help="the aggregator's endpoint")
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--node", default=socket.gethostname())
    ap.add_argument("--expected", type=int, default=None, help="ranks on this node")
    ap.add_argument("--watch-stdin", action="store_true", help="end when standard input ends")
    args = ap.parse_args(argv)
    secret = os.environ.get("SIMVUE_HPC_SECRET", "")
    if not secret:
        print("SIMVUE_HPC_SECRET is not set", file=sys.stderr)
        return 2
    settings = HPCSettings.load()  # the job's SIMVUE_HPC_* timing: step_timeout, rank_timeout, ...
    service = RelayService(args.upstream, secret, args.run_id, args.node, args.expected, settings)
    print(f"READY {service.endpoint}", flush=True)
    return service.run(sys.stdin.fileno() if args.watch_stdin else None)
