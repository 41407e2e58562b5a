/*  sched unit tests: request validation (every bad operator request gets an
 *  error that says what is wrong) and the translation of scheduler requests
 *  into single store transactions (policy, expiry, CommandUUID, request ids).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "pm_mpck.h"
#include "sched.h"

#include <string.h>

static const sched_opts_t s_o = {
    .notnow_limit = 3, .redeliver_limit = 5, .delivered_timeout_s = 60, .default_ttl_s = 3600};

static pm_msg_t *s_enqueue(bool with_rtype, size_t ntargets)
{
    pm_msg_t *m = pm_msg_new(PM_MSG_ENQUEUE);
    assert_non_null(m);
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, with_rtype ? "RequestType" : "Request", with_rtype ? 11 : 7);
    msgpack_pack_str_with_body(&pk, "DeviceLock", 10);
    assert_int_equal(pm_msg_set_packed(m, "command", (const uint8_t *)b.data, b.size), 0);
    msgpack_sbuffer_destroy(&b);
    const char *t[] = {"d1", "d2", ""};
    assert_int_equal(pm_msg_set_strs(m, "targets", t, ntargets), 0);
    return m;
}

static void s_expect_error(pm_msg_t *req, const char *code, const char *text)
{
    pm_msg_t *e = sched_validate(req);
    assert_non_null(e);
    assert_int_equal(pm_msg_type(e), PM_MSG_ERROR);
    assert_string_equal(pm_msg_str(e, "code"), code);
    if (!strstr(pm_msg_str(e, "message"), text))
        fail_msg("error '%s' does not mention '%s'", pm_msg_str(e, "message"), text);
    assert_string_equal(pm_msg_rid(e), pm_msg_rid(req));
    pm_msg_destroy(&e);
}

static void test_validate(void **state)
{
    (void)state;
    pm_msg_t *m = s_enqueue(false, 2);
    s_expect_error(m, "bad_request", "RequestType");
    pm_msg_destroy(&m);
    m = s_enqueue(true, 0);
    s_expect_error(m, "bad_request", "picomdm devices");
    pm_msg_destroy(&m);
    m = s_enqueue(true, 3); //  an empty target id
    s_expect_error(m, "bad_request", "target #3");
    pm_msg_destroy(&m);
    m = s_enqueue(true, 2);
    assert_null(sched_validate(m));
    pm_msg_destroy(&m);

    m = pm_msg_new(PM_MSG_CANCEL);
    assert_int_equal(pm_msg_set_str(m, "command_uuid", ""), 0);
    s_expect_error(m, "bad_request", "command_uuid");
    pm_msg_destroy(&m);
    m = pm_msg_new(PM_MSG_QUEUE);
    assert_int_equal(pm_msg_set_str(m, "eid", ""), 0);
    s_expect_error(m, "bad_request", "eid");
    pm_msg_destroy(&m);
    m = pm_msg_new(PM_MSG_ECHO);
    s_expect_error(m, "unknown_type", "does not handle echo");
    pm_msg_destroy(&m);
    m = pm_msg_new(PM_MSG_DEVICES);
    assert_null(sched_validate(m));
    pm_msg_destroy(&m);
}

static void test_enqueue_translation(void **state)
{
    (void)state;
    pm_msg_t *m = s_enqueue(true, 2);
    pm_msg_t *s = sched_store_request(&s_o, m, "GEN-UUID", 1000);
    assert_non_null(s);
    assert_int_equal(pm_msg_type(s), PM_MSG_STORE_ENQUEUE);
    assert_string_equal(pm_msg_str(s, "command_uuid"), "GEN-UUID");
    assert_string_equal(pm_msg_str(s, "op_rid"), pm_msg_rid(m)); //  idempotent across restarts
    assert_int_equal(pm_msg_uint(s, "expires_ms", 0), 1000 + 3600 * 1000); //  default ttl
    assert_int_equal(pm_msg_obj(s, "targets")->via.array.size, 2);
    char rt[32];
    assert_int_equal(pm_mp_get_str(pm_msg_obj(s, "command"), "RequestType", rt, sizeof rt), 0);
    assert_string_equal(rt, "DeviceLock");
    pm_msg_destroy(&s);
    //  the operator's own uuid and ttl win
    assert_int_equal(pm_msg_set_str(m, "command_uuid", "MINE"), 0);
    assert_int_equal(pm_msg_set_uint(m, "ttl_s", 10), 0);
    assert_int_equal(pm_msg_set_int(m, "priority", 7), 0);
    s = sched_store_request(&s_o, m, "GEN-UUID", 1000);
    assert_string_equal(pm_msg_str(s, "command_uuid"), "MINE");
    assert_int_equal(pm_msg_uint(s, "expires_ms", 0), 11000);
    assert_int_equal(pm_msg_int(s, "priority", 0), 7);
    pm_msg_destroy(&s);
    //  ttl 0 and no default: never expires
    sched_opts_t o = s_o;
    o.default_ttl_s = 0;
    pm_msg_destroy(&m);
    m = s_enqueue(true, 1);
    s = sched_store_request(&o, m, "U", 1000);
    assert_false(pm_msg_has(s, "expires_ms"));
    pm_msg_destroy(&s);
    pm_msg_destroy(&m);
}

static void test_connect_translation(void **state)
{
    (void)state;
    pm_msg_t *m = pm_msg_new(PM_MSG_CONNECT);
    assert_int_equal(pm_msg_set_str(m, "eid", "d1"), 0);
    assert_int_equal(pm_msg_set_str(m, "kind", "device"), 0);
    assert_int_equal(pm_msg_set_str(m, "status", "NotNow"), 0);
    assert_int_equal(pm_msg_set_str(m, "command_uuid", "C1"), 0);
    assert_int_equal(pm_msg_set_bin(m, "cert_hash", "HASH", 4), 0);
    assert_int_equal(pm_msg_set_time(m, "cert_not_after", 1800000000, 0), 0);
    assert_int_equal(pm_msg_set_int(m, "clock_skew_s", -900), 0);
    assert_int_equal(pm_msg_set_packed(m, "body", (const uint8_t *)"\x80", 1), 0);
    assert_null(sched_validate(m));
    pm_msg_t *s = sched_store_request(&s_o, m, "", 0);
    assert_non_null(s);
    assert_int_equal(pm_msg_type(s), PM_MSG_STORE_CONNECT);
    //  the doctor facts travel on to the store
    int64_t sec = 0;
    uint32_t nsec = 1;
    assert_int_equal(pm_msg_time(s, "cert_not_after", &sec, &nsec), 0);
    assert_int_equal(sec, 1800000000);
    assert_int_equal(pm_msg_int(s, "clock_skew_s", 0), -900);
    assert_string_equal(pm_msg_str(s, "device_rid"), pm_msg_rid(m));
    assert_string_equal(pm_msg_str(s, "status"), "NotNow");
    assert_string_equal(pm_msg_str(s, "command_uuid"), "C1");
    size_t n;
    assert_memory_equal(pm_msg_bin(s, "cert_hash", &n), "HASH", 4);
    assert_int_equal(pm_msg_uint(s, "notnow_limit", 0), 3);
    assert_int_equal(pm_msg_uint(s, "redeliver_limit", 0), 5);
    assert_int_equal(pm_msg_uint(s, "delivered_timeout_s", 0), 60);
    //  and it encodes (every required field present)
    uint8_t *buf;
    size_t len;
    char err[128];
    assert_int_equal(pm_msg_encode(s, &buf, &len, err, sizeof err), 0);
    free(buf);
    pm_msg_destroy(&s);
    pm_msg_destroy(&m);
    //  not a scheduler request
    m = pm_msg_new(PM_MSG_OK);
    assert_null(sched_store_request(&s_o, m, "", 0));
    pm_msg_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_enqueue_translation),
        cmocka_unit_test(test_connect_translation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
