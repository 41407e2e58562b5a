/*  queuedrv — test and benchmark driver for the command queue. Speaks the bus
 *  like the gateway (checkin, connect) and the CLI (enqueue, queue, results)
 *  would, to service "scheduler". Used by tests/it/queue_*.sh and
 *  tests/bench/queue.sh. Prints `key=value` lines; exits 1 when a check fails.
 *
 *  Modes (first positional argument):
 *    enroll          Authenticate + TokenUpdate for n enrollments <prefix><i>
 *    enqueue         one command to all n enrollments; prints uuid, queued, ms
 *    enqueue-many    `count` enqueues to `eid`, `window` in flight; writes
 *                    "rid uuid" per reply to `log`; prints replied, ms, per_s
 *    verify-enqueues every uuid in `log` is in `eid`'s queue exactly once
 *    sessions        for each of n enrollments: Idle -> exactly the command
 *                    `uuid` -> Acknowledged -> empty; (`replay`: Acknowledged
 *                    again -> empty); prints ops, ms, per_s; fails on any
 *                    unexpected reply
 *    drain           for each of n enrollments: Idle, then Acknowledge every
 *                    command offered until empty; counts deliveries per
 *                    command per session (a second one in one session fails)
 *    results         prints count= of results for `uuid` (limit 1000000)
 *    devices         prints devices=, pushable=, wake_pending= over all enrollments
 *    events          replays the whole event log (service "store", pages of
 *                    1000); fails on a gap or a repeat in seq; prints events=
 *                    and the count of each command.* / checkin.* name
 *  --apps N (enqueue, sessions): the command is InstalledApplicationList and
 *  every Acknowledged carries N apps (tests/bench/inventory.sh).
 */
#include "pm_bus.h"
#include "pm_cfg.h"
#include "pm_log.h"
#include "pm_mpck.h"

#include <czmq.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

static const pm_opt_t s_opts[] = {
    {"request-endpoint", PM_OPT_STR, "tcp://127.0.0.1:7401", "broker request endpoint"},
    {"server-key", PM_OPT_STR, NULL, "broker CURVE public key (Z85)"},
    {"curve-cert", PM_OPT_STR, NULL, "our CURVE certificate file (with server-key)"},
    {"n", PM_OPT_INT, "10", "number of enrollments"},
    {"prefix", PM_OPT_STR, "dev-", "enrollment ids are <prefix><i>"},
    {"window", PM_OPT_INT, "64", "requests in flight"},
    {"count", PM_OPT_INT, "100", "enqueue-many: how many"},
    {"eid", PM_OPT_STR, "dev-0", "enqueue-many / verify-enqueues: the target"},
    {"uuid", PM_OPT_STR, NULL, "the CommandUUID (enqueue: use it; sessions/results: expect it)"},
    {"log", PM_OPT_STR, NULL, "file of 'rid uuid' lines"},
    {"timeout-ms", PM_OPT_INT, "3000", "per-attempt timeout"},
    {"retries", PM_OPT_INT, "5", "extra attempts (same rid)"},
    {"replay", PM_OPT_BOOL, "false", "sessions: acknowledge twice"},
    {"no-push", PM_OPT_BOOL, "true", "enqueue: no wakeups"},
    {"apps", PM_OPT_INT, "0",
     "enqueue/sessions: InstalledApplicationList, each answer with this many apps"},
    {"query-responses", PM_OPT_BOOL, "false",
     "sessions (DeviceInformation): acknowledge with QueryResponses (UDID, OSVersion)"},
    {NULL, 0, NULL, NULL}};

static pm_bus_t *s_bus;
static int s_timeout, s_retries, s_window;
static int s_inflight, s_failures;
static char s_prefix[64];
static int s_apps; //  > 0: InstalledApplicationList answers with this many apps
static bool s_qr;  //  DeviceInformation answers carry QueryResponses

static int64_t s_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static void s_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void s_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "queuedrv: FAIL: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    s_failures++;
}

static void s_eid(char *buf, size_t size, int i)
{
    snprintf(buf, size, "%s%d", s_prefix, i);
}

