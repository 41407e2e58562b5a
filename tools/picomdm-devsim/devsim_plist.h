/*  devsim_plist — small libplist helpers for the device simulator
 *  (bin/picomdm-devsim): typed dictionary setters/getters, XML output, and a
 *  bounded parse of what a server sends back.
 *
 *  libplist 2.2 (Debian 12) has no depth limit and no error returns, so a
 *  server reply is checked for size and dict/array nesting before libplist
 *  sees it (a hostile server must not crash the simulator).
 */
#ifndef DEVSIM_PLIST_H
#define DEVSIM_PLIST_H

#include <plist/plist.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define DEVSIM_PLIST_MAX_DEPTH 32
#define DEVSIM_PLIST_MAX_BYTES (16u * 1024u * 1024u)

//  Setters: take a key and a C value, create the node and set it in `dict`.
void devsim_pl_str(plist_t dict, const char *key, const char *val);
void devsim_pl_bool(plist_t dict, const char *key, bool val);
void devsim_pl_int(plist_t dict, const char *key, int64_t val);
void devsim_pl_real(plist_t dict, const char *key, double val);
void devsim_pl_data(plist_t dict, const char *key, const void *val, size_t len);
//  `when` is Unix time; libplist 2.2 counts dates from 2001-01-01 (Apple epoch).
void devsim_pl_date(plist_t dict, const char *key, time_t when);

//  Getters: NULL / false when absent or of another type. The string is owned by
//  the plist node (valid while the node lives).
const char *devsim_pl_get_str(plist_t dict, const char *key);
bool devsim_pl_get_bool(plist_t dict, const char *key, bool def);
//  Data: *val points into the node (valid while the node lives).
bool devsim_pl_get_data(plist_t dict, const char *key, const char **val, size_t *len);
//  Node of a given type, or NULL.
plist_t devsim_pl_get(plist_t dict, const char *key, plist_type type);

//  Serialise to XML. *xml is malloc'd (caller frees). Returns 0 or -1.
int devsim_pl_to_xml(plist_t node, char **xml, size_t *len);

//  Bounded parse of an XML (or binary) plist reply through the shared bridge
//  (pm_plist_parse): size, nesting depth and node count are checked before libplist parses. Returns
//  the root (caller frees with plist_free) or NULL with a reason in err.
plist_t devsim_pl_parse(const char *data, size_t len, char *err, size_t errlen);

#endif
