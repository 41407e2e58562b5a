/*  broker_proxy — the broker's event plane (picomdm-broker): an XSUB socket
 *  that publishers connect to and an XPUB socket that subscribers connect to,
 *  forwarding events one way and subscriptions the other, in the broker's own
 *  poll loop (no extra thread, so shutdown is simple). Bodies are not read.
 */
#ifndef BROKER_PROXY_H
#define BROKER_PROXY_H

#include "pm_bus_wire.h"
#include <czmq.h>
#include <stdint.h>

typedef struct broker_proxy broker_proxy_t;

//  A proxy with unbound XSUB/XPUB sockets (the caller applies CURVE and binds).
broker_proxy_t *broker_proxy_new(void);
void broker_proxy_destroy(broker_proxy_t **self);

zsock_t *broker_proxy_xsub(broker_proxy_t *self); //  publishers connect here (owned by proxy)
zsock_t *broker_proxy_xpub(broker_proxy_t *self); //  subscribers connect here (owned by proxy)

//  The two sockets' wait states, for pm_bus_poll (owned by the proxy).
pm_bus_sock_t *broker_proxy_wait_xsub(broker_proxy_t *self);
pm_bus_sock_t *broker_proxy_wait_xpub(broker_proxy_t *self);
//  Forward what is waiting in both directions (bounded; from a socket only
//  when pm_bus_poll set `ready` or it is disarmed). Returns messages moved.
int broker_proxy_process(broker_proxy_t *self);

//  Publish one message of our own (topic, body) to every subscriber: the
//  broker's stats snapshot. 0, or -1 (e.g. no subscriber buffer space).
int broker_proxy_publish(broker_proxy_t *self, const char *topic, const void *body, size_t len);

//  Events forwarded so far.
uint64_t broker_proxy_events(const broker_proxy_t *self);

#endif
