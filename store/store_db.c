/*  store_db — SQLite implementation of store_db.h (see there and docs/queue.md).
 *
 *  One connection, used by the store's single thread. WAL mode; prepared
 *  statements are prepared once and cached; every operation runs inside the
 *  caller's transaction (group commit) and a savepoint per request.
 */
#include "store_db.h"
#include "store_pcache.h"
#include "store_pack.h"
#include "store_chal.h"
#include "store_doctor.h"
#include "store_inv.h"
#include "store_walbuf.h"
#include "pm_log.h"
#include "pm_stats.h"

#include <czmq.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- schema: one entry per version; never edit a released entry, add one ---- */
static const char *const s_migrations[] = {
    /* 1: the first schema */
    "CREATE TABLE enrollments("
    " eid TEXT PRIMARY KEY, kind TEXT NOT NULL, parent TEXT,"
    " udid TEXT, serial TEXT, model TEXT, os_version TEXT, device_name TEXT,"
    " topic TEXT, push_magic TEXT, push_token BLOB, unlock_token BLOB, bootstrap_token BLOB,"
    " awaiting_config INTEGER NOT NULL DEFAULT 0,"
    " cert_hash BLOB, cert_issuer TEXT,"
    " enrolled INTEGER NOT NULL DEFAULT 0, stale_token INTEGER NOT NULL DEFAULT 0,"
    " wake_pending INTEGER NOT NULL DEFAULT 0, session INTEGER NOT NULL DEFAULT 0,"
    " first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,"
    " authenticate BLOB, token_update BLOB,"
    " last_rid TEXT, last_status INTEGER, last_reply BLOB);"
    "CREATE INDEX enrollments_parent ON enrollments(parent) WHERE parent IS NOT NULL;"
    "CREATE INDEX enrollments_cert ON enrollments(cert_hash) WHERE cert_hash IS NOT NULL;"
    "CREATE INDEX enrollments_wake ON enrollments(wake_pending) WHERE wake_pending = 1;"
    "CREATE TABLE commands("
    " id INTEGER PRIMARY KEY, uuid TEXT NOT NULL UNIQUE, request_type TEXT NOT NULL,"
    " body BLOB NOT NULL, priority INTEGER NOT NULL, created INTEGER NOT NULL,"
    " expires INTEGER, rid TEXT UNIQUE, targets INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE queue("
    " eid TEXT NOT NULL, cmd INTEGER NOT NULL, status TEXT NOT NULL, active INTEGER NOT NULL,"
    " priority INTEGER NOT NULL, expires INTEGER, created INTEGER NOT NULL,"
    " delivered INTEGER, answered INTEGER, session INTEGER,"
    " deliveries INTEGER NOT NULL DEFAULT 0, notnow_count INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY(eid, cmd)) WITHOUT ROWID;"
    "CREATE INDEX queue_active ON queue(eid, priority DESC, cmd) WHERE active = 1;"
    "CREATE INDEX queue_cmd ON queue(cmd);"
    "CREATE TABLE results("
    " id INTEGER PRIMARY KEY, eid TEXT NOT NULL, cmd INTEGER NOT NULL, status TEXT NOT NULL,"
    " received INTEGER NOT NULL, body BLOB, UNIQUE(eid, cmd));"
    "CREATE INDEX results_cmd ON results(cmd);"
    "CREATE TABLE events("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, name TEXT NOT NULL,"
    " eid TEXT, source TEXT, data BLOB);",
    /* 2: indexes for the per-connect sweeps, so they do not read a long queue */
    "CREATE INDEX queue_expiry ON queue(eid, expires) WHERE active = 1 AND expires IS NOT NULL;"
    "CREATE INDEX queue_sent ON queue(eid, deliveries) WHERE active = 1 AND status = 'sent';",
    /* 3: the inventory (store_inv.h) and the indexes of the operator's queries */
    STORE_INV_MIGRATION,
    /* 4: what changes on every connect, and the wake marks, move out of the wide
     * enrollments row (which holds the Authenticate/TokenUpdate bodies) into
     * narrow tables; the last answer is kept as a command id, not its bytes.
     * enrollments.session/last_rid/last_status/last_reply/wake_pending are unused
     * from here on. */
    "CREATE TABLE sessions(eid TEXT PRIMARY KEY, session INTEGER NOT NULL,"
    " last_seen INTEGER NOT NULL, last_rid TEXT, last_status INTEGER, last_cmd INTEGER)"
    " WITHOUT ROWID;"
    "INSERT INTO sessions SELECT eid, session, last_seen, last_rid, last_status, NULL"
    " FROM enrollments WHERE session > 0;"
    "CREATE TABLE wake(eid TEXT PRIMARY KEY) WITHOUT ROWID;"
    "INSERT INTO wake SELECT eid FROM enrollments WHERE wake_pending = 1;"
    "UPDATE enrollments SET wake_pending = 0, last_reply = NULL;",
    /* 5: doctor facts: identity certificate expiry, device clock skew (store_doctor.h) */
    STORE_DOCTOR_MIGRATION,
    /* 6: durable one-time SCEP challenges (store_chal.h) */
    STORE_CHAL_MIGRATION,
    /* 7: a retried scep_challenge.use logs its event once (store_chal.h) */
    STORE_CHAL_MIGRATION_7,
    /* 8: one index fewer to write per new inventory attribute (store_inv.h) */
    STORE_INV_MIGRATION_8,
    /* 9: a device's result is found through its queue entry (docs/queue.md,
     * "Session 7, storeio"). The Acknowledged that finishes an entry rewrites
     * that entry's row anyway; it now also holds the result's id (queue.result),
     * so results loses its UNIQUE(eid, cmd) index (1.1-1.3 random pages per
     * answer at 10,000 devices): its rows are appended in id order (a commit's
     * new rows share the last page). A device's results are found through the
     * queue's primary key, a command's through results_cmd (kept: its entries
     * end with the id, a command's answers go to the end of its range, and
     * "the newest results of a command" reads only as many as it lists), the
     * newest through the ids; one result per entry is kept by the pointer, a
     * replay updates it in place. Every result had its entry
     * (results were only stored for a queued entry, entries are never deleted);
     * one without (a hand-made row) gets a finished entry, so none is lost.
     * queue_expiry goes: the per-connect expiry sweep reads the device's few
     * active entries through queue_active (Q_SWEEP_ANY), so a command with an
     * expiry no longer writes a random index page when queued and answered. */
    "CREATE TABLE results_9("
    " id INTEGER PRIMARY KEY, eid TEXT NOT NULL, cmd INTEGER NOT NULL, status TEXT NOT NULL,"
    " received INTEGER NOT NULL, body BLOB);"
    "INSERT INTO results_9(id,eid,cmd,status,received,body)"
    " SELECT id, eid, cmd, status, received, body FROM results ORDER BY id;"
    "DROP TABLE results;"
    "ALTER TABLE results_9 RENAME TO results;"
    "CREATE INDEX results_cmd ON results(cmd);"
    "ALTER TABLE queue ADD COLUMN result INTEGER;"
    "UPDATE queue SET result=r.id FROM results r WHERE r.eid=queue.eid AND r.cmd=queue.cmd;"
    "INSERT INTO queue(eid,cmd,status,active,priority,created,answered,result)"
    " SELECT r.eid, r.cmd, CASE r.status WHEN 'Acknowledged' THEN 'acknowledged'"
    " WHEN 'Error' THEN 'error' ELSE 'format_error' END, 0,"
    " coalesce((SELECT priority FROM commands c WHERE c.id=r.cmd), 0), r.received, r.received,"
    " r.id FROM results r WHERE NOT EXISTS(SELECT 1 FROM queue q WHERE q.eid=r.eid AND "
    "q.cmd=r.cmd);"
    "DROP INDEX queue_expiry;"
    /* ... and the event log's seq without AUTOINCREMENT: that kept its high-water
     * mark in sqlite_sequence, a row rewritten by every INSERT statement (one more
     * page per commit); events are never deleted, so max(seq) + 1, SQLite's
     * choice without it, is the same number. events_eid on (eid) alone: its
     * entries end with the rowid, which is seq (the same order, 4-8 bytes less
     * per entry). The rebuild copies the log once. */
    "CREATE TABLE events_9("
    " seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL, name TEXT NOT NULL,"
    " eid TEXT, source TEXT, data BLOB);"
    "INSERT INTO events_9(seq,ts,name,eid,source,data)"
    " SELECT seq, ts, name, eid, source, data FROM events ORDER BY seq;"
    "DROP TABLE events;"
    "ALTER TABLE events_9 RENAME TO events;"
    "CREATE INDEX events_eid ON events(eid) WHERE eid IS NOT NULL;",
};
#define S_NMIGRATIONS ((int)(sizeof s_migrations / sizeof s_migrations[0]))
_Static_assert(S_NMIGRATIONS == STORE_SCHEMA_VERSION, "one migration per schema version");

