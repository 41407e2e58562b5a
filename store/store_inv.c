/*  store_inv — device inventory from command answers (see store_inv.h and
 *  docs/inventory.md). Runs inside the store's transaction; no state besides
 *  cached statements.
 */
#include "store_inv.h"
#include "store_pack.h"

#include "pm_cmdtab.h"
#include "pm_log.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_MAX_ISSUES 16 //  schema issues reported per answer
#define S_MAX_CHANGES 64
#define S_TEXT_MAX 256 //  vtext and change texts
#define S_DEPTH_MAX 8  //  schema check depth

enum { S_GET, S_PUT, S_SET, S_TOUCH, S_DROP_OLD, S_OS, S_LIST, S_TIMELINE, S_DEVICES, S_NST };
static const char *const s_sql[S_NST] = {
    [S_GET] = "SELECT value, source FROM inventory WHERE eid=?1 AND key=?2",
    [S_PUT] = "INSERT INTO inventory(eid,key,value,vtext,source,updated,command_uuid)"
              " VALUES(?1,?2,?3,?4,?5,?6,?7) ON CONFLICT(eid,key) DO UPDATE SET"
              " value=excluded.value, vtext=excluded.vtext, source=excluded.source,"
              " updated=excluded.updated, command_uuid=excluded.command_uuid",
    //  (session 9) a value that changed: the row exists (S_GET saw it), so an
    //  UPDATE, not the upsert's insert attempt, conflict and update
    [S_SET] = "UPDATE inventory SET value=?3, vtext=?4, source=?5, updated=?6, command_uuid=?7"
              " WHERE eid=?1 AND key=?2",
    //  reported again, unchanged: when and by which command, nothing else; no
    //  indexed column is set, so no index page is written (S_PUT rewrites
    //  inventory_kv's entry even when the value is the same)
    [S_TOUCH] = "UPDATE inventory SET updated=?3, command_uuid=?4 WHERE eid=?1 AND key=?2",
    //  a REPLACE source's keys are ?2 and "?2.<key>" (store_inv_ingest): the
    //  range [?2, ?2 || '/') of the primary key holds them all ('/' follows '.')
    [S_DROP_OLD] = "DELETE FROM inventory WHERE eid=?1 AND key>=?2 AND key<?2||'/' AND source=?2"
                   " AND (updated<>?3 OR command_uuid IS NOT ?4) RETURNING key, vtext, value",
    //  unchanged: no write (the enrollments row is wide, its page is not dirtied)
    [S_OS] = "UPDATE enrollments SET os_version=?2 WHERE eid=?1 AND os_version IS NOT ?2",
    [S_LIST] = "SELECT key, value, source, updated, command_uuid FROM inventory WHERE eid=?1"
               " ORDER BY key",
    [S_TIMELINE] = "SELECT seq, ts, name, eid, source, data FROM events WHERE seq>?2 AND"
                   " (eid=?1 OR eid IN (SELECT eid FROM enrollments WHERE parent=?1))"
                   " ORDER BY seq LIMIT ?3",
    //  connect-time state lives in sessions and wake (store_db.c migration 4)
    [S_DEVICES] =
        "SELECT e.eid, e.kind, e.udid, e.serial, e.model, e.os_version, e.topic, e.enrolled,"
        " (e.push_token IS NOT NULL AND e.push_magic IS NOT NULL AND e.topic IS NOT NULL"
        "  AND e.enrolled=1 AND e.stale_token=0), e.first_seen,"
        " max(e.last_seen, coalesce(s.last_seen, 0)),"
        " (SELECT count(*) FROM queue q WHERE q.eid=e.eid AND q.active=1),"
        " EXISTS(SELECT 1 FROM wake w WHERE w.eid=e.eid)"
        " FROM enrollments e LEFT JOIN sessions s ON s.eid=e.eid WHERE e.eid>?1"
        " AND (?2 IS NULL OR e.model=?2 OR e.eid IN (SELECT eid FROM inventory WHERE"
        "      key IN ('Model','ProductName','ModelName') AND vtext=?2))"
        " AND (?3 IS NULL OR e.os_version=?3)"
        " AND (?4 IS NULL OR max(e.last_seen, coalesce(s.last_seen, 0))<?4)"
        " AND (?5 IS NULL OR e.eid IN (SELECT eid FROM inventory WHERE key=?5 AND vtext=?6))"
        " AND (?8 IS NULL OR e.eid=?8)"
        " ORDER BY e.eid LIMIT ?7",
};

