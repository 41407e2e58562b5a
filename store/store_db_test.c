/*  store_db unit tests: schema migrations, check-ins, and every queue rule of
 *  docs/queue.md as a table-driven script (no bus), including replayed
 *  results, foreign CommandUUIDs and interleaved enrollments.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "store_db.h"
#include "pm_mpck.h"
#include "store_doctor.h"
#include "store_inv.h"
#include "store_pack.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int64_t s_now = 1700000000000;
static store_policy_t s_pol = {.notnow_limit = 0, .redeliver_limit = 0, .delivered_timeout_ms = 0};

/* ---- events seen after each commit ---- */
static char s_events[4096];
static uint64_t s_last_seq;
static void s_on_event(void *arg, uint64_t seq, int64_t ts, const char *name, const char *eid,
                       const char *source, const uint8_t *data, size_t len)
{
    (void)arg, (void)ts, (void)source, (void)data, (void)len, (void)eid;
    assert_true(seq > s_last_seq); //  strictly increasing
    s_last_seq = seq;
    size_t l = strlen(s_events);
    snprintf(s_events + l, sizeof s_events - l, "%s ", name);
}
static bool s_saw(const char *name)
{
    return strstr(s_events, name) != NULL;
}

static store_db_t *s_open(void)
{
    char err[256] = "";
    (void)err;
    store_db_t *db = store_db_new(":memory:", NULL, err, sizeof err);
    assert_non_null(db);
    s_last_seq = 0; //  a new event log
    return db;
}

static void s_commit(store_db_t *db)
{
    assert_int_equal(store_db_commit(db), 0);
    s_events[0] = '\0';
    store_db_events_flush(db, s_on_event, NULL);
}

/* ---- helpers: each runs one request in its own transaction ---- */

//  One check-in signed with `hash` (NULL: lab mode), from a certificate whose
//  renews extension names `prev` (NULL: none).
static unsigned s_checkin_prev(store_db_t *db, const char *eid, const char *kind, const char *mt,
                               const char *hash, const char *prev)
{
    store_checkin_t in = {.eid = eid,
                          .kind = kind,
                          .message_type = mt,
                          .cert_hash = (const uint8_t *)hash,
                          .cert_hash_len = hash ? strlen(hash) : 0,
                          .cert_prev_hash = (const uint8_t *)prev,
                          .cert_prev_hash_len = prev ? strlen(prev) : 0,
                          .udid = eid,
                          .topic = "com.apple.mgmt.test",
                          .push_magic = "magic",
                          .token = (const uint8_t *)"\x01\x02\x03",
                          .token_len = 3,
                          .awaiting_configuration = -1,
                          .now_ms = s_now};
    store_checkin_res_t res;
    msgpack_sbuffer out;
    msgpack_sbuffer_init(&out);
    assert_int_equal(store_db_begin(db), 0);
    assert_int_equal(store_db_op_begin(db), 0);
    assert_int_equal(store_db_checkin(db, &in, &res, &out), STORE_OK);
    store_db_op_end(db, true);
    s_commit(db);
    msgpack_sbuffer_destroy(&out);
    return res.status;
}

static unsigned s_checkin(store_db_t *db, const char *eid, const char *kind, const char *mt,
                          const char *hash)
{
    return s_checkin_prev(db, eid, kind, mt, hash, NULL);
}

//  A TokenUpdate signed with `hash`, a certificate whose renews extension names `prev`.
static unsigned s_checkin_renewed(store_db_t *db, const char *eid, const char *hash,
                                  const char *prev)
{
    return s_checkin_prev(db, eid, "device", "TokenUpdate", hash, prev);
}

static void s_enroll(store_db_t *db, const char *eid)
{
    assert_int_equal(s_checkin(db, eid, "device", "Authenticate", NULL), 200);
    assert_int_equal(s_checkin(db, eid, "device", "TokenUpdate", NULL), 200);
}

static store_rc_t s_enqueue_rid(store_db_t *db, const char *rid, const char *uuid, int prio,
                                int64_t ttl_ms, const char *targets, char *got_uuid)
{
    const char *t[16];
    char buf[512];
    size_t n = 0;
    snprintf(buf, sizeof buf, "%s", targets);
    for (char *save = NULL, *tok = strtok_r(buf, " ", &save); tok && n < 16;
         tok = strtok_r(NULL, " ", &save))
        t[n++] = tok;
    msgpack_sbuffer cmd;
    msgpack_sbuffer_init(&cmd);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &cmd, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "RequestType", 11);
    msgpack_pack_str_with_body(&pk, "DeviceInformation", 17);
    store_enqueue_t in = {.rid = rid,
                          .command_uuid = uuid,
                          .request_type = "DeviceInformation",
                          .command = (const uint8_t *)cmd.data,
                          .command_len = cmd.size,
                          .targets = t,
                          .ntargets = n,
                          .priority = prio,
                          .expires_ms = ttl_ms ? s_now + ttl_ms : 0,
                          .now_ms = s_now};
    char u[128];
    uint64_t queued;
    assert_int_equal(store_db_begin(db), 0);
    assert_int_equal(store_db_op_begin(db), 0);
    store_rc_t rc = store_db_enqueue(db, &in, u, sizeof u, &queued);
    store_db_op_end(db, rc == STORE_OK);
    s_commit(db);
    if (rc == STORE_OK && got_uuid)
        snprintf(got_uuid, 128, "%s", u);
    msgpack_sbuffer_destroy(&cmd);
    return rc;
}

static void s_enqueue(store_db_t *db, const char *uuid, int prio, int64_t ttl_ms,
                      const char *targets)
{
    assert_int_equal(s_enqueue_rid(db, NULL, uuid, prio, ttl_ms, targets, NULL), STORE_OK);
}

//  CommandUUID in a packed {CommandUUID, Command} map, "" when empty.
static void s_uuid_in(const msgpack_sbuffer *b, char *out, size_t size)
{
    out[0] = '\0';
    if (!b->size)
        return;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, b->data, b->size, NULL), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(u.data.type, MSGPACK_OBJECT_MAP);
    for (uint32_t i = 0; i < u.data.via.map.size; i++) {
        msgpack_object_kv *kv = &u.data.via.map.ptr[i];
        if (kv->key.via.str.size == 11 && !memcmp(kv->key.via.str.ptr, "CommandUUID", 11))
            snprintf(out, size, "%.*s", (int)kv->val.via.str.size, kv->val.via.str.ptr);
        if (kv->key.via.str.size == 7 && !memcmp(kv->key.via.str.ptr, "Command", 7))
            assert_int_equal(kv->val.type, MSGPACK_OBJECT_MAP);
    }
    msgpack_unpacked_destroy(&u);
}

//  One CONNECT; returns the HTTP status; *next = the CommandUUID offered ("" none).
static unsigned s_connect_full(store_db_t *db, const char *eid, const char *status,
                               const char *uuid, const char *rid, const char *hash, char *next)
{
    static const char body[] = "\x81\xa6"
                               "Status"
                               "\xac"
                               "Acknowledged";
    store_connect_t in = {.eid = eid,
                          .status = status,
                          .command_uuid = uuid,
                          .rid = rid,
                          .cert_hash = (const uint8_t *)hash,
                          .cert_hash_len = hash ? strlen(hash) : 0,
                          .body = (const uint8_t *)body,
                          .body_len = sizeof body - 1,
                          .now_ms = s_now,
                          .policy = &s_pol};
    store_connect_res_t res;
    msgpack_sbuffer out;
    msgpack_sbuffer_init(&out);
    assert_int_equal(store_db_begin(db), 0);
    assert_int_equal(store_db_op_begin(db), 0);
    assert_int_equal(store_db_connect(db, &in, &res, &out), STORE_OK);
    store_db_op_end(db, true);
    s_commit(db);
    s_uuid_in(&out, next, 128);
    msgpack_sbuffer_destroy(&out);
    return res.status;
}

static unsigned s_connect(store_db_t *db, const char *eid, const char *status, const char *uuid,
                          char *next)
{
    return s_connect_full(db, eid, status, uuid, NULL, NULL, next);
}

//  Number of results stored for eid (and their statuses, space-separated).
static int s_results(store_db_t *db, const char *eid, const char *uuid, char *statuses, size_t size)
{
    msgpack_sbuffer out;
    msgpack_sbuffer_init(&out);
    assert_int_equal(store_db_results(db, eid, uuid, 100, &out), STORE_OK);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, out.data, out.size, NULL), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(u.data.type, MSGPACK_OBJECT_ARRAY);
    int n = (int)u.data.via.array.size;
    if (statuses) {
        statuses[0] = '\0';
        for (int i = 0; i < n; i++) {
            msgpack_object *m = &u.data.via.array.ptr[i];
            for (uint32_t j = 0; j < m->via.map.size; j++) {
                msgpack_object_kv *kv = &m->via.map.ptr[j];
                if (kv->key.via.str.size == 6 && !memcmp(kv->key.via.str.ptr, "status", 6)) {
                    size_t l = strlen(statuses);
                    snprintf(statuses + l, size - l, "%s%.*s", l ? " " : "",
                             (int)kv->val.via.str.size, kv->val.via.str.ptr);
                }
            }
        }
    }
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&out);
    return n;
}

