/*  fapns_server — HTTP/2 (nghttp2) over TLS (OpenSSL, ALPN h2 only) on
 *  libevent, behaving like APNs for MDM pushes. See fapns_server.h.
 *  The connection/stream plumbing follows nghttp2's libevent server example.
 */
#include "fapns_server.h"
#include "pm_log.h"
#include "push_cert.h"

#include <czmq.h>

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <fcntl.h>
#include <msgpack.h>
#include <netdb.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define S_OUT_WOULDBLOCK (64 * 1024)
#define S_HDR_MAX 256
#define S_CONTROL_BODY_MAX (256 * 1024)

//  Counters shown by GET /stats (name, field).
#define S_STATS(X)                                                                                 \
    X(connections)                                                                                 \
    X(active_connections)                                                                          \
    X(tls_failures)                                                                                \
    X(alpn_refused)                                                                                \
    X(requests)                                                                                    \
    X(accepted)                                                                                    \
    X(rejected)                                                                                    \
    X(s400)                                                                                        \
    X(s403)                                                                                        \
    X(s404)                                                                                        \
    X(s405)                                                                                        \
    X(s410)                                                                                        \
    X(s413)                                                                                        \
    X(s429)                                                                                        \
    X(s500)                                                                                        \
    X(s503)                                                                                        \
    X(goaways)                                                                                     \
    X(delayed)                                                                                     \
    X(delivered)                                                                                   \
    X(deliver_errors)                                                                              \
    X(max_concurrent_streams)

typedef struct {
#define S_FIELD(n) unsigned long n;
    S_STATS(S_FIELD)
#undef S_FIELD
} s_stats_t;

typedef struct s_conn s_conn_t;

typedef struct s_stream {
    struct s_stream *prev, *next;
    s_conn_t *conn;
    int32_t id;
    char method[16], path[S_HDR_MAX], topic[S_HDR_MAX], push_type[32], priority[16], expiration[32],
        apns_id[64];
    bool has_topic, has_push_type, has_priority, has_expiration, bad_header, dup_header;
    uint8_t body[FAPNS_BODY_MAX];
    size_t body_len;
    bool too_large;
    fapns_verdict_t v;
    char resp[160];
    size_t resp_len, resp_off;
    struct event timer;
    bool timer_set;
    bool answered;
} s_stream_t;

struct s_conn {
    s_conn_t *prev, *next; //  the server's open connections
    fapns_server_t *srv;
    struct bufferevent *bev;
    nghttp2_session *session;
    char cert_topic[FAPNS_TOPIC_MAX];
    s_stream_t *streams;
    unsigned long open_streams;
    bool connected, closing;
};

struct fapns_server {
    fapns_server_cfg_t cfg;
    struct event_base *base;
    SSL_CTX *ssl_ctx;
    struct evconnlistener *listener;
    struct evhttp *http;
    struct event *sigint, *sigterm;
    int port, control_port;
    fapns_tokens_t *tokens;
    fapns_rules_t *rules;
    s_conn_t *conns; //  open connections (freed on destroy)
    int deliver_fd;
    zlist_t *deliver_backlog; //  zframe_t datagrams the receiver had no room for yet (oldest first)
    struct event *deliver_retry;
    FILE *deliver_file;
    struct sockaddr_un deliver_addr;
    uint64_t id_seq, id_salt;
    s_stats_t st;
};

static int s_session_send(s_conn_t *c);

/* ---- helpers ---- */

static int s_split_hostport(const char *hp, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(hp, ':');
    if (!colon || (size_t)(colon - hp) >= hostlen)
        return -1;
    memcpy(host, hp, (size_t)(colon - hp));
    host[colon - hp] = 0;
    char *end = NULL;
    long p = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end || p < 0 || p > 65535)
        return -1;
    *port = (int)p;
    return 0;
}

static int s_sock_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

static void s_stat_status(fapns_server_t *s, unsigned status)
{
    switch (status) {
    case 200:
        s->st.accepted++;
        return;
    case 400:
        s->st.s400++;
        break;
    case 403:
        s->st.s403++;
        break;
    case 404:
        s->st.s404++;
        break;
    case 405:
        s->st.s405++;
        break;
    case 410:
        s->st.s410++;
        break;
    case 413:
        s->st.s413++;
        break;
    case 429:
        s->st.s429++;
        break;
    case 500:
        s->st.s500++;
        break;
    case 503:
        s->st.s503++;
        break;
    default:
        break;
    }
    s->st.rejected++;
}

/* ---- delivery hook ---- */

