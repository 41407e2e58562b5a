/*  picomdm-store — the only owner of persistent state.
 *
 *  Opens (creating and migrating) the SQLite database in the data directory,
 *  registers as the "store" service on the broker and serves it with group
 *  commit: everything that arrived while the last transaction was committing
 *  is applied in the next one, and replies go out only after that commit
 *  (store_svc.h). Events are published after the commit that logged them.
 */
#include "pm_bus.h"
#include "pm_cfg.h"
#include "pm_getpid.h"
#include "pm_log.h"
#include "pm_notify.h"
#include "pm_stats.h"
#include "store_db.h"
#include "store_svc.h"
#include "pm_alloc.h"

#include <czmq.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
#include <sqlite3.h>
#include <sys/resource.h>
#include <sys/stat.h>

static const pm_opt_t s_opts[] = {
    {"data-dir", PM_OPT_STR, "/var/lib/picomdm",
     "directory holding picomdm.db (created if missing)"},
    {"request-endpoint", PM_OPT_STR, "tcp://127.0.0.1:7401",
     "broker request endpoint (ROUTER) we register at as the store service"},
    {"publish-endpoint", PM_OPT_STR, "tcp://127.0.0.1:7402",
     "broker publish endpoint (XSUB) we publish events to"},
    {"database", PM_OPT_STR, NULL, "database file (default <data-dir>/picomdm.db)"},
    {"synchronous", PM_OPT_STR, "full",
     "full: a commit is on disk before anyone is answered (default); normal: faster, but a "
     "power loss (not a crash) may lose the last commits; never corrupts"},
    {"group-commit", PM_OPT_BOOL, "true",
     "apply every waiting request in one transaction (off: one transaction per request)"},
    {"batch-max", PM_OPT_INT, "1024", "at most this many requests per transaction"},
    {"commit-wait-ms", PM_OPT_INT, "0",
     "after the first request of a transaction, gather more for this long before committing "
     "(fewer commits per request under load, at most this much latency; 0: commit at once)"},
    {"wal-autocheckpoint", PM_OPT_INT, "4096",
     "WAL pages (4 KiB) written between checkpoints; more: fewer database writes and syncs per "
     "request, a larger -wal file (SQLite's default is 1000). With checkpoint=thread the -wal "
     "file grows to 4 times this before it starts over"},
    {"checkpoint", PM_OPT_STR, "thread",
     "thread: WAL checkpoints (PASSIVE) in a thread of their own, not in a request's way; when "
     "the WAL reaches 4 x wal-autocheckpoint the thread copies the last frames right after a "
     "commit while the store's thread waits at most 4 ms before its next transaction, and the WAL "
     "starts over (after 8 misses the store's thread copies them itself). inline: inside the "
     "commit that crosses "
     "wal-autocheckpoint, so that batch's requests wait for it (SQLite's way)"},
    {"wal-buffer", PM_OPT_BOOL, "true",
     "gather each commit's WAL pages into one write (used with synchronous=full only; false: "
     "SQLite's two writes per page; durability is the same either way)"},
    {"checkpoint-idle-ms", PM_OPT_INT, "1000",
     "with checkpoint=thread: after this long without a commit, checkpoint what is left"},
    {"server-key", PM_OPT_STR, NULL, "broker CURVE public key (Z85) when not on ipc/loopback"},
    {"curve-cert", PM_OPT_STR, NULL, "our CURVE certificate file (with server-key)"},
    PM_STATS_OPTION,
    {NULL, 0, NULL, NULL}};

