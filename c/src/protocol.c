/* The wire protocol's codec (docs/protocol.md): headers, message bodies, reply decoding.
 * Byte-identical with simvue_hpc/protocol.py for the same input (checked by the golden tests). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svh_internal.h"

/* ---------------------------------------------------------------------------------- header */
void svh_header(uint8_t h[SVH_HEADER_SIZE], int type, uint32_t seq) {
    h[0] = 'S';
    h[1] = 'V';
    h[2] = SVH_PROTOCOL_VERSION;
    h[3] = (uint8_t)type;
    h[4] = (uint8_t)(seq & 0xff);
    h[5] = (uint8_t)((seq >> 8) & 0xff);
    h[6] = (uint8_t)((seq >> 16) & 0xff);
    h[7] = (uint8_t)((seq >> 24) & 0xff);
}

int svh_header_parse(const void *frame, size_t len, int *type, uint32_t *seq) {
    const uint8_t *h = (const uint8_t *)frame;
    if (len != SVH_HEADER_SIZE || h[0] != 'S' || h[1] != 'V') return -1;
    if (h[2] != SVH_PROTOCOL_VERSION) return -2;
    if (h[3] < SVH_MSG_HELLO || h[3] > SVH_MSG_NOTICE) return -3;
    *type = h[3];
    *seq = (uint32_t)h[4] | ((uint32_t)h[5] << 8) | ((uint32_t)h[6] << 16) | ((uint32_t)h[7] << 24);
    return 0;
}

/* ---------------------------------------------------------------------------------- bodies */
static int done(svh_buf *b) { return b->failed ? -1 : 0; }

static void key(svh_buf *b, const char *k) { svh_mp_cstr(b, k); }

int svh_enc_hello(svh_buf *b, const char *secret, int64_t rank, int64_t size, const char *host, int64_t pid,
                  const char *client, size_t nreductions, const svh_reduction *reductions, int64_t start_time,
                  int64_t pid_ns) {
    svh_mp_map(b, 7 + (start_time != 0) + (pid_ns != 0));
    key(b, "secret"), svh_mp_cstr(b, secret);
    key(b, "rank"), svh_mp_int(b, rank);
    key(b, "size"), svh_mp_int(b, size);
    key(b, "host"), svh_mp_cstr(b, host);
    key(b, "pid"), svh_mp_int(b, pid);
    key(b, "client"), svh_mp_cstr(b, client);
    key(b, "reductions");
    svh_mp_map(b, (uint32_t)nreductions);
    for (size_t k = 0; k < nreductions; ++k) {
        svh_mp_cstr(b, reductions[k].name);
        svh_mp_array(b, (uint32_t)reductions[k].nops);
        for (size_t j = 0; j < reductions[k].nops; ++j) svh_mp_cstr(b, reductions[k].ops[j]);
    }
    if (start_time) key(b, "start_time"), svh_mp_int(b, start_time); /* omitted when unknown, as in Python */
    if (pid_ns) key(b, "pid_ns"), svh_mp_int(b, pid_ns);
    return done(b);
}

int svh_enc_metrics(svh_buf *b, size_t nnames, const char *const *names, uint64_t count) {
    svh_mp_map(b, 2);
    key(b, "names");
    svh_mp_array(b, (uint32_t)nnames);
    for (size_t k = 0; k < nnames; ++k) svh_mp_cstr(b, names[k]);
    key(b, "count"), svh_mp_uint(b, count);
    return done(b);
}

int svh_enc_event(svh_buf *b, const char *message, int64_t time_ns, const char *level) {
    svh_mp_map(b, 3);
    key(b, "message"), svh_mp_cstr(b, message);
    key(b, "time_ns"), svh_mp_int(b, time_ns);
    key(b, "level"), svh_mp_cstr(b, level ? level : "info");
    return done(b);
}

