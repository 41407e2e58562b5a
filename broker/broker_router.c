/*  broker_router — the broker's request plane (see broker_router.h). */
#include "broker_router.h"
#include "pm_bus_wire.h"
#include "pm_log.h"
#include "pm_msg.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

//  A finished request waits in the spare list for reuse instead of being
//  freed, so AddressSanitizer would not see a use after its release. In a
//  sanitizer build (make VARIANT=asan) the whole struct is poisoned while it
//  sits there: any read or write of it is reported (use-after-poison) until
//  s_request_alloc hands it out again.
#if defined(__SANITIZE_ADDRESS__)
#define S_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define S_ASAN 1
#endif
#endif
#ifdef S_ASAN
#include <sanitizer/asan_interface.h>
#define S_POISON(p) ASAN_POISON_MEMORY_REGION((p), sizeof *(p))
#define S_UNPOISON(p) ASAN_UNPOISON_MEMORY_REGION((p), sizeof *(p))
#else
#define S_POISON(p) ((void)(p))
#define S_UNPOISON(p) ((void)(p))
#endif

#define S_ID_MAX 255                              //  ROUTER routing ids are at most 255 bytes
#define S_KEY_MAX (2 * S_ID_MAX + 2 + PM_RID_MAX) //  hex(client) "/" rid
#define S_MAX_SERVICES 1024
#define S_SPARE_MAX 1024 //  finished requests kept for reuse (no malloc/free per request)

typedef struct s_service s_service_t;

typedef struct {
    uint8_t id[S_ID_MAX];
    size_t idlen;
    char key[2 * S_ID_MAX + 1];
    s_service_t *service;
    void *handle; //  in service->workers
    int capacity;
    int inflight;
    int heartbeat_ms;
    int64_t expiry;
    int64_t heartbeat_at;
    bool gone; //  no route to it (its connection closed): removed at the next timers pass
} s_worker_t;

typedef struct {
    char key[S_KEY_MAX + 1];
    uint8_t client[S_ID_MAX];
    size_t clientlen;
    char rid[PM_RID_MAX + 1];
    s_service_t *service;
    s_worker_t *worker; //  NULL while queued
    void *qhandle;      //  in service->queue while queued
    zmq_msg_t body;     //  moved out when dispatched
    int64_t queued_at;
    void *next_spare; //  in broker_router's spare list (finished, kept for reuse)
} s_request_t;

struct s_service {
    char name[PM_BUS_SERVICE_MAX + 1];
    zlistx_t *workers; //  s_worker_t*
    zlistx_t *queue;   //  s_request_t*, oldest first
};

struct broker_router {
    broker_router_config_t cfg;
    zsock_t *sock;
    void *handle;
    pm_bus_sock_t zs;   //  the same socket's wait state (pm_bus_wire.h)
    zhashx_t *services; //  name -> s_service_t
    zhashx_t *workers;  //  hex id -> s_worker_t
    zhashx_t *requests; //  key -> s_request_t (queued or in flight)
    s_worker_t *last;   //  the worker of the last worker message (NULL: none or removed)
    s_request_t *spare; //  finished requests for reuse (S_SPARE_MAX at most)
    int nspare;
    broker_router_stats_t stats;
    pm_bus_ratelog_t ratelog;
};

/* ---- sending ---- */

static void s_send_to_client(broker_router_t *self, const uint8_t *client, size_t clientlen,
                             const char *service, const char *rid, zmq_msg_t *body,
                             const void *bytes, size_t len)
{
    const void *data[4] = {client, PM_BUS_CLIENT_HDR, service, rid};
    size_t lens[4] = {clientlen, PM_BUS_HDR_LEN, strlen(service), strlen(rid)};
    self->zs.armed = false;
    for (int i = 0; i < 4; i++)
        if (zmq_send(self->handle, data[i], lens[i], ZMQ_DONTWAIT | ZMQ_SNDMORE) < 0) {
            //  Only the first frame can fail: the client is gone or too slow.
            self->stats.unroutable++;
            pm_debug("broker: reply %s for '%s' dropped: client unreachable (%s)", rid, service,
                     zmq_strerror(errno));
            return;
        }
    if (body)
        zmq_msg_send(body, self->handle, ZMQ_DONTWAIT);
    else
        zmq_send(self->handle, bytes, len, ZMQ_DONTWAIT);
}

