/* The client against a fake aggregator (a ROUTER in a thread of this test that checks everything it
 * receives): handshake, batching, call order, thread safety, automatic steps, heartbeats, files, the
 * overflow policies and their counters, the acknowledged goodbye, and every way the aggregator can
 * refuse, go silent or abort. Timing checks are generous: they catch hangs, not slowness. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "svh_internal.h"
#include "test_util.h"

enum {
    F_REJECT_HELLO = 1,
    F_BAD_VERSION = 2,
    F_NO_ACK = 4,
    F_REJECT_AFTER_METRICS = 8,
    F_ABORT_AFTER_WELCOME = 16,
};

typedef struct point {
    char name[48];
    int64_t step, time;
    double value;
} point;

typedef struct fake {
    pthread_t thread;
    pthread_mutex_t mu;
    void *ctx, *router;
    char endpoint[128];
    int mode;
    atomic_int paused, stop, file_error;
    uint8_t identity[256];
    size_t idlen;
    uint32_t out_seq, next_seq;
    int seq_errors, protocol_errors, messages;
    /* HELLO */
    int64_t hello_rank, hello_size, hello_start_time, hello_pid_ns;
    char client[128], reduction_t0[32];
    double welcome_flush; /* the WELCOME's flush_interval, seconds */
    /* data */
    point *points;
    size_t npoints, cap, metrics_messages, max_batch;
    int nevents;
    char events[16][128], levels[16][16];
    size_t points_at_event[16];
    char status[32];
    int heartbeats;
    uint64_t hb_sent, hb_dropped;
    int goodbyes;
    uint64_t bye_sent, bye_dropped, bye_dropped_o;
    int bye_ndropped;
    int rejected_after;
    /* files */
    char known[8][65];
    int nknown, offers, chunks, chunk_errors, last_final;
    size_t max_chunk, points_at_offer;
    char offer_sha[65], offer_name[256], offer_category[32], offer_mime[64], offer_path[1024];
    uint64_t offer_size;
    uint8_t *upload;
    uint64_t upload_len;
} fake;

/* ---------------------------------------------------------------------------------- body fields */
static int get_obj(const uint8_t *body, size_t len, const char *key, svh_mp_obj *o, svh_mp_reader *r) {
    if (svh_mp_find(body, len, key, r) != 1) return -1;
    return svh_mp_next(r, o);
}

static int get_str(const uint8_t *body, size_t len, const char *key, char *out, size_t cap) {
    svh_mp_obj o;
    svh_mp_reader r;
    if (get_obj(body, len, key, &o, &r) || o.kind != SVH_MP_STR) return -1;
    size_t n = o.len < cap - 1 ? o.len : cap - 1;
    memcpy(out, o.s, n);
    out[n] = '\0';
    return 0;
}

static int get_u64(const uint8_t *body, size_t len, const char *key, uint64_t *out) {
    svh_mp_obj o;
    svh_mp_reader r;
    if (get_obj(body, len, key, &o, &r) || o.kind != SVH_MP_INT || o.neg) return -1;
    *out = o.u;
    return 0;
}

static int get_i64(const uint8_t *body, size_t len, const char *key, int64_t *out) {
    svh_mp_obj o;
    svh_mp_reader r;
    if (get_obj(body, len, key, &o, &r)) return -1;
    return svh_mp_as_i64(&o, out);
}

static int get_bool(const uint8_t *body, size_t len, const char *key, int *out) {
    svh_mp_obj o;
    svh_mp_reader r;
    if (get_obj(body, len, key, &o, &r) || o.kind != SVH_MP_BOOL) return -1;
    *out = o.b;
    return 0;
}

/* ---------------------------------------------------------------------------------- the fake */
static void reply(fake *f, int type, svh_buf *b, int version) {
    uint8_t h[SVH_HEADER_SIZE];
    svh_header(h, type, f->out_seq++);
    h[2] = (uint8_t)version;
    zmq_send(f->router, f->identity, f->idlen, ZMQ_SNDMORE);
    zmq_send(f->router, h, sizeof h, ZMQ_SNDMORE);
    zmq_send(f->router, b->data, b->len, 0);
    svh_buf_free(b);
}

static void on_metrics(fake *f, const uint8_t *body, size_t len, size_t nextra, zmq_msg_t *extra) {
    uint64_t count;
    svh_mp_reader r;
    svh_mp_obj o;
    char names[64][48];
    size_t nnames = 0;
    if (get_u64(body, len, "count", &count) || svh_mp_find(body, len, "names", &r) != 1 || svh_mp_next(&r, &o) ||
        o.kind != SVH_MP_ARRAY || nextra != 4) {
        f->protocol_errors++;
        return;
    }
    for (size_t k = 0; k < o.len && k < 64; ++k) {
        svh_mp_obj s;
        if (svh_mp_next(&r, &s) || s.kind != SVH_MP_STR || s.len >= 48) {
            f->protocol_errors++;
            return;
        }
        memcpy(names[k], s.s, s.len);
        names[k][s.len] = '\0';
        nnames++;
    }
    size_t widths[4] = {4, 8, 8, 8};
    for (int k = 0; k < 4; ++k)
        if (zmq_msg_size(&extra[k]) != count * widths[k]) {
            f->protocol_errors++;
            return;
        }
    const uint8_t *ids = zmq_msg_data(&extra[0]), *steps = zmq_msg_data(&extra[1]), *times = zmq_msg_data(&extra[2]),
                  *vals = zmq_msg_data(&extra[3]);
    if (f->npoints + count > f->cap) {
        f->cap = (f->npoints + count) * 2;
        f->points = realloc(f->points, f->cap * sizeof *f->points);
    }
    for (size_t k = 0; k < count; ++k) { /* this test runs on little-endian hosts only (checked in main) */
        uint32_t id;
        point *p = &f->points[f->npoints++];
        memcpy(&id, ids + 4 * k, 4);
        memcpy(&p->step, steps + 8 * k, 8);
        memcpy(&p->time, times + 8 * k, 8);
        memcpy(&p->value, vals + 8 * k, 8);
        if (id >= nnames) {
            f->protocol_errors++;
            id = 0;
        }
        strcpy(p->name, nnames ? names[id] : "?");
    }
    f->metrics_messages++;
    if (count > f->max_batch) f->max_batch = count;
    if ((f->mode & F_REJECT_AFTER_METRICS) && !f->rejected_after) {
        f->rejected_after = 1;
        svh_buf b;
        svh_buf_init(&b);
        svh_enc_reject(&b, "the run is closed");
        reply(f, SVH_MSG_REJECT, &b, 1);
    }
}

