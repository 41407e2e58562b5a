/*  store_walbuf — gathers SQLite's writes to the WAL into one pwrite per
 *  commit (see store_walbuf.h for why and why it is safe).
 *
 *  A VFS shim: every file is opened by the default VFS; files opened as a
 *  WAL (SQLITE_OPEN_WAL) get io methods that gather contiguous writes in a
 *  buffer and write it out before any other operation on that file, and
 *  whenever SQLite calls xShmBarrier or xShmLock on a database file of this
 *  VFS — which it does before it publishes new frames in the wal-index
 *  header (walIndexWriteHdr) and before it lets the write lock go. So a
 *  frame is in the file before any reader can learn that it exists, and
 *  before the commit returns.
 *
 *  One mutex guards every buffer (only the store's thread writes through
 *  this VFS; the checkpoint thread's connection uses the default one).
 */
#include "store_walbuf.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_BUF_MAX (4 << 20) //  write out at this size even before a commit ends
#define S_CHUNK 0x1f000     //  bytes per write (the unix VFS takes < 128 KiB at once)

typedef struct s_file {
    sqlite3_file base;  //  our methods
    sqlite3_file *real; //  the default VFS's file, right after this struct
    bool wal;           //  a WAL: writes are gathered
    int err;            //  a failed write-out (SQLITE_OK: none), reported by the next call
    unsigned char *buf; //  gathered bytes, for offset off .. off + len
    size_t len, cap;
    sqlite3_int64 off;
    struct s_file *next; //  the list of open WAL files
} s_file_t;

static pthread_mutex_t s_mu = PTHREAD_MUTEX_INITIALIZER;
static s_file_t *s_wals; //  open WAL files (under s_mu)
static sqlite3_vfs *s_real;
static sqlite3_vfs s_vfs;
static sqlite3_io_methods s_methods;
static _Thread_local store_walbuf_io_t s_io; //  store_walbuf_io

static double s_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

//  A write handed to the default VFS, timed for store_walbuf_io.
static int s_real_write(sqlite3_file *real, int k, const void *data, int n, sqlite3_int64 off)
{
    double t0 = s_ms();
    int rc = real->pMethods->xWrite(real, data, n, off);
    s_io.writes[k]++;
    s_io.write_ms[k] += s_ms() - t0;
    return rc;
}

void store_walbuf_io(store_walbuf_io_t *out)
{
    *out = s_io;
}

//  Write out what f gathered (s_mu held). SQLite's result code. In pieces:
//  the unix VFS writes at most 128 KiB - 1 per call (seekAndWriteFd masks
//  the length with 0x1ffff).
static int s_flush(s_file_t *f)
{
    int rc = SQLITE_OK;
    for (size_t done = 0; rc == SQLITE_OK && done < f->len; done += S_CHUNK) {
        size_t n = f->len - done < S_CHUNK ? f->len - done : S_CHUNK;
        rc = s_real_write(f->real, 0, f->buf + done, (int)n, f->off + (sqlite3_int64)done);
    }
    f->len = 0; //  written or failed: the caller reports a failure
    return rc;
}

//  Before any other operation on a WAL: write out, and report a failed
//  write-out that no call has reported yet.
static int s_flush_one(sqlite3_file *p)
{
    s_file_t *f = (s_file_t *)p;
    if (!f->wal)
        return SQLITE_OK;
    pthread_mutex_lock(&s_mu);
    int rc = s_flush(f);
    if (rc == SQLITE_OK)
        rc = f->err;
    f->err = SQLITE_OK;
    pthread_mutex_unlock(&s_mu);
    return rc;
}

//  Before the wal-index changes: every WAL's gathered frames into its file.
static int s_flush_all(void)
{
    int rc = SQLITE_OK;
    pthread_mutex_lock(&s_mu);
    for (s_file_t *f = s_wals; f; f = f->next) {
        int r = s_flush(f);
        if (r != SQLITE_OK) {
            rc = r;
            if (f->err == SQLITE_OK)
                f->err = r; //  reported by the WAL's next operation too
        }
    }
    pthread_mutex_unlock(&s_mu);
    return rc;
}

