/*  store_chal — durable one-time SCEP challenges on the store's database. See
 *  store_chal.h.
 */
#include "store_chal.h"
#include "pm_log.h"
#include "store_pack.h"

#include <msgpack.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define S_TXID_MAX 256 //  SCEP transactionIDs are short (a hash in hex or base64)

//  When the next prune is due and how many live rows there are, for the one
//  database this process serves (reset when another one is seen: tests).
static struct {
    const sqlite3 *sql;
    int64_t next_prune;
    int64_t live;
} s_state;

//  The statements of scep_challenge.use and its upkeep, prepared once per
//  connection in store_db's statement cache (store_db_stmt; issue #6,
//  session 5: preparing the INSERT and the UPDATE for every PKCSReq was
//  about as much of the store's CPU as both check-ins of an enrollment).
//  store_db_destroy finalizes them before the connection closes.
enum { S_INSERT, S_SELECT, S_EVENT, S_PRUNE, S_LIVE, S_NSTMT };
static const char *const s_sql[S_NSTMT] = {
    [S_INSERT] = "INSERT INTO scep_challenges(hash, expires, created, used, txid, key_hash)"
                 " VALUES(?1, ?2, ?3, ?3, ?4, ?5) ON CONFLICT(hash) DO NOTHING",
    [S_SELECT] = "SELECT expires, used, txid, key_hash, event_rid, event_seq"
                 " FROM scep_challenges WHERE hash=?1",
    [S_EVENT] = "UPDATE scep_challenges SET event_rid=?2, event_seq=?3 WHERE hash=?1",
    //  bounded: one prune never holds the group commit for long
    [S_PRUNE] = "DELETE FROM scep_challenges WHERE hash IN (SELECT hash FROM"
                " scep_challenges WHERE expires <= ?1 LIMIT ?2)",
    [S_LIVE] = "SELECT count(*) FROM scep_challenges WHERE expires > ?1",
};

int store_chal_prune(store_db_t *db, int64_t now_ms, int max)
{
    sqlite3 *sql = store_db_sqlite(db);
    sqlite3_stmt *st = store_db_stmt(db, s_sql[S_PRUNE]);
    if (!st) {
        pm_error("pruning expired SCEP challenges: %s", store_db_errmsg(db));
        return -1;
    }
    sqlite3_bind_int64(st, 1, now_ms);
    sqlite3_bind_int(st, 2, max);
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    if (r != SQLITE_DONE) {
        pm_error("pruning expired SCEP challenges: %s", sqlite3_errmsg(sql));
        return -1;
    }
    return sqlite3_changes(sql);
}

void store_chal_prune_due(void)
{
    s_state.next_prune = 0;
}

//  Prune when due, and count the live rows then (one index scan a minute).
static int s_maintain(sqlite3 *sql, store_db_t *db, int64_t now)
{
    if (s_state.sql == sql && now < s_state.next_prune)
        return 0;
    int n = store_chal_prune(db, now, STORE_CHAL_PRUNE_BATCH);
    if (n < 0)
        return -1;
    if (n > 0)
        pm_info("pruned %d expired SCEP challenges", n);
    sqlite3_stmt *st = store_db_stmt(db, s_sql[S_LIVE]);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, now);
    int r = sqlite3_step(st);
    int64_t live = r == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_reset(st);
    if (live < 0)
        return -1;
    s_state.sql = sql;
    s_state.live = live;
    //  a full batch: more are waiting, prune again at the next add
    s_state.next_prune = n >= STORE_CHAL_PRUNE_BATCH ? now : now + STORE_CHAL_PRUNE_MS;
    return 0;
}

//  The event that rides with an accepted use (ca.issued), appended in the
//  same transaction. 0 and *seq, or -1.
static int s_event(store_db_t *db, const pm_msg_t *req, int64_t now, uint64_t *seq)
{
    const char *ev = pm_msg_str(req, "event");
    if (!ev || !*ev)
        return 0;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    const msgpack_object *o = pm_msg_obj(req, "event_data");
    if (o) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_object(&pk, *o);
    }
    store_rc_t erc =
        store_db_event_append(db, ev, NULL, "ca", (const uint8_t *)sb.data, sb.size, now, seq);
    msgpack_sbuffer_destroy(&sb);
    return erc == STORE_OK ? 0 : -1;
}

