/*  store_push — push.info and push.outcome on the store's database. See
 *  store_push.h.
 */
#include "store_push.h"
#include "store_pack.h"
#include "pm_log.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char s_schema[] =
    "CREATE TABLE IF NOT EXISTS push_state("
    " eid TEXT PRIMARY KEY, last_push INTEGER NOT NULL, outcome TEXT NOT NULL,"
    " status INTEGER NOT NULL, reason TEXT, attempts INTEGER NOT NULL DEFAULT 0)";
//  last_push and last_activity let the pusher derive the sweep backoff
//  from durable data (a restart does not reset it)
static const char s_sql_info[] =
    "SELECT e.push_token, e.push_magic, e.topic, e.stale_token, e.enrolled,"
    " (SELECT p.last_push FROM push_state p WHERE p.eid=e.eid),"
    " max(e.last_seen, coalesce((SELECT s.last_seen FROM sessions s WHERE s.eid=e.eid), 0),"
    "  coalesce((SELECT max(q.created) FROM queue q WHERE q.eid=e.eid AND q.active=1), 0))"
    " FROM enrollments e WHERE e.eid=?1";
static const char s_sql_state[] =
    "INSERT INTO push_state(eid, last_push, outcome, status, reason,"
    " attempts) VALUES(?1,?2,?3,?4,?5,?6) ON CONFLICT(eid) DO UPDATE SET"
    " last_push=?2, outcome=?3, status=?4, reason=?5, attempts=?6";
static const char s_sql_stale[] = "UPDATE enrollments SET stale_token=1 WHERE eid=?1"
                                  " AND (?2 IS NULL OR push_token=?2)";

//  The table, made on first use: a cached statement (store_db_stmt), so after
//  the first call a no-op SQLite does not parse again. 0 / -1.
static int s_ensure(store_db_t *db)
{
    sqlite3_stmt *st = store_db_stmt(db, s_schema);
    if (!st)
        return -1;
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    return r == SQLITE_DONE ? 0 : -1;
}

store_rc_t store_push_info(store_db_t *db, const char *const *eids, size_t n, msgpack_sbuffer *out)
{
    sqlite3 *sql = store_db_sqlite(db);
    sqlite3_stmt *st = NULL;
    store_rc_t rc = STORE_ERR_DB;
    if (s_ensure(db) < 0 || !(st = store_db_stmt(db, s_sql_info))) {
        pm_error("push.info: %s", sqlite3_errmsg(sql));
        return STORE_ERR_DB;
    }
    //  count first: the array header comes before its items
    msgpack_sbuffer items;
    msgpack_sbuffer_init(&items);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &items, msgpack_sbuffer_write);
    uint32_t found = 0;
    for (size_t i = 0; i < n; i++) {
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, eids[i], -1, SQLITE_STATIC);
        int r = sqlite3_step(st);
        if (r == SQLITE_DONE)
            continue;
        if (r != SQLITE_ROW) {
            pm_error("push.info: %s", sqlite3_errmsg(sql));
            goto out;
        }
        const void *tok = sqlite3_column_blob(st, 0);
        int toklen = sqlite3_column_bytes(st, 0);
        const char *magic = (const char *)sqlite3_column_text(st, 1);
        const char *topic = (const char *)sqlite3_column_text(st, 2);
        bool has_last = sqlite3_column_type(st, 5) != SQLITE_NULL;
        msgpack_pack_map(&pk, 4 + (tok ? 1 : 0) + (magic ? 1 : 0) + (topic ? 1 : 0) +
                                  (has_last ? 1 : 0));
        store_pk_str(&pk, "eid");
        store_pk_str(&pk, eids[i]);
        if (tok) {
            store_pk_str(&pk, "token");
            msgpack_pack_bin(&pk, (size_t)toklen);
            msgpack_pack_bin_body(&pk, tok, (size_t)toklen);
        }
        if (magic) {
            store_pk_str(&pk, "push_magic");
            store_pk_str(&pk, magic);
        }
        if (topic) {
            store_pk_str(&pk, "topic");
            store_pk_str(&pk, topic);
        }
        store_pk_str(&pk, "stale");
        sqlite3_column_int(st, 3) ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk);
        store_pk_str(&pk, "enrolled");
        sqlite3_column_int(st, 4) ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk);
        if (has_last) {
            store_pk_str(&pk, "last_push");
            msgpack_pack_int64(&pk, sqlite3_column_int64(st, 5));
        }
        store_pk_str(&pk, "last_activity");
        msgpack_pack_int64(&pk, sqlite3_column_int64(st, 6));
        found++;
    }
    msgpack_packer opk;
    msgpack_packer_init(&opk, out, msgpack_sbuffer_write);
    msgpack_pack_array(&opk, found);
    msgpack_sbuffer_write(out, items.data, items.size);
    rc = STORE_OK;
