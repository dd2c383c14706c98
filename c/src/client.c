/* The rank's side of the protocol: a column buffer that svh_log appends to, and an I/O thread that
 * ships it. See simvue_hpc.h for the threading, batching and overflow design; this mirrors
 * simvue_hpc/worker.py.
 *
 * Data flow. Calling threads append points to the buffer (four C arrays) under the mutex. A batch is
 * "cut" (the arrays move into a METRICS item at the end of the queue) by the I/O thread when it is
 * due, or by a calling thread that queues a control message (event, status, file offer or chunk), so
 * that messages leave in call order. The I/O thread takes the whole queue under the mutex into its
 * private outbox, numbers and encodes each item when it reaches the outbox's head and hands it to
 * ZeroMQ with non-blocking sends; what ZeroMQ will not take yet (ZMQ_SNDHWM reached) is retried
 * every 5 ms. `queued_points` counts the points cut but not yet accepted by ZeroMQ: the overflow
 * bound is on buffered + queued points. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "svh_internal.h"

#define SNDHWM 64
#define RCVHWM 1000
#define FILE_CHUNK_BYTES ((size_t)1 << 20)
#define FILE_CHUNKS_IN_FLIGHT 8
#define MAX_PENDING_CONTROLS 65536
#define RETRY_MS 5
#define MAX_REPLY_FRAMES 8

/* ---------------------------------------------------------------------------------- types */
typedef struct item {
    struct item *next;
    int type;
    int encoded;
    uint8_t header[SVH_HEADER_SIZE];
    svh_buf body;
    /* METRICS: the batch's columns, and its name table (pointers to the client's interned names) */
    size_t n;
    uint32_t *ids;
    int64_t *steps, *times;
    double *vals;
    size_t nnames;
    const char **names;
    /* METRICS (the four columns, little-endian, back to back) or FILE_CHUNK (the bytes) */
    uint8_t *payload;
    size_t payload_len;
} item;

enum { REPLY_NEED = 1, REPLY_STORED, REPLY_ERROR };

typedef struct file_reply_entry {
    struct file_reply_entry *next;
    int status;
    char *reason;
} file_reply_entry;

typedef struct file_wait {
    struct file_wait *next;
    char sha[65];
    file_reply_entry *replies, *last;
} file_wait;

struct svh_client {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* any change a waiter may be waiting for: room, replies, chunk slots, the end */
    svh_options opt;
    char *endpoint, *secret;
    int rank;
    char *run_id, *run_name;
    /* socket side: owned by the I/O thread once it runs */
    void *ctx, *sock;
    int wake_r, wake_w;
    pthread_t io;
    int io_started;
    uint32_t seq;
    /* the buffer (under mu) */
    uint32_t *ids;
    int64_t *steps, *times;
    double *vals;
    size_t n, cap;
    int armed;
    int64_t next_step;
    /* interned metric names (under mu); names are never freed before svh_close */
    char **names;
    uint64_t *dropped_by_name;
    size_t nnames, names_cap;
    uint32_t *slots; /* open addressing: name id + 1, 0 = empty */
    size_t nslots;
    uint32_t *remap;
    size_t remap_cap;
    /* the queue handed to the I/O thread (under mu) */
    item *qhead, *qtail;
    size_t pending_controls;
    uint64_t queued_points;
    int chunks_in_flight;
    /* counters and state (under mu) */
    uint64_t sent_points, dropped_points, received_points;
    int dropping, closing, acknowledged, io_done;
    char *detached; /* why the connection ended early (REJECT, I/O failure) */
    char *aborted;  /* why the run was aborted (NOTICE "abort") */
    int close_timeout_ms;
    file_wait *waits;
};

static void warn(const svh_client *c, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static void warn(const svh_client *c, const char *fmt, ...) {
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    fprintf(stderr, "simvue_hpc-c rank %d: %s\n", c ? c->rank : -1, text);
}

/* ---------------------------------------------------------------------------------- options */
static int env_ms(const char *var, int *out) {
    const char *raw = getenv(var);
    if (!raw || !*raw) return 0;
    char *end;
    errno = 0;
    double v = strtod(raw, &end);
    if (errno || end == raw || *end || !(v > 0) || v * 1000.0 > (double)INT_MAX)
        return svh_set_error(SVH_EINVAL, "%s must be a positive number of seconds, not \"%s\"", var, raw);
    double ms = v * 1000.0;
    *out = ms < 1.0 ? 1 : (int)(ms + 0.5);
    return 0;
}

static int env_long(const char *var, long *out) {
    const char *raw = getenv(var);
    if (!raw || !*raw) return 0;
    char *end;
    errno = 0;
    long v = strtol(raw, &end, 10);
    if (errno || end == raw || *end || v <= 0)
        return svh_set_error(SVH_EINVAL, "%s must be a positive integer, not \"%s\"", var, raw);
    *out = v;
    return 0;
}

int svh_options_init(svh_options *o) {
    if (!o) return svh_set_error(SVH_EINVAL, "svh_options_init: NULL options");
    memset(o, 0, sizeof *o);
    o->rank = -1;
    o->size = 0;
    o->connect_timeout_ms = 30000;
    o->flush_interval_ms = 20;
    o->batch_points = 4096;
    o->max_buffered_points = 1000000;
    o->overflow = SVH_OVERFLOW_BLOCK;
    o->overflow_timeout_ms = 10000;
    o->heartbeat_interval_ms = 5000;
    o->close_timeout_ms = 60000;
    o->file_timeout_ms = 300000;
    long batch = o->batch_points;
    if (env_ms("SIMVUE_HPC_CONNECT_TIMEOUT", &o->connect_timeout_ms) ||
        env_ms("SIMVUE_HPC_FLUSH_INTERVAL", &o->flush_interval_ms) ||
        env_long("SIMVUE_HPC_BATCH_POINTS", &batch) ||
        env_long("SIMVUE_HPC_MAX_BUFFERED_POINTS", &o->max_buffered_points) ||
        env_ms("SIMVUE_HPC_OVERFLOW_TIMEOUT", &o->overflow_timeout_ms) ||
        env_ms("SIMVUE_HPC_HEARTBEAT_INTERVAL", &o->heartbeat_interval_ms) ||
        env_ms("SIMVUE_HPC_CLOSE_TIMEOUT", &o->close_timeout_ms) ||
        env_ms("SIMVUE_HPC_FILE_TIMEOUT", &o->file_timeout_ms))
        return SVH_EINVAL;
    if (batch > INT_MAX) return svh_set_error(SVH_EINVAL, "SIMVUE_HPC_BATCH_POINTS is too large");
    o->batch_points = (int)batch;
    const char *overflow = getenv("SIMVUE_HPC_OVERFLOW");
    if (overflow && *overflow) {
        if (strcmp(overflow, "block") == 0)
            o->overflow = SVH_OVERFLOW_BLOCK;
        else if (strcmp(overflow, "drop") == 0)
            o->overflow = SVH_OVERFLOW_DROP;
        else
            return svh_set_error(SVH_EINVAL, "SIMVUE_HPC_OVERFLOW must be block or drop, not \"%s\"", overflow);
    }
    const char *on_abort = getenv("SIMVUE_HPC_ON_ABORT");
    if (on_abort && *on_abort) {
        if (strcmp(on_abort, "raise") == 0)
            o->terminate_on_abort = 0;
        else if (strcmp(on_abort, "terminate") == 0)
            o->terminate_on_abort = 1;
        else
            return svh_set_error(SVH_EINVAL, "SIMVUE_HPC_ON_ABORT must be raise or terminate, not \"%s\"", on_abort);
    }
    return SVH_OK;
}

static int env_int(const char *var, long *out) {
    const char *raw = getenv(var);
    char *end;
    errno = 0;
    long v = strtol(raw, &end, 10);
    if (errno || end == raw || *end || v < INT_MIN || v > INT_MAX) return -1;
    *out = v;
    return 0;
}

/* The ipc endpoint of this node's relay, as simvue_hpc/relay/service.py relay_endpoint() names it:
 * ipc://<tmpdir>/simvue_hpc-<run id>-<node>.sock, node = SIMVUE_HPC_NODE or the host name, every
 * character but letters, digits, '_', '.' and '-' replaced by '_'. 0, or -1 if it does not fit. */
static int relay_path(char *out, size_t len, const char *run_id) {
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir) dir = getenv("TEMP");
    if (!dir || !*dir) dir = getenv("TMP");
    if (!dir || !*dir) dir = "/tmp";
    char node[256];
    const char *given = getenv("SIMVUE_HPC_NODE");
    if (given && *given) {
        snprintf(node, sizeof node, "%s", given);
    } else if (gethostname(node, sizeof node) != 0) {
        strcpy(node, "unknown");
    }
    node[sizeof node - 1] = '\0';
    for (char *p = node; *p; ++p)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' ||
              *p == '.' || *p == '-'))
            *p = '_';
    int n = snprintf(out, len, "%s/simvue_hpc-%s-%s.sock", dir, run_id, node);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

