/*  push_stdin — drive the APNs client from lines on a file descriptor and
 *  print outcomes as JSON lines. See push_stdin.h.
 */
#include "push_stdin.h"
#include "pm_log.h"

#include <czmq.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define S_LINE_MAX 2048
#define S_BUF (64 * 1024)

static int64_t s_first_ms, s_last_ms;

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

//  A JSON string (quotes included).
static void s_jstr(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

void push_stdin_print(void *arg, const push_result_t *r)
{
    FILE *f = arg;
    s_last_ms = s_now_ms();
    fprintf(f, "{\"event\":\"push.%s\",\"eid\":", push_outcome_name(r->outcome));
    s_jstr(f, r->eid);
    fprintf(f, ",\"status\":%u,\"reason\":", r->status);
    s_jstr(f, r->reason);
    fputs(",\"topic\":", f);
    s_jstr(f, r->topic);
    fprintf(f, ",\"attempts\":%d,\"apns_id\":", r->attempts);
    s_jstr(f, r->apns_id);
    if (r->outcome == PUSH_STALE)
        fprintf(f, ",\"stale_since\":%lld", (long long)r->stale_since_ms);
    fputs("}\n", f);
}

static void s_stats(push_apns_t *a, FILE *out, const char *name)
{
    push_apns_stats_t s;
    push_apns_stats(a, &s);
    fprintf(out,
            "{\"event\":\"%s\",\"wakes\":%llu,\"coalesced\":%llu,\"refused\":%llu,"
            "\"sent\":%llu,\"failed\":%llu,\"stale\":%llu,\"cert_problems\":%llu,"
            "\"requests\":%llu,\"retries\":%llu,\"queued\":%zu,\"inflight\":%zu,"
            "\"waiting\":%zu,\"held\":%zu,\"elapsed_ms\":%lld}\n",
            name, (unsigned long long)s.wakes, (unsigned long long)s.coalesced,
            (unsigned long long)s.refused, (unsigned long long)s.sent, (unsigned long long)s.failed,
            (unsigned long long)s.stale, (unsigned long long)s.cert_problems,
            (unsigned long long)s.requests, (unsigned long long)s.retries, s.queued, s.inflight,
            s.waiting, s.held, (long long)(s_first_ms ? s_last_ms - s_first_ms : 0));
    fflush(out);
}

static int s_unhex(const char *h, uint8_t *out, size_t max, size_t *len)
{
    size_t n = strlen(h);
    if (n == 0 || n % 2 || n / 2 > max)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        int v = 0;
        for (int k = 0; k < 2; k++) {
            char c = h[2 * i + k];
            int d = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
            if (d < 0)
                return -1;
            v = v * 16 + d;
        }
        out[i] = (uint8_t)v;
    }
    *len = n / 2;
    return 0;
}

static void s_line(push_apns_t *a, char *line, FILE *out)
{
    char *w[6], *save = NULL;
    int n = 0;
    for (char *p = strtok_r(line, " \t\r", &save); p && n < 6; p = strtok_r(NULL, " \t\r", &save))
        w[n++] = p;
    if (n == 0 || w[0][0] == '#')
        return;
    if (strcmp(w[0], "stats") == 0 && n == 1) {
        s_stats(a, out, "push.stats");
        return;
    }
    uint8_t tok[PUSH_TOKEN_MAX];
    size_t toklen = 0;
    if (strcmp(w[0], "wake") != 0 || n < 4 || n > 5 ||
        s_unhex(w[2], tok, sizeof tok, &toklen) < 0) {
        pm_warn("input line ignored: want \"wake <eid> <token hex> <PushMagic> [topic]\" or "
                "\"stats\"");
        return;
    }
    if (!s_first_ms)
        s_first_ms = s_now_ms();
    push_target_t t = {.eid = w[1],
                       .token = tok,
                       .token_len = toklen,
                       .push_magic = w[3],
                       .topic = n == 5 ? w[4] : NULL};
    push_apns_wake(a, &t);
}

int push_stdin_run(push_apns_t *a, int fd, FILE *out, push_stdin_tick_fn *tick, void *arg)
{
    char *buf = malloc(S_BUF + 1);
    size_t have = 0;
    bool eof = false;
    int rc = 0;
    if (!buf)
        return -1;
    while (!zsys_interrupted) {
        struct curl_waitfd wfd = {.fd = fd, .events = CURL_WAIT_POLLIN};
        if (tick)
            tick(arg, a);
        if (eof && push_apns_pending(a) > 0 && push_apns_pending(a) == push_apns_held(a))
            //  only pushes held for a stopped topic remain: nothing will send them
            push_apns_drop_held(a, "held push dropped at end of input: pushes for the topic are "
                                   "stopped (APNs refused the certificate, or it expired); "
                                   "install a valid certificate and push again");
        if (eof && push_apns_pending(a) == 0)
            break;
        if (push_apns_poll(a, eof ? NULL : &wfd, eof ? 0 : 1, 1000) < 0) {
            pm_error("libcurl poll failed");
            rc = -1;
            break;
        }
        if (!eof && (wfd.revents & (CURL_WAIT_POLLIN | CURL_WAIT_POLLPRI))) {
            ssize_t r = read(fd, buf + have, S_BUF - have);
            if (r < 0 && errno != EINTR && errno != EAGAIN) {
                pm_error("reading input: %m");
                rc = -1;
                break;
            }
            if (r == 0)
                eof = true;
            have += r > 0 ? (size_t)r : 0;
            size_t start = 0;
            for (size_t i = 0; i < have; i++) {
                if (buf[i] != '\n')
                    continue;
                buf[i] = 0;
                s_line(a, buf + start, out);
                start = i + 1;
            }
            if (start == 0 && have == S_BUF) {
                pm_warn("input line longer than %d bytes ignored", S_BUF);
                have = 0;
            } else {
                memmove(buf, buf + start, have - start);
                have -= start;
            }
            if (eof && have) {
                buf[have] = 0;
                s_line(a, buf, out);
                have = 0;
            }
            fflush(out);
        }
        fflush(out);
    }
    s_stats(a, out, "push.summary");
    free(buf);
    return rc;
}
