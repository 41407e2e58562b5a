/*  store_chal — one-time use of SCEP challenges, enforced by the store's
 *  database (bin/picomdm-store, service "store"; docs/enrollment.md, issue #6).
 *
 *  picomdm-ca puts a signed challenge into every enrollment profile
 *  (challenge-mode one-time): an HMAC tag and an expiry make it
 *  self-authenticating, so handing a profile out writes nothing here. A
 *  PKCSReq presenting it is checked by the ca (tag, expiry), then consumed
 *  here (scep_challenge.use with the challenge's SHA-256 and expiry): the
 *  first use inserts the row (hash, expiry, transactionID, SHA-256 of the
 *  CSR's public key) and is accepted; the store applies requests one at a
 *  time, so of two requests with one challenge exactly one wins. The same
 *  transaction again (a device retrying after a lost reply) is accepted
 *  again, any other is refused ("used"); a challenge expired by the store's
 *  clock is refused ("expired") and not recorded. The row lives until the
 *  challenge expires (then it is pruned: the challenge is refused by its
 *  expiry from then on). Only hashes are kept, never a challenge, and a row
 *  is looked up by the hash (the primary key).
 *
 *  scep_challenge.use may carry the ca's `ca.issued` event: when accepted it
 *  is appended to the event log in the same transaction (published after the
 *  commit, as every event) and its seq returned, saving the ca a separate
 *  event.append round trip.
 *
 *  Expired rows are pruned while challenges are used (at most once a minute,
 *  a bounded batch at a time). Rows are made only by PKCSReqs that carry a
 *  genuine challenge (each a signed profile and a certificate), so no cap.
 *  Rows left unused by the earlier scep_challenge.add (protocol <= 13) are
 *  never accepted and pruned when they expire.
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

#define STORE_CHAL_MAX_TTL_MS (366LL * 86400000) //  expiry accepted at most this far ahead
#define STORE_CHAL_PRUNE_BATCH 5000              //  expired rows deleted per prune
#define STORE_CHAL_PRUNE_MS 60000                //  prune at most this often

#define STORE_CHAL_MIGRATION                                                                       \
    "CREATE TABLE scep_challenges(hash TEXT PRIMARY KEY, expires INTEGER NOT NULL,"                \
    " created INTEGER NOT NULL, used INTEGER, txid TEXT, key_hash TEXT) WITHOUT ROWID;"            \
    "CREATE INDEX scep_challenges_expires ON scep_challenges(expires);"

//  Schema 7: the bus request (rid) whose use logged the event riding with it
//  (ca.issued), and that event's seq: picomdm-ca's retry of the same request
//  (same rid, after a reply it did not get) is answered with that seq and
//  logs nothing again.
#define STORE_CHAL_MIGRATION_7                                                                     \
    "ALTER TABLE scep_challenges ADD COLUMN event_rid TEXT;"                                       \
    "ALTER TABLE scep_challenges ADD COLUMN event_seq INTEGER;"

//  The store service's entry for every SCEP_CHALLENGE_* request: the reply in *reply.
store_rc_t store_chal_apply(store_db_t *db, const pm_msg_t *req, pm_msg_t **reply, int64_t now_ms);

//  Delete expired challenges (at most `max` rows). Returns how many, -1 on a
//  database error. store_chal_apply calls it by itself; tests call it directly.
int store_chal_prune(store_db_t *db, int64_t now_ms, int max);

//  Tests: make the next scep_challenge.use prune (and recount) at once.
void store_chal_prune_due(void);

#endif