struct store_inv {
    store_db_t *db;
    sqlite3 *sql;
    char errmsg[512];
    msgpack_sbuffer buf; //  one value being written
    msgpack_sbuffer ev;  //  event data
    //  per answer
    char issues[S_MAX_ISSUES][200];
    size_t nissues, nissues_total;
    struct {
        char key[128], old[S_TEXT_MAX], new_[S_TEXT_MAX];
        bool had_old;
    } ch[S_MAX_CHANGES];
    size_t nch, nch_total;
};

/* ---- helpers ---- */

//  Statement `id` from the database's statement cache (store_db_stmt).
static sqlite3_stmt *s_st(store_inv_t *self, int id)
{
    sqlite3_stmt *st = store_db_stmt(self->db, s_sql[id]);
    if (!st)
        snprintf(self->errmsg, sizeof self->errmsg,
                 "inventory: preparing a statement failed: %s (is the schema migrated? "
                 "restart picomdm-store)",
                 store_db_errmsg(self->db));
    return st;
}

static int s_dberr(store_inv_t *self, const char *what)
{
    snprintf(self->errmsg, sizeof self->errmsg,
             "database error while %s: %s (check the data directory's disk space)", what,
             sqlite3_errmsg(self->sql));
    return -1;
}

static void s_bind_text(sqlite3_stmt *st, int i, const char *s)
{
    if (s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, i);
}

static bool s_key_is(const msgpack_object *k, const char *name)
{
    size_t n = strlen(name);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           memcmp(k->via.str.ptr, name, n) == 0;
}

static void s_key_copy(const msgpack_object *k, char *buf, size_t size)
{
    if (k->type == MSGPACK_OBJECT_STR)
        pm_str_copy(buf, size, k->via.str.ptr, k->via.str.size);
    else
        snprintf(buf, size, "(non-string key)");
}

//  Text of a value: scalars as text, dates ISO 8601, lists "[N items]".
//  Returns true when the value is a scalar (its text is queryable).
static bool s_text(const msgpack_object *o, char *buf, size_t size)
{
    switch (o->type) {
    case MSGPACK_OBJECT_STR:
        pm_str_copy(buf, size, o->via.str.ptr, o->via.str.size);
        return true;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        snprintf(buf, size, "%" PRIu64, o->via.u64);
        return true;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        snprintf(buf, size, "%" PRId64, o->via.i64);
        return true;
    case MSGPACK_OBJECT_BOOLEAN:
        pm_str_copy(buf, size, o->via.boolean ? "true" : "false", PM_STR_ALL);
        return true;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        snprintf(buf, size, "%g", o->via.f64);
        return true;
    case MSGPACK_OBJECT_EXT: {
        msgpack_timestamp ts;
        if (o->via.ext.type == -1 && msgpack_object_to_timestamp(o, &ts)) {
            time_t t = (time_t)ts.tv_sec;
            struct tm tm;
            if (gmtime_r(&t, &tm)) {
                strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
                return true;
            }
        }
        snprintf(buf, size, "(extension value)");
        return false;
    }
    case MSGPACK_OBJECT_BIN:
        snprintf(buf, size, "<%u bytes>", o->via.bin.size);
        return false;
    case MSGPACK_OBJECT_ARRAY:
        snprintf(buf, size, "[%u items]", o->via.array.size);
        return false;
    case MSGPACK_OBJECT_MAP:
        snprintf(buf, size, "{%u keys}", o->via.map.size);
        return false;
    default:
        snprintf(buf, size, "nil");
        return false;
    }
}

/* ---- schema check ---- */

static const char *s_type_name(int t)
{
    static const char *const names[] = {"?",    "string", "integer", "boolean",    "real",
                                        "data", "date",   "array",   "dictionary", "any"};
    return t > 0 && t <= CT_ANY ? names[t] : "?";
}

