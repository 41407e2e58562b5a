/*  cli_stats — `picomdm stats [process] [--seconds N]` (see cli_stats.h). */
#include "cli_stats.h"
#include "pm_bus.h"
#include "pm_log.h"
#include "pm_stats.h"

#include <czmq.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_MAX 256

const pm_opt_t cli_stats_opts[] = {
    {"seconds", PM_OPT_INT, "11",
     "listen this long (one stats-interval-s and a bit catches every process)"},
    {NULL, 0, NULL, NULL}};

typedef struct {
    pm_msg_t *snap[S_MAX];
    double at[S_MAX];
    int n;
} s_seen_t;

//  Keep the latest snapshot per (process, instance), as a decoded copy.
static void s_on_stats(void *arg, const char *topic, const pm_msg_t *msg)
{
    (void)topic;
    s_seen_t *s = arg;
    if (pm_msg_type(msg) != PM_MSG_STATS)
        return;
    const char *p = pm_msg_str(msg, "process"), *i = pm_msg_str(msg, "instance");
    int k;
    for (k = 0; k < s->n; k++)
        if (strcmp(pm_msg_str(s->snap[k], "process"), p) == 0 &&
            strcmp(pm_msg_str(s->snap[k], "instance"), i) == 0)
            break;
    if (k == S_MAX)
        return;
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[200];
    pm_msg_t *copy = NULL;
    if (pm_msg_encode(msg, &buf, &len, err, sizeof err) == 0 &&
        pm_msg_decode(buf, len, &copy, err, sizeof err) == 0) {
        pm_msg_destroy(&s->snap[k]);
        s->snap[k] = copy;
        s->at[k] = pm_stats_now_ms();
        if (k == s->n)
            s->n++;
    }
    free(buf);
}

int cli_stats_run(cli_ctx_t *ctx)
{
    if (cli_argc(ctx) > 1) {
        fprintf(stderr, "usage: picomdm stats [process] [--seconds N]\n");
        return CLI_EXIT_USAGE;
    }
    int64_t secs = pm_cfg_int(ctx->cfg, "seconds");
    if (secs < 1 || secs > 86400) {
        fprintf(stderr, "picomdm stats: --seconds must be between 1 and 86400\n");
        return CLI_EXIT_USAGE;
    }
    char prefix[64];
    snprintf(prefix, sizeof prefix, "stats.%s", cli_arg(ctx, 0) ? cli_arg(ctx, 0) : "");
    pm_bus_config_t bc = {.name = "picomdm",
                          .subscribe_endpoint = pm_cfg_str(ctx->cfg, "subscribe-endpoint"),
                          .server_public_key = pm_cfg_str(ctx->cfg, "server-key"),
                          .cert_file = pm_cfg_str(ctx->cfg, "curve-cert")};
    pm_bus_t *bus = pm_bus_new(&bc);
    s_seen_t seen = {0};
    int rc = CLI_EXIT_BUS;
    if (!bus || pm_bus_subscribe(bus, prefix, s_on_stats, &seen) < 0) {
        fprintf(stderr,
                "picomdm stats: cannot subscribe at %s (check --subscribe-endpoint and the "
                "CURVE options)\n",
                bc.subscribe_endpoint ? bc.subscribe_endpoint : "(none)");
        goto out;
    }
    double until = pm_stats_now_ms() + (double)secs * 1000;
    while (pm_stats_now_ms() < until)
        if (pm_bus_run_once(bus, 200) < 0)
            break; //  interrupted: print what we have
    if (seen.n == 0) {
        fprintf(stderr,
                "picomdm stats: no %s* snapshot within %lld s: are the processes running with "
                "stats-interval-s > 0 and a publish-endpoint on this broker? (try --seconds "
                "longer than their interval)\n",
                prefix, (long long)secs);
        rc = CLI_EXIT_FAIL;
        goto out;
    }
    double now = pm_stats_now_ms(), ages[S_MAX];
    const pm_msg_t *snaps[S_MAX];
    for (int k = 0; k < seen.n; k++) {
        snaps[k] = seen.snap[k];
        ages[k] = (now - seen.at[k]) / 1000.0;
    }
    size_t len = 0;
    char *text = pm_stats_render(snaps, ages, (size_t)seen.n, &len);
    if (!text) {
        fprintf(stderr, "picomdm stats: out of memory\n");
        rc = CLI_EXIT_FAIL;
        goto out;
    }
    fwrite(text, 1, len, stdout);
    free(text);
    rc = CLI_EXIT_OK;
out:
    for (int k = 0; k < seen.n; k++)
        pm_msg_destroy(&seen.snap[k]);
    pm_bus_destroy(&bus);
    return rc;
}
