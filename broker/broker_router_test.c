/*  broker_router unit tests: a real broker_router_t on an inproc:// ROUTER,
 *  driven by this test's own loop (pm_bus_poll + broker_router_process, as
 *  broker/main.c does), with raw DEALER sockets as clients and workers
 *  speaking the frames of proto/pm_bus.h. Every case asserts what the peers
 *  receive and the router's counters: routing of requests and replies,
 *  least-in-flight choice and the capacity cap, the bounded queue (busy,
 *  dispatch when a worker frees, expiry), lost and departing workers
 *  (worker_lost), duplicates, malformed frames, replies the router does not
 *  track, DROPPED, heartbeats and the timer the loop must honour.
 *  No threads: the router only runs inside broker_router_process here.
 */
#include "broker_router.h"
#include "pm_bus_wire.h"
#include "pm_log.h"
#include "pm_msg.h"

#include <czmq.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <string.h>

typedef struct {
    broker_router_t *router;
    char endpoint[64];
    zsock_t *peers[8];
    int npeers;
} s_fix_t;

static s_fix_t *s_fix(int heartbeat_ms, int wait_ms, int max_inflight, int max_queue)
{
    static int n;
    s_fix_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    broker_router_config_t cfg = {heartbeat_ms, wait_ms, max_inflight, max_queue};
    f->router = broker_router_new(&cfg);
    assert_non_null(f->router);
    snprintf(f->endpoint, sizeof f->endpoint, "inproc://broker-router-test-%d", ++n);
    assert_int_equal(zsock_bind(broker_router_socket(f->router), "%s", f->endpoint), 0);
    return f;
}

static void s_fix_destroy(s_fix_t **fp)
{
    s_fix_t *f = *fp;
    for (int i = 0; i < f->npeers; i++)
        zsock_destroy(&f->peers[i]);
    broker_router_destroy(&f->router);
    broker_router_destroy(&f->router); //  safe twice
    free(f);
    *fp = NULL;
}

//  A DEALER peer with a known routing id (the "client-id" workers see).
static zsock_t *s_peer(s_fix_t *f, const char *id)
{
    assert_true(f->npeers < 8);
    zsock_t *s = zsock_new(ZMQ_DEALER);
    assert_non_null(s);
    zsock_set_identity(s, id);
    zsock_set_linger(s, 0);
    assert_int_equal(zsock_connect(s, "%s", f->endpoint), 0);
    f->peers[f->npeers++] = s;
    return s;
}

//  Run the router's loop for about `ms` (0: one pass without sleeping).
static void s_pump(s_fix_t *f, int ms)
{
    pm_bus_sock_t *socks[1] = {broker_router_wait(f->router)};
    int64_t until = zclock_mono() + ms;
    do {
        int left = (int)(until - zclock_mono()), t = broker_router_next_timeout(f->router);
        if (left < 0)
            left = 0;
        if (t > left)
            t = left;
        if (t > 5)
            t = 5; //  peers' sends do not wake us: look often
        pm_bus_poll(socks, 1, t);
        broker_router_process(f->router);
    } while (zclock_mono() < until);
}

static bool s_is_heartbeat(zmsg_t *m)
{
    zframe_t *hdr = zmsg_first(m), *cmd = zmsg_next(m);
    return zmsg_size(m) == 2 && zframe_streq(hdr, PM_BUS_WORKER_HDR) && zframe_size(cmd) == 1 &&
           *zframe_data(cmd) == PM_BUS_HEARTBEAT;
}

//  The next message `peer` receives while the router runs (heartbeats skipped
//  unless `heartbeats`), or NULL after timeout_ms. Caller destroys it.
static zmsg_t *s_recv_hb(s_fix_t *f, zsock_t *peer, int timeout_ms, bool heartbeats)
{
    int64_t until = zclock_mono() + timeout_ms;
    for (;;) {
        while (zsock_events(peer) & ZMQ_POLLIN) {
            zmsg_t *m = zmsg_recv(peer);
            assert_non_null(m);
            if (heartbeats || !s_is_heartbeat(m))
                return m;
            zmsg_destroy(&m);
        }
        if (zclock_mono() >= until)
            return NULL;
        s_pump(f, 0);
        zclock_sleep(1);
    }
}

static zmsg_t *s_recv(s_fix_t *f, zsock_t *peer, int timeout_ms)
{
    return s_recv_hb(f, peer, timeout_ms, false);
}

//  Nothing but heartbeats reaches `peer` for `ms`.
static void s_expect_none(s_fix_t *f, zsock_t *peer, int ms)
{
    zmsg_t *m = s_recv(f, peer, ms);
    if (m) {
        zmsg_print(m);
        zmsg_destroy(&m);
        fail_msg("unexpected message (printed above)");
    }
}

static zframe_t *s_frame(zmsg_t *m, int i)
{
    zframe_t *fr = zmsg_first(m);
    while (i-- > 0 && fr)
        fr = zmsg_next(m);
    return fr;
}

static void s_assert_frame(zmsg_t *m, int i, const char *want)
{
    zframe_t *fr = s_frame(m, i);
    assert_non_null(fr);
    char *got = zframe_strdup(fr);
    if (strcmp(got, want) != 0) {
        zmsg_print(m);
        fail_msg("frame %d is '%s', want '%s'", i, got, want);
    }
    free(got);
}

/* ---- the peers' side of pm_bus.h ---- */

static void s_send_strs(zsock_t *s, int n, const char *const *frames)
{
    zmsg_t *m = zmsg_new();
    for (int i = 0; i < n; i++)
        zmsg_addstr(m, frames[i]);
    assert_int_equal(zmsg_send(&m, s), 0);
}

static void s_request(zsock_t *client, const char *service, const char *rid, const char *body)
{
    s_send_strs(client, 4, (const char *[]){PM_BUS_CLIENT_HDR, service, rid, body});
}

static const char s_cmd_ready[] = {PM_BUS_READY, 0}, s_cmd_reply[] = {PM_BUS_REPLY, 0},
                  s_cmd_heartbeat[] = {PM_BUS_HEARTBEAT, 0},
                  s_cmd_disconnect[] = {PM_BUS_DISCONNECT, 0},
                  s_cmd_dropped[] = {PM_BUS_DROPPED, 0};

