/*  gw_enroll — SCEP and enrollment-profile routes of picomdm-gateway, relayed
 *  to the bus service "ca" (see gw_enroll.h and docs/enrollment.md).
 */
#include "gw_enroll.h"
#include "gw_http.h"
#include "pm_log.h"
#include "pm_msg.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <msgpack.h>
#include <sys/queue.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef enum { R_SCEP = 1, R_PROFILE, R_TOKEN } s_route_t;
typedef enum { A_NONE = 0, A_BASIC, A_TOKEN } s_auth_t;

typedef struct s_req s_req_t;
struct s_req {
    gw_pending_t p; //  first: the list of live requests is walked as s_req_t
    gw_enroll_t *owner;
    s_route_t route;
    char what[48];
    char remote[64];
    char hash[65];                //  R_TOKEN / R_PROFILE after a token: SHA-256 of the token, hex
    char use_rid[PM_RID_MAX + 1]; //  the rid of our enroll_token.use (what a release undoes)
    char path[64];                //  for the refusal event
    bool released;                //  the token consumed for this request was given back
    int cache_slot;               //  R_SCEP GetCACaps/GetCACert: where to keep the reply, else -1
};

//  A SCEP reply that is the same for every device (GetCACaps, GetCACert):
//  served by the gateway for GW_ENROLL_CA_CACHE_S instead of a bus round trip
//  to the ca per device.
typedef struct {
    uint8_t *body;
    size_t len;
    char content_type[64];
    struct timespec expires;
} s_cached_t;

static const char *const s_cacheable[2] = {"GetCACaps", "GetCACert"};

//  Refused downloads are anyone's to make: at most this many per second
//  become a log line and an enroll.refused event in the store's log; the rest
//  are counted and reported in one line (and in the next event).
#define S_REFUSED_PER_S 50

struct gw_enroll {
    char *scep_path, *enroll_path, *basic_auth, *service, *token_service;
    time_t refused_sec;     //  the second refused_n counts in
    unsigned refused_n;     //  refusals logged in that second
    uint64_t refused_quiet; //  refusals not logged since the last one that was
    s_auth_t auth;
    int timeout_ms, retry_after_s;
    struct event_base *base;
    pm_bus_t *bus;
    gw_enroll_kick_fn *kick;
    void *kick_arg;
    gw_pending_t *reqs;  //  every live request context (their first member)
    s_cached_t cache[2]; //  GetCACaps, GetCACert: the same for every device
    bool shutting_down;
    gw_enroll_stats_t st;
};

static char *s_dup_opt(const char *s)
{
    return s && *s ? strdup(s) : NULL;
}

gw_enroll_t *gw_enroll_new(const gw_enroll_config_t *cfg, struct event_base *base, pm_bus_t *bus)
{
    gw_enroll_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->base = base;
    self->bus = bus;
    self->scep_path = s_dup_opt(cfg->scep_path);
    self->enroll_path = s_dup_opt(cfg->enroll_path);
    self->basic_auth = s_dup_opt(cfg->basic_auth);
    self->service = strdup(cfg->service && *cfg->service ? cfg->service : "ca");
    self->token_service = strdup(cfg->token_service && *cfg->token_service
                                     ? cfg->token_service
                                     : pm_msgdef(PM_MSG_ENROLL_TOKEN_USE)->service);
    self->timeout_ms = cfg->timeout_ms >= 200 ? cfg->timeout_ms : 10000;
    self->retry_after_s = cfg->retry_after_s > 0 ? cfg->retry_after_s : 10;
    if (!self->service || !self->token_service)
        goto fail;
    const char *auth = cfg->auth && *cfg->auth ? cfg->auth : self->basic_auth ? "basic" : "none";
    if (strcmp(auth, "none") == 0)
        self->auth = A_NONE;
    else if (strcmp(auth, "basic") == 0)
        self->auth = A_BASIC;
    else if (strcmp(auth, "token") == 0)
        self->auth = A_TOKEN;
    else {
        pm_error("enroll-auth must be none, basic or token, not '%s'", auth);
        goto fail;
    }
    if (self->auth == A_BASIC && !self->basic_auth) {
        pm_error("enroll-auth = basic needs enroll-basic-auth user:password (prefer the "
                 "environment variable PICOMDM_ENROLL_BASIC_AUTH)");
        goto fail;
    }
    if (self->auth != A_BASIC && self->basic_auth)
        pm_warn("enroll-basic-auth is set but enroll-auth is %s: the password is not used", auth);
    if ((self->scep_path && self->scep_path[0] != '/') ||
        (self->enroll_path && self->enroll_path[0] != '/')) {
        pm_error("scep-path and enroll-path must start with '/' (or be empty to turn the route "
                 "off)");
        goto fail;
    }
    if (self->basic_auth && !strchr(self->basic_auth, ':')) {
        pm_error("enroll-basic-auth must be user:password (prefer the environment variable "
                 "PICOMDM_ENROLL_BASIC_AUTH)");
        goto fail;
    }
    return self;
fail:
    gw_enroll_destroy(&self);
    return NULL;
}

