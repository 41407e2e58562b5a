/*  pm_log — one logging interface for every PicoMDM process.
 *
 *  A thin layer over czmq's zsys logging (stderr or syslog, tagged with the
 *  process name) that adds a level filter. Never log secrets: keys, push
 *  tokens, challenge passwords, unlock or bootstrap tokens.
 */
#ifndef PM_LOG_H
#define PM_LOG_H

#include <stdbool.h>

typedef enum {
    PM_LOG_ERROR = 0,
    PM_LOG_WARN,
    PM_LOG_NOTICE,
    PM_LOG_INFO,
    PM_LOG_DEBUG
} pm_log_level_t;

//  Start logging for process `name` ("broker", "store", ...). `level` is one of
//  error, warn, notice, info, debug (NULL = info). Returns -1 on an unknown level.
int pm_log_init(const char *name, const char *level, bool use_syslog);

//  Parse a level name; -1 if unknown.
int pm_log_level_parse(const char *level);

//  The current level (for callers that want to skip building expensive text).
pm_log_level_t pm_log_level(void);

void pm_log(pm_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define pm_error(...) pm_log(PM_LOG_ERROR, __VA_ARGS__)
#define pm_warn(...) pm_log(PM_LOG_WARN, __VA_ARGS__)
#define pm_notice(...) pm_log(PM_LOG_NOTICE, __VA_ARGS__)
#define pm_info(...) pm_log(PM_LOG_INFO, __VA_ARGS__)
#define pm_debug(...)                                                                              \
    do {                                                                                           \
        if (pm_log_level() >= PM_LOG_DEBUG)                                                        \
            pm_log(PM_LOG_DEBUG, __VA_ARGS__);                                                     \
    } while (0)

//  Unrecoverable start-up error: log and exit(1). Never for bad input at run time.
void pm_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
