/*  store_doctor — facts for `picomdm doctor` (store_doctor.h). Read-only
 *  queries over enrollments, queue, commands and events; nothing here writes.
 */
#include "store_doctor.h"
#include "store_pack.h"

#include "pm_log.h"

#include <stdbool.h>
#include <string.h>

static void s_bool_col(msgpack_packer *pk, sqlite3_stmt *st, int i)
{
    if (sqlite3_column_int64(st, i))
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
}

//  The cached statement `q` (store_db_stmt; q a string constant) with eid
//  bound as ?1. NULL on failure (logged).
static sqlite3_stmt *s_prep(store_db_t *db, const char *q, const char *eid)
{
    sqlite3_stmt *st = store_db_stmt(db, q);
    if (!st) {
        pm_error("doctor query failed: %s", store_db_errmsg(db));
        return NULL;
    }
    if (eid)
        sqlite3_bind_text(st, 1, eid, -1, SQLITE_STATIC);
    return st;
}

int store_doctor_device(store_db_t *db, const char *eid, msgpack_sbuffer *out)
{
    sqlite3 *sql = store_db_sqlite(db);
    int rc = -1;
    sqlite3_stmt *e = NULL, *q = NULL, *h = NULL, *p = NULL, *n = NULL, *id = NULL;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    //  last seen: a check-in (enrollments) or a command-loop request (sessions)
    e = s_prep(db,
               "SELECT e.kind, e.enrolled, e.token_update IS NOT NULL, e.push_token IS NOT NULL,"
               " e.topic, e.stale_token, EXISTS(SELECT 1 FROM wake w WHERE w.eid=e.eid),"
               " e.first_seen, max(e.last_seen, coalesce(s.last_seen, 0))"
               " FROM enrollments e LEFT JOIN sessions s ON s.eid=e.eid WHERE e.eid=?1",
               eid);
    //  the identity facts of this enrollment, else of its device (user channels)
    id = s_prep(db,
                "SELECT cert_not_after, clock_skew_s, skew_at FROM identity WHERE eid=?1"
                " OR eid=(SELECT parent FROM enrollments WHERE eid=?1) ORDER BY eid=?1 DESC"
                " LIMIT 1",
                eid);
    q = s_prep(db, "SELECT count(*), max(created) FROM queue WHERE eid=?1 AND active=1", eid);
    h = s_prep(db,
               "SELECT c.uuid, c.request_type, q.status, q.notnow_count, q.deliveries, q.created,"
               " q.delivered FROM queue q JOIN commands c ON c.id=q.cmd"
               " WHERE q.eid=?1 AND q.active=1 ORDER BY q.priority DESC, q.cmd LIMIT 5",
               eid);
    p = s_prep(db,
               "SELECT name, ts, data FROM events WHERE eid=?1 AND name LIKE 'push.%'"
               " ORDER BY seq DESC LIMIT 1",
               eid);
    n = s_prep(db, "SELECT count(*) FROM events WHERE eid=?1 AND name LIKE 'push.%'", eid);
    if (!e || !q || !h || !p || !n || !id)
        goto out;
    int r = sqlite3_step(e);
    if (r == SQLITE_DONE) {
        rc = 1;
        goto out;
    }
    if (r != SQLITE_ROW || sqlite3_step(q) != SQLITE_ROW || sqlite3_step(n) != SQLITE_ROW)
        goto out;
    int ir = sqlite3_step(id);
    if (ir != SQLITE_ROW && ir != SQLITE_DONE)
        goto out;
    msgpack_pack_map(&pk, 18);
    store_pk_str(&pk, "eid");
    msgpack_pack_str_with_body(&pk, eid, strlen(eid));
    store_pk_str(&pk, "kind");
    store_pk_col(&pk, e, 0);
    store_pk_str(&pk, "enrolled");
    s_bool_col(&pk, e, 1);
    store_pk_str(&pk, "activated");
    s_bool_col(&pk, e, 2);
    store_pk_str(&pk, "has_token");
    s_bool_col(&pk, e, 3);
    store_pk_str(&pk, "topic");
    store_pk_col(&pk, e, 4);
    store_pk_str(&pk, "stale_token");
    s_bool_col(&pk, e, 5);
    store_pk_str(&pk, "wake_pending");
    s_bool_col(&pk, e, 6);
    store_pk_str(&pk, "first_seen");
    store_pk_col(&pk, e, 7);
    store_pk_str(&pk, "last_seen");
    store_pk_col(&pk, e, 8);
    store_pk_str(&pk, "queued");
    store_pk_col(&pk, q, 0);
    store_pk_str(&pk, "newest_queued");
    store_pk_col(&pk, q, 1);
    store_pk_str(&pk, "push_events");
    store_pk_col(&pk, n, 0);
    //  identity certificate notAfter (ms), clock skew (s) and when it was recorded (ms)
    static const char *const ik[] = {"cert_not_after", "clock_skew_s", "skew_at"};
    for (int i = 0; i < 3; i++) {
        store_pk_str(&pk, ik[i]);
        if (ir == SQLITE_ROW)
            store_pk_col(&pk, id, i);
        else
            msgpack_pack_nil(&pk);
    }
    //  the head of the queue, in offer order
    store_pk_str(&pk, "head");
    msgpack_sbuffer rows;
    msgpack_sbuffer_init(&rows);
    msgpack_packer rp;
    msgpack_packer_init(&rp, &rows, msgpack_sbuffer_write);
    uint32_t nrows = 0;
    static const char *const hk[] = {"uuid",       "request_type", "status",   "notnow_count",
                                     "deliveries", "created",      "delivered"};
    while ((r = sqlite3_step(h)) == SQLITE_ROW) {
        msgpack_pack_map(&rp, 7);
        for (int i = 0; i < 7; i++) {
            store_pk_str(&rp, hk[i]);
            store_pk_col(&rp, h, i);
        }
        nrows++;
    }
    if (r != SQLITE_DONE) {
        msgpack_sbuffer_destroy(&rows);
        goto out;
    }
    msgpack_pack_array(&pk, nrows);
    msgpack_sbuffer_write(out, rows.data, rows.size);
    msgpack_sbuffer_destroy(&rows);
    //  the last push outcome the pusher logged
    store_pk_str(&pk, "last_push");
    r = sqlite3_step(p);
    if (r == SQLITE_ROW) {
        msgpack_pack_map(&pk, 3);
        store_pk_str(&pk, "name");
        store_pk_col(&pk, p, 0);
        store_pk_str(&pk, "ts");
        store_pk_col(&pk, p, 1);
        store_pk_str(&pk, "data");
        int len = sqlite3_column_bytes(p, 2);
        const void *blob = sqlite3_column_blob(p, 2);
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        //  data is one packed map (or nothing); anything else is left out
        if (blob && len > 0 &&
            msgpack_unpack_next(&u, blob, (size_t)len, NULL) == MSGPACK_UNPACK_SUCCESS &&
            u.data.type == MSGPACK_OBJECT_MAP)
            msgpack_pack_object(&pk, u.data);
        else
            msgpack_pack_nil(&pk);
        msgpack_unpacked_destroy(&u);
    } else if (r == SQLITE_DONE)
        msgpack_pack_nil(&pk);
    else
        goto out;
    rc = 0;
out:
    if (rc < 0)
        pm_error("doctor facts for %s failed: %s", eid, sqlite3_errmsg(sql));
    sqlite3_reset(e);
    sqlite3_reset(q);
    sqlite3_reset(h);
    sqlite3_reset(p);
    sqlite3_reset(n);
    sqlite3_reset(id);
    return rc;
}

