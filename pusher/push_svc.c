/*  push_svc — the "push" bus service: wakes in, store lookups, outcomes out.
 *  See push_svc.h.
 */
#include "push_svc.h"
#include "pm_log.h"
#include "push_sweep.h"

#include <czmq.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define S_INFO_BATCH 1000    //  ids per push.info (STORE_PUSH_INFO_MAX)
#define S_OUTCOME_BATCH 1000 //  outcomes per push.outcome
#define S_STORE_TIMEOUT 5000
#define S_STORE_RETRIES 2

struct push_svc {
    pm_bus_t *bus;
    push_apns_t *apns;
    msgpack_sbuffer out; //  packed outcome maps not yet sent
    msgpack_packer pk;
    uint32_t nout;
    uint64_t lookups_failed, outcomes_lost;
    pm_stats_t *stats;      //  borrowed, may be NULL
    uint64_t sweep_backoff; //  sweep wakes not pushed: that enrollment's backoff is not over
};

static int64_t s_wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static void s_pack_str(msgpack_packer *pk, const char *k, const char *v)
{
    size_t kl = strlen(k), vl = strlen(v ? v : "");
    msgpack_pack_str(pk, kl);
    msgpack_pack_str_body(pk, k, kl);
    msgpack_pack_str(pk, vl);
    msgpack_pack_str_body(pk, v ? v : "", vl);
}

static void s_pack_uint(msgpack_packer *pk, const char *k, uint64_t v)
{
    size_t kl = strlen(k);
    msgpack_pack_str(pk, kl);
    msgpack_pack_str_body(pk, k, kl);
    msgpack_pack_uint64(pk, v);
}

void push_svc_outcome(void *arg, const push_result_t *r)
{
    push_svc_t *s = arg;
    msgpack_pack_map(&s->pk, 7 + (r->token_len ? 1 : 0));
    s_pack_str(&s->pk, "eid", r->eid);
    s_pack_str(&s->pk, "outcome", push_outcome_name(r->outcome));
    s_pack_uint(&s->pk, "status", r->status);
    s_pack_str(&s->pk, "reason", r->reason);
    s_pack_str(&s->pk, "topic", r->topic);
    s_pack_uint(&s->pk, "attempts", r->attempts > 0 ? (uint64_t)r->attempts : 0);
    s_pack_str(&s->pk, "apns_id", r->apns_id);
    if (r->token_len) {
        msgpack_pack_str(&s->pk, 5);
        msgpack_pack_str_body(&s->pk, "token", 5);
        msgpack_pack_bin(&s->pk, r->token_len);
        msgpack_pack_bin_body(&s->pk, r->token, r->token_len);
    }
    s->nout++;
}

static void s_outcome_done(void *arg, const pm_msg_t *reply, const char *error)
{
    push_svc_t *s = arg;
    if (!reply || pm_msg_type(reply) != PM_MSG_OK) {
        s->outcomes_lost++;
        pm_error("push outcomes not recorded by the store (%s): their push.* events are missing "
                 "from the log; check the store",
                 reply ? pm_msg_str(reply, "message") : error);
    }
}

//  Send the batched outcomes to the store.
static void s_flush(push_svc_t *s)
{
    if (s->nout == 0)
        return;
    msgpack_sbuffer arr;
    msgpack_sbuffer_init(&arr);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &arr, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, s->nout);
    msgpack_sbuffer_write(&arr, s->out.data, s->out.size);
    pm_msg_t *m = pm_msg_new(PM_MSG_PUSH_OUTCOME);
    if (!m || pm_msg_set_packed(m, "outcomes", (const uint8_t *)arr.data, arr.size) < 0 ||
        pm_bus_call_async(s->bus, "store", m, S_STORE_TIMEOUT, S_STORE_RETRIES, s_outcome_done, s) <
            0) {
        s->outcomes_lost++;
        pm_error("%u push outcomes could not be sent to the store", s->nout);
    }
    pm_msg_destroy(&m);
    msgpack_sbuffer_destroy(&arr);
    msgpack_sbuffer_clear(&s->out);
    s->nout = 0;
}

