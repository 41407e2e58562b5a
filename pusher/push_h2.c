/*  push_h2 — the pusher's HTTP/2 client on libnghttp2 + OpenSSL. See
 *  push_h2.h.
 */
#include "push_h2.h"
#include "pm_log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define S_CONN_MAX 64
#define S_BODY_MAX 600
#define S_RESP_MAX 512
#define S_READ_BUF (64 * 1024)
#define S_RECONNECT_MIN_MS 100
#define S_RECONNECT_MAX_MS 5000

typedef struct s_conn s_conn_t;

typedef struct s_req {
    struct s_req *prev, *next; //  in h->queue (not yet on a connection) or h->active
    push_h2_t *h;
    s_conn_t *conn; //  NULL while queued
    int32_t stream_id;
    void *ud;
    int64_t deadline_ms;
    char path[300];
    char topic[300];
    char prio[8];
    char expiration[24];
    char body[S_BODY_MAX];
    size_t body_len, body_off;
    unsigned status;
    char apns_id[64];
    char resp[S_RESP_MAX];
    size_t resp_len;
} s_req_t;

typedef enum { C_CONNECTING = 0, C_HANDSHAKE, C_READY, C_DRAINING } s_cstate_t;

struct s_conn {
    push_h2_t *h;
    int fd;
    SSL *ssl;
    nghttp2_session *sess;
    s_cstate_t state;
    unsigned gen; //  identity generation of its SSL_CTX
    int nstreams; //  our requests on it
    short events; //  what the TLS layer waits for
    uint8_t *out; //  frames not yet written (plaintext for SSL_write)
    size_t out_len, out_cap;
    bool write_blocked;
};

typedef struct {
    s_req_t *head, *tail;
    size_t n;
} s_list_t;

struct push_h2 {
    push_h2_cfg_t cfg;
    char host[256];
    char port[8];
    bool host_is_ip;
    char ca_file[1024];
    SSL_CTX *ctx;
    unsigned gen;
    push_h2_done_fn *fn;
    void *arg;
    s_conn_t *conns[S_CONN_MAX];
    int nconns;
    s_conn_t *polled[S_CONN_MAX]; //  the connection behind each pollfd
    int npolled;
    s_list_t queue, active;
    uint8_t *rbuf;
    int64_t reconnect_at;
    int reconnect_ms;
    char last_error[400];
    uint64_t connects;
};

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- request lists ---- */

static void s_list_add(s_list_t *l, s_req_t *r)
{
    r->next = NULL;
    r->prev = l->tail;
    if (l->tail)
        l->tail->next = r;
    else
        l->head = r;
    l->tail = r;
    l->n++;
}

static void s_list_del(s_list_t *l, s_req_t *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        l->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        l->tail = r->prev;
    r->prev = r->next = NULL;
    l->n--;
}

//  Report and free a request (it must be in no list).
static void s_complete(push_h2_t *h, s_req_t *r, const char *error, bool timeout)
{
    push_h2_result_t res = {.ud = r->ud,
                            .error = error,
                            .timeout = timeout,
                            .status = r->status,
                            .apns_id = r->apns_id,
                            .body = r->resp};
    if (h->fn)
        h->fn(h->arg, &res);
    free(r);
}

/* ---- TLS ---- */

static int s_make_ctx(push_h2_t *h, X509 *cert, EVP_PKEY *key, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    static const unsigned char alpn[] = "\x02h2";
    if (!ctx) {
        snprintf(err, errlen, "TLS setup failed (out of memory?)");
        return -1;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1) != 0 ||
        SSL_CTX_use_certificate(ctx, cert) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "the push certificate and key cannot be used as TLS client identity");
        SSL_CTX_free(ctx);
        return -1;
    }
    if (h->ca_file[0] ? SSL_CTX_load_verify_locations(ctx, h->ca_file, NULL) != 1
                      : SSL_CTX_set_default_verify_paths(ctx) != 1) {
        snprintf(err, errlen, "cannot load the CA bundle %s (check apns-ca)",
                 h->ca_file[0] ? h->ca_file : "(system)");
        SSL_CTX_free(ctx);
        return -1;
    }
    SSL_CTX_free(h->ctx);
    h->ctx = ctx;
    h->gen++;
    return 0;
}

