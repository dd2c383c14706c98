"""The ZeroMQ layer on real sockets: binding and connecting over ipc and tcp, non-blocking send and
receive, unreachable peers, errors mapped to TransportError, and the open-file limit."""

from __future__ import annotations

import os
import resource
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

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
    router, endpoint = transport.bind_router(zmq_context, "tcp", run_id, rcvhwm=1)
    dealer = transport.connect_dealer(zmq_context, endpoint, sndhwm=1)
    try:
        assert transport.send(dealer, [b"first"], block=True)
        frame = b"x" * 65536
        sent = 0
        while transport.send(dealer, [frame]):
            sent += 1
            assert sent < 100_000, "send never reported a full queue"
        assert transport.send(dealer, [frame]) is False
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
