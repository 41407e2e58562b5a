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

//  One enrollment's facts as a packed map (see DOCTOR_REPLY.device in
//  proto/pm_msgtab.def). 0, 1 when the enrollment is unknown, -1 on a
//  database failure.
int store_doctor_device(sqlite3 *sql, const char *eid, msgpack_sbuffer *out);

//  The fleet's counts as a packed map (DOCTOR_REPLY.fleet). 0 / -1.
int store_doctor_fleet(sqlite3 *sql, int64_t silent_ms, unsigned notnow_limit, int64_t now_ms,
                       msgpack_sbuffer *out);

//  Answer store.doctor. *reply is always set (an error reply on failure).
store_rc_t store_doctor_svc(store_db_t *db, const pm_msg_t *req, pm_msg_t **reply, int64_t now_ms);

#endif
