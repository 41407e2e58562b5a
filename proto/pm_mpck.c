/*  pm_mpck — bounded pre-scan of msgpack bytes before msgpack-c sees them,
 *  plus small helpers to read msgpack objects. Part of libpicomdm (every
 *  process decodes bus messages through it).
 *
 *  The scan is iterative: an explicit stack of "items still to read" per open
 *  container, bounded by max_depth, so hostile nesting cannot blow the C stack.
 *  Besides the per-container check (a container of n items needs at least n
 *  bytes, a map 2n), the sum of everything still owed over all open containers
 *  must fit in the bytes left, which rejects "nested promises" early.
 */
#include "pm_mpck.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  msgpack-c's unpacker has a fixed stack of this many open containers
//  (MSGPACK_EMBED_STACK_SIZE); deeper input makes msgpack_unpack fail, so the
//  effective depth limit never exceeds it.
#define S_MSGPACK_C_MAX_DEPTH 32

static void s_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void s_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t s_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

//  Classify one header at p (avail bytes present, avail >= 1).
//  *hdr = header bytes; *body = payload bytes that follow (str/bin/ext/scalars);
//  *items = child objects that follow (array n, map 2n). Returns -1 if the
//  header itself is truncated or reserved.
static int s_header(const uint8_t *p, size_t avail, size_t *hdr, uint64_t *body, uint64_t *items,
                    bool *is_container, uint64_t *count)
{
    uint8_t b = p[0];
    *body = 0;
    *items = 0;
    *is_container = false;
    *count = 0;
    int lenbytes = 0; //  size of a length field following the type byte
    int kind = 0;     //  0 scalar with fixed body, 1 str/bin, 2 ext, 3 array, 4 map
    size_t fixed = 0;

    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
        *hdr = 1;
        return 0;
    }
    if ((b & 0xf0) == 0x80) { //  fixmap
        *hdr = 1;
        *is_container = true;
        *count = b & 0x0f;
        *items = *count * 2;
        return 0;
    }
    if ((b & 0xf0) == 0x90) { //  fixarray
        *hdr = 1;
        *is_container = true;
        *count = b & 0x0f;
        *items = *count;
        return 0;
    }
    if ((b & 0xe0) == 0xa0) { //  fixstr
        *hdr = 1;
        *body = b & 0x1f;
        return 0;
    }
    switch (b) {
    case 0xc1:
        return -1; //  reserved, never valid
    case 0xc4:
    case 0xd9:
        lenbytes = 1;
        kind = 1;
        break;
    case 0xc5:
    case 0xda:
        lenbytes = 2;
        kind = 1;
        break;
    case 0xc6:
    case 0xdb:
        lenbytes = 4;
        kind = 1;
        break;
    case 0xc7:
        lenbytes = 1;
        kind = 2;
        break;
    case 0xc8:
        lenbytes = 2;
        kind = 2;
        break;
    case 0xc9:
        lenbytes = 4;
        kind = 2;
        break;
    case 0xca:
        fixed = 4;
        break;
    case 0xcb:
        fixed = 8;
        break;
    case 0xcc:
    case 0xd0:
        fixed = 1;
        break;
    case 0xcd:
    case 0xd1:
        fixed = 2;
        break;
    case 0xce:
    case 0xd2:
        fixed = 4;
        break;
    case 0xcf:
    case 0xd3:
        fixed = 8;
        break;
    case 0xd4:
        fixed = 1 + 1;
        break; //  fixext: type byte + data
    case 0xd5:
        fixed = 1 + 2;
        break;
    case 0xd6:
        fixed = 1 + 4;
        break;
    case 0xd7:
        fixed = 1 + 8;
        break;
    case 0xd8:
        fixed = 1 + 16;
        break;
    case 0xdc:
        lenbytes = 2;
        kind = 3;
        break;
    case 0xdd:
        lenbytes = 4;
        kind = 3;
        break;
    case 0xde:
        lenbytes = 2;
        kind = 4;
        break;
    case 0xdf:
        lenbytes = 4;
        kind = 4;
        break;
    default:
        return -1;
    }
    if (kind == 0) {
        *hdr = 1;
        *body = fixed;
        return 0;
    }
    if (avail < 1 + (size_t)lenbytes)
        return -2; //  truncated header
    uint64_t n = s_be(p + 1, lenbytes);
    *hdr = 1 + (size_t)lenbytes;
    switch (kind) {
    case 1:
        *body = n;
        break;
    case 2:
        *body = n + 1; //  the ext type byte
        break;
    case 3:
        *is_container = true;
        *count = n;
        *items = n;
        break;
    default:
        *is_container = true;
        *count = n;
        *items = n * 2;
        break;
    }
    return 0;
}

