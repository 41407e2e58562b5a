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

#endif