//  Wait until fewer than `max` requests are in flight. -1 if interrupted.
static int s_drain_to(int max)
{
    while (s_inflight > max)
        if (pm_bus_run_once(s_bus, 100) < 0)
            return -1;
    return 0;
}

static int s_call(const char *svc, pm_msg_t *req, pm_bus_reply_fn *fn, void *arg)
{
    if (s_drain_to(s_window - 1) < 0)
        return -1;
    s_inflight++;
    if (pm_bus_call_async(s_bus, svc, req, s_timeout, s_retries, fn, arg) < 0) {
        s_inflight--;
        s_fail("could not send %s", pm_msg_type_name(pm_msg_type(req)));
        return -1;
    }
    return 0;
}

static bool s_is_error(const pm_msg_t *reply, const char *error, const char *what)
{
    if (!reply) {
        s_fail("%s: no reply: %s", what, error ? error : "?");
        return true;
    }
    if (pm_msg_type(reply) == PM_MSG_ERROR) {
        s_fail("%s: error %s: %s", what, pm_msg_str(reply, "code"), pm_msg_str(reply, "message"));
        return true;
    }
    return false;
}

/* ---- enroll ---- */

static void s_checkin_done(void *arg, const pm_msg_t *reply, const char *error)
{
    (void)arg;
    s_inflight--;
    if (!s_is_error(reply, error, "checkin") && pm_msg_uint(reply, "status", 0) != 200)
        s_fail("checkin answered %llu: %s", (unsigned long long)pm_msg_uint(reply, "status", 0),
               pm_msg_str(reply, "reason"));
}

//  Authenticate reports a model and an OS version, spread over the fleet
//  (device i: model i % 4, OS i % 3) so that `picomdm devices --model/--os`
//  have matching rows to find (tests/bench/inventory.sh).
static const char *const s_models[] = {"iPhone15,2", "iPhone14,5", "iPad13,1", "Mac14,2"};
static const char *const s_oses[] = {"17.5.1", "17.4", "16.7.8"};

static int s_checkin(const char *eid, const char *mt, int i)
{
    pm_msg_t *m = pm_msg_new(PM_MSG_CHECKIN);
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
    bool tu = strcmp(mt, "TokenUpdate") == 0;
    msgpack_pack_map(&pk, tu ? 5 : 4);
    msgpack_pack_str_with_body(&pk, "MessageType", 11);
    msgpack_pack_str_with_body(&pk, mt, strlen(mt));
    msgpack_pack_str_with_body(&pk, "UDID", 4);
    msgpack_pack_str_with_body(&pk, eid, strlen(eid));
    if (!tu) {
        const char *model = s_models[i % 4], *os = s_oses[i % 3];
        msgpack_pack_str_with_body(&pk, "Model", 5);
        msgpack_pack_str_with_body(&pk, model, strlen(model));
        msgpack_pack_str_with_body(&pk, "OSVersion", 9);
        msgpack_pack_str_with_body(&pk, os, strlen(os));
    }
    if (tu) {
        msgpack_pack_str_with_body(&pk, "Topic", 5);
        msgpack_pack_str_with_body(&pk, "com.apple.mgmt.test", 19);
        msgpack_pack_str_with_body(&pk, "PushMagic", 9);
        msgpack_pack_str_with_body(&pk, "magic", 5);
        msgpack_pack_str_with_body(&pk, "Token", 5);
        msgpack_pack_bin_with_body(&pk, "\x01\x02\x03\x04", 4);
    }
    pm_msg_set_str(m, "eid", eid);
    pm_msg_set_str(m, "kind", "device");
    pm_msg_set_str(m, "message_type", mt);
    pm_msg_set_packed(m, "body", (const uint8_t *)b.data, b.size);
    msgpack_sbuffer_destroy(&b);
    int rc = s_call("scheduler", m, s_checkin_done, NULL);
    pm_msg_destroy(&m);
    return rc;
}

