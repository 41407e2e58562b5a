/*  gw_server — device HTTP(S) server of picomdm-gateway. See gw_server.h.
 *
 *  Request life: s_on_request (auth, parse, derive the enrollment id, send the
 *  bus call) -> s_on_reply (bus callback: turn the reply into HTTP) or
 *  s_on_guard (our own deadline, in case the bus never calls back). A request
 *  context lives until both the HTTP answer is sent and the bus is done with it.
 *
 *  libevent detail relied on: if the client goes away while we still owe the
 *  answer, evhttp detaches the request from its connection and does not free
 *  it; evhttp_send_reply on such a request just frees it. So replying late is
 *  always safe, and we always reply exactly once.
 */
#include "gw_server.h"
#include "gw_devreq.h"
#include "gw_http.h"
#include "gw_eid.h"
#include "gw_tlscache.h"
#include "pm_str.h"
#include "pm_log.h"
#include "pm_msg.h"
#include "pm_plist.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define GW_BUS_FDS_MAX 8
#define GW_REMOTE_MAX 64

typedef enum { GW_ROUTE_CHECKIN = 1, GW_ROUTE_CONNECT, GW_ROUTE_HEALTH } gw_route_t;

typedef struct gw_req gw_req_t;

struct gw_server {
    gw_server_config_t cfg;
    char *listen, *checkin_path, *server_path, *proxy_header, *service;
    char **proxies;
    int nproxies;
    struct event_base *base;
    pm_bus_t *bus;
    gw_auth_t *auth;
    gw_enroll_t *enroll; //  SCEP + profile routes (borrowed), or NULL
    SSL_CTX *ssl;
    struct evhttp *http;
    struct evconnlistener *listener;
    int port;
    struct event *bus_ev[GW_BUS_FDS_MAX];
    int nbus_ev;
    struct event *bus_timer;
    struct event *bus_defer;   //  one pm_bus_process_ready per loop iteration (s_bus_kick)
    int fired[GW_BUS_FDS_MAX]; //  bus fds libevent saw readable since the last process
    int nfired;
    bool kick_pending;
    gw_req_t *sendq, **sendq_tail; //  device requests to put on the bus (s_call, s_flush)
    gw_pending_t *reqs; //  every live request context (their first member) //  every live request
                        //  context (doubly linked)
    //  the direct device path: the scheduler's policy, once it answered
    char *store_service;
    gw_devreq_policy_t policy;
    bool have_policy, policy_pending;
    int policy_refresh_s;
    struct event *policy_timer;
    bool shutting_down;
    gw_server_stats_t st;
};

struct gw_req {
    gw_pending_t p; //  first: the list of live requests is walked as gw_req_t
    gw_server_t *srv;
    gw_route_t route;
    gw_eid_kind_t kind;
    char eid[GW_EID_MAX];
    char what[48]; //  MessageType or Status, for logs
    char remote[GW_REMOTE_MAX];
    char path[128];
    pm_msg_t *out; //  queued for the bus (s_flush), with its service
    const char *out_service;
    gw_req_t *qnext;
};

/* ---- small helpers ---- */

static void s_bus_kick(gw_server_t *self);
static void s_flush(gw_server_t *self);

//  A security.rejected on its way to the store's event log.
typedef struct {
    gw_server_t *srv;
    pm_msg_t *ev; //  the same event as a plain EVENT, published if the store fails
} s_append_t;

static void s_on_append_reply(void *arg, const pm_msg_t *reply, const char *error)
{
    s_append_t *a = arg;
    if (!reply || pm_msg_type(reply) != PM_MSG_EVENT_APPEND_REPLY) {
        //  No store: subscribers still see the event live; only the sequenced
        //  log (replay after a gap) misses it.
        pm_warn("security.rejected not in the event log (%s); published without a seq",
                error                                         ? error
                : reply && pm_msg_type(reply) == PM_MSG_ERROR ? pm_msg_str(reply, "message")
                                                              : "unexpected reply");
        if (pm_bus_publish(a->srv->bus, a->ev) < 0)
            pm_warn("could not publish security.rejected: check publish-endpoint");
    }
    pm_msg_destroy(&a->ev);
    free(a);
}

//  security.rejected {reason, remote, path} (eid when known): appended to the
//  store's sequenced event log (event.append), which publishes it with its
//  seq, so an auditor that missed it can replay it (docs/queue.md).
static void s_event_rejected(gw_server_t *self, const char *eid, const char *reason,
                             const char *remote, const char *path)
{
    pm_msg_t *ev = pm_msg_new(PM_MSG_EVENT);
    pm_msg_t *app = pm_msg_new(PM_MSG_EVENT_APPEND);
    s_append_t *a = NULL;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    if (!ev || !app)
        goto out;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    const char *kv[] = {"reason", reason, "remote", remote, "path", path};
    msgpack_pack_map(&pk, 3);
    for (int i = 0; i < 6; i++) {
        size_t n = strlen(kv[i]);
        msgpack_pack_str(&pk, n);
        msgpack_pack_str_body(&pk, kv[i], n);
    }
    pm_msg_t *both[] = {ev, app};
    for (int i = 0; i < 2; i++) {
        pm_msg_set_str(both[i], "name", "security.rejected");
        pm_msg_set_str(both[i], "source", "gateway");
        if (eid && *eid)
            pm_msg_set_str(both[i], "eid", eid);
        if (pm_msg_set_packed(both[i], "data", (const uint8_t *)sb.data, sb.size) < 0)
            goto out;
    }
    a = malloc(sizeof *a);
    if (a) {
        a->srv = self;
        a->ev = ev;
        //  the service that owns the event log, as the message table says
        if (pm_bus_call_async(self->bus, pm_msgdef(PM_MSG_EVENT_APPEND)->service, app, 2000, 0,
                              s_on_append_reply, a) == 0) {
            ev = NULL; //  the callback owns it now
            a = NULL;
        }
    }
    if (ev && pm_bus_publish(self->bus, ev) < 0)
        pm_warn("could not publish security.rejected (%s): check publish-endpoint", reason);
    s_bus_kick(self);
out:
    free(a);
    msgpack_sbuffer_destroy(&sb);
    pm_msg_destroy(&ev);
    pm_msg_destroy(&app);
}