int svh_enc_file_offer(svh_buf *b, const char *sha256, uint64_t size, const char *name, const char *category,
                       const char *original_path, const char *mime_type, int64_t time_ns) {
    svh_mp_map(b, 7);
    key(b, "sha256"), svh_mp_cstr(b, sha256);
    key(b, "size"), svh_mp_uint(b, size);
    key(b, "name"), svh_mp_cstr(b, name);
    key(b, "category"), svh_mp_cstr(b, category);
    key(b, "original_path"), svh_mp_cstr(b, original_path);
    key(b, "mime_type"), svh_mp_cstr(b, mime_type);
    key(b, "time_ns"), svh_mp_int(b, time_ns);
    return done(b);
}

int svh_enc_file_chunk(svh_buf *b, const char *sha256, uint64_t offset, int final) {
    svh_mp_map(b, 3);
    key(b, "sha256"), svh_mp_cstr(b, sha256);
    key(b, "offset"), svh_mp_uint(b, offset);
    key(b, "final"), svh_mp_bool(b, final);
    return done(b);
}

int svh_enc_status(svh_buf *b, const char *status, const char *reason) {
    svh_mp_map(b, 2);
    key(b, "status"), svh_mp_cstr(b, status);
    key(b, "reason"), svh_mp_cstr(b, reason ? reason : "");
    return done(b);
}

int svh_enc_heartbeat(svh_buf *b, int64_t time_ns, uint64_t sent_points, uint64_t dropped_points) {
    svh_mp_map(b, 3);
    key(b, "time_ns"), svh_mp_int(b, time_ns);
    key(b, "sent_points"), svh_mp_uint(b, sent_points);
    key(b, "dropped_points"), svh_mp_uint(b, dropped_points);
    return done(b);
}

int svh_enc_goodbye(svh_buf *b, uint64_t sent_points, uint64_t dropped_points, size_t ndropped,
                    const char *const *names, const uint64_t *counts) {
    svh_mp_map(b, 3);
    key(b, "sent_points"), svh_mp_uint(b, sent_points);
    key(b, "dropped_points"), svh_mp_uint(b, dropped_points);
    key(b, "dropped");
    svh_mp_map(b, (uint32_t)ndropped);
    for (size_t k = 0; k < ndropped; ++k) {
        svh_mp_cstr(b, names[k]);
        svh_mp_uint(b, counts[k]);
    }
    return done(b);
}

int svh_enc_welcome(svh_buf *b, int64_t rank, const char *run_id, const char *run_name, double flush_interval) {
    svh_mp_map(b, 4);
    key(b, "rank"), svh_mp_int(b, rank);
    key(b, "run_id"), svh_mp_cstr(b, run_id);
    key(b, "run_name"), svh_mp_cstr(b, run_name);
    key(b, "flush_interval"), svh_mp_f64(b, flush_interval);
    return done(b);
}

int svh_enc_reject(svh_buf *b, const char *reason) {
    svh_mp_map(b, 1);
    key(b, "reason"), svh_mp_cstr(b, reason);
    return done(b);
}

int svh_enc_file_reply(svh_buf *b, const char *sha256, const char *status, const char *reason) {
    svh_mp_map(b, 3);
    key(b, "sha256"), svh_mp_cstr(b, sha256);
    key(b, "status"), svh_mp_cstr(b, status);
    key(b, "reason"), svh_mp_cstr(b, reason ? reason : "");
    return done(b);
}

int svh_enc_goodbye_ack(svh_buf *b, uint64_t received_points) {
    svh_mp_map(b, 1);
    key(b, "received_points"), svh_mp_uint(b, received_points);
    return done(b);
}

int svh_enc_notice(svh_buf *b, const char *kind, const char *message) {
    svh_mp_map(b, 2);
    key(b, "kind"), svh_mp_cstr(b, kind);
    key(b, "message"), svh_mp_cstr(b, message);
    return done(b);
}

/* ---------------------------------------------------------------------------------- columns */
int svh_host_is_little_endian(void) {
    const uint16_t one = 1;
    uint8_t first;
    memcpy(&first, &one, 1);
    return first == 1;
}

