"""The C and Fortran client (``CMakeLists.txt``, ``c/``): built with CMake into a temporary directory,
its ctest suite run, and its examples started as children of a run hosted by Python, attaching
through the environment like any pool child; the store must then hold exactly what they logged.

Nothing here is skipped because a tool is missing: without cmake, a C compiler, gfortran or libzmq
these tests fail and say to run ``scripts/install_c_deps.sh``. Only the MPI example needs an MPI C
compiler (the mpich wheel's ``mpicc`` in the virtual environment, else one on PATH); without one it
is skipped with a reason that ``pytest -ra`` shows.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from simvue_hpc import Simvue
from simvue_hpc.store import RunView
from tests.helpers import only_run, series

ROOT = Path(__file__).resolve().parents[2]
INSTALL_HINT = "run `bash scripts/install_c_deps.sh` (as root: it installs cmake, pkg-config, libzmq3-dev and gfortran)"
CTESTS = (
    "sha256_vectors",
    "encoder_golden_frames",
    "handshake_times_out",
    "client_against_fake_aggregator",
    "fortran_module",
)


@dataclass(frozen=True)
class Build:
    dir: Path
    bin: Path
    mpicc: str | None


def _mpicc() -> str | None:
    beside_python = Path(sys.executable).parent / "mpicc"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("mpicc")


def _clean_env() -> dict[str, str]:
    """This process's environment without any run to attach to."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SIMVUE_HPC_")}


