/*  pm_msg — the bus message table (expanded from pm_msgtab.def), the message
 *  object, its encoder and its strict decoder. Part of libpicomdm; every
 *  process puts messages on the bus and reads them through this file.
 *
 *  A message is one malloc (header + one msgpack_object slot per declared
 *  field) plus a msgpack_zone created on first need. All field values (and
 *  on decode, a private copy of the input bytes) live in that zone, so a
 *  message is freed with one zone destroy and one free, whatever it holds.
 */
#include "pm_msg.h"
#include "pm_mpck.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* ---- the table ---- */

#define REQ true
#define OPT false
#define PM_MSG(id, name, svc, doc) static const pm_field_t s_fields_##id[] = {
#define PM_FIELD(id, name, type, req, doc) {name, PM_T_##type, req, doc},
#define PM_END(id)                                                                                 \
    {                                                                                              \
        NULL, 0, false, NULL                                                                       \
    }                                                                                              \
    }                                                                                              \
    ;
#include "pm_msgtab.def"
#undef PM_MSG
#undef PM_FIELD
#undef PM_END

static const pm_msgdef_t s_table[PM_MSG_COUNT] = {
    [PM_MSG_INVALID] = {PM_MSG_INVALID, NULL, NULL, NULL, NULL, 0},
#define PM_MSG(id, name, svc, doc)                                                                 \
    [PM_MSG_##id] = {PM_MSG_##id,   name,                                                          \
                     svc,           doc,                                                           \
                     s_fields_##id, (int)(sizeof(s_fields_##id) / sizeof(s_fields_##id[0]) - 1)},
#define PM_FIELD(id, name, type, req, doc)
#define PM_END(id)
#include "pm_msgtab.def"
#undef PM_MSG
#undef PM_FIELD
#undef PM_END
};
#undef REQ
#undef OPT

//  presence is a 64-bit mask; the unit test checks no message has more fields
#define S_MAX_FIELDS 64

const pm_msgdef_t *pm_msgdef(pm_msg_type_t type)
{
    if ((int)type <= PM_MSG_INVALID || type >= PM_MSG_COUNT)
        return NULL;
    return &s_table[type];
}

const char *pm_msg_type_name(pm_msg_type_t type)
{
    const pm_msgdef_t *d = pm_msgdef(type);
    return d ? d->name : "invalid";
}

const char *pm_ftype_name(pm_ftype_t t)
{
    switch (t) {
    case PM_T_STR:
        return "str";
    case PM_T_INT:
        return "int";
    case PM_T_UINT:
        return "uint";
    case PM_T_BOOL:
        return "bool";
    case PM_T_FLOAT:
        return "float";
    case PM_T_BIN:
        return "bin";
    case PM_T_MAP:
        return "map";
    case PM_T_ARRAY:
        return "array";
    case PM_T_STRS:
        return "strs";
    case PM_T_ANY:
        return "any";
    case PM_T_TIME:
        return "time";
    }
    return "invalid";
}

/* ---- name lookup: FNV-1a hash, open addressing, built once ---- */

#define S_HASH_SLOTS 512              //  power of two, well above 2 * PM_MSG_COUNT
static uint16_t s_hash[S_HASH_SLOTS]; //  pm_msg_type_t, 0 = empty
static pthread_once_t s_hash_once = PTHREAD_ONCE_INIT;

static uint64_t s_fnv(uint64_t h, const void *data, size_t len)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}
#define S_FNV_INIT 0xcbf29ce484222325ULL

static void s_hash_build(void)
{
    for (int t = 1; t < PM_MSG_COUNT; t++) {
        const char *n = s_table[t].name;
        size_t i = s_fnv(S_FNV_INIT, n, strlen(n)) & (S_HASH_SLOTS - 1);
        while (s_hash[i])
            i = (i + 1) & (S_HASH_SLOTS - 1);
        s_hash[i] = (uint16_t)t;
    }
}

static pm_msg_type_t s_type_lookup(const char *name, size_t len)
{
    pthread_once(&s_hash_once, s_hash_build);
    size_t i = s_fnv(S_FNV_INIT, name, len) & (S_HASH_SLOTS - 1);
    while (s_hash[i]) {
        const char *n = s_table[s_hash[i]].name;
        if (strlen(n) == len && memcmp(n, name, len) == 0)
            return (pm_msg_type_t)s_hash[i];
        i = (i + 1) & (S_HASH_SLOTS - 1);
    }
    return PM_MSG_INVALID;
}

pm_msg_type_t pm_msg_type_from_name(const char *name)
{
    if (!name)
        return PM_MSG_INVALID;
    return s_type_lookup(name, strlen(name));
}

uint64_t pm_msg_table_fingerprint(void)
{
    uint64_t h = S_FNV_INIT;
    for (int t = 1; t < PM_MSG_COUNT; t++) {
        const pm_msgdef_t *d = &s_table[t];
        h = s_fnv(h, "M", 1);
        h = s_fnv(h, d->name, strlen(d->name) + 1);
        h = s_fnv(h, d->service, strlen(d->service) + 1);
        for (int f = 0; f < d->nfields; f++) {
            const pm_field_t *fd = &d->fields[f];
            uint8_t tr[2] = {(uint8_t)fd->type, fd->required ? 1 : 0};
            h = s_fnv(h, "F", 1);
            h = s_fnv(h, fd->name, strlen(fd->name) + 1);
            h = s_fnv(h, tr, sizeof tr);
        }
    }
    return h;
}

