/*  sched — the scheduler service (see sched.h and docs/queue.md). */
#include "sched.h"

#include "pm_log.h"
#include "pm_mpck.h"
#include "pm_stats.h"

#include <czmq.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define S_UUID_MAX 128
#define S_EID_MAX 256

struct sched {
    pm_bus_t *bus;
    pm_stats_t *stats;                        //  borrowed, may be NULL
    pm_stats_series_t *by_type[PM_MSG_COUNT]; //  scheduler_requests_total{type}, on first use
    pm_stats_series_t *refused, *store_failed, *delivered, *wakes, *in_flight, *latency;
    sched_opts_t opts;
    int64_t next_sweep;
    bool sweeping;
    int64_t next_silent; //  0 until the first tick: the first silent sweep waits a period
    bool silent_sweeping;
};

typedef struct {
    sched_t *s;
    pm_bus_job_t *job;
    double t0_ms; //  arrival (pm_stats_now_ms), for the latency histogram
} s_call_t;

static int64_t s_now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

sched_t *sched_new(pm_bus_t *bus, const sched_opts_t *opts)
{
    sched_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->bus = bus;
    s->opts = *opts;
    if (s->opts.store_timeout_ms <= 0)
        s->opts.store_timeout_ms = 3000;
    return s;
}

void sched_destroy(sched_t **ps)
{
    if (!ps || !*ps)
        return;
    free(*ps);
    *ps = NULL;
}

/* ---- validation (pure) ---- */

static bool s_str_ok(const char *v, size_t max)
{
    return v && *v && strlen(v) <= max;
}

//  All elements of a STRS field are non-empty and short. Returns the bad index or -1.
static long s_bad_str_in(const msgpack_object *arr, size_t max)
{
    if (!arr || arr->type != MSGPACK_OBJECT_ARRAY)
        return -1;
    for (uint32_t i = 0; i < arr->via.array.size; i++) {
        const msgpack_object *o = &arr->via.array.ptr[i];
        if (o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0 || o->via.str.size > max)
            return (long)i;
    }
    return -1;
}

pm_msg_t *sched_validate(const pm_msg_t *req)
{
    const msgpack_object *o;
    long bad;
    switch (pm_msg_type(req)) {
    case PM_MSG_CHECKIN:
    case PM_MSG_CONNECT:
        if (!s_str_ok(pm_msg_str(req, "eid"), S_EID_MAX))
            return pm_msg_new_error(req, "bad_request",
                                    "eid must be 1..%d characters (the enrollment id: UDID, "
                                    "EnrollmentID, or UDID:UserID)",
                                    S_EID_MAX);
        return NULL;
    case PM_MSG_ENQUEUE: {
        char rtype[128];
        if (pm_mp_get_str(pm_msg_obj(req, "command"), "RequestType", rtype, sizeof rtype) < 0 ||
            !rtype[0])
            return pm_msg_new_error(req, "bad_request",
                                    "command has no RequestType: give the Command dict as "
                                    "Apple's schema defines it, e.g. {RequestType: "
                                    "DeviceInformation, Queries: [...]}");
        o = pm_msg_obj(req, "targets");
        if (!o || o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size == 0)
            return pm_msg_new_error(req, "bad_request",
                                    "no targets: give at least one enrollment id (list them "
                                    "with `picomdm devices`)");
        if ((bad = s_bad_str_in(o, S_EID_MAX)) >= 0)
            return pm_msg_new_error(req, "bad_request",
                                    "target #%ld is not an enrollment id (1..%d characters)",
                                    bad + 1, S_EID_MAX);
        const char *u = pm_msg_str(req, "command_uuid");
        if (u && !s_str_ok(u, S_UUID_MAX))
            return pm_msg_new_error(req, "bad_request",
                                    "command_uuid must be 1..%d characters, or left out to get "
                                    "a fresh one",
                                    S_UUID_MAX);
        return NULL;
    }
    case PM_MSG_CANCEL:
        if (!s_str_ok(pm_msg_str(req, "command_uuid"), S_UUID_MAX))
            return pm_msg_new_error(req, "bad_request",
                                    "command_uuid is required: the CommandUUID enqueue answered "
                                    "(see `picomdm queue <eid>`)");
        if ((bad = s_bad_str_in(pm_msg_obj(req, "targets"), S_EID_MAX)) >= 0)
            return pm_msg_new_error(req, "bad_request", "target #%ld is not an enrollment id",
                                    bad + 1);
        return NULL;
    case PM_MSG_QUEUE:
        if (!s_str_ok(pm_msg_str(req, "eid"), S_EID_MAX))
            return pm_msg_new_error(req, "bad_request",
                                    "eid is required (list enrollments with `picomdm devices`)");
        return NULL;
    case PM_MSG_RESULTS:
    case PM_MSG_DEVICES:
    case PM_MSG_DEVICES_FIND:
    case PM_MSG_POLICY:
        return NULL;
    case PM_MSG_DEVICE:
    case PM_MSG_TIMELINE:
        if (!s_str_ok(pm_msg_str(req, "eid"), S_EID_MAX))
            return pm_msg_new_error(req, "bad_request",
                                    "eid is required (list enrollments with `picomdm devices`)");
        return NULL;
    default:
        return pm_msg_new_error(req, "unknown_type",
                                "the scheduler does not handle %s (see docs/bus.md for who does)",
                                pm_msg_type_name(pm_msg_type(req)));
    }
}

