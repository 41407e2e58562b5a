/*  bustest — test and benchmark helper for the bus (tests/it/broker_*.sh,
 *  tests/bench/bus.sh). Subcommands:
 *
 *    bustest worker  --endpoint E [--service echo] [--name N] [--delay-ms D] [--stall-ms S]
 *                    [--capacity C] [--heartbeat-ms H] [--curve-server-key K --cert F]
 *        answers `echo` with `echo.reply` (worker = N) after D ms (or the
 *        request's delay_ms); prints "worker N jobs=.. retried=.." on exit.
 *    bustest client  --endpoint E [--service echo] --count N --inflight K
 *                    [--timeout-ms T --retries R --payload-bytes P --max-seconds S]
 *        keeps K requests in flight until N are answered or failed; prints
 *        counts, per-worker shares, duplicates suppressed, rate and latency
 *        percentiles; exits 0 only if all N were answered exactly once.
 *        With --thread-stats, one line per thread of its own (name, CPU
 *        ticks, voluntary and involuntary context switches: bench/bus.sh).
 *    bustest garbage --endpoint E --count N      malformed frames of every kind
 *    bustest pub     --publish-endpoint E --topic T --count N [--delay-ms D] [--hold-ms H]
 *    bustest sub     --subscribe-endpoint E [--prefix P] --count N [--max-seconds S]
 */
#include "pm_bus.h"
#include "pm_bus_wire.h"
#include "pm_cfg.h"
#include "pm_log.h"

#include <czmq.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const pm_opt_t s_opts[] = {
    {"endpoint", PM_OPT_STR, NULL, "broker request endpoint"},
    {"publish-endpoint", PM_OPT_STR, NULL, "broker XSUB endpoint (pub)"},
    {"subscribe-endpoint", PM_OPT_STR, NULL, "broker XPUB endpoint (sub)"},
    {"service", PM_OPT_STR, "echo", "service name"},
    {"name", PM_OPT_STR, "w", "worker name"},
    {"delay-ms", PM_OPT_INT, "0", "worker: reply delay; pub: wait before publishing"},
    {"stall-ms", PM_OPT_INT, "0", "worker: block the whole loop this long in the handler"},
    {"capacity", PM_OPT_INT, "0", "worker capacity (0 = library default)"},
    {"heartbeat-ms", PM_OPT_INT, "0", "heartbeat interval (0 = library default)"},
    {"count", PM_OPT_INT, "1000", "requests / events / garbage messages"},
    {"inflight", PM_OPT_INT, "64", "client: requests kept in flight"},
    {"timeout-ms", PM_OPT_INT, "2000", "client: per-attempt timeout"},
    {"retries", PM_OPT_INT, "3", "client: extra attempts"},
    {"payload-bytes", PM_OPT_INT, "16", "client: payload size"},
    {"max-seconds", PM_OPT_INT, "60", "give up after this long"},
    {"thread-stats", PM_OPT_BOOL, "false", "client: print each thread's CPU and context switches"},
    {"topic", PM_OPT_STR, "test.event", "pub: event name"},
    {"hold-ms", PM_OPT_INT, "200",
     "pub: stay connected this long after the last event (unsent events are dropped at exit)"},
    {"prefix", PM_OPT_STR, "", "sub: topic prefix"},
    {"curve-server-key", PM_OPT_STR, NULL, "broker public key (Z85)"},
    {"cert", PM_OPT_STR, NULL, "our certificate (secret file)"},
    {NULL, 0, NULL, NULL}};

static pm_cfg_t *s_cfg;

static pm_bus_t *s_bus(const char *name, const char *req, const char *pub, const char *sub,
                       int capacity)
{
    pm_bus_config_t bc = {.name = name,
                          .request_endpoint = req,
                          .publish_endpoint = pub,
                          .subscribe_endpoint = sub,
                          .server_public_key = pm_cfg_str(s_cfg, "curve-server-key"),
                          .cert_file = pm_cfg_str(s_cfg, "cert"),
                          .heartbeat_ms = (int)pm_cfg_int(s_cfg, "heartbeat-ms"),
                          .capacity = capacity};
    return pm_bus_new(&bc);
}