void gw_enroll_set_kick(gw_enroll_t *self, gw_enroll_kick_fn *fn, void *arg)
{
    self->kick = fn;
    self->kick_arg = arg;
}

/* ---- answers and request contexts ---- */

static void s_send_503(gw_enroll_t *self, struct evhttp_request *req)
{
    gw_http_send_503(req, self->retry_after_s, "enrollment service unavailable, retry later\n");
    self->st.unavailable++;
}

static s_req_t *s_req_new(gw_enroll_t *self, struct evhttp_request *req, s_route_t route,
                          const char *what, const char *remote)
{
    s_req_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->owner = self;
    r->route = route;
    r->cache_slot = -1;
    snprintf(r->what, sizeof r->what, "%s", what);
    snprintf(r->remote, sizeof r->remote, "%s", remote ? remote : "?");
    gw_pending_link(&r->p, &self->reqs, req);
    return r;
}

static void s_req_free(s_req_t *r)
{
    gw_pending_unlink(&r->p);
    free(r);
}

static void s_req_maybe_free(s_req_t *r)
{
    if (gw_pending_done(&r->p))
        s_req_free(r);
}

static void s_cache_put(gw_enroll_t *self, int slot, const char *ct, const uint8_t *body,
                        size_t len)
{
    s_cached_t *c = &self->cache[slot];
    uint8_t *copy = malloc(len);
    if (!copy)
        return;
    memcpy(copy, body, len);
    free(c->body);
    c->body = copy;
    c->len = len;
    snprintf(c->content_type, sizeof c->content_type, "%s", ct);
    clock_gettime(CLOCK_MONOTONIC, &c->expires);
    c->expires.tv_sec += GW_ENROLL_CA_CACHE_S;
}

//  The cached reply of `slot` when still fresh, else NULL.
static const s_cached_t *s_cache_get(const gw_enroll_t *self, int slot)
{
    const s_cached_t *c = &self->cache[slot];
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (!c->body || now.tv_sec > c->expires.tv_sec ||
        (now.tv_sec == c->expires.tv_sec && now.tv_nsec >= c->expires.tv_nsec))
        return NULL;
    return c;
}

