"""One task of a job array (slurm_examples/array.sbatch): its own run, in the array's folder.

The parameter comes from the task id (CHANGE ``parameter`` for your sweep); the run's name is
``sweep-<task id>`` and its folder ``/sweeps/<array job id>``, so the tasks of one array sit
together.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from simvue_hpc import Simvue


def parameter(task: int) -> float:
    """This task's point of the sweep."""
    return 0.05 * (task + 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    task = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    array = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", "local"))
    alpha = parameter(task)
    with Simvue() as run:
        run.init(
            name=f"sweep-{task}",
            folder=f"/sweeps/{array}",
            metadata={"alpha": alpha, "task": task, "array_job": array},
            tags=["sweep", "array"],
            description=f"task {task} of array job {array}",
        )
        u = np.sin(np.pi * np.linspace(0, 1, 100))
        for step in range(args.steps):
            padded = np.concatenate(([0.0], u, [0.0]))
            u = u + alpha * (padded[:-2] - 2 * u + padded[2:])
            run.log({"energy": float(np.sum(u * u)), "peak": float(u.max())}, step=step)
        run.event(f"task {task} (alpha={alpha:g}) finished {args.steps} steps")


if __name__ == "__main__":
    main()
