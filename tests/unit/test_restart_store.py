"""What a restarted aggregator reads from the store, and the end a host writes when none restarts."""

from __future__ import annotations

from pathlib import Path

from simvue_hpc.aggregator.restart import endpoint_port, exit_reason, read_progress, record_lost
from simvue_hpc.store import RecordType, RunWriter, list_runs, load_run


def _run(root: Path) -> None:
    with RunWriter.create(root, "r1") as w:
        w.append(RecordType.RUN, {"name": "n"})
        w.append(RecordType.STATUS, {"status": "running", "time_us": 1})
        w.append_metrics(["x", "x.min"], [0, 0, 1], [3, 5, 5], [1, 2, 3], [1.0, 2.0, 3.0])
        w.append_metrics(["x"], [0], [9], [4], [1.0], late=True)  # late points do not move the final step
        w.append(RecordType.RANK, {"rank": 1, "state": "joined"})
        w.append(RecordType.RANK, {"rank": 1, "state": "closed"})
        w.append(RecordType.RANK, {"rank": 2, "state": "joined"})


def test_progress_is_read_from_the_log(tmp_path: Path) -> None:
    _run(tmp_path)
    progress = read_progress(tmp_path / "r1")
    assert progress.final_steps == {"x": 5, "x.min": 5}
    assert progress.rank_states == {1: "closed", 2: "joined"}
    assert progress.ended is None and progress.restarts == 0


def test_a_run_whose_aggregator_died_is_failed_with_the_reason_once(tmp_path: Path) -> None:
    _run(tmp_path)
    assert record_lost(tmp_path, "r1", "the aggregator process died (killed by SIGKILL)") == "failed"
    view = load_run(list_runs(tmp_path)[0].run_dir)
    assert view.status == "failed" and view.end is not None
    assert view.end["reason"] == "the aggregator process died (killed by SIGKILL)"
    assert record_lost(tmp_path, "r1", "again") == "failed"  # already ended: nothing appended
    assert load_run(tmp_path / "r1").end == view.end
    assert record_lost(tmp_path, "nope", "x") is None  # no such run: logged, not raised


def test_how_a_child_ended_and_its_port() -> None:
    assert exit_reason(-9) == "killed by SIGKILL" and exit_reason(3) == "exit status 3"
    assert endpoint_port("tcp://127.0.0.1:5555") == 5555 and endpoint_port("ipc:///tmp/x") == 0
