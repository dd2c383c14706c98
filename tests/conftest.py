"""Shared fixtures: every test gets its own local store and a clean simvue_hpc environment."""

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


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh local store (SIMVUE_OFFLINE_DIRECTORY) and no inherited run to attach to."""
    root = tmp_path / "store"
    monkeypatch.setenv("SIMVUE_OFFLINE_DIRECTORY", str(root))
    for key in list(os.environ):
        if key.startswith("SIMVUE_HPC_"):
            monkeypatch.delenv(key)
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    yield root
