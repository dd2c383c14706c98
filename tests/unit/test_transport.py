"""The ZeroMQ layer on real sockets: binding and connecting over ipc and tcp, non-blocking send and
receive, unreachable peers, errors mapped to TransportError, the open-file limit, and what a hostile
peer meets: CURVE authentication at the handshake, the message size limit, the handshake timeout."""

from __future__ import annotations

import os
import resource
import socket
import stat
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from simvue_hpc import transport
from simvue_hpc.errors import TransportError
from tests.helpers import wait_until


def _recv_within(sock: zmq.Socket[Any], timeout: float = 5.0) -> list[Any]:
    got: list[list[Any]] = []
    wait_until(lambda: (frames := transport.recv(sock)) is not None and not got.append(frames), timeout)
    return got[0]


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMVUE_HPC_HOST", "127.0.0.1")


@pytest.fixture
def pair(
    request: pytest.FixtureRequest, zmq_context: zmq.Context[Any], run_id: str, loopback: None
) -> Iterator[tuple[zmq.Socket[Any], zmq.Socket[Any], str]]:
    """A bound ROUTER and a DEALER connected to it, over the transport named by the test's parameter."""
    router, endpoint = transport.bind_router(zmq_context, request.param, run_id)
    dealer = transport.connect_dealer(zmq_context, endpoint, sndhwm=100)
    try:
        yield router, dealer, endpoint
    finally:
        transport.close(dealer)
        transport.close(router)


@pytest.mark.parametrize("pair", ["ipc", "tcp"], indirect=True)
def test_round_trip_both_ways(pair: tuple[zmq.Socket[Any], zmq.Socket[Any], str]) -> None:
    router, dealer, _ = pair
    assert transport.send(dealer, [b"hello", b"payload"], block=True)
    identity, *frames = _recv_within(router)
    assert [bytes(f) for f in frames] == [b"hello", b"payload"]
    assert transport.send(router, [bytes(identity), b"welcome"])
    assert [bytes(f) for f in _recv_within(dealer)] == [b"welcome"]


@pytest.mark.parametrize("pair", ["ipc"], indirect=True)
def test_ipc_endpoint_is_a_socket_file_named_for_the_run(
    pair: tuple[zmq.Socket[Any], zmq.Socket[Any], str], run_id: str
) -> None:
    _, _, endpoint = pair
    assert endpoint.startswith("ipc://") and run_id in endpoint
    assert os.path.exists(endpoint.removeprefix("ipc://"))


@pytest.mark.parametrize("pair", ["tcp"], indirect=True)
def test_tcp_endpoint_advertises_simvue_hpc_host(pair: tuple[zmq.Socket[Any], zmq.Socket[Any], str]) -> None:
    _, _, endpoint = pair
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    assert host == "127.0.0.1" and 0 < int(port) < 65536


def test_recv_without_a_message_returns_none_at_once(zmq_context: zmq.Context[Any], run_id: str) -> None:
    router, _ = transport.bind_router(zmq_context, "ipc", run_id)
    try:
        assert transport.recv(router) is None
    finally:
        transport.close(router)


def test_send_without_a_peer_does_not_block(zmq_context: zmq.Context[Any]) -> None:
    """A DEALER whose peer never answers queues up to its HWM, then a non-blocking send says False."""
    dealer = transport.connect_dealer(zmq_context, f"ipc:///nonexistent/{uuid.uuid4().hex}.sock", sndhwm=1)
    try:
        results = [transport.send(dealer, [b"x"]) for _ in range(10)]
        assert False in results and results.index(False) <= 2
    finally:
        transport.close(dealer)


def test_send_stops_at_the_high_water_mark(zmq_context: zmq.Context[Any], run_id: str, loopback: None) -> None:
    """A peer that does not read: the queue fills up to the HWM, then send returns False, never blocks."""
    limits = transport.Limits(max_message_bytes=1 << 17, peer_buffer_bytes=1 << 17)  # a receive HWM of 1
    router, endpoint = transport.bind_router(zmq_context, "tcp", run_id, limits=limits)
    dealer = transport.connect_dealer(zmq_context, endpoint, sndhwm=1)
    try:
        assert transport.send(dealer, [b"first"], block=True)
        frame = b"x" * 65536
        sent = 0
        while transport.send(dealer, [frame]):
            sent += 1
            assert sent < 100_000, "send never reported a full queue"
    finally:
        transport.close(dealer)
        transport.close(router)


def test_router_send_to_a_gone_peer_returns_false(zmq_context: zmq.Context[Any], run_id: str) -> None:
    router, _ = transport.bind_router(zmq_context, "ipc", run_id)
    try:
        assert transport.send(router, [b"no-such-identity", b"x"]) is False
    finally:
        transport.close(router)


def test_poller_wakes_on_a_message(zmq_context: zmq.Context[Any], run_id: str) -> None:
    router, endpoint = transport.bind_router(zmq_context, "ipc", run_id)
    dealer = transport.connect_dealer(zmq_context, endpoint, sndhwm=10)
    try:
        poller = transport.poller((router, transport.POLLIN))
        assert dict(poller.poll(0)) == {}
        transport.send(dealer, [b"ping"], block=True)
        wait_until(lambda: dict(poller.poll(50)).get(router) == transport.POLLIN, 5)
    finally:
        transport.close(dealer)
        transport.close(router)


