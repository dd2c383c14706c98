"""``simvue-hpc run -- COMMAND`` without Slurm: ranks attaching, status from the exit code, signals,
the output's tail (tests/slurm runs the same under a real Slurm)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from simvue_hpc.errors import ConfigurationError
from simvue_hpc.sidecar import Tail, outcome, parse_metadata
from simvue_hpc.store import RunView
from tests.helpers import assert_store_matches, expected, only_run

pytest_plugins = ["tests.server.fixtures"]
MPIEXEC = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
CLI = [sys.executable, "-c", "import sys; from simvue_hpc.cli import main; sys.exit(main())"]
STEPS = 20

# A rank: logs STEPS values of u (rank-dependent), one event, prints to both streams.
RANK = textwrap.dedent(f"""
    import sys
    from simvue_hpc import Simvue
    with Simvue() as run:
        run.init(name="from-rank-0", metadata={{"nx": 64}}, tags=["rank-tag"], folder="/sidecar/tests",
                 description="set by rank 0")
        for step in range({STEPS}):
            run.log({{"u": run.rank * 10.0 + step}}, step=step)
        run.event(f"rank {{run.rank}} done")
        print(f"rank {{run.rank}} says hello", flush=True)
        print(f"rank {{run.rank}} warns", file=sys.stderr, flush=True)
""")

# A launcher without MPI: starts N copies of a script with Slurm's rank variables, like srun.
LAUNCHER = textwrap.dedent("""
    import os, subprocess, sys
    n, script = int(sys.argv[1]), sys.argv[2]
    procs = [subprocess.Popen([sys.executable, script], env={**os.environ, "SLURM_PROCID": str(r),
                                                            "SLURM_NTASKS": str(n), "SLURM_STEP_ID": "0"})
             for r in range(n)]
    sys.exit(max(p.wait() for p in procs))
