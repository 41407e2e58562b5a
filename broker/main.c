/*  picomdm-broker — the ZeroMQ hub of PicoMDM: routes requests to named
 *  services (broker_router), fans events out (broker_proxy), and guards every
 *  non-local endpoint with CURVE (broker_curve).
 *
 *  Endpoints: each of request-endpoint (ROUTER), publish-endpoint (XSUB) and
 *  subscribe-endpoint (XPUB) takes a comma-separated list. Defaults:
 *  ipc://<run-dir>/{request,publish,subscribe} plus tcp://127.0.0.1:7401/7402/7403,
 *  where run-dir defaults to $XDG_RUNTIME_DIR/picomdm if XDG_RUNTIME_DIR is set,
 *  else /tmp/picomdm (created with mode 0700).
 */
#include "broker_curve.h"
#include "broker_proxy.h"
#include "broker_router.h"
#include "pm_alloc.h"
#include "pm_bus_wire.h"
#include "pm_cfg.h"
#include "pm_getpid.h"
#include "pm_log.h"
#include "pm_notify.h"
#include "pm_stats.h"

#include <czmq.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sched.h>
#include <sys/stat.h>

static const pm_opt_t s_opts[] = {
    {"request-endpoint", PM_OPT_STR, NULL,
     "where clients and workers connect (ROUTER), comma-separated; default "
     "ipc://<run-dir>/request,tcp://127.0.0.1:7401"},
    {"publish-endpoint", PM_OPT_STR, NULL,
     "where publishers connect (XSUB); default ipc://<run-dir>/publish,tcp://127.0.0.1:7402"},
    {"subscribe-endpoint", PM_OPT_STR, NULL,
     "where subscribers connect (XPUB); default ipc://<run-dir>/subscribe,tcp://127.0.0.1:7403"},
    {"run-dir", PM_OPT_STR, NULL,
     "directory for the default ipc endpoints; default $XDG_RUNTIME_DIR/picomdm or /tmp/picomdm"},
    {"heartbeat-ms", PM_OPT_INT, "1000",
     "heartbeat interval for workers that do not announce one (dead after 3 missed)"},
    {"request-wait-ms", PM_OPT_INT, "5000",
     "how long a request waits for a worker of its service before `error` no_service/busy"},
    {"max-inflight-per-worker", PM_OPT_INT, "1000", "caps the capacity a worker announces"},
    {"max-queue", PM_OPT_INT, "10000", "queued requests per service before `error` busy"},
    {"cpu", PM_OPT_INT, "-1",
     "run the broker's threads (its loop and libzmq's I/O thread) on this CPU only; -1: "
     "anywhere. Their hand-offs then wake a thread on the same CPU (docs/bus.md, Session 8)"},
    {"curve-secret", PM_OPT_STR, NULL,
     "server certificate (secret file from --keygen); turns CURVE on for every endpoint"},
    {"curve-allow", PM_OPT_STR, NULL, "directory of allowed client public certificates"},
    PM_STATS_OPTION,
    {"keygen", PM_OPT_STR, NULL,
     "write a CURVE certificate DIR/NAME (public) and DIR/NAME_secret, print the public key, "
     "exit"},
    {NULL, 0, NULL, NULL}};

#define S_MAX_ENDPOINTS 16

typedef struct {
    char *list[S_MAX_ENDPOINTS];
    int n;
} s_endpoints_t;

static void s_endpoints_free(s_endpoints_t *e)
{
    for (int i = 0; i < e->n; i++)
        free(e->list[i]);
    e->n = 0;
}

//  Split a comma-separated list (spaces around items ignored). -1 if empty or too long.
static int s_endpoints_parse(s_endpoints_t *e, const char *text, const char *option)
{
    const char *p = text;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *end = p;
        while (*end && *end != ',')
            end++;
        const char *last = end;
        while (last > p && last[-1] == ' ')
            last--;
        if (last > p) {
            if (e->n == S_MAX_ENDPOINTS) {
                fprintf(stderr, "picomdm-broker: --%s lists more than %d endpoints\n", option,
                        S_MAX_ENDPOINTS);
                return -1;
            }
            e->list[e->n++] = strndup(p, (size_t)(last - p));
        }
        p = end;
    }
    if (e->n == 0) {
        fprintf(stderr,
                "picomdm-broker: --%s is empty; give at least one endpoint, e.g. "
                "ipc:///tmp/picomdm/request\n",
                option);
        return -1;
    }
    return 0;
}

