/*  pm_bus — the bus client library used by every process (see pm_bus.h for
 *  the API and the wire frames, pm_bus_wire.h for the frame helpers).
 *
 *  One pm_bus_t holds up to four kinds of DEALER/PUB/SUB sockets:
 *    client   one DEALER to the broker's ROUTER for our outgoing requests;
 *    workers  one DEALER per service we serve (re-created to re-register);
 *    pub/sub  PUB to the broker's XSUB, SUB to its XPUB.
 *  Ownership: everything here belongs to the pm_bus_t, except jobs (the
 *  handler owns them until pm_bus_job_reply/pm_bus_job_drop) and replies
 *  returned by pm_bus_call (the caller owns them).
 */
#include "pm_bus.h"
#include "pm_bus_wire.h"
#include "pm_log.h"
#include "pm_mpck.h"

#include <czmq.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_MAX_SERVICES 8
#define S_MAX_SUBS 32
#define S_CACHE_MAX_COUNT 20000               //  replies kept for retried rids
#define S_CACHE_MAX_BYTES (64u * 1024 * 1024) //  and their total size
#define S_CACHE_TTL_MS (5 * 60 * 1000)        //  and how long
//  The reply cache's index: a fixed array of S_CACHE_BUCKETS chains (a power of
//  two; ~0.6 entries per chain when full). Not czmq's zhashx: it also grows its
//  bucket array when a lookup walks a chain longer than its limit and never
//  shrinks it, so with ~20,000 entries and churning rids it grew to 16-64 MB
//  in ~5 % of long runs (the store's rare memory jump; docs/queue.md,
//  "Session 10, memjump"). 256 KiB per worker, bounded by construction.
#define S_CACHE_BUCKETS 32768
#define S_MAX_PENDING 100000 //  client requests in flight per bus

//  An outgoing request waiting for its reply.
typedef struct {
    char rid[PM_RID_MAX + 1];
    char service[PM_BUS_SERVICE_MAX + 1];
    uint8_t *body;
    size_t len;
    int64_t started;
    int64_t deadline;
    int timeout_ms;
    int attempts;     //  sent so far
    int attempts_max; //  1 + retries
    pm_bus_reply_fn *fn;
    void *arg;
    pm_msg_t **sink; //  pm_bus_call: hand the reply over instead of freeing it
    bool *done;
    char *errbuf;
    size_t errlen;
} s_pending_t;

//  The worker-side reply cache: one entry per recent rid.
typedef struct s_cached {
    char rid[PM_RID_MAX + 1];
    pm_bus_job_t *job; //  non-NULL while the request is being handled
    uint8_t *reply;    //  encoded reply, once sent
    size_t len;
    int64_t done_at;
    struct s_cached *prev, *next; //  FIFO of finished entries (oldest first)
    struct s_cached *hnext;       //  next in its index chain
} s_cached_t;

typedef struct {
    pm_bus_t *bus;
    char service[PM_BUS_SERVICE_MAX + 1];
    zsock_t *sock;
    pm_bus_sock_t zs; //  its wait state (pm_bus_wire.h)
    pm_bus_job_fn *fn;
    void *arg;
    int64_t broker_expiry; //  broker is dead if silent past this
    int64_t heartbeat_at;  //  next heartbeat we send
    bool silent;           //  broker missed 3 heartbeats (logged once per outage)
    s_cached_t **index;    //  rid -> s_cached_t: S_CACHE_BUCKETS chains
    s_cached_t *oldest, *newest;
    size_t cache_count, cache_bytes;
} s_worker_t;

struct pm_bus_job {
    s_worker_t *worker; //  NULL when the bus was destroyed first
    pm_bus_t *bus;
    uint8_t client[256];
    size_t client_len;
    char rid[PM_RID_MAX + 1];
    pm_msg_t *msg;
    s_cached_t *cached;
    pm_bus_job_t *prev, *next; //  bus->jobs: outstanding jobs
};

typedef struct {
    char *prefix;
    pm_bus_event_fn *fn;
    void *arg;
} s_sub_t;

struct pm_bus {
    char *name;
    char *request_endpoint;
    char *publish_endpoint;
    char *subscribe_endpoint;
    char *server_key;
    zcert_t *cert;
    int heartbeat_ms;
    int capacity;

    zsock_t *client;
    pm_bus_sock_t zclient, zsub; //  wait states of client and sub (pm_bus_wire.h)
    zhashx_t *pending;           //  rid -> s_pending_t
    int64_t next_deadline;

    s_worker_t *workers[S_MAX_SERVICES];
    int nworkers;
    pm_bus_job_t *jobs;

    zsock_t *pub;
    msgpack_sbuffer evbuf; //  pm_bus_publish_event's encoding, reused (keeps its capacity)
    char ev_prefix[17];    //  and its request ids: this prefix + a counter
    uint64_t ev_count;     //
    zsock_t *sub;
    s_sub_t subs[S_MAX_SUBS];
    int nsubs;

    bool more; //  a batch limit was hit: process again without waiting
    pm_bus_stats_t stats;
    pm_bus_ratelog_t ratelog;
};

/* ---- sockets ---- */

static zsock_t *s_socket(pm_bus_t *bus, int type, const char *endpoint)
{
    zsock_t *sock = zsock_new(type);
    if (!sock) {
        pm_error("bus: cannot create a socket (out of file descriptors? raise ulimit -n)");
        return NULL;
    }
    zsock_set_maxmsgsize(sock, (int64_t)PM_MSG_MAX_BYTES);
    zsock_set_sndhwm(sock, PM_BUS_HWM);
    zsock_set_rcvhwm(sock, PM_BUS_HWM);
    zsock_set_linger(sock, 0);
    zsock_set_reconnect_ivl(sock, 100);
    zsock_set_reconnect_ivl_max(sock, 2000);
    //  ZMTP heartbeats: libzmq drops and re-dials a connection that went silent
    //  (half-open TCP after a host or broker crash) on the same socket.
    zsock_set_heartbeat_ivl(sock, bus->heartbeat_ms);
    zsock_set_heartbeat_timeout(sock, bus->heartbeat_ms * PM_BUS_LIVENESS);
    zsock_set_heartbeat_ttl(sock, bus->heartbeat_ms * PM_BUS_LIVENESS);
    if (bus->server_key) {
        zcert_apply(bus->cert, sock);
        zsock_set_curve_serverkey(sock, bus->server_key);
    }
    if (zsock_connect(sock, "%s", endpoint) < 0) {
        pm_error("bus: cannot connect to '%s': %s (check the endpoint syntax, e.g. "
                 "ipc:///tmp/picomdm/request or tcp://127.0.0.1:7401)",
                 endpoint, zmq_strerror(errno));
        zsock_destroy(&sock);
        return NULL;
    }
    return sock;
}

