/* The C encoder against the golden frames of the Python encoder (tests/data/golden, written by
 * tests/data/make_golden.py): for the same input, byte-identical frames. The inputs below are those of
 * make_golden.CASES, in the same order. Also: msgpack boundary encodings, the reply decoder (golden
 * frames, unknown keys, wrong types), headers, the reductions string, UTF-8 and metric names.
 *
 *     test_encoder GOLDEN_DIR */
#include <math.h>

#include "svh_internal.h"
#include "test_util.h"

static const char *golden_dir;
static const int64_t T = 1700000000123456789LL;
static char SHA_HELLO[65];

/* ---------------------------------------------------------------------------------- building frames */
static void message(t_frames *f, int type, uint32_t seq, const svh_buf *body) {
    uint8_t h[SVH_HEADER_SIZE];
    svh_header(h, type, seq);
    memset(f, 0, sizeof *f);
    t_frames_add(f, h, sizeof h);
    t_frames_add(f, body->data, body->len);
}

static void check_golden(const char *name, t_frames *got) {
    t_frames want;
    if (t_read_golden(golden_dir, name, &want) != 0) {
        t_checks++;
        t_failures++;
        fprintf(stderr, "%s: golden file missing\n", name);
    } else {
        t_check_frames(name, &want, got);
    }
    t_frames_free(&want);
    t_frames_free(got);
}

/* A METRICS message exactly as the client builds it (body, then the four little-endian columns). */
static void check_metrics(const char *name, uint32_t seq, size_t nnames, const char *const *names, size_t n,
                          const uint32_t *ids, const int64_t *steps, const int64_t *times, const double *vals) {
    svh_buf b;
    svh_buf_init(&b);
    CHECK(svh_enc_metrics(&b, nnames, names, n) == 0);
    t_frames f;
    message(&f, SVH_MSG_METRICS, seq, &b);
    uint8_t *col = malloc(8 * n + 1);
    svh_put_le_u32(col, ids, n);
    t_frames_add(&f, col, 4 * n);
    svh_put_le_i64(col, steps, n);
    t_frames_add(&f, col, 8 * n);
    svh_put_le_i64(col, times, n);
    t_frames_add(&f, col, 8 * n);
    svh_put_le_f64(col, vals, n);
    t_frames_add(&f, col, 8 * n);
    free(col);
    svh_buf_free(&b);
    check_golden(name, &f);
}

static void check_body(const char *name, int type, uint32_t seq, svh_buf *b, const void *payload, size_t len,
                       int has_payload) {
    CHECK(!b->failed);
    t_frames f;
    message(&f, type, seq, b);
    if (has_payload) t_frames_add(&f, payload, len);
    svh_buf_free(b);
    check_golden(name, &f);
}

static double from_bits(uint64_t bits) {
    double d;
    memcpy(&d, &bits, 8);
    return d;
}

static char *repeat(const char *s, int times) {
    size_t n = strlen(s);
    char *out = malloc(n * (size_t)times + 1);
    for (int k = 0; k < times; ++k) memcpy(out + n * (size_t)k, s, n);
    out[n * (size_t)times] = '\0';
    return out;
}