#define S_REAL(p) (((s_file_t *)(p))->real)
#define S_FLUSH_OR_RETURN(p)                                                                       \
    do {                                                                                           \
        int frc_ = s_flush_one(p);                                                                 \
        if (frc_ != SQLITE_OK)                                                                     \
            return frc_;                                                                           \
    } while (0)

static int s_close(sqlite3_file *p)
{
    s_file_t *f = (s_file_t *)p;
    int rc = SQLITE_OK;
    if (f->wal) {
        pthread_mutex_lock(&s_mu);
        rc = s_flush(f);
        for (s_file_t **pp = &s_wals; *pp; pp = &(*pp)->next)
            if (*pp == f) {
                *pp = f->next;
                break;
            }
        pthread_mutex_unlock(&s_mu);
        free(f->buf);
        f->buf = NULL;
    }
    int crc = f->real->pMethods ? f->real->pMethods->xClose(f->real) : SQLITE_OK;
    return rc != SQLITE_OK ? rc : crc;
}

static int s_read(sqlite3_file *p, void *out, int n, sqlite3_int64 off)
{
    S_FLUSH_OR_RETURN(p);
    return S_REAL(p)->pMethods->xRead(S_REAL(p), out, n, off);
}

static int s_write(sqlite3_file *p, const void *data, int n, sqlite3_int64 off)
{
    s_file_t *f = (s_file_t *)p;
    if (!f->wal || n <= 0)
        return s_real_write(f->real, f->wal ? 0 : 1, data, n, off);
    int rc = SQLITE_OK;
    pthread_mutex_lock(&s_mu);
    if (f->err != SQLITE_OK) { //  an earlier write-out failed (s_shm_barrier): say so now
        rc = f->err;
        f->err = SQLITE_OK;
        goto out;
    }
    //  not where the gathered bytes end (a frame rewritten in place): those first
    if (f->len && off != f->off + (sqlite3_int64)f->len)
        rc = s_flush(f);
    if (rc == SQLITE_OK && f->len + (size_t)n > S_BUF_MAX)
        rc = s_flush(f);
    if (rc == SQLITE_OK && (size_t)n > S_BUF_MAX) {
        rc = s_real_write(f->real, 0, data, n, off);
        goto out;
    }
    if (rc != SQLITE_OK)
        goto out;
    if (f->len + (size_t)n > f->cap) {
        size_t cap = f->cap ? f->cap : 65536;
        while (cap < f->len + (size_t)n)
            cap *= 2;
        unsigned char *b = realloc(f->buf, cap);
        if (!b) { //  no memory to gather: write it as SQLite would
            rc = s_flush(f);
            if (rc == SQLITE_OK)
                rc = s_real_write(f->real, 0, data, n, off);
            goto out;
        }
        f->buf = b;
        f->cap = cap;
    }
    if (!f->len)
        f->off = off;
    memcpy(f->buf + f->len, data, (size_t)n);
    f->len += (size_t)n;
out:
    pthread_mutex_unlock(&s_mu);
    return rc;
}

static int s_truncate(sqlite3_file *p, sqlite3_int64 size)
{
    S_FLUSH_OR_RETURN(p);
    return S_REAL(p)->pMethods->xTruncate(S_REAL(p), size);
}

static int s_sync(sqlite3_file *p, int flags)
{
    S_FLUSH_OR_RETURN(p);
    int k = ((s_file_t *)p)->wal ? 0 : 1;
    double t0 = s_ms();
    int rc = S_REAL(p)->pMethods->xSync(S_REAL(p), flags);
    double ms = s_ms() - t0;
    s_io.syncs[k]++;
    s_io.sync_ms[k] += ms;
    if (ms > s_io.sync_max_ms[k])
        s_io.sync_max_ms[k] = ms;
    return rc;
}

