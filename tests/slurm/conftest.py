"""A real single-node Slurm for the tests: munged, slurmctld and slurmd started here, as root.

The session fixture ``slurm`` writes a ``slurm.conf`` in a temporary directory (this host as the
only node, with the CPUs and memory ``slurmd -C`` reports; ports nobody listens on; state, spool,
logs and the munge socket in that directory), starts the three daemons in the foreground of child
processes, waits until ``sinfo`` shows the node idle, and stops them all at the end: every job is
cancelled first, and no daemon (nor a job's slurmstepd) is left behind.

Debian's packages provide the daemons: ``bash scripts/install_slurm.sh``. Without them these tests
FAIL (they are never skipped): CI must install them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

INSTALL = "bash scripts/install_slurm.sh"
C_INSTALL = "bash scripts/install_c_deps.sh"
REPO = Path(__file__).resolve().parents[2]
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scancel", "sinfo", "scontrol")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
            "OUT_OF_MEMORY"}  # fmt: skip
START_TIMEOUT = 60.0
VENV_BIN = str(Path(sys.executable).parent)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slurm: runs jobs on the real Slurm that tests/slurm/conftest.py starts")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


@dataclass
class Job:
    """A job's (or an array task's) end as ``scontrol`` tells it."""

    id: str
    state: str
    exit_code: int
    signal: int
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class Slurm:
    """The running cluster: its configuration, and helpers to submit and wait."""

    directory: Path
    conf: Path
    node: str
    cpus: int
    exe: dict[str, str]
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment for Slurm's commands (and so for the jobs, which inherit it): this
        process's, with our slurm.conf, the venv's bin first on PATH and no Slurm job of its own."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = os.pathsep.join([VENV_BIN, *env.get("PATH", "").split(os.pathsep), *SBIN])
        env.update(extra or {})
        return env

    def command(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60,
                cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
        exe = self.exe.get(args[0], args[0])
        proc = subprocess.run([exe, *args[1:]], env=self.env(env), capture_output=True, text=True,
                              timeout=timeout, cwd=cwd)  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def sbatch(self, script: Path | str, *args: str, options: Sequence[str] = (), chdir: Path, submit_dir: Path,
               env: Mapping[str, str] | None = None) -> str:  # fmt: skip
        """Submit ``script`` from ``submit_dir`` to run in ``chdir`` (its output goes there too, in
        slurm-<job id>.out); returns the job id."""
        proc = self.command("sbatch", "--parsable", f"--chdir={chdir}", f"--output={chdir}/slurm-%j.out",
                            *options, str(script), *args, env=env, cwd=submit_dir)  # fmt: skip
        return proc.stdout.strip().split(";")[0]

    def jobs(self, job_id: str) -> list[Job]:
        """The job's records (one per array task), from slurmctld's memory (MinJobAge keeps them)."""
        proc = self.command("scontrol", "show", "job", "-o", job_id, check=False)
        out = []
        for line in proc.stdout.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobState" not in fields:
                continue
            code, _, sig = fields.get("ExitCode", "0:0").partition(":")
            out.append(Job(fields["JobId"], fields["JobState"], int(code or 0), int(sig or 0), fields))
        return out

    def wait(self, job_id: str, timeout: float = 180) -> list[Job]:
        """Wait for every task of the job to end; returns them (the batch output on a timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs(job_id)
            pending_tasks = any(re.search(r"[-,]", j.fields.get("ArrayTaskId", "")) for j in jobs)
            if jobs and not pending_tasks and all(j.state in TERMINAL for j in jobs):
                return jobs
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} not done after {timeout} s: {[j.state for j in jobs]}\n"
                                     f"{self.outputs()}")  # fmt: skip
            time.sleep(0.2)

    def outputs(self) -> str:
        """The logs, for failure messages."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.directory / name
            if path.exists():
                parts.append(f"--- {name} (end)\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    def cancel_all(self) -> None:
        with contextlib.suppress(Exception):
            self.command("scancel", "--user=root", check=False, timeout=20)


def _missing() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS) if _which(name) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node_line(slurmd: str) -> tuple[str, str, int]:
    """``slurmd -C``'s NodeName line (this machine's real CPUs and memory), its name and CPUs."""
    out = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=30, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("NodeName="))
    fields = dict(re.findall(r"(\w+)=(\S+)", line))
    return line, fields["NodeName"], int(fields.get("CPUs", "1"))


def write_conf(directory: Path, node_line: str, node: str) -> Path:
    d = directory
    conf = f"""# written by tests/slurm/conftest.py
ClusterName=simvuetest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
ReturnToService=2
# Time between scancel's (or a time limit's) SIGTERM and its SIGKILL; Slurm's default is 30 s.
KillWait=30
MinJobAge=600
InactiveLimit=0
SlurmdTimeout=60
{node_line} NodeAddr=127.0.0.1 NodeHostname={node} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""
    path = d / "slurm.conf"
    path.write_text(conf)
    return path


def _start(slurm: Slurm, name: str, args: list[str]) -> None:
    log = open(slurm.directory / f"{name}.out", "wb")  # noqa: SIM115 - the daemon's, closed by the OS at its end
    slurm.daemons[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=slurm.env(), start_new_session=True)  # fmt: skip
    log.close()


