/*  cli_render — text rendering of bus values (see cli_render.h). */
#include "cli_render.h"

#include <inttypes.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define S_MAX_DEPTH 16
#define S_INLINE_MAX 100 //  arrays of scalars shorter than this stay on one line

const msgpack_object *cli_map_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP || !key)
        return NULL;
    size_t n = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            memcmp(k->via.str.ptr, key, n) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static bool s_time_key(const char *key)
{
    static const char *const keys[] = {"created",  "delivered",  "expires",
                                       "received", "first_seen", "last_seen",
                                       "ts",       "time",       NULL};
    for (int i = 0; key && keys[i]; i++)
        if (strcmp(key, keys[i]) == 0)
            return true;
    return false;
}

static void s_time(char *buf, size_t size, int64_t sec, uint32_t nsec)
{
    time_t t = (time_t)sec;
    struct tm tm;
    if (!gmtime_r(&t, &tm)) {
        snprintf(buf, size, "%" PRId64, sec);
        return;
    }
    char base[32];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    if (nsec)
        snprintf(buf, size, "%s.%03uZ", base, nsec / 1000000);
    else
        snprintf(buf, size, "%sZ", base);
}

//  The msgpack timestamp extension (type -1): 4, 8 or 12 bytes.
static bool s_timestamp(const msgpack_object *o, int64_t *sec, uint32_t *nsec)
{
    if (o->type != MSGPACK_OBJECT_EXT || o->via.ext.type != -1)
        return false;
    const unsigned char *p = (const unsigned char *)o->via.ext.ptr;
    uint32_t n = o->via.ext.size;
    uint64_t v = 0;
    if (n == 4) {
        for (int i = 0; i < 4; i++)
            v = v << 8 | p[i];
        *sec = (int64_t)v;
        *nsec = 0;
        return true;
    }
    if (n == 8) {
        for (int i = 0; i < 8; i++)
            v = v << 8 | p[i];
        *nsec = (uint32_t)(v >> 34);
        *sec = (int64_t)(v & 0x3ffffffffULL);
        return true;
    }
    if (n == 12) {
        uint32_t ns = 0;
        for (int i = 0; i < 4; i++)
            ns = ns << 8 | p[i];
        for (int i = 4; i < 12; i++)
            v = v << 8 | p[i];
        *nsec = ns;
        *sec = (int64_t)v;
        return true;
    }
    return false;
}

const char *cli_render_scalar(const char *key, const msgpack_object *o, char *buf, size_t size)
{
    int64_t sec;
    uint32_t nsec;
    if (!size)
        return buf;
    buf[0] = 0;
    if (!o) {
        snprintf(buf, size, "-");
        return buf;
    }
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        snprintf(buf, size, "-");
        break;
    case MSGPACK_OBJECT_BOOLEAN:
        snprintf(buf, size, "%s", o->via.boolean ? "true" : "false");
        break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        //  times on the bus are ms since the epoch when they are plain integers
        if (s_time_key(key) && o->via.u64 > 100000000000ULL && o->via.u64 < 100000000000000ULL)
            s_time(buf, size, (int64_t)(o->via.u64 / 1000),
                   (uint32_t)(o->via.u64 % 1000) * 1000000);
        else if (s_time_key(key) && o->via.u64 == 0)
            snprintf(buf, size, "-");
        else
            snprintf(buf, size, "%" PRIu64, o->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        snprintf(buf, size, "%" PRId64, o->via.i64);
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        snprintf(buf, size, "%g", o->via.f64);
        break;
    case MSGPACK_OBJECT_STR: {
        //  one line: control characters become '?'
        size_t n = o->via.str.size < size - 1 ? o->via.str.size : size - 1;
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)o->via.str.ptr[i];
            buf[i] = c < 0x20 || c == 0x7f ? '?' : (char)c;
        }
        buf[n] = 0;
        break;
    }
    case MSGPACK_OBJECT_BIN: {
        uint32_t n = o->via.bin.size;
        if (n <= 32) {
            size_t used = 0;
            for (uint32_t i = 0; i < n && used + 3 < size; i++)
                used += (size_t)snprintf(buf + used, size - used, "%02x",
                                         (unsigned char)o->via.bin.ptr[i]);
            snprintf(buf + used, size - used, "%s(%u bytes)", n ? " " : "", n);
        } else
            snprintf(buf, size, "<data, %u bytes>", n);
        break;
    }
    case MSGPACK_OBJECT_EXT:
        if (s_timestamp(o, &sec, &nsec))
            s_time(buf, size, sec, nsec);
        else
            snprintf(buf, size, "<ext %d, %u bytes>", o->via.ext.type, o->via.ext.size);
        break;
    case MSGPACK_OBJECT_ARRAY:
        snprintf(buf, size, "<%u items>", o->via.array.size);
        break;
    case MSGPACK_OBJECT_MAP:
        snprintf(buf, size, "<%u keys>", o->via.map.size);
        break;
    default:
        snprintf(buf, size, "?");
    }
    return buf;
}

