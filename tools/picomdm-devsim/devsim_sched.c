/*  devsim_sched — open-loop schedule and latency bookkeeping (see devsim_sched.h). */
#include "devsim_sched.h"

#include <math.h>

double devsim_sched_gap_ms(double rate, bool jitter, double u)
{
    if (!(rate > 0))
        return 0;
    double mean = 1000.0 / rate;
    if (!jitter)
        return mean;
    if (u < 0)
        u = 0;
    if (u >= 1)
        u = 0.999999999;
    return -log1p(-u) * mean; //  inverse CDF of the exponential distribution
}

double devsim_sched_at(double t0_ms, long i, double rate)
{
    if (!(rate > 0) || i <= 0)
        return t0_ms;
    return t0_ms + (double)i * 1000.0 / rate;
}

double devsim_sched_latency(double reply_ms, double sent_ms, double sched_ms, bool first)
{
    double from = first && sched_ms >= 0 && sched_ms < sent_ms ? sched_ms : sent_ms;
    double ms = reply_ms - from;
    return ms > 0 ? ms : 0;
}

double devsim_sched_wait_ms(double now_ms, double due_ms, double slack_ms)
{
    if (due_ms <= now_ms)
        return 0;
    return due_ms - now_ms + (slack_ms > 0 ? slack_ms : 0);
}

double devsim_sched_behind(double start_ms, double sched_ms)
{
    double d = start_ms - sched_ms;
    return d > 0 ? d : 0;
}

double devsim_sched_rate(const double *done_ms, size_t n)
{
    if (!done_ms || n < 2)
        return 0;
    size_t k = n >= 200 ? n / 100 : 0;
    double span = done_ms[n - 1 - k] - done_ms[k];
    return span > 0 ? (double)(n - 1 - 2 * k) / span * 1e3 : 0;
}

double devsim_sched_uniform(uint64_t *state)
{
    uint64_t x = *state ? *state : 0x9E3779B97F4A7C15ULL;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return (double)((x * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0; //  53 bits / 2^53
}
