/*  gw_admin — the gateway's admin listener and counters (see gw_admin.h). */
#include "gw_admin.h"
#include "gw_http.h"
#include "pm_log.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define S_MAX_PEERS 256 //  snapshots kept (process x instance)
#define S_MIN_KEEP_S 60 //  a snapshot is forgotten after max(this, 10 intervals)
#define S_ROUTES 7

struct gw_admin {
    gw_admin_config_t cfg;
    char *paths[4]; //  checkin, server, scep, enroll (owned copies; NULL = route off)
    struct event_base *base;
    pm_bus_t *bus;
    pm_stats_t *stats;
    gw_server_t *srv;
    gw_enroll_t *enroll;
    struct evhttp *http;
    int port;
    struct event *timer;
    pm_stats_board_t *board; //  the other processes' latest snapshots
    pm_stats_series_t *latency, *scrapes;
    bool in_admin; //  answering on the admin listener (route label "admin")
    //  gateway_responses_total{route,code}: resolved on first use, [route][code - 100]
    pm_stats_series_t *by_code[S_ROUTES][500];
};

static const char *const s_route_names[S_ROUTES] = {"checkin", "connect", "scep", "enroll",
                                                    "health",  "other",   "admin"};

/* ---- the gateway's own counts ---- */

static int s_route(gw_admin_t *self, struct evhttp_request *req)
{
    const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
    const char *path = u ? evhttp_uri_get_path(u) : NULL;
    if (!path)
        return 5;
    for (int i = 0; i < 4; i++)
        if (self->paths[i] && strcmp(path, self->paths[i]) == 0)
            return i;
    if (strcmp(path, "/health") == 0)
        return 4;
    return 5;
}

static void s_on_answered(void *arg, struct evhttp_request *req, int code)
{
    gw_admin_t *self = arg;
    if (code < 100 || code > 599)
        return;
    int r = self->in_admin ? 6 : s_route(self, req);
    pm_stats_series_t **slot = &self->by_code[r][code - 100];
    if (!*slot) {
        char c[8];
        snprintf(c, sizeof c, "%d", code);
        *slot =
            pm_stats_get(self->stats, PM_STATS_COUNTER, "gateway_responses_total",
                         "HTTP answers, by route and status", "route", s_route_names[r], "code", c);
    }
    pm_stats_inc(*slot);
}

static void s_on_latency(void *arg, double ms)
{
    gw_admin_t *self = arg;
    pm_stats_observe_ms(self->latency, ms);
}

//  gw_server's and gw_enroll's own counts, just before each snapshot.
static void s_collect(void *arg, pm_stats_t *st)
{
    gw_admin_t *self = arg;
    if (self->srv) {
        gw_server_stats_t s;
        gw_server_stats(self->srv, &s);
        pm_stats_set_count(pm_stats_counter(st, "gateway_device_requests_total",
                                            "device requests received (check-in and command "
                                            "loop)"),
                           s.requests);
        pm_stats_set_count(pm_stats_counter(st, "gateway_rejected_total",
                                            "device requests rejected by the gateway (400 and a "
                                            "security.rejected event)"),
                           s.rejected);
        pm_stats_set_count(pm_stats_counter(st, "gateway_unavailable_total",
                                            "device requests answered 503 (back end down or slow)"),
                           s.unavailable);
        pm_stats_set(
            pm_stats_gauge(st, "gateway_in_flight", "device requests waiting for the back end now"),
            (double)s.in_flight);
        pm_stats_set_count(
            pm_stats_counter(st, "gateway_tls_handshakes_total", "TLS handshakes completed"),
            s.tls_handshakes);
        pm_stats_set_count(
            pm_stats_counter(st, "gateway_tls_accepts_total", "TLS handshakes started"),
            s.tls_accepts);
    }
    if (self->enroll) {
        gw_enroll_stats_t e;
        gw_enroll_stats(self->enroll, &e);
        pm_stats_set_count(
            pm_stats_counter(st, "gateway_scep_requests_total", "SCEP requests relayed to the ca"),
            e.scep);
        pm_stats_set_count(
            pm_stats_counter(st, "gateway_profiles_total", "enrollment profiles served"),
            e.profiles);
        pm_stats_set_count(pm_stats_counter(st, "gateway_enroll_denied_total",
                                            "profile downloads refused (basic auth)"),
                           e.denied);
        pm_stats_set_count(pm_stats_counter(st, "gateway_enroll_unavailable_total",
                                            "SCEP/profile requests answered 503 (ca down)"),
                           e.unavailable);
    }
    if (self->bus)
        pm_stats_collect_bus(st, self->bus);
}