//  A full receiver queue (net.unix.max_dgram_qlen is 10 on many machines) must
//  not lose a push the stand-in accepted: such datagrams wait in a bounded
//  backlog, in order, and a 5 ms timer retries them.
#define S_DELIVER_BACKLOG_MAX 100000

static void s_deliver_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fapns_server_t *s = arg;
    zframe_t *dg;
    while ((dg = zlist_first(s->deliver_backlog))) {
        if (sendto(s->deliver_fd, zframe_data(dg), zframe_size(dg), 0,
                   (struct sockaddr *)&s->deliver_addr, sizeof s->deliver_addr) < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)
                break;
            pm_debug("delivery datagram to %s failed: %m", s->cfg.deliver_unix);
            s->st.deliver_errors++;
        } else
            s->st.delivered++;
        dg = zlist_pop(s->deliver_backlog);
        zframe_destroy(&dg);
    }
    if (zlist_size(s->deliver_backlog)) {
        struct timeval tv = {0, 5000};
        event_add(s->deliver_retry, &tv);
    }
}

static void s_pack_str(msgpack_packer *pk, const char *key, const char *val)
{
    size_t kl = strlen(key), vl = strlen(val);
    msgpack_pack_str(pk, kl);
    msgpack_pack_str_body(pk, key, kl);
    msgpack_pack_str(pk, vl);
    msgpack_pack_str_body(pk, val, vl);
}

//  The delivery datagram: a msgpack map of four str values (token, topic, mdm
//  = PushMagic, apns_id), the receiver reads it with msgpack (docs/push.md).
static zframe_t *s_deliver_datagram(const s_stream_t *st)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    s_pack_str(&pk, "token", st->v.token);
    s_pack_str(&pk, "topic", st->topic);
    s_pack_str(&pk, "mdm", st->v.magic);
    s_pack_str(&pk, "apns_id", st->apns_id);
    zframe_t *dg = sb.data ? zframe_new(sb.data, sb.size) : NULL;
    msgpack_sbuffer_destroy(&sb);
    return dg;
}

static void s_deliver(fapns_server_t *s, const s_stream_t *st)
{
    if (s->deliver_fd < 0 && !s->deliver_file)
        return;
    if (s->deliver_file) { //  the log for people and tests: one JSON line per push
        char line[FAPNS_MAGIC_MAX + FAPNS_TOPIC_MAX + 256];
        int n = snprintf(line, sizeof line,
                         "{\"token\":\"%s\",\"topic\":\"%s\",\"mdm\":\"%s\",\"apns_id\":\"%s\"}\n",
                         st->v.token, st->topic, st->v.magic, st->apns_id);
        if (n < 0 || (size_t)n >= sizeof line || fputs(line, s->deliver_file) < 0 ||
            fflush(s->deliver_file) != 0)
            s->st.deliver_errors++;
    }
    if (s->deliver_fd < 0) {
        s->st.delivered++;
        return;
    }
    zframe_t *dg = s_deliver_datagram(st);
    if (!dg) {
        s->st.deliver_errors++;
        return;
    }
    if (!zlist_size(s->deliver_backlog)) {
        if (sendto(s->deliver_fd, zframe_data(dg), zframe_size(dg), 0,
                   (struct sockaddr *)&s->deliver_addr, sizeof s->deliver_addr) >= 0) {
            s->st.delivered++;
            zframe_destroy(&dg);
            return;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS) {
            pm_debug("delivery datagram to %s failed: %m", s->cfg.deliver_unix);
            s->st.deliver_errors++;
            zframe_destroy(&dg);
            return;
        }
    }
    if (zlist_size(s->deliver_backlog) >= S_DELIVER_BACKLOG_MAX ||
        zlist_append(s->deliver_backlog, dg) < 0) {
        zframe_destroy(&dg);
        s->st.deliver_errors++;
        return;
    }
    if (!evtimer_pending(s->deliver_retry, NULL)) {
        struct timeval tv = {0, 5000};
        event_add(s->deliver_retry, &tv);
    }
}

/* ---- streams ---- */

static void s_stream_free(s_stream_t *st)
{
    s_conn_t *c = st->conn;
    if (st->timer_set)
        event_del(&st->timer);
    if (st->prev)
        st->prev->next = st->next;
    else
        c->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    c->open_streams--;
    free(st);
}