/* ---- translation to store requests (pure) ---- */

//  Copy the fields named in `names` (NULL-terminated) that req has.
static void s_copy(pm_msg_t *dst, const pm_msg_t *src, const char *const *names)
{
    for (; *names; names++) {
        const msgpack_object *o = pm_msg_obj(src, *names);
        if (o && pm_msg_set_obj(dst, *names, o) < 0)
            pm_warn("field %s could not be copied into %s", *names,
                    pm_msg_type_name(pm_msg_type(dst)));
    }
}

pm_msg_t *sched_store_request(const sched_opts_t *o, const pm_msg_t *req, const char *uuid,
                              int64_t now_ms)
{
    pm_msg_t *m = NULL;
    switch (pm_msg_type(req)) {
    case PM_MSG_CHECKIN: {
        static const char *const f[] = {
            "eid",         "kind",           "message_type", "cert_hash", "cert_prev_hash",
            "cert_issuer", "cert_not_after", "clock_skew_s", "body",      NULL};
        if ((m = pm_msg_new(PM_MSG_STORE_CHECKIN)))
            s_copy(m, req, f);
        break;
    }
    case PM_MSG_CONNECT: {
        static const char *const f[] = {"eid",          "status",         "command_uuid",
                                        "cert_hash",    "cert_prev_hash", "cert_not_after",
                                        "clock_skew_s", "body",           NULL};
        if (!(m = pm_msg_new(PM_MSG_STORE_CONNECT)))
            break;
        s_copy(m, req, f);
        //  the gateway's rid: a retry that crosses a scheduler restart is recognised
        pm_msg_set_str(m, "device_rid", pm_msg_rid(req));
        pm_msg_set_uint(m, "notnow_limit", (uint64_t)o->notnow_limit);
        pm_msg_set_uint(m, "redeliver_limit", (uint64_t)o->redeliver_limit);
        pm_msg_set_uint(m, "delivered_timeout_s", (uint64_t)o->delivered_timeout_s);
        break;
    }
    case PM_MSG_ENQUEUE: {
        static const char *const f[] = {"command", "targets", "priority", "no_push", NULL};
        if (!(m = pm_msg_new(PM_MSG_STORE_ENQUEUE)))
            break;
        s_copy(m, req, f);
        const char *u = pm_msg_str(req, "command_uuid");
        pm_msg_set_str(m, "command_uuid", u ? u : uuid);
        uint64_t ttl = pm_msg_uint(req, "ttl_s", (uint64_t)o->default_ttl_s);
        if (ttl > 0)
            pm_msg_set_uint(m, "expires_ms", (uint64_t)now_ms + ttl * 1000);
        //  the operator's rid: a retried enqueue returns the first CommandUUID, even
        //  after every process restarted
        pm_msg_set_str(m, "op_rid", pm_msg_rid(req));
        break;
    }
    case PM_MSG_CANCEL: {
        static const char *const f[] = {"command_uuid", "targets", NULL};
        if ((m = pm_msg_new(PM_MSG_STORE_CANCEL)))
            s_copy(m, req, f);
        break;
    }
    case PM_MSG_QUEUE: {
        static const char *const f[] = {"eid", "all", NULL};
        if ((m = pm_msg_new(PM_MSG_STORE_QUEUE))) {
            s_copy(m, req, f);
            pm_msg_set_uint(m, "notnow_limit", (uint64_t)o->notnow_limit);
        }
        break;
    }
    case PM_MSG_RESULTS: {
        static const char *const f[] = {"eid", "command_uuid", "limit", NULL};
        if ((m = pm_msg_new(PM_MSG_STORE_RESULTS)))
            s_copy(m, req, f);
        break;
    }
    case PM_MSG_DEVICES: {
        static const char *const f[] = {"limit", "after", NULL};
        if ((m = pm_msg_new(PM_MSG_STORE_DEVICES)))
            s_copy(m, req, f);
        break;
    }
    /* ---- inventory (docs/inventory.md): passed through to the store ---- */
    case PM_MSG_DEVICE: {
        static const char *const f[] = {"eid", NULL};
        if ((m = pm_msg_new(PM_MSG_STORE_DEVICE)))
            s_copy(m, req, f);
        break;
    }
    case PM_MSG_TIMELINE: {
        static const char *const f[] = {"eid", "after", "limit", NULL};
        if ((m = pm_msg_new(PM_MSG_STORE_TIMELINE)))
            s_copy(m, req, f);
        break;
    }
    case PM_MSG_DEVICES_FIND: {
        static const char *const f[] = {"model",       "os_version", "silent_for_s", "query_key",
                                        "query_value", "limit",      "after",        NULL};
        if ((m = pm_msg_new(PM_MSG_STORE_DEVICES_FIND)))
            s_copy(m, req, f);
        break;
    }
    default:
        break;
    }
    return m;
}

