/*  pm_plist — the plist <-> msgpack bridge. Plist exists only at the gateway's
 *  edge (and in tools that speak to devices); on the bus everything is msgpack.
 *
 *  Mapping (lossless both ways): dict->map (str keys), array->array,
 *  string->str, integer->int (the full signed and unsigned 64-bit range),
 *  real->float64, bool->bool, data->bin, date->msgpack timestamp ext (-1),
 *  uid->(rejected: never valid in MDM plists).
 *
 *  Debian 12's libplist 2.2 has no depth limit and no error returns, so the
 *  input is bounded (size, nesting depth, node count) by a pre-scan of the
 *  bytes before libplist parses them: deep nesting is a clean error, never a
 *  stack overflow.
 */
#ifndef PM_PLIST_H
#define PM_PLIST_H

#include <msgpack.h>
#include <plist/plist.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    size_t max_bytes;   //  input size
    unsigned max_depth; //  dict/array nesting
    size_t max_nodes;   //  every value counts one
} pm_plist_limits_t;

//  8 MiB, depth 32, 500k nodes: room for a large InstalledApplicationList.
extern const pm_plist_limits_t pm_plist_default_limits;

//  XML or binary plist -> msgpack bytes (*out malloc'd, caller frees).
//  Returns 0, or -1 with a one-line reason in err. lim NULL = the defaults.
//  Dates keep libplist's microsecond resolution; -0.0 becomes 0.0 and every NaN
//  the same NaN (XML cannot tell them apart); uid, null and duplicate keys fail.
int pm_plist_to_msgpack(const char *data, size_t len, const pm_plist_limits_t *lim, uint8_t **out,
                        size_t *outlen, char *err, size_t errlen);

//  The same bounded pre-scan, then libplist: for code that needs the libplist tree
//  itself (tools that read operator or device plists). *root is the caller's
//  (plist_free). The tree is safe to walk (depth and size bounded); values are not
//  checked further (duplicate keys, dates, UIDs: pm_plist_to_msgpack does that).
int pm_plist_parse(const char *data, size_t len, const pm_plist_limits_t *lim, plist_t *root,
                   char *err, size_t errlen);

//  The schema's name of a node's type, as Apple's YAML spells it: boolean, integer,
//  real, string, array, dictionary, date, data ("other" for anything else).
const char *pm_plist_type_name(plist_t node);

//  msgpack object -> XML plist text (*xml malloc'd, NUL-terminated, caller frees).
//  Fails on values a plist cannot carry (nil, ext other than timestamp, non-str map keys).
//  Also refused, so that nothing is silently changed: duplicate map keys, str that is
//  not UTF-8 or holds characters XML cannot carry (NUL, most control characters),
//  timestamps with a fraction of a second (XML plist dates are whole seconds) or
//  outside years 1000..9999. Nesting and size: pm_plist_default_limits.
int pm_plist_from_msgpack(const msgpack_object *obj, char **xml, size_t *xmllen, char *err,
                          size_t errlen);

//  Same, from encoded msgpack bytes (checked with pm_mpck first).
int pm_plist_from_msgpack_bytes(const uint8_t *data, size_t len, char **xml, size_t *xmllen,
                                char *err, size_t errlen);

#endif
