/*  broker_router — the broker's request plane (picomdm-broker).
 *
 *  One ROUTER socket. Clients send requests for named services; workers
 *  register (READY) with a capacity and heartbeat interval; each request goes
 *  to the live worker of its service with the fewest in flight below its
 *  capacity, or waits in that service's bounded queue. A worker that stops
 *  heartbeating (or says DISCONNECT, or is found gone: no route to it) is
 *  removed and its in-flight requests are answered `error` worker_lost so
 *  their clients retry at once. Bodies are
 *  never decoded; the router only encodes its own `error` replies. The frames
 *  are documented in proto/pm_bus.h.
 */
#ifndef BROKER_ROUTER_H
#define BROKER_ROUTER_H

#include "pm_bus_wire.h"
#include <czmq.h>
#include <stdint.h>

typedef struct {
    int heartbeat_ms;            //  for workers that do not announce theirs
    int request_wait_ms;         //  how long a request may wait queued
    int max_inflight_per_worker; //  caps each worker's announced capacity
    int max_queue;               //  queued requests per service before `error` busy
} broker_router_config_t;

typedef struct {
    uint64_t requests, replies, dispatched, queued, duplicates, errors;
    uint64_t workers_lost, bad_frames, unroutable;
} broker_router_stats_t;

typedef struct broker_router broker_router_t;

//  A new router with an unbound ROUTER socket (the caller applies CURVE
//  options and binds it, see broker_router_socket). NULL on failure.
broker_router_t *broker_router_new(const broker_router_config_t *cfg);
void broker_router_destroy(broker_router_t **self);

//  The ROUTER socket (owned by the router).
zsock_t *broker_router_socket(broker_router_t *self);

//  The socket's wait state, for pm_bus_poll (owned by the router).
pm_bus_sock_t *broker_router_wait(broker_router_t *self);
//  Handle everything waiting on the socket (bounded batch; only when
//  pm_bus_poll set `ready` or the socket is disarmed) and the timers
//  (heartbeats, dead workers, expired queued requests). Returns messages handled.
int broker_router_process(broker_router_t *self);

//  Milliseconds until broker_router_process must run again for its timers.
int broker_router_next_timeout(const broker_router_t *self);

void broker_router_stats(const broker_router_t *self, broker_router_stats_t *stats);

//  Per service, now: live workers, queued requests, requests in flight and
//  the workers' total capacity (metrics). `service` is valid during the call.
typedef void(broker_router_service_fn)(void *arg, const char *service, int workers, int queued,
                                       int inflight, int capacity);
void broker_router_services(broker_router_t *self, broker_router_service_fn *fn, void *arg);

#endif
