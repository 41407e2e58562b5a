/*  pm_alloc — the process's allocator and memory, for the daemons' start and
 *  exit lines. The rel gateway, store and broker link mimalloc (Makefile
 *  ALLOC_PROCS), which then replaces the C library's malloc in the whole
 *  process; the asan and fuzz variants, the unit tests and a build without
 *  the library keep glibc's. Debian ships only mimalloc's runtime library (no
 *  header): its few functions are declared weak in pm_alloc.c, NULL when the
 *  binary does not link it.
 */
#ifndef PM_ALLOC_H
#define PM_ALLOC_H

#include <stddef.h>

//  "mimalloc 209" (its version) or "the C library's malloc", into buf.
//  Returns buf.
const char *pm_alloc_name(char *buf, size_t size);

//  mimalloc's decommit delay (how long freed pages stay committed before they
//  go back to the OS): set to `ms` unless the operator set
//  MIMALLOC_DECOMMIT_DELAY or MIMALLOC_PURGE_DELAY (theirs wins). Returns the
//  delay in force, -1 without mimalloc, -2 for a mimalloc whose options are
//  not known here (not 2.x: left alone).
long pm_alloc_decommit_delay(long ms);

//  Memory mimalloc has committed (reserved address space it made usable; not
//  the same as resident pages), now and at its peak, in bytes: 0, or -1
//  without mimalloc.
int pm_alloc_committed(size_t *now, size_t *peak);

//  The process's resident set now (VmRSS of /proc/self/status), in KiB; -1
//  if it cannot be read.
long pm_alloc_rss_kb(void);

#endif
