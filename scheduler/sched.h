/*  sched — the scheduler service (bin/picomdm-scheduler): the command queue's
 *  front door for devices (checkin, connect from the gateway) and operators
 *  (enqueue, cancel, queue, results, devices).
 *
 *  The scheduler holds the queue policy (its options: notnow-limit,
 *  redeliver-limit, delivered-timeout-s, default-ttl-s), validates requests,
 *  names new commands (CommandUUID), computes expiry, and sends wakeups to the
 *  pusher. Every decision itself is ONE store transaction (store.connect,
 *  store.enqueue...), so the scheduler keeps no state: any number of
 *  schedulers may run at once, and a crashed one loses nothing. The rules are
 *  documented in docs/queue.md.
 */
#ifndef SCHED_H
#define SCHED_H

#include "pm_bus.h"
#include "pm_msg.h"
#include "pm_stats.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    int notnow_limit;        //  after this many NotNow a command goes behind the others (0 = never)
    int redeliver_limit;     //  deliveries without an answer before a command fails (0 = never)
    int delivered_timeout_s; //  an unanswered delivery is re-offered only after this long
    int default_ttl_s;       //  expiry for commands enqueued without ttl_s (0 = never)
    int store_timeout_ms;    //  per attempt, for calls to the store
    int store_retries;       //  extra attempts (same rid; the store is idempotent for them)
    int wake_sweep_s;        //  re-send wakeups for marked enrollments this often (0 = never)
    int silent_sweep_s;      //  wake enrollments not seen for this long, this often (0 = never)
    int wake_backoff_max_s;  //  sweep re-pushes of one enrollment back off (period, 2x, 4x ...)
                             //  up to this wait (0 = no backoff: every sweep re-pushes)
} sched_opts_t;

typedef struct sched sched_t;

//  The scheduler over `bus` (not owned). Returns NULL on allocation failure.
sched_t *sched_new(pm_bus_t *bus, const sched_opts_t *opts);
void sched_destroy(sched_t **s);

//  Count into `st` (borrowed, outlives s; NULL = no counting): requests by
//  type, refusals, store failures, deliveries, results by Status, wakeups.
void sched_set_stats(sched_t *s, pm_stats_t *st);

//  pm_bus_job_fn for pm_bus_serve(bus, "scheduler", sched_on_job, s).
void sched_on_job(void *arg, pm_bus_job_t *job);

//  Timers (the wakeup sweep). Call from the main loop; cheap when nothing is due.
void sched_tick(sched_t *s, int64_t now_ms);

//  Check an operator or device request before it goes to the store. Returns
//  NULL if it is fine, or an `error` reply (caller owns) saying what is wrong.
//  Pure: no bus, used by the unit test.
pm_msg_t *sched_validate(const pm_msg_t *req);

//  Build the store request for `req` (caller owns), or NULL if req is not a
//  scheduler request. `uuid` is used for ENQUEUE without a command_uuid.
pm_msg_t *sched_store_request(const sched_opts_t *o, const pm_msg_t *req, const char *uuid,
                              int64_t now_ms);

#endif
