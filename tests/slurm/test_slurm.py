"""Jobs on a real Slurm (started by conftest.py): the slurm_examples scripts as users submit them,
plain ``srun`` ranks meeting through the rendezvous file, and the sidecar's status on a failing
command and on ``scancel``."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from simvue_hpc.store import RunView, list_runs
from tests.helpers import assert_store_matches, expected, only_run, series, wait_until
from tests.slurm.conftest import Slurm

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "slurm_examples"
PY = sys.executable
STEPS = 15

# A plain rank (no mpi4py): rank and size come from srun's environment.
RANK = textwrap.dedent(f"""
    import os, sys
    from simvue_hpc import Simvue
    rank = int(os.environ["SLURM_PROCID"])
    with Simvue() as run:
        run.init(name="plain-" + os.environ["SLURM_JOB_ID"] + "." + os.environ["SLURM_STEP_ID"],
                 metadata={{"ntasks": int(os.environ["SLURM_NTASKS"])}})
        for step in range({STEPS}):
            run.log({{"u": rank * 100.0 + step * 0.5}}, step=step)
        run.event(f"rank {{rank}} done")
    print(f"rank {{rank}} of {{os.environ['SLURM_NTASKS']}}: mpi4py imported: {{'mpi4py' in sys.modules}}")
""")

# A Python rank of the sidecar's run that names nothing (the sidecar's --name stays), then exits with
# $EXIT_CODE on rank 1, or logs until stopped with $FOREVER=1.
STANDIN = textwrap.dedent(f"""
    import os, sys, time
    from simvue_hpc import Simvue
    rank = int(os.environ["SLURM_PROCID"])
    with Simvue() as run:
        run.init(metadata={{"standin": True}})
        for step in range({STEPS}):
            run.log({{"u": rank * 100.0 + step * 0.5}}, step=step)
        print(f"rank {{rank}} logged {STEPS} steps", flush=True)
        while os.environ.get("FOREVER") == "1":
            time.sleep(0.05)
    if rank == 1:
        sys.exit(int(os.environ.get("EXIT_CODE", "0")))
