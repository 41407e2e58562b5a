/*  pm_notify unit tests: a temporary datagram socket (path and abstract)
 *  stands in for systemd and receives what the process would announce.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "pm_notify.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

typedef struct {
    int fd;
    char dir[64];
    char path[108];
} s_listener_t;

//  Bind a datagram socket; abstract when `abstract`, else a path in a temp dir.
//  Sets NOTIFY_SOCKET to its name, as systemd would.
static void s_listen(s_listener_t *l, int abstract)
{
    memset(l, 0, sizeof *l);
    l->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(l->fd >= 0);
    struct timeval tv = {2, 0}; //  a missing datagram fails the test instead of hanging it
    assert_int_equal(setsockopt(l->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    socklen_t salen;
    if (abstract) {
        snprintf(l->path, sizeof l->path, "@pm_notify_test.%ld", (long)getpid());
        size_t n = strlen(l->path);
        memcpy(sa.sun_path, l->path, n);
        sa.sun_path[0] = 0;
        salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    } else {
        snprintf(l->dir, sizeof l->dir, "/tmp/pm_notify_test.XXXXXX");
        assert_non_null(mkdtemp(l->dir));
        snprintf(l->path, sizeof l->path, "%s/notify", l->dir);
        memcpy(sa.sun_path, l->path, strlen(l->path) + 1);
        salen = (socklen_t)sizeof sa;
    }
    assert_int_equal(bind(l->fd, (struct sockaddr *)&sa, salen), 0);
    assert_int_equal(setenv("NOTIFY_SOCKET", l->path, 1), 0);
}

static void s_close(s_listener_t *l)
{
    close(l->fd);
    if (l->dir[0]) {
        unlink(l->path);
        rmdir(l->dir);
    }
    unsetenv("NOTIFY_SOCKET");
}

//  Receive one datagram as a string.
static void s_recv(s_listener_t *l, char *buf, size_t size)
{
    ssize_t n = recv(l->fd, buf, size - 1, 0);
    assert_true(n >= 0);
    buf[n] = 0;
}

static void test_ready_path(void **state)
{
    (void)state;
    s_listener_t l;
    s_listen(&l, 0);
    char buf[512];
    assert_int_equal(pm_notify_ready(), 0);
    s_recv(&l, buf, sizeof buf);
    assert_string_equal(buf, "READY=1");
    assert_int_equal(pm_notify_watchdog(), 0);
    s_recv(&l, buf, sizeof buf);
    assert_string_equal(buf, "WATCHDOG=1");
    assert_int_equal(pm_notify_stopping(), 0);
    s_recv(&l, buf, sizeof buf);
    assert_string_equal(buf, "STOPPING=1");
    s_close(&l);
}

static void test_ready_abstract(void **state)
{
    (void)state;
    s_listener_t l;
    s_listen(&l, 1);
    char buf[512];
    assert_int_equal(pm_notify_ready(), 0);
    s_recv(&l, buf, sizeof buf);
    assert_string_equal(buf, "READY=1");
    s_close(&l);
}

static void test_status(void **state)
{
    (void)state;
    s_listener_t l;
    s_listen(&l, 0);
    char buf[1024];
    assert_int_equal(pm_notify_status("serving %d workers", 3), 0);
    s_recv(&l, buf, sizeof buf);
    assert_string_equal(buf, "STATUS=serving 3 workers");
    //  a newline must not smuggle in a second assignment
    assert_int_equal(pm_notify_status("bad\nREADY=1"), 0);
    s_recv(&l, buf, sizeof buf);
    assert_string_equal(buf, "STATUS=bad READY=1");
    //  long text is cut, not overflowed
    char big[2000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    assert_int_equal(pm_notify_status("%s", big), 0);
    s_recv(&l, buf, sizeof buf);
    assert_int_equal(strncmp(buf, "STATUS=xxx", 10), 0);
    assert_int_equal(strlen(buf), 7 + 400);
    //  raw multi-line state, as systemd accepts it
    assert_int_equal(pm_notify_send("READY=1\nSTATUS=up"), 0);
    s_recv(&l, buf, sizeof buf);
    assert_string_equal(buf, "READY=1\nSTATUS=up");
    s_close(&l);
}

static void test_unset_is_noop(void **state)
{
    (void)state;
    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(pm_notify_ready(), 0);
    assert_int_equal(pm_notify_status("x %d", 1), 0);
    assert_int_equal(pm_notify_watchdog(), 0);
    assert_int_equal(pm_notify_stopping(), 0);
    setenv("NOTIFY_SOCKET", "", 1);
    assert_int_equal(pm_notify_ready(), 0);
    unsetenv("NOTIFY_SOCKET");
}

static void test_bad_socket(void **state)
{
    (void)state;
    setenv("NOTIFY_SOCKET", "relative/path", 1);
    assert_int_equal(pm_notify_ready(), -1);
    setenv("NOTIFY_SOCKET", "@", 1);
    assert_int_equal(pm_notify_ready(), -1);
    char longname[200];
    memset(longname, 'a', sizeof longname - 1);
    longname[0] = '/';
    longname[sizeof longname - 1] = 0;
    setenv("NOTIFY_SOCKET", longname, 1);
    assert_int_equal(pm_notify_ready(), -1);
    //  nobody listening there
    setenv("NOTIFY_SOCKET", "/nonexistent/pm_notify_test/notify", 1);
    assert_int_equal(pm_notify_ready(), -1);
    assert_int_equal(pm_notify_send(NULL), -1);
    unsetenv("NOTIFY_SOCKET");
}

static void test_watchdog_interval(void **state)
{
    (void)state;
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    assert_int_equal(pm_notify_watchdog_ms(), 0);
    setenv("WATCHDOG_USEC", "20000000", 1);
    assert_int_equal(pm_notify_watchdog_ms(), 10000);
    char pid[32];
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(pm_notify_watchdog_ms(), 10000);
    snprintf(pid, sizeof pid, "%ld", (long)getpid() + 1);
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(pm_notify_watchdog_ms(), 0);
    unsetenv("WATCHDOG_PID");
    setenv("WATCHDOG_USEC", "garbage", 1);
    assert_int_equal(pm_notify_watchdog_ms(), 0);
    setenv("WATCHDOG_USEC", "1", 1);
    assert_int_equal(pm_notify_watchdog_ms(), 1);
    unsetenv("WATCHDOG_USEC");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ready_path), cmocka_unit_test(test_ready_abstract),
        cmocka_unit_test(test_status),     cmocka_unit_test(test_unset_is_noop),
        cmocka_unit_test(test_bad_socket), cmocka_unit_test(test_watchdog_interval),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