/* Whether an endpoint is a node relay's (ipc://<dir>/simvue_hpc-<run id>-<node>.sock) rather than the
 * aggregator's (ipc://<dir>/simvue_hpc-<run id>.sock or tcp): a relay's socket file is private to the job's
 * user and never crosses the network, so it is reached without CURVE (simvue_hpc/relay/placement.py). */
static int is_relay_endpoint(const char *endpoint) {
    if (strncmp(endpoint, "ipc://", 6) != 0) return 0;
    const char *base = strrchr(endpoint, '/');
    base = base ? base + 1 : endpoint;
    return strncmp(base, "simvue_hpc-", 11) == 0 && strchr(base + 11, '-') != NULL;
}

/* SIMVUE_HPC_HIERARCHY: "flat" (or unset) connects to SIMVUE_HPC_ENDPOINT; "node" to this node's relay
 * (the ranks of a node pre-reduce there); "auto" to the relay if its socket exists, else flat. */
static int relay_from_env(svh_options *o) {
    static _Thread_local char endpoint[4200];
    const char *hierarchy = getenv("SIMVUE_HPC_HIERARCHY");
    if (!hierarchy || !*hierarchy || strcmp(hierarchy, "flat") == 0) return SVH_OK;
    if (strcmp(hierarchy, "node") != 0 && strcmp(hierarchy, "auto") != 0)
        return svh_set_error(SVH_EINVAL, "SIMVUE_HPC_HIERARCHY=\"%s\" must be auto, flat or node", hierarchy);
    const char *run_id = getenv("SIMVUE_HPC_RUN_ID");
    if (!run_id || !*run_id) {
        if (strcmp(hierarchy, "auto") == 0) return SVH_OK;
        return svh_set_error(SVH_EINVAL, "SIMVUE_HPC_HIERARCHY=node needs SIMVUE_HPC_RUN_ID (set by the run's host)");
    }
    char path[4096];
    if (relay_path(path, sizeof path, run_id) != 0)
        return svh_set_error(SVH_EINVAL, "the relay's socket path is too long");
    if (strcmp(hierarchy, "auto") == 0 && access(path, F_OK) != 0) return SVH_OK;
    snprintf(endpoint, sizeof endpoint, "ipc://%s", path);
    o->endpoint = endpoint;
    return SVH_OK;
}

