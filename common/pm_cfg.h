/*  pm_cfg — one configuration table per process.
 *
 *  Each process declares its options once (name, type, default, help); that
 *  table drives the config file (ZPL, czmq zconfig), environment overrides,
 *  command-line overrides, `--help`, `--version` and `--check`.
 *
 *  Precedence, lowest first: table default < config file < environment
 *  (PICOMDM_<NAME>, dashes as underscores, upper case) < command line.
 *  In the config file an option is looked up as `<process>/<name>` first, then
 *  as `<name>` at the top level, so one file can serve every process on a host.
 */
#ifndef PM_CFG_H
#define PM_CFG_H

#include <stdbool.h>
#include <stdint.h>

typedef enum { PM_OPT_STR, PM_OPT_INT, PM_OPT_BOOL } pm_opt_type_t;

typedef struct {
    const char *name; //  "request-endpoint": --request-endpoint, PICOMDM_REQUEST_ENDPOINT
    pm_opt_type_t type;
    const char *def;  //  default as text (NULL = unset)
    const char *help; //  one line for --help
} pm_opt_t;

typedef struct pm_cfg pm_cfg_t;

typedef enum {
    PM_CFG_RUN = 0,   //  go on and run
    PM_CFG_EXIT = 1,  //  --help or --version printed: exit 0
    PM_CFG_CHECK = 2, //  --check: validate everything, print "ok", exit 0 (or 1)
    PM_CFG_ERROR = -1 //  a message was printed: exit 2
} pm_cfg_result_t;

//  Parse argv against `opts` (terminated by an entry with name == NULL).
//  `process` names the config-file section and the log tag; `summary` is the
//  one-line description for --help. Every table also gets --config, --log-level,
//  --syslog, --help, --version and --check. Words that are not options are kept
//  as positional arguments. On success *cfg is set (caller destroys).
pm_cfg_result_t pm_cfg_parse(pm_cfg_t **cfg, const char *process, const char *summary,
                             const pm_opt_t *opts, int argc, char **argv);
void pm_cfg_destroy(pm_cfg_t **cfg);

//  Values. The name must be in the table (a programming error otherwise).
//  Strings are owned by cfg. An unset string option returns NULL.
const char *pm_cfg_str(const pm_cfg_t *cfg, const char *name);
int64_t pm_cfg_int(const pm_cfg_t *cfg, const char *name);
bool pm_cfg_bool(const pm_cfg_t *cfg, const char *name);
//  An integer option that must lie in [lo, hi]: 0 and *out, or -1 after
//  logging "<name> must be between lo and hi, not v" (a startup error).
int pm_cfg_int_in(const pm_cfg_t *cfg, const char *name, int64_t lo, int64_t hi, int *out);

//  Positional (non-option) arguments, in order.
int pm_cfg_argc(const pm_cfg_t *cfg);
const char *pm_cfg_arg(const pm_cfg_t *cfg, int i);

//  Start logging as the table said (--log-level, --syslog). Returns -1 on a bad level.
int pm_cfg_start_logging(const pm_cfg_t *cfg);

//  Print --help text for a table to stdout.
void pm_cfg_usage(const char *process, const char *summary, const pm_opt_t *opts);

#define PICOMDM_VERSION "0.1.0"

#endif