static void s_send_error(broker_router_t *self, const uint8_t *client, size_t clientlen,
                         const char *service, const char *rid, const char *code, const char *fmt,
                         ...) __attribute__((format(printf, 7, 8)));

static void s_send_error(broker_router_t *self, const uint8_t *client, size_t clientlen,
                         const char *service, const char *rid, const char *code, const char *fmt,
                         ...)
{
    char text[512], err[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    uint8_t *bytes = NULL;
    size_t len = 0;
    pm_msg_t *m = pm_msg_new(PM_MSG_ERROR);
    if (!m || pm_msg_set_rid(m, rid) < 0 || pm_msg_set_str(m, "code", code) < 0 ||
        pm_msg_set_str(m, "message", text) < 0 ||
        pm_msg_encode(m, &bytes, &len, err, sizeof err) < 0) {
        pm_error("broker: cannot build an `error` %s reply (%s)", code, m ? err : "no memory");
        goto out;
    }
    self->stats.errors++;
    s_send_to_client(self, client, clientlen, service, rid, NULL, bytes, len);
out:
    free(bytes);
    pm_msg_destroy(&m);
}

static void s_send_command(broker_router_t *self, const uint8_t *id, size_t idlen, uint8_t cmd)
{
    const void *data[3] = {id, PM_BUS_WORKER_HDR, &cmd};
    size_t lens[3] = {idlen, PM_BUS_HDR_LEN, 1};
    pm_bus_sock_sendv(&self->zs, data, lens, 3);
}

/* ---- requests ---- */

//  A request's memory: a finished one if there is one (most of the ~1 KB is
//  filled by the caller: key, client, rid), else a new one.
static s_request_t *s_request_alloc(broker_router_t *self)
{
    s_request_t *r = self->spare;
    if (!r)
        return malloc(sizeof *r);
    S_UNPOISON(r);
    self->spare = r->next_spare;
    self->nspare--;
    return r;
}

//  Back to the spare list (or freed), for a request that is not in the hash.
static void s_request_release(broker_router_t *self, s_request_t *r)
{
    zmq_msg_close(&r->body);
    if (self->nspare >= S_SPARE_MAX) {
        free(r);
        return;
    }
    r->next_spare = self->spare;
    S_POISON(r);
    self->spare = r;
    self->nspare++;
}

static void s_request_free(broker_router_t *self, s_request_t *r)
{
    zhashx_delete(self->requests, r->key);
    s_request_release(self, r);
}

//  Send a request to a worker. Returns 0, or -1 (errno) if the worker cannot
//  take it now: EHOSTUNREACH when its connection is gone, EAGAIN at its
//  high-water mark.
static int s_send_request(broker_router_t *self, s_worker_t *w, s_request_t *r)
{
    uint8_t cmd = PM_BUS_REQUEST;
    const void *data[5] = {w->id, PM_BUS_WORKER_HDR, &cmd, r->client, r->rid};
    size_t lens[5] = {w->idlen, PM_BUS_HDR_LEN, 1, r->clientlen, strlen(r->rid)};
    self->zs.armed = false;
    for (int i = 0; i < 5; i++)
        if (zmq_send(self->handle, data[i], lens[i], ZMQ_DONTWAIT | ZMQ_SNDMORE) < 0)
            return -1; //  first frame only: worker gone or at its high-water mark
    zmq_msg_send(&r->body, self->handle, ZMQ_DONTWAIT);
    r->worker = w;
    w->inflight++;
    self->stats.dispatched++;
    return 0;
}

static s_worker_t *s_pick(s_service_t *s)
{
    s_worker_t *best = NULL;
    for (s_worker_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers))
        if (!w->gone && w->inflight < w->capacity && (!best || w->inflight < best->inflight))
            best = w;
    return best;
}

//  Send r to the free worker with the fewest in flight. A worker found gone
//  (its process died; ROUTER_MANDATORY says EHOSTUNREACH) is marked so and
//  the next one tried: otherwise, having the fewest in flight, it would be
//  picked for every request until it missed 3 heartbeats while the live
//  workers sat idle. s_timers removes it (worker_lost for its requests) at
//  the end of this pass; not here, where a caller may hold it or its
//  requests. Returns 0, or -1 when no worker took it (the caller queues it).
static int s_route(broker_router_t *self, s_service_t *s, s_request_t *r)
{
    s_worker_t *w;
    while ((w = s_pick(s))) {
        if (s_send_request(self, w, r) == 0)
            return 0;
        if (errno != EHOSTUNREACH)
            return -1; //  at its high-water mark: wait for a reply to free it
        w->gone = true;
    }
    return -1;
}