def _run(cmd: list[str], cwd: Path, timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_clean_env())
    if proc.returncode != 0:
        pytest.fail(
            f"{what} failed ({proc.returncode}); {INSTALL_HINT} if a dependency is missing.\n"
            f"$ {' '.join(cmd)}\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def c_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    missing = [tool for tool in ("cmake", "ctest", "gfortran") if shutil.which(tool) is None]
    if not (shutil.which("cc") or shutil.which("gcc")):
        missing.append("a C compiler")
    if shutil.which("pkg-config") is None:
        missing.append("pkg-config")
    elif subprocess.run(["pkg-config", "--exists", "libzmq"], check=False).returncode != 0:
        missing.append("libzmq's development files (libzmq3-dev)")
    if missing:
        pytest.fail(f"cannot build the C client: {', '.join(missing)} missing; {INSTALL_HINT}")
    build = tmp_path_factory.mktemp("c_build")
    mpicc = _mpicc()
    configure = [
        "cmake",
        "-S",
        str(ROOT),
        "-B",
        str(build),
        "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
        "-DSIMVUE_HPC_FORTRAN=ON",
    ]
    configure.append(f"-DMPI_C_COMPILER={mpicc}" if mpicc else "-DSIMVUE_HPC_MPI_EXAMPLE=OFF")
    _run(configure, ROOT, 300, "cmake configure")
    _run(["cmake", "--build", str(build), "--parallel", str(max(2, os.cpu_count() or 2))], ROOT, 600, "cmake build")
    return Build(build, build / "bin", mpicc)


def test_ctest_suite_passes(c_build: Build) -> None:
    proc = _run(["ctest", "--output-on-failure", "--timeout", "200"], c_build.dir, 600, "ctest")
    for name in CTESTS:
        assert re.search(rf"Test\s+#\d+: {name} \.+\s+Passed", proc.stdout), f"{name} did not run:\n{proc.stdout}"
    assert "100% tests passed" in proc.stdout


def _example(exe: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs an example as a child of this process: it inherits the run's SIMVUE_HPC_* variables."""
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{exe.name} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _rank_of(view: RunView, prefix: str) -> int:
    (event,) = [e for e in view.events if e["message"].startswith(prefix)]
    rank = int(event["message"].rsplit(" ", 1)[1])
    assert event["rank"] == rank
    return rank


def _user_metrics(view: RunView) -> set[str]:
    return {name for name in view.metrics if not name.startswith("simvue_hpc/")}


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_c_and_fortran_examples_record_into_a_python_run(
    store: Path, c_build: Build, tmp_path: Path, transport: str
) -> None:
    data = tmp_path / "data.txt"
    data.write_bytes(b"saved by the C and the Fortran example\n" * 1000)
    run = Simvue(transport=transport)
    run.init(name="c-and-fortran")
    assert os.environ["SIMVUE_HPC_ENDPOINT"].startswith(f"{transport}://") and os.environ["SIMVUE_HPC_SECRET"]
    c_out = _example(c_build.bin / "svh_example_c", str(data), "100").stdout
    f_out = _example(c_build.bin / "svh_example_fortran", str(data)).stdout
    run.close()
    assert "close acknowledged" in c_out and "close acknowledged" in f_out
    assert "308 points sent, 0 dropped" in c_out

    view = only_run(store)
    assert view.status == "completed"
    steps, fsteps = range(100), range(50)
    want = {
        "c.x": {s: s * 0.5 for s in steps},
        "c.a": {s: s * 1.5 for s in steps},
        "c.b": {s: -s / 4.0 for s in steps},
        "c.auto": {100 + k: float(k) for k in range(5)},  # automatic steps continue after the last one
        "f.x": {s: 2.0 * s for s in fsteps},
        "f.a": {s: s + 0.5 for s in fsteps},
        "f.b": {s: -float(s) for s in fsteps},
        "f.auto": {50: 7.0},
    }
    assert _user_metrics(view) == {*want, "c.special"}
    for name, points in want.items():
        assert series(view, name) == points, name  # exact: every value is a binary fraction
    special = series(view, "c.special")
    assert sorted(special) == [105, 106, 107]
    assert math.isnan(special[105]) and special[106] == math.inf and special[107] == -math.inf
    assert all(s.late == 0 for s in view.metrics.values())

    c_rank = _rank_of(view, "c example started as rank")
    f_rank = _rank_of(view, "fortran example started as rank")
    assert {c_rank, f_rank} == {1, 2}  # assigned by the aggregator: the Python host is rank 0
    messages = [(e["rank"], e["message"]) for e in view.events if e["rank"] in (c_rank, f_rank)]
    assert messages == [
        (c_rank, f"c example started as rank {c_rank}"),
        (c_rank, "c example done"),
        (f_rank, f"fortran example started as rank {f_rank}"),
        (f_rank, "fortran example done"),
    ]

    # one copy of the bytes, one record per (sha256, name, category): the C example saved it twice
    sha = hashlib.sha256(data.read_bytes()).hexdigest()
    assert sorted((f["rank"], f["name"], f["category"], f["sha256"]) for f in view.files) == sorted(
        [(c_rank, "data.txt", "output", sha), (f_rank, "data.txt", "input", sha)]
    )
    assert all(f["size"] == data.stat().st_size and f["mime_type"] == "text/plain" for f in view.files)
    assert all(f["original_path"] == str(data.resolve()) for f in view.files)
    blobs = [p for p in (view.run_dir / "files").iterdir() if not p.name.startswith(".")]
    assert [p.name for p in blobs] == [sha] and blobs[0].read_bytes() == data.read_bytes()

    # each rank said goodbye and had it acknowledged, with every point accounted for
    assert view.ranks[c_rank]["state"] == "closed" and view.ranks[f_rank]["state"] == "closed"
    assert view.ranks[c_rank]["sent_points"] == view.ranks[c_rank]["received_points"] == 308
    assert view.ranks[f_rank]["sent_points"] == view.ranks[f_rank]["received_points"] == 151
    assert view.ranks[c_rank]["dropped_points"] == view.ranks[f_rank]["dropped_points"] == 0
    assert view.end is not None
    counters = view.end["counters"]
    assert counters["messages_lost"] == 0 and counters["protocol_errors"] == 0 and counters["dropped_points"] == 0
    assert view.end["missing_ranks"] == [] and view.end["lost_ranks"] == []


def test_c_client_with_a_missing_aggregator_fails_fast(c_build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMVUE_HPC_ENDPOINT", "tcp://127.0.0.1:1")
    monkeypatch.setenv("SIMVUE_HPC_SECRET", "x")
    monkeypatch.setenv("SIMVUE_HPC_CONNECT_TIMEOUT", "0.3")
    proc = subprocess.run([str(c_build.bin / "svh_example_c")], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "no answer from the aggregator at tcp://127.0.0.1:1 within 300 ms" in proc.stderr


def test_mpi_c_example_under_a_python_run(store: Path, c_build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    if c_build.mpicc is None:
        pytest.fail("no MPI C compiler: run `bash scripts/install_c_deps.sh` after installing the mpi extra")
    exe = c_build.bin / "svh_example_mpi"
    assert exe.exists(), f"MPI was found ({c_build.mpicc}) but the MPI example was not built"
    mpiexec = Path(c_build.mpicc).parent / "mpiexec"
    assert mpiexec.exists(), f"no mpiexec beside {c_build.mpicc}"
    # The host logs none of these metrics: let them wait for every rank until the end, however slow
    # the machine is to start three processes.
    monkeypatch.setenv("SIMVUE_HPC_STEP_TIMEOUT", "60")
    run = Simvue()
    run.init(name="c-mpi")
    proc = subprocess.run([str(mpiexec), "-n", "3", str(exe), "20"], capture_output=True, text=True, timeout=180)
    run.close()
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "3 ranks, all acknowledged" in proc.stdout

    view = only_run(store)
    assert view.status == "completed"
    steps = range(20)
    assert _user_metrics(view) == {
        "mpi.value",
        "mpi.value.min",
        "mpi.value.max",
        "mpi.value.count",
        "mpi.check.sum",
        "mpi.rank/rank_1",
        "mpi.rank/rank_2",
        "mpi.rank/rank_3",
    }
    # reductions declared by the C ranks' HELLO: sum (under the metric's name), min, max, count
    assert series(view, "mpi.value") == {s: 6.0 * s + 1.5 for s in steps}
    assert series(view, "mpi.value.min") == {s: s + 0.5 for s in steps}
    assert series(view, "mpi.value.max") == {s: 3.0 * s + 0.5 for s in steps}
    assert series(view, "mpi.value.count") == {s: 3.0 for s in steps}
    assert series(view, "mpi.check.sum") == series(view, "mpi.value")  # MPI_Allreduce agrees
    # per rank: the aggregator's rank k of each MPI rank r is in r's event
    mapping = {}
    for event in view.events:
        if m := re.fullmatch(r"MPI rank (\d) of 3 is rank (\d) of the run", event["message"]):
            mapping[int(m[1])] = int(m[2])
            assert event["rank"] == int(m[2])
    assert sorted(mapping) == [0, 1, 2] and sorted(mapping.values()) == [1, 2, 3]
    for mpi_rank, run_rank in mapping.items():
        assert series(view, f"mpi.rank/rank_{run_rank}") == {s: float(mpi_rank) for s in steps}
        record = view.ranks[run_rank]
        assert record["state"] == "closed"
        assert record["sent_points"] == record["received_points"] == (60 if mpi_rank == 0 else 40)
    assert all(s.late == 0 for s in view.metrics.values())
    assert view.end is not None
    assert view.end["counters"]["messages_lost"] == 0 and view.end["counters"]["protocol_errors"] == 0


def test_mpi_c_example_under_simvue_hpc_run(store: Path, c_build: Build) -> None:
    """Under the sidecar (``simvue-hpc run -- mpiexec ...``) each C rank is its launcher's rank."""
    if c_build.mpicc is None:
        pytest.fail("no MPI C compiler: run `bash scripts/install_c_deps.sh` after installing the mpi extra")
    script = Path(sys.executable).parent / "simvue-hpc"
    cli = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "import sys; from simvue_hpc.cli import main; sys.exit(main())"]
    )
    mpiexec = Path(c_build.mpicc).parent / "mpiexec"
    cmd = [*cli, "run", "--name", "c-sidecar", "--", str(mpiexec), "-n", "3", str(c_build.bin / "svh_example_mpi"), "5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    view = only_run(store)
    assert view.status == "completed"
    said = [re.fullmatch(r"MPI rank (\d) of 3 is rank (\d) of the run", e["message"]) for e in view.events]
    assert sorted((int(m[1]), int(m[2])) for m in said if m) == [(0, 0), (1, 1), (2, 2)]
    for rank in range(3):
        assert series(view, f"mpi.rank/rank_{rank}") == {s: float(rank) for s in range(5)}
        assert view.ranks[rank]["state"] == "closed"
    assert series(view, "mpi.value") == {s: 6.0 * s + 1.5 for s in range(5)}


def _scale_job(c_build: Build, root: Path, out: Path, procs: int, nodes: int) -> RunView:
    """``svh_scale_driver`` under the sidecar: flat, or with a node relay per simulated node."""
    cli = [sys.executable, "-c", "import sys; from simvue_hpc.cli import main; sys.exit(main())"]
    relays = [str(ROOT / "benchmarks" / "scale_job.sh"), str(nodes), str(procs)] if nodes else []
    driver = [
        str(c_build.bin / "svh_scale_driver"),
        "--procs",
        str(procs),
        "--seconds",
        "1",
        "--hz",
        "10",
        "--metrics",
        "3",
        "--nodes",
        str(nodes),
        "--out",
        str(out),
    ]
    env = {**_clean_env(), "SIMVUE_OFFLINE_DIRECTORY": str(root), "PYTHON": sys.executable}
    cmd = [*cli, "run", "--ranks", str(procs), "--name", f"relay-{nodes}", "--", *relays, *driver]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return only_run(root)


def test_node_relays_store_what_the_flat_job_stores(c_build: Build, tmp_path: Path) -> None:
    """The same C job flat and through two node relays (SIMVUE_HPC_HIERARCHY=node): the stored runs
    hold the same series; count, sum, min, max and mean bit for bit, std within 1e-12 relative."""
    procs = 12
    flat = _scale_job(c_build, tmp_path / "flat", tmp_path / "flat.csv", procs, 0)
    relayed = _scale_job(c_build, tmp_path / "relayed", tmp_path / "relayed.csv", procs, 2)
    assert flat.status == relayed.status == "completed"
    names = {n for n in flat.metrics if not n.startswith("simvue_hpc/")}
    assert names == {n for n in relayed.metrics if not n.startswith("simvue_hpc/")}
    assert names == {f"m{m:02d}{op}" for m in range(3) for op in ("", ".min", ".max", ".sum", ".std", ".count")}
    for name in sorted(names):
        want, got = series(flat, name), series(relayed, name)
        assert sorted(want) == sorted(got) == list(range(10)), name
        for step, value in want.items():
            if name.endswith(".std"):
                assert math.isclose(got[step], value, rel_tol=1e-12, abs_tol=1e-300), (name, step)
            else:
                assert got[step] == value, (name, step, got[step], value)
        assert flat.metrics[name].late == relayed.metrics[name].late == 0
    assert series(relayed, "m00.count") == {s: float(procs) for s in range(10)}
    for view in (flat, relayed):
        assert view.end is not None and view.end["counters"]["points_received"] == procs * 10 * 3
        assert view.end["missing_ranks"] == [] and view.end["lost_ranks"] == []


def test_c_client_speaks_curve_and_is_refused_with_other_keys(
    store: Path, c_build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's secret carries CURVE keys: the C client encrypts with them; with another key pair it is
    refused at the handshake (it never gets an answer), and malformed keys are a clear error."""
    from simvue_hpc import transport

    run = Simvue(transport="tcp")
    run.init(name="c-curve")
    secret = os.environ["SIMVUE_HPC_SECRET"]
    assert transport.rank_keys(secret) is not None
    token, server_public, _ = secret.split(":")
    _, other_secret = transport.new_credentials()
    monkeypatch.setenv("SIMVUE_HPC_SECRET", f"{token}:{server_public}:{other_secret}")
    monkeypatch.setenv("SIMVUE_HPC_CONNECT_TIMEOUT", "1")
    refused = subprocess.run([str(c_build.bin / "svh_example_c")], capture_output=True, text=True, timeout=60)
    monkeypatch.setenv("SIMVUE_HPC_SECRET", f"{token}:{server_public}:nothex")
    malformed = subprocess.run([str(c_build.bin / "svh_example_c")], capture_output=True, text=True, timeout=60)
    monkeypatch.setenv("SIMVUE_HPC_SECRET", secret)
    monkeypatch.delenv("SIMVUE_HPC_CONNECT_TIMEOUT")
    out = _example(c_build.bin / "svh_example_c").stdout
    run.close()
    assert refused.returncode == 2 and "no answer from the aggregator" in refused.stderr, refused.stderr
    assert malformed.returncode == 2 and "malformed keys" in malformed.stderr, malformed.stderr
    assert "close acknowledged" in out
    view = only_run(store)
    assert view.status == "completed" and len(view.ranks) == 2  # the host and the one C rank with the keys