static ssize_t s_resp_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                           uint32_t *data_flags, nghttp2_data_source *source, void *user_data)
{
    (void)session, (void)stream_id, (void)user_data;
    s_stream_t *st = source->ptr;
    size_t n = st->resp_len - st->resp_off;
    if (n > length)
        n = length;
    memcpy(buf, st->resp + st->resp_off, n);
    st->resp_off += n;
    if (st->resp_off == st->resp_len)
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

#define S_NV(name, value)                                                                          \
    {                                                                                              \
        (uint8_t *)(name), (uint8_t *)(value), sizeof(name) - 1, strlen(value),                    \
            NGHTTP2_NV_FLAG_NONE                                                                   \
    }

static void s_respond(s_stream_t *st)
{
    s_conn_t *c = st->conn;
    fapns_server_t *s = c->srv;
    char status[8];
    snprintf(status, sizeof status, "%u", st->v.status);
    st->answered = true;
    s_stat_status(s, st->v.status);
    if (st->v.status == 200) {
        s_deliver(s, st);
        nghttp2_nv hdrs[] = {S_NV(":status", status), S_NV("apns-id", st->apns_id)};
        nghttp2_submit_response(c->session, st->id, hdrs, 2, NULL);
        return;
    }
    int n;
    if (st->v.status == 410) {
        struct timeval tv;
        gettimeofday(&tv, NULL);
        n = snprintf(st->resp, sizeof st->resp, "{\"reason\":\"%s\",\"timestamp\":%lld}",
                     st->v.reason, (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000);
    } else {
        n = snprintf(st->resp, sizeof st->resp, "{\"reason\":\"%s\"}", st->v.reason);
    }
    st->resp_len = n > 0 && (size_t)n < sizeof st->resp ? (size_t)n : 0;
    char clen[16];
    snprintf(clen, sizeof clen, "%zu", st->resp_len);
    nghttp2_nv hdrs[] = {S_NV(":status", status), S_NV("apns-id", st->apns_id),
                         S_NV("content-type", "application/json"), S_NV("content-length", clen)};
    nghttp2_data_provider dp = {.source.ptr = st, .read_callback = s_resp_read};
    nghttp2_submit_response(c->session, st->id, hdrs, 4, &dp);
}

static void s_delay_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    s_stream_t *st = arg;
    s_conn_t *c = st->conn;
    st->timer_set = false;
    s_respond(st);
    s_session_send(c); //  a failure closes the connection from the write path
}

//  GOAWAY as APNs sends it before closing: this stream and any later one are
//  refused (the client may retry them elsewhere), earlier ones are still
//  answered, then the connection closes.
static void s_goaway(s_stream_t *st)
{
    s_conn_t *c = st->conn;
    static const char dbg[] = "{\"reason\":\"Shutdown\"}";
    int32_t last = st->id > 2 ? st->id - 2 : 0;
    nghttp2_submit_goaway(c->session, NGHTTP2_FLAG_NONE, last, NGHTTP2_NO_ERROR,
                          (const uint8_t *)dbg, sizeof dbg - 1);
    for (s_stream_t *x = c->streams; x; x = x->next)
        if (x->id > last && !x->answered) {
            x->answered = true;
            if (x->timer_set) {
                event_del(&x->timer);
                x->timer_set = false;
            }
            nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, x->id, NGHTTP2_REFUSED_STREAM);
        }
    c->srv->st.goaways++;
    c->closing = true;
}

//  The whole request is in: judge it, then answer now, later, or go away.
static void s_on_request(s_stream_t *st)
{
    s_conn_t *c = st->conn;
    fapns_server_t *s = c->srv;
    s->st.requests++;
    if (!*st->apns_id)
        snprintf(st->apns_id, sizeof st->apns_id, "%08X-%04X-4%03X-8%03X-%012llX",
                 (unsigned)(s->id_salt & 0xffffffffu), (unsigned)((s->id_salt >> 32) & 0xffff),
                 (unsigned)((s->id_salt >> 48) & 0xfff), (unsigned)((s->id_seq >> 48) & 0xfff),
                 (unsigned long long)(s->id_seq & 0xffffffffffffULL));
    s->id_seq++;
    if (st->dup_header) {
        memset(&st->v, 0, sizeof st->v);
        st->v.status = 400;
        snprintf(st->v.reason, sizeof st->v.reason, "DuplicateHeaders");
    } else if (st->bad_header) {
        memset(&st->v, 0, sizeof st->v);
        st->v.status = 400;
        snprintf(st->v.reason, sizeof st->v.reason, "BadPath");
    } else {
        fapns_req_t r = {.method = st->method,
                         .path = st->path,
                         .topic = st->has_topic ? st->topic : NULL,
                         .push_type = st->has_push_type ? st->push_type : NULL,
                         .priority = st->has_priority ? st->priority : NULL,
                         .expiration = st->has_expiration ? st->expiration : NULL,
                         .body = st->body,
                         .body_len = st->body_len,
                         .body_too_large = st->too_large,
                         .cert_topic = c->cert_topic};
        fapns_check(&r, s->tokens, &st->v);
    }
    int delay = 0;
    fapns_rule_t rule;
    if (st->v.status == 200 && s->rules && fapns_rules_match(s->rules, st->v.token, &rule)) {
        if (rule.act == FAPNS_ACT_GOAWAY) {
            s_goaway(st);
            return;
        }
        if (rule.act == FAPNS_ACT_STATUS) {
            st->v.status = rule.status;
            snprintf(st->v.reason, sizeof st->v.reason, "%s", rule.reason);
        }
        delay = rule.delay_ms;
    }
    if (delay > 0) {
        s->st.delayed++;
        struct timeval tv = {delay / 1000, (delay % 1000) * 1000};
        event_assign(&st->timer, s->base, -1, 0, s_delay_cb, st);
        event_add(&st->timer, &tv);
        st->timer_set = true;
        return;
    }
    s_respond(st);
}

