/*  pm_json unit tests: scalars, string escaping and invalid UTF-8, base64,
 *  timestamps, float round trips, non-string keys, depth bound, messages.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "pm_json.h"
#include "pm_mpck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  JSON of the msgpack bytes b[0..n)
static char *s_json(const void *b, size_t n)
{
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    msgpack_object o;
    char err[256];
    pm_mpck_limits_t lim = {32, 1000};
    if (pm_mpck_unpack(b, n, &lim, &z, &o, err, sizeof err) != 0)
        fail_msg("bad test vector: %s", err);
    size_t len = 0;
    char *j = pm_json_from_obj(&o, &len);
    msgpack_zone_destroy(&z);
    if (j)
        assert_int_equal(strlen(j), len);
    return j;
}

#define EXPECT(bytes, want)                                                                        \
    do {                                                                                           \
        char *j_ = s_json(bytes, sizeof(bytes) - 1);                                               \
        assert_non_null(j_);                                                                       \
        assert_string_equal(j_, want);                                                             \
        free(j_);                                                                                  \
    } while (0)

static void test_scalars(void **state)
{
    (void)state;
    EXPECT("\xc0", "null");
    EXPECT("\xc3", "true");
    EXPECT("\xc2", "false");
    EXPECT("\x7f", "127");
    EXPECT("\xcf\xff\xff\xff\xff\xff\xff\xff\xff", "18446744073709551615");
    EXPECT("\xd3\x80\x00\x00\x00\x00\x00\x00\x00", "-9223372036854775808");
    EXPECT("\xcb\x3f\xb9\x99\x99\x99\x99\x99\x9a", "0.1");
    EXPECT("\xca\x3d\xcc\xcc\xcd", "0.1");                  //  float32 0.1
    EXPECT("\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", "null"); //  NaN
    EXPECT("\xcb\xff\xf0\x00\x00\x00\x00\x00\x00", "null"); //  -inf
}

static void test_float_roundtrip(void **state)
{
    (void)state;
    const double v[] = {1.0 / 3, 1e300, -2.5e-308, 123456789.123456789, 5e-324, 0.1 + 0.2};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        msgpack_object o = {.type = MSGPACK_OBJECT_FLOAT64};
        o.via.f64 = v[i];
        char *j = pm_json_from_obj(&o, NULL);
        assert_non_null(j);
        if (strtod(j, NULL) != v[i])
            fail_msg("%.17g rendered as %s does not read back", v[i], j);
        free(j);
    }
}

static void test_strings(void **state)
{
    (void)state;
    EXPECT("\xa5"
           "a\"b\\c",
           "\"a\\\"b\\\\c\"");
    EXPECT("\xa4\n\t\x01\x7f", "\"\\n\\t\\u0001\x7f\"");
    EXPECT("\xa2\xc3\xa9", "\"\xc3\xa9\"");                             //  é passes through
    EXPECT("\xa4\xf0\x9f\x98\x80", "\"\xf0\x9f\x98\x80\"");             //  U+1F600
    EXPECT("\xa3\x61\xff\x62", "\"a\\ufffdb\"");                        //  invalid byte
    EXPECT("\xa2\xc0\xaf", "\"\\ufffd\\ufffd\"");                       //  overlong
    EXPECT("\xa3\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"");            //  surrogate
    EXPECT("\xa2\xe2\x82", "\"\\ufffd\"");                              //  truncated sequence
    EXPECT("\xa4\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\""); //  > U+10FFFF
    EXPECT("\xa3"
           "a\x00"
           "b",
           "\"a\\u0000b\"");
}

static void test_bin_ext_time(void **state)
{
    (void)state;
    EXPECT("\xc4\x00", "\"\"");
    EXPECT("\xc4\x03\x00\x01\xff", "\"AAH/\"");
    EXPECT("\xc4\x01M", "\"TQ==\"");
    EXPECT("\xd4\x05\x41", "{\"ext\":5,\"data\":\"QQ==\"}");
    EXPECT("\xd6\xff\x65\x53\xf1\x00", "\"2023-11-14T22:13:20Z\"");
    //  timestamp64: nsec 500000000 << 34 | sec
    EXPECT("\xd7\xff\x77\x35\x94\x00\x65\x53\xf1\x00", "\"2023-11-14T22:13:20.5Z\"");
    //  timestamp96: nsec 1, sec -1
    EXPECT("\xc7\x0c\xff\x00\x00\x00\x01\xff\xff\xff\xff\xff\xff\xff\xff",
           "\"1969-12-31T23:59:59.000000001Z\"");
    //  year far beyond 9999: seconds as a number
    EXPECT("\xc7\x0c\xff\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00", "1099511627776");
    EXPECT("\xc7\x0c\xff\x1d\xcd\x65\x00\xff\xff\xff\x00\x00\x00\x00\x00", "-1099511627775.5");
}

static void test_containers(void **state)
{
    (void)state;
    EXPECT("\x90", "[]");
    EXPECT("\x80", "{}");
    EXPECT("\x93\x01\xa1x\xc0", "[1,\"x\",null]");
    EXPECT("\x82\xa1k\x91\x01\x02\xc3", "{\"k\":[1],\"2\":true}");
    EXPECT("\x81\x91\x01\x80", "{\"[1]\":{}}");
    EXPECT("\x81\xa1x\x80", "{\"x\":{}}");
    EXPECT("\x81\xc4\x01M\x01", "{\"\\\"TQ==\\\"\":1}");
    //  keys nested in keys: each level escapes again, so rendered keys are capped
    {
        enum { K = 30 };
        msgpack_object_kv kv[K];
        msgpack_object m[K];
        for (int i = K - 1; i >= 0; i--) { //  innermost first: keys are copies
            m[i].type = MSGPACK_OBJECT_MAP;
            m[i].via.map.size = 1;
            m[i].via.map.ptr = &kv[i];
            kv[i].val.type = MSGPACK_OBJECT_STR;
            kv[i].val.via.str.ptr = "\"q\"";
            kv[i].val.via.str.size = 3;
            if (i + 1 < K) {
                kv[i].key = m[i + 1];
            } else {
                kv[i].key = kv[i].val;
            }
        }
        size_t len = 0;
        char *j = pm_json_from_obj(&m[0], &len);
        assert_non_null(j);
        assert_true(len < 1024);
        assert_non_null(strstr(j, "...\""));
        free(j);
    }
    //  depth bound (objects made by hand: pm_mpck would stop them at 32)
    enum { D = PM_JSON_MAX_DEPTH + 5 };
    msgpack_object a[D];
    for (int i = 0; i < D; i++) {
        a[i].type = MSGPACK_OBJECT_ARRAY;
        a[i].via.array.size = i + 1 < D ? 1 : 0;
        a[i].via.array.ptr = i + 1 < D ? &a[i + 1] : NULL;
    }
    assert_null(pm_json_from_obj(&a[0], NULL));
    char *j = pm_json_from_obj(&a[D - PM_JSON_MAX_DEPTH], NULL);
    assert_non_null(j);
    free(j);
    assert_null(pm_json_from_obj(NULL, NULL));
}

static void test_msg(void **state)
{
    (void)state;
    pm_msg_t *m = pm_msg_new(PM_MSG_ERROR);
    pm_msg_set_rid(m, "abc");
    pm_msg_set_ts(m, 1700000000000ULL);
    pm_msg_set_str(m, "code", "not_found");
    pm_msg_set_str(m, "message", "no \"X\"; enroll it first");
    size_t len;
    char *j = pm_json_from_msg(m, &len);
    assert_non_null(j);
    assert_string_equal(j, "{\"type\":\"error\",\"rid\":\"abc\",\"ts\":1700000000000,\"body\":"
                           "{\"code\":\"not_found\",\"message\":\"no \\\"X\\\"; enroll it "
                           "first\"}}");
    assert_int_equal(len, strlen(j));
    free(j);
    pm_msg_destroy(&m);
    m = pm_msg_new(PM_MSG_OK);
    pm_msg_set_rid(m, "r");
    pm_msg_set_ts(m, 1);
    j = pm_json_from_msg(m, NULL);
    assert_string_equal(j, "{\"type\":\"ok\",\"rid\":\"r\",\"ts\":1,\"body\":{}}");
    free(j);
    pm_msg_destroy(&m);
    assert_null(pm_json_from_msg(NULL, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalars),    cmocka_unit_test(test_float_roundtrip),
        cmocka_unit_test(test_strings),    cmocka_unit_test(test_bin_ext_time),
        cmocka_unit_test(test_containers), cmocka_unit_test(test_msg),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
