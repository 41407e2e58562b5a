/*  store_chal unit tests, through store_svc_apply (no bus): a signed
 *  challenge is consumed by its first use; the same transaction with the same
 *  key is accepted again; another transaction or another key is refused
 *  ("used"); a challenge expired by the store's clock is refused and not
 *  recorded; expired rows are pruned; uses survive closing and reopening the
 *  database (a restarted store); the ca.issued event that rides along is
 *  logged only when accepted; malformed requests get errors; the use's
 *  cached statements do not keep the database from closing.
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

//  scep_challenge.use (with a ca.issued event when `ev`): 1 accepted, 0
//  refused (reason copied), -1 error reply. *seq: the event's seq, if any.
static const char *s_rid; //  when set: the next request's rid (a bus retry repeats it)

static int s_use_ev(const char *hash, const char *txid, const char *kh, int64_t expires_ms,
                    const char *ev, char *reason, uint64_t *seq)
{
    pm_msg_t *m = pm_msg_new(PM_MSG_SCEP_CHALLENGE_USE);
    assert_non_null(m);
    if (s_rid)
        assert_int_equal(pm_msg_set_rid(m, s_rid), 0);
    assert_int_equal(pm_msg_set_str(m, "hash", hash), 0);
    assert_int_equal(pm_msg_set_str(m, "transaction_id", txid), 0);
    assert_int_equal(pm_msg_set_str(m, "key_hash", kh), 0);
    assert_int_equal(pm_msg_set_uint(m, "expires_ms", (uint64_t)expires_ms), 0);
    if (ev) {
        assert_int_equal(pm_msg_set_str(m, "event", "ca.issued"), 0);
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 1);
        msgpack_pack_str_with_body(&pk, "cert_sha256", 11);
        msgpack_pack_str_with_body(&pk, ev, strlen(ev));
        assert_int_equal(pm_msg_set_packed(m, "event_data", (const uint8_t *)sb.data, sb.size), 0);
        msgpack_sbuffer_destroy(&sb);
    }
    pm_msg_t *r = s_apply(m);
    int rc = -1;
    if (reason)
        reason[0] = 0;
    if (seq)
        *seq = 0;
    if (pm_msg_type(r) == PM_MSG_SCEP_CHALLENGE_USE_REPLY) {
        rc = pm_msg_bool(r, "accepted", false) ? 1 : 0;
        if (reason && pm_msg_str(r, "reason"))
            snprintf(reason, 32, "%s", pm_msg_str(r, "reason"));
        if (rc == 1)
            assert_null(pm_msg_str(r, "reason"));
        if (seq)
            *seq = pm_msg_uint(r, "seq", 0);
    }
    pm_msg_destroy(&r);
    return rc;
}

static int s_use(const char *hash, const char *txid, const char *kh, int64_t expires_ms,
                 char *reason)
{
    return s_use_ev(hash, txid, kh, expires_ms, NULL, reason, NULL);
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
    assert_int_equal(s_rows(), 0); //  nothing before the first use
    assert_int_equal(s_use(H1, "tx-1", K1, exp, why), 1);
    assert_int_equal(s_rows(), 1);
    //  the same transaction with the same key: a retry after a lost reply
    assert_int_equal(s_use(H1, "tx-1", K1, exp, why), 1);
    //  another transaction, or the same transaction id with another key
    assert_int_equal(s_use(H1, "tx-2", K1, exp, why), 0);
    assert_string_equal(why, "used");
    assert_int_equal(s_use(H1, "tx-1", K2, exp, why), 0);
    assert_string_equal(why, "used");
    assert_int_equal(s_use(H1, "tx-2", K2, exp, why), 0);
    //  still bound to the first transaction
    assert_int_equal(s_use(H1, "tx-1", K1, exp, why), 1);
    //  a second challenge is independent
    assert_int_equal(s_use(H3, "tx-3", K2, exp, why), 1);
    assert_int_equal(s_use(H3, "tx-1", K1, exp, why), 0);
    assert_int_equal(s_rows(), 2);
}

static void test_expiry_and_prune(void **state)
{
    (void)state;
    char why[32];
    int64_t now = s_now_ms();
    //  expired by the store's clock: refused and not recorded
    assert_int_equal(s_use(H1, "tx-1", K1, now - 1000, why), 0);
    assert_string_equal(why, "expired");
    assert_int_equal(s_rows(), 0);
    assert_int_equal(s_use(H2, "tx-2", K1, now + 150, why), 1);
    assert_int_equal(s_use(H1, "tx-1", K1, now + 150, why), 1);
    assert_int_equal(s_use(H3, "tx-3", K1, now + 3600 * 1000, why), 1);
    usleep(300 * 1000);
    //  expired: refused even for the transaction that used it
    assert_int_equal(s_use(H2, "tx-2", K1, now + 150, why), 0);
    assert_string_equal(why, "expired");
    //  prune: the two expired rows go, the live one stays; bounded batches
    assert_int_equal(s_rows(), 3);
    assert_int_equal(store_db_begin(s_db), 0);
    assert_int_equal(store_chal_prune(s_db, s_now_ms(), 1), 1);
    assert_int_equal(store_chal_prune(s_db, s_now_ms(), 100), 1);
    assert_int_equal(store_chal_prune(s_db, s_now_ms(), 100), 0);
    assert_int_equal(store_db_commit(s_db), 0);
    assert_int_equal(s_rows(), 1);
    assert_int_equal(s_use(H3, "tx-9", K1, now + 3600 * 1000, why), 0);
    assert_string_equal(why, "used");
    //  a pruned challenge stays refused: its expiry has passed
    assert_int_equal(s_use(H1, "tx-9", K2, now + 150, why), 0);
    assert_string_equal(why, "expired");
    assert_int_equal(s_rows(), 1);
}

//  A use prunes by itself (the first of a process, then once a minute).
static void test_use_prunes(void **state)
{
    (void)state;
    char why[32];
    int64_t now = s_now_ms();
    assert_int_equal(s_use(H1, "tx-1", K1, now + 100, why), 1);
    assert_int_equal(s_use(H2, "tx-2", K1, now + 100, why), 1);
    usleep(200 * 1000);
    assert_int_equal(s_use(H3, "tx-3", K1, now + 100000, why), 1);
    assert_int_equal(s_rows(), 3); //  not due yet: pruned at most once a minute
    store_chal_prune_due();
    assert_int_equal(s_use(H3, "tx-3", K1, now + 100000, why), 1);
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
    int64_t exp = s_now_ms() + 60000;
    assert_int_equal(s_use(H2, "tx-2", K2, exp, why), 1);
    s_close();
    s_open(path);
    assert_int_equal(store_db_schema_version(s_db), STORE_SCHEMA_VERSION);
    assert_int_equal(s_use(H2, "tx-2", K2, exp, why), 1);
    assert_int_equal(s_use(H2, "tx-9", K2, exp, why), 0);
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

static int s_events_with(const char *needle)
{
    msgpack_sbuffer out;
    msgpack_sbuffer_init(&out);
    assert_int_equal(store_db_events(s_db, 0, 100, &out), STORE_OK);
    int n = 0;
    for (const char *p = out.data; p && (size_t)(p - out.data) < out.size; n++) {
        p = memmem(p, out.size - (size_t)(p - out.data), needle, strlen(needle));
        if (!p)
            break;
        p += strlen(needle);
    }
    msgpack_sbuffer_destroy(&out);
    return n;
}

//  A use may carry the ca's ca.issued event: logged when accepted (with its
//  seq in the reply), not when refused.
static void test_use_logs_event(void **state)
{
    (void)state;
    char why[32];
    uint64_t seq = 0, seq2 = 0;
    int64_t exp = s_now_ms() + 60000;
    assert_int_equal(s_use_ev(H1, "tx-1", K1, exp, "CERT-ONE", why, &seq), 1);
    assert_true(seq > 0);
    assert_int_equal(s_events_with("CERT-ONE"), 1);
    assert_int_equal(s_events_with("ca.issued"), 1);
    //  refused: no event, no seq
    assert_int_equal(s_use_ev(H1, "tx-2", K2, exp, "CERT-TWO", why, &seq2), 0);
    assert_int_equal(seq2, 0);
    assert_int_equal(s_events_with("CERT-TWO"), 0);
    //  the device's retry of its transaction got a new certificate: logged too
    assert_int_equal(s_use_ev(H1, "tx-1", K1, exp, "CERT-THREE", why, &seq2), 1);
    assert_true(seq2 > seq);
    assert_int_equal(s_events_with("ca.issued"), 2);
    //  picomdm-ca's bus retry of one request (same rid: its reply was lost):
    //  accepted with the first seq, and the event is not logged twice
    uint64_t first = 0, again = 0;
    s_rid = "rid-retried-use";
    assert_int_equal(s_use_ev(H2, "tx-9", K2, exp, "CERT-NINE", why, &first), 1);
    assert_int_equal(s_use_ev(H2, "tx-9", K2, exp, "CERT-NINE", why, &again), 1);
    s_rid = NULL;
    assert_true(first > 0);
    assert_int_equal(again, first);
    assert_int_equal(s_events_with("CERT-NINE"), 1);
}

static void test_bad_requests(void **state)
{
    (void)state;
    int64_t exp = s_now_ms() + 1000;
    assert_int_equal(s_use("short", "tx", K1, exp, NULL), -1);
    assert_int_equal(s_use("1111111111111111111111111111111111111111111111111111111111111ABC", "tx",
                           K1, exp, NULL),
                     -1);
    assert_int_equal(s_use(H1, "tx", "zz", exp, NULL), -1);
    assert_int_equal(s_use(H1, "", K1, exp, NULL), -1);
    char longtx[400];
    memset(longtx, 'x', sizeof longtx - 1);
    longtx[sizeof longtx - 1] = 0;
    assert_int_equal(s_use(H1, longtx, K1, exp, NULL), -1);
    //  an expiry no ca makes (years ahead): refused
    assert_int_equal(s_use(H1, "tx", K1, s_now_ms() + 400LL * 86400000, NULL), -1);
    assert_int_equal(s_use(H1, "tx", K1, 0, NULL), -1);
    assert_int_equal(s_rows(), 0);
}

//  The use's statements are prepared once per connection and finalized when
//  it closes: the store's close still succeeds (the last connection of a WAL
//  database checkpoints and removes its -wal file only when sqlite3_close
//  succeeds), and a reopened database (a new connection) gets its own.
//  One request each of the other modules that keep statements in
//  store_db's cache: enrollment tokens (add, use), push.info, push.outcome.
static void s_modules(void)
{
    static const char *const h[1] = {
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"};
    pm_msg_t *m = pm_msg_new(PM_MSG_ENROLL_TOKEN_ADD);
    assert_int_equal(pm_msg_set_strs(m, "hashes", h, 1), 0);
    assert_int_equal(pm_msg_set_uint(m, "expires_ms", (uint64_t)s_now_ms() + 60000), 0);
    pm_msg_t *r = s_apply(m);
    assert_int_equal(pm_msg_type(r), PM_MSG_OK);
    pm_msg_destroy(&r);
    m = pm_msg_new(PM_MSG_ENROLL_TOKEN_USE);
    assert_int_equal(pm_msg_set_str(m, "hash", h[0]), 0);
    r = s_apply(m);
    assert_int_equal(pm_msg_type(r), PM_MSG_ENROLL_TOKEN_USE_REPLY);
    pm_msg_destroy(&r);
    static const char *const eids[1] = {"no-such-device"};
    m = pm_msg_new(PM_MSG_PUSH_INFO);
    assert_int_equal(pm_msg_set_strs(m, "eids", eids, 1), 0);
    r = s_apply(m);
    assert_int_equal(pm_msg_type(r), PM_MSG_PUSH_INFO_REPLY);
    pm_msg_destroy(&r);
    m = pm_msg_new(PM_MSG_PUSH_OUTCOME);
    //  [{eid: "no-such-device", outcome: "failed"}]
    assert_int_equal(pm_msg_set_packed(m, "outcomes",
                                       (const uint8_t *)"\x91\x82\xa3"
                                                        "eid\xae"
                                                        "no-such-device\xa7"
                                                        "outcome\xa6"
                                                        "failed",
                                       36),
                     0);
    r = s_apply(m);
    assert_int_equal(pm_msg_type(r), PM_MSG_OK);
    pm_msg_destroy(&r);
}

static void test_cached_statements_close(void **state)
{
    (void)state;
    char path[] = "/tmp/store_chal_test_XXXXXX", wal[sizeof path + 8], shm[sizeof path + 8];
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    unlink(path);
    snprintf(wal, sizeof wal, "%s-wal", path);
    snprintf(shm, sizeof shm, "%s-shm", path);
    int64_t exp = s_now_ms() + 60000;
    char why[32];
    for (int round = 0; round < 2; round++) {
        s_close();
        s_open(path);
        const char *h = round == 0 ? H1 : H2;
        assert_int_equal(s_use(h, "tx-1", K1, exp, why), 1);
        assert_int_equal(s_use(h, "tx-1", K1, exp, why), 1); //  the cached INSERT and SELECT again
        assert_int_equal(s_use(h, "tx-2", K1, exp, why), 0);
        assert_string_equal(why, "used");
        //  every other module's cached statements too (store_db_stmt):
        //  enrollment tokens, push.info, push.outcome
        s_modules();
        assert_non_null(sqlite3_next_stmt(store_db_sqlite(s_db), NULL)); //  kept, not finalized
        int cached = store_db_stmt_count(s_db);
        s_modules(); //  again: nothing new prepared
        assert_int_equal(store_db_stmt_count(s_db), cached);
        assert_int_equal(access(wal, F_OK), 0);
        s_close();
        assert_int_not_equal(access(wal, F_OK), 0); //  closed for real
    }
    s_open(path);
    assert_int_equal(s_rows(), 2);
    s_close();
    unlink(path);
    unlink(wal);
    unlink(shm);
    s_open(":memory:");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_once_and_retry, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_expiry_and_prune, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_use_prunes, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_durable_across_reopen, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_use_logs_event, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_bad_requests, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_cached_statements_close, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
