/*  store_db — the storage interface of the store process (bin/picomdm-store).
 *
 *  The store is the only owner of persistent state. Everything it keeps sits
 *  behind this one header: enrollments, commands, the per-enrollment queue,
 *  results and the sequenced event log. store_db.c implements it on SQLite
 *  (WAL); a PostgreSQL backend implements the same functions and no caller
 *  changes.
 *
 *  Every operation (store_db_checkin, store_db_connect, ...) is one decision:
 *  it reads and writes inside the transaction the caller opened, so two
 *  schedulers asking at once are serialised by the store and never see a
 *  half-made decision. The queue rules themselves are documented in
 *  docs/queue.md; each rule is implemented here as the SQL of one operation
 *  and the scheduler supplies the policy numbers (store_policy_t).
 *
 *  Transactions and group commit:
 *      store_db_begin(db);
 *      for each waiting request:
 *          store_db_op_begin(db);          //  a savepoint
 *          rc = store_db_connect(db, ...);
 *          store_db_op_end(db, rc >= 0);   //  release, or roll back this one op only
 *      store_db_commit(db);                //  then reply to every request
 *      store_db_events_flush(db, fn, arg); //  then publish the events, with their seq
 *
 *  Events: each operation appends its events to the event log inside the
 *  transaction and keeps a copy in memory; store_db_events_flush hands those
 *  copies out after a commit (store_db_rollback discards them).
 *
 *  Bodies (check-in plists, command dicts, results) are stored as the msgpack
 *  bytes they arrived as. Lists for the operator (queue, results, devices,
 *  events) are written as one packed msgpack array into a caller-owned
 *  msgpack_sbuffer. Times are milliseconds since the Unix epoch.
 *
 *  Ownership: the caller owns every input and every msgpack_sbuffer; the
 *  functions never keep pointers to inputs after they return.
 */
#ifndef STORE_DB_H
#define STORE_DB_H

#include "store_ckpt.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct store_db store_db_t;

//  Result of an operation. Negative values are failures; the text for the
//  operator is in store_db_errmsg(db).
typedef enum {
    STORE_OK = 0,
    STORE_ERR_DB = -1,       //  the database failed (I/O, full disk, corruption)
    STORE_ERR_BAD = -2,      //  the request is malformed
    STORE_ERR_NOTFOUND = -3, //  an enrollment or command that does not exist
    STORE_ERR_CONFLICT = -4  //  e.g. a CommandUUID already used by another request
} store_rc_t;

typedef struct {
    bool sync_full; //  PRAGMA synchronous=FULL (true, default) or NORMAL (see docs/queue.md)
    int busy_ms;    //  busy timeout when another process holds the database (0 = 5000)
    int wal_autocheckpoint; //  WAL pages between checkpoints (0 = STORE_WAL_AUTOCHECKPOINT)
    //  Checkpoints in a thread of their own (store_ckpt.h), off the commit
    //  path; false: in the commit that crosses wal_autocheckpoint (SQLite's
    //  way). Ignored for ":memory:".
    bool checkpoint_thread;
    int checkpoint_idle_ms; //  thread: copy what is left after this long without a commit
                            //  (0 = STORE_CHECKPOINT_IDLE_MS)
    //  bytes per page of a database created now (0: SQLite's 4,096); an existing
    //  database keeps its own (for measurements: 2,048 made no difference,
    //  docs/queue.md "Session 5")
    int page_size;
    //  SQLite's two writes per WAL page, not one per commit (store_walbuf.h);
    //  for comparison. The gathering is used with sync_full only.
    bool wal_unbuffered;
} store_db_opts_t;

#define STORE_CHECKPOINT_IDLE_MS 1000

//  Default checkpoint interval in WAL pages (4 KiB each): a checkpoint copies
//  every page changed since the last one into the database and syncs it
//  twice, so a longer interval copies a page changed by many requests once
//  (SQLite's default is 1,000; docs/queue.md, "Durability and cost").
#define STORE_WAL_AUTOCHECKPOINT 4096

