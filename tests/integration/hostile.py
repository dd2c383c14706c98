"""Hostile peers for the security tests, run as child processes (``python -m tests.integration.hostile``).

* ``flood HOST PORT N HOLD``: open N TCP connections, each going as far into the ZMTP handshake as a
  peer without credentials can, never authenticating; print ``opened K`` once done, hold them up to
  HOLD seconds (or until stdin closes), then close.
* ``raw HOST PORT N SEED``: N connections without credentials, each carrying one hostile payload
  (garbage, broken greetings, a plaintext HELLO, forged CURVE commands, absurd frame lengths).
* ``authenticated ENDPOINT SECRET N SEED``: N hostile messages from peers holding the run's
  credentials: random frames, mutated and out-of-order messages, hostile field values, a flood of
  distinct metric names and extreme steps.

Every mode stops by itself and prints what it sent; none targets anything but the given loopback address.
"""

from __future__ import annotations

import random
import resource
import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np

from simvue_hpc import protocol as p

SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
INT64 = (-(2**63), 2**63 - 1)


def greeting(mechanism: bytes, major: int = 3, minor: int = 0, as_server: bool = False) -> bytes:
    """A ZMTP 3 greeting: signature, version, mechanism (20 bytes), as-server flag, filler."""
    return SIGNATURE + bytes([major, minor]) + mechanism.ljust(20, b"\x00") + bytes([as_server]) + b"\x00" * 31


def command(name: bytes, data: bytes, long: bool = False) -> bytes:
    body = bytes([len(name)]) + name + data
    if long:
        return b"\x06" + struct.pack(">Q", len(body)) + body
    return b"\x04" + bytes([len(body) & 0xFF]) + body


def _raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise OSError("closed by the peer")
        data += chunk
    return data


def _stall_in_handshake(s: socket.socket) -> None:
    """Go as far as the server lets a peer without credentials: answer its greeting with the same
    mechanism, finish a NULL handshake (READY) but never send a message; under CURVE, stop before HELLO."""
    s.sendall(SIGNATURE + b"\x03")  # the server sends the rest of its greeting once it sees our major version
    theirs = _recv_exactly(s, 64)
    mechanism = theirs[12:32].rstrip(b"\x00")
    s.sendall(greeting(mechanism)[11:])
    if mechanism == b"NULL":
        s.sendall(command(b"READY", b"\x0bSocket-Type\x00\x00\x00\x06DEALER"))


def flood(host: str, port: int, n: int, hold: float) -> None:
    _raise_fd_limit()
    socks: list[socket.socket] = []
    end = time.monotonic() + hold
    for _ in range(n):
        if time.monotonic() > end:
            break
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2.0)
        try:
            s.connect((host, port))
            _stall_in_handshake(s)
        except OSError:
            s.close()
            continue
        socks.append(s)
    print(f"opened {len(socks)}", flush=True)
    while time.monotonic() < end and sys.stdin.readline():  # held until the test closes our stdin
        pass
    for s in socks:
        s.close()


def raw_payload(rng: random.Random) -> bytes:
    kind = rng.randrange(8)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 300))
    if kind == 1:  # a plaintext peer: NULL greeting, READY, then a forged HELLO message
        frames = p.encode(p.Hello(secret="guess", rank=rng.randrange(-1, 9), size=4, host="x", pid=1, client="py"), 0)
        body = b"".join(b"\x01" + bytes([len(f)]) + bytes(f) for f in frames[:-1])
        last = bytes(frames[-1])
        body += b"\x00" + bytes([len(last)]) + last
        return greeting(b"NULL") + command(b"READY", b"\x0bSocket-Type\x00\x00\x00\x06DEALER") + body
    if kind == 2:  # CURVE greeting then a HELLO command of the wrong size or content
        return greeting(b"CURVE") + command(b"HELLO", rng.randbytes(rng.choice([0, 10, 194, 200, 250])))
    if kind == 3:  # an absurd frame length
        return greeting(b"CURVE") + b"\x06" + struct.pack(">Q", rng.choice([2**62, 2**63 - 1, 1 << 40]))
    if kind == 4:  # a broken greeting
        g = bytearray(greeting(rng.choice([b"CURVE", b"NULL", b"PLAIN", b"GSSAPI", b"BOGUS"])))
        for _ in range(rng.randrange(1, 6)):
            g[rng.randrange(len(g))] = rng.randrange(256)
        return bytes(g[: rng.randrange(1, len(g) + 1)])
    if kind == 5:  # an old protocol revision
        return SIGNATURE + bytes([rng.choice([1, 2]), 0]) + rng.randbytes(50)
    if kind == 6:  # PLAIN credentials the aggregator does not use
        return greeting(b"PLAIN") + command(b"HELLO", b"\x04user\x08password")
    return greeting(b"CURVE", as_server=True) + command(b"WELCOME", rng.randbytes(160), long=rng.random() < 0.5)


def raw(host: str, port: int, n: int, seed: int) -> None:
    rng = random.Random(seed)
    sent = 0
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset: no TIME_WAIT
        s.settimeout(5.0)
        try:
            s.connect((host, port))
            s.sendall(raw_payload(rng))
            sent += 1
        except OSError:
            pass
        finally:
            s.close()
    print(f"sent {sent}", flush=True)


def _metrics(names: list[str], steps: Any, values: Any) -> p.MetricBatch:
    n = len(steps)
    return p.MetricBatch(
        names=names,
        name_id=np.arange(n, dtype=np.uint32) % max(1, len(names)),
        step=np.asarray(steps, dtype=np.int64),
        time_ns=np.full(n, time.time_ns(), dtype=np.int64),
        value=np.asarray(values, dtype=np.float64),
    )


