/*  pm_bus_wire — frame helpers shared by the bus library and the broker
 *  (see pm_bus_wire.h). */
#include "pm_bus_wire.h"
#include "pm_log.h"

#include <czmq.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <string.h>

int pm_bus_recv(void *sock, zmq_msg_t *frames, int max, int *n, int *total)
{
    *n = 0;
    *total = 0;
    zmq_msg_t extra;
    for (;;) {
        zmq_msg_t *f = *n < max ? &frames[*n] : &extra;
        zmq_msg_init(f);
        //  Only the first frame can be "not there yet": parts arrive atomically.
        if (zmq_msg_recv(f, sock, *total == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            int e = errno;
            zmq_msg_close(f);
            pm_bus_frames_close(frames, *n);
            *n = 0;
            errno = e;
            return -1;
        }
        (*total)++;
        int more = zmq_msg_more(f);
        if (f == &extra)
            zmq_msg_close(f);
        else
            (*n)++;
        if (!more)
            return 0;
    }
}

void pm_bus_frames_close(zmq_msg_t *frames, int n)
{
    for (int i = 0; i < n; i++)
        zmq_msg_close(&frames[i]);
}

int pm_bus_sendv(void *sock, const void *const *data, const size_t *len, int n)
{
    for (int i = 0; i < n; i++) {
        int flags = ZMQ_DONTWAIT | (i < n - 1 ? ZMQ_SNDMORE : 0);
        if (zmq_send(sock, data[i], len[i], flags) < 0)
            return -1; //  only the first part can fail: multipart is atomic
    }
    return 0;
}

void pm_bus_sock_init(pm_bus_sock_t *s, void *handle)
{
    size_t size = sizeof s->fd;
    s->handle = handle;
    s->fd = -1;
    if (handle && zmq_getsockopt(handle, ZMQ_FD, &s->fd, &size) < 0)
        s->fd = -1;
    s->armed = false;
    s->ready = false;
}

#define S_POLL_MAX 16

int pm_bus_poll(pm_bus_sock_t *const *socks, int n, int timeout_ms)
{
    struct pollfd pfd[S_POLL_MAX];
    int map[S_POLL_MAX], np = 0, ready = 0;
    if (n > S_POLL_MAX)
        n = S_POLL_MAX;
    for (int i = 0; i < n; i++) {
        pm_bus_sock_t *s = socks[i];
        s->ready = false;
        if (!s->handle)
            continue;
        if (!s->armed) {
            //  A send may have taken the signal: ask libzmq (this processes
            //  its commands, so a socket without input is armed afterwards).
            uint32_t ev = 0;
            size_t size = sizeof ev;
            if (zmq_getsockopt(s->handle, ZMQ_EVENTS, &ev, &size) < 0 || (ev & ZMQ_POLLIN)) {
                s->ready = true; //  an error is reported by the receive
                ready++;
                continue;
            }
            s->armed = true;
        }
        if (s->fd >= 0) {
            pfd[np] = (struct pollfd){.fd = s->fd, .events = POLLIN};
            map[np++] = i;
        }
    }
    if (np == 0)
        return ready;
    int rc = poll(pfd, (nfds_t)np, ready ? 0 : timeout_ms);
    if (rc < 0)
        return ready ? ready : -1;
    for (int k = 0; k < np && rc > 0; k++)
        if (pfd[k].revents) {
            socks[map[k]]->ready = true;
            ready++;
            rc--;
        }
    return ready;
}

int pm_bus_sock_recv(pm_bus_sock_t *s, zmq_msg_t *frames, int max, int *n, int *total)
{
    int rc = pm_bus_recv(s->handle, frames, max, n, total);
    if (rc == 0)
        s->armed = false; //  more may wait (a caller's batch limit): ask before sleeping
    else if (errno == EAGAIN) {
        s->armed = true;
        s->ready = false;
    }
    return rc;
}

int pm_bus_sock_sendv(pm_bus_sock_t *s, const void *const *data, const size_t *len, int n)
{
    s->armed = false;
    return pm_bus_sendv(s->handle, data, len, n);
}

bool pm_bus_frame_is(zmq_msg_t *frame, const char *s)
{
    size_t len = strlen(s);
    return zmq_msg_size(frame) == len && memcmp(zmq_msg_data(frame), s, len) == 0;
}

int pm_bus_frame_str(zmq_msg_t *frame, char *out, size_t max)
{
    size_t len = zmq_msg_size(frame);
    const unsigned char *p = zmq_msg_data(frame);
    if (len == 0 || len >= max)
        return -1;
    //  8 bytes per step (rids are 32 bytes; this runs for several frames of
    //  every message the broker routes): a byte below 0x20 or equal to 0x7f.
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w, d;
        memcpy(&w, p + i, 8);
        d = w ^ (0x7f * ones);
        if (((w - 0x20 * ones) & ~w & highs) | ((d - ones) & ~d & highs))
            return -1;
    }
    for (; i < len; i++)
        if (p[i] < 0x20 || p[i] == 0x7f)
            return -1;
    memcpy(out, p, len);
    out[len] = 0;
    return 0;
}

void pm_bus_ratelog(pm_bus_ratelog_t *rl, const char *fmt, ...)
{
    int64_t now = zclock_mono();
    if (now - rl->window_start >= 10000) {
        if (rl->suppressed)
            pm_warn("%llu more lines like the above were suppressed in the last 10 s",
                    (unsigned long long)rl->suppressed);
        rl->window_start = now;
        rl->lines = 0;
        rl->suppressed = 0;
    }
    if (rl->lines >= 10) {
        rl->suppressed++;
        return;
    }
    rl->lines++;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    pm_warn("%s", line);
}

bool pm_bus_endpoint_is_local(const char *ep)
{
    if (strncmp(ep, "ipc://", 6) == 0 || strncmp(ep, "inproc://", 9) == 0)
        return true;
    if (strncmp(ep, "tcp://", 6) != 0)
        return false;
    const char *host = ep + 6;
    //  tcp://IFACE;HOST:PORT (source address form) is not something we bind.
    if (strchr(host, ';'))
        return false;
    if (strncmp(host, "127.", 4) == 0) {
        //  127.a.b.c:port — require digits and dots up to the colon
        const char *p = host + 4;
        int dots = 0;
        for (; *p && *p != ':'; p++) {
            if (*p == '.')
                dots++;
            else if (*p < '0' || *p > '9')
                return false;
        }
        return *p == ':' && dots == 2;
    }
    if (strncmp(host, "[::1]:", 6) == 0 || strncmp(host, "localhost:", 10) == 0)
        return true;
    return false;
}

void pm_bus_hex(const uint8_t *data, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[data[i] >> 4];
        out[2 * i + 1] = digits[data[i] & 15];
    }
    out[2 * len] = 0;
}

size_t pm_bus_key_hash(const void *key)
{
    const unsigned char *p = key;
    size_t len = strlen(key);
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ len, w;
    for (; len >= 8; p += 8, len -= 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }
    w = 0;
    memcpy(&w, p, len);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL;
    return (size_t)(h ^ (h >> 29));
}