static const msgpack_object *s_get(const msgpack_object *map, const char *key)
{
    if (map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == kl &&
            memcmp(k->via.str.ptr, key, kl) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static void s_str(const msgpack_object *map, const char *key, char *buf, size_t len)
{
    const msgpack_object *v = s_get(map, key);
    buf[0] = 0;
    if (v && v->type == MSGPACK_OBJECT_STR && v->via.str.size < len) {
        memcpy(buf, v->via.str.ptr, v->via.str.size);
        buf[v->via.str.size] = 0;
    }
}

//  Report a wake that cannot become a push (no APNs request).
static void s_refuse(push_svc_t *s, const char *eid, const char *reason)
{
    push_result_t r = {
        .eid = eid, .outcome = PUSH_FAILED, .reason = reason, .topic = "", .apns_id = ""};
    pm_info("push %s: not pushed: %s", eid, reason);
    push_svc_outcome(s, &r);
}

typedef struct {
    push_svc_t *svc;
    zhashx_t *eids;           //  asked, not yet answered (keys)
    int64_t sweep_ms, max_ms; //  a sweep's wake: the backoff applies (0 = push now)
} s_lookup_t;

static int64_t s_int64(const msgpack_object *map, const char *key)
{
    const msgpack_object *v = s_get(map, key);
    if (v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        return v->via.u64 > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v->via.u64;
    if (v && v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return v->via.i64;
    return 0;
}

static void s_info_done(void *arg, const pm_msg_t *reply, const char *error)
{
    s_lookup_t *l = arg;
    push_svc_t *s = l->svc;
    const msgpack_object *items =
        reply && pm_msg_type(reply) == PM_MSG_PUSH_INFO_REPLY ? pm_msg_obj(reply, "items") : NULL;
    if (!items || items->type != MSGPACK_OBJECT_ARRAY) {
        s->lookups_failed++;
        pm_error("push.info failed (%s): %zu enrollments not woken; the scheduler wakes them again",
                 reply ? pm_msg_str(reply, "message") : error, zhashx_size(l->eids));
        goto out;
    }
    int64_t now = s_wall_ms();
    for (uint32_t i = 0; i < items->via.array.size; i++) {
        const msgpack_object *it = &items->via.array.ptr[i];
        char eid[PUSH_EID_MAX], magic[PUSH_MAGIC_MAX], topic[PUSH_CERT_TOPIC_MAX];
        s_str(it, "eid", eid, sizeof eid);
        s_str(it, "push_magic", magic, sizeof magic);
        s_str(it, "topic", topic, sizeof topic);
        zhashx_delete(l->eids, eid);
        const msgpack_object *tok = s_get(it, "token"), *stale = s_get(it, "stale"),
                             *enrolled = s_get(it, "enrolled");
        if (!*eid)
            continue;
        if (enrolled && enrolled->type == MSGPACK_OBJECT_BOOLEAN && !enrolled->via.boolean) {
            s_refuse(s, eid, "not enrolled (CheckOut or no TokenUpdate yet)");
            continue;
        }
        if (l->sweep_ms > 0 &&
            !push_sweep_due(now, s_int64(it, "last_push"), s_int64(it, "last_activity"),
                            l->sweep_ms, l->max_ms)) {
            //  not an outcome: the store's last_push must stay what it is
            s->sweep_backoff++;
            pm_debug("push %s: sweep skipped, backing off (%lld ms since the last push)", eid,
                     (long long)(now - s_int64(it, "last_push")));
            continue;
        }
        if (stale && stale->type == MSGPACK_OBJECT_BOOLEAN && stale->via.boolean) {
            s_refuse(s, eid,
                     "stale token (APNs said 410 Unregistered): waiting for the next TokenUpdate");
            continue;
        }
        push_target_t t = {
            .eid = eid,
            .token =
                tok && tok->type == MSGPACK_OBJECT_BIN ? (const uint8_t *)tok->via.bin.ptr : NULL,
            .token_len = tok && tok->type == MSGPACK_OBJECT_BIN ? tok->via.bin.size : 0,
            .push_magic = magic,
            .topic = topic,
            .not_stale = true};
        push_apns_wake(s->apns, &t); //  refusals are reported through the callback
    }
    for (void *v = zhashx_first(l->eids); v; v = zhashx_next(l->eids))
        s_refuse(s, (const char *)zhashx_cursor(l->eids),
                 "unknown enrollment (the store has no such id)");
out:
    zhashx_destroy(&l->eids);
    free(l);
}

static void s_lookup(push_svc_t *s, const msgpack_object *eids, uint32_t from, uint32_t to,
                     int64_t sweep_ms, int64_t max_ms)
{
    s_lookup_t *l = calloc(1, sizeof *l);
    const char **v = calloc(to - from, sizeof *v);
    char **copies = calloc(to - from, sizeof *copies);
    pm_msg_t *m = pm_msg_new(PM_MSG_PUSH_INFO);
    if (!l || !v || !copies || !m || !(l->eids = zhashx_new()))
        goto fail;
    l->svc = s;
    l->sweep_ms = sweep_ms;
    l->max_ms = max_ms;
    size_t n = 0;
    for (uint32_t i = from; i < to; i++) {
        const msgpack_object *e = &eids->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_STR || e->via.str.size == 0 ||
            e->via.str.size >= PUSH_EID_MAX)
            continue;
        copies[n] = strndup(e->via.str.ptr, e->via.str.size);
        if (!copies[n])
            continue;
        v[n] = copies[n];
        zhashx_update(l->eids, copies[n], (void *)"");
        n++;
    }
    if (n == 0 || pm_msg_set_strs(m, "eids", v, n) < 0 ||
        pm_bus_call_async(s->bus, "store", m, S_STORE_TIMEOUT, S_STORE_RETRIES, s_info_done, l) <
            0) {
        for (size_t i = 0; i < n; i++)
            free(copies[i]);
        goto fail;
    }
    for (size_t i = 0; i < n; i++)
        free(copies[i]);
    free(copies);
    free(v);
    pm_msg_destroy(&m);
    return;
fail:
    if (l)
        zhashx_destroy(&l->eids);
    free(l);
    free(v);
    free(copies);
    pm_msg_destroy(&m);
}

static void s_on_request(void *arg, pm_bus_job_t *job)
{
    push_svc_t *s = arg;
    const pm_msg_t *req = pm_bus_job_msg(job);
    if (pm_msg_type(req) != PM_MSG_WAKE) {
        pm_msg_t *e = pm_msg_new_error(req, "unknown_type",
                                       "the push service handles wake only (see docs/bus.md)");
        pm_bus_job_reply(&job, e);
        pm_msg_destroy(&e);
        return;
    }
    //  the lookups copy the ids: the request is freed by the reply below
    const msgpack_object *eids = pm_msg_obj(req, "eids");
    if (!s->apns && eids && eids->type == MSGPACK_OBJECT_ARRAY) {
        //  no push certificate: say so for every wake instead of failing silently
        for (uint32_t i = 0; i < eids->via.array.size; i++) {
            const msgpack_object *e = &eids->via.array.ptr[i];
            char eid[PUSH_EID_MAX];
            if (e->type != MSGPACK_OBJECT_STR || e->via.str.size >= sizeof eid)
                continue;
            memcpy(eid, e->via.str.ptr, e->via.str.size);
            eid[e->via.str.size] = 0;
            s_refuse(s, eid,
                     "no push certificate configured: install one (picomdm pushcert install) "
                     "and restart the pusher");
        }
    } else if (eids && eids->type == MSGPACK_OBJECT_ARRAY) {
        //  from the wake sweep: each enrollment's backoff applies (push_sweep.h)
        uint64_t sweep_s = pm_msg_uint(req, "sweep_s", 0),
                 max_s = pm_msg_uint(req, "backoff_max_s", 0);
        if (sweep_s > 86400 * 30)
            sweep_s = 86400 * 30;
        if (max_s > 86400 * 365)
            max_s = 86400 * 365;
        pm_debug("wake %s: %u enrollments%s", pm_msg_rid(req), eids->via.array.size,
                 sweep_s ? " (sweep)" : "");
        for (uint32_t from = 0; from < eids->via.array.size; from += S_INFO_BATCH) {
            uint32_t to = from + S_INFO_BATCH;
            if (to > eids->via.array.size)
                to = eids->via.array.size;
            s_lookup(s, eids, from, to, (int64_t)sweep_s * 1000, (int64_t)max_s * 1000);
        }
    }
    pm_msg_t *ok = pm_msg_new_reply(req, PM_MSG_OK);
    pm_bus_job_reply(&job, ok); //  accepted; outcomes follow as events
    pm_msg_destroy(&ok);
}

push_svc_t *push_svc_new(pm_bus_t *bus)
{
    push_svc_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->bus = bus;
    msgpack_sbuffer_init(&s->out);
    msgpack_packer_init(&s->pk, &s->out, msgpack_sbuffer_write);
    if (pm_bus_serve(bus, "push", s_on_request, s) < 0) {
        pm_error("cannot serve 'push' on the bus");
        push_svc_destroy(&s);
    }
    return s;
}

void push_svc_destroy(push_svc_t **svc)
{
    if (!svc || !*svc)
        return;
    msgpack_sbuffer_destroy(&(*svc)->out);
    free(*svc);
    *svc = NULL;
}

void push_svc_attach(push_svc_t *svc, push_apns_t *apns)
{
    svc->apns = apns;
}

static void s_event_done(void *arg, const pm_msg_t *reply, const char *error)
{
    (void)arg;
    if (!reply || pm_msg_type(reply) == PM_MSG_ERROR)
        pm_warn("event not logged by the store: %s", reply ? pm_msg_str(reply, "message") : error);
}

void push_svc_event(push_svc_t *svc, const char *name, const char *text)
{
    pm_msg_t *m = pm_msg_new(PM_MSG_EVENT_APPEND);
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 1);
    s_pack_str(&pk, "message", text);
    if (m && pm_msg_set_str(m, "name", name) == 0 && pm_msg_set_str(m, "source", "pusher") == 0 &&
        pm_msg_set_packed(m, "data", (const uint8_t *)b.data, b.size) == 0)
        pm_bus_call_async(svc->bus, "store", m, S_STORE_TIMEOUT, S_STORE_RETRIES, s_event_done,
                          svc);
    pm_msg_destroy(&m);
    msgpack_sbuffer_destroy(&b);
}

//  push_apns's own counts into the registry, just before each snapshot.
static void s_collect(void *arg, pm_stats_t *st)
{
    push_svc_t *s = arg;
    pm_stats_set_count(pm_stats_counter(st, "pusher_lookups_failed_total",
                                        "push.info lookups the store did not answer"),
                       s->lookups_failed);
    pm_stats_set_count(
        pm_stats_counter(st, "pusher_outcomes_lost_total", "outcomes the store did not record"),
        s->outcomes_lost);
    pm_stats_set_count(pm_stats_counter(st, "pusher_sweep_backoff_total",
                                        "sweep wakes not pushed: the enrollment's backoff is not "
                                        "over"),
                       s->sweep_backoff);
    if (!s->apns)
        return;
    push_apns_stats_t a;
    push_apns_stats(s->apns, &a);
    static const char help[] = "pushes by outcome (sent, failed, stale = 410, cert_problem = 403)";
    const struct {
        const char *outcome;
        uint64_t n;
    } o[] = {{"sent", a.sent},
             {"failed", a.failed},
             {"stale", a.stale},
             {"cert_problem", a.cert_problems}};
    for (size_t i = 0; i < sizeof o / sizeof *o; i++)
        pm_stats_set_count(pm_stats_get(st, PM_STATS_COUNTER, "pusher_pushes_total", help,
                                        "outcome", o[i].outcome, NULL, NULL),
                           o[i].n);
    pm_stats_set_count(pm_stats_counter(st, "pusher_retries_total",
                                        "push attempts after the first (429, 5xx, timeouts)"),
                       a.retries);
    pm_stats_set_count(pm_stats_counter(st, "pusher_wakes_total", "wakes received"), a.wakes);
    pm_stats_set_count(
        pm_stats_counter(st, "pusher_coalesced_total", "wakes merged into a push already pending"),
        a.coalesced);
    pm_stats_set_count(
        pm_stats_counter(st, "pusher_refused_total",
                         "wakes refused locally (bad or stale token, stopped topic)"),
        a.refused);
    pm_stats_set_count(
        pm_stats_counter(st, "pusher_apns_requests_total", "HTTP/2 requests sent to APNs"),
        a.requests);
    pm_stats_set(pm_stats_gauge(st, "pusher_queued", "pushes queued now"), (double)a.queued);
    pm_stats_set(pm_stats_gauge(st, "pusher_in_flight", "pushes in flight to APNs now"),
                 (double)a.inflight);
    pm_stats_set(pm_stats_gauge(st, "pusher_waiting", "pushes waiting for a retry now"),
                 (double)a.waiting);
}

void push_svc_set_stats(push_svc_t *svc, pm_stats_t *st)
{
    svc->stats = st;
    pm_stats_set_collect(st, s_collect, svc);
    if (svc->apns)
        push_apns_set_latency(svc->apns,
                              pm_stats_histogram(st, "pusher_push_duration_seconds",
                                                 "time from wake to outcome, retries included"));
}

int push_svc_run(push_svc_t *s, push_stdin_tick_fn *tick, void *arg)
{
    while (!zsys_interrupted) {
        pm_stats_tick(s->stats, s->bus);
        int fds[8];
        struct curl_waitfd w[8];
        int n = pm_bus_fds(s->bus, fds, 8);
        for (int i = 0; i < n; i++)
            w[i] = (struct curl_waitfd){.fd = fds[i], .events = CURL_WAIT_POLLIN};
        int to = pm_bus_next_timeout(s->bus);
        if (to < 0 || to > 500)
            to = 500;
        if (!s->apns) {
            if (pm_bus_run_once(s->bus, to) < 0)
                break;
            s_flush(s);
            continue;
        }
        if (push_apns_poll(s->apns, w, (unsigned)n, to) < 0) {
            pm_error("libcurl poll failed");
            return -1;
        }
        pm_bus_process(s->bus);
        if (s->nout >= S_OUTCOME_BATCH || s->nout > 0)
            s_flush(s);
        pm_bus_process(s->bus);
        if (tick)
            tick(arg, s->apns);
    }
    s_flush(s);
    pm_bus_process(s->bus);
    return 0;
}