//  A hash keyed by the rid inside its item (s_pending_t, s_cached_t), which
//  lives as long as the entry: no copy of the key per request (a malloc and
//  a free each). The item is freed only after it left the hash.
static void s_borrow_keys(zhashx_t *h)
{
    if (h) {
        zhashx_set_key_duplicator(h, NULL);
        zhashx_set_key_destructor(h, NULL);
        zhashx_set_key_hasher(h, pm_bus_key_hash); //  8 bytes per step
    }
}

/* ---- client side ---- */

static void s_pending_free(s_pending_t **pp)
{
    if (*pp) {
        free((*pp)->body);
        free(*pp);
        *pp = NULL;
    }
}

static int s_client_send(pm_bus_t *bus, s_pending_t *p)
{
    const void *data[4] = {PM_BUS_CLIENT_HDR, p->service, p->rid, p->body};
    size_t len[4] = {PM_BUS_HDR_LEN, strlen(p->service), strlen(p->rid), p->len};
    p->attempts++;
    p->deadline = zclock_mono() + p->timeout_ms;
    if (p->deadline < bus->next_deadline)
        bus->next_deadline = p->deadline;
    if (p->attempts > 1)
        bus->stats.resends++;
    if (pm_bus_sock_sendv(&bus->zclient, data, len, 4) < 0) {
        //  At the high-water mark: the attempt counts, the timer resends.
        pm_debug("bus: request %s to '%s' not sent (%s); will retry", p->rid, p->service,
                 zmq_strerror(errno));
        return -1;
    }
    return 0;
}

//  Complete a pending request: detach it first (the callback may call again).
static void s_complete(pm_bus_t *bus, s_pending_t *p, pm_msg_t **reply, const char *error)
{
    zhashx_delete(bus->pending, p->rid); //  no destructor: p stays ours
    if (error)
        bus->stats.failures++;
    else
        bus->stats.replies++;
    if (p->sink) {
        *p->done = true;
        if (reply && *reply) {
            *p->sink = *reply;
            *reply = NULL;
        } else
            snprintf(p->errbuf, p->errlen, "%s", error ? error : "no reply");
    } else if (p->fn)
        p->fn(p->arg, reply ? *reply : NULL, error);
    s_pending_free(&p);
}

//  The program that serves a bus service, for error messages: the service is
//  named after its binary except 'push' (picomdm-pusher).
static const char *s_server_binary(const char *service)
{
    return strcmp(service, "push") == 0 ? "pusher" : service;
}

static void s_give_up(pm_bus_t *bus, s_pending_t *p)
{
    char err[512];
    int64_t secs = (zclock_mono() - p->started + 500) / 1000;
    snprintf(err, sizeof err,
             "no reply from service '%s' after %d attempt%s (%lld s): is picomdm-%s running "
             "and registered with the broker at %s?",
             p->service, p->attempts, p->attempts == 1 ? "" : "s", (long long)secs,
             s_server_binary(p->service), bus->request_endpoint);
    pm_bus_ratelog(&bus->ratelog, "bus: %s", err);
    s_complete(bus, p, NULL, err);
}

static void s_client_reply(pm_bus_t *bus, zmq_msg_t *f, int n, int total)
{
    char rid[PM_RID_MAX + 1];
    if (total != 4 || n != 4 || !pm_bus_frame_is(&f[0], PM_BUS_CLIENT_HDR) ||
        pm_bus_frame_str(&f[2], rid, sizeof rid) < 0) {
        bus->stats.bad_frames++;
        pm_bus_ratelog(&bus->ratelog, "bus: malformed reply from the broker (%d frames); dropped",
                       total);
        return;
    }
    s_pending_t *p = zhashx_lookup(bus->pending, rid);
    if (!p) {
        //  A late or duplicate reply: the request was already completed.
        bus->stats.duplicates++;
        pm_debug("bus: duplicate or late reply for %s dropped", rid);
        return;
    }
    pm_msg_t *reply = NULL;
    char err[256];
    if (pm_msg_decode(zmq_msg_data(&f[3]), zmq_msg_size(&f[3]), &reply, err, sizeof err) < 0) {
        char why[512];
        snprintf(why, sizeof why,
                 "undecodable reply from service '%s' (%s): are all processes the same "
                 "PicoMDM version?",
                 p->service, err);
        pm_bus_ratelog(&bus->ratelog, "bus: %s", why);
        s_complete(bus, p, NULL, why);
        return;
    }
    if (pm_msg_type(reply) == PM_MSG_ERROR) {
        const char *code = pm_msg_str(reply, "code");
        if (code && strcmp(code, "worker_lost") == 0 && p->attempts < p->attempts_max) {
            pm_bus_ratelog(&bus->ratelog, "bus: worker of '%s' lost while handling %s; resending",
                           p->service, rid);
            pm_msg_destroy(&reply);
            s_client_send(bus, p);
            return;
        }
    }
    s_complete(bus, p, &reply, NULL);
    pm_msg_destroy(&reply);
}

static void s_client_timers(pm_bus_t *bus, int64_t now)
{
    if (!bus->pending || now < bus->next_deadline)
        return;
    //  Collect first: completing calls back into user code, which may add requests.
    size_t n = zhashx_size(bus->pending), k = 0;
    s_pending_t **due = n ? malloc(n * sizeof *due) : NULL;
    int64_t next = INT64_MAX;
    for (s_pending_t *p = zhashx_first(bus->pending); p; p = zhashx_next(bus->pending)) {
        if (p->deadline <= now && due)
            due[k++] = p;
        else if (p->deadline < next)
            next = p->deadline;
    }
    bus->next_deadline = next;
    for (size_t i = 0; i < k; i++) {
        s_pending_t *p = due[i];
        if (p->attempts < p->attempts_max) {
            pm_debug("bus: no reply for %s from '%s' in %d ms; resending (attempt %d of %d)",
                     p->rid, p->service, p->timeout_ms, p->attempts + 1, p->attempts_max);
            s_client_send(bus, p);
        } else
            s_give_up(bus, p);
    }
    free(due);
}

