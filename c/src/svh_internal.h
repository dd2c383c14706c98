/*
 * Internals of libsimvue_hpc: the msgpack subset, the protocol codec, SHA-256 and helpers.
 *
 * Not part of the public API. The functions are hidden in the shared library and visible in the
 * static one, which the unit tests (c/tests) link against.
 */
#ifndef SVH_INTERNAL_H
#define SVH_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "simvue_hpc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------- message types */
enum svh_msg_type {
    SVH_MSG_HELLO = 1,
    SVH_MSG_WELCOME = 2,
    SVH_MSG_REJECT = 3,
    SVH_MSG_METRICS = 4,
    SVH_MSG_EVENT = 5,
    SVH_MSG_RUN_UPDATE = 6,
    SVH_MSG_FOLDER = 7,
    SVH_MSG_ALERT = 8,
    SVH_MSG_FILE_OFFER = 9,
    SVH_MSG_FILE_CHUNK = 10,
    SVH_MSG_FILE_REPLY = 11,
    SVH_MSG_STATUS = 12,
    SVH_MSG_HEARTBEAT = 13,
    SVH_MSG_GOODBYE = 14,
    SVH_MSG_GOODBYE_ACK = 15,
    SVH_MSG_NOTICE = 16
};

#define SVH_HEADER_SIZE 8

/* ---------------------------------------------------------------------------------- byte buffer */
typedef struct svh_buf {
    uint8_t *data;
    size_t len, cap;
    int failed; /* an allocation failed: the content is incomplete */
} svh_buf;

void svh_buf_init(svh_buf *b);
void svh_buf_free(svh_buf *b);
void svh_buf_put(svh_buf *b, const void *p, size_t n);

/* ---------------------------------------------------------------------------------- msgpack writer
 * Exactly the rules of docs/protocol.md 4.2 (= msgpack.packb(..., use_bin_type=True)): smallest
 * encodings, non-negative integers always unsigned, str8 used, floats always float64. */
void svh_mp_map(svh_buf *b, uint32_t n);
void svh_mp_array(svh_buf *b, uint32_t n);
void svh_mp_str(svh_buf *b, const char *s, size_t len);
void svh_mp_cstr(svh_buf *b, const char *s);
void svh_mp_bin(svh_buf *b, const void *p, size_t len);
void svh_mp_uint(svh_buf *b, uint64_t v);
void svh_mp_int(svh_buf *b, int64_t v);
void svh_mp_f64(svh_buf *b, double v);
void svh_mp_nil(svh_buf *b);
void svh_mp_bool(svh_buf *b, int v);

/* ---------------------------------------------------------------------------------- msgpack reader */
enum svh_mp_kind {
    SVH_MP_NIL = 1,
    SVH_MP_BOOL,
    SVH_MP_INT,   /* neg ? value is i : value is u */
    SVH_MP_FLOAT,
    SVH_MP_STR,   /* s, len (bytes, not NUL-terminated, valid UTF-8) */
    SVH_MP_BIN,   /* s, len */
    SVH_MP_ARRAY, /* len items follow */
    SVH_MP_MAP,   /* len key/value pairs follow */
    SVH_MP_EXT
};

typedef struct svh_mp_obj {
    int kind;
    int b;       /* BOOL */
    int neg;     /* INT: negative */
    uint64_t u;  /* INT, non-negative */
    int64_t i;   /* INT, negative */
    double f;    /* FLOAT */
    const char *s;
    size_t len;
} svh_mp_obj;

typedef struct svh_mp_reader {
    const uint8_t *p, *end;
    int err;
} svh_mp_reader;

void svh_mp_reader_init(svh_mp_reader *r, const void *data, size_t len);
/* Reads one value's head (a container's header only). 0, or -1 on malformed input or invalid UTF-8. */
int svh_mp_next(svh_mp_reader *r, svh_mp_obj *o);
/* Skips one whole value (containers recursively). 0 or -1. */
int svh_mp_skip(svh_mp_reader *r);
/* Finds `key` in the map that is the whole of body (the value's position in *r). 1 found, 0 not, -1 bad. */
int svh_mp_find(const void *body, size_t len, const char *key, svh_mp_reader *r);
/* An INT as int64 (0 ok, -1 out of range or not an int). */
int svh_mp_as_i64(const svh_mp_obj *o, int64_t *out);

/* ---------------------------------------------------------------------------------- header */
void svh_header(uint8_t out[SVH_HEADER_SIZE], int type, uint32_t seq);
/* 0 ok; -1 wrong size or magic; -2 another protocol version; -3 unknown type code. */
int svh_header_parse(const void *frame, size_t len, int *type, uint32_t *seq);

/* ---------------------------------------------------------------------------------- bodies
 * Each writes the body map of one message into b (appending), keys in the order of
 * docs/protocol.md; returns 0, or -1 if b->failed. */