/* ---- cached statements ---- */
#define S_STMTS(X)                                                                                 \
    X(BEGIN, "BEGIN IMMEDIATE")                                                                    \
    X(COMMIT, "COMMIT")                                                                            \
    X(ROLLBACK, "ROLLBACK")                                                                        \
    X(SAVEPOINT, "SAVEPOINT op")                                                                   \
    X(RELEASE, "RELEASE op")                                                                       \
    X(ROLLBACK_TO, "ROLLBACK TO op")                                                               \
    X(EVENT_INS, "INSERT INTO events(ts,name,eid,source,data) VALUES(?1,?2,?3,?4,?5)")             \
    X(ENR_GET,                                                                                     \
      "SELECT e.kind, e.cert_hash, e.enrolled, s.session, s.last_rid, s.last_status, s.last_cmd,"  \
      " e.parent, e.bootstrap_token FROM enrollments e LEFT JOIN sessions s ON s.eid=e.eid"        \
      " WHERE e.eid=?1")                                                                           \
    X(ENR_CERT_OTHER, "SELECT eid FROM enrollments WHERE cert_hash=?1 AND eid<>?2"                 \
                      " AND (parent IS NULL OR parent<>?2) LIMIT 1")                               \
    X(ENR_INSERT, "INSERT INTO enrollments(eid,kind,parent,udid,serial,model,os_version,"          \
                  "device_name,cert_hash,cert_issuer,first_seen,last_seen,authenticate)"           \
                  " VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?11,?12)")                           \
    X(ENR_AUTH, "UPDATE enrollments SET kind=?2, udid=coalesce(?3,udid),"                          \
                " serial=coalesce(?4,serial), model=coalesce(?5,model),"                           \
                " os_version=coalesce(?6,os_version), device_name=coalesce(?7,device_name),"       \
                " cert_hash=coalesce(?8,cert_hash), cert_issuer=coalesce(?9,cert_issuer),"         \
                " enrolled=0, last_seen=?10, authenticate=?11 WHERE eid=?1")                       \
    X(ENR_REBIND, "UPDATE enrollments SET cert_hash=?1 WHERE cert_hash=?2")                        \
    X(ENR_AUTH_CHILDREN, "UPDATE enrollments SET enrolled=0, cert_hash=coalesce(?2,cert_hash)"     \
                         " WHERE parent=?1")                                                       \
    X(QUEUE_CLEAR, "UPDATE queue SET status='cancelled', active=0, answered=?2"                    \
                   " WHERE active=1 AND eid IN (SELECT eid FROM enrollments WHERE eid=?1"          \
                   " UNION ALL SELECT eid FROM enrollments WHERE parent=?1)"                       \
                   " RETURNING eid, cmd")                                                          \
    X(ENR_TOKEN, "UPDATE enrollments SET push_token=coalesce(?2,push_token),"                      \
                 " push_magic=coalesce(?3,push_magic), topic=coalesce(?4,topic),"                  \
                 " unlock_token=coalesce(?5,unlock_token), awaiting_config=?6, enrolled=1,"        \
                 " stale_token=0, token_update=?7, last_seen=?8 WHERE eid=?1")                     \
    X(ENR_CHECKOUT, "UPDATE enrollments SET enrolled=0, last_seen=?2 WHERE eid=?1")                \
    X(ENR_BOOTSTRAP, "UPDATE enrollments SET bootstrap_token=?2, last_seen=?3 WHERE eid=?1")       \
    X(ENR_SEEN, "UPDATE enrollments SET last_seen=?2 WHERE eid=?1")                                \
    X(ENR_CONNECTED, "INSERT INTO sessions(eid,session,last_seen,last_rid,last_status,last_cmd)"   \
                     " VALUES(?1,?2,?3,?4,?5,?6) ON CONFLICT(eid) DO UPDATE SET"                   \
                     " session=excluded.session, last_seen=excluded.last_seen,"                    \
                     " last_rid=excluded.last_rid, last_status=excluded.last_status,"              \
                     " last_cmd=excluded.last_cmd")                                                \
    /* (session 9) the device's sessions row exists (ENR_GET saw it): no upsert */                 \
    X(SES_UPDATE, "UPDATE sessions SET session=?2, last_seen=?3, last_rid=?4, last_status=?5,"     \
                  " last_cmd=?6 WHERE eid=?1")                                                     \
    X(WAKE_DONE, "DELETE FROM wake WHERE eid=?1")                                                  \
    X(ENR_EXISTS, "SELECT 1 FROM enrollments WHERE eid=?1")                                        \
    X(ENR_WAKE, "INSERT OR IGNORE INTO wake(eid) VALUES(?1)")                                      \
    X(CMD_BY_UUID, "SELECT id, request_type FROM commands WHERE uuid=?1")                          \
    X(CMD_BY_ID, "SELECT uuid, request_type, body FROM commands WHERE id=?1")                      \
    X(CMD_BY_RID, "SELECT uuid, targets FROM commands WHERE rid=?1")                               \
    X(CMD_INSERT, "INSERT INTO commands(uuid,request_type,body,priority,created,expires,rid)"      \
                  " VALUES(?1,?2,?3,?4,?5,?6,?7)")                                                 \
    X(CMD_TARGETS, "UPDATE commands SET targets=?2 WHERE id=?1")                                   \
    X(Q_INSERT, "INSERT OR IGNORE INTO queue(eid,cmd,status,active,priority,expires,created)"      \
                " VALUES(?1,?2,'pending',1,?3,?4,?5)")                                             \
    /* (session 9) the answered command and the device's entry for it, in one statement */         \
    X(CMD_Q_GET, "SELECT c.id, c.request_type, q.eid IS NOT NULL, q.active, q.result"              \
                 " FROM commands c LEFT JOIN queue q ON q.eid=?2 AND q.cmd=c.id WHERE c.uuid=?1")  \
    /* the entry gets its result's id; an active one is finished (SET's right-hand                 \
     * sides see the row as it was) */                                                             \
    X(Q_FINISH, "UPDATE queue SET result=?3, status=CASE WHEN active=1 THEN ?4 ELSE status END,"   \
                " answered=CASE WHEN active=1 THEN ?5 ELSE answered END, active=0"                 \
                " WHERE eid=?1 AND cmd=?2")                                                        \
    X(Q_NOTNOW, "UPDATE queue SET status='notnow', notnow_count=notnow_count+1, session=?3,"       \
                " answered=?4 WHERE eid=?1 AND cmd=?2")                                            \
    /* whether Q_EXPIRE / Q_FAIL would change anything: one pass over the device's                 \
     * active entries (queue_active), not its whole history (schema 9 dropped                      \
     * queue_expiry) */                                                                            \
    /* (session 9) a row per active entry, no aggregate (SQLite's aggregate steps                  \
     * cost more than the few rows a device has): the caller ORs the flags and                     \
     * counts the rows, and also learns whether one is demoted by notnow-limit                     \
     * (?6), so that s_next runs Q_NEXT only when an entry may be due */                           \
    X(Q_SWEEP_ANY, "SELECT expires IS NOT NULL AND expires<=?2,"                                   \
                   " ?3>0 AND status='sent' AND deliveries>=?3 AND session<?4 AND delivered<=?5,"  \
                   " ?6>0 AND notnow_count>=?6"                                                    \
                   " FROM queue INDEXED BY queue_active WHERE eid=?1 AND active=1")                \
    X(Q_EXPIRE,                                                                                    \
      "UPDATE queue INDEXED BY queue_active SET status='expired', active=0, answered=?2"           \
      " WHERE eid=?1 AND active=1 AND expires IS NOT NULL AND expires<=?2 RETURNING cmd")          \
    X(Q_FAIL, "UPDATE queue SET status='failed', active=0, answered=?2"                            \
              " WHERE eid=?1 AND active=1 AND status='sent' AND deliveries>=?3 AND session<?4"     \
              " AND delivered<=?5 RETURNING cmd, deliveries")                                      \
    /* (session 9) with the command's uuid, RequestType and body: no CMD_BY_ID after it */         \
    X(Q_NEXT, "SELECT q.cmd, q.deliveries, c.uuid, c.request_type, c.body"                         \
              " FROM queue q JOIN commands c ON c.id=q.cmd WHERE q.eid=?1 AND q.active=1"          \
              " AND (q.session IS NULL OR q.session<?2) AND (q.status<>'sent' OR q.delivered<=?3)" \
              " AND ((?4>0 AND q.notnow_count>=?4)=?5) ORDER BY q.priority DESC, q.cmd LIMIT 1")   \
    X(Q_DELIVER, "UPDATE queue SET status='sent', deliveries=deliveries+1, delivered=?3,"          \
                 " session=?4 WHERE eid=?1 AND cmd=?2")                                            \
    X(Q_CANCEL_ONE, "UPDATE queue SET status='cancelled', active=0, answered=?3"                   \
                    " WHERE eid=?1 AND cmd=?2 AND active=1")                                       \
    X(Q_CANCEL_ALL, "UPDATE queue SET status='cancelled', active=0, answered=?2"                   \
                    " WHERE cmd=?1 AND active=1 RETURNING eid")                                    \
    X(Q_LIST, "SELECT c.uuid, c.request_type, q.status, q.priority, q.created, q.delivered,"       \
              " q.notnow_count, q.deliveries, q.expires FROM queue q JOIN commands c"              \
              " ON c.id=q.cmd WHERE q.eid=?1 AND (?2 OR q.active=1) ORDER BY q.active DESC,"       \
              " (?3>0 AND q.notnow_count>=?3), q.priority DESC, q.cmd LIMIT 100000")               \
    /* results (schema 9): appended; a device's found through its queue entries */                 \
    X(RES_INSERT, "INSERT INTO results(eid,cmd,status,received,body) VALUES(?1,?2,?3,?4,?5)")      \
    X(RES_UPDATE, "UPDATE results SET status=?2, received=?3, body=?4 WHERE id=?1")                \
    X(RES_BY_EID, "SELECT r.eid, c.uuid, c.request_type, r.status, r.received, r.body"             \
                  " FROM queue q JOIN results r ON r.id=q.result JOIN commands c ON c.id=q.cmd"    \
                  " WHERE q.eid=?1 ORDER BY r.id DESC LIMIT ?3")                                   \
    X(RES_BY_CMD, "SELECT r.eid, c.uuid, c.request_type, r.status, r.received, r.body"             \
                  " FROM results r JOIN commands c ON c.id=r.cmd WHERE c.uuid=?2"                  \
                  " ORDER BY r.id DESC LIMIT ?3")                                                  \
    X(RES_BY_BOTH, "SELECT r.eid, c.uuid, c.request_type, r.status, r.received, r.body"            \
                   " FROM queue q JOIN results r ON r.id=q.result JOIN commands c ON c.id=q.cmd"   \
                   " WHERE q.eid=?1 AND c.uuid=?2 ORDER BY r.id DESC LIMIT ?3")                    \
    X(RES_ALL, "SELECT r.eid, c.uuid, c.request_type, r.status, r.received, r.body"                \
               " FROM results r JOIN commands c ON c.id=r.cmd ORDER BY r.id DESC LIMIT ?3")        \
    X(DEVICES, "SELECT e.eid, e.kind, e.udid, e.serial, e.model, e.os_version, e.topic,"           \
               " e.enrolled, (e.push_token IS NOT NULL AND e.push_magic IS NOT NULL"               \
               "  AND e.topic IS NOT NULL AND e.enrolled=1 AND e.stale_token=0), e.first_seen,"    \
               " max(e.last_seen, coalesce(s.last_seen, 0)),"                                      \
               " (SELECT count(*) FROM queue q WHERE q.eid=e.eid AND q.active=1),"                 \
               " EXISTS(SELECT 1 FROM wake w WHERE w.eid=e.eid)"                                   \
               " FROM enrollments e LEFT JOIN sessions s ON s.eid=e.eid WHERE e.eid>?1"            \
               " ORDER BY e.eid LIMIT ?2")                                                         \
    X(EVENTS, "SELECT seq, ts, name, eid, source, data FROM events WHERE seq>?1"                   \
              " ORDER BY seq LIMIT ?2")                                                            \
    X(DOCTOR_NOTE, STORE_DOCTOR_NOTE_SQL)                                                          \
    X(DOCTOR_GET, "SELECT cert_not_after, clock_skew_s, skew_at FROM identity WHERE eid=?1")       \
    X(WAKE_LIST, "SELECT eid FROM wake LIMIT ?1")                                                  \
    X(WAKE_CLEAR, "DELETE FROM wake WHERE eid=?1")                                                 \
    X(SILENT_LIST, "SELECT e.eid FROM enrollments e LEFT JOIN sessions s ON s.eid=e.eid"           \
                   " WHERE e.enrolled=1 AND e.push_token IS NOT NULL AND e.stale_token=0"          \
                   " AND max(e.last_seen, coalesce(s.last_seen, 0)) < ?2 LIMIT ?1")

enum {
#define S_ENUM(id, sql) S_##id,
    S_STMTS(S_ENUM)
#undef S_ENUM
        S_NSTMTS
};
static const char *const s_sql[] = {
#define S_TEXT(id, sql) sql,
    S_STMTS(S_TEXT)
#undef S_TEXT
};

typedef struct {
    uint64_t seq;
    int64_t ts;
    char *name, *eid, *source; //  in block
    uint8_t *data;             //  in block (NULL: none)
    size_t len;
    void *block; //  the one allocation holding them (NULL: out of memory)
} s_event_t;

//  The statement cache (store_db_stmt): open addressing on the SQL text's
//  address, at most half full (store_db's own ~60 statements and the other
//  modules' ~25).
#define S_CACHE_SLOTS 256
typedef struct {
    const char *sql; //  the key: a string constant's address
    sqlite3_stmt *st;
} s_cached_t;

//  The doctor facts last written for an enrollment (the identity row), so
//  that a request whose facts change nothing skips the upsert (~7 k
//  instructions, on every check-in and connect). The entries a transaction
//  or savepoint wrote are forgotten when it is rolled back (all of them if
//  it wrote more than S_IDENT_TXN: then the memo is emptied); at most
//  S_IDENT_MAX entries.
#define S_IDENT_MAX 100000
#define S_IDENT_TXN 64
typedef struct {
    bool has_na, has_skew;
    int64_t na, skew, skew_at;
} s_ident_t;

static void s_ident_free(void **item);
static void s_ident_forget(store_db_t *db, size_t from);

struct store_db {
    sqlite3 *sql;
    zhashx_t *ident; //  eid -> s_ident_t (store_db_doctor_note)
    //  eids whose entry this transaction wrote (owned copies), the first
    //  written since the savepoint, more than S_IDENT_TXN written
    char *ident_txn[S_IDENT_TXN];
    size_t nident_txn, ident_mark;
    bool ident_over;
    s_cached_t cache[S_CACHE_SLOTS];
    int ncached;
    char errmsg[512];
    s_event_t *ev; //  events raised since begin (published after commit)
    size_t nev, evcap, nev_mark;
    msgpack_sbuffer scratch; //  event data being built
    msgpack_packer pk;       //  packs into scratch
    store_inv_t *inv;        //  inventory (store_inv.h), made on first use
    store_ckpt_t *ckpt;      //  the checkpoint thread (NULL: checkpoints inside commits)
    int wal_threshold;       //  WAL frames between checkpoints
    double ckpt_ms;          //  inline checkpoint time since store_db_begin
    store_ckpt_stats_t inl;  //  inline checkpoint counters (no thread)
    int64_t wal_prev;        //  frames in the WAL after the previous commit
    uint64_t wal_written;    //  frames written by commits (store_ckpt_stats_t.written)
    uint64_t wal_commits;    //  commits that wrote frames
    bool wal_buffered;       //  opened through store_walbuf (one write per commit)
    double began;            //  store_db_begin's time (monotonic ms), for s_wal_hook's timing
    store_walbuf_io_t io;    //  this thread's I/O through store_walbuf at the last WAL hook
};

bool store_db_wal_buffered(const store_db_t *db)
{
    return db->wal_buffered;
}

struct sqlite3 *store_db_sqlite(store_db_t *db)
{
    return db->sql;
}

/* ---- small helpers ---- */

