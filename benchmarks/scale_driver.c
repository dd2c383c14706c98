/*
 * scale_driver.c - the C-client job of benchmarks/bench_scale.py: N processes of one "MPI job".
 *
 * The parent forks N children. Child r plays MPI rank r of a world of N (OMPI_COMM_WORLD_RANK/SIZE,
 * and SIMVUE_HPC_NODE = "node<r / ranks_per_node>" when --nodes K > 0), then, as a user's rank would:
 * svh_connect_env, waits until every rank is connected (as ranks leave MPI_Init together; a failed
 * connect counts too), then `steps` x svh_log_many of `metrics` values at `hz`, svh_close. Each value is a
 * deterministic function of (rank, metric, step) (value() below, mirrored in bench_scale.py), exact
 * in binary so that sums over any number of ranks are exact and the stored reductions can be checked
 * bit for bit. The parent waits for every child and writes one CSV line per child to --out:
 *
 *     rank,connect_rc,close_rc,start_s,connect_s,close_s,log_s,steps,sent,dropped,done
 *
 * usage: scale_driver --procs N --seconds D [--hz 10] [--metrics 10] [--nodes K] --out FILE
 * Run it under `simvue-hpc run --ranks N -- scale_driver ...` (the sidecar hosts the run).
 */
#define _DEFAULT_SOURCE
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "simvue_hpc.h"

#define MAX_METRICS 64

typedef struct {
    int connect_rc;
    int close_rc;
    double start_s; /* when this child started, after the parent's first fork */
    double connect_s;
    double close_s;
    double log_s;
    long steps;
    uint64_t sent;
    uint64_t dropped;
    int done;
} result;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_until(double t) {
    for (;;) {
        double left = t - now_s();
        if (left <= 0) return;
        struct timespec ts = {(time_t)left, (long)((left - (double)(time_t)left) * 1e9)};
        if (nanosleep(&ts, NULL) == 0) return;
    }
}

/* Exact in binary: multiples of 1/4 in [-100, 155.75]; mirrored by bench_scale.value(). */
static double value(long rank, long metric, long step) {
    return (double)((rank * 31 + metric * 17 + step * 7) % 1024) * 0.25 - 100.0;
}

static double t_first_fork;
/* The "MPI_Init" barrier, shared by the children: how many have connected (or failed to), and a
 * process-shared condition they sleep on. Polling it instead (4,096 ranks x 100 wake-ups a second)
 * starved this machine's two cores, and with them the aggregator's handshakes. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t all_in;
    long connected;
} barrier;
static barrier *gate;

static void arrive(long procs) {
    pthread_mutex_lock(&gate->lock);
    if (++gate->connected >= procs) pthread_cond_broadcast(&gate->all_in);
    pthread_mutex_unlock(&gate->lock);
}

/* Wait (at most 300 s) until every rank has arrived. */
static void wait_all(long procs) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 300;
    pthread_mutex_lock(&gate->lock);
    while (gate->connected < procs)
        if (pthread_cond_timedwait(&gate->all_in, &gate->lock, &until) == ETIMEDOUT) break;
    pthread_mutex_unlock(&gate->lock);
}

