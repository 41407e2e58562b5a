/*  store_token — one-time enrollment tokens on the store's database. See
 *  store_token.h.
 */
#include "store_token.h"
#include "store_pack.h"
#include "pm_log.h"

#include <msgpack.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(STORE_TOKEN_ID_LEN == 12, "the INSERT below takes substr(hash, 1, 12)");

//  The table, made on first use (each a cached statement: after the first
//  call they are no-ops that SQLite does not parse again).
static const char s_schema[] =
    "CREATE TABLE IF NOT EXISTS enroll_tokens("
    " hash TEXT PRIMARY KEY, id TEXT NOT NULL, created INTEGER NOT NULL,"
    " expires INTEGER NOT NULL, note TEXT, used INTEGER, used_by TEXT, used_rid TEXT,"
    " revoked INTEGER) WITHOUT ROWID";
static const char s_schema_index[] =
    "CREATE INDEX IF NOT EXISTS enroll_tokens_id ON enroll_tokens(id)";
static const char s_sql_add[] = "INSERT OR IGNORE INTO enroll_tokens(hash, id, created, expires,"
                                " note) VALUES(?1, substr(?1, 1, 12), ?2, ?3, ?4)";
static const char s_sql_list[] = "SELECT id, created, expires, note, used, used_by, revoked"
                                 " FROM enroll_tokens WHERE ?1 OR (used IS NULL AND revoked IS NULL"
                                 " AND expires > ?2) ORDER BY created DESC, id LIMIT ?3";
static const char s_sql_revoke_hash[] = "UPDATE enroll_tokens SET revoked=?2 WHERE hash=?1"
                                        " AND used IS NULL AND revoked IS NULL";
static const char s_sql_revoke_id[] = "UPDATE enroll_tokens SET revoked=?2 WHERE id=?1"
                                      " AND used IS NULL AND revoked IS NULL";
//  the one statement that decides: only an unused, live token matches
static const char s_sql_use[] =
    "UPDATE enroll_tokens SET used=?2, used_by=?3, used_rid=?4"
    " WHERE hash=?1 AND used IS NULL AND revoked IS NULL AND expires > ?2";
static const char s_sql_get[] =
    "SELECT id, note, used, used_rid, revoked, expires FROM enroll_tokens WHERE hash=?1";
//  only the consumption by that request: a release that arrives after
//  another download used the token (or for a use that was refused) is a no-op
static const char s_sql_release[] =
    "UPDATE enroll_tokens SET used=NULL, used_by=NULL, used_rid=NULL"
    " WHERE hash=?1 AND used_rid=?2 AND used IS NOT NULL AND revoked IS NULL";

static int s_ensure(store_db_t *db)
{
    const char *const q[2] = {s_schema, s_schema_index};
    for (int i = 0; i < 2; i++) {
        sqlite3_stmt *st = store_db_stmt(db, q[i]);
        int r = st ? sqlite3_step(st) : SQLITE_ERROR;
        if (st)
            sqlite3_reset(st);
        if (r != SQLITE_DONE) {
            pm_error("enrollment tokens: cannot create the table: %s",
                     st ? sqlite3_errmsg(store_db_sqlite(db)) : store_db_errmsg(db));
            return -1;
        }
    }
    return 0;
}