/* ---- nghttp2 callbacks ---- */

static ssize_t s_send_cb(nghttp2_session *session, const uint8_t *data, size_t length, int flags,
                         void *user_data)
{
    (void)session, (void)flags;
    s_conn_t *c = user_data;
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) >= S_OUT_WOULDBLOCK)
        return NGHTTP2_ERR_WOULDBLOCK;
    bufferevent_write(c->bev, data, length);
    return (ssize_t)length;
}

static int s_begin_headers_cb(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    s_conn_t *c = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    s_stream_t *st = calloc(1, sizeof *st);
    if (!st)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    st->conn = c;
    st->id = frame->hd.stream_id;
    st->next = c->streams;
    if (c->streams)
        c->streams->prev = st;
    c->streams = st;
    c->open_streams++;
    if (c->open_streams > c->srv->st.max_concurrent_streams)
        c->srv->st.max_concurrent_streams = c->open_streams;
    nghttp2_session_set_stream_user_data(session, st->id, st);
    return 0;
}

//  Copy one header value into a fixed field; too long marks the request bad.
static void s_hdr(s_stream_t *st, char *dst, size_t dstlen, bool *seen, const uint8_t *v,
                  size_t vlen)
{
    if (seen && *seen) {
        st->dup_header = true;
        return;
    }
    if (vlen >= dstlen) {
        st->bad_header = true;
        return;
    }
    memcpy(dst, v, vlen);
    dst[vlen] = 0;
    if (seen)
        *seen = true;
}

static int s_header_cb(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                       size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                       void *user_data)
{
    (void)flags, (void)user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    s_stream_t *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (!st)
        return 0;
#define S_IS(lit) (namelen == sizeof(lit) - 1 && memcmp(name, lit, namelen) == 0)
    if (S_IS(":method"))
        s_hdr(st, st->method, sizeof st->method, NULL, value, valuelen);
    else if (S_IS(":path"))
        s_hdr(st, st->path, sizeof st->path, NULL, value, valuelen);
    else if (S_IS("apns-topic"))
        s_hdr(st, st->topic, sizeof st->topic, &st->has_topic, value, valuelen);
    else if (S_IS("apns-push-type"))
        s_hdr(st, st->push_type, sizeof st->push_type, &st->has_push_type, value, valuelen);
    else if (S_IS("apns-priority"))
        s_hdr(st, st->priority, sizeof st->priority, &st->has_priority, value, valuelen);
    else if (S_IS("apns-expiration"))
        s_hdr(st, st->expiration, sizeof st->expiration, &st->has_expiration, value, valuelen);
    else if (S_IS("apns-id") && valuelen < sizeof st->apns_id) {
        memcpy(st->apns_id, value, valuelen);
        st->apns_id[valuelen] = 0;
    }
#undef S_IS
    return 0;
}

static int s_data_cb(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                     const uint8_t *data, size_t len, void *user_data)
{
    (void)flags, (void)user_data;
    s_stream_t *st = nghttp2_session_get_stream_user_data(session, stream_id);
    if (!st)
        return 0;
    if (st->too_large || len > sizeof st->body - st->body_len) {
        st->too_large = true;
        return 0;
    }
    memcpy(st->body + st->body_len, data, len);
    st->body_len += len;
    return 0;
}

