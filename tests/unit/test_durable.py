"""Tests of the durable-file helpers: the advisory lock and the atomic, private JSON write."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from simvue_hpc.durable import atomic_write_json, lock_file


def test_lock_file_is_exclusive_until_closed(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    path.touch()
    with open(path, "rb") as first:
        assert lock_file(first)
        fd = os.open(path, os.O_RDONLY)
        try:
            assert not lock_file(fd, path)  # another open file description: refused, not blocked
        finally:
            os.close(fd)
    with open(path, "rb") as again:
        assert lock_file(again)  # closing released it


def test_atomic_write_json_replaces_with_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    path.chmod(0o644)
    old = os.umask(0)  # the mode must not depend on a permissive umask
    try:
        atomic_write_json(path, {"a": [1, 2], "b": None})
    finally:
        os.umask(old)
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": None}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_atomic_write_json_failure_keeps_the_old_content(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    atomic_write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"v": object()})
    with pytest.raises(FileNotFoundError):
        atomic_write_json(tmp_path / "missing" / "x.json", {})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
