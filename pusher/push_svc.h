/*  push_svc — the pusher's bus service (bin/picomdm-pusher): serves "push".
 *
 *  wake {eids}  -> answered `ok` at once; then push.info to the store (token,
 *                  PushMagic, topic, stale flag; 1000 ids per request), then
 *                  push_apns_wake for each pushable enrollment (duplicates
 *                  still pending are coalesced there).
 *  outcomes     -> batched into push.outcome requests to the store, which
 *                  records them (last push, stale token on 410) and logs and
 *                  publishes the push.* events with their sequence number.
 *  Enrollments the store does not know, without a token, or with a stale
 *  token are reported as push.failed with the reason.
 *  Ownership: the bus and the APNs client are borrowed.
 */
#ifndef PUSH_SVC_H
#define PUSH_SVC_H

#include "pm_bus.h"
#include "pm_stats.h"
#include "push_apns.h"
#include "push_stdin.h"

typedef struct push_svc push_svc_t;

//  Register as a worker of service "push". NULL on failure (logged).
push_svc_t *push_svc_new(pm_bus_t *bus);
void push_svc_destroy(push_svc_t **svc);
void push_svc_attach(push_svc_t *svc, push_apns_t *apns);

//  Count into `st` (borrowed, outlives svc; NULL = none): pushes by outcome,
//  retries, queue gauges, latency; published each turn of push_svc_run.
//  Call after push_svc_attach.
void push_svc_set_stats(push_svc_t *svc, pm_stats_t *st);

//  The push_apns event callback (arg = the push_svc_t).
void push_svc_outcome(void *arg, const push_result_t *r);

//  Raise an event through the store's log (event.append), e.g. push.cert_expiring.
void push_svc_event(push_svc_t *svc, const char *name, const char *text);

//  Run until SIGINT/SIGTERM; `tick` runs once per turn (SIGHUP reload). 0 / -1.
int push_svc_run(push_svc_t *svc, push_stdin_tick_fn *tick, void *arg);

#endif