int pm_bus_call_async(pm_bus_t *bus, const char *service, const pm_msg_t *req, int timeout_ms,
                      int retries, pm_bus_reply_fn *fn, void *arg)
{
    s_pending_t *p = NULL;
    if (!bus->client) {
        pm_error("bus: '%s' has no request endpoint; set request-endpoint to call '%s'", bus->name,
                 service);
        return -1;
    }
    size_t slen = strlen(service);
    const char *rid = pm_msg_rid(req);
    if (slen == 0 || slen > PM_BUS_SERVICE_MAX || !rid || !*rid || strlen(rid) > PM_RID_MAX) {
        pm_error("bus: bad call (service '%s', rid '%s'): names are 1-%d bytes, rids 1-%d", service,
                 rid ? rid : "", PM_BUS_SERVICE_MAX, PM_RID_MAX);
        return -1;
    }
    if (zhashx_size(bus->pending) >= S_MAX_PENDING) {
        pm_bus_ratelog(&bus->ratelog,
                       "bus: %d requests already in flight; call to '%s' refused (wait for "
                       "replies before sending more)",
                       S_MAX_PENDING, service);
        return -1;
    }
    if (zhashx_lookup(bus->pending, rid)) {
        pm_error("bus: request %s is already in flight; make a new message per call", rid);
        return -1;
    }
    p = calloc(1, sizeof *p);
    if (!p)
        return -1;
    char err[256];
    if (pm_msg_encode(req, &p->body, &p->len, err, sizeof err) < 0) {
        pm_error("bus: cannot encode request for '%s': %s", service, err);
        free(p);
        return -1;
    }
    memcpy(p->service, service, slen + 1);
    memcpy(p->rid, rid, strlen(rid) + 1); //  checked above: at most PM_RID_MAX
    p->timeout_ms = timeout_ms > 0 ? timeout_ms : 3000;
    p->attempts_max = 1 + (retries > 0 ? retries : 0);
    p->started = zclock_mono();
    p->fn = fn;
    p->arg = arg;
    zhashx_insert(bus->pending, p->rid, p);
    bus->stats.requests++;
    s_client_send(bus, p);
    return 0;
}

pm_msg_t *pm_bus_call(pm_bus_t *bus, const char *service, const pm_msg_t *req, int timeout_ms,
                      int retries, char *err, size_t errlen)
{
    pm_msg_t *reply = NULL;
    bool done = false;
    char dummy[8];
    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof dummy;
    }
    *err = 0;
    if (pm_bus_call_async(bus, service, req, timeout_ms, retries, NULL, NULL) < 0) {
        snprintf(err, errlen, "could not send the request to '%s' (see the log)", service);
        return NULL;
    }
    s_pending_t *p = zhashx_lookup(bus->pending, pm_msg_rid(req));
    p->sink = &reply;
    p->done = &done;
    p->errbuf = err;
    p->errlen = errlen;
    while (!done) {
        if (pm_bus_run_once(bus, pm_bus_next_timeout(bus)) < 0) {
            //  Interrupted: forget the request (a late reply is dropped as a duplicate).
            p = zhashx_lookup(bus->pending, pm_msg_rid(req));
            if (p && p->done == &done) {
                zhashx_delete(bus->pending, pm_msg_rid(req));
                s_pending_free(&p);
            }
            snprintf(err, errlen, "interrupted while waiting for '%s'", service);
            return NULL;
        }
    }
    return reply;
}

/* ---- worker side ---- */

static void s_cache_unlink(s_worker_t *w, s_cached_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else if (w->oldest == c)
        w->oldest = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else if (w->newest == c)
        w->newest = c->prev;
    c->prev = c->next = NULL;
}

static void s_cached_free(s_cached_t *c)
{
    if (c->job)
        c->job->cached = NULL;
    free(c->reply);
    free(c);
}

//  The head of rid's chain in the index.
static s_cached_t **s_cache_chain(s_worker_t *w, const char *rid)
{
    return &w->index[pm_bus_key_hash(rid) & (S_CACHE_BUCKETS - 1)];
}

//  Where rid's entry is in the index: the link pointing at it, or at NULL
//  (the end of its chain) if there is none.
static s_cached_t **s_cache_link(s_worker_t *w, const char *rid)
{
    s_cached_t **pp = s_cache_chain(w, rid);
    while (*pp && strcmp((*pp)->rid, rid) != 0)
        pp = &(*pp)->hnext;
    return pp;
}

static void s_cache_put(s_worker_t *w, s_cached_t *c)
{
    s_cached_t **pp = s_cache_chain(w, c->rid);
    c->hnext = *pp;
    *pp = c;
}

//  Take rid's entry out of the index and free it (nothing if absent).
static void s_cache_delete(s_worker_t *w, const char *rid)
{
    s_cached_t **pp = s_cache_link(w, rid), *c = *pp;
    if (c) {
        *pp = c->hnext;
        s_cached_free(c);
    }
}

static void s_cache_destroy(s_worker_t *w)
{
    for (size_t i = 0; w->index && i < S_CACHE_BUCKETS; i++)
        while (w->index[i]) {
            s_cached_t *c = w->index[i];
            w->index[i] = c->hnext;
            s_cached_free(c);
        }
    free(w->index);
    w->index = NULL;
}

static void s_cache_evict(s_worker_t *w, int64_t now)
{
    while (w->oldest && (w->cache_count > S_CACHE_MAX_COUNT || w->cache_bytes > S_CACHE_MAX_BYTES ||
                         now - w->oldest->done_at > S_CACHE_TTL_MS)) {
        s_cached_t *c = w->oldest;
        s_cache_unlink(w, c);
        w->cache_count--;
        w->cache_bytes -= c->len;
        s_cache_delete(w, c->rid);
    }
}

static int s_worker_send(s_worker_t *w, const void *const *data, const size_t *len, int n)
{
    if (!w->sock)
        return -1;
    int rc = pm_bus_sock_sendv(&w->zs, data, len, n);
    if (rc < 0)
        pm_bus_ratelog(&w->bus->ratelog,
                       "bus: cannot send to the broker for '%s' (%s); the "
                       "client will retry",
                       w->service, zmq_strerror(errno));
    return rc;
}

static void s_worker_command(s_worker_t *w, uint8_t cmd)
{
    const void *data[2] = {PM_BUS_WORKER_HDR, &cmd};
    size_t len[2] = {PM_BUS_HDR_LEN, 1};
    s_worker_send(w, data, len, 2);
}

//  (Re-)register: READY on the worker's socket. The socket lives as long as
//  the bus, so the descriptors from pm_bus_fds stay valid: libzmq reconnects
//  it by itself (ZMTP heartbeats catch half-open TCP), and a restarted broker
//  answers our next heartbeat with DISCONNECT, which brings us here.
static void s_worker_ready(s_worker_t *w)
{
    pm_bus_t *bus = w->bus;
    char cap[16], hb[16];
    snprintf(cap, sizeof cap, "%d", bus->capacity);
    snprintf(hb, sizeof hb, "%d", bus->heartbeat_ms);
    uint8_t cmd = PM_BUS_READY;
    const void *data[5] = {PM_BUS_WORKER_HDR, &cmd, w->service, cap, hb};
    size_t len[5] = {PM_BUS_HDR_LEN, 1, strlen(w->service), strlen(cap), strlen(hb)};
    s_worker_send(w, data, len, 5);
    int64_t now = zclock_mono();
    w->broker_expiry = now + (int64_t)bus->heartbeat_ms * PM_BUS_LIVENESS;
    w->heartbeat_at = now + bus->heartbeat_ms;
}

static void s_job_unlink(pm_bus_job_t *job)
{
    pm_bus_t *bus = job->bus;
    if (!bus)
        return;
    if (job->prev)
        job->prev->next = job->next;
    else if (bus->jobs == job)
        bus->jobs = job->next;
    if (job->next)
        job->next->prev = job->prev;
    job->prev = job->next = NULL;
}

