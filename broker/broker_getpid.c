/*  broker_getpid — see broker_getpid.h. */
#include "broker_getpid.h"

#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

static _Atomic pid_t s_pid;
static _Atomic unsigned s_pid_syscalls;
static pthread_once_t s_pid_once = PTHREAD_ONCE_INIT;

static void s_pid_forget(void)
{
    s_pid = 0; //  the child of a fork: ask the kernel again
}

static void s_pid_register(void)
{
    pthread_atfork(NULL, NULL, s_pid_forget);
}

pid_t getpid(void)
{
    pid_t pid = s_pid;
    if (pid == 0) {
        pthread_once(&s_pid_once, s_pid_register);
        pid = (pid_t)syscall(SYS_getpid);
        s_pid_syscalls++;
        s_pid = pid;
    }
    return pid;
}

unsigned broker_getpid_syscalls(void)
{
    return s_pid_syscalls;
}
