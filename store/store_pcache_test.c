/*  store_pcache_test — the page-cache wrapper (store_pcache.h): commits of
 *  random inserts (b-tree splits that swap pages through the temporary key)
 *  skip most truncations; a rollback that grew the file still drops the
 *  pages past the end; the data and the b-trees stay intact (integrity_check,
 *  a second connection reading everything back).
 */
#include "store_pcache.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "store_sql_test.h"

#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void s_exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        fprintf(stderr, "%s: %s\n", sql, msg ? msg : "?");
    sqlite3_free(msg);
    assert_int_equal(rc, SQLITE_OK);
}

//  n rows with random keys (page splits all over the b-tree), in one transaction
static void s_insert(sqlite3 *db, sqlite3_stmt *ins, int n, unsigned *seed)
{
    s_exec(db, "BEGIN IMMEDIATE");
    for (int i = 0; i < n; i++) {
        char k[48], v[300];
        snprintf(k, sizeof k, "%08x-%08x", (unsigned)rand_r(seed), (unsigned)rand_r(seed));
        memset(v, 'a' + (int)(*seed % 26), sizeof v);
        sqlite3_bind_text(ins, 1, k, -1, SQLITE_TRANSIENT);
        sqlite3_bind_blob(ins, 2, v, 100 + (int)((unsigned)rand_r(seed) % 200), SQLITE_TRANSIENT);
        assert_int_equal(sqlite3_step(ins), SQLITE_DONE);
        sqlite3_reset(ins);
    }
}

static sqlite3_pcache_methods2 s_m; //  the installed wrapper's (test_skips_and_keeps_data)

static void test_skips_and_keeps_data(void **state)
{
    (void)state;
    //  before any connection: installed once
    assert_int_equal(store_pcache_install(), 0);
    assert_int_equal(store_pcache_install(), -1);
    //  the wrapper's methods, for test_methods_direct (only before SQLite
    //  initialises: the first sqlite3_open below)
    assert_int_equal(sqlite3_config(SQLITE_CONFIG_GETPCACHE2, &s_m), SQLITE_OK);
    char dir[] = "/tmp/store_pcache.XXXXXX", path[128];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/t.db", dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    s_exec(db, "PRAGMA journal_mode=WAL; PRAGMA cache_size=-16384;"
               " CREATE TABLE t(k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID;"
               " CREATE TABLE r(id INTEGER PRIMARY KEY, k TEXT); CREATE INDEX r_k ON r(k);");
    sqlite3_stmt *ins = NULL, *ins2 = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO t(k,v) VALUES(?1,?2)", -1, &ins, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO r(k) VALUES(?1)", -1, &ins2, NULL),
                     SQLITE_OK);
    unsigned seed = 42;
    uint64_t p0, s0, p1, s1;
    store_pcache_counts(&p0, &s0);
    int rows = 0;
    for (int tx = 0; tx < 300; tx++) {
        s_insert(db, ins, 40, &seed);
        rows += 40;
        sqlite3_bind_int(ins2, 1, tx);
        assert_int_equal(sqlite3_step(ins2), SQLITE_DONE);
        sqlite3_reset(ins2);
        s_exec(db, "COMMIT");
    }
    store_pcache_counts(&p1, &s1);
    //  most commits cannot drop a page: skipped (without the wrapper every
    //  commit after a page swap walks the whole hash table)
    assert_true(s1 - s0 > 150);
    assert_int_equal(s_int(db, "SELECT count(*) FROM t"), rows);
    s_ok(db);

    //  a rollback of a transaction that grew the file: the pages past the
    //  end are dropped (passed on), and the data read back is the committed one
    long long pages = s_int(db, "PRAGMA page_count");
    store_pcache_counts(&p0, &s0);
    s_insert(db, ins, 3000, &seed);
    assert_true(s_int(db, "PRAGMA page_count") > pages);
    s_exec(db, "ROLLBACK");
    store_pcache_counts(&p1, &s1);
    assert_true(p1 > p0);
    assert_int_equal(s_int(db, "PRAGMA page_count"), pages);
    assert_int_equal(s_int(db, "SELECT count(*) FROM t"), rows);
    s_ok(db);
    //  ... and the file grows again over those page numbers
    s_insert(db, ins, 3000, &seed);
    s_exec(db, "COMMIT");
    rows += 3000;
    s_ok(db);

    //  another connection reads everything back
    sqlite3 *db2 = NULL;
    assert_int_equal(sqlite3_open(path, &db2), SQLITE_OK);
    assert_int_equal(s_int(db2, "SELECT count(*) FROM t"), rows);
    assert_int_equal(s_int(db2, "SELECT count(*) FROM r"), 300);
    assert_int_equal(s_int(db2, "SELECT sum(length(v)) FROM t"),
                     s_int(db, "SELECT sum(length(v)) FROM t"));
    s_ok(db2);
    sqlite3_close(db2);
    sqlite3_finalize(ins);
    sqlite3_finalize(ins2);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