int store_doctor_fleet(store_db_t *db, int64_t silent_ms, unsigned notnow_limit, int64_t now_ms,
                       int64_t identity_warn_ms, int64_t skew_max_s, msgpack_sbuffer *out)
{
    sqlite3 *sql = store_db_sqlite(db);
    int rc = -1;
    sqlite3_stmt *e = NULL, *s = NULL, *p = NULL, *id = NULL;
    id = s_prep(db,
                "SELECT coalesce(sum(i.cert_not_after <= ?1),0),"
                " coalesce(sum(i.cert_not_after > ?1 AND i.cert_not_after < ?2),0),"
                " coalesce(sum(abs(i.clock_skew_s) > ?3),0)"
                " FROM identity i JOIN enrollments e ON e.eid=i.eid WHERE e.enrolled=1",
                NULL);
    e = s_prep(db,
               "SELECT count(*), coalesce(sum(e.enrolled=1 AND e.push_token IS NOT NULL),0),"
               " coalesce(sum(e.enrolled=0 AND e.token_update IS NULL),0),"
               " coalesce(sum(e.enrolled=0 AND e.token_update IS NOT NULL),0),"
               " coalesce(sum(e.enrolled=1 AND e.push_token IS NULL),0),"
               " coalesce(sum(e.stale_token=1),0), (SELECT count(*) FROM wake),"
               " coalesce(sum(e.enrolled=1 AND max(e.last_seen, coalesce(s.last_seen, 0)) < ?1),0)"
               " FROM enrollments e LEFT JOIN sessions s ON s.eid=e.eid",
               NULL);
    s = s_prep(db,
               "SELECT count(DISTINCT eid) FROM queue WHERE active=1 AND"
               " (notnow_count >= ?1 OR (status='sent' AND delivered < ?2))",
               NULL);
    p = s_prep(db, "SELECT EXISTS(SELECT 1 FROM events WHERE name LIKE 'push.%')", NULL);
    if (!e || !s || !p || !id)
        goto out;
    sqlite3_bind_int64(id, 1, now_ms);
    sqlite3_bind_int64(id, 2, now_ms + identity_warn_ms);
    sqlite3_bind_int64(id, 3, skew_max_s);
    sqlite3_bind_int64(e, 1, now_ms - silent_ms);
    sqlite3_bind_int64(s, 1, notnow_limit ? (sqlite3_int64)notnow_limit : INT64_MAX);
    sqlite3_bind_int64(s, 2, now_ms - 60000); //  delivered a minute ago, no answer
    if (sqlite3_step(e) != SQLITE_ROW || sqlite3_step(s) != SQLITE_ROW ||
        sqlite3_step(p) != SQLITE_ROW || sqlite3_step(id) != SQLITE_ROW)
        goto out;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    static const char *const ek[] = {"total",    "active",      "not_activated", "checked_out",
                                     "no_token", "stale_token", "wake_pending",  "silent"};
    msgpack_pack_map(&pk, 13);
    for (int i = 0; i < 8; i++) {
        store_pk_str(&pk, ek[i]);
        store_pk_col(&pk, e, i);
    }
    store_pk_str(&pk, "stuck");
    store_pk_col(&pk, s, 0);
    store_pk_str(&pk, "push_outcomes");
    s_bool_col(&pk, p, 0);
    static const char *const ik[] = {"identity_expired", "identity_expiring", "clock_skewed"};
    for (int i = 0; i < 3; i++) {
        store_pk_str(&pk, ik[i]);
        store_pk_col(&pk, id, i);
    }
    rc = 0;
out:
    if (rc < 0)
        pm_error("doctor fleet facts failed: %s", sqlite3_errmsg(sql));
    sqlite3_reset(e);
    sqlite3_reset(s);
    sqlite3_reset(p);
    sqlite3_reset(id);
    return rc;
}