//  Queue policy, chosen by the scheduler (its options) and sent with each request.
typedef struct {
    int notnow_limit;    //  after this many NotNow a command goes behind the others (0 = never)
    int redeliver_limit; //  delivered this many times without an answer -> failed (0 = never)
    int64_t delivered_timeout_ms; //  an unanswered delivery may be re-offered in a later session
                                  //  only this long after it was delivered
} store_policy_t;

#define STORE_SCHEMA_VERSION 9

//  For the migration tests only: turns a schema-9 database back into the
//  shape schema 8 gave it (results with its UNIQUE(eid, cmd) index, queue
//  without its result column, queue_expiry, events with
//  AUTOINCREMENT and events_eid on (eid, seq)), with the same rows;
//  user_version is the caller's.
#define STORE_SCHEMA_9_UNDO_FOR_TESTS                                                              \
    "CREATE TABLE results_8("                                                                      \
    " id INTEGER PRIMARY KEY, eid TEXT NOT NULL, cmd INTEGER NOT NULL, status TEXT NOT NULL,"      \
    " received INTEGER NOT NULL, body BLOB, UNIQUE(eid, cmd));"                                    \
    "INSERT INTO results_8 SELECT id, eid, cmd, status, received, body FROM results ORDER BY id;"  \
    "DROP TABLE results;"                                                                          \
    "ALTER TABLE results_8 RENAME TO results;"                                                     \
    "CREATE INDEX results_cmd ON results(cmd);"                                                    \
    "ALTER TABLE queue DROP COLUMN result;"                                                        \
    "CREATE INDEX queue_expiry ON queue(eid, expires) WHERE active = 1 AND expires IS NOT NULL;"   \
    "CREATE TABLE events_8("                                                                       \
    " seq INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, name TEXT NOT NULL,"             \
    " eid TEXT, source TEXT, data BLOB);"                                                          \
    "INSERT INTO events_8 SELECT seq, ts, name, eid, source, data FROM events ORDER BY seq;"       \
    "DROP TABLE events;"                                                                           \
    "ALTER TABLE events_8 RENAME TO events;"                                                       \
    "CREATE INDEX events_eid ON events(eid, seq) WHERE eid IS NOT NULL;"

//  Open (creating and migrating) the database at `path` (":memory:" works).
//  Returns NULL with the reason in err.
store_db_t *store_db_new(const char *path, const store_db_opts_t *opts, char *err, size_t errlen);
void store_db_destroy(store_db_t **db);

//  Whether the WAL is written one write per commit (store_walbuf.h: asked
//  for, synchronous=FULL, and the VFS registered).
bool store_db_wal_buffered(const store_db_t *db);

//  The schema version the database is at (PRAGMA user_version).
int store_db_schema_version(store_db_t *db);
//  Queue depths for metrics: active queue entries, of which delivered and not
//  answered yet, and enrollments waiting for a wakeup (counted on the partial
//  indexes queue_active, queue_sent and the wake table). 0 / -1.
int store_db_depths(store_db_t *db, int64_t *active, int64_t *sent, int64_t *wake);
//  The last failure's text, for the operator (owned by db).
const char *store_db_errmsg(const store_db_t *db);

//  The SQLite handle (owned by db), for the store's modules in other files
//  (store_push.c, store_doctor.c, ...); they run inside the transaction the
//  caller opened, like the operations here, and take their statements from
//  store_db_stmt (never finalize those).
struct sqlite3 *store_db_sqlite(store_db_t *db);

//  The statement cache every module of the store uses (store_db's own
//  operations, store_chal, store_doctor, store_inv, store_push, store_token):
//  `sql`, prepared once on db's connection (SQLITE_PREPARE_PERSISTENT) and
//  kept, handed out reset and with its bindings cleared. The key is the
//  address of `sql`, which must be a string constant (a static array or a
//  literal): identical constants may share one statement, so a caller must
//  not run the same SQL again while it still steps through its rows. A
//  schema change is handled by SQLite (the statement is prepared again on
//  its next step). Owned by db: finalized by store_db_destroy before the
//  connection closes (so it really closes); a caller resets what it stepped
//  (a statement left on a row keeps a read transaction open). NULL if it
//  cannot be prepared or the cache is full (store_db_errmsg says which;
//  both are programming errors).
struct sqlite3_stmt;
struct sqlite3_stmt *store_db_stmt(store_db_t *db, const char *sql);
//  How many statements the cache holds (tests: no statement prepared per request).
int store_db_stmt_count(const store_db_t *db);

