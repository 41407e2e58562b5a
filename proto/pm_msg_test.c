/*  pm_msg unit tests: table sanity, round trip of every message type generated
 *  from the table, every rejection class of the strict decoder, setters'
 *  type checks, request ids, the table fingerprint, and an encode+decode timing.
 *
 *  PM_MSG_BENCH=N in the environment: run only the timing, N iterations
 *  (tests/bench/codec.sh).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "pm_mpck.h"
#include "pm_msg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- helpers ---- */

static void s_fill(pm_msg_t *msg, const pm_field_t *f)
{
    static const uint8_t bin[] = {0, 1, 2, 0xff};
    static const uint8_t map[] = {0x82, 0xa1, 'k', 0x01, 0x02, 0xa1, 'x'}; //  {"k":1, 2:"x"}
    static const uint8_t arr[] = {0x93, 0x01, 0xa1, 'a', 0xc0};            //  [1,"a",nil]
    static const uint8_t any[] = {0x81, 0xa1, 'x', 0x91, 0xc3};            //  {"x":[true]}
    const char *strs[] = {"one", "", "three"};
    char s[64];
    int rc = -1;
    switch (f->type) {
    case PM_T_STR:
        snprintf(s, sizeof s, "value of %s", f->name);
        rc = pm_msg_set_str(msg, f->name, s);
        break;
    case PM_T_INT:
        rc = pm_msg_set_int(msg, f->name, -42);
        break;
    case PM_T_UINT:
        rc = pm_msg_set_uint(msg, f->name, 42);
        break;
    case PM_T_BOOL:
        rc = pm_msg_set_bool(msg, f->name, true);
        break;
    case PM_T_FLOAT:
        rc = pm_msg_set_float(msg, f->name, 1.5);
        break;
    case PM_T_BIN:
        rc = pm_msg_set_bin(msg, f->name, bin, sizeof bin);
        break;
    case PM_T_MAP:
        rc = pm_msg_set_packed(msg, f->name, map, sizeof map);
        break;
    case PM_T_ARRAY:
        rc = pm_msg_set_packed(msg, f->name, arr, sizeof arr);
        break;
    case PM_T_STRS:
        rc = pm_msg_set_strs(msg, f->name, strs, 3);
        break;
    case PM_T_ANY:
        rc = pm_msg_set_packed(msg, f->name, any, sizeof any);
        break;
    case PM_T_TIME:
        rc = pm_msg_set_time(msg, f->name, 1700000000, 5);
        break;
    }
    if (rc != 0)
        fail_msg("could not set %s.%s (%s)", pm_msg_type_name(pm_msg_type(msg)), f->name,
                 pm_ftype_name(f->type));
}

static pm_msg_t *s_roundtrip(const pm_msg_t *in)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[256] = "";
    if (pm_msg_encode(in, &buf, &len, err, sizeof err) != 0)
        fail_msg("encode failed: %s", err);
    pm_msg_t *out = NULL;
    if (pm_msg_decode(buf, len, &out, err, sizeof err) != 0)
        fail_msg("decode of our own encoding failed: %s", err);
    //  every truncation of it is rejected (cheap for small messages)
    for (size_t n = 0; n < len && len < 512; n++) {
        pm_msg_t *t = NULL;
        uint8_t *cut = malloc(n ? n : 1);
        memcpy(cut, buf, n);
        int rc = pm_msg_decode(cut, n, &t, err, sizeof err);
        free(cut);
        if (rc == 0)
            fail_msg("truncated to %zu of %zu bytes and still decoded", n, len);
        assert_null(t);
    }
    free(buf);
    return out;
}

//  A msgpack writer for hand-made (often bad) messages.
typedef struct {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} w_t;
static void w_init(w_t *w)
{
    msgpack_sbuffer_init(&w->sb);
    msgpack_packer_init(&w->pk, &w->sb, msgpack_sbuffer_write);
}
static void w_str(w_t *w, const char *s)
{
    msgpack_pack_str_with_body(&w->pk, s, strlen(s));
}
static void w_raw(w_t *w, const void *b, size_t n)
{
    msgpack_sbuffer_write(&w->sb, b, n);
}
//  The envelope with `nbody` body pairs to follow (the caller writes them).
static void w_env(w_t *w, unsigned v, const char *type, const char *rid, uint32_t nbody)
{
    w_init(w);
    msgpack_pack_map(&w->pk, 5);
    w_str(w, "v");
    msgpack_pack_uint32(&w->pk, v);
    w_str(w, "type");
    w_str(w, type);
    w_str(w, "rid");
    w_str(w, rid);
    w_str(w, "ts");
    msgpack_pack_uint64(&w->pk, 1234);
    w_str(w, "body");
    msgpack_pack_map(&w->pk, nbody);
}

