/*  pm_getpid unit test: getpid() is one syscall, then the cached pid;
 *  shared libraries (libzmq) bind to it; the child of a fork() gets its own
 *  pid, and so does the child of a raw fork syscall that runs no atfork
 *  handler (the MADV_WIPEONFORK page).
 */
#include "pm_getpid.h"

#include <dlfcn.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void s_expect_child_ok(pid_t child)
{
    assert_true(child > 0);
    int status = 0;
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_getpid_cached(void **state)
{
    (void)state;
    pm_getpid_init();
    pid_t real = (pid_t)syscall(SYS_getpid);
    assert_int_equal(getpid(), real);
    //  ours, and the one shared libraries (libzmq) bind to
    assert_true(pm_getpid_syscalls() >= 1);
    void *bound = dlsym(RTLD_DEFAULT, "getpid");
    assert_true(bound == (void *)getpid);
    unsigned before = pm_getpid_syscalls();
    for (int i = 0; i < 1000; i++)
        assert_int_equal(getpid(), real);
    assert_int_equal(pm_getpid_syscalls(), before);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        pid_t mine = (pid_t)syscall(SYS_getpid);
        _exit(getpid() == mine && mine != real ? 0 : 1);
    }
    s_expect_child_ok(child);
    assert_int_equal(getpid(), real); //  the parent keeps its own
    assert_int_equal(pm_getpid_syscalls(), before);
}

static void test_getpid_raw_fork(void **state)
{
    (void)state;
    pid_t real = getpid();
    //  no atfork handler runs: only the wiped page tells the child
    //  (clone with only SIGCHLD and no new stack is fork; SYS_fork does not
    //  exist on arm64 or riscv64)
    long child = syscall(SYS_clone, (long)SIGCHLD, 0L, 0L, 0L, 0L);
    assert_true(child >= 0);
    if (child == 0) {
        pid_t mine = (pid_t)syscall(SYS_getpid);
        _exit(getpid() == mine && mine != real && getpid() == mine ? 0 : 1);
    }
    s_expect_child_ok((pid_t)child);
    assert_int_equal(getpid(), real);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_getpid_cached),
        cmocka_unit_test(test_getpid_raw_fork),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