int svh_options_from_env(svh_options *o) {
    if (!o) return svh_set_error(SVH_EINVAL, "svh_options_from_env: NULL options");
    const char *endpoint = getenv("SIMVUE_HPC_ENDPOINT");
    const char *secret = getenv("SIMVUE_HPC_SECRET");
    if (!endpoint || !*endpoint)
        return svh_set_error(SVH_EINVAL,
                             "no run to attach to: SIMVUE_HPC_ENDPOINT is not set in this process (start it from a "
                             "process whose run is initialised, e.g. Python's Simvue().init(), or with "
                             "`simvue-hpc run`)");
    if (!secret || !*secret)
        return svh_set_error(SVH_EINVAL, "SIMVUE_HPC_ENDPOINT is set but SIMVUE_HPC_SECRET is not");
    o->endpoint = endpoint;
    o->secret = secret;
    o->rank = -1;
    o->size = 0;
    int rc = relay_from_env(o);
    if (rc != SVH_OK) return rc;
    const char *owner = getenv("SIMVUE_HPC_OWNER");
    if (owner && strcmp(owner, "sidecar") == 0) {
        static const char *const vars[][2] = {{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
                                              {"PMI_RANK", "PMI_SIZE"},
                                              {"PMIX_RANK", "PMIX_SIZE"},
                                              {"SLURM_PROCID", "SLURM_NTASKS"}};
        for (size_t k = 0; k < sizeof vars / sizeof *vars; ++k) {
            if (!getenv(vars[k][0]) || !getenv(vars[k][1])) continue;
            long rank, size;
            if (env_int(vars[k][0], &rank) || env_int(vars[k][1], &size))
                return svh_set_error(SVH_EINVAL, "%s=\"%s\" and %s=\"%s\" must be integers", vars[k][0],
                                     getenv(vars[k][0]), vars[k][1], getenv(vars[k][1]));
            if (rank < 0 || rank >= size)
                return svh_set_error(SVH_EINVAL, "%s=%ld is not within %s=%ld", vars[k][0], rank, vars[k][1], size);
            o->rank = (int)rank;
            o->size = (int)size;
            break;
        }
    }
    return SVH_OK;
}

/* ---------------------------------------------------------------------------------- small helpers */
static char *dup_cstr(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static void deadline_ts(struct timespec *ts, int64_t deadline_ms) {
    ts->tv_sec = (time_t)(deadline_ms / 1000);
    ts->tv_nsec = (long)(deadline_ms % 1000) * 1000000L;
}

/* Waits on cv until deadline_ms (monotonic); returns 0, or ETIMEDOUT once the deadline has passed. */
static int wait_until(svh_client *c, int64_t deadline_ms) {
    if (svh_monotonic_ms() >= deadline_ms) return ETIMEDOUT;
    struct timespec ts;
    deadline_ts(&ts, deadline_ms);
    pthread_cond_timedwait(&c->cv, &c->mu, &ts);
    return svh_monotonic_ms() >= deadline_ms ? ETIMEDOUT : 0;
}

static void wake_io(svh_client *c) {
    const char one = 1;
    ssize_t rc = write(c->wake_w, &one, 1); /* EAGAIN: already signalled (the pipe is full) */
    (void)rc;
}

static void item_free(item *it) {
    if (!it) return;
    svh_buf_free(&it->body);
    free(it->ids);
    free(it->steps);
    free(it->times);
    free(it->vals);
    free(it->names);
    free(it->payload);
    free(it);
}

static uint32_t hash_name(const char *s) {
    uint32_t h = 2166136261u;
    for (; *s; ++s) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static int rehash(svh_client *c, size_t nslots) {
    uint32_t *slots = calloc(nslots, sizeof *slots);
    if (!slots) return -1;
    for (size_t id = 0; id < c->nnames; ++id) {
        size_t k = hash_name(c->names[id]) & (nslots - 1);
        while (slots[k]) k = (k + 1) & (nslots - 1);
        slots[k] = (uint32_t)id + 1;
    }
    free(c->slots);
    c->slots = slots;
    c->nslots = nslots;
    return 0;
}

/* The id of `name`, interned if new; -1 when out of memory. Lock held. */
static long intern(svh_client *c, const char *name) {
    size_t mask = c->nslots - 1;
    size_t k = hash_name(name) & mask;
    while (c->slots[k]) {
        uint32_t id = c->slots[k] - 1;
        if (strcmp(c->names[id], name) == 0) return (long)id;
        k = (k + 1) & mask;
    }
    if (c->nnames >= UINT32_MAX - 1) return -1;
    if (c->nnames == c->names_cap) {
        size_t cap = c->names_cap ? 2 * c->names_cap : 16;
        char **names = realloc(c->names, cap * sizeof *names);
        if (!names) return -1;
        c->names = names;
        uint64_t *dropped = realloc(c->dropped_by_name, cap * sizeof *dropped);
        if (!dropped) return -1;
        c->dropped_by_name = dropped;
        c->names_cap = cap;
    }
    char *copy = dup_cstr(name);
    if (!copy) return -1;
    size_t id = c->nnames;
    c->names[id] = copy;
    c->dropped_by_name[id] = 0;
    c->nnames++;
    c->slots[k] = (uint32_t)id + 1;
    if (2 * c->nnames > c->nslots && rehash(c, 2 * c->nslots) != 0) {
        /* the table still works, only fuller: ignore */
    }
    return (long)id;
}

/* ---------------------------------------------------------------------------------- the queue */
static void queue_append(svh_client *c, item *it) {
    it->next = NULL;
    if (c->qtail)
        c->qtail->next = it;
    else
        c->qhead = it;
    c->qtail = it;
}

/* Moves points [off, off + m) of the buffer into a METRICS item at the end of the queue: the arrays
 * themselves when they are the whole buffer, else copies. Lock held. 0 or -1 (out of memory). */
static int cut_items(svh_client *c, size_t off, size_t m) {
    item *it = calloc(1, sizeof *it);
    if (!it) return -1;
    if (c->remap_cap < c->nnames) { /* scratch: remap[id] for every name id, then the used ids */
        size_t cap = c->names_cap;
        uint32_t *remap = realloc(c->remap, 2 * cap * sizeof *remap);
        if (!remap) {
            free(it);
            return -1;
        }
        for (size_t k = 0; k < cap; ++k) remap[k] = UINT32_MAX;
        c->remap = remap;
        c->remap_cap = cap;
    }
    int whole = off == 0 && m == c->n;
    size_t most = m < c->nnames ? m : c->nnames;
    it->names = malloc((most ? most : 1) * sizeof *it->names);
    if (whole) {
        it->ids = c->ids;
        it->steps = c->steps;
        it->times = c->times;
        it->vals = c->vals;
    } else {
        it->ids = malloc(m * sizeof *it->ids);
        it->steps = malloc(m * sizeof *it->steps);
        it->times = malloc(m * sizeof *it->times);
        it->vals = malloc(m * sizeof *it->vals);
    }
    if (!it->names || !it->ids || !it->steps || !it->times || !it->vals) {
        if (whole) it->ids = NULL, it->steps = it->times = NULL, it->vals = NULL;
        item_free(it);
        return -1;
    }
    if (!whole) {
        memcpy(it->steps, c->steps + off, m * sizeof *it->steps);
        memcpy(it->times, c->times + off, m * sizeof *it->times);
        memcpy(it->vals, c->vals + off, m * sizeof *it->vals);
    }
    /* The item's name table: the names its points use, in order of first use. */
    uint32_t *used = c->remap + c->remap_cap;
    for (size_t k = 0; k < m; ++k) {
        uint32_t id = c->ids[off + k];
        if (c->remap[id] == UINT32_MAX) {
            c->remap[id] = (uint32_t)it->nnames;
            used[it->nnames] = id;
            it->names[it->nnames++] = c->names[id];
        }
        it->ids[k] = c->remap[id];
    }
    for (size_t k = 0; k < it->nnames; ++k) c->remap[used[k]] = UINT32_MAX;
    it->type = SVH_MSG_METRICS;
    it->n = m;
    queue_append(c, it);
    return 0;
}

/* Moves the whole buffer into METRICS items of at most batch_points points at the end of the queue.
 * Lock held. 0 or -1 (out of memory: what was not cut stays buffered and a later cut retries). */
static int cut_batch(svh_client *c) {
    if (c->n == 0) return 0;
    size_t batch = (size_t)c->opt.batch_points, done = 0;
    if (c->n <= batch) {
        if (cut_items(c, 0, c->n) != 0) return -1;
        c->ids = NULL;
        c->steps = c->times = NULL;
        c->vals = NULL;
        c->cap = 0;
        done = c->n;
    } else {
        while (done < c->n) {
            size_t m = c->n - done < batch ? c->n - done : batch;
            if (cut_items(c, done, m) != 0) break;
            done += m;
        }
        if (done < c->n) { /* keep the rest at the front of the buffer */
            size_t rest = c->n - done;
            memmove(c->ids, c->ids + done, rest * sizeof *c->ids);
            memmove(c->steps, c->steps + done, rest * sizeof *c->steps);
            memmove(c->times, c->times + done, rest * sizeof *c->times);
            memmove(c->vals, c->vals + done, rest * sizeof *c->vals);
        }
    }
    c->queued_points += done;
    c->n -= done;
    if (c->n == 0) c->armed = 0;
    return c->n == 0 ? 0 : -1;
}

/* Queues a control message behind the buffered points. Lock held. */
static int queue_control(svh_client *c, item *it) {
    if (c->n && cut_batch(c) != 0) return svh_set_error(SVH_ENOMEM, "out of memory");
    queue_append(c, it);
    if (it->type != SVH_MSG_FILE_CHUNK) c->pending_controls++;
    return SVH_OK;
}

/* Why the handle cannot take data, or NULL. Lock held. */
static int check_open(svh_client *c) {
    if (c->closing) return svh_set_error(SVH_ECLOSED, "this run is closed");
    if (c->aborted) return svh_set_error(SVH_EABORTED, "the run was aborted: %s", c->aborted);
    if (c->detached) return svh_set_error(SVH_EREJECTED, "the aggregator stopped taking data: %s", c->detached);
    if (c->io_done) return svh_set_error(SVH_ECLOSED, "the connection to the aggregator has ended");
    return SVH_OK;
}

/* ---------------------------------------------------------------------------------- sending */
static int send_frames(void *sock, size_t nf, const void *const *p, const size_t *len) {
    for (size_t k = 0; k < nf; ++k) {
        int flags = ZMQ_DONTWAIT | (k + 1 < nf ? ZMQ_SNDMORE : 0);
        if (zmq_send(sock, p[k], len[k], flags) < 0) {
            int e = zmq_errno();
            if (k == 0 && (e == EAGAIN || e == EINTR)) return 1;
            return -1;
        }
    }
    return 0;
}

/* Numbers and encodes the outbox's head (once). 0 or -1 (out of memory). */
static int encode_item(svh_client *c, item *it) {
    if (it->encoded) return 0;
    if (it->type == SVH_MSG_METRICS) {
        svh_enc_metrics(&it->body, it->nnames, it->names, it->n);
        size_t n = it->n;
        it->payload_len = n * 28;
        it->payload = malloc(it->payload_len ? it->payload_len : 1);
        if (!it->payload || it->body.failed) return -1;
        svh_put_le_u32(it->payload, it->ids, n);
        svh_put_le_i64(it->payload + 4 * n, it->steps, n);
        svh_put_le_i64(it->payload + 12 * n, it->times, n);
        svh_put_le_f64(it->payload + 20 * n, it->vals, n);
        free(it->ids);
        free(it->steps);
        free(it->times);
        free(it->vals);
        it->ids = NULL;
        it->steps = it->times = NULL;
        it->vals = NULL;
    }
    svh_header(it->header, it->type, c->seq);
    c->seq++; /* unsigned: wraps modulo 2^32 */
    it->encoded = 1;
    return 0;
}

static int send_item(svh_client *c, item *it) {
    const void *p[6];
    size_t len[6];
    size_t nf = 0;
    p[nf] = it->header, len[nf++] = SVH_HEADER_SIZE;
    p[nf] = it->body.data ? (const void *)it->body.data : (const void *)"", len[nf++] = it->body.len;
    if (it->type == SVH_MSG_METRICS) {
        size_t n = it->n;
        p[nf] = it->payload, len[nf++] = 4 * n;
        p[nf] = it->payload + 4 * n, len[nf++] = 8 * n;
        p[nf] = it->payload + 12 * n, len[nf++] = 8 * n;
        p[nf] = it->payload + 20 * n, len[nf++] = 8 * n;
    } else if (it->type == SVH_MSG_FILE_CHUNK) {
        p[nf] = it->payload ? (const void *)it->payload : (const void *)"", len[nf++] = it->payload_len;
    }
    return send_frames(c->sock, nf, p, len);
}

typedef struct outbox {
    item *head, *tail;
} outbox;

/* Hands the outbox to ZeroMQ until it would block. Returns 1 if something is left (stalled), 0 if
 * the outbox is empty, -1 on a fatal error. I/O thread. */
static int pump(svh_client *c, outbox *ob) {
    uint64_t points = 0;
    int chunks = 0;
    size_t controls = 0;
    int rc = 0;
    while (ob->head) {
        item *it = ob->head;
        if (encode_item(c, it) != 0) {
            rc = -1;
            break;
        }
        int s = send_item(c, it);
        if (s == 1) {
            rc = 1;
            break;
        }
        if (s < 0) {
            rc = -1;
            break;
        }
        ob->head = it->next;
        if (!ob->head) ob->tail = NULL;
        if (it->type == SVH_MSG_METRICS)
            points += it->n;
        else if (it->type == SVH_MSG_FILE_CHUNK)
            chunks++;
        else if (it->type != SVH_MSG_HEARTBEAT && it->type != SVH_MSG_GOODBYE)
            controls++;
        item_free(it);
    }
    if (points || chunks || controls) {
        pthread_mutex_lock(&c->mu);
        c->sent_points += points;
        c->queued_points -= points;
        c->chunks_in_flight -= chunks;
        c->pending_controls -= controls < c->pending_controls ? controls : c->pending_controls;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
    }
    return rc;
}

static void outbox_append(outbox *ob, item *first, item *last) {
    if (!first) return;
    if (ob->tail)
        ob->tail->next = first;
    else
        ob->head = first;
    ob->tail = last;
}

/* ---------------------------------------------------------------------------------- receiving */
static void handle_reply(svh_client *c, svh_reply *r) {
    switch (r->type) {
    case SVH_MSG_GOODBYE_ACK:
        pthread_mutex_lock(&c->mu);
        c->acknowledged = 1;
        c->received_points = r->received_points;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        break;
    case SVH_MSG_FILE_REPLY: {
        int status = strcmp(r->status, "need") == 0     ? REPLY_NEED
                     : strcmp(r->status, "stored") == 0 ? REPLY_STORED
                                                        : REPLY_ERROR;
        pthread_mutex_lock(&c->mu);
        for (file_wait *w = c->waits; w; w = w->next) {
            if (strcmp(w->sha, r->sha256) != 0) continue;
            file_reply_entry *e = calloc(1, sizeof *e);
            if (e) {
                e->status = status;
                e->reason = r->reason;
                r->reason = NULL;
                if (status == REPLY_ERROR && (!e->reason || !*e->reason)) {
                    free(e->reason);
                    e->reason = dup_cstr(r->status);
                }
                if (w->last)
                    w->last->next = e;
                else
                    w->replies = e;
                w->last = e;
            }
            break;
        }
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        break;
    }
    case SVH_MSG_REJECT:
        warn(c, "the aggregator stopped taking data: %s", r->reason);
        pthread_mutex_lock(&c->mu);
        if (!c->detached) c->detached = dup_cstr(r->reason ? r->reason : "rejected");
        c->dropping = 1;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        break;
    case SVH_MSG_NOTICE:
        if (strcmp(r->kind, "abort") == 0) {
            pthread_mutex_lock(&c->mu);
            int first = !c->aborted;
            if (first) c->aborted = dup_cstr(*r->message ? r->message : "abort requested");
            pthread_cond_broadcast(&c->cv);
            pthread_mutex_unlock(&c->mu);
            if (first) {
                warn(c, "the run was aborted: %s", *r->message ? r->message : "abort requested");
                if (c->opt.terminate_on_abort) kill(getpid(), SIGTERM);
            }
        } else {
            warn(c, "aggregator notice (%s): %s", r->kind, r->message);
        }
        break;
    default:
        break;
    }
}

/* Reads one multipart message without blocking: 1 read, 0 nothing there, -1 error. */
static int recv_message(void *sock, zmq_msg_t *parts, size_t *nparts) {
    *nparts = 0;
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, *nparts ? 0 : ZMQ_DONTWAIT) < 0) {
            int e = zmq_errno();
            zmq_msg_close(&m);
            if (*nparts == 0 && (e == EAGAIN || e == EINTR)) return 0;
            for (size_t k = 0; k < *nparts; ++k) zmq_msg_close(&parts[k]);
            *nparts = 0;
            return -1;
        }
        int more = zmq_msg_more(&m);
        if (*nparts < MAX_REPLY_FRAMES)
            parts[(*nparts)++] = m;
        else
            zmq_msg_close(&m); /* too many frames: kept count is wrong on purpose, decoding fails */
        if (!more) return 1;
    }
}

