/*  cli — what the picomdm subcommands share: the parsed invocation and the
 *  documented exit codes. Built by main.c, read by the cli_* modules.
 */
#ifndef CLI_H
#define CLI_H

#include "pm_cfg.h"

#include <stdbool.h>

//  Exit codes (documented in docs/cli.md and `picomdm help`).
enum {
    CLI_EXIT_OK = 0,    //  done
    CLI_EXIT_FAIL = 1,  //  the request failed: error reply, not found, nothing to cancel
    CLI_EXIT_USAGE = 2, //  bad command line or invalid command content
    CLI_EXIT_BUS = 3    //  bus unreachable or no reply in time
};

#define CLI_MAX_LIST 1024 //  --to and --set entries per invocation

typedef struct {
    const char *name; //  the subcommand ("enqueue", ...)
    pm_cfg_t *cfg;    //  global + subcommand options (flags, PICOMDM_*, config file)
    const char *to[CLI_MAX_LIST];
    int nto;
    const char *set[CLI_MAX_LIST];
    int nset;
} cli_ctx_t;

//  Positional argument i of the subcommand (NULL if absent).
const char *cli_arg(const cli_ctx_t *ctx, int i);
int cli_argc(const cli_ctx_t *ctx);

#endif
