/*  devsim_sched_test — the open-loop arithmetic of picomdm-devsim --rate:
 *  the timetable (fixed spacing, exponential gaps of the right mean), the
 *  latency of a first request from its scheduled start (a late start is
 *  charged, an early one is not credited), later requests as round trips,
 *  the behind-schedule figure, and the achieved rate from completion times.
 */
#include "devsim_sched.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#define EPS 1e-9

static void test_timetable(void **state)
{
    (void)state;
    //  1,500 sessions/s: session i at t0 + i * 0.6667 ms; session 1,500 one second later
    assert_true(fabs(devsim_sched_at(100.0, 0, 1500) - 100.0) < EPS);
    assert_true(fabs(devsim_sched_at(100.0, 3, 1500) - (100.0 + 3000.0 / 1500)) < EPS);
    assert_true(fabs(devsim_sched_at(0.0, 1500, 1500) - 1000.0) < 1e-6);
    assert_true(fabs(devsim_sched_at(0.0, 9999, 1500) - 6666.0) < 1e-6);
    //  no drift: computed from i, not summed (10^6 steps of 1 / 3 ms)
    assert_true(fabs(devsim_sched_at(0.0, 1000000, 3000) - 333333.3333333) < 1e-3);
    //  no rate or a negative index: the start itself
    assert_true(fabs(devsim_sched_at(5.0, 10, 0) - 5.0) < EPS);
    assert_true(fabs(devsim_sched_at(5.0, -1, 100) - 5.0) < EPS);
    //  gaps: fixed = 1 / rate whatever u; no rate = 0
    assert_true(fabs(devsim_sched_gap_ms(100, false, 0.9) - 10.0) < EPS);
    assert_true(devsim_sched_gap_ms(0, true, 0.5) == 0);
    assert_true(devsim_sched_gap_ms(-3, false, 0.5) == 0);
}

static void test_jitter(void **state)
{
    (void)state;
    //  exponential gaps: u = 0 -> 0, u = 1 - 1/e -> the mean, never negative or infinite
    assert_true(fabs(devsim_sched_gap_ms(1000, true, 0.0)) < EPS);
    assert_true(fabs(devsim_sched_gap_ms(1000, true, 1.0 - exp(-1.0)) - 1.0) < 1e-9);
    assert_true(isfinite(devsim_sched_gap_ms(1000, true, 1.0)));
    assert_true(devsim_sched_gap_ms(1000, true, -0.5) >= 0);
    //  100,000 draws: uniform in [0, 1), mean of the gaps = 1 / rate (within 2 %)
    uint64_t rs = 42;
    double sum = 0, umin = 1, umax = 0;
    const int n = 100000;
    for (int i = 0; i < n; i++) {
        double u = devsim_sched_uniform(&rs);
        umin = u < umin ? u : umin;
        umax = u > umax ? u : umax;
        sum += devsim_sched_gap_ms(1500, true, u);
    }
    assert_true(umin >= 0 && umax < 1);
    assert_true(umin < 0.001 && umax > 0.999);
    double mean = sum / n;
    assert_true(fabs(mean - 1000.0 / 1500) < 0.02 * 1000.0 / 1500);
    //  a zero state still moves
    uint64_t z = 0;
    double a = devsim_sched_uniform(&z), b = devsim_sched_uniform(&z);
    assert_true(a != b);
}

static void test_latency(void **state)
{
    (void)state;
    //  on time: a first request sent at its schedule is its round trip
    assert_true(fabs(devsim_sched_latency(105.0, 100.0, 100.0, true) - 5.0) < EPS);
    //  sent 40 ms late (simulator or slots behind): charged from the schedule
    assert_true(fabs(devsim_sched_latency(145.0, 140.0, 100.0, true) - 45.0) < EPS);
    //  the same request when it is not the session's first: its round trip only
    assert_true(fabs(devsim_sched_latency(145.0, 140.0, 100.0, false) - 5.0) < EPS);
    //  closed loop (no schedule, -1): round trip
    assert_true(fabs(devsim_sched_latency(145.0, 140.0, -1.0, true) - 5.0) < EPS);
    //  sent before its schedule (cannot happen, but): no credit, the round trip
    assert_true(fabs(devsim_sched_latency(145.0, 140.0, 142.0, true) - 5.0) < EPS);
    //  never negative
    assert_true(devsim_sched_latency(100.0, 101.0, 50.0, false) == 0);
}