//  READY with a capacity and a heartbeat ("" = none: the router's own).
static void s_ready(zsock_t *w, const char *service, const char *capacity, const char *hb)
{
    s_send_strs(w, *hb ? 5 : 4,
                (const char *[]){PM_BUS_WORKER_HDR, s_cmd_ready, service, capacity, hb});
}

static void s_reply(zsock_t *w, const char *client, const char *rid, const char *body)
{
    s_send_strs(w, 5, (const char *[]){PM_BUS_WORKER_HDR, s_cmd_reply, client, rid, body});
}

static void s_command(zsock_t *w, const char *cmd)
{
    s_send_strs(w, 2, (const char *[]){PM_BUS_WORKER_HDR, cmd});
}

//  The worker's next REQUEST: checks its frames, returns its rid (caller frees).
static char *s_take(s_fix_t *f, zsock_t *w, const char *client, const char *body)
{
    zmsg_t *m = s_recv(f, w, 2000);
    if (!m)
        fail_msg("the worker got no REQUEST");
    assert_int_equal(zmsg_size(m), 5);
    s_assert_frame(m, 0, PM_BUS_WORKER_HDR);
    assert_int_equal(zframe_size(s_frame(m, 1)), 1);
    assert_int_equal(*zframe_data(s_frame(m, 1)), PM_BUS_REQUEST);
    if (client)
        s_assert_frame(m, 2, client);
    if (body)
        s_assert_frame(m, 4, body);
    char *rid = zframe_strdup(s_frame(m, 3));
    zmsg_destroy(&m);
    return rid;
}

static void s_take_rid(s_fix_t *f, zsock_t *w, const char *client, const char *rid)
{
    char *got = s_take(f, w, client, NULL);
    assert_string_equal(got, rid);
    free(got);
}

//  The worker is told DISCONNECT (re-register).
static void s_expect_disconnect(s_fix_t *f, zsock_t *w)
{
    zmsg_t *m = s_recv(f, w, 2000);
    if (!m)
        fail_msg("the worker was not told DISCONNECT");
    assert_int_equal(zmsg_size(m), 2);
    s_assert_frame(m, 0, PM_BUS_WORKER_HDR);
    assert_int_equal(*zframe_data(s_frame(m, 1)), PM_BUS_DISCONNECT);
    zmsg_destroy(&m);
}

//  The client's next reply: "PMC1", service, rid, body.
static void s_expect_reply(s_fix_t *f, zsock_t *c, const char *service, const char *rid,
                           const char *body)
{
    zmsg_t *m = s_recv(f, c, 2000);
    if (!m)
        fail_msg("no reply for %s", rid);
    assert_int_equal(zmsg_size(m), 4);
    s_assert_frame(m, 0, PM_BUS_CLIENT_HDR);
    s_assert_frame(m, 1, service);
    s_assert_frame(m, 2, rid);
    s_assert_frame(m, 3, body);
    zmsg_destroy(&m);
}

//  Worker w answers (client, rid) of service "svc" with body; client socket c
//  gets that reply.
static void s_answer(s_fix_t *f, zsock_t *w, zsock_t *c, const char *client, const char *rid,
                     const char *body)
{
    s_reply(w, client, rid, body);
    s_expect_reply(f, c, "svc", rid, body);
}

//  m is the router's own `error` reply for `service` with this code, its
//  message containing `text`. Returns its rid (caller frees).
static char *s_check_error(zmsg_t *m, const char *service, const char *code, const char *text)
{
    assert_int_equal(zmsg_size(m), 4);
    s_assert_frame(m, 0, PM_BUS_CLIENT_HDR);
    s_assert_frame(m, 1, service);
    char *rid = zframe_strdup(s_frame(m, 2));
    zframe_t *body = s_frame(m, 3);
    pm_msg_t *e = NULL;
    char err[256];
    if (pm_msg_decode(zframe_data(body), zframe_size(body), &e, err, sizeof err) < 0)
        fail_msg("the error body does not decode: %s", err);
    assert_int_equal(pm_msg_type(e), PM_MSG_ERROR);
    assert_string_equal(pm_msg_rid(e), rid);
    assert_string_equal(pm_msg_str(e, "code"), code);
    if (!strstr(pm_msg_str(e, "message"), text))
        fail_msg("message '%s' lacks '%s'", pm_msg_str(e, "message"), text);
    pm_msg_destroy(&e);
    return rid;
}

//  The client's next reply is the router's `error` `code` for rid.
static void s_expect_error(s_fix_t *f, zsock_t *c, const char *service, const char *rid,
                           const char *code, const char *text, int timeout_ms)
{
    zmsg_t *m = s_recv(f, c, timeout_ms);
    if (!m)
        fail_msg("no `error` %s for %s", code, rid);
    char *got = s_check_error(m, service, code, text);
    assert_string_equal(got, rid);
    free(got);
    zmsg_destroy(&m);
}

//  The client's next n replies are `error` `code` for these rids, in any
//  order (the router fails a lost worker's requests in hash order).
static void s_expect_errors(s_fix_t *f, zsock_t *c, const char *service, const char *const *rids,
                            int n, const char *code, const char *text)
{
    bool seen[16] = {false};
    assert_true(n <= 16);
    for (int k = 0; k < n; k++) {
        zmsg_t *m = s_recv(f, c, 2000);
        if (!m)
            fail_msg("%d of %d `error` %s replies came", k, n, code);
        char *got = s_check_error(m, service, code, text);
        int i = 0;
        while (i < n && (seen[i] || strcmp(rids[i], got) != 0))
            i++;
        if (i == n)
            fail_msg("`error` %s for %s: not expected, or twice", code, got);
        seen[i] = true;
        free(got);
        zmsg_destroy(&m);
    }
}

/* ---- what the router reports ---- */

typedef struct {
    const char *name;
    bool found;
    int workers, queued, inflight, capacity;
} s_svc_t;

static void s_on_service(void *arg, const char *service, int workers, int queued, int inflight,
                         int capacity)
{
    s_svc_t *s = arg;
    if (strcmp(service, s->name) != 0)
        return;
    *s = (s_svc_t){s->name, true, workers, queued, inflight, capacity};
}