static store_rc_t s_add(store_db_t *db, const pm_msg_t *req, pm_msg_t **reply, int64_t now)
{
    sqlite3 *sql = store_db_sqlite(db);
    const msgpack_object *o = pm_msg_obj(req, "hashes");
    if (!o || o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size == 0 ||
        o->via.array.size > STORE_TOKEN_ADD_MAX) {
        *reply = pm_msg_new_error(req, "bad_request",
                                  "enroll_token.add takes 1 to %d hashes: split the request",
                                  STORE_TOKEN_ADD_MAX);
        return STORE_ERR_BAD;
    }
    int64_t expires = (int64_t)pm_msg_uint(req, "expires_ms", 0);
    if (expires <= now) {
        *reply = pm_msg_new_error(req, "bad_request",
                                  "expires_ms is in the past: give a lifetime (e.g. --ttl 24h)");
        return STORE_ERR_BAD;
    }
    const char *note = pm_msg_str(req, "note");
    sqlite3_stmt *st = NULL;
    store_rc_t rc = STORE_ERR_DB;
    if (!(st = store_db_stmt(db, s_sql_add)))
        return store_db_fail(sql, req, reply, "enroll_token.add");
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *s = &o->via.array.ptr[i];
        char h[65];
        if (s->type != MSGPACK_OBJECT_STR || s->via.str.size != 64) {
            rc = STORE_ERR_BAD;
            goto out;
        }
        memcpy(h, s->via.str.ptr, 64);
        h[64] = '\0';
        if (!store_hex64_ok(h)) {
            rc = STORE_ERR_BAD;
            goto out;
        }
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, h, 64, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, now);
        sqlite3_bind_int64(st, 3, expires);
        if (note)
            sqlite3_bind_text(st, 4, note, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 4);
        if (sqlite3_step(st) != SQLITE_DONE) {
            sqlite3_reset(st);
            return store_db_fail(sql, req, reply, "enroll_token.add");
        }
    }
    rc = STORE_OK;
    *reply = pm_msg_new_reply(req, PM_MSG_OK);
out:
    if (rc == STORE_ERR_BAD)
        *reply = pm_msg_new_error(req, "bad_request",
                                  "hashes must be SHA-256 values in lowercase hex (64 digits)");
    sqlite3_reset(st);
    return rc;
}

static const char *s_state(int64_t now, int64_t expires, bool used, bool revoked)
{
    return revoked ? "revoked" : used ? "used" : expires <= now ? "expired" : "usable";
}

static store_rc_t s_list(store_db_t *db, const pm_msg_t *req, pm_msg_t **reply, int64_t now)
{
    sqlite3 *sql = store_db_sqlite(db);
    bool all = pm_msg_bool(req, "all", false);
    uint64_t limit = pm_msg_uint(req, "limit", 1000);
    if (limit == 0 || limit > 10000)
        limit = 1000;
    sqlite3_stmt *st = NULL;
    if (!(st = store_db_stmt(db, s_sql_list)))
        return store_db_fail(sql, req, reply, "enroll_token.list");
    sqlite3_bind_int(st, 1, all);
    sqlite3_bind_int64(st, 2, now);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)limit);
    msgpack_sbuffer items, out;
    msgpack_sbuffer_init(&items);
    msgpack_sbuffer_init(&out);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &items, msgpack_sbuffer_write);
    uint32_t n = 0;
    int r;
    store_rc_t rc = STORE_ERR_DB;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        const char *note = (const char *)sqlite3_column_text(st, 3);
        const char *used_by = (const char *)sqlite3_column_text(st, 5);
        bool used = sqlite3_column_type(st, 4) != SQLITE_NULL;
        bool revoked = sqlite3_column_type(st, 6) != SQLITE_NULL;
        int64_t expires = sqlite3_column_int64(st, 2);
        msgpack_pack_map(&pk, 4 + (note ? 1 : 0) + (used ? 1 : 0) + (used_by ? 1 : 0));
        store_pk_str(&pk, "id");
        store_pk_str(&pk, id ? id : "");
        store_pk_str(&pk, "state");
        store_pk_str(&pk, s_state(now, expires, used, revoked));
        store_pk_str(&pk, "created");
        msgpack_pack_int64(&pk, sqlite3_column_int64(st, 1));
        store_pk_str(&pk, "expires");
        msgpack_pack_int64(&pk, expires);
        if (note) {
            store_pk_str(&pk, "note");
            store_pk_str(&pk, note);
        }
        if (used) {
            store_pk_str(&pk, "used");
            msgpack_pack_int64(&pk, sqlite3_column_int64(st, 4));
        }
        if (used_by) {
            store_pk_str(&pk, "used_by");
            store_pk_str(&pk, used_by);
        }
        n++;
    }
    if (r != SQLITE_DONE) {
        rc = store_db_fail(sql, req, reply, "enroll_token.list");
        goto out;
    }
    msgpack_packer opk;
    msgpack_packer_init(&opk, &out, msgpack_sbuffer_write);
    msgpack_pack_array(&opk, n);
    if (items.size)
        msgpack_sbuffer_write(&out, items.data, items.size);
    rc = STORE_OK;
    *reply = pm_msg_new_reply(req, PM_MSG_ENROLL_TOKEN_LIST_REPLY);
    if (*reply && pm_msg_set_packed(*reply, "tokens", (const uint8_t *)out.data, out.size) < 0) {
        pm_msg_destroy(reply);
        *reply = pm_msg_new_error(req, "internal",
                                  "the token list is too large: ask for fewer "
                                  "(limit)");
    }
