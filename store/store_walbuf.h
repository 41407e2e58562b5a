/*  store_walbuf — one write() per commit into the WAL instead of two per page
 *  (picomdm-store; docs/queue.md, "Session 5").
 *
 *  SQLite writes each WAL frame with two pwrite calls (its 24-byte header,
 *  then the page), so a commit of a batch of device requests (~35-100
 *  pages at 10,000 devices) makes 70-200 system calls, each a trip through
 *  this VM's kernel (measured: ~40 % of the store's system time). This is
 *  a VFS shim over the default one: writes to a `-wal` file are gathered
 *  while they are contiguous and handed to the kernel in one pwrite (in
 *  pieces under 128 KiB, the unix VFS's limit) before anything else
 *  touches the file: read, truncate, size, lock, file control, close, a
 *  write that is not contiguous (a frame rewritten in place) and — the one
 *  that ends every commit — xSync. The shim does not read what SQLite
 *  writes.
 *
 *  Use it with synchronous=FULL only (picomdm-store does): then SQLite
 *  syncs the WAL inside every commit, before it publishes the new frames
 *  in the wal-index and before the commit returns, so the sync writes the
 *  commit out and a failed write fails the commit, exactly as a failed
 *  pwrite would. With synchronous=NORMAL there is no sync per commit:
 *  the bytes would still reach the file before the frames are published
 *  (xShmBarrier and xShmLock write out too, a safety net), but a failure
 *  there has no return code and the commit would report success.
 *
 *  Durability is unchanged: a commit's bytes are in the kernel and synced
 *  before SQLite's commit returns (kill -9 loses nothing, a power loss
 *  neither), and no reader (the checkpoint thread's connection included)
 *  can look for a frame that is not in the file.
 *
 *  Every other file (database, -shm, journals) goes straight to the
 *  default VFS.
 */
#ifndef STORE_WALBUF_H
#define STORE_WALBUF_H

//  The VFS name to pass to sqlite3_open_v2.
#define STORE_WALBUF_VFS "picomdm-walbuf"

//  Register the VFS (once per process; later calls return at once). Not the
//  default VFS. 0 / -1 (then open with the default VFS: correct, only slower).
int store_walbuf_register(void);

//  I/O timing of the calling thread through this VFS since it started
//  (thread-local counters; session 6, to attribute the store's stalls):
//  [0] the WAL, [1] every other file (the database). Only files opened
//  through this VFS count.
typedef struct {
    unsigned long syncs[2];  //  xSync calls
    double sync_ms[2];       //  time in them
    double sync_max_ms[2];   //  the longest
    unsigned long writes[2]; //  write calls handed to the default VFS
    double write_ms[2];      //  time in them
} store_walbuf_io_t;
void store_walbuf_io(store_walbuf_io_t *out);

#endif