static void s_job_free(pm_bus_job_t **jobp)
{
    pm_bus_job_t *job = *jobp;
    if (!job)
        return;
    s_job_unlink(job);
    if (job->cached)
        job->cached->job = NULL;
    pm_msg_destroy(&job->msg);
    free(job);
    *jobp = NULL;
}

static void s_worker_reply_bytes(s_worker_t *w, const uint8_t *client, size_t client_len,
                                 const char *rid, const uint8_t *body, size_t len)
{
    uint8_t cmd = PM_BUS_REPLY;
    const void *data[5] = {PM_BUS_WORKER_HDR, &cmd, client, rid, body};
    size_t lens[5] = {PM_BUS_HDR_LEN, 1, client_len, strlen(rid), len};
    s_worker_send(w, data, lens, 5);
}

//  An `error` reply built by the library (bad_request, internal).
static int s_error_bytes(const char *rid, const char *code, const char *message, uint8_t **out,
                         size_t *len)
{
    int rc = -1;
    char err[128];
    pm_msg_t *m = pm_msg_new(PM_MSG_ERROR);
    if (!m || pm_msg_set_rid(m, rid) < 0 || pm_msg_set_str(m, "code", code) < 0 ||
        pm_msg_set_str(m, "message", message) < 0)
        goto out;
    rc = pm_msg_encode(m, out, len, err, sizeof err);
out:
    pm_msg_destroy(&m);
    return rc;
}

static void s_worker_request(s_worker_t *w, zmq_msg_t *f)
{
    pm_bus_t *bus = w->bus;
    char rid[PM_RID_MAX + 1];
    size_t client_len = zmq_msg_size(&f[2]);
    if (client_len == 0 || client_len > 255 || pm_bus_frame_str(&f[3], rid, sizeof rid) < 0) {
        bus->stats.bad_frames++;
        pm_bus_ratelog(&bus->ratelog, "bus: malformed request for '%s' from the broker; dropped",
                       w->service);
        return;
    }
    const uint8_t *client = zmq_msg_data(&f[2]);
    s_cached_t *c = *s_cache_link(w, rid);
    if (c) {
        bus->stats.retried_jobs++;
        if (c->job) {
            //  Still being handled: answer the latest copy's client (its route
            //  may have changed if the broker restarted), once.
            memcpy(c->job->client, client, client_len);
            c->job->client_len = client_len;
            pm_debug("bus: retry of %s while in progress; dropped", rid);
        } else {
            pm_debug("bus: retry of %s answered from the reply cache", rid);
            s_worker_reply_bytes(w, client, client_len, rid, c->reply, c->len);
        }
        return;
    }
    pm_msg_t *msg = NULL;
    char err[256];
    if (pm_msg_decode(zmq_msg_data(&f[4]), zmq_msg_size(&f[4]), &msg, err, sizeof err) < 0) {
        bus->stats.bad_frames++;
        pm_bus_ratelog(&bus->ratelog,
                       "bus: undecodable request %s for '%s': %s; answered "
                       "bad_request",
                       rid, w->service, err);
        char text[512];
        snprintf(text, sizeof text,
                 "service '%s' could not decode the request: %s (is the caller the same "
                 "PicoMDM version?)",
                 w->service, err);
        uint8_t *body = NULL;
        size_t len = 0;
        if (s_error_bytes(rid, "bad_request", text, &body, &len) == 0)
            s_worker_reply_bytes(w, client, client_len, rid, body, len);
        free(body);
        return;
    }
    pm_bus_job_t *job = calloc(1, sizeof *job);
    c = calloc(1, sizeof *c);
    if (!job || !c) {
        free(job);
        free(c);
        pm_msg_destroy(&msg);
        return; //  the client retries
    }
    size_t ridlen = zmq_msg_size(&f[3]); //  pm_bus_frame_str: < sizeof rid
    memcpy(c->rid, rid, ridlen + 1);
    c->job = job;
    s_cache_put(w, c);
    job->worker = w;
    job->bus = bus;
    memcpy(job->client, client, client_len);
    job->client_len = client_len;
    memcpy(job->rid, rid, ridlen + 1);
    job->msg = msg;
    job->cached = c;
    job->next = bus->jobs;
    if (bus->jobs)
        bus->jobs->prev = job;
    bus->jobs = job;
    bus->stats.jobs++;
    w->fn(w->arg, job);
}

static void s_worker_input(s_worker_t *w, zmq_msg_t *f, int n, int total)
{
    pm_bus_t *bus = w->bus;
    int64_t now = zclock_mono();
    if (n < 2 || !pm_bus_frame_is(&f[0], PM_BUS_WORKER_HDR) || zmq_msg_size(&f[1]) != 1) {
        bus->stats.bad_frames++;
        pm_bus_ratelog(&bus->ratelog,
                       "bus: malformed message from the broker to '%s' (%d "
                       "frames); dropped",
                       w->service, total);
        return;
    }
    w->broker_expiry = now + (int64_t)bus->heartbeat_ms * PM_BUS_LIVENESS;
    if (w->silent) {
        pm_info("bus: broker at %s is back for '%s'", bus->request_endpoint, w->service);
        w->silent = false;
    }
    uint8_t cmd = *(uint8_t *)zmq_msg_data(&f[1]);
    if (cmd == PM_BUS_REQUEST && total == 5)
        s_worker_request(w, f);
    else if (cmd == PM_BUS_HEARTBEAT && total == 2)
        ;
    else if (cmd == PM_BUS_DISCONNECT && total == 2) {
        pm_info("bus: broker asked '%s' to register again; sending READY", w->service);
        s_worker_ready(w);
    } else {
        bus->stats.bad_frames++;
        pm_bus_ratelog(&bus->ratelog,
                       "bus: unknown command 0x%02x (%d frames) from the broker "
                       "to '%s'; dropped",
                       cmd, total, w->service);
    }
}

static void s_worker_timers(s_worker_t *w, int64_t now)
{
    if (!w->sock) //  pm_bus_unserve
        return;
    if (now >= w->broker_expiry) {
        //  A CURVE mismatch looks exactly like a broker that is down (ZAP
        //  refusals are silent), so the hint names both.
        if (!w->silent)
            pm_warn("bus: broker at %s silent for %d heartbeats; '%s' keeps trying to "
                    "register (is picomdm-broker running? %s)",
                    w->bus->request_endpoint, PM_BUS_LIVENESS, w->service,
                    w->bus->server_key ? "is our curve-cert's public key in its curve-allow "
                                         "directory, and server-key its key?"
                                       : "if it uses CURVE (curve-secret), set server-key and "
                                         "curve-cert");
        w->silent = true;
        s_worker_ready(w);
    }
    if (now >= w->heartbeat_at) {
        s_worker_command(w, PM_BUS_HEARTBEAT);
        w->heartbeat_at = now + w->bus->heartbeat_ms;
    }
    s_cache_evict(w, now);
}

