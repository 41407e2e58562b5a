/*  broker_proxy — XSUB/XPUB event forwarding (see broker_proxy.h). */
#include "broker_proxy.h"
#include "pm_bus_wire.h"
#include "pm_msg.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct broker_proxy {
    zsock_t *xsub;
    zsock_t *xpub;
    pm_bus_sock_t zsub, zpub; //  their wait states (pm_bus_wire.h)
    uint64_t events;
};

static zsock_t *s_socket(int type)
{
    zsock_t *sock = zsock_new(type);
    if (sock) {
        zsock_set_maxmsgsize(sock, (int64_t)PM_MSG_MAX_BYTES);
        zsock_set_sndhwm(sock, PM_BUS_HWM);
        zsock_set_rcvhwm(sock, PM_BUS_HWM);
        zsock_set_linger(sock, 0);
    }
    return sock;
}

broker_proxy_t *broker_proxy_new(void)
{
    broker_proxy_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->xsub = s_socket(ZMQ_XSUB);
    self->xpub = s_socket(ZMQ_XPUB);
    if (!self->xsub || !self->xpub)
        broker_proxy_destroy(&self);
    else {
        pm_bus_sock_init(&self->zsub, zsock_resolve(self->xsub));
        pm_bus_sock_init(&self->zpub, zsock_resolve(self->xpub));
    }
    return self;
}

void broker_proxy_destroy(broker_proxy_t **selfp)
{
    if (!selfp || !*selfp)
        return;
    zsock_destroy(&(*selfp)->xsub);
    zsock_destroy(&(*selfp)->xpub);
    free(*selfp);
    *selfp = NULL;
}

zsock_t *broker_proxy_xsub(broker_proxy_t *self)
{
    return self->xsub;
}

zsock_t *broker_proxy_xpub(broker_proxy_t *self)
{
    return self->xpub;
}

pm_bus_sock_t *broker_proxy_wait_xsub(broker_proxy_t *self)
{
    return &self->zsub;
}

pm_bus_sock_t *broker_proxy_wait_xpub(broker_proxy_t *self)
{
    return &self->zpub;
}

//  Move whole messages from one socket to the other. PUB/XPUB sends never
//  block: a slow subscriber loses events at its high-water mark and detects
//  the gap by sequence number (DESIGN.md §3).
//  Only when pm_bus_poll said input may wait there (or nobody asked it).
static int s_forward(pm_bus_sock_t *zfrom, pm_bus_sock_t *zto)
{
    int moved = 0;
    zmq_msg_t part;
    void *from = zfrom->handle, *to = zto->handle;
    if (!zfrom->ready && zfrom->armed)
        return 0;
    while (moved < PM_BUS_BATCH) {
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, from, ZMQ_DONTWAIT) < 0) {
            if (errno == EAGAIN) {
                zfrom->armed = true;
                zfrom->ready = false;
            }
            zmq_msg_close(&part);
            break;
        }
        zfrom->armed = false; //  until EAGAIN: stopped at the batch limit, ask before sleeping
        zto->armed = false;
        for (;;) {
            int more = zmq_msg_more(&part);
            zmq_msg_send(&part, to, (more ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT);
            zmq_msg_close(&part);
            if (!more)
                break;
            zmq_msg_init(&part);
            if (zmq_msg_recv(&part, from, 0) < 0) {
                zmq_msg_close(&part);
                break;
            }
        }
        moved++;
    }
    return moved;
}

int broker_proxy_process(broker_proxy_t *self)
{
    int n = s_forward(&self->zsub, &self->zpub);
    self->events += (uint64_t)n;
    return n + s_forward(&self->zpub, &self->zsub);
}

uint64_t broker_proxy_events(const broker_proxy_t *self)
{
    return self->events;
}

int broker_proxy_publish(broker_proxy_t *self, const char *topic, const void *body, size_t len)
{
    //  Whole messages only pass through this socket (s_forward moves one
    //  completely before the next), so ours cannot split another's frames.
    void *xpub = zsock_resolve(self->xpub);
    self->zpub.armed = false;
    if (zmq_send(xpub, topic, strlen(topic), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return -1;
    return zmq_send(xpub, body, len, ZMQ_DONTWAIT) < 0 ? -1 : 0;
}