//  Decode w's bytes: expect success (needle NULL) or a rejection whose reason contains needle.
static void w_expect(w_t *w, const char *needle)
{
    pm_msg_t *m = NULL;
    char err[256] = "";
    int rc = pm_msg_decode((const uint8_t *)w->sb.data, w->sb.size, &m, err, sizeof err);
    if (!needle) {
        if (rc != 0)
            fail_msg("expected to decode, got: %s", err);
        assert_non_null(m);
    } else {
        if (rc == 0)
            fail_msg("expected a rejection mentioning '%s', but it decoded", needle);
        assert_null(m);
        if (!strstr(err, needle))
            fail_msg("rejection reason '%s' does not mention '%s'", err, needle);
        assert_null(strchr(err, '\n'));
    }
    pm_msg_destroy(&m);
    msgpack_sbuffer_destroy(&w->sb);
}

/* ---- tests ---- */

static void test_table_sanity(void **state)
{
    (void)state;
    assert_null(pm_msgdef(PM_MSG_INVALID));
    assert_null(pm_msgdef(PM_MSG_COUNT));
    for (int t = 1; t < PM_MSG_COUNT; t++) {
        const pm_msgdef_t *d = pm_msgdef((pm_msg_type_t)t);
        assert_non_null(d);
        assert_int_equal(d->type, t);
        assert_non_null(d->name);
        assert_true(d->service && *d->service);
        assert_true(d->doc && *d->doc);
        assert_true(d->nfields <= 64);
        assert_int_equal(pm_msg_type_from_name(d->name), t);
        for (int u = t + 1; u < PM_MSG_COUNT; u++)
            if (strcmp(d->name, pm_msgdef((pm_msg_type_t)u)->name) == 0)
                fail_msg("message name '%s' declared twice", d->name);
        for (int f = 0; f < d->nfields; f++) {
            const pm_field_t *fd = &d->fields[f];
            assert_non_null(fd->name);
            assert_true(fd->doc && *fd->doc);
            if (strcmp(pm_ftype_name(fd->type), "invalid") == 0)
                fail_msg("%s.%s has an invalid type", d->name, fd->name);
            for (int g = f + 1; g < d->nfields; g++)
                if (strcmp(fd->name, d->fields[g].name) == 0)
                    fail_msg("%s: field '%s' declared twice", d->name, fd->name);
        }
        assert_null(d->fields[d->nfields].name);
    }
    assert_int_equal(pm_msg_type_from_name("no.such.type"), PM_MSG_INVALID);
    assert_int_equal(pm_msg_type_from_name(NULL), PM_MSG_INVALID);
    assert_string_equal(pm_msg_type_name(PM_MSG_ECHO), "echo");
}

static void test_fingerprint(void **state)
{
    (void)state;
    uint64_t fp = pm_msg_table_fingerprint();
    assert_true(fp == pm_msg_table_fingerprint()); //  deterministic
    if (fp != PM_PROTO_FINGERPRINT)
        fail_msg("the message table changed: bump PM_PROTO_VERSION and set "
                 "PM_PROTO_FINGERPRINT to 0x%016llxULL in proto/pm_msg.h",
                 (unsigned long long)fp);
}