/* ---- worker ---- */

typedef struct {
    pm_bus_job_t *job;
    int64_t due;
} s_delayed_t;

typedef struct {
    const char *name;
    int delay_ms;
    int stall_ms;
    zlistx_t *delayed;
    uint64_t replied;
} s_worker_t;

static void s_answer(s_worker_t *w, pm_bus_job_t *job)
{
    const pm_msg_t *req = pm_bus_job_msg(job);
    pm_msg_t *rep = pm_msg_new_reply(req, PM_MSG_ECHO_REPLY);
    size_t len = 0;
    const uint8_t *payload = pm_msg_bin(req, "payload", &len);
    if (payload)
        pm_msg_set_bin(rep, "payload", payload, len);
    pm_msg_set_str(rep, "worker", w->name);
    pm_bus_job_reply(&job, rep);
    pm_msg_destroy(&rep);
    w->replied++;
}

static void s_on_job(void *arg, pm_bus_job_t *job)
{
    s_worker_t *w = arg;
    const pm_msg_t *req = pm_bus_job_msg(job);
    if (pm_msg_type(req) != PM_MSG_ECHO) {
        pm_msg_t *err = pm_msg_new_error(req, "unknown_type", "bustest answers only echo");
        pm_bus_job_reply(&job, err);
        pm_msg_destroy(&err);
        return;
    }
    if (w->stall_ms > 0)
        zclock_sleep(w->stall_ms); //  like a long commit: no heartbeats meanwhile
    int delay = (int)pm_msg_uint(req, "delay_ms", (uint64_t)w->delay_ms);
    if (delay <= 0) {
        s_answer(w, job);
        return;
    }
    s_delayed_t *d = malloc(sizeof *d);
    d->job = job;
    d->due = zclock_mono() + delay;
    zlistx_add_end(w->delayed, d);
}

static int s_worker(void)
{
    s_worker_t w = {pm_cfg_str(s_cfg, "name"), (int)pm_cfg_int(s_cfg, "delay-ms"),
                    (int)pm_cfg_int(s_cfg, "stall-ms"), zlistx_new(), 0};
    pm_bus_t *bus = s_bus(w.name, pm_cfg_str(s_cfg, "endpoint"), NULL, NULL,
                          (int)pm_cfg_int(s_cfg, "capacity"));
    if (!bus || pm_bus_serve(bus, pm_cfg_str(s_cfg, "service"), s_on_job, &w) < 0)
        return 1;
    while (pm_bus_run_once(bus, 5) >= 0) {
        int64_t now = zclock_mono();
        s_delayed_t *d;
        while ((d = zlistx_first(w.delayed)) && d->due <= now) {
            s_answer(&w, d->job);
            zlistx_detach_cur(w.delayed);
            free(d);
        }
    }
    pm_bus_stats_t st;
    pm_bus_stats(bus, &st);
    printf("worker %s jobs=%llu replied=%llu retried=%llu bad=%llu\n", w.name,
           (unsigned long long)st.jobs, (unsigned long long)w.replied,
           (unsigned long long)st.retried_jobs, (unsigned long long)st.bad_frames);
    for (s_delayed_t *d = zlistx_first(w.delayed); d; d = zlistx_next(w.delayed)) {
        pm_bus_job_drop(&d->job);
        free(d);
    }
    zlistx_destroy(&w.delayed);
    pm_bus_destroy(&bus);
    return 0;
}

/* ---- client ---- */

