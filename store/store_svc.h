/*  store_svc — the bus face of picomdm-store: serves the "store" service
 *  (store.checkin, store.connect, store.enqueue, store.cancel, store.queue,
 *  store.results, store.devices, event.append, events, wake.pending) over
 *  store_db, with group commit.
 *
 *  Group commit: requests are not answered as they arrive. Each arriving job
 *  is parked; store_svc_flush (called by the main loop once the bus has
 *  drained what is waiting) applies every parked request in ONE transaction
 *  (a savepoint each, so one bad request does not undo the others), commits,
 *  and only then sends the replies and publishes the events (EVENT, with the
 *  seq the event log gave them). With group commit off, every request gets
 *  its own transaction (for comparison in the benchmark).
 */
#ifndef STORE_SVC_H
#define STORE_SVC_H

#include "pm_bus.h"
#include "pm_msg.h"
#include "pm_stats.h"
#include "store_db.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct store_svc store_svc_t;

typedef struct {
    bool group_commit; //  one transaction per batch (true) or per request
    int batch_max;     //  at most this many requests per transaction (0 = 1024)
} store_svc_opts_t;

//  The service over `db`, publishing through `bus` (may be NULL in tests).
//  Neither is owned. Returns NULL on allocation failure.
store_svc_t *store_svc_new(store_db_t *db, pm_bus_t *bus, const store_svc_opts_t *opts);
void store_svc_destroy(store_svc_t **svc);

//  pm_bus_job_fn for pm_bus_serve(bus, "store", store_svc_on_job, svc): parks the job.
void store_svc_on_job(void *arg, pm_bus_job_t *job);

//  Count into `st` (borrowed, outlives svc; NULL = none): ops by type,
//  errors, transactions, commit latency, the last event seq.
void store_svc_set_stats(store_svc_t *svc, pm_stats_t *st);

//  Requests parked and not yet answered.
size_t store_svc_pending(const store_svc_t *svc);

//  Transactions committed and requests applied in them so far (their ratio is
//  the group commit's batch size).
void store_svc_counts(const store_svc_t *svc, uint64_t *commits, uint64_t *requests);

//  Where the time of the batches went (a summary for the log at exit; the
//  same observations go into the store_batch_*_seconds histograms).
#define STORE_SVC_NBUCKETS 8 //  <=1 <=2 <=5 <=10 <=20 <=50 <=100 >100 ms
typedef struct {
    uint64_t bucket[STORE_SVC_NBUCKETS];
    double total_ms, max_ms;
} store_svc_phase_t;
typedef struct {
    store_svc_phase_t apply, sync, checkpoint, reply; //  checkpoint: inside a commit only
    store_svc_phase_t request; //  per request: arrival to reply (the store's share of latency)
    size_t batch_max;          //  most requests in one transaction
} store_svc_timing_t;
void store_svc_timing(const store_svc_t *svc, store_svc_timing_t *out);

//  Apply every parked request (in batches of batch_max), commit, reply, publish.
//  Returns the number of requests answered.
int store_svc_flush(store_svc_t *svc);

//  Apply one request inside the current transaction (no bus): *reply is the
//  answer (caller owns), and the return value says whether the request's
//  changes should be kept (true) or undone (false). For tests and for flush.
bool store_svc_apply(store_svc_t *svc, const pm_msg_t *req, pm_msg_t **reply);

#endif