int pm_bus_serve(pm_bus_t *bus, const char *service, pm_bus_job_fn *fn, void *arg)
{
    size_t slen = strlen(service);
    if (!bus->request_endpoint || !fn || slen == 0 || slen > PM_BUS_SERVICE_MAX) {
        pm_error("bus: cannot serve '%s': needs a request endpoint, a handler and a 1-%d byte "
                 "name",
                 service, PM_BUS_SERVICE_MAX);
        return -1;
    }
    if (bus->nworkers == S_MAX_SERVICES) {
        pm_error("bus: '%s' already serves %d services; use another pm_bus_t", bus->name,
                 S_MAX_SERVICES);
        return -1;
    }
    s_worker_t *w = calloc(1, sizeof *w);
    if (!w)
        return -1;
    w->bus = bus;
    memcpy(w->service, service, slen + 1);
    w->fn = fn;
    w->arg = arg;
    w->index = calloc(S_CACHE_BUCKETS, sizeof *w->index);
    w->sock = w->index ? s_socket(bus, ZMQ_DEALER, bus->request_endpoint) : NULL;
    if (!w->sock) {
        s_cache_destroy(w);
        free(w);
        return -1;
    }
    pm_bus_sock_init(&w->zs, zsock_resolve(w->sock));
    s_worker_ready(w);
    bus->workers[bus->nworkers++] = w;
    pm_info("bus: serving '%s' via %s (capacity %d)", service, bus->request_endpoint,
            bus->capacity);
    return 0;
}

void pm_bus_unserve(pm_bus_t *bus)
{
    if (!bus)
        return;
    for (int i = 0; i < bus->nworkers; i++) {
        s_worker_t *w = bus->workers[i];
        if (!w->sock)
            continue;
        //  what is queued (replies) goes first, then DISCONNECT, within the linger
        zsock_set_linger(w->sock, 100);
        s_worker_command(w, PM_BUS_DISCONNECT);
        zsock_destroy(&w->sock);
        pm_bus_sock_init(&w->zs, NULL);
    }
}

const pm_msg_t *pm_bus_job_msg(const pm_bus_job_t *job)
{
    return job->msg;
}

//  Remember a finished reply for retries of the same rid.
static void s_cache_done(pm_bus_job_t *job, uint8_t *body, size_t len)
{
    s_worker_t *w = job->worker;
    s_cached_t *c = job->cached;
    if (!c) {
        free(body);
        return;
    }
    c->job = NULL;
    job->cached = NULL;
    c->reply = body;
    c->len = len;
    c->done_at = zclock_mono();
    c->prev = w->newest;
    if (w->newest)
        w->newest->next = c;
    else
        w->oldest = c;
    w->newest = c;
    w->cache_count++;
    w->cache_bytes += len;
    s_cache_evict(w, c->done_at);
}

int pm_bus_job_reply(pm_bus_job_t **jobp, const pm_msg_t *reply)
{
    pm_bus_job_t *job = jobp ? *jobp : NULL;
    if (!job)
        return -1;
    int rc = 0;
    uint8_t *body = NULL;
    size_t len = 0;
    char err[256];
    if (!job->worker)
        goto out; //  the bus is gone
    if (pm_msg_encode(reply, &body, &len, err, sizeof err) < 0) {
        pm_error("bus: reply to %s for '%s' cannot be encoded: %s; sent `error` internal", job->rid,
                 job->worker->service, err);
        rc = -1;
        char text[512];
        snprintf(text, sizeof text,
                 "service '%s' failed to encode its reply: %s (a bug: report it)",
                 job->worker->service, err);
        if (s_error_bytes(job->rid, "internal", text, &body, &len) < 0)
            goto out;
    }
    s_worker_reply_bytes(job->worker, job->client, job->client_len, job->rid, body, len);
    s_cache_done(job, body, len);
    body = NULL;
out:
    free(body);
    s_job_free(jobp);
    return rc;
}

void pm_bus_job_drop(pm_bus_job_t **jobp)
{
    pm_bus_job_t *job = jobp ? *jobp : NULL;
    if (!job)
        return;
    s_worker_t *w = job->worker;
    if (w) {
        //  Tell the broker the slot is free; forget the rid so a retry is handled afresh.
        uint8_t cmd = PM_BUS_DROPPED;
        const void *data[4] = {PM_BUS_WORKER_HDR, &cmd, job->client, job->rid};
        size_t len[4] = {PM_BUS_HDR_LEN, 1, job->client_len, strlen(job->rid)};
        s_worker_send(w, data, len, 4);
        if (job->cached) {
            job->cached->job = NULL;
            job->cached = NULL;
            s_cache_delete(w, job->rid);
        }
    }
    s_job_free(jobp);
}

/* ---- events ---- */

//  Messages of the event plane: those the table gives the service "event"
//  (`event`, and `stats`, which the store does not log). Subscribers check the type.
static bool s_is_event_type(pm_msg_type_t t)
{
    const pm_msgdef_t *d = pm_msgdef(t);
    return d && d->service && strcmp(d->service, "event") == 0;
}

int pm_bus_publish(pm_bus_t *bus, const pm_msg_t *event)
{
    if (!bus->pub) {
        pm_error("bus: '%s' has no publish endpoint; set publish-endpoint to publish events",
                 bus->name);
        return -1;
    }
    const char *topic = pm_msg_str(event, "name");
    if (!s_is_event_type(pm_msg_type(event)) || !topic || !*topic) {
        pm_error("bus: only event-plane messages (`event`, `stats`) with a name can be published");
        return -1;
    }
    uint8_t *body = NULL;
    size_t len = 0;
    char err[256];
    if (pm_msg_encode(event, &body, &len, err, sizeof err) < 0) {
        pm_error("bus: cannot encode event '%s': %s", topic, err);
        return -1;
    }
    const void *data[2] = {topic, body};
    size_t lens[2] = {strlen(topic), len};
    int rc = pm_bus_sendv(zsock_resolve(bus->pub), data, lens, 2);
    if (rc < 0)
        pm_bus_ratelog(&bus->ratelog, "bus: event '%s' not published (%s)", topic,
                       zmq_strerror(errno));
    else
        bus->stats.published++;
    free(body);
    return rc;
}

/* ---- events from their fields (pm_bus_publish_event) ---- */

//  The `event` table entry has the fields this encoder writes, in this
//  order and with these types. Checked once; if the table ever changes,
//  pm_bus_publish_event falls back to a pm_msg_t (slower, still right) and
//  the unit test test_publish_event_bytes fails, so the encoder gets updated.
static bool s_event_layout_ok(void)
{
    static _Atomic int known; //  0 = not checked yet, 1 = matches, -1 = does not (any thread)
    if (known == 0) {
        static const struct {
            const char *name;
            pm_ftype_t type;
        } want[] = {{"name", PM_T_STR},
                    {"seq", PM_T_UINT},
                    {"eid", PM_T_STR},
                    {"source", PM_T_STR},
                    {"data", PM_T_MAP}};
        const pm_msgdef_t *d = pm_msgdef(PM_MSG_EVENT);
        bool ok = d && d->nfields == (int)(sizeof want / sizeof want[0]);
        for (int i = 0; ok && i < d->nfields; i++)
            ok = strcmp(d->fields[i].name, want[i].name) == 0 &&
                 d->fields[i].type == want[i].type && d->fields[i].required == (i == 0);
        known = ok ? 1 : -1;
    }
    return known == 1;
}

