"""Shared fixtures: every test is sealed from the developer's own setup and gets its own local store.

``_sealed`` (autouse) removes every ``SIMVUE_*`` variable, points HOME and the XDG directories at a
temporary directory and runs the test from a temporary working directory, so that a developer's
``SIMVUE_URL``/``SIMVUE_TOKEN`` or a ``simvue.toml`` in HOME or a parent directory never reaches a test.

``zmq_context``/``zmq_socket`` (modelled on pyzmq's own test fixtures) hand a test real ZeroMQ sockets and
close every one it made; the context is then terminated with a timeout, so a socket the code under test
leaked fails the test instead of hanging the suite.

``small_fs`` mounts a 3 MiB tmpfs (skipped without root) for the tests of a full disk.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from simvue_hpc.config import find_config_file

# How long terminating a test's ZeroMQ context may take once its sockets are closed.
TERM_TIMEOUT = 5.0

# Settings that keep the integration tests quick; a test that needs another sets its own.
FAST = {
    "SIMVUE_HPC_HEARTBEAT_INTERVAL": "0.5",
    "SIMVUE_HPC_CLOSE_TIMEOUT": "20",
    "SIMVUE_HPC_HOST": "127.0.0.1",  # tests bind and connect on loopback only
}


@pytest.fixture(autouse=True)
def _sealed(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No SIMVUE_* variable, HOME, XDG directory or working directory of the developer leaks into a test."""
    for key in list(os.environ):
        if key.startswith("SIMVUE_"):
            monkeypatch.delenv(key)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    dirs = (("XDG_CONFIG_HOME", ".config"), ("XDG_DATA_HOME", ".local/share"), ("XDG_CACHE_HOME", ".cache"))
    for var, sub in dirs:
        (home / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(home / sub))
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)
    found = find_config_file(cwd, home)
    if found is not None:  # the temporary directory sits below a developer's configuration file
        pytest.fail(f"{found} would configure this test's server: move it or run pytest with another --basetemp")
    yield


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh local store (SIMVUE_OFFLINE_DIRECTORY) and no inherited run to attach to."""
    root = tmp_path / "store"
    monkeypatch.setenv("SIMVUE_OFFLINE_DIRECTORY", str(root))
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    yield root


def term_context(ctx: zmq.Context[Any], timeout: float = TERM_TIMEOUT) -> None:
    """Terminate ``ctx``; a socket still open makes ``term`` block, which fails here after ``timeout``."""
    thread = threading.Thread(target=ctx.term, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        left = [s for s in list(getattr(ctx, "_sockets", ())) if not s.closed]
        for sock in left:  # closing them lets the blocked term finish, so the next test starts clean
            sock.close(linger=0)
        thread.join(timeout)
        raise AssertionError(f"ZeroMQ context not terminated within {timeout} s: {len(left)} socket(s) left open")


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context[Any]]:
    """A fresh ZeroMQ context, terminated (with a timeout) after the test."""
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        yield ctx
    finally:
        term_context(ctx)


@pytest.fixture
def zmq_socket(zmq_context: zmq.Context[Any]) -> Iterator[Callable[[int], zmq.Socket[Any]]]:
    """A factory of sockets on ``zmq_context``; each is closed (linger 0) after the test."""
    made: list[zmq.Socket[Any]] = []

    def new_socket(kind: int, **options: Any) -> zmq.Socket[Any]:
        sock = zmq_context.socket(kind)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name.upper()), value)
        made.append(sock)
        return sock

    yield new_socket
    for sock in made:
        sock.close(linger=0)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs, unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        if os.environ.get("CI"):  # CI runs as root (it installs the system packages): a skip there hides a gap
            pytest.fail(f"CI cannot mount a 3 MiB tmpfs: {exc}")
        pytest.skip(f"cannot mount a 3 MiB tmpfs (needs root): {exc}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)