//  WAL and checkpoint counters (either kind of checkpoint; store_ckpt.h).
void store_db_wal_stats(store_db_t *db, store_ckpt_stats_t *out);
//  Milliseconds spent in checkpoints inside commits since store_db_begin
//  (only with checkpoint_thread off: then a commit may include one).
double store_db_commit_checkpoint_ms(const store_db_t *db);
//  With the checkpoint thread: finish its checkpoint here when only a few
//  frames are left (store_ckpt_tidy_due), so the WAL starts over. Call after
//  a batch was answered. Returns the milliseconds it took (0: nothing done).
double store_db_wal_tidy(store_db_t *db);

/* ---- transactions ---- */
int store_db_begin(store_db_t *db);  //  0 / -1
int store_db_commit(store_db_t *db); //  0 / -1 (then the transaction is rolled back)
void store_db_rollback(store_db_t *db);
int store_db_op_begin(store_db_t *db);         //  savepoint around one request
void store_db_op_end(store_db_t *db, bool ok); //  release it, or undo just that request

//  After a commit: call fn for each event the committed operations raised, in
//  seq order, then forget them. `data` is a packed msgpack map (may be NULL).
typedef void(store_event_fn)(void *arg, uint64_t seq, int64_t ts, const char *name, const char *eid,
                             const char *source, const uint8_t *data, size_t len);
void store_db_events_flush(store_db_t *db, store_event_fn *fn, void *arg);

/* ---- check-in (CheckInURL) ---- */

//  One check-in message. The caller extracts the fields from the body; NULL /
//  0-length means absent.
typedef struct {
    const char *eid;  //  enrollment id (see pm_msgtab.def CHECKIN)
    const char *kind; //  device, user, user-enrollment, user-enrollment-user, shared-ipad-user
    const char *message_type; //  Authenticate, TokenUpdate, ...
    const uint8_t *cert_hash; //  NULL: the gateway runs in lab mode (no certificate check)
    size_t cert_hash_len;
    const uint8_t
        *cert_prev_hash; //  the certificate it renews (re-binds when that is the bound one)
    size_t cert_prev_hash_len;
    const char *cert_issuer;
    const uint8_t *body; //  the whole check-in plist as packed msgpack
    size_t body_len;
    //  extracted from the body
    const char *udid, *serial, *model, *os_version, *device_name, *topic, *push_magic;
    const uint8_t *token, *unlock_token, *bootstrap_token;
    size_t token_len, unlock_token_len, bootstrap_token_len;
    int awaiting_configuration; //  -1 absent, 0/1
    int64_t now_ms;
} store_checkin_t;

typedef struct {
    unsigned status;  //  HTTP status for the device
    char reason[256]; //  when status != 200
} store_checkin_res_t;

//  Doctor facts from an accepted, authenticated request (store_doctor.h): the
//  identity certificate's notAfter (ms, 0 = unknown) and the device's clock
//  skew (when has_skew). Call after the check-in or connect succeeded, inside
//  its transaction. 1 = written (changed), 0 = unchanged, -1 = database error.
int store_db_doctor_note(store_db_t *db, const char *eid, int64_t not_after_ms, bool has_skew,
                         int64_t skew_s, int64_t now_ms);

//  Apply one check-in. `body_out` receives the packed plist dict to send back
//  (left empty when there is none). Device-visible refusals (400, 410...) are
//  STORE_OK with res->status set; STORE_ERR_* only for database failures.
store_rc_t store_db_checkin(store_db_t *db, const store_checkin_t *in, store_checkin_res_t *res,
                            msgpack_sbuffer *body_out);

/* ---- command loop (ServerURL) ---- */

