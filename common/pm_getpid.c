/*  pm_getpid — see pm_getpid.h. */
#include "pm_getpid.h"

#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

//  The cached pid lives in s_page (wiped in a fork child) when madvise
//  allowed it, else in s_pid_fallback (forgotten by the atfork handler).
static _Atomic pid_t s_pid_fallback;
static _Atomic pid_t *_Atomic s_page;
static _Atomic unsigned s_pid_syscalls;
static pthread_once_t s_pid_once = PTHREAD_ONCE_INIT;

static void s_pid_forget(void)
{
    //  the child of a fork: ask the kernel again
    s_pid_fallback = 0;
    _Atomic pid_t *page = s_page;
    if (page)
        *page = 0;
}

static void s_pid_setup(void)
{
    pthread_atfork(NULL, NULL, s_pid_forget);
    long size = sysconf(_SC_PAGESIZE);
    void *p = mmap(NULL, size > 0 ? (size_t)size : 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return;
    if (madvise(p, size > 0 ? (size_t)size : 4096, MADV_WIPEONFORK) != 0) {
        munmap(p, size > 0 ? (size_t)size : 4096);
        return;
    }
    s_page = (_Atomic pid_t *)p;
}

void pm_getpid_init(void)
{
    pthread_once(&s_pid_once, s_pid_setup);
}

pid_t getpid(void)
{
    _Atomic pid_t *slot = s_page;
    if (!slot) {
        pthread_once(&s_pid_once, s_pid_setup);
        slot = s_page ? s_page : &s_pid_fallback;
    }
    pid_t pid = *slot;
    if (pid == 0) {
        pid = (pid_t)syscall(SYS_getpid);
        s_pid_syscalls++;
        *slot = pid;
    }
    return pid;
}

unsigned pm_getpid_syscalls(void)
{
    return s_pid_syscalls;
}
