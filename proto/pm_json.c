/*  pm_json — msgpack objects and bus messages as JSON text (see pm_json.h for
 *  the mapping). Part of libpicomdm; used by the CLI and the auditor.
 *  Base64 comes from OpenSSL (EVP_EncodeBlock), timestamps from msgpack-c's
 *  timestamp helper and gmtime_r.
 */
#include "pm_json.h"

#include <math.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    char *d;
    size_t n, cap;
    bool fail;
    size_t max;     //  0 = unbounded; else keep at most max bytes ...
    bool truncated; //  ... and note that some were dropped
} s_buf_t;

//  Non-str map keys are rendered, then escaped into a string; keys nested in
//  keys are escaped again at every level, which doubles their backslashes each
//  time. Capping a rendered key keeps that bounded.
#define S_KEY_MAX 256

static void s_put(s_buf_t *b, const char *s, size_t n)
{
    if (b->fail)
        return;
    if (b->max && n > b->max - b->n) {
        b->truncated = true;
        n = b->max - b->n;
    }
    if (!b->d || n >= b->cap - b->n) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->n <= n) {
            if (cap > ((size_t)-1) / 2) {
                b->fail = true;
                return;
            }
            cap *= 2;
        }
        char *d = realloc(b->d, cap);
        if (!d) {
            b->fail = true;
            return;
        }
        b->d = d;
        b->cap = cap;
    }
    memcpy(b->d + b->n, s, n);
    b->n += n;
    b->d[b->n] = '\0';
}

static void s_puts(s_buf_t *b, const char *s)
{
    s_put(b, s, strlen(s));
}

static void s_printf(s_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_printf(s_buf_t *b, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) {
        b->fail = true;
        return;
    }
    s_put(b, tmp, (size_t)n);
}

//  Length of the valid UTF-8 sequence at p (1..4), or 0 if invalid; on 0,
//  *skip is how many bytes form the invalid (maximal) prefix, at least 1.
static size_t s_utf8(const uint8_t *p, size_t left, size_t *skip)
{
    uint8_t c = p[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xbf; //  allowed range of the second byte
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        need = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        need = 3;
        if (c == 0xe0)
            lo = 0xa0; //  no overlongs
        if (c == 0xed)
            hi = 0x9f; //  no surrogates
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 4;
        if (c == 0xf0)
            lo = 0x90;
        if (c == 0xf4)
            hi = 0x8f; //  nothing above U+10FFFF
    } else {
        *skip = 1;
        return 0;
    }
    size_t k = 1;
    for (; k < need; k++) {
        if (k >= left)
            break;
        uint8_t x = p[k];
        if (k == 1 ? (x < lo || x > hi) : (x < 0x80 || x > 0xbf))
            break;
    }
    if (k == need)
        return need;
    *skip = k;
    return 0;
}

static void s_str(s_buf_t *b, const char *s, size_t n)
{
    const uint8_t *p = (const uint8_t *)s;
    s_put(b, "\"", 1);
    size_t run = 0; //  start of bytes to copy unchanged
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        const char *esc = NULL;
        char u[8];
        size_t step = 1;
        if (c == '"')
            esc = "\\\"";
        else if (c == '\\')
            esc = "\\\\";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c == '\b')
            esc = "\\b";
        else if (c == '\f')
            esc = "\\f";
        else if (c < 0x20) {
            snprintf(u, sizeof u, "\\u%04x", c);
            esc = u;
        } else if (c >= 0x80) {
            size_t skip = 1;
            step = s_utf8(p + i, n - i, &skip);
            if (step == 0) {
                esc = "\\ufffd";
                step = skip;
            }
        }
        if (esc) {
            s_put(b, s + run, i - run);
            s_puts(b, esc);
            run = i + step;
        }
        i += step;
    }
    s_put(b, s + run, n - run);
    s_put(b, "\"", 1);
}

static void s_base64(s_buf_t *b, const char *data, size_t n)
{
    unsigned char out[4096 + 1];
    s_put(b, "\"", 1);
    //  3072 is a multiple of 3, so chunks concatenate into one valid base64 text
    for (size_t off = 0; off < n && !b->fail; off += 3072) {
        size_t k = n - off < 3072 ? n - off : 3072;
        int m = EVP_EncodeBlock(out, (const unsigned char *)data + off, (int)k);
        if (m < 0) {
            b->fail = true;
            return;
        }
        s_put(b, (const char *)out, (size_t)m);
    }
    s_put(b, "\"", 1);
}

static void s_double(s_buf_t *b, double v, bool single)
{
    if (!isfinite(v)) {
        s_puts(b, "null");
        return;
    }
    char tmp[40];
    //  the shortest %g that reads back to the same value
    for (int prec = single ? 6 : 15; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        double back = strtod(tmp, NULL);
        if (single ? (float)back == (float)v : back == v)
            break;
    }
    s_puts(b, tmp);
}

