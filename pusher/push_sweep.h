/*  push_sweep — the wake sweep's per-enrollment backoff (bin/picomdm-pusher).
 *
 *  The scheduler's wake sweep re-sends wakes for enrollments that got
 *  commands and have not connected since (wake {eids, sweep_s,
 *  backoff_max_s}). A device that never answers must not be pushed on every
 *  sweep for ever: its sweep pushes back off exponentially, about sweep_s,
 *  sweep_s, 2x, 4x ... up to backoff_max_s, and start over when the device
 *  checks in or connects, or a new command is queued for it.
 *
 *  Nothing is kept for it: the backoff is derived from two times the store
 *  already has (push.info: last_push = the last recorded push outcome,
 *  last_activity = the later of the last check-in/connect and the newest
 *  active command), so restarting any process does not reset it to a storm.
 *  The wait after a push is the time the enrollment had already waited since
 *  its last activity (the doubling), at least sweep_s, at most backoff_max_s.
 *  Half a sweep period of slack keeps a push that landed a little after its
 *  sweep from slipping to the next one.
 */
#ifndef PUSH_SWEEP_H
#define PUSH_SWEEP_H

#include <stdbool.h>
#include <stdint.h>

//  Whether a sweep may push now. Times in ms; last_push_ms 0 = never pushed.
//  sweep_ms <= 0 or max_ms <= 0: always (no backoff).
bool push_sweep_due(int64_t now_ms, int64_t last_push_ms, int64_t last_activity_ms,
                    int64_t sweep_ms, int64_t max_ms);

//  The wait the rule applies after last_push (for logs and tests).
int64_t push_sweep_wait_ms(int64_t last_push_ms, int64_t last_activity_ms, int64_t sweep_ms,
                           int64_t max_ms);

#endif
