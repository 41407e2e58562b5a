/*  pm_json — render msgpack objects and bus messages as JSON text, for the
 *  CLI's --json and `watch` output and for the auditor. Output only (nothing
 *  here parses JSON).
 *
 *  Mapping: nil/bool/int as JSON; floats in the shortest form that reads back
 *  to the same double (NaN and infinities, which JSON lacks, become null);
 *  str escaped (quotes, backslash, control characters as \uXXXX or \n etc.,
 *  each invalid UTF-8 sequence as \ufffd); bin as a base64 string; the msgpack
 *  timestamp extension as an RFC 3339 UTC string ("2023-11-14T22:13:20.5Z",
 *  years outside 0000-9999 as a number of seconds); other ext types as
 *  {"ext": <type>, "data": "<base64>"}; map keys that are not str become the
 *  string of their JSON text (1 -> "1", [1] -> "[1]").
 *  Nesting deeper than PM_JSON_MAX_DEPTH fails (NULL), as does running out of memory.
 */
#ifndef PM_JSON_H
#define PM_JSON_H

#include "pm_msg.h"

#include <msgpack.h>
#include <stddef.h>

#define PM_JSON_MAX_DEPTH 64

//  JSON text of obj, NUL-terminated, malloc'd: the caller frees it. *len (if
//  not NULL) is its length. NULL if too deep or out of memory.
char *pm_json_from_obj(const msgpack_object *obj, size_t *len);

//  {"type":"<name>","rid":"<rid>","ts":<ms>,"body":{<fields in table order>}},
//  malloc'd, caller frees. NULL on failure.
char *pm_json_from_msg(const pm_msg_t *msg, size_t *len);

#endif