static int s_enroll(int n)
{
    char eid[128];
    int64_t t0 = s_ms();
    for (int i = 0; i < n; i++) {
        s_eid(eid, sizeof eid, i);
        if (s_checkin(eid, "Authenticate", i) < 0)
            return -1;
    }
    if (s_drain_to(0) < 0)
        return -1;
    for (int i = 0; i < n; i++) {
        s_eid(eid, sizeof eid, i);
        if (s_checkin(eid, "TokenUpdate", i) < 0)
            return -1;
    }
    if (s_drain_to(0) < 0)
        return -1;
    int64_t ms = s_ms() - t0;
    printf("enrolled=%d\nms=%lld\nper_s=%.0f\n", n, (long long)ms, ms ? 2000.0 * n / ms : 0.0);
    return 0;
}

/* ---- enqueue ---- */

static pm_msg_t *s_enqueue_msg(const char *const *targets, size_t n, const char *uuid, bool nopush)
{
    pm_msg_t *m = pm_msg_new(PM_MSG_ENQUEUE);
    if (!m)
        return NULL;
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
    if (s_apps > 0) {
        msgpack_pack_map(&pk, 1);
        msgpack_pack_str_with_body(&pk, "RequestType", 11);
        msgpack_pack_str_with_body(&pk, "InstalledApplicationList", 24);
    } else {
        msgpack_pack_map(&pk, 2);
        msgpack_pack_str_with_body(&pk, "RequestType", 11);
        msgpack_pack_str_with_body(&pk, "DeviceInformation", 17);
        msgpack_pack_str_with_body(&pk, "Queries", 7);
        msgpack_pack_array(&pk, 2);
        msgpack_pack_str_with_body(&pk, "UDID", 4);
        msgpack_pack_str_with_body(&pk, "OSVersion", 9);
    }
    pm_msg_set_packed(m, "command", (const uint8_t *)b.data, b.size);
    msgpack_sbuffer_destroy(&b);
    pm_msg_set_strs(m, "targets", targets, n);
    if (uuid)
        pm_msg_set_str(m, "command_uuid", uuid);
    pm_msg_set_bool(m, "no_push", nopush);
    return m;
}

static int s_enqueue_all(int n, const char *uuid, bool nopush)
{
    char **eids = calloc((size_t)n, sizeof *eids);
    for (int i = 0; i < n; i++) {
        char eid[128];
        s_eid(eid, sizeof eid, i);
        eids[i] = strdup(eid);
    }
    int64_t t0 = s_ms();
    pm_msg_t *m = s_enqueue_msg((const char *const *)eids, (size_t)n, uuid, nopush);
    char err[256];
    pm_msg_t *r = pm_bus_call(s_bus, "scheduler", m, s_timeout, s_retries, err, sizeof err);
    int64_t ms = s_ms() - t0;
    int rc = -1;
    if (!s_is_error(r, err, "enqueue")) {
        printf("uuid=%s\nqueued=%llu\nms=%lld\n", pm_msg_str(r, "command_uuid"),
               (unsigned long long)pm_msg_uint(r, "queued", 0), (long long)ms);
        rc = pm_msg_uint(r, "queued", 0) == (uint64_t)n ? 0 : -1;
        if (rc < 0)
            s_fail("queued %llu of %d", (unsigned long long)pm_msg_uint(r, "queued", 0), n);
    }
    pm_msg_destroy(&r);
    pm_msg_destroy(&m);
    for (int i = 0; i < n; i++)
        free(eids[i]);
    free(eids);
    return rc;
}

static FILE *s_log;
static int s_replied;

static void s_enq_done(void *arg, const pm_msg_t *reply, const char *error)
{
    char *rid = arg;
    s_inflight--;
    if (!s_is_error(reply, error, "enqueue")) {
        s_replied++;
        fprintf(s_log, "%s %s\n", rid, pm_msg_str(reply, "command_uuid"));
        fflush(s_log);
    }
    free(rid);
}

static int s_enqueue_many(int count, const char *eid, const char *log)
{
    s_log = fopen(log, "w");
    if (!s_log) {
        s_fail("cannot write %s", log);
        return -1;
    }
    const char *t[1] = {eid};
    int64_t t0 = s_ms();
    for (int i = 0; i < count; i++) {
        pm_msg_t *m = s_enqueue_msg(t, 1, NULL, true);
        char *rid = strdup(pm_msg_rid(m));
        if (s_call("scheduler", m, s_enq_done, rid) < 0) {
            free(rid);
            pm_msg_destroy(&m);
            return -1;
        }
        pm_msg_destroy(&m);
    }
    if (s_drain_to(0) < 0)
        return -1;
    int64_t ms = s_ms() - t0;
    fclose(s_log);
    printf("sent=%d\nreplied=%d\nms=%lld\nper_s=%.0f\n", count, s_replied, (long long)ms,
           ms ? 1000.0 * s_replied / ms : 0.0);
    return 0;
}

