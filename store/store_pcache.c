/*  store_pcache — pcache1 behind a wrapper that skips truncations that
 *  cannot drop a page (see store_pcache.h for why). Owns one small struct
 *  per cache (freed by xDestroy); no global state besides the default
 *  methods, the installed flag and two counters. The temporary key assumes
 *  SQLite's default pending byte (1 GiB): were it moved, the real temporary
 *  key would count towards `max` like any key (safe; only the saving lost).
 */
#include "store_pcache.h"

#include <sqlite3.h>
#include <stdbool.h>
#include <stdlib.h>

typedef struct {
    sqlite3_pcache *inner; //  pcache1's cache
    unsigned max;          //  upper bound of the keys held, the temporary key left out
    unsigned temp;         //  the pending-byte page number: balance_nonroot's temporary key
    unsigned at_temp;      //  pages re-keyed to temp and not re-keyed away yet
    bool temp_unknown;     //  a page was fetched at temp: pass every truncation on
} s_pc_t;

static sqlite3_pcache_methods2 s_def; //  pcache1's methods
static bool s_installed;
static uint64_t s_passed, s_skipped;

static int s_init(void *arg)
{
    (void)arg;
    return s_def.xInit ? s_def.xInit(s_def.pArg) : SQLITE_OK;
}

static void s_shutdown(void *arg)
{
    (void)arg;
    if (s_def.xShutdown)
        s_def.xShutdown(s_def.pArg);
}

static sqlite3_pcache *s_create(int page_size, int extra, int purgeable)
{
    s_pc_t *pc = calloc(1, sizeof *pc);
    if (!pc)
        return NULL;
    pc->inner = s_def.xCreate(page_size, extra, purgeable);
    if (!pc->inner) {
        free(pc);
        return NULL;
    }
    //  SQLite's PENDING_BYTE (1 GiB, the default build) / page size + 1
    pc->temp = page_size > 0 ? 0x40000000u / (unsigned)page_size + 1 : 0;
    return (sqlite3_pcache *)pc;
}

static void s_cachesize(sqlite3_pcache *p, int n)
{
    s_def.xCachesize(((s_pc_t *)p)->inner, n);
}

static int s_pagecount(sqlite3_pcache *p)
{
    return s_def.xPagecount(((s_pc_t *)p)->inner);
}

static sqlite3_pcache_page *s_fetch(sqlite3_pcache *p, unsigned key, int create)
{
    s_pc_t *pc = (s_pc_t *)p;
    sqlite3_pcache_page *pg = s_def.xFetch(pc->inner, key, create);
    if (pg) {
        if (key == pc->temp)
            pc->temp_unknown = true;
        else if (key > pc->max)
            pc->max = key;
    }
    return pg;
}

static void s_unpin(sqlite3_pcache *p, sqlite3_pcache_page *pg, int discard)
{
    s_def.xUnpin(((s_pc_t *)p)->inner, pg, discard);
}

static void s_rekey(sqlite3_pcache *p, sqlite3_pcache_page *pg, unsigned old_key, unsigned new_key)
{
    s_pc_t *pc = (s_pc_t *)p;
    s_def.xRekey(pc->inner, pg, old_key, new_key);
    if (old_key == pc->temp && pc->at_temp > 0)
        pc->at_temp--;
    if (new_key == pc->temp)
        pc->at_temp++;
    else if (new_key > pc->max)
        pc->max = new_key;
}

static void s_truncate(sqlite3_pcache *p, unsigned limit)
{
    s_pc_t *pc = (s_pc_t *)p;
    //  every page's key is <= max or is temp: none at temp, limit above max
    //  -> nothing at or above the limit, nothing to drop
    if (!pc->at_temp && !pc->temp_unknown && limit > pc->max) {
        __atomic_fetch_add(&s_skipped, 1, __ATOMIC_RELAXED);
        return;
    }
    __atomic_fetch_add(&s_passed, 1, __ATOMIC_RELAXED);
    s_def.xTruncate(pc->inner, limit);
    if (limit <= pc->max)
        pc->max = limit ? limit - 1 : 0;
    if (limit <= pc->temp) { //  whatever sat at temp is gone
        pc->at_temp = 0;
        pc->temp_unknown = false;
    }
}

static void s_destroy(sqlite3_pcache *p)
{
    s_pc_t *pc = (s_pc_t *)p;
    s_def.xDestroy(pc->inner);
    free(pc);
}

static void s_shrink(sqlite3_pcache *p)
{
    s_def.xShrink(((s_pc_t *)p)->inner);
}

int store_pcache_install(void)
{
    if (s_installed)
        return -1;
    sqlite3_pcache_methods2 def;
    if (sqlite3_config(SQLITE_CONFIG_GETPCACHE2, &def) != SQLITE_OK || !def.xCreate ||
        !def.xFetch || !def.xTruncate || !def.xRekey)
        return -1;
    s_def = def;
    sqlite3_pcache_methods2 m = {.iVersion = 1,
                                 .pArg = NULL,
                                 .xInit = s_init,
                                 .xShutdown = s_shutdown,
                                 .xCreate = s_create,
                                 .xCachesize = s_cachesize,
                                 .xPagecount = s_pagecount,
                                 .xFetch = s_fetch,
                                 .xUnpin = s_unpin,
                                 .xRekey = s_rekey,
                                 .xTruncate = s_truncate,
                                 .xDestroy = s_destroy,
                                 .xShrink = s_shrink};
    if (sqlite3_config(SQLITE_CONFIG_PCACHE2, &m) != SQLITE_OK)
        return -1; //  SQLite initialised already: its default cache stays
    s_installed = true;
    return 0;
}

void store_pcache_counts(uint64_t *passed, uint64_t *skipped)
{
    *passed = __atomic_load_n(&s_passed, __ATOMIC_RELAXED);
    *skipped = __atomic_load_n(&s_skipped, __ATOMIC_RELAXED);
}
