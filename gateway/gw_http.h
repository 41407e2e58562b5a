/*  gw_http — the gateway's HTTP answers (libevent evhttp), shared by the device
 *  routes (gw_server.c) and the enrollment routes (gw_enroll.c).
 */
#ifndef GW_HTTP_H
#define GW_HTTP_H

#include <event2/event.h>
#include <event2/http.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

//  Reply with `code`, an optional Content-Type and body (copied).
void gw_http_send(struct evhttp_request *req, int code, const char *ctype, const void *body,
                  size_t len);
//  Reply with a plain-text body.
void gw_http_send_text(struct evhttp_request *req, int code, const char *text);
//  503 with Retry-After: the client should come back later, not give up.
void gw_http_send_503(struct evhttp_request *req, int retry_after_s, const char *text);
//  Tests only: false leaves the Date and Content-Length lines to evhttp, as
//  before session 11 (gw_http.c s_std_headers), to compare the two.
void gw_http_test_own_headers(bool on);
//  Tests only: how many Date and Content-Length lines gw_http has added
//  itself so far (evhttp adds any it did not).
unsigned long gw_http_test_own_lines(void);

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

//  What every request context of the gateway (device routes, enrollment
//  routes) keeps while a request waits for the bus: its place in the owner's
//  list of live requests, the evhttp request until it is answered, whether
//  the bus still owes its callback, the guard timer and the start time.
//  Embed it as the FIRST member of the route's own context, so that the list
//  can be walked as that type.
typedef struct gw_pending gw_pending_t;
struct gw_pending {
    gw_pending_t *prev, *next;
    gw_pending_t **head;        //  the owner's list
    struct evhttp_request *req; //  NULL once answered
    bool bus_pending;           //  the bus still owes us its callback
    struct event *guard;        //  answers 503 if the back end takes too long; may be NULL
    struct timespec t0;         //  CLOCK_MONOTONIC, when the request arrived
};
//  Put p (zeroed by the caller) at the front of *head, for req; stamps t0.
void gw_pending_link(gw_pending_t *p, gw_pending_t **head, struct evhttp_request *req);
//  Take p out of its list and free its guard timer (the caller frees p).
void gw_pending_unlink(gw_pending_t *p);
//  True once nothing refers to p any more: answered, and no bus callback owed.
bool gw_pending_done(const gw_pending_t *p);
//  Milliseconds since p arrived.
double gw_pending_ms(const gw_pending_t *p);

#endif