""")


def points(n: int) -> list[list[tuple[str, int, float]]]:
    return [[("u", step, r * 100.0 + step * 0.5) for step in range(STEPS)] for r in range(n)]


def user_metrics(view: RunView) -> RunView:
    """The view with only the ranks' own metrics (not the aggregator's simvue_hpc/... ones)."""
    return dataclasses.replace(view, metrics={k: v for k, v in view.metrics.items() if not k.startswith("simvue_hpc/")})


def output(job_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(job_dir.glob("slurm-*.out")))


def check_plain_run(view: RunView, n: int, job_id: str) -> None:
    assert view.status == "completed"
    assert sorted(view.ranks) == list(range(n)) and all(r["state"] == "closed" for r in view.ranks.values())
    assert_store_matches(user_metrics(view), expected(points(n)))
    assert view.job["launcher"] == "slurm" and view.job["ranks"] == n
    assert view.job["slurm_job_id"] == job_id
    assert sorted(e["message"] for e in view.events if e["message"].endswith("done")) == [
        f"rank {r} done" for r in range(n)
    ]


# ---------------------------------------------------------------------------------------------- srun, no sidecar
def test_srun_plain_ranks_meet_through_the_rendezvous_file(slurm: Slurm, store: Path, job_dir: Path) -> None:
    (job_dir / "rank.py").write_text(RANK)
    proc = slurm.command("srun", "-n", "3", "--overcommit", PY, "rank.py", cwd=job_dir, timeout=120)
    assert sorted(proc.stdout.splitlines()) == [f"rank {r} of 3: mpi4py imported: False" for r in range(3)]
    view = only_run(store)
    job_id = view.name.split("-")[1].split(".")[0] if view.name else ""
    check_plain_run(view, 3, job_id)
    assert view.metadata == {"ntasks": 3}
    assert not list((store / ".rendezvous").glob("*.json")), "rank 0 removes the rendezvous file"


def test_two_steps_of_one_job_are_two_runs(slurm: Slurm, store: Path, job_dir: Path) -> None:
    """The rendezvous is keyed by job AND step: consecutive sruns in one batch job do not mix."""
    (job_dir / "rank.py").write_text(RANK)
    script = job_dir / "steps.sbatch"
    script.write_text(f"#!/bin/bash\nset -e\nsrun -n 2 {PY} rank.py\nsrun -n 2 {PY} rank.py\n")
    job_id = slurm.sbatch(script, options=["--ntasks=2", "--overcommit"], chdir=job_dir, submit_dir=job_dir)
    (job,) = slurm.wait(job_id)
    assert (job.state, job.exit_code) == ("COMPLETED", 0), output(job_dir)
    runs = sorted(list_runs(store), key=lambda v: v.name or "")
    assert [v.name for v in runs] == [f"plain-{job_id}.0", f"plain-{job_id}.1"]
    for view in runs:
        check_plain_run(view, 2, job_id)


# ---------------------------------------------------------------------------------------------- the examples
def test_heat_mpi_example(slurm: Slurm, store: Path, job_dir: Path) -> None:
    """(a) mpi4py under srun --mpi=pmi2, four ranks, no sidecar: exactly the reductions of what they logged."""
    raw = job_dir / "raw"
    job_id = slurm.sbatch(EXAMPLES / "heat_mpi.sbatch", "--steps", "30", "--cells", "50", "--raw", str(raw),
                          options=["--overcommit"], chdir=job_dir, submit_dir=REPO)  # fmt: skip
    (job,) = slurm.wait(job_id)
    assert (job.state, job.exit_code) == ("COMPLETED", 0), output(job_dir)
    n = 4
    per_rank = [[tuple(p) for p in json.loads((raw / f"rank_{r}.json").read_text())] for r in range(n)]
    view = only_run(store)
    assert view.status == "completed" and view.name == "heat-1d" and view.folder == "/examples/heat"
    assert_store_matches(user_metrics(view), expected(per_rank))  # type: ignore[arg-type]
    assert sorted(view.ranks) == list(range(n)) and view.job["launcher"] == "mpi4py"
    assert view.job["slurm_job_id"] == job_id and view.job["slurm_nodelist"] == slurm.node
    assert (job_dir / f"heat_{n}.npy").exists()


def test_c_mpi_sidecar_example(slurm: Slurm, store: Path, job_dir: Path, c_mpi_example: Path) -> None:
    """(b) the C client's MPI example under the sidecar around ``srun --mpi=pmi2``: each C rank
    attaches with srun's rank; the run has the job's details and exactly the reductions."""
    steps = 20
    job_id = slurm.sbatch(EXAMPLES / "c_mpi_sidecar.sbatch", str(c_mpi_example), str(steps),
                          options=["--ntasks=3", "--overcommit"], chdir=job_dir, submit_dir=REPO)  # fmt: skip
    (job,) = slurm.wait(job_id)
    assert (job.state, job.exit_code) == ("COMPLETED", 0), output(job_dir)
    view = only_run(store)
    assert view.status == "completed", output(job_dir)
    assert view.name == f"c-mpi-{job_id}" and view.tags == ["slurm", "c"] and view.metadata == {"ntasks": 3}
    assert view.folder == "/examples/c-mpi"
    assert sorted(view.ranks) == [0, 1, 2] and all(r["state"] == "closed" for r in view.ranks.values())
    info = view.job
    assert (info["slurm_job_id"], info["slurm_nodelist"], info["slurm_ntasks"]) == (job_id, slurm.node, 3)
    assert info["launcher"] == "sidecar" and info["ranks"] == 3
    # c/examples/mpi_ranks.c: rank r logs mpi.value = (r + 1) step + 0.5 (sum, min, max, count) and
    # mpi.rank = r per rank; rank 0 logs MPI_Allreduce's sum as mpi.check.sum.
    s = range(steps)
    assert series(view, "mpi.value") == {i: 6.0 * i + 1.5 for i in s}
    assert series(view, "mpi.value.min") == {i: i + 0.5 for i in s}
    assert series(view, "mpi.value.max") == {i: 3.0 * i + 0.5 for i in s}
    assert series(view, "mpi.value.count") == {i: 3.0 for i in s}
    assert series(view, "mpi.check.sum") == series(view, "mpi.value")
    for rank in range(3):  # under the sidecar a C rank is its launcher's rank
        assert series(view, f"mpi.rank/rank_{rank}") == {i: float(rank) for i in s}
    (tail,) = [e for e in view.events if e["message"].startswith("stdout of the command")]
    assert tail["message"].splitlines()[1:] == ["svh_example_mpi: 3 ranks, all acknowledged"]
    assert "simvue-hpc run: run" in output(job_dir)


def test_python_ranks_under_the_sidecar_script(slurm: Slurm, store: Path, job_dir: Path) -> None:
    """The same script around Python ranks: they attach with srun's ranks too."""
    (job_dir / "standin.py").write_text(STANDIN)
    job_id = slurm.sbatch(EXAMPLES / "c_mpi_sidecar.sbatch", PY, "standin.py", options=["--ntasks=3", "--overcommit"],
                          chdir=job_dir, submit_dir=REPO)  # fmt: skip
    (job,) = slurm.wait(job_id)
    assert (job.state, job.exit_code) == ("COMPLETED", 0), output(job_dir)
    view = only_run(store)
    assert view.status == "completed", output(job_dir)
    assert view.name == f"c-mpi-{job_id}" and view.tags == ["slurm", "c"] and view.folder == "/examples/c-mpi"
    assert view.metadata == {"ntasks": 3, "standin": True}
    assert sorted(view.ranks) == [0, 1, 2] and all(r["state"] == "closed" for r in view.ranks.values())
    assert_store_matches(user_metrics(view), expected(points(3)))
    (tail,) = [e for e in view.events if e["message"].startswith("stdout of the command")]
    assert sorted(tail["message"].splitlines()[1:]) == [f"rank {r} logged {STEPS} steps" for r in range(3)]