out:
    sqlite3_reset(st);
    msgpack_sbuffer_destroy(&items);
    msgpack_sbuffer_destroy(&out);
    return rc;
}

static store_rc_t s_revoke(store_db_t *db, const pm_msg_t *req, pm_msg_t **reply, int64_t now)
{
    sqlite3 *sql = store_db_sqlite(db);
    const char *id = pm_msg_str(req, "id");
    size_t len = id ? strlen(id) : 0;
    if (len != STORE_TOKEN_ID_LEN && len != 64) {
        *reply = pm_msg_new_error(req, "bad_request",
                                  "give the token's id (%d hex digits, as `picomdm enroll-token "
                                  "list` prints it)",
                                  STORE_TOKEN_ID_LEN);
        return STORE_ERR_BAD;
    }
    sqlite3_stmt *st = store_db_stmt(db, len == 64 ? s_sql_revoke_hash : s_sql_revoke_id);
    if (!st)
        return store_db_fail(sql, req, reply, "enroll_token.revoke");
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    if (r != SQLITE_DONE)
        return store_db_fail(sql, req, reply, "enroll_token.revoke");
    int n = sqlite3_changes(sql);
    if (n == 0) {
        *reply = pm_msg_new_error(req, "not_found",
                                  "no unused, unrevoked token %s: `picomdm enroll-token list "
                                  "--all` shows every token and its state",
                                  id);
        return STORE_ERR_NOTFOUND;
    }
    pm_info("enrollment token %.*s revoked%s", STORE_TOKEN_ID_LEN, id,
            n > 1 ? " (and others sharing its id)" : "");
    *reply = pm_msg_new_reply(req, PM_MSG_OK);
    return STORE_OK;
}