static const char *s_got(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_STR:
        return "string";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return "integer";
    case MSGPACK_OBJECT_BOOLEAN:
        return "boolean";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return "real";
    case MSGPACK_OBJECT_BIN:
        return "data";
    case MSGPACK_OBJECT_EXT:
        return o->via.ext.type == -1 ? "date" : "extension";
    case MSGPACK_OBJECT_ARRAY:
        return "array";
    case MSGPACK_OBJECT_MAP:
        return "dictionary";
    default:
        return "nil";
    }
}

static bool s_type_ok(int type, const msgpack_object *o)
{
    const char *g = s_got(o);
    switch (type) {
    case CT_ANY:
        return true;
    case CT_REAL: //  a whole number in a <real> is still a number
        return strcmp(g, "real") == 0 || strcmp(g, "integer") == 0;
    default:
        return strcmp(g, s_type_name(type)) == 0;
    }
}

static void s_issue(store_inv_t *self, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_issue(store_inv_t *self, const char *fmt, ...)
{
    self->nissues_total++;
    if (self->nissues == S_MAX_ISSUES)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(self->issues[self->nissues++], sizeof self->issues[0], fmt, ap);
    va_end(ap);
}

//  The schema key among n siblings at cmdtab_keys[first]: exact name, then a wildcard.
static const cmdtab_key_t *s_child(uint16_t first, uint16_t n, const msgpack_object *name)
{
    const cmdtab_key_t *wild = NULL;
    for (uint16_t i = 0; i < n; i++) {
        const cmdtab_key_t *k = &cmdtab_keys[first + i];
        if (k->flags & CT_WILDCARD)
            wild = wild ? wild : k;
        else if (s_key_is(name, k->name))
            return k;
    }
    return wild;
}

//  Check o against schema key k (path for messages); records issues only.
static void s_check(store_inv_t *self, const cmdtab_key_t *k, const msgpack_object *o,
                    const char *path, int depth)
{
    if (!s_type_ok(k->type, o)) {
        s_issue(self, "%s: expected %s, got %s", path, s_type_name(k->type), s_got(o));
        return;
    }
    if (depth >= S_DEPTH_MAX || !k->nchild)
        return;
    if (o->type == MSGPACK_OBJECT_ARRAY && k->nchild == 1) {
        char p[160];
        for (uint32_t i = 0; i < o->via.array.size && self->nissues < S_MAX_ISSUES; i++) {
            snprintf(p, sizeof p, "%s[%u]", path, i);
            s_check(self, &cmdtab_keys[k->child], &o->via.array.ptr[i], p, depth + 1);
        }
    } else if (o->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < o->via.map.size && self->nissues < S_MAX_ISSUES; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            char name[96], p[160];
            s_key_copy(&kv->key, name, sizeof name);
            snprintf(p, sizeof p, "%s.%s", path, name);
            const cmdtab_key_t *c = s_child(k->child, k->nchild, &kv->key);
            if (!c)
                s_issue(self, "%s: key not in Apple's schema (kept)", p);
            else
                s_check(self, c, &kv->val, p, depth + 1);
        }
    }
}

/* ---- writing attributes ---- */