static void s_send_503(gw_server_t *self, struct evhttp_request *req)
{
    gw_http_send_503(req, self->cfg.retry_after_s, "back end unavailable, retry later\n");
    self->st.unavailable++;
}

/* ---- request contexts ---- */

static gw_req_t *s_req_new(gw_server_t *self, struct evhttp_request *req)
{
    gw_req_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->srv = self;
    gw_pending_link(&r->p, &self->reqs, req);
    return r;
}

static void s_req_free(gw_req_t *r)
{
    gw_pending_unlink(&r->p);
    pm_msg_destroy(&r->out);
    free(r);
}

//  Free the context once nothing refers to it any more.
static void s_req_maybe_free(gw_req_t *r)
{
    if (gw_pending_done(&r->p))
        s_req_free(r);
}

//  A 400 made by the gateway: log, event, answer.
static void s_reject(gw_server_t *self, struct evhttp_request *req, const char *eid,
                     const char *remote, const char *path, const char *reason)
{
    pm_warn("rejected %s from %s%s%s: %s", path, remote, eid && *eid ? " eid=" : "", eid ? eid : "",
            reason);
    s_event_rejected(self, eid, reason, remote, path);
    self->st.rejected++;
    gw_http_send_text(req, 400, "bad request\n");
}

/* ---- bus plumbing in the event loop ---- */

static void s_bus_arm_timer(gw_server_t *self)
{
    if (!self->bus_timer)
        return;
    int ms = pm_bus_next_timeout(self->bus);
    if (ms < 0 || ms > 1000)
        ms = 1000;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(self->bus_timer, &tv);
}

static void s_bus_process(gw_server_t *self)
{
    if (!self->bus)
        return;
    //  libevent waits on the bus fds (level-triggered) and said which fired:
    //  no poll() of them again (pm_bus_process_ready; docs/gateway.md,
    //  "Session 9").
    pm_bus_process_ready(self->bus, self->fired, self->nfired);
    self->nfired = 0;
    s_bus_arm_timer(self);
}

//  ZMQ_FD is edge-triggered: after every send the bus must be processed
//  once more. Not at once but once per event-loop iteration (an active
//  event, run before the loop waits again): requests that arrive together
//  share one pm_bus_process_ready, and each of those costs several zmq calls
//  and system calls (mailbox polls inside libzmq).
static void s_bus_kick(gw_server_t *self)
{
    if (!self->bus)
        return;
    if (!self->bus_defer) {
        s_flush(self);
        s_bus_process(self);
        return;
    }
    if (!self->kick_pending) {
        self->kick_pending = true;
        event_active(self->bus_defer, EV_TIMEOUT, 0);
    }
}

static void s_on_bus_defer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gw_server_t *self = arg;
    self->kick_pending = false;
    s_flush(self);
    s_bus_process(self);
}

//  A bus fd readable (or the bus timer): processed with everything else of
//  this loop iteration by the one deferred pm_bus_process_ready
//  (s_on_bus_defer, told which fds fired), not here as well: each costs a
//  receive attempt per socket drained, a mailbox poll inside libzmq, and
//  replies arriving in an iteration that also sends requests needed two.
//  (The fd stays readable until libzmq has read its mailbox: nothing is lost
//  by waiting for the end of the iteration.)
static void s_on_bus_fd(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    gw_server_t *self = arg;
    bool seen = fd < 0;
    for (int i = 0; i < self->nfired && !seen; i++)
        seen = self->fired[i] == fd;
    if (!seen && self->nfired < GW_BUS_FDS_MAX)
        self->fired[self->nfired++] = fd;
    s_bus_kick(self);
}

/* ---- back end replies ---- */

//  Bytes of a plist for a msgpack map (or an error).
static int s_send_plist(gw_req_t *r, int code, const msgpack_object *obj)
{
    char *xml = NULL;
    size_t len = 0;
    char err[200];
    if (pm_plist_from_msgpack(obj, &xml, &len, err, sizeof err) < 0) {
        pm_error("eid=%s %s: back end reply cannot be a plist (%s); answering 500", r->eid, r->what,
                 err);
        gw_http_send_text(r->p.req, 500, "internal error\n");
        return -1;
    }
    gw_http_send(r->p.req, code, "application/xml", xml, len);
    free(xml);
    return 0;
}

static int s_http_status(gw_req_t *r, uint64_t st)
{
    if (st == 401) {
        //  Never 401: a real device may drop its enrollment on it.
        pm_warn("eid=%s: back end asked for 401, answering 400 instead", r->eid);
        return 400;
    }
    if (st < 200 || st > 599) {
        pm_error("eid=%s: back end gave HTTP status %llu; answering 500", r->eid,
                 (unsigned long long)st);
        return 500;
    }
    return (int)st;
}

//  Bus error codes that mean "the back end is not there right now": the
//  device should come back later (503 + Retry-After), not give up. `busy`
//  is what the broker answers while a killed worker is not yet declared
//  dead (3 missed heartbeats) and requests wait for it.
static bool s_transient(const char *code)
{
    return code && (strcmp(code, "timeout") == 0 || strcmp(code, "no_service") == 0 ||
                    strcmp(code, "worker_lost") == 0 || strcmp(code, "busy") == 0);
}

