/*  pm_notify — the sd_notify datagram protocol (see pm_notify.h). */
#include "pm_notify.h"
#include "pm_log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define S_STATUS_MAX 400

static atomic_int s_warned;

//  Log the first failure only: a broken notify socket must not flood the log.
static void s_warn_once(const char *what, const char *name, int err)
{
    if (atomic_exchange(&s_warned, 1) == 0)
        pm_warn("systemd notify: %s %s: %s (check NOTIFY_SOCKET and the unit's "
                "NotifyAccess=; the process keeps running)",
                what, name, strerror(err));
}

int pm_notify_send(const char *state)
{
    const char *name = getenv("NOTIFY_SOCKET");
    if (!name || !*name)
        return 0;
    if (!state)
        return -1;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t len = strlen(name);
    //  A path, or '@' for the abstract namespace (sun_path[0] == 0, not NUL-terminated).
    if ((name[0] != '/' && name[0] != '@') || len < 2 || len >= sizeof sa.sun_path) {
        s_warn_once("unusable socket name", name, EINVAL);
        return -1;
    }
    memcpy(sa.sun_path, name, len);
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    if (name[0] == '@')
        sa.sun_path[0] = 0;
    else
        salen++; //  count the terminating NUL of a path, as systemd does

    int rc = -1;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        s_warn_once("cannot create a socket for", name, errno);
        goto out;
    }
    size_t n = strlen(state);
    ssize_t sent;
    do
        sent = sendto(fd, state, n, MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
    while (sent < 0 && errno == EINTR);
    if (sent < 0 || (size_t)sent != n) {
        s_warn_once("cannot send to", name, sent < 0 ? errno : EMSGSIZE);
        goto out;
    }
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    return rc;
}

int pm_notify_ready(void)
{
    return pm_notify_send("READY=1");
}

int pm_notify_stopping(void)
{
    return pm_notify_send("STOPPING=1");
}

int pm_notify_watchdog(void)
{
    return pm_notify_send("WATCHDOG=1");
}

int pm_notify_status(const char *fmt, ...)
{
    if (!getenv("NOTIFY_SOCKET"))
        return 0; //  skip the formatting too
    char buf[sizeof "STATUS=" + S_STATUS_MAX];
    memcpy(buf, "STATUS=", 7);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + 7, sizeof buf - 7, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    //  One assignment per line: a newline in the text would start a new one.
    for (char *p = buf + 7; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    return pm_notify_send(buf);
}

int64_t pm_notify_watchdog_ms(void)
{
    const char *usec = getenv("WATCHDOG_USEC");
    if (!usec || !*usec)
        return 0;
    const char *pid = getenv("WATCHDOG_PID");
    if (pid && *pid) {
        char *end;
        errno = 0;
        long long p = strtoll(pid, &end, 10);
        if (errno || *end || p != (long long)getpid())
            return 0; //  meant for another process (e.g. our parent)
    }
    char *end;
    errno = 0;
    unsigned long long us = strtoull(usec, &end, 10);
    if (errno || *end || us == 0)
        return 0;
    int64_t ms = (int64_t)(us / 2000); //  half the timeout, as sd_watchdog_enabled(3) advises
    return ms > 0 ? ms : 1;
}
