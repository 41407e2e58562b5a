/*  cli_ops — the picomdm subcommands that talk to the bus: enqueue, queue,
 *  results, devices, cancel (requests to the "scheduler" service) and watch
 *  (the event plane). Each returns a CLI_EXIT_* code and prints what went
 *  wrong and what to do next.
 */
#ifndef CLI_OPS_H
#define CLI_OPS_H

#include "cli.h"
#include "cli_command.h"

//  Send an ENQUEUE for `cmd` (already validated) to ctx->to; prints the CommandUUID.
int cli_op_enqueue(cli_ctx_t *ctx, const cli_command_t *cmd);
int cli_op_queue(cli_ctx_t *ctx);
int cli_op_results(cli_ctx_t *ctx);
int cli_op_devices(cli_ctx_t *ctx);
int cli_op_cancel(cli_ctx_t *ctx);
int cli_op_watch(cli_ctx_t *ctx);

//  Send `req` to the scheduler (errors printed). On CLI_EXIT_OK *reply is the caller's.
#include "pm_cfg.h"
#include "pm_msg.h"
int cli_call(cli_ctx_t *ctx, const pm_msg_t *req, pm_msg_t **reply);
//  The same, to another service ("ca", "store").
int cli_call_to(cli_ctx_t *ctx, const char *service, const pm_msg_t *req, pm_msg_t **reply);

/* ---- enrollment profile (cli_profile.c) ---- */
extern const pm_opt_t cli_profile_opts[];
int cli_profile_run(cli_ctx_t *ctx);

/* ---- one-time enrollment tokens (cli_token.c) ---- */
extern const pm_opt_t cli_token_opts[];
int cli_token_run(cli_ctx_t *ctx);

/* ---- inventory (cli_device.c) ---- */
int cli_op_device(cli_ctx_t *ctx);
int cli_op_timeline(cli_ctx_t *ctx);
//  `devices` with --model/--os/--silent-for/--query (devices.find), else cli_op_devices.
int cli_op_devices_find(cli_ctx_t *ctx);

//  "90s", "30m", "1h", "2d" or plain seconds -> seconds. -1 if malformed.
long long cli_parse_duration(const char *text);

#endif