static int decode_parts(zmq_msg_t *parts, size_t nparts, svh_reply *r, char *err, size_t errlen) {
    const void *frames[MAX_REPLY_FRAMES];
    size_t sizes[MAX_REPLY_FRAMES];
    for (size_t k = 0; k < nparts; ++k) {
        frames[k] = zmq_msg_data(&parts[k]);
        sizes[k] = zmq_msg_size(&parts[k]);
    }
    return svh_decode_reply(nparts, frames, sizes, r, err, errlen);
}

static void receive_all(svh_client *c) {
    zmq_msg_t parts[MAX_REPLY_FRAMES];
    size_t nparts;
    int rc;
    while ((rc = recv_message(c->sock, parts, &nparts)) == 1) {
        svh_reply r;
        char err[256];
        int d = decode_parts(parts, nparts, &r, err, sizeof err);
        for (size_t k = 0; k < nparts; ++k) zmq_msg_close(&parts[k]);
        if (d == -2) { /* another version: the aggregator's refusal (docs/protocol.md 6.1) */
            svh_reply fake;
            memset(&fake, 0, sizeof fake);
            fake.type = SVH_MSG_REJECT;
            fake.reason = err;
            handle_reply(c, &fake);
            continue;
        }
        if (d != 0) {
            warn(c, "undecodable message from the aggregator: %s", err);
            continue;
        }
        handle_reply(c, &r);
        svh_reply_free(&r);
    }
}

/* ---------------------------------------------------------------------------------- the I/O thread */
static item *new_item(int type) {
    item *it = calloc(1, sizeof *it);
    if (it) it->type = type;
    return it;
}

static item *goodbye_item(svh_client *c) { /* lock held */
    item *it = new_item(SVH_MSG_GOODBYE);
    if (!it) return NULL;
    size_t nd = 0;
    for (size_t k = 0; k < c->nnames; ++k) nd += c->dropped_by_name[k] > 0;
    const char **names = malloc((nd ? nd : 1) * sizeof *names);
    uint64_t *counts = malloc((nd ? nd : 1) * sizeof *counts);
    if (!names || !counts) {
        free(names);
        free(counts);
        free(it);
        return NULL;
    }
    nd = 0;
    for (size_t k = 0; k < c->nnames; ++k)
        if (c->dropped_by_name[k]) {
            names[nd] = c->names[k];
            counts[nd++] = c->dropped_by_name[k];
        }
    svh_enc_goodbye(&it->body, c->sent_points + c->queued_points, c->dropped_points, nd, names, counts);
    free(names);
    free(counts);
    if (it->body.failed) {
        item_free(it);
        return NULL;
    }
    return it;
}

