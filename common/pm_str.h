/*  pm_str — bounded string copies for request paths.
 *
 *  snprintf("%s") parses its format for every copy: ~3 % of a device
 *  request's instructions in the store and a few thousand per request in
 *  the gateway (docs/queue.md and docs/gateway.md, sessions 5-6). Both
 *  functions truncate to size - 1 bytes, always terminate (size > 0), never
 *  allocate, and return buf.
 */
#ifndef PM_STR_H
#define PM_STR_H

#include <stddef.h>

#define PM_STR_ALL ((size_t)-1) //  pm_str_copy: up to the NUL

//  The first n bytes of s (stopping at a NUL; PM_STR_ALL: all of it) into
//  buf[size]; NULL copies "".
char *pm_str_copy(char *buf, size_t size, const char *s, size_t n);
//  a + sep + b into buf[size] (sep a character; 0: none), as
//  snprintf("%s%c%s"); NULL a or b count as "".
char *pm_str_join(char *buf, size_t size, const char *a, char sep, const char *b);

#endif