//  The ca's reply, relayed as is (status, content type, body).
//  Answers the device from the ca's reply. Returns true only when an
//  enrollment profile was sent (200).
static bool s_answer(s_req_t *r, const pm_msg_t *reply, const char *error)
{
    gw_enroll_t *self = r->owner;
    struct evhttp_request *req = r->p.req;
    if (!reply) {
        pm_warn("%s from %s: the ca service did not answer (%s); 503 (is picomdm-ca running?)",
                r->what, r->remote, error ? error : "no reason");
        s_send_503(self, req);
        return false;
    }
    pm_msg_type_t t = pm_msg_type(reply);
    if (t == PM_MSG_ERROR) {
        const char *code = pm_msg_str(reply, "code");
        const char *msg = pm_msg_str(reply, "message");
        pm_warn("%s from %s: ca error %s: %s", r->what, r->remote, code ? code : "?",
                msg ? msg : "");
        if (code && (strcmp(code, "timeout") == 0 || strcmp(code, "no_service") == 0 ||
                     strcmp(code, "worker_lost") == 0))
            s_send_503(self, req);
        else if (code && strcmp(code, "bad_request") == 0)
            gw_http_send_text(req, 400, "bad request\n");
        else
            gw_http_send_text(req, 500, "internal error\n");
        return false;
    }
    size_t len = 0;
    if (r->route == R_SCEP && t == PM_MSG_SCEP_REPLY) {
        uint64_t st = pm_msg_uint(reply, "status", 500);
        const uint8_t *body = pm_msg_bin(reply, "body", &len);
        const char *ct = pm_msg_str(reply, "content_type");
        const char *reason = pm_msg_str(reply, "reason");
        int code = st >= 200 && st <= 599 ? (int)st : 500;
        if (code == 200 && r->cache_slot >= 0 && body && len && len <= GW_ENROLL_SCEP_MAX)
            s_cache_put(self, r->cache_slot, ct && *ct ? ct : "application/octet-stream", body,
                        len);
        if (code != 200 || reason)
            pm_info("SCEP %s from %s -> %d%s%s", r->what, r->remote, code, reason ? ": " : "",
                    reason ? reason : "");
        gw_http_send(req, code, ct && *ct ? ct : "application/octet-stream", body, body ? len : 0);
    } else if (r->route == R_PROFILE && t == PM_MSG_PROFILE_REPLY) {
        const uint8_t *body = pm_msg_bin(reply, "profile", &len);
        const char *ct = pm_msg_str(reply, "content_type");
        if (!body || !len) {
            pm_error("enrollment profile for %s: the ca sent an empty profile; 500", r->remote);
            gw_http_send_text(req, 500, "internal error\n");
            return false;
        }
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Disposition",
                          "attachment; filename=\"enroll.mobileconfig\"");
        evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
        gw_http_send(req, 200, ct && *ct ? ct : "application/x-apple-aspen-config", body, len);
        pm_info("enrollment profile served to %s (identity %s, %.1f ms)", r->remote,
                pm_msg_str(reply, "identity_uuid") ? pm_msg_str(reply, "identity_uuid") : "?",
                gw_pending_ms(&r->p));
        return true;
    } else {
        pm_error("%s: the ca answered with '%s'; 500 (gateway and ca versions differ?)", r->what,
                 pm_msg_type_name(t));
        gw_http_send_text(req, 500, "internal error\n");
    }
    return false;
}

/* ---- events and token bookkeeping (fire and forget) ---- */

static void s_on_release_reply(void *arg, const pm_msg_t *reply, const char *error)
{
    (void)arg;
    if (!reply || pm_msg_type(reply) != PM_MSG_OK)
        pm_warn("an enrollment token could not be given back after a failed download (%s): "
                "make a new one with `picomdm enroll-token new`",
                error                                         ? error
                : reply && pm_msg_type(reply) == PM_MSG_ERROR ? pm_msg_str(reply, "message")
                                                              : "unexpected reply");
}

//  The profile was not served: make the token consumed for it usable again.
static void s_release_token(gw_enroll_t *self, s_req_t *r)
{
    if (!r->hash[0] || r->released || !self->bus)
        return;
    r->released = true;
    pm_msg_t *m = pm_msg_new(PM_MSG_ENROLL_TOKEN_RELEASE);
    if (!m || pm_msg_set_str(m, "hash", r->hash) < 0 ||
        pm_msg_set_str(m, "use_rid", r->use_rid) < 0 ||
        pm_bus_call_async(self->bus, self->token_service, m, 2000, 1, s_on_release_reply, NULL) < 0)
        pm_warn("enrollment profile for %s not served and its token not given back (bus "
                "unavailable): make a new token with `picomdm enroll-token new`",
                r->remote);
    else
        pm_info("enrollment profile for %s not served: its token is usable again", r->remote);
    pm_msg_destroy(&m);
}

typedef struct {
    pm_bus_t *bus;
    pm_msg_t *ev; //  the same event as a plain EVENT, published if the store fails
} s_append_t;

