/*  picomdm — the operator CLI: enqueue MDM commands, inspect queues, results
 *  and devices, watch the event plane, and start the whole MDM on one host
 *  (`picomdm up`). See docs/cli.md.
 *
 *  Options come from one table per subcommand plus the global table (bus
 *  endpoints, CURVE keys, timeout), through pm_cfg: command line > PICOMDM_*
 *  environment > config file (section `picomdm`) > defaults. --to and --set
 *  are repeatable, so they are taken out of argv before pm_cfg sees it.
 */
#include "cli.h"
#include "cli_audit.h"
#include "cli_command.h"
#include "cli_doctor.h"
#include "cli_ops.h"
#include "cli_stats.h"
#include "cli_up.h"
#include "cmdtab.h"
#include "pm_cfg.h"
#include "pm_log.h"
#include "pushcert.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_MAX_OPTS 48
#define S_ARGV_MAX 512

static const pm_opt_t s_global[] = {
    {"request-endpoint", PM_OPT_STR, "ipc://var/run/request.sock",
     "broker request endpoint (ROUTER)"},
    {"subscribe-endpoint", PM_OPT_STR, "ipc://var/run/subscribe.sock",
     "broker event endpoint (XPUB), for watch"},
    {"server-key", PM_OPT_STR, NULL, "broker CURVE public key (Z85), for non-local endpoints"},
    {"curve-cert", PM_OPT_STR, NULL, "our CURVE certificate file (zcert secret file)"},
    {"timeout", PM_OPT_INT, "5000", "milliseconds to wait for a reply, per attempt"},
    {"retries", PM_OPT_INT, "1", "extra attempts (same request id) after a timeout"},
    {"json", PM_OPT_BOOL, "false", "print JSON (one object per line) instead of text"},
    {NULL, 0, NULL, NULL}};

static const pm_opt_t s_enqueue_opts[] = {
    {"plist", PM_OPT_STR, NULL, "start from this plist (the Command dict, or a whole command)"},
    {"priority", PM_OPT_INT, "0", "higher is offered first"},
    {"ttl", PM_OPT_STR, NULL, "expire if not answered within this time (90s, 30m, 1h, 2d)"},
    {"no-push", PM_OPT_BOOL, "false", "do not wake the devices through APNs"},
    {"raw", PM_OPT_BOOL, "false", "skip schema validation (unknown types and keys allowed)"},
    {"uuid", PM_OPT_STR, NULL, "use this CommandUUID instead of a generated one"},
    {"dry-run", PM_OPT_BOOL, "false", "validate and print the Command plist; send nothing"},
    {NULL, 0, NULL, NULL}};

static const pm_opt_t s_none[] = {{NULL, 0, NULL, NULL}};
static const pm_opt_t s_queue_opts[] = {{"all", PM_OPT_BOOL, "false", "include finished entries"},
                                        {NULL, 0, NULL, NULL}};
static const pm_opt_t s_results_opts[] = {
    {"limit", PM_OPT_INT, "20", "at most this many results, newest first"}, {NULL, 0, NULL, NULL}};
static const pm_opt_t s_devices_opts[] = {
    {"limit", PM_OPT_INT, "1000", "at most this many enrollments"},
    {"after", PM_OPT_STR, NULL, "start after this enrollment id (paging)"},
    {"model", PM_OPT_STR, NULL, "only this model (enrollment or inventory Model/ProductName)"},
    {"os", PM_OPT_STR, NULL, "only this OS version"},
    {"silent-for", PM_OPT_STR, NULL, "only enrollments not seen for this long (7d, 12h)"},
    {"query", PM_OPT_STR, NULL, "only where inventory attribute Attr=Value (docs/inventory.md)"},
    {NULL, 0, NULL, NULL}};
static const pm_opt_t s_timeline_opts[] = {
    {"limit", PM_OPT_INT, "1000", "at most this many events"},
    {"after", PM_OPT_INT, "0", "events after this seq"},
    {NULL, 0, NULL, NULL}};
static const pm_opt_t s_watch_opts[] = {
    {"count", PM_OPT_INT, "0", "exit after this many events (0 = run until Ctrl-C)"},
    {NULL, 0, NULL, NULL}};

