/*  gw_http — the gateway's HTTP answers (see gw_http.h). */
#include "gw_http.h"

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <string.h>

static gw_http_observer_t s_obs;

void gw_http_set_observer(const gw_http_observer_t *obs)
{
    s_obs = obs ? *obs : (gw_http_observer_t){0};
}

void gw_http_device_latency(double ms)
{
    if (s_obs.latency)
        s_obs.latency(s_obs.arg, ms);
}

void gw_http_send(struct evhttp_request *req, int code, const char *ctype, const void *body,
                  size_t len)
{
    if (s_obs.answered)
        s_obs.answered(s_obs.arg, req, code);
    struct evbuffer *buf = evbuffer_new();
    if (buf && len)
        evbuffer_add(buf, body, len);
    if (ctype)
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
    evhttp_send_reply(req, code, NULL, buf);
    if (buf)
        evbuffer_free(buf);
}

void gw_http_send_text(struct evhttp_request *req, int code, const char *text)
{
    gw_http_send(req, code, "text/plain; charset=utf-8", text, strlen(text));
}

void gw_http_send_503(struct evhttp_request *req, int retry_after_s, const char *text)
{
    char ra[16];
    snprintf(ra, sizeof ra, "%d", retry_after_s);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", ra);
    gw_http_send_text(req, 503, text);
}