def hostile_message(rng: random.Random, secret: str, serial: int) -> list[Any]:
    """One hostile multipart message (frames) from a peer that holds the run's credentials."""
    kind = rng.randrange(12)
    seq = rng.choice([serial, 0, rng.randrange(2**32)])
    if kind == 0:
        return [rng.randbytes(rng.randrange(0, 40)) for _ in range(rng.randrange(0, 5))]
    if kind == 1:  # a valid header, a body that is not the message's
        header = struct.pack("<2sBBI", b"SV", 1, rng.randrange(0, 30), seq)
        body = msgpack.packb(rng.choice([[1, 2], {"x": 1}, "s", None, {"names": 5}, {"secret": 1}]))
        return [header, body, *[rng.randbytes(8) for _ in range(rng.randrange(0, 3))]]
    if kind == 2:  # HELLO: wrong secrets, absurd ranks and sizes, or the right secret with hostile fields
        good = rng.random() < 0.5
        hello = p.Hello(
            secret=secret if good else rng.choice(["", "x" * 1000, secret[:-1] + "0"]),
            rank=rng.choice([-1, 0, 1, 2**31, -(2**31), 2**62]),
            size=rng.choice([0, 1, 2**40, -5]),
            host="h" * rng.randrange(0, 2000),
            pid=rng.choice([0, -1, 2**62]),
            client=rng.choice(["py", "c", "x" * 500]),
            reductions=rng.choice([{}, {"x": ["mean"]}, {"x": ["bogus"]}, {"y" * 300: ["min", "max"]}]),
        )
        return p.encode(hello, seq)
    if kind == 3:  # a mutated valid message
        frames = [bytearray(f) for f in p.encode(_metrics(["m"], [serial], [1.0]), seq)]
        frame = rng.choice(frames)
        for _ in range(rng.randrange(1, 4)):
            if frame:
                frame[rng.randrange(len(frame))] = rng.randrange(256)
        if rng.random() < 0.3:
            frames[-1] = frames[-1][: rng.randrange(len(frames[-1]) + 1)]
        return [bytes(f) for f in frames]
    if kind == 4:  # many distinct names
        names = [f"n{serial}_{i}" for i in range(rng.randrange(1, 50))]
        return p.encode(_metrics(names, [serial] * len(names), [0.5] * len(names)), seq)
    if kind == 5:  # extreme steps and values
        steps = [rng.choice([*INT64, 0, -1, rng.randrange(*INT64)]) for _ in range(rng.randrange(1, 20))]
        values = [rng.choice([np.nan, np.inf, -np.inf, 1e308, -0.0, 1.0]) for _ in steps]
        return p.encode(_metrics([rng.choice(["m", "m.min", "simvue_hpc/live_ranks", "x"])], steps, values), seq)
    if kind == 6:
        return p.encode(p.Event(message="e" * rng.randrange(0, 5000), time_ns=rng.choice([0, -1, 2**62])), seq)
    if kind == 7:  # file transfer out of order: chunks without an offer, offers of absurd size
        if rng.random() < 0.5:
            return p.encode(p.FileChunk(sha256="0" * 64, offset=rng.choice([0, -1, 2**40]), final=True, data=b"d"), seq)
        offer = p.FileOffer(
            sha256=rng.choice(["a" * 64, "zz"]),
            size=rng.choice([0, 2**62, -1]),
            name="../../etc/passwd",
            category=rng.choice(["input", "output", "code", "?"]),
            original_path="/",
            mime_type="x",
            time_ns=0,
        )
        return p.encode(offer, seq)
    if kind == 8:
        update = p.RunUpdate(name="n" * rng.randrange(0, 3000), metadata={"k" * 10: "v" * 100}, tags=["t"] * 50)
        return p.encode(update, seq)
    if kind == 9:
        return p.encode(p.AlertDefinition(definition=rng.choice([{}, {"name": "a", "source": "metrics"}])), seq)
    if kind == 10:
        msg: p.Message = rng.choice(
            [
                p.Heartbeat(time_ns=0, sent_points=2**62, dropped_points=-1),
                p.Goodbye(sent_points=rng.randrange(0, 10), dropped_points=0),
                p.Status(status=rng.choice(["completed", "failed", "bogus"]), reason="r"),
                p.AlertState(name="nope", state="critical"),
                p.Resources(time_ns=0, cpu_percent=-1.0, memory_mb=1e300, gpus=[[1.0] * 100]),
            ]
        )
        return p.encode(msg, seq)
    return [struct.pack("<2sBBI", b"SV", rng.choice([0, 2, 255]), 4, seq), b"\x80"]  # other protocol versions


def hostile_messages(secret: str, n: int, seed: int) -> Iterator[list[Any]]:
    rng = random.Random(seed)
    for serial in range(n):
        yield hostile_message(rng, secret, serial)


def authenticated(endpoint: str, secret: str, n: int, seed: int) -> None:
    from simvue_hpc import transport

    ctx = transport.context()
    peers = [transport.connect_dealer(ctx, endpoint, sndhwm=1000, secret=secret) for _ in range(8)]
    sent = 0
    try:
        for i, frames in enumerate(hostile_messages(secret, n, seed)):
            peer = peers[i % len(peers)]
            if not frames:
                frames = [b""]
            if transport.send(peer, frames, block=True):
                sent += 1
            while transport.recv(peer) is not None:  # read what the aggregator answers, ignore it
                pass
    finally:
        for peer in peers:
            transport.close(peer, linger_ms=2000)
        ctx.term()
    print(f"sent {sent}", flush=True)


def main(argv: list[str]) -> None:
    mode, *args = argv
    if mode == "flood":
        flood(args[0], int(args[1]), int(args[2]), float(args[3]))
    elif mode == "raw":
        raw(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif mode == "authenticated":
        authenticated(args[0], args[1], int(args[2]), int(args[3]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
