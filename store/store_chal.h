/*  store_chal — durable one-time SCEP challenges in the store's database
 *  (bin/picomdm-store, service "store"; docs/enrollment.md, issue #6).
 *
 *  picomdm-ca makes a random challenge for every enrollment profile it builds
 *  (challenge-mode one-time) and, before it hands the profile out, records the
 *  challenge's SHA-256 and expiry here (scep_challenge.add): durable first, so
 *  a restart or kill -9 of picomdm-ca, or a second ca process on another host,
 *  still knows it. A PKCSReq presenting it is checked here
 *  (scep_challenge.use): the consuming UPDATE matches only an unused,
 *  unexpired row, so of two requests with one challenge exactly one is
 *  accepted (the store applies requests one at a time). The row then remembers
 *  the SCEP transactionID and the SHA-256 of the CSR's public key: the same
 *  transaction again (a device retrying after a lost reply) is accepted again,
 *  any other is refused ("used"); expired and unknown challenges are refused.
 *  Only hashes are kept, never a challenge: a row is looked up by the hash
 *  (the primary key), so no secret is ever compared byte by byte.
 *
 *  scep_challenge.add may carry the ca's `ca.profile` event: it is appended to
 *  the event log in the same transaction (and published after the commit, as
 *  every event), saving the ca a separate event.append round trip.
 *
 *  Expired rows are pruned while challenges are added (at most once a minute,
 *  a bounded batch at a time), and at most STORE_CHAL_MAX live rows are kept
 *  (a flood of profile downloads cannot fill the disk: add is refused with
 *  error `conflict` until some expire).
 *
 *  Like every store operation these run inside the transaction the caller
 *  opened (store_svc's group commit); replies go out after the commit. The
 *  table is scep_challenges (schema version 6, STORE_CHAL_MIGRATION). The
 *  caller owns inputs and *reply.
 */
#ifndef STORE_CHAL_H
#define STORE_CHAL_H

#include "pm_msg.h"
#include "store_db.h"

#include <stdint.h>

#define STORE_CHAL_MAX 1000000      //  live (unexpired) challenges kept at most
#define STORE_CHAL_PRUNE_BATCH 5000 //  expired rows deleted per prune
#define STORE_CHAL_PRUNE_MS 60000   //  prune at most this often

#define STORE_CHAL_MIGRATION                                                                       \
    "CREATE TABLE scep_challenges(hash TEXT PRIMARY KEY, expires INTEGER NOT NULL,"                \
    " created INTEGER NOT NULL, used INTEGER, txid TEXT, key_hash TEXT) WITHOUT ROWID;"            \
    "CREATE INDEX scep_challenges_expires ON scep_challenges(expires);"

//  The store service's entry for every SCEP_CHALLENGE_* request: the reply in *reply.
store_rc_t store_chal_apply(store_db_t *db, const pm_msg_t *req, pm_msg_t **reply, int64_t now_ms);

//  Delete expired challenges (at most `max` rows). Returns how many, -1 on a
//  database error. store_chal_apply calls it by itself; tests call it directly.
int store_chal_prune(store_db_t *db, int64_t now_ms, int max);

//  Tests: make the next scep_challenge.add prune (and recount) at once.
void store_chal_prune_due(void);

#endif