store_rc_t store_doctor_svc(store_db_t *db, const pm_msg_t *req, pm_msg_t **reply, int64_t now_ms)
{
    store_rc_t rc = STORE_ERR_DB;
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    sqlite3 *sql = store_db_sqlite(db);
    const char *eid = pm_msg_str(req, "eid");
    *reply = NULL;
    if (eid && *eid) {
        int r = store_doctor_device(db, eid, &b);
        if (r == 1) {
            *reply = pm_msg_new_error(
                req, "not_found", "no enrollment %.128s: list them with `picomdm devices`", eid);
            rc = STORE_ERR_NOTFOUND;
            goto out;
        }
        if (r < 0)
            goto out;
    } else {
        uint64_t iw = pm_msg_uint(req, "identity_warn_s", 30 * 86400);
        uint64_t sk = pm_msg_uint(req, "skew_max_s", STORE_DOCTOR_SKEW_MAX_S);
        if (store_doctor_fleet(db, (int64_t)pm_msg_uint(req, "silent_s", 86400) * 1000,
                               (unsigned)pm_msg_uint(req, "notnow_limit", 3), now_ms,
                               iw > 100 * 365 * 86400ULL ? INT64_MAX / 4 : (int64_t)iw * 1000,
                               sk > INT32_MAX ? INT32_MAX : (int64_t)sk, &b) < 0)
            goto out;
    }
    *reply = pm_msg_new_reply(req, PM_MSG_DOCTOR_REPLY);
    if (!*reply || pm_msg_set_uint(*reply, "now", (uint64_t)now_ms) < 0 ||
        pm_msg_set_packed(*reply, eid && *eid ? "device" : "fleet", (const uint8_t *)b.data,
                          b.size) < 0) {
        pm_msg_destroy(reply);
        goto out;
    }
    rc = STORE_OK;
out:
    if (!*reply)
        *reply = pm_msg_new_error(req, "internal",
                                  "the store could not read the doctor facts (%s): check the "
                                  "store's log and retry",
                                  sqlite3_errmsg(sql));
    msgpack_sbuffer_destroy(&b);
    return rc;
}
