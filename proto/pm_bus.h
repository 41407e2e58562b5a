/*  pm_bus — the bus client library used by every process: requests to named
 *  services (client side), serving a service (worker side), and events.
 *
 *  Request plane (Majordomo-style, ZeroMQ guide ch. 4), through the broker's
 *  ROUTER "request endpoint". Wire frames (all sockets are DEALER on our side):
 *    client -> broker : "PMC1", service, rid, body
 *    broker -> client : "PMC1", service, rid, body        (reply, or an `error` msg)
 *    worker -> broker : "PMW1", 0x01 READY, service, capacity(ascii), heartbeat-ms(ascii)
 *                       "PMW1", 0x03 REPLY, client-id, rid, body
 *                       "PMW1", 0x04 HEARTBEAT
 *                       "PMW1", 0x05 DISCONNECT
 *                       "PMW1", 0x06 DROPPED, client-id, rid   (job dropped: no reply)
 *    broker -> worker : "PMW1", 0x02 REQUEST, client-id, rid, body
 *                       "PMW1", 0x04 HEARTBEAT
 *                       "PMW1", 0x05 DISCONNECT        (worker re-registers)
 *  body is an encoded pm_msg; rid repeats the envelope's request id so the
 *  broker can route and fail requests without decoding bodies.
 *  Heartbeats go both ways, at the interval the worker announced in READY
 *  (optional frame; the broker's own interval if absent), so the two ends
 *  never disagree; a peer silent for 3 intervals is dead. A worker sends
 *  READY again when the broker says DISCONNECT (a restarted broker says it to
 *  any worker it does not know) or is silent; its socket is never re-created
 *  (libzmq re-dials it, ZMTP heartbeats catch half-open TCP), so the
 *  descriptors from pm_bus_fds stay valid for the life of the pm_bus_t. A
 *  repeated READY for the same service is harmless.
 *  The broker dispatches a request to the worker with the fewest in flight
 *  below its capacity, queues it otherwise (bounded: `error` busy), answers
 *  `error` no_service when no worker registered within its request-wait-ms,
 *  and drops a copy of a (client, rid) it already holds (queued or in flight). The broker
 *  fails a dead worker's in-flight requests back to their clients (an `error`
 *  reply, code "worker_lost"), and the client retries them with the same rid.
 *  A client retries with the same rid after each per-attempt timeout; the
 *  worker side keeps a cache of recent rids so a retried request is answered
 *  from the cache (or dropped while the first copy is still being handled):
 *  every service is idempotent for retries without doing anything itself.
 *
 *  Event plane: we PUB into the broker's XSUB "publish endpoint" and SUB from
 *  its XPUB "subscribe endpoint". Frames: topic (= event name), body (pm_msg EVENT,
 *  or STATS: the `stats.<process>` metrics snapshots, common/pm_stats.h, which
 *  the store does not log; subscribers check the type).
 *
 *  Threading: one pm_bus_t per thread; the process's loop drives it, either
 *  with pm_bus_run_once (blocking poll) or, from a foreign event loop such as
 *  libevent, with pm_bus_fds + pm_bus_process + pm_bus_next_timeout.

    Waiting (pm_bus_wire.h, pm_bus_poll; the broker uses it too): not
    zmq_poll, which asks every socket for ZMQ_EVENTS before and after it
    sleeps at two syscalls each inside libzmq (getpid, a poll of the socket's
    mailbox). One poll() on the sockets' ZMQ_FDs; a socket is drained only
    when its descriptor fired, and asked ZMQ_EVENTS only when it is disarmed
    (something was sent on it since its last empty receive: a send may
    consume the descriptor's signal). Measured with tests/tools/bustest
    (broker + echo worker, strace): broker syscalls per round trip 82 -> 53
    with one request in flight, 5.3 -> 3.5 with 16; broker + worker 129 -> 83
    and 8.7 -> 5.4. Per message libzmq itself still wakes its I/O thread and
    ours (about 3 thread wakeups per message in the broker, the larger cost
    on a paravirtualised VM; docs/e2e.md, fourth round).

    Session 4 (wake-ups per hop, issues #4 and #6). tests/bench/bus.sh prints
    CPU and context switches per round trip for broker, worker and client,
    per thread (main, libzmq's I/O thread). With one request in flight a
    round trip costs the broker 2 wake-ups of its thread and 4 of its I/O
    thread (each message in and out), each end 1 + 2: 12 in all (measured
    6.8-7.7 in the broker, 3.3-3.6 in each end, preemptions included, load
    3-11). That is libzmq's floor -- every hop wakes the sender's I/O thread,
    the receiver's I/O thread and the receiver's thread -- and none of it is
    a PicoMDM call; bursts share them (broker 0.45 per round trip at 32 in
    flight, 0.1 at 256). The broker already drains each socket until EAGAIN,
    moves zmq_msg_t frames, formats nothing per message; its own code and
    czmq are ~4 % of its perf samples.
    getpid: libzmq checks for fork() with getpid() in signaler_t::send and
    ::wait, i.e. on every mailbox signal and every empty mailbox check: 19
    getpid syscalls per round trip in the broker, ~10 in each end, 10 % of
    the broker's perf samples at 32 in flight (glibc no longer caches it).
    picomdm-broker alone defines getpid() (broker/broker_getpid.c: pid
    cached, forgotten in a fork child; the executable's definition is the
    one libzmq binds to): 0 getpid syscalls per round trip in the broker
    (strace), ~1.2 µs CPU saved each, i.e. ~23 µs per round trip at low
    load; enroll_e2e, strace -c: broker 301 -> 206 syscalls per enrollment
    (getpid 106 -> 0). The helper's first version put it in every binary
    (ca 161 -> 97, gateway 167 -> 129, store 150 -> 129); the review kept
    it out of the processes that use OpenSSL's random generator, whose
    fork detection asks getpid, and out of everything that may fork. Context
    switches do not change (broker 39-43 per enrollment, 2.5-2.7 per e2e
    device request); the CPU gain is within this shared VM's run-to-run
    noise (load 3-11, every run: bus.sh broker at 1 in flight 152-295 µs
    per round trip before (7 runs, median 203), 110-200 after (12, median
    161); e2e broker 75-110 µs per device request before (6), 65-115
    after (6); enroll_e2e broker 1,550-2,150 µs per enrollment before (2),
    1,200-1,550 after (2)).
    Tried, not kept: an outbox in pm_bus sending everything a pass produced
    together (no change in e2e: the gateway already sends a loop iteration's
    requests together, the store a commit's replies); two libzmq I/O threads
    (more switches: 9.4-9.9 per round trip in the broker vs 7.1-7.5). Not
    tried: spinning before sleeping (takes the cores the I/O threads need on
    this 2-core VM). What would remove most of the rest: a broker speaking
    ZMTP itself on one epoll thread (no I/O-thread hand-off: 2 instead of 6
    switches per round trip), wire-compatible with the libzmq peers.

    Session 7 (storereply, issue #4). pm_bus_publish_event publishes an
    `event` from its fields, its data map already packed where it was made
    (the store's event log): the envelope is packed straight into a buffer
    the bus keeps, the data checked with pm_mpck (one map within the
    decoder's limits) and copied as it is. pm_bus_publish took a pm_msg_t:
    the data unpacked and deep-copied into it (pm_msg_set_packed), then
    everything encoded again. Same bytes on the wire (pm_bus_event_encode
    against pm_msg_encode, test_publish_event_bytes); data that is not one
    well-formed map is refused and nothing is sent. Callgrind, store with
    queuedrv (1,000 session requests, 1,500 events): 11.3 k -> 4.0 k
    instructions per event in the store's thread. Worker side: the reply
    cache and the client's pending table are keyed by the rid inside their
    entry (no strdup/free per request), rids copied without snprintf:
    receive path 13.9 k -> 12.6 k per request. Tried, not kept: libzmq's
    I/O thread as SCHED_BATCH in the store (docs/queue.md, Session 7).

    Session 8, buscpu2 (issue #4: the bus's CPU per device request).
    getpid in every process: broker/broker_getpid.c is now common/pm_getpid.c
    (libpicomdm.a); every daemon and picomdm-devsim calls pm_getpid_init()
    first thing in main() (a static archive links a module only when it is
    referenced; programs that call getpid through libpicomdm, the CLI and
    most unit tests, get it as well). Session 4's objection (a child made
    without fork handlers would see its parent's pid and fool OpenSSL's fork
    check) is answered by where the pid lives: a page marked
    MADV_WIPEONFORK, which the kernel zeroes in every fork child (tested with
    a raw SYS_fork child); the atfork handler stays. strace -c -f, session
    phase of `RATE=0 bash tests/bench/e2e.sh 2000` (4,000 device requests,
    figures under strace), getpid per device request: gateway 1.83 -> 0,
    store 1.64 -> 0, devsim 2.06 -> 0; all system calls: gateway 10.65 ->
    8.62, store 7.10 -> 5.49, devsim 13.25 -> 11.20.
    The broker's loop, callgrind (broker under callgrind, tests/tools/bustest
    echo worker + client, 32 in flight, 5,000 round trips): 15.7 k
    instructions per round trip in its loop thread, 10.7 k in libzmq's I/O
    thread. Of the loop's, libzmq's zmq_msg_recv/zmq_send/zmq_msg_send are
    8.7 k: 11 frames received and 11 sent per round trip at ~400
    instructions each, set by the wire format. Cut: requests reused from a
    spare list (was a calloc of ~1 KB and a free each), hash keys borrowed
    from their items (a strdup and a free), an 8-byte-step key hasher
    (pm_bus_key_hash; czmq's takes a byte per step; pm_bus's pending table
    and reply cache use it too), pm_bus_frame_str checking 8 bytes per step:
    15.7 k -> 13.4 k (I/O thread unchanged). Worker side (bustest worker
    under callgrind): 14.8 k -> 14.4 k per request.
    System calls, broker, same strace runs: poll 2.8-3.0, epoll_wait 0.9-1.1,
    read and write 0.75-0.8 each, epoll_ctl 0.8-0.9, sendto and recvfrom 0.5
    per device request, all inside libzmq: our poll() that sleeps, the poll
    libzmq makes of the same mailbox in the first receive after the wake-up
    (process_commands), the empty receive that re-arms the socket; the rest
    is the I/O thread's. The leads of the brief were in place already:
    sockets are drained until EAGAIN, ZMQ_EVENTS is asked only of a socket
    sent on since its last empty receive, received frames are moved
    (zmq_msg_move, zmq_msg_send), not copied.
    Wake-ups: --cpu N (default -1: anywhere) runs the broker's loop and
    libzmq's I/O thread on CPU N: each hands messages to the other on the
    same CPU (no cross-CPU wake-up; the woken one runs when the other
    sleeps). `RATE=0 bash tests/bench/e2e.sh 10000`, closed loop, five
    rounds alternating main's servers, this branch's, and this branch's with
    the broker pinned (taskset -c 0 in the first three, --cpu 0 in the last
    two), load 5-9: broker CPU per device request pinned 49, 52, 70, 55,
    60 µs; main 68, 89, 74, 97, 93; unpinned 75, 70, 86, 85, 81. Broker
    context switches per device request pinned 1.2-2.1 (median 1.6), else
    1.8-2.2. The whole server's CPU per request stayed within the noise
    (pinned 394-583 µs, main 388-566, unpinned 418-527). Off by default: on
    a host where that CPU is busy the broker waits for it, and picomdm up
    does not pass it; tests/it/broker_cpu.sh checks every thread is pinned.
    Tried, not kept: pm_bus_frame_str as one loop without early exit for
    the compiler to vectorise (gcc 12 -O2 did not: 796 -> 1,009
    instructions per round trip). Not done: skipping the receive that
    re-arms the XPUB after forwarding events (a new subscription could then
    wait until the next timeout); delaying the loop to batch more per wake-up.

    Session 9, brokerut: the broker's tests. broker/broker_router_test.c
    (cmocka; `tests/run.sh broker_router asan:broker_router`) drives a real
    broker_router_t on an inproc:// ROUTER from its own loop (pm_bus_poll +
    broker_router_process, no threads), raw DEALER clients and workers
    speaking the frames above, and asserts the frames each peer receives and
    the router's counters: routing to the worker and the reply back to the
    client that asked; least-in-flight choice (ties: the first registered) and
    max-inflight-per-worker; queueing in order when every worker is full,
    dispatch when a reply or DROPPED frees a slot; `busy` at max-queue; queued
    requests expiring after request-wait-ms (busy, or no_service with no
    worker) and next_timeout; a silent worker removed after 3 of its heartbeat
    intervals with its in-flight requests answered worker_lost (the broker's
    HEARTBEATs seen by the worker); DISCONNECT; READY repeated or for another
    service; duplicates, queued or in flight; 24 kinds of malformed frames
    counted in bad_frames; replies the router does not track (unknown rid,
    finished, another worker's) passed on without freeing a slot; unroutable
    replies; the 1,024-service bound; the 50 ms heartbeat floor; 100 requests
    through the spare list. Real processes: tests/it/broker_*.sh (errors,
    garbage, kill_worker, restart, spread, stall, events, curve, cpu,
    worker_gone). In the sanitizer build (make VARIANT=asan) a finished
    request is poisoned while it waits in the spare list
    (ASAN_POISON_MEMORY_REGION), so a use after its release is reported
    (use-after-poison) as it was before the list. Fixed on the way
    (test_worker_gone): a worker whose process died was still picked while it
    had the fewest in flight; the send failed (EHOSTUNREACH), the request
    queued, and every request of the service waited behind it until the dead
    worker missed 3 heartbeats, however many live workers were idle. The
    router now marks such a worker gone, tries the next one, and removes it
    (worker_lost for its requests, "its connection is gone") at the end of
    that pass. tests/it/broker_worker_gone.sh (kill -9 the idle worker that
    ties go to, then 20 requests one at a time, workers heartbeating every
    1,000 ms): slowest request 1.70-1.79 s with main's broker (the first one
    waited for the dead worker's expiry), 2.4 ms with this one (load 6).

    Session 10, buscpu3: what the bus costs per device request (issue #4).
    Messages: the broker's exit line after `tests/bench/e2e.sh 10000`
    (enrollment + session, 40,000 device requests): 40,081 requests,
    40,081 replies, 50,048 events. So one request-plane round trip per
    device request, i.e. 4 broker crossings (gateway -> broker -> store ->
    broker -> gateway) and 22 frames through the broker (in: 5 + 6, out:
    6 + 5, routing ids included), plus 1.25 events, each 2 frames in and 2
    out per subscriber (the bench's `picomdm watch`; the scheduler
    subscribes to nothing, the gateway's admin to stats. only; without a
    subscriber the store's PUB drops its events before they leave).
    Instructions (callgrind, broker under valgrind, tests/tools/bustest,
    64-byte echo, 32 in flight, 5,000 round trips): loop thread 13.4 k per
    round trip, libzmq's I/O thread 10.6 k. Of the loop's, zmq_msg_recv
    4.1 k, zmq_send 3.8 k, zmq_msg_send 0.8 k (inclusive): ~400 per frame
    each way; our code, czmq's hash and libc's string and malloc calls
    ~3.4 k (pm_bus_key_hash 0.46 k, pm_bus_recv 0.39 k,
    broker_router_process 0.34 k, pm_bus_frame_str 0.30 k, pm_bus_hex
    0.20 k). Events (bustest pub -> broker -> 1 sub, 10,000 in a burst):
    1.9 k in the loop and 2.3 k in the I/O thread per event (4 frames).
    So a frame through the broker costs ~1,000 instructions (both threads),
    and the request plane's 22 frames are ~21 k of its 24 k per round trip.
    Where the time goes (perf record -e cpu-clock on broker, store and
    gateway, session phase of e2e.sh 10000, load 8-12): of the three
    servers' samples the broker's loop thread has 5.6 %, the I/O threads
    23.4 % (broker 9.9, store 8.0, gateway 5.5), the store's main thread
    30.5 %, its store thread 3.5 %, the gateway's main thread 37.0 %. So
    the bus (the broker and the three I/O threads) is ~29 % of the server's
    CPU, and the broker's I/O thread costs more than its loop. By library:
    broker loop kernel 55.6 %, libzmq 17.4, libc 15.9, own code 5.5, czmq
    3.6; the broker's I/O thread kernel 72 %, the store's and gateway's
    70-72 %. Instructions are the smaller part: the per-frame cost above is
    in the 17 % (libzmq) and part of the 16 % (libc).
    System calls (strace -c -f, same phase, 20,000 device requests):
    broker 4.75 per device request (poll 1.86, epoll_wait 0.69, epoll_ctl
    0.53, write 0.49, read 0.49, sendto 0.34, recvfrom 0.34), store 7.62
    (of them bus: poll 0.80, epoll_wait 0.35, epoll_ctl 0.35, sendto 0.21,
    read/write 0.19 each, recvfrom 0.13), gateway 6.97 (libevent and TLS
    included). Per thread (strace -ff, bustest, 3,000 round trips one at a
    time): broker loop 13.0 per round trip (poll 9.0, read 2.0, write
    2.0), I/O thread 20.4 (epoll_wait 4.3, epoll_ctl 4.0, poll 4.0, read,
    write, recvfrom, sendto 2.0 each); at 32 in flight 0.50 and 0.73 (one
    wake-up serves many messages). Per message the loop makes our sleeping
    poll, then libzmq's own poll of the socket's mailbox in the first
    receive (= 1) and the read of its eventfd, a poll that finds it empty
    (the mailbox goes passive), the eventfd write that wakes the I/O thread
    for the send, and the empty receive that re-arms the socket (its poll);
    the I/O thread per message out: epoll_wait, its mailbox (poll, read,
    poll), epoll_ctl adding POLLOUT, the write, epoll_wait again and
    epoll_ctl removing POLLOUT (libzmq 4.3's speculative write), and per
    message in: epoll_wait, recvfrom, the eventfd write that wakes the
    loop. None is a PicoMDM call: the receive-until-EAGAIN and the
    ZMQ_EVENTS-only-after-a-send rules (above) are the minimum the libzmq
    API allows.
    Changed: in the router, the request's insert into the hash is its
    duplicate check (was a lookup, then the insert: 6 -> 5 key hashes per
    round trip), and the worker of the last worker message is compared
    (routing id) before the hex key and hash lookup (replies come in runs
    from one store); the cache is cleared with the worker
    (broker_router_test's test_ready_again: the removed worker's next
    message, nothing in between, is told DISCONNECT; without the clear
    ASan reports a use after free). And the
    rel broker links mimalloc (Makefile ALLOC_PROCS, as the gateway).
    Callgrind as above, loop thread per 5,000 round trips: main 66.9-67.1 M
    (3 runs), mimalloc alone 66.0 M, both cuts 63.96-64.07 M (3 runs):
    13.4 k -> 12.8 k per round trip (-4.6 %); I/O thread 53.0-53.3 M
    either way. Mimalloc's memory: peak RSS with 256 4-KB requests in
    flight (bustest) 10.8 MB with glibc, 11.4 MB with it; e2e.sh 10000
    8 -> 9 MB; no madvise, no more page faults (strace -c, /proc minflt;
    1 and 32 in flight, 64 B and 1 KB bodies). tests/it/broker_alloc.sh
    checks the mapping and a 48 MB bound under load. tests/bench/bus.sh
    now measures the event plane too (EVENTS=N through the proxy to SUBS
    subscribers: the broker's CPU and switches per event) and, with
    STRACE=1, the broker's system calls per round trip and per event.
    CPU time, alternated with main's binaries (load 6-12), shows nothing
    either way, as a 4 % instruction cut on the loop thread (~2.5 % of the
    broker's instructions) cannot above this VM's noise: RATE=0 e2e.sh
    10000, session phase, broker per device request 78, 80, 95, 95 us
    (this branch) against 86, 81, 86, 75 (main), the store (same code in
    both) moving by as much (154-217 us against 144-197); bus.sh, broker per
    round trip at 1 in flight 176, 378 against 240, 450 us, at 32 in
    flight 12.8, 17.6 against 7.6, 13.2, per event 2.0, 1.5 against 3.0,
    1.5.
    Not done: fewer frames. A header frame holding command, client id and
    rid (PMC2/PMW2) would take the broker from 22 to 12 frames per round
    trip, ~10 k of its ~24 k instructions by the per-frame cost above, and
    2-3 frames per message at each end; the broker's user time is ~34 %
    of its samples, so that is at most ~13 % of its CPU and 1-3 % of the
    server's, for a wire change in pm_bus.c, the broker, their tests and
    store/store_svc_test.c (raw worker frames; not this helper's). Skipping the XPUB re-arm after
    forwarding events: at most one poll per store commit (~0.1 per device
    request). What would cut the bus's ~29 %: fewer hops (the broker alone
    is 52-57 us of a device request on the idle machine; a direct
    gateway-store connection for the session path, the broker kept for
    discovery and events) or a broker speaking ZMTP itself on one epoll
    thread (no I/O-thread hand-off); both are design changes.
 */