typedef struct {
    broker_router_t *router;
    broker_proxy_t *proxy;
} s_stats_ctx_t;

static void s_service_stats(void *arg, const char *service, int workers, int queued, int inflight,
                            int capacity)
{
    pm_stats_t *st = arg;
    const struct {
        const char *name, *help;
        int v;
    } g[] = {
        {"broker_workers", "live workers registered for the service", workers},
        {"broker_queue_depth", "requests queued for the service (no free worker)", queued},
        {"broker_in_flight", "requests handed to the service's workers, not yet answered",
         inflight},
        {"broker_capacity", "requests the service's workers take at once", capacity},
    };
    for (size_t i = 0; i < sizeof g / sizeof *g; i++)
        pm_stats_set(
            pm_stats_get(st, PM_STATS_GAUGE, g[i].name, g[i].help, "service", service, NULL, NULL),
            g[i].v);
}

//  The router's and proxy's counts, just before each snapshot.
static void s_collect(void *arg, pm_stats_t *st)
{
    s_stats_ctx_t *c = arg;
    broker_router_stats_t r;
    broker_router_stats(c->router, &r);
    const struct {
        const char *name, *help;
        uint64_t v;
    } k[] = {
        {"broker_requests_total", "requests received from clients", r.requests},
        {"broker_replies_total", "replies routed back to clients", r.replies},
        {"broker_dispatched_total", "requests handed to a worker", r.dispatched},
        {"broker_queued_total", "requests that had to wait for a worker", r.queued},
        {"broker_duplicates_total", "copies of a request already held, dropped", r.duplicates},
        {"broker_errors_total", "error replies made by the broker (no_service, busy...)", r.errors},
        {"broker_workers_lost_total", "workers declared dead (silent or gone)", r.workers_lost},
        {"broker_bad_frames_total", "malformed frames dropped", r.bad_frames},
        {"broker_unroutable_total", "replies for a client that is gone", r.unroutable},
        {"broker_events_total", "events forwarded to subscribers", broker_proxy_events(c->proxy)},
    };
    for (size_t i = 0; i < sizeof k / sizeof *k; i++)
        pm_stats_set_count(pm_stats_counter(st, k[i].name, k[i].help), k[i].v);
    //  a service whose workers all left keeps its last values until it comes back
    broker_router_services(c->router, s_service_stats, st);
}

//  The broker has no bus client: its snapshot goes straight out of the XPUB.
static void s_stats_tick(pm_stats_t *st, broker_proxy_t *proxy)
{
    if (!pm_stats_due(st))
        return;
    pm_msg_t *snap = pm_stats_snapshot(st);
    uint8_t *body = NULL;
    size_t len = 0;
    char err[200];
    if (snap && pm_msg_encode(snap, &body, &len, err, sizeof err) == 0)
        broker_proxy_publish(proxy, pm_msg_str(snap, "name"), body, len);
    free(body);
    pm_msg_destroy(&snap);
}

//  Every thread of the process on CPU `cpu` (threads started later inherit
//  it from the main thread). Returns 0 or -1 (logged).
static int s_pin(int cpu)
{
    cpu_set_t set;
    if (cpu >= CPU_SETSIZE) {
        pm_error("--cpu %d: CPUs are numbered 0-%d; pick one listed by `taskset -cp $$`", cpu,
                 CPU_SETSIZE - 1);
        return -1;
    }
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    int rc = d ? 0 : sched_setaffinity(0, sizeof set, &set);
    while (d && rc == 0 && (e = readdir(d)))
        if (e->d_name[0] != '.')
            rc = sched_setaffinity((pid_t)strtol(e->d_name, NULL, 10), sizeof set, &set);
    if (d)
        closedir(d);
    if (rc < 0) {
        pm_error("--cpu %d: cannot run there (%s); pick a CPU this process may use (`taskset "
                 "-cp $$` lists them) or -1",
                 cpu, strerror(errno));
        return -1;
    }
    pm_info("broker threads pinned to CPU %d", cpu);
    return 0;
}