static void put_le(uint8_t *dst, const void *src, size_t n, size_t width) {
    if (n == 0) return;
    if (svh_host_is_little_endian()) {
        memcpy(dst, src, n * width);
        return;
    }
    const uint8_t *s = (const uint8_t *)src;
    for (size_t k = 0; k < n; ++k)
        for (size_t j = 0; j < width; ++j) dst[k * width + j] = s[k * width + width - 1 - j];
}

void svh_put_le_u32(uint8_t *dst, const uint32_t *src, size_t n) { put_le(dst, src, n, 4); }
void svh_put_le_i64(uint8_t *dst, const int64_t *src, size_t n) { put_le(dst, src, n, 8); }
void svh_put_le_f64(uint8_t *dst, const double *src, size_t n) { put_le(dst, src, n, 8); }

/* ---------------------------------------------------------------------------------- replies */
static int fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static char *dup_str(const svh_mp_obj *o) {
    char *s = malloc(o->len + 1);
    if (!s) return NULL;
    memcpy(s, o->s, o->len);
    s[o->len] = '\0';
    return s;
}

void svh_reply_free(svh_reply *r) {
    free(r->run_id);
    free(r->run_name);
    free(r->reason);
    free(r->sha256);
    free(r->status);
    free(r->kind);
    free(r->message);
    memset(r, 0, sizeof *r);
}

enum { F_STR, F_INT, F_UINT, F_SECONDS };

typedef struct field_spec {
    const char *name;
    int type;
    int required;
    char **str;
    int64_t *i64;
    uint64_t *u64;
    int seen;
    double *f64; /* F_SECONDS: a float or an int (never a bool), finite and >= 0 */
} field_spec;

static const char *type_name(int t) {
    static const char *names[] = {"WELCOME", "REJECT", "METRICS", "EVENT", "RUN_UPDATE", "FOLDER", "ALERT",
                                  "FILE_OFFER", "FILE_CHUNK", "FILE_REPLY", "STATUS", "HEARTBEAT", "GOODBYE",
                                  "GOODBYE_ACK", "NOTICE"};
    if (t == SVH_MSG_HELLO) return "HELLO";
    if (t >= SVH_MSG_WELCOME && t <= SVH_MSG_NOTICE) return names[t - SVH_MSG_WELCOME];
    return "?";
}

