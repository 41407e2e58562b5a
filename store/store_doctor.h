/*  store_doctor — the read-only facts `picomdm doctor` diagnoses (bus request
 *  store.doctor, docs/inventory.md "Doctor"): for one enrollment its push
 *  state, the head of its queue and the last push outcome the pusher logged
 *  (events push.*); for the fleet, how many enrollments are in each state.
 *  The store only reports facts; the wording is the CLI's (cli_doctor.c).
 *
 *  Ownership: every msgpack_sbuffer is the caller's; the sqlite3 handle is
 *  borrowed from store_db.
 */
#ifndef STORE_DOCTOR_H
#define STORE_DOCTOR_H

#include "pm_msg.h"
#include "store_db.h"

#include <msgpack.h>
#include <sqlite3.h>
#include <stdint.h>

//  How many active queue entries (in offer order) the device facts list.
#define STORE_DOCTOR_HEAD 5

//  Schema 5 (store_db.c migrations): what the gateway measured on the
//  enrollment's authenticated requests: the identity certificate's notAfter
//  and the device's clock skew (Mdm-Signature signingTime minus the gateway's
//  clock), with when that skew was recorded. One narrow row per enrollment.
#define STORE_DOCTOR_MIGRATION                                                                     \
    "CREATE TABLE identity(eid TEXT PRIMARY KEY, cert_not_after INTEGER,"                          \
    " clock_skew_s INTEGER, skew_at INTEGER) WITHOUT ROWID;"

//  Record those facts (?1 eid, ?2 notAfter ms or NULL, ?3 skew s or NULL, ?4
//  now ms). Written only when they change: a new certificate (bind, re-bind
//  after renewal), a skew that moved by 30 s or more, or a skew recorded an
//  hour ago; otherwise the row is only read (no page is dirtied), so a
//  request costs one primary-key lookup. sqlite3_changes() = 1 when written.
#define STORE_DOCTOR_NOTE_SQL                                                                      \
    "INSERT INTO identity(eid,cert_not_after,clock_skew_s,skew_at)"                                \
    " VALUES(?1,?2,?3,CASE WHEN ?3 IS NULL THEN NULL ELSE ?4 END)"                                 \
    " ON CONFLICT(eid) DO UPDATE SET"                                                              \
    " cert_not_after=coalesce(excluded.cert_not_after,cert_not_after),"                            \
    " clock_skew_s=coalesce(excluded.clock_skew_s,clock_skew_s),"                                  \
    " skew_at=coalesce(excluded.skew_at,skew_at)"                                                  \
    " WHERE (excluded.cert_not_after IS NOT NULL"                                                  \
    "  AND excluded.cert_not_after IS NOT cert_not_after)"                                         \
    " OR (excluded.clock_skew_s IS NOT NULL AND (clock_skew_s IS NULL"                             \
    "  OR abs(excluded.clock_skew_s-clock_skew_s)>=30 OR excluded.skew_at-skew_at>=3600000))"

//  A clock skew beyond this (seconds, either way) is a problem: TLS and
//  certificate validity checks fail on a device with a wrong clock.
#define STORE_DOCTOR_SKEW_MAX_S 300

//  One enrollment's facts as a packed map (see DOCTOR_REPLY.device in
//  proto/pm_msgtab.def). 0, 1 when the enrollment is unknown, -1 on a
//  database failure.
int store_doctor_device(store_db_t *db, const char *eid, msgpack_sbuffer *out);

//  The fleet's counts as a packed map (DOCTOR_REPLY.fleet). 0 / -1.
//  identity_warn_ms / skew_max_s: what counts as an identity certificate
//  expiring soon and a device clock off (enrolled devices only).
int store_doctor_fleet(store_db_t *db, int64_t silent_ms, unsigned notnow_limit, int64_t now_ms,
                       int64_t identity_warn_ms, int64_t skew_max_s, msgpack_sbuffer *out);

//  Answer store.doctor. *reply is always set (an error reply on failure).
store_rc_t store_doctor_svc(store_db_t *db, const pm_msg_t *req, pm_msg_t **reply, int64_t now_ms);

#endif