typedef struct svh_reduction {
    const char *name;
    size_t nops;
    const char *const *ops;
} svh_reduction;

/* start_time (clock ticks since boot, /proc/self/stat field 22) and pid_ns (inode of /proc/self/ns/pid) let
 * the aggregator tell at once that a rank on its own host is gone; 0 = unknown, then not written. */
int svh_enc_hello(svh_buf *b, const char *secret, int64_t rank, int64_t size, const char *host, int64_t pid,
                  const char *client, size_t nreductions, const svh_reduction *reductions, int64_t start_time,
                  int64_t pid_ns);
int svh_enc_metrics(svh_buf *b, size_t nnames, const char *const *names, uint64_t count);
int svh_enc_event(svh_buf *b, const char *message, int64_t time_ns, const char *level);
int svh_enc_file_offer(svh_buf *b, const char *sha256, uint64_t size, const char *name, const char *category,
                       const char *original_path, const char *mime_type, int64_t time_ns);
int svh_enc_file_chunk(svh_buf *b, const char *sha256, uint64_t offset, int final);
int svh_enc_status(svh_buf *b, const char *status, const char *reason);
int svh_enc_heartbeat(svh_buf *b, int64_t time_ns, uint64_t sent_points, uint64_t dropped_points);
int svh_enc_goodbye(svh_buf *b, uint64_t sent_points, uint64_t dropped_points, size_t ndropped,
                    const char *const *names, const uint64_t *counts);
/* The aggregator's messages (for tests that play the aggregator). */
int svh_enc_welcome(svh_buf *b, int64_t rank, const char *run_id, const char *run_name, double flush_interval);
int svh_enc_reject(svh_buf *b, const char *reason);
int svh_enc_file_reply(svh_buf *b, const char *sha256, const char *status, const char *reason);
int svh_enc_goodbye_ack(svh_buf *b, uint64_t received_points);
int svh_enc_notice(svh_buf *b, const char *kind, const char *message);

/* Metric columns as little-endian bytes (a copy; a byte swap on big-endian hosts). */
void svh_put_le_u32(uint8_t *dst, const uint32_t *src, size_t n);
void svh_put_le_i64(uint8_t *dst, const int64_t *src, size_t n);
void svh_put_le_f64(uint8_t *dst, const double *src, size_t n);
int svh_host_is_little_endian(void);

/* ---------------------------------------------------------------------------------- replies */
typedef struct svh_reply {
    int type;
    uint32_t seq;
    int64_t rank;             /* WELCOME */
    double flush_interval;    /* WELCOME: seconds, finite and >= 0 (0 if absent: the rank's own default) */
    uint64_t received_points; /* GOODBYE_ACK */
    char *run_id, *run_name;  /* WELCOME */
    char *reason;             /* REJECT, FILE_REPLY ("" if absent) */
    char *sha256, *status;    /* FILE_REPLY */
    char *kind, *message;     /* NOTICE */
} svh_reply;

/* Decodes an aggregator-to-rank message (WELCOME, REJECT, FILE_REPLY, GOODBYE_ACK, NOTICE) with the
 * rules of docs/protocol.md 4.1. 0 ok; -2 another protocol version; -1 anything else wrong (err says
 * what). The reply's strings are allocated: svh_reply_free. */
int svh_decode_reply(size_t nframes, const void *const *frames, const size_t *sizes, svh_reply *out, char *err,
                     size_t errlen);
void svh_reply_free(svh_reply *r);

/* ---------------------------------------------------------------------------------- SHA-256 */
typedef struct svh_sha256 {
    uint32_t h[8];
    uint64_t bytes;
    uint8_t block[64];
    size_t fill;
} svh_sha256;

void svh_sha256_init(svh_sha256 *s);
void svh_sha256_update(svh_sha256 *s, const void *data, size_t len);
void svh_sha256_final(svh_sha256 *s, uint8_t digest[32]);
void svh_sha256_hex(const uint8_t digest[32], char hex[65]);
/* SHA-256 (hex) and size of a file; 0 or -1 with errno set. */
int svh_sha256_file(const char *path, char hex[65], uint64_t *size);

/* ---------------------------------------------------------------------------------- helpers */
int svh_utf8_valid(const char *s, size_t len);
int svh_metric_name_valid(const char *name);
int64_t svh_time_ns(void);     /* wall clock, ns since the Unix epoch */
int64_t svh_monotonic_ms(void);
/* Parses the reductions string of svh_options; *out is one allocation to free(). 0 or -1 (err). */
int svh_parse_reductions(const char *spec, svh_reduction **out, size_t *n, char *err, size_t errlen);
/* The MIME type guessed from a file name's extension ("application/octet-stream" if unknown). */
const char *svh_guess_mime(const char *name);
/* Sets this thread's last error (printf-like) and returns code. */
int svh_set_error(int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#ifdef __cplusplus
}
#endif

#endif /* SVH_INTERNAL_H */
