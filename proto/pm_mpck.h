/*  pm_mpck — bounded entry point to msgpack-c, and small helpers for reading
 *  msgpack objects.
 *
 *  msgpack-c 4.0 trusts array/map/str/bin counts: five bytes (dd ff ff ff ff)
 *  ask it for gigabytes. pm_mpck_check walks the bytes first and verifies that
 *  every count fits in the bytes actually present, that nesting stays under a
 *  limit and that the total number of elements is bounded; only then does
 *  pm_mpck_unpack hand the buffer to msgpack_unpack.
 */
#ifndef PM_MPCK_H
#define PM_MPCK_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    unsigned max_depth;  //  nesting of arrays/maps (a scalar at top level is depth 0)
    size_t max_elements; //  array items + map pairs, summed over the whole object
} pm_mpck_limits_t;

//  Check that data[0..len) starts with one well-formed msgpack object within
//  `lim`. *used = its size in bytes. With `exact`, trailing bytes are an error.
//  Returns 0, or -1 with a one-line reason in err.
int pm_mpck_check(const uint8_t *data, size_t len, const pm_mpck_limits_t *lim, bool exact,
                  size_t *used, char *err, size_t errlen);

//  pm_mpck_check(exact) then msgpack_unpack into `zone`; *obj points into zone.
int pm_mpck_unpack(const uint8_t *data, size_t len, const pm_mpck_limits_t *lim, msgpack_zone *zone,
                   msgpack_object *obj, char *err, size_t errlen);

//  Map lookup by string key; NULL if `map` is not a map or has no such key.
const msgpack_object *pm_mp_get(const msgpack_object *map, const char *key);
//  Copy a str value into buf (NUL-terminated). -1 if absent, not a str, or too long.
int pm_mp_get_str(const msgpack_object *map, const char *key, char *buf, size_t size);
//  True if obj is a str equal to s.
bool pm_mp_str_eq(const msgpack_object *obj, const char *s);

#endif