//  One line per thread of this process: "thread NAME ticks=U+S vol=V invol=I"
//  from /proc/self/task (tests/bench/bus.sh: which thread is woken how often).
static void s_thread_stats(void)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], line[256], comm[64] = "?";
        unsigned long long ut = 0, st = 0, vol = 0, invol = 0;
        snprintf(path, sizeof path, "/proc/self/task/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (f && fgets(line, sizeof line, f)) {
            char *l = strchr(line, '('), *r = strrchr(line, ')');
            if (l && r && r > l) {
                snprintf(comm, sizeof comm, "%.*s", (int)(r - l - 1), l + 1);
                //  after ") ": state(3) ... utime is field 14, stime 15
                sscanf(r + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st);
            }
        }
        if (f)
            fclose(f);
        snprintf(path, sizeof path, "/proc/self/task/%s/status", e->d_name);
        f = fopen(path, "r");
        while (f && fgets(line, sizeof line, f)) {
            sscanf(line, "voluntary_ctxt_switches: %llu", &vol);
            sscanf(line, "nonvoluntary_ctxt_switches: %llu", &invol);
        }
        if (f)
            fclose(f);
        for (char *c = comm; *c; c++)
            if (*c == ' ')
                *c = '_';
        printf("thread %s ticks=%llu vol=%llu invol=%llu\n", comm, ut + st, vol, invol);
    }
    if (d)
        closedir(d);
}

typedef struct {
    pm_bus_t *bus;
    const char *service;
    int count, sent, answered, failed, doubles, timeout, retries;
    uint8_t *payload;
    size_t payload_len;
    int64_t *start_us;
    int64_t *lat_us;
    uint8_t *done;
    zhashx_t *workers; //  name -> count (stored as pointer-sized int)
    zhashx_t *codes;   //  `error` reply code -> count
    char last_error[512];
} s_client_t;

static void s_client_send(s_client_t *c);

static void s_on_reply(void *arg, const pm_msg_t *reply, const char *error)
{
    s_client_t *c = *(s_client_t **)arg;
    int idx = (int)((uintptr_t *)arg)[1];
    free(arg);
    if (c->done[idx]++) {
        c->doubles++;
        return;
    }
    c->lat_us[idx] = zclock_usecs() - c->start_us[idx];
    if (!reply || pm_msg_type(reply) != PM_MSG_ECHO_REPLY) {
        c->failed++;
        const char *code = reply ? pm_msg_str(reply, "code") : "no-reply";
        if (!code)
            code = "?";
        uintptr_t n = (uintptr_t)zhashx_lookup(c->codes, code);
        zhashx_update(c->codes, code, (void *)(n + 1));
        snprintf(c->last_error, sizeof c->last_error, "%s",
                 error ? error
                       : (pm_msg_str(reply, "message") ? pm_msg_str(reply, "message")
                                                       : "unexpected reply type"));
        if (c->failed <= 3)
            fprintf(stderr, "request %d failed: %s%s%s\n", idx, error ? "" : "error reply ",
                    error ? "" : (pm_msg_str(reply, "code") ? pm_msg_str(reply, "code") : ""),
                    error ? error : "");
    } else {
        c->answered++;
        const char *w = pm_msg_str(reply, "worker");
        if (!w)
            w = "?";
        uintptr_t n = (uintptr_t)zhashx_lookup(c->workers, w);
        zhashx_update(c->workers, w, (void *)(n + 1));
    }
    s_client_send(c);
}

static void s_client_send(s_client_t *c)
{
    if (c->sent >= c->count)
        return;
    int idx = c->sent++;
    pm_msg_t *req = pm_msg_new(PM_MSG_ECHO);
    pm_msg_set_bin(req, "payload", c->payload, c->payload_len);
    uintptr_t *arg = malloc(2 * sizeof *arg);
    arg[0] = (uintptr_t)c;
    arg[1] = (uintptr_t)idx;
    c->start_us[idx] = zclock_usecs();
    if (pm_bus_call_async(c->bus, c->service, req, c->timeout, c->retries, s_on_reply, arg) < 0) {
        free(arg);
        c->done[idx] = 1;
        c->failed++;
    }
    pm_msg_destroy(&req);
}