//  Every uuid in the log is in eid's queue exactly once; no uuid twice in the queue.
static int s_verify_enqueues(const char *eid, const char *log)
{
    pm_msg_t *m = pm_msg_new(PM_MSG_QUEUE);
    pm_msg_set_str(m, "eid", eid);
    pm_msg_set_bool(m, "all", true);
    char err[256];
    pm_msg_t *r = pm_bus_call(s_bus, "scheduler", m, s_timeout, s_retries, err, sizeof err);
    pm_msg_destroy(&m);
    if (s_is_error(r, err, "queue"))
        return -1;
    zhashx_t *seen = zhashx_new();
    const msgpack_object *items = pm_msg_obj(r, "items");
    size_t n = items ? items->via.array.size : 0;
    for (size_t i = 0; i < n; i++) {
        char u[128];
        if (pm_mp_get_str(&items->via.array.ptr[i], "command_uuid", u, sizeof u) < 0) {
            s_fail("queue item without command_uuid");
            continue;
        }
        if (zhashx_lookup(seen, u))
            s_fail("CommandUUID %s is twice in the queue", u);
        zhashx_update(seen, u, (void *)1);
    }
    FILE *f = fopen(log, "r");
    int lines = 0, missing = 0;
    char rid[128], uuid[128];
    zhashx_t *once = zhashx_new();
    while (f && fscanf(f, "%127s %127s", rid, uuid) == 2) {
        lines++;
        if (!zhashx_lookup(seen, uuid)) {
            missing++;
            s_fail("replied enqueue %s (rid %s) is not in the queue", uuid, rid);
        }
        if (zhashx_lookup(once, uuid))
            s_fail("two replies named the same CommandUUID %s", uuid);
        zhashx_update(once, uuid, (void *)1);
    }
    if (f)
        fclose(f);
    printf("queue_entries=%zu\nreplied=%d\nmissing=%d\n", n, lines, missing);
    zhashx_destroy(&seen);
    zhashx_destroy(&once);
    pm_msg_destroy(&r);
    return 0;
}

/* ---- sessions ---- */

typedef struct {
    int i;
    int step; //  0 Idle sent, 1 Ack sent, 2 replay Ack sent
    char cmd[128];
    zhashx_t *delivered; //  drain: CommandUUIDs delivered in this session
    int acked;
} s_sess_t;

static const char *s_expect;
static bool s_replay;
static int s_done, s_ops;

static int s_connect(s_sess_t *s, const char *status, const char *uuid);

//  The CommandUUID in a connect.reply ("" when empty).
static void s_offered(const pm_msg_t *r, char *buf, size_t size)
{
    buf[0] = '\0';
    const msgpack_object *c = pm_msg_obj(r, "command");
    if (c)
        pm_mp_get_str(c, "CommandUUID", buf, size);
}

static void s_sess_done(void *arg, const pm_msg_t *reply, const char *error)
{
    s_sess_t *s = arg;
    s_inflight--;
    s_ops++;
    char eid[128];
    s_eid(eid, sizeof eid, s->i);
    if (s_is_error(reply, error, "connect") || pm_msg_uint(reply, "status", 0) != 200) {
        if (reply && pm_msg_type(reply) != PM_MSG_ERROR)
            s_fail("%s: connect answered %llu: %s", eid,
                   (unsigned long long)pm_msg_uint(reply, "status", 0),
                   pm_msg_str(reply, "reason"));
        s_done++;
        return;
    }
    char got[128];
    s_offered(reply, got, sizeof got);
    if (s->delivered) { //  drain mode
        if (got[0]) {
            if (zhashx_lookup(s->delivered, got))
                s_fail("%s: %s delivered twice in one session", eid, got);
            zhashx_update(s->delivered, got, (void *)1);
            s->acked++;
            s_connect(s, "Acknowledged", got);
        } else {
            s_done++;
        }
        return;
    }
    if (s->step == 0) {
        if (strcmp(got, s_expect) != 0) {
            s_fail("%s: Idle got '%s', expected '%s'", eid, got, s_expect);
            s_done++;
            return;
        }
        s->step = 1;
        s_connect(s, "Acknowledged", got);
    } else if (s->step == 1 || s->step == 2) {
        if (got[0]) {
            s_fail("%s: after Acknowledged got '%s', expected nothing", eid, got);
            s_done++;
            return;
        }
        if (s->step == 1 && s_replay) {
            s->step = 2;
            s_connect(s, "Acknowledged", s_expect);
        } else {
            s_done++;
        }
    }
}