static void s_answer(gw_req_t *r, const pm_msg_t *reply, const char *error)
{
    gw_server_t *self = r->srv;
    struct evhttp_request *req = r->p.req;
    if (!reply) {
        pm_warn("eid=%s %s: back end did not answer (%s); 503", r->eid, r->what,
                error ? error : "no reason");
        s_send_503(self, req);
        return;
    }
    pm_msg_type_t t = pm_msg_type(reply);
    if (t == PM_MSG_ERROR) {
        const char *code = pm_msg_str(reply, "code");
        const char *msg = pm_msg_str(reply, "message");
        pm_warn("eid=%s %s: back end error %s: %s", r->eid, r->what, code ? code : "?",
                msg ? msg : "");
        if (s_transient(code))
            s_send_503(self, req);
        else if (code && strcmp(code, "bad_request") == 0)
            gw_http_send_text(req, 400, "bad request\n");
        else
            gw_http_send_text(req, 500, "internal error\n");
        return;
    }
    pm_msg_type_t want = r->route == GW_ROUTE_CHECKIN ? PM_MSG_CHECKIN_REPLY : PM_MSG_CONNECT_REPLY;
    if (t != want) {
        pm_error("eid=%s: back end answered with '%s', expected '%s'; answering 500", r->eid,
                 pm_msg_type_name(t), pm_msg_type_name(want));
        gw_http_send_text(req, 500, "internal error\n");
        return;
    }
    int code = s_http_status(r, pm_msg_uint(reply, "status", 500));
    const char *reason = pm_msg_str(reply, "reason");
    if (code != 200) {
        //  The back end refused (e.g. a certificate not bound to this
        //  enrollment): it is a rejection at the edge like ours.
        pm_warn("eid=%s %s: back end answered %d: %s", r->eid, r->what, code,
                reason ? reason : "(no reason)");
        if (code == 400) {
            char why[300];
            snprintf(why, sizeof why, "back end: %s", reason ? reason : "rejected");
            s_event_rejected(self, r->eid, why, r->remote, r->path);
        }
    }
    const char *mapfield = r->route == GW_ROUTE_CHECKIN ? "body" : "command";
    const msgpack_object *obj = pm_msg_obj(reply, mapfield);
    size_t rawlen = 0;
    const uint8_t *raw = r->route == GW_ROUTE_CHECKIN ? pm_msg_bin(reply, "raw", &rawlen) : NULL;
    if (raw) {
        //  DeclarativeManagement answers JSON, not a plist.
        gw_http_send(req, code, "application/json", raw, rawlen);
    } else if (obj && obj->type == MSGPACK_OBJECT_MAP) {
        s_send_plist(r, code, obj);
    } else {
        gw_http_send(req, code, NULL, NULL, 0); //  empty 200: nothing queued
    }
    pm_debug("eid=%s %s -> %d (%.1f ms)", r->eid, r->what, code, gw_pending_ms(&r->p));
}

static void s_on_reply(void *arg, const pm_msg_t *reply, const char *error)
{
    gw_req_t *r = arg;
    r->p.bus_pending = false;
    if (r->p.req) {
        s_answer(r, reply, error);
        gw_http_device_latency(gw_pending_ms(&r->p));
        r->p.req = NULL;
        if (r->srv->st.in_flight)
            r->srv->st.in_flight--;
    }
    s_req_maybe_free(r);
}

//  Our own deadline: the bus promises a callback, but a device must never hang.
static void s_on_guard(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gw_req_t *r = arg;
    if (r->p.req) {
        pm_warn("eid=%s %s: no answer from the back end within %d ms; 503", r->eid, r->what,
                r->srv->cfg.backend_timeout_ms);
        s_send_503(r->srv, r->p.req);
        gw_http_device_latency(gw_pending_ms(&r->p));
        r->p.req = NULL;
        if (r->srv->st.in_flight)
            r->srv->st.in_flight--;
    }
    s_req_maybe_free(r);
}

//  Put one queued request on the bus (its message is consumed).
static void s_send(gw_req_t *r)
{
    gw_server_t *self = r->srv;
    int total = self->cfg.backend_timeout_ms;
    //  one retry with the same rid (the worker side answers it from its cache)
    int per_try = total / 2 > 100 ? total / 2 : 100;
    int rc = self->bus
                 ? pm_bus_call_async(self->bus, r->out_service, r->out, per_try, 1, s_on_reply, r)
                 : -1;
    pm_msg_destroy(&r->out);
    if (rc < 0) {
        r->p.bus_pending = false;
        if (r->p.req) {
            pm_warn("eid=%s %s: cannot queue the request for '%s'; 503", r->eid, r->what,
                    r->out_service);
            s_send_503(self, r->p.req);
            r->p.req = NULL;
            if (self->st.in_flight)
                self->st.in_flight--;
        }
        s_req_maybe_free(r);
    }
}

//  Everything queued by s_call this loop iteration goes on the bus now, one
//  after the other: libzmq's I/O thread is woken (eventfd, a thread wake-up,
//  a sendto to the broker) when a message finds its pipe empty, so requests
//  handled in one iteration but sent one by one, each after its signature
//  check (~0.1 ms), woke it once each; sent together, once for all.
static void s_flush(gw_server_t *self)
{
    gw_req_t *q = self->sendq;
    self->sendq = NULL;
    self->sendq_tail = &self->sendq;
    while (q) {
        gw_req_t *next = q->qnext;
        q->qnext = NULL;
        s_send(q);
        q = next;
    }
}