#ifndef PM_BUS_H
#define PM_BUS_H

#include "pm_msg.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    const char *name;               //  for logs and socket identities ("gateway", "store"...)
    const char *request_endpoint;   //  broker ROUTER; NULL = no request plane
    const char *publish_endpoint;   //  broker XSUB; NULL = we do not publish
    const char *subscribe_endpoint; //  broker XPUB; NULL = we do not subscribe
    const char *server_public_key;  //  broker's CURVE public key (Z85); NULL = plain (ipc/loopback)
    const char *cert_file;          //  our CURVE certificate (zcert secret file), with server key
    int heartbeat_ms;               //  0 = 1000
    int capacity;                   //  worker: requests in flight at once (0 = 256)
} pm_bus_config_t;

typedef struct pm_bus pm_bus_t;
typedef struct pm_bus_job pm_bus_job_t;

//  Connect. Returns NULL (reason logged) on a bad endpoint or key.
pm_bus_t *pm_bus_new(const pm_bus_config_t *cfg);
void pm_bus_destroy(pm_bus_t **bus);

/* ---- client side ---- */

//  Called exactly once per request: `reply` on success (owned by the library,
//  valid during the call; an `error` message is a reply too), or reply == NULL
//  and `error` says why (timed out after all retries, undecodable reply...).
typedef void(pm_bus_reply_fn)(void *arg, const pm_msg_t *reply, const char *error);

