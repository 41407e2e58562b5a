/*  gw_server — the device-facing HTTP(S) server of picomdm-gateway.
 *
 *  libevent evhttp on a listener shared through SO_REUSEPORT (several gateway
 *  processes may serve one port), TLS 1.2+ through bufferevent_openssl, or
 *  plain HTTP behind a TLS-terminating proxy. Routes:
 *
 *    PUT <checkin-path>  check-in (MessageType)       -> STORE_CHECKIN to "store"
 *    PUT <server-path>   command loop (Status), or a check-in when the body
 *                        has MessageType              -> STORE_CONNECT / STORE_CHECKIN
 *                        (CHECKIN / CONNECT to "scheduler" on the scheduler path)
 *    GET /health         200 "ok" and whether the back end answers
 *
 *  Every device request is authenticated (gw_auth) before its body is parsed;
 *  every rejection is a 400 (never 401), one log line and a security.rejected
 *  event. The event loop never blocks: bus calls are asynchronous and a back
 *  end that does not answer in time yields 503 with Retry-After.
 *
 *  Device path (direct_store, the default): once the scheduler has answered
 *  a `policy` request (asked at start and every refresh_s it gives), check-in
 *  and command-loop requests go straight to the store as store.checkin /
 *  store.connect with that policy: 4 bus hops instead of 8 (docs/queue.md).
 *  Until then, or with direct_store off, they go through the scheduler.
 *
 *  The server borrows the event base, the bus and the authenticator; the
 *  caller keeps them alive until gw_server_destroy and drives the bus fds
 *  itself (see gw_server_attach_bus).
 */
#ifndef GW_SERVER_H
#define GW_SERVER_H

#include "gw_auth.h"
#include "gw_enroll.h"
#include "pm_bus.h"

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *listen;            //  "address:port"
    const char *tls_cert;          //  PEM chain file (TLS mode)
    const char *tls_key;           //  PEM key file (TLS mode)
    bool tls_client_cert;          //  ask TLS clients for a certificate (mTLS identity)
    long tls_session_cache;        //  sessions in gw_tlscache (0: encrypted tickets)
    bool plain_http;               //  no TLS: behind a TLS-terminating proxy
    const char *proxy_cert_header; //  header with the URL-escaped client PEM (plain mode)
    const char *trusted_proxies;   //  comma-separated peer addresses allowed to send it
    const char *checkin_path;      //  CheckInURL path
    const char *server_path;       //  ServerURL path
    size_t body_max;               //  request body limit (bytes)
    size_t header_max;             //  request header block limit (bytes)
    int idle_timeout_s;            //  idle / slow-client read and write timeout
    int backend_timeout_ms;        //  total time to wait for the back end
    int retry_after_s;             //  Retry-After on 503
    bool insecure_lab_mode;        //  accept unsigned requests (lab only)
    bool user_auth_forward;        //  forward UserAuthenticate instead of declining (410)
    const char *backend_service;   //  "scheduler"
    bool direct_store;             //  device requests straight to store_service (see below)
    const char *store_service;     //  "store"
} gw_server_config_t;

typedef struct gw_server gw_server_t;

//  Bind and start serving. `auth` may be NULL only in insecure lab mode.
//  Returns NULL (reason logged, with what to do next) on a bad address, port
//  in use, unreadable TLS files...
gw_server_t *gw_server_new(const gw_server_config_t *cfg, struct event_base *base, pm_bus_t *bus,
                           gw_auth_t *auth);

//  Stop accepting, answer every request still waiting for the back end with
//  503 and close the listener. Call before destroying the bus.
void gw_server_shutdown(gw_server_t *srv);

//  Free everything (after the bus is destroyed: no callback can come later).
void gw_server_destroy(gw_server_t **srv);

//  Serve the SCEP and enrollment-profile routes too (gw_enroll.h). The server
//  borrows `enroll`: destroy it after gw_server_destroy.
void gw_server_set_enroll(gw_server_t *srv, gw_enroll_t *enroll);

//  The port actually bound (useful with port 0).
int gw_server_port(const gw_server_t *srv);

typedef struct {
    uint64_t requests;       //  device requests received
    uint64_t rejected;       //  400 answers made by the gateway
    uint64_t unavailable;    //  503 answers
    uint64_t in_flight;      //  waiting for the back end now
    uint64_t tls_handshakes; //  TLS handshakes completed (0 in plain-http mode)
    uint64_t tls_accepts;    //  TLS handshakes started
    uint64_t direct;         //  device requests sent straight to the store
} gw_server_stats_t;

void gw_server_stats(const gw_server_t *srv, gw_server_stats_t *st);

#endif
