"""Tests of the ``simvue-hpc`` console script (list, show)."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from simvue_hpc.cli import main
from simvue_hpc.store import RecordType, RunWriter
from tests.helpers import store_file

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
        store_file(w, Path(__file__), "code", rank=0, host="node1")
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


# --- output for scripts --------------------------------------------------------------------------


def test_list_json_matches_the_store(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from simvue_hpc.store import list_runs

    assert main(["--root", str(root), "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    runs = list_runs(root)
    assert [d["id"] for d in data] == [v.id for v in runs]
    for d, v in zip(data, runs, strict=True):
        assert (d["name"], d["status"], d["folder"], d["tags"]) == (v.name, v.status, v.folder, v.tags)
        assert (d["ranks"], d["metrics"], d["start_us"], d["end_us"]) == (
            len(v.ranks),
            len(v.metrics),
            v.created_us,
            v.ended_us,
        )
    assert data[0]["start"] == "2023-11-14T22:13:20.000+00:00" and data[1]["end"] is None
    assert main(["--root", str(root / "none"), "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_show_json_has_the_text_content_as_data(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from simvue_hpc.store import find_run, load_run

    assert main(["--root", str(root), "show", "train", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    v = load_run(find_run(root, "train"))
    assert (d["id"], d["name"], d["status"], d["description"]) == (v.id, "train", "failed", "training run")
    assert d["metadata"] == {"lr": 0.01, "layers": [64, 32]} and d["job"]["id"] == "12345"
    assert d["lost_ranks"] == [1] and d["missing_ranks"] == []
    assert d["summary"] == {
        "metrics": 2,
        "points": 6,
        "late_points": 2,
        "events": 61,
        "files": 1,
        "alerts": 1,
        "ranks": 2,
        "ranks_by_state": {"joined": 1, "lost": 1},
    }
    metrics = {m["name"]: m for m in d["metrics"]}
    assert metrics["loss"] == {
        "name": "loss",
        "points": 4,
        "first_step": 0,
        "last_step": 3,
        "min": -1.0,
        "max": 2.5,
        "last": 0.75,
        "late": 2,
    }
    assert metrics["acc"]["last"] is None and metrics["acc"]["min"] == 0.1  # NaN is null, never invalid JSON
    assert len(d["events"]) == 61  # all of them, where the text shows the last 50
    assert d["events"][-1] == {
        "time_us": T0 + 99,
        "rank": None,
        "host": "node1",
        "level": "warning",
        "message": "disk almost full",
        "time": "2023-11-14T22:13:20.000+00:00",
    }
    assert d["files"][0]["sha256"] == v.files[0]["sha256"] and d["files"][0]["size"] == v.files[0]["size"]
    assert d["alerts"][0]["state"] == "critical" and d["alerts"][0]["definition"]["alert"]["threshold"] == 10
    assert d["ranks"] == [
        {"rank": 0, "host": "node1", "pid": 100, "state": "joined", "time_us": None},
        {"rank": 1, "host": "node2", "pid": 101, "state": "lost", "time_us": None},
    ]


def test_show_starts_with_a_summary_and_filters_metrics(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(root), "show", "train", "--metrics", "lo*"]) == 0
    out = capsys.readouterr().out.splitlines()
    summary = [line for line in out if line.startswith("summary:")]
    assert summary == [
        "summary:       2 metrics (6 points, 2 late), 61 events, 1 files, 1 alerts, 2 ranks (1 joined, 1 lost)"
    ]
    assert out.index(summary[0]) < out.index("metadata:")
    assert "metrics (1 of 2 match 'lo*')" in out
    assert any(line.split()[:2] == ["loss", "4"] for line in out)
    assert not any(line.split()[:1] == ["acc"] for line in out)
    assert main(["--root", str(root), "show", "train", "--metrics", "lo*", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in d["metrics"]] == ["loss"] and d["metrics_matching"] == 1


def test_show_of_many_metrics_lists_the_first_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n = 1000
    with RunWriter.create(tmp_path, "MANYmetrics00000000000") as w:
        w.append(RecordType.RUN, {"id": "MANYmetrics00000000000", "name": "many", "created_us": T0})
        names = [f"m{i:04d}" for i in range(n)]
        w.append_metrics(names, np.arange(n), np.zeros(n, dtype=np.int64), np.full(n, T0), np.arange(n, dtype=float))
    assert main(["--root", str(tmp_path), "show", "many"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "metrics (1000): the first 200 listed; choose others with --metrics PATTERN" in out
    assert sum(1 for line in out if line.startswith("  m")) == 200
    assert main(["--root", str(tmp_path), "show", "many", "--metrics", "m09*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum(1 for line in out if line.startswith("  m09")) == 100


def test_export_csv_reads_back_exactly(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import csv

    from simvue_hpc.store import find_run, load_run

    out = tmp_path / "m.csv"
    assert main(["--root", str(root), "export", "train", "--metrics", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"{out}: 6 points of 2 metrics"
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    v = load_run(find_run(root, "train"))
    for name, s in v.metrics.items():
        got = [r for r in rows if r["metric"] == name]
        assert [int(r["step"]) for r in got] == s.step.tolist()
        assert [int(r["time_us"]) for r in got] == s.time_us.tolist()
        np.testing.assert_array_equal([float(r["value"]) for r in got], s.value)  # NaN included, bit for bit
        assert sum(r["late"] == "true" for r in got) == s.late
    assert main(["--root", str(root), "export", "train", "--metrics", str(tmp_path / "a.csv"), "--only", "acc"]) == 0
    assert "2 points of 1 metrics" in capsys.readouterr().out


def test_export_parquet_for_pandas(root: Path, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")  # pandas is not a dependency: this is what its users do
    out = tmp_path / "m.parquet"
    assert main(["--root", str(root), "export", "train", "--metrics", str(out)]) == 0
    df = pd.read_parquet(out)
    assert list(df.columns) == ["metric", "step", "time_us", "value", "late"]
    loss = df[df.metric == "loss"]
    assert loss.step.tolist() == [0, 1, 2, 3] and loss.value.tolist() == [2.5, 1.25, -1.0, 0.75]
    assert loss.late.tolist() == [False, False, True, True]
    assert str(df.step.dtype) == "int64" and str(df.time_us.dtype) == "int64"


def test_export_without_pyarrow_or_with_a_bad_suffix_is_clear(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--root", str(root), "export", "train", "--metrics", str(tmp_path / "m.xlsx")]) == 1
    assert "--metrics must end in .csv or .parquet" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert main(["--root", str(root), "export", "train", "--metrics", str(tmp_path / "m.parquet")]) == 1
    err = capsys.readouterr().err
    assert "pyarrow" in err and "pip install 'simvue_hpc[parquet]'" in err
    assert not (tmp_path / "m.parquet").exists()


def test_show_and_list_say_when_a_run_is_damaged(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from simvue_hpc.store import RecordType, find_run, read_records

    path = find_run(root, "train") / "records.svr"
    event = next(r for r in read_records(path) if r.type is RecordType.EVENT)  # "event 000"
    data = bytearray(path.read_bytes())
    data[event.offset + 12] ^= 0xFF  # a byte of its payload: its checksum no longer matches
    path.write_bytes(bytes(data))
    assert main(["--root", str(root), "show", "train"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^damaged: +\d+ bytes in 1 places unreadable", out, re.M)
    assert "events (60)" in out and "metrics (2)" in out  # what follows the damage is all there
    assert main(["--root", str(root), "show", "train", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["damaged"] is True and d["damage"][0]["start"] == event.offset and not d["damage"][0]["torn"]
    assert main(["--root", str(root), "list", "--json"]) == 0
    assert [e["damaged"] for e in json.loads(capsys.readouterr().out)] == [True, False]


def test_show_json_of_nan_in_metadata_and_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with RunWriter.create(tmp_path, "NANrun0000000000000000") as w:
        w.append(RecordType.RUN, {"id": "NANrun0000000000000000", "name": "nan", "metadata": {"x": float("nan")}})
        w.append(RecordType.EVENT, {"message": "m", "time_us": T0, "rank": 0, "host": "h", "level": "info"})
    assert main(["--root", str(tmp_path), "show", "nan", "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1  # not a terminal: one compact line
    assert json.loads(out)["metadata"] == {"x": None}