//  Hand queued requests to free workers, oldest first.
static void s_dispatch(broker_router_t *self, s_service_t *s)
{
    s_request_t *r;
    while ((r = zlistx_first(s->queue))) {
        if (s_route(self, s, r) < 0)
            return;
        zlistx_delete(s->queue, r->qhandle);
        r->qhandle = NULL;
    }
}

/* ---- services and workers ---- */

static s_service_t *s_service(broker_router_t *self, const char *name)
{
    s_service_t *s = zhashx_lookup(self->services, name);
    if (s || zhashx_size(self->services) >= S_MAX_SERVICES)
        return s;
    s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    snprintf(s->name, sizeof s->name, "%s", name);
    s->workers = zlistx_new();
    s->queue = zlistx_new();
    zhashx_insert(self->services, s->name, s);
    return s;
}

static void s_service_free(broker_router_t *self, s_service_t *s)
{
    zhashx_delete(self->services, s->name);
    zlistx_destroy(&s->workers);
    zlistx_destroy(&s->queue);
    free(s);
}

//  Remove a worker; its in-flight requests are answered worker_lost.
static void s_worker_delete(broker_router_t *self, s_worker_t *w, const char *why)
{
    s_service_t *s = w->service;
    int lost = 0;
    if (w->inflight > 0) {
        zlistx_t *victims = zlistx_new();
        for (s_request_t *r = zhashx_first(self->requests); r; r = zhashx_next(self->requests))
            if (r->worker == w)
                zlistx_add_end(victims, r);
        for (s_request_t *r = zlistx_first(victims); r; r = zlistx_next(victims)) {
            s_send_error(self, r->client, r->clientlen, s->name, r->rid, "worker_lost",
                         "the worker of service '%s' handling this request went away (%s); "
                         "retry with the same request id",
                         s->name, why);
            s_request_free(self, r);
            lost++;
        }
        zlistx_destroy(&victims);
    }
    if (lost || strcmp(why, "it said DISCONNECT") != 0)
        pm_warn("broker: worker %s of '%s' removed (%s); %d request%s in flight failed back "
                "to their clients",
                w->key, s->name, why, lost, lost == 1 ? "" : "s");
    else
        pm_info("broker: worker %s of '%s' left", w->key, s->name);
    self->stats.workers_lost++;
    zlistx_delete(s->workers, w->handle);
    zhashx_delete(self->workers, w->key);
    if (self->last == w)
        self->last = NULL;
    free(w);
    s_dispatch(self, s); //  nothing if no worker is left; the queue times out
}

static void s_worker_ready(broker_router_t *self, const uint8_t *id, size_t idlen, const char *key,
                           zmq_msg_t *f, int total)
{
    char name[PM_BUS_SERVICE_MAX + 1], cap[16], hb[16];
    long capacity = 0, heartbeat = self->cfg.heartbeat_ms;
    char *end;
    if (pm_bus_frame_str(&f[3], name, sizeof name) < 0 ||
        pm_bus_frame_str(&f[4], cap, sizeof cap) < 0 || (capacity = strtol(cap, &end, 10)) <= 0 ||
        *end ||
        (total == 6 && (pm_bus_frame_str(&f[5], hb, sizeof hb) < 0 ||
                        (heartbeat = strtol(hb, &end, 10)) <= 0 || *end))) {
        self->stats.bad_frames++;
        pm_bus_ratelog(&self->ratelog, "broker: malformed READY from %s; told it to reconnect",
                       key);
        s_send_command(self, id, idlen, PM_BUS_DISCONNECT);
        return;
    }
    s_service_t *s = s_service(self, name);
    s_worker_t *w = calloc(1, sizeof *w);
    if (!s || !w) {
        free(w);
        pm_bus_ratelog(&self->ratelog,
                       "broker: cannot register a worker for '%s' (too many "
                       "services or no memory)",
                       name);
        s_send_command(self, id, idlen, PM_BUS_DISCONNECT);
        return;
    }
    if (heartbeat < 50)
        heartbeat = 50;
    if (heartbeat > 60000)
        heartbeat = 60000;
    memcpy(w->id, id, idlen);
    w->idlen = idlen;
    snprintf(w->key, sizeof w->key, "%s", key);
    w->service = s;
    w->capacity = capacity < self->cfg.max_inflight_per_worker ? (int)capacity
                                                               : self->cfg.max_inflight_per_worker;
    w->heartbeat_ms = (int)heartbeat;
    int64_t now = zclock_mono();
    w->expiry = now + (int64_t)w->heartbeat_ms * PM_BUS_LIVENESS;
    w->heartbeat_at = now + w->heartbeat_ms;
    w->handle = zlistx_add_end(s->workers, w);
    zhashx_insert(self->workers, w->key, w);
    pm_info("broker: worker %s registered for '%s' (capacity %d, heartbeat %d ms)", w->key, s->name,
            w->capacity, w->heartbeat_ms);
    s_dispatch(self, s);
}