/* ---- connections ---- */

static void s_conn_fail(s_conn_t *c, const char *why);

static void s_conn_free(s_conn_t *c)
{
    push_h2_t *h = c->h;
    for (int i = 0; i < h->nconns; i++)
        if (h->conns[i] == c) {
            h->conns[i] = h->conns[--h->nconns];
            break;
        }
    if (c->sess)
        nghttp2_session_del(c->sess);
    if (c->ssl)
        SSL_free(c->ssl);
    if (c->fd >= 0)
        close(c->fd);
    free(c->out);
    free(c);
}

static ssize_t s_send_cb(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)s, (void)flags;
    s_conn_t *c = ud;
    if (c->out_len + len > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 16384;
        while (cap < c->out_len + len)
            cap *= 2;
        uint8_t *p = realloc(c->out, cap);
        if (!p)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        c->out = p;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    return (ssize_t)len;
}

static int s_header_cb(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                       size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                       void *ud)
{
    (void)flags, (void)ud;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    s_req_t *r = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!r)
        return 0;
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        unsigned st = 0;
        for (size_t i = 0; i < valuelen && i < 4 && value[i] >= '0' && value[i] <= '9'; i++)
            st = st * 10 + (unsigned)(value[i] - '0');
        r->status = st;
    } else if (namelen == 7 && memcmp(name, "apns-id", 7) == 0 && valuelen < sizeof r->apns_id) {
        memcpy(r->apns_id, value, valuelen);
        r->apns_id[valuelen] = 0;
    }
    return 0;
}

static int s_data_cb(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data,
                     size_t len, void *ud)
{
    (void)flags, (void)ud;
    s_req_t *r = nghttp2_session_get_stream_user_data(s, sid);
    if (!r)
        return 0;
    size_t room = S_RESP_MAX - 1 - r->resp_len;
    size_t n = len < room ? len : room;
    memcpy(r->resp + r->resp_len, data, n);
    r->resp_len += n;
    r->resp[r->resp_len] = 0;
    return 0;
}

static int s_close_cb(nghttp2_session *s, int32_t sid, uint32_t code, void *ud)
{
    s_conn_t *c = ud;
    s_req_t *r = nghttp2_session_get_stream_user_data(s, sid);
    if (!r)
        return 0; //  timed out earlier (already reported)
    nghttp2_session_set_stream_user_data(s, sid, NULL);
    c->nstreams--;
    s_list_del(&c->h->active, r);
    char why[120];
    if (r->status && code == NGHTTP2_NO_ERROR) {
        s_complete(c->h, r, NULL, false);
        return 0;
    }
    snprintf(why, sizeof why, "%s (HTTP/2 %s)",
             code == NGHTTP2_REFUSED_STREAM ? "stream refused by APNs (GOAWAY)"
                                            : "stream reset by APNs",
             nghttp2_http2_strerror(code));
    r->status = 0;
    s_complete(c->h, r, why, false);
    return 0;
}

static int s_frame_recv_cb(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)s;
    s_conn_t *c = ud;
    if (f->hd.type == NGHTTP2_GOAWAY) {
        pm_debug("APNs sent GOAWAY (%s): no new pushes on this connection",
                 nghttp2_http2_strerror(f->goaway.error_code));
        c->state = C_DRAINING;
    }
    return 0;
}

