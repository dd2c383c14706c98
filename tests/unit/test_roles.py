"""Where a process stands in its job, read from the environment; the rendezvous file."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from simvue_hpc import roles
from simvue_hpc.errors import RoleError

NO_MPI = {"SIMVUE_HPC_MPI": "0"}  # the process running the tests may have mpi4py loaded


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8"}, (3, 8, "openmpi")),
        ({"PMI_RANK": "0", "PMI_SIZE": "2"}, (0, 2, "mpich")),
        ({"PMIX_RANK": "5", "PMIX_SIZE": "6"}, (5, 6, "pmix")),
        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_STEP_ID": "0"}, (1, 4, "slurm")),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, None),  # a batch script's own process: no srun step
        ({}, None),
    ],
)
def test_launcher_rank_and_size(env: dict[str, str], expected: tuple[int, int, str] | None) -> None:
    assert roles.launcher_rank_size(env) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PMI_RANK": "x", "PMI_SIZE": "2"}, "must be integers"),
        ({"PMI_RANK": "2", "PMI_SIZE": "2"}, "is not within PMI_SIZE=2"),
        ({"PMI_RANK": "-1", "PMI_SIZE": "2"}, "is not within"),
    ],
)
def test_bad_launcher_variables_are_role_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(RoleError, match=message):
        roles.launcher_rank_size(env)


def test_single_process() -> None:
    placement = roles.detect(dict(NO_MPI))
    assert (placement.kind, placement.rank, placement.size, placement.launcher) == ("single", 0, 1, "none")


def test_launcher_without_mpi() -> None:
    placement = roles.detect({**NO_MPI, "PMI_RANK": "2", "PMI_SIZE": "4"})
    assert (placement.kind, placement.rank, placement.size, placement.launcher) == ("launcher", 2, 4, "mpich")


def test_a_launcher_of_one_is_a_single_process() -> None:
    assert roles.detect({**NO_MPI, "PMI_RANK": "0", "PMI_SIZE": "1"}).kind == "single"


def test_attach_to_a_pool_parent_gets_its_rank_from_the_aggregator() -> None:
    env = {roles.ENDPOINT_VAR: "tcp://h:1", roles.SECRET_VAR: "s", roles.RUN_VAR: "r", "PMI_RANK": "1", "PMI_SIZE": "2"}
    placement = roles.detect(env)
    assert (placement.kind, placement.rank, placement.size, placement.owner) == ("attach", -1, 0, "parent")
    assert (placement.endpoint, placement.secret, placement.run_id) == ("tcp://h:1", "s", "r")


def test_attach_under_the_sidecar_keeps_the_launchers_rank() -> None:
    env = {
        roles.ENDPOINT_VAR: "ipc:///tmp/x",
        roles.SECRET_VAR: "s",
        roles.OWNER_VAR: "sidecar",
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "4",
        "SLURM_STEP_ID": "0",
    }
    placement = roles.detect(env)
    assert (placement.kind, placement.rank, placement.size, placement.launcher) == ("attach", 3, 4, "sidecar")


def test_endpoint_without_secret_is_an_error() -> None:
    with pytest.raises(RoleError, match="SIMVUE_HPC_ENDPOINT is set but SIMVUE_HPC_SECRET is not"):
        roles.detect({roles.ENDPOINT_VAR: "tcp://h:1"})


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "3"}, "slurm-42.3"),
        ({"SLURM_JOB_ID": "42"}, "slurm-42.0"),
        ({"PMIX_NAMESPACE": "prterun-h@1"}, "pmix_namespace-prterun-h_1"),
        ({"OMPI_MCA_ess_base_jobid": "12/3"}, "ompi_mca_ess_base_jobid-12_3"),
        ({"PMI_KVSNAME": "kvs_1"}, "pmi_kvsname-kvs_1"),
    ],
)
def test_job_key(env: dict[str, str], key: str) -> None:
    assert roles.job_key(env) == key


def test_job_key_of_hydra_on_one_node_is_the_proxy() -> None:
    key = roles.job_key({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALNRANKS": "2"})
    assert key.startswith("hydra-") and key.endswith(f"-{os.getppid()}")


def test_no_job_key_is_an_error() -> None:
    with pytest.raises(RoleError, match="cannot tell which job"):
        roles.job_key({})


def test_publish_and_wait(tmp_path: Path) -> None:
    path = roles.publish(tmp_path / "rv", "job-1", {"endpoint": "tcp://h:1", "secret": "s"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert roles.wait_published(tmp_path / "rv", "job-1", timeout=1) == {"endpoint": "tcp://h:1", "secret": "s"}
    assert [p.name for p in (tmp_path / "rv").iterdir()] == ["job-1.json"]  # no temporary file left


def test_a_previous_jobs_file_is_not_taken(tmp_path: Path) -> None:
    (tmp_path / "job-1.json").write_text(json.dumps({"endpoint": "old", "secret": "s", "created": time.time() - 3600}))
    with pytest.raises(RoleError, match="did not publish"):
        roles.wait_published(tmp_path, "job-1", timeout=0.05)


def test_waiting_for_a_file_never_written_times_out(tmp_path: Path) -> None:
    with pytest.raises(RoleError, match=r"within 0\.05 s"):
        roles.wait_published(tmp_path, "nothing", timeout=0.05)


def test_a_damaged_file_is_waited_past(tmp_path: Path) -> None:
    (tmp_path / "job-2.json").write_text("{not json")
    with pytest.raises(RoleError, match="did not publish"):
        roles.wait_published(tmp_path, "job-2", timeout=0.05)