static void s_err(store_db_t *db, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_err(store_db_t *db, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(db->errmsg, sizeof db->errmsg, fmt, ap);
    va_end(ap);
}

static store_rc_t s_dberr(store_db_t *db, const char *what)
{
    s_err(db,
          "database error while %s: %s (check the data directory's disk space and "
          "permissions; the store log has details)",
          what, sqlite3_errmsg(db->sql));
    return STORE_ERR_DB;
}

sqlite3_stmt *store_db_stmt(store_db_t *db, const char *sql)
{
    size_t h = (size_t)((uintptr_t)sql >> 3) * 2654435761u % S_CACHE_SLOTS;
    for (;;) {
        s_cached_t *c = &db->cache[h];
        if (c->sql == sql) {
            sqlite3_reset(c->st);
            sqlite3_clear_bindings(c->st);
            return c->st;
        }
        if (!c->sql)
            break;
        h = (h + 1) % S_CACHE_SLOTS;
    }
    if (db->ncached >= S_CACHE_SLOTS / 2) {
        s_err(db,
              "the statement cache is full (%d statements): a statement built at run time? "
              "(store_db_stmt takes string constants; this is a bug, report it)",
              db->ncached);
        return NULL;
    }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v3(db->sql, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
        s_dberr(db, "preparing a statement");
        sqlite3_finalize(st);
        return NULL;
    }
    db->cache[h].sql = sql;
    db->cache[h].st = st;
    db->ncached++;
    return st;
}

int store_db_stmt_count(const store_db_t *db)
{
    return db->ncached;
}

//  The cached statement `id`, reset and unbound. NULL (errmsg set) if it fails to prepare.
static sqlite3_stmt *s_st(store_db_t *db, int id)
{
    return store_db_stmt(db, s_sql[id]);
}

static void s_bind_text(sqlite3_stmt *st, int i, const char *s)
{
    if (s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

static void s_bind_blob(sqlite3_stmt *st, int i, const void *p, size_t n)
{
    if (p && n)
        sqlite3_bind_blob64(st, i, p, n, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

//  Run a statement that returns no rows. 0 / -1 (errmsg set).
static int s_exec(store_db_t *db, sqlite3_stmt *st, const char *what)
{
    if (!st)
        return -1;
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        s_dberr(db, what);
        return -1;
    }
    return 0;
}

static const char *s_col_text(sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

/* ---- msgpack packing helpers (event data, lists) ---- */

//  Start building an event's data map with n pairs (in db->scratch).
static msgpack_packer *s_ev_data(store_db_t *db, size_t n)
{
    msgpack_sbuffer_clear(&db->scratch);
    msgpack_pack_map(&db->pk, n);
    return &db->pk;
}

static char *s_dup(const char *s)
{
    return s ? strdup(s) : NULL;
}

//  Append an event (data = db->scratch when use_scratch) to the log and the
//  in-memory list. Returns 0 / -1.
static int s_event(store_db_t *db, const char *name, const char *eid, const char *source,
                   const uint8_t *data, size_t len, int64_t now, uint64_t *seq_out)
{
    sqlite3_stmt *st = s_st(db, S_EVENT_INS);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, now);
    s_bind_text(st, 2, name);
    s_bind_text(st, 3, eid);
    s_bind_text(st, 4, source);
    s_bind_blob(st, 5, data, len);
    if (s_exec(db, st, "appending an event") < 0)
        return -1;
    uint64_t seq = (uint64_t)sqlite3_last_insert_rowid(db->sql);
    if (seq_out)
        *seq_out = seq;
    if (db->nev == db->evcap) {
        size_t cap = db->evcap ? db->evcap * 2 : 64;
        s_event_t *ev = realloc(db->ev, cap * sizeof *ev);
        if (!ev) {
            s_err(db, "out of memory while queuing an event");
            return -1;
        }
        db->ev = ev;
        db->evcap = cap;
    }
    s_event_t *e = &db->ev[db->nev];
    memset(e, 0, sizeof *e);
    e->seq = seq;
    e->ts = now;
    //  one block per event: data, then name, eid and source with their NULs
    //  (four allocations each were ~1 % of a device request's instructions)
    if (!source)
        source = "store";
    if (!data)
        len = 0;
    size_t nl = name ? strlen(name) + 1 : 0, el = eid ? strlen(eid) + 1 : 0,
           sl = strlen(source) + 1;
    uint8_t *blk = malloc(len + nl + el + sl);
    if (blk) {
        uint8_t *p = blk;
        if (len) {
            memcpy(p, data, len);
            e->data = p;
            e->len = len;
            p += len;
        }
        if (name) {
            e->name = memcpy(p, name, nl);
            p += nl;
        }
        if (eid) {
            e->eid = memcpy(p, eid, el);
            p += el;
        }
        e->source = memcpy(p, source, sl);
        e->block = blk;
    }
    db->nev++;
    return 0;
}

//  Event whose data was built in db->scratch.
static int s_event_scratch(store_db_t *db, const char *name, const char *eid, int64_t now)
{
    return s_event(db, name, eid, "store", (const uint8_t *)db->scratch.data, db->scratch.size, now,
                   NULL);
}

static void s_events_drop(store_db_t *db, size_t keep)
{
    for (size_t i = keep; i < db->nev; i++) {
        free(db->ev[i].block);
    }
    db->nev = keep < db->nev ? keep : db->nev;
}

/* ---- open / close ---- */

static int s_run(store_db_t *db, const char *sql, const char *what)
{
    char *msg = NULL;
    if (sqlite3_exec(db->sql, sql, NULL, NULL, &msg) != SQLITE_OK) {
        s_err(db, "%s failed: %s", what, msg ? msg : sqlite3_errmsg(db->sql));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

static int s_migrate(store_db_t *db)
{
    int v = store_db_schema_version(db);
    if (v < 0)
        return -1;
    if (v > S_NMIGRATIONS) {
        s_err(db,
              "the database is at schema version %d but this picomdm-store knows only up to "
              "%d: run a newer picomdm-store",
              v, S_NMIGRATIONS);
        return -1;
    }
    for (; v < S_NMIGRATIONS; v++) {
        char pragma[64];
        snprintf(pragma, sizeof pragma, "PRAGMA user_version=%d", v + 1);
        if (s_run(db, "BEGIN IMMEDIATE", "starting a migration") < 0)
            return -1;
        if (s_run(db, s_migrations[v], "schema migration") < 0 ||
            s_run(db, pragma, "recording the schema version") < 0 ||
            s_run(db, "COMMIT", "committing a migration") < 0) {
            sqlite3_exec(db->sql, "ROLLBACK", NULL, NULL, NULL);
            return -1;
        }
    }
    return 0;
}

//  Debug level: a transaction that took over 10 ms from BEGIN to the end of
//  its commit, or the one that started the WAL over, with its WAL syncs
//  (store_walbuf's counters), stamped with the wall clock to line up with a
//  simulator's latency log (docs/queue.md, "Session 6").
static void s_commit_timing(store_db_t *db, int frames)
{
    if (!db->wal_buffered || pm_log_level() < PM_LOG_DEBUG)
        return;
    store_walbuf_io_t io;
    store_walbuf_io(&io);
    double ms = db->began > 0 ? pm_stats_now_ms() - db->began : 0;
    bool restart = frames < db->wal_prev;
    if (ms > 10 || restart)
        pm_debug("commit at %.3f: %.1f ms since BEGIN, %lu WAL syncs %.1f ms, %lu database syncs "
                 "%.1f ms; %d frames in the WAL%s",
                 pm_stats_wall_s(), ms, io.syncs[0] - db->io.syncs[0],
                 io.sync_ms[0] - db->io.sync_ms[0], io.syncs[1] - db->io.syncs[1],
                 io.sync_ms[1] - db->io.sync_ms[1], frames, restart ? " (started over)" : "");
    db->io = io;
}

//  After every commit: the WAL holds `frames`. Hand it to the checkpoint
//  thread, or checkpoint here (inside the commit, as SQLite's auto-checkpoint
//  does) once it holds wal_threshold frames; timed either way.
static int s_wal_hook(void *arg, sqlite3 *sql, const char *name, int frames)
{
    store_db_t *db = arg;
    s_commit_timing(db, frames);
    //  what this commit wrote: the growth, or all of it when the WAL started over
    db->wal_written += (uint64_t)(frames >= db->wal_prev ? frames - db->wal_prev : frames);
    db->wal_commits++;
    db->wal_prev = frames;
    if (db->ckpt) {
        store_ckpt_note(db->ckpt, frames);
        return SQLITE_OK;
    }
    if (frames < db->inl.wal_frames)
        db->inl.restarts++;
    db->inl.wal_frames = frames;
    if (frames > db->inl.wal_max)
        db->inl.wal_max = frames;
    if (frames < db->wal_threshold)
        return SQLITE_OK;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int nlog = 0, nckpt = 0;
    int rc = sqlite3_wal_checkpoint_v2(sql, name, SQLITE_CHECKPOINT_PASSIVE, &nlog, &nckpt);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    db->ckpt_ms += ms;
    db->inl.ms_total += ms;
    if (ms > db->inl.ms_max)
        db->inl.ms_max = ms;
    if (rc == SQLITE_OK) {
        db->inl.passive++;
        db->inl.frames += (uint64_t)nckpt;
    }
    return SQLITE_OK; //  a failed checkpoint is retried after the next commit
}

void store_db_wal_stats(store_db_t *db, store_ckpt_stats_t *out)
{
    if (db->ckpt)
        store_ckpt_stats(db->ckpt, out);
    else
        *out = db->inl;
    out->written = db->wal_written;
    out->commits = db->wal_commits;
}

double store_db_commit_checkpoint_ms(const store_db_t *db)
{
    return db->ckpt_ms;
}

double store_db_wal_tidy(store_db_t *db)
{
    if (!db->ckpt)
        return 0;
    double tw = pm_stats_now_ms();
    int64_t left = store_ckpt_tidy_due(db->ckpt);
    if (!left)
        return 0;
    store_walbuf_io_t io0, io1;
    store_walbuf_io(&io0);
    double t0 = pm_stats_now_ms();
    int nlog = 0, nckpt = 0;
    int rc = sqlite3_wal_checkpoint_v2(db->sql, NULL, SQLITE_CHECKPOINT_PASSIVE, &nlog, &nckpt);
    double t1 = pm_stats_now_ms();
    double ms = t1 - t0;
    store_ckpt_done(db->ckpt, rc, nlog, nckpt, ms);
    //  what it cost, part by part (debug level; docs/queue.md, "Session 6")
    store_walbuf_io(&io1);
    pm_debug("tidy at %.3f: %lld frames left of %d, %.1f ms (waited %.1f ms for the thread): "
             "database %lu writes %.1f ms, %lu syncs %.1f ms; WAL %lu syncs %.1f ms",
             pm_stats_wall_s(), (long long)left, nlog, t1 - tw, t0 - tw,
             io1.writes[1] - io0.writes[1], io1.write_ms[1] - io0.write_ms[1],
             io1.syncs[1] - io0.syncs[1], io1.sync_ms[1] - io0.sync_ms[1],
             io1.syncs[0] - io0.syncs[0], io1.sync_ms[0] - io0.sync_ms[0]);
    db->io = io1;
    return ms > 0 ? ms : 1e-6;
}

store_db_t *store_db_new(const char *path, const store_db_opts_t *opts, char *err, size_t errlen)
{
    //  Each connection is used by one thread only (the store's, and the
    //  checkpoint thread's own): no per-connection mutexes (MULTITHREAD keeps
    //  only SQLite's few global ones, which the checkpoint thread needs), no
    //  memory statistics (mutexes and statistics showed up at ~10% of the
    //  store's CPU in perf in SERIALIZED mode). Only possible before SQLite
    //  initialises; later calls fail harmlessly. The page cache skips the
    //  per-commit truncation scans that cannot drop a page (store_pcache.h).
    static bool configured;
    if (!configured) {
        sqlite3_config(SQLITE_CONFIG_MULTITHREAD);
        sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
        if (store_pcache_install() < 0)
            pm_debug("SQLite initialised before the store: its default page cache stays (every "
                     "commit may scan it; see store_pcache.h)");
        configured = true;
    }
    store_db_opts_t defaults = {.sync_full = true};
    if (!opts)
        opts = &defaults;
    store_db_t *db = calloc(1, sizeof *db);
    if (!db) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    msgpack_sbuffer_init(&db->scratch);
    msgpack_packer_init(&db->pk, &db->scratch, msgpack_sbuffer_write);
    //  without it (out of memory) every doctor note runs its upsert
    if ((db->ident = zhashx_new()))
        zhashx_set_destructor(db->ident, s_ident_free);
    //  one write per commit into the WAL (store_walbuf.h): only with
    //  synchronous=FULL, whose sync per commit writes the commit out and
    //  reports a failure; otherwise (or if it cannot be registered) SQLite's
    //  own writes
    const char *vfs = NULL;
    if (!opts->wal_unbuffered && opts->sync_full && store_walbuf_register() == 0)
        vfs = STORE_WALBUF_VFS;
    db->wal_buffered = vfs != NULL;
    int rc = sqlite3_open_v2(path, &db->sql,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, vfs);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen,
                 "cannot open database %s: %s (check that the data directory exists "
                 "and is writable)",
                 path, db->sql ? sqlite3_errmsg(db->sql) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_busy_timeout(db->sql, opts->busy_ms > 0 ? opts->busy_ms : 5000);
    char pragmas[400];
    int wal = opts->wal_autocheckpoint > 0 ? opts->wal_autocheckpoint : STORE_WAL_AUTOCHECKPOINT;
    //  only takes effect while the file is still empty (before journal_mode=WAL writes it)
    if (opts->page_size > 0) {
        snprintf(pragmas, sizeof pragmas, "PRAGMA page_size=%d;", opts->page_size);
        if (s_run(db, pragmas, "setting the page size") < 0) {
            snprintf(err, errlen, "%s: %s", path, db->errmsg);
            goto fail;
        }
    }
    //  journal_size_limit: when the WAL starts over, a -wal file larger than
    //  the cap (store_ckpt.h; 4 KiB pages) is trimmed to it
    snprintf(pragmas, sizeof pragmas,
             "PRAGMA journal_mode=WAL; PRAGMA synchronous=%s; PRAGMA foreign_keys=OFF;"
             " PRAGMA cache_size=-16384; PRAGMA temp_store=MEMORY; PRAGMA wal_autocheckpoint=%d;"
             " PRAGMA journal_size_limit=%lld;",
             opts->sync_full ? "FULL" : "NORMAL", wal,
             (long long)STORE_CKPT_CAP_FACTOR * wal * 4096);
    if (s_run(db, pragmas, "setting up the database") < 0 || s_migrate(db) < 0) {
        snprintf(err, errlen, "%s: %s", path, db->errmsg);
        goto fail;
    }
    //  after the PRAGMA, which installs SQLite's own checkpointing hook
    db->wal_threshold =
        opts->wal_autocheckpoint > 0 ? opts->wal_autocheckpoint : STORE_WAL_AUTOCHECKPOINT;
    if (opts->checkpoint_thread && strcmp(path, ":memory:") != 0) {
        db->ckpt = store_ckpt_new(path, opts->sync_full, db->wal_threshold,
                                  opts->checkpoint_idle_ms > 0 ? opts->checkpoint_idle_ms
                                                               : STORE_CHECKPOINT_IDLE_MS,
                                  err, errlen);
        if (!db->ckpt)
            goto fail;
    }
    sqlite3_wal_hook(db->sql, s_wal_hook, db);
    return db;
fail:
    store_db_destroy(&db);
    return NULL;
}

void store_db_destroy(store_db_t **pdb)
{
    if (!pdb || !*pdb)
        return;
    store_db_t *db = *pdb;
    store_ckpt_destroy(&db->ckpt); //  before the last connection closes (it checkpoints)
    store_inv_destroy(&db->inv);
    //  every module's cached statements, so that the connection really closes
    for (int i = 0; i < S_CACHE_SLOTS; i++)
        sqlite3_finalize(db->cache[i].st);
    if (db->sql)
        sqlite3_close(db->sql);
    s_events_drop(db, 0);
    free(db->ev);
    s_ident_forget(db, SIZE_MAX);
    zhashx_destroy(&db->ident);
    msgpack_sbuffer_destroy(&db->scratch);
    free(db);
    *pdb = NULL;
}

int store_db_schema_version(store_db_t *db)
{
    sqlite3_stmt *st = NULL;
    int v = -1;
    if (sqlite3_prepare_v2(db->sql, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int(st, 0);
    else
        s_dberr(db, "reading the schema version");
    sqlite3_finalize(st);
    return v;
}

int store_db_depths(store_db_t *db, int64_t *active, int64_t *sent, int64_t *wake)
{
    static const char *const q[3] = {
        "SELECT count(*) FROM queue WHERE active = 1",
        "SELECT count(*) FROM queue WHERE active = 1 AND status = 'sent'",
        "SELECT count(*) FROM wake", //  the wake marks (schema 4)
    };
    int64_t *out[3] = {active, sent, wake};
    for (int i = 0; i < 3; i++) {
        sqlite3_stmt *st = store_db_stmt(db, q[i]);
        int ok = st && sqlite3_step(st) == SQLITE_ROW;
        if (ok)
            *out[i] = sqlite3_column_int64(st, 0);
        if (st)
            sqlite3_reset(st);
        if (!ok) {
            s_dberr(db, "counting queue depths");
            return -1;
        }
    }
    return 0;
}

const char *store_db_errmsg(const store_db_t *db)
{
    return db->errmsg;
}

/* ---- transactions ---- */

int store_db_begin(store_db_t *db)
{
    db->ckpt_ms = 0;
    //  let a hand-over checkpoint end first (store_ckpt.h), a few ms at most
    store_ckpt_hold(db->ckpt);
    s_ident_forget(db, SIZE_MAX); //  the last transaction's list (nothing undone)
    db->began = pm_stats_now_ms();
    s_events_drop(db, 0);
    db->nev_mark = 0;
    return s_exec(db, s_st(db, S_BEGIN), "starting a transaction");
}

int store_db_commit(store_db_t *db)
{
    if (s_exec(db, s_st(db, S_COMMIT), "committing") < 0) {
        store_db_rollback(db);
        return -1;
    }
    return 0;
}

void store_db_rollback(store_db_t *db)
{
    if (!sqlite3_get_autocommit(db->sql))
        s_exec(db, s_st(db, S_ROLLBACK), "rolling back");
    s_events_drop(db, 0);
    s_ident_forget(db, 0);
}

int store_db_op_begin(store_db_t *db)
{
    db->nev_mark = db->nev;
    db->ident_mark = db->nident_txn;
    return s_exec(db, s_st(db, S_SAVEPOINT), "starting a savepoint");
}

void store_db_op_end(store_db_t *db, bool ok)
{
    if (!ok) {
        s_exec(db, s_st(db, S_ROLLBACK_TO), "undoing a request");
        s_events_drop(db, db->nev_mark);
        s_ident_forget(db, db->ident_mark);
    }
    s_exec(db, s_st(db, S_RELEASE), "ending a savepoint");
}

void store_db_events_flush(store_db_t *db, store_event_fn *fn, void *arg)
{
    for (size_t i = 0; i < db->nev; i++) {
        s_event_t *e = &db->ev[i];
        if (fn)
            fn(arg, e->seq, e->ts, e->name, e->eid, e->source, e->data, e->len);
    }
    s_events_drop(db, 0);
}

/* ---- doctor facts (store_doctor.h) ---- */

static void s_ident_free(void **item)
{
    free(*item);
    *item = NULL;
}

//  The upsert's WHERE (STORE_DOCTOR_NOTE_SQL) on the remembered row: would
//  these facts change it?
static bool s_ident_changes(const s_ident_t *m, int64_t na, bool has_skew, int64_t skew,
                            int64_t now)
{
    if (na > 0 && (!m->has_na || m->na != na))
        return true;
    return has_skew && (!m->has_skew || llabs(skew - m->skew) >= 30 || now - m->skew_at >= 3600000);
}

//  Remember `row` as eid's identity row. Nothing on failure.
static void s_ident_put(store_db_t *db, const char *eid, const s_ident_t *row)
{
    if (!db->ident)
        return;
    s_ident_t *m = zhashx_lookup(db->ident, eid);
    if (!m) {
        if (zhashx_size(db->ident) >= S_IDENT_MAX)
            zhashx_purge(db->ident);
        if (!(m = malloc(sizeof *m)))
            return;
        if (zhashx_insert(db->ident, eid, m) != 0) {
            free(m);
            return;
        }
    }
    *m = *row;
    //  what a rollback must forget
    char *copy = db->nident_txn < S_IDENT_TXN ? strdup(eid) : NULL;
    if (copy)
        db->ident_txn[db->nident_txn++] = copy;
    else
        db->ident_over = true;
}

//  Remember eid's identity row as it is now in the transaction, read back
//  (the upsert kept the columns it was not given).
static void s_ident_remember(store_db_t *db, const char *eid)
{
    sqlite3_stmt *st = db->ident ? s_st(db, S_DOCTOR_GET) : NULL;
    if (!st)
        return;
    s_bind_text(st, 1, eid);
    if (sqlite3_step(st) == SQLITE_ROW) {
        s_ident_t m = {.has_na = sqlite3_column_type(st, 0) != SQLITE_NULL,
                       .na = sqlite3_column_int64(st, 0),
                       .has_skew = sqlite3_column_type(st, 1) != SQLITE_NULL,
                       .skew = sqlite3_column_int64(st, 1),
                       .skew_at = sqlite3_column_int64(st, 2)};
        s_ident_put(db, eid, &m);
    }
    sqlite3_reset(st);
}

//  A rollback undid what this transaction wrote from ident_txn[from] on:
//  forget those entries (every entry if the list overflowed). from =
//  SIZE_MAX: nothing was undone, only empty the list (a new transaction).
static void s_ident_forget(store_db_t *db, size_t from)
{
    bool undo = from != SIZE_MAX;
    if (!undo)
        from = 0;
    if (undo && db->ident_over) { //  the list is incomplete: forget every entry
        if (db->ident)
            zhashx_purge(db->ident);
        from = 0;
    }
    for (size_t i = from; i < db->nident_txn; i++) {
        if (undo && db->ident)
            zhashx_delete(db->ident, db->ident_txn[i]);
        free(db->ident_txn[i]);
        db->ident_txn[i] = NULL;
    }
    db->nident_txn = from;
    if (from == 0)
        db->ident_over = false;
    if (db->ident_mark > from)
        db->ident_mark = from;
}

int store_db_doctor_note(store_db_t *db, const char *eid, int64_t not_after_ms, bool has_skew,
                         int64_t skew_s, int64_t now_ms)
{
    if (!eid || (not_after_ms <= 0 && !has_skew))
        return 0;
    const s_ident_t *m = db->ident ? zhashx_lookup(db->ident, eid) : NULL;
    if (m && !s_ident_changes(m, not_after_ms, has_skew, skew_s, now_ms))
        return 0; //  what the upsert would do: nothing
    sqlite3_stmt *st = s_st(db, S_DOCTOR_NOTE);
    if (!st)
        return -1;
    s_bind_text(st, 1, eid);
    if (not_after_ms > 0)
        sqlite3_bind_int64(st, 2, not_after_ms);
    if (has_skew)
        sqlite3_bind_int64(st, 3, skew_s);
    sqlite3_bind_int64(st, 4, now_ms);
    if (s_exec(db, st, "recording the identity certificate and clock skew") < 0)
        return -1;
    int changed = sqlite3_changes(db->sql) > 0 ? 1 : 0;
    if (m || (changed && not_after_ms > 0 && has_skew)) {
        //  the row is known without reading it: the upsert set coalesce(new, old)
        s_ident_t n = m ? *m : (s_ident_t){0};
        if (changed && not_after_ms > 0)
            n.has_na = true, n.na = not_after_ms;
        if (changed && has_skew)
            n.has_skew = true, n.skew = skew_s, n.skew_at = now_ms;
        s_ident_put(db, eid, &n);
    } else
        s_ident_remember(db, eid);
    return changed;
}

/* ---- enrollments ---- */

typedef struct {
    bool found;
    bool enrolled;
    bool has_session; //  its sessions row exists (it connected before)
    int64_t session;
    uint8_t cert_hash[64];
    size_t cert_hash_len;
    char kind[32];
    char parent[256];
} s_enr_t;

//  Load the parts of an enrollment the rules need. Returns 0 (found or not) / -1.
//  Leaves the statement positioned on the row so the caller may read more columns.
static int s_enr_load(store_db_t *db, const char *eid, s_enr_t *e, sqlite3_stmt **stp)
{
    memset(e, 0, sizeof *e);
    sqlite3_stmt *st = s_st(db, S_ENR_GET);
    if (!st)
        return -1;
    s_bind_text(st, 1, eid);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return 0;
    if (rc != SQLITE_ROW) {
        s_dberr(db, "reading an enrollment");
        return -1;
    }
    e->found = true;
    pm_str_copy(e->kind, sizeof e->kind, s_col_text(st, 0) ? s_col_text(st, 0) : "", PM_STR_ALL);
    int n = sqlite3_column_bytes(st, 1);
    if (n > 0 && (size_t)n <= sizeof e->cert_hash) {
        memcpy(e->cert_hash, sqlite3_column_blob(st, 1), (size_t)n);
        e->cert_hash_len = (size_t)n;
    }
    e->enrolled = sqlite3_column_int(st, 2) != 0;
    e->has_session = sqlite3_column_type(st, 3) != SQLITE_NULL;
    e->session = sqlite3_column_int64(st, 3);
    if (s_col_text(st, 7))
        pm_str_copy(e->parent, sizeof e->parent, s_col_text(st, 7), PM_STR_ALL);
    if (stp)
        *stp = st;
    else
        sqlite3_reset(st);
    return 0;
}

//  The request's certificate is the one bound to the enrollment (absent = lab mode).
static bool s_cert_ok(const s_enr_t *e, const uint8_t *hash, size_t len)
{
    if (!hash || !len)
        return true;
    return e->cert_hash_len == len && memcmp(e->cert_hash, hash, len) == 0;
}

//  s_cert_ok, or the request's certificate renews the bound one: our CA wrote
//  the bound certificate's SHA-256 into it when it served a RenewalReq signed
//  with that certificate (proto/pm_x509.h; the gateway passes it as `prev`).
//  Then every enrollment bound to the old certificate (the device and its user
//  channels) is re-bound to the new one, with an enroll.cert_rebound event.
//  1 = accepted, 0 = refused, -1 = database error.
static int s_cert_check(store_db_t *db, s_enr_t *e, const char *eid, const uint8_t *hash,
                        size_t len, const uint8_t *prev, size_t prev_len, int64_t now)
{
    if (s_cert_ok(e, hash, len))
        return 1;
    if (!prev || !e->cert_hash_len || prev_len != e->cert_hash_len ||
        memcmp(prev, e->cert_hash, prev_len) != 0 || len > sizeof e->cert_hash)
        return 0;
    //  the renewal must not already identify another enrollment
    sqlite3_stmt *st = s_st(db, S_ENR_CERT_OTHER);
    if (!st)
        return -1;
    s_bind_blob(st, 1, hash, len);
    s_bind_text(st, 2, "");
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return 0;
    if (rc != SQLITE_DONE)
        return -1;
    if (!(st = s_st(db, S_ENR_REBIND)))
        return -1;
    s_bind_blob(st, 1, hash, len);
    s_bind_blob(st, 2, e->cert_hash, e->cert_hash_len);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return -1;
    msgpack_packer *pk = s_ev_data(db, 1);
    store_pk_kstr(pk, "reason", "renewed identity certificate (SCEP RenewalReq) now bound");
    if (s_event_scratch(db, "enroll.cert_rebound", eid, now) < 0)
        return -1;
    memcpy(e->cert_hash, hash, len);
    e->cert_hash_len = len;
    return 1;
}

static int s_rejected(store_db_t *db, const char *eid, const char *what, const char *reason,
                      int64_t now)
{
    msgpack_packer *pk = s_ev_data(db, 2);
    store_pk_kstr(pk, "request", what);
    store_pk_kstr(pk, "reason", reason);
    return s_event_scratch(db, "security.rejected", eid, now);
}

//  "UDID:UserID" -> "UDID" (user channels); false if the eid has no parent part.
static bool s_parent_of(const char *eid, char *buf, size_t size)
{
    const char *colon = strchr(eid, ':');
    if (!colon || colon == eid || (size_t)(colon - eid) >= size)
        return false;
    memcpy(buf, eid, (size_t)(colon - eid));
    buf[colon - eid] = '\0';
    return true;
}

static bool s_is_user_kind(const char *kind)
{
    return kind && (strcmp(kind, "user") == 0 || strcmp(kind, "user-enrollment-user") == 0 ||
                    strcmp(kind, "shared-ipad-user") == 0);
}

//  Cancel every active queue entry of eid and its user channels (re-enrollment).
static int s_queue_clear(store_db_t *db, const char *eid, int64_t now)
{
    sqlite3_stmt *st = s_st(db, S_QUEUE_CLEAR);
    if (!st)
        return -1;
    s_bind_text(st, 1, eid);
    sqlite3_bind_int64(st, 2, now);
    //  collect first: the RETURNING rows must be read out before other statements run
    size_t n = 0, cap = 0;
    struct row {
        char *eid;
        int64_t cmd;
    } *rows = NULL;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            struct row *r = realloc(rows, cap * sizeof *r);
            if (!r)
                break;
            rows = r;
        }
        rows[n].eid = s_dup(s_col_text(st, 0));
        rows[n].cmd = sqlite3_column_int64(st, 1);
        n++;
    }
    sqlite3_reset(st);
    int ret = 0;
    if (rc != SQLITE_DONE) {
        s_dberr(db, "clearing a queue");
        ret = -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (ret == 0) {
            sqlite3_stmt *c = s_st(db, S_CMD_BY_ID);
            const char *uuid = NULL;
            if (c) {
                sqlite3_bind_int64(c, 1, rows[i].cmd);
                if (sqlite3_step(c) == SQLITE_ROW)
                    uuid = s_col_text(c, 0);
            }
            msgpack_packer *pk = s_ev_data(db, 2);
            store_pk_kstr(pk, "command_uuid", uuid);
            store_pk_kstr(pk, "reason", "re-enrollment (new Authenticate)");
            if (c)
                sqlite3_reset(c);
            if (s_event_scratch(db, "command.cancelled", rows[i].eid, now) < 0)
                ret = -1;
        }
        free(rows[i].eid);
    }
    free(rows);
    return ret;
}

static store_rc_t s_authenticate(store_db_t *db, const store_checkin_t *in, const s_enr_t *e,
                                 store_checkin_res_t *res)
{
    //  one identity certificate, one enrollment (its own user channels share it)
    if (in->cert_hash && in->cert_hash_len) {
        sqlite3_stmt *st = s_st(db, S_ENR_CERT_OTHER);
        if (!st)
            return STORE_ERR_DB;
        s_bind_blob(st, 1, in->cert_hash, in->cert_hash_len);
        s_bind_text(st, 2, in->eid);
        int rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc == SQLITE_ROW) {
            res->status = 400;
            snprintf(res->reason, sizeof res->reason,
                     "the identity certificate is already bound to another enrollment");
            return s_rejected(db, in->eid, in->message_type, res->reason, in->now_ms) < 0
                       ? STORE_ERR_DB
                       : STORE_OK;
        }
        if (rc != SQLITE_DONE)
            return s_dberr(db, "checking the certificate binding");
    }
    sqlite3_stmt *st;
    if (!e->found) {
        st = s_st(db, S_ENR_INSERT);
        if (!st)
            return STORE_ERR_DB;
        s_bind_text(st, 1, in->eid);
        s_bind_text(st, 2, in->kind);
        sqlite3_bind_null(st, 3);
        s_bind_text(st, 4, in->udid);
        s_bind_text(st, 5, in->serial);
        s_bind_text(st, 6, in->model);
        s_bind_text(st, 7, in->os_version);
        s_bind_text(st, 8, in->device_name);
        s_bind_blob(st, 9, in->cert_hash, in->cert_hash_len);
        s_bind_text(st, 10, in->cert_issuer);
        sqlite3_bind_int64(st, 11, in->now_ms);
        s_bind_blob(st, 12, in->body, in->body_len);
        if (s_exec(db, st, "creating an enrollment") < 0)
            return STORE_ERR_DB;
    } else {
        st = s_st(db, S_ENR_AUTH);
        if (!st)
            return STORE_ERR_DB;
        s_bind_text(st, 1, in->eid);
        s_bind_text(st, 2, in->kind);
        s_bind_text(st, 3, in->udid);
        s_bind_text(st, 4, in->serial);
        s_bind_text(st, 5, in->model);
        s_bind_text(st, 6, in->os_version);
        s_bind_text(st, 7, in->device_name);
        s_bind_blob(st, 8, in->cert_hash, in->cert_hash_len);
        s_bind_text(st, 9, in->cert_issuer);
        sqlite3_bind_int64(st, 10, in->now_ms);
        s_bind_blob(st, 11, in->body, in->body_len);
        if (s_exec(db, st, "updating an enrollment") < 0)
            return STORE_ERR_DB;
        st = s_st(db, S_ENR_AUTH_CHILDREN);
        if (!st)
            return STORE_ERR_DB;
        s_bind_text(st, 1, in->eid);
        s_bind_blob(st, 2, in->cert_hash, in->cert_hash_len);
        if (s_exec(db, st, "updating user channels") < 0)
            return STORE_ERR_DB;
        //  re-enrollment: the old queue belonged to the old enrollment
        if (s_queue_clear(db, in->eid, in->now_ms) < 0)
            return STORE_ERR_DB;
    }
    msgpack_packer *pk = s_ev_data(db, 5);
    store_pk_kstr(pk, "kind", in->kind);
    store_pk_kstr(pk, "udid", in->udid);
    store_pk_kstr(pk, "serial", in->serial);
    store_pk_kstr(pk, "model", in->model);
    store_pk_kbool(pk, "reenrolled", e->found);
    return s_event_scratch(db, "checkin.Authenticate", in->eid, in->now_ms) < 0 ? STORE_ERR_DB
                                                                                : STORE_OK;
}

static store_rc_t s_token_update(store_db_t *db, const store_checkin_t *in, s_enr_t *e)
{
    sqlite3_stmt *st = s_st(db, S_ENR_TOKEN);
    if (!st)
        return STORE_ERR_DB;
    s_bind_text(st, 1, in->eid);
    s_bind_blob(st, 2, in->token, in->token_len);
    s_bind_text(st, 3, in->push_magic);
    s_bind_text(st, 4, in->topic);
    s_bind_blob(st, 5, in->unlock_token, in->unlock_token_len);
    sqlite3_bind_int(st, 6, in->awaiting_configuration > 0);
    s_bind_blob(st, 7, in->body, in->body_len);
    sqlite3_bind_int64(st, 8, in->now_ms);
    if (s_exec(db, st, "storing a push token") < 0)
        return STORE_ERR_DB;
    msgpack_packer *pk = s_ev_data(db, 3);
    store_pk_kstr(pk, "kind", e->kind);
    store_pk_kbool(pk, "awaiting_configuration", in->awaiting_configuration > 0);
    store_pk_kbool(pk, "unlock_token", in->unlock_token_len > 0); //  whether, never the value
    return s_event_scratch(db, "checkin.TokenUpdate", in->eid, in->now_ms) < 0 ? STORE_ERR_DB
                                                                               : STORE_OK;
}

//  A TokenUpdate for an unknown user channel of a known device creates it.
static store_rc_t s_user_channel_create(store_db_t *db, const store_checkin_t *in, s_enr_t *e,
                                        store_checkin_res_t *res)
{
    char parent[256];
    s_enr_t p;
    memset(&p, 0, sizeof p);
    if (s_parent_of(in->eid, parent, sizeof parent) && s_enr_load(db, parent, &p, NULL) < 0)
        return STORE_ERR_DB;
    if (!p.found) {
        res->status = 400;
        snprintf(res->reason, sizeof res->reason,
                 "unknown user channel %.128s: its device is not enrolled", in->eid);
        return STORE_OK;
    }
    int cert = s_cert_check(db, &p, parent, in->cert_hash, in->cert_hash_len, in->cert_prev_hash,
                            in->cert_prev_hash_len, in->now_ms);
    if (cert < 0)
        return s_dberr(db, "re-binding a renewed certificate");
    if (!cert) {
        res->status = 400;
        snprintf(res->reason, sizeof res->reason,
                 "certificate is not the one bound to device %.128s", parent);
        return s_rejected(db, in->eid, in->message_type, res->reason, in->now_ms) < 0 ? STORE_ERR_DB
                                                                                      : STORE_OK;
    }
    sqlite3_stmt *st = s_st(db, S_ENR_INSERT);
    if (!st)
        return STORE_ERR_DB;
    s_bind_text(st, 1, in->eid);
    s_bind_text(st, 2, in->kind);
    s_bind_text(st, 3, parent);
    s_bind_text(st, 4, in->udid);
    s_bind_text(st, 5, in->serial);
    s_bind_text(st, 6, in->model);
    s_bind_text(st, 7, in->os_version);
    s_bind_text(st, 8, in->device_name);
    s_bind_blob(st, 9, p.cert_hash, p.cert_hash_len); //  the device's identity
    s_bind_text(st, 10, in->cert_issuer);
    sqlite3_bind_int64(st, 11, in->now_ms);
    sqlite3_bind_null(st, 12);
    if (s_exec(db, st, "creating a user channel") < 0)
        return STORE_ERR_DB;
    e->found = true;
    pm_str_copy(e->kind, sizeof e->kind, in->kind, PM_STR_ALL);
    return STORE_OK;
}

store_rc_t store_db_checkin(store_db_t *db, const store_checkin_t *in, store_checkin_res_t *res,
                            msgpack_sbuffer *body_out)
{
    memset(res, 0, sizeof *res);
    res->status = 200;
    db->errmsg[0] = '\0';
    if (!in->eid || !*in->eid || !in->kind || !in->message_type) {
        s_err(db, "checkin needs eid, kind and message_type");
        return STORE_ERR_BAD;
    }
    const char *mt = in->message_type;
    s_enr_t e;
    sqlite3_stmt *est = NULL;
    if (s_enr_load(db, in->eid, &e, &est) < 0)
        return STORE_ERR_DB;
    //  the bootstrap token is read before the statement is reused
    uint8_t *boot = NULL;
    int bootlen = 0;
    if (e.found && strcmp(mt, "GetBootstrapToken") == 0) {
        bootlen = sqlite3_column_bytes(est, 8);
        if (bootlen > 0 && (boot = malloc((size_t)bootlen)))
            memcpy(boot, sqlite3_column_blob(est, 8), (size_t)bootlen);
    }
    if (est)
        sqlite3_reset(est);
    store_rc_t rc = STORE_OK;
    int cert;

    if (strcmp(mt, "Authenticate") == 0) {
        rc = s_authenticate(db, in, &e, res);
        goto out;
    }
    if (strcmp(mt, "UserAuthenticate") == 0) {
        //  no directory-user channel support: 410 tells macOS not to retry
        res->status = 410;
        snprintf(res->reason, sizeof res->reason, "user channel authentication is not supported");
        goto event;
    }
    if (!e.found) {
        if (strcmp(mt, "TokenUpdate") == 0 && s_is_user_kind(in->kind)) {
            rc = s_user_channel_create(db, in, &e, res);
            if (rc != STORE_OK || res->status != 200)
                goto out;
        } else {
            res->status = 400;
            snprintf(res->reason, sizeof res->reason,
                     "unknown enrollment %.128s: the device must send Authenticate first", in->eid);
            rc = s_rejected(db, in->eid, mt, res->reason, in->now_ms) < 0 ? STORE_ERR_DB : STORE_OK;
            goto out;
        }
    } else if ((cert = s_cert_check(db, &e, in->eid, in->cert_hash, in->cert_hash_len,
                                    in->cert_prev_hash, in->cert_prev_hash_len, in->now_ms)) <= 0) {
        if (cert < 0) {
            rc = s_dberr(db, "re-binding a renewed certificate");
            goto out;
        }
        res->status = 400;
        snprintf(res->reason, sizeof res->reason,
                 "certificate is not the one bound to enrollment %.128s", in->eid);
        rc = s_rejected(db, in->eid, mt, res->reason, in->now_ms) < 0 ? STORE_ERR_DB : STORE_OK;
        goto out;
    }

    sqlite3_stmt *st;
    if (strcmp(mt, "TokenUpdate") == 0) {
        rc = s_token_update(db, in, &e);
        goto out;
    } else if (strcmp(mt, "CheckOut") == 0) {
        st = s_st(db, S_ENR_CHECKOUT);
        if (!st)
            return STORE_ERR_DB;
        s_bind_text(st, 1, in->eid);
        sqlite3_bind_int64(st, 2, in->now_ms);
        if (s_exec(db, st, "checking out") < 0) {
            rc = STORE_ERR_DB;
            goto out;
        }
    } else if (strcmp(mt, "SetBootstrapToken") == 0) {
        st = s_st(db, S_ENR_BOOTSTRAP);
        if (!st)
            return STORE_ERR_DB;
        s_bind_text(st, 1, in->eid);
        s_bind_blob(st, 2, in->bootstrap_token, in->bootstrap_token_len);
        sqlite3_bind_int64(st, 3, in->now_ms);
        if (s_exec(db, st, "escrowing a bootstrap token") < 0) {
            rc = STORE_ERR_DB;
            goto out;
        }
    } else {
        st = s_st(db, S_ENR_SEEN);
        if (!st)
            return STORE_ERR_DB;
        s_bind_text(st, 1, in->eid);
        sqlite3_bind_int64(st, 2, in->now_ms);
        if (s_exec(db, st, "updating last seen") < 0) {
            rc = STORE_ERR_DB;
            goto out;
        }
        if (strcmp(mt, "GetBootstrapToken") == 0) {
            //  reply {BootstrapToken: data}; an empty dict when none was escrowed
            msgpack_packer pk;
            msgpack_packer_init(&pk, body_out, msgpack_sbuffer_write);
            if (boot) {
                msgpack_pack_map(&pk, 1);
                store_pk_str(&pk, "BootstrapToken");
                msgpack_pack_bin(&pk, (size_t)bootlen);
                msgpack_pack_bin_body(&pk, boot, (size_t)bootlen);
            } else {
                msgpack_pack_map(&pk, 0);
            }
        } else if (strcmp(mt, "DeclarativeManagement") == 0 || strcmp(mt, "GetToken") == 0) {
            res->status = 404;
            snprintf(res->reason, sizeof res->reason, "%s is not configured on this server",
                     strcmp(mt, "GetToken") == 0 ? "no token service" : "declarative management");
        } else {
            res->status = 400;
            snprintf(res->reason, sizeof res->reason, "unknown MessageType %.64s", mt);
        }
    }
event:;
    char name[96];
    pm_str_join(name, sizeof name, "checkin", '.', mt);
    msgpack_packer *pk = s_ev_data(db, 2);
    store_pk_kstr(pk, "kind", in->kind);
    store_pk_kint(pk, "status", res->status);
    if (s_event_scratch(db, name, in->eid, in->now_ms) < 0)
        rc = STORE_ERR_DB;
out:
    free(boot);
    return rc;
}

/* ---- command loop ---- */

store_inv_t *store_db_inv(store_db_t *db)
{
    if (!db->inv)
        db->inv = store_inv_new(db);
    return db->inv;
}

static int s_inv_emit(void *arg, const char *name, const char *eid, const uint8_t *data, size_t len,
                      int64_t now)
{
    return s_event((store_db_t *)arg, name, eid, "store", data, len, now, NULL);
}

//  Apple Status -> queue status for a terminal answer; NULL if not terminal/unknown.
static const char *s_terminal_status(const char *status)
{
    if (strcmp(status, "Acknowledged") == 0)
        return "acknowledged";
    if (strcmp(status, "Error") == 0)
        return "error";
    if (strcmp(status, "CommandFormatError") == 0)
        return "format_error";
    return NULL;
}

static const char *s_uuid_of(store_db_t *db, int64_t cmd, char *buf, size_t size)
{
    sqlite3_stmt *c = s_st(db, S_CMD_BY_ID);
    buf[0] = '\0';
    if (!c)
        return buf;
    sqlite3_bind_int64(c, 1, cmd);
    if (sqlite3_step(c) == SQLITE_ROW)
        pm_str_copy(buf, size, s_col_text(c, 0), PM_STR_ALL);
    sqlite3_reset(c);
    return buf;
}

//  Run an UPDATE ... RETURNING cmd[, n] statement (already bound) and raise
//  event `name` for each row. Returns 0 / -1.
static int s_sweep(store_db_t *db, sqlite3_stmt *st, const char *eid, const char *name, int64_t now)
{
    struct row {
        int64_t cmd, n;
    } *rows = NULL;
    size_t n = 0, cap = 0;
    int rc, ret = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            struct row *r = realloc(rows, cap * sizeof *r);
            if (!r) {
                rc = SQLITE_NOMEM;
                break;
            }
            rows = r;
        }
        rows[n].cmd = sqlite3_column_int64(st, 0);
        rows[n].n = sqlite3_column_count(st) > 1 ? sqlite3_column_int64(st, 1) : 0;
        n++;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        s_dberr(db, "sweeping a queue");
        ret = -1;
    }
    for (size_t i = 0; ret == 0 && i < n; i++) {
        char uuid[128];
        s_uuid_of(db, rows[i].cmd, uuid, sizeof uuid);
        msgpack_packer *pk = s_ev_data(db, rows[i].n ? 2 : 1);
        store_pk_kstr(pk, "command_uuid", uuid);
        if (rows[i].n)
            store_pk_kint(pk, "deliveries", rows[i].n);
        if (s_event_scratch(db, name, eid, now) < 0)
            ret = -1;
    }
    free(rows);
    return ret;
}

//  What the per-connect pass over the device's active entries learned, for
//  s_next: how many are active (-1: not known) and whether one of them is
//  demoted by notnow-limit (answered NotNow that often).
typedef struct {
    int64_t active;
    bool demoted;
} s_due_t;

//  Expire entries past their expiry; fail entries delivered too often without
//  an answer (only when they would otherwise be offered again). One SELECT
//  over the device's active entries first: it is much cheaper than an UPDATE
//  that changes nothing (no statement journal), and the sweeps almost never
//  find anything. The same pass counts the active entries (*due).
static int s_sweeps(store_db_t *db, const char *eid, int64_t session, const store_policy_t *pol,
                    int64_t now, s_due_t *due)
{
    sqlite3_stmt *st = s_st(db, S_Q_SWEEP_ANY);
    if (!st)
        return -1;
    int limit = pol ? pol->redeliver_limit : 0;
    int64_t before = now - (pol ? pol->delivered_timeout_ms : 0);
    s_bind_text(st, 1, eid);
    sqlite3_bind_int64(st, 2, now);
    sqlite3_bind_int(st, 3, limit);
    sqlite3_bind_int64(st, 4, session);
    sqlite3_bind_int64(st, 5, before);
    sqlite3_bind_int(st, 6, pol ? pol->notnow_limit : 0);
    bool expire = false, fail = false;
    *due = (s_due_t){0, false};
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        expire = expire || sqlite3_column_int(st, 0) != 0;
        fail = fail || sqlite3_column_int(st, 1) != 0;
        due->demoted = due->demoted || sqlite3_column_int(st, 2) != 0;
        due->active++;
    }
    if (expire || fail) //  the sweeps below change the active set: not known any more
        *due = (s_due_t){-1, true};
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        s_dberr(db, "checking a queue");
        return -1;
    }
    if (expire) {
        st = s_st(db, S_Q_EXPIRE);
        if (!st)
            return -1;
        s_bind_text(st, 1, eid);
        sqlite3_bind_int64(st, 2, now);
        if (s_sweep(db, st, eid, "command.expired", now) < 0)
            return -1;
    }
    if (fail) { //  (an entry expired just now is no longer active: not failed too)
        st = s_st(db, S_Q_FAIL);
        if (!st)
            return -1;
        s_bind_text(st, 1, eid);
        sqlite3_bind_int64(st, 2, now);
        sqlite3_bind_int(st, 3, limit);
        sqlite3_bind_int64(st, 4, session);
        sqlite3_bind_int64(st, 5, before);
        if (s_sweep(db, st, eid, "command.failed", now) < 0)
            return -1;
    }
    return 0;
}

//  Record the device's answer for command_uuid; *due follows the entry when
//  it leaves the active set (or may become demoted). Returns 0 / -1.
static int s_record_answer(store_db_t *db, const store_connect_t *in, int64_t session, s_due_t *due)
{
    sqlite3_stmt *st = s_st(db, S_CMD_Q_GET);
    if (!st)
        return -1;
    s_bind_text(st, 1, in->command_uuid);
    s_bind_text(st, 2, in->eid);
    int64_t cmd = -1;
    char rtype[128] = "";
    bool active = false, known = false;
    int64_t result = -1; //  the entry's result (results.id), -1: none yet
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        cmd = sqlite3_column_int64(st, 0);
        pm_str_copy(rtype, sizeof rtype, s_col_text(st, 1), PM_STR_ALL);
        known = sqlite3_column_int(st, 2) != 0;
        active = known && sqlite3_column_int(st, 3) != 0;
        if (known && sqlite3_column_type(st, 4) != SQLITE_NULL)
            result = sqlite3_column_int64(st, 4);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        s_dberr(db, "looking up a command");
        return -1;
    }
    if (!known) {
        //  unknown, or another enrollment's command: note it, change nothing
        msgpack_packer *pk = s_ev_data(db, 3);
        store_pk_kstr(pk, "command_uuid", in->command_uuid);
        store_pk_kstr(pk, "status", in->status);
        store_pk_kstr(pk, "reason",
                      cmd >= 0 ? "command is not queued for this enrollment"
                               : "unknown CommandUUID");
        return s_event_scratch(db, "command.unknown", in->eid, in->now_ms);
    }
    bool replay = false;
    const char *term = s_terminal_status(in->status);
    if (!term) { //  NotNow
        if (active) {
            st = s_st(db, S_Q_NOTNOW);
            if (!st)
                return -1;
            s_bind_text(st, 1, in->eid);
            sqlite3_bind_int64(st, 2, cmd);
            sqlite3_bind_int64(st, 3, session);
            sqlite3_bind_int64(st, 4, in->now_ms);
            if (s_exec(db, st, "recording NotNow") < 0)
                return -1;
            due->demoted = true; //  it may have reached notnow-limit
        } else {
            replay = true;
        }
    } else {
        //  only a finished entry can have a result already (NotNow stores none):
        //  a replay updates it in place; a new result is appended and its entry
        //  points to it (schema 9)
        replay = !active && result >= 0;
        if (result >= 0) {
            st = s_st(db, S_RES_UPDATE);
            if (!st)
                return -1;
            sqlite3_bind_int64(st, 1, result);
            s_bind_text(st, 2, in->status);
            sqlite3_bind_int64(st, 3, in->now_ms);
            s_bind_blob(st, 4, in->body, in->body_len);
            if (s_exec(db, st, "storing a result") < 0)
                return -1;
        } else {
            st = s_st(db, S_RES_INSERT);
            if (!st)
                return -1;
            s_bind_text(st, 1, in->eid);
            sqlite3_bind_int64(st, 2, cmd);
            s_bind_text(st, 3, in->status);
            sqlite3_bind_int64(st, 4, in->now_ms);
            s_bind_blob(st, 5, in->body, in->body_len);
            if (s_exec(db, st, "storing a result") < 0)
                return -1;
            result = sqlite3_last_insert_rowid(db->sql);
        }
        if (active || !replay) {
            st = s_st(db, S_Q_FINISH);
            if (!st)
                return -1;
            s_bind_text(st, 1, in->eid);
            sqlite3_bind_int64(st, 2, cmd);
            sqlite3_bind_int64(st, 3, result);
            s_bind_text(st, 4, term);
            sqlite3_bind_int64(st, 5, in->now_ms);
            if (s_exec(db, st, "finishing a queue entry") < 0)
                return -1;
            if (active && due->active > 0)
                due->active--; //  it left the active set
        }
        //  the answer becomes inventory, in this same transaction (store_inv.h)
        if (!replay && strcmp(in->status, "Acknowledged") == 0) {
            store_inv_t *inv = store_db_inv(db);
            if (!inv || store_inv_ingest(inv, in->eid, rtype, in->command_uuid, in->body,
                                         in->body_len, in->now_ms, s_inv_emit, db) < 0) {
                s_err(db, "%s", inv ? store_inv_errmsg(inv) : "out of memory (inventory)");
                return -1;
            }
        }
    }
    msgpack_packer *pk = s_ev_data(db, replay ? 4 : 3);
    store_pk_kstr(pk, "command_uuid", in->command_uuid);
    store_pk_kstr(pk, "request_type", rtype);
    store_pk_kstr(pk, "status", in->status);
    if (replay)
        store_pk_kbool(pk, "replay", true);
    return s_event_scratch(db, "command.result", in->eid, in->now_ms);
}