pm_msg_t *sched_policy_reply(const sched_opts_t *o, const pm_msg_t *req)
{
    pm_msg_t *m = pm_msg_new_reply(req, PM_MSG_POLICY_REPLY);
    if (!m)
        return NULL;
    if (pm_msg_set_uint(m, "notnow_limit", (uint64_t)o->notnow_limit) < 0 ||
        pm_msg_set_uint(m, "redeliver_limit", (uint64_t)o->redeliver_limit) < 0 ||
        pm_msg_set_uint(m, "delivered_timeout_s", (uint64_t)o->delivered_timeout_s) < 0 ||
        pm_msg_set_uint(m, "refresh_s", SCHED_POLICY_REFRESH_S) < 0)
        pm_msg_destroy(&m);
    return m;
}

/* ---- the bus side ---- */

void sched_set_stats(sched_t *s, pm_stats_t *st)
{
    s->stats = st;
    s->refused = pm_stats_counter(st, "scheduler_refused_total",
                                  "requests refused before reaching the store (invalid)");
    s->store_failed = pm_stats_counter(st, "scheduler_store_failures_total",
                                       "store calls that got no answer after every retry");
    s->delivered = pm_stats_counter(st, "scheduler_commands_delivered_total",
                                    "commands handed to devices in a command-loop answer");
    s->wakes = pm_stats_counter(st, "scheduler_wakes_requested_total",
                                "enrollments the scheduler asked the pusher to wake");
    s->in_flight = pm_stats_gauge(st, "scheduler_in_flight", "requests waiting for the store");
    s->latency = pm_stats_histogram(st, "scheduler_request_duration_seconds",
                                    "time from a request's arrival to its answer (store "
                                    "transaction included)");
}

//  A store call ended: results by the Status the device reported, deliveries.
static void s_count_done(sched_t *s, const pm_msg_t *req, const pm_msg_t *reply)
{
    if (!s->stats)
        return;
    double inflight = pm_stats_value(s->in_flight);
    pm_stats_set(s->in_flight, inflight > 0 ? inflight - 1 : 0);
    if (!reply) {
        pm_stats_inc(s->store_failed);
        return;
    }
    if (pm_msg_type(req) != PM_MSG_CONNECT || pm_msg_type(reply) != PM_MSG_CONNECT_REPLY)
        return;
    //  Apple's Status values only (the device chooses the text: bounded label
    //  set); Idle is not a result
    static const char *const known[] = {"Acknowledged", "Error", "CommandFormatError", "NotNow"};
    const char *status = pm_msg_str(req, "status"), *label = "other";
    for (size_t i = 0; status && i < sizeof known / sizeof *known; i++)
        if (strcmp(status, known[i]) == 0)
            label = known[i];
    if (status && strcmp(status, "Idle") != 0)
        pm_stats_inc(pm_stats_get(s->stats, PM_STATS_COUNTER, "scheduler_results_total",
                                  "command results reported by devices, by Status", "status", label,
                                  NULL, NULL));
    if (pm_msg_has(reply, "command"))
        pm_stats_inc(s->delivered);
}

static void s_wake_done(void *arg, const pm_msg_t *reply, const char *error)
{
    (void)arg;
    if (!reply || pm_msg_type(reply) == PM_MSG_ERROR)
        pm_debug("wakeup not delivered to the pusher (%s); the enrollments stay marked "
                 "wake_pending for a later sweep",
                 error ? error : pm_msg_str(reply, "message"));
}