static int s_bind(zsock_t *sock, const s_endpoints_t *e, const char *what, broker_curve_t *curve)
{
    if (curve)
        broker_curve_apply(curve, sock);
    for (int i = 0; i < e->n; i++) {
        if (zsock_bind(sock, "%s", e->list[i]) < 0) {
            pm_error("cannot bind the %s endpoint %s: %s (is another broker running there, or "
                     "does the ipc directory not exist?)",
                     what, e->list[i], zmq_strerror(errno));
            return -1;
        }
        pm_info("%s endpoint: %s%s", what, e->list[i], curve ? " (CURVE)" : "");
    }
    return 0;
}

int main(int argc, char **argv)
{
    pm_getpid_init(); //  getpid() without a syscall (libzmq, OpenSSL): pm_getpid.h
    int rc = 2;
    pm_cfg_t *cfg = NULL;
    s_endpoints_t eps[3] = {0};
    broker_curve_t *curve = NULL;
    broker_router_t *router = NULL;
    broker_proxy_t *proxy = NULL;
    pm_stats_t *stats = NULL;
    static const char *names[3] = {"request", "publish", "subscribe"};
    static const int ports[3] = {7401, 7402, 7403};

    pm_cfg_result_t r = pm_cfg_parse(&cfg, "picomdm-broker",
                                     "The PicoMDM bus broker: routes requests to services and "
                                     "fans events out.",
                                     s_opts, argc, argv);
    if (r == PM_CFG_EXIT)
        return 0;
    if (r == PM_CFG_ERROR)
        return 2;
    if (pm_cfg_start_logging(cfg) < 0)
        goto out;
    if (pm_cfg_str(cfg, "keygen")) {
        rc = broker_curve_keygen(pm_cfg_str(cfg, "keygen")) == 0 ? 0 : 1;
        goto out;
    }

    //  The run directory for the default ipc endpoints.
    char run_dir[1024];
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    if (pm_cfg_str(cfg, "run-dir"))
        snprintf(run_dir, sizeof run_dir, "%s", pm_cfg_str(cfg, "run-dir"));
    else if (xdg && *xdg)
        snprintf(run_dir, sizeof run_dir, "%s/picomdm", xdg);
    else
        snprintf(run_dir, sizeof run_dir, "/tmp/picomdm");
    bool uses_run_dir = false;
    for (int i = 0; i < 3; i++) {
        char option[32], def[1200];
        snprintf(option, sizeof option, "%s-endpoint", names[i]);
        const char *text = pm_cfg_str(cfg, option);
        if (!text) {
            snprintf(def, sizeof def, "ipc://%s/%s,tcp://127.0.0.1:%d", run_dir, names[i],
                     ports[i]);
            text = def;
            uses_run_dir = true;
        }
        if (s_endpoints_parse(&eps[i], text, option) < 0)
            goto out;
    }

    //  Policy: an endpoint other hosts can reach needs CURVE.
    const char *secret = pm_cfg_str(cfg, "curve-secret");
    const char *allow = pm_cfg_str(cfg, "curve-allow");
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < eps[i].n; k++)
            if (!secret && !pm_bus_endpoint_is_local(eps[i].list[k])) {
                fprintf(stderr,
                        "picomdm-broker: refusing to bind %s without CURVE: it is not ipc:// or "
                        "loopback, so other hosts could inject commands or read events.\n"
                        "  Make keys:  picomdm-broker --keygen /etc/picomdm/curve/broker\n"
                        "              picomdm-broker --keygen /etc/picomdm/curve/clients/<name> "
                        "(one per client host)\n"
                        "  then run with --curve-secret /etc/picomdm/curve/broker_secret "
                        "--curve-allow /etc/picomdm/curve/clients\n",
                        eps[i].list[k]);
                goto out;
            }
    if (secret && !allow) {
        fprintf(stderr, "picomdm-broker: --curve-secret needs --curve-allow DIR (the allowed "
                        "client public certificates)\n");
        goto out;
    }
    int heartbeat = (int)pm_cfg_int(cfg, "heartbeat-ms");
    int wait = (int)pm_cfg_int(cfg, "request-wait-ms");
    int inflight = (int)pm_cfg_int(cfg, "max-inflight-per-worker");
    int queue = (int)pm_cfg_int(cfg, "max-queue");
    int64_t cpu = pm_cfg_int(cfg, "cpu");
    if (heartbeat < 10 || wait < 1 || inflight < 1 || queue < 1 || cpu < -1 || cpu > 1 << 20) {
        fprintf(stderr, "picomdm-broker: heartbeat-ms must be >= 10, request-wait-ms, "
                        "max-inflight-per-worker, max-queue >= 1 and cpu a CPU number or -1\n");
        goto out;
    }
    rc = 1;
    if (pm_stats_from_cfg(cfg, "broker", &stats) < 0)
        goto out;
    if (secret && !(curve = broker_curve_new(secret, allow, pm_log_level() >= PM_LOG_DEBUG)))
        goto out;
    if (r == PM_CFG_CHECK) {
        printf("ok\n");
        rc = 0;
        goto out;
    }
    if (uses_run_dir && zsys_dir_create("%s", run_dir) < 0) {
        pm_error("cannot create the run directory %s; set --run-dir to a writable directory",
                 run_dir);
        goto out;
    }
    if (uses_run_dir)
        chmod(run_dir, 0700);

    if (cpu >= 0 && s_pin((int)cpu) < 0)
        goto out;
    broker_router_config_t rcfg = {heartbeat, wait, inflight, queue};
    router = broker_router_new(&rcfg);
    proxy = broker_proxy_new();
    if (!router || !proxy) {
        pm_error("cannot create the broker sockets (out of memory or file descriptors)");
        goto out;
    }
    if (s_bind(broker_router_socket(router), &eps[0], "request", curve) < 0 ||
        s_bind(broker_proxy_xsub(proxy), &eps[1], "publish", curve) < 0 ||
        s_bind(broker_proxy_xpub(proxy), &eps[2], "subscribe", curve) < 0)
        goto out;
    if (curve)
        pm_info("CURVE on for every endpoint, ipc:// included; clients (local ones too) need "
                "server key %s and a curve-cert in the allow list",
                broker_curve_public(curve));
    char alloc[64];
    pm_info("broker %s ready (allocator: %s)", PICOMDM_VERSION, pm_alloc_name(alloc, sizeof alloc));
    pm_notify_ready();

    s_stats_ctx_t sctx = {router, proxy};
    pm_stats_set_collect(stats, s_collect, &sctx);
    //  One poll() on the three sockets' descriptors (pm_bus_poll), not
    //  zmq_poll: see pm_bus_wire.h. A socket left with input (batch limit) is
    //  disarmed, so the next wait does not sleep.
    pm_bus_sock_t *socks[3] = {broker_router_wait(router), broker_proxy_wait_xsub(proxy),
                               broker_proxy_wait_xpub(proxy)};
    while (!zsys_interrupted) {
        int timeout = broker_router_next_timeout(router), sms = pm_stats_next_ms(stats);
        if (sms >= 0 && (timeout < 0 || sms < timeout))
            timeout = sms;
        if (pm_bus_poll(socks, 3, timeout) < 0 && errno != EINTR) {
            pm_error("poll failed: %s", zmq_strerror(errno));
            break;
        }
        broker_router_process(router);
        broker_proxy_process(proxy);
        s_stats_tick(stats, proxy);
    }
    pm_notify_stopping();
    broker_router_stats_t st;
    broker_router_stats(router, &st);
    pm_info("broker stopping: %llu requests, %llu replies, %llu duplicates dropped, %llu errors "
            "sent, %llu workers lost, %llu bad frames, %llu events",
            (unsigned long long)st.requests, (unsigned long long)st.replies,
            (unsigned long long)st.duplicates, (unsigned long long)st.errors,
            (unsigned long long)st.workers_lost, (unsigned long long)st.bad_frames,
            (unsigned long long)broker_proxy_events(proxy));
    rc = 0;
out:
    broker_router_destroy(&router);
    pm_stats_destroy(&stats);
    broker_proxy_destroy(&proxy);
    broker_curve_destroy(&curve);
    for (int i = 0; i < 3; i++)
        s_endpoints_free(&eps[i]);
    pm_cfg_destroy(&cfg);
    return rc;
}
