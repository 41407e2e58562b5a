/*  devsim_sched — the open-loop arithmetic of `picomdm-devsim --rate`
 *  (pure functions, no I/O): when session i is due, the latency of a
 *  request measured from its session's scheduled start, and how far behind
 *  schedule a start was.
 *
 *  Open loop (like wrk2): sessions are started on a timetable fixed in
 *  advance (t0 + i / rate, or exponential gaps with --rate-jitter), not when
 *  an earlier one ends. The first request of a session is timed from its
 *  *scheduled* start, so a server (or simulator) that falls behind is
 *  charged for the wait: no coordinated omission. Every later request of
 *  the session (sent when the previous reply arrives, as a device does) is
 *  its own round trip.
 *
 *  Times are milliseconds on one monotonic clock. Nothing is allocated.
 */
#ifndef DEVSIM_SCHED_H
#define DEVSIM_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

//  Gap before the next session, ms: 1000 / rate, or with jitter an
//  exponential draw of that mean (Poisson arrivals). u is uniform in [0, 1)
//  (ignored without jitter). rate <= 0: 0 (no schedule).
double devsim_sched_gap_ms(double rate, bool jitter, double u);

//  Scheduled start of session i (0-based) with fixed spacing: t0 + i / rate.
double devsim_sched_at(double t0_ms, long i, double rate);

//  Latency of a request that got its reply at reply_ms: from the session's
//  scheduled start for the session's first request (first = true), else
//  from when it was sent. sched_ms < 0: no schedule (closed loop), the
//  round trip. Never negative.
double devsim_sched_latency(double reply_ms, double sent_ms, double sched_ms, bool first);

//  How long the event loop may wait (ms) before starting a session due at
//  due_ms: until due_ms + slack_ms (a reply that wakes it sooner, from
//  due_ms on, starts the session then). 0 when due_ms <= now_ms (start now).
//  A slack lets starts ride on the wake-ups replies cause, instead of one
//  wake-up of their own each; the lateness is charged to the figures.
double devsim_sched_wait_ms(double now_ms, double due_ms, double slack_ms);

//  How far behind schedule a session started (0 if on time or early).
double devsim_sched_behind(double start_ms, double sched_ms);

//  The rate (per second) at which jobs completed, from their completion
//  times (ms, ascending, n of them): jobs per second between the first and
//  the last completion, with the first and last 1 % left out when n >= 200
//  (one slow job at either end would stretch or shrink the span). A server
//  that keeps up completes them at the offered rate; the phase's whole time
//  would also count the last job's own latency. 0 if n < 2 or no span.
double devsim_sched_rate(const double *done_ms, size_t n);

//  Uniform double in [0, 1) from a 64-bit state (xorshift64*; state != 0).
double devsim_sched_uniform(uint64_t *state);

#endif