typedef struct {
    const char *name;
    const char *usage;   //  after "picomdm <name> "
    const char *summary; //  one line
    const pm_opt_t *opts;
    bool takes_to;  //  --to ID...
    bool takes_set; //  --set K=V
    int (*run)(cli_ctx_t *ctx);
} s_cmd_t;

static int s_run_help(cli_ctx_t *ctx);
static int s_run_commands(cli_ctx_t *ctx);
static int s_run_enqueue(cli_ctx_t *ctx);
static int s_run_cancel(cli_ctx_t *ctx);

static const s_cmd_t s_cmds[] = {
    {"enqueue", "<RequestType> --to ID... [--set Key=Value...] [--plist FILE] [options]",
     "queue an MDM command for devices; prints its CommandUUID", s_enqueue_opts, true, true,
     s_run_enqueue},
    {"queue", "<enrollment id> [--all]", "the commands queued for an enrollment, next first",
     s_queue_opts, false, false, cli_op_queue},
    {"results", "<enrollment id | CommandUUID> [--limit N]",
     "command results with the device's answer (ErrorChain included)", s_results_opts, false, false,
     cli_op_results},
    {"devices", "[--model M] [--os V] [--silent-for 7d] [--query Attr=Value] [--limit N]",
     "the enrollments this server knows (filtered in the store)", s_devices_opts, false, false,
     cli_op_devices_find},
    {"device", "<enrollment id> [--json]",
     "one enrollment: identity, push state, queue depth and its inventory", s_none, false, false,
     cli_op_device},
    {"timeline", "<enrollment id> [--limit N] [--after SEQ]",
     "the events of one enrollment, one line each, oldest first", s_timeline_opts, false, false,
     cli_op_timeline},
    {"cancel", "<CommandUUID> [--to ID...]",
     "cancel a queued command that has not been answered (for all targets, or some)", s_none, true,
     false, s_run_cancel},
    {"watch", "[topic-prefix] [--count N]",
     "print events (checkin., command., push., security.) as JSON lines", s_watch_opts, false,
     false, cli_op_watch},
    {"stats", "[process] [--seconds N]", "every process's counters from the bus, Prometheus text",
     cli_stats_opts, false, false, cli_stats_run},
    {"audit", "[--file PATH] [--after SEQ] [--poll-ms N]",
     "append every event to a JSON-lines file, gaps filled from the store (SIGHUP reopens)",
     cli_audit_opts, false, false, cli_audit_run},
    {"doctor", "[<enrollment id>] [--push-cert PEM] [--silent-for 1d]",
     "why is a device silent: push, token, queue and check-in findings (no id: the fleet)",
     cli_doctor_opts, false, false, cli_doctor_run},
    {"profile", "[-o FILE] [--server-url URL] [--topic T]",
     "the signed enrollment profile (.mobileconfig) devices install, from the ca service",
     cli_profile_opts, false, false, cli_profile_run},
    {"enroll-token", "new [--count N] [--ttl 24h] [--note TEXT] | list [--all] | revoke ID",
     "one-time enrollment links for a gateway with enroll-auth = token", cli_token_opts, false,
     false, cli_token_run},
    {"commands", "[RequestType]",
     "list the MDM commands Apple's schema defines, or describe one (keys, types, values)", s_none,
     false, false, s_run_commands},
    {"up", "[--data-dir DIR] [--listen ADDR:PORT] [options]",
     "start the whole MDM on this host (every process, certificates, supervision)", cli_up_opts,
     false, false, cli_up_run},
    {"help", "[subcommand]", "this overview, or the help of one subcommand", s_none, false, false,
     s_run_help},
    {"pushcert", "new|vendor-sign|show FILE|install FILE [options]",
     "the MDM push certificate: key and CSR, vendor signing, inspection, installation",
     pushcert_opts, false, false, pushcert_run},
    {NULL, NULL, NULL, NULL, false, false, NULL}};