static void test_roundtrip_every_type(void **state)
{
    (void)state;
    for (int t = 1; t < PM_MSG_COUNT; t++) {
        const pm_msgdef_t *d = pm_msgdef((pm_msg_type_t)t);
        //  every field filled
        pm_msg_t *m = pm_msg_new((pm_msg_type_t)t);
        assert_non_null(m);
        for (int f = 0; f < d->nfields; f++)
            s_fill(m, &d->fields[f]);
        pm_msg_t *r = s_roundtrip(m);
        if (!pm_msg_equal(m, r))
            fail_msg("%s: decoded message differs from the original", d->name);
        assert_string_equal(pm_msg_rid(r), pm_msg_rid(m));
        assert_int_equal(pm_msg_ts(r), pm_msg_ts(m));
        for (int f = 0; f < d->nfields; f++) {
            const pm_field_t *fd = &d->fields[f];
            assert_true(pm_msg_has(r, fd->name));
            if (fd->type == PM_T_STR) {
                char s[64];
                snprintf(s, sizeof s, "value of %s", fd->name);
                assert_string_equal(pm_msg_str(r, fd->name), s);
            } else if (fd->type == PM_T_UINT) {
                assert_int_equal(pm_msg_uint(r, fd->name, 0), 42);
            } else if (fd->type == PM_T_INT) {
                assert_int_equal(pm_msg_int(r, fd->name, 0), -42);
            }
        }
        pm_msg_destroy(&r);
        pm_msg_destroy(&m);
        //  only the required fields
        m = pm_msg_new((pm_msg_type_t)t);
        for (int f = 0; f < d->nfields; f++)
            if (d->fields[f].required)
                s_fill(m, &d->fields[f]);
        r = s_roundtrip(m);
        assert_true(pm_msg_equal(m, r));
        for (int f = 0; f < d->nfields; f++)
            assert_true(pm_msg_has(r, d->fields[f].name) == d->fields[f].required);
        pm_msg_destroy(&r);
        pm_msg_destroy(&m);
        assert_null(m);
        pm_msg_destroy(&m); //  safe twice
    }
}

//  pm_msg_obj_at: the same object as pm_msg_obj for every declared field,
//  set or not, of a built and of a decoded message; NULL out of range.
static void test_obj_at(void **state)
{
    (void)state;
    const pm_msgdef_t *d = pm_msgdef(PM_MSG_CODEC_TEST);
    pm_msg_t *m = pm_msg_new(PM_MSG_CODEC_TEST);
    assert_int_equal(pm_msg_set_str(m, "s", "abc"), 0);
    assert_int_equal(pm_msg_set_uint(m, "u", 42), 0);
    for (int pass = 0; pass < 2; pass++) {
        int set = 0;
        for (int i = 0; i < d->nfields; i++) {
            const msgpack_object *by_name = pm_msg_obj(m, d->fields[i].name);
            assert_ptr_equal(pm_msg_obj_at(m, i), by_name);
            set += by_name != NULL;
        }
        assert_int_equal(set, 2);
        assert_null(pm_msg_obj_at(m, -1));
        assert_null(pm_msg_obj_at(m, d->nfields));
        assert_null(pm_msg_obj_at(NULL, 0));
        //  the second pass reads a decoded copy
        uint8_t *buf = NULL;
        size_t len = 0;
        char err[128];
        assert_int_equal(pm_msg_encode(m, &buf, &len, err, sizeof err), 0);
        pm_msg_destroy(&m);
        assert_int_equal(pm_msg_decode(buf, len, &m, err, sizeof err), 0);
        free(buf);
    }
    pm_msg_destroy(&m);
}