static bool s_is_scalar(const msgpack_object *o)
{
    return o->type != MSGPACK_OBJECT_ARRAY && o->type != MSGPACK_OBJECT_MAP;
}

static void s_render_value(FILE *out, const char *key, const msgpack_object *v, int indent,
                           int depth);

static void s_render_map(FILE *out, const msgpack_object *map, int indent, const char *const *skip,
                         int depth)
{
    if (depth > S_MAX_DEPTH) {
        fprintf(out, "%*s...\n", indent, "");
        return;
    }
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        char key[128];
        cli_render_scalar(NULL, k, key, sizeof key);
        bool skipped = false;
        for (int s = 0; skip && skip[s] && !skipped; s++)
            skipped = strcmp(skip[s], key) == 0;
        if (!skipped)
            s_render_value(out, key, &map->via.map.ptr[i].val, indent, depth);
    }
}

static void s_render_value(FILE *out, const char *key, const msgpack_object *v, int indent,
                           int depth)
{
    char buf[512];
    if (strcmp(key, "ErrorChain") == 0 && v->type == MSGPACK_OBJECT_ARRAY) {
        fprintf(out, "%*s%s:\n", indent, "", key);
        cli_render_error_chain(out, v, indent + 2);
        return;
    }
    if (v->type == MSGPACK_OBJECT_MAP) {
        fprintf(out, "%*s%s:%s\n", indent, "", key, v->via.map.size ? "" : " {}");
        s_render_map(out, v, indent + 2, NULL, depth + 1);
        return;
    }
    if (v->type != MSGPACK_OBJECT_ARRAY) {
        fprintf(out, "%*s%s: %s\n", indent, "", key, cli_render_scalar(key, v, buf, sizeof buf));
        return;
    }
    //  arrays: scalars inline when short, otherwise one "-" per item
    bool scalars = true;
    size_t width = 0;
    for (uint32_t i = 0; i < v->via.array.size && scalars; i++) {
        scalars = s_is_scalar(&v->via.array.ptr[i]);
        width += strlen(cli_render_scalar(key, &v->via.array.ptr[i], buf, sizeof buf)) + 2;
    }
    if (scalars && width < S_INLINE_MAX) {
        fprintf(out, "%*s%s: [", indent, "", key);
        for (uint32_t i = 0; i < v->via.array.size; i++)
            fprintf(out, "%s%s", i ? ", " : "",
                    cli_render_scalar(key, &v->via.array.ptr[i], buf, sizeof buf));
        fprintf(out, "]\n");
        return;
    }
    fprintf(out, "%*s%s: (%u)\n", indent, "", key, v->via.array.size);
    for (uint32_t i = 0; i < v->via.array.size; i++) {
        const msgpack_object *it = &v->via.array.ptr[i];
        if (it->type == MSGPACK_OBJECT_MAP && depth < S_MAX_DEPTH) {
            fprintf(out, "%*s-\n", indent + 2, "");
            s_render_map(out, it, indent + 4, NULL, depth + 1);
        } else if (s_is_scalar(it))
            fprintf(out, "%*s- %s\n", indent + 2, "", cli_render_scalar(key, it, buf, sizeof buf));
        else
            s_render_value(out, "-", it, indent + 2, depth + 1);
    }
}

void cli_render_map(FILE *out, const msgpack_object *map, int indent, const char *const *skip)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP) {
        char buf[512];
        fprintf(out, "%*s%s\n", indent, "", cli_render_scalar(NULL, map, buf, sizeof buf));
        return;
    }
    s_render_map(out, map, indent, skip, 0);
}

void cli_render_error_chain(FILE *out, const msgpack_object *chain, int indent)
{
    if (!chain || chain->type != MSGPACK_OBJECT_ARRAY)
        return;
    for (uint32_t i = 0; i < chain->via.array.size; i++) {
        const msgpack_object *e = &chain->via.array.ptr[i];
        char domain[160], code[32], desc[512], us[512];
        cli_render_scalar(NULL, cli_map_get(e, "ErrorDomain"), domain, sizeof domain);
        cli_render_scalar(NULL, cli_map_get(e, "ErrorCode"), code, sizeof code);
        cli_render_scalar(NULL, cli_map_get(e, "LocalizedDescription"), desc, sizeof desc);
        cli_render_scalar(NULL, cli_map_get(e, "USEnglishDescription"), us, sizeof us);
        fprintf(out, "%*s%u. %s %s: %s", indent, "", i + 1, domain, code, desc);
        if (strcmp(us, "-") != 0 && strcmp(us, desc) != 0)
            fprintf(out, " (%s)", us);
        fprintf(out, "\n");
    }
}
