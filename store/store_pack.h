/*  store_pack — msgpack packing of SQLite rows and values, shared by the
 *  store's modules (queue, inventory, doctor, push, enrollment tokens), so
 *  that a column becomes msgpack the same way everywhere; and the checks and
 *  error replies the hash-keyed modules (enrollment tokens, SCEP challenges)
 *  share.
 */
#ifndef STORE_PACK_H
#define STORE_PACK_H

#include "pm_msg.h"
#include "pm_str.h"
#include "store_db.h"

#include <msgpack.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

//  A string (NULL packs the empty string).
void store_pk_str(msgpack_packer *pk, const char *s);
//  Key + string value (NULL packs nil).
void store_pk_kstr(msgpack_packer *pk, const char *k, const char *v);
//  Key + integer / boolean value.
void store_pk_kint(msgpack_packer *pk, const char *k, int64_t v);
void store_pk_kbool(msgpack_packer *pk, const char *k, bool v);
//  Column i as it is stored: integer, text (its full length), anything else nil.
void store_pk_col(msgpack_packer *pk, sqlite3_stmt *st, int i);
//  Key + column i, as store_pk_col.
void store_pk_kcol(msgpack_packer *pk, const char *k, sqlite3_stmt *st, int i);

//  Bounded string copies for the request path: common/pm_str.h.

//  A SHA-256 in lowercase hex (64 digits).
bool store_hex64_ok(const char *h);
//  Log the database's error and make an `internal` reply saying what failed
//  and what to do. Returns STORE_ERR_DB.
store_rc_t store_db_fail(sqlite3 *sql, const pm_msg_t *req, pm_msg_t **reply, const char *what);

#endif