//  Pack the device's view of a command from a row whose columns `col` ..
//  `col` + 2 are its uuid, RequestType and body: {CommandUUID, Command}. The
//  uuid and RequestType are copied out when buffers are given.
static void s_pack_row(sqlite3_stmt *st, int col, msgpack_sbuffer *out, char *uuid, size_t usize,
                       char *rtype, size_t rsize)
{
    if (uuid)
        pm_str_copy(uuid, usize, s_col_text(st, col), PM_STR_ALL);
    if (rtype)
        pm_str_copy(rtype, rsize, s_col_text(st, col + 1), PM_STR_ALL);
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    store_pk_kstr(&pk, "CommandUUID", s_col_text(st, col));
    store_pk_str(&pk, "Command");
    msgpack_sbuffer_write(out, sqlite3_column_blob(st, col + 2),
                          (size_t)sqlite3_column_bytes(st, col + 2));
}

//  Pack the device's view of command `cmd` (s_pack_row). 0 / -1.
static int s_pack_command(store_db_t *db, int64_t cmd, msgpack_sbuffer *out)
{
    sqlite3_stmt *st = s_st(db, S_CMD_BY_ID);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, cmd);
    if (sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_reset(st);
        s_dberr(db, "reading a queued command");
        return -1;
    }
    s_pack_row(st, 0, out, NULL, 0, NULL, 0);
    sqlite3_reset(st);
    return 0;
}