//  A topic subscribers accept (s_event_input: 1-255 bytes, no control characters).
static bool s_topic_ok(const char *t)
{
    size_t n = 0;
    for (; t && t[n]; n++)
        if ((unsigned char)t[n] < 0x20 || t[n] == 0x7f)
            return false;
    return n > 0 && n < 256;
}

static int s_pk_str(msgpack_packer *pk, const char *s)
{
    return msgpack_pack_str_with_body(pk, s, strlen(s));
}

int pm_bus_event_encode(const pm_bus_event_t *ev, const char *rid, uint64_t ts,
                        msgpack_sbuffer *out, char *err, size_t errlen)
{
    const pm_msgdef_t *d = pm_msgdef(PM_MSG_EVENT);
    msgpack_sbuffer_clear(out);
    if (!s_event_layout_ok()) {
        snprintf(err, errlen,
                 "event: the table's `event` fields changed; update "
                 "pm_bus_event_encode (proto/pm_bus.c)");
        return -1;
    }
    if (!ev || !s_topic_ok(ev->name)) {
        snprintf(err, errlen, "event: the name must be 1-255 bytes without control characters");
        return -1;
    }
    size_t ridlen = rid ? strlen(rid) : 0;
    bool rid_ok = ridlen > 0 && ridlen <= PM_RID_MAX;
    for (size_t i = 0; rid_ok && i < ridlen; i++)
        rid_ok = rid[i] > 0x20 && rid[i] < 0x7f;
    if (!rid_ok) {
        snprintf(err, errlen, "event %s: bad request id", ev->name);
        return -1;
    }
    bool has_data = ev->data && ev->len;
    if (has_data) {
        //  what pm_msg_set_packed and the decoder ask of a map field: one
        //  map, nothing after it, within the limits at its depth (2 under
        //  the envelope and the body)
        char why[200];
        pm_mpck_limits_t lim = {PM_MSG_MAX_DEPTH - 2, PM_MSG_MAX_ELEMENTS - 16};
        uint8_t b = ev->data[0];
        if (b != 0xde && b != 0xdf && (b & 0xf0) != 0x80) {
            snprintf(err, errlen, "event %s: data is not a msgpack map (first byte 0x%02x)",
                     ev->name, b);
            return -1;
        }
        if (ev->len > PM_MSG_MAX_BYTES - 1024 ||
            pm_mpck_check(ev->data, ev->len, &lim, true, NULL, why, sizeof why) < 0) {
            snprintf(err, errlen, "event %s: bad data: %s", ev->name,
                     ev->len > PM_MSG_MAX_BYTES - 1024 ? "too large" : why);
            return -1;
        }
    }
    const char *vals[5] = {ev->name, NULL, ev->eid, ev->source, NULL};
    bool present[5] = {true, ev->has_seq, ev->eid != NULL, ev->source != NULL, has_data};
    uint32_t nbody = 0;
    for (int i = 0; i < 5; i++)
        nbody += present[i];
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    //  the envelope, as pm_msg_encode writes it
    int r = msgpack_pack_map(&pk, 5);
    r |= msgpack_pack_str_with_body(&pk, "v", 1) | msgpack_pack_uint64(&pk, PM_PROTO_VERSION);
    r |= msgpack_pack_str_with_body(&pk, "type", 4) | s_pk_str(&pk, d->name);
    r |= msgpack_pack_str_with_body(&pk, "rid", 3) | msgpack_pack_str_with_body(&pk, rid, ridlen);
    r |= msgpack_pack_str_with_body(&pk, "ts", 2) | msgpack_pack_uint64(&pk, ts);
    r |= msgpack_pack_str_with_body(&pk, "body", 4) | msgpack_pack_map(&pk, nbody);
    for (int i = 0; i < 5 && r == 0; i++) {
        if (!present[i])
            continue;
        r |= s_pk_str(&pk, d->fields[i].name);
        if (i == 1)
            r |= msgpack_pack_uint64(&pk, ev->seq);
        else if (i == 4)
            r |= msgpack_sbuffer_write(out, (const char *)ev->data, ev->len);
        else
            r |= s_pk_str(&pk, vals[i]);
    }
    if (r != 0 || out->size > PM_MSG_MAX_BYTES) {
        snprintf(err, errlen, "event %s: larger than %u bytes or out of memory", ev->name,
                 PM_MSG_MAX_BYTES);
        msgpack_sbuffer_clear(out);
        return -1;
    }
    return 0;
}

//  The slow way, for a table this encoder does not know: a pm_msg_t.
static int s_publish_event_msg(pm_bus_t *bus, const pm_bus_event_t *ev)
{
    pm_msg_t *m = pm_msg_new(PM_MSG_EVENT);
    int rc = -1;
    if (!m || pm_msg_set_str(m, "name", ev->name) < 0 ||
        (ev->has_seq && pm_msg_set_uint(m, "seq", ev->seq) < 0) ||
        (ev->eid && pm_msg_set_str(m, "eid", ev->eid) < 0) ||
        (ev->source && pm_msg_set_str(m, "source", ev->source) < 0) ||
        (ev->data && ev->len && pm_msg_set_packed(m, "data", ev->data, ev->len) < 0))
        pm_bus_ratelog(&bus->ratelog, "bus: event '%s' has invalid fields; not published",
                       ev->name);
    else
        rc = pm_bus_publish(bus, m);
    pm_msg_destroy(&m);
    return rc;
}

//  A fresh request id for an event: 16 hex digits fixed per bus (taken
//  from a pm_msg request id, so random per process) and 16 of a counter.
static void s_event_rid(pm_bus_t *bus, char out[33])
{
    static const char hex[] = "0123456789abcdef";
    if (!bus->ev_prefix[0]) {
        pm_msg_t *m = pm_msg_new(PM_MSG_OK);
        //  the second half: the mixed counter, not the thread's prefix
        //  that the process's own request ids begin with
        const char *r = m ? pm_msg_rid(m) : "0123456789abcdef0123456789abcdef";
        memcpy(bus->ev_prefix, r + 16, 16);
        bus->ev_prefix[16] = '\0';
        pm_msg_destroy(&m);
    }
    uint64_t n = ++bus->ev_count;
    memcpy(out, bus->ev_prefix, 16);
    for (int i = 0; i < 16; i++)
        out[16 + i] = hex[(n >> (60 - 4 * i)) & 0xf];
    out[32] = '\0';
}