static void test_behind(void **state)
{
    (void)state;
    assert_true(fabs(devsim_sched_behind(130.5, 100.0) - 30.5) < EPS);
    assert_true(devsim_sched_behind(100.0, 100.0) == 0);
    assert_true(devsim_sched_behind(99.0, 100.0) == 0); //  early is on time
    //  a run that falls behind: session i of 1,000/s started when the
    //  previous reply came, 2 ms per session -> lag grows by 1 ms per session
    double start = 0, lag = 0;
    for (long i = 0; i < 100; i++) {
        double sched = devsim_sched_at(0.0, i, 1000);
        if (start < sched)
            start = sched;
        lag = devsim_sched_behind(start, sched);
        start += 2.0;
    }
    assert_true(fabs(lag - 99.0) < 1e-6);
}

static void test_rate(void **state)
{
    (void)state;
    double t[1000];
    //  1,000 jobs due every 2 ms, each done 5 ms after: 500/s exactly
    for (int i = 0; i < 1000; i++)
        t[i] = 100.0 + 2.0 * i + 5.0;
    assert_true(fabs(devsim_sched_rate(t, 1000) - 500.0) < 1e-6);
    //  one very slow first and last job do not move it (trimmed)
    t[0] = 104.0 - 300.0;
    t[999] = t[998] + 900.0;
    assert_true(fabs(devsim_sched_rate(t, 1000) - 500.0) < 1e-6);
    //  a server that falls behind: done every 3 ms whatever the schedule
    for (int i = 0; i < 1000; i++)
        t[i] = 3.0 * i;
    assert_true(fabs(devsim_sched_rate(t, 1000) - 1000.0 / 3) < 1e-6);
    //  small n: first to last, untrimmed; degenerate inputs: 0
    double s3[3] = {0, 10, 20};
    assert_true(fabs(devsim_sched_rate(s3, 3) - 100.0) < 1e-9);
    assert_true(devsim_sched_rate(s3, 1) == 0);
    assert_true(devsim_sched_rate(NULL, 5) == 0);
    double same[2] = {7, 7};
    assert_true(devsim_sched_rate(same, 2) == 0);
}

//  --rate-slack-ms: how long the loop may sleep before a start due later
static void test_wait(void **state)
{
    (void)state;
    //  due in 0.4 ms, no slack: wake exactly then
    assert_true(fabs(devsim_sched_wait_ms(100.0, 100.4, 0) - 0.4) < EPS);
    //  a slack of 0.5 ms: sleep until 0.9 ms (a reply that wakes the loop
    //  from 100.4 on starts it then)
    assert_true(fabs(devsim_sched_wait_ms(100.0, 100.4, 0.5) - 0.9) < EPS);
    //  due now or past: no wait, whatever the slack (never a start later than due + slack)
    assert_true(devsim_sched_wait_ms(100.4, 100.4, 0.5) == 0);
    assert_true(devsim_sched_wait_ms(101.0, 100.4, 0.5) == 0);
    assert_true(devsim_sched_wait_ms(101.0, 100.4, 0) == 0);
    //  a negative slack counts as none
    assert_true(fabs(devsim_sched_wait_ms(100.0, 102.0, -3) - 2.0) < EPS);
    //  the lateness a slack can cause is charged: a start at due + slack is
    //  that far behind, and its first request is timed from due
    double due = 100.4, start = due + 0.5;
    assert_true(fabs(devsim_sched_behind(start, due) - 0.5) < EPS);
    assert_true(fabs(devsim_sched_latency(start + 3.0, start, due, true) - 3.5) < EPS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timetable), cmocka_unit_test(test_jitter),
        cmocka_unit_test(test_latency),   cmocka_unit_test(test_behind),
        cmocka_unit_test(test_rate),      cmocka_unit_test(test_wait),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
