/* An MPI program whose ranks all record into one run: per-rank metrics, reduced across ranks by the
 * aggregator.
 *
 *     mpiexec -n 3 svh_example_mpi [STEPS]
 *
 * started from a process that hosts the run (a Python `Simvue().init()` that then starts mpiexec, or
 * `simvue-hpc run -- mpiexec -n 3 svh_example_mpi`). Every MPI rank r logs, for step = 0 ..
 * STEPS-1 (default 20): mpi.value = (r + 1) step + 0.5, reduced as sum, min, max and count (stored as
 * mpi.value, mpi.value.min, mpi.value.max, mpi.value.count), and mpi.rank = r, kept per rank
 * (mpi.rank/rank_K, K the rank in the run). Rank 0 also logs mpi.check.sum, the same sum computed with
 * MPI_Allreduce, and every rank records the event "MPI rank r of n is rank K of the run". */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include "simvue_hpc.h"

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int64_t steps = argc > 1 ? atoll(argv[1]) : 20;

    /* Every rank declares the same reductions in its HELLO; they apply to the whole run. */
    svh_client *run = svh_connect_env_ex(-1, "mpi.value=sum,min,max,count;mpi.rank=per_rank", NULL);
    if (!run) {
        fprintf(stderr, "svh_example_mpi rank %d: cannot attach: %s\n", rank, svh_last_error());
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    char message[128];
    snprintf(message, sizeof message, "MPI rank %d of %d is rank %d of the run", rank, size, svh_rank(run));
    int failed = svh_event(run, message) != SVH_OK;

    for (int64_t step = 0; step < steps; ++step) {
        double value = (double)(rank + 1) * (double)step + 0.5;
        failed |= svh_log(run, "mpi.value", value, step) != SVH_OK;
        failed |= svh_log(run, "mpi.rank", (double)rank, step) != SVH_OK;
        double sum = 0.0;
        MPI_Allreduce(&value, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        if (rank == 0) failed |= svh_log(run, "mpi.check.sum", sum, step) != SVH_OK;
    }
    if (failed) fprintf(stderr, "svh_example_mpi rank %d: %s\n", rank, svh_last_error());
    int rc = svh_close(run, -1);
    if (rc != SVH_OK) fprintf(stderr, "svh_example_mpi rank %d: close: %s\n", rank, svh_last_error());
    int ok = rc == SVH_OK && !failed, all_ok = 0;
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    if (rank == 0) printf("svh_example_mpi: %d ranks, %s\n", size, all_ok ? "all acknowledged" : "FAILED");
    MPI_Finalize();
    return ok ? 0 : 1;
}
