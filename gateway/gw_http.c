/*  gw_http — the gateway's HTTP answers (see gw_http.h). */
#include "gw_http.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

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

//  Answers up to this size leave as one TLS record (the TLS maximum).
#define GW_HTTP_ONE_RECORD (16 * 1024)

//  Write the answer now, from the request's own loop iteration, instead of
//  when the socket reports EPOLLOUT: bufferevents (socket and OpenSSL alike)
//  only ever write from their write event, so every answer cost an
//  epoll_ctl adding EPOLLOUT, a loop iteration with its epoll_wait for it,
//  and an epoll_ctl removing it again. The socket is writable in practice
//  (an HTTP/1.1 server writes one small answer per request it read), so
//  the write is tried at once: on success the buffer is drained and the
//  bufferevent's write callback (evhttp: "answer sent", the connection goes
//  back to reading) is run deferred, exactly as after its own write;
//  whatever is not written (EAGAIN, an error) stays in the buffer for the
//  bufferevent, which goes on as before (with the OpenSSL bufferevent the
//  same bytes are retried: libevent sets SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
//  on every SSL it is given; an error is reported by the bufferevent's own next write).
static void s_write_now(struct bufferevent *bev, struct evbuffer *out, const unsigned char *data,
                        size_t n)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    if (ssl) {
        //  SSL_write needs an empty queue; ERR_clear_error walks its 16
        //  slots even when it is (~870 instructions per answer), a peek ~10 %.
        if (ERR_peek_error() != 0)
            ERR_clear_error();
        int w = SSL_write(ssl, data, (int)n);
        if (w <= 0) {
            //  the bufferevent retries (and reports a real error) itself
            ERR_clear_error();
            return;
        }
        evbuffer_drain(out, (size_t)w);
    } else {
        evutil_socket_t fd = bufferevent_getfd(bev);
        if (fd < 0 || evbuffer_write(out, fd) <= 0)
            return;
    }
    if (evbuffer_get_length(out) == 0) {
        //  Nothing left to write: stop the write event now, in this
        //  callback, so that the EPOLLOUT evhttp asked for cancels out in
        //  libevent's change list (the write callback may run only in the
        //  next loop iteration, after the change list went to the kernel).
        bufferevent_disable(bev, EV_WRITE);
        bufferevent_trigger(bev, EV_WRITE, BEV_TRIG_DEFER_CALLBACKS);
    }
}

static bool s_own_headers = true;
static unsigned long s_own_lines; //  header lines s_std_headers added (tests)

void gw_http_test_own_headers(bool on)
{
    s_own_headers = on;
}

unsigned long gw_http_test_own_lines(void)
{
    return s_own_lines;
}

//  The Date and Content-Length header lines evhttp adds to an HTTP/1.1
//  answer, the same text in the same place, made here instead: evhttp
//  formats Date with gmtime and a snprintf of seven fields for every answer
//  (evutil_date_rfc1123, ~3,400 instructions) and Content-Length with
//  another (~700); the date text changes once a second, so it is made once
//  a second (by evutil_date_rfc1123 itself) and kept. The conditions are
//  evhttp's (libevent 2.1 evhttp_make_header_response): HTTP/1.1 only; a
//  Content-Length only for an answer with a body (not HEAD, 1xx, 204 or
//  304) and neither Transfer-Encoding nor Content-Length already set.
//  (docs/gateway.md, "Session 11, gwcpu6")
static void s_std_headers(struct evhttp_request *req, int code)
{
    static time_t s_date_at = (time_t)-1;
    static char s_date[64];
    if (!s_own_headers || req->major != 1 || req->minor < 1)
        return;
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    time_t now = time(NULL);
    if (now != s_date_at) {
        struct tm tm;
        if (!gmtime_r(&now, &tm) || evutil_date_rfc1123(s_date, sizeof s_date, &tm) <= 0 ||
            strlen(s_date) >= sizeof s_date - 1) {
            s_date_at = (time_t)-1;
            return; //  evhttp makes them, as before
        }
        s_date_at = now;
    }
    if (!evhttp_find_header(h, "Date") && evhttp_add_header(h, "Date", s_date) == 0)
        s_own_lines++;
    bool needs_body = code != 204 && code != 304 && (code < 100 || code >= 200) &&
                      evhttp_request_get_command(req) != EVHTTP_REQ_HEAD;
    if (needs_body && !evhttp_find_header(h, "Transfer-Encoding") &&
        !evhttp_find_header(h, "Content-Length")) {
        char num[24], *e = num + sizeof num, *p = e;
        size_t n = evbuffer_get_length(evhttp_request_get_output_buffer(req));
        *--p = '\0';
        do
            *--p = (char)('0' + n % 10);
        while ((n /= 10) != 0);
        if (evhttp_add_header(h, "Content-Length", p) == 0)
            s_own_lines++;
    }
}

void gw_http_send(struct evhttp_request *req, int code, const char *ctype, const void *body,
                  size_t len)
{
    if (s_obs.answered)
        s_obs.answered(s_obs.arg, req, code);
    //  the request's own output buffer: no evbuffer of ours per answer
    if (len)
        evbuffer_add(evhttp_request_get_output_buffer(req), body, len);
    if (ctype)
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    //  evhttp leaves the header lines and the body in separate chains of the
    //  connection's output buffer, and bufferevent_openssl makes one
    //  SSL_write per chain: two TLS records, two write() calls and two TCP
    //  segments per answer. One contiguous chain: one of each, written at
    //  once (s_write_now). (Nothing is written by evhttp_send_reply itself;
    //  evcon outlives the call, it is freed only from its own callbacks.)
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    struct evbuffer *out = bev ? bufferevent_get_output(bev) : NULL;
    size_t before = out ? evbuffer_get_length(out) : 0;
    s_std_headers(req, code);
    evhttp_send_reply(req, code, NULL, NULL);
    size_t n = out ? evbuffer_get_length(out) : 0;
    if (n > 0 && n <= GW_HTTP_ONE_RECORD) {
        const unsigned char *data = evbuffer_pullup(out, -1);
        //  Only when the buffer held nothing else: no earlier write of the
        //  bufferevent's is pending (an SSL_write it must retry as it was).
        if (data && before == 0)
            s_write_now(bev, out, data, n);
    }
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
