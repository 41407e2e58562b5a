/*  push_stdin — the pusher driven from standard input instead of the bus
 *  (`picomdm-pusher --stdin`): for tests, benchmarks and pushing one device by
 *  hand. Each input line is one command:
 *      wake <eid> <token hex> <PushMagic> [topic]
 *      stats
 *  and every outcome is printed to stdout as one JSON object per line:
 *      {"event":"push.sent","eid":"...","status":200,"reason":"","topic":"...",
 *       "attempts":1,"apns_id":"..."}
 *  (push.failed, push.stale with "stale_since", push.cert_problem alike).
 *  At end of input it waits for every pending push, prints a final
 *  {"event":"push.summary",...} line (counts, elapsed ms from the first wake
 *  to the last outcome) and returns.
 */
#ifndef PUSH_STDIN_H
#define PUSH_STDIN_H

#include "push_apns.h"

#include <stdio.h>

//  The event callback for push_apns_new: prints the JSON line. arg = FILE*.
void push_stdin_print(void *arg, const push_result_t *r);

//  Called once per loop turn; lets main reload the certificate on SIGHUP.
typedef void(push_stdin_tick_fn)(void *arg, push_apns_t *apns);

//  Run until end of input and no pending push (or interrupted). 0 / -1.
int push_stdin_run(push_apns_t *apns, int fd, FILE *out, push_stdin_tick_fn *tick, void *arg);

#endif
