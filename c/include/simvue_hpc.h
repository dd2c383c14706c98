/*
 * simvue_hpc.h - the C client of simvue_hpc: a rank of an HPC job that records into ONE Simvue run.
 *
 * The process connects one ZeroMQ DEALER socket to the run's aggregator (started by a Python
 * process: `run = Simvue(); run.init(...)`, which exports SIMVUE_HPC_ENDPOINT and SIMVUE_HPC_SECRET
 * to the processes it starts) and speaks the wire protocol of docs/protocol.md, version 1.
 *
 *     svh_client *h = svh_connect_env(-1);          // endpoint, secret, rank from the environment
 *     if (!h) { fprintf(stderr, "%s\n", svh_last_error()); return 1; }
 *     for (int64_t step = 0; step < n; ++step)
 *         svh_log(h, "loss", loss[step], step);
 *     svh_event(h, "done");
 *     svh_save(h, "result.dat", "output");
 *     if (svh_close(h, -1) != SVH_OK) fprintf(stderr, "%s\n", svh_last_error());
 *
 * Return codes
 *     Functions returning int return SVH_OK (0) on success, SVH_DROPPED (1) when the call was valid
 *     but its points were dropped by the overflow policy (below), and a negative SVH_E* code on
 *     failure; svh_last_error() then describes the failure. Functions returning a pointer return NULL
 *     on failure. svh_last_error() is per thread: it describes the last failure of a call made by the
 *     calling thread ("" if none).
 *
 * Threads
 *     A handle may be used from several threads at once: every call takes the handle's mutex for a
 *     short time (no I/O under it). The handle owns one background thread, the I/O thread, which alone
 *     touches the ZeroMQ socket (ZeroMQ sockets are not thread-safe). The exceptions: svh_close() must
 *     be called once, after every other thread has stopped using the handle, and a handle must not be
 *     used in a child process after fork().
 *
 * Batching
 *     svh_log() and svh_log_many() validate their input and append the points to C arrays under the
 *     mutex, then return: no I/O and no system call, except one write to a wake-up pipe per batch. The
 *     I/O thread sends the buffered points as ONE METRICS message when the oldest of them is
 *     `flush_interval` old (default 20 ms) or as soon as `batch_points` (default 4096) are buffered,
 *     with non-blocking sends; it also sends a HEARTBEAT every `heartbeat_interval` (default 5 s),
 *     events, file offers and chunks, and finally the GOODBYE. Messages leave in the order of the
 *     calls that made them (an event logged after some points follows those points).
 *
 * Overflow policy (when the aggregator cannot keep up)
 *     At most `max_buffered_points` points (default 1,000,000) wait in this process: in the buffer and
 *     in METRICS messages that ZeroMQ would not take yet (ZeroMQ itself holds at most 64 more
 *     messages, ZMQ_SNDHWM=64). When a call would exceed that bound:
 *       - overflow "block" (default): the call waits for room up to `overflow_timeout` (default 10 s);
 *         if none comes, the call's points are dropped and the handle keeps dropping without waiting
 *         until the buffer is half empty again, so a dead aggregator costs one wait, not one per call.
 *       - overflow "drop": the call's points are dropped at once (and until the buffer is half empty).
 *     A call's points are kept or dropped together; a dropped call returns SVH_DROPPED. Dropped
 *     points are counted (in all and per metric name) and reported in every HEARTBEAT and in the
 *     GOODBYE; the aggregator records them in the run. Nothing is lost silently. No call ever blocks
 *     indefinitely: svh_log* waits at most `overflow_timeout`, svh_event never waits, svh_save at most
 *     `file_timeout`, svh_close at most its timeout, svh_connect* at most the connect timeout.
 *
 * Settings
 *     The defaults above can be changed with the same variables as the Python client (times in
 *     seconds, as in Python): SIMVUE_HPC_FLUSH_INTERVAL, SIMVUE_HPC_BATCH_POINTS,
 *     SIMVUE_HPC_MAX_BUFFERED_POINTS, SIMVUE_HPC_OVERFLOW (block|drop), SIMVUE_HPC_OVERFLOW_TIMEOUT,
 *     SIMVUE_HPC_HEARTBEAT_INTERVAL, SIMVUE_HPC_CLOSE_TIMEOUT, SIMVUE_HPC_CONNECT_TIMEOUT,
 *     SIMVUE_HPC_FILE_TIMEOUT, SIMVUE_HPC_ON_ABORT (raise|terminate); or field by field with svh_options and svh_connect_opts().
 *
 * Abort
 *     When the aggregator sends a NOTICE of kind "abort" (the run was aborted from outside), every
 *     later svh_log*, svh_event*, svh_status and svh_save call returns SVH_EABORTED without recording
 *     anything (svh_abort_reason() says why): the program should stop and call svh_close(). With
 *     SIMVUE_HPC_ON_ABORT=terminate (as for the Python client) the process also gets SIGTERM.
 *
 * Metric names may only contain ASCII letters and digits, spaces and - _ / . : = > < + ( ) %,
 * as in the Python client. Strings must be UTF-8 and NUL-terminated.
 */