static store_rc_t s_use(store_db_t *db, const pm_msg_t *req, pm_msg_t **reply, int64_t now)
{
    sqlite3 *sql = store_db_sqlite(db);
    const char *hash = pm_msg_str(req, "hash");
    const char *remote = pm_msg_str(req, "remote");
    const char *rid = pm_msg_rid(req);
    if (!store_hex64_ok(hash)) {
        *reply = pm_msg_new_error(req, "bad_request", "hash must be a SHA-256 in lowercase hex");
        return STORE_ERR_BAD;
    }
    sqlite3_stmt *st = store_db_stmt(db, s_sql_use);
    if (!st)
        return store_db_fail(sql, req, reply, "enroll_token.use");
    sqlite3_bind_text(st, 1, hash, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    sqlite3_bind_text(st, 3, remote ? remote : "?", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, rid ? rid : "", -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    if (r != SQLITE_DONE)
        return store_db_fail(sql, req, reply, "enroll_token.use");
    bool accepted = sqlite3_changes(sql) == 1;
    const char *reason = NULL;
    if (!(st = store_db_stmt(db, s_sql_get)))
        return store_db_fail(sql, req, reply, "enroll_token.use");
    sqlite3_bind_text(st, 1, hash, -1, SQLITE_STATIC);
    r = sqlite3_step(st);
    if (r != SQLITE_ROW && r != SQLITE_DONE) {
        sqlite3_reset(st);
        return store_db_fail(sql, req, reply, "enroll_token.use");
    }
    *reply = pm_msg_new_reply(req, PM_MSG_ENROLL_TOKEN_USE_REPLY);
    if (r == SQLITE_DONE) {
        reason = "unknown";
    } else {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        const char *note = (const char *)sqlite3_column_text(st, 1);
        const char *urid = (const char *)sqlite3_column_text(st, 3);
        if (!accepted) {
            //  the same bus request again (a retry after a lost reply): same answer
            if (sqlite3_column_type(st, 4) == SQLITE_NULL && urid && rid && *rid &&
                strcmp(urid, rid) == 0)
                accepted = true;
            else
                reason = sqlite3_column_type(st, 4) != SQLITE_NULL   ? "revoked"
                         : sqlite3_column_type(st, 2) != SQLITE_NULL ? "used"
                                                                     : "expired";
        }
        if (*reply && id)
            pm_msg_set_str(*reply, "id", id);
        if (*reply && note)
            pm_msg_set_str(*reply, "note", note);
    }
    sqlite3_reset(st);
    if (*reply) {
        pm_msg_set_bool(*reply, "accepted", accepted);
        if (reason)
            pm_msg_set_str(*reply, "reason", reason);
    }
    return STORE_OK;
}

static store_rc_t s_release(store_db_t *db, const pm_msg_t *req, pm_msg_t **reply)
{
    sqlite3 *sql = store_db_sqlite(db);
    const char *hash = pm_msg_str(req, "hash");
    const char *use_rid = pm_msg_str(req, "use_rid");
    if (!store_hex64_ok(hash)) {
        *reply = pm_msg_new_error(req, "bad_request", "hash must be a SHA-256 in lowercase hex");
        return STORE_ERR_BAD;
    }
    if (!use_rid || !*use_rid) {
        *reply = pm_msg_new_error(req, "bad_request",
                                  "use_rid must name the enroll_token.use being undone");
        return STORE_ERR_BAD;
    }
    sqlite3_stmt *st = store_db_stmt(db, s_sql_release);
    if (!st)
        return store_db_fail(sql, req, reply, "enroll_token.release");
    sqlite3_bind_text(st, 1, hash, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, use_rid, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    if (r != SQLITE_DONE)
        return store_db_fail(sql, req, reply, "enroll_token.release");
    *reply = pm_msg_new_reply(req, PM_MSG_OK);
    return STORE_OK;
}

store_rc_t store_token_apply(store_db_t *db, const pm_msg_t *req, pm_msg_t **reply, int64_t now_ms)
{
    sqlite3 *sql = store_db_sqlite(db);
    *reply = NULL;
    if (s_ensure(db) < 0)
        return store_db_fail(sql, req, reply, "enrollment tokens");
    switch (pm_msg_type(req)) {
    case PM_MSG_ENROLL_TOKEN_ADD:
        return s_add(db, req, reply, now_ms);
    case PM_MSG_ENROLL_TOKEN_LIST:
        return s_list(db, req, reply, now_ms);
    case PM_MSG_ENROLL_TOKEN_REVOKE:
        return s_revoke(db, req, reply, now_ms);
    case PM_MSG_ENROLL_TOKEN_USE:
        return s_use(db, req, reply, now_ms);
    case PM_MSG_ENROLL_TOKEN_RELEASE:
        return s_release(db, req, reply);
    default:
        *reply = pm_msg_new_error(req, "unknown_type", "not an enrollment-token request");
        return STORE_ERR_BAD;
    }
}