//  Send `msg` to the back end for request context r (takes ownership of
//  msg): queued, and put on the bus at the end of this loop iteration
//  (s_flush, from the same deferred event as pm_bus_process).
static void s_call(gw_req_t *r, const char *service, pm_msg_t **msg)
{
    gw_server_t *self = r->srv;
    r->p.bus_pending = true;
    self->st.in_flight++;
    r->out = *msg;
    *msg = NULL;
    r->out_service = service;
    r->qnext = NULL;
    *self->sendq_tail = r;
    self->sendq_tail = &r->qnext;
    r->p.guard = evtimer_new(self->base, s_on_guard, r);
    if (r->p.guard) {
        int ms = self->cfg.backend_timeout_ms + 500;
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        evtimer_add(r->p.guard, &tv);
    }
    s_bus_kick(self);
}

/* ---- the scheduler's policy (direct device path) ---- */

static void s_policy_arm(gw_server_t *self, int seconds)
{
    if (!self->policy_timer)
        return;
    struct timeval tv = {seconds, 0};
    evtimer_add(self->policy_timer, &tv);
}

static void s_on_policy(void *arg, const pm_msg_t *reply, const char *error)
{
    gw_server_t *self = arg;
    self->policy_pending = false;
    if (reply && pm_msg_type(reply) == PM_MSG_POLICY_REPLY) {
        gw_devreq_policy_t p = {pm_msg_uint(reply, "notnow_limit", 0),
                                pm_msg_uint(reply, "redeliver_limit", 0),
                                pm_msg_uint(reply, "delivered_timeout_s", 0)};
        if (!self->have_policy || memcmp(&p, &self->policy, sizeof p) != 0)
            pm_info("device path: direct to '%s' with the policy of '%s' (notnow-limit %llu, "
                    "redeliver-limit %llu, delivered-timeout-s %llu)",
                    self->store_service, self->service, (unsigned long long)p.notnow_limit,
                    (unsigned long long)p.redeliver_limit,
                    (unsigned long long)p.delivered_timeout_s);
        self->policy = p;
        self->have_policy = true;
        uint64_t refresh = pm_msg_uint(reply, "refresh_s", 5);
        self->policy_refresh_s = refresh >= 1 && refresh <= 3600 ? (int)refresh : 5;
        s_policy_arm(self, self->policy_refresh_s);
        return;
    }
    //  Keep the last policy: the store alone serves devices while the
    //  scheduler restarts. Never had one: requests go through the scheduler.
    pm_debug("policy from '%s' not refreshed (%s)", self->service,
             error                                         ? error
             : reply && pm_msg_type(reply) == PM_MSG_ERROR ? pm_msg_str(reply, "message")
                                                           : "unexpected reply");
    s_policy_arm(self, self->have_policy ? self->policy_refresh_s : 1);
}

static void s_policy_fetch(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gw_server_t *self = arg;
    if (self->policy_pending || self->shutting_down || !self->bus)
        return;
    pm_msg_t *m = pm_msg_new(PM_MSG_POLICY);
    if (m && pm_bus_call_async(self->bus, self->service, m, 1000, 0, s_on_policy, self) == 0)
        self->policy_pending = true;
    else
        s_policy_arm(self, 1);
    pm_msg_destroy(&m);
    s_bus_kick(self);
}

/* ---- health ---- */

static void s_on_health_reply(void *arg, const pm_msg_t *reply, const char *error)
{
    gw_req_t *r = arg;
    r->p.bus_pending = false;
    if (r->p.req) {
        gw_server_t *self = r->srv;
        const char *code =
            reply && pm_msg_type(reply) == PM_MSG_ERROR ? pm_msg_str(reply, "code") : NULL;
        bool up = reply && !s_transient(code);
        char text[640];
        uint64_t hits = 0, misses = 0;
        gw_auth_cache_stats(self->auth, &hits, &misses);
        snprintf(text, sizeof text,
                 "ok\nbackend: %s%s%s\nrequests: %llu\nrejected: %llu\nunavailable: %llu\n"
                 "in_flight: %llu\nchain_cache: %llu hits, %llu verifications\n"
                 "cert_cache: %llu hits\ndevice_path: %s\n",
                 up ? "up" : "down (",
                 up ? ""
                    : (error  ? error
                       : code ? code
                              : "no answer"),
                 up ? "" : ")", (unsigned long long)self->st.requests,
                 (unsigned long long)self->st.rejected, (unsigned long long)self->st.unavailable,
                 (unsigned long long)self->st.in_flight, (unsigned long long)hits,
                 (unsigned long long)misses,
                 (unsigned long long)gw_auth_cert_cache_hits(self->auth),
                 self->cfg.direct_store && self->have_policy ? "direct to the store"
                                                             : "through the scheduler");
        gw_http_send_text(r->p.req, 200, text);
        r->p.req = NULL;
    }
    s_req_maybe_free(r);
}

static void s_health(gw_server_t *self, struct evhttp_request *req)
{
    gw_req_t *r = s_req_new(self, req);
    if (!r) {
        gw_http_send_text(req, 500, "out of memory\n");
        return;
    }
    r->route = GW_ROUTE_HEALTH;
    snprintf(r->what, sizeof r->what, "health");
    //  Any answer from the back end service (even an `error` reply to this
    //  echo) proves it is there; no_service / timeout prove it is not.
    pm_msg_t *m = pm_msg_new(PM_MSG_ECHO);
    r->p.bus_pending = true;
    //  the service devices depend on now: the store on the direct path
    const char *svc =
        self->cfg.direct_store && self->have_policy ? self->store_service : self->service;
    if (!m || pm_bus_call_async(self->bus, svc, m, 1000, 0, s_on_health_reply, r) < 0) {
        r->p.bus_pending = false;
        s_on_health_reply(r, NULL, "bus unavailable");
    }
    pm_msg_destroy(&m);
    s_bus_kick(self);
}

