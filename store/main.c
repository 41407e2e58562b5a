/*  picomdm-store — the only owner of persistent state (see store/store_db.h,
 *  docs/queue.md). Opens (creating and migrating) the SQLite database in the
 *  data directory. The bus service is wired in store_svc.c.
 */
#include "pm_cfg.h"
#include "pm_log.h"
#include "store_db.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static const pm_opt_t s_opts[] = {
    {"data-dir", PM_OPT_STR, "/var/lib/picomdm",
     "directory holding picomdm.db (created if missing)"},
    {"synchronous", PM_OPT_STR, "full",
     "full: every commit reaches the disk before replies (default); normal: faster, a power "
     "loss may lose the last commits (never corrupts)"},
    {NULL, 0, NULL, NULL}};

int main(int argc, char **argv)
{
    pm_cfg_t *cfg = NULL;
    pm_cfg_result_t r =
        pm_cfg_parse(&cfg, "store", "PicoMDM state store (SQLite)", s_opts, argc, argv);
    if (r == PM_CFG_EXIT)
        return 0;
    if (r == PM_CFG_ERROR)
        return 2;
    int rc = 1;
    store_db_t *db = NULL;
    if (pm_cfg_start_logging(cfg) < 0)
        goto out;
    const char *dir = pm_cfg_str(cfg, "data-dir");
    mkdir(dir, 0700);
    char path[4096], err[512];
    snprintf(path, sizeof path, "%s/picomdm.db", dir);
    store_db_opts_t o = {.sync_full = true};
    db = store_db_new(path, &o, err, sizeof err);
    if (!db) {
        pm_error("%s", err);
        goto out;
    }
    pm_info("database %s at schema version %d", path, store_db_schema_version(db));
    if (r == PM_CFG_CHECK)
        printf("ok\n");
    rc = 0;
out:
    store_db_destroy(&db);
    pm_cfg_destroy(&cfg);
    return rc;
}