/* ---- input ---- */

static void s_client_input(broker_router_t *self, zmq_msg_t *f, int total)
{
    char service[PM_BUS_SERVICE_MAX + 1], rid[PM_RID_MAX + 1];
    const uint8_t *client = zmq_msg_data(&f[0]);
    size_t clientlen = zmq_msg_size(&f[0]);
    if (total != 5 || pm_bus_frame_str(&f[2], service, sizeof service) < 0 ||
        pm_bus_frame_str(&f[3], rid, sizeof rid) < 0 || clientlen > S_ID_MAX) {
        self->stats.bad_frames++;
        pm_bus_ratelog(&self->ratelog,
                       "broker: malformed request (%d frames, bad service or "
                       "rid); dropped",
                       total);
        return;
    }
    self->stats.requests++;
    s_request_t *r = s_request_alloc(self);
    if (!r)
        return; //  the client retries
    //  The key is built in place and the insert is the duplicate check (one
    //  hash lookup per request instead of a lookup and then the insert).
    pm_bus_hex(client, clientlen, r->key);
    size_t kl = strlen(r->key), rl = strlen(rid);
    r->key[kl] = '/';
    memcpy(r->key + kl + 1, rid, rl + 1);
    zmq_msg_init(&r->body);
    if (zhashx_insert(self->requests, r->key, r) < 0) {
        //  A retry of a request we still hold: the first copy will be answered.
        self->stats.duplicates++;
        pm_debug("broker: retry of %s for '%s' while still held; dropped", rid, service);
        s_request_release(self, r);
        return;
    }
    s_service_t *s = s_service(self, service);
    if (!s) {
        s_send_error(self, client, clientlen, service, rid, "busy",
                     "the broker knows too many services (%d) to add '%s'; check for clients "
                     "calling misspelled services",
                     S_MAX_SERVICES, service);
        s_request_free(self, r);
        return;
    }
    if ((int)zlistx_size(s->queue) >= self->cfg.max_queue) {
        s_send_error(self, client, clientlen, service, rid, "busy",
                     "service '%s' has %d requests queued; retry later or start more workers "
                     "of picomdm-%s",
                     service, self->cfg.max_queue, service);
        s_request_free(self, r);
        return;
    }
    memcpy(r->client, client, clientlen);
    r->clientlen = clientlen;
    memcpy(r->rid, rid, rl + 1);
    r->service = s;
    r->worker = NULL;
    r->qhandle = NULL;
    r->next_spare = NULL;
    zmq_msg_move(&r->body, &f[4]);
    r->queued_at = zclock_mono();
    if (zlistx_size(s->queue) > 0 || s_route(self, s, r) < 0) {
        r->qhandle = zlistx_add_end(s->queue, r);
        self->stats.queued++;
    }
}