static int s_cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int s_client(void)
{
    s_client_t c = {0};
    c.count = (int)pm_cfg_int(s_cfg, "count");
    c.service = pm_cfg_str(s_cfg, "service");
    c.timeout = (int)pm_cfg_int(s_cfg, "timeout-ms");
    c.retries = (int)pm_cfg_int(s_cfg, "retries");
    c.payload_len = (size_t)pm_cfg_int(s_cfg, "payload-bytes");
    int inflight = (int)pm_cfg_int(s_cfg, "inflight");
    int64_t max_ms = pm_cfg_int(s_cfg, "max-seconds") * 1000;
    if (c.count <= 0 || inflight <= 0)
        return 2;
    c.payload = calloc(1, c.payload_len + 1);
    memset(c.payload, 'x', c.payload_len);
    c.start_us = calloc((size_t)c.count, sizeof *c.start_us);
    c.lat_us = calloc((size_t)c.count, sizeof *c.lat_us);
    c.done = calloc((size_t)c.count, 1);
    c.workers = zhashx_new();
    c.codes = zhashx_new();
    c.bus = s_bus("bustest-client", pm_cfg_str(s_cfg, "endpoint"), NULL, NULL, 0);
    if (!c.bus)
        return 1;
    int64_t t0 = zclock_mono();
    for (int i = 0; i < inflight; i++)
        s_client_send(&c);
    bool timed_out = false;
    while (c.answered + c.failed < c.count) {
        if (pm_bus_run_once(c.bus, 100) < 0)
            break;
        if (zclock_mono() - t0 > max_ms) {
            timed_out = true;
            break;
        }
    }
    int64_t elapsed = zclock_mono() - t0;
    //  Linger briefly so late duplicate replies are counted as suppressed.
    int64_t until = zclock_mono() + 200;
    while (zclock_mono() < until && pm_bus_run_once(c.bus, 50) >= 0)
        ;
    pm_bus_stats_t st;
    pm_bus_stats(c.bus, &st);
    int64_t *lat = malloc((size_t)c.count * sizeof *lat);
    int nl = 0;
    for (int i = 0; i < c.count; i++)
        if (c.done[i])
            lat[nl++] = c.lat_us[i];
    qsort(lat, (size_t)nl, sizeof *lat, s_cmp64);
#define PCT(p) (nl ? lat[(size_t)((nl - 1) * (p) / 100)] : 0)
    printf("sent=%d answered=%d failed=%d double=%d duplicates=%llu resends=%llu "
           "elapsed_ms=%lld rate=%.0f/s p50_us=%lld p90_us=%lld p99_us=%lld max_us=%lld%s\n",
           c.sent, c.answered, c.failed, c.doubles, (unsigned long long)st.duplicates,
           (unsigned long long)st.resends, (long long)elapsed,
           elapsed ? (c.answered + c.failed) * 1000.0 / (double)elapsed : 0.0, (long long)PCT(50),
           (long long)PCT(90), (long long)PCT(99), (long long)(nl ? lat[nl - 1] : 0),
           timed_out ? " TIMED-OUT" : "");
    for (void *v = zhashx_first(c.workers); v; v = zhashx_next(c.workers))
        printf("worker=%s count=%lu\n", (const char *)zhashx_cursor(c.workers),
               (unsigned long)(uintptr_t)v);
    for (void *v = zhashx_first(c.codes); v; v = zhashx_next(c.codes))
        printf("error=%s count=%lu\n", (const char *)zhashx_cursor(c.codes),
               (unsigned long)(uintptr_t)v);
    if (c.failed)
        printf("last_error=%s\n", c.last_error);
    if (pm_cfg_bool(s_cfg, "thread-stats"))
        s_thread_stats();
    int rc = c.answered == c.count && c.failed == 0 && c.doubles == 0 ? 0 : 1;
    free(lat);
    pm_bus_destroy(&c.bus);
    zhashx_destroy(&c.workers);
    zhashx_destroy(&c.codes);
    free(c.payload);
    free(c.start_us);
    free(c.lat_us);
    free(c.done);
    return rc;
}

/* ---- garbage ---- */