//  Send `req` to `service`; `timeout_ms` per attempt, `retries` extra attempts
//  with the same rid. Returns 0, or -1 if it could not even be queued (bad
//  service name or rid, rid already in flight, encode failure, or 100,000
//  requests already in flight on this bus).
int pm_bus_call_async(pm_bus_t *bus, const char *service, const pm_msg_t *req, int timeout_ms,
                      int retries, pm_bus_reply_fn *fn, void *arg);

//  Blocking call (drives the bus while waiting; other callbacks may run).
//  Returns the reply (caller owns) or NULL with the reason in err.
pm_msg_t *pm_bus_call(pm_bus_t *bus, const char *service, const pm_msg_t *req, int timeout_ms,
                      int retries, char *err, size_t errlen);

/* ---- worker side ---- */

//  A request for us. The handler owns `job` and must end it with
//  pm_bus_job_reply or pm_bus_job_drop, now or later (group commit replies later),
//  and before pm_bus_destroy (after it, reply/drop only free the job).
//  Dropping sends no reply (the client retries after its timeout) but frees
//  the worker's slot in the broker and forgets the rid, so the retry is
//  handled afresh. The reply cache only lives as long as the process: a
//  service that must stay idempotent across its own restarts (store) must
//  also remember rids itself.
typedef void(pm_bus_job_fn)(void *arg, pm_bus_job_t *job);