//  Pick the next command and mark it delivered; packs {CommandUUID, Command}.
//  No active entry left (*due): nothing to pick, no statement run.
static int s_next(store_db_t *db, const store_connect_t *in, int64_t session, msgpack_sbuffer *out,
                  int64_t *delivered, const s_due_t *due)
{
    const store_policy_t *pol = in->policy;
    if (due->active == 0)
        return 0;
    sqlite3_stmt *st = s_st(db, S_Q_NEXT);
    if (!st)
        return -1;
    s_bind_text(st, 1, in->eid);
    sqlite3_bind_int64(st, 2, session);
    sqlite3_bind_int64(st, 3, in->now_ms - (pol ? pol->delivered_timeout_ms : 0));
    sqlite3_bind_int(st, 4, pol ? pol->notnow_limit : 0);
    //  two passes, each in the order of the queue_active index (a sort over an
    //  expression would read the whole queue): first the entries that are not
    //  demoted by notnow-limit, then the demoted ones
    sqlite3_bind_int(st, 5, 0);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE && pol && pol->notnow_limit > 0 && due->demoted) {
        sqlite3_reset(st);
        sqlite3_bind_int(st, 5, 1);
        rc = sqlite3_step(st);
    }
    if (rc == SQLITE_DONE) {
        sqlite3_reset(st);
        return 0;
    }
    if (rc != SQLITE_ROW) {
        s_dberr(db, "choosing the next command");
        return -1;
    }
    int64_t cmd = sqlite3_column_int64(st, 0);
    int64_t deliveries = sqlite3_column_int64(st, 1) + 1;
    //  packed now, before the reset: the row is gone after it
    char uuid[128], rtype[128];
    size_t mark = out->size;
    s_pack_row(st, 2, out, uuid, sizeof uuid, rtype, sizeof rtype);
    sqlite3_reset(st);

    st = s_st(db, S_Q_DELIVER);
    if (!st)
        return -1;
    s_bind_text(st, 1, in->eid);
    sqlite3_bind_int64(st, 2, cmd);
    sqlite3_bind_int64(st, 3, in->now_ms);
    sqlite3_bind_int64(st, 4, session);
    if (s_exec(db, st, "marking a command delivered") < 0) {
        out->size = mark; //  nothing delivered: nothing offered
        return -1;
    }
    *delivered = cmd;

    msgpack_packer *ep = s_ev_data(db, 3);
    store_pk_kstr(ep, "command_uuid", uuid);
    store_pk_kstr(ep, "request_type", rtype);
    store_pk_kint(ep, "delivery", deliveries);
    return s_event_scratch(db, "command.delivered", in->eid, in->now_ms);
}

