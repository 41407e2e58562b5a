/*  cli_stats — `picomdm stats`: listen to the stats.* snapshots every process
 *  publishes on the event plane (docs/metrics.md) for a while and print the
 *  latest of each process in the Prometheus text format, as the gateway's
 *  GET /metrics would.
 */
#ifndef CLI_STATS_H
#define CLI_STATS_H

#include "cli.h"
#include "pm_cfg.h"

extern const pm_opt_t cli_stats_opts[];
int cli_stats_run(cli_ctx_t *ctx);

#endif