//  An enroll.refused that could not reach the store's log: publish it live.
static void s_on_append_reply(void *arg, const pm_msg_t *reply, const char *error)
{
    s_append_t *a = arg;
    if (!reply || pm_msg_type(reply) != PM_MSG_EVENT_APPEND_REPLY) {
        pm_warn("enroll.refused not in the event log (%s); published without a seq",
                error ? error : "the store refused it");
        if (pm_bus_publish(a->bus, a->ev) < 0)
            pm_warn("could not publish enroll.refused: check publish-endpoint");
    }
    pm_msg_destroy(&a->ev);
    free(a);
}

//  enroll.refused {reason, remote, path}: appended to the store's sequenced
//  event log (which publishes it), or published live when the store is away.
static void s_event_refused(gw_enroll_t *self, const char *reason, const char *remote,
                            const char *path, uint64_t quiet)
{
    if (!self->bus)
        return;
    char quiet_s[24];
    snprintf(quiet_s, sizeof quiet_s, "%llu", (unsigned long long)quiet);
    pm_msg_t *ev = pm_msg_new(PM_MSG_EVENT), *app = pm_msg_new(PM_MSG_EVENT_APPEND);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    const char *kv[] = {"reason", reason, "remote",          remote,
                        "path",   path,   "unlogged_before", quiet_s};
    int nkv = quiet ? 8 : 6; //  unlogged_before: refusals rate-limited since the last event
    msgpack_pack_map(&pk, (size_t)nkv / 2);
    for (int i = 0; i < nkv; i++) {
        size_t n = strlen(kv[i]);
        msgpack_pack_str(&pk, n);
        msgpack_pack_str_body(&pk, kv[i], n);
    }
    pm_msg_t *both[] = {ev, app};
    for (int i = 0; i < 2 && ev && app; i++)
        if (pm_msg_set_str(both[i], "name", "enroll.refused") < 0 ||
            pm_msg_set_str(both[i], "source", "gateway") < 0 ||
            pm_msg_set_packed(both[i], "data", (const uint8_t *)sb.data, sb.size) < 0)
            goto out;
    s_append_t *a = ev && app ? malloc(sizeof *a) : NULL;
    if (a) {
        a->bus = self->bus;
        a->ev = ev;
        if (pm_bus_call_async(self->bus, pm_msgdef(PM_MSG_EVENT_APPEND)->service, app, 2000, 0,
                              s_on_append_reply, a) == 0)
            ev = NULL, a = NULL; //  the callback has them now
        free(a);
    }
    if (ev && pm_bus_publish(self->bus, ev) < 0)
        pm_warn("could not publish enroll.refused: check publish-endpoint");
out:
    msgpack_sbuffer_destroy(&sb);
    pm_msg_destroy(&ev);
    pm_msg_destroy(&app);
}

//  A refused download: log why, raise enroll.refused, answer `code`.
static void s_refuse(gw_enroll_t *self, struct evhttp_request *req, int code, const char *remote,
                     const char *path, const char *reason, const char *answer)
{
    self->st.denied++;
    time_t now = time(NULL);
    if (now != self->refused_sec) {
        self->refused_sec = now;
        self->refused_n = 0;
    }
    if (self->refused_n < S_REFUSED_PER_S) {
        self->refused_n++;
        if (self->refused_quiet)
            pm_warn("%llu more enrollment downloads were refused without a log line or event "
                    "(over %d a second): someone may be guessing links; check the gateway's "
                    "clients",
                    (unsigned long long)self->refused_quiet, S_REFUSED_PER_S);
        pm_warn("enrollment profile refused to %s (%s): %s; %d", remote, path, reason, code);
        s_event_refused(self, reason, remote, path, self->refused_quiet);
        self->refused_quiet = 0;
    } else
        self->refused_quiet++;
    if (code == 401)
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                          "Basic realm=\"PicoMDM enrollment\", charset=\"UTF-8\"");
    gw_http_send_text(req, code, answer);
    if (self->kick)
        self->kick(self->kick_arg);
}

static void s_on_reply(void *arg, const pm_msg_t *reply, const char *error);