/* ---- device requests ---- */

static bool s_trusted_proxy(const gw_server_t *self, const char *addr)
{
    for (int i = 0; i < self->nproxies; i++)
        if (strcmp(self->proxies[i], addr) == 0)
            return true;
    return false;
}

//  Authenticate the request. 0 and res filled (has_cert says whether a
//  certificate was proven), or -1 with the reason in res->reason.
static int s_authenticate(gw_server_t *self, struct evhttp_request *req, const uint8_t *body,
                          size_t len, const char *remote, gw_auth_result_t *res, bool *has_cert)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    const char *sig = evhttp_find_header(h, "Mdm-Signature");
    *has_cert = false;
    memset(res, 0, sizeof *res);
    if (self->auth && sig) {
        if (gw_auth_verify_signature(self->auth, sig, strlen(sig), body, len, res) < 0)
            return -1;
        *has_cert = true;
        return 0;
    }
    if (self->auth && self->cfg.plain_http) {
        const char *pem = evhttp_find_header(h, self->proxy_header);
        if (pem) {
            if (!s_trusted_proxy(self, remote)) {
                res->code = "untrusted_proxy";
                snprintf(res->reason, sizeof res->reason,
                         "%s header from %s, which is not in trusted-proxies", self->proxy_header,
                         remote);
                return -1;
            }
            if (gw_auth_verify_escaped_pem(self->auth, pem, res) < 0)
                return -1;
            *has_cert = true;
            return 0;
        }
    }
    if (self->auth && !self->cfg.plain_http) {
        struct evhttp_connection *evcon = evhttp_request_get_connection(req);
        struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
        SSL *ssl = bev ? bufferevent_openssl_get_ssl(bev) : NULL;
        X509 *peer = ssl ? SSL_get0_peer_certificate(ssl) : NULL;
        if (peer) {
            if (gw_auth_verify_cert(self->auth, peer, SSL_get_peer_cert_chain(ssl), res) < 0)
                return -1;
            *has_cert = true;
            return 0;
        }
    }
    if (self->cfg.insecure_lab_mode) {
        pm_debug("INSECURE LAB MODE: accepting an unsigned request from %s", remote);
        return 0;
    }
    res->code = "unsigned";
    snprintf(res->reason, sizeof res->reason,
             "no Mdm-Signature and no client certificate (enable SignMessage in the enrollment "
             "profile, or set tls-client-cert = true: picomdm up --tls-client-cert)");
    return -1;
}

static void s_on_device(gw_server_t *self, struct evhttp_request *req, const char *path,
                        bool is_server_path, const char *remote)
{
    gw_devreq_t d;
    memset(&d, 0, sizeof d);
    pm_msg_t *msg = NULL;
    char why[400];
    self->st.requests++;

    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (len > self->cfg.body_max) {
        s_reject(self, req, NULL, remote, path, "body larger than body-max");
        goto out;
    }
    const uint8_t *body = len ? evbuffer_pullup(in, -1) : (const uint8_t *)"";
    if (!body) {
        gw_http_send_text(req, 500, "out of memory\n");
        goto out;
    }

    //  1. who sent it (before looking inside)
    gw_auth_result_t auth;
    bool has_cert = false;
    if (s_authenticate(self, req, body, len, remote, &auth, &has_cert) < 0) {
        snprintf(why, sizeof why, "%s: %s", auth.code ? auth.code : "auth", auth.reason);
        s_reject(self, req, NULL, remote, path, why);
        goto out;
    }

    //  2. what it says: plist, enrollment id, MessageType / Status (gw_devreq)
    if (gw_devreq_parse(body, len, self->cfg.body_max, is_server_path, &d, why, sizeof why) < 0) {
        s_reject(self, req, d.eid, remote, path, why);
        goto out;
    }
    if (d.route == GW_DEVREQ_CHECKIN && strcmp(d.mtype, "UserAuthenticate") == 0 &&
        !self->cfg.user_auth_forward) {
        //  Apple: a server that does not authenticate users declines the
        //  UserAuthenticate (DigestChallenge) request with HTTP 410.
        pm_info("eid=%s UserAuthenticate declined (410; user-authenticate=forward changes it)",
                d.eid);
        gw_http_send(req, 410, NULL, NULL, 0);
        goto out;
    }

    //  3. to the back end
    //  the direct path once the scheduler told us its policy (docs/queue.md)
    bool direct = self->cfg.direct_store && self->have_policy;
    msg = gw_devreq_msg(&d, has_cert ? &auth : NULL, direct ? &self->policy : NULL);
    if (!msg) {
        pm_error("eid=%s: cannot build the bus message (out of memory or a field rejected by the "
                 "table)",
                 d.eid);
        gw_http_send_text(req, 500, "internal error\n");
        goto out;
    }
    gw_req_t *r = s_req_new(self, req);
    if (!r) {
        gw_http_send_text(req, 500, "out of memory\n");
        goto out;
    }
    r->route = d.route == GW_DEVREQ_CHECKIN ? GW_ROUTE_CHECKIN : GW_ROUTE_CONNECT;
    r->kind = d.kind;
    pm_str_copy(r->eid, sizeof r->eid, d.eid, PM_STR_ALL);
    pm_str_copy(r->what, sizeof r->what, d.route == GW_DEVREQ_CHECKIN ? d.mtype : d.status,
                PM_STR_ALL);
    pm_str_copy(r->remote, sizeof r->remote, remote, PM_STR_ALL);
    pm_str_copy(r->path, sizeof r->path, path, PM_STR_ALL);
    if (has_cert && pm_log_level() >= PM_LOG_DEBUG) { //  no hex per request unless logged
        char hex[65];
        gw_auth_hash_hex(auth.cert_hash, hex);
        pm_debug("eid=%s %s from %s cert=%.16s", d.eid, r->what, remote, hex);
    }
    if (direct)
        self->st.direct++;
    s_call(r, direct ? self->store_service : self->service, &msg);
out:
    pm_msg_destroy(&msg);
    gw_devreq_clear(&d);
}