//  `sweep`: from the wake sweep, so the pusher applies the per-enrollment
//  backoff (derived from the store: last push vs last activity).
static void s_wake(sched_t *s, const msgpack_object *eids, bool sweep)
{
    if (!eids || eids->type != MSGPACK_OBJECT_ARRAY || !eids->via.array.size)
        return;
    pm_msg_t *w = pm_msg_new(PM_MSG_WAKE);
    if (w && pm_msg_set_obj(w, "eids", eids) == 0 &&
        (!sweep || s->opts.wake_backoff_max_s <= 0 ||
         (pm_msg_set_uint(w, "sweep_s", (uint64_t)s->opts.wake_sweep_s) == 0 &&
          pm_msg_set_uint(w, "backoff_max_s", (uint64_t)s->opts.wake_backoff_max_s) == 0)) &&
        pm_bus_call_async(s->bus, "push", w, 2000, 0, s_wake_done, s) == 0)
        pm_stats_add(s->wakes, eids->via.array.size);
    pm_msg_destroy(&w);
}

//  The store answered: answer our client with the same content under its rid.
static void s_store_done(void *arg, const pm_msg_t *reply, const char *error)
{
    s_call_t *c = arg;
    const pm_msg_t *req = pm_bus_job_msg(c->job);
    pm_msg_t *out = NULL;
    s_count_done(c->s, req, reply);
    pm_stats_observe_ms(c->s->latency, pm_stats_now_ms() - c->t0_ms);
    if (!reply) {
        pm_warn("store call for %s %s failed: %s", pm_msg_type_name(pm_msg_type(req)),
                pm_msg_rid(req), error ? error : "?");
        out = pm_msg_new_error(req, "timeout",
                               "the store did not answer (%s): check that picomdm-store is "
                               "running, then retry",
                               error ? error : "no reply");
    } else if (pm_msg_type(req) == PM_MSG_ENQUEUE && pm_msg_type(reply) == PM_MSG_ENQUEUE_REPLY &&
               !pm_msg_bool(req, "no_push", false))
        s_wake(c->s, pm_msg_obj(req, "targets"), false);
    if (reply) {
        //  The store's reply is passed on as it is, under our client's rid and
        //  a fresh timestamp (what pm_msg_new_reply would give a copy). No
        //  field-by-field copy: a `devices` listing of 10,000 enrollments is
        //  megabytes of msgpack objects, and the copy was most of the
        //  scheduler's peak memory (docs/e2e.md). The bus owns the reply
        //  until this callback returns and frees it after; nothing else
        //  reads it, so re-labelling it here is safe.
        pm_msg_t *fwd = (pm_msg_t *)reply;
        if (pm_msg_set_rid(fwd, pm_msg_rid(req)) == 0 &&
            pm_msg_set_ts(fwd, (uint64_t)s_now_ms()) == 0)
            pm_bus_job_reply(&c->job, fwd);
        else
            pm_bus_job_drop(&c->job);
    } else if (out)
        pm_bus_job_reply(&c->job, out);
    else
        pm_bus_job_drop(&c->job);
    pm_msg_destroy(&out);
    free(c);
}

