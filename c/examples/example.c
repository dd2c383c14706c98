/* A C program that records into the run it was started into (it attaches through the environment:
 * SIMVUE_HPC_ENDPOINT and SIMVUE_HPC_SECRET, exported by the Python process that hosts the run, or by
 * `simvue-hpc run`).
 *
 *     svh_example_c [FILE_TO_SAVE [STEPS]]
 *
 * It logs, for step = 0 .. STEPS-1 (default 100): c.x = step / 2 (svh_log) and c.a = 1.5 step,
 * c.b = -step / 4 (svh_log_many); then c.auto = 0, 1, 2, 3, 4 at automatic steps (STEPS .. STEPS+4);
 * then c.special = NaN, +inf, -inf at steps STEPS+5 .. STEPS+7; the events "c example started as rank
 * K" and "c example done"; and saves FILE (category output) twice: stored once. Exit status 0 when
 * the aggregator acknowledged everything, 1 otherwise, 2 when it could not attach. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "simvue_hpc.h"

static void check(int rc, const char *what) {
    if (rc != SVH_OK) {
        fprintf(stderr, "svh_example_c: %s: %d %s\n", what, rc, svh_last_error());
        exit(1);
    }
}

int main(int argc, char **argv) {
    const char *file = argc > 1 ? argv[1] : NULL;
    int64_t steps = argc > 2 ? atoll(argv[2]) : 100;
    svh_client *run = svh_connect_env(-1);
    if (!run) {
        fprintf(stderr, "svh_example_c: cannot attach: %s\n", svh_last_error());
        return 2;
    }
    char message[128];
    snprintf(message, sizeof message, "c example started as rank %d", svh_rank(run));
    check(svh_event(run, message), "event");

    const char *names[2] = {"c.a", "c.b"};
    for (int64_t step = 0; step < steps; ++step) {
        check(svh_log(run, "c.x", (double)step * 0.5, step), "log");
        double values[2] = {(double)step * 1.5, -(double)step / 4.0};
        check(svh_log_many(run, 2, names, values, step), "log_many");
    }
    for (int k = 0; k < 5; ++k) check(svh_log(run, "c.auto", (double)k, -1), "log auto");
    check(svh_log(run, "c.special", NAN, steps + 5), "log NaN");
    check(svh_log(run, "c.special", INFINITY, steps + 6), "log inf");
    check(svh_log(run, "c.special", -INFINITY, steps + 7), "log -inf");
    check(svh_event(run, "c example done"), "event");
    if (file) {
        check(svh_save(run, file, "output"), "save");
        check(svh_save(run, file, "output"), "save again");
    }
    uint64_t sent, dropped, buffered;
    svh_counters(run, &sent, &dropped, &buffered);
    int rank = svh_rank(run);
    int rc = svh_close(run, -1);
    printf("svh_example_c: rank %d, %llu points sent, %llu dropped, close %s\n", rank, (unsigned long long)sent,
           (unsigned long long)dropped, rc == SVH_OK ? "acknowledged" : svh_last_error());
    return rc == SVH_OK ? 0 : 1;
}