def _wait_for(what: str, ready: Callable[[], bool], slurm: Slurm, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        for name, proc in slurm.daemons.items():
            if proc.poll() is not None:
                out = (slurm.directory / f"{name}.out").read_text(errors="replace")
                raise AssertionError(f"{name} exited ({proc.returncode}) while waiting for {what}:\n{out}\n"
                                     f"{slurm.outputs()}")  # fmt: skip
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout} s\n{slurm.outputs()}")
        time.sleep(0.2)


def _node_idle(slurm: Slurm) -> bool:
    proc = slurm.command("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=20)
    return proc.returncode == 0 and proc.stdout.strip() == "idle"


def _stepds(conf: Path) -> list[psutil.Process]:
    """The slurmstepd processes of our slurmd (they inherit its SLURM_CONF)."""
    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] != "slurmstepd":
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("SLURM_CONF") == str(conf):
                found.append(proc)
    return found


def _stop(slurm: Slurm) -> None:
    """Cancel every job, wait for their steps, then stop slurmd, slurmctld and munged (in that order)."""
    slurm.cancel_all()
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        queue = slurm.command("squeue", "-h", "-o", "%i", check=False, timeout=20)
        if (queue.returncode != 0 or not queue.stdout.strip()) and not _stepds(slurm.conf):
            break
        time.sleep(0.3)
    for name in ("slurmd", "slurmctld", "munged"):
        proc = slurm.daemons.get(name)
        if proc is None or proc.poll() is not None:
            continue
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for stepd in _stepds(slurm.conf):  # a job step that outlived its slurmd: ours, by its SLURM_CONF
        with contextlib.suppress(psutil.Error):
            stepd.kill()


@pytest.fixture(scope="session")
def slurm() -> Iterator[Slurm]:
    missing = _missing()
    if missing:
        pytest.fail(f"Slurm is not installed ({', '.join(missing)} not found): run `{INSTALL}` (as root) first; "
                    "the Slurm tests are never skipped", pytrace=False)  # fmt: skip
    exe = {name: _which(name) or name for name in (*DAEMONS, *CLIENTS)}
    # A short path: the munge socket's must fit a sockaddr_un.
    directory = Path(tempfile.mkdtemp(prefix="svh-slurm-", dir="/tmp"))
    (directory / "state").mkdir()
    (directory / "spool").mkdir()
    node_line, node, cpus = _node_line(exe["slurmd"])
    conf = write_conf(directory, node_line, node)
    slurm = Slurm(directory, conf, node, cpus, exe)
    key = directory / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    try:
        munged = [exe["munged"], "--foreground", "--force", f"--key-file={key}", f"--socket={directory}/munge.sock",
                  f"--pid-file={directory}/munged.pid", f"--log-file={directory}/munged.log",
                  f"--seed-file={directory}/munged.seed"]  # fmt: skip
        _start(slurm, "munged", munged)
        _wait_for("munged's socket", lambda: (directory / "munge.sock").exists(), slurm)
        _start(slurm, "slurmctld", [exe["slurmctld"], "-D", "-i", "-f", str(conf)])
        _start(slurm, "slurmd", [exe["slurmd"], "-D", "-f", str(conf), "-N", node])
        _wait_for(f"node {node} idle in sinfo", lambda: _node_idle(slurm), slurm)
        yield slurm
    finally:
        _stop(slurm)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """Where a test's job runs and writes its output."""
    path = tmp_path / "job"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def c_mpi_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C client's MPI example (c/examples/mpi_ranks.c), built with CMake against the MPI whose
    ``mpicc`` is beside this Python (the mpich wheel), else on PATH. Fails, naming the install
    script, when a tool is missing."""
    mpicc = Path(VENV_BIN) / "mpicc"
    mpicc_path = str(mpicc) if mpicc.exists() else shutil.which("mpicc")
    missing = [tool for tool in ("cmake", "pkg-config") if shutil.which(tool) is None]
    if not (shutil.which("cc") or shutil.which("gcc")):
        missing.append("a C compiler")
    if not missing and subprocess.run(["pkg-config", "--exists", "libzmq"], check=False).returncode != 0:
        missing.append("libzmq's development files")
    if mpicc_path is None:
        missing.append("mpicc (the mpi extra: pip install -e '.[mpi]')")
    if missing:
        pytest.fail(f"cannot build the C MPI example: {', '.join(missing)} missing; run `{C_INSTALL}`", pytrace=False)
    build = tmp_path_factory.mktemp("c_build")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMVUE_HPC_")}
    for cmd in (
        ["cmake", "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DSIMVUE_HPC_FORTRAN=OFF",
         "-DSIMVUE_HPC_BUILD_TESTS=OFF", "-DSIMVUE_HPC_MPI_EXAMPLE=ON", f"-DMPI_C_COMPILER={mpicc_path}"],
        ["cmake", "--build", str(build), "--parallel", "2", "--target", "svh_example_mpi"],
    ):  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    exe = build / "bin" / "svh_example_mpi"
    assert exe.exists(), f"the build made no {exe}"
    return exe
