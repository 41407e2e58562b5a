/*  devsim_push — APNs delivery listener of the device simulator (see
 *  devsim_push.h).
 *
 *  The datagram is JSON, and none of the libraries this project links reads
 *  JSON (pm_json only writes it). The stand-in's shape is fixed and its
 *  values are hex, a topic and a UUID (no escapes), so this reads exactly
 *  that shape: string members, no nesting, anything else refused.
 */
#include "devsim_push.h"
#include "pm_log.h"

#include <czmq.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define S_DGRAM_MAX 4096 //  the stand-in's line buffer; larger is not its shape

struct devsim_push {
    int fd;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    zhashx_t *by_token; //  64 hex -> devsim_dev_t* (borrowed)
    devsim_run_t *run;
    long received, woken, ignored;
};

static void s_hex(const unsigned char *b, size_t n, char *out)
{
    static const char h[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = h[b[i] >> 4];
        out[2 * i + 1] = h[b[i] & 15];
    }
    out[2 * n] = 0;
}

static void s_add(devsim_push_t *p, devsim_dev_t *d)
{
    char hex[65];
    s_hex(d->token, sizeof d->token, hex);
    zhashx_insert(p->by_token, hex, d);
}

devsim_push_t *devsim_push_new(const char *path, devsim_dev_t **devs, int n, devsim_run_t *run,
                               char *err, size_t errlen)
{
    devsim_push_t *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->fd = -1;
    p->run = run;
    if (!path || !*path || strlen(path) >= sizeof p->path) {
        snprintf(err, errlen, "--push-listen needs a path shorter than %zu bytes", sizeof p->path);
        goto fail;
    }
    snprintf(p->path, sizeof p->path, "%s", path);
    p->by_token = zhashx_new();
    if (!p->by_token) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        s_add(p, devs[i]);
        if (devs[i]->user)
            s_add(p, devs[i]->user);
    }
    p->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (p->fd < 0) {
        snprintf(err, errlen, "socket(AF_UNIX, SOCK_DGRAM): %s", strerror(errno));
        goto fail;
    }
    //  A larger receive buffer: a burst of pushes must not be dropped while
    //  the loop is busy with transfers (the kernel drops, the stand-in counts).
    int rcv = 4 << 20;
    setsockopt(p->fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, p->path, strlen(p->path) + 1);
    unlink(p->path); //  a stale socket file from an earlier run
    if (bind(p->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        snprintf(err, errlen, "cannot bind the push socket %s: %s (check the directory exists)",
                 p->path, strerror(errno));
        p->path[0] = 0;
        goto fail;
    }
    return p;
fail:
    devsim_push_destroy(&p);
    return NULL;
}

void devsim_push_destroy(devsim_push_t **pp)
{
    if (!pp || !*pp)
        return;
    devsim_push_t *p = *pp;
    if (p->fd >= 0) {
        close(p->fd);
        if (p->path[0])
            unlink(p->path);
    }
    zhashx_destroy(&p->by_token);
    free(p);
    *pp = NULL;
}

int devsim_push_fd(const devsim_push_t *p)
{
    return p->fd;
}

void devsim_push_counts(const devsim_push_t *p, long *received, long *woken, long *ignored)
{
    *received = p->received;
    *woken = p->woken;
    *ignored = p->ignored;
}