static int s_frame_send_cb(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    (void)session, (void)user_data;
    if (frame->hd.type == NGHTTP2_GOAWAY)
        pm_debug("GOAWAY sent: last stream %d, %s", frame->goaway.last_stream_id,
                 nghttp2_http2_strerror(frame->goaway.error_code));
    return 0;
}

static int s_error_cb(nghttp2_session *session, int lib_error_code, const char *msg, size_t len,
                      void *user_data)
{
    (void)session, (void)user_data;
    pm_debug("nghttp2: %.*s (%s)", (int)len, msg, nghttp2_strerror(lib_error_code));
    return 0;
}

static int s_frame_recv_cb(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    (void)user_data;
    if (frame->hd.type == NGHTTP2_GOAWAY)
        pm_debug("GOAWAY received from the client: %s",
                 nghttp2_http2_strerror(frame->goaway.error_code));
    if ((frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        s_stream_t *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
        if (st && !st->answered && !st->timer_set)
            s_on_request(st);
    }
    return 0;
}

static int s_stream_close_cb(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                             void *user_data)
{
    (void)error_code, (void)user_data;
    s_stream_t *st = nghttp2_session_get_stream_user_data(session, stream_id);
    if (st) {
        nghttp2_session_set_stream_user_data(session, stream_id, NULL);
        s_stream_free(st);
    }
    return 0;
}

/* ---- connections ---- */

static void s_conn_free(s_conn_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        c->srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    while (c->streams)
        s_stream_free(c->streams);
    nghttp2_session_del(c->session);
    if (c->bev)
        bufferevent_free(c->bev); //  closes the socket and frees the SSL
    c->srv->st.active_connections--;
    free(c);
}

static int s_session_send(s_conn_t *c)
{
    int rv = nghttp2_session_send(c->session);
    if (rv != 0) {
        pm_debug("nghttp2 send: %s", nghttp2_strerror(rv));
        return -1;
    }
    return 0;
}

static void s_readcb(struct bufferevent *bev, void *ptr)
{
    s_conn_t *c = ptr;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in);
    unsigned char *data = evbuffer_pullup(in, -1);
    ssize_t n = nghttp2_session_mem_recv(c->session, data, len);
    if (n < 0) {
        pm_debug("nghttp2 recv: %s", nghttp2_strerror((int)n));
        s_conn_free(c);
        return;
    }
    evbuffer_drain(in, (size_t)n);
    if (s_session_send(c) != 0)
        s_conn_free(c);
}

static void s_writecb(struct bufferevent *bev, void *ptr)
{
    s_conn_t *c = ptr;
    if (evbuffer_get_length(bufferevent_get_output(bev)) > 0)
        return;
    if (nghttp2_session_want_write(c->session)) {
        if (s_session_send(c) != 0)
            s_conn_free(c);
        return;
    }
    //  after a GOAWAY: close once the streams before it are answered
    if ((c->closing && c->open_streams == 0) ||
        (!nghttp2_session_want_read(c->session) && !nghttp2_session_want_write(c->session)))
        s_conn_free(c);
}

static void s_on_connected(s_conn_t *c)
{
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    const unsigned char *alpn = NULL;
    unsigned alpnlen = 0;
    SSL_get0_alpn_selected(ssl, &alpn, &alpnlen);
    if (!alpn || alpnlen != 2 || memcmp(alpn, "h2", 2) != 0) {
        //  the client sent no ALPN at all (the callback refuses http/1.1 itself)
        c->srv->st.alpn_refused++;
        pm_info("connection refused: the client did not negotiate h2 (APNs speaks HTTP/2 only)");
        s_conn_free(c);
        return;
    }
    X509 *peer = SSL_get1_peer_certificate(ssl);
    if (peer) {
        if (push_cert_topic_of(peer, c->cert_topic, sizeof c->cert_topic) < 0)
            pm_info("client certificate has no UID topic: every request gets 403 BadCertificate");
        X509_free(peer);
    }
    c->connected = true;
    nghttp2_session_callbacks *cbs = NULL;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_send_callback(cbs, s_send_cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, s_frame_recv_cb);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, s_frame_send_cb);
    nghttp2_session_callbacks_set_error_callback2(cbs, s_error_cb);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, s_stream_close_cb);
    nghttp2_session_callbacks_set_on_header_callback(cbs, s_header_cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, s_begin_headers_cb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, s_data_cb);
    //  libcurl 7.88 ends every answered stream with RST_STREAM(STREAM_CLOSED);
    //  Debian's nghttp2 1.52 carries the rapid-reset limit (burst 1000, 33/s)
    //  and would tear the connection down after ~1000 pushes. The stand-in
    //  is about APNs rules, not that defence: allow 1M resets, 1M/s.
    nghttp2_option *opt = NULL;
    nghttp2_option_new(&opt);
    if (opt)
        nghttp2_option_set_stream_reset_rate_limit(opt, 1000000, 1000000);
    int rv = nghttp2_session_server_new2(&c->session, cbs, c, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    if (rv != 0) {
        s_conn_free(c);
        return;
    }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, (uint32_t)c->srv->cfg.max_streams}};
    nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, 1);
    if (s_session_send(c) != 0)
        s_conn_free(c);
}

