/*  pm_bus_wire — what the bus client library (pm_bus.c) and the broker
 *  (broker/) share about the request-plane wire: protocol header frames,
 *  worker command bytes, non-blocking multi-frame send/receive on raw libzmq
 *  sockets, a rate-limited log line for bad input, and the endpoint policy
 *  (which endpoints count as local and may run without CURVE).
 *  The frames themselves are documented in pm_bus.h.
 */
#ifndef PM_BUS_WIRE_H
#define PM_BUS_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#define PM_BUS_CLIENT_HDR "PMC1"
#define PM_BUS_WORKER_HDR "PMW1"
#define PM_BUS_HDR_LEN 4

enum {
    PM_BUS_READY = 0x01,
    PM_BUS_REQUEST = 0x02,
    PM_BUS_REPLY = 0x03,
    PM_BUS_HEARTBEAT = 0x04,
    PM_BUS_DISCONNECT = 0x05,
    PM_BUS_DROPPED = 0x06
};

#define PM_BUS_SERVICE_MAX 64 //  longest service name
#define PM_BUS_MAX_FRAMES 8   //  more frames than this is malformed everywhere
#define PM_BUS_BATCH 1000     //  messages handled per socket per processing call
#define PM_BUS_HWM 100000     //  send/receive high-water marks
#define PM_BUS_LIVENESS 3     //  heartbeats missed before a peer is dead

//  Receive one whole message (all its frames) without blocking. Up to `max`
//  frames are kept in `frames` (initialised here; the caller closes *n of them
//  with pm_bus_frames_close); extra frames are read and discarded, and
//  *total says how many there were. Returns 0, or -1 when nothing is waiting
//  (errno EAGAIN) or on error.
int pm_bus_recv(void *sock, zmq_msg_t *frames, int max, int *n, int *total);
void pm_bus_frames_close(zmq_msg_t *frames, int n);

//  Send `n` frames without blocking (ZMQ_DONTWAIT). Returns 0, or -1 (errno:
//  EAGAIN at the high-water mark, EHOSTUNREACH for an unknown ROUTER peer).
int pm_bus_sendv(void *sock, const void *const *data, const size_t *len, int n);

/* ---- waiting without zmq_poll ----
 *  zmq_poll asks every socket for ZMQ_EVENTS before and after it sleeps, and
 *  each ask costs libzmq two syscalls (getpid for its fork check, and a poll
 *  of the socket's mailbox) even when nothing is there: ~14 syscalls per
 *  wakeup for the broker's three sockets, more than the message itself.
 *  These helpers sleep in one poll() on the sockets' ZMQ_FDs and ask
 *  ZMQ_EVENTS only of sockets that need it:
 *  a socket is *armed* when the last thing done to it was a receive that
 *  found nothing (EAGAIN) or a ZMQ_EVENTS without input; libzmq then signals
 *  its ZMQ_FD when input arrives. A send on the socket may consume that
 *  signal (libzmq processes its commands inside send), so every send disarms
 *  it, and a disarmed socket is asked ZMQ_EVENTS before anyone sleeps on it.
 *  (pm_bus.h, "Waiting", for the measured effect.) */
typedef struct {
    void *handle; //  the libzmq socket
    int fd;       //  its ZMQ_FD
    bool armed;   //  its fd will signal new input (see above)
    bool ready;   //  set by pm_bus_poll: input may be waiting, receive until EAGAIN
} pm_bus_sock_t;

//  Set up for a libzmq socket (disarmed: the first wait asks ZMQ_EVENTS).
void pm_bus_sock_init(pm_bus_sock_t *s, void *handle);
//  Wait up to timeout_ms (-1: no limit, 0: do not sleep) until one of the n
//  sockets may have input; sets `ready` on each of those (clears it on the
//  others). Never sleeps when a disarmed socket has input. Returns the number
//  ready (0 on timeout), -1 on error (errno; EINTR when interrupted).
int pm_bus_poll(pm_bus_sock_t *const *socks, int n, int timeout_ms);
//  pm_bus_recv on s, keeping its state: EAGAIN arms it and clears `ready`;
//  a message disarms it (whoever stops before EAGAIN, at a batch limit, must
//  not sleep on the descriptor: the rest of the input may not signal it).
int pm_bus_sock_recv(pm_bus_sock_t *s, zmq_msg_t *frames, int max, int *n, int *total);
//  pm_bus_sendv on s; disarms it.
int pm_bus_sock_sendv(pm_bus_sock_t *s, const void *const *data, const size_t *len, int n);

//  True if the frame holds exactly the string s.
bool pm_bus_frame_is(zmq_msg_t *frame, const char *s);
//  Copy a frame into a NUL-terminated string of at most max-1 bytes; -1 if it
//  does not fit or holds a NUL or a control character.
int pm_bus_frame_str(zmq_msg_t *frame, char *out, size_t max);

//  Rate-limited logging of bad input: at most `burst` lines per 10 s window,
//  then one line saying how many were suppressed.
typedef struct {
    int64_t window_start;
    int lines;
    uint64_t suppressed;
} pm_bus_ratelog_t;
void pm_bus_ratelog(pm_bus_ratelog_t *rl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

//  Endpoint policy: ipc://, inproc:// and tcp:// on 127.0.0.0/8, ::1 or
//  localhost are local; anything else needs CURVE.
bool pm_bus_endpoint_is_local(const char *endpoint);

//  A zhashx key hasher for NUL-terminated string keys, 8 bytes per step
//  (czmq's default takes one byte per step; rids are 32 bytes, the broker's
//  request keys ~43, each hashed several times per request).
size_t pm_bus_key_hash(const void *key);

//  Hex of `len` bytes into out (2*len+1 bytes); used for ROUTER identities in logs/keys.
void pm_bus_hex(const uint8_t *data, size_t len, char *out);

#endif