static s_svc_t s_service(s_fix_t *f, const char *name)
{
    s_svc_t s = {.name = name};
    broker_router_services(f->router, s_on_service, &s);
    return s;
}

//  The service's workers, queued requests, in flight, capacity (found).
static void s_assert_service(s_fix_t *f, const char *name, int workers, int queued, int inflight,
                             int capacity)
{
    s_svc_t s = s_service(f, name);
    if (!s.found)
        fail_msg("service '%s' not known to the router", name);
    if (s.workers != workers || s.queued != queued || s.inflight != inflight ||
        s.capacity != capacity)
        fail_msg("service '%s': workers %d queued %d in flight %d capacity %d; want %d %d %d %d",
                 name, s.workers, s.queued, s.inflight, s.capacity, workers, queued, inflight,
                 capacity);
}

static broker_router_stats_t s_stats(s_fix_t *f)
{
    broker_router_stats_t st;
    broker_router_stats(f->router, &st);
    return st;
}

#define S_STATS(f, ...)                                                                            \
    do {                                                                                           \
        broker_router_stats_t got_ = s_stats(f), want_ = {__VA_ARGS__};                            \
        if (memcmp(&got_, &want_, sizeof got_) != 0)                                               \
            fail_msg("stats: requests %llu replies %llu dispatched %llu queued %llu duplicates "   \
                     "%llu errors %llu workers_lost %llu bad_frames %llu unroutable %llu; want "   \
                     "%llu %llu %llu %llu %llu %llu %llu %llu %llu",                               \
                     (unsigned long long)got_.requests, (unsigned long long)got_.replies,          \
                     (unsigned long long)got_.dispatched, (unsigned long long)got_.queued,         \
                     (unsigned long long)got_.duplicates, (unsigned long long)got_.errors,         \
                     (unsigned long long)got_.workers_lost, (unsigned long long)got_.bad_frames,   \
                     (unsigned long long)got_.unroutable, (unsigned long long)want_.requests,      \
                     (unsigned long long)want_.replies, (unsigned long long)want_.dispatched,      \
                     (unsigned long long)want_.queued, (unsigned long long)want_.duplicates,       \
                     (unsigned long long)want_.errors, (unsigned long long)want_.workers_lost,     \
                     (unsigned long long)want_.bad_frames, (unsigned long long)want_.unroutable);  \
    } while (0)

//  Register worker `id` and wait until the router lists it.
static zsock_t *s_worker(s_fix_t *f, const char *id, const char *service, const char *capacity,
                         const char *hb)
{
    zsock_t *w = s_peer(f, id);
    s_svc_t before = s_service(f, service);
    s_ready(w, service, capacity, hb);
    int64_t until = zclock_mono() + 2000;
    while (s_service(f, service).workers == before.workers && zclock_mono() < until)
        s_pump(f, 2);
    assert_int_equal(s_service(f, service).workers, before.workers + 1);
    return w;
}

/* ---- tests ---- */

//  A request reaches the registered worker (client id, rid, body untouched)
//  and each reply goes back to the client that asked, whatever the order.
static void test_request_reply(void **state)
{
    (void)state;
    s_fix_t *f = s_fix(1000, 5000, 1000, 100);
    zsock_t *w = s_worker(f, "W1", "echo", "4", "1000");
    s_assert_service(f, "echo", 1, 0, 0, 4);
    zsock_t *c1 = s_peer(f, "C1"), *c2 = s_peer(f, "C2");
    s_request(c1, "echo", "rid-1", "hello from 1");
    char *rid = s_take(f, w, "C1", "hello from 1");
    assert_string_equal(rid, "rid-1");
    free(rid);
    s_request(c2, "echo", "rid-2", "hello from 2");
    rid = s_take(f, w, "C2", "hello from 2");
    assert_string_equal(rid, "rid-2");
    free(rid);
    s_assert_service(f, "echo", 1, 0, 2, 4);

    s_reply(w, "C2", "rid-2", "answer 2");
    s_reply(w, "C1", "rid-1", "answer 1");
    s_expect_reply(f, c2, "echo", "rid-2", "answer 2");
    s_expect_reply(f, c1, "echo", "rid-1", "answer 1");
    s_expect_none(f, c1, 30);
    s_expect_none(f, c2, 0);
    s_assert_service(f, "echo", 1, 0, 0, 4);
    S_STATS(f, .requests = 2, .replies = 2, .dispatched = 2);
    s_fix_destroy(&f);
}

//  Each request goes to the live worker with the fewest in flight (ties:
//  the first registered), whatever the capacities; a worker at its capacity
//  gets nothing more.
static void test_least_inflight(void **state)
{
    (void)state;
    s_fix_t *f = s_fix(1000, 5000, 1000, 100);
    zsock_t *w1 = s_worker(f, "W1", "svc", "10", "1000");
    zsock_t *w2 = s_worker(f, "W2", "svc", "3", "1000");
    zsock_t *c = s_peer(f, "C");
    //  in flight W1/W2 before each: 0/0 -> W1, 1/0 -> W2, 1/1 -> W1, 2/1 -> W2,
    //  2/2 -> W1, 3/2 -> W2, then W2 is full (3 of 3): W1.
    const char *rids[] = {"a", "b", "c", "d", "e", "f", "g"};
    zsock_t *want[] = {w1, w2, w1, w2, w1, w2, w1};
    for (int i = 0; i < 7; i++) {
        s_request(c, "svc", rids[i], "x");
        s_take_rid(f, want[i], "C", rids[i]);
    }
    s_expect_none(f, w2, 20);
    s_assert_service(f, "svc", 2, 0, 7, 13);

    //  W2 answers its three: 4 vs 0 in flight, W2 takes the next three
    //  (fewest in flight, not most room left), then it is full again.
    const char *w2rids[] = {"b", "d", "f"};
    for (int i = 0; i < 3; i++) {
        s_reply(w2, "C", w2rids[i], w2rids[i]);
        s_expect_reply(f, c, "svc", w2rids[i], w2rids[i]);
    }
    const char *more[] = {"h", "i", "j", "k"};
    zsock_t *want2[] = {w2, w2, w2, w1};
    for (int i = 0; i < 4; i++) {
        s_request(c, "svc", more[i], "x");
        s_take_rid(f, want2[i], "C", more[i]);
    }
    s_expect_none(f, w1, 20);
    s_expect_none(f, w2, 0);
    s_assert_service(f, "svc", 2, 0, 8, 13);
    S_STATS(f, .requests = 11, .replies = 3, .dispatched = 11);
    s_fix_destroy(&f);
}