out:
    msgpack_sbuffer_destroy(&items);
    sqlite3_reset(st);
    return rc;
}

//  The value of `key` in a map, or NULL.
static const msgpack_object *s_get(const msgpack_object *map, const char *key)
{
    if (map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == kl &&
            memcmp(k->via.str.ptr, key, kl) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

//  A str value copied into buf (NUL-terminated), "" when absent or not a str.
static const char *s_str(const msgpack_object *map, const char *key, char *buf, size_t len)
{
    const msgpack_object *v = s_get(map, key);
    buf[0] = 0;
    if (v && v->type == MSGPACK_OBJECT_STR && v->via.str.size < len &&
        !memchr(v->via.str.ptr, 0, v->via.str.size)) {
        memcpy(buf, v->via.str.ptr, v->via.str.size);
        buf[v->via.str.size] = 0;
    }
    return buf;
}

static uint64_t s_uint(const msgpack_object *map, const char *key)
{
    const msgpack_object *v = s_get(map, key);
    return v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? v->via.u64 : 0;
}

store_rc_t store_push_outcome(store_db_t *db, const msgpack_object *outcomes, int64_t now_ms,
                              unsigned *applied, unsigned *skipped)
{
    sqlite3 *sql = store_db_sqlite(db);
    sqlite3_stmt *up = NULL, *stale = NULL;
    store_rc_t rc = STORE_ERR_DB;
    *applied = *skipped = 0;
    if (!outcomes || outcomes->type != MSGPACK_OBJECT_ARRAY)
        return STORE_ERR_BAD;
    if (s_ensure(db) < 0 || !(up = store_db_stmt(db, s_sql_state)) ||
        !(stale = store_db_stmt(db, s_sql_stale))) {
        pm_error("push.outcome: %s", sqlite3_errmsg(sql));
        goto out;
    }
    msgpack_sbuffer data;
    msgpack_sbuffer_init(&data);
    for (uint32_t i = 0; i < outcomes->via.array.size; i++) {
        const msgpack_object *o = &outcomes->via.array.ptr[i];
        char eid[300], outcome[32], reason[512], topic[300], apns_id[80], name[48];
        s_str(o, "eid", eid, sizeof eid);
        s_str(o, "outcome", outcome, sizeof outcome);
        if (!*eid || (strcmp(outcome, "sent") != 0 && strcmp(outcome, "failed") != 0 &&
                      strcmp(outcome, "stale") != 0 && strcmp(outcome, "cert_problem") != 0)) {
            (*skipped)++;
            continue;
        }
        s_str(o, "reason", reason, sizeof reason);
        s_str(o, "topic", topic, sizeof topic);
        s_str(o, "apns_id", apns_id, sizeof apns_id);
        uint64_t status = s_uint(o, "status"), attempts = s_uint(o, "attempts");
        sqlite3_reset(up);
        sqlite3_bind_text(up, 1, eid, -1, SQLITE_STATIC);
        sqlite3_bind_int64(up, 2, now_ms);
        sqlite3_bind_text(up, 3, outcome, -1, SQLITE_STATIC);
        sqlite3_bind_int64(up, 4, (sqlite3_int64)status);
        sqlite3_bind_text(up, 5, reason, -1, SQLITE_STATIC);
        sqlite3_bind_int64(up, 6, (sqlite3_int64)attempts);
        if (sqlite3_step(up) != SQLITE_DONE) {
            pm_error("push.outcome: %s", sqlite3_errmsg(sql));
            msgpack_sbuffer_destroy(&data);
            goto out;
        }
        if (strcmp(outcome, "stale") == 0) {
            const msgpack_object *tok = s_get(o, "token");
            sqlite3_reset(stale);
            sqlite3_bind_text(stale, 1, eid, -1, SQLITE_STATIC);
            if (tok && tok->type == MSGPACK_OBJECT_BIN)
                sqlite3_bind_blob(stale, 2, tok->via.bin.ptr, (int)tok->via.bin.size,
                                  SQLITE_STATIC);
            else
                sqlite3_bind_null(stale, 2);
            if (sqlite3_step(stale) != SQLITE_DONE) {
                pm_error("push.outcome: %s", sqlite3_errmsg(sql));
                msgpack_sbuffer_destroy(&data);
                goto out;
            }
        }
        //  the event: everything but the token (a secret)
        data.size = 0;
        msgpack_packer pk;
        msgpack_packer_init(&pk, &data, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 5);
        store_pk_str(&pk, "status");
        msgpack_pack_uint64(&pk, status);
        store_pk_str(&pk, "reason");
        store_pk_str(&pk, reason);
        store_pk_str(&pk, "topic");
        store_pk_str(&pk, topic);
        store_pk_str(&pk, "attempts");
        msgpack_pack_uint64(&pk, attempts);
        store_pk_str(&pk, "apns_id");
        store_pk_str(&pk, apns_id);
        snprintf(name, sizeof name, "push.%s", outcome);
        uint64_t seq = 0;
        store_rc_t er = store_db_event_append(db, name, eid, "pusher", (const uint8_t *)data.data,
                                              data.size, now_ms, &seq);
        if (er != STORE_OK) {
            msgpack_sbuffer_destroy(&data);
            rc = er;
            goto out;
        }
        (*applied)++;
    }
    msgpack_sbuffer_destroy(&data);
    rc = STORE_OK;
out:
    if (up)
        sqlite3_reset(up);
    if (stale)
        sqlite3_reset(stale);
    return rc;
}

store_rc_t store_push_apply(store_db_t *db, const pm_msg_t *req, pm_msg_t **reply, int64_t now_ms)
{
    *reply = NULL;
    if (pm_msg_type(req) == PM_MSG_PUSH_INFO) {
        const msgpack_object *o = pm_msg_obj(req, "eids");
        if (!o || o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > STORE_PUSH_INFO_MAX) {
            *reply = pm_msg_new_error(req, "bad_request",
                                      "push.info takes 1 to %d enrollment ids: split the request",
                                      STORE_PUSH_INFO_MAX);
            return STORE_ERR_BAD;
        }
        const char *eids[STORE_PUSH_INFO_MAX] = {NULL};
        char *copies[STORE_PUSH_INFO_MAX];
        size_t n = 0;
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            const msgpack_object *s = &o->via.array.ptr[i];
            copies[n] = strndup(s->via.str.ptr, s->via.str.size);
            if (copies[n])
                eids[n] = copies[n], n++;
        }
        msgpack_sbuffer b;
        msgpack_sbuffer_init(&b);
        store_rc_t rc = store_push_info(db, eids, n, &b);
        for (size_t i = 0; i < n; i++)
            free(copies[i]);
        if (rc == STORE_OK && (*reply = pm_msg_new_reply(req, PM_MSG_PUSH_INFO_REPLY)) &&
            pm_msg_set_packed(*reply, "items", (const uint8_t *)b.data, b.size) < 0) {
            pm_msg_destroy(reply);
            *reply = pm_msg_new_error(req, "internal", "push.info answer too large: ask for fewer");
        }
        msgpack_sbuffer_destroy(&b);
        return rc;
    }
    if (pm_msg_type(req) == PM_MSG_PUSH_OUTCOME) {
        unsigned applied = 0, skipped = 0;
        store_rc_t rc =
            store_push_outcome(db, pm_msg_obj(req, "outcomes"), now_ms, &applied, &skipped);
        if (skipped)
            pm_warn("push.outcome %s: %u malformed outcomes skipped", pm_msg_rid(req), skipped);
        if (rc == STORE_OK)
            *reply = pm_msg_new_reply(req, PM_MSG_OK);
        else if (rc == STORE_ERR_BAD)
            *reply = pm_msg_new_error(req, "bad_request", "push.outcome needs an array of maps");
        return rc;
    }
    *reply = pm_msg_new_error(req, "unknown_type", "not a push request");
    return STORE_ERR_BAD;
}