//  One log line per batch phase (how many batches took <=1, 2, 5, ... ms)
//  and one for the WAL: where the latency of the batches went.
static void s_log_timing(const store_svc_t *svc, store_db_t *db)
{
    store_svc_timing_t t;
    store_svc_timing(svc, &t);
    const struct {
        const char *name;
        const store_svc_phase_t *p;
    } ph[] = {{"apply", &t.apply},
              {"sync", &t.sync},
              {"checkpoint on the store's thread", &t.checkpoint},
              {"reply", &t.reply},
              {"request in store (per request)", &t.request}};
    for (size_t i = 0; i < sizeof ph / sizeof ph[0]; i++) {
        const uint64_t *b = ph[i].p->bucket;
        uint64_t n = 0;
        for (int k = 0; k < STORE_SVC_NBUCKETS; k++)
            n += b[k];
        pm_info("batch %s: %llu, total %.0f ms, max %.1f ms; <=1 ms %llu, <=2 %llu, <=5 %llu, "
                "<=10 %llu, <=20 %llu, <=50 %llu, <=100 %llu, more %llu",
                ph[i].name, (unsigned long long)n, ph[i].p->total_ms, ph[i].p->max_ms,
                (unsigned long long)b[0], (unsigned long long)b[1], (unsigned long long)b[2],
                (unsigned long long)b[3], (unsigned long long)b[4], (unsigned long long)b[5],
                (unsigned long long)b[6], (unsigned long long)b[7]);
    }
    store_ckpt_stats_t w;
    store_db_wal_stats(db, &w);
    uint64_t commits = 0, applied = 0;
    store_svc_counts(svc, &commits, &applied);
    pm_info("WAL frames (pages) written by commits: %llu in %llu commits = %.1f per commit, "
            "%.2f per request",
            (unsigned long long)w.written, (unsigned long long)w.commits,
            w.commits ? (double)w.written / (double)w.commits : 0.0,
            applied ? (double)w.written / (double)applied : 0.0);
    pm_info("largest batch %zu requests; WAL: %llu checkpoints, %llu frames copied, %.0f ms, "
            "longest %.1f ms; %llu finished on the store's thread, longest %.1f ms; started over "
            "%llu times; at most %lld frames, now %lld",
            t.batch_max, (unsigned long long)w.passive, (unsigned long long)w.frames, w.ms_total,
            w.ms_max, (unsigned long long)w.tidy, w.tidy_ms_max, (unsigned long long)w.restarts,
            (long long)w.wal_max, (long long)w.wal_frames);
    if (w.handovers || w.tidy)
        pm_info(
            "WAL hand-overs at the cap: %llu, %llu of them let the WAL start over; the store's "
            "thread waited for them %llu times, %.0f ms in all, longest %.1f ms; its own tidies "
            "copied %llu frames, at most %lld in one",
            (unsigned long long)w.handovers, (unsigned long long)w.handover_wins,
            (unsigned long long)w.hold_waits, w.hold_ms_total, w.hold_ms_max,
            (unsigned long long)w.tidy_frames, (long long)w.tidy_frames_max);
}

//  The store's occasional memory jump (docs/queue.md, "Session 10, memjump"):
//  once a second, RSS is read (/proc/self/status: ~4 system calls); when it
//  is 8 MB or more above the highest figure logged so far, one line says
//  when, with the heap, the page cache, the requests parked and the bus's
//  counters next to it, so that a run's log dates a jump (a normal run logs
//  ~5 such lines while its page cache and reply cache fill, to ~45 MB).
typedef struct {
    int64_t next_ms; //  next check (zclock_mono)
    long logged_kb;  //  highest RSS logged (the start's at first)
    uint64_t jobs, published;
    int64_t since_ms; //  when the counters above were taken
} s_memwatch_t;

//  Where the store's memory is now: mimalloc's committed memory when it is
//  linked, else glibc's arenas (all threads); and SQLite's page cache of the
//  store's connection. For the memory lines of s_memwatch and the exit.
static void s_heap_text(char *buf, size_t size, store_db_t *db)
{
    int cache = 0, hi = 0;
    sqlite3_db_status(store_db_sqlite(db), SQLITE_DBSTATUS_CACHE_USED, &cache, &hi, 0);
    size_t commit = 0, pcommit = 0;
    if (pm_alloc_committed(&commit, &pcommit) == 0) {
        snprintf(buf, size,
                 "mimalloc: %.1f MB reserved and committed now, peak %.1f MB; SQLite page cache "
                 "%.1f MB",
                 (double)commit / 1048576.0, (double)pcommit / 1048576.0,
                 (double)cache / 1048576.0);
    } else {
        struct mallinfo2 mi = mallinfo2();
        snprintf(buf, size,
                 "heap now %.1f MB in use, %.1f MB free in the arenas, %.1f MB mapped; SQLite "
                 "page cache %.1f MB",
                 (double)mi.uordblks / 1048576.0, (double)mi.fordblks / 1048576.0,
                 (double)mi.hblkhd / 1048576.0, (double)cache / 1048576.0);
    }
}