/* ---------------------------------------------------------------------------------- golden: rank -> aggregator */
static void golden_rank_messages(void) {
    svh_buf b;

    svh_buf_init(&b);
    svh_enc_hello(&b, "k3y", 0, 2, "n1", 4242, "c 1", 0, NULL, 0, 0);
    check_body("hello_spec", SVH_MSG_HELLO, 0, &b, NULL, 0, 0);

    svh_reduction *red;
    size_t nred;
    char err[256];
    CHECK(svh_parse_reductions("loss=mean,max;mpi.rank=per_rank;sum/x=sum,min,std,count", &red, &nred, err,
                               sizeof err) == 0);
    CHECK(nred == 3);
    svh_buf_init(&b);
    svh_enc_hello(&b, "0123456789abcdef0123456789abcdef", -1, 0, "nœud-017.cluster", 4000000, "simvue_hpc-c 0.1.0",
                  nred, red, 0, 0);
    free(red);
    check_body("hello_reductions", SVH_MSG_HELLO, 0, &b, NULL, 0, 0);

    svh_buf_init(&b);
    svh_enc_hello(&b, "s", 70000, 100000, "h", 128, "x", 0, NULL, 0, 0);
    check_body("hello_big_numbers", SVH_MSG_HELLO, 0, &b, NULL, 0, 0);

    svh_buf_init(&b);
    svh_enc_hello(&b, "s", 3, 8, "h", 77, "x", 0, NULL, 123456789, 4026531836LL);
    check_body("hello_liveness", SVH_MSG_HELLO, 0, &b, NULL, 0, 0);

    {
        const char *names[] = {"loss", "acc"};
        uint32_t ids[] = {0, 1};
        int64_t steps[] = {3, 3}, times[] = {T, T};
        double vals[] = {0.5, 0.75};
        check_metrics("metrics_spec", 1, 2, names, 2, ids, steps, times, vals);
    }
    {
        const char *names[] = {"température", "loss/ñ", "x"};
        uint32_t ids[] = {0, 1, 2, 0, 1, 2, 2};
        int64_t steps[] = {0, 0, 0, 1, 1, 1, (int64_t)1 << 40};
        int64_t times[] = {T, T, T, T + 1, T + 1, T + 1, 0};
        double vals[] = {from_bits(0x7ff8000000000000ULL), INFINITY, -INFINITY, -0.0,
                         from_bits(0x7ff8000000000123ULL), 1.7976931348623157e308, from_bits(1)};
        check_metrics("metrics_special", 0xFFFFFFFFu, 3, names, 7, ids, steps, times, vals);
    }
    {
        char storage[20][48];
        const char *names[20];
        for (int k = 0; k < 19; ++k) {
            snprintf(storage[k], sizeof storage[k], "m%02d", k);
            names[k] = storage[k];
        }
        names[19] = "a_rather_long_metric_name/with/sub.parts";
        uint32_t ids[300];
        int64_t steps[300], times[300];
        double vals[300];
        for (int k = 0; k < 300; ++k) {
            ids[k] = (uint32_t)(k % 20);
            steps[k] = k / 20;
            times[k] = T + 1000 * (int64_t)k;
            vals[k] = k * 0.25 - 10.0;
        }
        check_metrics("metrics_many", 2, 20, names, 300, ids, steps, times, vals);
    }
    check_metrics("metrics_empty", 3, 0, NULL, 0, NULL, NULL, NULL, NULL);

    svh_buf_init(&b);
    svh_enc_event(&b, "hello from C", T, "info");
    check_body("event_info", SVH_MSG_EVENT, 4, &b, NULL, 0, 0);
    char *text = repeat("event ", 20);
    svh_buf_init(&b);
    svh_enc_event(&b, text, T + 1, "error");
    check_body("event_str8", SVH_MSG_EVENT, 5, &b, NULL, 0, 0);
    free(text);
    text = repeat("ünïcødé ✓ ", 30);
    svh_buf_init(&b);
    svh_enc_event(&b, text, T + 2, "warning");
    check_body("event_str16_unicode", SVH_MSG_EVENT, 300, &b, NULL, 0, 0);
    free(text);

    svh_buf_init(&b);
    svh_enc_file_offer(&b, SHA_HELLO, 6, "data.txt", "output", "/tmp/run/data.txt", svh_guess_mime("data.txt"), T);
    check_body("file_offer", SVH_MSG_FILE_OFFER, 6, &b, NULL, 0, 0);
    uint8_t data[306];
    for (int k = 0; k < 256; ++k) data[k] = (uint8_t)k;
    for (int k = 0; k < 10; ++k) memcpy(data + 256 + 5 * k, "hello", 5);
    svh_buf_init(&b);
    svh_enc_file_chunk(&b, SHA_HELLO, 0, 0);
    check_body("file_chunk", SVH_MSG_FILE_CHUNK, 7, &b, data, sizeof data, 1);
    svh_buf_init(&b);
    svh_enc_file_chunk(&b, SHA_HELLO, 1u << 20, 1);
    check_body("file_chunk_final_empty", SVH_MSG_FILE_CHUNK, 8, &b, NULL, 0, 1);

    svh_buf_init(&b);
    svh_enc_status(&b, "failed", "rank 3 crashed");
    check_body("status", SVH_MSG_STATUS, 9, &b, NULL, 0, 0);
    svh_buf_init(&b);
    svh_enc_heartbeat(&b, T, 123456, 0);
    check_body("heartbeat", SVH_MSG_HEARTBEAT, 10, &b, NULL, 0, 0);
    svh_buf_init(&b);
    svh_enc_goodbye(&b, 0, 0, 0, NULL, NULL);
    check_body("goodbye_empty", SVH_MSG_GOODBYE, 11, &b, NULL, 0, 0);
    {
        const char *names[] = {"loss", "énergie"};
        uint64_t counts[] = {69999, 1};
        svh_buf_init(&b);
        svh_enc_goodbye(&b, 5000000000ULL, 70000, 2, names, counts);
        check_body("goodbye_dropped", SVH_MSG_GOODBYE, 65536, &b, NULL, 0, 0);
    }
}