//  max_inflight_per_worker caps the capacity a worker announces.
static void test_capacity_cap(void **state)
{
    (void)state;
    s_fix_t *f = s_fix(1000, 5000, 2, 100);
    zsock_t *w = s_worker(f, "W1", "svc", "500", "1000");
    s_assert_service(f, "svc", 1, 0, 0, 2);
    zsock_t *c = s_peer(f, "C");
    s_request(c, "svc", "r1", "x");
    s_request(c, "svc", "r2", "x");
    s_request(c, "svc", "r3", "x");
    s_take_rid(f, w, "C", "r1");
    s_take_rid(f, w, "C", "r2");
    s_expect_none(f, w, 20);
    s_assert_service(f, "svc", 1, 1, 2, 2);
    S_STATS(f, .requests = 3, .dispatched = 2, .queued = 1);
    s_fix_destroy(&f);
}

//  With every worker full, requests wait in order and go out, oldest first,
//  as soon as a slot frees (a reply, or DROPPED).
static void test_queue_then_dispatch(void **state)
{
    (void)state;
    s_fix_t *f = s_fix(1000, 5000, 1000, 100);
    zsock_t *w = s_worker(f, "W1", "svc", "1", "1000");
    zsock_t *c = s_peer(f, "C");
    s_request(c, "svc", "r1", "b1");
    s_request(c, "svc", "r2", "b2");
    s_request(c, "svc", "r3", "b3");
    free(s_take(f, w, "C", "b1"));
    s_expect_none(f, w, 20);
    s_assert_service(f, "svc", 1, 2, 1, 1);
    S_STATS(f, .requests = 3, .dispatched = 1, .queued = 2);

    s_answer(f, w, c, "C", "r1", "a1");
    free(s_take(f, w, "C", "b2")); //  the body waited with the request
    s_assert_service(f, "svc", 1, 1, 1, 1);
    //  DROPPED frees the slot too, and the client hears nothing for r2.
    s_send_strs(w, 4, (const char *[]){PM_BUS_WORKER_HDR, s_cmd_dropped, "C", "r2"});
    free(s_take(f, w, "C", "b3"));
    s_expect_none(f, c, 20);
    s_answer(f, w, c, "C", "r3", "a3");
    s_assert_service(f, "svc", 1, 0, 0, 1);
    S_STATS(f, .requests = 3, .replies = 2, .dispatched = 3, .queued = 2);
    s_fix_destroy(&f);
}

//  A request that finds the queue at max_queue is answered busy at once.
static void test_busy_queue_full(void **state)
{
    (void)state;
    s_fix_t *f = s_fix(1000, 5000, 1000, 2);
    zsock_t *w = s_worker(f, "W1", "svc", "1", "1000");
    zsock_t *c = s_peer(f, "C");
    for (int i = 1; i <= 4; i++) {
        char rid[16];
        snprintf(rid, sizeof rid, "r%d", i);
        s_request(c, "svc", rid, "x");
    }
    s_expect_error(f, c, "svc", "r4", "busy", "has 2 requests queued; retry later", 2000);
    s_take_rid(f, w, "C", "r1");
    s_assert_service(f, "svc", 1, 2, 1, 1);
    S_STATS(f, .requests = 4, .dispatched = 1, .queued = 2, .errors = 1);
    //  a slot frees: the queue moves and takes new requests again
    s_answer(f, w, c, "C", "r1", "a1");
    s_take_rid(f, w, "C", "r2");
    s_request(c, "svc", "r5", "x");
    s_expect_none(f, c, 20);
    s_assert_service(f, "svc", 1, 2, 1, 1);
    //  the refused r4, retried with the same rid, is a new request: the busy
    //  answer forgot it (not dropped as a copy of one still held)
    s_answer(f, w, c, "C", "r2", "a2");
    s_take_rid(f, w, "C", "r3");
    s_request(c, "svc", "r4", "x");
    s_answer(f, w, c, "C", "r3", "a3");
    s_take_rid(f, w, "C", "r5");
    s_answer(f, w, c, "C", "r5", "a5");
    s_take_rid(f, w, "C", "r4");
    s_fix_destroy(&f);
}

//  A queued request waits request_wait_ms at most: busy when workers exist
//  (all full), no_service when none does. next_timeout says when to look.
static void test_queued_expires(void **state)
{
    (void)state;
    s_fix_t *f = s_fix(1000, 150, 1000, 100);
    zsock_t *w = s_worker(f, "W1", "svc", "1", "1000");
    zsock_t *c = s_peer(f, "C");
    s_request(c, "svc", "r1", "x");
    int64_t t0 = zclock_mono();
    s_request(c, "svc", "r2", "x");
    s_take_rid(f, w, "C", "r1");
    s_assert_service(f, "svc", 1, 1, 1, 1);
    int t = broker_router_next_timeout(f->router);
    assert_true(t <= 150);
    s_expect_error(f, c, "svc", "r2", "busy", "stayed busy for 150 ms", 2000);
    int64_t waited = zclock_mono() - t0;
    if (waited < 140 || waited > 1500)
        fail_msg("busy after %lld ms; request_wait_ms is 150", (long long)waited);
    s_assert_service(f, "svc", 1, 0, 1, 1);

    //  nobody serves 'ghost'
    t0 = zclock_mono();
    s_request(c, "ghost", "g1", "x");
    s_pump(f, 2);
    s_assert_service(f, "ghost", 0, 1, 0, 0);
    s_expect_error(f, c, "ghost", "g1", "no_service",
                   "no worker of service 'ghost' registered with the broker within 150 ms: start "
                   "picomdm-ghost",
                   2000);
    waited = zclock_mono() - t0;
    if (waited < 140 || waited > 1500)
        fail_msg("no_service after %lld ms; request_wait_ms is 150", (long long)waited);
    s_pump(f, 2);
    assert_false(s_service(f, "ghost").found); //  forgotten: no worker, nothing queued
    S_STATS(f, .requests = 3, .dispatched = 1, .queued = 2, .errors = 2);

    //  a worker registering in time takes the queued request
    s_request(c, "late", "l1", "x");
    s_pump(f, 20);
    zsock_t *w2 = s_worker(f, "W2", "late", "1", "1000");
    s_take_rid(f, w2, "C", "l1");
    s_expect_none(f, c, 200);
    S_STATS(f, .requests = 4, .dispatched = 2, .queued = 3, .errors = 2);
    s_fix_destroy(&f);
}