static void test_getters_and_setters(void **state)
{
    (void)state;
    pm_msg_t *m = pm_msg_new(PM_MSG_CODEC_TEST);
    //  setter type checks
    assert_int_equal(pm_msg_set_str(m, "nope", "x"), -1);
    assert_int_equal(pm_msg_set_str(m, "u", "x"), -1);
    assert_int_equal(pm_msg_set_int(m, "u", -1), -1);
    assert_int_equal(pm_msg_set_uint(m, "i", (uint64_t)INT64_MAX + 1), -1);
    assert_int_equal(pm_msg_set_bin(m, "s", "x", 1), -1);
    assert_int_equal(pm_msg_set_float(m, "i", 1.0), -1);
    assert_int_equal(pm_msg_set_time(m, "t", 1, 1000000000), -1);
    const uint8_t notstrs[] = {0x92, 0xa1, 'a', 0x01};
    assert_int_equal(pm_msg_set_packed(m, "ss", notstrs, sizeof notstrs), -1);
    const uint8_t bomb[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(pm_msg_set_packed(m, "a", bomb, sizeof bomb), -1);
    assert_false(pm_msg_has(m, "u"));
    //  getters and defaults
    assert_null(pm_msg_str(m, "s"));
    assert_int_equal(pm_msg_uint(m, "u", 7), 7);
    assert_int_equal(pm_msg_set_uint(m, "i", 5), 0);
    assert_int_equal(pm_msg_int(m, "i", 0), 5);
    assert_int_equal(pm_msg_set_int(m, "f", -3), 0); //  FLOAT accepts integers
    assert_true(pm_msg_float(m, "f", 0) == -3.0);
    assert_int_equal(pm_msg_set_strn(m, "s", "abcdef", 3), 0);
    assert_string_equal(pm_msg_str(m, "s"), "abc");
    size_t n = 9;
    assert_null(pm_msg_bin(m, "bin", &n));
    assert_int_equal(n, 0);
    assert_int_equal(pm_msg_set_bin(m, "bin", NULL, 0), 0);
    assert_non_null(pm_msg_bin(m, "bin", &n));
    assert_int_equal(n, 0);
    //  timestamps: the three encodings
    const struct {
        int64_t sec;
        uint32_t nsec;
        uint32_t size;
    } ts[] = {{1700000000, 0, 4}, {1700000000, 123, 8}, {-5, 7, 12}, {(int64_t)1 << 40, 0, 12}};
    for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) {
        assert_int_equal(pm_msg_set_time(m, "t", ts[k].sec, ts[k].nsec), 0);
        assert_int_equal(pm_msg_obj(m, "t")->via.ext.size, ts[k].size);
        pm_msg_t *r = s_roundtrip(m);
        int64_t sec = 0;
        uint32_t nsec = 0;
        assert_int_equal(pm_msg_time(r, "t", &sec, &nsec), 0);
        assert_true(sec == ts[k].sec);
        assert_int_equal(nsec, ts[k].nsec);
        pm_msg_destroy(&r);
    }
    //  rid
    assert_int_equal(pm_msg_set_rid(m, ""), -1);
    assert_int_equal(pm_msg_set_rid(m, "has space"), -1);
    char longrid[PM_RID_MAX + 2];
    memset(longrid, 'r', sizeof longrid - 1);
    longrid[sizeof longrid - 1] = '\0';
    assert_int_equal(pm_msg_set_rid(m, longrid), -1);
    longrid[PM_RID_MAX] = '\0';
    assert_int_equal(pm_msg_set_rid(m, longrid), 0);
    assert_string_equal(pm_msg_rid(m), longrid);
    //  missing required field: encode refuses
    pm_msg_t *e = pm_msg_new(PM_MSG_CODEC_TEST);
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[256];
    assert_int_equal(pm_msg_encode(e, &buf, &len, err, sizeof err), -1);
    assert_non_null(strstr(err, "'s'"));
    assert_null(buf);
    pm_msg_destroy(&e);
    //  replies and errors keep the rid
    e = pm_msg_new_error(m, "not_found", "no device %s; enroll it first", "X1");
    assert_non_null(e);
    assert_int_equal(pm_msg_type(e), PM_MSG_ERROR);
    assert_string_equal(pm_msg_rid(e), longrid);
    assert_string_equal(pm_msg_str(e, "code"), "not_found");
    assert_string_equal(pm_msg_str(e, "message"), "no device X1; enroll it first");
    pm_msg_destroy(&e);
    pm_msg_destroy(&m);
    assert_null(pm_msg_new(PM_MSG_INVALID));
    assert_null(pm_msg_new(PM_MSG_COUNT));
}

static void test_rids(void **state)
{
    (void)state;
    enum { N = 2000 };
    char(*rids)[PM_RID_MAX + 1] = calloc(N, sizeof *rids);
    for (int i = 0; i < N; i++) {
        pm_msg_t *m = pm_msg_new(PM_MSG_OK);
        const char *r = pm_msg_rid(m);
        assert_int_equal(strlen(r), 32);
        assert_int_equal(strspn(r, "0123456789abcdef"), 32);
        memcpy(rids[i], r, 33);
        pm_msg_destroy(&m);
    }
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++)
            if (strcmp(rids[i], rids[j]) == 0)
                fail_msg("request id repeated: %s", rids[i]);
    free(rids);
}

