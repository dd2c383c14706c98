/* The msgpack subset of docs/protocol.md section 4: a writer byte-identical with
 * msgpack.packb(..., use_bin_type=True), and a reader for what the aggregator sends. */
#include <stdlib.h>
#include <string.h>

#include "svh_internal.h"

/* ---------------------------------------------------------------------------------- buffer */
void svh_buf_init(svh_buf *b) { memset(b, 0, sizeof *b); }

void svh_buf_free(svh_buf *b) {
    free(b->data);
    svh_buf_init(b);
}

static int buf_reserve(svh_buf *b, size_t extra) {
    if (b->failed) return -1;
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra) {
        if (cap > SIZE_MAX / 2) {
            b->failed = 1;
            return -1;
        }
        cap *= 2;
    }
    uint8_t *p = realloc(b->data, cap);
    if (!p) {
        b->failed = 1;
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

void svh_buf_put(svh_buf *b, const void *p, size_t n) {
    if (n == 0 || buf_reserve(b, n) != 0) return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void put1(svh_buf *b, uint8_t v) { svh_buf_put(b, &v, 1); }

static void put_be(svh_buf *b, uint8_t tag, uint64_t v, int nbytes) {
    uint8_t tmp[9];
    tmp[0] = tag;
    for (int k = 0; k < nbytes; ++k) tmp[1 + k] = (uint8_t)(v >> (8 * (nbytes - 1 - k)));
    svh_buf_put(b, tmp, (size_t)nbytes + 1);
}

/* ---------------------------------------------------------------------------------- writer */
void svh_mp_map(svh_buf *b, uint32_t n) {
    if (n <= 15)
        put1(b, (uint8_t)(0x80 | n));
    else if (n <= 0xffff)
        put_be(b, 0xde, n, 2);
    else
        put_be(b, 0xdf, n, 4);
}

void svh_mp_array(svh_buf *b, uint32_t n) {
    if (n <= 15)
        put1(b, (uint8_t)(0x90 | n));
    else if (n <= 0xffff)
        put_be(b, 0xdc, n, 2);
    else
        put_be(b, 0xdd, n, 4);
}

void svh_mp_str(svh_buf *b, const char *s, size_t len) {
    if (len <= 31)
        put1(b, (uint8_t)(0xa0 | len));
    else if (len <= 0xff)
        put_be(b, 0xd9, len, 1);
    else if (len <= 0xffff)
        put_be(b, 0xda, len, 2);
    else if ((uint64_t)len <= 0xffffffffu)
        put_be(b, 0xdb, len, 4);
    else {
        b->failed = 1;
        return;
    }
    svh_buf_put(b, s, len);
}

void svh_mp_cstr(svh_buf *b, const char *s) { svh_mp_str(b, s ? s : "", s ? strlen(s) : 0); }

void svh_mp_bin(svh_buf *b, const void *p, size_t len) {
    if (len <= 0xff)
        put_be(b, 0xc4, len, 1);
    else if (len <= 0xffff)
        put_be(b, 0xc5, len, 2);
    else if ((uint64_t)len <= 0xffffffffu)
        put_be(b, 0xc6, len, 4);
    else {
        b->failed = 1;
        return;
    }
    svh_buf_put(b, p, len);
}

void svh_mp_uint(svh_buf *b, uint64_t v) {
    if (v <= 0x7f)
        put1(b, (uint8_t)v);
    else if (v <= 0xff)
        put_be(b, 0xcc, v, 1);
    else if (v <= 0xffff)
        put_be(b, 0xcd, v, 2);
    else if (v <= 0xffffffffu)
        put_be(b, 0xce, v, 4);
    else
        put_be(b, 0xcf, v, 8);
}

void svh_mp_int(svh_buf *b, int64_t v) {
    if (v >= 0) {
        svh_mp_uint(b, (uint64_t)v);
        return;
    }
    if (v >= -32)
        put1(b, (uint8_t)(int8_t)v);
    else if (v >= INT8_MIN)
        put_be(b, 0xd0, (uint64_t)v & 0xff, 1);
    else if (v >= INT16_MIN)
        put_be(b, 0xd1, (uint64_t)v & 0xffff, 2);
    else if (v >= INT32_MIN)
        put_be(b, 0xd2, (uint64_t)v & 0xffffffffu, 4);
    else
        put_be(b, 0xd3, (uint64_t)v, 8);
}

void svh_mp_f64(svh_buf *b, double v) {
    uint64_t bits;
    memcpy(&bits, &v, 8);
    put_be(b, 0xcb, bits, 8);
}

void svh_mp_nil(svh_buf *b) { put1(b, 0xc0); }

void svh_mp_bool(svh_buf *b, int v) { put1(b, v ? 0xc3 : 0xc2); }

/* ---------------------------------------------------------------------------------- reader */
void svh_mp_reader_init(svh_mp_reader *r, const void *data, size_t len) {
    r->p = (const uint8_t *)data;
    r->end = r->p + len;
    r->err = 0;
}

static int need(svh_mp_reader *r, size_t n) {
    if ((size_t)(r->end - r->p) < n) {
        r->err = 1;
        return -1;
    }
    return 0;
}

static uint64_t get_be(svh_mp_reader *r, int nbytes) {
    uint64_t v = 0;
    for (int k = 0; k < nbytes; ++k) v = (v << 8) | r->p[k];
    r->p += nbytes;
    return v;
}

static int read_len(svh_mp_reader *r, int nbytes, size_t *len) {
    if (need(r, (size_t)nbytes) != 0) return -1;
    *len = (size_t)get_be(r, nbytes);
    return 0;
}

static int read_bytes(svh_mp_reader *r, svh_mp_obj *o, int kind) {
    if (need(r, o->len) != 0) return -1;
    o->kind = kind;
    o->s = (const char *)r->p;
    r->p += o->len;
    if (kind == SVH_MP_STR && !svh_utf8_valid(o->s, o->len)) {
        r->err = 1;
        return -1;
    }
    return 0;
}

int svh_mp_next(svh_mp_reader *r, svh_mp_obj *o) {
    memset(o, 0, sizeof *o);
    if (r->err || need(r, 1) != 0) return -1;
    uint8_t t = *r->p++;
    if (t <= 0x7f) {
        o->kind = SVH_MP_INT;
        o->u = t;
        return 0;
    }
    if (t >= 0xe0) {
        o->kind = SVH_MP_INT;
        o->neg = 1;
        o->i = (int8_t)t;
        return 0;
    }
    if ((t & 0xf0) == 0x80) {
        o->kind = SVH_MP_MAP;
        o->len = t & 0x0f;
        return 0;
    }
    if ((t & 0xf0) == 0x90) {
        o->kind = SVH_MP_ARRAY;
        o->len = t & 0x0f;
        return 0;
    }
    if ((t & 0xe0) == 0xa0) {
        o->len = t & 0x1f;
        return read_bytes(r, o, SVH_MP_STR);
    }
    switch (t) {
    case 0xc0: o->kind = SVH_MP_NIL; return 0;
    case 0xc2: o->kind = SVH_MP_BOOL; o->b = 0; return 0;
    case 0xc3: o->kind = SVH_MP_BOOL; o->b = 1; return 0;
    case 0xc4: return read_len(r, 1, &o->len) ? -1 : read_bytes(r, o, SVH_MP_BIN);
    case 0xc5: return read_len(r, 2, &o->len) ? -1 : read_bytes(r, o, SVH_MP_BIN);
    case 0xc6: return read_len(r, 4, &o->len) ? -1 : read_bytes(r, o, SVH_MP_BIN);
    case 0xd9: return read_len(r, 1, &o->len) ? -1 : read_bytes(r, o, SVH_MP_STR);
    case 0xda: return read_len(r, 2, &o->len) ? -1 : read_bytes(r, o, SVH_MP_STR);
    case 0xdb: return read_len(r, 4, &o->len) ? -1 : read_bytes(r, o, SVH_MP_STR);
    case 0xca: {
        if (need(r, 4)) return -1;
        uint32_t bits = (uint32_t)get_be(r, 4);
        float f;
        memcpy(&f, &bits, 4);
        o->kind = SVH_MP_FLOAT;
        o->f = f;
        return 0;
    }
    case 0xcb: {
        if (need(r, 8)) return -1;
        uint64_t bits = get_be(r, 8);
        memcpy(&o->f, &bits, 8);
        o->kind = SVH_MP_FLOAT;
        return 0;
    }
    case 0xcc: case 0xcd: case 0xce: case 0xcf: {
        int nb = 1 << (t - 0xcc);
        if (need(r, (size_t)nb)) return -1;
        o->kind = SVH_MP_INT;
        o->u = get_be(r, nb);
        return 0;
    }
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
        int nb = 1 << (t - 0xd0);
        if (need(r, (size_t)nb)) return -1;
        uint64_t raw = get_be(r, nb);
        int64_t v;
        if (nb == 1) v = (int8_t)raw;
        else if (nb == 2) v = (int16_t)raw;
        else if (nb == 4) v = (int32_t)raw;
        else v = (int64_t)raw;
        o->kind = SVH_MP_INT;
        if (v < 0) {
            o->neg = 1;
            o->i = v;
        } else {
            o->u = (uint64_t)v;
        }
        return 0;
    }
    case 0xdc: return read_len(r, 2, &o->len) ? -1 : (o->kind = SVH_MP_ARRAY, 0);
    case 0xdd: return read_len(r, 4, &o->len) ? -1 : (o->kind = SVH_MP_ARRAY, 0);
    case 0xde: return read_len(r, 2, &o->len) ? -1 : (o->kind = SVH_MP_MAP, 0);
    case 0xdf: return read_len(r, 4, &o->len) ? -1 : (o->kind = SVH_MP_MAP, 0);
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: {
        size_t n = (size_t)1 << (t - 0xd4);
        if (need(r, n + 1)) return -1;
        r->p += n + 1;
        o->kind = SVH_MP_EXT;
        return 0;
    }
    case 0xc7: case 0xc8: case 0xc9: {
        size_t n;
        if (read_len(r, 1 << (t - 0xc7), &n) || need(r, n + 1)) return -1;
        r->p += n + 1;
        o->kind = SVH_MP_EXT;
        return 0;
    }
    default: /* 0xc1 is never used */
        r->err = 1;
        return -1;
    }
}

static int skip_depth(svh_mp_reader *r, int depth) {
    svh_mp_obj o;
    if (depth > 64 || svh_mp_next(r, &o) != 0) {
        r->err = 1;
        return -1;
    }
    if (o.kind == SVH_MP_ARRAY || o.kind == SVH_MP_MAP) {
        size_t items = o.kind == SVH_MP_MAP ? 2 * o.len : o.len;
        if (o.kind == SVH_MP_MAP && o.len > SIZE_MAX / 2) return -1;
        for (size_t k = 0; k < items; ++k)
            if (skip_depth(r, depth + 1) != 0) return -1;
    }
    return 0;
}

int svh_mp_skip(svh_mp_reader *r) { return skip_depth(r, 0); }

int svh_mp_find(const void *body, size_t len, const char *key, svh_mp_reader *r) {
    svh_mp_obj o;
    svh_mp_reader_init(r, body, len);
    if (svh_mp_next(r, &o) != 0 || o.kind != SVH_MP_MAP) return -1;
    size_t klen = strlen(key);
    for (size_t k = 0; k < o.len; ++k) {
        svh_mp_obj kobj;
        if (svh_mp_next(r, &kobj) != 0 || kobj.kind != SVH_MP_STR) return -1;
        if (kobj.len == klen && memcmp(kobj.s, key, klen) == 0) return 1;
        if (svh_mp_skip(r) != 0) return -1;
    }
    return 0;
}

int svh_mp_as_i64(const svh_mp_obj *o, int64_t *out) {
    if (o->kind != SVH_MP_INT) return -1;
    if (o->neg) {
        *out = o->i;
        return 0;
    }
    if (o->u > (uint64_t)INT64_MAX) return -1;
    *out = (int64_t)o->u;
    return 0;
}
