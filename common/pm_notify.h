/*  pm_notify — tell systemd (or any supervisor speaking the same protocol) how
 *  a PicoMDM process is doing, without linking libsystemd.
 *
 *  The sd_notify protocol: one datagram of newline-separated VAR=value lines
 *  sent to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or an abstract
 *  socket when the name starts with '@'). systemd documents the protocol as a
 *  stable interface (sd_notify(3), "Notes"). Used by every daemon's main.c:
 *
 *      pm_notify_ready()     after the bus is connected and the process serves
 *                            (Type=notify units wait for this before "started")
 *      pm_notify_status()    free-text state shown by `systemctl status`
 *      pm_notify_watchdog()  keep-alive, at least every pm_notify_watchdog_ms()
 *      pm_notify_stopping()  first thing after SIGTERM/SIGINT is seen
 *
 *  Every function is a no-op returning 0 when $NOTIFY_SOCKET is unset (the
 *  process runs by hand, under `picomdm up`, or in a test). They return -1 if
 *  the variable is set but unusable or the send fails; the first such failure
 *  is logged (pm_warn) and later ones are not, so callers may ignore the result.
 *  Nothing here allocates; safe to call from any thread (not from a signal
 *  handler: the formatting is not async-signal-safe).
 */
#ifndef PM_NOTIFY_H
#define PM_NOTIFY_H

#include <stdint.h>

//  Send raw assignments ("READY=1\nSTATUS=serving"). Lines are sent as given.
int pm_notify_send(const char *state);

//  READY=1: start-up finished, the process now serves.
int pm_notify_ready(void);

//  STOPPING=1: shutdown has begun.
int pm_notify_stopping(void);

//  STATUS=<text>: one line (newlines in the text become spaces; at most 400 bytes).
int pm_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

//  WATCHDOG=1: the main loop is alive.
int pm_notify_watchdog(void);

//  How often to call pm_notify_watchdog(), in milliseconds: half of
//  $WATCHDOG_USEC when that is set for this process ($WATCHDOG_PID unset or our
//  pid), else 0 (no watchdog wanted: do not send).
int64_t pm_notify_watchdog_ms(void);

#endif