static int s_file_size(sqlite3_file *p, sqlite3_int64 *size)
{
    S_FLUSH_OR_RETURN(p);
    return S_REAL(p)->pMethods->xFileSize(S_REAL(p), size);
}

static int s_lock(sqlite3_file *p, int lock)
{
    S_FLUSH_OR_RETURN(p);
    return S_REAL(p)->pMethods->xLock(S_REAL(p), lock);
}

static int s_unlock(sqlite3_file *p, int lock)
{
    S_FLUSH_OR_RETURN(p);
    return S_REAL(p)->pMethods->xUnlock(S_REAL(p), lock);
}

static int s_check_reserved(sqlite3_file *p, int *out)
{
    S_FLUSH_OR_RETURN(p);
    return S_REAL(p)->pMethods->xCheckReservedLock(S_REAL(p), out);
}

static int s_file_control(sqlite3_file *p, int op, void *arg)
{
    S_FLUSH_OR_RETURN(p);
    return S_REAL(p)->pMethods->xFileControl(S_REAL(p), op, arg);
}

static int s_sector_size(sqlite3_file *p)
{
    return S_REAL(p)->pMethods->xSectorSize(S_REAL(p));
}

static int s_device_chars(sqlite3_file *p)
{
    return S_REAL(p)->pMethods->xDeviceCharacteristics(S_REAL(p));
}

static int s_shm_map(sqlite3_file *p, int pg, int pgsz, int extend, void volatile **pp)
{
    return S_REAL(p)->pMethods->xShmMap(S_REAL(p), pg, pgsz, extend, pp);
}

//  SQLite takes and drops wal-index locks (the write lock after a commit)
//  here: the frames go out first
static int s_shm_lock(sqlite3_file *p, int offset, int n, int flags)
{
    (void)s_flush_all(); //  a failure is the WAL's to report (s_flush_one)
    return S_REAL(p)->pMethods->xShmLock(S_REAL(p), offset, n, flags);
}

//  Called between the two copies of the wal-index header when a commit is
//  published (walIndexWriteHdr): a safety net, the commit's frames are out
//  already (xSync, store_walbuf.h). No return code here: a failure is kept
//  in the file and reported by its next operation.
static void s_shm_barrier(sqlite3_file *p)
{
    (void)s_flush_all();
    S_REAL(p)->pMethods->xShmBarrier(S_REAL(p));
}

static int s_shm_unmap(sqlite3_file *p, int del)
{
    (void)s_flush_all();
    return S_REAL(p)->pMethods->xShmUnmap(S_REAL(p), del);
}

static int s_fetch(sqlite3_file *p, sqlite3_int64 off, int n, void **pp)
{
    S_FLUSH_OR_RETURN(p);
    if (S_REAL(p)->pMethods->iVersion < 3) {
        *pp = NULL;
        return SQLITE_OK;
    }
    return S_REAL(p)->pMethods->xFetch(S_REAL(p), off, n, pp);
}

static int s_unfetch(sqlite3_file *p, sqlite3_int64 off, void *ptr)
{
    if (S_REAL(p)->pMethods->iVersion < 3)
        return SQLITE_OK;
    return S_REAL(p)->pMethods->xUnfetch(S_REAL(p), off, ptr);
}

static int s_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *p, int flags, int *oflags)
{
    (void)vfs;
    s_file_t *f = (s_file_t *)p;
    memset(f, 0, sizeof *f);
    f->real = (sqlite3_file *)(f + 1);
    int rc = s_real->xOpen(s_real, name, f->real, flags, oflags);
    if (rc != SQLITE_OK || !f->real->pMethods) {
        f->base.pMethods = NULL;
        return rc != SQLITE_OK ? rc : SQLITE_CANTOPEN;
    }
    f->base.pMethods = &s_methods;
    if (flags & SQLITE_OPEN_WAL) {
        f->wal = true;
        pthread_mutex_lock(&s_mu);
        f->next = s_wals;
        s_wals = f;
        pthread_mutex_unlock(&s_mu);
    }
    return SQLITE_OK;
}