int svh_decode_reply(size_t nframes, const void *const *frames, const size_t *sizes, svh_reply *out, char *err,
                     size_t errlen) {
    memset(out, 0, sizeof *out);
    if (nframes < 2) return fail(err, errlen, "a message has at least 2 frames, got %zu", nframes);
    int type;
    uint32_t seq;
    int rc = svh_header_parse(frames[0], sizes[0], &type, &seq);
    if (rc == -2)
        return fail(err, errlen, "protocol version %u, this side speaks %d", ((const uint8_t *)frames[0])[2],
                    SVH_PROTOCOL_VERSION),
               -2;
    if (rc == -1) return fail(err, errlen, "bad header: not a simvue_hpc message");
    if (rc == -3) return fail(err, errlen, "unknown message type %u", ((const uint8_t *)frames[0])[3]);
    out->type = type;
    out->seq = seq;
    const char *tname = type_name(type);
    if (nframes != 2) return fail(err, errlen, "%s carries no payload frames, got %zu", tname, nframes - 2);

    field_spec f[4];
    size_t nf = 0;
    memset(f, 0, sizeof f);
    switch (type) {
    case SVH_MSG_WELCOME:
        f[nf++] = (field_spec){"rank", F_INT, 1, NULL, &out->rank, NULL, 0, NULL};
        f[nf++] = (field_spec){"run_id", F_STR, 1, &out->run_id, NULL, NULL, 0, NULL};
        f[nf++] = (field_spec){"run_name", F_STR, 1, &out->run_name, NULL, NULL, 0, NULL};
        f[nf++] = (field_spec){"flush_interval", F_SECONDS, 0, NULL, NULL, NULL, 0, &out->flush_interval};
        break;
    case SVH_MSG_REJECT:
        f[nf++] = (field_spec){"reason", F_STR, 1, &out->reason, NULL, NULL, 0, NULL};
        break;
    case SVH_MSG_FILE_REPLY:
        f[nf++] = (field_spec){"sha256", F_STR, 1, &out->sha256, NULL, NULL, 0, NULL};
        f[nf++] = (field_spec){"status", F_STR, 1, &out->status, NULL, NULL, 0, NULL};
        f[nf++] = (field_spec){"reason", F_STR, 0, &out->reason, NULL, NULL, 0, NULL};
        break;
    case SVH_MSG_GOODBYE_ACK:
        f[nf++] = (field_spec){"received_points", F_UINT, 1, NULL, NULL, &out->received_points, 0, NULL};
        break;
    case SVH_MSG_NOTICE:
        f[nf++] = (field_spec){"kind", F_STR, 1, &out->kind, NULL, NULL, 0, NULL};
        f[nf++] = (field_spec){"message", F_STR, 1, &out->message, NULL, NULL, 0, NULL};
        break;
    default:
        return fail(err, errlen, "%s is not a message the aggregator sends", tname);
    }

    svh_mp_reader r;
    svh_mp_obj o;
    svh_mp_reader_init(&r, frames[1], sizes[1]);
    if (svh_mp_next(&r, &o) != 0 || o.kind != SVH_MP_MAP) {
        svh_reply_free(out);
        return fail(err, errlen, "%s body must be a map", tname);
    }
    for (size_t k = 0; k < o.len; ++k) {
        svh_mp_obj kobj, v;
        if (svh_mp_next(&r, &kobj) != 0 || kobj.kind != SVH_MP_STR) {
            svh_reply_free(out);
            return fail(err, errlen, "%s body is not valid msgpack with str keys", tname);
        }
        field_spec *fs = NULL;
        for (size_t j = 0; j < nf; ++j)
            if (strlen(f[j].name) == kobj.len && memcmp(f[j].name, kobj.s, kobj.len) == 0) fs = &f[j];
        if (!fs) { /* unknown keys are ignored (section 4.1) */
            if (svh_mp_skip(&r) != 0) {
                svh_reply_free(out);
                return fail(err, errlen, "%s body is not valid msgpack", tname);
            }
            continue;
        }
        if (svh_mp_next(&r, &v) != 0) {
            svh_reply_free(out);
            return fail(err, errlen, "%s body is not valid msgpack", tname);
        }
        int ok = 0;
        if (fs->type == F_STR && v.kind == SVH_MP_STR) {
            free(*fs->str);
            *fs->str = dup_str(&v);
            ok = *fs->str != NULL;
        } else if (fs->type == F_INT && v.kind == SVH_MP_INT) {
            ok = svh_mp_as_i64(&v, fs->i64) == 0;
        } else if (fs->type == F_UINT && v.kind == SVH_MP_INT && !v.neg) {
            *fs->u64 = v.u;
            ok = 1;
        } else if (fs->type == F_SECONDS && (v.kind == SVH_MP_FLOAT || (v.kind == SVH_MP_INT && !v.neg))) {
            double s = v.kind == SVH_MP_FLOAT ? v.f : (double)v.u;
            ok = isfinite(s) && s >= 0;
            if (ok) *fs->f64 = s;
        }
        if (!ok) {
            svh_reply_free(out);
            return fail(err, errlen, "%s.%s has the wrong type or is out of range", tname, fs->name);
        }
        fs->seen = 1;
    }
    if (r.p != r.end) {
        svh_reply_free(out);
        return fail(err, errlen, "%s body has extra bytes after the map", tname);
    }
    for (size_t j = 0; j < nf; ++j) {
        if (f[j].seen) continue;
        if (f[j].required) {
            svh_reply_free(out);
            return fail(err, errlen, "%s lacks field %s", tname, f[j].name);
        }
        if (f[j].type == F_STR) {
            *f[j].str = calloc(1, 1);
            if (!*f[j].str) {
                svh_reply_free(out);
                return fail(err, errlen, "out of memory");
            }
        }
    }
    return 0;
}