#ifndef SIMVUE_HPC_H
#define SIMVUE_HPC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define SVH_API
#elif defined(__GNUC__)
#define SVH_API __attribute__((visibility("default")))
#else
#define SVH_API
#endif

#define SVH_VERSION "0.1.0"
#define SVH_PROTOCOL_VERSION 1

/* Return codes. */
#define SVH_OK 0
#define SVH_DROPPED 1        /* valid call, but its points were dropped by the overflow policy */
#define SVH_EINVAL (-1)      /* an invalid argument (NULL handle, bad name, bad category, ...) */
#define SVH_ECLOSED (-2)     /* the handle is closing, or its connection ended */
#define SVH_ETIMEOUT (-3)    /* no answer from the aggregator in time */
#define SVH_EREJECTED (-4)   /* the aggregator refused (REJECT, or FILE_REPLY error) */
#define SVH_EIO (-5)         /* a file or socket error */
#define SVH_ENOMEM (-6)      /* out of memory */
#define SVH_EABORTED (-7)    /* the run was aborted (the aggregator's NOTICE "abort"): stop computing */

/* Overflow policies (svh_options.overflow). */
#define SVH_OVERFLOW_BLOCK 0
#define SVH_OVERFLOW_DROP 1

typedef struct svh_client svh_client;

/* Everything svh_connect_opts() needs. Fill it with svh_options_init() first. */
typedef struct svh_options {
    const char *endpoint;          /* ZeroMQ endpoint of the aggregator (SIMVUE_HPC_ENDPOINT) */
    const char *secret;            /* the run's secret (SIMVUE_HPC_SECRET), with its CURVE keys */
    int rank;                      /* the rank to ask for, or -1: the aggregator assigns one */
    int size;                      /* the job's number of ranks as seen here; 0 if unknown */
    int connect_timeout_ms;        /* the handshake's bound (30000) */
    int flush_interval_ms;         /* the oldest buffered point leaves within this (20) */
    int batch_points;              /* ... or as soon as this many are buffered (4096) */
    long max_buffered_points;      /* the overflow bound (1000000) */
    int overflow;                  /* SVH_OVERFLOW_BLOCK (default) or SVH_OVERFLOW_DROP */
    int overflow_timeout_ms;       /* the longest a log call waits under "block" (10000) */
    int heartbeat_interval_ms;     /* (5000) */
    int close_timeout_ms;          /* the default timeout of svh_close (60000) */
    int file_timeout_ms;           /* the longest svh_save waits for the aggregator (300000) */
    /* How metrics are reduced across ranks, sent in the HELLO (NULL or "": the run's defaults).
     * "name=op,op;name2=op": ops from mean, min, max, sum, std, count, or per_rank alone (spaces around
     * names and ops are ignored). A name may contain '=': the ops are what follows the last '='.
     * Example: "loss=mean,max;t=per_rank". */
    const char *reductions;
    const char *client;            /* the HELLO's client string; NULL: "simvue_hpc-c <version>" */
    int terminate_on_abort;        /* SIGTERM this process on an abort notice (SIMVUE_HPC_ON_ABORT) */
} svh_options;

/* Defaults, then the SIMVUE_HPC_* tuning variables (see Settings); endpoint, secret, rank and size are
 * left unset (NULL, NULL, -1, 0). Returns SVH_OK, or SVH_EINVAL if a variable is malformed. */
SVH_API int svh_options_init(svh_options *options);

/* Fills endpoint, secret, rank and size from the environment as the Python client does
 * (simvue_hpc/roles.py): SIMVUE_HPC_ENDPOINT and SIMVUE_HPC_SECRET (both required). The rank is the
 * launcher's (OMPI_COMM_WORLD_RANK, PMI_RANK, PMIX_RANK, SLURM_PROCID, with the matching *_SIZE /
 * SLURM_NTASKS) only when SIMVUE_HPC_OWNER is "sidecar" (the command was started by
 * `simvue-hpc run`); otherwise, under a run hosted by a Python parent process, which is rank 0
 * itself, it is -1 and the aggregator assigns one. The strings point into the environment.
 * Returns SVH_OK, or SVH_EINVAL with svh_last_error() saying what is missing. */