static const char *s_ws(const char *s, const char *end)
{
    while (s < end && (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n'))
        s++;
    return s;
}

//  A JSON string without escapes: s points at '"'. Returns the char after the
//  closing quote, or NULL.
static const char *s_str(const char *s, const char *end, const char **v, size_t *vl)
{
    if (s >= end || *s != '"')
        return NULL;
    const char *b = ++s;
    while (s < end && *s != '"') {
        if (*s == '\\' || (unsigned char)*s < 0x20)
            return NULL;
        s++;
    }
    if (s >= end)
        return NULL;
    *v = b;
    *vl = (size_t)(s - b);
    return s + 1;
}

int devsim_push_parse(const char *buf, size_t len, char token[65], char *topic, size_t topic_size,
                      char *magic, size_t magic_size)
{
    const char *s = buf, *end = buf + len;
    bool got_token = false, got_topic = false, got_magic = false;
    s = s_ws(s, end);
    if (s >= end || *s++ != '{')
        return -1;
    for (;;) {
        const char *k, *v;
        size_t kl, vl;
        s = s_ws(s, end);
        if (!(s = s_str(s, end, &k, &kl)))
            return -1;
        s = s_ws(s, end);
        if (s >= end || *s++ != ':')
            return -1;
        s = s_ws(s, end);
        if (!(s = s_str(s, end, &v, &vl)))
            return -1;
        if (kl == 5 && memcmp(k, "token", 5) == 0) {
            if (vl != 64)
                return -1;
            for (size_t i = 0; i < 64; i++) {
                char c = v[i];
                if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
                    return -1;
                token[i] = (char)(c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c);
            }
            token[64] = 0;
            got_token = true;
        } else if (kl == 5 && memcmp(k, "topic", 5) == 0) {
            if (vl >= topic_size)
                return -1;
            memcpy(topic, v, vl);
            topic[vl] = 0;
            got_topic = true;
        } else if (kl == 3 && memcmp(k, "mdm", 3) == 0) {
            if (vl >= magic_size)
                return -1;
            memcpy(magic, v, vl);
            magic[vl] = 0;
            got_magic = true;
        } //  other members (apns_id) are not needed
        s = s_ws(s, end);
        if (s < end && *s == ',') {
            s++;
            continue;
        }
        if (s < end && *s == '}')
            break;
        return -1;
    }
    s = s_ws(s + 1, end);
    return s == end && got_token && got_topic && got_magic ? 0 : -1;
}

void devsim_push_on_ready(void *arg)
{
    devsim_push_t *p = arg;
    char buf[S_DGRAM_MAX + 1];
    for (int i = 0; i < 1024; i++) { //  bounded per call: the transfers get their turn
        ssize_t n = recv(p->fd, buf, sizeof buf, MSG_TRUNC);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                pm_warn("push socket %s: recv failed: %s", p->path, strerror(errno));
            return;
        }
        p->received++;
        char token[65], topic[256], magic[64], idbuf[128];
        if ((size_t)n > S_DGRAM_MAX || devsim_push_parse(buf, (size_t)n, token, topic, sizeof topic,
                                                         magic, sizeof magic) < 0) {
            p->ignored++;
            pm_warn("push socket %s: ignored a datagram that is not the APNs stand-in's JSON "
                    "({\"token\",\"topic\",\"mdm\"}); check what sends to this socket",
                    p->path);
            continue;
        }
        devsim_dev_t *d = zhashx_lookup(p->by_token, token);
        if (!d) {
            p->ignored++; //  not one of ours (the token is never logged)
            pm_info("push for a token no simulated device has: ignored");
            continue;
        }
        const char *id = devsim_dev_id(d, idbuf, sizeof idbuf);
        if (strcmp(topic, d->topic) != 0) {
            p->ignored++;
            pm_warn("%s: push for topic %s, but the device enrolled with %s: ignored", id, topic,
                    d->topic);
            continue;
        }
        if (strcmp(magic, d->push_magic) != 0) {
            p->ignored++;
            pm_warn("%s: push with a PushMagic that is not the one sent in TokenUpdate: ignored "
                    "(a real device does the same; the server must push the stored PushMagic)",
                    id);
            continue;
        }
        if (!d->enrolled || d->erased || (d->parent && d->parent->erased)) {
            p->ignored++;
            pm_info("%s: push while not enrolled: ignored", id);
            continue;
        }
        p->woken++;
        pm_debug("%s: push received: connecting", id);
        devsim_run_wake(p->run, d);
    }
}