static store_rc_t s_use(sqlite3 *sql, store_db_t *db, const pm_msg_t *req, pm_msg_t **reply,
                        int64_t now)
{
    const char *hash = pm_msg_str(req, "hash");
    const char *txid = pm_msg_str(req, "transaction_id");
    const char *kh = pm_msg_str(req, "key_hash");
    const char *rid = pm_msg_rid(req);
    int64_t expires = (int64_t)pm_msg_uint(req, "expires_ms", 0);
    if (!store_hex64_ok(hash) || !store_hex64_ok(kh)) {
        *reply = pm_msg_new_error(req, "bad_request",
                                  "hash and key_hash must be SHA-256 values in lowercase hex");
        return STORE_ERR_BAD;
    }
    if (!txid || !*txid || strlen(txid) > S_TXID_MAX) {
        *reply = pm_msg_new_error(req, "bad_request",
                                  "transaction_id must be the SCEP transactionID (1 to %d "
                                  "characters)",
                                  S_TXID_MAX);
        return STORE_ERR_BAD;
    }
    if (expires <= 0 || expires > now + STORE_CHAL_MAX_TTL_MS) {
        *reply = pm_msg_new_error(req, "bad_request",
                                  "expires_ms must be the challenge's expiry, at most %d days "
                                  "ahead: check picomdm-ca's challenge-ttl and both hosts' clocks",
                                  (int)(STORE_CHAL_MAX_TTL_MS / 86400000));
        return STORE_ERR_BAD;
    }
    bool accepted = false;
    const char *reason = NULL;
    uint64_t seq = 0;
    sqlite3_stmt *st = NULL;
    //  Expired by the store's clock: refused, and never recorded (rows are
    //  pruned once expired, so acceptance must end then too).
    if (expires <= now) {
        reason = "expired";
        goto answer;
    }
    if (s_maintain(sql, db, now) < 0)
        return store_db_fail(sql, req, reply, "scep_challenge.use");
    //  the one statement that decides: only the first use inserts the row
    if (!(st = store_db_stmt(db, s_sql[S_INSERT])))
        return store_db_fail(sql, req, reply, "scep_challenge.use");
    sqlite3_bind_text(st, 1, hash, 64, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, expires);
    sqlite3_bind_int64(st, 3, now);
    sqlite3_bind_text(st, 4, txid, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, kh, 64, SQLITE_STATIC);
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    if (r != SQLITE_DONE)
        return store_db_fail(sql, req, reply, "scep_challenge.use");
    accepted = sqlite3_changes(sql) == 1;
    s_state.live += accepted;
    if (!accepted) {
        if (!(st = store_db_stmt(db, s_sql[S_SELECT])))
            return store_db_fail(sql, req, reply, "scep_challenge.use");
        sqlite3_bind_text(st, 1, hash, 64, SQLITE_STATIC);
        r = sqlite3_step(st);
        if (r != SQLITE_ROW) {
            sqlite3_reset(st);
            return store_db_fail(sql, req, reply, "scep_challenge.use");
        } else if (sqlite3_column_int64(st, 0) <= now) {
            reason = "expired"; //  even for the transaction that used it, as before
        } else {
            const char *utx = (const char *)sqlite3_column_text(st, 2);
            const char *ukh = (const char *)sqlite3_column_text(st, 3);
            const char *erid = (const char *)sqlite3_column_text(st, 4);
            //  the same SCEP transaction with the same key again: a retry
            if (utx && ukh && strcmp(utx, txid) == 0 && strcmp(ukh, kh) == 0) {
                accepted = true;
                //  the same bus request again (picomdm-ca's retry after a
                //  lost reply): its event is logged already
                if (erid && rid && strcmp(erid, rid) == 0)
                    seq = (uint64_t)sqlite3_column_int64(st, 5);
            } else
                reason = "used";
        }
        sqlite3_reset(st);
    }
    if (accepted && seq == 0) {
        if (s_event(db, req, now, &seq) < 0)
            return store_db_fail(sql, req, reply, "scep_challenge.use (its event)");
        if (seq > 0 && rid) { //  which request logged it (a retry of it logs nothing)
            if (!(st = store_db_stmt(db, s_sql[S_EVENT])))
                return store_db_fail(sql, req, reply, "scep_challenge.use");
            sqlite3_bind_text(st, 1, hash, 64, SQLITE_STATIC);
            sqlite3_bind_text(st, 2, rid, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 3, (sqlite3_int64)seq);
            r = sqlite3_step(st);
            sqlite3_reset(st);
            if (r != SQLITE_DONE)
                return store_db_fail(sql, req, reply, "scep_challenge.use");
        }
    }
answer:
    *reply = pm_msg_new_reply(req, PM_MSG_SCEP_CHALLENGE_USE_REPLY);
    if (*reply && (pm_msg_set_bool(*reply, "accepted", accepted) < 0 ||
                   (reason && pm_msg_set_str(*reply, "reason", reason) < 0) ||
                   (seq > 0 && pm_msg_set_uint(*reply, "seq", seq) < 0)))
        pm_msg_destroy(reply);
    return STORE_OK;
}

store_rc_t store_chal_apply(store_db_t *db, const pm_msg_t *req, pm_msg_t **reply, int64_t now_ms)
{
    sqlite3 *sql = store_db_sqlite(db);
    *reply = NULL;
    switch (pm_msg_type(req)) {
    case PM_MSG_SCEP_CHALLENGE_USE:
        return s_use(sql, db, req, reply, now_ms);
    default:
        *reply = pm_msg_new_error(req, "unknown_type", "not a SCEP challenge request");
        return STORE_ERR_BAD;
    }
}