static int child(long rank, long procs, long nodes, double seconds, double hz, int metrics, result *out) {
    out->start_s = now_s() - t_first_fork;
    char buf[64];
    snprintf(buf, sizeof buf, "%ld", rank);
    setenv("OMPI_COMM_WORLD_RANK", buf, 1);
    snprintf(buf, sizeof buf, "%ld", procs);
    setenv("OMPI_COMM_WORLD_SIZE", buf, 1);
    if (nodes > 0) {
        long per_node = (procs + nodes - 1) / nodes;
        snprintf(buf, sizeof buf, "node%ld", rank / per_node);
        setenv("SIMVUE_HPC_NODE", buf, 1);
    }
    char names_buf[MAX_METRICS][8];
    const char *names[MAX_METRICS];
    double values[MAX_METRICS];
    char reductions[MAX_METRICS * 48];
    size_t used = 0;
    reductions[0] = '\0';
    for (int m = 0; m < metrics; ++m) {
        snprintf(names_buf[m], sizeof names_buf[m], "m%02d", m);
        names[m] = names_buf[m];
        used += (size_t)snprintf(reductions + used, sizeof reductions - used, "%sm%02d=mean,min,max,sum,std,count",
                                 m ? ";" : "", m);
    }
    double t0 = now_s();
    svh_client *h = svh_connect_env_ex(-1, reductions, NULL);
    out->connect_s = now_s() - t0;
    if (!h) {
        arrive(procs);
        out->connect_rc = svh_last_error_code();
        fprintf(stderr, "rank %ld: connect failed: %s\n", rank, svh_last_error());
        return 1;
    }
    /* as an MPI code's ranks leave MPI_Init together: wait until every rank is connected */
    arrive(procs);
    wait_all(procs);
    long steps = (long)(seconds * hz + 0.5);
    double start = now_s();
    for (long s = 0; s < steps; ++s) {
        sleep_until(start + (double)s / hz);
        for (int m = 0; m < metrics; ++m) values[m] = value(rank, m, s);
        int rc = svh_log_many(h, (size_t)metrics, names, values, s);
        if (rc < 0) {
            fprintf(stderr, "rank %ld: svh_log_many failed at step %ld: %s\n", rank, s, svh_last_error());
            break;
        }
        out->steps = s + 1;
    }
    out->log_s = now_s() - start;
    svh_counters(h, &out->sent, &out->dropped, NULL);
    t0 = now_s();
    out->close_rc = svh_close(h, 300000);
    out->close_s = now_s() - t0;
    if (out->close_rc != SVH_OK) fprintf(stderr, "rank %ld: close: %s\n", rank, svh_last_error());
    return out->close_rc == SVH_OK ? 0 : 1;
}

int main(int argc, char **argv) {
    long procs = 0, nodes = 0;
    double seconds = 10, hz = 10;
    int metrics = 10;
    const char *out_path = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--procs")) procs = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--hz")) hz = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--metrics")) metrics = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--nodes")) nodes = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--out")) out_path = argv[i + 1];
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (procs < 1 || metrics < 1 || metrics > MAX_METRICS || hz <= 0 || seconds <= 0 || !out_path) {
        fprintf(stderr, "usage: %s --procs N --seconds D [--hz 10] [--metrics 10] [--nodes K] --out FILE\n", argv[0]);
        return 2;
    }
    result *res = mmap(NULL, sizeof(result) * (size_t)procs, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                       -1, 0);
    if (res == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memset(res, 0, sizeof(result) * (size_t)procs);
    gate = mmap(NULL, sizeof *gate, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (gate == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    pthread_mutexattr_t ma;
    pthread_condattr_t ca;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    pthread_condattr_init(&ca);
    pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED);
    pthread_mutex_init(&gate->lock, &ma);
    pthread_cond_init(&gate->all_in, &ca);
    gate->connected = 0;
    pid_t *pids = calloc((size_t)procs, sizeof *pids);
    t_first_fork = now_s();
    for (long r = 0; r < procs; ++r) {
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "fork %ld: %s\n", r, strerror(errno));
            procs = r;
            break;
        }
        if (pid == 0) {
            int rc = child(r, procs, nodes, seconds, hz, metrics, &res[r]);
            res[r].done = 1;
            fflush(NULL);
            _exit(rc);
        }
        pids[r] = pid;
    }
    int failed = 0;
    for (long r = 0; r < procs; ++r) {
        int status;
        while (waitpid(pids[r], &status, 0) < 0 && errno == EINTR) {
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed;
    }
    FILE *f = fopen(out_path, "w");
    if (!f) {
        perror(out_path);
        return 1;
    }
    fprintf(f, "rank,connect_rc,close_rc,start_s,connect_s,close_s,log_s,steps,sent,dropped,done\n");
    for (long r = 0; r < procs; ++r)
        fprintf(f, "%ld,%d,%d,%.6f,%.6f,%.6f,%.6f,%ld,%llu,%llu,%d\n", r, res[r].connect_rc, res[r].close_rc,
                res[r].start_s, res[r].connect_s, res[r].close_s, res[r].log_s, res[r].steps,
                (unsigned long long)res[r].sent, (unsigned long long)res[r].dropped, res[r].done);
    fclose(f);
    free(pids);
    return failed ? 1 : 0;
}