void sched_on_job(void *arg, pm_bus_job_t *job)
{
    sched_t *s = arg;
    const pm_msg_t *req = pm_bus_job_msg(job);
    pm_msg_type_t t = pm_msg_type(req);
    if (s->stats && t > PM_MSG_INVALID && t < PM_MSG_COUNT) {
        if (!s->by_type[t])
            s->by_type[t] = pm_stats_get(s->stats, PM_STATS_COUNTER, "scheduler_requests_total",
                                         "requests handled, by message type", "type",
                                         pm_msg_type_name(t), NULL, NULL);
        pm_stats_inc(s->by_type[t]);
    }
    pm_msg_t *err = sched_validate(req);
    if (err) {
        pm_stats_inc(s->refused);
        pm_info("refused %s %s: %s", pm_msg_type_name(pm_msg_type(req)), pm_msg_rid(req),
                pm_msg_str(err, "message"));
        pm_bus_job_reply(&job, err);
        pm_msg_destroy(&err);
        return;
    }
    if (pm_msg_type(req) == PM_MSG_POLICY) {
        //  answered from our own options: the gateway passes them to the store
        pm_msg_t *pol = sched_policy_reply(&s->opts, req);
        if (pol)
            pm_bus_job_reply(&job, pol);
        else
            pm_bus_job_drop(&job);
        pm_msg_destroy(&pol);
        return;
    }
    char uuid[64] = "";
    if (pm_msg_type(req) == PM_MSG_ENQUEUE && !pm_msg_has(req, "command_uuid")) {
        zuuid_t *u = zuuid_new();
        if (u) {
            snprintf(uuid, sizeof uuid, "%s", zuuid_str_canonical(u));
            zuuid_destroy(&u);
        }
    }
    pm_msg_t *sreq = sched_store_request(&s->opts, req, uuid, s_now_ms());
    s_call_t *c = calloc(1, sizeof *c);
    if (!sreq || !c) {
        pm_msg_t *e = pm_msg_new_error(req, "internal", "out of memory in the scheduler: retry");
        if (e)
            pm_bus_job_reply(&job, e);
        else
            pm_bus_job_drop(&job);
        pm_msg_destroy(&e);
        pm_msg_destroy(&sreq);
        free(c);
        return;
    }
    c->s = s;
    c->job = job;
    c->t0_ms = s->stats ? pm_stats_now_ms() : 0;
    pm_stats_set(s->in_flight, pm_stats_value(s->in_flight) + 1);
    if (pm_bus_call_async(s->bus, "store", sreq, s->opts.store_timeout_ms, s->opts.store_retries,
                          s_store_done, c) < 0)
        s_store_done(c, NULL, "could not queue the request to the store");
    pm_msg_destroy(&sreq);
}

static void s_sweep_done(void *arg, const pm_msg_t *reply, const char *error)
{
    sched_t *s = arg;
    s->sweeping = false;
    if (!reply || pm_msg_type(reply) != PM_MSG_WAKE_PENDING_REPLY) {
        pm_debug("wakeup sweep: store did not answer (%s)",
                 error ? error : pm_msg_str(reply, "message"));
        return;
    }
    s_wake(s, pm_msg_obj(reply, "eids"), true);
}

static void s_silent_done(void *arg, const pm_msg_t *reply, const char *error)
{
    sched_t *s = arg;
    s->silent_sweeping = false;
    if (!reply || pm_msg_type(reply) != PM_MSG_WAKE_PENDING_REPLY) {
        pm_debug("silent sweep: store did not answer (%s)",
                 error ? error : pm_msg_str(reply, "message"));
        return;
    }
    const msgpack_object *eids = pm_msg_obj(reply, "eids");
    if (eids && eids->type == MSGPACK_OBJECT_ARRAY && eids->via.array.size)
        pm_info("silent sweep: waking %u enrollment(s) not seen for %d s",
                (unsigned)eids->via.array.size, s->opts.silent_sweep_s);
    s_wake(s, eids, false);
}

//  A lost push or a device that went quiet must not stay silent for ever: every
//  silent-sweep-s, wake the enrollments not seen for that long.
static void s_silent_tick(sched_t *s, int64_t now_ms)
{
    if (s->opts.silent_sweep_s <= 0 || s->silent_sweeping)
        return;
    if (!s->next_silent)
        s->next_silent = now_ms + (int64_t)s->opts.silent_sweep_s * 1000;
    if (now_ms < s->next_silent)
        return;
    s->next_silent = now_ms + (int64_t)s->opts.silent_sweep_s * 1000;
    pm_msg_t *m = pm_msg_new(PM_MSG_WAKE_PENDING);
    if (!m)
        return;
    pm_msg_set_uint(m, "limit", 100000);
    pm_msg_set_uint(m, "silent_s", (uint64_t)s->opts.silent_sweep_s);
    if (pm_bus_call_async(s->bus, "store", m, s->opts.store_timeout_ms, 0, s_silent_done, s) == 0)
        s->silent_sweeping = true;
    pm_msg_destroy(&m);
}

void sched_tick(sched_t *s, int64_t now_ms)
{
    s_silent_tick(s, now_ms);
    if (s->opts.wake_sweep_s <= 0 || s->sweeping || now_ms < s->next_sweep)
        return;
    s->next_sweep = now_ms + (int64_t)s->opts.wake_sweep_s * 1000;
    pm_msg_t *m = pm_msg_new(PM_MSG_WAKE_PENDING);
    if (!m)
        return;
    pm_msg_set_uint(m, "limit", 10000);
    if (pm_bus_call_async(s->bus, "store", m, s->opts.store_timeout_ms, 0, s_sweep_done, s) == 0)
        s->sweeping = true;
    pm_msg_destroy(&m);
}