static ssize_t s_body_cb(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *ud)
{
    (void)s, (void)sid, (void)ud;
    s_req_t *r = src->ptr;
    size_t n = r->body_len - r->body_off;
    if (n > len)
        n = len;
    memcpy(buf, r->body + r->body_off, n);
    r->body_off += n;
    if (r->body_off == r->body_len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

//  Write what nghttp2 has to send, then the buffer to the socket.
//  0, or -1 when the connection failed (it is freed).
static int s_flush(s_conn_t *c)
{
    if (!c->sess)
        return 0;
    int rv = nghttp2_session_send(c->sess);
    if (rv != 0) {
        s_conn_fail(c, nghttp2_strerror(rv));
        return -1;
    }
    size_t off = 0;
    while (off < c->out_len) {
        ERR_clear_error();
        int n = SSL_write(c->ssl, c->out + off, (int)(c->out_len - off));
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
            c->write_blocked = true;
            break;
        }
        s_conn_fail(c, "TLS write failed (connection lost)");
        return -1;
    }
    if (off == c->out_len)
        c->write_blocked = false;
    memmove(c->out, c->out + off, c->out_len - off);
    c->out_len -= off;
    return 0;
}

static int s_session_start(s_conn_t *c)
{
    nghttp2_session_callbacks *cbs = NULL;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        return -1;
    nghttp2_session_callbacks_set_send_callback(cbs, s_send_cb);
    nghttp2_session_callbacks_set_on_header_callback(cbs, s_header_cb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, s_data_cb);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, s_close_cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, s_frame_recv_cb);
    int rv = nghttp2_session_client_new(&c->sess, cbs, c);
    nghttp2_session_callbacks_del(cbs);
    if (rv != 0)
        return -1;
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                   {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20}};
    if (nghttp2_submit_settings(c->sess, NGHTTP2_FLAG_NONE, iv, 2) != 0)
        return -1;
    //  answers are tiny, but thousands in flight: a large connection window
    nghttp2_session_set_local_window_size(c->sess, NGHTTP2_FLAG_NONE, 0, 16 << 20);
    return 0;
}

//  Fail every request on the connection (retryable), close it, and fail the
//  queue too when no connection is left to take it.
static void s_conn_fail(s_conn_t *c, const char *why)
{
    push_h2_t *h = c->h;
    char msg[400];
    snprintf(msg, sizeof msg, "%s", why);
    snprintf(h->last_error, sizeof h->last_error, "%s", why);
    bool was_up = c->sess != NULL;
    pm_debug("APNs connection %s: %s (%d streams)", was_up ? "lost" : "failed", why, c->nstreams);
    //  detach first: completions may submit new requests
    nghttp2_session *sess = c->sess;
    c->sess = NULL;
    s_list_t mine = {0};
    for (s_req_t *r = h->active.head, *next; r; r = next) {
        next = r->next;
        if (r->conn == c) {
            s_list_del(&h->active, r);
            s_list_add(&mine, r);
        }
    }
    if (sess)
        nghttp2_session_del(sess);
    s_conn_free(c);
    if (!was_up) {
        //  could not connect: back off before the next attempt
        h->reconnect_ms = h->reconnect_ms ? h->reconnect_ms * 2 : S_RECONNECT_MIN_MS;
        if (h->reconnect_ms > S_RECONNECT_MAX_MS)
            h->reconnect_ms = S_RECONNECT_MAX_MS;
        h->reconnect_at = s_now_ms() + h->reconnect_ms;
    }
    s_req_t *r;
    while ((r = mine.head)) {
        s_list_del(&mine, r);
        s_complete(h, r, msg, false);
    }
    bool any = false;
    for (int i = 0; i < h->nconns; i++)
        any = any || h->conns[i]->state != C_DRAINING;
    if (!any && !was_up) {
        //  nothing can take the queue now: fail it, the caller retries with backoff
        while ((r = h->queue.head)) {
            s_list_del(&h->queue, r);
            s_complete(h, r, msg, false);
        }
    }
}

