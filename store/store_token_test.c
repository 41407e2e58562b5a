/*  store_token unit tests, through store_svc_apply (no bus): a token is
 *  accepted once, refused as used / revoked / expired / unknown afterwards, a
 *  retried request (same rid) is accepted again, release gives a token back,
 *  list reports the states, and malformed requests get errors.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "store_svc.h"
#include "store_token.h"
#include "store_test_fixture.h"

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static const char *const H1 = "1111111111111111111111111111111111111111111111111111111111111111";
static const char *const H2 = "2222222222222222222222222222222222222222222222222222222222222222";
static const char *const H3 = "3333333333333333333333333333333333333333333333333333333333333333";
static const char *const H4 = "4444444444444444444444444444444444444444444444444444444444444444";

static void s_add(const char *const *hashes, int n, int64_t expires_ms, const char *note)
{
    pm_msg_t *m = pm_msg_new(PM_MSG_ENROLL_TOKEN_ADD);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, (size_t)n);
    for (int i = 0; i < n; i++)
        msgpack_pack_str_with_body(&pk, hashes[i], strlen(hashes[i]));
    assert_int_equal(pm_msg_set_packed(m, "hashes", (const uint8_t *)sb.data, sb.size), 0);
    msgpack_sbuffer_destroy(&sb);
    assert_int_equal(pm_msg_set_uint(m, "expires_ms", (uint64_t)expires_ms), 0);
    if (note)
        assert_int_equal(pm_msg_set_str(m, "note", note), 0);
    pm_msg_t *r = s_apply(m);
    assert_int_equal(pm_msg_type(r), PM_MSG_OK);
    pm_msg_destroy(&r);
}

//  enroll_token.use of `hash` with request id `rid`: the reason ("" = accepted).
static void s_use(const char *hash, const char *rid, char *reason, size_t size)
{
    pm_msg_t *m = pm_msg_new(PM_MSG_ENROLL_TOKEN_USE);
    assert_int_equal(pm_msg_set_str(m, "hash", hash), 0);
    assert_int_equal(pm_msg_set_str(m, "remote", "192.0.2.7"), 0);
    if (rid)
        assert_int_equal(pm_msg_set_rid(m, rid), 0);
    pm_msg_t *r = s_apply(m);
    assert_int_equal(pm_msg_type(r), PM_MSG_ENROLL_TOKEN_USE_REPLY);
    bool ok = pm_msg_bool(r, "accepted", false);
    const char *why = pm_msg_str(r, "reason");
    assert_true(ok == (why == NULL));
    snprintf(reason, size, "%s", ok ? "" : why);
    pm_msg_destroy(&r);
}

static void s_simple(pm_msg_type_t type, const char *field, const char *value, pm_msg_type_t want,
                     const char *want_code)
{
    pm_msg_t *m = pm_msg_new(type);
    if (field)
        assert_int_equal(pm_msg_set_str(m, field, value), 0);
    pm_msg_t *r = s_apply(m);
    assert_int_equal(pm_msg_type(r), want);
    if (want_code)
        assert_string_equal(pm_msg_str(r, "code"), want_code);
    pm_msg_destroy(&r);
}

//  enroll_token.release of `hash`, undoing the use with request id `use_rid`.
static void s_release(const char *hash, const char *use_rid, pm_msg_type_t want)
{
    pm_msg_t *m = pm_msg_new(PM_MSG_ENROLL_TOKEN_RELEASE);
    assert_int_equal(pm_msg_set_str(m, "hash", hash), 0);
    if (use_rid)
        assert_int_equal(pm_msg_set_str(m, "use_rid", use_rid), 0);
    pm_msg_t *r = s_apply(m);
    assert_int_equal(pm_msg_type(r), want);
    pm_msg_destroy(&r);
}

static void test_once(void **state)
{
    (void)state;
    const char *hs[] = {H1, H2, H3};
    s_add(hs, 3, s_now_ms() + 3600 * 1000, "batch");
    char why[32];
    s_use(H1, "rid-a", why, sizeof why);
    assert_string_equal(why, "");
    s_use(H1, "rid-b", why, sizeof why);
    assert_string_equal(why, "used");
    //  the same request again (lost reply, retried with its rid): same answer
    s_use(H1, "rid-a", why, sizeof why);
    assert_string_equal(why, "");
    s_use(H4, "rid-c", why, sizeof why);
    assert_string_equal(why, "unknown");
    //  a release for another request's use (rid-b was refused) changes nothing:
    //  a late or stray release can never revive a token someone else used
    s_release(H1, "rid-b", PM_MSG_OK);
    s_use(H1, "rid-x", why, sizeof why);
    assert_string_equal(why, "used");
    //  release of the use that consumed it (rid-a): usable again, once
    s_release(H1, "rid-a", PM_MSG_OK);
    s_use(H1, "rid-d", why, sizeof why);
    assert_string_equal(why, "");
    s_use(H1, "rid-e", why, sizeof why);
    assert_string_equal(why, "used");
    //  revoke by id (12 hex digits); a used token cannot be revoked
    s_simple(PM_MSG_ENROLL_TOKEN_REVOKE, "id", "222222222222", PM_MSG_OK, NULL);
    s_use(H2, "rid-f", why, sizeof why);
    assert_string_equal(why, "revoked");
    s_simple(PM_MSG_ENROLL_TOKEN_REVOKE, "id", "111111111111", PM_MSG_ERROR, "not_found");
    s_simple(PM_MSG_ENROLL_TOKEN_REVOKE, "id", "12", PM_MSG_ERROR, "bad_request");
    //  a revoked token is not given back by release
    s_release(H2, "rid-f", PM_MSG_OK);
    s_use(H2, "rid-g", why, sizeof why);
    assert_string_equal(why, "revoked");
}

static void test_expired_and_list(void **state)
{
    (void)state;
    const char *h4[] = {H4};
    s_add(h4, 1, s_now_ms() + 30, NULL);
    const char *hs[] = {H1, H2};
    s_add(hs, 2, s_now_ms() + 3600 * 1000, "later");
    usleep(60 * 1000);
    char why[32];
    s_use(H4, NULL, why, sizeof why);
    assert_string_equal(why, "expired");
    s_use(H1, NULL, why, sizeof why);
    assert_string_equal(why, "");
    //  list: usable only by default, every state with all
    for (int all = 0; all < 2; all++) {
        pm_msg_t *m = pm_msg_new(PM_MSG_ENROLL_TOKEN_LIST);
        if (all)
            pm_msg_set_bool(m, "all", true);
        pm_msg_t *r = s_apply(m);
        assert_int_equal(pm_msg_type(r), PM_MSG_ENROLL_TOKEN_LIST_REPLY);
        const msgpack_object *a = pm_msg_obj(r, "tokens");
        assert_non_null(a);
        assert_int_equal(a->type, MSGPACK_OBJECT_ARRAY);
        assert_int_equal(a->via.array.size, all ? 3 : 1);
        char states[64] = "";
        for (uint32_t i = 0; i < a->via.array.size; i++) {
            const msgpack_object *o = &a->via.array.ptr[i];
            for (uint32_t k = 0; k < o->via.map.size; k++) {
                const msgpack_object_kv *kv = &o->via.map.ptr[k];
                if (kv->key.via.str.size == 5 && memcmp(kv->key.via.str.ptr, "state", 5) == 0)
                    snprintf(states + strlen(states), sizeof states - strlen(states), "%.*s,",
                             (int)kv->val.via.str.size, kv->val.via.str.ptr);
                //  the list never carries a hash beyond its 12-digit id
                if (kv->val.type == MSGPACK_OBJECT_STR)
                    assert_true(kv->val.via.str.size < 64);
            }
        }
        if (all) {
            assert_non_null(strstr(states, "used"));
            assert_non_null(strstr(states, "usable"));
            assert_non_null(strstr(states, "expired"));
        } else {
            assert_string_equal(states, "usable,");
        }
        pm_msg_destroy(&r);
    }
}

static void test_bad_requests(void **state)
{
    (void)state;
    //  not a hash
    s_simple(PM_MSG_ENROLL_TOKEN_USE, "hash", "not-a-hash", PM_MSG_ERROR, "bad_request");
    s_simple(PM_MSG_ENROLL_TOKEN_USE, "hash",
             "ABCDEF1111111111111111111111111111111111111111111111111111111111", PM_MSG_ERROR,
             "bad_request");
    s_simple(PM_MSG_ENROLL_TOKEN_RELEASE, "hash", "x", PM_MSG_ERROR, "bad_request");
    s_release(H1, NULL, PM_MSG_ERROR); //  no use_rid: refused, nothing undone
    //  add: past expiry, bad hash, nothing to add
    pm_msg_t *m = pm_msg_new(PM_MSG_ENROLL_TOKEN_ADD);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_str_with_body(&pk, "zz", 2);
    pm_msg_set_packed(m, "hashes", (const uint8_t *)sb.data, sb.size);
    pm_msg_set_uint(m, "expires_ms", (uint64_t)s_now_ms() + 100000);
    pm_msg_t *r = s_apply(m);
    assert_int_equal(pm_msg_type(r), PM_MSG_ERROR);
    pm_msg_destroy(&r);
    m = pm_msg_new(PM_MSG_ENROLL_TOKEN_ADD);
    msgpack_sbuffer_clear(&sb);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_str_with_body(&pk, H1, 64);
    pm_msg_set_packed(m, "hashes", (const uint8_t *)sb.data, sb.size);
    pm_msg_set_uint(m, "expires_ms", 1000);
    r = s_apply(m);
    assert_int_equal(pm_msg_type(r), PM_MSG_ERROR);
    assert_string_equal(pm_msg_str(r, "code"), "bad_request");
    pm_msg_destroy(&r);
    msgpack_sbuffer_destroy(&sb);
    //  nothing was added by the failed requests
    char why[32];
    s_use(H1, NULL, why, sizeof why);
    assert_string_equal(why, "unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_once, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_expired_and_list, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_bad_requests, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