//  A worker that stops heartbeating is removed after 3 of its intervals and
//  its in-flight requests are answered worker_lost; a worker that keeps
//  heartbeating stays. The broker heartbeats its workers too.
static void test_worker_lost(void **state)
{
    (void)state;
    s_fix_t *f = s_fix(1000, 5000, 1000, 100);
    int64_t t_ready = zclock_mono();
    zsock_t *dead = s_worker(f, "WD", "svc", "5", "200");
    zsock_t *live = s_worker(f, "WL", "svc", "5", "200");
    zsock_t *c = s_peer(f, "C");
    s_request(c, "svc", "r1", "x"); //  -> WD
    s_request(c, "svc", "r2", "x"); //  -> WL
    s_request(c, "svc", "r3", "x"); //  -> WD
    s_take_rid(f, dead, "C", "r1");
    s_take_rid(f, live, "C", "r2");
    s_take_rid(f, dead, "C", "r3");
    s_command(live, s_cmd_heartbeat);
    assert_true(broker_router_next_timeout(f->router) <= 200);

    //  the broker's HEARTBEAT reaches the worker within its interval
    zmsg_t *m = s_recv_hb(f, live, 1000, true);
    assert_non_null(m);
    assert_true(s_is_heartbeat(m));
    zmsg_destroy(&m);

    //  WL heartbeats, WD is silent: WD's two requests come back worker_lost
    while (!(zsock_events(c) & ZMQ_POLLIN) && zclock_mono() - t_ready < 3000) {
        s_command(live, s_cmd_heartbeat);
        s_pump(f, 10);
    }
    int64_t t_lost = zclock_mono();
    s_expect_errors(f, c, "svc", (const char *[]){"r1", "r3"}, 2, "worker_lost",
                    "went away (missed 3 heartbeats); retry with the same request id");
    if (t_lost - t_ready < 600)
        fail_msg("worker declared lost %lld ms after READY (3 x 200 ms heartbeats)",
                 (long long)(t_lost - t_ready));
    s_assert_service(f, "svc", 1, 0, 1, 5); //  WL and its r2 stay

    s_answer(f, live, c, "C", "r2", "a2");
    S_STATS(f, .requests = 3, .replies = 1, .dispatched = 3, .errors = 2, .workers_lost = 1);

    //  the lost worker answers late: its reply still goes to the client
    //  (service "?": unknown), and it is told to re-register
    s_reply(dead, "C", "r1", "late");
    s_expect_reply(f, c, "?", "r1", "late");
    s_expect_disconnect(f, dead);
    S_STATS(f, .requests = 3, .replies = 2, .dispatched = 3, .errors = 2, .workers_lost = 1);
    s_fix_destroy(&f);
}

//  The codes of worker_lost replies (the loop above only counts them).
static void test_worker_lost_code(void **state)
{
    (void)state;
    s_fix_t *f = s_fix(200, 5000, 1000, 100); //  no heartbeat frame: the router's 200 ms
    zsock_t *w = s_worker(f, "W1", "svc", "5", "");
    zsock_t *c = s_peer(f, "C");
    s_request(c, "svc", "r1", "x");
    s_take_rid(f, w, "C", "r1");
    s_expect_error(f, c, "svc", "r1", "worker_lost",
                   "went away (missed 3 heartbeats); retry with the same request id", 2000);
    assert_false(s_service(f, "svc").found);
    S_STATS(f, .requests = 1, .dispatched = 1, .errors = 1, .workers_lost = 1);
    s_fix_destroy(&f);
}

//  DISCONNECT: the worker's in-flight requests fail back at once, its queued
//  work goes to the others, and a later message from it is answered DISCONNECT.
static void test_disconnect(void **state)
{
    (void)state;
    s_fix_t *f = s_fix(1000, 5000, 1000, 100);
    zsock_t *w1 = s_worker(f, "W1", "svc", "1", "1000");
    zsock_t *c = s_peer(f, "C");
    s_request(c, "svc", "r1", "x");
    s_request(c, "svc", "r2", "x");
    s_take_rid(f, w1, "C", "r1");
    zsock_t *w2 = s_worker(f, "W2", "svc", "1", "1000");
    s_take_rid(f, w2, "C", "r2"); //  the queued one, at registration
    s_request(c, "svc", "r3", "x");
    s_pump(f, 5);
    s_assert_service(f, "svc", 2, 1, 2, 2);

    s_command(w1, s_cmd_disconnect);
    s_expect_error(f, c, "svc", "r1", "worker_lost", "(it said DISCONNECT)", 2000);
    s_assert_service(f, "svc", 1, 1, 1, 1);
    s_answer(f, w2, c, "C", "r2", "a2");
    s_take_rid(f, w2, "C", "r3");

    //  gone: a heartbeat from it is answered DISCONNECT (it re-registers)
    s_command(w1, s_cmd_heartbeat);
    s_expect_disconnect(f, w1);
    S_STATS(f, .requests = 3, .replies = 1, .dispatched = 3, .queued = 2, .errors = 1,
            .workers_lost = 1);
    s_fix_destroy(&f);
}

