/*  pm_cfg unit tests: precedence (default < file < env < argv), types, --help. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "pm_cfg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const pm_opt_t s_opts[] = {{"endpoint", PM_OPT_STR, "ipc://x", "where"},
                                  {"workers", PM_OPT_INT, "4", "how many"},
                                  {"lab-mode", PM_OPT_BOOL, "false", "unsigned requests"},
                                  {NULL, 0, NULL, NULL}};

static pm_cfg_result_t s_parse(pm_cfg_t **cfg, int argc, const char **argv)
{
    return pm_cfg_parse(cfg, "testproc", "a test", s_opts, argc, (char **)argv);
}

static void test_defaults(void **state)
{
    (void)state;
    pm_cfg_t *cfg;
    const char *argv[] = {"p"};
    assert_int_equal(s_parse(&cfg, 1, argv), PM_CFG_RUN);
    assert_string_equal(pm_cfg_str(cfg, "endpoint"), "ipc://x");
    assert_int_equal(pm_cfg_int(cfg, "workers"), 4);
    assert_false(pm_cfg_bool(cfg, "lab-mode"));
    pm_cfg_destroy(&cfg);
    assert_null(cfg);
    pm_cfg_destroy(&cfg); //  safe twice
}

//  pm_cfg_int_in: inside the range gives the value, outside (either side) -1
static void test_int_in(void **state)
{
    (void)state;
    pm_cfg_t *cfg;
    const char *argv[] = {"p", "--workers", "7"};
    assert_int_equal(s_parse(&cfg, 3, argv), PM_CFG_RUN);
    int v = -1;
    assert_int_equal(pm_cfg_int_in(cfg, "workers", 1, 7, &v), 0);
    assert_int_equal(v, 7);
    v = -1;
    assert_int_equal(pm_cfg_int_in(cfg, "workers", 8, 100, &v), -1);
    assert_int_equal(pm_cfg_int_in(cfg, "workers", 0, 6, &v), -1);
    assert_int_equal(v, -1); //  untouched on error
    pm_cfg_destroy(&cfg);
}

static void test_precedence(void **state)
{
    (void)state;
    char path[] = "/tmp/pm_cfg_testXXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *zpl = "workers = 7\ntestproc\n    endpoint = \"tcp://file\"\n";
    assert_int_equal(write(fd, zpl, strlen(zpl)), (ssize_t)strlen(zpl));
    close(fd);
    setenv("PICOMDM_WORKERS", "9", 1);
    pm_cfg_t *cfg;
    const char *argv[] = {"p", "--config", path, "--lab-mode", "extra", "--log-level=debug"};
    assert_int_equal(s_parse(&cfg, 6, argv), PM_CFG_RUN);
    assert_string_equal(pm_cfg_str(cfg, "endpoint"), "tcp://file"); //  section wins
    assert_int_equal(pm_cfg_int(cfg, "workers"), 9);                //  env over file
    assert_true(pm_cfg_bool(cfg, "lab-mode"));                      //  argv
    assert_int_equal(pm_cfg_argc(cfg), 1);
    assert_string_equal(pm_cfg_arg(cfg, 0), "extra");
    assert_string_equal(pm_cfg_str(cfg, "log-level"), "debug");
    pm_cfg_destroy(&cfg);
    const char *argv2[] = {"p", "--workers", "2", "--no-lab-mode"};
    assert_int_equal(s_parse(&cfg, 4, argv2), PM_CFG_RUN);
    assert_int_equal(pm_cfg_int(cfg, "workers"), 2); //  argv over env
    assert_false(pm_cfg_bool(cfg, "lab-mode"));
    pm_cfg_destroy(&cfg);
    unsetenv("PICOMDM_WORKERS");
    unlink(path);
}

static void test_errors(void **state)
{
    (void)state;
    pm_cfg_t *cfg;
    const char *a1[] = {"p", "--workers", "lots"};
    assert_int_equal(s_parse(&cfg, 3, a1), PM_CFG_ERROR);
    assert_null(cfg);
    const char *a2[] = {"p", "--nope"};
    assert_int_equal(s_parse(&cfg, 2, a2), PM_CFG_ERROR);
    const char *a3[] = {"p", "--endpoint"};
    assert_int_equal(s_parse(&cfg, 2, a3), PM_CFG_ERROR);
    const char *a4[] = {"p", "--config", "/nonexistent/file.cfg"};
    assert_int_equal(s_parse(&cfg, 3, a4), PM_CFG_ERROR);
    const char *a5[] = {"p", "--log-level", "loud"};
    assert_int_equal(s_parse(&cfg, 3, a5), PM_CFG_ERROR);
    const char *a6[] = {"p", "--version"};
    assert_int_equal(s_parse(&cfg, 2, a6), PM_CFG_EXIT);
    //  a boolean option followed by a separate value: refused, not ignored
    const char *a8[] = {"p", "--lab-mode", "false"};
    assert_int_equal(s_parse(&cfg, 3, a8), PM_CFG_ERROR);
    const char *a9[] = {"p", "--no-lab-mode", "1"};
    assert_int_equal(s_parse(&cfg, 3, a9), PM_CFG_ERROR);
    const char *a10[] = {"p", "--lab-mode=false"};
    assert_int_equal(s_parse(&cfg, 2, a10), PM_CFG_RUN);
    assert_false(pm_cfg_bool(cfg, "lab-mode"));
    pm_cfg_destroy(&cfg);
    const char *a7[] = {"p", "--check"};
    assert_int_equal(s_parse(&cfg, 2, a7), PM_CFG_CHECK);
    pm_cfg_destroy(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_int_in),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
