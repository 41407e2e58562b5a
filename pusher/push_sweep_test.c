/*  push_sweep unit tests: a device that never answers is pushed by the
 *  sweep at growing intervals (period, period, 2x, 4x ... capped), and the
 *  backoff starts over after activity; no backoff when disabled.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "push_sweep.h"

#define S 1000 //  sweep period (ms)

//  Simulate sweeps every S for `span` ms after a command queued at 0 and
//  pushed at 10; pushes land 10 ms after their sweep. Returns the number of
//  pushes and their times in at[].
static int s_simulate(int64_t max_ms, int64_t span, int64_t *at, int nat)
{
    int n = 0;
    int64_t last = 10, activity = 0;
    at[n++] = last;
    for (int64_t t = S / 3; t <= span; t += S)
        if (push_sweep_due(t, last, activity, S, max_ms)) {
            last = t + 10;
            if (n < nat)
                at[n] = last;
            n++;
        }
    return n;
}

static void test_growing_intervals(void **state)
{
    (void)state;
    int64_t at[64];
    //  over 40 periods with a cap of 8 periods: 0, then gaps S, S, 2S, 4S, 8S, 8S, 8S ...
    int n = s_simulate(8 * S, 40 * S, at, 64);
    assert_true(n >= 7 && n <= 9);
    for (int i = 2; i < n && i < 64; i++) {
        int64_t gap = at[i] - at[i - 1], prev = at[i - 1] - at[i - 2];
        assert_true(gap >= prev - S / 2);  //  never shrinks
        assert_true(gap <= 8 * S + S / 2); //  capped
    }
    assert_true(at[n - 1] - at[n - 2] >= 7 * S); //  reached the cap
    //  without a cap on the sweep (backoff disabled) every sweep pushes
    assert_int_equal(s_simulate(0, 40 * S, at, 64), 41);
}

static void test_reset_and_edges(void **state)
{
    (void)state;
    //  never pushed: due
    assert_true(push_sweep_due(5000, 0, 100, S, 8 * S));
    //  activity (connect, check-in, new command) after the last push: due at once
    assert_true(push_sweep_due(100000 + 1, 100000, 100000, S, 8 * S));
    assert_true(push_sweep_due(100000 + 1, 100000, 100001, S, 8 * S));
    //  long silent: the wait is capped
    assert_int_equal(push_sweep_wait_ms(1000000, 0, S, 8 * S), 8 * S);
    assert_false(push_sweep_due(1000000 + 7 * S, 1000000, 0, S, 8 * S));
    assert_true(push_sweep_due(1000000 + 8 * S, 1000000, 0, S, 8 * S));
    //  just after a reset the wait is one period
    assert_int_equal(push_sweep_wait_ms(1010, 1000, S, 8 * S), S);
    assert_false(push_sweep_due(1010 + S / 4, 1010, 1000, S, 8 * S));
    assert_true(push_sweep_due(1010 + S - 20, 1010, 1000, S, 8 * S)); //  half-period slack
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_growing_intervals),
        cmocka_unit_test(test_reset_and_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