int pm_mpck_check(const uint8_t *data, size_t len, const pm_mpck_limits_t *lim, bool exact,
                  size_t *used, char *err, size_t errlen)
{
    int rc = -1;
    uint64_t stack_local[S_MSGPACK_C_MAX_DEPTH + 1];
    uint64_t *need = stack_local;
    unsigned max_depth = lim ? lim->max_depth : S_MSGPACK_C_MAX_DEPTH;
    size_t max_elements = lim ? lim->max_elements : (size_t)-1;
    if (max_depth > S_MSGPACK_C_MAX_DEPTH)
        max_depth = S_MSGPACK_C_MAX_DEPTH;

    if (!data && len > 0) {
        s_err(err, errlen, "msgpack: no data");
        goto out;
    }
    size_t pos = 0;
    unsigned sp = 0;   //  containers currently open
    uint64_t owed = 1; //  objects still to read, all levels together
    uint64_t elements = 0;
    need[0] = 1;
    while (owed > 0) {
        while (need[sp] == 0)
            sp--;
        if (pos >= len) {
            s_err(err, errlen, "msgpack: truncated (%llu more object(s) expected at byte %zu)",
                  (unsigned long long)owed, pos);
            goto out;
        }
        size_t hdr;
        uint64_t body, items, count;
        bool container;
        int h = s_header(data + pos, len - pos, &hdr, &body, &items, &container, &count);
        if (h == -1) {
            s_err(err, errlen, "msgpack: invalid type byte 0x%02x at byte %zu", data[pos], pos);
            goto out;
        }
        if (h == -2) {
            s_err(err, errlen, "msgpack: truncated header at byte %zu", pos);
            goto out;
        }
        need[sp]--;
        owed--;
        size_t at = pos;
        pos += hdr;
        size_t left = len - pos;
        if (body > left) {
            s_err(err, errlen, "msgpack: length %llu at byte %zu is larger than the %zu bytes left",
                  (unsigned long long)body, at, left);
            goto out;
        }
        pos += (size_t)body;
        if (!container)
            continue;
        if (sp + 1 > max_depth) {
            s_err(err, errlen, "msgpack: nesting deeper than %u at byte %zu", max_depth, at);
            goto out;
        }
        //  every object needs at least one byte
        if (items > left || owed + items > left) {
            s_err(err, errlen, "msgpack: %s of %llu at byte %zu cannot fit in the %zu bytes left",
                  items == count ? "array" : "map", (unsigned long long)count, at, left);
            goto out;
        }
        elements += count;
        if (elements > max_elements) {
            s_err(err, errlen, "msgpack: more than %zu array/map elements (at byte %zu)",
                  max_elements, at);
            goto out;
        }
        if (items > 0) {
            sp++;
            need[sp] = items;
            owed += items;
        }
    }
    if (exact && pos != len) {
        s_err(err, errlen, "msgpack: %zu trailing byte(s) after the object", len - pos);
        goto out;
    }
    if (used)
        *used = pos;
    rc = 0;
out:
    return rc;
}

int pm_mpck_unpack(const uint8_t *data, size_t len, const pm_mpck_limits_t *lim, msgpack_zone *zone,
                   msgpack_object *obj, char *err, size_t errlen)
{
    if (!zone || !obj) {
        s_err(err, errlen, "msgpack: no zone or object to unpack into");
        return -1;
    }
    if (pm_mpck_check(data, len, lim, true, NULL, err, errlen) != 0)
        return -1;
    size_t off = 0;
    msgpack_unpack_return r = msgpack_unpack((const char *)data, len, &off, zone, obj);
    if (r != MSGPACK_UNPACK_SUCCESS) {
        s_err(err, errlen, "msgpack: unpack failed (%d) after a clean pre-scan", (int)r);
        return -1;
    }
    return 0;
}

const msgpack_object *pm_mp_get(const msgpack_object *map, const char *key)
{
    if (!map || !key || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t klen = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == klen &&
            (klen == 0 || memcmp(kv->key.via.str.ptr, key, klen) == 0))
            return &kv->val;
    }
    return NULL;
}

int pm_mp_get_str(const msgpack_object *map, const char *key, char *buf, size_t size)
{
    const msgpack_object *v = pm_mp_get(map, key);
    if (!v || v->type != MSGPACK_OBJECT_STR || !buf || v->via.str.size >= size)
        return -1;
    if (v->via.str.size)
        memcpy(buf, v->via.str.ptr, v->via.str.size);
    buf[v->via.str.size] = '\0';
    return 0;
}

bool pm_mp_str_eq(const msgpack_object *obj, const char *s)
{
    if (!obj || !s || obj->type != MSGPACK_OBJECT_STR)
        return false;
    size_t n = strlen(s);
    return obj->via.str.size == n && (n == 0 || memcmp(obj->via.str.ptr, s, n) == 0);
}