//  A READY repeated for the same service is harmless; READY for another
//  service removes the worker (its requests fail back) and says DISCONNECT.
static void test_ready_again(void **state)
{
    (void)state;
    s_fix_t *f = s_fix(1000, 5000, 1000, 100);
    zsock_t *w = s_worker(f, "W1", "svc", "3", "1000");
    zsock_t *c = s_peer(f, "C");
    s_request(c, "svc", "r1", "x");
    s_take_rid(f, w, "C", "r1");
    s_ready(w, "svc", "3", "1000");
    s_pump(f, 10);
    s_assert_service(f, "svc", 1, 0, 1, 3);
    s_ready(w, "other", "3", "1000");
    s_expect_error(f, c, "svc", "r1", "worker_lost", "READY for another service", 2000);
    s_expect_disconnect(f, w);
    //  its next message, with nothing in between: the worker it was (the
    //  router's last-worker cache) is gone, so it is told DISCONNECT again
    //  (ASan: a stale cache entry would be a use after free)
    s_command(w, s_cmd_heartbeat);
    s_expect_disconnect(f, w);
    assert_false(s_service(f, "svc").found); //  no worker, nothing queued: forgotten
    assert_false(s_service(f, "other").found);
    S_STATS(f, .requests = 1, .dispatched = 1, .errors = 1, .workers_lost = 1);
    s_fix_destroy(&f);
}

//  A copy of a (client, rid) the router holds, queued or in flight, is
//  dropped; the same rid from another client, or after the reply, is new.
static void test_duplicate(void **state)
{
    (void)state;
    s_fix_t *f = s_fix(1000, 5000, 1000, 100);
    zsock_t *w = s_worker(f, "W1", "svc", "1", "1000");
    zsock_t *c1 = s_peer(f, "C1"), *c2 = s_peer(f, "C2");
    s_request(c1, "svc", "r1", "x");
    s_request(c1, "svc", "q1", "x"); //  queued
    s_take_rid(f, w, "C1", "r1");
    s_request(c1, "svc", "r1", "x"); //  in flight: dropped
    s_request(c1, "svc", "q1", "x"); //  queued: dropped
    s_request(c2, "svc", "r1", "x"); //  another client: a request of its own
    s_pump(f, 10);
    S_STATS(f, .requests = 5, .dispatched = 1, .queued = 2, .duplicates = 2);
    s_assert_service(f, "svc", 1, 2, 1, 1);

    s_answer(f, w, c1, "C1", "r1", "a");
    s_take_rid(f, w, "C1", "q1");
    s_answer(f, w, c1, "C1", "q1", "b");
    s_take_rid(f, w, "C2", "r1");
    s_answer(f, w, c2, "C2", "r1", "c");
    s_expect_none(f, c1, 20);
    //  finished: the same rid again is handled afresh
    s_request(c1, "svc", "r1", "x");
    s_take_rid(f, w, "C1", "r1");
    S_STATS(f, .requests = 6, .replies = 3, .dispatched = 4, .queued = 2, .duplicates = 2);
    s_fix_destroy(&f);
}

//  Malformed input of every kind is counted and dropped (or the worker told
//  to re-register); nothing is routed, and the router keeps working.
static void test_bad_frames(void **state)
{
    (void)state;
    s_fix_t *f = s_fix(1000, 5000, 1000, 100);
    zsock_t *w = s_worker(f, "W1", "svc", "2", "1000");
    zsock_t *c = s_peer(f, "C"), *x = s_peer(f, "X");
    char longrid[PM_RID_MAX + 2];
    memset(longrid, 'r', sizeof longrid - 1);
    longrid[sizeof longrid - 1] = 0;
    uint64_t bad = 0;

    //  client side
    s_send_strs(c, 3, (const char *[]){PM_BUS_CLIENT_HDR, "svc", "r1"}); //  no body
    s_send_strs(c, 5, (const char *[]){PM_BUS_CLIENT_HDR, "svc", "r1", "b", "extra"});
    s_send_strs(c, 4, (const char *[]){"PMC9", "svc", "r1", "b"}); //  another version
    s_send_strs(c, 4, (const char *[]){PM_BUS_CLIENT_HDR, "sv\tc", "r1", "b"});
    s_send_strs(c, 4, (const char *[]){PM_BUS_CLIENT_HDR, "svc", "", "b"}); //  empty rid
    s_send_strs(c, 4, (const char *[]){PM_BUS_CLIENT_HDR, "svc", longrid, "b"});
    s_send_strs(c, 1, (const char *[]){"\x01\x02garbage"});
    s_send_strs(c, 12,
                (const char *[]){PM_BUS_CLIENT_HDR, "svc", "r1", "b", "5", "6", "7", "8", "9", "10",
                                 "11", "12"}); //  over PM_BUS_MAX_FRAMES
    zmsg_t *empty = zmsg_new();
    zmsg_addmem(empty, NULL, 0);
    zmsg_send(&empty, c);
    char longsvc[PM_BUS_SERVICE_MAX + 2];
    memset(longsvc, 's', sizeof longsvc - 1);
    longsvc[sizeof longsvc - 1] = 0;
    s_request(c, longsvc, "r1", "b");
    bad += 10;
    s_pump(f, 20);
    assert_int_equal(s_stats(f).bad_frames, bad);
    assert_int_equal(s_stats(f).requests, 0);

    //  worker side, unregistered peer X: malformed READYs -> DISCONNECT
    s_send_strs(x, 5, (const char *[]){PM_BUS_WORKER_HDR, s_cmd_ready, "svc", "abc", "100"});
    s_expect_disconnect(f, x);
    s_send_strs(x, 4, (const char *[]){PM_BUS_WORKER_HDR, s_cmd_ready, "svc", "0"});
    s_expect_disconnect(f, x);
    s_send_strs(x, 5, (const char *[]){PM_BUS_WORKER_HDR, s_cmd_ready, "svc", "1", "-5"});
    s_expect_disconnect(f, x);
    s_send_strs(x, 5, (const char *[]){PM_BUS_WORKER_HDR, s_cmd_ready, "svc", "1", "12x"});
    s_expect_disconnect(f, x);
    s_ready(x, longsvc, "1", "100");
    s_expect_disconnect(f, x);
    bad += 5;
    //  worker header with a short or over-long command frame
    s_send_strs(x, 1, (const char *[]){PM_BUS_WORKER_HDR});
    s_send_strs(x, 2, (const char *[]){PM_BUS_WORKER_HDR, "\x01\x01"});
    bad += 2;
    s_pump(f, 20);
    s_assert_service(f, "svc", 1, 0, 0, 2); //  X never registered
    assert_int_equal(s_stats(f).bad_frames, bad);

    //  registered worker: unknown command, wrong frame counts, bad REPLY
    s_send_strs(w, 2, (const char *[]){PM_BUS_WORKER_HDR, "\x7f"});
    s_send_strs(w, 4, (const char *[]){PM_BUS_WORKER_HDR, s_cmd_reply, "C", "r1"}); //  no body
    s_send_strs(w, 3, (const char *[]){PM_BUS_WORKER_HDR, s_cmd_heartbeat, "extra"});
    s_send_strs(w, 5, (const char *[]){PM_BUS_WORKER_HDR, s_cmd_reply, "", "r1", "b"});
    s_send_strs(w, 5, (const char *[]){PM_BUS_WORKER_HDR, s_cmd_reply, "C", "", "b"});
    s_send_strs(w, 4, (const char *[]){PM_BUS_WORKER_HDR, s_cmd_dropped, "C", "r\n1"});
    char longid[300];
    memset(longid, 'c', sizeof longid - 1);
    longid[sizeof longid - 1] = 0; //  no ROUTER routing id is that long
    s_send_strs(w, 5, (const char *[]){PM_BUS_WORKER_HDR, s_cmd_reply, longid, "r1", "b"});
    bad += 7;
    s_pump(f, 20);
    assert_int_equal(s_stats(f).bad_frames, bad);
    s_expect_none(f, c, 0);
    s_expect_none(f, w, 0);

    //  still routing
    s_request(c, "svc", "ok1", "x");
    s_take_rid(f, w, "C", "ok1");
    s_answer(f, w, c, "C", "ok1", "fine");
    s_assert_service(f, "svc", 1, 0, 0, 2);
    S_STATS(f, .requests = 1, .replies = 1, .dispatched = 1, .bad_frames = bad);
    s_fix_destroy(&f);
}

