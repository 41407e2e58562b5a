/*  store_push — the store's side of the pusher (bin/picomdm-store, service
 *  "store"): push.info (token, PushMagic, topic, stale flag per enrollment)
 *  and push.outcome (last push per enrollment, stale token on 410, and one
 *  push.* event in the log per outcome). See docs/push.md.
 *
 *  Like every store operation these run inside the transaction the caller
 *  opened (store_svc's group commit) and take the store_db handle. Outcomes
 *  live in their own table, push_state, created on first use.
 *  Ownership: the caller owns inputs, `out` and *reply.
 */
#ifndef STORE_PUSH_H
#define STORE_PUSH_H

#include "pm_msg.h"
#include "store_db.h"

#include <msgpack.h>

#define STORE_PUSH_INFO_MAX 1000 //  enrollments per push.info request

//  Packed array of maps {eid, token, push_magic, topic, stale, enrolled} for
//  the known ones among eids[n], into out.
store_rc_t store_push_info(store_db_t *db, const char *const *eids, size_t n, msgpack_sbuffer *out);

//  Apply an array of outcome maps (see PUSH_OUTCOME in pm_msgtab.def).
//  Malformed entries are skipped and counted in *skipped.
store_rc_t store_push_outcome(store_db_t *db, const msgpack_object *outcomes, int64_t now_ms,
                              unsigned *applied, unsigned *skipped);

//  The store service's entry for PUSH_INFO and PUSH_OUTCOME: the reply in *reply.
store_rc_t store_push_apply(store_db_t *db, const pm_msg_t *req, pm_msg_t **reply, int64_t now_ms);

#endif
