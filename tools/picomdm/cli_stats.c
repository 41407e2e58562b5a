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

static void s_on_stats(void *arg, const char *topic, const pm_msg_t *msg)
{
    (void)topic;
    if (pm_msg_type(msg) == PM_MSG_STATS)
        pm_stats_board_put(arg, msg); //  the latest per process and instance
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
    pm_stats_board_t *board = pm_stats_board_new(S_MAX);
    int rc = CLI_EXIT_BUS;
    if (!board) {
        fprintf(stderr, "picomdm stats: out of memory\n");
        rc = CLI_EXIT_FAIL;
        goto out;
    }
    if (!bus || pm_bus_subscribe(bus, prefix, s_on_stats, board) < 0) {
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
    if (pm_stats_board_count(board) == 0) {
        fprintf(stderr,
                "picomdm stats: no %s* snapshot within %lld s: are the processes running with "
                "stats-interval-s > 0 and a publish-endpoint on this broker? (try --seconds "
                "longer than their interval)\n",
                prefix, (long long)secs);
        rc = CLI_EXIT_FAIL;
        goto out;
    }
    size_t len = 0;
    char *text = pm_stats_board_render(board, NULL, &len);
    if (!text) {
        fprintf(stderr, "picomdm stats: out of memory\n");
        rc = CLI_EXIT_FAIL;
        goto out;
    }
    fwrite(text, 1, len, stdout);
    free(text);
    rc = CLI_EXIT_OK;
out:
    pm_stats_board_destroy(&board);
    pm_bus_destroy(&bus);
    return rc;
}