//  REPLY or DROPPED from worker w: the request is finished.
static void s_worker_done(broker_router_t *self, s_worker_t *w, zmq_msg_t *f, bool reply)
{
    char rid[PM_RID_MAX + 1], key[S_KEY_MAX + 1];
    size_t clientlen = zmq_msg_size(&f[3]);
    if (clientlen == 0 || clientlen > S_ID_MAX || pm_bus_frame_str(&f[4], rid, sizeof rid) < 0) {
        self->stats.bad_frames++;
        pm_bus_ratelog(&self->ratelog, "broker: malformed %s from worker %s; dropped",
                       reply ? "REPLY" : "DROPPED", w->key);
        return;
    }
    const uint8_t *client = zmq_msg_data(&f[3]);
    pm_bus_hex(client, clientlen, key);
    size_t kl = strlen(key);
    key[kl] = '/';
    memcpy(key + kl + 1, rid, strlen(rid) + 1);
    s_request_t *r = zhashx_lookup(self->requests, key);
    if (r && r->worker == w) {
        w->inflight--;
        s_request_free(self, r);
    }
    //  A reply we no longer track (say, from before a broker restart) still goes
    //  to its client, which drops it if it is a duplicate.
    if (reply) {
        self->stats.replies++;
        s_send_to_client(self, client, clientlen, w->service->name, rid, &f[5], NULL, 0);
    }
    s_dispatch(self, w->service);
}

static void s_worker_input(broker_router_t *self, zmq_msg_t *f, int n, int total)
{
    char key[2 * S_ID_MAX + 1];
    const uint8_t *id = zmq_msg_data(&f[0]);
    size_t idlen = zmq_msg_size(&f[0]);
    if (n < 3 || zmq_msg_size(&f[2]) != 1 || idlen > S_ID_MAX) {
        self->stats.bad_frames++;
        pm_bus_ratelog(&self->ratelog, "broker: malformed worker message (%d frames); dropped",
                       total);
        return;
    }
    uint8_t cmd = *(uint8_t *)zmq_msg_data(&f[2]);
    //  Replies come in runs from the same worker (a store commit's): the one
    //  of the last message is checked first, no hex key and hash lookup.
    s_worker_t *w = self->last;
    if (w && w->idlen == idlen && memcmp(w->id, id, idlen) == 0)
        memcpy(key, w->key, 2 * idlen + 1);
    else {
        pm_bus_hex(id, idlen, key);
        w = self->last = zhashx_lookup(self->workers, key);
    }
    if (cmd == PM_BUS_READY && (total == 5 || total == 6)) {
        if (w && pm_bus_frame_is(&f[3], w->service->name)) {
            //  Registered already (its READYs queued up while we were away):
            //  same socket, same process, its jobs are alive; just refresh.
            w->expiry = zclock_mono() + (int64_t)w->heartbeat_ms * PM_BUS_LIVENESS;
            return;
        }
        if (w) {
            s_worker_delete(self, w, "it sent READY for another service");
            s_send_command(self, id, idlen, PM_BUS_DISCONNECT);
        } else
            s_worker_ready(self, id, idlen, key, f, total);
        return;
    }
    if (!w) {
        //  Not registered here (we restarted, or expired it while it was
        //  stalled): make it re-register. Its reply is still good: pass it on
        //  (the client drops it if it already has one).
        if (cmd == PM_BUS_REPLY && total == 6 && zmq_msg_size(&f[3]) > 0 &&
            zmq_msg_size(&f[3]) <= S_ID_MAX) {
            char rid[PM_RID_MAX + 1], service[PM_BUS_SERVICE_MAX + 1];
            //  The service frame of a client reply is informational; we do
            //  not know this worker's, so the reply says "?".
            snprintf(service, sizeof service, "?");
            if (pm_bus_frame_str(&f[4], rid, sizeof rid) == 0) {
                self->stats.replies++;
                s_send_to_client(self, zmq_msg_data(&f[3]), zmq_msg_size(&f[3]), service, rid,
                                 &f[5], NULL, 0);
            }
        }
        if (cmd != PM_BUS_DISCONNECT)
            s_send_command(self, id, idlen, PM_BUS_DISCONNECT);
        pm_debug("broker: message 0x%02x from unregistered worker %s; told it to reconnect", cmd,
                 key);
        return;
    }
    w->expiry = zclock_mono() + (int64_t)w->heartbeat_ms * PM_BUS_LIVENESS;
    if (cmd == PM_BUS_REPLY && total == 6)
        s_worker_done(self, w, f, true);
    else if (cmd == PM_BUS_DROPPED && total == 5)
        s_worker_done(self, w, f, false);
    else if (cmd == PM_BUS_HEARTBEAT && total == 3)
        ;
    else if (cmd == PM_BUS_DISCONNECT && total == 3)
        s_worker_delete(self, w, "it said DISCONNECT");
    else {
        self->stats.bad_frames++;
        pm_bus_ratelog(&self->ratelog,
                       "broker: unknown command 0x%02x (%d frames) from worker "
                       "%s; dropped",
                       cmd, total, key);
    }
}