static void on_file_offer(fake *f, const uint8_t *body, size_t len) {
    f->offers++;
    f->points_at_offer = f->npoints;
    get_str(body, len, "sha256", f->offer_sha, sizeof f->offer_sha);
    get_str(body, len, "name", f->offer_name, sizeof f->offer_name);
    get_str(body, len, "category", f->offer_category, sizeof f->offer_category);
    get_str(body, len, "mime_type", f->offer_mime, sizeof f->offer_mime);
    get_str(body, len, "original_path", f->offer_path, sizeof f->offer_path);
    get_u64(body, len, "size", &f->offer_size);
    svh_buf b;
    svh_buf_init(&b);
    int known = 0;
    for (int k = 0; k < f->nknown; ++k) known |= strcmp(f->known[k], f->offer_sha) == 0;
    if (atomic_load(&f->file_error))
        svh_enc_file_reply(&b, f->offer_sha, "error", "refused by the fake");
    else
        svh_enc_file_reply(&b, f->offer_sha, known ? "stored" : "need", "");
    free(f->upload);
    f->upload = NULL;
    f->upload_len = 0;
    reply(f, SVH_MSG_FILE_REPLY, &b, 1);
}

static void on_file_chunk(fake *f, const uint8_t *body, size_t len, size_t nextra, zmq_msg_t *extra) {
    char sha[65];
    uint64_t offset;
    int final;
    if (get_str(body, len, "sha256", sha, sizeof sha) || get_u64(body, len, "offset", &offset) ||
        get_bool(body, len, "final", &final) || nextra != 1) {
        f->protocol_errors++;
        return;
    }
    f->chunks++;
    f->last_final = final;
    size_t n = zmq_msg_size(&extra[0]);
    if (n > f->max_chunk) f->max_chunk = n;
    if (offset != f->upload_len || strcmp(sha, f->offer_sha) != 0) f->chunk_errors++;
    f->upload = realloc(f->upload, f->upload_len + n + 1);
    memcpy(f->upload + f->upload_len, zmq_msg_data(&extra[0]), n);
    f->upload_len += n;
    if (!final) return;
    svh_sha256 s;
    uint8_t d[32];
    char hex[65];
    svh_sha256_init(&s);
    svh_sha256_update(&s, f->upload, f->upload_len);
    svh_sha256_final(&s, d);
    svh_sha256_hex(d, hex);
    svh_buf b;
    svh_buf_init(&b);
    if (strcmp(hex, sha) == 0 && f->upload_len == f->offer_size) {
        if (f->nknown < 8) strcpy(f->known[f->nknown++], sha);
        svh_enc_file_reply(&b, sha, "stored", "");
    } else {
        f->chunk_errors++;
        svh_enc_file_reply(&b, sha, "error", "checksum mismatch");
    }
    reply(f, SVH_MSG_FILE_REPLY, &b, 1);
}

static void on_message(fake *f, size_t n, zmq_msg_t *parts) {
    f->messages++;
    int type;
    uint32_t seq;
    if (n < 3 || svh_header_parse(zmq_msg_data(&parts[1]), zmq_msg_size(&parts[1]), &type, &seq) != 0) {
        f->protocol_errors++;
        return;
    }
    const uint8_t *body = zmq_msg_data(&parts[2]);
    size_t len = zmq_msg_size(&parts[2]);
    size_t nextra = n - 3;
    if (type == SVH_MSG_HELLO) {
        f->idlen = zmq_msg_size(&parts[0]);
        memcpy(f->identity, zmq_msg_data(&parts[0]), f->idlen);
        if (seq != 0) f->seq_errors++;
        f->next_seq = 1;
        get_i64(body, len, "rank", &f->hello_rank);
        get_i64(body, len, "size", &f->hello_size);
        get_i64(body, len, "start_time", &f->hello_start_time);
        get_i64(body, len, "pid_ns", &f->hello_pid_ns);
        get_str(body, len, "client", f->client, sizeof f->client);
        svh_mp_reader r;
        svh_mp_obj o;
        if (svh_mp_find(body, len, "reductions", &r) == 1 && svh_mp_next(&r, &o) == 0 && o.kind == SVH_MP_MAP &&
            o.len == 1) {
            svh_mp_obj k, arr, op;
            if (svh_mp_next(&r, &k) == 0 && svh_mp_next(&r, &arr) == 0 && arr.len == 1 && svh_mp_next(&r, &op) == 0 &&
                k.kind == SVH_MP_STR && op.kind == SVH_MP_STR)
                snprintf(f->reduction_t0, sizeof f->reduction_t0, "%.*s=%.*s", (int)k.len, k.s, (int)op.len, op.s);
        }
        svh_buf b;
        svh_buf_init(&b);
        if (f->mode & (F_REJECT_HELLO | F_BAD_VERSION)) {
            svh_enc_reject(&b, "the fake says no");
            reply(f, SVH_MSG_REJECT, &b, (f->mode & F_BAD_VERSION) ? 2 : 1);
            return;
        }
        svh_enc_welcome(&b, f->hello_rank >= 0 ? f->hello_rank : 5, "fake-run-id", "fake-run", f->welcome_flush);
        reply(f, SVH_MSG_WELCOME, &b, 1);
        if (f->mode & F_ABORT_AFTER_WELCOME) {
            svh_buf_init(&b);
            svh_enc_notice(&b, "abort", "stop now");
            reply(f, SVH_MSG_NOTICE, &b, 1);
        }
        return;
    }
    if (seq != f->next_seq) f->seq_errors++;
    f->next_seq = seq + 1;
    switch (type) {
    case SVH_MSG_METRICS:
        on_metrics(f, body, len, nextra, parts + 3);
        break;
    case SVH_MSG_EVENT:
        if (f->nevents < 16) {
            get_str(body, len, "message", f->events[f->nevents], sizeof f->events[0]);
            get_str(body, len, "level", f->levels[f->nevents], sizeof f->levels[0]);
            f->points_at_event[f->nevents++] = f->npoints;
        }
        break;
    case SVH_MSG_STATUS:
        get_str(body, len, "status", f->status, sizeof f->status);
        break;
    case SVH_MSG_HEARTBEAT:
        f->heartbeats++;
        get_u64(body, len, "sent_points", &f->hb_sent);
        get_u64(body, len, "dropped_points", &f->hb_dropped);
        break;
    case SVH_MSG_FILE_OFFER:
        on_file_offer(f, body, len);
        break;
    case SVH_MSG_FILE_CHUNK:
        on_file_chunk(f, body, len, nextra, parts + 3);
        break;
    case SVH_MSG_GOODBYE: {
        f->goodbyes++;
        get_u64(body, len, "sent_points", &f->bye_sent);
        get_u64(body, len, "dropped_points", &f->bye_dropped);
        svh_mp_reader r;
        svh_mp_obj o;
        if (svh_mp_find(body, len, "dropped", &r) == 1 && svh_mp_next(&r, &o) == 0 && o.kind == SVH_MP_MAP) {
            f->bye_ndropped = (int)o.len;
            for (size_t k = 0; k < o.len; ++k) {
                svh_mp_obj key, v;
                svh_mp_next(&r, &key);
                svh_mp_next(&r, &v);
                if (key.len == 1 && key.s[0] == 'o') f->bye_dropped_o = v.u;
            }
        }
        if (!(f->mode & F_NO_ACK)) {
            svh_buf b;
            svh_buf_init(&b);
            svh_enc_goodbye_ack(&b, f->npoints);
            reply(f, SVH_MSG_GOODBYE_ACK, &b, 1);
        }
        break;
    }
    default:
        f->protocol_errors++;
    }
}