static void s_on_guard(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    s_req_t *r = arg;
    if (r->p.req) {
        pm_warn("%s from %s: no answer from the %s within %d ms; 503", r->what, r->remote,
                r->route == R_TOKEN ? "store (enrollment tokens)" : "ca", r->owner->timeout_ms);
        s_send_503(r->owner, r->p.req);
        r->p.req = NULL;
        s_release_token(r->owner, r);
    }
    s_req_maybe_free(r);
}

//  Send `*msg` to `service` for r (takes ownership of *msg). -1: answered 503
//  and r->p.req is NULL (the caller frees r when nothing else refers to it).
static int s_call(s_req_t *r, const char *service, pm_msg_t **msg)
{
    gw_enroll_t *self = r->owner;
    int per_try = self->timeout_ms / 2; //  one retry, same rid (answered from the rid cache)
    r->p.bus_pending = true;
    if (!self->bus || pm_bus_call_async(self->bus, service, *msg, per_try, 1, s_on_reply, r) < 0) {
        r->p.bus_pending = false;
        pm_warn("%s from %s: cannot queue the request for '%s'; 503", r->what, r->remote, service);
        s_send_503(self, r->p.req);
        r->p.req = NULL;
        pm_msg_destroy(msg);
        s_release_token(self, r);
        return -1;
    }
    pm_msg_destroy(msg);
    if (!r->p.guard) //  one deadline for the whole request (token check + profile)
        r->p.guard = evtimer_new(self->base, s_on_guard, r);
    if (r->p.guard && !evtimer_pending(r->p.guard, NULL)) {
        int ms = self->timeout_ms + 500;
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        evtimer_add(r->p.guard, &tv);
    }
    if (self->kick)
        self->kick(self->kick_arg);
    return 0;
}

//  The profile request to the ca for r (who = the "for" of logs and events).
static void s_ask_profile(s_req_t *r, const char *who)
{
    gw_enroll_t *self = r->owner;
    pm_msg_t *msg = pm_msg_new(PM_MSG_PROFILE);
    if (!msg || pm_msg_set_str(msg, "for", who) < 0) {
        pm_msg_destroy(&msg);
        gw_http_send_text(r->p.req, 500, "internal error\n");
        r->p.req = NULL;
        s_release_token(self, r);
        return;
    }
    r->route = R_PROFILE;
    snprintf(r->what, sizeof r->what, "profile");
    self->st.profiles++;
    s_call(r, self->service, &msg);
}

//  The store's answer to enroll_token.use.
static void s_token_answer(s_req_t *r, const pm_msg_t *reply, const char *error)
{
    gw_enroll_t *self = r->owner;
    if (!reply || pm_msg_type(reply) != PM_MSG_ENROLL_TOKEN_USE_REPLY) {
        const char *why = error ? error
                          : reply && pm_msg_type(reply) == PM_MSG_ERROR
                              ? pm_msg_str(reply, "message")
                              : "unexpected reply";
        pm_warn("enrollment token from %s: the store did not decide (%s); 503 (is picomdm-store "
                "running?)",
                r->remote, why ? why : "?");
        s_send_503(self, r->p.req);
        r->p.req = NULL;
        s_release_token(self, r); //  in case the store applied it after all (bound to our rid)
        return;
    }
    const char *id = pm_msg_str(reply, "id");
    if (!pm_msg_bool(reply, "accepted", false)) {
        const char *reason = pm_msg_str(reply, "reason");
        char why[96];
        snprintf(why, sizeof why, "token %s%s%s", reason ? reason : "refused", id ? " " : "",
                 id ? id : "");
        const char *answer =
            reason && strcmp(reason, "used") == 0
                ? "this enrollment link has already been used: ask your administrator for a new "
                  "one\n"
            : reason && strcmp(reason, "expired") == 0
                ? "this enrollment link has expired: ask your administrator for a new one\n"
            : reason && strcmp(reason, "revoked") == 0
                ? "this enrollment link has been revoked: ask your administrator for a new one\n"
                : "this enrollment link is not valid: check it, or ask your administrator for a "
                  "new one\n";
        r->hash[0] = '\0'; //  not ours to give back
        s_refuse(self, r->p.req, 403, r->remote, r->path, why, answer);
        r->p.req = NULL;
        return;
    }
    self->st.tokens_used++;
    const char *note = pm_msg_str(reply, "note");
    char who[256];
    snprintf(who, sizeof who, "token %s%s%s%s@%s", id ? id : "?", note ? " (" : "",
             note ? note : "", note ? ")" : "", r->remote);
    pm_info("enrollment token %s accepted for %s", id ? id : "?", r->remote);
    s_ask_profile(r, who);
}