//  1 when a truncation to `limit` was skipped, 0 when passed on to pcache1
static int s_truncate_skipped(sqlite3_pcache *c, unsigned limit)
{
    uint64_t p0, s0, p1, s1;
    store_pcache_counts(&p0, &s0);
    s_m.xTruncate(c, limit);
    store_pcache_counts(&p1, &s1);
    assert_int_equal((p1 - p0) + (s1 - s0), 1);
    return (int)(s1 - s0);
}

//  whether page `key` is in the cache (left unpinned)
static bool s_has(sqlite3_pcache *c, unsigned key)
{
    sqlite3_pcache_page *pg = s_m.xFetch(c, key, 0);
    if (pg)
        s_m.xUnpin(c, pg, 0);
    return pg != NULL;
}

static void s_add(sqlite3_pcache *c, unsigned key)
{
    sqlite3_pcache_page *pg = s_m.xFetch(c, key, 1);
    assert_non_null(pg);
    s_m.xUnpin(c, pg, 0);
}

static void s_move(sqlite3_pcache *c, unsigned from, unsigned to)
{
    sqlite3_pcache_page *pg = s_m.xFetch(c, from, 0);
    assert_non_null(pg);
    s_m.xRekey(c, pg, from, to);
    s_m.xUnpin(c, pg, 0);
}

//  The bookkeeping itself, through the page-cache methods (a data check
//  cannot see a wrongly skipped truncation: SQLite overwrites a page it
//  allocates again): every way a page gets a key, the temporary key.
static void test_methods_direct(void **state)
{
    (void)state;
    assert_non_null(s_m.xCreate);
    sqlite3_pcache *c = s_m.xCreate(4096, 64, 1);
    assert_non_null(c);
    s_m.xCachesize(c, 100);
    const unsigned temp = 0x40000000u / 4096 + 1; //  the pending-byte page + 1
    //  page 5 created: a truncation above it cannot drop anything
    s_add(c, 5);
    assert_int_equal(s_truncate_skipped(c, 6), 1);
    assert_true(s_has(c, 5));
    //  re-keyed above the bound: passed on, and the page is dropped
    s_move(c, 5, 40);
    assert_int_equal(s_truncate_skipped(c, 10), 0);
    assert_false(s_has(c, 40));
    //  a page fetched at the temporary key: passed on until one drops it
    s_add(c, 3);
    s_add(c, temp);
    assert_int_equal(s_truncate_skipped(c, 20), 0);
    assert_false(s_has(c, temp));
    assert_true(s_has(c, 3));
    assert_int_equal(s_truncate_skipped(c, 20), 1);
    //  re-keyed to the temporary key and away again (balance_nonroot's swap)
    s_move(c, 3, temp);
    assert_int_equal(s_truncate_skipped(c, 20), 0); //  a page sits at temp: passed on
    assert_false(s_has(c, temp));                   //  (and dropped it)
    s_add(c, 3);
    sqlite3_pcache_page *pg = s_m.xFetch(c, 3, 0); //  pinned through both moves, as
    assert_non_null(pg);                           //  sqlite3PcacheMove's caller holds it
    s_m.xRekey(c, pg, 3, temp);
    s_m.xRekey(c, pg, temp, 4);
    s_m.xUnpin(c, pg, 0);
    assert_int_equal(s_truncate_skipped(c, 20), 1); //  nothing at temp, 4 < 20
    assert_true(s_has(c, 4));
    //  a truncation at or below the bound is always passed on
    assert_int_equal(s_truncate_skipped(c, 4), 0);
    assert_false(s_has(c, 4));
    s_m.xDestroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_skips_and_keeps_data),
        cmocka_unit_test(test_methods_direct), //  after it: it reads the methods
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