static void *io_main(void *arg) {
    svh_client *c = (svh_client *)arg;
    zmq_pollitem_t items[2];
    memset(items, 0, sizeof items);
    items[0].socket = c->sock;
    items[0].events = ZMQ_POLLIN;
    items[1].fd = c->wake_r;
    items[1].events = ZMQ_POLLIN;
    outbox ob = {NULL, NULL};
    int64_t heartbeat_at = svh_monotonic_ms() + c->opt.heartbeat_interval_ms;
    int64_t flush_at = -1, close_deadline = -1;
    int goodbye_queued = 0, stalled = 0;
    const char *failure = NULL;

    for (;;) {
        int64_t now = svh_monotonic_ms();
        int64_t timeout = heartbeat_at - now;
        if (flush_at >= 0 && flush_at - now < timeout) timeout = flush_at - now;
        if (stalled && RETRY_MS < timeout) timeout = RETRY_MS;
        if (close_deadline >= 0 && close_deadline - now < timeout) timeout = close_deadline - now;
        if (timeout < 0) timeout = 0;
        if (zmq_poll(items, 2, (long)timeout) < 0 && zmq_errno() != EINTR) {
            failure = "polling the socket failed";
            break;
        }
        if (items[1].revents & ZMQ_POLLIN) {
            char drain[256];
            while (read(c->wake_r, drain, sizeof drain) > 0) {
            }
        }
        if (items[0].revents & ZMQ_POLLIN) receive_all(c);

        now = svh_monotonic_ms();
        pthread_mutex_lock(&c->mu);
        int closing = c->closing;
        if (c->n > 0) {
            if (flush_at < 0) flush_at = now + c->opt.flush_interval_ms;
            if (now >= flush_at || c->n >= (size_t)c->opt.batch_points || closing) {
                if (cut_batch(c) == 0) flush_at = -1;
            }
        } else {
            flush_at = -1;
        }
        if (closing && close_deadline < 0) close_deadline = now + c->close_timeout_ms;
        if (closing && !goodbye_queued && c->n == 0) {
            item *bye = goodbye_item(c);
            if (bye) {
                queue_append(c, bye);
                goodbye_queued = 1;
            }
        }
        item *first = c->qhead, *last = c->qtail;
        c->qhead = c->qtail = NULL;
        pthread_mutex_unlock(&c->mu);
        outbox_append(&ob, first, last);

        int p = pump(c, &ob);
        if (p < 0) {
            failure = "sending to the aggregator failed";
            break;
        }
        stalled = p == 1;
        if (now >= heartbeat_at) {
            heartbeat_at = now + c->opt.heartbeat_interval_ms;
            if (!ob.head && !closing) {
                item *hb = new_item(SVH_MSG_HEARTBEAT);
                if (hb) {
                    pthread_mutex_lock(&c->mu);
                    svh_enc_heartbeat(&hb->body, svh_time_ns(), c->sent_points, c->dropped_points);
                    pthread_mutex_unlock(&c->mu);
                    outbox_append(&ob, hb, hb);
                    p = pump(c, &ob);
                    if (p < 0) {
                        failure = "sending to the aggregator failed";
                        break;
                    }
                    stalled = p == 1;
                }
            }
        }
        pthread_mutex_lock(&c->mu);
        int finished = c->acknowledged || c->detached;
        pthread_mutex_unlock(&c->mu);
        if (finished) break;
        if (close_deadline >= 0 && svh_monotonic_ms() >= close_deadline) break; /* svh_close reports it */
    }

    /* What never left is freed; its points stay counted as queued (svh_close's warning names them). */
    while (ob.head) {
        item *it = ob.head;
        ob.head = it->next;
        item_free(it);
    }
    zmq_close(c->sock);
    c->sock = NULL;
    zmq_ctx_term(c->ctx);
    c->ctx = NULL;

    pthread_mutex_lock(&c->mu);
    if (failure && !c->detached) {
        c->detached = dup_cstr(failure);
        warn(c, "%s; the connection is closed", failure);
    }
    while (c->qhead) { /* queued after the last turn (a racing call): nothing will send it */
        item *it = c->qhead;
        c->qhead = it->next;
        item_free(it);
    }
    c->qtail = NULL;
    c->io_done = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* ---------------------------------------------------------------------------------- connect */
static void client_free(svh_client *c) {
    if (!c) return;
    if (c->sock) zmq_close(c->sock);
    if (c->ctx) zmq_ctx_term(c->ctx);
    if (c->wake_r >= 0) close(c->wake_r);
    if (c->wake_w >= 0) close(c->wake_w);
    while (c->qhead) {
        item *it = c->qhead;
        c->qhead = it->next;
        item_free(it);
    }
    for (size_t k = 0; k < c->nnames; ++k) free(c->names[k]);
    free(c->names);
    free(c->dropped_by_name);
    free(c->slots);
    free(c->remap);
    free(c->ids);
    free(c->steps);
    free(c->times);
    free(c->vals);
    free(c->endpoint);
    free(c->secret);
    free(c->run_id);
    free(c->run_name);
    free(c->detached);
    free(c->aborted);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static int set_nonblocking_cloexec(int fd) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
    int fd_flags = fcntl(fd, F_GETFD);
    if (fd_flags < 0 || fcntl(fd, F_SETFD, fd_flags | FD_CLOEXEC) < 0) return -1;
    return 0;
}

/* Sends the HELLO and waits for the WELCOME. 0, or an error code (svh_last_error set). */
/* The run's secret, "<token>:<server public key>:<client secret key>" with the keys in hex, carries the
 * CURVE keys the aggregator demands (simvue_hpc/transport.py): the connection is then encrypted and
 * authenticated at the handshake. A secret without keys connects in plaintext (an aggregator started
 * without keys). */
static int hex_key(const char *s, size_t n, uint8_t out[32]) {
    if (n != 64) return -1;
    for (size_t i = 0; i < 32; ++i) {
        int v = 0;
        for (int k = 0; k < 2; ++k) {
            char ch = s[2 * i + (size_t)k];
            int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                  : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
            if (d < 0) return -1;
            v = v * 16 + d;
        }
        out[i] = (uint8_t)v;
    }
    return 0;
}

static int set_curve_keys(void *sock, const char *secret) {
    const char *a = strchr(secret, ':');
    if (!a) return SVH_OK;
    const char *b = strchr(a + 1, ':');
    uint8_t server_public[32], client_secret[32];
    if (!b || hex_key(a + 1, (size_t)(b - a - 1), server_public) || hex_key(b + 1, strlen(b + 1), client_secret))
        return svh_set_error(SVH_EINVAL, "the run's secret holds malformed keys (SIMVUE_HPC_SECRET)");
    if (!zmq_has("curve"))
        return svh_set_error(SVH_EINVAL, "the run needs CURVE encryption but this libzmq was built without it");
    char z_secret[41], z_public[41];
    int rc = zmq_z85_encode(z_secret, client_secret, 32) && zmq_curve_public(z_public, z_secret) == 0 ? 0 : -1;
    if (rc == 0) rc = zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server_public, 32);
    if (rc == 0) rc = zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, z_public, 40);
    if (rc == 0) rc = zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, client_secret, 32);
    memset(client_secret, 0, sizeof client_secret);
    memset(z_secret, 0, sizeof z_secret);
    if (rc != 0) return svh_set_error(SVH_EIO, "cannot set the CURVE keys: %s", zmq_strerror(zmq_errno()));
    return SVH_OK;
}