static void s_on_reply(void *arg, const pm_msg_t *reply, const char *error)
{
    s_req_t *r = arg;
    r->p.bus_pending = false;
    if (r->p.req && r->route == R_TOKEN) {
        s_token_answer(r, reply, error); //  may ask the ca next (bus_pending again)
    } else if (r->route == R_TOKEN) {
        //  answered 503 already (deadline): a token the store consumed since goes back
        if (reply && pm_msg_type(reply) == PM_MSG_ENROLL_TOKEN_USE_REPLY &&
            pm_msg_bool(reply, "accepted", false)) {
            r->released = false;
            s_release_token(r->owner, r);
        }
    } else if (r->p.req) {
        bool served = s_answer(r, reply, error);
        r->p.req = NULL;
        if (!served)
            s_release_token(r->owner, r);
    }
    s_req_maybe_free(r);
}

/* ---- routes ---- */

static void s_scep(gw_enroll_t *self, struct evhttp_request *req, const char *remote)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_POST) {
        gw_http_send_text(req, 405, "SCEP uses GET or POST\n");
        return;
    }
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
    pm_msg_t *msg = NULL;
    //  form decoding turns '+' into ' ' in the base64 message: the ca tolerates it
    if (query && evhttp_parse_query_str(query, &q) < 0) {
        gw_http_send_text(req, 400, "bad query string\n");
        goto out;
    }
    const char *op = evhttp_find_header(&q, "operation");
    if (!op || !*op || strlen(op) > 64) {
        gw_http_send_text(req, 400, "missing operation (GetCACaps, GetCACert or PKIOperation)\n");
        goto out;
    }
    int slot = -1;
    for (int i = 0; i < 2 && cmd == EVHTTP_REQ_GET; i++)
        if (strcmp(op, s_cacheable[i]) == 0)
            slot = i;
    const s_cached_t *c = slot >= 0 ? s_cache_get(self, slot) : NULL;
    if (c) {
        self->st.scep++;
        gw_http_send(req, 200, c->content_type, c->body, c->len);
        goto out;
    }
    msg = pm_msg_new(PM_MSG_SCEP);
    if (!msg || pm_msg_set_str(msg, "method", cmd == EVHTTP_REQ_GET ? "GET" : "POST") < 0 ||
        pm_msg_set_str(msg, "operation", op) < 0 || pm_msg_set_str(msg, "remote", remote) < 0) {
        gw_http_send_text(req, 500, "internal error\n");
        goto out;
    }
    if (cmd == EVHTTP_REQ_POST) {
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t len = in ? evbuffer_get_length(in) : 0;
        if (len > GW_ENROLL_SCEP_MAX) {
            gw_http_send_text(req, 413, "SCEP message too large (64 KiB at most)\n");
            goto out;
        }
        if (len) {
            const unsigned char *p = evbuffer_pullup(in, (ev_ssize_t)len);
            if (!p || pm_msg_set_bin(msg, "message", p, len) < 0) {
                gw_http_send_text(req, 500, "internal error\n");
                goto out;
            }
        }
    } else {
        const char *m = evhttp_find_header(&q, "message");
        if (m && strlen(m) > GW_ENROLL_SCEP_MAX) {
            gw_http_send_text(req, 413, "SCEP message too large (64 KiB at most)\n");
            goto out;
        }
        if (m && pm_msg_set_bin(msg, "message", m, strlen(m)) < 0) {
            gw_http_send_text(req, 500, "internal error\n");
            goto out;
        }
    }
    s_req_t *r = s_req_new(self, req, R_SCEP, op, remote);
    if (!r) {
        gw_http_send_text(req, 500, "internal error\n");
        goto out;
    }
    r->cache_slot = slot;
    self->st.scep++;
    if (s_call(r, self->service, &msg) < 0)
        s_req_maybe_free(r);
