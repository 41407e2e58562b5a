/*  pm_cmdtab — the MDM command table: every RequestType in Apple's schema, its
 *  platforms, payload keys, response keys and what its answer does to the
 *  inventory. Shared: the picomdm CLI checks commands with it (lookups in
 *  tools/picomdm/cmdtab.h), the store validates answers and builds the
 *  inventory with it (store/store_inv.c).
 *
 *  The data (pm_cmdtab.c) is generated from Apple's mdm/commands YAML files by
 *  tools/gen/commands.py and committed, so nothing reads YAML at run time.
 *  Keys form a tree stored flat: a key's children are the `nchild` entries of
 *  cmdtab_keys starting at `child`; its allowed values are the `nvalue`
 *  strings of cmdtab_values starting at `value` (Apple's rangelist, or the
 *  query names of DeviceInformation). An <array>'s single child describes its
 *  items; an array with several children (Settings) takes items shaped like
 *  any one of them. All pointers are static; nobody frees anything here.
 */
#ifndef PM_CMDTAB_H
#define PM_CMDTAB_H

#include <stddef.h>
#include <stdint.h>

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

//  How a command's answer feeds the store's inventory (docs/inventory.md).
typedef enum {
    CT_INV_NONE = 0, //  result only
    CT_INV_MERGE,    //  partial answer (DeviceInformation): each key updates its attribute
    CT_INV_REPLACE   //  complete answer: replaces what this RequestType reported before
} cmdtab_inv_t;

typedef struct {
    const char *request_type;
    const char *title;
    uint8_t platforms;
    uint16_t key, nkey;   //  payload keys (top level)
    uint16_t resp, nresp; //  response keys (top level)
    uint8_t inv;          //  cmdtab_inv_t: how the answer feeds the inventory
} cmdtab_cmd_t;

//  Generated data (pm_cmdtab.c). Each array ends with an all-NULL entry.
extern const char *const cmdtab_values[];
extern const cmdtab_key_t cmdtab_keys[];
extern const cmdtab_cmd_t cmdtab_cmds[]; //  sorted by request_type
extern const size_t cmdtab_ncmds, cmdtab_nkeys, cmdtab_nvalues;

//  The command with this RequestType (exact, case-sensitive), or NULL.
const cmdtab_cmd_t *cmdtab_find(const char *request_type);

#endif
