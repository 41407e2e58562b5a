/*  broker_getpid — getpid() without a syscall, for picomdm-broker only.
 *
 *  libzmq checks for fork() with getpid() every time it signals or polls a
 *  mailbox (signaler_t::send and ::wait): 19 getpid syscalls per request
 *  round trip in the broker with one request in flight (~1.2 µs each on
 *  this VM, 10 % of the broker's perf samples at 32 in flight), and glibc
 *  no longer caches the pid. broker_getpid.c defines getpid() for the
 *  broker's executable (and its unit tests): the definition in the
 *  executable interposes glibc's for libzmq and every other shared library.
 *  The pid is read once with the raw syscall and forgotten in the child of
 *  a fork() (pthread_atfork).
 *
 *  Only the broker: it never forks, and it has no OpenSSL random generator
 *  whose fork detection (getpid) a child made without fork handlers
 *  (_Fork, a raw clone) could fool. The gateway, store, ca and tools keep
 *  glibc's getpid. Measured: docs/bus.md ("Session 4").
 */
#ifndef BROKER_GETPID_H
#define BROKER_GETPID_H

//  The real getpid syscalls made so far (tests).
unsigned broker_getpid_syscalls(void);

#endif