out:
    pm_msg_destroy(&msg);
    evhttp_clear_headers(&q);
}

//  HTTP basic auth against "user:password", constant time. The user name is
//  copied to `user` for logs and the profile's `for`.
static bool s_basic_ok(const gw_enroll_t *self, struct evhttp_request *req, char *user,
                       size_t usize)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!h || strncasecmp(h, "Basic ", 6) != 0)
        return false;
    h += 6;
    while (*h == ' ')
        h++;
    size_t n = strlen(h);
    if (n == 0 || n > 1024 || n % 4)
        return false;
    unsigned char dec[800];
    int dl = EVP_DecodeBlock(dec, (const unsigned char *)h, (int)n);
    if (dl < 0)
        return false;
    //  EVP_DecodeBlock counts the '=' padding as zero bytes
    if (n >= 1 && h[n - 1] == '=')
        dl--;
    if (n >= 2 && h[n - 2] == '=')
        dl--;
    //  compare digests, so that neither the length nor the content of the
    //  configured credentials shows in the time taken
    uint8_t got_d[32], want_d[32];
    bool ok = EVP_Digest(dec, (size_t)dl, got_d, NULL, EVP_sha256(), NULL) == 1 &&
              EVP_Digest(self->basic_auth, strlen(self->basic_auth), want_d, NULL, EVP_sha256(),
                         NULL) == 1 &&
              CRYPTO_memcmp(got_d, want_d, sizeof got_d) == 0;
    if (ok) {
        const char *colon = memchr(dec, ':', (size_t)dl);
        size_t ul = colon ? (size_t)(colon - (const char *)dec) : 0;
        snprintf(user, usize, "%.*s", (int)(ul < usize ? ul : usize - 1), (const char *)dec);
    }
    OPENSSL_cleanse(dec, sizeof dec);
    return ok;
}