/* ---- other processes' snapshots ---- */

static void s_on_stats(void *arg, const char *topic, const pm_msg_t *msg)
{
    (void)topic;
    gw_admin_t *self = arg;
    if (pm_msg_type(msg) != PM_MSG_STATS)
        return; //  an `event` whose name starts with stats.: not ours
    const char *process = pm_msg_str(msg, "process"), *instance = pm_msg_str(msg, "instance");
    if (process && instance && strcmp(process, pm_stats_process(self->stats)) == 0 &&
        strcmp(instance, pm_stats_instance(self->stats)) == 0)
        return; //  our own, rendered live
    if (pm_stats_board_put(self->board, msg) < 0) {
        pm_stats_board_expire(self->board, S_MIN_KEEP_S); //  make room, then once more
        if (pm_stats_board_put(self->board, msg) < 0)
            pm_debug("stats from %s/%s not kept (malformed, or %d processes already)",
                     process ? process : "?", instance ? instance : "?", S_MAX_PEERS);
    }
}

/* ---- exposition ---- */

char *gw_admin_render(gw_admin_t *self, size_t *len)
{
    pm_stats_board_expire(self->board, S_MIN_KEEP_S);
    pm_msg_t *own = pm_stats_snapshot(self->stats);
    char *text = pm_stats_board_render(self->board, own, len);
    pm_msg_destroy(&own);
    return text;
}

static void s_admin(gw_admin_t *self, struct evhttp_request *req);

static void s_on_admin(struct evhttp_request *req, void *arg)
{
    gw_admin_t *self = arg;
    self->in_admin = true;
    s_admin(self, req);
    self->in_admin = false;
}

static void s_admin(gw_admin_t *self, struct evhttp_request *req)
{
    const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
    const char *path = u ? evhttp_uri_get_path(u) : NULL;
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    if (!path || strcmp(path, "/metrics") != 0) {
        gw_http_send_text(req, 404, "not found: GET /metrics\n");
        return;
    }
    if (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_HEAD) {
        gw_http_send_text(req, 405, "use GET\n");
        return;
    }
    pm_stats_inc(self->scrapes);
    size_t len = 0;
    char *text = gw_admin_render(self, &len);
    if (!text) {
        gw_http_send_text(req, 500, "out of memory\n");
        return;
    }
    gw_http_send(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}

/* ---- publishing our snapshot ---- */

static void s_arm(gw_admin_t *self)
{
    int ms = pm_stats_next_ms(self->stats);
    if (ms < 0)
        return;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(self->timer, &tv);
}

static void s_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gw_admin_t *self = arg;
    if (pm_stats_tick(self->stats, self->bus) != 0)
        pm_bus_process(self->bus); //  foreign loop: after a publish (pm_bus.h)
    pm_stats_board_expire(self->board, S_MIN_KEEP_S);
    s_arm(self);
}

/* ---- life ---- */

