/*  pm_getpid — getpid() without a syscall, for every PicoMDM process.
 *
 *  libzmq checks for fork() with getpid() every time it signals or polls a
 *  mailbox (signaler_t::send and ::wait): ~1 getpid syscall per zmq call,
 *  19 per request round trip in the broker with one request in flight
 *  (~1 µs each on this VM), and glibc no longer caches the pid. OpenSSL
 *  asks it too (its random generator's fork check, before each ECDSA
 *  nonce in the simulator). pm_getpid.c defines getpid(): the definition
 *  in the executable interposes glibc's for libzmq, OpenSSL and every
 *  other shared library.
 *
 *  The pid is read once with the raw syscall and kept in a page mapped
 *  with MADV_WIPEONFORK: the kernel zeroes it in the child of any fork
 *  (fork(), _Fork(), a raw clone without CLONE_VM), so a child asks the
 *  kernel again whatever made it; a pthread_atfork child handler forgets
 *  it as well (and is all there is where madvise refuses). A vfork child
 *  shares the parent's memory and execs: it sees the parent's pid, as
 *  with glibc's vfork.
 *
 *  libpicomdm.a is a static archive: a program gets this getpid when it
 *  references the module — any program that calls getpid() and links
 *  libpicomdm.a does (pm_stats, pm_pem, pm_notify call it: the picomdm
 *  CLI, fake-apns and most unit tests get it too) — and every daemon's
 *  main() calls pm_getpid_init() first (it also maps the page before any
 *  thread starts). Measured: docs/bus.md ("Session 4", "Session 8, buscpu2").
 */
#ifndef PM_GETPID_H
#define PM_GETPID_H

//  Map the page and register the fork handler (optional: getpid() does it
//  on first use; calling it first thing in main() links this module in).
void pm_getpid_init(void);

//  The real getpid syscalls made so far (tests, exit summaries).
unsigned pm_getpid_syscalls(void);

#endif