//  Upsert one attribute; note the change when its value differs.
static int s_put(store_inv_t *self, const char *eid, const char *key, const msgpack_object *val,
                 const char *source, const char *uuid, int64_t now)
{
    msgpack_sbuffer_clear(&self->buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &self->buf, msgpack_sbuffer_write);
    msgpack_pack_object(&pk, *val);
    char text[S_TEXT_MAX];
    bool scalar = s_text(val, text, sizeof text);

    sqlite3_stmt *st = s_st(self, S_GET);
    if (!st)
        return -1;
    s_bind_text(st, 1, eid);
    s_bind_text(st, 2, key);
    int rc = sqlite3_step(st);
    bool had = rc == SQLITE_ROW, same = false, same_source = false;
    char old[S_TEXT_MAX] = "";
    if (had) {
        const void *ob = sqlite3_column_blob(st, 0);
        size_t on = (size_t)sqlite3_column_bytes(st, 0);
        same = on == self->buf.size && (on == 0 || memcmp(ob, self->buf.data, on) == 0);
        const char *os = (const char *)sqlite3_column_text(st, 1);
        same_source = os && source && strcmp(os, source) == 0;
        if (!same) {
            msgpack_unpacked u;
            msgpack_unpacked_init(&u);
            if (ob && msgpack_unpack_next(&u, ob, on, NULL) == MSGPACK_UNPACK_SUCCESS)
                s_text(&u.data, old, sizeof old);
            msgpack_unpacked_destroy(&u);
        }
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return s_dberr(self, "reading the inventory");

    if (same && same_source) { //  the same value (and so the same text) from the same source
        st = s_st(self, S_TOUCH);
        if (!st)
            return -1;
        s_bind_text(st, 1, eid);
        s_bind_text(st, 2, key);
        sqlite3_bind_int64(st, 3, now);
        s_bind_text(st, 4, uuid);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        return rc == SQLITE_DONE ? 0 : s_dberr(self, "writing the inventory");
    }
    st = s_st(self, had ? S_SET : S_PUT);
    if (!st)
        return -1;
    s_bind_text(st, 1, eid);
    s_bind_text(st, 2, key);
    sqlite3_bind_blob64(st, 3, self->buf.data, self->buf.size, SQLITE_STATIC);
    s_bind_text(st, 4, scalar ? text : NULL);
    s_bind_text(st, 5, source);
    sqlite3_bind_int64(st, 6, now);
    s_bind_text(st, 7, uuid);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return s_dberr(self, "writing the inventory");

    if (!same) {
        self->nch_total++;
        if (self->nch < S_MAX_CHANGES) {
            pm_str_copy(self->ch[self->nch].key, sizeof self->ch[0].key, key, PM_STR_ALL);
            pm_str_copy(self->ch[self->nch].old, sizeof self->ch[0].old, old, PM_STR_ALL);
            pm_str_copy(self->ch[self->nch].new_, sizeof self->ch[0].new_, text, PM_STR_ALL);
            self->ch[self->nch].had_old = had;
            self->nch++;
        }
    }
    return 0;
}

//  The enrollment list shows the current OS version.
static int s_os_version(store_inv_t *self, const char *eid, const msgpack_object *v)
{
    if (v->type != MSGPACK_OBJECT_STR || v->via.str.size == 0 || v->via.str.size > 64)
        return 0;
    char os[80];
    pm_str_copy(os, sizeof os, v->via.str.ptr, v->via.str.size);
    sqlite3_stmt *st = s_st(self, S_OS);
    if (!st)
        return -1;
    s_bind_text(st, 1, eid);
    s_bind_text(st, 2, os);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : s_dberr(self, "updating the OS version");
}

//  Keys every answer carries (Apple's command response envelope), not inventory.
static bool s_envelope(const msgpack_object *k)
{
    static const char *const env[] = {"CommandUUID", "Status",        "UDID",
                                      "ErrorChain",  "EnrollmentID",  "EnrollmentUserID",
                                      "UserID",      "UserShortName", "UserLongName",
                                      "RequestType", "NotOnConsole",  NULL};
    for (int i = 0; env[i]; i++)
        if (s_key_is(k, env[i]))
            return true;
    return false;
}

static int s_emit_invalid(store_inv_t *self, const char *eid, const char *rt, const char *uuid,
                          int64_t now, store_inv_emit_fn *emit, void *arg)
{
    pm_warn("inventory: %s answer %s from %s does not match Apple's schema (%zu issues, first: "
            "%s); kept as reported",
            rt, uuid ? uuid : "-", eid, self->nissues_total, self->issues[0]);
    msgpack_sbuffer_clear(&self->ev);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &self->ev, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    store_pk_kstr(&pk, "request_type", rt);
    store_pk_kstr(&pk, "command_uuid", uuid);
    store_pk_str(&pk, "issues");
    msgpack_pack_array(&pk, self->nissues);
    for (size_t i = 0; i < self->nissues; i++)
        store_pk_str(&pk, self->issues[i]);
    store_pk_str(&pk, "total");
    msgpack_pack_uint64(&pk, self->nissues_total);
    return emit(arg, "inventory.invalid", eid, (const uint8_t *)self->ev.data, self->ev.size, now);
}

static int s_emit_changed(store_inv_t *self, const char *eid, const char *rt, const char *uuid,
                          int64_t now, store_inv_emit_fn *emit, void *arg)
{
    msgpack_sbuffer_clear(&self->ev);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &self->ev, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    store_pk_kstr(&pk, "request_type", rt);
    store_pk_kstr(&pk, "command_uuid", uuid);
    store_pk_str(&pk, "changes");
    msgpack_pack_array(&pk, self->nch);
    for (size_t i = 0; i < self->nch; i++) {
        msgpack_pack_map(&pk, 3);
        store_pk_kstr(&pk, "key", self->ch[i].key);
        store_pk_kstr(&pk, "old", self->ch[i].had_old ? self->ch[i].old : NULL);
        store_pk_kstr(&pk, "new",
                      self->ch[i].new_[0] || !self->ch[i].had_old ? self->ch[i].new_ : NULL);
        //  An upgrade is worth a line; the first report (every device's first
        //  DeviceInformation) is not, and a log line costs more than the rest
        //  of the ingest (tzset's stat of /etc/localtime, a write).
        if (strcmp(self->ch[i].key, "OSVersion") == 0 && self->ch[i].had_old)
            pm_info("inventory: %s OSVersion %s -> %s", eid, self->ch[i].old, self->ch[i].new_);
        else if (strcmp(self->ch[i].key, "OSVersion") == 0)
            pm_debug("inventory: %s OSVersion first reported: %s", eid, self->ch[i].new_);
    }
    store_pk_str(&pk, "total");
    msgpack_pack_uint64(&pk, self->nch_total);
    return emit(arg, "inventory.changed", eid, (const uint8_t *)self->ev.data, self->ev.size, now);
}

//  REPLACE: rows of this source not written by this answer are gone.
static int s_drop_old(store_inv_t *self, const char *eid, const char *rt, const char *uuid,
                      int64_t now)
{
    sqlite3_stmt *st = s_st(self, S_DROP_OLD);
    if (!st)
        return -1;
    s_bind_text(st, 1, eid);
    s_bind_text(st, 2, rt);
    sqlite3_bind_int64(st, 3, now);
    s_bind_text(st, 4, uuid);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        self->nch_total++;
        if (self->nch == S_MAX_CHANGES)
            continue;
        pm_str_copy(self->ch[self->nch].key, sizeof self->ch[0].key,
                    (const char *)sqlite3_column_text(st, 0), PM_STR_ALL);
        const char *vt = (const char *)sqlite3_column_text(st, 1);
        if (vt)
            pm_str_copy(self->ch[self->nch].old, sizeof self->ch[0].old, vt, PM_STR_ALL);
        else
            snprintf(self->ch[self->nch].old, sizeof self->ch[0].old, "(list)");
        self->ch[self->nch].new_[0] = '\0';
        self->ch[self->nch].had_old = true;
        self->nch++;
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : s_dberr(self, "replacing the inventory");
}

int store_inv_ingest(store_inv_t *self, const char *eid, const char *request_type,
                     const char *command_uuid, const uint8_t *body, size_t body_len, int64_t now,
                     store_inv_emit_fn *emit, void *arg)
{
    const cmdtab_cmd_t *cmd = cmdtab_find(request_type);
    if (!cmd || cmd->inv == CT_INV_NONE || !eid)
        return 0;
    self->nissues = self->nissues_total = self->nch = self->nch_total = 0;
    int ret = 0;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    if (!body ||
        msgpack_unpack_next(&u, (const char *)body, body_len, NULL) != MSGPACK_UNPACK_SUCCESS ||
        u.data.type != MSGPACK_OBJECT_MAP) {
        s_issue(self, "the answer is not a dictionary: nothing stored in the inventory");
        ret = s_emit_invalid(self, eid, request_type, command_uuid, now, emit, arg);
        goto out;
    }
    const msgpack_object_map *m = &u.data.via.map;
    //  one dict response with fixed keys: one attribute per key
    const cmdtab_key_t *only = cmd->nresp == 1 ? &cmdtab_keys[cmd->resp] : NULL;
    bool flatten = only && only->type == CT_DICT && only->nchild > 0 &&
                   !(cmdtab_keys[only->child].flags & CT_WILDCARD);
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        if (s_envelope(k))
            continue;
        char kname[96], attr[200];
        s_key_copy(k, kname, sizeof kname);
        const cmdtab_key_t *sk = s_child(cmd->resp, cmd->nresp, k);
        if (!sk)
            s_issue(self, "%s: key not in Apple's schema (kept)", kname);
        if (sk && flatten && sk == only && v->type == MSGPACK_OBJECT_MAP) {
            bool merge = cmd->inv == CT_INV_MERGE;
            for (uint32_t j = 0; j < v->via.map.size; j++) {
                const msgpack_object *ck = &v->via.map.ptr[j].key, *cv = &v->via.map.ptr[j].val;
                char cname[96];
                s_key_copy(ck, cname, sizeof cname);
                if (merge)
                    pm_str_copy(attr, sizeof attr, cname, PM_STR_ALL);
                else
                    pm_str_join(attr, sizeof attr, request_type, '.', cname);
                const cmdtab_key_t *ckey = s_child(sk->child, sk->nchild, ck);
                if (!ckey)
                    s_issue(self, "%s.%s: key not in Apple's schema (kept)", kname, cname);
                else
                    s_check(self, ckey, cv, attr, 1);
                if (s_put(self, eid, attr, cv, request_type, command_uuid, now) < 0) {
                    ret = -1;
                    goto out;
                }
                if (merge && strcmp(cname, "OSVersion") == 0 && s_os_version(self, eid, cv) < 0) {
                    ret = -1;
                    goto out;
                }
            }
            continue;
        }
        if (sk)
            s_check(self, sk, v, kname, 0);
        if (cmd->nresp == 1 && sk)
            pm_str_copy(attr, sizeof attr, request_type, PM_STR_ALL);
        else
            pm_str_join(attr, sizeof attr, request_type, '.', kname);
        if (s_put(self, eid, attr, v, request_type, command_uuid, now) < 0) {
            ret = -1;
            goto out;
        }
    }
    if (cmd->inv == CT_INV_REPLACE && s_drop_old(self, eid, request_type, command_uuid, now) < 0) {
        ret = -1;
        goto out;
    }
    if (self->nissues_total &&
        s_emit_invalid(self, eid, request_type, command_uuid, now, emit, arg) < 0) {
        ret = -1;
        goto out;
    }
    if (self->nch_total &&
        s_emit_changed(self, eid, request_type, command_uuid, now, emit, arg) < 0)
        ret = -1;
out:
    msgpack_unpacked_destroy(&u);
    return ret;
}

