/*  store_chal unit tests, through store_svc_apply (no bus): a challenge is
 *  consumed once; the same transaction with the same key is accepted again;
 *  another transaction or another key is refused ("used"); unknown and
 *  expired challenges are refused; expired rows are pruned; challenges
 *  survive closing and reopening the database (a restarted store); malformed
 *  requests get errors.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "store_chal.h"
#include "store_svc.h"
#include "store_test_fixture.h"

#include <msgpack.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static const char *const H1 = "1111111111111111111111111111111111111111111111111111111111111111";
static const char *const H2 = "2222222222222222222222222222222222222222222222222222222222222222";
static const char *const H3 = "3333333333333333333333333333333333333333333333333333333333333333";
static const char *const K1 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
static const char *const K2 = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

//  scep_challenge.add; the reply's type.
static pm_msg_type_t s_add(const char *hash, int64_t expires_ms)
{
    pm_msg_t *m = pm_msg_new(PM_MSG_SCEP_CHALLENGE_ADD);
    assert_non_null(m);
    assert_int_equal(pm_msg_set_str(m, "hash", hash), 0);
    assert_int_equal(pm_msg_set_uint(m, "expires_ms", (uint64_t)expires_ms), 0);
    pm_msg_t *r = s_apply(m);
    pm_msg_type_t t = pm_msg_type(r);
    pm_msg_destroy(&r);
    return t;
}

//  scep_challenge.use: 1 accepted, 0 refused (reason copied), -1 error reply.
static int s_use(const char *hash, const char *txid, const char *kh, char *reason)
{
    pm_msg_t *m = pm_msg_new(PM_MSG_SCEP_CHALLENGE_USE);
    assert_non_null(m);
    assert_int_equal(pm_msg_set_str(m, "hash", hash), 0);
    assert_int_equal(pm_msg_set_str(m, "transaction_id", txid), 0);
    assert_int_equal(pm_msg_set_str(m, "key_hash", kh), 0);
    pm_msg_t *r = s_apply(m);
    int rc = -1;
    if (reason)
        reason[0] = 0;
    if (pm_msg_type(r) == PM_MSG_SCEP_CHALLENGE_USE_REPLY) {
        rc = pm_msg_bool(r, "accepted", false) ? 1 : 0;
        if (reason && pm_msg_str(r, "reason"))
            snprintf(reason, 32, "%s", pm_msg_str(r, "reason"));
        if (rc == 1)
            assert_null(pm_msg_str(r, "reason"));
    }
    pm_msg_destroy(&r);
    return rc;
}

static int s_rows(void)
{
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(store_db_sqlite(s_db),
                                        "SELECT count(*) FROM scep_challenges", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return n;
}

static void test_once_and_retry(void **state)
{
    (void)state;
    char why[32];
    int64_t exp = s_now_ms() + 3600 * 1000;
    assert_int_equal(s_add(H1, exp), PM_MSG_OK);
    assert_int_equal(s_add(H1, exp), PM_MSG_OK); //  a retried add is harmless
    assert_int_equal(s_rows(), 1);
    assert_int_equal(s_use(H1, "tx-1", K1, why), 1);
    //  the same transaction with the same key: a retry after a lost reply
    assert_int_equal(s_use(H1, "tx-1", K1, why), 1);
    //  another transaction, or the same transaction id with another key
    assert_int_equal(s_use(H1, "tx-2", K1, why), 0);
    assert_string_equal(why, "used");
    assert_int_equal(s_use(H1, "tx-1", K2, why), 0);
    assert_string_equal(why, "used");
    assert_int_equal(s_use(H1, "tx-2", K2, why), 0);
    //  still bound to the first transaction
    assert_int_equal(s_use(H1, "tx-1", K1, why), 1);
    //  unknown
    assert_int_equal(s_use(H2, "tx-1", K1, why), 0);
    assert_string_equal(why, "unknown");
    //  a second challenge is independent
    assert_int_equal(s_add(H3, exp), PM_MSG_OK);
    assert_int_equal(s_use(H3, "tx-3", K2, why), 1);
    assert_int_equal(s_use(H3, "tx-1", K1, why), 0);
}

static void test_expiry_and_prune(void **state)
{
    (void)state;
    char why[32];
    int64_t now = s_now_ms();
    assert_int_equal(s_add(H1, now + 150), PM_MSG_OK);
    assert_int_equal(s_add(H2, now + 150), PM_MSG_OK);
    assert_int_equal(s_add(H3, now + 3600 * 1000), PM_MSG_OK);
    assert_int_equal(s_use(H2, "tx-2", K1, why), 1);
    usleep(300 * 1000);
    assert_int_equal(s_use(H1, "tx-1", K1, why), 0);
    assert_string_equal(why, "expired");
    //  expired: refused even for the transaction that used it
    assert_int_equal(s_use(H2, "tx-2", K1, why), 0);
    assert_string_equal(why, "expired");
    //  an add in the past is refused
    assert_int_equal(s_add(H1, now - 1000), PM_MSG_ERROR);
    //  prune: the two expired rows go, the live one stays; bounded batches
    assert_int_equal(s_rows(), 3);
    assert_int_equal(store_db_begin(s_db), 0);
    assert_int_equal(store_chal_prune(s_db, s_now_ms(), 1), 1);
    assert_int_equal(store_chal_prune(s_db, s_now_ms(), 100), 1);
    assert_int_equal(store_chal_prune(s_db, s_now_ms(), 100), 0);
    assert_int_equal(store_db_commit(s_db), 0);
    assert_int_equal(s_rows(), 1);
    assert_int_equal(s_use(H3, "tx-3", K1, why), 1);
    assert_int_equal(s_use(H1, "tx-1", K1, why), 0);
    assert_string_equal(why, "unknown");
}

//  An add prunes by itself (the first add of a process, then once a minute).
static void test_add_prunes(void **state)
{
    (void)state;
    int64_t now = s_now_ms();
    assert_int_equal(s_add(H1, now + 100), PM_MSG_OK);
    assert_int_equal(s_add(H2, now + 100), PM_MSG_OK);
    usleep(200 * 1000);
    assert_int_equal(s_add(H3, now + 100000), PM_MSG_OK);
    assert_int_equal(s_rows(), 3); //  not due yet: pruned at most once a minute
    store_chal_prune_due();
    assert_int_equal(s_add(H3, now + 100000), PM_MSG_OK);
    assert_int_equal(s_rows(), 1);
}

static void test_durable_across_reopen(void **state)
{
    (void)state;
    char path[] = "/tmp/store_chal_test_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    unlink(path);
    s_close();
    s_open(path);
    char why[32];
    assert_int_equal(s_add(H1, s_now_ms() + 60000), PM_MSG_OK);
    assert_int_equal(s_add(H2, s_now_ms() + 60000), PM_MSG_OK);
    assert_int_equal(s_use(H2, "tx-2", K2, why), 1);
    s_close();
    s_open(path);
    assert_int_equal(store_db_schema_version(s_db), STORE_SCHEMA_VERSION);
    assert_int_equal(s_use(H1, "tx-1", K1, why), 1);
    assert_int_equal(s_use(H2, "tx-2", K2, why), 1);
    assert_int_equal(s_use(H2, "tx-9", K2, why), 0);
    assert_string_equal(why, "used");
    s_close();
    char side[sizeof path + 8];
    unlink(path);
    snprintf(side, sizeof side, "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", path);
    unlink(side);
    s_open(":memory:");
}

//  An add may carry the ca's ca.profile event: logged once, with the row.
static void test_add_logs_event(void **state)
{
    (void)state;
    for (int i = 0; i < 2; i++) { //  a retried add logs nothing more
        pm_msg_t *m = pm_msg_new(PM_MSG_SCEP_CHALLENGE_ADD);
        pm_msg_set_str(m, "hash", H1);
        pm_msg_set_uint(m, "expires_ms", (uint64_t)(s_now_ms() + 60000));
        pm_msg_set_str(m, "event", "ca.profile");
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 1);
        msgpack_pack_str_with_body(&pk, "identity_uuid", 13);
        msgpack_pack_str_with_body(&pk, "UUID-1", 6);
        assert_int_equal(pm_msg_set_packed(m, "event_data", (const uint8_t *)sb.data, sb.size), 0);
        msgpack_sbuffer_destroy(&sb);
        pm_msg_t *r = s_apply(m);
        assert_int_equal(pm_msg_type(r), PM_MSG_OK);
        pm_msg_destroy(&r);
    }
    msgpack_sbuffer out;
    msgpack_sbuffer_init(&out);
    assert_int_equal(store_db_events(s_db, 0, 100, &out), STORE_OK);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, out.data, out.size, NULL), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(u.data.type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(u.data.via.array.size, 1);
    msgpack_unpacked_destroy(&u);
    assert_non_null(memmem(out.data, out.size, "ca.profile", 10));
    assert_non_null(memmem(out.data, out.size, "UUID-1", 6));
    msgpack_sbuffer_destroy(&out);
}

static void test_bad_requests(void **state)
{
    (void)state;
    assert_int_equal(s_add("not-a-hash", s_now_ms() + 1000), PM_MSG_ERROR);
    assert_int_equal(s_add("1111111111111111111111111111111111111111111111111111111111111ABC",
                           s_now_ms() + 1000),
                     PM_MSG_ERROR);
    assert_int_equal(s_use("short", "tx", K1, NULL), -1);
    assert_int_equal(s_use(H1, "tx", "zz", NULL), -1);
    assert_int_equal(s_use(H1, "", K1, NULL), -1);
    char longtx[400];
    memset(longtx, 'x', sizeof longtx - 1);
    longtx[sizeof longtx - 1] = 0;
    assert_int_equal(s_use(H1, longtx, K1, NULL), -1);
    assert_int_equal(s_rows(), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_once_and_retry, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_expiry_and_prune, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_add_prunes, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_durable_across_reopen, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_add_logs_event, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_bad_requests, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
