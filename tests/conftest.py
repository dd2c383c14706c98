"""Shared fixtures: every test is sealed from the developer's own setup and gets its own local store.

``_sealed`` (autouse) removes every ``SIMVUE_*`` variable, points HOME and the XDG directories at a
temporary directory and runs the test from a temporary working directory, so that a developer's
``SIMVUE_URL``/``SIMVUE_TOKEN`` or a ``simvue.toml`` in HOME or a parent directory never reaches a test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Settings that keep the integration tests quick; a test that needs another sets its own.
FAST = {
    "SIMVUE_HPC_HEARTBEAT_INTERVAL": "0.5",
    "SIMVUE_HPC_CLOSE_TIMEOUT": "20",
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
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    yield


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh local store (SIMVUE_OFFLINE_DIRECTORY) and no inherited run to attach to."""
    root = tmp_path / "store"
    monkeypatch.setenv("SIMVUE_OFFLINE_DIRECTORY", str(root))
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    yield root