static const s_cmd_t *s_find_cmd(const char *name)
{
    for (const s_cmd_t *c = s_cmds; name && c->name; c++)
        if (strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

//  The merged option table of a subcommand: its own options, then the globals.
static void s_merge(const s_cmd_t *c, pm_opt_t *out)
{
    int n = 0;
    for (const pm_opt_t *o = c->opts; o && o->name && n < S_MAX_OPTS - 1; o++)
        out[n++] = *o;
    for (const pm_opt_t *o = s_global; o->name && n < S_MAX_OPTS - 1; o++)
        out[n++] = *o;
    memset(&out[n], 0, sizeof out[n]);
}

static void s_print_opts(const pm_opt_t *opts)
{
    for (const pm_opt_t *o = opts; o->name; o++) {
        char left[64];
        snprintf(left, sizeof left, "--%s%s", o->name,
                 o->type == PM_OPT_BOOL  ? ""
                 : o->type == PM_OPT_INT ? " N"
                                         : " VALUE");
        printf("  %-28s %s", left, o->help);
        if (o->def && o->type != PM_OPT_BOOL)
            printf(" (default %s)", o->def);
        printf("\n");
    }
}

static void s_cmd_usage(const s_cmd_t *c)
{
    printf("usage: picomdm %s %s\n\n%s\n", c->name, c->usage, c->summary);
    if (c->takes_to || c->takes_set || (c->opts && c->opts->name))
        printf("\noptions:\n");
    if (c->takes_to)
        printf("  %-28s %s\n", "--to ID...",
               "target enrollment ids (repeatable; --to A,B or --to A B)");
    if (c->takes_set)
        printf("  %-28s %s\n", "--set Key=Value",
               "a command key (repeatable); `picomdm commands TYPE` lists the keys");
    s_print_opts(c->opts);
    printf("\nglobal options (also PICOMDM_<NAME> in the environment, or NAME in the\n"
           "`picomdm` section of the --config file):\n");
    s_print_opts(s_global);
    printf("  %-28s %s\n", "--config FILE", "configuration file (ZPL); also PICOMDM_CONFIG");
    printf("  %-28s %s\n", "--log-level LEVEL", "error, warn, notice, info or debug");
    printf("\nexit codes: 0 ok, 1 the request failed, 2 usage or invalid input, 3 bus "
           "unreachable/timeout\n");
}

static void s_overview(void)
{
    printf("usage: picomdm <subcommand> [options]\n\n"
           "The PicoMDM operator tool.\n\nsubcommands:\n");
    for (const s_cmd_t *c = s_cmds; c->name; c++)
        printf("  %-10s %s\n", c->name, c->summary);
    printf("\nglobal options (every subcommand; also PICOMDM_<NAME> or the config file):\n");
    for (const pm_opt_t *o = s_global; o->name; o++)
        printf("  --%-26s %s\n", o->name, o->help);
    printf("\nexit codes: 0 ok, 1 the request failed (error reply), 2 usage or invalid input,\n"
           "            3 bus unreachable or no reply in time\n"
           "`picomdm <subcommand> --help` shows its options; docs/cli.md has examples.\n");
}

static int s_run_help(cli_ctx_t *ctx)
{
    const char *what = cli_arg(ctx, 0);
    if (!what) {
        s_overview();
        return CLI_EXIT_OK;
    }
    const s_cmd_t *c = s_find_cmd(what);
    if (!c) {
        fprintf(stderr, "picomdm: no subcommand '%s' (see picomdm help)\n", what);
        return CLI_EXIT_USAGE;
    }
    s_cmd_usage(c);
    return CLI_EXIT_OK;
}

static int s_run_commands(cli_ctx_t *ctx)
{
    const char *rt = cli_arg(ctx, 0);
    char buf[128];
    if (rt) {
        const cmdtab_cmd_t *cmd = cmdtab_find(rt);
        if (!cmd) {
            const char *near = cmdtab_suggest(rt);
            fprintf(stderr,
                    "picomdm: unknown RequestType '%s'%s%s%s (picomdm commands lists all)\n", rt,
                    near ? "; did you mean " : "", near ? near : "", near ? "?" : "");
            return CLI_EXIT_USAGE;
        }
        cmdtab_describe(stdout, cmd);
        return CLI_EXIT_OK;
    }
    for (size_t i = 0; i < cmdtab_ncmds; i++) {
        const cmdtab_cmd_t *c = &cmdtab_cmds[i];
        if (pm_cfg_bool(ctx->cfg, "json"))
            printf("{\"request_type\":\"%s\",\"keys\":%u,\"platforms\":\"%s\"}\n", c->request_type,
                   c->nkey, cmdtab_platform_list(c->platforms, buf, sizeof buf));
        else
            printf("%-34s %-40s %s\n", c->request_type,
                   cmdtab_platform_list(c->platforms, buf, sizeof buf), c->title ? c->title : "");
    }
    return CLI_EXIT_OK;
}

//  Build and validate the Command dict from the command line. NULL on error
//  (message printed, *rc set).
static cli_command_t *s_build_command(cli_ctx_t *ctx, int *rc)
{
    char err[4096];
    *rc = CLI_EXIT_USAGE;
    cli_command_t *cmd = cli_command_new(pm_cfg_bool(ctx->cfg, "raw"));
    if (!cmd) {
        fprintf(stderr, "picomdm: out of memory\n");
        *rc = CLI_EXIT_FAIL;
        return NULL;
    }
    const char *plist = pm_cfg_str(ctx->cfg, "plist");
    if (plist && cli_command_load_plist(cmd, plist, err, sizeof err) < 0)
        goto fail;
    if (cli_argc(ctx) > 1) {
        snprintf(err, sizeof err,
                 "unexpected argument '%s' (give targets with --to, keys with --set K=V)",
                 cli_arg(ctx, 1));
        goto fail;
    }
    if (cli_command_set_type(cmd, cli_arg(ctx, 0), err, sizeof err) < 0)
        goto fail;
    for (int i = 0; i < ctx->nset; i++)
        if (cli_command_set(cmd, ctx->set[i], err, sizeof err) < 0)
            goto fail;
    if (cli_command_validate(cmd, err, sizeof err) < 0) {
        fprintf(stderr, "picomdm: %s is not valid:\n", cli_command_type(cmd));
        for (char *line = strtok(err, "\n"); line; line = strtok(NULL, "\n"))
            fprintf(stderr, "  %s\n", line);
        fprintf(stderr, "(`picomdm commands %s` lists its keys; --raw skips these checks)\n",
                cli_command_type(cmd));
        cli_command_destroy(&cmd);
        return NULL;
    }
    return cmd;
fail:
    fprintf(stderr, "picomdm: %s\n", err);
    cli_command_destroy(&cmd);
    return NULL;
}

static int s_run_enqueue(cli_ctx_t *ctx)
{
    int rc;
    cli_command_t *cmd = s_build_command(ctx, &rc);
    if (!cmd)
        return rc;
    if (pm_cfg_bool(ctx->cfg, "dry-run")) {
        char *xml = NULL;
        size_t len = 0;
        if (cli_command_to_xml(cmd, &xml, &len) < 0) {
            fprintf(stderr, "picomdm: cannot render the command as a plist\n");
            rc = CLI_EXIT_FAIL;
        } else {
            fwrite(xml, 1, len, stdout);
            rc = CLI_EXIT_OK;
        }
        free(xml);
        cli_command_destroy(&cmd);
        return rc;
    }
    rc = cli_op_enqueue(ctx, cmd);
    cli_command_destroy(&cmd);
    return rc;
}

static int s_run_cancel(cli_ctx_t *ctx)
{
    return cli_op_cancel(ctx);
}

//  Is argv[i] a value-taking option of `c` or of the global table (so that
//  the next word is its value, not the subcommand)?
static bool s_takes_value(const s_cmd_t *c, const char *arg)
{
    if (strncmp(arg, "--", 2) != 0 || strchr(arg, '='))
        return false;
    const char *name = arg + 2;
    if (strcmp(name, "config") == 0 || strcmp(name, "log-level") == 0)
        return true;
    const pm_opt_t *tables[2] = {s_global, c ? c->opts : s_none};
    for (int t = 0; t < 2; t++)
        for (const pm_opt_t *o = tables[t]; o->name; o++)
            if (strcmp(o->name, name) == 0)
                return o->type != PM_OPT_BOOL;
    return false;
}

static int s_add(const char **list, int *n, const char *v)
{
    if (*n >= CLI_MAX_LIST) {
        fprintf(stderr, "picomdm: too many --to/--set values (at most %d)\n", CLI_MAX_LIST);
        return -1;
    }
    list[(*n)++] = v;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > S_ARGV_MAX) {
        fprintf(stderr, "picomdm: too many arguments (at most %d)\n", S_ARGV_MAX);
        return CLI_EXIT_USAGE;
    }
    //  The subcommand is the first word that is not an option or an option's value.
    int sub = 0;
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] != '-') {
            sub = i;
            break;
        }
        if (s_takes_value(NULL, argv[i]))
            i++;
    }
    const char *name = sub ? argv[sub] : NULL;
    if (!name) {
        for (int i = 1; i < argc; i++)
            if (strcmp(argv[i], "--version") == 0) {
                printf("picomdm %s\n", PICOMDM_VERSION);
                return CLI_EXIT_OK;
            }
        s_overview();
        return argc > 1 && strcmp(argv[1], "--help") && strcmp(argv[1], "-h") ? CLI_EXIT_USAGE
                                                                              : CLI_EXIT_OK;
    }
    const s_cmd_t *c = s_find_cmd(name);
    if (!c) {
        fprintf(stderr, "picomdm: unknown subcommand '%s' (see picomdm help)\n", name);
        return CLI_EXIT_USAGE;
    }
    cli_ctx_t ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.name = c->name;

    //  argv for pm_cfg: everything but the subcommand word, --to and --set.
    char *rest[S_ARGV_MAX + 1];
    int nrest = 0;
    rest[nrest++] = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i == sub)
            continue;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            s_cmd_usage(c);
            return CLI_EXIT_OK;
        }
        if (c->takes_to && (strcmp(a, "--to") == 0 || strncmp(a, "--to=", 5) == 0)) {
            //  --to A,B  --to A B  --to=A: words up to the next option
            bool any = false;
            if (a[4] == '=') {
                if (s_add(ctx.to, &ctx.nto, a + 5) < 0)
                    return CLI_EXIT_USAGE;
                any = true;
            } else
                while (i + 1 < argc && argv[i + 1][0] != '-') {
                    if (s_add(ctx.to, &ctx.nto, argv[++i]) < 0)
                        return CLI_EXIT_USAGE;
                    any = true;
                }
            if (!any) {
                fprintf(stderr, "picomdm: --to needs an enrollment id\n");
                return CLI_EXIT_USAGE;
            }
            continue;
        }
        if (c->takes_set && (strcmp(a, "--set") == 0 || strncmp(a, "--set=", 6) == 0)) {
            const char *v = a[5] == '=' ? a + 6 : (i + 1 < argc ? argv[++i] : NULL);
            if (!v) {
                fprintf(stderr, "picomdm: --set needs Key=Value\n");
                return CLI_EXIT_USAGE;
            }
            if (s_add(ctx.set, &ctx.nset, v) < 0)
                return CLI_EXIT_USAGE;
            continue;
        }
        rest[nrest++] = argv[i];
    }
    rest[nrest] = NULL;

    //  "ID,ID" in --to: split in place (argv strings are ours to modify)
    const char *split[CLI_MAX_LIST];
    int nsplit = 0;
    for (int i = 0; i < ctx.nto; i++) {
        char *s = (char *)ctx.to[i];
        for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ","))
            if (s_add(split, &nsplit, tok) < 0)
                return CLI_EXIT_USAGE;
    }
    memcpy(ctx.to, split, sizeof(split[0]) * (size_t)nsplit);
    ctx.nto = nsplit;

    pm_opt_t opts[S_MAX_OPTS];
    s_merge(c, opts);
    pm_cfg_result_t r = pm_cfg_parse(&ctx.cfg, "picomdm", c->summary, opts, nrest, rest);
    if (r == PM_CFG_EXIT)
        return CLI_EXIT_OK;
    if (r == PM_CFG_ERROR)
        return CLI_EXIT_USAGE;
    if (pm_cfg_start_logging(ctx.cfg) < 0) {
        pm_cfg_destroy(&ctx.cfg);
        return CLI_EXIT_USAGE;
    }
    int rc = r == PM_CFG_CHECK ? (printf("ok\n"), CLI_EXIT_OK) : c->run(&ctx);
    pm_cfg_destroy(&ctx.cfg);
    return rc;
}
