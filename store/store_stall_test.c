/*  store_stall — the store's stalls at the WAL's cap, measured on the store
 *  alone (docs/queue.md, "Session 6"): an open-loop writer on a real file
 *  database with the store's settings (synchronous=FULL through
 *  store_walbuf, the checkpoint thread, the WAL's cap), each batch a
 *  transaction updating random rows of a table larger than the cache (so a
 *  checkpoint writes scattered pages, as the device path does), scheduled
 *  every `period` ms whatever happened before; a batch's latency runs from
 *  its scheduled start to the end of store_db_wal_tidy after its commit,
 *  as a batch of device requests waits for it in store_svc.
 *
 *  Without STORE_PROF: a short run with a small cap (checks that the WAL
 *  starts over through hand-overs, stays bounded, and loses no update).
 *  STORE_PROF=1 STALL_S=20: the measurement (default interval 4,096 pages,
 *  one batch every 4 ms, ~40 pages each: ~10,000 frames/s, like the
 *  open loop at 750 sessions/s), printing the latency distribution and the
 *  checkpoint counters. Build it against other store objects to compare
 *  (-DSTORE_STALL_OLD: only the counters that existed before session 6).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "store_ckpt.h"
#include "store_db.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double s_now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static void s_sleep_until(double at)
{
    double now = s_now_ms();
    if (at > now)
        usleep((useconds_t)((at - now) * 1e3));
}

static int s_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void s_exec(sqlite3 *sql, const char *q)
{
    char *err = NULL;
    int rc = sqlite3_exec(sql, q, NULL, NULL, &err);
    if (rc != SQLITE_OK)
        fprintf(stderr, "%s: %s\n", q, err ? err : "?");
    sqlite3_free(err);
    assert_int_equal(rc, SQLITE_OK);
}

static void s_measure(int pages, int rows, double seconds, double period, int per_batch)
{
    char dir[] = "/tmp/store_stall.XXXXXX", path[128];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/picomdm.db", dir);
    char err[256];
    store_db_opts_t o = {.sync_full = true, .wal_autocheckpoint = pages, .checkpoint_thread = true};
    store_db_t *db = store_db_new(path, &o, err, sizeof err);
    assert_non_null(db);
    sqlite3 *sql = store_db_sqlite(db);
    //  a table of `rows` rows of ~300 bytes (4 KiB pages: ~12 rows each)
    assert_int_equal(store_db_begin(db), 0);
    s_exec(sql, "CREATE TABLE stall(id INTEGER PRIMARY KEY, n INTEGER NOT NULL, pad BLOB)");
    sqlite3_stmt *ins = NULL, *upd = NULL;
    assert_int_equal(
        sqlite3_prepare_v2(sql, "INSERT INTO stall VALUES(?, 0, zeroblob(300))", -1, &ins, NULL),
        SQLITE_OK);
    for (int i = 0; i < rows; i++) {
        sqlite3_bind_int(ins, 1, i);
        assert_int_equal(sqlite3_step(ins), SQLITE_DONE);
        sqlite3_reset(ins);
    }
    sqlite3_finalize(ins);
    assert_int_equal(store_db_commit(db), 0);
    assert_int_equal(
        sqlite3_prepare_v2(sql, "UPDATE stall SET n = n + 1 WHERE id = ?", -1, &upd, NULL),
        SQLITE_OK);
    //  let the thread copy the load first (idle checkpoint)
    usleep(1500 * 1000);
    store_ckpt_stats_t st0;
    store_db_wal_stats(db, &st0);
    int nb = (int)(seconds * 1e3 / period);
    double *lat = calloc((size_t)nb, sizeof *lat);
    assert_non_null(lat);
    unsigned seed = 12345;
    long long updates = 0;
    double t0 = s_now_ms();
    for (int b = 0; b < nb; b++) {
        double at = t0 + b * period;
        s_sleep_until(at);
        assert_int_equal(store_db_begin(db), 0);
        for (int i = 0; i < per_batch; i++) {
            seed = seed * 1103515245u + 12345u;
            sqlite3_bind_int(upd, 1, (int)((seed >> 8) % (unsigned)rows));
            assert_int_equal(sqlite3_step(upd), SQLITE_DONE);
            sqlite3_reset(upd);
            updates++;
        }
        assert_int_equal(store_db_commit(db), 0);
        store_db_events_flush(db, NULL, NULL);
        store_db_wal_tidy(db); //  as store_svc does after answering a batch
        lat[b] = s_now_ms() - at;
    }
    double elapsed = s_now_ms() - t0;
    sqlite3_finalize(upd);
    store_ckpt_stats_t st;
    store_db_wal_stats(db, &st);
    qsort(lat, (size_t)nb, sizeof *lat, s_cmp);
    int over10 = 0, over20 = 0;
    for (int b = 0; b < nb; b++) {
        over10 += lat[b] > 10;
        over20 += lat[b] > 20;
    }
    if (getenv("STORE_PROF") || getenv("STALL_PRINT")) {
        printf("%d batches of %d updates every %.1f ms (%.0f ms behind at the end), interval %d "
               "pages: latency p50 %.1f p99 %.1f p99.9 %.1f max %.1f ms; > 10 ms %d, > 20 ms %d\n",
               nb, per_batch, period, elapsed - nb * period, pages, lat[nb / 2],
               lat[(int)(nb * 0.99)], lat[(int)(nb * 0.999)], lat[nb - 1], over10, over20);
        printf("  WAL: %llu frames written, started over %llu times, at most %lld frames; thread "
               "checkpoints %llu; store's thread finished %llu, longest %.1f ms\n",
               (unsigned long long)(st.written - st0.written),
               (unsigned long long)(st.restarts - st0.restarts), (long long)st.wal_max,
               (unsigned long long)(st.passive - st0.passive),
               (unsigned long long)(st.tidy - st0.tidy), st.tidy_ms_max);
#ifndef STORE_STALL_OLD
        printf("  hand-overs %llu (%llu let the WAL start over); the store's thread waited %llu "
               "times, %.0f ms in all, longest %.1f ms; its tidies copied %llu frames\n",
               (unsigned long long)st.handovers, (unsigned long long)st.handover_wins,
               (unsigned long long)st.hold_waits, st.hold_ms_total, st.hold_ms_max,
               (unsigned long long)st.tidy_frames);
#endif
    }
    //  the WAL started over and stayed bounded; no update lost
    assert_true(st.restarts > st0.restarts);
    assert_true(st.wal_max <= 2 * STORE_CKPT_CAP_FACTOR * pages + 2 * per_batch + 10);
    //  How the WAL started over (hand-overs that won, the thread's idle
    //  copies, or the store's own tidy after 8 misses) depends on the disk's
    //  sync time and the machine's load: printed with STORE_PROF=1 or
    //  STALL_PRINT=1, not asserted (review M4); store_ckpt checks that
    //  hand-overs are asked for at the cap.
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(sql, "SELECT sum(n) FROM stall", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_true(sqlite3_column_int64(q, 0) == updates);
    sqlite3_finalize(q);
    free(lat);
    store_db_destroy(&db);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_stall(void **state)
{
    (void)state;
    if (getenv("STORE_PROF")) {
        const char *s = getenv("STALL_S"), *p = getenv("STALL_PAGES");
        const char *per = getenv("STALL_PERIOD_MS");
        s_measure(p ? (int)strtol(p, NULL, 10) : STORE_WAL_AUTOCHECKPOINT, 120000,
                  s ? strtod(s, NULL) : 20, per ? strtod(per, NULL) : 4, 40);
    } else {
        s_measure(200, 20000, 2.5, 4, 20); //  cap 800 frames: several restarts
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stall),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