//  Statuses of an enrollment's queue (all entries), in listing order "uuid:status ...".
static void s_queue(store_db_t *db, const char *eid, char *buf, size_t size)
{
    msgpack_sbuffer out;
    msgpack_sbuffer_init(&out);
    assert_int_equal(store_db_begin(db), 0);
    assert_int_equal(store_db_queue(db, eid, true, &s_pol, s_now, &out), STORE_OK);
    s_commit(db);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, out.data, out.size, NULL), MSGPACK_UNPACK_SUCCESS);
    buf[0] = '\0';
    for (uint32_t i = 0; i < u.data.via.array.size; i++) {
        msgpack_object *m = &u.data.via.array.ptr[i];
        const msgpack_object *uu = NULL, *st = NULL;
        for (uint32_t j = 0; j < m->via.map.size; j++) {
            msgpack_object_kv *kv = &m->via.map.ptr[j];
            if (kv->key.via.str.size == 12 && !memcmp(kv->key.via.str.ptr, "command_uuid", 12))
                uu = &kv->val;
            if (kv->key.via.str.size == 6 && !memcmp(kv->key.via.str.ptr, "status", 6))
                st = &kv->val;
        }
        assert_non_null(uu);
        assert_non_null(st);
        size_t l = strlen(buf);
        snprintf(buf + l, size - l, "%s%.*s:%.*s", l ? " " : "", (int)uu->via.str.size,
                 uu->via.str.ptr, (int)st->via.str.size, st->via.str.ptr);
    }
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&out);
}

/* ---- the table-driven queue script ---- */

typedef enum { ENQ, CONN, CANCEL, ADVANCE, REAUTH, EXPECT_EVENT, EXPECT_RESULTS } s_op_t;

typedef struct {
    s_op_t op;
    const char *eid;    //  CONN, REAUTH, EXPECT_RESULTS; ENQ: targets (space separated)
    const char *a;      //  CONN: Status; ENQ/CANCEL: CommandUUID; EXPECT_EVENT: event name
    const char *b;      //  CONN: CommandUUID answered; EXPECT_RESULTS: statuses
    int n;              //  ENQ: priority; ADVANCE: ms; EXPECT_RESULTS: count
    int64_t ttl;        //  ENQ: ttl ms
    const char *expect; //  CONN: CommandUUID expected next ("" = empty reply)
} s_step_t;

typedef struct {
    const char *name;
    store_policy_t pol;
    const char *eids; //  enrolled before the script
    s_step_t steps[24];
} s_script_t;

#define END                                                                                        \
    {                                                                                              \
        .op = -1                                                                                   \
    }

static const s_script_t s_scripts[] = {
    {"priority then oldest",
     {0},
     "d1",
     {{ENQ, "d1", "A", .n = 0},
      {ENQ, "d1", "B", .n = 5},
      {ENQ, "d1", "C", .n = 0},
      {CONN, "d1", "Idle", .expect = "B"},
      {CONN, "d1", "Acknowledged", "B", .expect = "A"},
      {CONN, "d1", "Acknowledged", "A", .expect = "C"},
      {CONN, "d1", "Acknowledged", "C", .expect = ""},
      {EXPECT_RESULTS, "d1", .n = 3},
      END}},
    {"terminal statuses record the result and serve the next",
     {0},
     "d1",
     {{ENQ, "d1", "A"},
      {ENQ, "d1", "B"},
      {ENQ, "d1", "C"},
      {CONN, "d1", "Idle", .expect = "A"},
      {CONN, "d1", "Error", "A", .expect = "B"},
      {EXPECT_EVENT, .a = "command.result"},
      {EXPECT_EVENT, .a = "command.delivered"},
      {CONN, "d1", "CommandFormatError", "B", .expect = "C"},
      {CONN, "d1", "Acknowledged", "C", .expect = ""},
      {EXPECT_RESULTS, "d1", .b = "Acknowledged CommandFormatError Error", .n = 3},
      {CONN, "d1", "Idle", .expect = ""},
      END}},
    {"NotNow stays queued but not in the same session",
     {0},
     "d1",
     {{ENQ, "d1", "A"},
      {ENQ, "d1", "B"},
      {CONN, "d1", "Idle", .expect = "A"},
      {CONN, "d1", "NotNow", "A", .expect = "B"},
      {CONN, "d1", "Acknowledged", "B", .expect = ""},
      {EXPECT_RESULTS, "d1", .n = 1},
      {CONN, "d1", "Idle", .expect = "A"}, //  next session
      {CONN, "d1", "NotNow", "A", .expect = ""},
      {CONN, "d1", "Idle", .expect = "A"},
      {CONN, "d1", "Acknowledged", "A", .expect = ""},
      {EXPECT_RESULTS, "d1", .n = 2},
      END}},
    {"a session that starts without Idle keeps NotNow'd commands back",
     {0},
     "d1",
     {{ENQ, "d1", "A"},
      {ENQ, "d1", "B"},
      {CONN, "d1", "Idle", .expect = "A"},
      {CONN, "d1", "NotNow", "A", .expect = "B"},
      {CONN, "d1", "Acknowledged", "B", .expect = ""},
      {CONN, "d1", "Acknowledged", "B", .expect = ""}, //  a new connection reporting again
      {CONN, "d1", "Idle", .expect = "A"},
      END}},
    {"unknown and foreign CommandUUIDs are events, not failures",
     {0},
     "d1 d2",
     {{ENQ, "d1", "A"},
      {ENQ, "d2", "B"},
      {CONN, "d1", "Idle", .expect = "A"},
      {CONN, "d1", "Acknowledged", "B", .expect = ""}, //  d2's command: A already sent
      {EXPECT_EVENT, .a = "command.unknown"},
      {CONN, "d1", "Acknowledged", "no-such-uuid", .expect = ""},
      {EXPECT_EVENT, .a = "command.unknown"},
      {EXPECT_RESULTS, "d1", .n = 0},
      {CONN, "d1", "Acknowledged", "A", .expect = ""},
      {EXPECT_RESULTS, "d1", .n = 1},
      {CONN, "d2", "Idle", .expect = "B"}, //  untouched by d1's report
      END}},
    {"a replayed result is stored once",
     {0},
     "d1",
     {{ENQ, "d1", "A"},
      {ENQ, "d1", "B"},
      {CONN, "d1", "Idle", .expect = "A"},
      {CONN, "d1", "Acknowledged", "A", .expect = "B"},
      {CONN, "d1", "Acknowledged", "A", .expect = ""}, //  replay: B already sent
      {EXPECT_EVENT, .a = "command.result"},
      {EXPECT_RESULTS, "d1", .n = 1},
      {CONN, "d1", "Acknowledged", "B", .expect = ""},
      {CONN, "d1", "Acknowledged", "B", .expect = ""},
      {EXPECT_RESULTS, "d1", .n = 2},
      END}},
    {"interleaved enrollments share one command",
     {0},
     "d1 d2 d3",
     {{ENQ, "d1 d2 d3", "A"},
      {ENQ, "d1 d2", "B", .n = -1},
      {CONN, "d1", "Idle", .expect = "A"},
      {CONN, "d2", "Idle", .expect = "A"},
      {CONN, "d1", "Acknowledged", "A", .expect = "B"},
      {CONN, "d3", "Idle", .expect = "A"},
      {CONN, "d2", "NotNow", "A", .expect = "B"},
      {CONN, "d3", "Error", "A", .expect = ""},
      {CONN, "d1", "Acknowledged", "B", .expect = ""},
      {CONN, "d2", "Acknowledged", "B", .expect = ""},
      {CONN, "d2", "Idle", .expect = "A"},
      {CONN, "d2", "Acknowledged", "A", .expect = ""},
      {EXPECT_RESULTS, "d1", .n = 2},
      {EXPECT_RESULTS, "d2", .n = 2},
      {EXPECT_RESULTS, "d3", .b = "Error", .n = 1},
      END}},
    {"expiry",
     {0},
     "d1",
     {{ENQ, "d1", "A", .ttl = 10000},
      {ENQ, "d1", "B"},
      {ADVANCE, .n = 10001},
      {CONN, "d1", "Idle", .expect = "B"},
      {EXPECT_EVENT, .a = "command.expired"},
      END}},
    {"an answered command is not expired later",
     {0},
     "d1",
     {{ENQ, "d1", "A", .ttl = 10000},
      {CONN, "d1", "Idle", .expect = "A"},
      {CONN, "d1", "Acknowledged", "A", .expect = ""},
      {ADVANCE, .n = 20000},
      {CONN, "d1", "Idle", .expect = ""},
      {EXPECT_RESULTS, "d1", .b = "Acknowledged", .n = 1},
      END}},
    {"cancel",
     {0},
     "d1 d2",
     {{ENQ, "d1 d2", "A"},
      {ENQ, "d1 d2", "B"},
      {CANCEL, "d1", "A"},
      {EXPECT_EVENT, .a = "command.cancelled"},
      {CONN, "d1", "Idle", .expect = "B"},
      {CONN, "d2", "Idle", .expect = "A"},
      {CANCEL, NULL, "B"},                             //  every target
      {CONN, "d1", "Acknowledged", "B", .expect = ""}, //  delivered before: result kept
      {EXPECT_RESULTS, "d1", .n = 1},
      {CONN, "d2", "Acknowledged", "A", .expect = ""},
      END}},
    {"after notnow-limit NotNow a command goes behind the others",
     {.notnow_limit = 2},
     "d1",
     {{ENQ, "d1", "A"},
      {ENQ, "d1", "B"},
      {CONN, "d1", "Idle", .expect = "A"},
      {CONN, "d1", "NotNow", "A", .expect = "B"},
      {CONN, "d1", "NotNow", "B", .expect = ""},
      {CONN, "d1", "Idle", .expect = "A"},
      {CONN, "d1", "NotNow", "A", .expect = "B"},
      {CONN, "d1", "Acknowledged", "B", .expect = ""},
      {ENQ, "d1", "C"},
      {CONN, "d1", "Idle", .expect = "C"}, //  A (2 NotNow) is behind C
      {CONN, "d1", "Acknowledged", "C", .expect = "A"},
      {CONN, "d1", "Acknowledged", "A", .expect = ""},
      END}},
    {"delivered and never answered: re-offered next session, failed after redeliver-limit",
     {.redeliver_limit = 2},
     "d1",
     {{ENQ, "d1", "A"},
      {ENQ, "d1", "B", .n = -1},
      {CONN, "d1", "Idle", .expect = "A"}, //  delivery 1, no answer
      {CONN, "d1", "Idle", .expect = "A"}, //  delivery 2, no answer
      {CONN, "d1", "Idle", .expect = "B"}, //  A failed
      {EXPECT_EVENT, .a = "command.failed"},
      {CONN, "d1", "Acknowledged", "B", .expect = ""},
      END}},
    {"an unanswered delivery waits delivered-timeout before it is offered again",
     {.delivered_timeout_ms = 60000},
     "d1",
     {{ENQ, "d1", "A"},
      {CONN, "d1", "Idle", .expect = "A"},
      {ADVANCE, .n = 1000},
      {CONN, "d1", "Idle", .expect = ""},
      {ADVANCE, .n = 60000},
      {CONN, "d1", "Idle", .expect = "A"},
      END}},
    {"re-enrollment clears the queue",
     {0},
     "d1",
     {{ENQ, "d1", "A"},
      {ENQ, "d1", "B"},
      {CONN, "d1", "Idle", .expect = "A"},
      {REAUTH, "d1"},
      {EXPECT_EVENT, .a = "command.cancelled"},
      {CONN, "d1", "Idle", .expect = ""},
      {ENQ, "d1", "C"},
      {CONN, "d1", "Idle", .expect = "C"},
      END}},
};

