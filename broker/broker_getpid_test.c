/*  broker_getpid unit test: getpid() in the broker is one syscall, then the
 *  cached pid; shared libraries (libzmq) bind to it; the child of a fork()
 *  gets its own pid.
 */
#include "broker_getpid.h"

#include <dlfcn.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void test_getpid_cached(void **state)
{
    (void)state;
    pid_t real = (pid_t)syscall(SYS_getpid);
    assert_int_equal(getpid(), real);
    //  ours, and the one shared libraries (libzmq) bind to
    assert_true(broker_getpid_syscalls() >= 1);
    void *bound = dlsym(RTLD_DEFAULT, "getpid");
    assert_true(bound == (void *)getpid);
    unsigned before = broker_getpid_syscalls();
    for (int i = 0; i < 1000; i++)
        assert_int_equal(getpid(), real);
    assert_int_equal(broker_getpid_syscalls(), before);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        pid_t mine = (pid_t)syscall(SYS_getpid);
        _exit(getpid() == mine && mine != real ? 0 : 1);
    }
    int status = 0;
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(getpid(), real); //  the parent keeps its own
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_getpid_cached),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
