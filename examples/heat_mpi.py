"""A 1D heat-diffusion simulation split across MPI ranks, tracked as ONE run with simvue_hpc.

    mpiexec -n 4 python examples/heat_mpi.py --steps 200
    simvue-hpc show heat-1d

Each rank logs its own residual and energy every step; the aggregator (on rank 0) stores their
mean with .min and .max across ranks. Rank 0 also logs the global residual, stored as is.
``--raw DIR`` writes every value each rank logged to DIR/rank_<k>.json (the tests compare).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from mpi4py import MPI

from simvue_hpc import Simvue


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--cells", type=int, default=1000, help="cells per rank")
    parser.add_argument("--name", default="heat-1d")
    parser.add_argument("--raw", type=Path, help="write each rank's logged values here")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    logged: list[tuple[str, int, float]] = []

    with Simvue() as run:
        run.init(
            name=args.name,
            folder="/examples/heat",
            tags=["mpi", "example"],
            metadata={"cells_per_rank": args.cells, "ranks": size},
            description="1D heat diffusion",
        )
        x = (np.arange(args.cells) + rank * args.cells) / (args.cells * size)
        u = np.sin(np.pi * x) * (1 + rank)  # a different start on every rank
        alpha = 0.25
        for step in range(args.steps):
            left = comm.sendrecv(u[0], dest=(rank - 1) % size, source=(rank + 1) % size) if size > 1 else u[-1]
            right = comm.sendrecv(u[-1], dest=(rank + 1) % size, source=(rank - 1) % size) if size > 1 else u[0]
            padded = np.concatenate(([right], u, [left]))
            new = u + alpha * (padded[:-2] - 2 * u + padded[2:])
            residual = float(np.abs(new - u).max())
            u = new
            metrics = {"residual": residual, "energy": float(np.sum(u * u) / args.cells)}
            run.log(metrics, step=step)
            logged += [(k, step, v) for k, v in metrics.items()]
            global_residual = comm.allreduce(residual, op=MPI.MAX)  # the simulation's own collective
            if rank == 0:
                run.log({"global_residual": global_residual}, step=step)
                logged.append(("global_residual", step, global_residual))
        run.event(f"rank {rank} finished {args.steps} steps")
        run.save(__file__, "code")  # every rank saves the same bytes: the run stores them once
        if rank == 0:
            out = Path(f"heat_{size}.npy")
            np.save(out, u)
            run.save(str(out), "output")
    if args.raw:
        args.raw.mkdir(parents=True, exist_ok=True)
        (args.raw / f"rank_{rank}.json").write_text(json.dumps(logged))


if __name__ == "__main__":
    main()
