/*  picomdm-scheduler — the command queue's policy service ("scheduler").
 *
 *  Serves checkin/connect from the gateway and enqueue/cancel/queue/results/
 *  devices from operators; each decision is one store transaction (sched.h,
 *  docs/queue.md). Stateless: run as many as you like.
 */
#include "pm_bus.h"
#include "pm_cfg.h"
#include "pm_getpid.h"
#include "pm_log.h"
#include "pm_notify.h"
#include "pm_stats.h"
#include "sched.h"

#include <czmq.h>
#include <stdio.h>
#include <sys/time.h>

static const pm_opt_t s_opts[] = {
    {"request-endpoint", PM_OPT_STR, "tcp://127.0.0.1:7401",
     "broker request endpoint (ROUTER): we serve 'scheduler' and call 'store' and 'push'"},
    {"notnow-limit", PM_OPT_INT, "3",
     "after this many NotNow answers a command goes behind the device's other commands (0 = "
     "never)"},
    {"redeliver-limit", PM_OPT_INT, "5",
     "a command delivered this many times without an answer is marked failed (0 = never)"},
    {"delivered-timeout-s", PM_OPT_INT, "60",
     "an unanswered delivery is offered again (in a later session) only after this many seconds"},
    {"default-ttl-s", PM_OPT_INT, "0",
     "commands enqueued without ttl_s expire after this many seconds (0 = never)"},
    {"store-timeout-ms", PM_OPT_INT, "3000", "per-attempt timeout for calls to the store"},
    {"store-retries", PM_OPT_INT, "3", "extra attempts for a store call (same request id)"},
    {"wake-sweep-s", PM_OPT_INT, "300",
     "re-send wakeups for enrollments still marked wake_pending this often (0 = never)"},
    {"wake-backoff-max-s", PM_OPT_INT, "21600",
     "sweep re-pushes of an enrollment that does not connect back off: wake-sweep-s, then 2x, "
     "4x ... up to this wait (0 = re-push on every sweep)"},
    {"silent-sweep-s", PM_OPT_INT, "86400",
     "wake active enrollments not seen for this long, this often (daily; 0 = never)"},
    {"server-key", PM_OPT_STR, NULL, "broker CURVE public key (Z85) when not on ipc/loopback"},
    {"curve-cert", PM_OPT_STR, NULL, "our CURVE certificate file (with server-key)"},
    {"publish-endpoint", PM_OPT_STR, "tcp://127.0.0.1:7402",
     "broker publish endpoint (XSUB) for our stats snapshots (empty: none)"},
    PM_STATS_OPTION,
    {NULL, 0, NULL, NULL}};

static int64_t s_now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

int main(int argc, char **argv)
{
    pm_getpid_init(); //  getpid() without a syscall (libzmq, OpenSSL): pm_getpid.h
    pm_cfg_t *cfg = NULL;
    pm_cfg_result_t r =
        pm_cfg_parse(&cfg, "scheduler", "PicoMDM command queue policy service", s_opts, argc, argv);
    if (r == PM_CFG_EXIT)
        return 0;
    if (r == PM_CFG_ERROR)
        return 2;
    int rc = 1;
    pm_bus_t *bus = NULL;
    sched_t *s = NULL;
    pm_stats_t *stats = NULL;
    sched_opts_t o = {0};
    if (pm_cfg_start_logging(cfg) < 0)
        goto out;
    if (pm_cfg_int_in(cfg, "notnow-limit", 0, 1000000, &o.notnow_limit) < 0 ||
        pm_cfg_int_in(cfg, "redeliver-limit", 0, 1000000, &o.redeliver_limit) < 0 ||
        pm_cfg_int_in(cfg, "delivered-timeout-s", 0, 86400 * 365, &o.delivered_timeout_s) < 0 ||
        pm_cfg_int_in(cfg, "default-ttl-s", 0, 86400 * 3650, &o.default_ttl_s) < 0 ||
        pm_cfg_int_in(cfg, "store-timeout-ms", 10, 600000, &o.store_timeout_ms) < 0 ||
        pm_cfg_int_in(cfg, "store-retries", 0, 100, &o.store_retries) < 0 ||
        pm_cfg_int_in(cfg, "wake-sweep-s", 0, 86400, &o.wake_sweep_s) < 0 ||
        pm_cfg_int_in(cfg, "silent-sweep-s", 0, 86400 * 30, &o.silent_sweep_s) < 0 ||
        pm_cfg_int_in(cfg, "wake-backoff-max-s", 0, 86400 * 30, &o.wake_backoff_max_s) < 0 ||
        pm_stats_from_cfg(cfg, "scheduler", &stats) < 0)
        goto out;
    if (r == PM_CFG_CHECK) {
        printf("ok\n");
        rc = 0;
        goto out;
    }
    pm_bus_config_t bc = {.name = "scheduler",
                          .request_endpoint = pm_cfg_str(cfg, "request-endpoint"),
                          .server_public_key = pm_cfg_str(cfg, "server-key"),
                          .cert_file = pm_cfg_str(cfg, "curve-cert"),
                          .publish_endpoint = pm_cfg_str(cfg, "publish-endpoint")};
    if (bc.publish_endpoint && !*bc.publish_endpoint)
        bc.publish_endpoint = NULL;
    bus = pm_bus_new(&bc);
    if (!bus) {
        pm_error("cannot connect to the broker at %s (check request-endpoint)",
                 bc.request_endpoint);
        goto out;
    }
    s = sched_new(bus, &o);
    if (s)
        sched_set_stats(s, stats);
    if (!s || pm_bus_serve(bus, "scheduler", sched_on_job, s) < 0) {
        pm_error("cannot serve the scheduler service (see above)");
        goto out;
    }
    pm_info("serving 'scheduler' via %s (notnow-limit %d, redeliver-limit %d, "
            "delivered-timeout-s %d, default-ttl-s %d)",
            bc.request_endpoint, o.notnow_limit, o.redeliver_limit, o.delivered_timeout_s,
            o.default_ttl_s);
    pm_notify_ready();
    pm_notify_status("serving scheduler via %s", bc.request_endpoint);
    while (!zsys_interrupted) {
        if (pm_bus_run_once(bus, 500) < 0)
            break;
        sched_tick(s, s_now_ms());
        pm_stats_tick(stats, bus);
    }
    pm_notify_stopping();
    pm_bus_stats_t st;
    pm_bus_stats(bus, &st);
    pm_info("stopping after %llu requests", (unsigned long long)st.jobs);
    rc = 0;
out:
    sched_destroy(&s);
    pm_stats_destroy(&stats);
    pm_bus_destroy(&bus);
    pm_cfg_destroy(&cfg);
    return rc;
}
