/*  cmdtab — lookups over the MDM command table for the picomdm CLI. The table
 *  itself (types and generated data) is proto/pm_cmdtab.h, shared with the store.
 */
#ifndef CMDTAB_H
#define CMDTAB_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "pm_cmdtab.h"

/* ---- lookups (cli_schema.c) ---- */

//  The RequestType closest to `name` (case-insensitive edit distance), or NULL
//  if nothing is reasonably close.
const char *cmdtab_suggest(const char *name);
//  A key among `n` siblings starting at cmdtab_keys[first]: exact name first,
//  then a wildcard sibling. NULL if none.
const cmdtab_key_t *cmdtab_child(uint16_t first, uint16_t n, const char *name);
//  The closest sibling name to `name` (for "did you mean"), or NULL.
const char *cmdtab_child_suggest(uint16_t first, uint16_t n, const char *name);
//  "Message, PhoneNumber, PIN" (the sibling names) into buf; returns buf.
const char *cmdtab_child_list(uint16_t first, uint16_t n, char *buf, size_t size);
//  The allowed values of `k` as "a, b, c" into buf; returns buf.
const char *cmdtab_value_list(const cmdtab_key_t *k, char *buf, size_t size);
//  "string", "integer", ... (the schema's names, without <>).
const char *cmdtab_type_name(int type);
//  "iOS, macOS" into buf; returns buf.
const char *cmdtab_platform_list(int platforms, char *buf, size_t size);
//  Print a command's payload keys (tree) and top-level response keys, for help.
void cmdtab_describe(FILE *out, const cmdtab_cmd_t *cmd);

#endif