static void s_on_request(struct evhttp_request *req, void *arg)
{
    gw_server_t *self = arg;
    char remote[GW_REMOTE_MAX] = "?";
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (evcon) {
        char *host = NULL;
        ev_uint16_t port = 0;
        evhttp_connection_get_peer(evcon, &host, &port);
        if (host)
            pm_str_copy(remote, sizeof remote, host, PM_STR_ALL);
    }
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (!path || !*path) {
        gw_http_send_text(req, 400, "bad request\n");
        return;
    }
    if (self->shutting_down) {
        s_send_503(self, req);
        return;
    }
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (strcmp(path, "/health") == 0) {
        if (cmd != EVHTTP_REQ_GET) {
            gw_http_send_text(req, 405, "use GET\n");
            return;
        }
        s_health(self, req);
        return;
    }
    if (gw_enroll_handle(self->enroll, req, path, remote))
        return;
    bool is_checkin = strcmp(path, self->checkin_path) == 0;
    bool is_server = strcmp(path, self->server_path) == 0;
    if (!is_checkin && !is_server) {
        gw_http_send_text(req, 404, "not found\n");
        return;
    }
    if (cmd != EVHTTP_REQ_PUT && cmd != EVHTTP_REQ_POST) {
        gw_http_send_text(req, 405, "devices use PUT\n");
        return;
    }
    //  When both paths are the same (one-URL profiles), the body decides.
    s_on_device(self, req, path, is_server, remote);
}

/* ---- TLS ---- */

//  Seconds the kernel holds a new connection that has sent nothing yet
//  before handing it to accept anyway (TCP_DEFER_ACCEPT, see gw_server_new).
#define GW_DEFER_ACCEPT_S 5

//  The client certificate's chain is not verified during the handshake:
//  gw_auth checks it per request (s_authenticate: gw_auth_verify_cert, with
//  its chain cache), so a bad one gets a 400 (and an event), not a TLS alert,
//  and clients without one can still reach /health. Until session 8 OpenSSL
//  ran X509_verify_cert on every handshake with a client certificate and a
//  verify callback then accepted whatever it found: ~1 M instructions (the
//  CA's signature over the certificate) spent on a verdict nobody read
//  (docs/gateway.md, "Session 8"). Libssl still checks the client's
//  CertificateVerify (that it holds the certificate's key). The session's
//  verify result says "not verified here" rather than X509_V_OK, in case
//  anything ever asks SSL_get_verify_result.
static int s_cert_verify_later(X509_STORE_CTX *ctx, void *arg)
{
    (void)arg;
    X509_STORE_CTX_set_error(ctx, X509_V_ERR_APPLICATION_VERIFICATION);
    return 1;
}

static struct bufferevent *s_on_bev(struct event_base *base, void *arg)
{
    gw_server_t *self = arg;
    SSL *ssl = SSL_new(self->ssl);
    if (!ssl)
        return NULL;
    return bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                          BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
}