""")


def sidecar(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "run", *args], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def events(view: RunView, prefix: str) -> list[dict]:
    return [e for e in view.events if str(e.get("message", "")).startswith(prefix)]


def user_metrics(view: RunView) -> RunView:
    """The view with only the ranks' own metrics (not the aggregator's simvue_hpc/... ones)."""
    return dataclasses.replace(view, metrics={k: v for k, v in view.metrics.items() if not k.startswith("simvue_hpc/")})


def rank_points(n: int) -> list[list[tuple[str, int, float]]]:
    return [[("u", step, r * 10.0 + step) for step in range(STEPS)] for r in range(n)]


def check_ranks_run(store: Path, proc: subprocess.CompletedProcess[str], n: int) -> RunView:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    view = only_run(store)
    assert view.status == "completed"
    # rank 0's init arguments, sent as a RunUpdate, over the sidecar's own
    assert view.name == "from-rank-0" and view.folder == "/sidecar/tests" and view.description == "set by rank 0"
    assert view.metadata == {"nx": 64, "cli": "yes", "count": 2}
    assert view.tags == ["cli-tag", "rank-tag"]
    assert sorted(view.ranks) == list(range(n)) and all(r["state"] == "closed" for r in view.ranks.values())
    assert_store_matches(user_metrics(view), expected(rank_points(n)))
    assert sorted(e["message"] for e in view.events if "done" in e["message"]) == [f"rank {r} done" for r in range(n)]
    assert view.job["launcher"] == "sidecar" and view.job["aggregator"] == "sidecar"
    # the output went through, live, and its tail is in the run
    for r in range(n):
        assert f"rank {r} says hello" in proc.stdout and f"rank {r} warns" in proc.stderr
    (out,) = events(view, "stdout of the command")
    (err,) = events(view, "stderr of the command")
    # each rank's line is in the tail; mpiexec may forward two ranks' lines as one chunk, unsplit
    assert all(f"rank {r} says hello" in out["message"] for r in range(n)), out["message"]
    assert all(f"rank {r} warns" in err["message"] for r in range(n)), err["message"]
    assert out["rank"] is None and out["level"] == "info"
    return view


# ---------------------------------------------------------------------------------------------- ranks
# --ranks: the ranks start one by one (each imports numpy...); without it, a metric is reduced among the
# ranks connected at the time, and a rank that joins after the others have finished stores late points.
CLI_RUN = ["--name", "from-cli", "--tag", "cli-tag", "--metadata", "cli=yes", "--metadata", "count=2"]


def test_python_ranks_of_a_launcher_attach_with_their_launcher_rank(store: Path, tmp_path: Path) -> None:
    (tmp_path / "rank.py").write_text(RANK)
    (tmp_path / "launch.py").write_text(LAUNCHER)
    proc = sidecar(*CLI_RUN, "--ranks", "3", "--", sys.executable, "launch.py", "3", "rank.py", cwd=tmp_path)
    view = check_ranks_run(store, proc, 3)
    assert view.job["command"] == [sys.executable, "launch.py", "3", "rank.py"]


@pytest.mark.mpi
def test_python_ranks_under_mpiexec_attach(store: Path, tmp_path: Path) -> None:
    assert MPIEXEC, "mpiexec not found: install the mpi extra (`pip install -e .[mpi]`)"
    (tmp_path / "rank.py").write_text(RANK)
    proc = sidecar(*CLI_RUN, "--ranks", "3", "--", MPIEXEC, "-n", "3", sys.executable, "rank.py", cwd=tmp_path)
    check_ranks_run(store, proc, 3)


@pytest.mark.mpi
def test_mpi4py_example_under_the_sidecar(store: Path, tmp_path: Path) -> None:
    """An mpi4py program under the sidecar attaches (no broadcast of its own) and keeps its MPI."""
    assert MPIEXEC, "mpiexec not found"
    example = Path(__file__).resolve().parents[2] / "examples" / "heat_mpi.py"
    proc = sidecar("--ranks", "2", "--", MPIEXEC, "-n", "2", sys.executable, str(example), "--steps", "10",
                   "--cells", "50", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    view = only_run(store)
    assert view.status == "completed" and view.name == "heat-1d" and view.folder == "/examples/heat"
    assert sorted(view.ranks) == [0, 1] and len(view.metrics["global_residual"]) == 10
    assert view.job["ranks"] == 2 and not (view.end or {}).get("missing_ranks")


def test_expected_ranks_that_never_join_are_missing(store: Path, tmp_path: Path) -> None:
    (tmp_path / "rank.py").write_text(RANK)
    (tmp_path / "launch.py").write_text(LAUNCHER)
    proc = sidecar("--ranks", "3", "--", sys.executable, "launch.py", "2", "rank.py", cwd=tmp_path,
                   env={"SIMVUE_HPC_STEP_TIMEOUT": "0.5"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    view = only_run(store)
    assert view.status == "completed" and view.job["ranks"] == 3
    assert (view.end or {}).get("missing_ranks") == [2]


def test_a_single_process_without_a_launcher_is_rank_0(store: Path, tmp_path: Path) -> None:
    code = "from simvue_hpc import Simvue\nwith Simvue() as r:\n    r.init(name='mine')\n    print(r.rank)\n"
    proc = sidecar("--", sys.executable, "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0" and only_run(store).name == "mine"


def test_slurm_variables_are_recorded(store: Path, tmp_path: Path) -> None:
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[01-02]", "SLURM_NTASKS": "8",
           "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "2"}  # fmt: skip
    proc = sidecar("--name", "slurmish", "--", sys.executable, "-c", "pass", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    job = only_run(store).job
    assert (job["slurm_job_id"], job["slurm_nodelist"], job["slurm_ntasks"]) == ("4242", "node[01-02]", 8)
    assert (job["slurm_array_job_id"], job["slurm_array_task_id"]) == ("4240", "2")


# ---------------------------------------------------------------------------------------------- exit codes
def test_a_failing_command_fails_the_run_with_its_exit_code(store: Path, tmp_path: Path) -> None:
    code = "import sys\nprint('computing')\nprint('Error: diverged at step 7', file=sys.stderr)\nsys.exit(3)\n"
    proc = sidecar("--name", "fails", "--", sys.executable, "-c", code, cwd=tmp_path)
    assert proc.returncode == 3
    assert "computing" in proc.stdout and "diverged" in proc.stderr
    view = only_run(store)
    assert view.status == "failed" and view.end is not None
    (err,) = events(view, "stderr of the command")
    assert err["level"] == "error" and err["message"].endswith("Error: diverged at step 7")
    assert events(view, "the command exited with code 3")


@pytest.mark.parametrize(
    ("sig", "status"), [(signal.SIGKILL, "terminated"), (signal.SIGSEGV, "failed")], ids=["SIGKILL", "SIGSEGV"]
)
def test_a_command_killed_by_a_signal(store: Path, tmp_path: Path, sig: signal.Signals, status: str) -> None:
    code = f"import os\nos.kill(os.getpid(), {int(sig)})\n"
    proc = sidecar("--", sys.executable, "-c", code, cwd=tmp_path)
    assert proc.returncode == 128 + sig
    view = only_run(store)
    assert view.status == status
    assert events(view, f"the command was killed by {sig.name}")


def test_a_command_that_cannot_start(store: Path, tmp_path: Path) -> None:
    proc = sidecar("--", str(tmp_path / "no-such-program"), cwd=tmp_path)
    assert proc.returncode == 127 and "cannot start" in proc.stderr
    view = only_run(store)
    assert view.status == "failed" and events(view, "the command could not be started")


def test_no_command_is_an_error(store: Path, tmp_path: Path) -> None:
    proc = sidecar("--name", "x", cwd=tmp_path)
    assert proc.returncode == 1 and "no command to run" in proc.stderr
    assert not store.exists() or not list(store.iterdir())


def test_the_sidecars_run_is_uploaded_with_its_status_and_tails(
    simvue_online: Any, store: Path, tmp_path: Path
) -> None:
    """Online: the run reaches the server failed, with the output's tails and the exit code as events."""
    (tmp_path / "rank.py").write_text(RANK + "raise SystemExit(5)\n")
    (tmp_path / "launch.py").write_text(LAUNCHER)
    proc = sidecar(*CLI_RUN, "--ranks", "2", "--", sys.executable, "launch.py", "2", "rank.py", cwd=tmp_path)
    assert proc.returncode == 5, proc.stderr
    view = only_run(store)
    assert view.status == "failed"
    (doc,) = simvue_online.db.runs()
    assert doc["status"] == "failed" and doc["name"] == "from-rank-0"
    messages = [e["message"] for e in simvue_online.db.events(doc["id"])]
    assert any(m.startswith("stdout of the command") and "rank 1 says hello" in m for m in messages), messages
    assert any(m.startswith("stderr of the command") and "rank 0 warns" in m for m in messages), messages
    assert any(m.startswith("the command exited with code 5") for m in messages), messages


