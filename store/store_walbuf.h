/*  store_walbuf — one write() per commit into the WAL instead of two per page
 *  (picomdm-store; docs/queue.md, "Session 5").
 *
 *  SQLite writes each WAL frame with two pwrite calls (its 24-byte header,
 *  then the page), so a commit of a batch of device requests (~35-100
 *  pages at 10,000 devices) makes 70-200 system calls, each a trip through
 *  this VM's kernel (measured: ~40 % of the store's system time). This is
 *  a VFS shim over the default one: writes to a `-wal` file are gathered
 *  while they are contiguous and handed to the kernel in one pwrite when
 *  the commit's last frame (its header carries the database size) has been
 *  written — inside SQLite's commit, before it syncs the WAL and before it
 *  publishes the new frames in the wal-index, so no reader (the checkpoint
 *  thread's connection included) can look for a frame that is not in the
 *  file. The gathered bytes are also written out before anything else
 *  touches the file (read, sync, truncate, size, lock, file control,
 *  close) and when a write is not contiguous (a frame rewritten in place),
 *  so SQLite sees the file exactly as it would without the shim.
 *
 *  Durability is unchanged: a commit's bytes are in the kernel before
 *  SQLite's commit returns (kill -9 loses nothing) and synced as before
 *  (synchronous=FULL: before anyone is answered). A failed write fails
 *  the commit, as a failed pwrite would.
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

#endif
