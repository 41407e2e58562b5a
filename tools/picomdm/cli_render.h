/*  cli_render — human-readable text for msgpack values on the bus: queue
 *  items, devices and command results (`picomdm results`). JSON output is
 *  the shared renderer's job (proto/pm_json.h); this is the text side.
 *
 *  A result body renders as "Key: value" lines, nested dictionaries
 *  indented, arrays of scalars inline, arrays of dictionaries as "-" items,
 *  data as its size (and hex when short), dates in RFC 3339 UTC, and Apple's
 *  ErrorChain as numbered "domain code: description" lines.
 */
#ifndef CLI_RENDER_H
#define CLI_RENDER_H

#include <msgpack.h>
#include <stdio.h>

//  One value as text on one line (maps and arrays summarised). Integers under
//  keys that hold times (created, received, last_seen, ...) and are in
//  milliseconds since the epoch render as UTC times. Returns buf.
const char *cli_render_scalar(const char *key, const msgpack_object *obj, char *buf, size_t size);

//  A map as "Key: value" lines at `indent` spaces (nested maps deeper).
//  Keys listed in `skip` (NULL-terminated, may be NULL) are left out.
void cli_render_map(FILE *out, const msgpack_object *map, int indent, const char *const *skip);

//  Apple's ErrorChain (array of {ErrorDomain, ErrorCode, LocalizedDescription,
//  USEnglishDescription}) as numbered lines.
void cli_render_error_chain(FILE *out, const msgpack_object *chain, int indent);

//  Map lookup by string key (NULL if absent or `map` is not a map).
const msgpack_object *cli_map_get(const msgpack_object *map, const char *key);

#endif
