"""Pytest plugin with the test-server fixtures. Load it with `pytest_plugins = ["tests.server.fixtures"]`.

- `simvue_server`: a started `SimvueTestServer` (SQLite file under the test's tmp_path), stopped afterwards.
  The test errors at teardown when the server raised an unexpected exception (answered 500), unless the
  test sets `simvue_server.fail_on_errors = False`.
- `simvue_env`: the same server, plus an environment in which Simvue clients talk to it and read no user
  configuration: SIMVUE_URL/SIMVUE_TOKEN set, HOME and the working directory moved to a fresh tmp
  directory, SIMVUE_OFFLINE_DIRECTORY inside it, and the official client's cached configuration cleared.
"""

from __future__ import annotations

import contextlib
import pathlib
import sys
from collections.abc import Iterator

import pytest

from .server import SimvueTestServer


def _clear_official_client_caches() -> None:
    """`simvue.config.user.SimvueConfiguration` memoises its config file and server check."""
    module = sys.modules.get("simvue.config.user")
    if module is None:
        return
    config = module.SimvueConfiguration
    for name in ("config_file", "_check_server"):
        with contextlib.suppress(AttributeError):
            getattr(config, name).cache_clear()


@pytest.fixture
def simvue_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimvueTestServer]:
    db_dir = tmp_path_factory.mktemp("simvue-server")
    server = SimvueTestServer(db_dir / "simvue.sqlite").start()
    try:
        yield server
    finally:
        errors = server.errors()
        server.stop()
    if errors and server.fail_on_errors:
        pytest.fail("test server raised unexpected exceptions:\n" + "\n".join(errors))


@pytest.fixture
def simvue_env(
    simvue_server: SimvueTestServer, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SimvueTestServer]:
    home = tmp_path_factory.mktemp("simvue-home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    monkeypatch.setenv("SIMVUE_URL", simvue_server.url)
    monkeypatch.setenv("SIMVUE_TOKEN", simvue_server.token)
    monkeypatch.setenv("SIMVUE_OFFLINE_DIRECTORY", str(home / ".simvue"))
    for name in ("SIMVUE_SERVER_PROFILE", "SIMVUE_NO_SERVER_CHECK"):
        monkeypatch.delenv(name, raising=False)
    _clear_official_client_caches()
    yield simvue_server
    _clear_official_client_caches()


@pytest.fixture
def simvue_online(
    simvue_server: SimvueTestServer, store: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> SimvueTestServer:
    """The test server configured for simvue_hpc through the environment, as users do (with the
    ``store`` fixture's local store); HOME and the working directory hold no config file."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    monkeypatch.setenv("SIMVUE_URL", simvue_server.url)
    monkeypatch.setenv("SIMVUE_TOKEN", simvue_server.token)
    monkeypatch.setenv("SIMVUE_HEARTBEAT_INTERVAL", "0.5")
    monkeypatch.setenv("SIMVUE_UPLOAD_TIMEOUT", "60")
    return simvue_server
