/*  store_inv — the device inventory of the store process (bin/picomdm-store).
 *
 *  Every Acknowledged answer to a command whose schema has response keys is
 *  turned into inventory attributes, inside the transaction that stores the
 *  result (store_db_connect calls store_inv_ingest). What each RequestType
 *  does is generated from Apple's schema (proto/pm_cmdtab.h, `inv`):
 *
 *    DeviceInformation (CT_INV_MERGE): each QueryResponses key is an attribute
 *        under its own name (OSVersion, Model, ...); keys not asked keep their
 *        earlier value.
 *    the others (CT_INV_REPLACE): the answer replaces every attribute this
 *        RequestType reported before. A single dict response with fixed keys
 *        (SecurityInfo) gives one attribute per key ("SecurityInfo.PasscodePresent");
 *        a single list or open dict gives one attribute named after the
 *        RequestType holding the whole value (InstalledApplicationList,
 *        UserList, ManagedApplicationList); several response keys give
 *        "<RequestType>.<Key>" (Restrictions.GlobalRestrictions).
 *
 *  Rows: inventory(eid, key, value msgpack, vtext, source, updated,
 *  command_uuid); vtext is the text of a scalar value (indexed, for
 *  `picomdm devices --query Key=Value`), NULL for lists and dicts.
 *
 *  Answers are checked against the schema: wrong types and unknown keys are
 *  kept, logged and reported in event `inventory.invalid`; they never drop
 *  the rest. What changed is event `inventory.changed`
 *  {request_type, command_uuid, changes: [{key, old, new}]} (old/new as
 *  text; lists as "[N items]").
 *
 *  Ownership: store_inv_t borrows the sqlite3 handle (owned by store_db);
 *  every msgpack_sbuffer is the caller's.
 */
#ifndef STORE_INV_H
#define STORE_INV_H

#include <msgpack.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct store_inv store_inv_t;

//  Append an event (called inside the caller's transaction). 0 / -1.
typedef int(store_inv_emit_fn)(void *arg, const char *name, const char *eid, const uint8_t *data,
                               size_t len, int64_t now);

//  The migration that creates the inventory table and the indexes it and the
//  operator queries need (one entry of store_db.c's s_migrations).
#define STORE_INV_MIGRATION                                                                        \
    "CREATE TABLE inventory("                                                                      \
    " eid TEXT NOT NULL, key TEXT NOT NULL, value BLOB, vtext TEXT, source TEXT NOT NULL,"         \
    " updated INTEGER NOT NULL, command_uuid TEXT, PRIMARY KEY(eid, key)) WITHOUT ROWID;"          \
    "CREATE INDEX inventory_kv ON inventory(key, vtext);"                                          \
    "CREATE INDEX inventory_source ON inventory(eid, source);" /* dropped by schema 8 */           \
    "CREATE INDEX events_eid ON events(eid, seq) WHERE eid IS NOT NULL;"                           \
    "CREATE INDEX enrollments_model ON enrollments(model);"                                        \
    "CREATE INDEX enrollments_os ON enrollments(os_version);"                                      \
    "CREATE INDEX enrollments_seen ON enrollments(last_seen);"

//  Schema 8 (docs/queue.md, "Session 5"): inventory_source (eid, source) was
//  written for every attribute a device reports first (1.7 pages per
//  DeviceInformation answer at 10,000 devices) and read only when a
//  REPLACE answer drops the attributes its RequestType no longer reports.
//  Those attributes' keys are the RequestType or start with "<RequestType>.",
//  so that delete now reads a range of the primary key (eid, key) instead.
#define STORE_INV_MIGRATION_8 "DROP INDEX IF EXISTS inventory_source;"

//  NULL on out of memory. `db` must outlive the object; its statements live
//  in db's statement cache (store_db_stmt).
struct store_db;
store_inv_t *store_inv_new(struct store_db *db);
void store_inv_destroy(store_inv_t **self);
//  The last failure's text (owned by self).
const char *store_inv_errmsg(const store_inv_t *self);

//  Turn one Acknowledged answer (`body`: the response plist as packed msgpack)
//  into inventory rows and events. Commands without inventory class are
//  ignored (0). A body that is not a msgpack map is logged and reported
//  (`inventory.invalid`), not an error. -1 only when the database fails.
int store_inv_ingest(store_inv_t *self, const char *eid, const char *request_type,
                     const char *command_uuid, const uint8_t *body, size_t body_len, int64_t now,
                     store_inv_emit_fn *emit, void *arg);

/* ---- operator queries ---- */

//  An enrollment's inventory, by key: array of maps key, value (as stored),
//  source, updated, command_uuid. 0 / -1.
int store_inv_list(store_inv_t *self, const char *eid, msgpack_sbuffer *out);

//  The events of one enrollment (and its user channels), oldest first, after
//  seq `after`: array of maps seq, ts, name, eid, source, data. 0 / -1.
int store_inv_timeline(store_inv_t *self, const char *eid, uint64_t after, unsigned limit,
                       msgpack_sbuffer *out);

//  Filters for the device list; NULL / 0 = not set.
typedef struct {
    const char *model;      //  enrollments.model or inventory Model / ProductName
    const char *os_version; //  enrollments.os_version (kept current by DeviceInformation)
    int64_t silent_for_ms;  //  last_seen older than now - this
    const char *query_key;  //  inventory attribute = query_value (its text)
    const char *query_value;
    const char *eid; //  exactly this enrollment
    int64_t now_ms;
} store_inv_filter_t;

//  Enrollments matching every filter, by id after `after`: the same maps as
//  store_db_devices. 0 / -1.
int store_inv_devices(store_inv_t *self, const store_inv_filter_t *f, const char *after,
                      unsigned limit, msgpack_sbuffer *out);

/* ---- bus requests (store_inv_svc.c) ---- */

#include "pm_msg.h"
#include "store_db.h"

//  Answer store.device, store.timeline, store.devices.find (called by
//  store_svc_apply). *reply is always set (an error reply on failure).
//  Returns STORE_OK or the failure.
store_rc_t store_inv_svc(store_db_t *db, const pm_msg_t *req, pm_msg_t **reply, int64_t now_ms);

#endif