static int s_tls_setup(gw_server_t *self)
{
    const gw_server_config_t *c = &self->cfg;
    char ebuf[200];
    if (!c->tls_cert || !c->tls_key || !*c->tls_cert || !*c->tls_key) {
        pm_error("TLS needs tls-cert and tls-key (PEM files); or set plain-http behind a "
                 "TLS-terminating proxy");
        return -1;
    }
    self->ssl = SSL_CTX_new(TLS_server_method());
    if (!self->ssl)
        return -1;
    SSL_CTX_set_min_proto_version(self->ssl, TLS1_2_VERSION);
    SSL_CTX_set_options(self->ssl, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    //  TLS 1.3: one session ticket per full handshake instead of OpenSSL's
    //  two. Devices resume one connection at a time (each resumption brings a
    //  fresh ticket); each ticket costs ~25-35 us of server CPU here
    //  (in-process, docs/enrollment.md "Session 4"). Resumption stays on.
    SSL_CTX_set_num_tickets(self->ssl, 1);
    //  TLS 1.3: the same three suites as OpenSSL's default, but AES-128-GCM
    //  first (OpenSSL's own order starts with AES-256-GCM-SHA384, which
    //  SSL_OP_CIPHER_SERVER_PREFERENCE then picks for every client): the key
    //  schedule's HKDF and the transcript hash run on SHA-256, which this
    //  CPU has in hardware, instead of SHA-384 (-3.5 % of a handshake's
    //  instructions under callgrind, more natively; docs/gateway.md
    //  "Session 8"). Mozilla's recommended order; Apple's clients and curl
    //  offer AES-128-GCM first as well.
    if (SSL_CTX_set_ciphersuites(self->ssl, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                                            "TLS_CHACHA20_POLY1305_SHA256") != 1) {
        ERR_error_string_n(ERR_get_error(), ebuf, sizeof ebuf);
        pm_error("cannot set the TLS 1.3 cipher suites (%s): check the OpenSSL build", ebuf);
        return -1;
    }
    if (SSL_CTX_use_certificate_chain_file(self->ssl, c->tls_cert) != 1) {
        ERR_error_string_n(ERR_get_error(), ebuf, sizeof ebuf);
        pm_error("cannot load tls-cert '%s' (%s): give a PEM certificate chain", c->tls_cert, ebuf);
        return -1;
    }
    if (SSL_CTX_use_PrivateKey_file(self->ssl, c->tls_key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(self->ssl) != 1) {
        ERR_error_string_n(ERR_get_error(), ebuf, sizeof ebuf);
        pm_error("cannot load tls-key '%s' or it does not match tls-cert (%s)", c->tls_key, ebuf);
        return -1;
    }
    if (c->tls_client_cert && self->auth) {
        STACK_OF(X509_NAME) *names = gw_auth_ca_names(self->auth);
        if (names)
            SSL_CTX_set_client_CA_list(self->ssl, names);
        SSL_CTX_set_verify(self->ssl, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_cert_verify_callback(self->ssl, s_cert_verify_later, NULL);
    }
    static const unsigned char sid[] = "picomdm-gateway";
    SSL_CTX_set_session_id_context(self->ssl, sid, sizeof sid - 1);
    //  Resumption from our own session cache instead of encrypted tickets:
    //  a full handshake no longer serializes and encrypts its session, a
    //  resumption no longer decrypts and decodes it (with a client
    //  certificate: decodes the certificate again). docs/gateway.md
    //  "Session 9"; gw_tlscache.h says what it adds to OpenSSL's cache.
    //  tls-session-cache = 0 keeps OpenSSL's encrypted tickets.
    if (c->tls_session_cache > 0 &&
        gw_tlscache_attach(self->ssl, (size_t)c->tls_session_cache) < 0) {
        pm_error("cannot set up the TLS session cache (out of memory?): lower tls-session-cache, "
                 "or set it to 0 for session tickets");
        return -1;
    }
    return 0;
}

/* ---- life cycle ---- */

static char **s_split(const char *list, int *n)
{
    *n = 0;
    if (!list || !*list)
        return NULL;
    char *copy = strdup(list);
    if (!copy)
        return NULL;
    int cap = 1;
    for (const char *p = list; *p; p++)
        cap += *p == ',';
    char **out = calloc((size_t)cap, sizeof *out);
    char *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); out && t; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ')
            t++;
        size_t l = strlen(t);
        while (l && t[l - 1] == ' ')
            t[--l] = '\0';
        if (*t)
            out[(*n)++] = strdup(t);
    }
    free(copy);
    return out;
}

gw_server_t *gw_server_new(const gw_server_config_t *cfg, struct event_base *base, pm_bus_t *bus,
                           gw_auth_t *auth)
{
    gw_server_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->sendq_tail = &self->sendq;
    self->cfg = *cfg;
    self->base = base;
    self->bus = bus;
    self->auth = auth;
    self->listen = strdup(cfg->listen ? cfg->listen : "");
    self->checkin_path = strdup(cfg->checkin_path ? cfg->checkin_path : "/mdm/checkin");
    self->server_path = strdup(cfg->server_path ? cfg->server_path : "/mdm/connect");
    self->proxy_header =
        strdup(cfg->proxy_cert_header ? cfg->proxy_cert_header : "X-SSL-Client-Cert");
    self->service = strdup(cfg->backend_service ? cfg->backend_service : "scheduler");
    self->store_service = strdup(cfg->store_service ? cfg->store_service : "store");
    self->proxies = s_split(cfg->trusted_proxies, &self->nproxies);
    if (!self->listen || !self->checkin_path || !self->server_path || !self->proxy_header ||
        !self->service || !self->store_service)
        goto fail;
    if (!auth && !cfg->insecure_lab_mode) {
        pm_error("no device CA: set device-ca (or, in a lab only, insecure-lab-mode)");
        goto fail;
    }
    if (self->checkin_path[0] != '/' || self->server_path[0] != '/') {
        pm_error("checkin-path and server-path must start with '/'");
        goto fail;
    }
    if (!cfg->plain_http && s_tls_setup(self) < 0)
        goto fail;

    struct sockaddr_storage ss;
    int sslen = sizeof ss;
    memset(&ss, 0, sizeof ss);
    if (evutil_parse_sockaddr_port(self->listen, (struct sockaddr *)&ss, &sslen) < 0 ||
        (ss.ss_family == AF_INET && ((struct sockaddr_in *)&ss)->sin_port == 0 &&
         !strstr(self->listen, ":0"))) {
        pm_error("bad listen address '%s': use address:port, e.g. 0.0.0.0:8443 or [::]:8443",
                 self->listen);
        goto fail;
    }
    //  SO_REUSEPORT: several gateway processes may share the port.
    self->listener = evconnlistener_new_bind(base, NULL, NULL,
                                             LEV_OPT_REUSEABLE | LEV_OPT_REUSEABLE_PORT |
                                                 LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
                                             1024, (struct sockaddr *)&ss, sslen);
    if (!self->listener) {
        pm_error("cannot listen on %s: %s (is the address local and the port free, or owned by "
                 "another user?)",
                 self->listen, evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        goto fail;
    }
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    evutil_socket_t lfd = evconnlistener_get_fd(self->listener);
    //  TCP_NODELAY: header and body leave as separate writes (TLS records);
    //  with Nagle and the client's delayed ACK every answer waits ~40 ms.
    //  Set once on the listener: Linux passes it on to every accepted socket.
    int one = 1;
    if (setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
        pm_warn("cannot set TCP_NODELAY on %s: answers may be delayed ~40 ms", self->listen);
    //  TCP_DEFER_ACCEPT: a connection becomes acceptable only when its first
    //  bytes (the ClientHello, or a proxy's request) have arrived, so the
    //  accept and the first read share one wake-up of the loop instead of
    //  two (docs/gateway.md "Session 9"). Clients always speak first here.
    //  A client silent for GW_DEFER_ACCEPT_S (Linux rounds it up to SYN-ACK
    //  retransmits, ~5-7 s) is accepted once it ACKs the last one, and meets
    //  the idle timeout as before.
    int defer = GW_DEFER_ACCEPT_S;
    if (setsockopt(lfd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof defer) < 0)
        pm_debug("cannot set TCP_DEFER_ACCEPT on %s: one more wake-up per connection",
                 self->listen);
    if (getsockname(lfd, (struct sockaddr *)&bound, &blen) == 0)
        self->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                       : ((struct sockaddr_in *)&bound)->sin_port);

    self->http = evhttp_new(base);
    if (!self->http)
        goto fail;
    evhttp_set_max_body_size(self->http, (ev_ssize_t)cfg->body_max);
    evhttp_set_max_headers_size(self->http, (ev_ssize_t)cfg->header_max);
    evhttp_set_timeout(self->http, cfg->idle_timeout_s > 0 ? cfg->idle_timeout_s : 60);
    evhttp_set_allowed_methods(self->http, EVHTTP_REQ_GET | EVHTTP_REQ_PUT | EVHTTP_REQ_POST);
    evhttp_set_gencb(self->http, s_on_request, self);
    if (self->ssl)
        evhttp_set_bevcb(self->http, s_on_bev, self);
    if (!evhttp_bind_listener(self->http, self->listener))
        goto fail;
    self->listener = NULL; //  owned by evhttp now

    //  the bus in our event loop
    int fds[GW_BUS_FDS_MAX];
    int n = bus ? pm_bus_fds(bus, fds, GW_BUS_FDS_MAX) : 0;
    for (int i = 0; i < n && i < GW_BUS_FDS_MAX; i++) {
        self->bus_ev[i] = event_new(base, fds[i], EV_READ | EV_PERSIST, s_on_bus_fd, self);
        if (!self->bus_ev[i] || event_add(self->bus_ev[i], NULL) < 0)
            goto fail;
        self->nbus_ev++;
    }
    self->bus_timer = evtimer_new(base, s_on_bus_fd, self);
    self->bus_defer = event_new(base, -1, 0, s_on_bus_defer, self);
    if (!self->bus_timer || !self->bus_defer)
        goto fail;
    if (bus && cfg->direct_store) {
        self->policy_timer = evtimer_new(base, s_policy_fetch, self);
        if (!self->policy_timer)
            goto fail;
        s_policy_fetch(-1, 0, self);
    }
    s_bus_kick(self);
    pm_info("listening on %s (port %d, %s%s), check-in %s, command loop %s, back end '%s'",
            self->listen, self->port, cfg->plain_http ? "plain HTTP behind a proxy" : "TLS",
            !cfg->plain_http && cfg->tls_client_cert ? " + client certificates" : "",
            self->checkin_path, self->server_path, self->service);
    return self;
fail:
    gw_server_shutdown(self);
    gw_server_destroy(&self);
    return NULL;
}

void gw_server_shutdown(gw_server_t *self)
{
    if (!self || self->shutting_down)
        return;
    self->shutting_down = true;
    gw_enroll_shutdown(self->enroll);
    //  Everyone still waiting gets an answer now (the bus is going away).
    for (gw_pending_t *q = self->reqs; q; q = q->next)
        if (q->req) {
            s_send_503(self, q->req);
            q->req = NULL;
        }
    if (self->http)
        evhttp_free(self->http);
    self->http = NULL;
    if (self->listener)
        evconnlistener_free(self->listener);
    self->listener = NULL;
}

void gw_server_destroy(gw_server_t **srv)
{
    if (!srv || !*srv)
        return;
    gw_server_t *self = *srv;
    gw_server_shutdown(self);
    while (self->reqs)
        s_req_free((gw_req_t *)self->reqs);
    self->sendq = NULL;
    self->sendq_tail = &self->sendq;
    for (int i = 0; i < self->nbus_ev; i++)
        event_free(self->bus_ev[i]);
    if (self->bus_timer)
        event_free(self->bus_timer);
    if (self->bus_defer)
        event_free(self->bus_defer);
    if (self->policy_timer)
        event_free(self->policy_timer);
    free(self->store_service);
    if (self->ssl)
        SSL_CTX_free(self->ssl);
    for (int i = 0; i < self->nproxies; i++)
        free(self->proxies[i]);
    free(self->proxies);
    free(self->listen);
    free(self->checkin_path);
    free(self->server_path);
    free(self->proxy_header);
    free(self->service);
    free(self);
    *srv = NULL;
}

static void s_enroll_kick(void *arg)
{
    s_bus_kick(arg);
}

void gw_server_set_enroll(gw_server_t *srv, gw_enroll_t *enroll)
{
    srv->enroll = enroll;
    if (enroll)
        gw_enroll_set_kick(enroll, s_enroll_kick, srv);
}

int gw_server_port(const gw_server_t *srv)
{
    return srv->port;
}

void gw_server_stats(const gw_server_t *srv, gw_server_stats_t *st)
{
    *st = srv->st;
    //  OpenSSL counts completed server handshakes per SSL_CTX (SSL_CTX_sess_accept_good)
    st->tls_handshakes = srv->ssl ? (uint64_t)SSL_CTX_sess_accept_good(srv->ssl) : 0;
    st->tls_accepts = srv->ssl ? (uint64_t)SSL_CTX_sess_accept(srv->ssl) : 0;
}
