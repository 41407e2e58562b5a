/*  devsim_push — APNs delivery listener of the device simulator (see
 *  devsim_push.h).
 *
 *  The datagram is a msgpack map (picomdm-fake-apns --deliver-unix), read
 *  with msgpack-c behind pm_mpck's bounds: string members, no nesting,
 *  anything else refused.
 */
#include "devsim_push.h"
#include "pm_log.h"
#include "pm_mpck.h"

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

//  The stand-in's datagram: one msgpack map whose token (64 hex), topic and
//  mdm (PushMagic) members are str; other members (apns_id) are ignored.
//  Bounded (pm_mpck) before msgpack-c sees it.
int devsim_push_parse(const uint8_t *buf, size_t len, char token[65], char *topic,
                      size_t topic_size, char *magic, size_t magic_size)
{
    static const pm_mpck_limits_t lim = {.max_depth = 1, .max_elements = 16};
    msgpack_zone zone;
    msgpack_object obj;
    char err[128], hex[65];
    int rc = -1;
    if (!msgpack_zone_init(&zone, 512))
        return -1;
    if (pm_mpck_unpack(buf, len, &lim, &zone, &obj, err, sizeof err) < 0 ||
        obj.type != MSGPACK_OBJECT_MAP || pm_mp_get_str(&obj, "token", hex, sizeof hex) < 0 ||
        strlen(hex) != 64 || pm_mp_get_str(&obj, "topic", topic, topic_size) < 0 ||
        pm_mp_get_str(&obj, "mdm", magic, magic_size) < 0)
        goto out;
    for (size_t i = 0; i < 64; i++) {
        char c = hex[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            goto out;
        token[i] = (char)(c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c);
    }
    token[64] = 0;
    rc = 0;
out:
    msgpack_zone_destroy(&zone);
    return rc;
}

void devsim_push_on_ready(void *arg)
{
    devsim_push_t *p = arg;
    uint8_t buf[S_DGRAM_MAX + 1];
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
            pm_warn("push socket %s: ignored a datagram that is not the APNs stand-in's msgpack "
                    "map (token, topic, mdm); check what sends to this socket",
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
