/*  store_inv unit tests: answers driven through store_db_connect (the real
 *  queue path) become inventory rows; merge (DeviceInformation) and replace
 *  (lists, SecurityInfo); inventory.changed with old and new values; schema
 *  issues kept and reported; garbage never crashes; CommandFormatError is
 *  terminal; device filters and the per-enrollment timeline.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "pm_json.h"
#include "pm_plist.h"
#include "store_db.h"
#include "store_inv.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int64_t s_now = 1700000000000;
static store_policy_t s_pol = {0};

static char s_events[16384]; //  "name {json data}\n" per event of the last commit
static void s_on_event(void *arg, uint64_t seq, int64_t ts, const char *name, const char *eid,
                       const char *source, const uint8_t *data, size_t len)
{
    (void)arg, (void)seq, (void)ts, (void)eid, (void)source;
    size_t l = strlen(s_events);
    char *json = NULL;
    if (data && len) {
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        if (msgpack_unpack_next(&u, (const char *)data, len, NULL) == MSGPACK_UNPACK_SUCCESS)
            json = pm_json_from_obj(&u.data, NULL);
        msgpack_unpacked_destroy(&u);
    }
    snprintf(s_events + l, sizeof s_events - l, "%s %s\n", name, json ? json : "{}");
    free(json);
}

static void s_commit(store_db_t *db)
{
    assert_int_equal(store_db_commit(db), 0);
    s_events[0] = '\0';
    store_db_events_flush(db, s_on_event, NULL);
}

static void s_checkin(store_db_t *db, const char *eid, const char *mt)
{
    store_checkin_t in = {.eid = eid,
                          .kind = "device",
                          .message_type = mt,
                          .udid = eid,
                          .model = "iPhone",
                          .os_version = "17.6",
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
    assert_int_equal(store_db_checkin(db, &in, &res, &out), STORE_OK);
    s_commit(db);
    assert_int_equal(res.status, 200);
    msgpack_sbuffer_destroy(&out);
}

static void s_enqueue(store_db_t *db, const char *eid, const char *rt, const char *uuid)
{
    msgpack_sbuffer cmd;
    msgpack_sbuffer_init(&cmd);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &cmd, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "RequestType", 11);
    msgpack_pack_str_with_body(&pk, rt, strlen(rt));
    const char *t[1] = {eid};
    store_enqueue_t in = {.command_uuid = uuid,
                          .request_type = rt,
                          .command = (const uint8_t *)cmd.data,
                          .command_len = cmd.size,
                          .targets = t,
                          .ntargets = 1,
                          .now_ms = s_now};
    char u[128];
    uint64_t queued;
    assert_int_equal(store_db_begin(db), 0);
    assert_int_equal(store_db_enqueue(db, &in, u, sizeof u, &queued), STORE_OK);
    s_commit(db);
    msgpack_sbuffer_destroy(&cmd);
}

//  One CONNECT with `status` and a body given as XML plist dict contents (or
//  raw bytes when raw_len > 0). Returns true when a command was offered.
static bool s_connect_raw(store_db_t *db, const char *eid, const char *status, const char *uuid,
                          const uint8_t *body, size_t body_len)
{
    store_connect_t in = {.eid = eid,
                          .status = status,
                          .command_uuid = uuid,
                          .body = body,
                          .body_len = body_len,
                          .now_ms = s_now,
                          .policy = &s_pol};
    store_connect_res_t res;
    msgpack_sbuffer out;
    msgpack_sbuffer_init(&out);
    assert_int_equal(store_db_begin(db), 0);
    assert_int_equal(store_db_connect(db, &in, &res, &out), STORE_OK);
    s_commit(db);
    assert_int_equal(res.status, 200);
    bool offered = out.size > 0;
    msgpack_sbuffer_destroy(&out);
    return offered;
}

static bool s_answer(store_db_t *db, const char *eid, const char *status, const char *uuid,
                     const char *dict)
{
    char xml[8192];
    snprintf(xml, sizeof xml,
             "<?xml version=\"1.0\" encoding=\"UTF-8\"?><plist version=\"1.0\"><dict>"
             "<key>CommandUUID</key><string>%s</string><key>Status</key><string>%s</string>"
             "<key>UDID</key><string>%s</string>%s</dict></plist>",
             uuid, status, eid, dict);
    uint8_t *mp = NULL;
    size_t mplen = 0;
    char err[256];
    assert_int_equal(pm_plist_to_msgpack(xml, strlen(xml), NULL, &mp, &mplen, err, sizeof err), 0);
    bool offered = s_connect_raw(db, eid, status, uuid, mp, mplen);
    free(mp);
    return offered;
}

//  Queue rt, have the device take it and answer with `dict`.
static void s_round_trip(store_db_t *db, const char *eid, const char *rt, const char *uuid,
                         const char *dict)
{
    s_enqueue(db, eid, rt, uuid);
    s_now += 1000;
    assert_true(s_connect_raw(db, eid, "Idle", NULL, NULL, 0));
    s_now += 1000;
    s_answer(db, eid, "Acknowledged", uuid, dict);
}

//  The inventory of eid as JSON.
static char *s_inv_json(store_db_t *db, const char *eid)
{
    msgpack_sbuffer out;
    msgpack_sbuffer_init(&out);
    assert_int_equal(store_inv_list(store_db_inv(db), eid, &out), 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, out.data, out.size, NULL), MSGPACK_UNPACK_SUCCESS);
    char *json = pm_json_from_obj(&u.data, NULL);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&out);
    assert_non_null(json);
    return json;
}

static store_db_t *s_open(void)
{
    char err[256];
    store_db_t *db = store_db_new(":memory:", NULL, err, sizeof err);
    assert_non_null(db);
    assert_int_equal(store_db_schema_version(db), STORE_SCHEMA_VERSION);
    s_checkin(db, "dev1", "Authenticate");
    s_checkin(db, "dev1", "TokenUpdate");
    return db;
}

static void test_device_information_merge_and_change(void **state)
{
    (void)state;
    store_db_t *db = s_open();
    s_round_trip(db, "dev1", "DeviceInformation", "U1",
                 "<key>QueryResponses</key><dict><key>OSVersion</key><string>17.6</string>"
                 "<key>Model</key><string>iPhone16,1</string>"
                 "<key>BatteryLevel</key><real>0.5</real></dict>");
    assert_non_null(strstr(s_events, "inventory.changed"));
    assert_non_null(strstr(s_events, "\"key\":\"OSVersion\",\"old\":null,\"new\":\"17.6\""));
    assert_null(strstr(s_events, "inventory.invalid"));
    char *j = s_inv_json(db, "dev1");
    assert_non_null(strstr(j, "\"key\":\"OSVersion\",\"value\":\"17.6\""));
    assert_non_null(strstr(j, "\"key\":\"Model\",\"value\":\"iPhone16,1\""));
    assert_non_null(strstr(j, "\"command_uuid\":\"U1\""));
    free(j);

    //  OS update: only OSVersion asked; Model stays, change event names old and new
    s_round_trip(db, "dev1", "DeviceInformation", "U2",
                 "<key>QueryResponses</key><dict><key>OSVersion</key><string>18.1</string>"
                 "</dict>");
    assert_non_null(strstr(s_events, "\"key\":\"OSVersion\",\"old\":\"17.6\",\"new\":\"18.1\""));
    j = s_inv_json(db, "dev1");
    assert_non_null(strstr(j, "\"value\":\"18.1\""));
    assert_non_null(strstr(j, "\"key\":\"Model\",\"value\":\"iPhone16,1\""));
    free(j);

    //  the same answer again: nothing changed, no event
    s_round_trip(db, "dev1", "DeviceInformation", "U3",
                 "<key>QueryResponses</key><dict><key>OSVersion</key><string>18.1</string>"
                 "</dict>");
    assert_null(strstr(s_events, "inventory.changed"));
    //  ... but when and by which command it was last reported is kept (only
    //  those columns are written: no index entry, schema 8)
    j = s_inv_json(db, "dev1");
    assert_non_null(strstr(j, "\"key\":\"OSVersion\",\"value\":\"18.1\",\"source\":"
                              "\"DeviceInformation\",\"updated\":1700000006000,"
                              "\"command_uuid\":\"U3\""));
    assert_non_null(strstr(j, "\"command_uuid\":\"U1\"")); //  Model: not in U2 or U3
    free(j);

    //  filters in the store: --os, --query, --model, --silent-for
    store_inv_filter_t f = {.os_version = "18.1", .now_ms = s_now};
    msgpack_sbuffer out;
    msgpack_sbuffer_init(&out);
    assert_int_equal(store_inv_devices(store_db_inv(db), &f, NULL, 100, &out), 0);
    assert_int_equal((uint8_t)out.data[0], 0x91); //  one device
    msgpack_sbuffer_clear(&out);
    f = (store_inv_filter_t){.query_key = "Model", .query_value = "iPhone16,1", .now_ms = s_now};
    assert_int_equal(store_inv_devices(store_db_inv(db), &f, NULL, 100, &out), 0);
    assert_int_equal((uint8_t)out.data[0], 0x91);
    msgpack_sbuffer_clear(&out);
    f = (store_inv_filter_t){.query_key = "Model", .query_value = "iPad", .now_ms = s_now};
    assert_int_equal(store_inv_devices(store_db_inv(db), &f, NULL, 100, &out), 0);
    assert_int_equal((uint8_t)out.data[0], 0x90);
    msgpack_sbuffer_clear(&out);
    //  a changed value is updated in place (S_SET, session 9): its text and
    //  inventory_kv follow it
    f = (store_inv_filter_t){.query_key = "OSVersion", .query_value = "18.1", .now_ms = s_now};
    assert_int_equal(store_inv_devices(store_db_inv(db), &f, NULL, 100, &out), 0);
    assert_int_equal((uint8_t)out.data[0], 0x91);
    msgpack_sbuffer_clear(&out);
    f = (store_inv_filter_t){.query_key = "OSVersion", .query_value = "17.6", .now_ms = s_now};
    assert_int_equal(store_inv_devices(store_db_inv(db), &f, NULL, 100, &out), 0);
    assert_int_equal((uint8_t)out.data[0], 0x90);
    msgpack_sbuffer_clear(&out);
    f = (store_inv_filter_t){.model = "iPhone16,1", .now_ms = s_now};
    assert_int_equal(store_inv_devices(store_db_inv(db), &f, NULL, 100, &out), 0);
    assert_int_equal((uint8_t)out.data[0], 0x91);
    msgpack_sbuffer_clear(&out);
    f = (store_inv_filter_t){.silent_for_ms = 3600000, .now_ms = s_now};
    assert_int_equal(store_inv_devices(store_db_inv(db), &f, NULL, 100, &out), 0);
    assert_int_equal((uint8_t)out.data[0], 0x90); //  seen just now
    msgpack_sbuffer_clear(&out);
    f.now_ms = s_now + 8 * 86400000LL;
    assert_int_equal(store_inv_devices(store_db_inv(db), &f, NULL, 100, &out), 0);
    assert_int_equal((uint8_t)out.data[0], 0x91);
    msgpack_sbuffer_destroy(&out);

    //  timeline: this enrollment's events in order
    msgpack_sbuffer_init(&out);
    assert_int_equal(store_inv_timeline(store_db_inv(db), "dev1", 0, 1000, &out), 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, out.data, out.size, NULL), MSGPACK_UNPACK_SUCCESS);
    j = pm_json_from_obj(&u.data, NULL);
    const char *a = strstr(j, "checkin.Authenticate"), *b = strstr(j, "command.queued"),
               *c = strstr(j, "inventory.changed");
    assert_true(a && b && c && a < b && b < c);
    free(j);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&out);
    store_db_destroy(&db);
    store_db_destroy(&db); //  safe twice
}

static void test_lists_replaced(void **state)
{
    (void)state;
    store_db_t *db = s_open();
    s_round_trip(db, "dev1", "InstalledApplicationList", "A1",
                 "<key>InstalledApplicationList</key><array>"
                 "<dict><key>Identifier</key><string>com.a</string><key>Version</key><string>1"
                 "</string></dict>"
                 "<dict><key>Identifier</key><string>com.b</string></dict></array>");
    char *j = s_inv_json(db, "dev1");
    assert_non_null(strstr(j, "\"key\":\"InstalledApplicationList\",\"value\":[{"));
    assert_non_null(strstr(j, "com.b"));
    free(j);
    assert_non_null(strstr(s_events, "\"new\":\"[2 items]\""));
    s_round_trip(db, "dev1", "InstalledApplicationList", "A2",
                 "<key>InstalledApplicationList</key><array>"
                 "<dict><key>Identifier</key><string>com.a</string></dict></array>");
    j = s_inv_json(db, "dev1");
    assert_null(strstr(j, "com.b"));
    assert_non_null(strstr(j, "\"command_uuid\":\"A2\""));
    free(j);

    //  SecurityInfo: one attribute per key; a key missing from the next answer goes
    s_round_trip(db, "dev1", "SecurityInfo", "S1",
                 "<key>SecurityInfo</key><dict><key>PasscodePresent</key><true/>"
                 "<key>HardwareEncryptionCaps</key><integer>3</integer></dict>");
    j = s_inv_json(db, "dev1");
    assert_non_null(strstr(j, "\"key\":\"SecurityInfo.PasscodePresent\",\"value\":true"));
    free(j);
    s_round_trip(db, "dev1", "SecurityInfo", "S2",
                 "<key>SecurityInfo</key><dict><key>PasscodePresent</key><false/></dict>");
    assert_non_null(strstr(s_events, "\"key\":\"SecurityInfo.PasscodePresent\",\"old\":\"true\","
                                     "\"new\":\"false\""));
    assert_non_null(strstr(s_events, "\"key\":\"SecurityInfo.HardwareEncryptionCaps\",\"old\":"
                                     "\"3\",\"new\":null"));
    j = s_inv_json(db, "dev1");
    assert_null(strstr(j, "HardwareEncryptionCaps"));
    assert_non_null(strstr(j, "com.a")); //  other sources untouched
    free(j);
    store_db_destroy(&db);
}

//  The query plan of the cached statement whose text starts with `prefix`
//  (prepared by the calls before), one line per step.
static void s_plan(store_db_t *db, const char *prefix, char *out, size_t size)
{
    sqlite3 *sql = store_db_sqlite(db);
    sqlite3_stmt *st = NULL, *q = NULL;
    while ((st = sqlite3_next_stmt(sql, st)) != NULL)
        if (strncmp(sqlite3_sql(st), prefix, strlen(prefix)) == 0)
            break;
    assert_non_null(st);
    char eqp[4096];
    snprintf(eqp, sizeof eqp, "EXPLAIN QUERY PLAN %s", sqlite3_sql(st));
    assert_int_equal(sqlite3_prepare_v2(sql, eqp, -1, &q, NULL), SQLITE_OK);
    out[0] = '\0';
    while (sqlite3_step(q) == SQLITE_ROW) {
        size_t l = strlen(out);
        snprintf(out + l, size - l, "%s\n", (const char *)sqlite3_column_text(q, 3));
    }
    sqlite3_finalize(q);
}

//  Schema 8 drops inventory_source: a database of schema 7 upgrades keeping
//  its inventory, and the statements that used the index still search by an
//  index (never a scan of the whole inventory).
static void test_schema_8_upgrade(void **state)
{
    (void)state;
    char dir[] = "/tmp/store_inv_testXXXXXX", path[64], err[256];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/db", dir);
    store_db_t *db = store_db_new(path, &(store_db_opts_t){.sync_full = false}, err, sizeof err);
    assert_non_null(db);
    s_checkin(db, "dev1", "Authenticate");
    s_checkin(db, "dev1", "TokenUpdate");
    s_round_trip(db, "dev1", "SecurityInfo", "S1",
                 "<key>SecurityInfo</key><dict><key>PasscodePresent</key><true/>"
                 "<key>HardwareEncryptionCaps</key><integer>3</integer></dict>");
    char *before = s_inv_json(db, "dev1");
    store_db_destroy(&db);
    //  as schema 7 left it
    sqlite3 *raw;
    assert_int_equal(sqlite3_open(path, &raw), SQLITE_OK);
    assert_int_equal(sqlite3_exec(raw,
                                  STORE_SCHEMA_9_UNDO_FOR_TESTS
                                  "CREATE INDEX inventory_source ON inventory(eid, source);"
                                  "PRAGMA user_version=7",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(raw);
    db = store_db_new(path, &(store_db_opts_t){.sync_full = false}, err, sizeof err);
    assert_non_null(db);
    assert_int_equal(store_db_schema_version(db), STORE_SCHEMA_VERSION);
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(store_db_sqlite(db),
                                        "SELECT count(*) FROM sqlite_schema WHERE"
                                        " name='inventory_source'",
                                        -1, &q, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(q, 0), 0);
    sqlite3_finalize(q);
    char *after = s_inv_json(db, "dev1");
    assert_string_equal(before, after);
    free(before);
    free(after);
    //  a REPLACE answer still drops what its RequestType no longer reports,
    //  and leaves the other sources alone
    s_round_trip(db, "dev1", "DeviceInformation", "U1",
                 "<key>QueryResponses</key><dict><key>Model</key><string>iPhone16,1</string>"
                 "</dict>");
    s_round_trip(db, "dev1", "SecurityInfo", "S2",
                 "<key>SecurityInfo</key><dict><key>PasscodePresent</key><false/></dict>");
    assert_non_null(strstr(s_events, "\"key\":\"SecurityInfo.HardwareEncryptionCaps\",\"old\":"
                                     "\"3\",\"new\":null"));
    char *j = s_inv_json(db, "dev1");
    assert_null(strstr(j, "HardwareEncryptionCaps"));
    assert_non_null(strstr(j, "\"key\":\"Model\""));
    assert_non_null(strstr(j, "\"key\":\"SecurityInfo.PasscodePresent\",\"value\":false"));
    free(j);
    //  the plans: the delete reads a range of the primary key; --query and
    //  --model search inventory_kv
    msgpack_sbuffer out;
    msgpack_sbuffer_init(&out);
    store_inv_filter_t f = {.query_key = "Model", .query_value = "iPhone16,1", .now_ms = s_now};
    assert_int_equal(store_inv_devices(store_db_inv(db), &f, NULL, 100, &out), 0);
    assert_int_equal((uint8_t)out.data[0], 0x91);
    msgpack_sbuffer_destroy(&out);
    char plan[4096];
    s_plan(db, "DELETE FROM inventory", plan, sizeof plan);
    assert_non_null(strstr(plan, "SEARCH inventory USING PRIMARY KEY (eid=? AND key>? AND key<?)"));
    s_plan(db, "SELECT e.eid, e.kind", plan, sizeof plan);
    assert_non_null(strstr(plan, "USING COVERING INDEX inventory_kv (key=? AND vtext=?)"));
    assert_null(strstr(plan, "SCAN inventory"));
    store_db_destroy(&db);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_schema_issues_kept(void **state)
{
    (void)state;
    store_db_t *db = s_open();
    //  OSVersion as an integer (wrong type), an unknown query key, an unknown top key
    s_round_trip(db, "dev1", "DeviceInformation", "B1",
                 "<key>QueryResponses</key><dict><key>OSVersion</key><integer>18</integer>"
                 "<key>FutureThing</key><string>x</string><key>Model</key><string>iPad</string>"
                 "</dict><key>Extra</key><string>y</string>");
    assert_non_null(strstr(s_events, "inventory.invalid"));
    assert_non_null(strstr(s_events, "OSVersion: expected string, got integer"));
    assert_non_null(strstr(s_events, "FutureThing: key not in Apple's schema"));
    char *j = s_inv_json(db, "dev1");
    assert_non_null(strstr(j, "\"key\":\"OSVersion\",\"value\":18"));
    assert_non_null(strstr(j, "\"key\":\"FutureThing\""));
    assert_non_null(strstr(j, "\"key\":\"Model\",\"value\":\"iPad\""));
    assert_non_null(strstr(j, "\"key\":\"DeviceInformation.Extra\""));
    free(j);

    //  a body that is not msgpack at all: reported, no crash, queue moves on
    s_enqueue(db, "dev1", "SecurityInfo", "G1");
    assert_true(s_connect_raw(db, "dev1", "Idle", NULL, NULL, 0));
    static const uint8_t junk[] = {0xc1, 0xff, 0x00};
    s_connect_raw(db, "dev1", "Acknowledged", "G1", junk, sizeof junk);
    assert_non_null(strstr(s_events, "command.result"));
    assert_non_null(strstr(s_events, "not a dictionary"));
    store_db_destroy(&db);
}

static void test_format_error_terminal(void **state)
{
    (void)state;
    store_db_t *db = s_open();
    s_enqueue(db, "dev1", "ProfileList", "F1");
    assert_true(s_connect_raw(db, "dev1", "Idle", NULL, NULL, 0));
    //  CommandFormatError: stored with its ErrorChain, never offered again
    bool more = s_answer(db, "dev1", "CommandFormatError", "F1",
                         "<key>ErrorChain</key><array><dict><key>ErrorDomain</key>"
                         "<string>MCMDMErrorDomain</string><key>ErrorCode</key><integer>12021"
                         "</integer><key>LocalizedDescription</key><string>Bad</string></dict>"
                         "</array>");
    assert_false(more);
    assert_null(strstr(s_events, "inventory."));
    s_now += 120000;
    assert_false(s_connect_raw(db, "dev1", "Idle", NULL, NULL, 0));
    msgpack_sbuffer out;
    msgpack_sbuffer_init(&out);
    assert_int_equal(store_db_results(db, "dev1", "F1", 10, &out), STORE_OK);
    assert_non_null(memmem(out.data, out.size, "MCMDMErrorDomain", 16));
    msgpack_sbuffer_destroy(&out);
    char *j = s_inv_json(db, "dev1");
    assert_string_equal(j, "[]");
    free(j);
    store_db_destroy(&db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_information_merge_and_change),
        cmocka_unit_test(test_lists_replaced),
        cmocka_unit_test(test_schema_issues_kept),
        cmocka_unit_test(test_schema_8_upgrade),
        cmocka_unit_test(test_format_error_terminal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
