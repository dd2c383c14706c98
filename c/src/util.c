/* Helpers: UTF-8 and name checks, clocks, the reductions string, MIME types, per-thread errors. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "svh_internal.h"

static _Thread_local char last_error[1024];
static _Thread_local int last_code;

int svh_set_error(int code, const char *fmt, ...) {
    last_code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return code;
}

const char *svh_last_error(void) { return last_error; }

int svh_last_error_code(void) { return last_code; }

const char *svh_version(void) { return "simvue_hpc-c " SVH_VERSION; }

int svh_utf8_valid(const char *str, size_t len) {
    const uint8_t *s = (const uint8_t *)str;
    size_t k = 0;
    while (k < len) {
        uint8_t c = s[k];
        size_t n;
        uint32_t cp;
        if (c < 0x80) {
            ++k;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            n = 1;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (len - k - 1 < n) return 0;
        for (size_t j = 1; j <= n; ++j) {
            if ((s[k + j] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[k + j] & 0x3f);
        }
        /* overlong forms, surrogates (Python refuses them too) and values past U+10FFFF */
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000)) return 0;
        if ((cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) return 0;
        k += n + 1;
    }
    return 1;
}

int svh_metric_name_valid(const char *name) {
    if (!name || !*name) return 0;
    for (const unsigned char *p = (const unsigned char *)name; *p; ++p) {
        unsigned char c = *p;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) continue;
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') continue;
        if (strchr("-_/.:=><+()%", c)) continue;
        return 0;
    }
    return 1;
}

int64_t svh_time_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t svh_monotonic_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int err_out(char *err, size_t errlen, const char *fmt, const char *arg) {
    if (err && errlen) snprintf(err, errlen, fmt, arg);
    return -1;
}

/* Formats the error (its argument may point into mem), then frees mem. */
static int bad(char *mem, char *err, size_t errlen, const char *fmt, const char *arg) {
    err_out(err, errlen, fmt, arg);
    free(mem);
    return -1;
}

static const char *const OPERATIONS[] = {"mean", "min", "max", "sum", "std", "count", "per_rank"};

/* One allocation holds, in order: the reduction array, the op pointer arrays, then a copy of the
 * string with its separators replaced by NULs (the names and ops point into it). */
int svh_parse_reductions(const char *spec, svh_reduction **out, size_t *n, char *err, size_t errlen) {
    *out = NULL;
    *n = 0;
    if (!spec || !*spec) return 0;
    size_t len = strlen(spec), entries = 1, commas = 0;
    for (const char *p = spec; *p; ++p) {
        if (*p == ';') ++entries;
        if (*p == ',') ++commas;
    }
    size_t nops_max = commas + entries;
    size_t head = entries * sizeof(svh_reduction) + nops_max * sizeof(const char *);
    char *mem = malloc(head + len + 1);
    if (!mem) return err_out(err, errlen, "%s", "out of memory");
    svh_reduction *red = (svh_reduction *)mem;
    const char **ops = (const char **)(mem + entries * sizeof(svh_reduction));
    char *text = mem + head;
    memcpy(text, spec, len + 1);
    size_t count = 0, used_ops = 0;
    char *entry = text;
    while (entry) {
        char *next = strchr(entry, ';');
        if (next) *next++ = '\0';
        while (*entry == ' ') ++entry;
        if (*entry) {
            char *eq = strrchr(entry, '=');
            if (!eq || eq == entry) {
                return bad(mem, err, errlen, "reductions: \"%s\" is not name=op[,op...]", entry);
            }
            *eq = '\0';
            for (char *nend = eq; nend > entry && nend[-1] == ' ';) *--nend = '\0';
            if (!svh_metric_name_valid(entry)) {
                return bad(mem, err, errlen, "reductions: %s is not a valid metric name", entry);
            }
            red[count].name = entry;
            red[count].ops = &ops[used_ops];
            red[count].nops = 0;
            char *op = eq + 1;
            while (op) {
                char *comma = strchr(op, ',');
                if (comma) *comma++ = '\0';
                while (*op == ' ') ++op;
                char *end = op + strlen(op);
                while (end > op && end[-1] == ' ') *--end = '\0';
                int known = 0;
                for (size_t k = 0; k < sizeof OPERATIONS / sizeof *OPERATIONS; ++k)
                    if (strcmp(op, OPERATIONS[k]) == 0) known = 1;
                if (!known) {
                    return bad(mem, err, errlen,
                                   "reductions: unknown operation \"%s\" (mean, min, max, sum, std, count, per_rank)",
                                   op);
                }
                ops[used_ops++] = op;
                red[count].nops++;
                op = comma;
            }
            int per_rank = 0;
            for (size_t k = 0; k < red[count].nops; ++k) {
                if (strcmp(red[count].ops[k], "per_rank") == 0) per_rank = 1;
                for (size_t j = 0; j < k; ++j)
                    if (strcmp(red[count].ops[k], red[count].ops[j]) == 0) {
                        return bad(mem, err, errlen, "reductions: operation %s repeated", red[count].ops[k]);
                    }
            }
            if (per_rank && red[count].nops != 1) {
                return bad(mem, err, errlen, "reductions: per_rank for %s cannot be combined with others",
                               red[count].name);
            }
            ++count;
        }
        entry = next;
    }
    if (count == 0) {
        free(mem);
        return 0;
    }
    *out = red;
    *n = count;
    return 0;
}

const char *svh_guess_mime(const char *name) {
    static const char *const table[][2] = {
        {"txt", "text/plain"},         {"log", "text/plain"},          {"out", "text/plain"},
        {"csv", "text/csv"},           {"json", "application/json"},   {"xml", "application/xml"},
        {"yaml", "application/yaml"},  {"yml", "application/yaml"},    {"toml", "application/toml"},
        {"html", "text/html"},         {"md", "text/markdown"},        {"c", "text/x-c"},
        {"h", "text/x-c"},             {"f90", "text/x-fortran"},      {"f", "text/x-fortran"},
        {"py", "text/x-python"},       {"sh", "application/x-sh"},     {"png", "image/png"},
        {"jpg", "image/jpeg"},         {"jpeg", "image/jpeg"},         {"gif", "image/gif"},
        {"svg", "image/svg+xml"},      {"pdf", "application/pdf"},     {"zip", "application/zip"},
        {"gz", "application/gzip"},    {"tar", "application/x-tar"},   {"h5", "application/x-hdf5"},
        {"hdf5", "application/x-hdf5"}, {"nc", "application/x-netcdf"}, {"npy", "application/octet-stream"},
    };
    const char *dot = strrchr(name, '.');
    const char *slash = strrchr(name, '/');
    if (!dot || (slash && dot < slash) || !dot[1]) return "application/octet-stream";
    for (size_t k = 0; k < sizeof table / sizeof *table; ++k)
        if (strcasecmp(dot + 1, table[k][0]) == 0) return table[k][1];
    return "application/octet-stream";
}
