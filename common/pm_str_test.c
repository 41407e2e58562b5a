/*  pm_str unit tests: the copies against snprintf, truncation, NULL. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "pm_str.h"

#include <stdio.h>

static void test_copy_join(void **state)
{
    (void)state;
    char b[8], ref[8];
    assert_string_equal(pm_str_copy(b, sizeof b, "abc", PM_STR_ALL), "abc");
    assert_string_equal(pm_str_copy(b, sizeof b, "abcdefghij", PM_STR_ALL), "abcdefg");
    assert_string_equal(pm_str_copy(b, sizeof b, "abcdef", 3), "abc");  //  n bytes
    assert_string_equal(pm_str_copy(b, sizeof b, "ab\0cdef", 6), "ab"); //  stops at a NUL
    assert_string_equal(pm_str_copy(b, sizeof b, NULL, PM_STR_ALL), "");
    assert_string_equal(pm_str_copy(b, 1, "abc", PM_STR_ALL), "");
    const char *a[] = {"", "a", "abc", "abcdef", "abcdefgh"};
    for (size_t i = 0; i < 5; i++)
        for (size_t j = 0; j < 5; j++) {
            snprintf(ref, sizeof ref, "%s.%s", a[i], a[j]);
            assert_string_equal(pm_str_join(b, sizeof b, a[i], '.', a[j]), ref);
            snprintf(ref, sizeof ref, "%s%s", a[i], a[j]);
            assert_string_equal(pm_str_join(b, sizeof b, a[i], 0, a[j]), ref);
        }
    assert_string_equal(pm_str_join(b, sizeof b, NULL, '.', "x"), ".x");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copy_join),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