static int s_garbage(void)
{
    zsock_t *sock = zsock_new(ZMQ_DEALER);
    const char *key = pm_cfg_str(s_cfg, "curve-server-key");
    zcert_t *cert = key ? zcert_load(pm_cfg_str(s_cfg, "cert")) : NULL;
    if (cert) {
        zcert_apply(cert, sock);
        zsock_set_curve_serverkey(sock, key);
    }
    zsock_set_sndhwm(sock, 0);
    if (zsock_connect(sock, "%s", pm_cfg_str(s_cfg, "endpoint")) < 0)
        return 1;
    int count = (int)pm_cfg_int(s_cfg, "count");
    void *h = zsock_resolve(sock);
    uint8_t junk[64];
    int kinds = 13;
    for (int i = 0; i < count; i++) {
        for (size_t k = 0; k < sizeof junk; k++)
            junk[k] = (uint8_t)randof(256);
        uint8_t cmd;
        switch (i % kinds) {
        case 0: //  one empty frame
            zmq_send(h, "", 0, 0);
            break;
        case 1: //  unknown header
            zmq_send(h, "XXXX", 4, ZMQ_SNDMORE);
            zmq_send(h, junk, 10, 0);
            break;
        case 2: //  client header, too few frames
            zmq_send(h, "PMC1", 4, ZMQ_SNDMORE);
            zmq_send(h, "echo", 4, 0);
            break;
        case 3: //  rid with control characters
            zmq_send(h, "PMC1", 4, ZMQ_SNDMORE);
            zmq_send(h, "echo", 4, ZMQ_SNDMORE);
            zmq_send(h, "a\x01\x02", 3, ZMQ_SNDMORE);
            zmq_send(h, junk, 8, 0);
            break;
        case 4: //  service name too long
            zmq_send(h, "PMC1", 4, ZMQ_SNDMORE);
            {
                char longname[PM_BUS_SERVICE_MAX + 2];
                memset(longname, 'a', sizeof longname);
                zmq_send(h, longname, sizeof longname, ZMQ_SNDMORE);
            }
            zmq_send(h, "rid", 3, ZMQ_SNDMORE);
            zmq_send(h, "body", 4, 0);
            break;
        case 5: //  worker header, command frame of two bytes
            zmq_send(h, "PMW1", 4, ZMQ_SNDMORE);
            zmq_send(h, "\x01\x02", 2, 0);
            break;
        case 6: //  unknown worker command
            cmd = 0x7f;
            zmq_send(h, "PMW1", 4, ZMQ_SNDMORE);
            zmq_send(h, &cmd, 1, 0);
            break;
        case 7: //  REPLY from a worker that never registered
            cmd = PM_BUS_REPLY;
            zmq_send(h, "PMW1", 4, ZMQ_SNDMORE);
            zmq_send(h, &cmd, 1, ZMQ_SNDMORE);
            zmq_send(h, "\x00\x01\x02\x03\x04", 5, ZMQ_SNDMORE);
            zmq_send(h, "rid", 3, ZMQ_SNDMORE);
            zmq_send(h, junk, 20, 0);
            break;
        case 8: //  READY with a bad capacity
            cmd = PM_BUS_READY;
            zmq_send(h, "PMW1", 4, ZMQ_SNDMORE);
            zmq_send(h, &cmd, 1, ZMQ_SNDMORE);
            zmq_send(h, "echo", 4, ZMQ_SNDMORE);
            zmq_send(h, "-5x", 3, 0);
            break;
        case 9: //  random frames
            for (int f = 0, n = 1 + (int)randof(5); f < n; f++)
                zmq_send(h, junk + f, (size_t)randof(40), f < n - 1 ? ZMQ_SNDMORE : 0);
            break;
        case 10: //  a well-formed request with a body that is not a message
            zmq_send(h, "PMC1", 4, ZMQ_SNDMORE);
            zmq_send(h, "echo", 4, ZMQ_SNDMORE);
            {
                char rid[32];
                int n = snprintf(rid, sizeof rid, "garbage-%d", i);
                zmq_send(h, rid, (size_t)n, ZMQ_SNDMORE);
            }
            zmq_send(h, junk, 30, 0);
            break;
        case 11: //  far too many frames
            for (int f = 0; f < 20; f++)
                zmq_send(h, "PMC1", 4, f < 19 ? ZMQ_SNDMORE : 0);
            break;
        default: //  worker header alone
            zmq_send(h, "PMW1", 4, 0);
            break;
        }
    }
    //  Give the frames time to leave before the socket closes.
    zsock_set_linger(sock, 3000);
    zsock_destroy(&sock);
    zcert_destroy(&cert);
    printf("garbage sent=%d\n", count);
    return 0;
}