static void test_reject_envelope(void **state)
{
    (void)state;
    w_t w;
    //  control: a hand-made valid message decodes
    w_env(&w, PM_PROTO_VERSION, "ok", "r1", 0);
    w_expect(&w, NULL);
    //  keys in another order are fine
    w_init(&w);
    msgpack_pack_map(&w.pk, 5);
    w_str(&w, "body"), msgpack_pack_map(&w.pk, 0);
    w_str(&w, "ts"), msgpack_pack_uint64(&w.pk, 1);
    w_str(&w, "rid"), w_str(&w, "abc");
    w_str(&w, "type"), w_str(&w, "ok");
    w_str(&w, "v"), msgpack_pack_uint32(&w.pk, PM_PROTO_VERSION);
    w_expect(&w, NULL);

    w_env(&w, PM_PROTO_VERSION, "no.such", "r1", 0);
    w_expect(&w, "unknown message type 'no.such'");
    w_env(&w, PM_PROTO_VERSION + 1, "ok", "r1", 0);
    w_expect(&w, "protocol version");
    w_env(&w, PM_PROTO_VERSION, "ok", "", 0);
    w_expect(&w, "bad 'rid'");
    w_env(&w, PM_PROTO_VERSION, "ok", "a b", 0);
    w_expect(&w, "bad 'rid'");
    char longrid[PM_RID_MAX + 2];
    memset(longrid, 'r', sizeof longrid - 1);
    longrid[sizeof longrid - 1] = '\0';
    w_env(&w, PM_PROTO_VERSION, "ok", longrid, 0);
    w_expect(&w, "bad 'rid'");
    //  trailing bytes
    w_env(&w, PM_PROTO_VERSION, "ok", "r1", 0);
    w_raw(&w, "\xc0", 1);
    w_expect(&w, "trailing");
    //  not a map
    w_init(&w);
    msgpack_pack_array(&w.pk, 0);
    w_expect(&w, "not a msgpack map");
    //  missing / duplicate / unknown envelope keys
    w_init(&w);
    msgpack_pack_map(&w.pk, 1);
    w_str(&w, "v"), msgpack_pack_uint32(&w.pk, PM_PROTO_VERSION);
    w_expect(&w, "'type' is missing");
    w_init(&w);
    msgpack_pack_map(&w.pk, 2);
    w_str(&w, "v"), msgpack_pack_uint32(&w.pk, 1);
    w_str(&w, "v"), msgpack_pack_uint32(&w.pk, 1);
    w_expect(&w, "'v' appears twice");
    w_init(&w);
    msgpack_pack_map(&w.pk, 1);
    w_str(&w, "extra"), msgpack_pack_nil(&w.pk);
    w_expect(&w, "unknown envelope key 'extra'");
    w_init(&w);
    msgpack_pack_map(&w.pk, 1);
    msgpack_pack_uint32(&w.pk, 1), msgpack_pack_nil(&w.pk);
    w_expect(&w, "not a str");
    //  body of the wrong type
    w_init(&w);
    msgpack_pack_map(&w.pk, 5);
    w_str(&w, "v"), msgpack_pack_uint32(&w.pk, PM_PROTO_VERSION);
    w_str(&w, "type"), w_str(&w, "ok");
    w_str(&w, "rid"), w_str(&w, "r");
    w_str(&w, "ts"), msgpack_pack_int64(&w.pk, -1);
    w_str(&w, "body"), msgpack_pack_map(&w.pk, 0);
    w_expect(&w, "'ts'");
    //  hostile sizes and nesting never reach msgpack-c
    const uint8_t bomb[] = {0xdf, 0xff, 0xff, 0xff, 0xff};
    w_init(&w);
    w_raw(&w, bomb, sizeof bomb);
    w_expect(&w, "cannot fit");
    w_env(&w, PM_PROTO_VERSION, "codec.test", "r1", 2);
    w_str(&w, "s"), w_str(&w, "x");
    w_str(&w, "a");
    const uint8_t a32[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0};
    w_raw(&w, a32, sizeof a32);
    w_expect(&w, "cannot fit");
    w_env(&w, PM_PROTO_VERSION, "codec.test", "r1", 2);
    w_str(&w, "s"), w_str(&w, "x");
    w_str(&w, "any");
    for (int i = 0; i < 40; i++)
        msgpack_pack_array(&w.pk, 1);
    msgpack_pack_nil(&w.pk);
    w_expect(&w, "nesting deeper");
    //  empty input
    pm_msg_t *m = NULL;
    char err[128];
    assert_int_equal(pm_msg_decode(NULL, 0, &m, err, sizeof err), -1);
    assert_int_equal(pm_msg_decode((const uint8_t *)"", 0, &m, err, sizeof err), -1);
}

