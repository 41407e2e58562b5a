/*  devsim_push — the simulator's side of APNs (bin/picomdm-devsim
 *  --push-listen PATH): a UNIX datagram socket bound at PATH on which the APNs
 *  stand-in (bin/picomdm-fake-apns --deliver-unix PATH) hands over every push
 *  it accepted, one msgpack map per datagram, all values str:
 *      {"token": <64 hex>, "topic": <apns-topic>, "mdm": <PushMagic>, "apns_id": <id>}
 *  Each push is matched to the channel whose TokenUpdate carried that Token;
 *  like a real device, a push whose topic or PushMagic is not the channel's
 *  is logged and ignored. A matching push queues one session for the channel
 *  (devsim_run_wake), which the engine's curl multi loop runs.
 */
#ifndef DEVSIM_PUSH_H
#define DEVSIM_PUSH_H

#include "devsim_dev.h"
#include "devsim_run.h"

#include <stddef.h>
#include <stdint.h>

typedef struct devsim_push devsim_push_t;

//  Binds PATH (an existing socket file there is replaced). devs: n devices,
//  borrowed; their tokens must not change while the listener lives. NULL on
//  failure with the reason in err.
devsim_push_t *devsim_push_new(const char *path, devsim_dev_t **devs, int n, devsim_run_t *run,
                               char *err, size_t errlen);
//  Closes and unlinks the socket. Safe twice.
void devsim_push_destroy(devsim_push_t **p);
//  The socket, for the engine's poll.
int devsim_push_fd(const devsim_push_t *p);
//  Read every waiting datagram (non-blocking) and wake the matching channels.
//  Signature fits devsim_run_serve's on_ready(arg).
void devsim_push_on_ready(void *p);

//  Parse one datagram (a msgpack map of str: token, topic, mdm). Fills token
//  (64 lowercase hex + NUL), topic and magic. Returns 0, or -1 if it is not
//  the stand-in's shape (exported for the unit test).
int devsim_push_parse(const uint8_t *buf, size_t len, char token[65], char *topic,
                      size_t topic_size, char *magic, size_t magic_size);

//  Counters: received, woken, ignored (unknown token, wrong topic/PushMagic,
//  malformed).
void devsim_push_counts(const devsim_push_t *p, long *received, long *woken, long *ignored);

#endif