/* ---- timers ---- */

static void s_timers(broker_router_t *self)
{
    int64_t now = zclock_mono();
    zlistx_t *dead = NULL;
    for (s_worker_t *w = zhashx_first(self->workers); w; w = zhashx_next(self->workers)) {
        if (w->gone || now >= w->expiry) {
            if (!dead)
                dead = zlistx_new();
            zlistx_add_end(dead, w);
        } else if (now >= w->heartbeat_at) {
            s_send_command(self, w->id, w->idlen, PM_BUS_HEARTBEAT);
            w->heartbeat_at = now + w->heartbeat_ms;
        }
    }
    if (dead) {
        for (s_worker_t *w = zlistx_first(dead); w; w = zlistx_next(dead))
            s_worker_delete(self, w, w->gone ? "its connection is gone" : "missed 3 heartbeats");
        zlistx_destroy(&dead);
    }
    zlistx_t *empty = NULL;
    for (s_service_t *s = zhashx_first(self->services); s; s = zhashx_next(self->services)) {
        s_request_t *r;
        while ((r = zlistx_first(s->queue)) && now - r->queued_at >= self->cfg.request_wait_ms) {
            bool none = zlistx_size(s->workers) == 0;
            if (none)
                s_send_error(self, r->client, r->clientlen, s->name, r->rid, "no_service",
                             "no worker of service '%s' registered with the broker within %d "
                             "ms: start picomdm-%s (or check it points at this broker)",
                             s->name, self->cfg.request_wait_ms, s->name);
            else
                s_send_error(self, r->client, r->clientlen, s->name, r->rid, "busy",
                             "every worker of service '%s' stayed busy for %d ms; retry later "
                             "or start more workers",
                             s->name, self->cfg.request_wait_ms);
            zlistx_delete(s->queue, r->qhandle);
            s_request_free(self, r);
        }
        if (zlistx_size(s->workers) == 0 && zlistx_size(s->queue) == 0) {
            if (!empty)
                empty = zlistx_new();
            zlistx_add_end(empty, s);
        }
    }
    if (empty) {
        for (s_service_t *s = zlistx_first(empty); s; s = zlistx_next(empty))
            s_service_free(self, s);
        zlistx_destroy(&empty);
    }
}

/* ---- public ---- */

int broker_router_process(broker_router_t *self)
{
    zmq_msg_t f[PM_BUS_MAX_FRAMES];
    int handled = 0, n, total;
    //  Receive only when pm_bus_poll said input may wait (or nobody asked it):
    //  an empty receive costs libzmq two syscalls.
    bool input = self->zs.ready || !self->zs.armed;
    while (input && handled < PM_BUS_BATCH &&
           pm_bus_sock_recv(&self->zs, f, PM_BUS_MAX_FRAMES, &n, &total) == 0) {
        handled++;
        if (n >= 2 && pm_bus_frame_is(&f[1], PM_BUS_CLIENT_HDR))
            s_client_input(self, f, total);
        else if (n >= 2 && pm_bus_frame_is(&f[1], PM_BUS_WORKER_HDR))
            s_worker_input(self, f, n, total);
        else {
            self->stats.bad_frames++;
            pm_bus_ratelog(&self->ratelog,
                           "broker: message with an unknown header (%d frames) "
                           "dropped: not a PicoMDM bus peer?",
                           total);
        }
        pm_bus_frames_close(f, n);
    }
    s_timers(self);
    return handled;
}

int broker_router_next_timeout(const broker_router_t *self)
{
    int64_t now = zclock_mono();
    int64_t next = now + self->cfg.heartbeat_ms;
    for (s_worker_t *w = zhashx_first(self->workers); w; w = zhashx_next(self->workers)) {
        if (w->gone)
            return 0; //  s_route could not remove it: s_timers does
        if (w->heartbeat_at < next)
            next = w->heartbeat_at;
        if (w->expiry < next)
            next = w->expiry;
    }
    for (s_service_t *s = zhashx_first(self->services); s; s = zhashx_next(self->services)) {
        s_request_t *r = zlistx_first(s->queue);
        if (r && r->queued_at + self->cfg.request_wait_ms < next)
            next = r->queued_at + self->cfg.request_wait_ms;
    }
    return next <= now ? 0 : (int)(next - now);
}