static void s_run_script(const s_script_t *sc)
{
    char err[256] = "";
    (void)err;
    store_db_t *db = s_open();
    s_pol = sc->pol;
    char eids[256];
    snprintf(eids, sizeof eids, "%s", sc->eids);
    for (char *save = NULL, *t = strtok_r(eids, " ", &save); t; t = strtok_r(NULL, " ", &save))
        s_enroll(db, t);
    for (int i = 0; sc->steps[i].op != (s_op_t)-1; i++) {
        const s_step_t *s = &sc->steps[i];
        char next[128], st[256];
        print_message("  [%s] step %d\n", sc->name, i);
        switch (s->op) {
        case ENQ:
            s_enqueue(db, s->a, s->n, s->ttl, s->eid);
            assert_true(s_saw("command.queued"));
            break;
        case CONN:
            assert_int_equal(s_connect(db, s->eid, s->a, s->b, next), 200);
            assert_string_equal(next, s->expect);
            break;
        case CANCEL: {
            uint64_t n;
            const char *t[1] = {s->eid};
            assert_int_equal(store_db_begin(db), 0);
            assert_int_equal(store_db_cancel(db, s->a, t, s->eid ? 1 : 0, s_now, &n), STORE_OK);
            s_commit(db);
            assert_true(n >= 1);
            break;
        }
        case ADVANCE:
            s_now += s->n;
            break;
        case REAUTH:
            assert_int_equal(s_checkin(db, s->eid, "device", "Authenticate", NULL), 200);
            assert_true(s_saw("checkin.Authenticate"));
            if (!s_saw("command.cancelled"))
                fail_msg("re-enrollment raised no command.cancelled: %s", s_events);
            {
                char save[sizeof s_events];
                memcpy(save, s_events, sizeof save);
                assert_int_equal(s_checkin(db, s->eid, "device", "TokenUpdate", NULL), 200);
                memcpy(s_events, save, sizeof save);
            }
            break;
        case EXPECT_EVENT:
            if (!s_saw(s->a))
                fail_msg("[%s] step %d: expected event %s, saw: %s", sc->name, i, s->a, s_events);
            break;
        case EXPECT_RESULTS:
            assert_int_equal(s_results(db, s->eid, NULL, st, sizeof st), s->n);
            if (s->b)
                assert_string_equal(st, s->b);
            break;
        }
    }
    store_db_destroy(&db);
    store_db_destroy(&db); //  safe twice
    s_pol = (store_policy_t){0};
}

static void test_queue_rules(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof s_scripts / sizeof s_scripts[0]; i++) {
        print_message("script: %s\n", s_scripts[i].name);
        s_run_script(&s_scripts[i]);
    }
}

/* ---- individual cases ---- */

static char s_path[64];

static void test_schema_migrations(void **state)
{
    (void)state;
    char dir[] = "/tmp/store_db_testXXXXXX";
    assert_non_null(mkdtemp(dir));
    snprintf(s_path, sizeof s_path, "%s/db", dir);
    char err[256] = "";
    (void)err;
    store_db_t *db = store_db_new(s_path, NULL, err, sizeof err);
    assert_non_null(db);
    //  synchronous=FULL (the default): one write per commit (store_walbuf.h)
    assert_true(store_db_wal_buffered(db));
    s_last_seq = 0;
    assert_int_equal(store_db_schema_version(db), STORE_SCHEMA_VERSION);
    s_enroll(db, "d1");
    store_db_destroy(&db);
    //  reopening keeps the data and does not migrate again
    db = store_db_new(s_path, &(store_db_opts_t){.sync_full = false}, err, sizeof err);
    assert_non_null(db);
    //  synchronous=NORMAL has no sync per commit to report a failed
    //  write-out: SQLite's own writes then
    assert_false(store_db_wal_buffered(db));
    char next[128];
    assert_int_equal(s_connect(db, "d1", "Idle", NULL, next), 200);
    store_db_destroy(&db);
    //  a database from the future is refused with a clear message
    sqlite3 *raw;
    assert_int_equal(sqlite3_open(s_path, &raw), SQLITE_OK);
    assert_int_equal(sqlite3_exec(raw, "PRAGMA user_version=99", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(raw);
    db = store_db_new(s_path, NULL, err, sizeof err);
    assert_null(db);
    assert_non_null(strstr(err, "newer picomdm-store"));
    //  an unwritable place says so
    db = store_db_new("/nonexistent-dir/x/db", NULL, err, sizeof err);
    assert_null(db);
    assert_non_null(strstr(err, "cannot open"));
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_checkin_rules(void **state)
{
    (void)state;
    char err[256] = "";
    (void)err;
    char next[128];
    store_db_t *db = s_open();
    //  unknown enrollment: everything but Authenticate is refused
    assert_int_equal(s_checkin(db, "d1", "device", "TokenUpdate", "H1"), 400);
    assert_true(s_saw("security.rejected"));
    assert_int_equal(s_connect(db, "d1", "Idle", NULL, next), 400);
    //  Authenticate binds H1; not active until TokenUpdate
    assert_int_equal(s_checkin(db, "d1", "device", "Authenticate", "H1"), 200);
    assert_int_equal(s_connect_full(db, "d1", "Idle", NULL, NULL, "H1", next), 400);
    assert_int_equal(s_checkin(db, "d1", "device", "TokenUpdate", "H1"), 200);
    assert_int_equal(s_connect_full(db, "d1", "Idle", NULL, NULL, "H1", next), 200);
    //  another certificate is refused, lab mode (no hash) accepted
    assert_int_equal(s_checkin(db, "d1", "device", "TokenUpdate", "H2"), 400);
    assert_true(s_saw("security.rejected"));
    assert_int_equal(s_connect_full(db, "d1", "Idle", NULL, NULL, "H2", next), 400);
    assert_true(s_saw("security.rejected"));
    assert_int_equal(s_connect_full(db, "d1", "Idle", NULL, NULL, NULL, next), 200);
    //  H1 cannot enroll a second device
    assert_int_equal(s_checkin(db, "d2", "device", "Authenticate", "H1"), 400);
    assert_true(s_saw("security.rejected"));
    //  user channel: created by its TokenUpdate, with the device's identity
    assert_int_equal(s_checkin(db, "d1:u1", "user", "TokenUpdate", "H1"), 200);
    assert_int_equal(s_checkin(db, "d1:u2", "user", "TokenUpdate", "H2"), 400);
    assert_int_equal(s_checkin(db, "dX:u1", "user", "TokenUpdate", NULL), 400);
    assert_int_equal(s_connect_full(db, "d1:u1", "Idle", NULL, NULL, "H1", next), 200);
    //  renewal: a new Authenticate re-binds (the gateway checked the CA)
    s_enqueue(db, "U", 0, 0, "d1:u1");
    assert_int_equal(s_checkin(db, "d1", "device", "Authenticate", "H3"), 200);
    assert_true(s_saw("command.cancelled")); //  the user channel's queue too
    assert_int_equal(s_checkin(db, "d1", "device", "TokenUpdate", "H3"), 200);
    assert_int_equal(s_connect_full(db, "d1", "Idle", NULL, NULL, "H1", next), 400);
    assert_int_equal(s_connect_full(db, "d1", "Idle", NULL, NULL, "H3", next), 200);
    //  CheckOut: no more commands
    s_enqueue(db, "A", 0, 0, "d1");
    assert_int_equal(s_checkin(db, "d1", "device", "CheckOut", "H3"), 200);
    assert_int_equal(s_connect_full(db, "d1", "Idle", NULL, NULL, "H3", next), 400);
    //  the other message types
    assert_int_equal(s_checkin(db, "d1", "device", "UserAuthenticate", "H3"), 410);
    assert_int_equal(s_checkin(db, "d1", "device", "GetToken", "H3"), 404);
    assert_int_equal(s_checkin(db, "d1", "device", "DeclarativeManagement", "H3"), 404);
    assert_int_equal(s_checkin(db, "d1", "device", "Bogus", "H3"), 400);
    store_db_destroy(&db);
}

static size_t s_silent(store_db_t *db, int64_t before_ms)
{
    msgpack_sbuffer out;
    msgpack_sbuffer_init(&out);
    assert_int_equal(store_db_silent(db, 10, before_ms, &out), STORE_OK);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, out.data, out.size, NULL), MSGPACK_UNPACK_SUCCESS);
    size_t n = u.data.type == MSGPACK_OBJECT_ARRAY ? u.data.via.array.size : 999;
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&out);
    return n;
}