static void test_reject_body(void **state)
{
    (void)state;
    w_t w;
    //  missing required field
    w_env(&w, PM_PROTO_VERSION, "error", "r1", 1);
    w_str(&w, "code"), w_str(&w, "x");
    w_expect(&w, "required field 'message' is missing");
    //  wrong type
    w_env(&w, PM_PROTO_VERSION, "error", "r1", 2);
    w_str(&w, "code"), msgpack_pack_uint32(&w.pk, 5);
    w_str(&w, "message"), w_str(&w, "m");
    w_expect(&w, "field 'code': expected str");
    //  unknown field
    w_env(&w, PM_PROTO_VERSION, "ok", "r1", 1);
    w_str(&w, "extra"), msgpack_pack_true(&w.pk);
    w_expect(&w, "unknown field 'extra'");
    //  duplicate field
    w_env(&w, PM_PROTO_VERSION, "echo", "r1", 2);
    w_str(&w, "delay_ms"), msgpack_pack_uint32(&w.pk, 1);
    w_str(&w, "delay_ms"), msgpack_pack_uint32(&w.pk, 1);
    w_expect(&w, "'delay_ms' appears twice");
    //  hostile key bytes: the reason stays one printable line (fuzz finding)
    w_env(&w, PM_PROTO_VERSION, "ok", "r1", 1);
    msgpack_pack_str_with_body(&w.pk, "\xff\ndy", 4), msgpack_pack_true(&w.pk);
    w_expect(&w, "unknown field '??dy'");
    //  a key with an embedded NUL is not the field before the NUL
    w_env(&w, PM_PROTO_VERSION, "echo", "r1", 1);
    msgpack_pack_str_with_body(&w.pk, "payload\0xx", 10), msgpack_pack_true(&w.pk);
    w_expect(&w, "unknown field 'payload?xx'");
    //  non-str body key
    w_env(&w, PM_PROTO_VERSION, "ok", "r1", 1);
    msgpack_pack_uint32(&w.pk, 1), msgpack_pack_true(&w.pk);
    w_expect(&w, "body key #0");

    //  per-type checks on codec.test: {field, bytes of the value, accept?}
    struct {
        const char *field;
        const char *bytes;
        size_t n;
        const char *needle; //  NULL = accepted
    } c[] = {
        {"i", "\xcf\x80\x00\x00\x00\x00\x00\x00\x00", 9, "INT64_MAX"},
        {"i", "\xcf\x7f\xff\xff\xff\xff\xff\xff\xff", 9, NULL},
        {"i", "\xd3\x80\x00\x00\x00\x00\x00\x00\x00", 9, NULL},
        {"i", "\xca\x3f\x80\x00\x00", 5, "expected int"},
        {"u", "\xff", 1, "negative"},
        {"u", "\xd0\x05", 2, NULL}, //  int8 holding a positive value
        {"f", "\x05", 1, NULL},     //  FLOAT accepts integers
        {"f", "\xfb", 1, NULL},
        {"f", "\xca\x3f\x80\x00\x00", 5, NULL},
        {"f", "\xa1x", 2, "expected float"},
        {"b", "\xc0", 1, "expected bool"},
        {"bin", "\xa1x", 2, "expected bin"},
        {"m", "\x90", 1, "expected map"},
        {"a", "\x80", 1, "expected array"},
        {"ss", "\x92\xa1x\x01", 4, "not a str"},
        {"ss", "\x90", 1, NULL},
        {"any", "\xc0", 1, NULL},
        {"t", "\xd6\xff\x00\x00\x00\x01", 6, NULL},
        {"t", "\xd7\xff\x00\x00\x00\x00\x00\x00\x00\x01", 10, NULL},
        {"t", "\xc7\x0c\xff\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01", 15, NULL},
        {"t", "\xc7\x05\xff\x00\x00\x00\x00\x01", 8, "expected timestamp"},
        {"t", "\xd6\x01\x00\x00\x00\x01", 6, "expected timestamp"},
        {"t", "\xd7\xff\xff\xff\xff\xff\x00\x00\x00\x01", 10, "expected timestamp"}, //  nsec>=1e9
        {"t", "\x01", 1, "expected timestamp"},
    };
    for (size_t k = 0; k < sizeof c / sizeof c[0]; k++) {
        w_env(&w, PM_PROTO_VERSION, "codec.test", "r1", 2);
        w_str(&w, "s"), w_str(&w, "x");
        w_str(&w, c[k].field);
        w_raw(&w, c[k].bytes, c[k].n);
        w_expect(&w, c[k].needle);
    }
}

