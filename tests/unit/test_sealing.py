"""The test fixtures themselves: a developer's server settings never reach a test, and a leaked
ZeroMQ socket fails a test instead of hanging it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.conftest import term_context

REPO = Path(__file__).resolve().parents[2]
CONFIG = '[server]\nurl = "http://127.0.0.1:9"\ntoken = "from-a-file"\n'

INNER_TEST = textwrap.dedent(
    """
    import os
    import subprocess
    import sys

    from simvue_hpc.config import ServerSettings


    def test_no_server_is_configured():
        assert not [k for k in os.environ if k.startswith("SIMVUE_")]
        settings = ServerSettings.load()
        assert not settings.online and settings.url is None and settings.token is None, settings
        child = "from simvue_hpc.config import ServerSettings; print(ServerSettings.load().online)"
        assert subprocess.run([sys.executable, "-c", child], capture_output=True, text=True).stdout.strip() == "False"
    """
)


def _inner_session(tmp_path: Path, *plugin: str) -> subprocess.CompletedProcess[str]:
    """A pytest session in a project dir whose parent and HOME hold a simvue.toml, with SIMVUE_URL/TOKEN set."""
    home = tmp_path / "home"
    project = tmp_path / "developer" / "project"
    for directory in (home, project):
        directory.mkdir(parents=True)
    (home / "simvue.toml").write_text(CONFIG)
    (project.parent / "simvue.toml").write_text(CONFIG)
    (project / "test_inner.py").write_text(INNER_TEST)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "PYTEST_"))}
    env.update(HOME=str(home), SIMVUE_URL="http://127.0.0.1:9", SIMVUE_TOKEN="x", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, "test_inner.py"]
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)


def test_a_developers_server_settings_never_reach_a_test(tmp_path: Path) -> None:
    proc = _inner_session(tmp_path, "-p", "tests.conftest")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def test_a_temporary_directory_below_a_configuration_file_is_refused(tmp_path: Path) -> None:
    """pytest's temporary directories under the developer's project: the seal cannot hold, so it says so."""
    proc = _inner_session(tmp_path, "-p", "tests.conftest", "--basetemp=../pytest-tmp")
    assert proc.returncode == 1 and "would configure this test's server" in proc.stdout, proc.stdout + proc.stderr


def test_without_the_seal_the_inner_test_sees_the_server(tmp_path: Path) -> None:
    """The same session without the project's fixtures fails: the check above can fail."""
    proc = _inner_session(tmp_path)
    assert proc.returncode == 1 and "1 failed" in proc.stdout, proc.stdout + proc.stderr


def test_a_leaked_socket_fails_instead_of_hanging() -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect("tcp://127.0.0.1:9")
    with pytest.raises(AssertionError, match="1 socket\\(s\\) left open"):
        term_context(ctx, timeout=0.5)
    assert sock.closed and ctx.closed


def test_closed_sockets_let_the_context_terminate() -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    ctx.socket(zmq.DEALER).close(linger=0)
    term_context(ctx, timeout=5)
    assert ctx.closed