/* ---- events ---- */

static int s_pub(void)
{
    pm_bus_t *bus = s_bus("bustest-pub", NULL, pm_cfg_str(s_cfg, "publish-endpoint"), NULL, 0);
    if (!bus)
        return 1;
    zclock_sleep((int)pm_cfg_int(s_cfg, "delay-ms")); //  slow joiner
    int count = (int)pm_cfg_int(s_cfg, "count"), ok = 0;
    for (int i = 0; i < count && !zsys_interrupted; i++) {
        pm_msg_t *ev = pm_msg_new(PM_MSG_EVENT);
        pm_msg_set_str(ev, "name", pm_cfg_str(s_cfg, "topic"));
        pm_msg_set_str(ev, "source", "bustest");
        if (pm_bus_publish(bus, ev) == 0)
            ok++;
        pm_msg_destroy(&ev);
    }
    zclock_sleep((int)pm_cfg_int(s_cfg, "hold-ms"));
    printf("published=%d\n", ok);
    pm_bus_destroy(&bus);
    return ok == count ? 0 : 1;
}

static int s_events;

static void s_on_event(void *arg, const char *topic, const pm_msg_t *event)
{
    (void)arg;
    s_events++;
    printf("event topic=%s name=%s\n", topic, pm_msg_str(event, "name"));
    fflush(stdout);
}

static int s_sub(void)
{
    pm_bus_t *bus = s_bus("bustest-sub", NULL, NULL, pm_cfg_str(s_cfg, "subscribe-endpoint"), 0);
    if (!bus || pm_bus_subscribe(bus, pm_cfg_str(s_cfg, "prefix"), s_on_event, NULL) < 0)
        return 1;
    printf("subscribed\n");
    fflush(stdout);
    int count = (int)pm_cfg_int(s_cfg, "count");
    int64_t until = zclock_mono() + pm_cfg_int(s_cfg, "max-seconds") * 1000;
    while (s_events < count && zclock_mono() < until && pm_bus_run_once(bus, 100) >= 0)
        ;
    printf("events=%d\n", s_events);
    pm_bus_destroy(&bus);
    return s_events >= count ? 0 : 1;
}

int main(int argc, char **argv)
{
    pm_cfg_result_t r =
        pm_cfg_parse(&s_cfg, "bustest", "Bus test and benchmark helper.", s_opts, argc, argv);
    if (r == PM_CFG_EXIT)
        return 0;
    if (r != PM_CFG_RUN)
        return 2;
    pm_cfg_start_logging(s_cfg);
    const char *cmd = pm_cfg_arg(s_cfg, 0);
    int rc = 2;
    if (!cmd)
        fprintf(stderr, "bustest: give a subcommand: worker, client, garbage, pub, sub\n");
    else if (strcmp(cmd, "worker") == 0)
        rc = s_worker();
    else if (strcmp(cmd, "client") == 0)
        rc = s_client();
    else if (strcmp(cmd, "garbage") == 0)
        rc = s_garbage();
    else if (strcmp(cmd, "pub") == 0)
        rc = s_pub();
    else if (strcmp(cmd, "sub") == 0)
        rc = s_sub();
    else
        fprintf(stderr, "bustest: unknown subcommand '%s'\n", cmd);
    pm_cfg_destroy(&s_cfg);
    return rc;
}
