/*  store_pcache — SQLite's own page cache (pcache1) behind a thin wrapper
 *  that skips the page-cache truncation SQLite asks for at every commit
 *  when it can prove there is nothing to drop (docs/queue.md, "Session 9,
 *  storecpu4").
 *
 *  Why: at the end of every write transaction the pager calls the cache's
 *  xTruncate(dbSize + 1). pcache1 drops pages numbered at or above that
 *  limit, and when its high-water key (iMaxKey) is far above the limit it
 *  walks its whole hash table to do so (pcache1TruncateUnsafe: one chain
 *  per bucket, 4,096 buckets with the store's 16 MiB cache). The B-tree's
 *  balance_nonroot swaps two pages through a temporary page number, the
 *  database's "pending byte" page (1 GiB / page size + 1: 262,145 with 4
 *  KiB pages), so after any transaction that split a b-tree page that way
 *  the high-water key is 262,145 and the next commit walks the whole
 *  table, touching ~4,096 cache lines: ~9 % of the store's thread in perf
 *  under tests/bench/e2e.sh 10000.
 *
 *  The wrapper keeps, per cache, an upper bound of the keys the cache can
 *  hold other than that temporary one (every key a page was created or
 *  re-keyed to) and how many pages sit at the temporary key now; a
 *  truncation whose limit is above the bound while no page sits at the
 *  temporary key cannot drop anything and is not passed on. Anything else
 *  is passed on unchanged, and a page fetched at the temporary key makes
 *  every truncation pass until one has dropped it. Every other method is
 *  pcache1's own.
 *
 *  store_pcache_install must run before SQLite initialises (before the
 *  first connection is opened in the process); store_db_new calls it.
 *  Later calls, or a process whose SQLite initialised first, keep SQLite's
 *  default cache (returns -1, harmless).
 */
#ifndef STORE_PCACHE_H
#define STORE_PCACHE_H

#include <stdint.h>

//  Install the wrapper as SQLite's page cache. 0, or -1 when SQLite had
//  initialised already (the default cache stays) or it was installed before.
int store_pcache_install(void);

//  Truncations passed on to pcache1 and skipped, since the install (all
//  caches of the process; relaxed counters, for tests and measurements).
void store_pcache_counts(uint64_t *passed, uint64_t *skipped);

#endif
