/*  store_ckpt — see store_ckpt.h. The only other thread in picomdm-store:
 *  it owns its SQLite connection; everything it shares with the store's
 *  thread is in the fields marked "under mu".
 */
#include "store_ckpt.h"
#include "pm_log.h"
#include "pm_stats.h"

#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct store_ckpt {
    sqlite3 *sql; //  the thread's own connection (only the thread uses it after start)
    pthread_t thread;
    bool started;
    int threshold, idle_ms;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_cond_t idle_cv; //  signalled when a checkpoint of the thread ends
    //  under mu:
    bool stop;
    bool running;       //  the thread is in a checkpoint
    int64_t frames;     //  frames in the WAL after the store's last commit
    int64_t backfilled; //  of the current WAL, frames checkpoints copied
    uint64_t gen;       //  bumped when the WAL starts over (frames went down)
    double last_commit; //  when the store last committed (monotonic ms)
    double retry_at;    //  a checkpoint failed or found another one running: not before this
    bool hold;          //  a hand-over checkpoint is asked for or running (store_ckpt_hold)
    int attempts;       //  hand-overs tried in this WAL generation
    bool won;           //  one copied every frame: the next transaction starts the WAL over
    bool waited;        //  the store's thread waited for the current hand-over already
    store_ckpt_stats_t st;
};

//  Count a checkpoint that began in WAL generation `gen`, run by the thread
//  (own) or by the store's thread (store_ckpt_done). Under mu.
static void s_account(store_ckpt_t *ck, int rc, int nckpt, uint64_t gen, bool own)
{
    if (rc != SQLITE_OK) {
        //  the thread's own failure: not in a tight loop. BUSY: the other
        //  thread is checkpointing, try again soon; a failing disk: later.
        if (own)
            ck->retry_at = pm_stats_now_ms() + (rc == SQLITE_BUSY ? 10 : ck->idle_ms);
        return;
    }
    if (ck->gen == gen) {
        if (nckpt > ck->backfilled)
            ck->st.frames += (uint64_t)(nckpt - ck->backfilled);
        if (!own && nckpt > ck->backfilled) {
            int64_t n = nckpt - ck->backfilled;
            ck->st.tidy_frames += (uint64_t)n;
            if (n > ck->st.tidy_frames_max)
                ck->st.tidy_frames_max = n;
        }
        ck->backfilled = nckpt;
    }
}

static void *s_run(void *arg)
{
    store_ckpt_t *ck = arg;
    pthread_mutex_lock(&ck->mu);
    while (!ck->stop) {
        double now = pm_stats_now_ms();
        int64_t backlog = ck->frames - ck->backfilled;
        bool idle = backlog > 0 && now - ck->last_commit >= ck->idle_ms;
        //  at the cap: copy until only a few frames are left, then leave the
        //  rest to the store's thread (store_ckpt_tidy_due), which a checkpoint
        //  running here would keep from finishing
        int64_t cap = (int64_t)STORE_CKPT_CAP_FACTOR * ck->threshold;
        bool capped = ck->frames >= cap;
        bool due = capped ? backlog > STORE_CKPT_TIDY_FRAMES : backlog >= ck->threshold;
        //  at twice the cap the store's thread must get its turn: a writer
        //  faster than the copying (synchronous=normal) would otherwise find
        //  a checkpoint running here every time it looks (store_ckpt_tidy_due)
        //  and the WAL would grow without bound
        if (ck->frames >= 2 * cap)
            due = idle = false;
        //  a hand-over (store_ckpt_note asked for it): at once, the store's
        //  thread is waiting or about to wait for it
        bool handover = ck->hold;
        if (handover)
            due = true;
        if ((!due && !idle) || (now < ck->retry_at && !handover)) {
            //  sleep until signalled, or until the WAL has been idle long enough
            double until = now + 1000;
            if (backlog > 0 && ck->last_commit + ck->idle_ms < until)
                until = ck->last_commit + ck->idle_ms;
            if (ck->retry_at > until)
                until = ck->retry_at;
            double wait_ms = until - now < 1 ? 1 : until - now;
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            int64_t ns = (int64_t)ts.tv_nsec + (int64_t)(wait_ms * 1e6);
            ts.tv_sec += (time_t)(ns / 1000000000L);
            ts.tv_nsec = (long)(ns % 1000000000L);
            pthread_cond_timedwait(&ck->cv, &ck->mu, &ts);
            continue;
        }
        uint64_t gen = ck->gen;
        int64_t target = ck->frames; //  a hand-over wins if it copies this many
        ck->running = true;
        pthread_mutex_unlock(&ck->mu);
        int nlog = 0, nckpt = 0;
        double t0 = pm_stats_now_ms();
        int rc = sqlite3_wal_checkpoint_v2(ck->sql, NULL, SQLITE_CHECKPOINT_PASSIVE, &nlog, &nckpt);
        double ms = pm_stats_now_ms() - t0;
        if (rc != SQLITE_OK && rc != SQLITE_BUSY)
            pm_error("WAL checkpoint failed: %s (the store keeps serving and retries; check the "
                     "data directory's disk)",
                     sqlite3_errmsg(ck->sql));
        else
            pm_debug("checkpoint: %d of %d WAL frames in the database, %.1f ms%s%s (at %.3f)",
                     nckpt, nlog, ms, rc == SQLITE_BUSY ? " (busy)" : "",
                     handover ? (rc == SQLITE_OK && nckpt == nlog ? " (hand-over, all copied)"
                                                                  : " (hand-over, too late)")
                              : "",
                     pm_stats_wall_s());
        pthread_mutex_lock(&ck->mu);
        ck->running = false;
        if (handover) {
            ck->hold = false;
            ck->st.handovers++;
            //  every frame copied, and no commit since it began: the store's
            //  next transaction starts the WAL over (counted in store_ckpt_note)
            if (rc == SQLITE_OK && ck->gen == gen && nckpt == nlog && ck->frames == target)
                ck->won = true;
        }
        pthread_cond_broadcast(&ck->idle_cv);
        ck->st.passive += rc == SQLITE_OK;
        ck->st.ms_total += ms;
        if (ms > ck->st.ms_max)
            ck->st.ms_max = ms;
        s_account(ck, rc, nckpt, gen, true);
    }
    pthread_mutex_unlock(&ck->mu);
    return NULL;
}