//  A well-formed token: base64url characters, GW_ENROLL_TOKEN_MIN..MAX long.
static bool s_token_ok(const char *t)
{
    size_t n = t ? strlen(t) : 0;
    if (n < GW_ENROLL_TOKEN_MIN || n > GW_ENROLL_TOKEN_MAX)
        return false;
    for (const char *p = t; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_'))
            return false;
    return true;
}

//  `tail`: what follows enroll_path in the path ("" or "/<token>").
static void s_profile(gw_enroll_t *self, struct evhttp_request *req, const char *remote,
                      const char *path, const char *tail)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        gw_http_send_text(req, 405, "use GET\n");
        return;
    }
    char user[128] = "";
    if (self->auth == A_BASIC && !s_basic_ok(self, req, user, sizeof user)) {
        bool given = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
        s_refuse(self, req, 401, remote, self->enroll_path,
                 given ? "wrong basic-auth credentials" : "no basic-auth credentials",
                 "credentials required to download the enrollment profile\n");
        return;
    }
    if (self->auth != A_TOKEN) {
        if (*tail) { //  /mdm/enroll/<something> exists only for tokens
            gw_http_send_text(req, 404, "not found\n");
            return;
        }
        char who[200];
        snprintf(who, sizeof who, "%s%s%s", user, *user ? "@" : "", remote);
        s_req_t *r = s_req_new(self, req, R_PROFILE, "profile", remote);
        if (!r) {
            gw_http_send_text(req, 500, "internal error\n");
            return;
        }
        s_ask_profile(r, who);
        s_req_maybe_free(r);
        return;
    }
    //  token mode: <enroll-path>/<token> or <enroll-path>?token=<token>
    char token[GW_ENROLL_TOKEN_MAX + 1] = "";
    if (*tail) {
        if (strlen(tail + 1) <= GW_ENROLL_TOKEN_MAX)
            snprintf(token, sizeof token, "%s", tail + 1);
        else
            snprintf(token, sizeof token, "!");
    } else {
        struct evkeyvalq q;
        TAILQ_INIT(&q);
        const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
        const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
        const char *t = NULL;
        if (query && evhttp_parse_query_str(query, &q) == 0)
            t = evhttp_find_header(&q, "token");
        if (t && strlen(t) <= GW_ENROLL_TOKEN_MAX)
            snprintf(token, sizeof token, "%s", t);
        else if (t)
            snprintf(token, sizeof token, "!");
        evhttp_clear_headers(&q);
    }
    if (!*token || !s_token_ok(token)) {
        s_refuse(self, req, 403, remote, self->enroll_path,
                 *token ? "malformed enrollment token" : "no enrollment token",
                 *token ? "this enrollment link is not valid: check it, or ask your "
                          "administrator for a new one\n"
                        : "this server hands out enrollment profiles only with an enrollment "
                          "link from your administrator (picomdm enroll-token new)\n");
        OPENSSL_cleanse(token, sizeof token);
        return;
    }
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)token, strlen(token), md);
    OPENSSL_cleanse(token, sizeof token);
    s_req_t *r = s_req_new(self, req, R_TOKEN, "enrollment token", remote);
    pm_msg_t *msg = pm_msg_new(PM_MSG_ENROLL_TOKEN_USE);
    if (!r || !msg) {
        if (r)
            s_req_free(r);
        pm_msg_destroy(&msg);
        gw_http_send_text(req, 500, "internal error\n");
        return;
    }
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
        snprintf(r->hash + 2 * i, 3, "%02x", md[i]);
    snprintf(r->path, sizeof r->path, "%s", self->enroll_path);
    snprintf(r->use_rid, sizeof r->use_rid, "%s", pm_msg_rid(msg) ? pm_msg_rid(msg) : "");
    if (pm_msg_set_str(msg, "hash", r->hash) < 0 || pm_msg_set_str(msg, "remote", remote) < 0) {
        pm_msg_destroy(&msg);
        s_req_free(r);
        gw_http_send_text(req, 500, "internal error\n");
        return;
    }
    if (s_call(r, self->token_service, &msg) < 0) {
        r->hash[0] = '\0'; //  the store never saw it
        s_req_maybe_free(r);
    }
    (void)path;
}

int gw_enroll_handle(gw_enroll_t *self, struct evhttp_request *req, const char *path,
                     const char *remote)
{
    if (!self || !path)
        return 0;
    bool scep = self->scep_path && strcmp(path, self->scep_path) == 0;
    size_t el = self->enroll_path ? strlen(self->enroll_path) : 0;
    bool prof =
        el && strncmp(path, self->enroll_path, el) == 0 &&
        (path[el] == '\0' || (path[el] == '/' && path[el + 1] && !strchr(path + el + 1, '/')));
    if (!scep && !prof)
        return 0;
    if (self->shutting_down) {
        s_send_503(self, req);
        return 1;
    }
    if (scep)
        s_scep(self, req, remote ? remote : "?");
    else
        s_profile(self, req, remote ? remote : "?", path, path + el);
    return 1;
}

void gw_enroll_shutdown(gw_enroll_t *self)
{
    if (!self || self->shutting_down)
        return;
    self->shutting_down = true;
    for (gw_pending_t *q = self->reqs; q; q = q->next)
        if (q->req) {
            s_send_503(self, q->req);
            q->req = NULL;
            s_release_token(self, (s_req_t *)q); //  no profile went out for it
        }
}

void gw_enroll_destroy(gw_enroll_t **p)
{
    if (!p || !*p)
        return;
    gw_enroll_t *self = *p;
    while (self->reqs)
        s_req_free((s_req_t *)self->reqs);
    free(self->scep_path);
    free(self->enroll_path);
    if (self->basic_auth)
        OPENSSL_cleanse(self->basic_auth, strlen(self->basic_auth));
    free(self->basic_auth);
    free(self->service);
    free(self->token_service);
    for (int i = 0; i < 2; i++)
        free(self->cache[i].body);
    free(self);
    *p = NULL;
}

void gw_enroll_stats(const gw_enroll_t *self, gw_enroll_stats_t *st)
{
    *st = self->st;
}