store_rc_t store_db_connect(store_db_t *db, const store_connect_t *in, store_connect_res_t *res,
                            msgpack_sbuffer *command_out)
{
    memset(res, 0, sizeof *res);
    res->status = 200;
    db->errmsg[0] = '\0';
    if (!in->eid || !*in->eid || !in->status) {
        s_err(db, "connect needs eid and status");
        return STORE_ERR_BAD;
    }
    bool idle = strcmp(in->status, "Idle") == 0;
    if (!idle && strcmp(in->status, "NotNow") != 0 && !s_terminal_status(in->status)) {
        res->status = 400;
        snprintf(res->reason, sizeof res->reason,
                 "unknown Status %.64s (expected Idle, Acknowledged, Error, CommandFormatError "
                 "or NotNow)",
                 in->status);
        return STORE_OK;
    }
    if (!idle && (!in->command_uuid || !*in->command_uuid)) {
        res->status = 400;
        snprintf(res->reason, sizeof res->reason, "Status %.64s without a CommandUUID", in->status);
        return STORE_OK;
    }
    s_enr_t e;
    sqlite3_stmt *est = NULL;
    if (s_enr_load(db, in->eid, &e, &est) < 0)
        return STORE_ERR_DB;
    if (!e.found) {
        res->status = 400;
        snprintf(res->reason, sizeof res->reason,
                 "unknown enrollment %.128s: the device must enroll (Authenticate) first", in->eid);
        return s_rejected(db, in->eid, "connect", res->reason, in->now_ms) < 0 ? STORE_ERR_DB
                                                                               : STORE_OK;
    }
    //  a repeat of the request we answered last gets the same answer (a retry
    //  that crossed a scheduler or store restart)
    if (in->rid && *in->rid && s_col_text(est, 4) && strcmp(s_col_text(est, 4), in->rid) == 0) {
        res->status = (unsigned)sqlite3_column_int(est, 5);
        bool had = sqlite3_column_type(est, 6) != SQLITE_NULL;
        int64_t last = sqlite3_column_int64(est, 6);
        sqlite3_reset(est);
        if (had && s_pack_command(db, last, command_out) < 0)
            return STORE_ERR_DB;
        return STORE_OK;
    }
    sqlite3_reset(est);
    int cert = s_cert_check(db, &e, in->eid, in->cert_hash, in->cert_hash_len, in->cert_prev_hash,
                            in->cert_prev_hash_len, in->now_ms);
    if (cert < 0)
        return s_dberr(db, "re-binding a renewed certificate");
    if (!cert) {
        res->status = 400;
        snprintf(res->reason, sizeof res->reason,
                 "certificate is not the one bound to enrollment %.128s", in->eid);
        return s_rejected(db, in->eid, "connect", res->reason, in->now_ms) < 0 ? STORE_ERR_DB
                                                                               : STORE_OK;
    }
    if (!e.enrolled) {
        res->status = 400;
        snprintf(res->reason, sizeof res->reason,
                 "enrollment %.128s is not active (checked out, or no TokenUpdate yet)", in->eid);
        return STORE_OK;
    }
    //  Idle opens a new session: NotNow'd and unanswered commands of earlier
    //  sessions become eligible again
    int64_t session = e.session + (idle ? 1 : 0);
    s_due_t due;
    if (s_sweeps(db, in->eid, session, in->policy, in->now_ms, &due) < 0)
        return STORE_ERR_DB;
    if (!idle && s_record_answer(db, in, session, &due) < 0)
        return STORE_ERR_DB;
    int64_t delivered = -1;
    if (s_next(db, in, session, command_out, &delivered, &due) < 0)
        return STORE_ERR_DB;
    //  the row exists once it connected: a plain UPDATE, not the upsert's
    //  insert attempt, conflict and update. An UPDATE that found no row
    //  (nothing deletes sessions rows today) falls back to the upsert, so
    //  last_rid is always written (a retried request's answer depends on it).
    sqlite3_stmt *st = NULL;
    for (bool upsert = !e.has_session;; upsert = true) {
        st = s_st(db, upsert ? S_ENR_CONNECTED : S_SES_UPDATE);
        if (!st)
            return STORE_ERR_DB;
        s_bind_text(st, 1, in->eid);
        sqlite3_bind_int64(st, 2, session);
        sqlite3_bind_int64(st, 3, in->now_ms);
        s_bind_text(st, 4, in->rid && *in->rid ? in->rid : NULL);
        sqlite3_bind_int(st, 5, (int)res->status);
        if (delivered >= 0)
            sqlite3_bind_int64(st, 6, delivered);
        else
            sqlite3_bind_null(st, 6);
        if (s_exec(db, st, "updating the session") < 0)
            return STORE_ERR_DB;
        if (upsert || sqlite3_changes(db->sql) > 0)
            break;
    }
    //  it connected: no wakeup needed any more
    st = s_st(db, S_WAKE_DONE);
    if (!st)
        return STORE_ERR_DB;
    s_bind_text(st, 1, in->eid);
    if (s_exec(db, st, "clearing a wake mark") < 0)
        return STORE_ERR_DB;
    return STORE_OK;
}