static int handshake(svh_client *c, const char *client, size_t nred, const svh_reduction *red) {
    char host[256];
    if (gethostname(host, sizeof host) != 0) strcpy(host, "unknown");
    host[sizeof host - 1] = '\0';
    if (!svh_utf8_valid(host, strlen(host))) strcpy(host, "unknown");
    svh_buf body;
    svh_buf_init(&body);
    if (!client) client = svh_version();
    svh_enc_hello(&body, c->secret, c->opt.rank, c->opt.size, host, (int64_t)getpid(), client, nred, red);
    if (body.failed) {
        svh_buf_free(&body);
        return svh_set_error(SVH_ENOMEM, "out of memory");
    }
    uint8_t header[SVH_HEADER_SIZE];
    svh_header(header, SVH_MSG_HELLO, 0);
    const void *p[2] = {header, body.data};
    size_t len[2] = {SVH_HEADER_SIZE, body.len};
    int64_t deadline = svh_monotonic_ms() + c->opt.connect_timeout_ms;
    int s;
    while ((s = send_frames(c->sock, 2, p, len)) == 1) {
        if (svh_monotonic_ms() >= deadline) break;
        struct timespec ts = {0, RETRY_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
    svh_buf_free(&body);
    if (s < 0) return svh_set_error(SVH_EIO, "cannot send to the aggregator at %s: %s", c->endpoint,
                                    zmq_strerror(zmq_errno()));
    if (s == 1)
        return svh_set_error(SVH_ETIMEOUT, "no answer from the aggregator at %s within %d ms", c->endpoint,
                             c->opt.connect_timeout_ms);
    c->seq = 1;
    zmq_pollitem_t pi;
    memset(&pi, 0, sizeof pi);
    pi.socket = c->sock;
    pi.events = ZMQ_POLLIN;
    for (;;) {
        int64_t remaining = deadline - svh_monotonic_ms();
        if (remaining <= 0)
            return svh_set_error(SVH_ETIMEOUT, "no answer from the aggregator at %s within %d ms", c->endpoint,
                                 c->opt.connect_timeout_ms);
        int rc = zmq_poll(&pi, 1, (long)remaining);
        if (rc < 0) {
            if (zmq_errno() == EINTR) continue;
            return svh_set_error(SVH_EIO, "polling the socket failed: %s", zmq_strerror(zmq_errno()));
        }
        if (rc == 0) continue;
        zmq_msg_t parts[MAX_REPLY_FRAMES];
        size_t nparts;
        int got = recv_message(c->sock, parts, &nparts);
        if (got <= 0) continue;
        svh_reply r;
        char err[256];
        int d = decode_parts(parts, nparts, &r, err, sizeof err);
        for (size_t k = 0; k < nparts; ++k) zmq_msg_close(&parts[k]);
        if (d == -2) return svh_set_error(SVH_EREJECTED, "the aggregator at %s refused this rank: %s", c->endpoint, err);
        if (d != 0)
            return svh_set_error(SVH_EIO, "the aggregator at %s speaks another protocol: %s", c->endpoint, err);
        if (r.type == SVH_MSG_REJECT) {
            svh_set_error(SVH_EREJECTED, "the aggregator refused this rank: %s", r.reason);
            svh_reply_free(&r);
            return SVH_EREJECTED;
        }
        if (r.type == SVH_MSG_WELCOME) {
            if (r.rank < INT_MIN || r.rank > INT_MAX) {
                svh_reply_free(&r);
                return svh_set_error(SVH_EIO, "the aggregator assigned rank out of range");
            }
            c->rank = (int)r.rank;
            /* the aggregator's share of its message-rate budget: never flush more often than that */
            if (r.flush_interval > 0) {
                double ms = r.flush_interval * 1000.0;
                int welcome_ms = ms >= 3600000.0 ? 3600000 : (int)ms + ((double)(int)ms < ms); /* rounded up */
                if (welcome_ms > c->opt.flush_interval_ms) c->opt.flush_interval_ms = welcome_ms;
            }
            c->run_id = r.run_id;
            c->run_name = r.run_name;
            r.run_id = r.run_name = NULL;
            svh_reply_free(&r);
            return SVH_OK;
        }
        svh_reply_free(&r); /* anything else before the WELCOME is ignored */
    }
}

svh_client *svh_connect_opts(const svh_options *o) {
    if (!o) return svh_set_error(SVH_EINVAL, "svh_connect_opts: NULL options"), NULL;
    if (!o->endpoint || !*o->endpoint) return svh_set_error(SVH_EINVAL, "no endpoint given"), NULL;
    if (!o->secret) return svh_set_error(SVH_EINVAL, "no secret given"), NULL;
    if (!svh_utf8_valid(o->secret, strlen(o->secret)))
        return svh_set_error(SVH_EINVAL, "the secret is not valid UTF-8"), NULL;
    if (o->rank < -1) return svh_set_error(SVH_EINVAL, "rank must be >= 0, or -1 to be assigned one"), NULL;
    if (o->size < 0) return svh_set_error(SVH_EINVAL, "size must be >= 0"), NULL;
    if (o->connect_timeout_ms <= 0 || o->flush_interval_ms <= 0 || o->batch_points <= 0 ||
        o->max_buffered_points <= 0 || o->overflow_timeout_ms <= 0 || o->heartbeat_interval_ms <= 0 ||
        o->close_timeout_ms <= 0 || o->file_timeout_ms <= 0)
        return svh_set_error(SVH_EINVAL, "every timeout, interval and size in svh_options must be positive"), NULL;
    if ((long)o->batch_points > o->max_buffered_points)
        return svh_set_error(SVH_EINVAL, "batch_points must not exceed max_buffered_points"), NULL;
    if (o->overflow != SVH_OVERFLOW_BLOCK && o->overflow != SVH_OVERFLOW_DROP)
        return svh_set_error(SVH_EINVAL, "overflow must be SVH_OVERFLOW_BLOCK or SVH_OVERFLOW_DROP"), NULL;
    if (o->client && !svh_utf8_valid(o->client, strlen(o->client)))
        return svh_set_error(SVH_EINVAL, "the client string is not valid UTF-8"), NULL;
    svh_reduction *red = NULL;
    size_t nred = 0;
    char err[256];
    if (svh_parse_reductions(o->reductions, &red, &nred, err, sizeof err) != 0)
        return svh_set_error(SVH_EINVAL, "%s", err), NULL;

    svh_client *c = calloc(1, sizeof *c);
    if (!c) {
        free(red);
        return svh_set_error(SVH_ENOMEM, "out of memory"), NULL;
    }
    c->wake_r = c->wake_w = -1;
    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv, &ca);
    pthread_condattr_destroy(&ca);
    c->opt = *o;
    c->opt.reductions = NULL;
    c->opt.endpoint = c->opt.secret = NULL;
    c->rank = o->rank;
    c->endpoint = dup_cstr(o->endpoint);
    c->secret = dup_cstr(o->secret);
    c->opt.client = NULL; /* only the HELLO uses it, below */
    c->close_timeout_ms = o->close_timeout_ms;
    c->nslots = 64;
    c->slots = calloc(c->nslots, sizeof *c->slots);
    if (!c->endpoint || !c->secret || !c->slots) {
        free(red);
        client_free(c);
        return svh_set_error(SVH_ENOMEM, "out of memory"), NULL;
    }
    c->ctx = zmq_ctx_new();
    c->sock = c->ctx ? zmq_socket(c->ctx, ZMQ_DEALER) : NULL;
    if (!c->sock) {
        svh_set_error(SVH_EIO, "cannot create a ZeroMQ socket: %s", zmq_strerror(zmq_errno()));
        free(red);
        client_free(c);
        return NULL;
    }
    int hwm = SNDHWM, rcvhwm = RCVHWM, linger = 0;
    zmq_setsockopt(c->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(c->sock, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
    if (!is_relay_endpoint(c->endpoint) && set_curve_keys(c->sock, c->secret) != SVH_OK) {
        free(red);
        client_free(c);
        return NULL;
    }
    if (zmq_connect(c->sock, c->endpoint) != 0) {
        svh_set_error(SVH_EIO, "cannot connect to the aggregator at %s: %s", c->endpoint, zmq_strerror(zmq_errno()));
        free(red);
        client_free(c);
        return NULL;
    }
    int rc = handshake(c, o->client, nred, red);
    free(red);
    if (rc != SVH_OK) {
        client_free(c);
        return NULL;
    }
    int fds[2];
    if (pipe(fds) != 0) {
        svh_set_error(SVH_EIO, "cannot create a pipe: %s", strerror(errno));
        client_free(c);
        return NULL;
    }
    c->wake_r = fds[0];
    c->wake_w = fds[1];
    if (set_nonblocking_cloexec(c->wake_r) || set_nonblocking_cloexec(c->wake_w)) {
        svh_set_error(SVH_EIO, "cannot set up the wake-up pipe: %s", strerror(errno));
        client_free(c);
        return NULL;
    }
    if (pthread_create(&c->io, NULL, io_main, c) != 0) {
        svh_set_error(SVH_EIO, "cannot start the I/O thread");
        client_free(c);
        return NULL;
    }
    c->io_started = 1;
    return c;
}

svh_client *svh_connect_env_ex(int timeout_ms, const char *reductions, const char *client) {
    svh_options o;
    if (svh_options_init(&o) != SVH_OK || svh_options_from_env(&o) != SVH_OK) return NULL;
    if (timeout_ms >= 0) o.connect_timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
    o.reductions = reductions;
    o.client = client;
    return svh_connect_opts(&o);
}

svh_client *svh_connect_env(int timeout_ms) { return svh_connect_env_ex(timeout_ms, NULL, NULL); }

svh_client *svh_connect(const char *endpoint, const char *secret, int rank, int timeout_ms) {
    svh_options o;
    if (svh_options_init(&o) != SVH_OK) return NULL;
    o.endpoint = endpoint;
    o.secret = secret;
    o.rank = rank;
    if (timeout_ms >= 0) o.connect_timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
    return svh_connect_opts(&o);
}

/* ---------------------------------------------------------------------------------- logging */
static int grow_buffer(svh_client *c, size_t need) {
    if (need <= c->cap) return 0;
    size_t cap = c->cap ? c->cap : 256;
    while (cap < need) cap *= 2;
    uint32_t *ids = realloc(c->ids, cap * sizeof *ids);
    if (ids) c->ids = ids;
    int64_t *steps = realloc(c->steps, cap * sizeof *steps);
    if (steps) c->steps = steps;
    int64_t *times = realloc(c->times, cap * sizeof *times);
    if (times) c->times = times;
    double *vals = realloc(c->vals, cap * sizeof *vals);
    if (vals) c->vals = vals;
    if (!ids || !steps || !times || !vals) return -1;
    c->cap = cap;
    return 0;
}

static void count_dropped(svh_client *c, size_t n, const char **names) { /* lock held */
    for (size_t k = 0; k < n; ++k) {
        long id = intern(c, names[k]);
        if (id >= 0) c->dropped_by_name[id]++;
    }
    c->dropped_points += n;
}

/* The buffer is full (or dropping): wait or drop, per the policy. 1: room; 0: drop. Lock held. */
static int make_room(svh_client *c, size_t k) {
    uint64_t max = (uint64_t)c->opt.max_buffered_points;
    if (!c->dropping && c->opt.overflow == SVH_OVERFLOW_BLOCK) {
        int64_t deadline = svh_monotonic_ms() + c->opt.overflow_timeout_ms;
        while (c->n + c->queued_points + k > max) {
            if (c->io_done || c->detached || c->closing) break;
            if (wait_until(c, deadline) == ETIMEDOUT && c->n + c->queued_points + k > max) break;
        }
        if (c->n + c->queued_points + k <= max) return 1;
    }
    if (c->dropping && !c->detached && c->n + c->queued_points <= max / 2 && c->n + c->queued_points + k <= max) {
        c->dropping = 0;
        return 1;
    }
    if (!c->dropping)
        warn(c, "buffer full (%lu points); dropping points until it drains", (unsigned long)c->opt.max_buffered_points);
    c->dropping = 1;
    return 0;
}

int svh_log_many(svh_client *c, size_t n, const char **names, const double *values, int64_t step) {
    if (!c) return svh_set_error(SVH_EINVAL, "NULL handle");
    if (n && (!names || !values)) return svh_set_error(SVH_EINVAL, "NULL names or values");
    for (size_t k = 0; k < n; ++k) {
        if (!names[k]) return svh_set_error(SVH_EINVAL, "metric name %zu is NULL", k);
        if (!svh_metric_name_valid(names[k]))
            return svh_set_error(SVH_EINVAL,
                                 "metric name \"%s\" may only contain letters, digits, spaces and - _ / . : = > < + "
                                 "( ) %%",
                                 names[k]);
    }
    if (step == INT64_MAX) /* the aggregator's marker for "every step" */
        return svh_set_error(SVH_EINVAL, "step must be at most %" PRId64 " (int64), got %" PRId64, INT64_MAX - 1, step);
    int64_t t = svh_time_ns();
    int wake = 0;
    pthread_mutex_lock(&c->mu);
    if (step < 0 && c->next_step == INT64_MAX) {
        pthread_mutex_unlock(&c->mu);
        return svh_set_error(SVH_EINVAL, "the default step would pass the largest int64 step %" PRId64, INT64_MAX - 1);
    }
    if (c->closing) {
        pthread_mutex_unlock(&c->mu);
        return svh_set_error(SVH_ECLOSED, "this run is closed");
    }
    if (c->aborted) {
        pthread_mutex_unlock(&c->mu);
        return check_open(c);
    }
    if (c->detached || c->io_done) {
        count_dropped(c, n, names);
        int rc = check_open(c);
        pthread_mutex_unlock(&c->mu);
        return rc;
    }
    uint64_t max = (uint64_t)c->opt.max_buffered_points;
    if ((uint64_t)n > max) { /* can never fit */
        count_dropped(c, n, names);
        pthread_mutex_unlock(&c->mu);
        return SVH_DROPPED;
    }
    if (c->dropping || c->n + c->queued_points + n > max) {
        if (!make_room(c, n)) {
            count_dropped(c, n, names);
            pthread_mutex_unlock(&c->mu);
            return SVH_DROPPED;
        }
    }
    if (grow_buffer(c, c->n + n) != 0) {
        pthread_mutex_unlock(&c->mu);
        return svh_set_error(SVH_ENOMEM, "out of memory");
    }
    size_t n0 = c->n;
    for (size_t k = 0; k < n; ++k) {
        long id = intern(c, names[k]);
        if (id < 0) {
            c->n = n0; /* all or nothing */
            pthread_mutex_unlock(&c->mu);
            return svh_set_error(SVH_ENOMEM, "out of memory");
        }
        c->ids[c->n] = (uint32_t)id;
        c->vals[c->n] = values[k];
        c->n++;
    }
    if (step < 0) step = c->next_step;
    c->next_step = step + 1;
    for (size_t k = n0; k < c->n; ++k) {
        c->steps[k] = step;
        c->times[k] = t;
    }
    size_t batch = (size_t)c->opt.batch_points;
    if (n) {
        wake = !c->armed || (n0 < batch && c->n >= batch);
        c->armed = 1;
    }
    pthread_mutex_unlock(&c->mu);
    if (wake) wake_io(c);
    return SVH_OK;
}

int svh_log(svh_client *c, const char *name, double value, int64_t step) {
    return svh_log_many(c, 1, &name, &value, step);
}

/* ---------------------------------------------------------------------------------- control messages */
static int send_control(svh_client *c, item *it) {
    if (it->body.failed) {
        item_free(it);
        return svh_set_error(SVH_ENOMEM, "out of memory");
    }
    pthread_mutex_lock(&c->mu);
    int rc = check_open(c);
    if (rc == SVH_OK && c->pending_controls >= MAX_PENDING_CONTROLS)
        rc = svh_set_error(SVH_DROPPED, "%d control messages are waiting: the aggregator is not reading",
                           MAX_PENDING_CONTROLS);
    if (rc == SVH_OK) rc = queue_control(c, it);
    pthread_mutex_unlock(&c->mu);
    if (rc != SVH_OK) {
        item_free(it);
        return rc;
    }
    wake_io(c);
    return SVH_OK;
}

int svh_event_level(svh_client *c, const char *message, const char *level) {
    if (!c) return svh_set_error(SVH_EINVAL, "NULL handle");
    if (!message) return svh_set_error(SVH_EINVAL, "NULL message");
    if (!level) level = "info";
    if (strcmp(level, "info") && strcmp(level, "warning") && strcmp(level, "error") && strcmp(level, "critical"))
        return svh_set_error(SVH_EINVAL, "level must be info, warning, error or critical, not \"%s\"", level);
    if (!svh_utf8_valid(message, strlen(message))) return svh_set_error(SVH_EINVAL, "the message is not valid UTF-8");
    item *it = new_item(SVH_MSG_EVENT);
    if (!it) return svh_set_error(SVH_ENOMEM, "out of memory");
    svh_enc_event(&it->body, message, svh_time_ns(), level);
    return send_control(c, it);
}

int svh_event(svh_client *c, const char *message) { return svh_event_level(c, message, "info"); }

int svh_status(svh_client *c, const char *status, const char *reason) {
    if (!c) return svh_set_error(SVH_EINVAL, "NULL handle");
    if (!status || !*status) return svh_set_error(SVH_EINVAL, "no status given");
    if (!reason) reason = "";
    if (!svh_utf8_valid(status, strlen(status)) || !svh_utf8_valid(reason, strlen(reason)))
        return svh_set_error(SVH_EINVAL, "the status or reason is not valid UTF-8");
    item *it = new_item(SVH_MSG_STATUS);
    if (!it) return svh_set_error(SVH_ENOMEM, "out of memory");
    svh_enc_status(&it->body, status, reason);
    return send_control(c, it);
}

/* ---------------------------------------------------------------------------------- files */
/* The next FILE_REPLY for w, or an error code. Lock held. */
static int next_reply(svh_client *c, file_wait *w, int64_t deadline, file_reply_entry **out) {
    while (!w->replies) {
        if (c->detached) return svh_set_error(SVH_EREJECTED, "the aggregator stopped taking data: %s", c->detached);
        if (c->io_done) return svh_set_error(SVH_ECLOSED, "the connection to the aggregator has ended");
        if (wait_until(c, deadline) == ETIMEDOUT && !w->replies)
            return svh_set_error(SVH_ETIMEOUT, "no answer from the aggregator within %d ms", c->opt.file_timeout_ms);
    }
    *out = w->replies;
    w->replies = w->replies->next;
    if (!w->replies) w->last = NULL;
    return SVH_OK;
}

static int stream_file(svh_client *c, const char *path, const char *sha, uint64_t size, int64_t deadline) {
    FILE *fh = fopen(path, "rb");
    if (!fh) return svh_set_error(SVH_EIO, "cannot read %s: %s", path, strerror(errno));
    uint64_t offset = 0;
    int rc = SVH_OK;
    for (;;) {
        item *it = new_item(SVH_MSG_FILE_CHUNK);
        uint8_t *data = malloc(FILE_CHUNK_BYTES);
        if (!it || !data) {
            free(it);
            free(data);
            rc = svh_set_error(SVH_ENOMEM, "out of memory");
            break;
        }
        size_t n = fread(data, 1, FILE_CHUNK_BYTES, fh);
        if (ferror(fh)) {
            free(it);
            free(data);
            rc = svh_set_error(SVH_EIO, "cannot read %s", path);
            break;
        }
        int final = offset + n >= size || n == 0;
        it->payload = data;
        it->payload_len = n;
        svh_enc_file_chunk(&it->body, sha, offset, final);
        pthread_mutex_lock(&c->mu);
        while (c->chunks_in_flight >= FILE_CHUNKS_IN_FLIGHT && (rc = check_open(c)) == SVH_OK) {
            if (wait_until(c, deadline) == ETIMEDOUT && c->chunks_in_flight >= FILE_CHUNKS_IN_FLIGHT) {
                rc = svh_set_error(SVH_ETIMEOUT, "file %s: the aggregator did not take it within %d ms", path,
                                   c->opt.file_timeout_ms);
                break;
            }
        }
        if (rc == SVH_OK) rc = check_open(c);
        if (rc == SVH_OK && it->body.failed) rc = svh_set_error(SVH_ENOMEM, "out of memory");
        if (rc == SVH_OK) rc = queue_control(c, it);
        if (rc == SVH_OK) c->chunks_in_flight++;
        pthread_mutex_unlock(&c->mu);
        if (rc != SVH_OK) {
            item_free(it);
            break;
        }
        wake_io(c);
        offset += n;
        if (final) break;
    }
    fclose(fh);
    return rc;
}

int svh_save(svh_client *c, const char *path, const char *category) {
    if (!c) return svh_set_error(SVH_EINVAL, "NULL handle");
    if (!path || !*path) return svh_set_error(SVH_EINVAL, "no path given");
    if (!category || (strcmp(category, "input") && strcmp(category, "output") && strcmp(category, "code")))
        return svh_set_error(SVH_EINVAL, "category must be one of code, input, output, not \"%s\"",
                             category ? category : "(null)");
    char sha[65];
    uint64_t size;
    if (svh_sha256_file(path, sha, &size) != 0)
        return svh_set_error(SVH_EINVAL, "path \"%s\" is not a readable file: %s", path, strerror(errno));
    char *resolved = realpath(path, NULL);
    const char *original = resolved ? resolved : path;
    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    if (!*name || !svh_utf8_valid(original, strlen(original))) {
        free(resolved);
        return svh_set_error(SVH_EINVAL, "path \"%s\" is not a file name in UTF-8", path);
    }
    item *offer = new_item(SVH_MSG_FILE_OFFER);
    file_wait *w = calloc(1, sizeof *w);
    if (!offer || !w) {
        free(offer);
        free(w);
        free(resolved);
        return svh_set_error(SVH_ENOMEM, "out of memory");
    }
    memcpy(w->sha, sha, sizeof sha);
    svh_enc_file_offer(&offer->body, sha, size, name, category, original, svh_guess_mime(name), svh_time_ns());
    free(resolved);
    int64_t deadline = svh_monotonic_ms() + c->opt.file_timeout_ms;

    pthread_mutex_lock(&c->mu);
    int rc = check_open(c);
    if (rc == SVH_OK && offer->body.failed) rc = svh_set_error(SVH_ENOMEM, "out of memory");
    if (rc == SVH_OK) rc = queue_control(c, offer);
    if (rc != SVH_OK) {
        pthread_mutex_unlock(&c->mu);
        item_free(offer);
        free(w);
        return rc;
    }
    w->next = c->waits;
    c->waits = w;
    pthread_mutex_unlock(&c->mu);
    wake_io(c);

    for (;;) {
        file_reply_entry *e = NULL;
        pthread_mutex_lock(&c->mu);
        rc = next_reply(c, w, deadline, &e);
        pthread_mutex_unlock(&c->mu);
        if (rc != SVH_OK) break;
        int status = e->status;
        if (status == REPLY_ERROR)
            rc = svh_set_error(SVH_EREJECTED, "file \"%s\" was not stored: %s", name, e->reason ? e->reason : "error");
        free(e->reason);
        free(e);
        if (status != REPLY_NEED) break;
        rc = stream_file(c, path, sha, size, deadline);
        if (rc != SVH_OK) break;
    }

    pthread_mutex_lock(&c->mu);
    for (file_wait **pw = &c->waits; *pw; pw = &(*pw)->next)
        if (*pw == w) {
            *pw = w->next;
            break;
        }
    pthread_mutex_unlock(&c->mu);
    while (w->replies) {
        file_reply_entry *e = w->replies;
        w->replies = e->next;
        free(e->reason);
        free(e);
    }
    free(w);
    return rc;
}

/* ---------------------------------------------------------------------------------- close and queries */
int svh_close(svh_client *c, int timeout_ms) {
    if (!c) return svh_set_error(SVH_EINVAL, "NULL handle");
    pthread_mutex_lock(&c->mu);
    c->closing = 1;
    c->close_timeout_ms = timeout_ms < 0 ? c->opt.close_timeout_ms : timeout_ms;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (c->io_started) {
        wake_io(c);
        pthread_join(c->io, NULL); /* bounded: the I/O thread leaves by the close deadline */
    }
    int rc;
    if (c->acknowledged) {
        rc = SVH_OK;
    } else if (c->detached) {
        rc = svh_set_error(SVH_EREJECTED, "the connection had ended before the goodbye: %s", c->detached);
    } else {
        rc = svh_set_error(SVH_ETIMEOUT,
                           "the aggregator did not acknowledge the goodbye within %d ms; %llu point(s) sent or "
                           "queued may not have been stored",
                           c->close_timeout_ms, (unsigned long long)(c->sent_points + c->queued_points));
        warn(c, "%s", svh_last_error());
    }
    client_free(c);
    return rc;
}

const char *svh_abort_reason(svh_client *c) {
    if (!c) return NULL;
    pthread_mutex_lock(&c->mu);
    const char *reason = c->aborted;
    pthread_mutex_unlock(&c->mu);
    return reason;
}

int svh_rank(const svh_client *c) { return c ? c->rank : -1; }

const char *svh_run_id(const svh_client *c) { return c && c->run_id ? c->run_id : ""; }

const char *svh_run_name(const svh_client *c) { return c && c->run_name ? c->run_name : ""; }

void svh_counters(svh_client *c, uint64_t *sent, uint64_t *dropped, uint64_t *buffered) {
    if (!c) {
        if (sent) *sent = 0;
        if (dropped) *dropped = 0;
        if (buffered) *buffered = 0;
        return;
    }
    pthread_mutex_lock(&c->mu);
    if (sent) *sent = c->sent_points;
    if (dropped) *dropped = c->dropped_points;
    if (buffered) *buffered = c->n + c->queued_points;
    pthread_mutex_unlock(&c->mu);
}