store_ckpt_t *store_ckpt_new(const char *path, bool sync_full, int threshold, int idle_ms,
                             char *err, size_t errlen)
{
    store_ckpt_t *ck = calloc(1, sizeof *ck);
    if (!ck) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    ck->threshold = threshold > 0 ? threshold : 1;
    ck->idle_ms = idle_ms > 0 ? idle_ms : 1;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&ck->mu, NULL);
    pthread_cond_init(&ck->cv, &ca);
    pthread_cond_init(&ck->idle_cv, &ca);
    pthread_condattr_destroy(&ca);
    ck->last_commit = pm_stats_now_ms();
    if (!sqlite3_threadsafe()) {
        snprintf(err, errlen,
                 "this SQLite is built without thread support: run the store with "
                 "--checkpoint inline");
        goto fail;
    }
    if (sqlite3_open_v2(path, &ck->sql, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        snprintf(err, errlen, "cannot open %s for checkpoints: %s (or run --checkpoint inline)",
                 path, ck->sql ? sqlite3_errmsg(ck->sql) : "out of memory");
        goto fail;
    }
    //  a checkpoint syncs the WAL before and the database after copying by
    //  this connection's setting: the same as the store's
    sqlite3_busy_timeout(ck->sql, 100);
    sqlite3_wal_autocheckpoint(ck->sql, 0);
    if (sqlite3_exec(ck->sql, sync_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
                     NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot set up the checkpoint connection to %s: %s", path,
                 sqlite3_errmsg(ck->sql));
        goto fail;
    }
    //  signals (SIGTERM, SIGINT) stay with the store's thread, whose poll
    //  they interrupt: the new thread starts with them all blocked
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&ck->thread, NULL, s_run, ck);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the checkpoint thread (or run --checkpoint inline)");
        goto fail;
    }
    ck->started = true;
    return ck;
fail:
    store_ckpt_destroy(&ck);
    return NULL;
}

void store_ckpt_destroy(store_ckpt_t **pck)
{
    if (!pck || !*pck)
        return;
    store_ckpt_t *ck = *pck;
    if (ck->started) {
        pthread_mutex_lock(&ck->mu);
        ck->stop = true;
        pthread_cond_signal(&ck->cv);
        pthread_mutex_unlock(&ck->mu);
        pthread_join(ck->thread, NULL);
    }
    if (ck->sql)
        sqlite3_close(ck->sql);
    pthread_cond_destroy(&ck->cv);
    pthread_cond_destroy(&ck->idle_cv);
    pthread_mutex_destroy(&ck->mu);
    free(ck);
    *pck = NULL;
}

