/*  gw_http — the gateway's HTTP answers (libevent evhttp), shared by the device
 *  routes (gw_server.c) and the enrollment routes (gw_enroll.c).
 */
#ifndef GW_HTTP_H
#define GW_HTTP_H

#include <event2/http.h>
#include <stddef.h>

//  Reply with `code`, an optional Content-Type and body (copied).
void gw_http_send(struct evhttp_request *req, int code, const char *ctype, const void *body,
                  size_t len);
//  Reply with a plain-text body.
void gw_http_send_text(struct evhttp_request *req, int code, const char *text);
//  503 with Retry-After: the client should come back later, not give up.
void gw_http_send_503(struct evhttp_request *req, int retry_after_s, const char *text);

//  Metrics hooks (gw_admin.c; the gateway is single-threaded): `answered` sees
//  every answer sent through gw_http_send (before it is sent), `latency` the
//  time a device request that went to the back end took, as reported by
//  gw_server through gw_http_device_latency. NULL hooks = nothing.
typedef struct {
    void (*answered)(void *arg, struct evhttp_request *req, int code);
    void (*latency)(void *arg, double ms);
    void *arg;
} gw_http_observer_t;
void gw_http_set_observer(const gw_http_observer_t *obs); //  copied; NULL removes
void gw_http_device_latency(double ms);

#endif