/* ---------------------------------------------------------------------------------- golden: aggregator -> rank */
static int decode_golden(const char *name, svh_reply *r) {
    t_frames f;
    if (t_read_golden(golden_dir, name, &f) != 0) {
        CHECK_MSG(0, "%s: golden file missing", name);
        return -1;
    }
    char err[256] = "";
    int rc = svh_decode_reply(f.n, (const void *const *)f.data, f.len, r, err, sizeof err);
    CHECK_MSG(rc == 0, "%s: %s", name, err);
    t_frames_free(&f);
    return rc;
}

static void golden_aggregator_messages(void) {
    svh_buf b;
    svh_reply r;

    svh_buf_init(&b);
    svh_enc_welcome(&b, 0, "r1", "demo", 0.0);
    check_body("welcome_spec", SVH_MSG_WELCOME, 0, &b, NULL, 0, 0);
    if (decode_golden("welcome_spec", &r) == 0) {
        CHECK(r.type == SVH_MSG_WELCOME && r.seq == 0 && r.rank == 0);
        CHECK(strcmp(r.run_id, "r1") == 0 && strcmp(r.run_name, "demo") == 0);
        svh_reply_free(&r);
    }
    svh_buf_init(&b);
    svh_enc_welcome(&b, 3, "abcdefghijklmnopqrstuv", "c-client-run", 0.0);
    check_body("welcome_assigned", SVH_MSG_WELCOME, 0, &b, NULL, 0, 0);
    if (decode_golden("welcome_assigned", &r) == 0) {
        CHECK(r.rank == 3 && strcmp(r.run_id, "abcdefghijklmnopqrstuv") == 0);
        svh_reply_free(&r);
    }
    svh_buf_init(&b);
    svh_enc_welcome(&b, 7, "r2", "budget", 0.25);
    check_body("welcome_budget", SVH_MSG_WELCOME, 0, &b, NULL, 0, 0);
    if (decode_golden("welcome_budget", &r) == 0) {
        CHECK(r.rank == 7 && r.flush_interval == 0.25 && strcmp(r.run_name, "budget") == 0);
        svh_reply_free(&r);
    }
    if (decode_golden("welcome_spec", &r) == 0) {
        CHECK(r.flush_interval == 0.0);
        svh_reply_free(&r);
    }
    svh_buf_init(&b);
    svh_enc_reject(&b, "wrong secret for this run");
    check_body("reject", SVH_MSG_REJECT, 0, &b, NULL, 0, 0);
    if (decode_golden("reject", &r) == 0) {
        CHECK(r.type == SVH_MSG_REJECT && strcmp(r.reason, "wrong secret for this run") == 0);
        svh_reply_free(&r);
    }
    svh_buf_init(&b);
    svh_enc_file_reply(&b, SHA_HELLO, "need", "");
    check_body("file_reply_need", SVH_MSG_FILE_REPLY, 1, &b, NULL, 0, 0);
    if (decode_golden("file_reply_need", &r) == 0) {
        CHECK(r.type == SVH_MSG_FILE_REPLY && r.seq == 1);
        CHECK(strcmp(r.sha256, SHA_HELLO) == 0 && strcmp(r.status, "need") == 0 && strcmp(r.reason, "") == 0);
        svh_reply_free(&r);
    }
    svh_buf_init(&b);
    svh_enc_file_reply(&b, SHA_HELLO, "error", "chunk out of order or past the size");
    check_body("file_reply_error", SVH_MSG_FILE_REPLY, 2, &b, NULL, 0, 0);
    if (decode_golden("file_reply_error", &r) == 0) {
        CHECK(strcmp(r.status, "error") == 0 && strcmp(r.reason, "chunk out of order or past the size") == 0);
        svh_reply_free(&r);
    }
    svh_buf_init(&b);
    svh_enc_goodbye_ack(&b, 4000000000ULL);
    check_body("goodbye_ack", SVH_MSG_GOODBYE_ACK, 3, &b, NULL, 0, 0);
    if (decode_golden("goodbye_ack", &r) == 0) {
        CHECK(r.type == SVH_MSG_GOODBYE_ACK && r.received_points == 4000000000ULL);
        svh_reply_free(&r);
    }
    svh_buf_init(&b);
    svh_enc_notice(&b, "warning", "slow down");
    check_body("notice", SVH_MSG_NOTICE, 4, &b, NULL, 0, 0);
    if (decode_golden("notice", &r) == 0) {
        CHECK(strcmp(r.kind, "warning") == 0 && strcmp(r.message, "slow down") == 0);
        svh_reply_free(&r);
    }
}

