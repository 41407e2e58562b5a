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
#include <sys/queue.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef enum { R_SCEP = 1, R_PROFILE } s_route_t;

typedef struct s_req s_req_t;
struct s_req {
    gw_enroll_t *owner;
    s_req_t *prev, *next;
    struct evhttp_request *req; //  NULL once answered
    bool bus_pending;           //  the bus still owes us its callback
    struct event *guard;
    s_route_t route;
    char what[48];
    char remote[64];
    struct timespec t0;
};

struct gw_enroll {
    char *scep_path, *enroll_path, *basic_auth, *service;
    int timeout_ms, retry_after_s;
    struct event_base *base;
    pm_bus_t *bus;
    gw_enroll_kick_fn *kick;
    void *kick_arg;
    s_req_t *reqs;
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
    self->timeout_ms = cfg->timeout_ms >= 200 ? cfg->timeout_ms : 10000;
    self->retry_after_s = cfg->retry_after_s > 0 ? cfg->retry_after_s : 10;
    if (!self->service)
        goto fail;
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
    r->req = req;
    r->route = route;
    snprintf(r->what, sizeof r->what, "%s", what);
    snprintf(r->remote, sizeof r->remote, "%s", remote ? remote : "?");
    clock_gettime(CLOCK_MONOTONIC, &r->t0);
    r->next = self->reqs;
    if (self->reqs)
        self->reqs->prev = r;
    self->reqs = r;
    return r;
}

static void s_req_free(s_req_t *r)
{
    gw_enroll_t *self = r->owner;
    if (r->prev)
        r->prev->next = r->next;
    else
        self->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    if (r->guard)
        event_free(r->guard);
    free(r);
}

static void s_req_maybe_free(s_req_t *r)
{
    if (!r->req && !r->bus_pending)
        s_req_free(r);
}

static double s_ms_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

//  The ca's reply, relayed as is (status, content type, body).
static void s_answer(s_req_t *r, const pm_msg_t *reply, const char *error)
{
    gw_enroll_t *self = r->owner;
    struct evhttp_request *req = r->req;
    if (!reply) {
        pm_warn("%s from %s: the ca service did not answer (%s); 503 (is picomdm-ca running?)",
                r->what, r->remote, error ? error : "no reason");
        s_send_503(self, req);
        return;
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
        return;
    }
    size_t len = 0;
    if (r->route == R_SCEP && t == PM_MSG_SCEP_REPLY) {
        uint64_t st = pm_msg_uint(reply, "status", 500);
        const uint8_t *body = pm_msg_bin(reply, "body", &len);
        const char *ct = pm_msg_str(reply, "content_type");
        const char *reason = pm_msg_str(reply, "reason");
        int code = st >= 200 && st <= 599 ? (int)st : 500;
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
            return;
        }
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Disposition",
                          "attachment; filename=\"enroll.mobileconfig\"");
        evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
        gw_http_send(req, 200, ct && *ct ? ct : "application/x-apple-aspen-config", body, len);
        pm_info("enrollment profile served to %s (identity %s, %.1f ms)", r->remote,
                pm_msg_str(reply, "identity_uuid") ? pm_msg_str(reply, "identity_uuid") : "?",
                s_ms_since(&r->t0));
    } else {
        pm_error("%s: the ca answered with '%s'; 500 (gateway and ca versions differ?)", r->what,
                 pm_msg_type_name(t));
        gw_http_send_text(req, 500, "internal error\n");
    }
}

static void s_on_reply(void *arg, const pm_msg_t *reply, const char *error)
{
    s_req_t *r = arg;
    r->bus_pending = false;
    if (r->req) {
        s_answer(r, reply, error);
        r->req = NULL;
    }
    s_req_maybe_free(r);
}

static void s_on_guard(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    s_req_t *r = arg;
    if (r->req) {
        pm_warn("%s from %s: no answer from the ca within %d ms; 503", r->what, r->remote,
                r->owner->timeout_ms);
        s_send_503(r->owner, r->req);
        r->req = NULL;
    }
    s_req_maybe_free(r);
}

