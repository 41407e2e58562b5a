/*  pm_log — level-filtered logging over czmq zsys (see pm_log.h). */
#include "pm_log.h"

#include <czmq.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pm_log_level_t s_level = PM_LOG_INFO;
static const char *s_names[] = {"error", "warn", "notice", "info", "debug"};

int pm_log_level_parse(const char *level)
{
    if (!level)
        return PM_LOG_INFO;
    for (int i = 0; i < (int)(sizeof s_names / sizeof s_names[0]); i++)
        if (strcmp(level, s_names[i]) == 0)
            return i;
    if (strcmp(level, "warning") == 0)
        return PM_LOG_WARN;
    return -1;
}

int pm_log_init(const char *name, const char *level, bool use_syslog)
{
    int l = pm_log_level_parse(level);
    if (l < 0)
        return -1;
    s_level = (pm_log_level_t)l;
    zsys_set_logident(name);
    zsys_set_logstream(use_syslog ? NULL : stderr);
    zsys_set_logsystem(use_syslog);
    return 0;
}

pm_log_level_t pm_log_level(void)
{
    return s_level;
}

static void s_vlog(pm_log_level_t level, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void s_vlog(pm_log_level_t level, const char *fmt, va_list ap)
{
    char line[2048];
    vsnprintf(line, sizeof line, fmt, ap);
    switch (level) {
    case PM_LOG_ERROR:
        zsys_error("%s", line);
        break;
    case PM_LOG_WARN:
        zsys_warning("%s", line);
        break;
    case PM_LOG_NOTICE:
        zsys_notice("%s", line);
        break;
    case PM_LOG_INFO:
        zsys_info("%s", line);
        break;
    case PM_LOG_DEBUG:
        zsys_debug("%s", line);
        break;
    }
}

void pm_log(pm_log_level_t level, const char *fmt, ...)
{
    if (level > s_level)
        return;
    va_list ap;
    va_start(ap, fmt);
    s_vlog(level, fmt, ap);
    va_end(ap);
}

void pm_fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_vlog(PM_LOG_ERROR, fmt, ap);
    va_end(ap);
    exit(1);
}