def test_unknown_transport_is_refused(zmq_context: zmq.Context[Any], run_id: str) -> None:
    with pytest.raises(TransportError, match="tcp or ipc"):
        transport.bind_router(zmq_context, "udp", run_id)


def test_bind_on_a_busy_ipc_path_maps_to_transport_error(zmq_context: zmq.Context[Any], tmp_path: Any) -> None:
    with pytest.raises(TransportError, match="cannot bind"):
        transport.bind_router(zmq_context, "ipc", f"../../nonexistent-dir-{uuid.uuid4().hex}/x")


def test_malformed_endpoint_maps_to_transport_error(zmq_context: zmq.Context[Any]) -> None:
    with pytest.raises(TransportError, match="cannot connect"):
        transport.connect_dealer(zmq_context, "nonsense://here", sndhwm=1)


def test_close_is_idempotent(zmq_context: zmq.Context[Any]) -> None:
    dealer = transport.connect_dealer(zmq_context, "tcp://127.0.0.1:9", sndhwm=1)
    transport.close(dealer)
    transport.close(dealer)
    transport.close(None)
    assert dealer.closed


def test_fd_limit_is_raised_to_what_the_ranks_need() -> None:
    soft = transport.raise_fd_limit(10)
    assert soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 10 + transport.FD_MARGIN


def test_too_many_ranks_for_the_fd_limit_fail_at_start_with_advice() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    too_many = (hard if hard != resource.RLIM_INFINITY else 1 << 40) + 1
    with pytest.raises(TransportError, match="ulimit -n"):
        transport.raise_fd_limit(too_many)


# --- the advertised interface, the ipc socket file ---------------------------------------------------


def test_tcp_binds_the_advertised_interface_only(zmq_context: zmq.Context[Any], run_id: str, loopback: None) -> None:
    router, endpoint = transport.bind_router(zmq_context, "tcp", run_id)
    try:
        bound = router.getsockopt(zmq.LAST_ENDPOINT).decode()
        assert bound == endpoint and bound.startswith("tcp://127.0.0.1:"), bound
    finally:
        transport.close(router)


def test_default_address_is_what_the_host_name_resolves_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIMVUE_HPC_HOST", raising=False)
    address, _ = transport.advertised_address()
    assert address in {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}


def test_unresolvable_host_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMVUE_HPC_HOST", "no-such-host.invalid")
    with pytest.raises(TransportError, match="SIMVUE_HPC_HOST"):
        transport.advertised_address()


def test_ipc_socket_file_is_private_and_removed_at_close(zmq_context: zmq.Context[Any], run_id: str) -> None:
    router, endpoint = transport.bind_router(zmq_context, "ipc", run_id)
    path = endpoint.removeprefix("ipc://")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    transport.close(router)
    assert not os.path.exists(path)


def test_a_stale_ipc_socket_file_does_not_block_the_next_bind(zmq_context: zmq.Context[Any], run_id: str) -> None:
    """An aggregator killed with SIGKILL leaves its socket file; the restarted one binds over it."""
    path = transport.ipc_path(run_id)
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(path)
    leftover.close()
    router, endpoint = transport.bind_router(zmq_context, "ipc", run_id)
    dealer = transport.connect_dealer(zmq_context, endpoint, sndhwm=10)
    try:
        transport.send(dealer, [b"after a crash"], block=True)
        assert bytes(_recv_within(router)[1]) == b"after a crash"
    finally:
        transport.close(dealer)
        transport.close(router)
    transport.remove_ipc_file(run_id)  # idempotent
    assert not os.path.exists(path)


# --- CURVE: only peers holding the run's credentials get a message through ------------------------------


def _monitor_events(sock: zmq.Socket[Any], ctx: zmq.Context[Any]) -> tuple[zmq.Socket[Any], list[int]]:
    address = f"inproc://monitor-{uuid.uuid4().hex}"
    sock.monitor(address, zmq.EVENT_ALL)
    mon = ctx.socket(zmq.PAIR)
    mon.connect(address)
    return mon, []


def _wait_for_event(mon: zmq.Socket[Any], seen: list[int], wanted: set[int], timeout: float = 10.0) -> int:
    def arrived() -> bool:
        while mon.poll(0):
            seen.append(recv_monitor_message(mon)["event"])
        return bool(wanted & set(seen))

    wait_until(arrived, timeout, what=f"monitor events {wanted}")
    return next(e for e in seen if e in wanted)


@pytest.fixture
def curve_router(
    zmq_context: zmq.Context[Any], run_id: str, loopback: None
) -> Iterator[tuple[zmq.Socket[Any], str, str]]:
    secret, server_key = transport.new_credentials()
    router, endpoint = transport.bind_router(
        zmq_context, "tcp", run_id, secret=secret, server_key=server_key, limits=transport.Limits(1 << 16, 1 << 20)
    )
    try:
        yield router, endpoint, secret
    finally:
        transport.close(router)