//  Replies the router does not track (an unknown rid, a request already
//  finished, another worker's request) free no slot: the in-flight count
//  stays right. They are passed on to the client, which drops what it
//  already has (pm_bus.h).
static void test_untracked_reply(void **state)
{
    (void)state;
    s_fix_t *f = s_fix(1000, 5000, 1000, 100);
    zsock_t *w1 = s_worker(f, "W1", "svc", "1", "1000");
    zsock_t *w2 = s_worker(f, "W2", "svc", "1", "1000");
    zsock_t *c = s_peer(f, "C");
    s_request(c, "svc", "r1", "x");
    s_take_rid(f, w1, "C", "r1");
    s_request(c, "svc", "r2", "x");
    s_take_rid(f, w2, "C", "r2");
    s_request(c, "svc", "r3", "x"); //  both full: queued
    s_pump(f, 5);
    s_assert_service(f, "svc", 2, 1, 2, 2);

    s_reply(w1, "C", "nosuch", "u"); //  never asked
    s_expect_reply(f, c, "svc", "nosuch", "u");
    s_reply(w2, "C", "r1", "v"); //  W1's request, answered by W2
    s_expect_reply(f, c, "svc", "r1", "v");
    s_expect_none(f, w1, 10);
    s_expect_none(f, w2, 10);
    s_assert_service(f, "svc", 2, 1, 2, 2); //  nothing freed, r3 still waits

    s_answer(f, w1, c, "C", "r1", "a1");
    s_take_rid(f, w1, "C", "r3");
    s_reply(w1, "C", "r1", "again"); //  finished already
    s_expect_reply(f, c, "svc", "r1", "again");
    s_assert_service(f, "svc", 2, 0, 2, 2); //  r3 still counts, nothing below zero
    s_request(c, "svc", "r4", "x");
    s_pump(f, 5);
    s_assert_service(f, "svc", 2, 1, 2, 2);
    s_expect_none(f, w1, 10);
    S_STATS(f, .requests = 4, .replies = 4, .dispatched = 3, .queued = 2);
    s_fix_destroy(&f);
}

//  A reply for a client that is gone counts as unroutable; the router goes on.
static void test_unroutable(void **state)
{
    (void)state;
    s_fix_t *f = s_fix(1000, 5000, 1000, 100);
    zsock_t *w = s_worker(f, "W1", "svc", "2", "1000");
    zsock_t *c = s_peer(f, "C");
    s_request(c, "svc", "r1", "x");
    s_take_rid(f, w, "C", "r1");
    s_reply(w, "NOBODY", "r9", "lost");
    s_pump(f, 20);
    S_STATS(f, .requests = 1, .replies = 1, .dispatched = 1, .unroutable = 1);
    s_answer(f, w, c, "C", "r1", "a");
    s_assert_service(f, "svc", 1, 0, 0, 2);
    s_fix_destroy(&f);
}

//  Many requests through every way a request ends (reply, DROPPED,
//  worker_lost, expiry, busy): the reused request structs (spare list) carry
//  nothing over, and the asan build checks no finished one is touched.
static void test_reuse(void **state)
{
    (void)state;
    s_fix_t *f = s_fix(1000, 400, 1000, 4);
    zsock_t *w = s_worker(f, "W1", "svc", "2", "1000");
    zsock_t *c = s_peer(f, "C");
    for (int i = 0; i < 100; i++) {
        char rid[16], body[16];
        snprintf(rid, sizeof rid, "r%d", i);
        snprintf(body, sizeof body, "b%d", i);
        s_request(c, "svc", rid, body);
        free(s_take(f, w, "C", body));
        if (i % 2) {
            s_reply(w, "C", rid, body);
            s_expect_reply(f, c, "svc", rid, body);
        } else
            s_send_strs(w, 4, (const char *[]){PM_BUS_WORKER_HDR, s_cmd_dropped, "C", rid});
    }
    s_pump(f, 5);
    s_assert_service(f, "svc", 1, 0, 0, 2);
    //  two in flight, four queued, one busy; then the worker goes away and
    //  the queue expires
    const char *rids[] = {"x1", "x2", "x3", "x4", "x5", "x6", "x7"};
    for (int i = 0; i < 7; i++)
        s_request(c, "svc", rids[i], "x");
    s_take_rid(f, w, "C", "x1");
    s_take_rid(f, w, "C", "x2");
    s_expect_error(f, c, "svc", "x7", "busy", "requests queued", 2000);
    s_command(w, s_cmd_disconnect);
    s_expect_errors(f, c, "svc", rids, 2, "worker_lost", "DISCONNECT");
    for (int i = 2; i < 6; i++)
        s_expect_error(f, c, "svc", rids[i], "no_service", "within 400 ms", 2000);
    S_STATS(f, .requests = 107, .replies = 50, .dispatched = 102, .queued = 4, .errors = 7,
            .workers_lost = 1);
    //  a new worker: everything starts from zero
    zsock_t *w2 = s_worker(f, "W2", "svc", "2", "1000");
    s_request(c, "svc", "y1", "body-y1");
    free(s_take(f, w2, "C", "body-y1"));
    s_answer(f, w2, c, "C", "y1", "z");
    s_assert_service(f, "svc", 1, 0, 0, 2);
    s_fix_destroy(&f);
}

