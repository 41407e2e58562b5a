/*  pm_mpck unit tests: valid samples pass and unpack, every truncation of them
 *  fails, hostile counts/lengths, nesting bombs, 0xc1, trailing bytes, limits,
 *  and the small map helpers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "pm_mpck.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *what;
    const uint8_t *b;
    size_t n;
} sample_t;

#define S(what, ...)                                                                               \
    {                                                                                              \
        what, (const uint8_t[]){__VA_ARGS__}, sizeof((const uint8_t[]){__VA_ARGS__})               \
    }

static const sample_t s_valid[] = {
    S("nil", 0xc0),
    S("true", 0xc3),
    S("fixint", 0x7f),
    S("negfixint", 0xe0),
    S("uint8", 0xcc, 0xff),
    S("uint64", 0xcf, 1, 2, 3, 4, 5, 6, 7, 8),
    S("int16", 0xd1, 0x80, 0x00),
    S("float32", 0xca, 0x3f, 0x80, 0, 0),
    S("float64", 0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0),
    S("fixstr", 0xa3, 'a', 'b', 'c'),
    S("str8", 0xd9, 2, 'h', 'i'),
    S("str16", 0xda, 0, 1, 'x'),
    S("str32", 0xdb, 0, 0, 0, 1, 'x'),
    S("bin8", 0xc4, 3, 1, 2, 3),
    S("bin16", 0xc5, 0, 0),
    S("fixext1", 0xd4, 1, 9),
    S("fixext16", 0xd8, 5, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
    S("ext8", 0xc7, 2, 7, 0xaa, 0xbb),
    S("timestamp32", 0xd6, 0xff, 0, 0, 0, 1),
    S("timestamp64", 0xd7, 0xff, 0, 0, 0, 0, 0, 0, 0, 1),
    S("timestamp96", 0xc7, 12, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1),
    S("fixarray", 0x93, 1, 2, 3),
    S("array16", 0xdc, 0, 2, 0xc0, 0xc2),
    S("array32", 0xdd, 0, 0, 0, 1, 0x05),
    S("empty map", 0x80),
    S("fixmap", 0x82, 0xa1, 'a', 1, 0xa1, 'b', 0x91, 0x80),
    S("map16", 0xde, 0, 1, 0x01, 0x02),
    S("map32", 0xdf, 0, 0, 0, 1, 0xc0, 0xc0),
    S("nested", 0x92, 0x92, 0x91, 0x90, 0x81, 0xa0, 0xc0, 0x81, 1, 0x92, 0xc4, 0, 0xa0),
};
#define NVALID (sizeof s_valid / sizeof s_valid[0])

static const pm_mpck_limits_t s_lim = {32, 1u << 20};

static void test_valid_samples(void **state)
{
    (void)state;
    char err[256];
    for (size_t i = 0; i < NVALID; i++) {
        size_t used = 0;
        err[0] = '\0';
        if (pm_mpck_check(s_valid[i].b, s_valid[i].n, &s_lim, true, &used, err, sizeof err) != 0)
            fail_msg("valid sample '%s' rejected: %s", s_valid[i].what, err);
        assert_int_equal(used, s_valid[i].n);
        msgpack_zone z;
        msgpack_zone_init(&z, 1024);
        msgpack_object o;
        assert_int_equal(
            pm_mpck_unpack(s_valid[i].b, s_valid[i].n, &s_lim, &z, &o, err, sizeof err), 0);
        msgpack_zone_destroy(&z);
    }
}

static void test_truncated_samples(void **state)
{
    (void)state;
    char err[256];
    for (size_t i = 0; i < NVALID; i++)
        for (size_t n = 0; n < s_valid[i].n; n++) {
            //  a private heap copy so ASan sees any read past n
            uint8_t *b = malloc(n ? n : 1);
            memcpy(b, s_valid[i].b, n);
            err[0] = '\0';
            int rc = pm_mpck_check(b, n, &s_lim, false, NULL, err, sizeof err);
            free(b);
            if (rc == 0)
                fail_msg("sample '%s' truncated to %zu bytes was accepted", s_valid[i].what, n);
            assert_true(strlen(err) > 0);
        }
}

static void s_expect_reject(const uint8_t *b, size_t n, const char *needle)
{
    char err[256] = "";
    msgpack_zone z;
    msgpack_zone_init(&z, 256);
    msgpack_object o;
    int rc = pm_mpck_unpack(b, n, &s_lim, &z, &o, err, sizeof err);
    msgpack_zone_destroy(&z);
    assert_int_equal(rc, -1);
    if (needle && !strstr(err, needle))
        fail_msg("reason '%s' does not mention '%s'", err, needle);
}

static void test_hostile_counts(void **state)
{
    (void)state;
    const uint8_t a32[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    const uint8_t m32[] = {0xdf, 0xff, 0xff, 0xff, 0xff};
    const uint8_t s32[] = {0xdb, 0xff, 0xff, 0xff, 0xff};
    const uint8_t b32[] = {0xc6, 0xff, 0xff, 0xff, 0xff};
    const uint8_t e32[] = {0xc9, 0xff, 0xff, 0xff, 0xff, 0x01};
    const uint8_t a16[] = {0xdc, 0xff, 0xff, 0xc0, 0xc0};
    //  each inner array alone fits, but together they promise more than is there
    const uint8_t owed[] = {0x92, 0x93, 0xc0, 0xc0, 0xc0, 0x93, 0xc0};
    s_expect_reject(a32, sizeof a32, "array of 4294967295");
    s_expect_reject(m32, sizeof m32, "map of 4294967295");
    s_expect_reject(s32, sizeof s32, "length 4294967295");
    s_expect_reject(b32, sizeof b32, "length 4294967295");
    s_expect_reject(e32, sizeof e32, "larger than");
    s_expect_reject(a16, sizeof a16, "array of 65535");
    s_expect_reject(owed, sizeof owed, NULL);
    //  the same hostile header inside a valid-looking container
    const uint8_t inner[] = {0x81, 0xa1, 'k', 0xdd, 0x7f, 0xff, 0xff, 0xff, 0xc0};
    s_expect_reject(inner, sizeof inner, "cannot fit");
}

static void test_nesting(void **state)
{
    (void)state;
    size_t n = 10000;
    uint8_t *b = malloc(n + 1);
    memset(b, 0x91, n);
    b[n] = 0xc0;
    s_expect_reject(b, n + 1, "nesting deeper than 32");
    //  exactly at the limit: 32 arrays around a nil pass and unpack
    char err[256];
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    msgpack_object o;
    b[32] = 0xc0;
    assert_int_equal(pm_mpck_unpack(b, 33, &s_lim, &z, &o, err, sizeof err), 0);
    msgpack_zone_destroy(&z);
    //  a smaller caller limit is honoured
    pm_mpck_limits_t lim = {2, 100};
    assert_int_equal(pm_mpck_check(b + 30, 3, &lim, true, NULL, err, sizeof err), 0);
    assert_int_equal(pm_mpck_check(b + 29, 4, &lim, true, NULL, err, sizeof err), -1);
    b[32] = 0x91;
    b[33] = 0xc0;
    s_expect_reject(b, 34, "nesting"); //  33 deep
    free(b);
}

static void test_reserved_and_trailing(void **state)
{
    (void)state;
    const uint8_t c1[] = {0x92, 0x01, 0xc1};
    s_expect_reject(c1, sizeof c1, "0xc1");
    const uint8_t two[] = {0x01, 0x02};
    char err[256];
    size_t used = 0;
    assert_int_equal(pm_mpck_check(two, 2, &s_lim, true, &used, err, sizeof err), -1);
    assert_non_null(strstr(err, "trailing"));
    assert_int_equal(pm_mpck_check(two, 2, &s_lim, false, &used, err, sizeof err), 0);
    assert_int_equal(used, 1);
    s_expect_reject(NULL, 0, "truncated");
}

static void test_element_limit(void **state)
{
    (void)state;
    pm_mpck_limits_t lim = {8, 5};
    const uint8_t ok[] = {0x92, 0x93, 1, 2, 3, 0xc0};         //  2 + 3 = 5 elements
    const uint8_t over[] = {0x92, 0x93, 1, 2, 3, 0x91, 0xc0}; //  6
    const uint8_t maps[] = {0x83, 1, 1, 2, 2, 3, 0x83, 1, 1, 2, 2, 3, 3};
    char err[256];
    assert_int_equal(pm_mpck_check(ok, sizeof ok, &lim, true, NULL, err, sizeof err), 0);
    assert_int_equal(pm_mpck_check(over, sizeof over, &lim, true, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "more than 5"));
    assert_int_equal(pm_mpck_check(maps, sizeof maps, &lim, true, NULL, err, sizeof err), -1);
}

static void test_helpers(void **state)
{
    (void)state;
    const uint8_t b[] = {0x83, 0xa1, 'a', 0xa2, 'h', 'i', 0x01, 0xa1, 'x', 0xa1,
                         'b',  0xdb, 0,   0,    0,   3,   'l',  'o',  'n'};
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    msgpack_object o;
    char err[256];
    assert_int_equal(pm_mpck_unpack(b, sizeof b, &s_lim, &z, &o, err, sizeof err), 0);
    assert_true(pm_mp_str_eq(pm_mp_get(&o, "a"), "hi"));
    assert_false(pm_mp_str_eq(pm_mp_get(&o, "a"), "h"));
    assert_null(pm_mp_get(&o, "x"));
    assert_null(pm_mp_get(&o, "zz"));
    assert_null(pm_mp_get(pm_mp_get(&o, "a"), "a")); //  not a map
    char buf[4];
    assert_int_equal(pm_mp_get_str(&o, "b", buf, sizeof buf), 0);
    assert_string_equal(buf, "lon");
    assert_int_equal(pm_mp_get_str(&o, "b", buf, 3), -1); //  too long
    assert_int_equal(pm_mp_get_str(&o, "zz", buf, sizeof buf), -1);
    assert_false(pm_mp_str_eq(NULL, "a"));
    msgpack_zone_destroy(&z);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_samples),
        cmocka_unit_test(test_truncated_samples),
        cmocka_unit_test(test_hostile_counts),
        cmocka_unit_test(test_nesting),
        cmocka_unit_test(test_reserved_and_trailing),
        cmocka_unit_test(test_element_limit),
        cmocka_unit_test(test_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