//  Register as a worker of `service` (re-registers by itself after a broker
//  restart). Undecodable requests are answered with `error` bad_request by the
//  library and logged; the handler never sees them.
int pm_bus_serve(pm_bus_t *bus, const char *service, pm_bus_job_fn *fn, void *arg);
//  Stop serving (a process that is stopping but still has calls of its own to
//  finish): every worker sends what it has queued (replies included) and
//  DISCONNECT, and takes no new job; the client and subscriptions go on.
//  Replies to jobs still held are then dropped (the caller's retry covers
//  them): answer what you can first.
void pm_bus_unserve(pm_bus_t *bus);

const pm_msg_t *pm_bus_job_msg(const pm_bus_job_t *job);
//  Send the reply and free the job. Returns -1 if the reply could not be encoded
//  (an `error` internal reply is sent instead).
int pm_bus_job_reply(pm_bus_job_t **job, const pm_msg_t *reply);
void pm_bus_job_drop(pm_bus_job_t **job);

/* ---- events ---- */

//  Publish an event-plane message (EVENT or STATS); the topic frame is its `name` field.
int pm_bus_publish(pm_bus_t *bus, const pm_msg_t *event);

//  An `event` given by its fields, for pm_bus_publish_event. All borrowed.
typedef struct {
    const char *name;    //  required, 1-255 bytes without control characters: the topic
    bool has_seq;        //  seq is set (the store's event log position)
    uint64_t seq;        //
    const char *eid;     //  NULL: absent
    const char *source;  //  NULL: absent
    const uint8_t *data; //  one packed msgpack map; NULL or len 0: absent
    size_t len;          //
} pm_bus_event_t;

