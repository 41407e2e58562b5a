/*  store_ckpt — WAL checkpoints off picomdm-store's request path.
 *
 *  With SQLite's own auto-checkpoint, the commit that takes the WAL past the
 *  threshold also copies every page changed since the last checkpoint into
 *  the database and syncs both files (up to 16 MB with the default 4,096
 *  pages), and every device waiting for that batch waits for it too: the
 *  latency tail (docs/queue.md, "Session 4"). Here a thread of its own, with
 *  its own SQLite connection, does that work instead:
 *
 *  - the store's connection runs with auto-checkpoint off; after each commit
 *    its WAL hook (main thread) calls store_ckpt_note with the WAL's size;
 *  - once `threshold` frames were written since the last checkpoint, the
 *    thread runs a PASSIVE checkpoint (it never blocks the writer);
 *  - SQLite starts the WAL from its beginning again (overwriting the file in
 *    place) at the first transaction after a checkpoint that copied every
 *    frame. Under steady load the thread rarely wins that race (the store
 *    commits every few ms, a checkpoint syncs twice), so the WAL keeps
 *    growing; once it holds STORE_CKPT_CAP_FACTOR x threshold frames, the
 *    thread copies until only a few frames are left, then copies those
 *    right after a commit while the store's thread holds its next
 *    transaction back a few ms (the hand-over, below), and the WAL starts
 *    over. That bounds the WAL; the store's thread copies the last frames
 *    itself (one small checkpoint, two syncs) only when hand-overs keep
 *    missing. The -wal file
 *    is kept at that size (journal_size_limit), never truncated to 0: a
 *    write that extends a file makes its fdatasync write the size too
 *    (measured here, ext4 on virtio: 4.7-7.3 ms against 2.7-2.9 ms
 *    overwriting in place).
 *  - after `idle_ms` without a commit the thread copies what is left, so the
 *    next transaction starts the WAL over.
 *
 *  Durability is SQLite's: a commit is durable when it is synced in the WAL
 *  (before anyone is answered); a checkpoint only copies committed pages,
 *  syncing the WAL before and the database after (the thread's connection
 *  uses the same `synchronous` setting), so kill -9 or a power loss at any
 *  moment of a checkpoint loses nothing.
 *
 *  Ownership: the thread and its connection belong to the store_ckpt_t; only
 *  the fields under its mutex are shared. store_ckpt_note and
 *  store_ckpt_stats may be called from the store's thread at any time.
 */
#ifndef STORE_CKPT_H
#define STORE_CKPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct store_ckpt store_ckpt_t;

typedef struct {
    uint64_t passive;   //  checkpoints run (by the thread, or inline without one)
    uint64_t frames;    //  WAL frames copied into the database by them
    double ms_total;    //  time spent in them
    double ms_max;      //  the longest
    uint64_t tidy;      //  small checkpoints the store's thread finished (store_ckpt_done)
    double tidy_ms_max; //  the longest of those
    uint64_t restarts;  //  times the WAL started over from its beginning
    int64_t wal_frames; //  frames in the WAL after the last commit
    int64_t wal_max;    //  the most frames the WAL ever held
    uint64_t written;   //  frames (pages) the store's commits wrote into the WAL (store_db)
    uint64_t commits;   //  commits that wrote any (store_db)
    //  session 6: the hand-over at the cap (see below)
    uint64_t tidy_frames;    //  frames the store's thread copied in its tidies
    int64_t tidy_frames_max; //  the most in one
    uint64_t handovers;      //  final checkpoints the thread ran while the store held back
    uint64_t handover_wins;  //  of those, the ones that let the WAL start over
    uint64_t hold_waits;     //  times the store's thread waited for one (store_ckpt_hold)
    double hold_ms_total;    //  time it waited
    double hold_ms_max;      //  the longest wait
    int64_t backlog;         //  frames of the WAL not yet copied into the database
} store_ckpt_stats_t;

//  The WAL holds about this many times the threshold at most: from there
//  the thread copies until at most STORE_CKPT_TIDY_FRAMES are left, and the
//  store's thread copies those (store_ckpt_tidy_due): about 1 MB and two
//  syncs. At twice the cap (a writer faster than the thread's checkpoints)
//  the thread starts no new checkpoint and the store's thread, once the one
//  running has ended, copies whatever is left: the WAL holds at most twice
//  the cap and one batch.
#define STORE_CKPT_CAP_FACTOR 4
#define STORE_CKPT_TIDY_FRAMES 256

//  Session 6: the hand-over. A tidy on the store's thread costs one
//  database fdatasync and one WAL fdatasync in a request's way, 1-45 ms on
//  this disk whatever the number of frames (docs/queue.md, "Session 6").
//  So at the cap, once at most STORE_CKPT_TIDY_FRAMES are left, the commit
//  that notes it (store_ckpt_note) asks the thread for a final checkpoint
//  right away, and the store's thread, before its next transaction
//  (store_ckpt_hold), waits at most STORE_CKPT_HOLD_MS for it: a
//  checkpoint that ends before the next transaction begins has copied
//  every frame, and that transaction starts the WAL over. If it takes
//  longer the store goes on (the WAL grows by a batch; the thread tries
//  again at the next commit); after STORE_CKPT_ATTEMPTS tries in one WAL
//  generation, or once the WAL holds 1.25 x the cap, the store's thread
//  tidies as before (so the WAL stays well under twice the cap).
#define STORE_CKPT_HOLD_MS 4.0
#ifndef STORE_CKPT_ATTEMPTS //  -DSTORE_CKPT_ATTEMPTS=0: no hand-overs (the session-5 behaviour)
#define STORE_CKPT_ATTEMPTS 8
#endif
#define STORE_CKPT_HANDOVER_END(cap) ((cap) + (cap) / 4)

//  Start the checkpoint thread on the database at `path` (opened by the
//  store already, in WAL mode). sync_full: PRAGMA synchronous FULL (else
//  NORMAL) for the thread's connection. NULL (reason in err) on failure.
store_ckpt_t *store_ckpt_new(const char *path, bool sync_full, int threshold, int idle_ms,
                             char *err, size_t errlen);
//  Stop the thread (it finishes the checkpoint under way), close its
//  connection. Safe twice and with NULL.
void store_ckpt_destroy(store_ckpt_t **ck);

//  From the store's WAL hook after each commit: the WAL now holds `frames`.
//  Never blocks on a checkpoint (takes the mutex only).
void store_ckpt_note(store_ckpt_t *ck, int64_t frames);

//  Whether the store's thread should now finish a checkpoint itself (see
//  above): the thread is not checkpointing, frames are left to copy, and
//  the WAL reached the cap with at most STORE_CKPT_TIDY_FRAMES of them (or
//  twice the cap). At twice the cap it first waits for the thread's running
//  checkpoint to end: the only case in which the store's thread waits.
//  Returns the frames left to copy (0: not due).
int64_t store_ckpt_tidy_due(store_ckpt_t *ck);
//  Before the store's thread begins a transaction: if the thread runs (or
//  was just asked for) a hand-over checkpoint, wait until it ends, at most
//  STORE_CKPT_HOLD_MS. Returns the milliseconds waited (0: no hand-over).
double store_ckpt_hold(store_ckpt_t *ck);
//  The store's thread ran that checkpoint: it took ms; rc, nlog, nckpt as
//  sqlite3_wal_checkpoint_v2 returned them.
void store_ckpt_done(store_ckpt_t *ck, int rc, int nlog, int nckpt, double ms);

//  A copy of the counters.
void store_ckpt_stats(store_ckpt_t *ck, store_ckpt_stats_t *out);

#endif
