"""Real mpiexec runs of examples/heat_mpi.py: the store holds exactly the reductions of what the
ranks logged (each rank writes its raw values for the comparison)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import assert_store_matches, expected, only_run, series

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "heat_mpi.py"
MPIEXEC = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
pytestmark = pytest.mark.mpi
pytest_plugins = ["tests.server.fixtures"]


def mpirun(n: int, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert MPIEXEC, "mpiexec not found: install the mpi extra (`pip install -e .[mpi]`)"
    cmd = [MPIEXEC, "-n", str(n), sys.executable, str(EXAMPLE), *args]
    full_env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"mpiexec failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def check(store: Path, raw: Path, n: int, steps: int) -> None:
    per_rank = [[tuple(p) for p in json.loads((raw / f"rank_{r}.json").read_text())] for r in range(n)]
    view = only_run(store)
    assert view.status == "completed" and view.name == "heat-1d"
    assert_store_matches(view, expected(per_rank))  # type: ignore[arg-type]
    assert sorted(view.ranks) == list(range(n))
    assert all(v["state"] == "closed" for v in view.ranks.values())
    assert view.job["ranks"] == n
    assert sorted(e["message"] for e in view.events) == sorted(f"rank {r} finished {steps} steps" for r in range(n))
    assert sorted((f["name"], f["category"]) for f in view.files) == sorted(
        [("heat_mpi.py", "code"), (f"heat_{n}.npy", "output")]
    )
    assert len(list((view.run_dir / "files").iterdir())) == 2


@pytest.mark.parametrize("n", [1, 4])
def test_mpi_run_stores_exact_reductions(store: Path, tmp_path: Path, n: int) -> None:
    raw = tmp_path / "raw"
    mpirun(n, "--steps", "60", "--cells", "200", "--raw", str(raw), cwd=tmp_path)
    check(store, raw, n, 60)


def test_mpi_without_mpi4py_rendezvous_through_the_store(store: Path, tmp_path: Path) -> None:
    """SIMVUE_HPC_MPI=0: ranks take rank/size from the launcher and meet through a file."""
    raw = tmp_path / "raw"
    mpirun(3, "--steps", "30", "--cells", "100", "--raw", str(raw), cwd=tmp_path, env={"SIMVUE_HPC_MPI": "0"})
    check(store, raw, 3, 30)
    assert only_run(store).job["launcher"] == "mpich"
    assert not list((store / ".rendezvous").glob("*.json")), "rank 0 removes the rendezvous file"


def test_world_of_size_one_under_a_larger_launch_is_an_error(tmp_path: Path) -> None:
    """mpi4py seeing 1 rank while the launcher says N must fail loudly, not record N runs."""
    code = (
        "import os, sys\n"
        "os.environ.update(PMI_RANK='0', PMI_SIZE='4')\n"
        "from mpi4py import MPI\n"
        "from simvue_hpc import Simvue, SimvueHPCError\n"
        "try:\n"
        "    Simvue().init(name='x')\n"
        "except SimvueHPCError as exc:\n"
        "    print('ERROR', exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "MPI_", "HYDRA"))}
    env["SIMVUE_OFFLINE_DIRECTORY"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "ERROR the launcher started 4 ranks" in proc.stdout, proc.stdout + proc.stderr


def test_mpi_run_is_uploaded_with_its_reductions(simvue_online: Any, store: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    mpirun(4, "--steps", "40", "--cells", "100", "--raw", str(raw), cwd=tmp_path)
    check(store, raw, 4, 40)
    (doc,) = simvue_online.db.runs()
    assert doc["status"] == "completed" and doc["metadata"]["simvue_hpc"]["ranks"] == 4
    view = only_run(store)
    on_server: dict[str, dict[int, float]] = {}
    for row in simvue_online.db.metrics(doc["id"]):
        on_server.setdefault(row["name"], {})[row["step"]] = row["value"]
    assert on_server.keys() == view.metrics.keys()
    for name in view.metrics:
        assert on_server[name] == pytest.approx(series(view, name)), name
    assert sorted(a["name"] for a in simvue_online.db.artifacts(doc["id"])) == ["heat_4.npy", "heat_mpi.py"]
    assert not simvue_online.log.duplicates("/metrics")


def test_mpi_python_ranks_through_a_node_relay(store: Path, tmp_path: Path) -> None:
    """Under the sidecar with SIMVUE_HPC_HIERARCHY=node, Python MPI ranks attach to their node's relay
    (benchmarks/scale_job.sh starts it): the store holds the flat job's reductions, events and files."""
    assert MPIEXEC, "mpiexec not found: install the mpi extra (`pip install -e .[mpi]`)"
    raw, n = tmp_path / "raw", 4
    job = Path(__file__).resolve().parents[2] / "benchmarks" / "scale_job.sh"
    cli = [sys.executable, "-c", "import sys; from simvue_hpc.cli import main; sys.exit(main())"]
    cmd = [
        *cli,
        "run",
        "--ranks",
        str(n),
        "--name",
        "heat-1d",
        "--",
        str(job),
        "1",
        str(n),
        MPIEXEC,
        "-n",
        str(n),
        sys.executable,
        str(EXAMPLE),
        "--steps",
        "30",
        "--cells",
        "100",
        "--raw",
        str(raw),
    ]
    env = {**os.environ, "SIMVUE_HPC_NODE": "node0", "PYTHON": sys.executable}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    per_rank = [[tuple(p) for p in json.loads((raw / f"rank_{r}.json").read_text())] for r in range(n)]
    view = only_run(store)
    assert view.status == "completed"
    assert_store_matches(view, expected(per_rank))  # type: ignore[arg-type]
    messages = [e["message"] for e in view.events]
    assert sorted(m for m in messages if "finished" in m) == sorted(f"rank {r} finished 30 steps" for r in range(n))
    assert sorted((f["name"], f["category"]) for f in view.files) == [("heat_4.npy", "output"), ("heat_mpi.py", "code")]
    assert view.end is not None and view.end["missing_ranks"] == [] and view.end["counters"]["late_points"] == 0


def test_mpi_node_relay_started_by_the_first_rank_of_the_node(store: Path, tmp_path: Path) -> None:
    """SIMVUE_HPC_HIERARCHY=node under mpiexec: the node's first rank after rank 0 starts its relay,
    the node's other ranks connect to it; the stored run is the flat one's."""
    raw, n = tmp_path / "raw", 4
    mpirun(n, "--steps", "30", "--cells", "100", "--raw", str(raw), cwd=tmp_path, env={"SIMVUE_HPC_HIERARCHY": "node"})
    per_rank = [[tuple(p) for p in json.loads((raw / f"rank_{r}.json").read_text())] for r in range(n)]
    view = only_run(store)
    assert view.status == "completed"
    assert_store_matches(view, expected(per_rank))  # type: ignore[arg-type]
    assert sorted(view.ranks) == [0, n]  # rank 0 itself, and the relay of ranks 1..3 (given the next rank)
    assert all(v["state"] == "closed" for v in view.ranks.values())
    assert sorted(e["message"] for e in view.events) == sorted(f"rank {r} finished 30 steps" for r in range(n))
    assert sorted((f["name"], f["category"]) for f in view.files) == [("heat_4.npy", "output"), ("heat_mpi.py", "code")]
    assert view.end is not None and view.end["missing_ranks"] == [] and view.end["counters"]["late_points"] == 0
