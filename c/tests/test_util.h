/* Minimal test helpers for the C tests: CHECK macros, a summary line, golden frame files. */
#ifndef SVH_TEST_UTIL_H
#define SVH_TEST_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_checks, t_failures;

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        t_checks++;                                                                       \
        if (!(cond)) {                                                                    \
            t_failures++;                                                                 \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);      \
        }                                                                                 \
    } while (0)

#define CHECK_MSG(cond, ...)                                                              \
    do {                                                                                  \
        t_checks++;                                                                       \
        if (!(cond)) {                                                                    \
            t_failures++;                                                                 \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);      \
            fprintf(stderr, __VA_ARGS__);                                                 \
            fputc('\n', stderr);                                                          \
        }                                                                                 \
    } while (0)

/* Prints "name: N passed, M failed" and returns the exit status. */
static int t_report(const char *name) {
    printf("%s: %d passed, %d failed\n", name, t_checks - t_failures, t_failures);
    return t_failures ? 1 : 0;
}

static void t_hex(FILE *out, const uint8_t *p, size_t n) {
    for (size_t k = 0; k < n; ++k) fprintf(out, "%02x%s", p[k], k + 1 < n ? " " : "");
}

/* ---------------------------------------------------------------------------------- frames */
#define T_MAX_FRAMES 8

typedef struct t_frames {
    size_t n;
    uint8_t *data[T_MAX_FRAMES];
    size_t len[T_MAX_FRAMES];
} t_frames;

static void t_frames_free(t_frames *f) {
    for (size_t k = 0; k < f->n; ++k) free(f->data[k]);
    memset(f, 0, sizeof *f);
}

static void t_frames_add(t_frames *f, const void *p, size_t n) {
    if (f->n >= T_MAX_FRAMES) abort();
    f->data[f->n] = malloc(n ? n : 1);
    if (n) memcpy(f->data[f->n], p, n);
    f->len[f->n++] = n;
}

static uint32_t t_le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* Reads DIR/NAME.bin (see tests/data/make_golden.py): 0, or -1 with a message. */
static int t_read_golden(const char *dir, const char *name, t_frames *f) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.bin", dir, name);
    memset(f, 0, sizeof *f);
    FILE *fh = fopen(path, "rb");
    if (!fh) {
        fprintf(stderr, "cannot open %s\n", path);
        return -1;
    }
    fseek(fh, 0, SEEK_END);
    long size = ftell(fh);
    fseek(fh, 0, SEEK_SET);
    uint8_t *all = malloc((size_t)size + 1);
    if (fread(all, 1, (size_t)size, fh) != (size_t)size) {
        fclose(fh);
        free(all);
        return -1;
    }
    fclose(fh);
    size_t pos = 4;
    uint32_t count = t_le32(all);
    for (uint32_t k = 0; k < count; ++k) {
        uint32_t n = t_le32(all + pos);
        t_frames_add(f, all + pos + 4, n);
        pos += 4 + n;
    }
    free(all);
    if (pos != (size_t)size) {
        fprintf(stderr, "%s: %ld bytes, %zu read\n", path, size, pos);
        return -1;
    }
    return 0;
}

/* Checks that two messages are byte-identical, frame by frame; reports the first difference. */
static void t_check_frames(const char *name, const t_frames *want, const t_frames *got) {
    t_checks++;
    if (want->n != got->n) {
        t_failures++;
        fprintf(stderr, "%s: %zu frames expected, got %zu\n", name, want->n, got->n);
        return;
    }
    for (size_t k = 0; k < want->n; ++k) {
        if (want->len[k] == got->len[k] && memcmp(want->data[k], got->data[k], want->len[k]) == 0) continue;
        t_failures++;
        fprintf(stderr, "%s: frame %zu differs (%zu bytes expected, %zu got)\n  expected: ", name, k,
                want->len[k], got->len[k]);
        t_hex(stderr, want->data[k], want->len[k] < 96 ? want->len[k] : 96);
        fprintf(stderr, "\n  got:      ");
        t_hex(stderr, got->data[k], got->len[k] < 96 ? got->len[k] : 96);
        fprintf(stderr, "\n");
        return;
    }
}

#endif