/* ---------------------------------------------------------------------------------- msgpack */
static void check_bytes(const char *what, const svh_buf *b, const char *hex) {
    char got[512] = "";
    for (size_t k = 0; k < b->len && 3 * k + 3 < sizeof got; ++k)
        snprintf(got + 3 * k, 4, "%02x%s", b->data[k], k + 1 < b->len ? " " : "");
    CHECK_MSG(strcmp(got, hex) == 0, "%s: %s, expected %s", what, got, hex);
}

#define ENC(call, hex)        \
    do {                      \
        svh_buf b_;           \
        svh_buf_init(&b_);    \
        call;                 \
        check_bytes(#call, &b_, hex); \
        svh_buf_free(&b_);    \
    } while (0)

static void msgpack_encodings(void) {
    /* docs/protocol.md 4.2's examples, and every boundary (values from msgpack-python) */
    ENC(svh_mp_int(&b_, 127), "7f");
    ENC(svh_mp_int(&b_, 128), "cc 80");
    ENC(svh_mp_int(&b_, -33), "d0 df");
    ENC(svh_mp_int(&b_, -200), "d1 ff 38");
    ENC(svh_mp_int(&b_, 70000), "ce 00 01 11 70");
    ENC(svh_mp_f64(&b_, 1.0), "cb 3f f0 00 00 00 00 00 00");
    ENC(svh_mp_bin(&b_, "\xff", 1), "c4 01 ff");
    ENC(svh_mp_int(&b_, 0), "00");
    ENC(svh_mp_int(&b_, -1), "ff");
    ENC(svh_mp_int(&b_, -32), "e0");
    ENC(svh_mp_int(&b_, -128), "d0 80");
    ENC(svh_mp_int(&b_, -129), "d1 ff 7f");
    ENC(svh_mp_int(&b_, -32768), "d1 80 00");
    ENC(svh_mp_int(&b_, -32769), "d2 ff ff 7f ff");
    ENC(svh_mp_int(&b_, INT32_MIN), "d2 80 00 00 00");
    ENC(svh_mp_int(&b_, (int64_t)INT32_MIN - 1), "d3 ff ff ff ff 7f ff ff ff");
    ENC(svh_mp_int(&b_, INT64_MIN), "d3 80 00 00 00 00 00 00 00");
    ENC(svh_mp_int(&b_, 255), "cc ff");
    ENC(svh_mp_int(&b_, 256), "cd 01 00");
    ENC(svh_mp_int(&b_, 65535), "cd ff ff");
    ENC(svh_mp_int(&b_, 65536), "ce 00 01 00 00");
    ENC(svh_mp_int(&b_, 4294967295LL), "ce ff ff ff ff");
    ENC(svh_mp_int(&b_, 4294967296LL), "cf 00 00 00 01 00 00 00 00");
    ENC(svh_mp_int(&b_, INT64_MAX), "cf 7f ff ff ff ff ff ff ff");
    ENC(svh_mp_uint(&b_, UINT64_MAX), "cf ff ff ff ff ff ff ff ff");
    ENC(svh_mp_nil(&b_), "c0");
    ENC(svh_mp_bool(&b_, 0), "c2");
    ENC(svh_mp_bool(&b_, 1), "c3");
    ENC(svh_mp_map(&b_, 15), "8f");
    ENC(svh_mp_map(&b_, 16), "de 00 10");
    ENC(svh_mp_map(&b_, 65535), "de ff ff");
    ENC(svh_mp_map(&b_, 65536), "df 00 01 00 00");
    ENC(svh_mp_array(&b_, 15), "9f");
    ENC(svh_mp_array(&b_, 16), "dc 00 10");
    ENC(svh_mp_array(&b_, 65536), "dd 00 01 00 00");
    static const struct {
        size_t n;
        const char *head;
    } strs[] = {{31, "bf"}, {32, "d9 20"}, {255, "d9 ff"}, {256, "da 01 00"}, {65535, "da ff ff"},
                {65536, "db 00 01 00 00"}};
    char *big = malloc(70000);
    memset(big, 'a', 70000);
    for (size_t k = 0; k < sizeof strs / sizeof *strs; ++k) {
        svh_buf b;
        svh_buf_init(&b);
        svh_mp_str(&b, big, strs[k].n);
        size_t head = strs[k].n <= 31 ? 1 : strs[k].n <= 255 ? 2 : strs[k].n <= 65535 ? 3 : 5;
        CHECK(b.len == head + strs[k].n);
        b.len = head;
        check_bytes("str head", &b, strs[k].head);
        svh_buf_free(&b);
    }
    static const struct {
        size_t n;
        const char *head;
    } bins[] = {{255, "c4 ff"}, {256, "c5 01 00"}, {65535, "c5 ff ff"}, {65536, "c6 00 01 00 00"}};
    for (size_t k = 0; k < sizeof bins / sizeof *bins; ++k) {
        svh_buf b;
        svh_buf_init(&b);
        svh_mp_bin(&b, big, bins[k].n);
        size_t head = bins[k].n <= 255 ? 2 : bins[k].n <= 65535 ? 3 : 5;
        CHECK(b.len == head + bins[k].n);
        b.len = head;
        check_bytes("bin head", &b, bins[k].head);
        svh_buf_free(&b);
    }
    free(big);

    /* the reader reads back what the writer wrote */
    svh_buf b;
    svh_buf_init(&b);
    int64_t ints[] = {0, 1, 127, 128, -1, -32, -33, -128, -129, 65536, INT32_MIN, INT64_MIN, INT64_MAX};
    svh_mp_array(&b, sizeof ints / sizeof *ints + 3);
    for (size_t k = 0; k < sizeof ints / sizeof *ints; ++k) svh_mp_int(&b, ints[k]);
    svh_mp_uint(&b, UINT64_MAX);
    svh_mp_f64(&b, -2.5);
    svh_mp_cstr(&b, "ü");
    svh_mp_reader r;
    svh_mp_obj o;
    svh_mp_reader_init(&r, b.data, b.len);
    CHECK(svh_mp_next(&r, &o) == 0 && o.kind == SVH_MP_ARRAY && o.len == sizeof ints / sizeof *ints + 3);
    for (size_t k = 0; k < sizeof ints / sizeof *ints; ++k) {
        int64_t v = 0;
        CHECK(svh_mp_next(&r, &o) == 0 && svh_mp_as_i64(&o, &v) == 0 && v == ints[k]);
    }
    CHECK(svh_mp_next(&r, &o) == 0 && o.kind == SVH_MP_INT && !o.neg && o.u == UINT64_MAX);
    CHECK(svh_mp_next(&r, &o) == 0 && o.kind == SVH_MP_FLOAT && o.f == -2.5);
    CHECK(svh_mp_next(&r, &o) == 0 && o.kind == SVH_MP_STR && o.len == 2 && memcmp(o.s, "ü", 2) == 0);
    CHECK(r.p == r.end);
    svh_buf_free(&b);
    /* truncated input and the unused 0xc1 are errors */
    svh_mp_reader_init(&r, "\xcd\x01", 2);
    CHECK(svh_mp_next(&r, &o) != 0);
    svh_mp_reader_init(&r, "\xc1", 1);
    CHECK(svh_mp_next(&r, &o) != 0);
    svh_mp_reader_init(&r, "\xa3\x61\xff\x62", 4); /* invalid UTF-8 in a str */
    CHECK(svh_mp_next(&r, &o) != 0);
}

/* ---------------------------------------------------------------------------------- decoding replies */
static int decode_body(int type, const svh_buf *b, svh_reply *r, char *err, size_t errlen) {
    uint8_t h[SVH_HEADER_SIZE];
    svh_header(h, type, 7);
    const void *frames[2] = {h, b->data};
    size_t sizes[2] = {SVH_HEADER_SIZE, b->len};
    return svh_decode_reply(2, frames, sizes, r, err, errlen);
}

static void reply_decoding(void) {
    svh_buf b;
    svh_reply r;
    char err[256];

    /* unknown keys of any type are ignored, wherever they are */
    svh_buf_init(&b);
    svh_mp_map(&b, 5);
    svh_mp_cstr(&b, "future");
    svh_mp_array(&b, 3);
    svh_mp_int(&b, -5);
    svh_mp_map(&b, 1);
    svh_mp_cstr(&b, "x");
    svh_mp_nil(&b);
    svh_mp_bin(&b, "\0\1", 2);
    svh_mp_cstr(&b, "run_name");
    svh_mp_cstr(&b, "demo");
    svh_mp_cstr(&b, "rank");
    svh_mp_int(&b, 12);
    svh_mp_cstr(&b, "also_new");
    svh_mp_f64(&b, 3.5);
    svh_mp_cstr(&b, "run_id");
    svh_mp_cstr(&b, "r1");
    CHECK_MSG(decode_body(SVH_MSG_WELCOME, &b, &r, err, sizeof err) == 0, "%s", err);
    CHECK(r.rank == 12 && r.seq == 7 && strcmp(r.run_id, "r1") == 0 && strcmp(r.run_name, "demo") == 0);
    svh_reply_free(&r);
    svh_buf_free(&b);

    /* WELCOME.flush_interval: absent means 0; an int is taken as seconds; a bool, a str, a negative,
     * NaN or an infinite number is invalid */
    for (int k = 0; k < 8; ++k) {
        svh_buf_init(&b);
        svh_mp_map(&b, k == 0 ? 3 : 4);
        svh_mp_cstr(&b, "rank");
        svh_mp_int(&b, 1);
        svh_mp_cstr(&b, "run_id");
        svh_mp_cstr(&b, "r");
        svh_mp_cstr(&b, "run_name");
        svh_mp_cstr(&b, "n");
        if (k > 0) svh_mp_cstr(&b, "flush_interval");
        if (k == 1) svh_mp_int(&b, 2);
        if (k == 2) svh_mp_f64(&b, 0.5);
        if (k == 3) svh_mp_bool(&b, 1);
        if (k == 4) svh_mp_cstr(&b, "0.5");
        if (k == 5) svh_mp_f64(&b, -0.5);
        if (k == 6) svh_mp_f64(&b, NAN);
        if (k == 7) svh_mp_f64(&b, INFINITY);
        int rc = decode_body(SVH_MSG_WELCOME, &b, &r, err, sizeof err);
        if (k <= 2) {
            CHECK_MSG(rc == 0, "case %d: %s", k, err);
            if (rc == 0) CHECK(r.flush_interval == (k == 0 ? 0.0 : k == 1 ? 2.0 : 0.5));
            svh_reply_free(&r);
        } else {
            CHECK_MSG(rc == -1 && strstr(err, "flush_interval") != NULL, "case %d: rc %d, %s", k, rc, err);
        }
        svh_buf_free(&b);
    }

    /* a bool where an int is declared, a missing field, a str for an int: invalid */
    svh_buf_init(&b);
    svh_mp_map(&b, 3);
    svh_mp_cstr(&b, "rank");
    svh_mp_bool(&b, 1);
    svh_mp_cstr(&b, "run_id");
    svh_mp_cstr(&b, "r");
    svh_mp_cstr(&b, "run_name");
    svh_mp_cstr(&b, "n");
    CHECK(decode_body(SVH_MSG_WELCOME, &b, &r, err, sizeof err) == -1);
    CHECK(strstr(err, "rank") != NULL);
    svh_buf_free(&b);
    svh_buf_init(&b);
    svh_enc_reject(&b, "x");
    CHECK(decode_body(SVH_MSG_WELCOME, &b, &r, err, sizeof err) == -1); /* lacks rank, run_id, run_name */
    svh_buf_free(&b);
    svh_buf_init(&b);
    svh_mp_map(&b, 1);
    svh_mp_cstr(&b, "received_points");
    svh_mp_int(&b, -1);
    CHECK(decode_body(SVH_MSG_GOODBYE_ACK, &b, &r, err, sizeof err) == -1);
    svh_buf_free(&b);
    /* nil for a field that is not "| nil" */
    svh_buf_init(&b);
    svh_mp_map(&b, 1);
    svh_mp_cstr(&b, "reason");
    svh_mp_nil(&b);
    CHECK(decode_body(SVH_MSG_REJECT, &b, &r, err, sizeof err) == -1);
    svh_buf_free(&b);
    /* an integer key; bytes after the map; not a map */
    svh_buf_init(&b);
    svh_mp_map(&b, 1);
    svh_mp_int(&b, 1);
    svh_mp_cstr(&b, "x");
    CHECK(decode_body(SVH_MSG_REJECT, &b, &r, err, sizeof err) == -1);
    svh_buf_free(&b);
    svh_buf_init(&b);
    svh_enc_reject(&b, "x");
    svh_mp_nil(&b);
    CHECK(decode_body(SVH_MSG_REJECT, &b, &r, err, sizeof err) == -1);
    svh_buf_free(&b);
    svh_buf_init(&b);
    svh_mp_array(&b, 0);
    CHECK(decode_body(SVH_MSG_REJECT, &b, &r, err, sizeof err) == -1);
    svh_buf_free(&b);
    /* a rank's message type is not a reply; payload frames are refused */
    svh_buf_init(&b);
    svh_enc_event(&b, "x", 1, "info");
    CHECK(decode_body(SVH_MSG_EVENT, &b, &r, err, sizeof err) == -1);
    svh_buf_free(&b);
    svh_buf_init(&b);
    svh_enc_reject(&b, "x");
    uint8_t h[SVH_HEADER_SIZE];
    svh_header(h, SVH_MSG_REJECT, 0);
    const void *frames[3] = {h, b.data, "extra"};
    size_t sizes[3] = {SVH_HEADER_SIZE, b.len, 5};
    CHECK(svh_decode_reply(3, frames, sizes, &r, err, sizeof err) == -1);
    CHECK(svh_decode_reply(1, frames, sizes, &r, err, sizeof err) == -1);
    /* another protocol version is -2 (a refusal); a bad magic, size or type code -1 */
    h[2] = 2;
    CHECK(svh_decode_reply(2, frames, sizes, &r, err, sizeof err) == -2);
    CHECK(strstr(err, "version 2") != NULL);
    h[2] = 1;
    h[0] = 'X';
    CHECK(svh_decode_reply(2, frames, sizes, &r, err, sizeof err) == -1);
    h[0] = 'S';
    sizes[0] = 7;
    CHECK(svh_decode_reply(2, frames, sizes, &r, err, sizeof err) == -1);
    sizes[0] = SVH_HEADER_SIZE;
    h[3] = 99;
    CHECK(svh_decode_reply(2, frames, sizes, &r, err, sizeof err) == -1);
    svh_buf_free(&b);

    int type;
    uint32_t seq;
    svh_header(h, SVH_MSG_GOODBYE, 0x01020304u);
    CHECK(memcmp(h, "SV\x01\x0e\x04\x03\x02\x01", 8) == 0);
    CHECK(svh_header_parse(h, 8, &type, &seq) == 0 && type == SVH_MSG_GOODBYE && seq == 0x01020304u);
}

/* ---------------------------------------------------------------------------------- helpers */
static void helpers(void) {
    svh_reduction *red;
    size_t n;
    char err[256];
    CHECK(svh_parse_reductions(NULL, &red, &n, err, sizeof err) == 0 && n == 0 && red == NULL);
    CHECK(svh_parse_reductions("", &red, &n, err, sizeof err) == 0 && n == 0);
    CHECK(svh_parse_reductions(" loss = mean , max ; ", &red, &n, err, sizeof err) == 0 && n == 1);
    if (n == 1) {
        CHECK(strcmp(red[0].name, "loss") == 0 && red[0].nops == 2);
        CHECK(strcmp(red[0].ops[0], "mean") == 0 && strcmp(red[0].ops[1], "max") == 0);
    }
    free(red);
    CHECK(svh_parse_reductions("a=b=sum;t=per_rank", &red, &n, err, sizeof err) == 0 && n == 2);
    if (n == 2) CHECK(strcmp(red[0].name, "a=b") == 0 && strcmp(red[1].ops[0], "per_rank") == 0);
    free(red);
    const char *bad[] = {"loss", "=sum", "loss=avg", "loss=", "loss=mean,mean", "x=per_rank,sum", "bad,name=sum",
                         "é=sum"};
    for (size_t k = 0; k < sizeof bad / sizeof *bad; ++k) {
        err[0] = '\0';
        CHECK_MSG(svh_parse_reductions(bad[k], &red, &n, err, sizeof err) == -1 && *err, "\"%s\" accepted", bad[k]);
    }

    CHECK(svh_utf8_valid("", 0));
    CHECK(svh_utf8_valid("aü✓𝄞", strlen("aü✓𝄞")));
    CHECK(!svh_utf8_valid("\xc3", 1));
    CHECK(!svh_utf8_valid("\xc0\x80", 2));         /* overlong */
    CHECK(!svh_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    CHECK(!svh_utf8_valid("\xf4\x90\x80\x80", 4)); /* past U+10FFFF */
    CHECK(!svh_utf8_valid("\xff", 1));
    CHECK(!svh_utf8_valid("\xe2\x9c", 2));

    CHECK(svh_metric_name_valid("loss/x.y:z=1 (a+b) >< 5% _-"));
    CHECK(!svh_metric_name_valid(""));
    CHECK(!svh_metric_name_valid("température"));
    CHECK(!svh_metric_name_valid("a,b"));
    CHECK(!svh_metric_name_valid("a;b"));

    CHECK(strcmp(svh_guess_mime("data.txt"), "text/plain") == 0);
    CHECK(strcmp(svh_guess_mime("/a.b/c"), "application/octet-stream") == 0);
    CHECK(strcmp(svh_guess_mime("x.JSON"), "application/json") == 0);
    CHECK(strcmp(svh_version(), "simvue_hpc-c " SVH_VERSION) == 0);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_encoder GOLDEN_DIR\n");
        return 2;
    }
    golden_dir = argv[1];
    uint8_t digest[32];
    svh_sha256 s;
    svh_sha256_init(&s);
    svh_sha256_update(&s, "hello\n", 6);
    svh_sha256_final(&s, digest);
    svh_sha256_hex(digest, SHA_HELLO);
    golden_rank_messages();
    golden_aggregator_messages();
    msgpack_encodings();
    reply_decoding();
    helpers();
    return t_report("test_encoder");
}
