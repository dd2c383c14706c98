"""Where this process stands in the job, and how the ranks find the aggregator.

In order of precedence:

1. ``attach``: ``SIMVUE_HPC_ENDPOINT`` is set (by a pool's parent or by ``simvue-hpc run``): this
   process is a worker of that run.
2. ``mpi``: mpi4py is in use (already imported, or the launcher's environment says MPI and
   mpi4py is installed): rank 0 hosts the aggregator and broadcasts its endpoint and secret.
   ``SIMVUE_HPC_MPI=0`` turns this off.
3. ``launcher``: the launcher's environment gives rank and size > 1 but MPI is not used (``srun``
   of a plain program, or mpi4py absent): rank 0 hosts and publishes the endpoint in a rendezvous
   file under the store's directory (normally on a shared file system), keyed by the job.
4. ``single``: one process, which hosts its own aggregator.

The broadcast happens once, in ``init``; nothing collective ever runs on the per-step path.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .durable import PRIVATE_DIR_MODE, atomic_write_json
from .errors import RoleError
from .relay.placement import attach_endpoint

ENDPOINT_VAR = "SIMVUE_HPC_ENDPOINT"
SECRET_VAR = "SIMVUE_HPC_SECRET"
RUN_VAR = "SIMVUE_HPC_RUN_ID"
OWNER_VAR = "SIMVUE_HPC_OWNER"
_MPI_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
_PROCESS_START = time.time()


@dataclass(frozen=True)
class Placement:
    """This process's role; ``rank=-1`` means the aggregator assigns one (pool children)."""

    kind: str  # attach | mpi | launcher | single
    rank: int
    size: int
    launcher: str  # mpi4py, openmpi, mpich, slurm, pool, sidecar or none
    comm: Any = None
    endpoint: str = ""
    secret: str = ""
    run_id: str = ""
    owner: str = ""


def launcher_rank_size(env: Mapping[str, str]) -> tuple[int, int, str] | None:
    """Rank and size from the launcher's environment (Open MPI, MPICH/Hydra or PMIx, Slurm)."""
    for rank_var, size_var, name in (
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "openmpi"),
        ("PMI_RANK", "PMI_SIZE", "mpich"),
        ("PMIX_RANK", "PMIX_SIZE", "pmix"),
        ("SLURM_PROCID", "SLURM_NTASKS", "slurm"),
    ):
        if name == "slurm" and "SLURM_STEP_ID" not in env:
            # A batch script's own processes see the allocation's task count but are no srun step:
            # only srun's tasks are ranks.
            continue
        if rank_var in env and size_var in env:
            try:
                rank, size = int(env[rank_var]), int(env[size_var])
            except ValueError:
                raise RoleError(
                    f"{rank_var}={env[rank_var]!r} and {size_var}={env[size_var]!r} must be integers"
                ) from None
            if not 0 <= rank < size:
                raise RoleError(f"{rank_var}={rank} is not within {size_var}={size}")
            return rank, size, name
    return None


def detect(env: Mapping[str, str] | None = None) -> Placement:
    """This process's placement; see the module docstring for the order."""
    env = os.environ if env is None else env
    launched = launcher_rank_size(env)
    if env.get(ENDPOINT_VAR):
        if not env.get(SECRET_VAR):
            raise RoleError(f"{ENDPOINT_VAR} is set but {SECRET_VAR} is not")
        owner = env.get(OWNER_VAR, "parent")
        rank = launched[0] if launched and owner == "sidecar" else -1
        size = launched[1] if launched and owner == "sidecar" else 0
        launcher = "sidecar" if owner == "sidecar" else "pool"
        return Placement(
            "attach",
            rank,
            size,
            launcher,
            endpoint=attach_endpoint(env, env[ENDPOINT_VAR], env.get(RUN_VAR, "")),
            secret=env[SECRET_VAR],
            run_id=env.get(RUN_VAR, ""),
            owner=owner,
        )
    comm = _mpi_world(env, launched)
    if comm is not None:
        rank, size = comm.Get_rank(), comm.Get_size()
        if launched and launched[1] > 1 and size == 1:
            raise RoleError(
                f"the launcher started {launched[1]} ranks ({launched[2]}) but MPI sees a world of size 1: "
                "mpi4py is built against another MPI than the one that launched the job. Use that MPI's "
                "mpiexec (for the PyPI wheels: `pip install mpi4py mpich`, then its mpiexec)"
            )
        if size > 1:
            return Placement("mpi", rank, size, "mpi4py", comm=comm)
    if launched and launched[1] > 1:
        return Placement("launcher", launched[0], launched[1], launched[2])
    return Placement("single", 0, 1, "none")


def _mpi_world(env: Mapping[str, str], launched: tuple[int, int, str] | None) -> Any:
    if env.get("SIMVUE_HPC_MPI", "1") == "0":
        return None
    if "mpi4py.MPI" not in sys.modules:
        under_mpi = any(v in env for v in _MPI_VARS)
        if not under_mpi:
            return None
        try:
            from mpi4py import MPI  # noqa: F401 - initialises MPI, as the user's code would
        except ImportError:
            return None
    mpi = sys.modules["mpi4py.MPI"]
    if not mpi.Is_initialized() or mpi.Is_finalized():
        return None
    return mpi.COMM_WORLD


# ---------------------------------------------------------------------------------------------- rendezvous
def job_key(env: Mapping[str, str]) -> str:
    """A name unique to this job step, the same on every rank; RoleError if there is none."""
    if "SLURM_JOB_ID" in env:
        return f"slurm-{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '0')}"
    for var in ("PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "PMI_KVSNAME"):
        if env.get(var):
            return f"{var.lower()}-{env[var]}".replace("/", "_").replace("@", "_")
    if "PMI_RANK" in env and "MPI_LOCALNRANKS" in env and env.get("MPI_LOCALNRANKS") == env.get("PMI_SIZE"):
        # Hydra on one node: every rank is a child of the same proxy process.
        return f"hydra-{socket.gethostname()}-{os.getppid()}"
    raise RoleError(
        "cannot tell which job this rank belongs to: run under mpi4py, under Slurm, or with `simvue-hpc run`"
    )


def publish(directory: Path, key: str, info: Mapping[str, str]) -> Path:
    """Rank 0 writes the endpoint and secret where the other ranks look (mode 0600, atomically)."""
    directory.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    path = directory / f"{key}.json"
    atomic_write_json(path, {**info, "created": time.time()})
    return path


def wait_published(directory: Path, key: str, timeout: float) -> dict[str, str]:
    """Other ranks poll for rank 0's file; one older than this process is a previous job's."""
    path = directory / f"{key}.json"
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            with open(path) as fh:
                info = json.load(fh)
            if info.get("created", 0) >= _PROCESS_START - 60:
                return {k: v for k, v in info.items() if isinstance(v, str)}
        except (FileNotFoundError, ValueError):
            pass
        if time.monotonic() >= deadline:
            raise RoleError(f"rank 0 did not publish the aggregator's endpoint at {path} within {timeout} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