static void s_memwatch(s_memwatch_t *mw, const store_svc_t *svc, store_db_t *db, pm_bus_t *bus)
{
    int64_t now = zclock_mono();
    if (now < mw->next_ms)
        return;
    mw->next_ms = now + 1000;
    long kb = pm_alloc_rss_kb();
    pm_bus_stats_t st;
    pm_bus_stats(bus, &st);
    if (kb > 0 && mw->logged_kb == 0)
        mw->logged_kb = kb;
    else if (kb >= mw->logged_kb + 8 * 1024) {
        char heap[192];
        s_heap_text(heap, sizeof heap, db);
        double s = (double)(now - mw->since_ms) / 1000.0;
        pm_info("memory: RSS %.1f MB, up %.1f MB since %.1f MB was logged; %s; %zu requests "
                "parked; in the last %.1f s %llu requests, %llu events published",
                (double)kb / 1024.0, (double)(kb - mw->logged_kb) / 1024.0,
                (double)mw->logged_kb / 1024.0, heap, store_svc_pending(svc), s,
                (unsigned long long)(st.jobs - mw->jobs),
                (unsigned long long)(st.published - mw->published));
        mw->logged_kb = kb;
    }
    mw->jobs = st.jobs;
    mw->published = st.published;
    mw->since_ms = now;
}