static void test_renewal_rebinds_and_silent_sweep(void **state)
{
    (void)state;
    store_db_t *db = s_open();
    assert_int_equal(s_checkin(db, "r1", "device", "Authenticate", "OLDHASH"), 200);
    assert_int_equal(s_checkin(db, "r1", "device", "TokenUpdate", "OLDHASH"), 200);
    //  a certificate renewing some other certificate: refused
    assert_int_equal(s_checkin_renewed(db, "r1", "NEWHASH", "ELSEHASH"), 400);
    assert_true(s_saw("security.rejected"));
    //  the renewal of the bound certificate: re-bound, with an event, no new Authenticate
    assert_int_equal(s_checkin_renewed(db, "r1", "NEWHASH", "OLDHASH"), 200);
    assert_true(s_saw("enroll.cert_rebound"));
    assert_int_equal(s_checkin(db, "r1", "device", "TokenUpdate", "OLDHASH"), 400);
    assert_int_equal(s_checkin(db, "r1", "device", "TokenUpdate", "NEWHASH"), 200);
    //  a renewal cannot take over a certificate bound to another enrollment
    assert_int_equal(s_checkin(db, "r2", "device", "Authenticate", "R2HASH"), 200);
    assert_int_equal(s_checkin(db, "r2", "device", "TokenUpdate", "R2HASH"), 200);
    assert_int_equal(s_checkin_renewed(db, "r1", "R2HASH", "NEWHASH"), 400);
    //  the periodic re-push: both were seen at s_now
    assert_int_equal(s_silent(db, s_now - 1000), 0);
    assert_int_equal(s_silent(db, s_now + 1), 2);
    //  a checked-out enrollment is not woken
    assert_int_equal(s_checkin(db, "r2", "device", "CheckOut", "R2HASH"), 200);
    assert_int_equal(s_silent(db, s_now + 1), 1);
    store_db_destroy(&db);
}

static void test_bootstrap_token(void **state)
{
    (void)state;
    char err[256] = "";
    (void)err;
    store_db_t *db = s_open();
    s_enroll(db, "d1");
    store_checkin_t in = {.eid = "d1",
                          .kind = "device",
                          .message_type = "SetBootstrapToken",
                          .bootstrap_token = (const uint8_t *)"SECRET",
                          .bootstrap_token_len = 6,
                          .awaiting_configuration = -1,
                          .now_ms = s_now};
    store_checkin_res_t res;
    msgpack_sbuffer out;
    msgpack_sbuffer_init(&out);
    assert_int_equal(store_db_begin(db), 0);
    assert_int_equal(store_db_checkin(db, &in, &res, &out), STORE_OK);
    assert_int_equal(res.status, 200);
    assert_int_equal(out.size, 0);
    in.message_type = "GetBootstrapToken";
    assert_int_equal(store_db_checkin(db, &in, &res, &out), STORE_OK);
    s_commit(db);
    assert_int_equal(res.status, 200);
    assert_false(strstr(s_events, "SECRET")); //  never in events
    //  {BootstrapToken: bin "SECRET"}
    const char want[] = "\x81\xae"
                        "BootstrapToken"
                        "\xc4\x06"
                        "SECRET";
    assert_int_equal(out.size, sizeof want - 1);
    assert_memory_equal(out.data, want, out.size);
    msgpack_sbuffer_destroy(&out);
    store_db_destroy(&db);
}

static void test_enqueue_idempotent_and_all_or_nothing(void **state)
{
    (void)state;
    char err[256] = "";
    (void)err;
    char u[128], q[256];
    store_db_t *db = s_open();
    s_enroll(db, "d1");
    s_enroll(db, "d2");
    assert_int_equal(s_enqueue_rid(db, "rid-1", "U1", 0, 0, "d1 d2", u), STORE_OK);
    assert_string_equal(u, "U1");
    //  the same rid again (a retry after a crash): the first CommandUUID, nothing new queued
    assert_int_equal(s_enqueue_rid(db, "rid-1", "U2", 0, 0, "d1 d2", u), STORE_OK);
    assert_string_equal(u, "U1");
    s_queue(db, "d1", q, sizeof q);
    assert_string_equal(q, "U1:pending");
    //  a CommandUUID already used by another request
    assert_int_equal(s_enqueue_rid(db, "rid-2", "U1", 0, 0, "d1", u), STORE_ERR_CONFLICT);
    assert_non_null(strstr(store_db_errmsg(db), "already used"));
    //  unknown targets: nothing queued, the message names them
    assert_int_equal(s_enqueue_rid(db, "rid-3", "U3", 0, 0, "d1 x1 d2 x2", u), STORE_ERR_NOTFOUND);
    assert_non_null(strstr(store_db_errmsg(db), "unknown enrollment ids: x1, x2"));
    assert_non_null(strstr(store_db_errmsg(db), "picomdm devices"));
    assert_false(s_saw("command.queued"));
    s_queue(db, "d1", q, sizeof q);
    assert_string_equal(q, "U1:pending");
    //  ...and U3 is free again (the failed request left nothing behind)
    assert_int_equal(s_enqueue_rid(db, "rid-4", "U3", 0, 0, "d1", u), STORE_OK);
    store_db_destroy(&db);
}

