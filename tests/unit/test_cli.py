"""Tests of the ``simvue-hpc`` console script (list, show)."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from simvue_hpc.cli import main
from simvue_hpc.store import RecordType, RunWriter

T0 = 1_700_000_000_000_000


def _local(us: int) -> str:
    return datetime.fromtimestamp(us // 1_000_000).strftime("%Y-%m-%d %H:%M:%S")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A store with a finished run ("train") and a running one ("eval")."""
    with RunWriter.create(tmp_path, "AAAAtrain0000000000000") as w:
        w.append(
            RecordType.RUN,
            {
                "id": "AAAAtrain0000000000000",
                "name": "train",
                "folder": "/proj/a",
                "description": "training run",
                "tags": ["mpi", "gpu"],
                "metadata": {"lr": 0.01, "layers": [64, 32]},
                "created_us": T0,
                "system": {},
                "job": {"scheduler": "slurm", "id": "12345"},
            },
        )
        for rank, host in ((0, "node1"), (1, "node2")):
            w.append(RecordType.RANK, {"rank": rank, "host": host, "pid": 100 + rank, "state": "joined"})
        w.append_metrics(["loss", "acc"], [0, 1, 0, 1], [0, 0, 1, 1], [T0] * 4, [2.5, 0.1, 1.25, np.nan])
        w.append_metrics(["loss"], [0, 0], [2, 3], [T0] * 2, [-1.0, 0.75], late=True)
        for i in range(60):
            w.append(
                RecordType.EVENT,
                {
                    "message": f"event {i:03d}",
                    "time_us": T0 + i,
                    "rank": i % 2,
                    "host": "node1",
                    "level": "info",
                },
            )
        w.append(
            RecordType.EVENT,
            {
                "message": "disk almost full",
                "time_us": T0 + 99,
                "rank": None,
                "host": "node1",
                "level": "warning",
            },
        )
        content = Path(__file__).read_bytes()
        sha, size = hashlib.sha256(content).hexdigest(), len(content)
        with w.begin_file(sha) as sink:
            sink.write(content)
            sink.commit()
        w.append(
            RecordType.FILE,
            {
                "name": "test_cli.py",
                "category": "code",
                "sha256": sha,
                "size": size,
                "rank": 0,
                "host": "node1",
            },
        )
        w.append(
            RecordType.ALERT,
            {
                "name": "loss-high",
                "source": "metrics",
                "alert": {"rule": "is above", "metric": "loss", "threshold": 10},
            },
        )
        w.append(RecordType.ALERT_STATE, {"name": "loss-high", "status": "critical", "time_us": 1, "message": "m"})
        w.append(RecordType.RANK, {"rank": 1, "host": "node2", "pid": 101, "state": "lost"})
        w.append(RecordType.END, {"status": "failed", "time_us": T0 + 3_600_000_000, "lost_ranks": [1]})
    with RunWriter.create(tmp_path, "BBBBeval00000000000000") as w:
        w.append(RecordType.RUN, {"id": "BBBBeval00000000000000", "name": "eval", "created_us": T0 + 10**9})
        w.append(RecordType.STATUS, {"status": "running", "time_us": T0 + 10**9})
    return tmp_path


def test_list(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(root), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATUS", "RANKS", "METRICS", "START", "END", "FOLDER"]
    assert len(lines) == 3
    train, evaluation = lines[1], lines[2]  # oldest first
    assert train.split()[:5] == ["AAAAtrain0000000000000", "train", "failed", "2", "2"]
    assert _local(T0) in train and _local(T0 + 3_600_000_000) in train and train.endswith("/proj/a")
    assert evaluation.split()[:5] == ["BBBBeval00000000000000", "eval", "running", "0", "0"]
    assert _local(T0 + 10**9) in evaluation
    assert re.search(r"\d\d:\d\d:\d\d\s+-\s+/$", evaluation)  # no end yet


def test_list_of_an_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(tmp_path / "empty"), "list"]) == 0
    assert capsys.readouterr().out == f"no runs in {tmp_path / 'empty'}\n"


def test_root_defaults_to_the_environment(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIMVUE_OFFLINE_DIRECTORY", str(root))
    assert main(["list"]) == 0
    assert "train" in capsys.readouterr().out


def test_show(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(root), "show", "train"]) == 0
    out = capsys.readouterr().out
    for line in (
        "name:          train",
        "id:            AAAAtrain0000000000000",
        "folder:        /proj/a",
        "status:        failed",
        "description:   training run",
        "tags:          mpi, gpu",
        f"start:         {_local(T0)}",
        f"end:           {_local(T0 + 3_600_000_000)}",
        "lost ranks:    1",
        "  lr: 0.01",
        "  layers: [64, 32]",
        "  scheduler: slurm",
        "metrics (2)",
        "events (61)",
        "  ... 11 earlier events omitted",
        "files (1)",
        "alerts (1)",
        "  loss-high [critical]: rule=is above, metric=loss, threshold=10",
        "ranks (2)",
    ):
        assert line in out.splitlines(), line
    metric_lines = {
        line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  l") or line.startswith("  a")
    }
    assert metric_lines["loss"] == ["loss", "4", "0..3", "-1", "2.5", "0.75", "2"]
    assert metric_lines["acc"] == ["acc", "2", "0..1", "0.1", "0.1", "nan"]
    assert "event 010" not in out and "event 011" in out and "event 059" in out
    assert f"{_local(T0 + 11)}  1@node1  event 011" in out
    assert "-@node1 [warning]  disk almost full" in out
    (file_line,) = [line for line in out.splitlines() if "test_cli.py" in line]
    assert file_line.split()[1] == "code" and "KiB" in file_line
    assert re.search(r"\b[0-9a-f]{12}$", file_line)
    ranks = [line.split() for line in out.splitlines()[-2:]]
    assert ranks == [["0", "node1", "100", "joined"], ["1", "node2", "101", "lost"]]


def test_show_by_id_prefix_of_a_bare_run(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(root), "show", "BBBB"]) == 0
    out = capsys.readouterr().out
    assert "status:        running" in out
    assert "end:           -" in out
    assert "metadata:      -" in out
    for section in ("metrics (0)", "events (0)", "files (0)", "alerts (0)", "ranks (0)"):
        assert section in out


@pytest.mark.parametrize("key", ["nope", "AAAA", ""])
def test_show_of_an_unknown_or_ambiguous_run(root: Path, capsys: pytest.CaptureFixture[str], key: str) -> None:
    if key == "AAAA":
        RunWriter.create(root, "AAAAother000000000000").close()
    assert main(["--root", str(root), "show", key]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("simvue-hpc: ")
    assert "Traceback" not in captured.err


def test_a_subcommand_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "COMMAND" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "list" in out and "show" in out and "--root" in out
