/*  fapns_server — the APNs stand-in's HTTP/2 server (bin/picomdm-fake-apns).
 *
 *  TLS (OpenSSL) with ALPN "h2" only — a client that does not offer h2
 *  (HTTP/1.1) fails the handshake with no_application_protocol, as APNs
 *  does — and a required client certificate issued by the configured CA;
 *  HTTP/2 framing by libnghttp2, I/O by libevent (bufferevent_openssl).
 *  Every stream is judged by fapns_check and the failure rules; every
 *  accepted push goes to the delivery hook (docs/push.md, "Delivery hook"):
 *    - a UNIX datagram to `deliver_unix`, one JSON object per push:
 *        {"token":"<64 hex>","topic":"<apns-topic>","mdm":"<PushMagic>","apns_id":"<id>"}
 *    - and/or the same JSON as one line appended to `deliver_file`.
 *  The optional control endpoint (plain HTTP/1.1 on loopback, libevent evhttp):
 *      GET /stats          counters, "name value" per line
 *      POST /rules         add failure rules (body: rule lines, fapns_check.h)
 *      DELETE /rules       remove every rule
 *      POST /tokens        add known tokens ("<hex> [topic]" lines)
 *
 *  Single-threaded; fapns_server_run returns when the event loop is stopped
 *  (SIGINT/SIGTERM).
 */
#ifndef FAPNS_SERVER_H
#define FAPNS_SERVER_H

#include "fapns_check.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    const char *listen;       //  "127.0.0.1:2197" (port 0 = pick one)
    const char *tls_cert;     //  server certificate (PEM, chain allowed)
    const char *tls_key;      //  its key (PEM)
    const char *client_ca;    //  CA file the client (push) certificate must chain to
    const char *control;      //  "127.0.0.1:PORT" for the control endpoint, NULL = none
    const char *deliver_unix; //  UNIX datagram socket path, NULL = none
    const char *deliver_file; //  file to append delivery lines to, NULL = none
    int max_streams;          //  SETTINGS_MAX_CONCURRENT_STREAMS (0 = 1000)
} fapns_server_cfg_t;

typedef struct fapns_server fapns_server_t;

//  Takes ownership of `tokens` (NULL = accept any token) and `rules` (may be
//  NULL). Binds the sockets. Returns NULL with a reason in err.
fapns_server_t *fapns_server_new(const fapns_server_cfg_t *cfg, fapns_tokens_t **tokens,
                                 fapns_rules_t **rules, char *err, size_t errlen);
void fapns_server_destroy(fapns_server_t **srv);
int fapns_server_port(const fapns_server_t *srv);
int fapns_server_control_port(const fapns_server_t *srv);
//  Run until interrupted. 0 on a clean stop.
int fapns_server_run(fapns_server_t *srv);

#endif