static void *fake_main(void *arg) {
    fake *f = arg;
    while (!atomic_load(&f->stop)) {
        if (atomic_load(&f->paused)) {
            struct timespec ts = {0, 2000000};
            nanosleep(&ts, NULL);
            continue;
        }
        zmq_pollitem_t pi = {f->router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&pi, 1, 10) <= 0) continue;
        zmq_msg_t parts[8];
        size_t n = 0;
        int more = 1;
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, f->router, 0) < 0) {
                zmq_msg_close(&m);
                break;
            }
            more = zmq_msg_more(&m);
            if (n < 8)
                parts[n++] = m;
            else
                zmq_msg_close(&m);
        }
        pthread_mutex_lock(&f->mu);
        on_message(f, n, parts);
        pthread_mutex_unlock(&f->mu);
        for (size_t k = 0; k < n; ++k) zmq_msg_close(&parts[k]);
    }
    return NULL;
}

/* A fake aggregator whose WELCOME carries flush_interval = welcome_flush seconds. */
static fake *fake_start_flush(int mode, double welcome_flush) {
    fake *f = calloc(1, sizeof *f);
    pthread_mutex_init(&f->mu, NULL);
    f->mode = mode;
    f->welcome_flush = welcome_flush;
    f->hello_rank = -99;
    f->ctx = zmq_ctx_new();
    f->router = zmq_socket(f->ctx, ZMQ_ROUTER);
    int linger = 0, rcvhwm = 10;
    zmq_setsockopt(f->router, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(f->router, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
    if (zmq_bind(f->router, "tcp://127.0.0.1:*") != 0) abort();
    size_t len = sizeof f->endpoint;
    zmq_getsockopt(f->router, ZMQ_LAST_ENDPOINT, f->endpoint, &len);
    pthread_create(&f->thread, NULL, fake_main, f);
    return f;
}

static fake *fake_start(int mode) { return fake_start_flush(mode, 0.0); }

static void fake_stop(fake *f) {
    atomic_store(&f->stop, 1);
    pthread_join(f->thread, NULL);
    zmq_close(f->router);
    zmq_ctx_term(f->ctx);
    free(f->points);
    free(f->upload);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Waits up to ms for cond (evaluated under the fake's lock). */
#define WAIT_FOR(f, cond, ms)                                              \
    do {                                                                   \
        int64_t until_ = svh_monotonic_ms() + (ms);                        \
        for (;;) {                                                         \
            pthread_mutex_lock(&(f)->mu);                                  \
            int ok_ = (cond);                                              \
            pthread_mutex_unlock(&(f)->mu);                                \
            if (ok_ || svh_monotonic_ms() > until_) break;                 \
            sleep_ms(2);                                                   \
        }                                                                  \
    } while (0)

static svh_options options(const fake *f) {
    svh_options o;
    svh_options_init(&o);
    o.endpoint = f->endpoint;
    o.secret = "s";
    o.connect_timeout_ms = 5000;
    return o;
}

/* Connects with o; on failure the check fails and the fake aggregator is stopped (the test returns). */
static svh_client *connect_or_stop(fake *f, const svh_options *o) {
    svh_client *h = svh_connect_opts(o);
    CHECK_MSG(h != NULL, "%s", svh_last_error());
    if (!h) fake_stop(f);
    return h;
}

/* ---------------------------------------------------------------------------------- tests */
typedef struct thread_arg {
    svh_client *h;
    int k;
    int failures;
} thread_arg;

static void *logger(void *p) {
    thread_arg *a = p;
    char name[16];
    snprintf(name, sizeof name, "t%d", a->k);
    for (int64_t step = 0; step < 2500; ++step)
        if (svh_log(a->h, name, a->k * 1000.0 + (double)step, step) != SVH_OK) a->failures++;
    return NULL;
}

static void test_basic(void) {
    fake *f = fake_start(0);
    svh_options o = options(f);
    o.reductions = "t0=sum";
    svh_client *h = connect_or_stop(f, &o);
    if (!h) return;
    CHECK(svh_rank(h) == 5);
    CHECK(strcmp(svh_run_id(h), "fake-run-id") == 0 && strcmp(svh_run_name(h), "fake-run") == 0);
    pthread_mutex_lock(&f->mu);
    CHECK(f->hello_rank == -1 && f->hello_size == 0);
    {   /* the HELLO says when this process started and in which pid namespace: its own /proc entries */
        char stat_line[1024] = "";
        FILE *fh = fopen("/proc/self/stat", "r");
        size_t got = fh ? fread(stat_line, 1, sizeof stat_line - 1, fh) : 0;
        if (fh) fclose(fh);
        stat_line[got] = '\0';
        const char *after = strrchr(stat_line, ')');
        long long want = -1;
        int field = 2;
        for (const char *q = after; q && *q && field < 22; ++q)
            if (*q == ' ' && ++field == 22) want = atoll(q + 1);
        struct stat ns;
        CHECK(stat("/proc/self/ns/pid", &ns) == 0);
        CHECK_MSG(f->hello_start_time == want && want > 0, "start_time %lld, /proc says %lld",
                  (long long)f->hello_start_time, want);
        CHECK(f->hello_pid_ns == (int64_t)ns.st_ino);
    }
    CHECK(strcmp(f->client, "simvue_hpc-c " SVH_VERSION) == 0);
    CHECK(strcmp(f->reduction_t0, "t0=sum") == 0);
    pthread_mutex_unlock(&f->mu);

    pthread_t threads[4];
    thread_arg args[4];
    for (int k = 0; k < 4; ++k) {
        args[k] = (thread_arg){h, k, 0};
        pthread_create(&threads[k], NULL, logger, &args[k]);
    }
    for (int k = 0; k < 4; ++k) {
        pthread_join(threads[k], NULL);
        CHECK(args[k].failures == 0);
    }
    const char *names[3] = {"m.a", "m.b", "m.c"};
    double values[3] = {1.0, 2.0, 3.0};
    CHECK(svh_log_many(h, 3, names, values, -1) == SVH_OK); /* one more than the last step, 2499 */
    CHECK(svh_log(h, "m.auto", 4.0, -1) == SVH_OK);
    CHECK(svh_event(h, "hello ü") == SVH_OK);
    CHECK(svh_event_level(h, "careful", "warning") == SVH_OK);
    CHECK(svh_event_level(h, "x", "loud") == SVH_EINVAL);
    CHECK(svh_event(h, "\xff") == SVH_EINVAL);
    CHECK(svh_status(h, "running", NULL) == SVH_OK);
    CHECK(svh_log(h, "bad,name", 1.0, 0) == SVH_EINVAL);
    CHECK(strstr(svh_last_error(), "bad,name") != NULL);
    const char *mixed[2] = {"ok.name", "bad;"};
    CHECK(svh_log_many(h, 2, mixed, values, 0) == SVH_EINVAL); /* all or nothing */
    CHECK(svh_log(h, NULL, 1.0, 0) == SVH_EINVAL);
    CHECK(svh_log(NULL, "x", 1.0, 0) == SVH_EINVAL);
    CHECK(svh_log(h, "m.auto", 1.0, INT64_MAX) == SVH_EINVAL); /* the aggregator's "every step" marker */
    CHECK(strstr(svh_last_error(), "int64") != NULL);
    uint64_t sent, dropped, buffered;
    svh_counters(h, &sent, &dropped, &buffered);
    CHECK(sent + buffered == 10004 && dropped == 0);
    CHECK(svh_close(h, 5000) == SVH_OK);

    pthread_mutex_lock(&f->mu);
    CHECK_MSG(f->npoints == 10004, "%zu points", f->npoints);
    CHECK(f->seq_errors == 0 && f->protocol_errors == 0);
    int bad = 0;
    int64_t next[4] = {0, 0, 0, 0};
    for (size_t k = 0; k < f->npoints; ++k) {
        point *p = &f->points[k];
        if (p->name[0] == 't') {
            int t = p->name[1] - '0';
            bad += p->step != next[t] || p->value != t * 1000.0 + (double)p->step;
            next[t] = p->step + 1;
        } else if (strcmp(p->name, "m.auto") == 0) {
            bad += p->step != 2501 || p->value != 4.0;
        } else {
            bad += p->name[0] != 'm' || p->step != 2500;
        }
    }
    CHECK_MSG(bad == 0, "%d points wrong", bad);
    CHECK(next[0] == 2500 && next[1] == 2500 && next[2] == 2500 && next[3] == 2500);
    CHECK_MSG(f->metrics_messages < 1000 && f->max_batch <= 4096, "%zu METRICS messages, largest %zu",
              f->metrics_messages, f->max_batch);
    CHECK(f->nevents == 2);
    CHECK(strcmp(f->events[0], "hello ü") == 0 && strcmp(f->levels[0], "info") == 0);
    CHECK(strcmp(f->events[1], "careful") == 0 && strcmp(f->levels[1], "warning") == 0);
    CHECK_MSG(f->points_at_event[0] == 10004, "event after %zu points", f->points_at_event[0]); /* call order */
    CHECK(strcmp(f->status, "running") == 0);
    CHECK(f->goodbyes == 1 && f->bye_sent == 10004 && f->bye_dropped == 0 && f->bye_ndropped == 0);
    pthread_mutex_unlock(&f->mu);
    fake_stop(f);
}

static void test_timing_heartbeats_rank(void) {
    fake *f = fake_start(0);
    svh_options o = options(f);
    o.heartbeat_interval_ms = 100;
    o.rank = 3;
    o.size = 4;
    svh_client *h = connect_or_stop(f, &o);
    if (!h) return;
    CHECK(svh_rank(h) == 3);
    CHECK(svh_log(h, "one", 1.5, 7) == SVH_OK);
    WAIT_FOR(f, f->npoints == 1, 2000); /* leaves within the flush interval, no batch needed */
    pthread_mutex_lock(&f->mu);
    CHECK(f->hello_rank == 3 && f->hello_size == 4);
    CHECK(f->npoints == 1 && f->metrics_messages == 1);
    CHECK(f->npoints == 1 && f->points[0].step == 7 && f->points[0].value == 1.5);
    int64_t age = svh_time_ns() - (f->npoints ? f->points[0].time : 0);
    CHECK_MSG(age >= 0 && age < 5000000000LL, "time_ns %lld ns ago", (long long)age);
    pthread_mutex_unlock(&f->mu);
    CHECK(svh_log(h, "one", 2.5, -1) == SVH_OK); /* step 8 */
    WAIT_FOR(f, f->heartbeats >= 2 && f->hb_sent == 2, 3000);
    pthread_mutex_lock(&f->mu);
    CHECK_MSG(f->heartbeats >= 2 && f->hb_sent == 2 && f->hb_dropped == 0, "%d heartbeats, sent %llu", f->heartbeats,
              (unsigned long long)f->hb_sent);
    CHECK(f->npoints == 2 && f->points[1].step == 8);
    pthread_mutex_unlock(&f->mu);
    CHECK(svh_close(h, 5000) == SVH_OK);
    fake_stop(f);
}

/* The WELCOME's flush_interval (the aggregator's message budget) makes the client send METRICS at most
 * that often, although its own flush interval is shorter; a shorter one than the client's own is not
 * taken (the client never sends more often than it was configured to). */
static void test_welcome_flush_interval(void) {
    for (int shorter = 0; shorter < 2; ++shorter) {
        fake *f = fake_start_flush(0, shorter ? 0.001 : 0.25);
        svh_options o = options(f);
        o.flush_interval_ms = shorter ? 200 : 10;
        svh_client *h = connect_or_stop(f, &o);
        if (!h) return;
        int64_t t0 = svh_monotonic_ms();
        for (int64_t step = 0; step < 120; ++step) {
            CHECK(svh_log(h, "x", (double)step, step) == SVH_OK);
            sleep_ms(5);
        }
        WAIT_FOR(f, f->npoints == 120, 5000);
        int64_t elapsed = svh_monotonic_ms() - t0;
        pthread_mutex_lock(&f->mu);
        /* at most one message per interval (plus the first and the last): an upper bound that a slow
         * machine only loosens, since elapsed grows with it */
        size_t bound = (size_t)(elapsed / (shorter ? 200 : 250)) + 2;
        CHECK_MSG(f->npoints == 120 && f->metrics_messages <= bound, "%zu points in %zu METRICS messages in %lld ms",
                  f->npoints, f->metrics_messages, (long long)elapsed);
        pthread_mutex_unlock(&f->mu);
        CHECK(svh_close(h, 5000) == SVH_OK);
        fake_stop(f);
    }
}

static void write_file(const char *path, size_t n) {
    FILE *fh = fopen(path, "wb");
    for (size_t k = 0; k < n; ++k) fputc((int)((k * 2654435761u) >> 13) & 0xff, fh);
    fclose(fh);
}

static void test_files(void) {
    fake *f = fake_start(0);
    svh_options o = options(f);
    svh_client *h = connect_or_stop(f, &o);
    if (!h) return;
    char dir[] = "/tmp/svh_files_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char big[256], empty[256], small[256];
    snprintf(big, sizeof big, "%s/big.bin", dir);
    snprintf(empty, sizeof empty, "%s/empty.txt", dir);
    snprintf(small, sizeof small, "%s/small.json", dir);
    size_t big_size = (5u << 19) + 17; /* 2.5 MiB + 17 */
    write_file(big, big_size);
    write_file(empty, 0);
    write_file(small, 100);
    char sha[65];
    uint64_t size;
    svh_sha256_file(big, sha, &size);

    CHECK(svh_log(h, "before", 1.0, 0) == SVH_OK);
    CHECK_MSG(svh_save(h, big, "output") == SVH_OK, "%s", svh_last_error());
    pthread_mutex_lock(&f->mu);
    CHECK(f->offers == 1 && f->chunks == 3 && f->chunk_errors == 0 && f->last_final);
    CHECK(f->max_chunk == (1u << 20));
    CHECK(f->upload_len == big_size && strcmp(f->offer_sha, sha) == 0 && f->offer_size == big_size);
    CHECK(strcmp(f->offer_name, "big.bin") == 0 && strcmp(f->offer_category, "output") == 0);
    CHECK(strcmp(f->offer_mime, "application/octet-stream") == 0 && f->offer_path[0] == '/');
    CHECK(strstr(f->offer_path, "/big.bin") != NULL);
    CHECK(f->points_at_offer == 1); /* the point logged before the save went first */
    pthread_mutex_unlock(&f->mu);

    CHECK(svh_save(h, big, "output") == SVH_OK); /* already held: no bytes sent */
    pthread_mutex_lock(&f->mu);
    CHECK(f->offers == 2 && f->chunks == 3);
    pthread_mutex_unlock(&f->mu);
    CHECK(svh_save(h, empty, "input") == SVH_OK); /* one empty final chunk */
    pthread_mutex_lock(&f->mu);
    CHECK(f->offers == 3 && f->chunks == 4 && f->upload_len == 0 && f->last_final && f->chunk_errors == 0);
    CHECK(strcmp(f->offer_mime, "text/plain") == 0);
    pthread_mutex_unlock(&f->mu);
    CHECK(svh_save(h, "/nonexistent/file", "output") == SVH_EINVAL);
    CHECK(svh_save(h, small, "results") == SVH_EINVAL);
    atomic_store(&f->file_error, 1);
    CHECK(svh_save(h, small, "code") == SVH_EREJECTED);
    CHECK(strstr(svh_last_error(), "refused by the fake") != NULL);
    atomic_store(&f->file_error, 0);
    CHECK(svh_save(h, small, "code") == SVH_OK);
    CHECK(svh_close(h, 5000) == SVH_OK);
    pthread_mutex_lock(&f->mu);
    CHECK(f->seq_errors == 0 && f->protocol_errors == 0);
    pthread_mutex_unlock(&f->mu);
    fake_stop(f);
    unlink(big);
    unlink(empty);
    unlink(small);
    rmdir(dir);
}

/* Logs "o" = step at step 0, 1, ... until `stop_after` drops (or a limit); returns the number logged. */
static int64_t flood(svh_client *h, int64_t stop_after, int64_t *drops, int64_t *max_call_ms, int64_t *first_drop_ms) {
    *drops = 0;
    *max_call_ms = 0;
    *first_drop_ms = -1;
    int64_t step = 0, limit_ms = svh_monotonic_ms() + 30000;
    for (; *drops < stop_after && svh_monotonic_ms() < limit_ms; ++step) {
        int64_t t0 = svh_monotonic_ms();
        int rc = svh_log(h, "o", (double)step, step);
        int64_t took = svh_monotonic_ms() - t0;
        if (took > *max_call_ms) *max_call_ms = took;
        if (rc == SVH_DROPPED) {
            if (*first_drop_ms < 0) *first_drop_ms = took;
            (*drops)++;
        } else if (rc != SVH_OK) {
            CHECK_MSG(0, "svh_log: %d %s", rc, svh_last_error());
            break;
        }
    }
    return step;
}

static void check_flood_end(fake *f, svh_client *h, int64_t logged, int64_t drops) {
    uint64_t sent, dropped, buffered;
    svh_counters(h, &sent, &dropped, &buffered);
    CHECK_MSG(dropped == (uint64_t)drops, "counted %llu, returned %lld", (unsigned long long)dropped, (long long)drops);
    atomic_store(&f->paused, 0);
    int64_t t0 = svh_monotonic_ms();
    CHECK_MSG(svh_close(h, 20000) == SVH_OK, "%s", svh_last_error());
    printf("  logged %lld, dropped %lld, close took %lld ms\n", (long long)logged, (long long)drops,
           (long long)(svh_monotonic_ms() - t0));
    pthread_mutex_lock(&f->mu);
    CHECK(f->seq_errors == 0 && f->protocol_errors == 0);
    CHECK_MSG(f->bye_dropped == (uint64_t)drops && f->bye_dropped_o == (uint64_t)drops && f->bye_ndropped == 1,
              "goodbye says %llu dropped", (unsigned long long)f->bye_dropped);
    CHECK_MSG(f->bye_sent == f->npoints && f->npoints + (uint64_t)drops == (uint64_t)logged,
              "goodbye sent %llu, received %zu, dropped %lld, logged %lld", (unsigned long long)f->bye_sent,
              f->npoints, (long long)drops, (long long)logged);
    int64_t last = -1;
    int bad = 0;
    for (size_t k = 0; k < f->npoints; ++k) { /* in order, none twice, values intact */
        bad += f->points[k].step <= last || f->points[k].value != (double)f->points[k].step;
        last = f->points[k].step;
    }
    CHECK_MSG(bad == 0, "%d points out of order or wrong", bad);
    pthread_mutex_unlock(&f->mu);
}

static void test_overflow_drop(void) {
    fake *f = fake_start(0);
    svh_options o = options(f);
    o.max_buffered_points = 1000;
    o.batch_points = 100;
    o.overflow = SVH_OVERFLOW_DROP;
    svh_client *h = connect_or_stop(f, &o);
    if (!h) return;
    atomic_store(&f->paused, 1); /* the aggregator stops reading */
    int64_t drops, max_call, first_drop;
    int64_t logged = flood(h, 5000, &drops, &max_call, &first_drop);
    CHECK_MSG(drops == 5000, "only %lld drops", (long long)drops);
    CHECK_MSG(max_call < 1000, "a log call took %lld ms under overflow=drop", (long long)max_call);
    check_flood_end(f, h, logged, drops);
    fake_stop(f);
}

static void test_overflow_block(void) {
    fake *f = fake_start(0);
    svh_options o = options(f);
    o.max_buffered_points = 1000;
    o.batch_points = 100;
    o.overflow = SVH_OVERFLOW_BLOCK;
    o.overflow_timeout_ms = 300;
    svh_client *h = connect_or_stop(f, &o);
    if (!h) return;
    atomic_store(&f->paused, 1);
    int64_t drops, max_call, first_drop;
    int64_t logged = flood(h, 2000, &drops, &max_call, &first_drop);
    /* the first drop waited overflow_timeout, the following ones did not wait at all */
    CHECK_MSG(first_drop >= 250 && first_drop < 2000, "first drop after %lld ms", (long long)first_drop);
    CHECK_MSG(max_call < 2000, "a log call took %lld ms", (long long)max_call);
    int64_t t0 = svh_monotonic_ms();
    int rc = svh_log(h, "o", (double)logged, logged);
    CHECK(rc == SVH_DROPPED && svh_monotonic_ms() - t0 < 200);
    logged++;
    drops++;
    check_flood_end(f, h, logged, drops);
    fake_stop(f);
}

typedef struct resumer_arg {
    fake *f;
    svh_client *h;
} resumer_arg;

/* Once the client's buffer has stayed full for 200 ms (its logger is blocked: ZeroMQ and the kernel
 * take nothing more), waits 300 ms more and resumes the fake. */
static void *resume_later(void *arg) {
    resumer_arg *a = arg;
    int64_t limit = svh_monotonic_ms() + 15000, full_since = -1;
    while (svh_monotonic_ms() < limit) {
        uint64_t buffered;
        sleep_ms(5);
        svh_counters(a->h, NULL, NULL, &buffered);
        if (buffered < 1000)
            full_since = -1;
        else if (full_since < 0)
            full_since = svh_monotonic_ms();
        else if (svh_monotonic_ms() - full_since >= 200)
            break;
    }
    sleep_ms(300);
    atomic_store(&a->f->paused, 0);
    return NULL;
}

static void test_block_then_recover(void) {
    /* The aggregator stops reading for less than overflow_timeout: log calls wait, nothing is dropped. */
    fake *f = fake_start(0);
    svh_options o = options(f);
    o.max_buffered_points = 1000;
    o.batch_points = 100;
    o.overflow_timeout_ms = 10000;
    svh_client *h = connect_or_stop(f, &o);
    if (!h) return;
    atomic_store(&f->paused, 1);
    pthread_t resumer;
    resumer_arg ra = {f, h};
    pthread_create(&resumer, NULL, resume_later, &ra);
    int64_t step = 0, max_call = 0, after = 0, limit = svh_monotonic_ms() + 20000;
    int rc = SVH_OK;
    while (rc == SVH_OK && after < 5000 && svh_monotonic_ms() < limit) {
        int64_t c0 = svh_monotonic_ms();
        rc = svh_log(h, "o", (double)step, step);
        step++;
        if (svh_monotonic_ms() - c0 > max_call) max_call = svh_monotonic_ms() - c0;
        if (!atomic_load(&f->paused)) after++;
    }
    pthread_join(resumer, NULL);
    CHECK_MSG(rc == SVH_OK, "%d %s", rc, svh_last_error());
    CHECK_MSG(max_call >= 150 && max_call < 5000, "the longest call waited %lld ms", (long long)max_call);
    uint64_t dropped;
    svh_counters(h, NULL, &dropped, NULL);
    CHECK(dropped == 0);
    CHECK(svh_close(h, 10000) == SVH_OK);
    pthread_mutex_lock(&f->mu);
    CHECK_MSG(f->npoints == (size_t)step && f->bye_dropped == 0 && f->seq_errors == 0, "%zu of %lld", f->npoints,
              (long long)step);
    pthread_mutex_unlock(&f->mu);
    fake_stop(f);
}

static void test_close_without_ack(void) {
    fake *f = fake_start(F_NO_ACK);
    svh_options o = options(f);
    svh_client *h = connect_or_stop(f, &o);
    if (!h) return;
    for (int k = 0; k < 10; ++k) svh_log(h, "x", k, k);
    int64_t t0 = svh_monotonic_ms();
    CHECK(svh_close(h, 300) == SVH_ETIMEOUT);
    int64_t took = svh_monotonic_ms() - t0;
    CHECK_MSG(took >= 250 && took < 2000, "close took %lld ms", (long long)took);
    CHECK(strstr(svh_last_error(), "did not acknowledge") != NULL);
    pthread_mutex_lock(&f->mu);
    CHECK(f->goodbyes == 1 && f->npoints == 10 && f->bye_sent == 10);
    pthread_mutex_unlock(&f->mu);
    fake_stop(f);
}

static void test_refusals(void) {
    fake *f = fake_start(F_REJECT_HELLO);
    svh_options o = options(f);
    int64_t t0 = svh_monotonic_ms();
    CHECK(svh_connect_opts(&o) == NULL);
    CHECK(svh_last_error_code() == SVH_EREJECTED && strstr(svh_last_error(), "the fake says no") != NULL);
    CHECK(svh_monotonic_ms() - t0 < 2000);
    fake_stop(f);

    f = fake_start(F_BAD_VERSION);
    o = options(f);
    CHECK(svh_connect_opts(&o) == NULL);
    CHECK_MSG(svh_last_error_code() == SVH_EREJECTED && strstr(svh_last_error(), "protocol version 2") != NULL, "%s",
              svh_last_error());
    fake_stop(f);

    /* REJECT after the WELCOME: the rank stops sending and says so */
    f = fake_start(F_REJECT_AFTER_METRICS);
    o = options(f);
    svh_client *h = svh_connect_opts(&o);
    CHECK_MSG(h != NULL, "%s", svh_last_error());
    if (h) {
        CHECK(svh_log(h, "x", 1.0, 0) == SVH_OK);
        int rc = SVH_OK;
        for (int k = 1; k < 500 && rc == SVH_OK; ++k) {
            sleep_ms(5);
            rc = svh_log(h, "x", 1.0, k);
        }
        CHECK(rc == SVH_EREJECTED && strstr(svh_last_error(), "the run is closed") != NULL);
        CHECK(svh_event(h, "late") == SVH_EREJECTED);
        uint64_t dropped;
        svh_counters(h, NULL, &dropped, NULL);
        CHECK(dropped >= 1); /* counted, not silently lost */
        t0 = svh_monotonic_ms();
        CHECK(svh_close(h, 5000) == SVH_EREJECTED);
        CHECK(svh_monotonic_ms() - t0 < 1000);
    }
    fake_stop(f);

    /* the aggregator aborts the run */
    f = fake_start(F_ABORT_AFTER_WELCOME);
    o = options(f);
    h = svh_connect_opts(&o);
    CHECK_MSG(h != NULL, "%s", svh_last_error());
    if (h) {
        int rc = SVH_OK;
        for (int k = 0; k < 500 && rc == SVH_OK; ++k) {
            rc = svh_log(h, "x", 1.0, k);
            if (rc == SVH_OK) sleep_ms(5);
        }
        CHECK(rc == SVH_EABORTED && strstr(svh_last_error(), "stop now") != NULL);
        CHECK(svh_abort_reason(h) && strcmp(svh_abort_reason(h), "stop now") == 0);
        CHECK(svh_event(h, "x") == SVH_EABORTED);
        CHECK(svh_close(h, 5000) == SVH_OK); /* the goodbye is still acknowledged */
    }
    fake_stop(f);
}

/* SIMVUE_HPC_HIERARCHY: the node's relay instead of the aggregator, named as relay/placement.py names it */
static void test_env_hierarchy(void) {
    svh_options o;
    char want[512];
    setenv("SIMVUE_HPC_ENDPOINT", "tcp://127.0.0.1:1", 1);
    setenv("SIMVUE_HPC_SECRET", "s", 1);
    setenv("TMPDIR", "/tmp/svh-hier-test", 1);
    setenv("SIMVUE_HPC_NODE", "node 7/a", 1);
    setenv("SIMVUE_HPC_RUN_ID", "run1", 1);
    setenv("SIMVUE_HPC_HIERARCHY", "flat", 1);
    CHECK(svh_options_from_env(&o) == SVH_OK && strcmp(o.endpoint, "tcp://127.0.0.1:1") == 0);
    setenv("SIMVUE_HPC_HIERARCHY", "node", 1);
    snprintf(want, sizeof want, "ipc:///tmp/svh-hier-test/simvue_hpc-run1-node_7_a.sock");
    CHECK_MSG(svh_options_from_env(&o) == SVH_OK && strcmp(o.endpoint, want) == 0, "%s", o.endpoint);
    setenv("SIMVUE_HPC_HIERARCHY", "auto", 1); /* no relay socket there: the aggregator */
    CHECK(svh_options_from_env(&o) == SVH_OK && strcmp(o.endpoint, "tcp://127.0.0.1:1") == 0);
    setenv("SIMVUE_HPC_HIERARCHY", "tree", 1);
    CHECK(svh_options_from_env(&o) == SVH_EINVAL && strstr(svh_last_error(), "SIMVUE_HPC_HIERARCHY") != NULL);
    setenv("SIMVUE_HPC_HIERARCHY", "node", 1);
    unsetenv("SIMVUE_HPC_RUN_ID");
    CHECK(svh_options_from_env(&o) == SVH_EINVAL && strstr(svh_last_error(), "SIMVUE_HPC_RUN_ID") != NULL);
    const char *vars[] = {"SIMVUE_HPC_HIERARCHY", "SIMVUE_HPC_NODE", "TMPDIR", "SIMVUE_HPC_ENDPOINT", "SIMVUE_HPC_SECRET"};
    for (size_t k = 0; k < sizeof vars / sizeof *vars; ++k) unsetenv(vars[k]);
}

static void test_env_rank(void) {
    svh_options o;
    setenv("SIMVUE_HPC_ENDPOINT", "tcp://127.0.0.1:1", 1);
    setenv("SIMVUE_HPC_SECRET", "s", 1);
    setenv("PMI_RANK", "2", 1);
    setenv("PMI_SIZE", "4", 1);
    unsetenv("SIMVUE_HPC_OWNER"); /* a Python parent hosts the run: it is rank 0, this one is assigned */
    CHECK(svh_options_from_env(&o) == SVH_OK && o.rank == -1 && o.size == 0);
    setenv("SIMVUE_HPC_OWNER", "parent", 1);
    CHECK(svh_options_from_env(&o) == SVH_OK && o.rank == -1);
    setenv("SIMVUE_HPC_OWNER", "sidecar", 1); /* `simvue-hpc run`: the launcher's rank */
    CHECK(svh_options_from_env(&o) == SVH_OK && o.rank == 2 && o.size == 4);
    setenv("OMPI_COMM_WORLD_RANK", "1", 1);
    setenv("OMPI_COMM_WORLD_SIZE", "3", 1);
    CHECK(svh_options_from_env(&o) == SVH_OK && o.rank == 1 && o.size == 3);
    setenv("OMPI_COMM_WORLD_RANK", "5", 1);
    CHECK(svh_options_from_env(&o) == SVH_EINVAL);
    setenv("OMPI_COMM_WORLD_RANK", "x", 1);
    CHECK(svh_options_from_env(&o) == SVH_EINVAL);
    unsetenv("OMPI_COMM_WORLD_RANK");
    unsetenv("OMPI_COMM_WORLD_SIZE");
    unsetenv("PMI_RANK");
    unsetenv("PMI_SIZE");
    setenv("SLURM_PROCID", "7", 1);
    setenv("SLURM_NTASKS", "8", 1);
    CHECK(svh_options_from_env(&o) == SVH_OK && o.rank == 7 && o.size == 8);
    unsetenv("SLURM_PROCID");
    CHECK(svh_options_from_env(&o) == SVH_OK && o.rank == -1);
    unsetenv("SLURM_NTASKS");
    unsetenv("SIMVUE_HPC_OWNER");
    unsetenv("SIMVUE_HPC_ENDPOINT");
    unsetenv("SIMVUE_HPC_SECRET");

    setenv("SIMVUE_HPC_FLUSH_INTERVAL", "0.05", 1);
    setenv("SIMVUE_HPC_HEARTBEAT_INTERVAL", "0.5", 1);
    setenv("SIMVUE_HPC_MAX_BUFFERED_POINTS", "5000", 1);
    setenv("SIMVUE_HPC_OVERFLOW", "drop", 1);
    CHECK(svh_options_init(&o) == SVH_OK);
    CHECK(o.flush_interval_ms == 50 && o.heartbeat_interval_ms == 500 && o.max_buffered_points == 5000);
    CHECK(o.overflow == SVH_OVERFLOW_DROP && o.batch_points == 4096 && o.close_timeout_ms == 60000);
    setenv("SIMVUE_HPC_HEARTBEAT_INTERVAL", "-1", 1);
    CHECK(svh_options_init(&o) == SVH_EINVAL);
    unsetenv("SIMVUE_HPC_FLUSH_INTERVAL");
    unsetenv("SIMVUE_HPC_HEARTBEAT_INTERVAL");
    unsetenv("SIMVUE_HPC_MAX_BUFFERED_POINTS");
    unsetenv("SIMVUE_HPC_OVERFLOW");
}

int main(void) {
    if (!svh_host_is_little_endian()) {
        printf("test_client: the fake aggregator reads columns natively; skipped on big-endian hosts\n");
        return 0;
    }
    const char *vars[] = {"SIMVUE_HPC_FLUSH_INTERVAL", "SIMVUE_HPC_BATCH_POINTS", "SIMVUE_HPC_MAX_BUFFERED_POINTS",
                          "SIMVUE_HPC_OVERFLOW", "SIMVUE_HPC_OVERFLOW_TIMEOUT", "SIMVUE_HPC_HEARTBEAT_INTERVAL",
                          "SIMVUE_HPC_CLOSE_TIMEOUT", "SIMVUE_HPC_CONNECT_TIMEOUT", "SIMVUE_HPC_FILE_TIMEOUT",
                          "SIMVUE_HPC_ON_ABORT", "SIMVUE_HPC_OWNER"};
    for (size_t k = 0; k < sizeof vars / sizeof *vars; ++k) unsetenv(vars[k]);
    struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {
        {"basic", test_basic},
        {"timing, heartbeats, rank", test_timing_heartbeats_rank},
        {"welcome flush interval", test_welcome_flush_interval},
        {"files", test_files},
        {"overflow drop", test_overflow_drop},
        {"overflow block", test_overflow_block},
        {"block then recover", test_block_then_recover},
        {"close without ack", test_close_without_ack},
        {"refusals", test_refusals},
        {"environment", test_env_rank},
        {"hierarchy", test_env_hierarchy},
    };
    for (size_t k = 0; k < sizeof tests / sizeof *tests; ++k) {
        int before = t_failures;
        int64_t t0 = svh_monotonic_ms();
        tests[k].fn();
        printf("%s: %s (%lld ms)\n", tests[k].name, t_failures == before ? "ok" : "FAILED",
               (long long)(svh_monotonic_ms() - t0));
        fflush(stdout);
    }
    return t_report("test_client");
}
