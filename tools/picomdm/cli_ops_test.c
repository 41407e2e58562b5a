/*  cli_ops_test — the parts of the bus subcommands that need no bus:
 *  --ttl durations. (The requests themselves: tests/it/cli_enqueue.sh.) */
#include "cli_ops.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static void test_duration(void **state)
{
    (void)state;
    assert_int_equal(cli_parse_duration("90"), 90);
    assert_int_equal(cli_parse_duration("90s"), 90);
    assert_int_equal(cli_parse_duration("30m"), 1800);
    assert_int_equal(cli_parse_duration("1h"), 3600);
    assert_int_equal(cli_parse_duration("2d"), 172800);
    assert_int_equal(cli_parse_duration("1w"), 604800);
    assert_int_equal(cli_parse_duration("0"), 0);
    assert_int_equal(cli_parse_duration(""), -1);
    assert_int_equal(cli_parse_duration(NULL), -1);
    assert_int_equal(cli_parse_duration("soon"), -1);
    assert_int_equal(cli_parse_duration("1hour"), -1);
    assert_int_equal(cli_parse_duration("-5m"), -1);
    assert_int_equal(cli_parse_duration("99999999999999d"), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_duration)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