/* ---- operator ---- */

store_rc_t store_db_enqueue(store_db_t *db, const store_enqueue_t *in, char *uuid_out,
                            size_t uuid_size, uint64_t *queued)
{
    db->errmsg[0] = '\0';
    *queued = 0;
    if (uuid_size)
        uuid_out[0] = '\0';
    if (!in->command_uuid || !*in->command_uuid || !in->request_type || !*in->request_type ||
        !in->command || !in->command_len) {
        s_err(db, "enqueue needs a command with a RequestType");
        return STORE_ERR_BAD;
    }
    if (!in->ntargets) {
        s_err(db, "no targets: give at least one enrollment id (see `picomdm devices`)");
        return STORE_ERR_BAD;
    }
    sqlite3_stmt *st;
    if (in->rid && *in->rid) { //  a retried request: the first answer again
        st = s_st(db, S_CMD_BY_RID);
        if (!st)
            return STORE_ERR_DB;
        s_bind_text(st, 1, in->rid);
        if (sqlite3_step(st) == SQLITE_ROW) {
            pm_str_copy(uuid_out, uuid_size, s_col_text(st, 0), PM_STR_ALL);
            *queued = (uint64_t)sqlite3_column_int64(st, 1);
            sqlite3_reset(st);
            return STORE_OK;
        }
        sqlite3_reset(st);
    }
    st = s_st(db, S_CMD_BY_UUID);
    if (!st)
        return STORE_ERR_DB;
    s_bind_text(st, 1, in->command_uuid);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_ROW) {
        s_err(db,
              "CommandUUID %s is already used by another command: choose another one or "
              "leave command_uuid out to get a fresh one",
              in->command_uuid);
        return STORE_ERR_CONFLICT;
    }
    st = s_st(db, S_CMD_INSERT);
    if (!st)
        return STORE_ERR_DB;
    s_bind_text(st, 1, in->command_uuid);
    s_bind_text(st, 2, in->request_type);
    s_bind_blob(st, 3, in->command, in->command_len);
    sqlite3_bind_int64(st, 4, in->priority);
    sqlite3_bind_int64(st, 5, in->now_ms);
    if (in->expires_ms > 0)
        sqlite3_bind_int64(st, 6, in->expires_ms);
    else
        sqlite3_bind_null(st, 6);
    s_bind_text(st, 7, in->rid && *in->rid ? in->rid : NULL);
    if (s_exec(db, st, "storing a command") < 0)
        return STORE_ERR_DB;
    int64_t cmd = sqlite3_last_insert_rowid(db->sql);

    //  one pass: check each target exists, queue it, mark it for a wakeup
    size_t nunknown = 0;
    size_t ulen = 0;
    char unknown[400] = "";
    sqlite3_stmt *exists = s_st(db, S_ENR_EXISTS);
    sqlite3_stmt *wake = s_st(db, S_ENR_WAKE);
    sqlite3_stmt *ins = s_st(db, S_Q_INSERT);
    if (!exists || !wake || !ins)
        return STORE_ERR_DB;
    for (size_t i = 0; i < in->ntargets; i++) {
        const char *t = in->targets[i];
        sqlite3_reset(exists);
        s_bind_text(exists, 1, t);
        int rc1 = sqlite3_step(exists);
        sqlite3_reset(exists);
        if (rc1 != SQLITE_ROW && rc1 != SQLITE_DONE)
            return s_dberr(db, "checking targets");
        if (rc1 == SQLITE_DONE) {
            if (nunknown < 10 && ulen + strlen(t) + 3 < sizeof unknown) {
                int w = snprintf(unknown + ulen, sizeof unknown - ulen, "%s%s",
                                 nunknown ? ", " : "", t);
                if (w > 0)
                    ulen += (size_t)w;
            }
            nunknown++;
            continue;
        }
        if (nunknown)
            continue;
        sqlite3_reset(ins);
        s_bind_text(ins, 1, t);
        sqlite3_bind_int64(ins, 2, cmd);
        sqlite3_bind_int64(ins, 3, in->priority);
        if (in->expires_ms > 0)
            sqlite3_bind_int64(ins, 4, in->expires_ms);
        else
            sqlite3_bind_null(ins, 4);
        sqlite3_bind_int64(ins, 5, in->now_ms);
        if (sqlite3_step(ins) != SQLITE_DONE) {
            sqlite3_reset(ins);
            return s_dberr(db, "queuing a command");
        }
        *queued += (uint64_t)sqlite3_changes(db->sql);
        if (!in->no_push) {
            sqlite3_reset(wake);
            s_bind_text(wake, 1, t);
            if (sqlite3_step(wake) != SQLITE_DONE) {
                sqlite3_reset(wake);
                return s_dberr(db, "marking a wakeup");
            }
        }
    }
    sqlite3_reset(wake);
    sqlite3_reset(ins);
    if (nunknown) {
        *queued = 0;
        s_err(db,
              "unknown enrollment ids: %s%s (%zu unknown of %zu; nothing was queued) — list "
              "them with `picomdm devices`",
              unknown, nunknown > 10 ? ", ..." : "", nunknown, in->ntargets);
        return STORE_ERR_NOTFOUND;
    }
    st = s_st(db, S_CMD_TARGETS);
    if (!st)
        return STORE_ERR_DB;
    sqlite3_bind_int64(st, 1, cmd);
    sqlite3_bind_int64(st, 2, (int64_t)*queued);
    if (s_exec(db, st, "counting targets") < 0)
        return STORE_ERR_DB;

    //  one event per enqueue (it lists the targets)
    msgpack_packer *pk = s_ev_data(db, 6);
    store_pk_kstr(pk, "command_uuid", in->command_uuid);
    store_pk_kstr(pk, "request_type", in->request_type);
    store_pk_kint(pk, "priority", in->priority);
    store_pk_kint(pk, "expires", in->expires_ms);
    store_pk_kint(pk, "targets", (int64_t)*queued);
    store_pk_str(pk, "eids");
    msgpack_pack_array(pk, in->ntargets);
    for (size_t i = 0; i < in->ntargets; i++)
        store_pk_str(pk, in->targets[i]);
    if (s_event_scratch(db, "command.queued", in->ntargets == 1 ? in->targets[0] : NULL,
                        in->now_ms) < 0)
        return STORE_ERR_DB;
    pm_str_copy(uuid_out, uuid_size, in->command_uuid, PM_STR_ALL);
    return STORE_OK;
}

