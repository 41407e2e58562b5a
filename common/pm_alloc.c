/*  pm_alloc — see pm_alloc.h. */
#include "pm_alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern int mi_version(void) __attribute__((weak));
extern void mi_option_set(int option, long value) __attribute__((weak));
extern long mi_option_get(int option) __attribute__((weak));
extern void mi_process_info(size_t *elapsed_ms, size_t *user_ms, size_t *system_ms,
                            size_t *current_rss, size_t *peak_rss, size_t *current_commit,
                            size_t *peak_commit, size_t *page_faults) __attribute__((weak));

//  mi_option_decommit_delay in mimalloc 2.0 (mi_option_purge_delay in 2.1,
//  the same slot and meaning)
#define S_MI_OPTION_DECOMMIT_DELAY 15

const char *pm_alloc_name(char *buf, size_t size)
{
    if (mi_version)
        snprintf(buf, size, "mimalloc %d", mi_version()); //  e.g. 209 for 2.0.9
    else
        snprintf(buf, size, "the C library's malloc");
    return buf;
}

long pm_alloc_decommit_delay(long ms)
{
    if (!mi_version || !mi_option_set || !mi_option_get)
        return -1;
    int v = mi_version();
    if (v < 200 || v >= 300)
        return -2; //  another major version: its option numbers are not known here
    if (!getenv("MIMALLOC_DECOMMIT_DELAY") && !getenv("MIMALLOC_PURGE_DELAY"))
        mi_option_set(S_MI_OPTION_DECOMMIT_DELAY, ms);
    return mi_option_get(S_MI_OPTION_DECOMMIT_DELAY);
}

int pm_alloc_committed(size_t *now, size_t *peak)
{
    if (!mi_process_info)
        return -1;
    size_t el, us, sy, rss, prss, faults, commit = 0, pcommit = 0;
    mi_process_info(&el, &us, &sy, &rss, &prss, &commit, &pcommit, &faults);
    *now = commit;
    *peak = pcommit;
    return 0;
}

long pm_alloc_rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            char *end;
            kb = strtol(line + 6, &end, 10);
            if (end == line + 6)
                kb = -1;
            break;
        }
    fclose(f);
    return kb;
}
