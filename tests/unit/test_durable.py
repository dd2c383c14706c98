"""Tests of the durable-file helpers: the advisory lock and the atomic, private JSON write."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from simvue_hpc import roles
from simvue_hpc.durable import atomic_write_json, lock_file
from simvue_hpc.upload import STATE_NAME, UploadState, upload_lock


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


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_beside_the_store_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = roles.publish(tmp_path / "rendezvous", "job-1", {"endpoint": "tcp://x", "secret": "s"})
        UploadState(server="http://127.0.0.1:9").save(tmp_path / STATE_NAME)
        with upload_lock(tmp_path):
            pass
    finally:
        os.umask(old)
    assert (_mode(path.parent), _mode(path)) == (0o700, 0o600)
    assert _mode(tmp_path / STATE_NAME) == 0o600
    assert _mode(tmp_path / "upload.lock") == 0o600