static int s_connect(s_sess_t *s, const char *status, const char *uuid)
{
    char eid[128];
    s_eid(eid, sizeof eid, s->i);
    pm_msg_t *m = pm_msg_new(PM_MSG_CONNECT);
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
    bool apps = s_apps > 0 && uuid && strcmp(status, "Acknowledged") == 0;
    bool qr = !apps && s_qr && uuid && strcmp(status, "Acknowledged") == 0;
    msgpack_pack_map(&pk, (uuid ? 3 : 2) + (apps || qr ? 1 : 0));
    if (qr) { //  the same OS as its Authenticate (s_checkin)
        const char *os = s_oses[s->i % 3];
        msgpack_pack_str_with_body(&pk, "QueryResponses", 14);
        msgpack_pack_map(&pk, 2);
        msgpack_pack_str_with_body(&pk, "UDID", 4);
        msgpack_pack_str_with_body(&pk, eid, strlen(eid));
        msgpack_pack_str_with_body(&pk, "OSVersion", 9);
        msgpack_pack_str_with_body(&pk, os, strlen(os));
    }
    if (apps) {
        msgpack_pack_str_with_body(&pk, "InstalledApplicationList", 24);
        msgpack_pack_array(&pk, (uint32_t)s_apps);
        for (int a = 0; a < s_apps; a++) {
            char id[64], name[32];
            int li = snprintf(id, sizeof id, "com.example.bench.app%03d", a);
            int ln = snprintf(name, sizeof name, "Bench App %03d", a);
            msgpack_pack_map(&pk, 5);
            msgpack_pack_str_with_body(&pk, "Identifier", 10);
            msgpack_pack_str_with_body(&pk, id, (size_t)li);
            msgpack_pack_str_with_body(&pk, "Name", 4);
            msgpack_pack_str_with_body(&pk, name, (size_t)ln);
            msgpack_pack_str_with_body(&pk, "ShortVersion", 12);
            msgpack_pack_str_with_body(&pk, "1.0", 3);
            msgpack_pack_str_with_body(&pk, "Version", 7);
            msgpack_pack_str_with_body(&pk, "100", 3);
            msgpack_pack_str_with_body(&pk, "BundleSize", 10);
            msgpack_pack_uint64(&pk, 1000000 + (uint64_t)a * 1000);
        }
    }
    msgpack_pack_str_with_body(&pk, "UDID", 4);
    msgpack_pack_str_with_body(&pk, eid, strlen(eid));
    msgpack_pack_str_with_body(&pk, "Status", 6);
    msgpack_pack_str_with_body(&pk, status, strlen(status));
    if (uuid) {
        msgpack_pack_str_with_body(&pk, "CommandUUID", 11);
        msgpack_pack_str_with_body(&pk, uuid, strlen(uuid));
    }
    pm_msg_set_str(m, "eid", eid);
    pm_msg_set_str(m, "kind", "device");
    pm_msg_set_str(m, "status", status);
    if (uuid)
        pm_msg_set_str(m, "command_uuid", uuid);
    pm_msg_set_packed(m, "body", (const uint8_t *)b.data, b.size);
    msgpack_sbuffer_destroy(&b);
    //  not s_call: a callback must not block on the window
    s_inflight++;
    int rc = pm_bus_call_async(s_bus, "scheduler", m, s_timeout, s_retries, s_sess_done, s);
    if (rc < 0) {
        s_inflight--;
        s_fail("could not send connect");
        s_done++;
    }
    pm_msg_destroy(&m);
    return rc;
}

