/*  pm_cfg — table-driven configuration (see pm_cfg.h). */
#include "pm_cfg.h"
#include "pm_log.h"

#include <czmq.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PM_CFG_MAX_OPTS 96

//  Options every process has, appended to its own table.
static const pm_opt_t s_common[] = {
    {"config", PM_OPT_STR, NULL, "configuration file (ZPL); also PICOMDM_CONFIG"},
    {"log-level", PM_OPT_STR, "info", "error, warn, notice, info or debug"},
    {"syslog", PM_OPT_BOOL, "false", "log to syslog instead of stderr"},
    {NULL, 0, NULL, NULL}};

struct pm_cfg {
    const char *process;
    const pm_opt_t *opts[PM_CFG_MAX_OPTS];
    char *values[PM_CFG_MAX_OPTS];
    int nopts;
    char **args;
    int nargs;
};

static int s_find(const pm_cfg_t *cfg, const char *name, size_t len)
{
    for (int i = 0; i < cfg->nopts; i++)
        if (strlen(cfg->opts[i]->name) == len && strncmp(cfg->opts[i]->name, name, len) == 0)
            return i;
    return -1;
}

static int s_index(const pm_cfg_t *cfg, const char *name)
{
    int i = s_find(cfg, name, strlen(name));
    if (i < 0) {
        //  A name missing from the table is a programming error, not bad input.
        fprintf(stderr, "pm_cfg: option '%s' is not declared for %s\n", name, cfg->process);
        abort();
    }
    return i;
}

static int s_set(pm_cfg_t *cfg, int i, const char *value, const char *from)
{
    const pm_opt_t *o = cfg->opts[i];
    if (o->type == PM_OPT_INT && value) {
        char *end;
        errno = 0;
        (void)strtoll(value, &end, 0);
        if (errno || end == value || *end) {
            fprintf(stderr, "%s: option --%s (from %s) wants a whole number, got '%s'\n",
                    cfg->process, o->name, from, value);
            return -1;
        }
    }
    if (o->type == PM_OPT_BOOL && value && strcmp(value, "true") && strcmp(value, "false") &&
        strcmp(value, "1") && strcmp(value, "0") && strcmp(value, "yes") && strcmp(value, "no")) {
        fprintf(stderr, "%s: option --%s (from %s) wants true or false, got '%s'\n", cfg->process,
                o->name, from, value);
        return -1;
    }
    free(cfg->values[i]);
    cfg->values[i] = value ? strdup(value) : NULL;
    return 0;
}

void pm_cfg_usage(const char *process, const char *summary, const pm_opt_t *opts)
{
    printf("usage: %s [options]\n\n%s\n\noptions:\n", process, summary);
    const pm_opt_t *tables[2] = {opts, s_common};
    for (int t = 0; t < 2; t++)
        for (const pm_opt_t *o = tables[t]; o && o->name; o++) {
            char left[64];
            snprintf(left, sizeof left, "--%s%s", o->name,
                     o->type == PM_OPT_BOOL  ? ""
                     : o->type == PM_OPT_INT ? " N"
                                             : " VALUE");
            printf("  %-28s %s", left, o->help);
            if (o->def)
                printf(" (default: %s)", o->def);
            printf("\n");
        }
    printf("  %-28s %s\n", "--check", "validate the configuration and exit");
    printf("  %-28s %s\n", "--version", "print the version and exit");
    printf("  %-28s %s\n", "--help", "print this help and exit");
    const char *section = strncmp(process, "picomdm-", 8) == 0 ? process + 8 : process;
    printf("\nEvery option can also be set in the config file (as %s/NAME or NAME)\n"
           "or in the environment as PICOMDM_NAME (upper case, dashes as underscores).\n",
           section);
}

