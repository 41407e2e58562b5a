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

/* ---- pending request contexts ---- */

void gw_pending_link(gw_pending_t *p, gw_pending_t **head, struct evhttp_request *req)
{
    p->head = head;
    p->req = req;
    clock_gettime(CLOCK_MONOTONIC, &p->t0);
    p->prev = NULL;
    p->next = *head;
    if (*head)
        (*head)->prev = p;
    *head = p;
}

void gw_pending_unlink(gw_pending_t *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else if (p->head)
        *p->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->prev = p->next = NULL;
    if (p->guard)
        event_free(p->guard);
    p->guard = NULL;
}

bool gw_pending_done(const gw_pending_t *p)
{
    return !p->req && !p->bus_pending;
}

double gw_pending_ms(const gw_pending_t *p)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - p->t0.tv_sec) * 1e3 + (double)(t.tv_nsec - p->t0.tv_nsec) / 1e6;
}