/* ---- operator queries ---- */

//  A stored msgpack value, inline (nil when absent).
static void s_pk_raw(msgpack_packer *pk, msgpack_sbuffer *out, const char *k, sqlite3_stmt *st,
                     int i)
{
    store_pk_str(pk, k);
    int n = sqlite3_column_bytes(st, i);
    if (n > 0)
        msgpack_sbuffer_write(out, sqlite3_column_blob(st, i), (size_t)n);
    else
        msgpack_pack_nil(pk);
}

typedef void(s_row_fn)(msgpack_packer *pk, msgpack_sbuffer *out, sqlite3_stmt *st);

//  Pack the rows of a bound statement as one array (counted first, rows kept small).
static int s_rows(store_inv_t *self, sqlite3_stmt *st, s_row_fn *fn, msgpack_sbuffer *out)
{
    msgpack_sbuffer rows;
    msgpack_sbuffer_init(&rows);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &rows, msgpack_sbuffer_write);
    uint32_t n = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        fn(&pk, &rows, st);
        n++;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        msgpack_sbuffer_destroy(&rows);
        return s_dberr(self, "listing");
    }
    msgpack_packer opk;
    msgpack_packer_init(&opk, out, msgpack_sbuffer_write);
    msgpack_pack_array(&opk, n);
    if (rows.size)
        msgpack_sbuffer_write(out, rows.data, rows.size);
    msgpack_sbuffer_destroy(&rows);
    return 0;
}