typedef struct {
    const char *eid;
    const char *status;       //  Idle, Acknowledged, Error, CommandFormatError, NotNow
    const char *command_uuid; //  the command answered (NULL for Idle)
    const char *rid; //  the device request's id: a repeat of the last one gets the same answer
    const uint8_t *cert_hash;
    size_t cert_hash_len;
    const uint8_t *cert_prev_hash; //  as in store_checkin_t
    size_t cert_prev_hash_len;
    const uint8_t *body; //  the whole response plist as packed msgpack
    size_t body_len;
    int64_t now_ms;
    const store_policy_t *policy;
} store_connect_t;

typedef struct {
    unsigned status; //  200, or 400 when rejected
    char reason[256];
} store_connect_res_t;

//  Record the answer and pick the next command. `command_out` receives the
//  packed {CommandUUID, Command} map, or stays empty when nothing is due.
store_rc_t store_db_connect(store_db_t *db, const store_connect_t *in, store_connect_res_t *res,
                            msgpack_sbuffer *command_out);

/* ---- operator ---- */

typedef struct {
    const char *rid;          //  operator request id: a retried rid returns the first answer
    const char *command_uuid; //  required (the scheduler generates one when the operator did not)
    const char *request_type; //  the Command's RequestType (required)
    const uint8_t *command;   //  packed Command dict (RequestType and its keys)
    size_t command_len;
    const char *const *targets;
    size_t ntargets;
    int64_t priority;
    int64_t expires_ms; //  0 = never
    bool no_push;       //  do not mark the targets for a wakeup
    int64_t now_ms;
} store_enqueue_t;

//  Queue one command for every target (all or nothing). On success
//  uuid_out holds the CommandUUID (the first one when the rid was seen before).
store_rc_t store_db_enqueue(store_db_t *db, const store_enqueue_t *in, char *uuid_out,
                            size_t uuid_size, uint64_t *queued);

//  Cancel the unanswered entries of a command (for `targets` only when n > 0).
store_rc_t store_db_cancel(store_db_t *db, const char *command_uuid, const char *const *targets,
                           size_t ntargets, int64_t now_ms, uint64_t *cancelled);

//  An enrollment's queue, next first (finished entries too with `all`):
//  array of maps command_uuid, request_type, status, priority, created,
//  delivered, notnow_count, deliveries, expires.
store_rc_t store_db_queue(store_db_t *db, const char *eid, bool all, const store_policy_t *policy,
                          int64_t now_ms, msgpack_sbuffer *out);

//  Results newest first, by enrollment and/or CommandUUID: array of maps eid,
//  command_uuid, request_type, status, received, body.
store_rc_t store_db_results(store_db_t *db, const char *eid, const char *command_uuid,
                            unsigned limit, msgpack_sbuffer *out);

//  Enrollments ordered by id, after `after`: array of maps eid, kind, udid,
//  serial, model, os_version, topic, enrolled, pushable, first_seen,
//  last_seen, queued, wake_pending.
store_rc_t store_db_devices(store_db_t *db, const char *after, unsigned limit,
                            msgpack_sbuffer *out);

/* ---- events and wakeups ---- */

//  Append an event raised elsewhere (e.g. the gateway's security.rejected).
store_rc_t store_db_event_append(store_db_t *db, const char *name, const char *eid,
                                 const char *source, const uint8_t *data, size_t len,
                                 int64_t now_ms, uint64_t *seq);

//  Events with seq > after, oldest first (gap replay for auditors): array of
//  maps seq, ts, name, eid, source, data.
store_rc_t store_db_events(store_db_t *db, uint64_t after, unsigned limit, msgpack_sbuffer *out);

//  Enrollments marked for a wakeup (new commands, not connected since), up to
//  `limit`: packed array of eid strings. With `clear`, the marks are removed.
store_rc_t store_db_wake_pending(store_db_t *db, unsigned limit, bool clear, msgpack_sbuffer *out);
//  Active enrollments with a usable push token, not seen since `before_ms`
//  (packed array of eids, at most `limit`): the periodic re-push of the silent.
store_rc_t store_db_silent(store_db_t *db, unsigned limit, int64_t before_ms, msgpack_sbuffer *out);

/* ---- inventory ---- */

//  The inventory module over this database (store_inv.h; owned by db, NULL on
//  out of memory). Answers feed it from store_db_connect.
struct store_inv;
struct store_inv *store_db_inv(store_db_t *db);

#endif