//  Publish an `event` without a pm_msg_t (session 7, the store's events):
//  the envelope is packed straight from the fields into a buffer the bus
//  keeps, and `data`, already msgpack where it was made, is checked (one
//  map within the decoder's limits, pm_mpck) and copied as it is, not
//  unpacked, copied and packed again. Subscribers get the bytes
//  pm_bus_publish would send for the same pm_msg (pm_bus_event_encode).
//  Each event gets a fresh request id (unique per bus) and the current
//  time. Returns 0, or -1 (logged, rate-limited) when there is no publish
//  endpoint, a field is invalid (nothing is sent) or the send failed.
int pm_bus_publish_event(pm_bus_t *bus, const pm_bus_event_t *ev);

//  The encoded `event` message for ev with that rid and ts, exactly as
//  pm_msg_encode encodes a pm_msg holding the same fields, appended to
//  `out` (cleared first). Returns 0, or -1 with the reason in err (bad name
//  or rid, data not one well-formed map within the limits, too large).
int pm_bus_event_encode(const pm_bus_event_t *ev, const char *rid, uint64_t ts,
                        msgpack_sbuffer *out, char *err, size_t errlen);

typedef void(pm_bus_event_fn)(void *arg, const char *topic, const pm_msg_t *event);
//  Subscribe to topics starting with `prefix` ("" = all).
int pm_bus_subscribe(pm_bus_t *bus, const char *prefix, pm_bus_event_fn *fn, void *arg);