def test_array_example(slurm: Slurm, store: Path, job_dir: Path) -> None:
    """(c) each array task is its own run, named from its task id, all in the array's folder."""
    job_id = slurm.sbatch(EXAMPLES / "array.sbatch", "--steps", "40", options=["--array=0-2"], chdir=job_dir,
                          submit_dir=REPO)  # fmt: skip
    jobs = slurm.wait(job_id)
    assert sorted((j.state, j.exit_code) for j in jobs) == [("COMPLETED", 0)] * 3, output(job_dir)
    runs = sorted(list_runs(store), key=lambda v: v.name or "")
    assert [v.name for v in runs] == ["sweep-0", "sweep-1", "sweep-2"]
    for task, view in enumerate(runs):
        assert view.status == "completed" and view.folder == f"/sweeps/{job_id}"
        assert view.metadata["task"] == task and view.metadata["alpha"] == pytest.approx(0.05 * (task + 1))
        assert len(view.metrics["energy"]) == 40 and view.job["launcher"] == "none"
    assert len({v.job["slurm_job_id"] for v in runs}) == 3


def test_pool_example(slurm: Slurm, store: Path, job_dir: Path) -> None:
    """(d) a Pool on one node, one worker per CPU Slurm gave: one run, reduced across workers."""
    cpus = min(slurm.cpus, 2)
    job_id = slurm.sbatch(EXAMPLES / "pool.sbatch", "--tasks", "4", "--steps", "25",
                          options=[f"--cpus-per-task={cpus}"], chdir=job_dir, submit_dir=REPO)  # fmt: skip
    (job,) = slurm.wait(job_id)
    assert (job.state, job.exit_code) == ("COMPLETED", 0), output(job_dir)
    view = only_run(store)
    assert view.status == "completed" and view.name == "pool-sweep" and view.metadata["workers"] == cpus
    assert all(r["state"] == "closed" for r in view.ranks.values()) and len(view.ranks) == 1 + cpus
    assert all(len(view.metrics[f"energy/task_{t}"]) == 25 for t in range(4))
    assert len(view.metrics["final_energy"]) == 4 and not any(s.late for s in view.metrics.values())
    done = [e for e in view.events if " done in pid " in e["message"]]
    assert len(done) == 4 and {e["rank"] for e in done} <= set(range(1, cpus + 1))  # by the workers


# ---------------------------------------------------------------------------------------------- the sidecar's status
def test_sidecar_marks_a_failing_command_failed(slurm: Slurm, store: Path, job_dir: Path) -> None:
    (job_dir / "standin.py").write_text(STANDIN)
    job_id = slurm.sbatch(EXAMPLES / "c_mpi_sidecar.sbatch", PY, "standin.py", options=["--ntasks=2", "--overcommit"],
                          chdir=job_dir, submit_dir=REPO, env={"EXIT_CODE": "3"})  # fmt: skip
    (job,) = slurm.wait(job_id)
    assert (job.state, job.exit_code) == ("FAILED", 3), output(job_dir)  # the sidecar exits with srun's code
    view = only_run(store)
    assert view.status == "failed" and view.end is not None
    assert any("exited with code 3" in e["message"] for e in view.events), view.events


def test_scancel_terminates_the_sidecars_run(slurm: Slurm, store: Path, job_dir: Path) -> None:
    (job_dir / "standin.py").write_text(STANDIN)
    job_id = slurm.sbatch(EXAMPLES / "c_mpi_sidecar.sbatch", PY, "standin.py", options=["--ntasks=2", "--overcommit"],
                          chdir=job_dir, submit_dir=REPO, env={"FOREVER": "1"})  # fmt: skip
    # both ranks are in their loop
    wait_until(lambda: output(job_dir).count(f"logged {STEPS} steps") >= 2, 60, 0.2, what=lambda: output(job_dir))
    cancelled = time.monotonic()
    slurm.command("scancel", job_id)
    (job,) = slurm.wait(job_id)
    assert job.state == "CANCELLED"
    view = only_run(store)
    assert view.status == "terminated", output(job_dir)
    assert view.end is not None, "the sidecar closed the run before Slurm's KillWait ran out"
    assert view.ended_us is not None and view.ended_us / 1e6 - time.time() + (time.monotonic() - cancelled) < 30
    assert any("received SIGTERM" in e["message"] for e in view.events), view.events
    assert_store_matches(user_metrics(view), expected(points(2)))


def test_a_python_program_run_by_the_batch_script_itself_is_one_process(
    slurm: Slurm, store: Path, job_dir: Path
) -> None:
    (job_dir / "one.py").write_text("from simvue_hpc import Simvue\nwith Simvue() as r:\n    r.init(name='one')\n")
    script = job_dir / "direct.sbatch"
    script.write_text(f"#!/bin/bash\n{PY} one.py\n")
    job_id = slurm.sbatch(script, options=["--ntasks=2", "--overcommit"], chdir=job_dir, submit_dir=job_dir,
                          env={"SIMVUE_HPC_CLOSE_TIMEOUT": "3"})  # fmt: skip
    (job,) = slurm.wait(job_id)
    assert (job.state, job.exit_code) == ("COMPLETED", 0), output(job_dir)
    view = only_run(store)
    assert view.status == "completed" and sorted(view.ranks) == [0]
    assert not (view.end or {}).get("missing_ranks")
