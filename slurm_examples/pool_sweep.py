"""A parameter sweep over a multiprocessing pool on one node, recorded as ONE run
(slurm_examples/pool.sbatch).

The parent starts the run; each worker attaches once (``initializer=simvue_hpc.init_worker``) and
logs through ``simvue_hpc.current_run()``. A worker runs several tasks one after the other, so each
task logs under its own metric name (``energy/task_<i>``, stored as is): a rank's steps of one metric
must only grow, and a second task starting again at step 0 under the same name would be stored as
late points. The pool has one worker per CPU that Slurm gave the task (SLURM_CPUS_PER_TASK), else
per CPU this process may use.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os

import numpy as np

import simvue_hpc
from simvue_hpc import Simvue


def simulate(task: int, alpha: float, steps: int) -> float:
    """One task (CHANGE to yours): diffuse a profile with ``alpha``, logging as it goes."""
    run = simvue_hpc.current_run()
    u = np.sin(np.pi * np.linspace(0, 1, 200))
    for step in range(steps):
        padded = np.concatenate(([0.0], u, [0.0]))
        u = u + alpha * (padded[:-2] - 2 * u + padded[2:])
        run.log({f"energy/task_{task}": float(np.sum(u * u))}, step=step)
    run.event(f"task {task} (alpha={alpha:g}) done in pid {os.getpid()}")
    return float(np.sum(u * u))


def workers() -> int:
    given = os.environ.get("SLURM_CPUS_PER_TASK")
    return int(given) if given else len(os.sched_getaffinity(0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    alphas = [0.02 * (i + 1) for i in range(args.tasks)]
    n = workers()
    with Simvue() as run:
        run.init(name="pool-sweep", folder="/examples/pool", tags=["pool"],
                 metadata={"workers": n, "tasks": args.tasks, "slurm_job": os.environ.get("SLURM_JOB_ID")})  # fmt: skip
        with mp.Pool(n, initializer=simvue_hpc.init_worker) as pool:
            energies = pool.starmap(simulate, [(i, a, args.steps) for i, a in enumerate(alphas)])
            pool.close()  # let the workers end on their own (and say goodbye) rather than be terminated
            pool.join()
        for step, (alpha, energy) in enumerate(zip(alphas, energies, strict=True)):
            run.log({"final_energy": energy, "alpha": alpha}, step=step)  # the sweep's result, by the parent


if __name__ == "__main__":
    main()