static void s_time(s_buf_t *b, const msgpack_object *o)
{
    msgpack_timestamp ts;
    if (!msgpack_object_to_timestamp(o, &ts) || ts.tv_nsec >= 1000000000u) {
        s_puts(b, "null");
        return;
    }
    char frac[16] = "";
    if (ts.tv_nsec) {
        snprintf(frac, sizeof frac, ".%09u", ts.tv_nsec);
        size_t n = strlen(frac);
        while (frac[n - 1] == '0')
            frac[--n] = '\0';
    }
    struct tm tm;
    time_t t = (time_t)ts.tv_sec;
    if (gmtime_r(&t, &tm) && tm.tm_year >= -1900 && tm.tm_year <= 9999 - 1900) {
        char d[40];
        snprintf(d, sizeof d, "\"%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1,
                 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        s_puts(b, d);
        s_puts(b, frac);
        s_puts(b, "Z\"");
        return;
    }
    //  out of RFC 3339's range: seconds as a number
    if (ts.tv_sec < 0 && ts.tv_nsec) {
        snprintf(frac, sizeof frac, ".%09u", 1000000000u - ts.tv_nsec);
        size_t n = strlen(frac);
        while (frac[n - 1] == '0')
            frac[--n] = '\0';
        s_printf(b, "-%lld%s", -(long long)(ts.tv_sec + 1), frac);
    } else {
        s_printf(b, "%lld%s", (long long)ts.tv_sec, frac);
    }
}

static void s_obj(s_buf_t *b, const msgpack_object *o, unsigned depth);

static void s_key(s_buf_t *b, const msgpack_object *k, unsigned depth)
{
    if (k->type == MSGPACK_OBJECT_STR) {
        s_str(b, k->via.str.ptr, k->via.str.size);
        return;
    }
    s_buf_t tmp = {NULL, 0, 0, false, S_KEY_MAX, false};
    s_obj(&tmp, k, depth);
    if (tmp.fail) {
        b->fail = true;
    } else {
        s_str(b, tmp.d ? tmp.d : "", tmp.n);
        if (tmp.truncated && !b->fail && b->n > 0) {
            b->n--; //  reopen the string to mark the cut
            s_puts(b, "...\"");
        }
    }
    free(tmp.d);
}

static void s_obj(s_buf_t *b, const msgpack_object *o, unsigned depth)
{
    if (b->fail || b->truncated)
        return;
    if (depth > PM_JSON_MAX_DEPTH) {
        b->fail = true;
        return;
    }
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        s_puts(b, "null");
        break;
    case MSGPACK_OBJECT_BOOLEAN:
        s_puts(b, o->via.boolean ? "true" : "false");
        break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        s_printf(b, "%llu", (unsigned long long)o->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        s_printf(b, "%lld", (long long)o->via.i64);
        break;
    case MSGPACK_OBJECT_FLOAT32:
        s_double(b, o->via.f64, true);
        break;
    case MSGPACK_OBJECT_FLOAT64:
        s_double(b, o->via.f64, false);
        break;
    case MSGPACK_OBJECT_STR:
        s_str(b, o->via.str.ptr, o->via.str.size);
        break;
    case MSGPACK_OBJECT_BIN:
        s_base64(b, o->via.bin.ptr, o->via.bin.size);
        break;
    case MSGPACK_OBJECT_EXT:
        if (o->via.ext.type == -1) {
            s_time(b, o);
        } else {
            s_printf(b, "{\"ext\":%d,\"data\":", (int)o->via.ext.type);
            s_base64(b, o->via.ext.ptr, o->via.ext.size);
            s_puts(b, "}");
        }
        break;
    case MSGPACK_OBJECT_ARRAY:
        s_put(b, "[", 1);
        for (uint32_t i = 0; i < o->via.array.size && !b->fail; i++) {
            if (i)
                s_put(b, ",", 1);
            s_obj(b, &o->via.array.ptr[i], depth + 1);
        }
        s_put(b, "]", 1);
        break;
    case MSGPACK_OBJECT_MAP:
        s_put(b, "{", 1);
        for (uint32_t i = 0; i < o->via.map.size && !b->fail; i++) {
            if (i)
                s_put(b, ",", 1);
            s_key(b, &o->via.map.ptr[i].key, depth + 1);
            s_put(b, ":", 1);
            s_obj(b, &o->via.map.ptr[i].val, depth + 1);
        }
        s_put(b, "}", 1);
        break;
    default:
        s_puts(b, "null");
        break;
    }
}

static char *s_finish(s_buf_t *b, size_t *len)
{
    if (b->fail || !b->d) {
        free(b->d);
        return NULL;
    }
    if (len)
        *len = b->n;
    return b->d;
}

char *pm_json_from_obj(const msgpack_object *obj, size_t *len)
{
    s_buf_t b = {NULL, 0, 0, false, 0, false};
    if (!obj)
        return NULL;
    s_obj(&b, obj, 1);
    return s_finish(&b, len);
}

char *pm_json_from_msg(const pm_msg_t *msg, size_t *len)
{
    s_buf_t b = {NULL, 0, 0, false, 0, false};
    const pm_msgdef_t *def = msg ? pm_msgdef(pm_msg_type(msg)) : NULL;
    if (!def)
        return NULL;
    s_puts(&b, "{\"type\":");
    s_str(&b, def->name, strlen(def->name));
    s_puts(&b, ",\"rid\":");
    const char *rid = pm_msg_rid(msg);
    s_str(&b, rid, strlen(rid));
    s_printf(&b, ",\"ts\":%llu,\"body\":{", (unsigned long long)pm_msg_ts(msg));
    bool first = true;
    for (int f = 0; f < def->nfields; f++) {
        const msgpack_object *o = pm_msg_obj(msg, def->fields[f].name);
        if (!o)
            continue;
        if (!first)
            s_put(&b, ",", 1);
        first = false;
        s_str(&b, def->fields[f].name, strlen(def->fields[f].name));
        s_put(&b, ":", 1);
        s_obj(&b, o, 2);
    }
    s_puts(&b, "}}");
    return s_finish(&b, len);
}