static void s_conn_open(push_h2_t *h)
{
    if (h->nconns >= S_CONN_MAX || h->nconns >= h->cfg.connections)
        return;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    int rv = getaddrinfo(h->host, h->port, &hints, &ai);
    s_conn_t *c = calloc(1, sizeof *c);
    if (!c || rv != 0 || !ai) {
        char why[400];
        snprintf(why, sizeof why, "cannot resolve %s: %s", h->host,
                 rv ? gai_strerror(rv) : "out of memory");
        if (ai)
            freeaddrinfo(ai);
        if (c) {
            c->h = h;
            c->fd = -1;
            h->conns[h->nconns++] = c;
            s_conn_fail(c, why);
        }
        return;
    }
    c->h = h;
    c->gen = h->gen;
    c->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    h->conns[h->nconns++] = c;
    h->connects++;
    if (c->fd < 0) {
        freeaddrinfo(ai);
        s_conn_fail(c, "cannot create a socket");
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    rv = connect(c->fd, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    if (rv < 0 && errno != EINPROGRESS) {
        char why[400];
        snprintf(why, sizeof why, "cannot connect to %s:%s: %s", h->host, h->port, strerror(errno));
        s_conn_fail(c, why);
        return;
    }
    c->state = C_CONNECTING;
    c->events = POLLOUT;
}

static int s_read(s_conn_t *c);

//  TLS handshake step. 0, -1 failed (freed).
static int s_handshake(s_conn_t *c)
{
    push_h2_t *h = c->h;
    if (!c->ssl) {
        c->ssl = SSL_new(h->ctx);
        if (!c->ssl) {
            s_conn_fail(c, "TLS setup failed");
            return -1;
        }
        SSL_set_fd(c->ssl, c->fd);
        SSL_set_connect_state(c->ssl);
        X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
        if (h->host_is_ip) {
            X509_VERIFY_PARAM_set1_ip_asc(vp, h->host);
        } else {
            SSL_set_tlsext_host_name(c->ssl, h->host);
            X509_VERIFY_PARAM_set1_host(vp, h->host, 0);
        }
    }
    ERR_clear_error();
    int rv = SSL_do_handshake(c->ssl);
    if (rv == 1) {
        const unsigned char *alpn = NULL;
        unsigned alpnlen = 0;
        SSL_get0_alpn_selected(c->ssl, &alpn, &alpnlen);
        if (!alpn || alpnlen != 2 || memcmp(alpn, "h2", 2) != 0) {
            s_conn_fail(c, "APNs did not negotiate HTTP/2 (ALPN h2)");
            return -1;
        }
        if (s_session_start(c) < 0) {
            s_conn_fail(c, "HTTP/2 session setup failed (out of memory?)");
            return -1;
        }
        //  an identity changed during the handshake: finish nothing here, close
        c->state = c->gen == h->gen ? C_READY : C_DRAINING;
        c->events = POLLIN;
        h->reconnect_ms = 0;
        pm_debug("APNs connection up (%s:%s)", h->host, h->port);
        //  the server's first frames may already sit in the TLS buffer
        if (s_read(c) < 0)
            return -1;
        return s_flush(c);
    }
    int e = SSL_get_error(c->ssl, rv);
    if (e == SSL_ERROR_WANT_READ) {
        c->events = POLLIN;
        return 0;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        c->events = POLLOUT;
        return 0;
    }
    char why[512], ossl[120] = "";
    unsigned long oe = ERR_get_error();
    if (oe)
        ERR_error_string_n(oe, ossl, sizeof ossl);
    long vr = SSL_get_verify_result(c->ssl);
    snprintf(why, sizeof why, "TLS handshake with %.200s failed: %s", h->host,
             vr != X509_V_OK ? X509_verify_cert_error_string(vr) : (*ossl ? ossl : "closed"));
    s_conn_fail(c, why);
    return -1;
}

//  Read everything available into the session. 0, -1 failed (freed).
static int s_read(s_conn_t *c)
{
    for (;;) {
        ERR_clear_error();
        int n = SSL_read(c->ssl, c->h->rbuf, S_READ_BUF);
        if (n > 0) {
            ssize_t used = nghttp2_session_mem_recv(c->sess, c->h->rbuf, (size_t)n);
            if (used < 0) {
                s_conn_fail(c, nghttp2_strerror((int)used));
                return -1;
            }
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return 0;
        s_conn_fail(c,
                    e == SSL_ERROR_ZERO_RETURN ? "APNs closed the connection" : "connection lost");
        return -1;
    }
}

static void s_conn_io(s_conn_t *c, short revents)
{
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err) {
            char why[400];
            snprintf(why, sizeof why, "cannot connect to %s:%s: %s", c->h->host, c->h->port,
                     strerror(err ? err : errno));
            s_conn_fail(c, why);
            return;
        }
        c->state = C_HANDSHAKE;
    }
    if (c->state == C_HANDSHAKE) {
        s_handshake(c);
        return;
    }
    if ((revents & (POLLIN | POLLHUP | POLLERR)) && s_read(c) < 0)
        return;
    s_flush(c);
}

/* ---- dispatch ---- */

static size_t s_room(s_conn_t *c)
{
    if (c->state != C_READY || c->gen != c->h->gen || !c->sess)
        return 0;
    uint32_t peer =
        nghttp2_session_get_remote_settings(c->sess, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    int max = c->h->cfg.streams;
    if (peer < (uint32_t)max)
        max = (int)peer;
    return c->nstreams < max ? (size_t)(max - c->nstreams) : 0;
}

static int s_attach(s_conn_t *c, s_req_t *r)
{
    nghttp2_nv nv[] = {
#define S_NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE}
        S_NV(":method", "POST"),
        S_NV(":scheme", "https"),
        S_NV(":authority", c->h->host),
        S_NV(":path", r->path),
        S_NV("apns-topic", r->topic),
        S_NV("apns-push-type", "mdm"),
        S_NV("apns-priority", r->prio),
        S_NV("apns-expiration", r->expiration),
        S_NV("content-type", "application/json"),
#undef S_NV
    };
    nghttp2_data_provider dp = {.source.ptr = r, .read_callback = s_body_cb};
    int32_t sid = nghttp2_submit_request(c->sess, NULL, nv, sizeof nv / sizeof *nv, &dp, r);
    if (sid < 0)
        return -1;
    r->stream_id = sid;
    r->conn = c;
    c->nstreams++;
    return 0;
}

//  Move queued requests onto connections with room; open one if needed.
static void s_dispatch(push_h2_t *h)
{
    while (h->queue.head) {
        s_conn_t *best = NULL;
        size_t room = 0;
        for (int i = 0; i < h->nconns; i++) {
            size_t r = s_room(h->conns[i]);
            if (r > room)
                room = r, best = h->conns[i];
        }
        if (!best)
            break;
        //  fill the emptiest connection in steps, so the pool shares the load
        size_t take = room < 64 ? room : 64;
        for (size_t k = 0; k < take && h->queue.head; k++) {
            s_req_t *r = h->queue.head;
            s_list_del(&h->queue, r);
            if (s_attach(best, r) < 0) {
                s_complete(h, r, "could not start the HTTP/2 request", false);
                continue;
            }
            s_list_add(&h->active, r);
        }
    }
    if (!h->queue.head || s_now_ms() < h->reconnect_at)
        return;
    //  still waiting: open a connection unless one is already on its way
    int live = 0;
    for (int i = 0; i < h->nconns; i++) {
        s_conn_t *c = h->conns[i];
        if (c->gen != h->gen || c->state == C_DRAINING)
            continue;
        if (c->state != C_READY)
            return;
        live++;
    }
    if (live < h->cfg.connections)
        s_conn_open(h);
}

static void s_expire(push_h2_t *h)
{
    int64_t now = s_now_ms();
    s_list_t *lists[2] = {&h->queue, &h->active};
    for (int l = 0; l < 2; l++) {
        s_req_t *r;
        while ((r = lists[l]->head) && r->deadline_ms <= now) {
            s_list_del(lists[l], r);
            if (r->conn && r->conn->sess) {
                nghttp2_session_set_stream_user_data(r->conn->sess, r->stream_id, NULL);
                nghttp2_submit_rst_stream(r->conn->sess, NGHTTP2_FLAG_NONE, r->stream_id,
                                          NGHTTP2_CANCEL);
                r->conn->nstreams--;
            }
            r->status = 0;
            s_complete(h, r, "timeout", true);
        }
    }
}

/* ---- public ---- */

push_h2_t *push_h2_new(const push_h2_cfg_t *cfg, X509 *cert, EVP_PKEY *key, push_h2_done_fn *fn,
                       void *arg, char *err, size_t errlen)
{
    push_h2_t *h = calloc(1, sizeof *h);
    if (!h || !(h->rbuf = malloc(S_READ_BUF))) {
        snprintf(err, errlen, "out of memory");
        free(h);
        return NULL;
    }
    h->cfg = *cfg;
    if (h->cfg.connections <= 0)
        h->cfg.connections = 2;
    if (h->cfg.connections > S_CONN_MAX)
        h->cfg.connections = S_CONN_MAX;
    if (h->cfg.streams <= 0)
        h->cfg.streams = 500;
    if (h->cfg.timeout_ms <= 0)
        h->cfg.timeout_ms = 10000;
    h->fn = fn;
    h->arg = arg;
    snprintf(h->ca_file, sizeof h->ca_file, "%s", cfg->ca_file ? cfg->ca_file : "");
    //  https://host[:port] or https://[v6]:port
    const char *u = cfg->base_url ? cfg->base_url : "";
    if (strncmp(u, "https://", 8) != 0) {
        snprintf(err, errlen, "bad APNs URL \"%.100s\": want https://host[:port]", u);
        goto fail;
    }
    u += 8;
    const char *hs = u, *he;
    if (*u == '[') {
        hs = u + 1;
        he = strchr(hs, ']');
        if (!he)
            goto bad;
        u = he + 1;
    } else {
        he = u + strcspn(u, ":/");
        u = he;
    }
    if (he == hs || (size_t)(he - hs) >= sizeof h->host)
        goto bad;
    memcpy(h->host, hs, (size_t)(he - hs));
    h->host[he - hs] = 0;
    snprintf(h->port, sizeof h->port, "443");
    if (*u == ':') {
        size_t pl = strspn(u + 1, "0123456789");
        if (pl == 0 || pl >= sizeof h->port)
            goto bad;
        memcpy(h->port, u + 1, pl);
        h->port[pl] = 0;
        u += 1 + pl;
    }
    while (*u == '/')
        u++;
    if (*u)
        goto bad;
    unsigned char ip[16];
    h->host_is_ip = inet_pton(AF_INET, h->host, ip) == 1 || inet_pton(AF_INET6, h->host, ip) == 1;
    if (s_make_ctx(h, cert, key, err, errlen) < 0)
        goto fail;
    return h;
bad:
    snprintf(err, errlen, "bad APNs URL \"%.100s\": want https://host[:port]", cfg->base_url);
fail:
    push_h2_destroy(&h);
    return NULL;
}

void push_h2_destroy(push_h2_t **ph)
{
    if (!ph || !*ph)
        return;
    push_h2_t *h = *ph;
    h->fn = NULL; //  no completions while tearing down
    while (h->nconns)
        s_conn_free(h->conns[0]);
    s_req_t *r;
    while ((r = h->queue.head)) {
        s_list_del(&h->queue, r);
        free(r);
    }
    while ((r = h->active.head)) {
        s_list_del(&h->active, r);
        free(r);
    }
    SSL_CTX_free(h->ctx);
    free(h->rbuf);
    free(h);
    *ph = NULL;
}

int push_h2_set_identity(push_h2_t *h, X509 *cert, EVP_PKEY *key, char *err, size_t errlen)
{
    if (s_make_ctx(h, cert, key, err, errlen) < 0)
        return -1;
    //  connections with the old identity take no new streams and close when idle
    for (int i = 0; i < h->nconns; i++)
        if (h->conns[i]->state == C_READY)
            h->conns[i]->state = C_DRAINING;
    h->reconnect_at = 0;
    h->reconnect_ms = 0;
    return 0;
}

int push_h2_submit(push_h2_t *h, void *ud, const char *path, const char *topic, int priority,
                   long long expiration, const char *body, size_t body_len)
{
    s_req_t *r = calloc(1, sizeof *r);
    if (!r || body_len > sizeof r->body || strlen(path) >= sizeof r->path ||
        strlen(topic) >= sizeof r->topic) {
        free(r);
        return -1;
    }
    r->h = h;
    r->ud = ud;
    snprintf(r->path, sizeof r->path, "%s", path);
    snprintf(r->topic, sizeof r->topic, "%s", topic);
    snprintf(r->prio, sizeof r->prio, "%d", priority);
    snprintf(r->expiration, sizeof r->expiration, "%lld", expiration);
    memcpy(r->body, body, body_len);
    r->body_len = body_len;
    r->deadline_ms = s_now_ms() + h->cfg.timeout_ms;
    s_list_add(&h->queue, r);
    return 0;
}

int push_h2_pollfds(push_h2_t *h, struct pollfd *fds, int max)
{
    s_dispatch(h);
    for (int i = 0; i < h->nconns; i++)
        if (h->conns[i]->sess)
            s_flush(h->conns[i]); //  frames the dispatch produced (may fail a connection)
    int n = 0;
    for (int i = 0; i < h->nconns && n < max; i++) {
        s_conn_t *c = h->conns[i];
        short ev = c->events;
        if (c->sess)
            ev = POLLIN | (c->write_blocked ? POLLOUT : 0);
        fds[n] = (struct pollfd){.fd = c->fd, .events = ev};
        h->polled[n++] = c;
    }
    h->npolled = n;
    return n;
}

void push_h2_process(push_h2_t *h, const struct pollfd *fds, int n)
{
    //  connections may be freed while we go: look each one up again
    for (int i = 0; i < n && i < h->npolled; i++) {
        if (!fds[i].revents)
            continue;
        s_conn_t *c = h->polled[i];
        bool alive = false;
        for (int k = 0; k < h->nconns && !alive; k++)
            alive = h->conns[k] == c;
        if (alive)
            s_conn_io(c, fds[i].revents);
    }
    h->npolled = 0;
    s_expire(h);
    //  drained connections (GOAWAY, old identity) close when their streams are done
    for (int i = 0; i < h->nconns; i++) {
        s_conn_t *c = h->conns[i];
        if (c->state == C_DRAINING && c->nstreams == 0 && c->out_len == 0) {
            if (c->sess)
                nghttp2_session_del(c->sess), c->sess = NULL;
            s_conn_free(c);
            i = -1; //  the array changed
        }
    }
    s_dispatch(h);
    for (int i = 0; i < h->nconns; i++)
        if (h->conns[i]->sess && s_flush(h->conns[i]) < 0)
            i = -1;
}

long push_h2_next_ms(push_h2_t *h)
{
    int64_t now = s_now_ms(), t = INT64_MAX;
    if (h->queue.head && h->queue.head->deadline_ms < t)
        t = h->queue.head->deadline_ms;
    if (h->active.head && h->active.head->deadline_ms < t)
        t = h->active.head->deadline_ms;
    if (h->queue.head && h->reconnect_at > now && h->reconnect_at < t)
        t = h->reconnect_at;
    if (t == INT64_MAX)
        return -1;
    return t <= now ? 0 : (long)(t - now);
}

size_t push_h2_pending(const push_h2_t *h)
{
    return h->queue.n + h->active.n;
}

uint64_t push_h2_connects(const push_h2_t *h)
{
    return h->connects;
}