static double s_bench(long iters)
{
    pm_msg_t *m = pm_msg_new(PM_MSG_ECHO);
    uint8_t payload[16] = {1, 2, 3};
    pm_msg_set_bin(m, "payload", payload, sizeof payload);
    pm_msg_set_uint(m, "delay_ms", 0);
    struct timespec a, b;
    char err[128];
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < iters; i++) {
        uint8_t *buf;
        size_t len;
        pm_msg_t *d = NULL;
        if (pm_msg_encode(m, &buf, &len, err, sizeof err) != 0 ||
            pm_msg_decode(buf, len, &d, err, sizeof err) != 0)
            fail_msg("bench: %s", err);
        free(buf);
        pm_msg_destroy(&d);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    pm_msg_destroy(&m);
    return ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / (double)iters;
}

static void test_speed(void **state)
{
    (void)state;
    double ns = s_bench(20000);
    printf("pm_msg: encode+decode of a small echo message: %.0f ns/op\n", ns);
}

//  PM_MSG_CORPUS=dir: write one valid encoded message per type (all fields
//  and required-only) as fuzz seeds, then exit.
static int s_write_corpus(const char *dir)
{
    for (int t = 1; t < PM_MSG_COUNT; t++) {
        const pm_msgdef_t *d = pm_msgdef((pm_msg_type_t)t);
        for (int all = 0; all < 2; all++) {
            pm_msg_t *m = pm_msg_new((pm_msg_type_t)t);
            pm_msg_set_rid(m, "0123456789abcdef0123456789abcdef");
            pm_msg_set_ts(m, 1700000000000ULL);
            for (int f = 0; f < d->nfields; f++)
                if (all || d->fields[f].required)
                    s_fill(m, &d->fields[f]);
            uint8_t *buf;
            size_t len;
            char err[256], path[512];
            if (pm_msg_encode(m, &buf, &len, err, sizeof err) != 0) {
                fprintf(stderr, "%s\n", err);
                return 1;
            }
            snprintf(path, sizeof path, "%s/valid-%s%s", dir, d->name, all ? "-all" : "");
            FILE *f = fopen(path, "wb");
            if (!f || fwrite(buf, 1, len, f) != len || fclose(f) != 0) {
                fprintf(stderr, "cannot write %s\n", path);
                return 1;
            }
            free(buf);
            pm_msg_destroy(&m);
        }
    }
    return 0;
}

int main(void)
{
    if (getenv("PM_MSG_CORPUS"))
        return s_write_corpus(getenv("PM_MSG_CORPUS"));
    const char *bench = getenv("PM_MSG_BENCH");
    if (bench) {
        long n = strtol(bench, NULL, 10);
        if (n <= 0)
            n = 1000000;
        s_bench(n / 10); //  warm up
        double ns = s_bench(n);
        printf("pm_msg encode+decode (echo, 16-byte payload): %.0f ns/op, %.0f ops/s on one "
               "core\n",
               ns, 1e9 / ns);
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_sanity),
        cmocka_unit_test(test_fingerprint),
        cmocka_unit_test(test_roundtrip_every_type),
        cmocka_unit_test(test_getters_and_setters),
        cmocka_unit_test(test_obj_at),
        cmocka_unit_test(test_rids),
        cmocka_unit_test(test_reject_envelope),
        cmocka_unit_test(test_reject_body),
        cmocka_unit_test(test_speed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