static void s_eventcb(struct bufferevent *bev, short events, void *ptr)
{
    (void)bev;
    s_conn_t *c = ptr;
    if (events & BEV_EVENT_CONNECTED) {
        s_on_connected(c);
        return;
    }
    if (!c->connected && (events & BEV_EVENT_ERROR)) {
        c->srv->st.tls_failures++;
        unsigned long e = bufferevent_get_openssl_error(c->bev);
        char why[256] = "connection closed";
        if (e)
            ERR_error_string_n(e, why, sizeof why);
        pm_info("TLS handshake failed: %s (a client certificate from the configured CA and ALPN "
                "h2 are required)",
                why);
    } else {
        unsigned long e = bufferevent_get_openssl_error(c->bev);
        char why[256] = "";
        if (e)
            ERR_error_string_n(e, why, sizeof why);
        pm_debug("connection closed (%s%s%s) with %lu open streams",
                 (events & BEV_EVENT_EOF) ? "eof" : "error", *why ? ": " : "", why,
                 c->open_streams);
    }
    s_conn_free(c);
}

static void s_accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *addr,
                        int addrlen, void *arg)
{
    (void)l, (void)addr, (void)addrlen;
    fapns_server_t *s = arg;
    s_conn_t *c = calloc(1, sizeof *c);
    SSL *ssl = SSL_new(s->ssl_ctx);
    if (!c || !ssl) {
        free(c);
        SSL_free(ssl);
        evutil_closesocket(fd);
        return;
    }
    c->srv = s;
    s->st.connections++;
    s->st.active_connections++;
    c->bev = bufferevent_openssl_socket_new(s->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                            BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (!c->bev) {
        SSL_free(ssl);
        evutil_closesocket(fd);
        s->st.active_connections--;
        free(c);
        return;
    }
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    bufferevent_setcb(c->bev, s_readcb, s_writecb, s_eventcb, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static int s_alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                     const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    fapns_server_t *s = arg;
    //  1 = h2 chosen; 0 would be http/1.1, which APNs does not speak
    if (nghttp2_select_next_protocol((unsigned char **)out, outlen, in, inlen) != 1) {
        s->st.alpn_refused++;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* ---- control endpoint ---- */

static void s_control_reply(struct evhttp_request *req, int code, const char *reason,
                            struct evbuffer *body)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
    evhttp_send_reply(req, code, reason, body);
}

static void s_control_cb(struct evhttp_request *req, void *arg)
{
    fapns_server_t *s = arg;
    struct evbuffer *out = evbuffer_new();
    const char *uri = evhttp_request_get_uri(req);
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (!out) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    if (strcmp(uri, "/stats") == 0 && cmd == EVHTTP_REQ_GET) {
#define S_PRINT(n) evbuffer_add_printf(out, "%s %lu\n", #n, s->st.n);
        S_STATS(S_PRINT)
#undef S_PRINT
        evbuffer_add_printf(out, "rules %zu\ntokens %zu\n",
                            s->rules ? fapns_rules_size(s->rules) : 0,
                            s->tokens ? fapns_tokens_size(s->tokens) : 0);
        s_control_reply(req, 200, "OK", out);
    } else if (strcmp(uri, "/rules") == 0 && cmd == EVHTTP_REQ_DELETE) {
        if (s->rules)
            fapns_rules_clear(s->rules);
        evbuffer_add_printf(out, "ok\n");
        s_control_reply(req, 200, "OK", out);
    } else if ((strcmp(uri, "/rules") == 0 || strcmp(uri, "/tokens") == 0) &&
               cmd == EVHTTP_REQ_POST) {
        bool rules = uri[1] == 'r';
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t len = evbuffer_get_length(in);
        char *body = len <= S_CONTROL_BODY_MAX ? malloc(len + 1) : NULL;
        int added = 0, bad = 0;
        if (body && rules && !s->rules)
            s->rules = fapns_rules_new();
        if (!body || (rules && !s->rules) || (!rules && !s->tokens)) {
            evbuffer_add_printf(out, "%s\n",
                                !rules && !s->tokens
                                    ? "this server accepts any token (started without --tokens)"
                                    : "body too large or out of memory");
            bad = 1;
        } else {
            evbuffer_remove(in, body, len);
            body[len] = 0;
            char *save = NULL;
            for (char *l = strtok_r(body, "\n", &save); l && !bad;
                 l = strtok_r(NULL, "\n", &save)) {
                char e[256];
                int rc = rules ? fapns_rules_add_line(s->rules, l, e, sizeof e)
                               : fapns_tokens_add_line(s->tokens, l, e, sizeof e);
                if (rc < 0) {
                    evbuffer_add_printf(out, "%s\n", e);
                    bad = 1;
                }
                added += rc == 0;
            }
        }
        free(body);
        if (!bad)
            evbuffer_add_printf(out, "added %d\n", added);
        s_control_reply(req, bad ? 400 : 200, bad ? "Bad Request" : "OK", out);
    } else {
        evbuffer_add_printf(out, "unknown: use GET /stats, POST /rules, DELETE /rules, POST "
                                 "/tokens\n");
        s_control_reply(req, 404, "Not Found", out);
    }
    evbuffer_free(out);
}

/* ---- setup ---- */

static void s_signal_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)sig, (void)what;
    fapns_server_t *s = arg;
    event_base_loopbreak(s->base);
}

static SSL_CTX *s_ssl_ctx(fapns_server_t *s, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    char why[256] = "";
    if (!ctx)
        goto fail;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION);
    if (SSL_CTX_use_certificate_chain_file(ctx, s->cfg.tls_cert) != 1) {
        snprintf(why, sizeof why, "cannot use server certificate %s", s->cfg.tls_cert);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, s->cfg.tls_key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(why, sizeof why, "cannot use server key %s (must match the certificate)",
                 s->cfg.tls_key);
        goto fail;
    }
    if (SSL_CTX_load_verify_locations(ctx, s->cfg.client_ca, NULL) != 1) {
        snprintf(why, sizeof why, "cannot load client CA %s", s->cfg.client_ca);
        goto fail;
    }
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(s->cfg.client_ca);
    if (names)
        SSL_CTX_set_client_CA_list(ctx, names);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    //  clients resume TLS sessions on new connections (libcurl does): with
    //  client verification OpenSSL needs a session id context for that
    static const unsigned char sid[] = "picomdm-fake-apns";
    SSL_CTX_set_session_id_context(ctx, sid, sizeof sid - 1);
    SSL_CTX_set_alpn_select_cb(ctx, s_alpn_cb, s);
    return ctx;
fail : {
    char e[200] = "";
    unsigned long code = ERR_get_error();
    if (code)
        ERR_error_string_n(code, e, sizeof e);
    snprintf(err, errlen, "%s: %s (check the file paths and that they are PEM)",
             *why ? why : "TLS setup failed", e);
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
}
}