static int s_sessions(int n, bool drain)
{
    s_sess_t *ss = calloc((size_t)n, sizeof *ss);
    int64_t t0 = s_ms();
    int started = 0, acked = 0;
    while (s_done < n) {
        //  keep `window` sessions running
        while (started < n && started - s_done < s_window) {
            ss[started].i = started;
            if (drain)
                ss[started].delivered = zhashx_new();
            s_connect(&ss[started], "Idle", NULL);
            started++;
        }
        if (pm_bus_run_once(s_bus, 100) < 0)
            break;
    }
    int64_t ms = s_ms() - t0;
    for (int i = 0; i < n; i++) {
        acked += ss[i].acked;
        zhashx_destroy(&ss[i].delivered);
    }
    printf("sessions=%d\nops=%d\nms=%lld\nper_s=%.0f\n", n, s_ops, (long long)ms,
           ms ? 1000.0 * s_ops / ms : 0.0);
    if (drain)
        printf("acked=%d\n", acked);
    free(ss);
    return 0;
}

static int s_results(const char *uuid)
{
    pm_msg_t *m = pm_msg_new(PM_MSG_RESULTS);
    pm_msg_set_str(m, "command_uuid", uuid);
    pm_msg_set_uint(m, "limit", 1000000);
    char err[256];
    pm_msg_t *r = pm_bus_call(s_bus, "scheduler", m, s_timeout, s_retries, err, sizeof err);
    pm_msg_destroy(&m);
    if (s_is_error(r, err, "results"))
        return -1;
    const msgpack_object *a = pm_msg_obj(r, "results");
    size_t n = a ? a->via.array.size : 0;
    //  one result per enrollment
    zhashx_t *seen = zhashx_new();
    for (size_t i = 0; i < n; i++) {
        char eid[256];
        if (pm_mp_get_str(&a->via.array.ptr[i], "eid", eid, sizeof eid) == 0) {
            if (zhashx_lookup(seen, eid))
                s_fail("two results for %s", eid);
            zhashx_update(seen, eid, (void *)1);
        }
    }
    zhashx_destroy(&seen);
    printf("count=%zu\n", n);
    pm_msg_destroy(&r);
    return 0;
}

static int s_devices(void)
{
    pm_msg_t *m = pm_msg_new(PM_MSG_DEVICES);
    pm_msg_set_uint(m, "limit", 1000000);
    char err[256];
    pm_msg_t *r = pm_bus_call(s_bus, "scheduler", m, s_timeout, s_retries, err, sizeof err);
    pm_msg_destroy(&m);
    if (s_is_error(r, err, "devices"))
        return -1;
    const msgpack_object *a = pm_msg_obj(r, "devices");
    size_t n = a ? a->via.array.size : 0, push = 0, wake = 0;
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *p = pm_mp_get(&a->via.array.ptr[i], "pushable");
        const msgpack_object *w = pm_mp_get(&a->via.array.ptr[i], "wake_pending");
        push += p && p->type == MSGPACK_OBJECT_BOOLEAN && p->via.boolean;
        wake += w && w->type == MSGPACK_OBJECT_BOOLEAN && w->via.boolean;
    }
    printf("devices=%zu\npushable=%zu\nwake_pending=%zu\n", n, push, wake);
    pm_msg_destroy(&r);
    return 0;
}