//  A worker whose connection is gone (its process died: the ROUTER has no
//  route to it any more) is not a live worker: a request the router tries to
//  send it goes to another worker at once, instead of waiting in the queue
//  until the dead one misses 3 heartbeats, and the dead one's in-flight
//  requests fail back (worker_lost) then, not seconds later.
static void test_worker_gone(void **state)
{
    (void)state;
    s_fix_t *f = s_fix(1000, 10000, 1000, 100);
    zsock_t *w1 = s_worker(f, "W1", "svc", "5", "2000");
    zsock_t *w2 = s_worker(f, "W2", "svc", "5", "2000");
    zsock_t *c = s_peer(f, "C");
    s_request(c, "svc", "r1", "x"); //  0/0 -> W1
    s_take_rid(f, w1, "C", "r1");
    s_request(c, "svc", "r2", "x"); //  1/0 -> W2
    s_take_rid(f, w2, "C", "r2");
    s_request(c, "svc", "r3", "x"); //  1/1 -> W1
    s_take_rid(f, w1, "C", "r3");
    //  W2's process dies (its socket closes without a word)
    for (int i = 0; i < f->npeers; i++)
        if (f->peers[i] == w2)
            zsock_destroy(&f->peers[i]);
    s_pump(f, 20);
    //  2/1: the router picks W2 first and finds it gone
    int64_t t0 = zclock_mono();
    s_request(c, "svc", "r4", "x");
    s_take_rid(f, w1, "C", "r4");
    s_expect_error(f, c, "svc", "r2", "worker_lost", "its connection is gone", 2000);
    int64_t took = zclock_mono() - t0;
    if (took > 1000)
        fail_msg("r4 reached the live worker after %lld ms (the dead one's heartbeats: 3 x 2000)",
                 (long long)took);
    s_assert_service(f, "svc", 1, 0, 3, 5);
    S_STATS(f, .requests = 4, .dispatched = 4, .errors = 1, .workers_lost = 1);
    //  queued requests are not held up by it either
    s_answer(f, w1, c, "C", "r1", "a1");
    s_fix_destroy(&f);
}

//  The router tracks at most 1,024 services (a client calling misspelled
//  names cannot grow it without bound): the next new name is answered busy.
static void test_too_many_services(void **state)
{
    (void)state;
    s_fix_t *f = s_fix(1000, 10000, 1000, 100);
    zsock_t *c = s_peer(f, "C");
    for (int i = 0; i < 1024; i++) {
        char svc[16];
        snprintf(svc, sizeof svc, "s%d", i);
        s_request(c, svc, svc, "x"); //  rid = service: (client, rid) unique
    }
    s_pump(f, 20);
    s_request(c, "one-more", "r", "x");
    s_expect_error(f, c, "one-more", "r", "busy", "knows too many services (1024)", 2000);
    s_assert_service(f, "s1023", 0, 1, 0, 0);
    assert_false(s_service(f, "one-more").found);
    S_STATS(f, .requests = 1025, .queued = 1024, .errors = 1);
    s_fix_destroy(&f);
}

//  next_timeout: the router's heartbeat interval when idle, a worker's
//  heartbeat when sooner, never negative.
static void test_next_timeout(void **state)
{
    (void)state;
    s_fix_t *f = s_fix(400, 5000, 1000, 100);
    int t = broker_router_next_timeout(f->router);
    assert_true(t > 300 && t <= 400);
    s_worker(f, "W1", "svc", "1", "60");
    t = broker_router_next_timeout(f->router);
    assert_true(t >= 0 && t <= 60);
    zclock_sleep(70); //  overdue: 0, not negative
    assert_int_equal(broker_router_next_timeout(f->router), 0);
    s_fix_destroy(&f);

    //  an announced heartbeat below 50 ms counts as 50 ms
    f = s_fix(400, 5000, 1000, 100);
    int64_t t0 = zclock_mono();
    s_worker(f, "W1", "svc", "1", "1");
    t = broker_router_next_timeout(f->router);
    int elapsed = (int)(zclock_mono() - t0);
    if (t > 50 || t < 50 - elapsed - 1)
        fail_msg("next_timeout %d ms, %d ms after READY with a 1 ms heartbeat; want 50 - %d", t,
                 elapsed, elapsed);
    s_fix_destroy(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_reply),   cmocka_unit_test(test_least_inflight),
        cmocka_unit_test(test_capacity_cap),    cmocka_unit_test(test_queue_then_dispatch),
        cmocka_unit_test(test_busy_queue_full), cmocka_unit_test(test_queued_expires),
        cmocka_unit_test(test_worker_lost),     cmocka_unit_test(test_worker_lost_code),
        cmocka_unit_test(test_disconnect),      cmocka_unit_test(test_ready_again),
        cmocka_unit_test(test_duplicate),       cmocka_unit_test(test_bad_frames),
        cmocka_unit_test(test_untracked_reply), cmocka_unit_test(test_unroutable),
        cmocka_unit_test(test_reuse),           cmocka_unit_test(test_next_timeout),
        cmocka_unit_test(test_worker_gone),     cmocka_unit_test(test_too_many_services),
    };
    pm_log_init("broker_router_test", getenv("PM_TEST_VERBOSE") ? "debug" : "error", false);
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    zsys_shutdown();
    return rc;
}