/* ---- the message object ---- */

struct pm_msg {
    const pm_msgdef_t *def;
    uint64_t ts;
    uint64_t present; //  bit i: field i is set
    size_t elements;  //  array/map entries held (bounded like a decoded message)
    bool zone_ready;
    msgpack_zone zone;
    char rid[PM_RID_MAX + 1];
    msgpack_object vals[]; //  one per declared field
};

static const pm_mpck_limits_t s_limits = {PM_MSG_MAX_DEPTH, PM_MSG_MAX_ELEMENTS};

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

static uint64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

//  Request ids: 32 lowercase hex chars. The first half is random per thread
//  (getrandom once), the second a bijective mix of a per-thread counter, so
//  ids never repeat within a thread and collide across threads/processes only
//  with 2^-64 odds. A fork bumps a generation so the child re-seeds.
static volatile unsigned s_fork_gen = 1;
static pthread_once_t s_atfork_once = PTHREAD_ONCE_INIT;
static void s_on_fork_child(void)
{
    s_fork_gen++;
}
static void s_atfork_install(void)
{
    pthread_atfork(NULL, NULL, s_on_fork_child);
}

static uint64_t s_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void s_new_rid(char out[33])
{
    static __thread uint64_t prefix, key, ctr;
    static __thread unsigned gen;
    pthread_once(&s_atfork_once, s_atfork_install);
    if (gen != s_fork_gen) {
        uint64_t seed[2] = {0, 0};
        if (getrandom(seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            seed[0] = s_mix((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^
                            (uint64_t)(uintptr_t)&ts);
            seed[1] = s_mix(seed[0] ^ (uint64_t)s_now_ms());
        }
        prefix = seed[0];
        key = seed[1];
        ctr = 0;
        gen = s_fork_gen;
    }
    uint64_t lo = s_mix(++ctr ^ key);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        out[i] = hex[(prefix >> (60 - 4 * i)) & 0xf];
        out[16 + i] = hex[(lo >> (60 - 4 * i)) & 0xf];
    }
    out[32] = '\0';
}

static bool s_rid_ok(const char *p, size_t len)
{
    if (len == 0 || len > PM_RID_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (p[i] < 0x21 || p[i] > 0x7e) //  printable ASCII, no space
            return false;
    return true;
}

static msgpack_zone *s_zone(pm_msg_t *msg, size_t chunk)
{
    if (!msg->zone_ready) {
        if (!msgpack_zone_init(&msg->zone, chunk < 256 ? 256 : chunk))
            return NULL;
        msg->zone_ready = true;
    }
    return &msg->zone;
}

static pm_msg_t *s_alloc(pm_msg_type_t type)
{
    const pm_msgdef_t *def = pm_msgdef(type);
    if (!def)
        return NULL;
    pm_msg_t *msg = malloc(sizeof *msg + (size_t)def->nfields * sizeof(msgpack_object));
    if (!msg)
        return NULL;
    msg->def = def;
    msg->ts = 0;
    msg->present = 0;
    msg->elements = 0;
    msg->zone_ready = false;
    msg->rid[0] = '\0';
    return msg;
}

pm_msg_t *pm_msg_new(pm_msg_type_t type)
{
    pm_msg_t *msg = s_alloc(type);
    if (!msg)
        return NULL;
    s_new_rid(msg->rid);
    msg->ts = s_now_ms();
    return msg;
}

pm_msg_t *pm_msg_new_reply(const pm_msg_t *req, pm_msg_type_t type)
{
    pm_msg_t *msg = pm_msg_new(type);
    if (msg && req)
        memcpy(msg->rid, req->rid, sizeof msg->rid);
    return msg;
}

pm_msg_t *pm_msg_new_error(const pm_msg_t *req, const char *code, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    pm_msg_t *msg = pm_msg_new_reply(req, PM_MSG_ERROR);
    if (!msg)
        return NULL;
    if (pm_msg_set_str(msg, "code", code ? code : "internal") != 0 ||
        pm_msg_set_str(msg, "message", text) != 0)
        pm_msg_destroy(&msg);
    return msg;
}

void pm_msg_destroy(pm_msg_t **msgp)
{
    if (!msgp || !*msgp)
        return;
    pm_msg_t *msg = *msgp;
    if (msg->zone_ready)
        msgpack_zone_destroy(&msg->zone);
    free(msg);
    *msgp = NULL;
}

pm_msg_type_t pm_msg_type(const pm_msg_t *msg)
{
    return msg ? msg->def->type : PM_MSG_INVALID;
}
const char *pm_msg_rid(const pm_msg_t *msg)
{
    return msg ? msg->rid : NULL;
}
uint64_t pm_msg_ts(const pm_msg_t *msg)
{
    return msg ? msg->ts : 0;
}

int pm_msg_set_rid(pm_msg_t *msg, const char *rid)
{
    if (!msg || !rid)
        return -1;
    size_t n = strlen(rid);
    if (!s_rid_ok(rid, n))
        return -1;
    memcpy(msg->rid, rid, n + 1);
    return 0;
}

int pm_msg_set_ts(pm_msg_t *msg, uint64_t ts)
{
    if (!msg)
        return -1;
    msg->ts = ts;
    return 0;
}

/* ---- type checks shared by setters and the decoder ---- */

static bool s_name_eq(const char *n, const char *name, size_t len)
{
    return strlen(n) == len && memcmp(n, name, len) == 0;
}

static int s_field_index(const pm_msgdef_t *def, const char *name, size_t len, int hint)
{
    if (hint >= 0 && hint < def->nfields && s_name_eq(def->fields[hint].name, name, len))
        return hint;
    for (int i = 0; i < def->nfields; i++)
        if (s_name_eq(def->fields[i].name, name, len))
            return i;
    return -1;
}

//  A str from the wire, made safe for a one-line log message: at most
//  size-4 chars, anything but printable ASCII shown as '?', "..." if cut.
static const char *s_safe(char *buf, size_t size, const msgpack_object *o)
{
    size_t n = o->via.str.size, k = 0;
    for (; k < n && k + 4 < size; k++) {
        char c = o->via.str.ptr[k];
        buf[k] = c >= 0x20 && c < 0x7f ? c : '?';
    }
    if (k < n)
        for (int d = 0; d < 3; d++)
            buf[k++] = '.';
    buf[k] = '\0';
    return buf;
}

static const char *s_otype_name(msgpack_object_type t)
{
    switch (t) {
    case MSGPACK_OBJECT_NIL:
        return "nil";
    case MSGPACK_OBJECT_BOOLEAN:
        return "bool";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return "uint";
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return "negative int";
    case MSGPACK_OBJECT_FLOAT32:
        return "float32";
    case MSGPACK_OBJECT_FLOAT64:
        return "float64";
    case MSGPACK_OBJECT_STR:
        return "str";
    case MSGPACK_OBJECT_ARRAY:
        return "array";
    case MSGPACK_OBJECT_MAP:
        return "map";
    case MSGPACK_OBJECT_BIN:
        return "bin";
    case MSGPACK_OBJECT_EXT:
        return "ext";
    }
    return "unknown";
}

//  A valid timestamp ext: type -1, 4/8/12 bytes, nanoseconds < 1e9.
static bool s_time_ok(const msgpack_object *o)
{
    msgpack_timestamp ts;
    if (o->type != MSGPACK_OBJECT_EXT || o->via.ext.type != -1)
        return false;
    if (!msgpack_object_to_timestamp(o, &ts))
        return false;
    return ts.tv_nsec < 1000000000u;
}

//  NULL if o is acceptable for type t, else a short reason.
static const char *s_type_mismatch(pm_ftype_t t, const msgpack_object *o)
{
    switch (t) {
    case PM_T_STR:
        return o->type == MSGPACK_OBJECT_STR ? NULL : "expected str";
    case PM_T_INT:
        if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            return NULL;
        if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            return o->via.u64 <= (uint64_t)INT64_MAX ? NULL : "int out of range (> INT64_MAX)";
        return "expected int";
    case PM_T_UINT:
        if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            return "expected uint, got a negative int";
        return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? NULL : "expected uint";
    case PM_T_BOOL:
        return o->type == MSGPACK_OBJECT_BOOLEAN ? NULL : "expected bool";
    case PM_T_FLOAT:
        return (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64 ||
                o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
                o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
                   ? NULL
                   : "expected float";
    case PM_T_BIN:
        return o->type == MSGPACK_OBJECT_BIN ? NULL : "expected bin";
    case PM_T_MAP:
        return o->type == MSGPACK_OBJECT_MAP ? NULL : "expected map";
    case PM_T_ARRAY:
        return o->type == MSGPACK_OBJECT_ARRAY ? NULL : "expected array";
    case PM_T_STRS:
        if (o->type != MSGPACK_OBJECT_ARRAY)
            return "expected array of str";
        for (uint32_t i = 0; i < o->via.array.size; i++)
            if (o->via.array.ptr[i].type != MSGPACK_OBJECT_STR)
                return "expected array of str, an element is not a str";
        return NULL;
    case PM_T_ANY:
        return NULL;
    case PM_T_TIME:
        return s_time_ok(o) ? NULL : "expected timestamp (ext -1 of 4, 8 or 12 bytes)";
    }
    return "field has an invalid table type";
}

/* ---- deep copy into the message's zone (depth-bounded) ---- */

static int s_copy(msgpack_zone *z, msgpack_object *dst, const msgpack_object *src, unsigned depth,
                  size_t *elements)
{
    *dst = *src;
    switch (src->type) {
    case MSGPACK_OBJECT_STR:
    case MSGPACK_OBJECT_BIN: {
        uint32_t n = src->via.str.size; //  str and bin share the layout
        char *p = msgpack_zone_malloc_no_align(z, (size_t)n + 1);
        if (!p)
            return -1;
        if (n)
            memcpy(p, src->via.str.ptr, n);
        p[n] = '\0'; //  str values are NUL-terminated for pm_msg_str
        dst->via.str.ptr = p;
        return 0;
    }
    case MSGPACK_OBJECT_EXT: {
        uint32_t n = src->via.ext.size;
        char *p = msgpack_zone_malloc_no_align(z, (size_t)n + 1);
        if (!p)
            return -1;
        if (n)
            memcpy(p, src->via.ext.ptr, n);
        dst->via.ext.ptr = p;
        return 0;
    }
    case MSGPACK_OBJECT_ARRAY: {
        uint32_t n = src->via.array.size;
        if (depth >= PM_MSG_MAX_DEPTH - 2 || (*elements += n) > PM_MSG_MAX_ELEMENTS)
            return -1;
        if (n == 0) {
            dst->via.array.ptr = NULL;
            return 0;
        }
        msgpack_object *a = msgpack_zone_malloc(z, (size_t)n * sizeof *a);
        if (!a)
            return -1;
        for (uint32_t i = 0; i < n; i++)
            if (s_copy(z, &a[i], &src->via.array.ptr[i], depth + 1, elements) != 0)
                return -1;
        dst->via.array.ptr = a;
        return 0;
    }
    case MSGPACK_OBJECT_MAP: {
        uint32_t n = src->via.map.size;
        if (depth >= PM_MSG_MAX_DEPTH - 2 || (*elements += n) > PM_MSG_MAX_ELEMENTS)
            return -1;
        if (n == 0) {
            dst->via.map.ptr = NULL;
            return 0;
        }
        msgpack_object_kv *kv = msgpack_zone_malloc(z, (size_t)n * sizeof *kv);
        if (!kv)
            return -1;
        for (uint32_t i = 0; i < n; i++)
            if (s_copy(z, &kv[i].key, &src->via.map.ptr[i].key, depth + 1, elements) != 0 ||
                s_copy(z, &kv[i].val, &src->via.map.ptr[i].val, depth + 1, elements) != 0)
                return -1;
        dst->via.map.ptr = kv;
        return 0;
    }
    default:
        return 0;
    }
}

/* ---- setters ---- */

//  Index of `field` if it is declared and its table type is one of `ok`
//  (a bit mask of 1 << pm_ftype_t), else -1.
static int s_settable(const pm_msg_t *msg, const char *field, unsigned ok)
{
    if (!msg || !field)
        return -1;
    int i = s_field_index(msg->def, field, strlen(field), -1);
    if (i < 0 || !((1u << msg->def->fields[i].type) & ok))
        return -1;
    return i;
}
#define B(t) (1u << PM_T_##t)

static void s_put(pm_msg_t *msg, int i, const msgpack_object *o)
{
    msg->vals[i] = *o;
    msg->present |= 1ULL << i;
}

static int s_set_bytes(pm_msg_t *msg, int i, msgpack_object_type t, const void *p, size_t len)
{
    if (len > PM_MSG_MAX_BYTES)
        return -1;
    msgpack_zone *z = s_zone(msg, len + 64);
    char *copy = z ? msgpack_zone_malloc_no_align(z, len + 1) : NULL;
    if (!copy)
        return -1;
    if (len)
        memcpy(copy, p, len);
    copy[len] = '\0';
    msgpack_object o = {.type = t};
    o.via.str.ptr = copy;
    o.via.str.size = (uint32_t)len;
    s_put(msg, i, &o);
    return 0;
}

int pm_msg_set_str(pm_msg_t *msg, const char *field, const char *value)
{
    if (!value)
        return -1;
    return pm_msg_set_strn(msg, field, value, strlen(value));
}

int pm_msg_set_strn(pm_msg_t *msg, const char *field, const char *value, size_t len)
{
    int i = s_settable(msg, field, B(STR) | B(ANY));
    if (i < 0 || (!value && len))
        return -1;
    return s_set_bytes(msg, i, MSGPACK_OBJECT_STR, value, len);
}

int pm_msg_set_bin(pm_msg_t *msg, const char *field, const void *data, size_t len)
{
    int i = s_settable(msg, field, B(BIN) | B(ANY));
    if (i < 0 || (!data && len))
        return -1;
    return s_set_bytes(msg, i, MSGPACK_OBJECT_BIN, data, len);
}

int pm_msg_set_int(pm_msg_t *msg, const char *field, int64_t value)
{
    int i = s_settable(msg, field, B(INT) | B(UINT) | B(FLOAT) | B(ANY));
    if (i < 0)
        return -1;
    msgpack_object o;
    if (value < 0) {
        if (msg->def->fields[i].type == PM_T_UINT)
            return -1;
        o.type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
        o.via.i64 = value;
    } else {
        o.type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o.via.u64 = (uint64_t)value;
    }
    s_put(msg, i, &o);
    return 0;
}

int pm_msg_set_uint(pm_msg_t *msg, const char *field, uint64_t value)
{
    int i = s_settable(msg, field, B(INT) | B(UINT) | B(FLOAT) | B(ANY));
    if (i < 0)
        return -1;
    if (msg->def->fields[i].type == PM_T_INT && value > (uint64_t)INT64_MAX)
        return -1;
    msgpack_object o = {.type = MSGPACK_OBJECT_POSITIVE_INTEGER};
    o.via.u64 = value;
    s_put(msg, i, &o);
    return 0;
}

int pm_msg_set_bool(pm_msg_t *msg, const char *field, bool value)
{
    int i = s_settable(msg, field, B(BOOL) | B(ANY));
    if (i < 0)
        return -1;
    msgpack_object o = {.type = MSGPACK_OBJECT_BOOLEAN};
    o.via.boolean = value;
    s_put(msg, i, &o);
    return 0;
}

int pm_msg_set_float(pm_msg_t *msg, const char *field, double value)
{
    int i = s_settable(msg, field, B(FLOAT) | B(ANY));
    if (i < 0)
        return -1;
    msgpack_object o = {.type = MSGPACK_OBJECT_FLOAT64};
    o.via.f64 = value;
    s_put(msg, i, &o);
    return 0;
}

int pm_msg_set_time(pm_msg_t *msg, const char *field, int64_t sec, uint32_t nsec)
{
    int i = s_settable(msg, field, B(TIME) | B(ANY));
    if (i < 0 || nsec >= 1000000000u)
        return -1;
    msgpack_zone *z = s_zone(msg, 256);
    uint8_t *p = z ? msgpack_zone_malloc_no_align(z, 12) : NULL;
    if (!p)
        return -1;
    //  the smallest of the three encodings that holds the value (msgpack spec)
    uint32_t size;
    if (sec >= 0 && (sec >> 34) == 0) {
        uint64_t v = ((uint64_t)nsec << 34) | (uint64_t)sec;
        if ((v & 0xffffffff00000000ULL) == 0) {
            size = 4;
            for (int k = 0; k < 4; k++)
                p[k] = (uint8_t)(v >> (24 - 8 * k));
        } else {
            size = 8;
            for (int k = 0; k < 8; k++)
                p[k] = (uint8_t)(v >> (56 - 8 * k));
        }
    } else {
        size = 12;
        for (int k = 0; k < 4; k++)
            p[k] = (uint8_t)(nsec >> (24 - 8 * k));
        for (int k = 0; k < 8; k++)
            p[4 + k] = (uint8_t)((uint64_t)sec >> (56 - 8 * k));
    }
    msgpack_object o = {.type = MSGPACK_OBJECT_EXT};
    o.via.ext.type = -1;
    o.via.ext.size = size;
    o.via.ext.ptr = (const char *)p;
    s_put(msg, i, &o);
    return 0;
}

int pm_msg_set_strs(pm_msg_t *msg, const char *field, const char *const *values, size_t n)
{
    int i = s_settable(msg, field, B(STRS) | B(ARRAY) | B(ANY));
    if (i < 0 || (!values && n) || n > PM_MSG_MAX_ELEMENTS ||
        msg->elements + n > PM_MSG_MAX_ELEMENTS)
        return -1;
    msgpack_zone *z = s_zone(msg, 256 + n * 32);
    if (!z)
        return -1;
    msgpack_object o = {.type = MSGPACK_OBJECT_ARRAY};
    o.via.array.size = (uint32_t)n;
    o.via.array.ptr = NULL;
    if (n) {
        msgpack_object *a = msgpack_zone_malloc(z, n * sizeof *a);
        if (!a)
            return -1;
        for (size_t k = 0; k < n; k++) {
            if (!values[k])
                return -1;
            size_t len = strlen(values[k]);
            char *c = msgpack_zone_malloc_no_align(z, len + 1);
            if (!c)
                return -1;
            memcpy(c, values[k], len + 1);
            a[k].type = MSGPACK_OBJECT_STR;
            a[k].via.str.ptr = c;
            a[k].via.str.size = (uint32_t)len;
        }
        o.via.array.ptr = a;
    }
    msg->elements += n;
    s_put(msg, i, &o);
    return 0;
}

int pm_msg_set_obj(pm_msg_t *msg, const char *field, const msgpack_object *obj)
{
    int i = s_settable(msg, field, 0xffffffffu);
    if (i < 0 || !obj || s_type_mismatch(msg->def->fields[i].type, obj))
        return -1;
    msgpack_zone *z = s_zone(msg, 1024);
    if (!z)
        return -1;
    size_t elements = msg->elements;
    msgpack_object copy;
    if (s_copy(z, &copy, obj, 0, &elements) != 0)
        return -1;
    msg->elements = elements;
    s_put(msg, i, &copy);
    return 0;
}

int pm_msg_set_packed(pm_msg_t *msg, const char *field, const uint8_t *data, size_t len)
{
    if (!msg || len > PM_MSG_MAX_BYTES)
        return -1;
    msgpack_zone tmp;
    if (!msgpack_zone_init(&tmp, len + 256))
        return -1;
    msgpack_object obj;
    pm_mpck_limits_t lim = {PM_MSG_MAX_DEPTH - 2, PM_MSG_MAX_ELEMENTS};
    int rc = -1;
    if (pm_mpck_unpack(data, len, &lim, &tmp, &obj, NULL, 0) == 0)
        rc = pm_msg_set_obj(msg, field, &obj);
    msgpack_zone_destroy(&tmp);
    return rc;
}

/* ---- getters ---- */

static const msgpack_object *s_get(const pm_msg_t *msg, const char *field)
{
    if (!msg || !field)
        return NULL;
    int i = s_field_index(msg->def, field, strlen(field), -1);
    if (i < 0 || !(msg->present & (1ULL << i)))
        return NULL;
    return &msg->vals[i];
}

const msgpack_object *pm_msg_obj_at(const pm_msg_t *msg, int index)
{
    if (!msg || index < 0 || index >= msg->def->nfields || !(msg->present & (1ULL << index)))
        return NULL;
    return &msg->vals[index];
}

bool pm_msg_has(const pm_msg_t *msg, const char *field)
{
    return s_get(msg, field) != NULL;
}

const msgpack_object *pm_msg_obj(const pm_msg_t *msg, const char *field)
{
    return s_get(msg, field);
}

const char *pm_msg_str(const pm_msg_t *msg, const char *field)
{
    const msgpack_object *o = s_get(msg, field);
    //  every str slot points at a NUL-terminated copy (setters and decoder ensure it)
    return o && o->type == MSGPACK_OBJECT_STR ? o->via.str.ptr : NULL;
}

int64_t pm_msg_int(const pm_msg_t *msg, const char *field, int64_t def)
{
    const msgpack_object *o = s_get(msg, field);
    if (!o)
        return def;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return o->via.i64;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= (uint64_t)INT64_MAX)
        return (int64_t)o->via.u64;
    return def;
}

uint64_t pm_msg_uint(const pm_msg_t *msg, const char *field, uint64_t def)
{
    const msgpack_object *o = s_get(msg, field);
    return o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? o->via.u64 : def;
}

bool pm_msg_bool(const pm_msg_t *msg, const char *field, bool def)
{
    const msgpack_object *o = s_get(msg, field);
    return o && o->type == MSGPACK_OBJECT_BOOLEAN ? o->via.boolean : def;
}

double pm_msg_float(const pm_msg_t *msg, const char *field, double def)
{
    const msgpack_object *o = s_get(msg, field);
    if (!o)
        return def;
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return o->via.f64;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return (double)o->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return (double)o->via.i64;
    default:
        return def;
    }
}

const uint8_t *pm_msg_bin(const pm_msg_t *msg, const char *field, size_t *len)
{
    const msgpack_object *o = s_get(msg, field);
    if (!o || o->type != MSGPACK_OBJECT_BIN) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = o->via.bin.size;
    return o->via.bin.size ? (const uint8_t *)o->via.bin.ptr : (const uint8_t *)"";
}

int pm_msg_time(const pm_msg_t *msg, const char *field, int64_t *sec, uint32_t *nsec)
{
    const msgpack_object *o = s_get(msg, field);
    msgpack_timestamp ts;
    if (!o || !s_time_ok(o) || !msgpack_object_to_timestamp(o, &ts))
        return -1;
    if (sec)
        *sec = ts.tv_sec;
    if (nsec)
        *nsec = ts.tv_nsec;
    return 0;
}

/* ---- encoder ---- */

typedef struct {
    char *data;
    size_t size, alloc;
} s_buf_t;

static int s_buf_write(void *arg, const char *p, size_t n)
{
    s_buf_t *b = arg;
    if (n > PM_MSG_MAX_BYTES - b->size)
        return -1;
    if (b->size + n > b->alloc) {
        size_t a = b->alloc ? b->alloc : 256;
        while (a < b->size + n)
            a *= 2;
        char *d = realloc(b->data, a);
        if (!d)
            return -1;
        b->data = d;
        b->alloc = a;
    }
    memcpy(b->data + b->size, p, n);
    b->size += n;
    return 0;
}

static int s_pack_key(msgpack_packer *pk, const char *k)
{
    size_t n = strlen(k);
    return msgpack_pack_str_with_body(pk, k, n);
}

int pm_msg_encode(const pm_msg_t *msg, uint8_t **out, size_t *len, char *err, size_t errlen)
{
    int rc = -1;
    s_buf_t buf = {NULL, 0, 0};
    if (!msg || !out || !len) {
        s_err(err, errlen, "encode: no message or output");
        goto out;
    }
    const pm_msgdef_t *def = msg->def;
    uint32_t nbody = 0;
    for (int i = 0; i < def->nfields; i++) {
        if (msg->present & (1ULL << i))
            nbody++;
        else if (def->fields[i].required) {
            s_err(err, errlen, "encode %s: required field '%s' is not set", def->name,
                  def->fields[i].name);
            goto out;
        }
    }
    //  a first guess that holds most messages in one allocation
    size_t guess = 96;
    for (int i = 0; i < def->nfields; i++)
        if ((msg->present & (1ULL << i)) &&
            (msg->vals[i].type == MSGPACK_OBJECT_STR || msg->vals[i].type == MSGPACK_OBJECT_BIN))
            guess += msg->vals[i].via.str.size + 16;
    buf.data = malloc(guess);
    if (!buf.data) {
        s_err(err, errlen, "encode %s: out of memory", def->name);
        goto out;
    }
    buf.alloc = guess;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, s_buf_write);
    size_t ridlen = strlen(msg->rid);
    int r = msgpack_pack_map(&pk, 5);
    r |= s_pack_key(&pk, "v") | msgpack_pack_uint64(&pk, PM_PROTO_VERSION);
    r |= s_pack_key(&pk, "type") | s_pack_key(&pk, def->name);
    r |= s_pack_key(&pk, "rid") | msgpack_pack_str_with_body(&pk, msg->rid, ridlen);
    r |= s_pack_key(&pk, "ts") | msgpack_pack_uint64(&pk, msg->ts);
    r |= s_pack_key(&pk, "body") | msgpack_pack_map(&pk, nbody);
    for (int i = 0; i < def->nfields && r == 0; i++) {
        if (!(msg->present & (1ULL << i)))
            continue;
        r |= s_pack_key(&pk, def->fields[i].name);
        r |= msgpack_pack_object(&pk, msg->vals[i]);
    }
    if (r != 0) {
        s_err(err, errlen, "encode %s: larger than %u bytes or out of memory", def->name,
              PM_MSG_MAX_BYTES);
        goto out;
    }
    *out = (uint8_t *)buf.data;
    *len = buf.size;
    buf.data = NULL;
    rc = 0;
out:
    free(buf.data);
    return rc;
}