zsock_t *broker_router_socket(broker_router_t *self)
{
    return self->sock;
}

pm_bus_sock_t *broker_router_wait(broker_router_t *self)
{
    return &self->zs;
}

void broker_router_stats(const broker_router_t *self, broker_router_stats_t *stats)
{
    *stats = self->stats;
}

void broker_router_services(broker_router_t *self, broker_router_service_fn *fn, void *arg)
{
    for (s_service_t *s = zhashx_first(self->services); s; s = zhashx_next(self->services)) {
        int inflight = 0, capacity = 0;
        for (s_worker_t *w = zlistx_first(s->workers); w; w = zlistx_next(s->workers)) {
            inflight += w->inflight;
            capacity += w->capacity;
        }
        fn(arg, s->name, (int)zlistx_size(s->workers), (int)zlistx_size(s->queue), inflight,
           capacity);
    }
}

broker_router_t *broker_router_new(const broker_router_config_t *cfg)
{
    broker_router_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->cfg = *cfg;
    if (self->cfg.heartbeat_ms <= 0)
        self->cfg.heartbeat_ms = 1000;
    if (self->cfg.request_wait_ms <= 0)
        self->cfg.request_wait_ms = 5000;
    if (self->cfg.max_inflight_per_worker <= 0)
        self->cfg.max_inflight_per_worker = 1000;
    if (self->cfg.max_queue <= 0)
        self->cfg.max_queue = 10000;
    self->sock = zsock_new(ZMQ_ROUTER);
    self->services = zhashx_new();
    self->workers = zhashx_new();
    self->requests = zhashx_new();
    if (!self->sock || !self->services || !self->workers || !self->requests) {
        broker_router_destroy(&self);
        return NULL;
    }
    //  Keyed by the name/key inside each item, which outlives its entry (the
    //  item is freed only after it left the hash): no copy of the key per
    //  request (a strdup and a free each); hashed 8 bytes at a time.
    zhashx_t *hashes[3] = {self->services, self->workers, self->requests};
    for (int i = 0; i < 3; i++) {
        zhashx_set_key_duplicator(hashes[i], NULL);
        zhashx_set_key_destructor(hashes[i], NULL);
        zhashx_set_key_hasher(hashes[i], pm_bus_key_hash);
    }
    self->handle = zsock_resolve(self->sock);
    pm_bus_sock_init(&self->zs, self->handle);
    zsock_set_router_mandatory(self->sock, 1);
    zsock_set_maxmsgsize(self->sock, (int64_t)PM_MSG_MAX_BYTES);
    zsock_set_sndhwm(self->sock, PM_BUS_HWM);
    zsock_set_rcvhwm(self->sock, PM_BUS_HWM);
    zsock_set_linger(self->sock, 0);
    return self;
}

void broker_router_destroy(broker_router_t **selfp)
{
    if (!selfp || !*selfp)
        return;
    broker_router_t *self = *selfp;
    if (self->requests) {
        for (s_request_t *r = zhashx_first(self->requests); r; r = zhashx_next(self->requests)) {
            zmq_msg_close(&r->body);
            free(r);
        }
        zhashx_destroy(&self->requests);
    }
    while (self->spare) {
        s_request_t *r = self->spare;
        S_UNPOISON(r);
        self->spare = r->next_spare;
        free(r);
    }
    if (self->workers) {
        for (s_worker_t *w = zhashx_first(self->workers); w; w = zhashx_next(self->workers))
            free(w);
        zhashx_destroy(&self->workers);
    }
    if (self->services) {
        for (s_service_t *s = zhashx_first(self->services); s; s = zhashx_next(self->services)) {
            zlistx_destroy(&s->workers);
            zlistx_destroy(&s->queue);
            free(s);
        }
        zhashx_destroy(&self->services);
    }
    zsock_destroy(&self->sock);
    free(self);
    *selfp = NULL;
}