store_rc_t store_db_cancel(store_db_t *db, const char *command_uuid, const char *const *targets,
                           size_t ntargets, int64_t now_ms, uint64_t *cancelled)
{
    db->errmsg[0] = '\0';
    *cancelled = 0;
    if (!command_uuid || !*command_uuid) {
        s_err(db, "cancel needs a command_uuid");
        return STORE_ERR_BAD;
    }
    sqlite3_stmt *st = s_st(db, S_CMD_BY_UUID);
    if (!st)
        return STORE_ERR_DB;
    s_bind_text(st, 1, command_uuid);
    int64_t cmd = -1;
    if (sqlite3_step(st) == SQLITE_ROW)
        cmd = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    if (cmd < 0) {
        s_err(db, "unknown CommandUUID %s — see `picomdm queue <eid>` for queued commands",
              command_uuid);
        return STORE_ERR_NOTFOUND;
    }
    msgpack_sbuffer eids;
    msgpack_sbuffer_init(&eids);
    msgpack_packer epk;
    msgpack_packer_init(&epk, &eids, msgpack_sbuffer_write);
    if (ntargets) {
        st = s_st(db, S_Q_CANCEL_ONE);
        if (!st)
            goto dberr;
        for (size_t i = 0; i < ntargets; i++) {
            sqlite3_reset(st);
            s_bind_text(st, 1, targets[i]);
            sqlite3_bind_int64(st, 2, cmd);
            sqlite3_bind_int64(st, 3, now_ms);
            if (sqlite3_step(st) != SQLITE_DONE) {
                sqlite3_reset(st);
                s_dberr(db, "cancelling");
                goto dberr;
            }
            if (sqlite3_changes(db->sql) > 0) {
                (*cancelled)++;
                store_pk_str(&epk, targets[i]);
            }
        }
        sqlite3_reset(st);
    } else {
        st = s_st(db, S_Q_CANCEL_ALL);
        if (!st)
            goto dberr;
        sqlite3_bind_int64(st, 1, cmd);
        sqlite3_bind_int64(st, 2, now_ms);
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            (*cancelled)++;
            store_pk_str(&epk, s_col_text(st, 0));
        }
        sqlite3_reset(st);
        if (rc != SQLITE_DONE) {
            s_dberr(db, "cancelling");
            goto dberr;
        }
    }
    msgpack_packer *pk = s_ev_data(db, 3);
    store_pk_kstr(pk, "command_uuid", command_uuid);
    store_pk_kint(pk, "cancelled", (int64_t)*cancelled);
    store_pk_str(pk, "eids");
    msgpack_pack_array(pk, (size_t)*cancelled);
    msgpack_sbuffer_write(&db->scratch, eids.data, eids.size);
    msgpack_sbuffer_destroy(&eids);
    return s_event_scratch(db, "command.cancelled", NULL, now_ms) < 0 ? STORE_ERR_DB : STORE_OK;
dberr:
    msgpack_sbuffer_destroy(&eids);
    return STORE_ERR_DB;
}

//  Pack the rows of `st` (already bound) as an array, each row packed by fn.
typedef void(s_row_fn)(msgpack_packer *pk, sqlite3_stmt *st);
static store_rc_t s_list(store_db_t *db, sqlite3_stmt *st, s_row_fn *fn, msgpack_sbuffer *out,
                         const char *what)
{
    msgpack_sbuffer items;
    msgpack_sbuffer_init(&items);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &items, msgpack_sbuffer_write);
    size_t n = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        fn(&pk, st);
        n++;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        msgpack_sbuffer_destroy(&items);
        return s_dberr(db, what);
    }
    msgpack_packer opk;
    msgpack_packer_init(&opk, out, msgpack_sbuffer_write);
    msgpack_pack_array(&opk, n);
    msgpack_sbuffer_write(out, items.data, items.size);
    msgpack_sbuffer_destroy(&items);
    return STORE_OK;
}

static void s_row_queue(msgpack_packer *pk, sqlite3_stmt *st)
{
    msgpack_pack_map(pk, 9);
    store_pk_kcol(pk, "command_uuid", st, 0);
    store_pk_kcol(pk, "request_type", st, 1);
    store_pk_kcol(pk, "status", st, 2);
    store_pk_kcol(pk, "priority", st, 3);
    store_pk_kcol(pk, "created", st, 4);
    store_pk_kcol(pk, "delivered", st, 5);
    store_pk_kcol(pk, "notnow_count", st, 6);
    store_pk_kcol(pk, "deliveries", st, 7);
    store_pk_kcol(pk, "expires", st, 8);
}

store_rc_t store_db_queue(store_db_t *db, const char *eid, bool all, const store_policy_t *policy,
                          int64_t now_ms, msgpack_sbuffer *out)
{
    db->errmsg[0] = '\0';
    s_enr_t e;
    if (!eid) {
        s_err(db, "queue needs an enrollment id");
        return STORE_ERR_BAD;
    }
    if (s_enr_load(db, eid, &e, NULL) < 0)
        return STORE_ERR_DB;
    if (!e.found) {
        s_err(db, "unknown enrollment id %s — list them with `picomdm devices`", eid);
        return STORE_ERR_NOTFOUND;
    }
    //  show what a device would see: expired entries are expired now
    sqlite3_stmt *st = s_st(db, S_Q_EXPIRE);
    if (!st)
        return STORE_ERR_DB;
    s_bind_text(st, 1, eid);
    sqlite3_bind_int64(st, 2, now_ms);
    if (s_sweep(db, st, eid, "command.expired", now_ms) < 0)
        return STORE_ERR_DB;
    st = s_st(db, S_Q_LIST);
    if (!st)
        return STORE_ERR_DB;
    s_bind_text(st, 1, eid);
    sqlite3_bind_int(st, 2, all);
    sqlite3_bind_int(st, 3, policy ? policy->notnow_limit : 0);
    return s_list(db, st, s_row_queue, out, "listing a queue");
}

static void s_row_result(msgpack_packer *pk, sqlite3_stmt *st)
{
    msgpack_pack_map(pk, 6);
    store_pk_kcol(pk, "eid", st, 0);
    store_pk_kcol(pk, "command_uuid", st, 1);
    store_pk_kcol(pk, "request_type", st, 2);
    store_pk_kcol(pk, "status", st, 3);
    store_pk_kcol(pk, "received", st, 4);
    store_pk_str(pk, "body");
    int n = sqlite3_column_bytes(st, 5);
    if (n > 0)
        msgpack_sbuffer_write((msgpack_sbuffer *)pk->data, sqlite3_column_blob(st, 5), (size_t)n);
    else
        msgpack_pack_map(pk, 0);
}

store_rc_t store_db_results(store_db_t *db, const char *eid, const char *command_uuid,
                            unsigned limit, msgpack_sbuffer *out)
{
    db->errmsg[0] = '\0';
    int id = eid && command_uuid ? S_RES_BY_BOTH
             : eid               ? S_RES_BY_EID
             : command_uuid      ? S_RES_BY_CMD
                                 : S_RES_ALL;
    sqlite3_stmt *st = s_st(db, id);
    if (!st)
        return STORE_ERR_DB;
    if (eid)
        s_bind_text(st, 1, eid);
    if (command_uuid)
        s_bind_text(st, 2, command_uuid);
    sqlite3_bind_int(st, 3, limit ? (int)limit : 100);
    return s_list(db, st, s_row_result, out, "listing results");
}

static void s_row_device(msgpack_packer *pk, sqlite3_stmt *st)
{
    msgpack_pack_map(pk, 13);
    store_pk_kcol(pk, "eid", st, 0);
    store_pk_kcol(pk, "kind", st, 1);
    store_pk_kcol(pk, "udid", st, 2);
    store_pk_kcol(pk, "serial", st, 3);
    store_pk_kcol(pk, "model", st, 4);
    store_pk_kcol(pk, "os_version", st, 5);
    store_pk_kcol(pk, "topic", st, 6);
    store_pk_kbool(pk, "enrolled", sqlite3_column_int(st, 7) != 0);
    store_pk_kbool(pk, "pushable", sqlite3_column_int(st, 8) != 0);
    store_pk_kcol(pk, "first_seen", st, 9);
    store_pk_kcol(pk, "last_seen", st, 10);
    store_pk_kcol(pk, "queued", st, 11);
    store_pk_kbool(pk, "wake_pending", sqlite3_column_int(st, 12) != 0);
}

store_rc_t store_db_devices(store_db_t *db, const char *after, unsigned limit, msgpack_sbuffer *out)
{
    db->errmsg[0] = '\0';
    sqlite3_stmt *st = s_st(db, S_DEVICES);
    if (!st)
        return STORE_ERR_DB;
    s_bind_text(st, 1, after ? after : "");
    sqlite3_bind_int(st, 2, limit ? (int)limit : 1000);
    return s_list(db, st, s_row_device, out, "listing enrollments");
}

store_rc_t store_db_event_append(store_db_t *db, const char *name, const char *eid,
                                 const char *source, const uint8_t *data, size_t len,
                                 int64_t now_ms, uint64_t *seq)
{
    db->errmsg[0] = '\0';
    if (!name || !*name) {
        s_err(db, "an event needs a name");
        return STORE_ERR_BAD;
    }
    return s_event(db, name, eid, source, data, len, now_ms, seq) < 0 ? STORE_ERR_DB : STORE_OK;
}

static void s_row_event(msgpack_packer *pk, sqlite3_stmt *st)
{
    msgpack_pack_map(pk, 6);
    store_pk_kcol(pk, "seq", st, 0);
    store_pk_kcol(pk, "ts", st, 1);
    store_pk_kcol(pk, "name", st, 2);
    store_pk_kcol(pk, "eid", st, 3);
    store_pk_kcol(pk, "source", st, 4);
    store_pk_str(pk, "data");
    int n = sqlite3_column_bytes(st, 5);
    if (n > 0)
        msgpack_sbuffer_write((msgpack_sbuffer *)pk->data, sqlite3_column_blob(st, 5), (size_t)n);
    else
        msgpack_pack_map(pk, 0);
}

store_rc_t store_db_events(store_db_t *db, uint64_t after, unsigned limit, msgpack_sbuffer *out)
{
    db->errmsg[0] = '\0';
    sqlite3_stmt *st = s_st(db, S_EVENTS);
    if (!st)
        return STORE_ERR_DB;
    sqlite3_bind_int64(st, 1, (int64_t)after);
    sqlite3_bind_int(st, 2, limit ? (int)limit : 1000);
    return s_list(db, st, s_row_event, out, "listing events");
}

static void s_row_eid(msgpack_packer *pk, sqlite3_stmt *st)
{
    store_pk_str(pk, s_col_text(st, 0));
}

store_rc_t store_db_silent(store_db_t *db, unsigned limit, int64_t before_ms, msgpack_sbuffer *out)
{
    db->errmsg[0] = '\0';
    sqlite3_stmt *st = s_st(db, S_SILENT_LIST);
    if (!st)
        return STORE_ERR_DB;
    sqlite3_bind_int(st, 1, limit ? (int)limit : 1000);
    sqlite3_bind_int64(st, 2, before_ms);
    return s_list(db, st, s_row_eid, out, "listing silent enrollments");
}

store_rc_t store_db_wake_pending(store_db_t *db, unsigned limit, bool clear, msgpack_sbuffer *out)
{
    db->errmsg[0] = '\0';
    sqlite3_stmt *st = s_st(db, S_WAKE_LIST);
    if (!st)
        return STORE_ERR_DB;
    sqlite3_bind_int(st, 1, limit ? (int)limit : 1000);
    store_rc_t rc = s_list(db, st, s_row_eid, out, "listing wakeups");
    if (rc != STORE_OK || !clear)
        return rc;
    //  clear the marks of exactly the listed eids
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    if (msgpack_unpack_next(&u, out->data, out->size, NULL) == MSGPACK_UNPACK_SUCCESS &&
        u.data.type == MSGPACK_OBJECT_ARRAY) {
        sqlite3_stmt *c = s_st(db, S_WAKE_CLEAR);
        for (uint32_t i = 0; c && i < u.data.via.array.size; i++) {
            const msgpack_object *o = &u.data.via.array.ptr[i];
            if (o->type != MSGPACK_OBJECT_STR)
                continue;
            sqlite3_reset(c);
            sqlite3_bind_text(c, 1, o->via.str.ptr, (int)o->via.str.size, SQLITE_STATIC);
            if (sqlite3_step(c) != SQLITE_DONE) {
                rc = s_dberr(db, "clearing wakeups");
                break;
            }
        }
        if (c)
            sqlite3_reset(c);
    }
    msgpack_unpacked_destroy(&u);
    return rc;
}