/* ---- strict decoder ---- */

int pm_msg_decode(const uint8_t *data, size_t len, pm_msg_t **msgp, char *err, size_t errlen)
{
    int rc = -1;
    pm_msg_t *msg = NULL;
    msgpack_zone *zone = NULL;
    msgpack_zone tmp; //  for the envelope until the type is known
    bool tmp_ready = false;
    if (!msgp) {
        s_err(err, errlen, "decode: no output");
        goto out;
    }
    *msgp = NULL;
    if (!data || len == 0) {
        s_err(err, errlen, "decode: empty message");
        goto out;
    }
    if (len > PM_MSG_MAX_BYTES) {
        s_err(err, errlen, "decode: %zu bytes is over the %u byte limit", len, PM_MSG_MAX_BYTES);
        goto out;
    }
    if (data[0] != 0xde && data[0] != 0xdf && (data[0] & 0xf0) != 0x80) {
        s_err(err, errlen, "decode: not a msgpack map (first byte 0x%02x)", data[0]);
        goto out;
    }
    if (pm_mpck_check(data, len, &s_limits, true, NULL, err, errlen) != 0)
        goto out;

    //  The decoded objects point into the input bytes (msgpack_unpack does not
    //  copy str/bin/ext bodies), so unpack a private copy held by a zone; the
    //  zone is handed to the message once its type is known.
    if (!msgpack_zone_init(&tmp, len * 2 + 512)) {
        s_err(err, errlen, "decode: out of memory");
        goto out;
    }
    tmp_ready = true;
    zone = &tmp;
    //  one spare byte: see the NUL-termination note below
    char *copy = msgpack_zone_malloc_no_align(zone, len + 1);
    if (!copy) {
        s_err(err, errlen, "decode: out of memory");
        goto out;
    }
    memcpy(copy, data, len);
    copy[len] = '\0';
    msgpack_object root;
    size_t off = 0;
    if (msgpack_unpack(copy, len, &off, zone, &root) != MSGPACK_UNPACK_SUCCESS) {
        s_err(err, errlen, "decode: msgpack-c rejected the bytes after a clean pre-scan");
        goto out;
    }
    if (root.type != MSGPACK_OBJECT_MAP) {
        s_err(err, errlen, "decode: the message is a %s, not a map", s_otype_name(root.type));
        goto out;
    }

    static const char *const keys[5] = {"v", "type", "rid", "ts", "body"};
    const msgpack_object *env[5] = {NULL, NULL, NULL, NULL, NULL};
    for (uint32_t i = 0; i < root.via.map.size; i++) {
        const msgpack_object_kv *kv = &root.via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR) {
            s_err(err, errlen, "decode: envelope key #%u is a %s, not a str", i,
                  s_otype_name(kv->key.type));
            goto out;
        }
        int k;
        for (k = 0; k < 5; k++)
            if (pm_mp_str_eq(&kv->key, keys[k]))
                break;
        if (k == 5) {
            char safe[48];
            s_err(err, errlen, "decode: unknown envelope key '%s' (allowed: v type rid ts body)",
                  s_safe(safe, sizeof safe, &kv->key));
            goto out;
        }
        if (env[k]) {
            s_err(err, errlen, "decode: envelope key '%s' appears twice", keys[k]);
            goto out;
        }
        env[k] = &kv->val;
    }
    for (int k = 0; k < 5; k++)
        if (!env[k]) {
            s_err(err, errlen, "decode: envelope key '%s' is missing", keys[k]);
            goto out;
        }
    if (env[0]->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        s_err(err, errlen, "decode: 'v' is a %s, not a uint", s_otype_name(env[0]->type));
        goto out;
    }
    if (env[0]->via.u64 != PM_PROTO_VERSION) {
        s_err(err, errlen,
              "decode: protocol version %llu, this build speaks %d (upgrade the older process)",
              (unsigned long long)env[0]->via.u64, PM_PROTO_VERSION);
        goto out;
    }
    if (env[1]->type != MSGPACK_OBJECT_STR) {
        s_err(err, errlen, "decode: 'type' is a %s, not a str", s_otype_name(env[1]->type));
        goto out;
    }
    pm_msg_type_t type = s_type_lookup(env[1]->via.str.ptr, env[1]->via.str.size);
    if (type == PM_MSG_INVALID) {
        char safe[48];
        s_err(err, errlen, "decode: unknown message type '%s'", s_safe(safe, sizeof safe, env[1]));
        goto out;
    }
    if (env[2]->type != MSGPACK_OBJECT_STR ||
        !s_rid_ok(env[2]->via.str.ptr, env[2]->via.str.size)) {
        s_err(err, errlen, "decode %s: bad 'rid' (want a str of 1..%d printable ASCII chars)",
              pm_msg_type_name(type), PM_RID_MAX);
        goto out;
    }
    if (env[3]->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        s_err(err, errlen, "decode %s: 'ts' is a %s, not a uint", pm_msg_type_name(type),
              s_otype_name(env[3]->type));
        goto out;
    }
    if (env[4]->type != MSGPACK_OBJECT_MAP) {
        s_err(err, errlen, "decode %s: 'body' is a %s, not a map", pm_msg_type_name(type),
              s_otype_name(env[4]->type));
        goto out;
    }

    msg = s_alloc(type);
    if (!msg) {
        s_err(err, errlen, "decode: out of memory");
        goto out;
    }
    const pm_msgdef_t *def = msg->def;
    memcpy(msg->rid, env[2]->via.str.ptr, env[2]->via.str.size);
    msg->rid[env[2]->via.str.size] = '\0';
    msg->ts = env[3]->via.u64;

    const msgpack_object *body = env[4];
    int next = 0;
    for (uint32_t i = 0; i < body->via.map.size; i++) {
        const msgpack_object_kv *kv = &body->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR) {
            s_err(err, errlen, "decode %s: body key #%u is a %s, not a str", def->name, i,
                  s_otype_name(kv->key.type));
            goto out;
        }
        //  the encoder writes fields in table order: try the one after the last first
        int f = s_field_index(def, kv->key.via.str.ptr, kv->key.via.str.size, next);
        if (f < 0) {
            char safe[48];
            s_err(err, errlen, "decode %s: unknown field '%s'", def->name,
                  s_safe(safe, sizeof safe, &kv->key));
            goto out;
        }
        if (msg->present & (1ULL << f)) {
            s_err(err, errlen, "decode %s: field '%s' appears twice", def->name,
                  def->fields[f].name);
            goto out;
        }
        const char *why = s_type_mismatch(def->fields[f].type, &kv->val);
        if (why) {
            s_err(err, errlen, "decode %s: field '%s': %s, got %s", def->name, def->fields[f].name,
                  why, s_otype_name(kv->val.type));
            goto out;
        }
        msg->vals[f] = kv->val;
        msg->present |= 1ULL << f;
        next = f + 1;
        if (kv->val.type == MSGPACK_OBJECT_STR) {
            //  NUL-terminate in place: the byte after a str body is the next
            //  object's header (or the spare byte at the end of the copy);
            //  headers are fully parsed into objects and never read again,
            //  only str/bin/ext bodies are referenced.
            msgpack_object *v = &msg->vals[f];
            if (v->via.str.size == 0)
                v->via.str.ptr = "";
            else
                ((char *)v->via.str.ptr)[v->via.str.size] = '\0';
        }
    }
    for (int f = 0; f < def->nfields; f++)
        if (def->fields[f].required && !(msg->present & (1ULL << f))) {
            s_err(err, errlen, "decode %s: required field '%s' is missing", def->name,
                  def->fields[f].name);
            goto out;
        }
    //  hand the zone (which holds the copy and every object) to the message
    msg->zone = tmp;
    msg->zone_ready = true;
    tmp_ready = false;
    *msgp = msg;
    msg = NULL;
    rc = 0;