//  The rest of the VFS is the default one's.
static int s_delete(sqlite3_vfs *v, const char *name, int sync_dir)
{
    (void)v;
    return s_real->xDelete(s_real, name, sync_dir);
}
static int s_access(sqlite3_vfs *v, const char *name, int flags, int *out)
{
    (void)v;
    return s_real->xAccess(s_real, name, flags, out);
}
static int s_full_pathname(sqlite3_vfs *v, const char *name, int n, char *out)
{
    (void)v;
    return s_real->xFullPathname(s_real, name, n, out);
}
static void *s_dlopen(sqlite3_vfs *v, const char *name)
{
    (void)v;
    return s_real->xDlOpen(s_real, name);
}
static void s_dlerror(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    s_real->xDlError(s_real, n, out);
}
static void (*s_dlsym(sqlite3_vfs *v, void *h, const char *sym))(void)
{
    (void)v;
    return s_real->xDlSym(s_real, h, sym);
}
static void s_dlclose(sqlite3_vfs *v, void *h)
{
    (void)v;
    s_real->xDlClose(s_real, h);
}
static int s_randomness(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    return s_real->xRandomness(s_real, n, out);
}
static int s_sleep(sqlite3_vfs *v, int us)
{
    (void)v;
    return s_real->xSleep(s_real, us);
}
static int s_current_time(sqlite3_vfs *v, double *out)
{
    (void)v;
    return s_real->xCurrentTime(s_real, out);
}
static int s_last_error(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    return s_real->xGetLastError ? s_real->xGetLastError(s_real, n, out) : 0;
}
static int s_current_time64(sqlite3_vfs *v, sqlite3_int64 *out)
{
    (void)v;
    return s_real->xCurrentTimeInt64(s_real, out);
}

int store_walbuf_register(void)
{
    static pthread_mutex_t once = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&once);
    int rc = 0;
    if (s_real)
        goto out;
    sqlite3_vfs *real = sqlite3_vfs_find(NULL);
    //  version 2 of the VFS (xCurrentTimeInt64) and io methods with shared
    //  memory (WAL) are what this shim passes through
    if (!real || real->iVersion < 2 || !real->xCurrentTimeInt64) {
        rc = -1;
        goto out;
    }
    s_methods = (sqlite3_io_methods){
        .iVersion = 3,
        .xClose = s_close,
        .xRead = s_read,
        .xWrite = s_write,
        .xTruncate = s_truncate,
        .xSync = s_sync,
        .xFileSize = s_file_size,
        .xLock = s_lock,
        .xUnlock = s_unlock,
        .xCheckReservedLock = s_check_reserved,
        .xFileControl = s_file_control,
        .xSectorSize = s_sector_size,
        .xDeviceCharacteristics = s_device_chars,
        .xShmMap = s_shm_map,
        .xShmLock = s_shm_lock,
        .xShmBarrier = s_shm_barrier,
        .xShmUnmap = s_shm_unmap,
        .xFetch = s_fetch,
        .xUnfetch = s_unfetch,
    };
    s_vfs = (sqlite3_vfs){
        .iVersion = 2,
        .szOsFile = (int)((sizeof(s_file_t) + 15) / 16 * 16) + real->szOsFile,
        .mxPathname = real->mxPathname,
        .zName = STORE_WALBUF_VFS,
        .xOpen = s_open,
        .xDelete = s_delete,
        .xAccess = s_access,
        .xFullPathname = s_full_pathname,
        .xDlOpen = s_dlopen,
        .xDlError = s_dlerror,
        .xDlSym = s_dlsym,
        .xDlClose = s_dlclose,
        .xRandomness = s_randomness,
        .xSleep = s_sleep,
        .xCurrentTime = s_current_time,
        .xGetLastError = s_last_error,
        .xCurrentTimeInt64 = s_current_time64,
    };
    s_real = real;
    if (sqlite3_vfs_register(&s_vfs, 0) != SQLITE_OK) {
        s_real = NULL;
        rc = -1;
    }
out:
    pthread_mutex_unlock(&once);
    return rc;
}
