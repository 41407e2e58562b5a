/*  store_svc unit tests, without the bus: bus messages in, replies out
 *  (check-in body fields reach the database, connect replies carry the
 *  command dict, lists come back as the table says, bad requests get errors),
 *  and a database that cannot start a transaction fails cleanly.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "pm_bus_wire.h"
#include "pm_mpck.h"
#include "store_svc.h"
#include "store_test_fixture.h"

#include <czmq.h>

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static pm_msg_t *s_checkin(const char *eid, const char *mt)
{
    pm_msg_t *m = pm_msg_new(PM_MSG_STORE_CHECKIN);
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
    bool tu = strcmp(mt, "TokenUpdate") == 0, sb = strcmp(mt, "SetBootstrapToken") == 0;
    msgpack_pack_map(&pk, tu ? 6 : sb ? 3 : 2);
    msgpack_pack_str_with_body(&pk, "MessageType", 11);
    msgpack_pack_str_with_body(&pk, mt, strlen(mt));
    msgpack_pack_str_with_body(&pk, "UDID", 4);
    msgpack_pack_str_with_body(&pk, eid, strlen(eid));
    if (tu) {
        msgpack_pack_str_with_body(&pk, "Topic", 5);
        msgpack_pack_str_with_body(&pk, "com.apple.mgmt.x", 16);
        msgpack_pack_str_with_body(&pk, "PushMagic", 9);
        msgpack_pack_str_with_body(&pk, "M", 1);
        msgpack_pack_str_with_body(&pk, "Token", 5);
        msgpack_pack_bin_with_body(&pk, "\xaa\xbb", 2);
        msgpack_pack_str_with_body(&pk, "AwaitingConfiguration", 21);
        msgpack_pack_true(&pk);
    }
    if (sb) {
        msgpack_pack_str_with_body(&pk, "BootstrapToken", 14);
        msgpack_pack_bin_with_body(&pk, "BT", 2);
    }
    pm_msg_set_str(m, "eid", eid);
    pm_msg_set_str(m, "kind", "device");
    pm_msg_set_str(m, "message_type", mt);
    assert_int_equal(pm_msg_set_packed(m, "body", (const uint8_t *)b.data, b.size), 0);
    msgpack_sbuffer_destroy(&b);
    return m;
}

static unsigned s_status(pm_msg_t *reply)
{
    unsigned st = (unsigned)pm_msg_uint(reply, "status", 0);
    pm_msg_destroy(&reply);
    return st;
}

static void test_checkin_enqueue_connect(void **state)
{
    (void)state;
    assert_int_equal(s_status(s_apply(s_checkin("d1", "Authenticate"))), 200);
    assert_int_equal(s_status(s_apply(s_checkin("d1", "TokenUpdate"))), 200);
    assert_int_equal(s_status(s_apply(s_checkin("d9", "TokenUpdate"))), 400);

    //  devices: the TokenUpdate fields made d1 pushable
    pm_msg_t *r = s_apply(pm_msg_new(PM_MSG_STORE_DEVICES));
    assert_int_equal(pm_msg_type(r), PM_MSG_DEVICES_REPLY);
    const msgpack_object *devs = pm_msg_obj(r, "devices");
    assert_int_equal(devs->via.array.size, 1);
    const msgpack_object *p = pm_mp_get(&devs->via.array.ptr[0], "pushable");
    assert_non_null(p);
    assert_true(p->type == MSGPACK_OBJECT_BOOLEAN && p->via.boolean);
    char topic[64];
    assert_int_equal(pm_mp_get_str(&devs->via.array.ptr[0], "topic", topic, sizeof topic), 0);
    assert_string_equal(topic, "com.apple.mgmt.x");
    pm_msg_destroy(&r);

    //  bootstrap token escrow and retrieval
    assert_int_equal(s_status(s_apply(s_checkin("d1", "SetBootstrapToken"))), 200);
    r = s_apply(s_checkin("d1", "GetBootstrapToken"));
    const msgpack_object *bt = pm_mp_get(pm_msg_obj(r, "body"), "BootstrapToken");
    assert_non_null(bt);
    assert_int_equal(bt->type, MSGPACK_OBJECT_BIN);
    assert_memory_equal(bt->via.bin.ptr, "BT", 2);
    pm_msg_destroy(&r);

    //  enqueue
    pm_msg_t *m = pm_msg_new(PM_MSG_STORE_ENQUEUE);
    assert_int_equal(
        pm_msg_set_packed(m, "command", (const uint8_t *)"\x81\xabRequestType\xa4Ping", 18), 0);
    const char *t[] = {"d1"};
    pm_msg_set_strs(m, "targets", t, 1);
    pm_msg_set_str(m, "command_uuid", "C-1");
    pm_msg_set_str(m, "op_rid", "op-1");
    r = s_apply(m);
    assert_int_equal(pm_msg_type(r), PM_MSG_ENQUEUE_REPLY);
    assert_string_equal(pm_msg_str(r, "command_uuid"), "C-1");
    assert_int_equal(pm_msg_uint(r, "queued", 0), 1);
    pm_msg_destroy(&r);

    //  connect Idle: the command dict as the device must see it
    m = pm_msg_new(PM_MSG_STORE_CONNECT);
    pm_msg_set_str(m, "eid", "d1");
    pm_msg_set_str(m, "status", "Idle");
    pm_msg_set_packed(m, "body", (const uint8_t *)"\x80", 1);
    r = s_apply(m);
    assert_int_equal(pm_msg_type(r), PM_MSG_CONNECT_REPLY);
    assert_int_equal(pm_msg_uint(r, "status", 0), 200);
    const msgpack_object *cmd = pm_msg_obj(r, "command");
    assert_non_null(cmd);
    char buf[64];
    assert_int_equal(pm_mp_get_str(cmd, "CommandUUID", buf, sizeof buf), 0);
    assert_string_equal(buf, "C-1");
    assert_int_equal(pm_mp_get_str(pm_mp_get(cmd, "Command"), "RequestType", buf, sizeof buf), 0);
    assert_string_equal(buf, "Ping");
    pm_msg_destroy(&r);

    //  queue listing
    m = pm_msg_new(PM_MSG_STORE_QUEUE);
    pm_msg_set_str(m, "eid", "d1");
    r = s_apply(m);
    assert_int_equal(pm_msg_type(r), PM_MSG_QUEUE_REPLY);
    assert_int_equal(
        pm_mp_get_str(&pm_msg_obj(r, "items")->via.array.ptr[0], "status", buf, sizeof buf), 0);
    assert_string_equal(buf, "sent");
    pm_msg_destroy(&r);
}

static void test_bad_requests(void **state)
{
    (void)state;
    //  a command without RequestType
    pm_msg_t *m = pm_msg_new(PM_MSG_STORE_ENQUEUE);
    pm_msg_set_packed(m, "command", (const uint8_t *)"\x80", 1);
    const char *t[] = {"d1"};
    pm_msg_set_strs(m, "targets", t, 1);
    pm_msg_set_str(m, "command_uuid", "C-2");
    pm_msg_t *r = s_apply(m);
    assert_int_equal(pm_msg_type(r), PM_MSG_ERROR);
    assert_string_equal(pm_msg_str(r, "code"), "bad_request");
    assert_non_null(strstr(pm_msg_str(r, "message"), "RequestType"));
    pm_msg_destroy(&r);
    //  unknown targets
    m = pm_msg_new(PM_MSG_STORE_ENQUEUE);
    pm_msg_set_packed(m, "command", (const uint8_t *)"\x81\xabRequestType\xa4Ping", 18);
    const char *u[] = {"ghost"};
    pm_msg_set_strs(m, "targets", u, 1);
    pm_msg_set_str(m, "command_uuid", "C-3");
    r = s_apply(m);
    assert_string_equal(pm_msg_str(r, "code"), "not_found");
    assert_non_null(strstr(pm_msg_str(r, "message"), "ghost"));
    pm_msg_destroy(&r);
    //  not a store request
    r = s_apply(pm_msg_new(PM_MSG_ECHO));
    assert_string_equal(pm_msg_str(r, "code"), "unknown_type");
    pm_msg_destroy(&r);
    //  event.append gets a seq
    m = pm_msg_new(PM_MSG_EVENT_APPEND);
    pm_msg_set_str(m, "name", "security.rejected");
    pm_msg_set_str(m, "source", "gateway");
    r = s_apply(m);
    assert_int_equal(pm_msg_type(r), PM_MSG_EVENT_APPEND_REPLY);
    assert_true(pm_msg_uint(r, "seq", 0) > 0);
    pm_msg_destroy(&r);
}

static void test_locked_database(void **state)
{
    (void)state;
    char dir[] = "/tmp/store_svc_testXXXXXX", path[64], err[256];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/db", dir);
    store_db_opts_t o = {.sync_full = true, .busy_ms = 50};
    store_db_t *db = store_db_new(path, &o, err, sizeof err);
    assert_non_null(db);
    sqlite3 *other;
    assert_int_equal(sqlite3_open(path, &other), SQLITE_OK);
    assert_int_equal(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    //  another writer holds the database: the transaction cannot start, and says why
    assert_int_equal(store_db_begin(db), -1);
    assert_non_null(strstr(store_db_errmsg(db), "database error"));
    sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(other);
    assert_int_equal(store_db_begin(db), 0); //  and it recovers
    assert_int_equal(store_db_commit(db), 0);
    store_db_destroy(&db);
    char cmd[96];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

//  event.append_batch (picomdm-ca's audit events): all logged in order with
//  consecutive seqs, or none when one of them is malformed.
static pm_msg_t *s_batch(const char *const *names, int n, bool bad_data)
{
    pm_msg_t *m = pm_msg_new(PM_MSG_EVENT_APPEND_BATCH);
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, (size_t)n);
    for (int i = 0; i < n; i++) {
        msgpack_pack_map(&pk, names[i] ? 3 : 2);
        if (names[i]) {
            msgpack_pack_str_with_body(&pk, "name", 4);
            msgpack_pack_str_with_body(&pk, names[i], strlen(names[i]));
        }
        msgpack_pack_str_with_body(&pk, "source", 6);
        msgpack_pack_str_with_body(&pk, "ca", 2);
        msgpack_pack_str_with_body(&pk, "data", 4);
        if (bad_data && i == n - 1) {
            msgpack_pack_str_with_body(&pk, "x", 1);
        } else {
            msgpack_pack_map(&pk, 1);
            msgpack_pack_str_with_body(&pk, "i", 1);
            msgpack_pack_int(&pk, i);
        }
    }
    assert_int_equal(pm_msg_set_packed(m, "events", (const uint8_t *)b.data, b.size), 0);
    msgpack_sbuffer_destroy(&b);
    return m;
}

static uint64_t s_event_count(void)
{
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    assert_int_equal(store_db_begin(s_db), 0);
    assert_int_equal(store_db_events(s_db, 0, 1000, &b), STORE_OK);
    assert_int_equal(store_db_commit(s_db), 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, b.data, b.size, NULL), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(u.data.type, MSGPACK_OBJECT_ARRAY);
    uint64_t n = u.data.via.array.size;
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&b);
    return n;
}

static void test_event_batch(void **state)
{
    (void)state;
    const char *names[] = {"ca.profile", "ca.issued", "ca.rejected"};
    pm_msg_t *r = s_apply(s_batch(names, 3, false));
    assert_int_equal(pm_msg_type(r), PM_MSG_EVENT_APPEND_BATCH_REPLY);
    assert_int_equal(pm_msg_uint(r, "count", 0), 3);
    uint64_t seq = pm_msg_uint(r, "seq", 0);
    assert_true(seq >= 3);
    pm_msg_destroy(&r);
    assert_int_equal(s_event_count(), 3);
    //  a single event after it follows on
    pm_msg_t *m = pm_msg_new(PM_MSG_EVENT_APPEND);
    pm_msg_set_str(m, "name", "security.rejected");
    r = s_apply(m);
    assert_int_equal(pm_msg_uint(r, "seq", 0), seq + 1);
    pm_msg_destroy(&r);
    //  one bad event (no name; data not a map): the whole batch is refused, none logged
    const char *unnamed[] = {"ca.profile", NULL};
    r = s_apply(s_batch(unnamed, 2, false));
    assert_string_equal(pm_msg_str(r, "code"), "bad_request");
    pm_msg_destroy(&r);
    r = s_apply(s_batch(names, 3, true));
    assert_string_equal(pm_msg_str(r, "code"), "bad_request");
    assert_non_null(strstr(pm_msg_str(r, "message"), "event 2"));
    pm_msg_destroy(&r);
    assert_int_equal(s_event_count(), 4);
    //  empty batch, not an array
    r = s_apply(s_batch(names, 0, false));
    assert_string_equal(pm_msg_str(r, "code"), "bad_request");
    pm_msg_destroy(&r);
    m = pm_msg_new(PM_MSG_EVENT_APPEND_BATCH);
    pm_msg_set_packed(m, "events", (const uint8_t *)"\x90", 1);
    r = s_apply(m);
    assert_string_equal(pm_msg_str(r, "code"), "bad_request");
    pm_msg_destroy(&r);
    assert_int_equal(s_event_count(), 4);
}

//  Group commit with a failing request in the middle (store_svc_flush, over
//  a real pm_bus worker and a fake broker): the batch is applied without
//  savepoints, rolled back when the enqueue fails, and applied again with
//  one savepoint per request, so both check-ins are committed and answered,
//  the enqueue is answered not_found and leaves nothing.
static void test_batch_undoes_only_the_failure(void **state)
{
    (void)state;
    char err[256];
    store_db_t *db = store_db_new(":memory:", NULL, err, sizeof err);
    assert_non_null(db);
    zsock_t *router = zsock_new_router("@inproc://store-svc-batch-test");
    assert_non_null(router);
    pm_bus_config_t bc = {
        .name = "store", .request_endpoint = "inproc://store-svc-batch-test", .capacity = 16};
    pm_bus_t *bus = pm_bus_new(&bc);
    assert_non_null(bus);
    store_svc_t *svc = store_svc_new(db, bus, NULL);
    assert_non_null(svc);
    assert_int_equal(pm_bus_serve(bus, "store", store_svc_on_job, svc), 0);
    zmsg_t *ready = zmsg_recv(router); //  READY: its first frame is the worker's id
    assert_non_null(ready);
    zframe_t *id = zframe_dup(zmsg_first(ready));
    zmsg_destroy(&ready);

    pm_msg_t *reqs[3] = {s_checkin("batch-a", "Authenticate"), pm_msg_new(PM_MSG_STORE_ENQUEUE),
                         s_checkin("batch-b", "Authenticate")};
    pm_msg_set_packed(reqs[1], "command", (const uint8_t *)"\x81\xabRequestType\xa4Ping", 18);
    const char *t[] = {"batch-a", "ghost"};
    pm_msg_set_strs(reqs[1], "targets", t, 2);
    pm_msg_set_str(reqs[1], "command_uuid", "C-BATCH");
    const char *rids[3] = {"r-1", "r-2", "r-3"};
    for (int i = 0; i < 3; i++) {
        pm_msg_set_rid(reqs[i], rids[i]);
        uint8_t *data;
        size_t len;
        assert_int_equal(pm_msg_encode(reqs[i], &data, &len, err, sizeof err), 0);
        zmsg_t *m = zmsg_new();
        zmsg_append(m, &(zframe_t *){zframe_dup(id)});
        zmsg_addstr(m, PM_BUS_WORKER_HDR);
        zmsg_addmem(m, &(uint8_t){PM_BUS_REQUEST}, 1);
        zmsg_addstr(m, "client");
        zmsg_addstr(m, rids[i]);
        zmsg_addmem(m, data, len);
        zmsg_send(&m, router);
        free(data);
        pm_msg_destroy(&reqs[i]);
    }
    int64_t until = zclock_mono() + 3000;
    while (store_svc_pending(svc) < 3 && zclock_mono() < until)
        pm_bus_run_once(bus, 10);
    assert_int_equal(store_svc_pending(svc), 3);
    assert_int_equal(store_svc_flush(svc), 3); //  one batch

    int seen = 0;
    until = zclock_mono() + 3000;
    while (seen < 3 && zclock_mono() < until) {
        if (!(zsock_events(router) & ZMQ_POLLIN)) {
            pm_bus_run_once(bus, 10);
            continue;
        }
        zmsg_t *m = zmsg_recv(router);
        zframe_t *f = zmsg_first(m);
        f = zmsg_next(m); //  header
        f = zmsg_next(m); //  command
        if (zframe_size(f) != 1 || *zframe_data(f) != PM_BUS_REPLY) {
            zmsg_destroy(&m); //  a heartbeat
            continue;
        }
        zmsg_next(m); //  client
        char *rid = zframe_strdup(zmsg_next(m));
        zframe_t *body = zmsg_next(m);
        pm_msg_t *r = NULL;
        assert_int_equal(pm_msg_decode(zframe_data(body), zframe_size(body), &r, err, sizeof err),
                         0);
        if (strcmp(rid, "r-2") == 0) {
            assert_int_equal(pm_msg_type(r), PM_MSG_ERROR);
            assert_string_equal(pm_msg_str(r, "code"), "not_found");
        } else {
            assert_int_equal(pm_msg_type(r), PM_MSG_CHECKIN_REPLY);
            assert_int_equal(pm_msg_uint(r, "status", 0), 200);
        }
        pm_msg_destroy(&r);
        free(rid);
        zmsg_destroy(&m);
        seen++;
    }
    assert_int_equal(seen, 3);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(store_db_sqlite(db),
                                        "SELECT (SELECT count(*) FROM enrollments),"
                                        " (SELECT count(*) FROM commands),"
                                        " (SELECT count(*) FROM queue)",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 2);
    assert_int_equal(sqlite3_column_int(st, 1), 0);
    assert_int_equal(sqlite3_column_int(st, 2), 0);
    sqlite3_finalize(st);
    zframe_destroy(&id);
    store_svc_destroy(&svc);
    pm_bus_destroy(&bus);
    zsock_destroy(&router);
    store_db_destroy(&db);
}

//  After the commit the store publishes each logged event with its seq
//  (pm_bus_publish_event): the subscriber sees the topic, seq, eid, source
//  and the data map exactly as event.append gave them, after the reply.
static void test_events_published(void **state)
{
    (void)state;
    char err[256];
    store_db_t *db = store_db_new(":memory:", NULL, err, sizeof err);
    assert_non_null(db);
    zsock_t *router = zsock_new_router("@inproc://store-svc-events-test");
    zsock_t *sub = zsock_new_sub("@inproc://store-svc-events-pub", "");
    assert_non_null(router);
    assert_non_null(sub);
    pm_bus_config_t bc = {.name = "store",
                          .request_endpoint = "inproc://store-svc-events-test",
                          .publish_endpoint = "inproc://store-svc-events-pub"};
    pm_bus_t *bus = pm_bus_new(&bc);
    assert_non_null(bus);
    //  the subscription reaches the PUB socket after a moment
    pm_bus_event_t hello = {.name = "test.hello"};
    zpoller_t *poller = zpoller_new(sub, NULL);
    bool joined = false;
    for (int i = 0; i < 200 && !joined; i++) {
        assert_int_equal(pm_bus_publish_event(bus, &hello), 0);
        joined = zpoller_wait(poller, 10) != NULL;
    }
    assert_true(joined);
    zmsg_t *m;
    while (zpoller_wait(poller, 20) && (m = zmsg_recv(sub)))
        zmsg_destroy(&m);

    store_svc_t *svc = store_svc_new(db, bus, NULL);
    assert_non_null(svc);
    assert_int_equal(pm_bus_serve(bus, "store", store_svc_on_job, svc), 0);
    zmsg_t *ready = zmsg_recv(router);
    assert_non_null(ready);
    zframe_t *id = zframe_dup(zmsg_first(ready));
    zmsg_destroy(&ready);
    //  data: {"reason": "bad signature", "n": [1, {"k": nil}]}
    const char data[] = "\x82\xa6reason\xad"
                        "bad signature\xa1n\x92\x01\x81\xa1k\xc0";
    const size_t dlen = sizeof data - 1;
    pm_msg_t *req = pm_msg_new(PM_MSG_EVENT_APPEND);
    pm_msg_set_rid(req, "r-ev");
    pm_msg_set_str(req, "name", "security.rejected");
    pm_msg_set_str(req, "eid", "UDID-EV");
    pm_msg_set_str(req, "source", "gateway");
    assert_int_equal(pm_msg_set_packed(req, "data", (const uint8_t *)data, dlen), 0);
    uint8_t *bytes;
    size_t len;
    assert_int_equal(pm_msg_encode(req, &bytes, &len, err, sizeof err), 0);
    m = zmsg_new();
    zmsg_append(m, &(zframe_t *){zframe_dup(id)});
    zmsg_addstr(m, PM_BUS_WORKER_HDR);
    zmsg_addmem(m, &(uint8_t){PM_BUS_REQUEST}, 1);
    zmsg_addstr(m, "client");
    zmsg_addstr(m, "r-ev");
    zmsg_addmem(m, bytes, len);
    zmsg_send(&m, router);
    free(bytes);
    pm_msg_destroy(&req);
    int64_t until = zclock_mono() + 3000;
    while (store_svc_pending(svc) < 1 && zclock_mono() < until)
        pm_bus_run_once(bus, 10);
    assert_int_equal(store_svc_flush(svc), 1);

    //  the reply, with the seq
    uint64_t seq = 0;
    until = zclock_mono() + 3000;
    while (!seq && zclock_mono() < until) {
        if (!(zsock_events(router) & ZMQ_POLLIN)) {
            pm_bus_run_once(bus, 10);
            continue;
        }
        m = zmsg_recv(router);
        if (zmsg_size(m) == 6) {
            zframe_t *body = zmsg_last(m);
            pm_msg_t *r = NULL;
            assert_int_equal(
                pm_msg_decode(zframe_data(body), zframe_size(body), &r, err, sizeof err), 0);
            assert_int_equal(pm_msg_type(r), PM_MSG_EVENT_APPEND_REPLY);
            seq = pm_msg_uint(r, "seq", 0);
            pm_msg_destroy(&r);
        }
        zmsg_destroy(&m);
    }
    assert_true(seq > 0);
    //  the event
    assert_non_null(zpoller_wait(poller, 2000));
    m = zmsg_recv(sub);
    assert_int_equal(zmsg_size(m), 2);
    char *topic = zmsg_popstr(m);
    assert_string_equal(topic, "security.rejected");
    zstr_free(&topic);
    zframe_t *body = zmsg_pop(m);
    pm_msg_t *ev = NULL;
    assert_int_equal(pm_msg_decode(zframe_data(body), zframe_size(body), &ev, err, sizeof err), 0);
    assert_int_equal(pm_msg_type(ev), PM_MSG_EVENT);
    assert_string_equal(pm_msg_str(ev, "name"), "security.rejected");
    assert_int_equal(pm_msg_uint(ev, "seq", 0), seq);
    assert_string_equal(pm_msg_str(ev, "eid"), "UDID-EV");
    assert_string_equal(pm_msg_str(ev, "source"), "gateway");
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
    assert_non_null(pm_msg_obj(ev, "data"));
    msgpack_pack_object(&pk, *pm_msg_obj(ev, "data"));
    assert_int_equal(b.size, dlen);
    assert_memory_equal(b.data, data, dlen);
    msgpack_sbuffer_destroy(&b);
    pm_msg_destroy(&ev);
    zframe_destroy(&body);
    zmsg_destroy(&m);
    pm_bus_stats_t st;
    pm_bus_stats(bus, &st);
    assert_true(st.published >= 2); //  hello(s) and the event

    zpoller_destroy(&poller);
    zframe_destroy(&id);
    store_svc_destroy(&svc);
    pm_bus_destroy(&bus);
    zsock_destroy(&sub);
    zsock_destroy(&router);
    store_db_destroy(&db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_checkin_enqueue_connect, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_bad_requests, s_setup, s_teardown),
        cmocka_unit_test(test_locked_database),
        cmocka_unit_test_setup_teardown(test_event_batch, s_setup, s_teardown),
        cmocka_unit_test(test_batch_undoes_only_the_failure),
        cmocka_unit_test(test_events_published),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