static void s_row_inv(msgpack_packer *pk, msgpack_sbuffer *out, sqlite3_stmt *st)
{
    msgpack_pack_map(pk, 5);
    store_pk_kcol(pk, "key", st, 0);
    s_pk_raw(pk, out, "value", st, 1);
    store_pk_kcol(pk, "source", st, 2);
    store_pk_kcol(pk, "updated", st, 3);
    store_pk_kcol(pk, "command_uuid", st, 4);
}

int store_inv_list(store_inv_t *self, const char *eid, msgpack_sbuffer *out)
{
    sqlite3_stmt *st = s_st(self, S_LIST);
    if (!st)
        return -1;
    s_bind_text(st, 1, eid);
    return s_rows(self, st, s_row_inv, out);
}

static void s_row_event(msgpack_packer *pk, msgpack_sbuffer *out, sqlite3_stmt *st)
{
    msgpack_pack_map(pk, 6);
    store_pk_kcol(pk, "seq", st, 0);
    store_pk_kcol(pk, "ts", st, 1);
    store_pk_kcol(pk, "name", st, 2);
    store_pk_kcol(pk, "eid", st, 3);
    store_pk_kcol(pk, "source", st, 4);
    s_pk_raw(pk, out, "data", st, 5);
}

int store_inv_timeline(store_inv_t *self, const char *eid, uint64_t after, unsigned limit,
                       msgpack_sbuffer *out)
{
    sqlite3_stmt *st = s_st(self, S_TIMELINE);
    if (!st)
        return -1;
    s_bind_text(st, 1, eid);
    sqlite3_bind_int64(st, 2, (int64_t)after);
    sqlite3_bind_int(st, 3, limit ? (int)limit : 1000);
    return s_rows(self, st, s_row_event, out);
}