out:
    if (tmp_ready)
        msgpack_zone_destroy(&tmp);
    if (msg)
        free(msg); //  its values lived in tmp, already gone
    return rc;
}

/* ---- comparison (tests, fuzzing) ---- */

static bool s_obj_equal(const msgpack_object *a, const msgpack_object *b, unsigned depth)
{
    if (a->type != b->type || depth > PM_MSG_MAX_DEPTH)
        return false;
    switch (a->type) {
    case MSGPACK_OBJECT_NIL:
        return true;
    case MSGPACK_OBJECT_BOOLEAN:
        return a->via.boolean == b->via.boolean;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return a->via.u64 == b->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return a->via.i64 == b->via.i64;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        //  bitwise, so NaN equals itself
        return memcmp(&a->via.f64, &b->via.f64, sizeof a->via.f64) == 0;
    case MSGPACK_OBJECT_STR:
    case MSGPACK_OBJECT_BIN:
        return a->via.str.size == b->via.str.size &&
               (a->via.str.size == 0 ||
                memcmp(a->via.str.ptr, b->via.str.ptr, a->via.str.size) == 0);
    case MSGPACK_OBJECT_EXT:
        return a->via.ext.type == b->via.ext.type && a->via.ext.size == b->via.ext.size &&
               (a->via.ext.size == 0 ||
                memcmp(a->via.ext.ptr, b->via.ext.ptr, a->via.ext.size) == 0);
    case MSGPACK_OBJECT_ARRAY:
        if (a->via.array.size != b->via.array.size)
            return false;
        for (uint32_t i = 0; i < a->via.array.size; i++)
            if (!s_obj_equal(&a->via.array.ptr[i], &b->via.array.ptr[i], depth + 1))
                return false;
        return true;
    case MSGPACK_OBJECT_MAP:
        if (a->via.map.size != b->via.map.size)
            return false;
        for (uint32_t i = 0; i < a->via.map.size; i++)
            if (!s_obj_equal(&a->via.map.ptr[i].key, &b->via.map.ptr[i].key, depth + 1) ||
                !s_obj_equal(&a->via.map.ptr[i].val, &b->via.map.ptr[i].val, depth + 1))
                return false;
        return true;
    }
    return false;
}

bool pm_msg_equal(const pm_msg_t *a, const pm_msg_t *b)
{
    if (!a || !b)
        return a == b;
    if (a->def != b->def || a->ts != b->ts || strcmp(a->rid, b->rid) != 0 ||
        a->present != b->present)
        return false;
    for (int i = 0; i < a->def->nfields; i++)
        if ((a->present & (1ULL << i)) && !s_obj_equal(&a->vals[i], &b->vals[i], 0))
            return false;
    return true;
}