static int s_bind_addr(const char *hp, struct sockaddr_storage *ss, socklen_t *sl)
{
    char host[256];
    int port = 0;
    if (s_split_hostport(hp, host, sizeof host, &port) < 0)
        return -1;
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_PASSIVE, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    if (getaddrinfo(host, NULL, &hints, &ai) != 0 || !ai)
        return -1;
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *sl = ai->ai_addrlen;
    freeaddrinfo(ai);
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
    return 0;
}

fapns_server_t *fapns_server_new(const fapns_server_cfg_t *cfg, fapns_tokens_t **tokens,
                                 fapns_rules_t **rules, char *err, size_t errlen)
{
    fapns_server_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->cfg = *cfg;
    if (s->cfg.max_streams <= 0)
        s->cfg.max_streams = 1000;
    s->deliver_fd = -1;
    s->tokens = tokens ? *tokens : NULL;
    s->rules = rules ? *rules : NULL;
    if (tokens)
        *tokens = NULL;
    if (rules)
        *rules = NULL;
    if (!s->rules)
        s->rules = fapns_rules_new();
    s->id_salt = ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL) ^ 0x5eed5eed12345ULL;
    s->base = event_base_new();
    if (!s->base) {
        snprintf(err, errlen, "libevent: cannot create an event base");
        goto fail;
    }
    if (!(s->ssl_ctx = s_ssl_ctx(s, err, errlen)))
        goto fail;
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    if (!cfg->listen || s_bind_addr(cfg->listen, &ss, &sl) < 0) {
        snprintf(err, errlen, "bad listen address \"%s\": want IP:PORT, e.g. 127.0.0.1:2197",
                 cfg->listen ? cfg->listen : "");
        goto fail;
    }
    s->listener =
        evconnlistener_new_bind(s->base, s_accept_cb, s, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                512, (struct sockaddr *)&ss, (int)sl);
    if (!s->listener) {
        snprintf(err, errlen, "cannot listen on %s: %m (pick a free port)", cfg->listen);
        goto fail;
    }
    s->port = s_sock_port(evconnlistener_get_fd(s->listener));
    if (cfg->control && *cfg->control) {
        char host[256];
        int port = 0;
        s->http = evhttp_new(s->base);
        struct evhttp_bound_socket *h = NULL;
        if (s_split_hostport(cfg->control, host, sizeof host, &port) == 0 && s->http)
            h = evhttp_bind_socket_with_handle(s->http, host, (ev_uint16_t)port);
        if (!h) {
            snprintf(err, errlen, "cannot listen for control on %s: want a free IP:PORT",
                     cfg->control);
            goto fail;
        }
        s->control_port = s_sock_port(evhttp_bound_socket_get_fd(h));
        evhttp_set_max_body_size(s->http, S_CONTROL_BODY_MAX);
        evhttp_set_gencb(s->http, s_control_cb, s);
    }
    if (cfg->deliver_unix && *cfg->deliver_unix) {
        if (strlen(cfg->deliver_unix) >= sizeof s->deliver_addr.sun_path) {
            snprintf(err, errlen, "deliver-unix path too long (max %zu bytes)",
                     sizeof s->deliver_addr.sun_path - 1);
            goto fail;
        }
        s->deliver_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        s->deliver_backlog = zlist_new();
        s->deliver_retry = evtimer_new(s->base, s_deliver_flush, s);
        if (s->deliver_fd < 0 || !s->deliver_backlog || !s->deliver_retry) {
            snprintf(err, errlen, "cannot set up the delivery socket: %m");
            goto fail;
        }
        s->deliver_addr.sun_family = AF_UNIX;
        memcpy(s->deliver_addr.sun_path, cfg->deliver_unix, strlen(cfg->deliver_unix) + 1);
    }
    if (cfg->deliver_file && *cfg->deliver_file) {
        s->deliver_file = fopen(cfg->deliver_file, "a");
        if (!s->deliver_file) {
            snprintf(err, errlen, "cannot open deliver-file %s: %m", cfg->deliver_file);
            goto fail;
        }
    }
    s->sigint = evsignal_new(s->base, SIGINT, s_signal_cb, s);
    s->sigterm = evsignal_new(s->base, SIGTERM, s_signal_cb, s);
    if (s->sigint)
        event_add(s->sigint, NULL);
    if (s->sigterm)
        event_add(s->sigterm, NULL);
    signal(SIGPIPE, SIG_IGN);
    return s;