def test_credentials_hold_the_keys_a_rank_needs() -> None:
    secret, server_key = transport.new_credentials()
    keys = transport.rank_keys(secret)
    assert keys is not None and len(bytes.fromhex(server_key)) == 32
    assert len({keys.server_public, keys.public, keys.secret, bytes.fromhex(server_key)}) == 4
    assert transport.rank_keys("0123abcd") is None  # a plain secret: no keys
    with pytest.raises(TransportError, match="malformed"):
        transport.rank_keys("t:zz:zz")


def test_rank_with_the_credentials_talks_encrypted(
    zmq_context: zmq.Context[Any], curve_router: tuple[zmq.Socket[Any], str, str]
) -> None:
    router, endpoint, secret = curve_router
    dealer = transport.connect_dealer(zmq_context, endpoint, sndhwm=10, secret=secret)
    try:
        assert dealer.getsockopt(zmq.MECHANISM) == zmq.CURVE
        transport.send(dealer, [b"hello"], block=True)
        identity, frame = _recv_within(router)
        assert bytes(frame) == b"hello"
        transport.send(router, [bytes(identity), b"welcome"])
        assert bytes(_recv_within(dealer)[0]) == b"welcome"
        assert transport.refused_peers(router) == 0
    finally:
        transport.close(dealer)


def test_peer_without_keys_never_gets_a_message_through(
    zmq_context: zmq.Context[Any], curve_router: tuple[zmq.Socket[Any], str, str]
) -> None:
    router, endpoint, _ = curve_router
    mon, seen = _monitor_events(router, zmq_context)
    plain = transport.connect_dealer(zmq_context, endpoint, sndhwm=10)  # NULL mechanism: plaintext
    try:
        transport.send(plain, [b"HELLO with a guessed secret"])
        failed = {zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL}
        _wait_for_event(mon, seen, failed)
        assert transport.recv(router) is None
        assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in seen
    finally:
        transport.close(plain)
        router.disable_monitor()
        mon.close(0)


def test_peer_with_the_server_key_but_its_own_key_pair_is_refused_by_zap(
    zmq_context: zmq.Context[Any], curve_router: tuple[zmq.Socket[Any], str, str]
) -> None:
    router, endpoint, secret = curve_router
    keys = transport.rank_keys(secret)
    assert keys is not None
    mon, seen = _monitor_events(router, zmq_context)
    public, private = zmq.curve_keypair()
    intruder = zmq_context.socket(zmq.DEALER)
    intruder.setsockopt(zmq.LINGER, 0)
    intruder.curve_serverkey = keys.server_public
    intruder.curve_publickey, intruder.curve_secretkey = public, private
    intruder.connect(endpoint)
    try:
        intruder.send(b"HELLO", zmq.NOBLOCK)
        _wait_for_event(mon, seen, {zmq.EVENT_HANDSHAKE_FAILED_AUTH})
        assert transport.recv(router) is None and transport.refused_peers(router) == 1
    finally:
        intruder.close(0)
        router.disable_monitor()
        mon.close(0)


def test_a_message_over_the_size_limit_disconnects_its_sender_only(
    zmq_context: zmq.Context[Any], curve_router: tuple[zmq.Socket[Any], str, str]
) -> None:
    router, endpoint, secret = curve_router  # max_message_bytes 64 KiB
    mon, seen = _monitor_events(router, zmq_context)
    big = transport.connect_dealer(zmq_context, endpoint, sndhwm=10, secret=secret)
    honest = transport.connect_dealer(zmq_context, endpoint, sndhwm=10, secret=secret)
    try:
        transport.send(big, [b"x" * (1 << 17)], block=True)
        _wait_for_event(mon, seen, {zmq.EVENT_DISCONNECTED})
        transport.send(honest, [b"small"], block=True)
        assert bytes(_recv_within(router)[1]) == b"small"
        assert transport.recv(router) is None
    finally:
        transport.close(big)
        transport.close(honest)
        router.disable_monitor()
        mon.close(0)


def test_receive_high_water_mark_is_sized_in_bytes() -> None:
    assert transport.Limits(max_message_bytes=1 << 20, peer_buffer_bytes=64 << 20).rcvhwm == 64
    assert transport.Limits(max_message_bytes=1 << 20, peer_buffer_bytes=1).rcvhwm == 1


def test_a_peer_that_never_finishes_its_handshake_is_dropped(
    zmq_context: zmq.Context[Any], run_id: str, loopback: None
) -> None:
    secret, server_key = transport.new_credentials()
    limits = transport.Limits(handshake_timeout=0.5)
    router, endpoint = transport.bind_router(
        zmq_context, "tcp", run_id, secret=secret, server_key=server_key, limits=limits
    )
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    idle = socket.create_connection((host, int(port)), timeout=30)
    try:
        idle.recv(64)  # the aggregator's greeting
        while chunk := idle.recv(4096):  # then nothing until it hangs up (the timeout is the test's bound)
            del chunk
    finally:
        idle.close()
        transport.close(router)
