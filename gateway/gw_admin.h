/*  gw_admin — the gateway's admin listener (picomdm-gateway, issue #7): plain
 *  HTTP, loopback by default (admin-listen 127.0.0.1:9640), a separate evhttp
 *  on the gateway's event loop.
 *
 *    GET /metrics   Prometheus text format 0.0.4: the gateway's own counters
 *                   and every stats.<process> snapshot received on the bus
 *                   (docs/metrics.md)
 *
 *  It also does the gateway's own counting (requests by route and status via
 *  the gw_http observer, device latency, TLS handshakes, 503s, in flight) and
 *  publishes the gateway's snapshot every stats-interval-s. Nothing device-
 *  secret is ever exposed: metric names, counts and route names only.
 *
 *  Borrows base, bus, stats, srv and enroll (srv/enroll may be NULL); destroy
 *  the admin before them.
 */
#ifndef GW_ADMIN_H
#define GW_ADMIN_H

#include "gw_enroll.h"
#include "gw_server.h"
#include "pm_bus.h"
#include "pm_stats.h"

#include <event2/event.h>

typedef struct {
    const char *listen;       //  "127.0.0.1:9640"; NULL, "" or "off": no listener
    const char *checkin_path; //  route labels: the configured device paths
    const char *server_path;
    const char *scep_path;   //  may be NULL/empty
    const char *enroll_path; //  may be NULL/empty
} gw_admin_config_t;

typedef struct gw_admin gw_admin_t;

//  Count, publish and (if cfg->listen) serve. NULL (reason logged, with what to
//  do next) if the address is bad or in use, or on OOM.
gw_admin_t *gw_admin_new(const gw_admin_config_t *cfg, struct event_base *base, pm_bus_t *bus,
                         pm_stats_t *stats, gw_server_t *srv, gw_enroll_t *enroll);
void gw_admin_destroy(gw_admin_t **self);

//  The admin port bound (0 = no listener).
int gw_admin_port(const gw_admin_t *self);

//  The current exposition text (malloc'd, caller frees). Tests.
char *gw_admin_render(gw_admin_t *self, size_t *len);

#endif