int main(int argc, char **argv)
{
    pm_getpid_init(); //  getpid() without a syscall (libzmq, OpenSSL): pm_getpid.h
    pm_cfg_t *cfg = NULL;
    pm_cfg_result_t r = pm_cfg_parse(&cfg, "store", "PicoMDM state store (SQLite, group commit)",
                                     s_opts, argc, argv);
    if (r == PM_CFG_EXIT)
        return 0;
    if (r == PM_CFG_ERROR)
        return 2;
    int rc = 1;
    store_db_t *db = NULL;
    store_svc_t *svc = NULL;
    pm_bus_t *bus = NULL;
    pm_stats_t *stats = NULL;
    if (pm_cfg_start_logging(cfg) < 0 || pm_stats_from_cfg(cfg, "store", &stats) < 0)
        goto out;
    const char *sync = pm_cfg_str(cfg, "synchronous");
    if (strcmp(sync, "full") != 0 && strcmp(sync, "normal") != 0) {
        pm_error("synchronous must be full or normal, not '%s'", sync);
        goto out;
    }
    int batch, ckpt, idle;
    if (pm_cfg_int_in(cfg, "batch-max", 1, 100000, &batch) < 0 ||
        pm_cfg_int_in(cfg, "wal-autocheckpoint", 100, 1000000, &ckpt) < 0 ||
        pm_cfg_int_in(cfg, "checkpoint-idle-ms", 10, 3600000, &idle) < 0)
        goto out;
    const char *dir = pm_cfg_str(cfg, "data-dir");
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        pm_error("cannot create data directory %s: %s (create it or pass --data-dir)", dir,
                 strerror(errno));
        goto out;
    }
    char path[4096], err[512];
    if (pm_cfg_str(cfg, "database"))
        snprintf(path, sizeof path, "%s", pm_cfg_str(cfg, "database"));
    else
        snprintf(path, sizeof path, "%s/picomdm.db", dir);
    const char *mode = pm_cfg_str(cfg, "checkpoint");
    if (strcmp(mode, "thread") != 0 && strcmp(mode, "inline") != 0) {
        pm_error("checkpoint must be thread or inline, not '%s'", mode);
        goto out;
    }
    store_db_opts_t o = {.sync_full = strcmp(sync, "full") == 0,
                         .wal_autocheckpoint = ckpt,
                         .checkpoint_thread = strcmp(mode, "thread") == 0,
                         .checkpoint_idle_ms = idle,
                         .wal_unbuffered = !pm_cfg_bool(cfg, "wal-buffer")};
    db = store_db_new(path, &o, err, sizeof err);
    if (!db) {
        pm_error("%s", err);
        goto out;
    }
    char alloc[64]; //  glibc's; mimalloc if linked (Makefile ALLOC_PROCS; docs/queue.md)
    pm_info("allocator: %s", pm_alloc_name(alloc, sizeof alloc));
    pm_info("database %s at schema version %d (synchronous=%s, group commit %s, batch-max %lld, "
            "checkpoints %s every %lld pages, WAL writes %s)",
            path, store_db_schema_version(db), sync,
            pm_cfg_bool(cfg, "group-commit") ? "on" : "off", (long long)batch, mode,
            (long long)ckpt, store_db_wal_buffered(db) ? "per commit" : "per page");
    if (r == PM_CFG_CHECK) {
        printf("ok\n");
        rc = 0;
        goto out;
    }
    pm_bus_config_t bc = {.name = "store",
                          .request_endpoint = pm_cfg_str(cfg, "request-endpoint"),
                          .server_public_key = pm_cfg_str(cfg, "server-key"),
                          .cert_file = pm_cfg_str(cfg, "curve-cert"),
                          .publish_endpoint = pm_cfg_str(cfg, "publish-endpoint"),
                          .capacity = (int)batch};
    bus = pm_bus_new(&bc);
    if (!bus) {
        pm_error("cannot connect to the broker at %s (check request-endpoint)",
                 bc.request_endpoint);
        goto out;
    }
    store_svc_opts_t so = {.group_commit = pm_cfg_bool(cfg, "group-commit"),
                           .batch_max = (int)batch};
    svc = store_svc_new(db, bus, &so);
    if (svc)
        store_svc_set_stats(svc, stats);
    if (!svc || pm_bus_serve(bus, "store", store_svc_on_job, svc) < 0) {
        pm_error("cannot serve the store service (see above)");
        goto out;
    }
    pm_info("serving 'store' via %s", bc.request_endpoint);
    pm_notify_ready();
    pm_notify_status("serving store via %s", bc.request_endpoint);
    int64_t wait_ms = pm_cfg_int(cfg, "commit-wait-ms");
    if (wait_ms < 0 || wait_ms > 1000) {
        pm_error("commit-wait-ms must be 0..1000");
        goto out;
    }
    int64_t deadline = 0; //  commit the pending requests at this time (zclock_mono)
    s_memwatch_t mw = {0};
    while (!zsys_interrupted) {
        //  drain whatever is waiting (for up to commit-wait-ms after the
        //  first), then commit it all at once
        int timeout = 500;
        if (store_svc_pending(svc)) {
            if (!deadline)
                deadline = zclock_mono() + wait_ms;
            int64_t left = deadline - zclock_mono();
            timeout = left > 0 ? (int)left : 0;
        }
        if (pm_bus_run_once(bus, timeout) < 0)
            break;
        size_t pending = store_svc_pending(svc);
        if (pending && (zclock_mono() >= deadline || pending >= (size_t)batch)) {
            store_svc_flush(svc);
            deadline = 0;
        }
        pm_stats_tick(stats, bus);
        s_memwatch(&mw, svc, db, bus);
    }
    pm_notify_stopping();
    pm_bus_stats_t st;
    pm_bus_stats(bus, &st);
    uint64_t commits = 0, applied = 0;
    store_svc_counts(svc, &commits, &applied);
    pm_info("stopping after %llu requests (%llu applied in %llu transactions, %.1f per commit)",
            (unsigned long long)st.jobs, (unsigned long long)applied, (unsigned long long)commits,
            commits ? (double)applied / (double)commits : 0.0);
    s_log_timing(svc, db);
    struct rusage ru; //  all threads: the checkpoint thread's work included
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        double cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                     (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
        pm_info("CPU %.2f s (user %.2f, system %.2f) = %.0f us per request; context switches "
                "%ld voluntary, %ld involuntary",
                cpu, (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
                (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6,
                st.jobs ? cpu / (double)st.jobs * 1e6 : 0.0, ru.ru_nvcsw, ru.ru_nivcsw);
        //  memory: the peak, and where it is now
        char heap[192];
        s_heap_text(heap, sizeof heap, db);
        pm_info("memory: peak RSS %.1f MB, now %.1f MB; %s", (double)ru.ru_maxrss / 1024.0,
                (double)pm_alloc_rss_kb() / 1024.0, heap);
    }
    rc = 0;
out:
    store_svc_destroy(&svc);
    pm_stats_destroy(&stats);
    pm_bus_destroy(&bus);
    store_db_destroy(&db);
    pm_cfg_destroy(&cfg);
    return rc;
}