static void s_envname(char *out, size_t size, const char *name)
{
    size_t n = 0;
    const char *prefix = "PICOMDM_";
    for (const char *p = prefix; *p && n + 1 < size; p++)
        out[n++] = *p;
    for (const char *p = name; *p && n + 1 < size; p++)
        out[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    out[n] = 0;
}

pm_cfg_result_t pm_cfg_parse(pm_cfg_t **cfgp, const char *process, const char *summary,
                             const pm_opt_t *opts, int argc, char **argv)
{
    *cfgp = NULL;
    pm_cfg_t *cfg = calloc(1, sizeof *cfg);
    if (!cfg)
        return PM_CFG_ERROR;
    cfg->process = process;
    cfg->args = calloc((size_t)argc + 1, sizeof(char *));
    const pm_opt_t *tables[2] = {opts, s_common};
    for (int t = 0; t < 2; t++)
        for (const pm_opt_t *o = tables[t]; o && o->name; o++) {
            if (cfg->nopts == PM_CFG_MAX_OPTS) {
                fprintf(stderr, "pm_cfg: too many options\n");
                abort();
            }
            cfg->opts[cfg->nopts] = o;
            cfg->values[cfg->nopts] = o->def ? strdup(o->def) : NULL;
            cfg->nopts++;
        }
    pm_cfg_result_t rc = PM_CFG_RUN;
    bool check = false;
    const char *config_path = getenv("PICOMDM_CONFIG");

    //  First pass: --help, --version, --check, --config (the file comes before overrides).
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            //  Show the name the user typed (picomdm-store), not the log tag (store).
            const char *slash = argv[0] ? strrchr(argv[0], '/') : NULL;
            pm_cfg_usage(slash ? slash + 1 : (argv[0] ? argv[0] : process), summary, opts);
            rc = PM_CFG_EXIT;
            goto out;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("%s (PicoMDM) %s\n", process, PICOMDM_VERSION);
            rc = PM_CFG_EXIT;
            goto out;
        }
        if (strcmp(argv[i], "--check") == 0)
            check = true;
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            config_path = argv[i + 1];
        else if (strncmp(argv[i], "--config=", 9) == 0)
            config_path = argv[i] + 9;
    }
    if (config_path && *config_path) {
        zconfig_t *root = zconfig_load(config_path);
        if (!root) {
            fprintf(stderr,
                    "%s: cannot read config file '%s' (check the path and ZPL syntax: "
                    "'name = value', two-space indents)\n",
                    process, config_path);
            rc = PM_CFG_ERROR;
            goto out;
        }
        //  "picomdm-gateway" and "gateway" both read the `gateway` section.
        const char *section = strncmp(process, "picomdm-", 8) == 0 ? process + 8 : process;
        for (int i = 0; i < cfg->nopts; i++) {
            char path[256];
            snprintf(path, sizeof path, "%s/%s", section, cfg->opts[i]->name);
            char *v = zconfig_get(root, path, NULL);
            if (!v)
                v = zconfig_get(root, cfg->opts[i]->name, NULL);
            if (v && s_set(cfg, i, v, config_path) < 0) {
                zconfig_destroy(&root);
                rc = PM_CFG_ERROR;
                goto out;
            }
        }
        zconfig_destroy(&root);
    }
    for (int i = 0; i < cfg->nopts; i++) {
        char env[128];
        s_envname(env, sizeof env, cfg->opts[i]->name);
        const char *v = getenv(env);
        if (v && s_set(cfg, i, v, env) < 0) {
            rc = PM_CFG_ERROR;
            goto out;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            for (i++; i < argc; i++)
                cfg->args[cfg->nargs++] = argv[i];
            break;
        }
        if (strncmp(a, "--", 2) != 0 || a[2] == 0) {
            cfg->args[cfg->nargs++] = argv[i];
            continue;
        }
        if (strcmp(a, "--check") == 0)
            continue;
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        int k = s_find(cfg, name, len);
        bool negated = false;
        if (k < 0 && len > 3 && strncmp(name, "no-", 3) == 0) {
            k = s_find(cfg, name + 3, len - 3);
            negated = k >= 0 && cfg->opts[k]->type == PM_OPT_BOOL;
            if (!negated)
                k = -1;
        }
        if (k < 0) {
            fprintf(stderr, "%s: unknown option '%s' (see %s --help)\n", process, a, process);
            rc = PM_CFG_ERROR;
            goto out;
        }
        const char *value;
        if (eq)
            value = eq + 1;
        else if (cfg->opts[k]->type == PM_OPT_BOOL) {
            value = negated ? "false" : "true";
            //  "--flag false" would set the flag and leave "false" behind as
            //  an argument nobody reads: refuse it
            const char *nx = i + 1 < argc ? argv[i + 1] : NULL;
            if (nx && (!strcmp(nx, "true") || !strcmp(nx, "false") || !strcmp(nx, "yes") ||
                       !strcmp(nx, "no") || !strcmp(nx, "1") || !strcmp(nx, "0"))) {
                fprintf(stderr,
                        "%s: --%s takes no separate value: write --%s, --no-%s or --%s=%s "
                        "(see %s --help)\n",
                        process, cfg->opts[k]->name, cfg->opts[k]->name, cfg->opts[k]->name,
                        cfg->opts[k]->name, nx, process);
                rc = PM_CFG_ERROR;
                goto out;
            }
        } else if (i + 1 < argc)
            value = argv[++i];
        else {
            fprintf(stderr, "%s: option --%s needs a value (see %s --help)\n", process,
                    cfg->opts[k]->name, process);
            rc = PM_CFG_ERROR;
            goto out;
        }
        if (s_set(cfg, k, value, "command line") < 0) {
            rc = PM_CFG_ERROR;
            goto out;
        }
    }
    if (pm_log_level_parse(pm_cfg_str(cfg, "log-level")) < 0) {
        fprintf(stderr, "%s: --log-level must be error, warn, notice, info or debug\n", process);
        rc = PM_CFG_ERROR;
        goto out;
    }
    if (check)
        rc = PM_CFG_CHECK;
