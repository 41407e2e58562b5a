/*  push_sweep — the wake sweep's per-enrollment backoff. See push_sweep.h.
 */
#include "push_sweep.h"

int64_t push_sweep_wait_ms(int64_t last_push_ms, int64_t last_activity_ms, int64_t sweep_ms,
                           int64_t max_ms)
{
    int64_t w = last_push_ms - last_activity_ms;
    if (w < sweep_ms)
        w = sweep_ms;
    if (max_ms > 0 && w > max_ms)
        w = max_ms;
    return w;
}

bool push_sweep_due(int64_t now_ms, int64_t last_push_ms, int64_t last_activity_ms,
                    int64_t sweep_ms, int64_t max_ms)
{
    if (sweep_ms <= 0 || max_ms <= 0 || last_push_ms <= 0)
        return true;
    if (last_activity_ms >= last_push_ms)
        return true; //  checked in, connected or got a new command since: start over
    int64_t wait = push_sweep_wait_ms(last_push_ms, last_activity_ms, sweep_ms, max_ms);
    return now_ms - last_push_ms + sweep_ms / 2 >= wait;
}