static void test_connect_retry_same_answer(void **state)
{
    (void)state;
    char err[256] = "";
    (void)err;
    char next[128], q[256];
    store_db_t *db = s_open();
    s_enroll(db, "d1");
    s_enqueue(db, "A", 0, 0, "d1");
    s_enqueue(db, "B", 0, 0, "d1");
    int64_t active0 = -1, sent0 = -1, wake0 = -1;
    assert_int_equal(store_db_depths(db, &active0, &sent0, &wake0), 0);
    assert_int_equal(active0, 2); //  A and B queued, neither delivered
    assert_int_equal(sent0, 0);
    assert_int_equal(s_connect_full(db, "d1", "Idle", NULL, "r1", NULL, next), 200);
    assert_string_equal(next, "A");
    //  the same request again (reply lost, retried through a restarted scheduler)
    assert_int_equal(s_connect_full(db, "d1", "Idle", NULL, "r1", NULL, next), 200);
    assert_string_equal(next, "A");
    assert_false(s_saw("command.delivered")); //  not a second delivery
    assert_int_equal(s_connect_full(db, "d1", "Acknowledged", "A", "r2", NULL, next), 200);
    assert_string_equal(next, "B");
    assert_int_equal(s_connect_full(db, "d1", "Acknowledged", "A", "r2", NULL, next), 200);
    assert_string_equal(next, "B");
    s_queue(db, "d1", q, sizeof q);
    assert_string_equal(q, "B:sent A:acknowledged");
    //  the metrics' queue depths: B is active and delivered, A is finished
    int64_t active = -1, sent = -1, wake = -1;
    assert_int_equal(store_db_depths(db, &active, &sent, &wake), 0);
    assert_int_equal(active, 1);
    assert_int_equal(sent, 1);
    assert_int_equal(wake, 0);  //  and the mark went when it connected
    assert_int_equal(wake0, 1); //  d1 was marked for a wakeup when A and B were queued

    //  bad statuses are refused without touching anything
    assert_int_equal(s_connect(db, "d1", "Sleeping", NULL, next), 400);
    assert_int_equal(s_connect(db, "d1", "Acknowledged", NULL, next), 400);
    store_db_destroy(&db);
}

static void test_group_commit_isolates_failures(void **state)
{
    (void)state;
    char err[256] = "";
    (void)err;
    char u[128], q[256];
    store_db_t *db = s_open();
    s_enroll(db, "d1");
    msgpack_sbuffer cmd;
    msgpack_sbuffer_init(&cmd);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &cmd, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 0);
    const char *good[] = {"d1"}, *bad[] = {"nope"};
    store_enqueue_t a = {.command_uuid = "GA",
                         .request_type = "X",
                         .command = (const uint8_t *)cmd.data,
                         .command_len = cmd.size,
                         .targets = good,
                         .ntargets = 1,
                         .now_ms = s_now};
    store_enqueue_t b = a, c = a;
    b.command_uuid = "GB";
    b.targets = bad;
    c.command_uuid = "GC";
    uint64_t n;
    //  three requests, one transaction, the middle one fails
    assert_int_equal(store_db_begin(db), 0);
    assert_int_equal(store_db_op_begin(db), 0);
    assert_int_equal(store_db_enqueue(db, &a, u, sizeof u, &n), STORE_OK);
    store_db_op_end(db, true);
    assert_int_equal(store_db_op_begin(db), 0);
    assert_int_equal(store_db_enqueue(db, &b, u, sizeof u, &n), STORE_ERR_NOTFOUND);
    store_db_op_end(db, false);
    assert_int_equal(store_db_op_begin(db), 0);
    assert_int_equal(store_db_enqueue(db, &c, u, sizeof u, &n), STORE_OK);
    store_db_op_end(db, true);
    s_commit(db);
    assert_string_equal(s_events, "command.queued command.queued ");
    s_queue(db, "d1", q, sizeof q);
    assert_string_equal(q, "GA:pending GC:pending");
    //  a rolled-back transaction publishes nothing
    assert_int_equal(store_db_begin(db), 0);
    store_enqueue_t d = a;
    d.command_uuid = "GD";
    assert_int_equal(store_db_enqueue(db, &d, u, sizeof u, &n), STORE_OK);
    store_db_rollback(db);
    s_events[0] = '\0';
    store_db_events_flush(db, s_on_event, NULL);
    assert_string_equal(s_events, "");
    s_queue(db, "d1", q, sizeof q);
    assert_string_equal(q, "GA:pending GC:pending");
    msgpack_sbuffer_destroy(&cmd);
    store_db_destroy(&db);
}

/* ---- schema 9: results through their queue entry ---- */

//  store_db_results as packed bytes (malloc'd, *len set).
static char *s_results_raw(store_db_t *db, const char *eid, const char *uuid, size_t *len)
{
    msgpack_sbuffer out;
    msgpack_sbuffer_init(&out);
    assert_int_equal(store_db_results(db, eid, uuid, 100, &out), STORE_OK);
    *len = out.size;
    return out.data; //  the sbuffer's malloc'd block
}