out:
    if (rc == PM_CFG_RUN || rc == PM_CFG_CHECK)
        *cfgp = cfg;
    else
        pm_cfg_destroy(&cfg);
    return rc;
}

void pm_cfg_destroy(pm_cfg_t **cfgp)
{
    if (!cfgp || !*cfgp)
        return;
    pm_cfg_t *cfg = *cfgp;
    for (int i = 0; i < cfg->nopts; i++)
        free(cfg->values[i]);
    free(cfg->args);
    free(cfg);
    *cfgp = NULL;
}

const char *pm_cfg_str(const pm_cfg_t *cfg, const char *name)
{
    return cfg->values[s_index(cfg, name)];
}

int64_t pm_cfg_int(const pm_cfg_t *cfg, const char *name)
{
    const char *v = cfg->values[s_index(cfg, name)];
    return v ? strtoll(v, NULL, 0) : 0;
}

int pm_cfg_int_in(const pm_cfg_t *cfg, const char *name, int64_t lo, int64_t hi, int *out)
{
    int64_t v = pm_cfg_int(cfg, name);
    if (v < lo || v > hi || v < INT_MIN || v > INT_MAX) {
        pm_error("%s must be between %lld and %lld, not %lld (fix the option and start again)",
                 name, (long long)lo, (long long)hi, (long long)v);
        return -1;
    }
    *out = (int)v;
    return 0;
}

bool pm_cfg_bool(const pm_cfg_t *cfg, const char *name)
{
    const char *v = cfg->values[s_index(cfg, name)];
    return v && (strcmp(v, "true") == 0 || strcmp(v, "1") == 0 || strcmp(v, "yes") == 0);
}

int pm_cfg_argc(const pm_cfg_t *cfg)
{
    return cfg->nargs;
}

const char *pm_cfg_arg(const pm_cfg_t *cfg, int i)
{
    return i >= 0 && i < cfg->nargs ? cfg->args[i] : NULL;
}

int pm_cfg_start_logging(const pm_cfg_t *cfg)
{
    return pm_log_init(cfg->process, pm_cfg_str(cfg, "log-level"), pm_cfg_bool(cfg, "syslog"));
}