void store_ckpt_note(store_ckpt_t *ck, int64_t frames)
{
    if (!ck)
        return;
    pthread_mutex_lock(&ck->mu);
    //  nothing was left to copy: the thread sleeps without an idle deadline;
    //  wake it to set one (else the idle checkpoint comes up to 1 s late)
    bool was_clean = ck->frames - ck->backfilled <= 0 || frames < ck->frames;
    if (frames < ck->frames) { //  the WAL started over
        ck->gen++;
        ck->backfilled = 0;
        ck->st.restarts++;
        ck->st.handover_wins += ck->won;
        ck->won = false;
        ck->attempts = 0;
    } else if (frames > ck->frames) {
        ck->won = false; //  a commit landed after it: that one did not start the WAL over
    }
    ck->frames = frames;
    ck->st.wal_frames = frames;
    if (frames > ck->st.wal_max)
        ck->st.wal_max = frames;
    ck->last_commit = pm_stats_now_ms();
    int64_t backlog = frames - ck->backfilled;
    int64_t cap = (int64_t)STORE_CKPT_CAP_FACTOR * ck->threshold;
    //  at the cap with only a few frames left: ask the thread for a final
    //  checkpoint now, before the store's next transaction (store_ckpt_hold)
    if (frames >= cap && frames < STORE_CKPT_HANDOVER_END(cap) && backlog > 0 &&
        backlog <= STORE_CKPT_TIDY_FRAMES && !ck->running && !ck->hold &&
        ck->attempts < STORE_CKPT_ATTEMPTS) {
        ck->hold = true;
        ck->waited = false;
        ck->attempts++;
        pthread_cond_signal(&ck->cv);
    } else if (backlog >= ck->threshold || (frames >= cap && backlog > STORE_CKPT_TIDY_FRAMES) ||
               (was_clean && backlog > 0))
        pthread_cond_signal(&ck->cv);
    pthread_mutex_unlock(&ck->mu);
}

int64_t store_ckpt_tidy_due(store_ckpt_t *ck)
{
    if (!ck)
        return 0;
    pthread_mutex_lock(&ck->mu);
    int64_t cap = (int64_t)STORE_CKPT_CAP_FACTOR * ck->threshold;
    //  at twice the cap (a writer faster than the copying): the thread
    //  starts no new checkpoint, and the store's thread waits for the one
    //  running to end, so the WAL holds at most 2 x cap + one batch
    while (ck->frames >= 2 * cap && (ck->running || ck->hold) && !ck->stop)
        pthread_cond_wait(&ck->idle_cv, &ck->mu);
    int64_t backlog = ck->frames - ck->backfilled;
    //  below twice the cap, the thread's hand-overs first (store_ckpt_hold)
    bool due =
        !ck->running && !ck->hold && backlog > 0 &&
        ((ck->frames >= cap && backlog <= STORE_CKPT_TIDY_FRAMES &&
          (ck->attempts >= STORE_CKPT_ATTEMPTS || ck->frames >= STORE_CKPT_HANDOVER_END(cap))) ||
         ck->frames >= 2 * cap);
    pthread_mutex_unlock(&ck->mu);
    return due ? backlog : 0;
}

double store_ckpt_hold(store_ckpt_t *ck)
{
    if (!ck)
        return 0;
    pthread_mutex_lock(&ck->mu);
    //  once per hand-over: one that took too long has lost its race already
    if (!ck->hold || ck->waited) {
        pthread_mutex_unlock(&ck->mu);
        return 0;
    }
    ck->waited = true;
    double t0 = pm_stats_now_ms();
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = (int64_t)ts.tv_nsec + (int64_t)(STORE_CKPT_HOLD_MS * 1e6);
    ts.tv_sec += (time_t)(ns / 1000000000L);
    ts.tv_nsec = (long)(ns % 1000000000L);
    while (ck->hold && !ck->stop)
        if (pthread_cond_timedwait(&ck->idle_cv, &ck->mu, &ts) != 0)
            break; //  too long: go on, the thread tries again at a later commit
    double ms = pm_stats_now_ms() - t0;
    ck->st.hold_waits++;
    ck->st.hold_ms_total += ms;
    if (ms > ck->st.hold_ms_max)
        ck->st.hold_ms_max = ms;
    pthread_mutex_unlock(&ck->mu);
    return ms > 0 ? ms : 1e-6;
}

void store_ckpt_done(store_ckpt_t *ck, int rc, int nlog, int nckpt, double ms)
{
    (void)nlog;
    if (!ck)
        return;
    pthread_mutex_lock(&ck->mu);
    ck->st.tidy += rc == SQLITE_OK;
    if (ms > ck->st.tidy_ms_max)
        ck->st.tidy_ms_max = ms;
    s_account(ck, rc, nckpt, ck->gen, false);
    pthread_mutex_unlock(&ck->mu);
}

void store_ckpt_stats(store_ckpt_t *ck, store_ckpt_stats_t *out)
{
    memset(out, 0, sizeof *out);
    if (!ck)
        return;
    pthread_mutex_lock(&ck->mu);
    *out = ck->st;
    out->backlog = ck->frames - ck->backfilled;
    pthread_mutex_unlock(&ck->mu);
}
