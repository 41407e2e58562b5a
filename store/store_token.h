/*  store_token — one-time enrollment tokens in the store's database
 *  (bin/picomdm-store, service "store"; docs/enrollment.md).
 *
 *  `picomdm enroll-token new` makes random tokens and sends only their
 *  SHA-256 (enroll_token.add); the gateway, when the enrollment route is
 *  protected by tokens, hashes the token from the URL and consumes it
 *  (enroll_token.use) before it asks the ca for the profile. A token is
 *  usable once: the consuming UPDATE matches only an unused, unrevoked,
 *  unexpired row, so of two concurrent downloads with one token exactly one
 *  is accepted (the store applies requests one at a time). A retry of the
 *  same bus request (same rid, e.g. after a store restart) is accepted again.
 *  enroll_token.release undoes a use when the profile could not be served.
 *
 *  Like every store operation these run inside the transaction the caller
 *  opened (store_svc's group commit). The table, enroll_tokens, is created on
 *  first use. The caller owns inputs and *reply.
 */
#ifndef STORE_TOKEN_H
#define STORE_TOKEN_H

#include "pm_msg.h"
#include "store_db.h"

#include <stdbool.h>
#include <stdint.h>

#define STORE_TOKEN_ADD_MAX 1000 //  tokens per enroll_token.add
#define STORE_TOKEN_ID_LEN 12    //  hex digits of the hash that name a token

//  The store service's entry for every ENROLL_TOKEN_* request: the reply in *reply.
store_rc_t store_token_apply(store_db_t *db, const pm_msg_t *req, pm_msg_t **reply, int64_t now_ms);

#endif