# ---------------------------------------------------------------------------------------------- signals
# A rank that logs until stopped; it says when it is logging.
LONG_RANK = textwrap.dedent("""
    import time
    from simvue_hpc import Simvue
    with Simvue() as run:
        run.init(name="long")
        for step in range(100000):
            run.log({"u": float(step)}, step=step)
            if step == 5:
                print("logging", flush=True)
            time.sleep(0.01)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_sidecar_reaches_the_command_and_terminates_the_run(
    store: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    (tmp_path / "rank.py").write_text(LONG_RANK)
    proc = subprocess.Popen([*CLI, "run", "--", sys.executable, "rank.py"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "logging"
        started = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (128 + sig, 1), err  # the rank's exit code, through the sidecar
    assert time.monotonic() - started < 30
    view = only_run(store)
    assert view.status == "terminated", err
    assert view.end is not None
    assert events(view, f"simvue-hpc run received {sig.name}")
    assert len(view.metrics["u"]) > 5  # what the rank logged before the signal is kept


def test_the_tail_keeps_the_last_lines_and_everything_is_forwarded(store: Path, tmp_path: Path) -> None:
    code = "for i in range(250):\n    print(f'line {i}')\nprint('x' * 5000)\nprint('no newline at the end', end='')\n"
    proc = sidecar("--", sys.executable, "-c", code, cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[:250] == [f"line {i}" for i in range(250)]
    assert proc.stdout.endswith("no newline at the end")
    (out,) = events(only_run(store), "stdout of the command")
    head, *lines = out["message"].splitlines()
    assert head == "stdout of the command, last 100 line(s), 152 earlier line(s) not kept:"
    assert lines[:98] == [f"line {i}" for i in range(152, 250)]
    assert lines[98] == "x" * 2000 + "…" and lines[99] == "no newline at the end"
    assert not events(only_run(store), "stderr of the command")  # nothing written, nothing recorded


# ---------------------------------------------------------------------------------------------- pure parts
def test_tail_keeps_whole_lines_across_chunks() -> None:
    tail = Tail(lines=3, max_line=10)
    for chunk in (b"ab", b"c\nde", b"f\r\n", b"0123456789abcdef\n", b"\nlast"):
        tail.feed(chunk)
    assert tail.text() == "0123456789…\n\nlast"
    assert (tail.kept(), tail.omitted()) == (3, 2)
    assert Tail().text() == "" and Tail().kept() == 0


def test_outcome() -> None:
    assert outcome(0, None)[0] is None
    assert outcome(2, None) == ("failed", "the command exited with code 2")
    assert outcome(-9, None) == ("terminated", "the command was killed by SIGKILL")
    assert outcome(-11, None)[0] == "failed"
    assert outcome(0, signal.SIGTERM) == (
        "terminated",
        "simvue-hpc run received SIGTERM; the command exited with code 0",
    )


def test_parse_metadata() -> None:
    assert parse_metadata(["a=1", "b=x", "c=[1, 2]", "d=", "e=a=b", "f=true"]) == {
        "a": 1, "b": "x", "c": [1, 2], "d": "", "e": "a=b", "f": True,
    }  # fmt: skip
    with pytest.raises(ConfigurationError, match="KEY=VALUE"):
        parse_metadata(["novalue"])


def test_rank_0_init_without_a_folder_keeps_the_sidecars_folder(store: Path, tmp_path: Path) -> None:
    (tmp_path / "launch.py").write_text(LAUNCHER)
    (tmp_path / "rank.py").write_text("from simvue_hpc import Simvue\nwith Simvue() as r:\n    r.init(tags=['x'])\n")
    proc = sidecar("--folder", "/from/cli", "--", sys.executable, "launch.py", "1", "rank.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    view = only_run(store)
    assert view.tags == ["x"]
    assert view.folder == "/from/cli"