SVH_API int svh_options_from_env(svh_options *options);

/* Connects and handshakes (HELLO -> WELCOME) within options->connect_timeout_ms, then starts the I/O
 * thread. NULL on failure: svh_last_error() says why (unreachable, refused, bad options). */
SVH_API svh_client *svh_connect_opts(const svh_options *options);

/* svh_options_init + svh_options_from_env + svh_connect_opts. timeout_ms < 0: the connect timeout
 * from SIMVUE_HPC_CONNECT_TIMEOUT, else 30 s. */
SVH_API svh_client *svh_connect_env(int timeout_ms);

/* svh_connect_env with reductions (format of svh_options.reductions) and a client string (either
 * may be NULL). */
SVH_API svh_client *svh_connect_env_ex(int timeout_ms, const char *reductions, const char *client);

/* Connects to an explicit endpoint with the run's secret, asking for `rank` (-1: assigned), within
 * timeout_ms (< 0: the connect timeout of the settings). The other settings are the defaults and the
 * SIMVUE_HPC_* tuning variables. */
SVH_API svh_client *svh_connect(const char *endpoint, const char *secret, int rank, int timeout_ms);

/* Records one point. step < 0: the automatic step, one more than the step of this handle's last
 * log call (0 at first); otherwise step itself. Steps should never decrease (docs/protocol.md 5.4). */
SVH_API int svh_log(svh_client *h, const char *name, double value, int64_t step);

/* Records n points, all at the same step and time (step < 0: automatic, as for svh_log). All names
 * are checked first; the call's points are kept or dropped together. */
SVH_API int svh_log_many(svh_client *h, size_t n, const char **names, const double *values, int64_t step);

/* Records an event (level "info"), after the points logged before it. Never waits; returns
 * SVH_DROPPED if 65536 control messages are already waiting (the aggregator is not reading). */
SVH_API int svh_event(svh_client *h, const char *message);

/* As svh_event with a level: "info", "warning", "error" or "critical". */
SVH_API int svh_event_level(svh_client *h, const char *message, const char *level);

/* Sets the run's status as this rank sees it ("failed" makes the run end as failed), with a reason
 * (may be NULL). */
SVH_API int svh_status(svh_client *h, const char *status, const char *reason);

/* Stores a copy of a file with the run, under its base name, in category "input", "output" or
 * "code". The file is offered by SHA-256; its bytes are sent (1 MiB chunks, at most 8 in flight) only
 * if the aggregator does not hold them yet, so the same content saved by many ranks is stored once.
 * Blocks the calling thread until the aggregator answers "stored" (SVH_OK) or "error"
 * (SVH_EREJECTED), at most file_timeout (SVH_ETIMEOUT). */
SVH_API int svh_save(svh_client *h, const char *path, const char *category);

/* Flushes every buffered point, sends the GOODBYE with the totals, waits for the aggregator's
 * acknowledgement (at most timeout_ms; < 0: close_timeout), then closes the socket and frees the
 * handle, whatever the outcome. SVH_OK: acknowledged, every point sent is stored. SVH_ETIMEOUT: no
 * acknowledgement in time (the last points may be lost). SVH_EREJECTED / SVH_ECLOSED: the
 * connection had already ended. h == NULL: SVH_EINVAL. */
SVH_API int svh_close(svh_client *h, int timeout_ms);

/* The rank this handle is known by in the run (the one asked for, or the one assigned); -1 if h is
 * NULL. */
SVH_API int svh_rank(const svh_client *h);

/* The run's id and name from the WELCOME (valid until svh_close); "" if h is NULL. */
SVH_API const char *svh_run_id(const svh_client *h);
SVH_API const char *svh_run_name(const svh_client *h);

/* Why the run was aborted (NOTICE "abort"), or NULL if it was not. */
SVH_API const char *svh_abort_reason(svh_client *h);

/* Counters so far (any pointer may be NULL): points handed to ZeroMQ, points dropped by the
 * overflow policy, points waiting in this process. */
SVH_API void svh_counters(svh_client *h, uint64_t *sent_points, uint64_t *dropped_points, uint64_t *buffered_points);

/* This thread's last error message ("" if none). Valid until this thread's next failing call. */
SVH_API const char *svh_last_error(void);

/* The code that went with it (SVH_OK if none): e.g. why an svh_connect* returned NULL. */
SVH_API int svh_last_error_code(void);

/* "simvue_hpc-c 0.1.0". */
SVH_API const char *svh_version(void);

#ifdef __cplusplus
}
#endif

#endif /* SIMVUE_HPC_H */