static int s_listen(gw_admin_t *self, const char *listen)
{
    struct sockaddr_storage ss;
    int sslen = sizeof ss;
    memset(&ss, 0, sizeof ss);
    if (evutil_parse_sockaddr_port(listen, (struct sockaddr *)&ss, &sslen) < 0) {
        pm_error("bad admin-listen '%s': use address:port, e.g. 127.0.0.1:9640 (or off)", listen);
        return -1;
    }
    bool loopback = (ss.ss_family == AF_INET &&
                     (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127) ||
                    (ss.ss_family == AF_INET6 &&
                     IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ss)->sin6_addr));
    if (!loopback)
        pm_warn("admin-listen %s is not loopback: anyone who reaches it reads the metrics "
                "(no secrets, but fleet sizes and traffic); firewall it or use 127.0.0.1",
                listen);
    self->http = evhttp_new(self->base);
    if (!self->http)
        return -1;
    evhttp_set_max_body_size(self->http, 0);
    evhttp_set_max_headers_size(self->http, 16384);
    evhttp_set_timeout(self->http, 10);
    evhttp_set_allowed_methods(self->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
    evhttp_set_gencb(self->http, s_on_admin, self);
    //  the address as parsed: evhttp_bind_socket_with_handle wants host and port apart
    char host[INET6_ADDRSTRLEN] = "";
    int port = 0;
    if (ss.ss_family == AF_INET) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host, sizeof host);
        port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    } else {
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, host, sizeof host);
        port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    struct evhttp_bound_socket *bs =
        evhttp_bind_socket_with_handle(self->http, host, (ev_uint16_t)port);
    if (!bs) {
        //  not fatal: devices matter more than metrics (and several gateways on
        //  one host share the device port, not this one)
        pm_warn("cannot listen on admin-listen %s: %s; this gateway serves no /metrics (pick "
                "a free port per gateway, or set admin-listen off)",
                listen, evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        evhttp_free(self->http);
        self->http = NULL;
        return 0;
    }
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&bound, &blen) == 0)
        self->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                       : ((struct sockaddr_in *)&bound)->sin_port);
    pm_info("admin listener on %s (port %d): GET /metrics", listen, self->port);
    return 0;
}

gw_admin_t *gw_admin_new(const gw_admin_config_t *cfg, struct event_base *base, pm_bus_t *bus,
                         pm_stats_t *stats, gw_server_t *srv, gw_enroll_t *enroll)
{
    gw_admin_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->cfg = *cfg;
    self->base = base;
    self->bus = bus;
    self->stats = stats;
    self->srv = srv;
    self->enroll = enroll;
    self->board = pm_stats_board_new(S_MAX_PEERS);
    if (!self->board)
        goto fail;
    const char *p[4] = {cfg->checkin_path, cfg->server_path, cfg->scep_path, cfg->enroll_path};
    for (int i = 0; i < 4; i++)
        if (p[i] && *p[i] && !(self->paths[i] = strdup(p[i])))
            goto fail;
    self->latency = pm_stats_histogram(stats, "gateway_request_duration_seconds",
                                       "device requests (check-in, command loop): time from "
                                       "arrival to the answer, back end included");
    self->scrapes = pm_stats_counter(stats, "gateway_admin_scrapes_total",
                                     "GET /metrics served by the admin listener");
    pm_stats_set_collect(stats, s_collect, self);
    gw_http_set_observer(&(gw_http_observer_t){s_on_answered, s_on_latency, self});
    if (bus && pm_bus_subscribe(bus, "stats.", s_on_stats, self) < 0)
        pm_warn("admin: cannot subscribe to stats.*: /metrics shows the gateway only (set "
                "subscribe-endpoint)");
    self->timer = evtimer_new(base, s_on_timer, self);
    if (!self->timer)
        goto fail;
    s_arm(self);
    const char *l = cfg->listen;
    if (l && *l && strcmp(l, "off") != 0 && s_listen(self, l) < 0)
        goto fail;
    return self;
fail:
    gw_admin_destroy(&self);
    return NULL;
}

void gw_admin_destroy(gw_admin_t **pself)
{
    if (!pself || !*pself)
        return;
    gw_admin_t *self = *pself;
    gw_http_set_observer(NULL);
    pm_stats_set_collect(self->stats, NULL, NULL);
    if (self->timer)
        event_free(self->timer);
    if (self->http)
        evhttp_free(self->http);
    pm_stats_board_destroy(&self->board);
    for (int i = 0; i < 4; i++)
        free(self->paths[i]);
    free(self);
    *pself = NULL;
}

int gw_admin_port(const gw_admin_t *self)
{
    return self ? self->port : 0;
}
