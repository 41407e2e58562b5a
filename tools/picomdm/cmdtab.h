/*  cmdtab — the MDM command table of the picomdm CLI: every RequestType in
 *  Apple's schema, its platforms, payload keys and response keys.
 *
 *  The data (cmdtab.c) is generated from Apple's mdm/commands YAML files by
 *  tools/gen/commands.py and committed, so nothing reads YAML at run time.
 *  Keys form a tree stored flat: a key's children are the `nchild` entries of
 *  cmdtab_keys starting at `child`; its allowed values are the `nvalue`
 *  strings of cmdtab_values starting at `value` (Apple's rangelist, or the
 *  query names of DeviceInformation). An <array>'s single child describes its
 *  items; an array with several children (Settings) takes items shaped like
 *  any one of them. All pointers are static; nobody frees anything here.
 */
#ifndef CMDTAB_H
#define CMDTAB_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
    CT_STRING = 1,
    CT_INTEGER,
    CT_BOOLEAN,
    CT_REAL,
    CT_DATA,
    CT_DATE,
    CT_ARRAY,
    CT_DICT,
    CT_ANY
} cmdtab_type_t;

#define CT_REQUIRED 0x01 //  presence: required
#define CT_WILDCARD 0x02 //  the name ("ANY ...") stands for any key

#define CT_IOS 0x01
#define CT_MACOS 0x02
#define CT_TVOS 0x04
#define CT_VISIONOS 0x08
#define CT_WATCHOS 0x10

typedef struct {
    const char *name;
    const char *doc; //  one sentence (payload keys only), or NULL
    const char *def; //  schema default as text, or NULL
    uint8_t type;    //  cmdtab_type_t
    uint8_t flags;   //  CT_REQUIRED, CT_WILDCARD
    uint8_t platforms;
    uint16_t child, nchild;
    uint16_t value, nvalue;
} cmdtab_key_t;

typedef struct {
    const char *request_type;
    const char *title;
    uint8_t platforms;
    uint16_t key, nkey;   //  payload keys (top level)
    uint16_t resp, nresp; //  response keys (top level)
} cmdtab_cmd_t;

//  Generated data (cmdtab.c). Each array ends with an all-NULL entry.
extern const char *const cmdtab_values[];
extern const cmdtab_key_t cmdtab_keys[];
extern const cmdtab_cmd_t cmdtab_cmds[]; //  sorted by request_type
extern const size_t cmdtab_ncmds, cmdtab_nkeys, cmdtab_nvalues;

/* ---- lookups (cli_schema.c) ---- */

//  The command with this RequestType (exact, case-sensitive), or NULL.
const cmdtab_cmd_t *cmdtab_find(const char *request_type);
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