fail:
    fapns_server_destroy(&s);
    return NULL;
}

void fapns_server_destroy(fapns_server_t **srv)
{
    if (!srv || !*srv)
        return;
    fapns_server_t *s = *srv;
    while (s->conns)
        s_conn_free(s->conns);
    if (s->base)
        event_base_loop(s->base, EVLOOP_NONBLOCK); //  run the deferred bufferevent frees
    if (s->sigint)
        event_free(s->sigint);
    if (s->sigterm)
        event_free(s->sigterm);
    if (s->http)
        evhttp_free(s->http);
    if (s->listener)
        evconnlistener_free(s->listener);
    SSL_CTX_free(s->ssl_ctx);
    if (s->deliver_retry)
        event_free(s->deliver_retry);
    if (s->base)
        event_base_free(s->base);
    if (s->deliver_backlog) {
        zframe_t *dg;
        while ((dg = zlist_pop(s->deliver_backlog)))
            zframe_destroy(&dg);
        zlist_destroy(&s->deliver_backlog);
    }
    if (s->deliver_fd >= 0)
        close(s->deliver_fd);
    if (s->deliver_file)
        fclose(s->deliver_file);
    fapns_tokens_destroy(&s->tokens);
    fapns_rules_destroy(&s->rules);
    free(s);
    *srv = NULL;
}

int fapns_server_port(const fapns_server_t *srv)
{
    return srv->port;
}

int fapns_server_control_port(const fapns_server_t *srv)
{
    return srv->control_port;
}

int fapns_server_run(fapns_server_t *srv)
{
    return event_base_dispatch(srv->base) < 0 ? -1 : 0;
}