static void s_row_device(msgpack_packer *pk, msgpack_sbuffer *out, sqlite3_stmt *st)
{
    (void)out;
    static const char *const names[] = {
        "eid",      "kind",     "udid",       "serial",    "model",  "os_version",  "topic",
        "enrolled", "pushable", "first_seen", "last_seen", "queued", "wake_pending"};
    msgpack_pack_map(pk, 13);
    for (int i = 0; i < 13; i++) {
        if (i == 7 || i == 8 || i == 12) {
            store_pk_str(pk, names[i]);
            if (sqlite3_column_int(st, i))
                msgpack_pack_true(pk);
            else
                msgpack_pack_false(pk);
        } else {
            store_pk_kcol(pk, names[i], st, i);
        }
    }
}

int store_inv_devices(store_inv_t *self, const store_inv_filter_t *f, const char *after,
                      unsigned limit, msgpack_sbuffer *out)
{
    sqlite3_stmt *st = s_st(self, S_DEVICES);
    if (!st)
        return -1;
    s_bind_text(st, 1, after ? after : "");
    //  ?1 eid>after, ?2 model, ?3 OS, ?4 last_seen before, ?5/?6 attribute=text, ?7 limit, ?8 eid
    s_bind_text(st, 2, f->model && *f->model ? f->model : NULL);
    s_bind_text(st, 3, f->os_version && *f->os_version ? f->os_version : NULL);
    if (f->silent_for_ms > 0)
        sqlite3_bind_int64(st, 4, f->now_ms - f->silent_for_ms);
    s_bind_text(st, 5, f->query_key && *f->query_key ? f->query_key : NULL);
    s_bind_text(st, 6, f->query_value ? f->query_value : "");
    sqlite3_bind_int(st, 7, limit ? (int)limit : 1000);
    s_bind_text(st, 8, f->eid);
    return s_rows(self, st, s_row_device, out);
}

/* ---- life cycle ---- */

store_inv_t *store_inv_new(store_db_t *db)
{
    store_inv_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->db = db;
    self->sql = store_db_sqlite(db);
    msgpack_sbuffer_init(&self->buf);
    msgpack_sbuffer_init(&self->ev);
    return self;
}

void store_inv_destroy(store_inv_t **pself)
{
    if (!pself || !*pself)
        return;
    store_inv_t *self = *pself;
    msgpack_sbuffer_destroy(&self->buf);
    msgpack_sbuffer_destroy(&self->ev);
    free(self);
    *pself = NULL;
}

const char *store_inv_errmsg(const store_inv_t *self)
{
    return self->errmsg;
}