int pm_bus_publish_event(pm_bus_t *bus, const pm_bus_event_t *ev)
{
    if (!bus->pub) {
        pm_error("bus: '%s' has no publish endpoint; set publish-endpoint to publish events",
                 bus->name);
        return -1;
    }
    if (!ev || !s_topic_ok(ev->name)) {
        pm_bus_ratelog(&bus->ratelog, "bus: an event needs a name of 1-255 bytes without "
                                      "control characters; not published");
        return -1;
    }
    if (!s_event_layout_ok())
        return s_publish_event_msg(bus, ev);
    char rid[33], err[256];
    s_event_rid(bus, rid);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    uint64_t ts = (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
    if (pm_bus_event_encode(ev, rid, ts, &bus->evbuf, err, sizeof err) < 0) {
        pm_bus_ratelog(&bus->ratelog, "bus: %s; not published", err);
        return -1;
    }
    const void *data[2] = {ev->name, bus->evbuf.data};
    size_t lens[2] = {strlen(ev->name), bus->evbuf.size};
    int rc = pm_bus_sendv(zsock_resolve(bus->pub), data, lens, 2);
    if (rc < 0)
        pm_bus_ratelog(&bus->ratelog, "bus: event '%s' not published (%s)", ev->name,
                       zmq_strerror(errno));
    else
        bus->stats.published++;
    //  do not keep a big event's buffer for ever
    if (bus->evbuf.alloc > (1u << 20)) {
        msgpack_sbuffer_destroy(&bus->evbuf);
        msgpack_sbuffer_init(&bus->evbuf);
    }
    return rc;
}

int pm_bus_subscribe(pm_bus_t *bus, const char *prefix, pm_bus_event_fn *fn, void *arg)
{
    if (!bus->sub || !fn || bus->nsubs == S_MAX_SUBS) {
        pm_error("bus: cannot subscribe to '%s': %s", prefix,
                 !bus->sub ? "no subscribe endpoint configured" : "too many subscriptions");
        return -1;
    }
    char *copy = strdup(prefix);
    if (!copy)
        return -1;
    bus->subs[bus->nsubs++] = (s_sub_t){copy, fn, arg};
    zsock_set_subscribe(bus->sub, prefix);
    bus->zsub.armed = false; //  to be safe: ask ZMQ_EVENTS before sleeping on it
    return 0;
}

static void s_event_input(pm_bus_t *bus, zmq_msg_t *f, int n, int total)
{
    char topic[256];
    if (total != 2 || n != 2 || pm_bus_frame_str(&f[0], topic, sizeof topic) < 0) {
        bus->stats.bad_frames++;
        pm_bus_ratelog(&bus->ratelog, "bus: malformed event (%d frames); dropped", total);
        return;
    }
    pm_msg_t *event = NULL;
    char err[256];
    if (pm_msg_decode(zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), &event, err, sizeof err) < 0 ||
        !s_is_event_type(pm_msg_type(event))) {
        bus->stats.bad_frames++;
        pm_bus_ratelog(&bus->ratelog, "bus: undecodable event '%s': %s; dropped", topic,
                       event ? "not an `event` message" : err);
        pm_msg_destroy(&event);
        return;
    }
    bus->stats.events++;
    for (int i = 0; i < bus->nsubs; i++)
        if (strncmp(topic, bus->subs[i].prefix, strlen(bus->subs[i].prefix)) == 0)
            bus->subs[i].fn(bus->subs[i].arg, topic, event);
    pm_msg_destroy(&event);
}

/* ---- driving ---- */

typedef enum { S_CLIENT, S_WORKER, S_SUB } s_kind_t;

//  Drain one socket (bounded), only when pm_bus_poll said input may wait
//  there or it is disarmed: an empty receive costs libzmq two syscalls.
//  Returns messages handled.
static int s_drain(pm_bus_t *bus, pm_bus_sock_t *zs, s_kind_t kind, s_worker_t *w)
{
    zmq_msg_t f[PM_BUS_MAX_FRAMES];
    int handled = 0, n, total;
    if (!zs->handle || (!zs->ready && zs->armed))
        return 0;
    while (handled < PM_BUS_BATCH) {
        if (pm_bus_sock_recv(zs, f, PM_BUS_MAX_FRAMES, &n, &total) < 0)
            return handled;
        handled++;
        if (kind == S_CLIENT)
            s_client_reply(bus, f, n, total);
        else if (kind == S_WORKER)
            s_worker_input(w, f, n, total);
        else
            s_event_input(bus, f, n, total);
        pm_bus_frames_close(f, n);
    }
    bus->more = true;
    return handled;
}

//  The sockets that take input, for pm_bus_poll. Returns the count.
static int s_socks(pm_bus_t *bus, pm_bus_sock_t **socks)
{
    int n = 0;
    if (bus->client)
        socks[n++] = &bus->zclient;
    for (int i = 0; i < bus->nworkers; i++)
        if (bus->workers[i]->sock)
            socks[n++] = &bus->workers[i]->zs;
    if (bus->sub)
        socks[n++] = &bus->zsub;
    return n;
}

//  After pm_bus_poll: drain what is ready, run the timers.
static int s_process(pm_bus_t *bus, pm_bus_sock_t **socks, int nsocks)
{
    int handled = 0;
    bus->more = false;
    if (bus->client)
        handled += s_drain(bus, &bus->zclient, S_CLIENT, NULL);
    for (int i = 0; i < bus->nworkers; i++)
        handled += s_drain(bus, &bus->workers[i]->zs, S_WORKER, bus->workers[i]);
    if (bus->sub)
        handled += s_drain(bus, &bus->zsub, S_SUB, NULL);
    int64_t now = zclock_mono();
    s_client_timers(bus, now);
    for (int i = 0; i < bus->nworkers; i++)
        s_worker_timers(bus->workers[i], now);
    //  ZMQ_FD is edge-triggered and a send (a resend, a heartbeat, a reply
    //  from a callback) can consume the edge while input waits: ask the
    //  sockets that sent since their last empty receive (only those) whether
    //  anything is readable now, and if so be called again at once
    //  (next_timeout 0).
    for (int i = 0; i < nsocks; i++) {
        pm_bus_sock_t *zs = socks[i];
        if (zs->armed)
            continue;
        uint32_t ev = 0;
        size_t size = sizeof ev;
        if (zmq_getsockopt(zs->handle, ZMQ_EVENTS, &ev, &size) < 0 || (ev & ZMQ_POLLIN))
            bus->more = true;
        else
            zs->armed = true;
    }
    return handled;
}

int pm_bus_process(pm_bus_t *bus)
{
    pm_bus_sock_t *socks[S_MAX_SERVICES + 2];
    int n = s_socks(bus, socks);
    pm_bus_poll(socks, n, 0); //  which sockets have input (one poll() for all)
    return s_process(bus, socks, n);
}