//  Send `*msg` to the ca for r (takes ownership of *msg).
static void s_call(s_req_t *r, pm_msg_t **msg)
{
    gw_enroll_t *self = r->owner;
    int per_try = self->timeout_ms / 2; //  one retry, same rid (answered from the rid cache)
    r->bus_pending = true;
    if (!self->bus ||
        pm_bus_call_async(self->bus, self->service, *msg, per_try, 1, s_on_reply, r) < 0) {
        r->bus_pending = false;
        pm_warn("%s from %s: cannot queue the request for '%s'; 503", r->what, r->remote,
                self->service);
        s_send_503(self, r->req);
        r->req = NULL;
        pm_msg_destroy(msg);
        s_req_maybe_free(r);
        return;
    }
    pm_msg_destroy(msg);
    r->guard = evtimer_new(self->base, s_on_guard, r);
    if (r->guard) {
        int ms = self->timeout_ms + 500;
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        evtimer_add(r->guard, &tv);
    }
    if (self->kick)
        self->kick(self->kick_arg);
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
    self->st.scep++;
    s_call(r, &msg);
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
    size_t want = strlen(self->basic_auth);
    bool ok = (size_t)dl == want && CRYPTO_memcmp(dec, self->basic_auth, want) == 0;
    if (ok) {
        const char *colon = memchr(dec, ':', (size_t)dl);
        size_t ul = colon ? (size_t)(colon - (const char *)dec) : 0;
        snprintf(user, usize, "%.*s", (int)(ul < usize ? ul : usize - 1), (const char *)dec);
    }
    OPENSSL_cleanse(dec, sizeof dec);
    return ok;
}

static void s_profile(gw_enroll_t *self, struct evhttp_request *req, const char *remote)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        gw_http_send_text(req, 405, "use GET\n");
        return;
    }
    char user[128] = "";
    if (self->basic_auth && !s_basic_ok(self, req, user, sizeof user)) {
        pm_warn("enrollment profile refused to %s: missing or wrong credentials", remote);
        self->st.denied++;
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                          "Basic realm=\"PicoMDM enrollment\", charset=\"UTF-8\"");
        gw_http_send_text(req, 401, "credentials required to download the enrollment profile\n");
        return;
    }
    pm_msg_t *msg = pm_msg_new(PM_MSG_PROFILE);
    char who[200];
    snprintf(who, sizeof who, "%s%s%s", user, *user ? "@" : "", remote);
    if (!msg || pm_msg_set_str(msg, "for", who) < 0) {
        pm_msg_destroy(&msg);
        gw_http_send_text(req, 500, "internal error\n");
        return;
    }
    s_req_t *r = s_req_new(self, req, R_PROFILE, "profile", remote);
    if (!r) {
        pm_msg_destroy(&msg);
        gw_http_send_text(req, 500, "internal error\n");
        return;
    }
    self->st.profiles++;
    s_call(r, &msg);
}

int gw_enroll_handle(gw_enroll_t *self, struct evhttp_request *req, const char *path,
                     const char *remote)
{
    if (!self || !path)
        return 0;
    bool scep = self->scep_path && strcmp(path, self->scep_path) == 0;
    bool prof = self->enroll_path && strcmp(path, self->enroll_path) == 0;
    if (!scep && !prof)
        return 0;
    if (self->shutting_down) {
        s_send_503(self, req);
        return 1;
    }
    if (scep)
        s_scep(self, req, remote ? remote : "?");
    else
        s_profile(self, req, remote ? remote : "?");
    return 1;
}

void gw_enroll_shutdown(gw_enroll_t *self)
{
    if (!self || self->shutting_down)
        return;
    self->shutting_down = true;
    for (s_req_t *r = self->reqs; r; r = r->next)
        if (r->req) {
            s_send_503(self, r->req);
            r->req = NULL;
        }
}

void gw_enroll_destroy(gw_enroll_t **p)
{
    if (!p || !*p)
        return;
    gw_enroll_t *self = *p;
    while (self->reqs)
        s_req_free(self->reqs);
    free(self->scep_path);
    free(self->enroll_path);
    if (self->basic_auth)
        OPENSSL_cleanse(self->basic_auth, strlen(self->basic_auth));
    free(self->basic_auth);
    free(self->service);
    free(self);
    *p = NULL;
}

void gw_enroll_stats(const gw_enroll_t *self, gw_enroll_stats_t *st)
{
    *st = self->st;
}