/* ---- statistics (tests, benchmarks, logs) ---- */

typedef struct {
    uint64_t requests;     //  client: calls made
    uint64_t resends;      //  client: attempts after the first (timeouts, worker_lost)
    uint64_t replies;      //  client: calls completed with a reply
    uint64_t failures;     //  client: calls completed with an error text
    uint64_t duplicates;   //  client: replies dropped because their rid was already complete
    uint64_t jobs;         //  worker: requests handed to handlers
    uint64_t retried_jobs; //  worker: retried rids answered from the cache or dropped
    uint64_t published;    //  events published
    uint64_t events;       //  events delivered to subscribers
    uint64_t bad_frames;   //  malformed or undecodable input dropped
} pm_bus_stats_t;

void pm_bus_stats(const pm_bus_t *bus, pm_bus_stats_t *stats);

/* ---- driving the bus ---- */

//  Wait up to timeout_ms for traffic, then handle everything that is pending
//  (bounded batch), timers included. Returns messages handled, or -1 when the
//  process was interrupted (SIGINT/SIGTERM).
int pm_bus_run_once(pm_bus_t *bus, int timeout_ms);

//  For foreign event loops: the file descriptors to watch for readability
//  (ZMQ_FD: edge-triggered — call pm_bus_process whenever one fires AND after
//  every pm_bus_call_async/pm_bus_job_reply/pm_bus_publish). Returns the count.
int pm_bus_fds(const pm_bus_t *bus, int *fds, int max);
//  Non-blocking: handle everything pending now. Returns messages handled.
int pm_bus_process(pm_bus_t *bus);
//  The same for a foreign loop that waits on pm_bus_fds level-triggered
//  (libevent, epoll without EV_ET): `fds` are the descriptors it saw readable
//  since its last call (may be none: after a send, for the timers). Those
//  sockets are drained, and so is every socket sent on since its last empty
//  receive; the other sockets are not polled again (pm_bus_process polls
//  them all, one poll() per call): the loop's next wait reports them. So the
//  loop must watch every fd pm_bus_fds returns: fetch them again after
//  pm_bus_serve, which adds a socket.
int pm_bus_process_ready(pm_bus_t *bus, const int *fds, int nfds);
//  Milliseconds until pm_bus_process must run again for heartbeats and retries.
int pm_bus_next_timeout(const pm_bus_t *bus);

#endif