//  No poll(): the caller's loop already waited on the descriptors and says
//  which fired. A disarmed socket needs no ZMQ_EVENTS first either: s_drain
//  receives from it (an empty receive costs libzmq the same mailbox check
//  and arms it). Saves the poll() per call that pm_bus_poll makes, i.e. one
//  per request sent and one per reply in a gateway whose requests come one
//  at a time (docs/gateway.md, "Session 9").
int pm_bus_process_ready(pm_bus_t *bus, const int *fds, int nfds)
{
    pm_bus_sock_t *socks[S_MAX_SERVICES + 2];
    int n = s_socks(bus, socks);
    for (int i = 0; i < n; i++) {
        socks[i]->ready = false;
        for (int k = 0; k < nfds; k++)
            if (fds[k] >= 0 && fds[k] == socks[i]->fd)
                socks[i]->ready = true;
    }
    return s_process(bus, socks, n);
}

int pm_bus_run_once(pm_bus_t *bus, int timeout_ms)
{
    pm_bus_sock_t *socks[S_MAX_SERVICES + 2];
    int n = s_socks(bus, socks);
    int next = pm_bus_next_timeout(bus);
    if (timeout_ms < 0 || next < timeout_ms)
        timeout_ms = next;
    if (pm_bus_poll(socks, n, timeout_ms) < 0 && errno != EINTR)
        pm_bus_ratelog(&bus->ratelog, "bus: poll failed: %s", zmq_strerror(errno));
    if (zsys_interrupted)
        return -1;
    return s_process(bus, socks, n);
}

int pm_bus_fds(const pm_bus_t *bus, int *fds, int max)
{
    int n = 0;
    zsock_t *socks[S_MAX_SERVICES + 3];
    int k = 0;
    if (bus->client)
        socks[k++] = bus->client;
    for (int i = 0; i < bus->nworkers; i++)
        if (bus->workers[i]->sock)
            socks[k++] = bus->workers[i]->sock;
    if (bus->sub)
        socks[k++] = bus->sub;
    for (int i = 0; i < k && n < max; i++)
        fds[n++] = zsock_fd(socks[i]);
    return n;
}

int pm_bus_next_timeout(const pm_bus_t *bus)
{
    if (bus->more)
        return 0;
    int64_t now = zclock_mono();
    int64_t next = now + 1000; //  at least once a second (cache eviction, log windows)
    if (bus->pending && zhashx_size(bus->pending) && bus->next_deadline < next)
        next = bus->next_deadline;
    for (int i = 0; i < bus->nworkers; i++) {
        if (bus->workers[i]->heartbeat_at < next)
            next = bus->workers[i]->heartbeat_at;
        if (bus->workers[i]->broker_expiry < next)
            next = bus->workers[i]->broker_expiry;
    }
    return next <= now ? 0 : (int)(next - now);
}

void pm_bus_stats(const pm_bus_t *bus, pm_bus_stats_t *stats)
{
    *stats = bus->stats;
}

/* ---- life cycle ---- */

static char *s_dup(const char *s)
{
    return s && *s ? strdup(s) : NULL;
}

pm_bus_t *pm_bus_new(const pm_bus_config_t *cfg)
{
    pm_bus_t *bus = calloc(1, sizeof *bus);
    if (!bus)
        return NULL;
    zsys_init();
    bus->name = strdup(cfg->name ? cfg->name : "picomdm");
    bus->request_endpoint = s_dup(cfg->request_endpoint);
    bus->publish_endpoint = s_dup(cfg->publish_endpoint);
    bus->subscribe_endpoint = s_dup(cfg->subscribe_endpoint);
    bus->heartbeat_ms = cfg->heartbeat_ms > 0 ? cfg->heartbeat_ms : 1000;
    bus->capacity = cfg->capacity > 0 ? cfg->capacity : 256;
    bus->next_deadline = INT64_MAX;
    bus->pending = zhashx_new();
    s_borrow_keys(bus->pending);
    msgpack_sbuffer_init(&bus->evbuf);
    if (cfg->server_public_key && *cfg->server_public_key) {
        if (strlen(cfg->server_public_key) != 40) {
            pm_error("bus: the broker's public key must be 40 Z85 characters (the public-key "
                     "line of the broker certificate)");
            goto fail;
        }
        if (!cfg->cert_file || !(bus->cert = zcert_load(cfg->cert_file))) {
            pm_error("bus: cannot load our CURVE certificate '%s' (make one with "
                     "picomdm-broker --keygen DIR/NAME, copy DIR/NAME to the broker's "
                     "curve-allow directory)",
                     cfg->cert_file ? cfg->cert_file : "(cert-file not set)");
            goto fail;
        }
        bus->server_key = strdup(cfg->server_public_key);
    }
    if (bus->request_endpoint && !(bus->client = s_socket(bus, ZMQ_DEALER, bus->request_endpoint)))
        goto fail;
    if (bus->client)
        pm_bus_sock_init(&bus->zclient, zsock_resolve(bus->client));
    if (bus->publish_endpoint && !(bus->pub = s_socket(bus, ZMQ_PUB, bus->publish_endpoint)))
        goto fail;
    if (bus->subscribe_endpoint && !(bus->sub = s_socket(bus, ZMQ_SUB, bus->subscribe_endpoint)))
        goto fail;
    if (bus->sub)
        pm_bus_sock_init(&bus->zsub, zsock_resolve(bus->sub));
    return bus;
fail:
    pm_bus_destroy(&bus);
    return NULL;
}

void pm_bus_destroy(pm_bus_t **busp)
{
    if (!busp || !*busp)
        return;
    pm_bus_t *bus = *busp;
    //  Jobs still held by handlers become inert: replying to them only frees them.
    for (pm_bus_job_t *j = bus->jobs; j;) {
        pm_bus_job_t *next = j->next;
        j->worker = NULL;
        j->bus = NULL;
        j->cached = NULL;
        j->prev = j->next = NULL;
        j = next;
    }
    for (int i = 0; i < bus->nworkers; i++) {
        s_worker_t *w = bus->workers[i];
        if (w->sock) {
            //  A courtesy so the broker frees our slot at once (it would notice
            //  the missing heartbeats anyway); the only message given a linger.
            zsock_set_linger(w->sock, 100);
            s_worker_command(w, PM_BUS_DISCONNECT);
        }
        zsock_destroy(&w->sock);
        s_cache_destroy(w);
        free(w);
    }
    if (bus->pending)
        for (s_pending_t *p = zhashx_first(bus->pending); p; p = zhashx_next(bus->pending))
            free(p->body), free(p);
    zhashx_destroy(&bus->pending);
    zsock_destroy(&bus->client);
    zsock_destroy(&bus->pub);
    msgpack_sbuffer_destroy(&bus->evbuf);
    zsock_destroy(&bus->sub);
    for (int i = 0; i < bus->nsubs; i++)
        free(bus->subs[i].prefix);
    zcert_destroy(&bus->cert);
    free(bus->name);
    free(bus->request_endpoint);
    free(bus->publish_endpoint);
    free(bus->subscribe_endpoint);
    free(bus->server_key);
    free(bus);
    *busp = NULL;
}