static int s_events(void)
{
    uint64_t after = 0, total = 0;
    zhashx_t *names = zhashx_new();
    zhashx_set_destructor(names, NULL);
    for (;;) {
        pm_msg_t *m = pm_msg_new(PM_MSG_EVENTS);
        pm_msg_set_uint(m, "after", after);
        pm_msg_set_uint(m, "limit", 1000);
        char err[256];
        pm_msg_t *r = pm_bus_call(s_bus, "store", m, s_timeout, s_retries, err, sizeof err);
        pm_msg_destroy(&m);
        if (s_is_error(r, err, "events")) {
            zhashx_destroy(&names);
            return -1;
        }
        const msgpack_object *a = pm_msg_obj(r, "events");
        size_t n = a ? a->via.array.size : 0;
        for (size_t i = 0; i < n; i++) {
            const msgpack_object *seq = pm_mp_get(&a->via.array.ptr[i], "seq");
            uint64_t v = seq && seq->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? seq->via.u64 : 0;
            if (v != after + 1)
                s_fail("event seq %llu follows %llu", (unsigned long long)v,
                       (unsigned long long)after);
            after = v;
            char name[64];
            if (pm_mp_get_str(&a->via.array.ptr[i], "name", name, sizeof name) == 0) {
                uintptr_t c = (uintptr_t)zhashx_lookup(names, name);
                zhashx_update(names, name, (void *)(c + 1));
            }
        }
        total += n;
        pm_msg_destroy(&r);
        if (n < 1000)
            break;
    }
    printf("events=%llu\n", (unsigned long long)total);
    for (void *c = zhashx_first(names); c; c = zhashx_next(names))
        printf("%s=%lu\n", (const char *)zhashx_cursor(names), (unsigned long)(uintptr_t)c);
    zhashx_destroy(&names);
    return 0;
}

int main(int argc, char **argv)
{
    pm_cfg_t *cfg = NULL;
    pm_cfg_result_t r =
        pm_cfg_parse(&cfg, "queuedrv", "command queue test driver", s_opts, argc, argv);
    if (r == PM_CFG_EXIT)
        return 0;
    if (r != PM_CFG_RUN)
        return 2;
    pm_cfg_start_logging(cfg);
    if (pm_cfg_argc(cfg) < 1) {
        fprintf(stderr, "queuedrv: give a mode (see the top of tests/tools/queuedrv.c)\n");
        return 2;
    }
    const char *mode = pm_cfg_arg(cfg, 0);
    s_timeout = (int)pm_cfg_int(cfg, "timeout-ms");
    s_retries = (int)pm_cfg_int(cfg, "retries");
    s_window = (int)pm_cfg_int(cfg, "window");
    snprintf(s_prefix, sizeof s_prefix, "%s", pm_cfg_str(cfg, "prefix"));
    int n = (int)pm_cfg_int(cfg, "n");
    s_apps = (int)pm_cfg_int(cfg, "apps");
    s_qr = pm_cfg_bool(cfg, "query-responses");
    pm_bus_config_t bc = {.name = "queuedrv",
                          .request_endpoint = pm_cfg_str(cfg, "request-endpoint"),
                          .server_public_key = pm_cfg_str(cfg, "server-key"),
                          .cert_file = pm_cfg_str(cfg, "curve-cert")};
    s_bus = pm_bus_new(&bc);
    if (!s_bus)
        return 2;
    int rc = -1;
    const char *uuid = pm_cfg_str(cfg, "uuid");
    const char *log = pm_cfg_str(cfg, "log");
    if (strcmp(mode, "enroll") == 0)
        rc = s_enroll(n);
    else if (strcmp(mode, "enqueue") == 0)
        rc = s_enqueue_all(n, uuid, pm_cfg_bool(cfg, "no-push"));
    else if (strcmp(mode, "enqueue-many") == 0 && log)
        rc = s_enqueue_many((int)pm_cfg_int(cfg, "count"), pm_cfg_str(cfg, "eid"), log);
    else if (strcmp(mode, "verify-enqueues") == 0 && log)
        rc = s_verify_enqueues(pm_cfg_str(cfg, "eid"), log);
    else if (strcmp(mode, "sessions") == 0 && uuid) {
        s_expect = uuid;
        s_replay = pm_cfg_bool(cfg, "replay");
        rc = s_sessions(n, false);
    } else if (strcmp(mode, "drain") == 0)
        rc = s_sessions(n, true);
    else if (strcmp(mode, "results") == 0 && uuid)
        rc = s_results(uuid);
    else if (strcmp(mode, "devices") == 0)
        rc = s_devices();
    else if (strcmp(mode, "events") == 0)
        rc = s_events();
    else
        fprintf(stderr, "queuedrv: unknown mode %s or missing --uuid/--log\n", mode);
    printf("failures=%d\n", s_failures);
    pm_bus_destroy(&s_bus);
    pm_cfg_destroy(&cfg);
    return rc == 0 && s_failures == 0 ? 0 : 1;
}