static int64_t s_count(store_db_t *db, const char *sql)
{
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(store_db_sqlite(db), sql, -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    int64_t n = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    return n;
}

//  The query plan of every statement the connection holds whose SQL starts
//  with `prefix`, appended into out (the store's own cached statements).
static int s_plans(store_db_t *db, const char *prefix, char *out, size_t size)
{
    sqlite3 *sql = store_db_sqlite(db);
    int n = 0;
    out[0] = '\0';
    for (sqlite3_stmt *st = sqlite3_next_stmt(sql, NULL); st; st = sqlite3_next_stmt(sql, st)) {
        const char *text = sqlite3_sql(st);
        if (!text || strncmp(text, prefix, strlen(prefix)) != 0)
            continue;
        char eqp[1024];
        snprintf(eqp, sizeof eqp, "EXPLAIN QUERY PLAN %s", text);
        sqlite3_stmt *q = NULL;
        assert_int_equal(sqlite3_prepare_v2(sql, eqp, -1, &q, NULL), SQLITE_OK);
        while (sqlite3_step(q) == SQLITE_ROW) {
            size_t l = strlen(out);
            snprintf(out + l, size - l, "%s|", (const char *)sqlite3_column_text(q, 3));
        }
        sqlite3_finalize(q);
        size_t l = strlen(out);
        snprintf(out + l, size - l, "\n");
        n++;
    }
    return n;
}

//  A schema-8 database (results in a table of their own with two indexes)
//  keeps every result through migration 9, and the four result queries give
//  the same answers; an orphan result (no queue entry) gets one; the queries
//  are indexed; the expiry sweep still finds an expired entry (queue_expiry
//  is gone) and a replay still updates the one result.
static void test_schema_9_upgrade(void **state)
{
    (void)state;
    char dir[] = "/tmp/store_db_testXXXXXX", path[64], err[256] = "", next[128];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/db", dir);
    store_db_opts_t o = {.sync_full = false};
    store_db_t *db = store_db_new(path, &o, err, sizeof err);
    assert_non_null(db);
    s_last_seq = 0;
    s_enroll(db, "d1");
    s_enroll(db, "d2");
    s_enroll(db, "d3");
    s_enqueue(db, "A", 0, 0, "d1 d2 d3");
    s_enqueue(db, "B", 0, 0, "d1");
    s_enqueue(db, "C", 0, 0, "d2");
    s_now += 10;
    assert_int_equal(s_connect(db, "d1", "Idle", NULL, next), 200);
    assert_string_equal(next, "A");
    s_now += 10;
    assert_int_equal(s_connect(db, "d1", "Acknowledged", "A", next), 200);
    assert_string_equal(next, "B");
    s_now += 10;
    assert_int_equal(s_connect(db, "d2", "Idle", NULL, next), 200);
    assert_string_equal(next, "A");
    s_now += 10;
    assert_int_equal(s_connect(db, "d2", "Error", "A", next), 200);
    assert_string_equal(next, "C");
    //  C is cancelled after its delivery; the device's answer is still kept
    uint64_t n;
    assert_int_equal(store_db_begin(db), 0);
    assert_int_equal(store_db_cancel(db, "C", NULL, 0, s_now, &n), STORE_OK);
    s_commit(db);
    s_now += 10;
    assert_int_equal(s_connect(db, "d2", "Acknowledged", "C", next), 200);
    s_now += 10;
    assert_int_equal(s_connect(db, "d1", "Acknowledged", "B", next), 200);
    //  a replay of A: still one result, updated
    s_now += 10;
    assert_int_equal(s_connect(db, "d1", "Acknowledged", "A", next), 200);
    assert_true(s_saw("command.result"));
    char st[256];
    assert_int_equal(s_results(db, "d1", NULL, st, sizeof st), 2);
    assert_string_equal(st, "Acknowledged Acknowledged");
    assert_int_equal(s_results(db, NULL, "C", st, sizeof st), 1);
    assert_int_equal(s_results(db, NULL, NULL, NULL, 0), 4);
    assert_int_equal(s_count(db, "SELECT count(*) FROM results"), 4);
    const char *qs[4][2] = {{"d1", NULL}, {NULL, "A"}, {"d2", "C"}, {NULL, NULL}};
    char *before[4];
    size_t blen[4];
    for (int i = 0; i < 4; i++)
        before[i] = s_results_raw(db, qs[i][0], qs[i][1], &blen[i]);
    //  the plans: no scan of queue or results but the newest-first list's
    char plans[4096];
    assert_int_equal(s_plans(db, "SELECT r.eid, c.uuid", plans, sizeof plans), 4);
    assert_null(strstr(plans, "SCAN q"));
    assert_null(strstr(plans, "SCAN c"));
    assert_non_null(strstr(plans, "SEARCH q USING PRIMARY KEY (eid=?)"));
    assert_non_null(strstr(plans, "SEARCH r USING INDEX results_cmd (cmd=?)"));
    assert_non_null(strstr(plans, "SEARCH r USING INTEGER PRIMARY KEY (rowid=?)"));
    assert_non_null(strstr(plans, "SCAN r")); //  all results: by id, newest first
    //  a command's newest results: read in results_cmd's order, as many as listed
    assert_int_equal(s_plans(db,
                             "SELECT r.eid, c.uuid, c.request_type, r.status, r.received, r.body"
                             " FROM results r JOIN commands c ON c.id=r.cmd WHERE",
                             plans, sizeof plans),
                     1);
    assert_non_null(strstr(plans, "SEARCH r USING INDEX results_cmd (cmd=?)"));
    assert_null(strstr(plans, "TEMP B-TREE"));
    int64_t queue_rows = s_count(db, "SELECT count(*) FROM queue");
    int64_t events = s_count(db, "SELECT count(*) FROM events");
    int64_t last_seq = s_count(db, "SELECT max(seq) FROM events");
    assert_true(events > 10 && last_seq == events);
    store_db_destroy(&db);

    //  as schema 8 left it, plus a result without a queue entry (by hand)
    sqlite3 *raw;
    assert_int_equal(sqlite3_open(path, &raw), SQLITE_OK);
    assert_int_equal(sqlite3_exec(raw,
                                  STORE_SCHEMA_9_UNDO_FOR_TESTS
                                  "INSERT INTO results(eid,cmd,status,received,body)"
                                  " SELECT 'd3', id, 'Acknowledged', 1, NULL FROM commands"
                                  " WHERE uuid='B';"
                                  "PRAGMA user_version=8",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(raw);
    db = store_db_new(path, &o, err, sizeof err);
    assert_non_null(db);
    assert_int_equal(store_db_schema_version(db), STORE_SCHEMA_VERSION);
    assert_int_equal(s_count(db, "SELECT count(*) FROM results"), 5);
    assert_int_equal(s_count(db, "SELECT count(*) FROM queue"), queue_rows + 1);
    assert_int_equal(s_count(db, "SELECT count(*) FROM queue WHERE result IS NOT NULL"), 5);
    //  the event log: every event kept, seq goes on from the last one, no
    //  AUTOINCREMENT bookkeeping left
    assert_int_equal(s_count(db, "SELECT count(*) FROM events"), events);
    assert_int_equal(s_count(db, "SELECT max(seq) FROM events"), last_seq);
    assert_int_equal(s_count(db, "SELECT count(*) FROM sqlite_sequence"), 0);
    assert_int_equal(s_count(db, "SELECT count(*) FROM sqlite_schema WHERE name IN"
                                 " ('queue_expiry','sqlite_autoindex_results_1')"),
                     0);
    for (int i = 0; i < 4; i++) {
        size_t alen;
        char *after = s_results_raw(db, qs[i][0], qs[i][1], &alen);
        if (i < 3) { //  the orphan is only in the newest-first list
            assert_int_equal(alen, blen[i]);
            assert_memory_equal(after, before[i], alen);
        }
        free(after);
        free(before[i]);
    }
    assert_int_equal(s_results(db, NULL, NULL, NULL, 0), 5);
    assert_int_equal(s_results(db, "d3", NULL, st, sizeof st), 1);
    assert_string_equal(st, "Acknowledged");
    char q[256];
    s_queue(db, "d3", q, sizeof q);
    assert_string_equal(q, "A:pending B:acknowledged"); //  the orphan's entry, finished
    //  a device's timeline still searches events_eid, from seq on
    msgpack_sbuffer tl;
    msgpack_sbuffer_init(&tl);
    assert_int_equal(store_inv_timeline(store_db_inv(db), "d1", 2, 100, &tl), 0);
    assert_true(tl.size > 10);
    msgpack_sbuffer_destroy(&tl);
    assert_int_equal(s_plans(db, "SELECT seq, ts, name, eid, source, data FROM events WHERE seq>?2",
                             plans, sizeof plans),
                     1);
    assert_non_null(strstr(plans, "SEARCH events USING INDEX events_eid (eid=? AND rowid>?)"));
    assert_null(strstr(plans, "SCAN events"));
    //  the expiry sweep reads queue_active now: an expired entry is found
    s_enqueue(db, "E", 5, 1000, "d3");
    s_now += 2000;
    assert_int_equal(s_connect(db, "d3", "Idle", NULL, next), 200);
    assert_true(s_saw("command.expired"));
    assert_true(s_last_seq > (uint64_t)last_seq);
    assert_int_equal(s_count(db, "SELECT count(*) FROM sqlite_sequence"), 0);
    assert_string_equal(next, "A");
    assert_int_equal(s_plans(db, "SELECT expires IS NOT NULL", plans, sizeof plans), 1);
    assert_non_null(strstr(plans, "USING INDEX queue_active (eid=?)"));
    //  an answer after the upgrade: one more result, through its entry
    s_now += 10;
    assert_int_equal(s_connect(db, "d3", "Acknowledged", "A", next), 200);
    assert_int_equal(s_results(db, NULL, "A", st, sizeof st), 3);
    assert_string_equal(st, "Acknowledged Error Acknowledged"); //  by result id, newest first
    store_db_destroy(&db);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_lists(void **state)
{
    (void)state;
    char err[256] = "";
    (void)err;
    char next[128];
    store_db_t *db = s_open();
    s_enroll(db, "d1");
    s_enroll(db, "d2");
    s_enroll(db, "d3");
    s_enqueue(db, "A", 0, 0, "d1 d2");
    s_connect(db, "d1", "Idle", NULL, next);
    s_connect(db, "d1", "Acknowledged", "A", next);
    s_connect(db, "d2", "Idle", NULL, next);
    s_connect(db, "d2", "Error", "A", next);
    assert_int_equal(s_results(db, NULL, "A", NULL, 0), 2);
    assert_int_equal(s_results(db, "d2", "A", NULL, 0), 1);
    assert_int_equal(s_results(db, NULL, NULL, NULL, 0), 2);
    msgpack_sbuffer out;
    msgpack_sbuffer_init(&out);
    assert_int_equal(store_db_devices(db, "d1", 10, &out), STORE_OK); //  after d1
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, out.data, out.size, NULL), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(u.data.via.array.size, 2);
    msgpack_sbuffer_clear(&out);
    assert_int_equal(store_db_events(db, 0, 5, &out), STORE_OK);
    assert_int_equal(msgpack_unpack_next(&u, out.data, out.size, NULL), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(u.data.via.array.size, 5);
    //  wakeups: d1 and d2 got a command, then connected (cleared); d3 did not connect
    s_enqueue(db, "W", 0, 0, "d3");
    int64_t qa = -1, qs = -1, qw = -1;
    assert_int_equal(store_db_depths(db, &qa, &qs, &qw), 0);
    assert_int_equal(qw, 1); //  the metrics' store_wake_pending: d3
    msgpack_sbuffer_clear(&out);
    assert_int_equal(store_db_begin(db), 0);
    assert_int_equal(store_db_wake_pending(db, 10, true, &out), STORE_OK);
    s_commit(db);
    assert_int_equal(msgpack_unpack_next(&u, out.data, out.size, NULL), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(u.data.via.array.size, 1);
    msgpack_sbuffer_clear(&out);
    assert_int_equal(store_db_wake_pending(db, 10, false, &out), STORE_OK);
    assert_int_equal(msgpack_unpack_next(&u, out.data, out.size, NULL), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(u.data.via.array.size, 0);
    //  event_append from another process gets the next seq
    uint64_t seq;
    assert_int_equal(store_db_begin(db), 0);
    assert_int_equal(
        store_db_event_append(db, "security.rejected", "d9", "gateway", NULL, 0, s_now, &seq),
        STORE_OK);
    s_commit(db);
    assert_int_equal(seq, s_last_seq);
    msgpack_sbuffer clear;
    msgpack_sbuffer_init(&clear);
    assert_int_equal(store_db_queue(db, "nobody", true, NULL, s_now, &clear), STORE_ERR_NOTFOUND);
    assert_non_null(strstr(store_db_errmsg(db), "picomdm devices"));
    msgpack_sbuffer_destroy(&clear);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&out);
    store_db_destroy(&db);
}

//  Doctor facts: the identity certificate's notAfter and the clock skew are
//  written only when they change, and store.doctor reports them (for a user
//  channel: its device's).
static int s_note(store_db_t *db, const char *eid, int64_t na, bool has_skew, int64_t skew,
                  int64_t now)
{
    assert_int_equal(store_db_begin(db), 0);
    int r = store_db_doctor_note(db, eid, na, has_skew, skew, now);
    s_commit(db);
    return r;
}

static int64_t s_fact(store_db_t *db, const char *eid, const char *key)
{
    msgpack_sbuffer out;
    msgpack_sbuffer_init(&out);
    assert_int_equal(store_doctor_device(db, eid, &out), 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, out.data, out.size, NULL), MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *o = pm_mp_get(&u.data, key);
    assert_non_null(o);
    int64_t v = o->type == MSGPACK_OBJECT_NIL                ? -1
                : o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (int64_t)o->via.u64
                                                             : o->via.i64;
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&out);
    return v;
}

static void test_doctor_identity_facts(void **state)
{
    (void)state;
    store_db_t *db = s_open();
    s_enroll(db, "d1");
    assert_int_equal(s_fact(db, "d1", "cert_not_after"), -1); //  nil: never measured
    assert_int_equal(s_fact(db, "d1", "clock_skew_s"), -1);
    int64_t na = s_now + 3LL * 86400 * 1000;
    assert_int_equal(s_note(db, "d1", 0, false, 0, s_now), 0); //  nothing to record
    assert_int_equal(s_note(db, "d1", na, true, 900, s_now), 1);
    assert_int_equal(s_note(db, "d1", na, true, 905, s_now + 1000), 0); //  same facts: no write
    assert_int_equal(s_note(db, "d1", na, false, 0, s_now + 2000), 0);  //  no skew: kept
    assert_int_equal(s_fact(db, "d1", "clock_skew_s"), 900);
    assert_int_equal(s_fact(db, "d1", "skew_at"), s_now);
    assert_int_equal(s_note(db, "d1", na, true, -4, s_now + 3000), 1); //  clock fixed
    assert_int_equal(s_fact(db, "d1", "clock_skew_s"), -4);
    assert_int_equal(s_note(db, "d1", na, true, -4, s_now + 3000 + 3600000), 1); //  hourly
    assert_int_equal(s_fact(db, "d1", "skew_at"), s_now + 3000 + 3600000);
    assert_int_equal(s_note(db, "d1", na + 1000, false, 0, s_now + 4000), 1); //  renewed cert
    assert_int_equal(s_fact(db, "d1", "cert_not_after"), na + 1000);
    assert_int_equal(s_fact(db, "d1", "clock_skew_s"), -4); //  the skew stays
    //  a user channel without facts of its own shows its device's
    assert_int_equal(s_checkin(db, "d1:U1", "user", "TokenUpdate", NULL), 200);
    assert_int_equal(s_fact(db, "d1:U1", "cert_not_after"), na + 1000);
    //  the fleet counts: d1 expiring within 30 days; d2 expired and 10 minutes behind
    s_enroll(db, "d2");
    assert_int_equal(s_note(db, "d2", s_now - 1000, true, -600, s_now), 1);
    msgpack_sbuffer out;
    msgpack_sbuffer_init(&out);
    assert_int_equal(store_doctor_fleet(db, 86400000, 3, s_now, 30LL * 86400 * 1000, 300, &out), 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, out.data, out.size, NULL), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(pm_mp_get(&u.data, "identity_expired")->via.i64, 1);
    assert_int_equal(pm_mp_get(&u.data, "identity_expiring")->via.i64, 1);
    assert_int_equal(pm_mp_get(&u.data, "clock_skewed")->via.i64, 1);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&out);
    store_db_destroy(&db);
}

/* ---- the statement cache (store_db_stmt) ---- */

static const char s_q_count[] = "SELECT count(*) FROM cache_t";
static const char s_q_all[] = "SELECT * FROM cache_t";

//  Kept and reused; a schema change (ALTER TABLE, from another connection
//  too) prepares the kept statement again; a statement built at run time is
//  refused once the cache is half full instead of growing without bound.
static void test_stmt_cache(void **state)
{
    (void)state;
    char path[] = "/tmp/store_db_test_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    unlink(path);
    char err[256];
    store_db_opts_t o = {.sync_full = false};
    store_db_t *db = store_db_new(path, &o, err, sizeof err);
    assert_non_null(db);
    sqlite3 *sql = store_db_sqlite(db);
    assert_int_equal(sqlite3_exec(sql, "CREATE TABLE cache_t(a); INSERT INTO cache_t VALUES(1)",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    int n0 = store_db_stmt_count(db);
    sqlite3_stmt *st = store_db_stmt(db, s_q_all);
    assert_non_null(st);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_count(st), 1);
    //  the same statement again, reset (it was left on a row)
    assert_ptr_equal(store_db_stmt(db, s_q_all), st);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(store_db_stmt_count(db), n0 + 1);
    sqlite3_stmt *c = store_db_stmt(db, s_q_count);
    assert_non_null(c);
    assert_ptr_not_equal(c, st);
    assert_int_equal(store_db_stmt_count(db), n0 + 2);
    //  a schema change on this connection: the kept statement sees it
    assert_int_equal(
        sqlite3_exec(sql, "ALTER TABLE cache_t ADD COLUMN b DEFAULT 7", NULL, NULL, NULL),
        SQLITE_OK);
    st = store_db_stmt(db, s_q_all);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_count(st), 2);
    assert_int_equal(sqlite3_column_int(st, 1), 7);
    //  ... and on another connection (another process, a migration)
    sqlite3 *other = NULL;
    assert_int_equal(sqlite3_open(path, &other), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(other, "ALTER TABLE cache_t ADD COLUMN c DEFAULT 8", NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(other);
    st = store_db_stmt(db, s_q_all);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_count(st), 3);
    assert_int_equal(sqlite3_column_int(st, 2), 8);
    assert_int_equal(store_db_stmt_count(db), n0 + 2); //  still the same two
    //  SQL that does not prepare: NULL and a message, nothing kept
    static const char bad[] = "SELECT * FROM no_such_table";
    assert_null(store_db_stmt(db, bad));
    assert_non_null(strstr(store_db_errmsg(db), "no_such_table"));
    assert_int_equal(store_db_stmt_count(db), n0 + 2);
    //  strings made at run time are new keys each time: refused when half full
    static char made[200][48];
    int i;
    for (i = 0; i < 200; i++) {
        snprintf(made[i], sizeof made[i], "SELECT %d", i);
        if (!store_db_stmt(db, made[i]))
            break;
    }
    assert_true(i < 200);
    assert_int_equal(store_db_stmt_count(db), 128);
    assert_non_null(strstr(store_db_errmsg(db), "statement cache is full"));
    assert_ptr_equal(store_db_stmt(db, s_q_count), c); //  the kept ones still work
    store_db_destroy(&db);
    store_db_destroy(&db); //  safe twice
    char wal[64];
    snprintf(wal, sizeof wal, "%s-wal", path);
    assert_int_not_equal(access(wal, F_OK), 0); //  every statement finalized: closed for real
    unlink(path);
}

//  Session 9 (docs/queue.md "Session 9, storecpu4"): a connect runs Q_NEXT
//  only when an active entry may be due, its second pass (the entries
//  demoted by notnow-limit) only when one may be demoted, and updates the
//  device's sessions row in place once it exists. The answers are those of
//  the queue rules; only the statements run change.
static int s_next_runs, s_ses_upserts, s_ses_updates;
static int s_count_connect(unsigned type, void *ctx, void *p, void *x)
{
    (void)ctx, (void)x;
    if (type != SQLITE_TRACE_STMT)
        return 0;
    const char *sql = sqlite3_sql((sqlite3_stmt *)p);
    if (strncmp(sql, "SELECT q.cmd, q.deliveries", 26) == 0)
        s_next_runs++;
    else if (strncmp(sql, "INSERT INTO sessions", 20) == 0)
        s_ses_upserts++;
    else if (strncmp(sql, "UPDATE sessions", 15) == 0)
        s_ses_updates++;
    return 0;
}

static void s_counts_zero(void)
{
    s_next_runs = s_ses_upserts = s_ses_updates = 0;
}

//  With the counts zeroed: one connect (status, command uuid or NULL) is
//  answered 200 with `want` as the next command ("" for none), after `runs`
//  Q_NEXT passes.
static void s_connect_runs(store_db_t *db, const char *eid, const char *status, const char *uuid,
                           const char *want, int runs)
{
    char next[128];
    s_counts_zero();
    assert_int_equal(s_connect(db, eid, status, uuid, next), 200);
    assert_string_equal(next, want);
    assert_int_equal(s_next_runs, runs);
}

static void test_connect_statements(void **state)
{
    (void)state;
    store_db_t *db = s_open();
    char next[128];
    s_pol = (store_policy_t){.notnow_limit = 1};
    s_enroll(db, "d1");
    s_enqueue(db, "A", 0, 0, "d1");
    s_enqueue(db, "B", 0, 0, "d1");
    sqlite3_trace_v2(store_db_sqlite(db), SQLITE_TRACE_STMT, s_count_connect, NULL);
    //  the first connect: one pass finds A; the sessions row is created
    s_connect_runs(db, "d1", "Idle", NULL, "A", 1);
    assert_int_equal(s_ses_upserts, 1);
    assert_int_equal(s_ses_updates, 0);
    //  A answered, B still active: one pass finds it; the row is updated
    s_connect_runs(db, "d1", "Acknowledged", "A", "B", 1);
    assert_int_equal(s_ses_upserts, 0);
    assert_int_equal(s_ses_updates, 1);
    //  B answered, nothing active left: no Q_NEXT at all
    s_connect_runs(db, "d1", "Acknowledged", "B", "", 0);
    assert_int_equal(s_ses_updates, 1);
    s_connect_runs(db, "d1", "Idle", NULL, "", 0);
    //  NotNow (limit 1): C stays active and is demoted; both passes run and
    //  find nothing in this session; the next session's Idle gets C through
    //  the second pass; a new command D goes before the demoted C
    s_enqueue(db, "C", 0, 0, "d1");
    assert_int_equal(s_connect(db, "d1", "Idle", NULL, next), 200);
    assert_string_equal(next, "C");
    s_connect_runs(db, "d1", "NotNow", "C", "", 2);
    s_connect_runs(db, "d1", "Idle", NULL, "C", 2);
    assert_int_equal(s_connect(db, "d1", "NotNow", "C", next), 200);
    s_enqueue(db, "D", 0, 0, "d1");
    s_connect_runs(db, "d1", "Idle", NULL, "D", 1);
    //  D answered, only the demoted C left: both passes, C again
    s_connect_runs(db, "d1", "Acknowledged", "D", "C", 2);
    //  an entry that expires: the sweep changes the active set, Q_NEXT runs as before
    s_enqueue(db, "E", 0, 1000, "d1");
    s_now += 2000;
    s_counts_zero();
    assert_int_equal(s_connect(db, "d1", "Idle", NULL, next), 200);
    assert_true(s_saw("command.expired"));
    assert_string_equal(next, "C");
    assert_int_equal(s_next_runs, 2);
    //  an entry delivered in this session, nothing demoted, an answer for an
    //  unknown command: the first pass finds nothing due and the demoted
    //  pass is skipped (review L3: only that it runs when needed was checked)
    s_enroll(db, "d2");
    s_enqueue(db, "H", 0, 0, "d2");
    assert_int_equal(s_connect(db, "d2", "Idle", NULL, next), 200);
    assert_string_equal(next, "H");
    s_connect_runs(db, "d2", "Acknowledged", "ZZZ", "", 1);
    sqlite3_trace_v2(store_db_sqlite(db), 0, NULL, NULL);
    //  Q_NEXT reads the command with the entry: the device's active entries in
    //  the index's order (no sort), the command by its id
    char plans[1024];
    assert_int_equal(s_plans(db, "SELECT q.cmd, q.deliveries", plans, sizeof plans), 1);
    assert_non_null(strstr(plans, "SEARCH q USING INDEX queue_active (eid=?)"));
    assert_non_null(strstr(plans, "SEARCH c USING INTEGER PRIMARY KEY (rowid=?)"));
    assert_null(strstr(plans, "TEMP B-TREE"));
    s_pol = (store_policy_t){0};
    store_db_destroy(&db);
}

//  store_copy / store_join (store_pack.h) copy as snprintf("%s") / ("%s.%s") did.
//  The doctor note skips its upsert when the remembered identity row says it
//  would change nothing, and forgets what a rollback undid.
static int s_identity_upserts;
static int s_count_identity(unsigned type, void *ctx, void *p, void *x)
{
    (void)ctx, (void)x;
    if (type == SQLITE_TRACE_STMT &&
        strncmp(sqlite3_sql((sqlite3_stmt *)p), "INSERT INTO identity", 20) == 0)
        s_identity_upserts++;
    return 0;
}

static void test_doctor_note_memo(void **state)
{
    (void)state;
    store_db_t *db = s_open();
    s_enroll(db, "d1");
    sqlite3_trace_v2(store_db_sqlite(db), SQLITE_TRACE_STMT, s_count_identity, NULL);
    int64_t na = s_now + 3LL * 86400 * 1000;
    s_identity_upserts = 0;
    assert_int_equal(s_note(db, "d1", na, true, 10, s_now), 1);
    assert_int_equal(s_identity_upserts, 1);
    //  the same facts (a skew within 30 s, within the hour): no statement at all
    for (int i = 0; i < 5; i++)
        assert_int_equal(s_note(db, "d1", na, true, 10 + i, s_now + 1000 * i), 0);
    assert_int_equal(s_note(db, "d1", na, false, 0, s_now + 9000), 0);
    assert_int_equal(s_identity_upserts, 1);
    //  a change is written (and remembered)
    assert_int_equal(s_note(db, "d1", na, true, 100, s_now + 10000), 1);
    assert_int_equal(s_identity_upserts, 2);
    assert_int_equal(s_note(db, "d1", na, true, 100, s_now + 11000), 0);
    assert_int_equal(s_identity_upserts, 2);
    //  rolled back: the row keeps 100, and the next note of 500 writes again
    assert_int_equal(store_db_begin(db), 0);
    assert_int_equal(store_db_doctor_note(db, "d1", na, true, 500, s_now + 12000), 1);
    store_db_rollback(db);
    assert_int_equal(s_fact(db, "d1", "clock_skew_s"), 100);
    assert_int_equal(s_note(db, "d1", na, true, 500, s_now + 13000), 1);
    assert_int_equal(s_fact(db, "d1", "clock_skew_s"), 500);
    //  a savepoint undone (group commit: one failing request) likewise
    assert_int_equal(store_db_begin(db), 0);
    assert_int_equal(store_db_op_begin(db), 0);
    assert_int_equal(store_db_doctor_note(db, "d1", na + 5000, true, 500, s_now + 14000), 1);
    store_db_op_end(db, false);
    s_commit(db);
    assert_int_equal(s_fact(db, "d1", "cert_not_after"), na);
    assert_int_equal(s_note(db, "d1", na + 5000, true, 500, s_now + 15000), 1);
    assert_int_equal(s_fact(db, "d1", "cert_not_after"), na + 5000);
    //  a rollback forgets only what its transaction wrote (review M3: a
    //  failed operator request must not empty the memo): d2, noted in a
    //  rolled-back transaction, is written (and read back) again; d1 is not
    s_enroll(db, "d2");
    assert_int_equal(s_note(db, "d2", na, true, 10, s_now + 15500), 1);
    assert_int_equal(store_db_begin(db), 0);
    assert_int_equal(store_db_doctor_note(db, "d2", na, true, 700, s_now + 15600), 1);
    store_db_rollback(db);
    int n = s_identity_upserts;
    assert_int_equal(s_note(db, "d1", na + 5000, false, 0, s_now + 16000), 0);
    assert_int_equal(s_identity_upserts, n);
    assert_int_equal(s_note(db, "d2", na, false, 0, s_now + 16000), 0);
    assert_int_equal(s_identity_upserts, n + 1);
    assert_int_equal(s_fact(db, "d2", "clock_skew_s"), 10);
    assert_int_equal(s_note(db, "d2", 0, true, 12, s_now + 17000), 0);
    assert_int_equal(s_note(db, "d1", 0, true, 505, s_now + 17000), 0);
    assert_int_equal(s_note(db, "d1", na + 5000, true, 495, s_now + 18000), 0);
    assert_int_equal(s_identity_upserts, n + 1);
    //  and an hour after the skew was measured it is measured again
    assert_int_equal(s_note(db, "d1", 0, true, 500, s_now + 15000 + 3600000), 1);
    assert_int_equal(s_identity_upserts, n + 2);
    assert_int_equal(s_fact(db, "d1", "skew_at"), s_now + 15000 + 3600000);
    //  a transaction that wrote more entries than it can list forgets every
    //  entry when rolled back: d1 is written again after it
    char eid[16];
    for (int i = 0; i < 70; i++) {
        snprintf(eid, sizeof eid, "m%d", i);
        s_enroll(db, eid);
    }
    assert_int_equal(store_db_begin(db), 0);
    for (int i = 0; i < 70; i++) {
        snprintf(eid, sizeof eid, "m%d", i);
        assert_int_equal(store_db_doctor_note(db, eid, na, true, 20, s_now + 20000), 1);
    }
    store_db_rollback(db);
    n = s_identity_upserts;
    assert_int_equal(s_note(db, "d1", 0, true, 500, s_now + 15000 + 3600000 + 1000), 0);
    assert_int_equal(s_identity_upserts, n + 1);
    sqlite3_trace_v2(store_db_sqlite(db), 0, NULL, NULL);
    store_db_destroy(&db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schema_migrations),
        cmocka_unit_test(test_queue_rules),
        cmocka_unit_test(test_checkin_rules),
        cmocka_unit_test(test_renewal_rebinds_and_silent_sweep),
        cmocka_unit_test(test_bootstrap_token),
        cmocka_unit_test(test_enqueue_idempotent_and_all_or_nothing),
        cmocka_unit_test(test_connect_retry_same_answer),
        cmocka_unit_test(test_group_commit_isolates_failures),
        cmocka_unit_test(test_lists),
        cmocka_unit_test(test_schema_9_upgrade),
        cmocka_unit_test(test_doctor_identity_facts),
        cmocka_unit_test(test_stmt_cache),
        cmocka_unit_test(test_doctor_note_memo),
        cmocka_unit_test(test_connect_statements),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
