/*  pm_str — bounded string copies (pm_str.h). */
#include "pm_str.h"

#include <string.h>

char *pm_str_copy(char *buf, size_t size, const char *s, size_t n)
{
    size_t len = 0;
    if (s)
        len = strnlen(s, n < size - 1 ? n : size - 1);
    memcpy(buf, s ? s : "", len);
    buf[len] = '\0';
    return buf;
}

char *pm_str_join(char *buf, size_t size, const char *a, char sep, const char *b)
{
    pm_str_copy(buf, size, a, PM_STR_ALL);
    size_t len = strlen(buf);
    if (sep && len + 1 < size) {
        buf[len++] = sep;
        buf[len] = '\0';
    }
    pm_str_copy(buf + len, size - len, b, PM_STR_ALL);
    return buf;
}
