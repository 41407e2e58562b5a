/*  cli_command — builds and validates the Command dict of an MDM command for
 *  `picomdm enqueue`: RequestType plus its keys, from `--set Key=Value`
 *  assignments and/or a plist file, checked against Apple's schema (cmdtab.h).
 *
 *  The dict is a libplist tree (the format devices get), which the CLI turns
 *  into msgpack for the bus through the shared plist bridge.
 *
 *  Value syntax for --set (the key's schema type decides):
 *      string   as given               integer  decimal (-12, 300)
 *      boolean  true/false/yes/no/1/0  real     1.5, 1e3
 *      data     base64, or @FILE (@- = standard input)
 *      date     2025-01-31T12:00:00Z, 2025-01-31, or now
 *      array    A,B,C (items typed by the schema; \, is a literal comma; empty = [])
 *      dict     set its keys with dots: Options.PurchaseMethod=1, or use --plist
 *  Errors go to `err` as one or more lines, each naming the key, what is
 *  wrong and what to do next.
 */
#ifndef CLI_COMMAND_H
#define CLI_COMMAND_H

#include "cmdtab.h"

#include <plist/plist.h>
#include <stdbool.h>
#include <stddef.h>

#define CLI_FILE_MAX (8u * 1024 * 1024) //  @FILE data and --plist files

typedef struct cli_command cli_command_t;

//  A new, empty command. `raw` skips schema validation (unknown RequestTypes
//  and keys allowed; known keys are still converted by their schema type).
cli_command_t *cli_command_new(bool raw);
void cli_command_destroy(cli_command_t **self);

//  Start from a plist file: either the Command dict itself, or a whole
//  command plist ({CommandUUID, Command}) as nanomdm's cmdr.py prints it.
int cli_command_load_plist(cli_command_t *self, const char *path, char *err, size_t errlen);
//  Same, from bytes (XML or binary).
int cli_command_load_plist_mem(cli_command_t *self, const char *data, size_t len, char *err,
                               size_t errlen);

//  Set the RequestType (NULL: keep the one from the plist). Fails on an
//  unknown one (with a "did you mean") unless raw, or when it contradicts the plist.
int cli_command_set_type(cli_command_t *self, const char *request_type, char *err, size_t errlen);

//  Apply one "Key=Value" (Key may be a dotted path into dictionaries).
int cli_command_set(cli_command_t *self, const char *assignment, char *err, size_t errlen);

//  Check the whole dict against the schema: unknown keys, required keys,
//  types, allowed values, recursively. No-op (0) when raw.
int cli_command_validate(cli_command_t *self, char *err, size_t errlen);

const char *cli_command_type(const cli_command_t *self);           //  NULL until set
const cmdtab_cmd_t *cli_command_schema(const cli_command_t *self); //  NULL if unknown
const char *cli_command_uuid(const cli_command_t *self); //  from a whole-command plist, or NULL
plist_t cli_command_dict(const cli_command_t *self);     //  owned by self

//  XML / binary plist of the Command dict (*out malloc'd, caller frees).
int cli_command_to_xml(const cli_command_t *self, char **out, size_t *len);
int cli_command_to_bin(const cli_command_t *self, char **out, size_t *len);

//  Convert one --set value to a plist node by the schema key `k` (NULL: guess
//  boolean/integer/string, for raw mode). *out is the caller's.
int cli_value_convert(const cmdtab_key_t *k, const char *text, plist_t *out, char *err,
                      size_t errlen);

//  Check one plist value against key `k`; problems are appended to err
//  (one line each, prefixed with `path`). Returns the number of problems.
int cli_value_check(const cmdtab_key_t *k, plist_t node, const char *path, char *err,
                    size_t errlen);

//  Read a whole file (or "-" = stdin) of at most `max` bytes. *data malloc'd.
int cli_read_file(const char *path, size_t max, char **data, size_t *len, char *err, size_t errlen);

#endif
