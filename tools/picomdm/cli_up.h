/*  cli_up — `picomdm up` (what `make run` calls): the whole MDM on one host.
 *
 *  Starts every PicoMDM process found next to the picomdm binary (broker
 *  first, then store, scheduler, pusher, ca, gateway), with embedded
 *  defaults: a data directory (./var), ipc:// endpoints in <data>/run, a
 *  self-made device CA and gateway TLS certificate in <data>/pki (made on
 *  first start, reused later), and one generated configuration file
 *  <data>/run/picomdm.cfg that every process (and the CLI) reads. Supervises:
 *  a process that dies is restarted with backoff; SIGINT/SIGTERM stops all
 *  (SIGTERM, wait, SIGKILL) and exits 0. Child pids are in <data>/run/<name>.pid.
 */
#ifndef CLI_UP_H
#define CLI_UP_H

#include "cli.h"

extern const pm_opt_t cli_up_opts[];

//  Run until stopped. Returns an exit code (CLI_EXIT_*).
int cli_up_run(cli_ctx_t *ctx);

#endif
