/*  cli — helpers shared by the picomdm subcommands (see cli.h). */
#include "cli.h"

const char *cli_arg(const cli_ctx_t *ctx, int i)
{
    return pm_cfg_arg(ctx->cfg, i);
}

int cli_argc(const cli_ctx_t *ctx)
{
    return pm_cfg_argc(ctx->cfg);
}
