/*  ca_challenge — the SCEP challenge password policy of picomdm-ca.
 *
 *  Two modes (configuration `challenge-mode`):
 *    static    one shared secret from the configuration; every PKCSReq must
 *              carry it.
 *    one-time  each enrollment profile gets its own random challenge (made
 *              when the profile is built); the first PKCSReq that presents it
 *              consumes it. A retry of the same SCEP transaction (same
 *              transactionID, same public key) is accepted again, so a lost
 *              reply does not strand the device. Unused challenges expire
 *              after `ttl_s`.
 *  Where one-time challenges live:
 *    durable   (ca_challenge_set_durable; what picomdm-ca's bus service uses)
 *              nothing is kept here: ca_challenge_make gives the challenge and
 *              its SHA-256, ca_svc records the hash in the store
 *              (scep_challenge.add, store/store_chal.h) before the profile is
 *              returned, and ca_scep defers the PKCSReq's check to the store
 *              (scep_challenge.use). A restart or kill -9 of picomdm-ca loses
 *              nothing, and several ca processes share the challenges.
 *    in memory (the default of this class: unit tests of the SCEP core) kept
 *              here by SHA-256; lost when the process ends.
 *  Comparisons are constant-time (the static secret) or of SHA-256 values
 *  (one-time). Challenges are never logged.
 */
#ifndef CA_CHALLENGE_H
#define CA_CHALLENGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CA_CHALLENGE_MAX_OUTSTANDING 100000

typedef enum { CA_CHALLENGE_STATIC = 0, CA_CHALLENGE_ONE_TIME } ca_challenge_mode_t;

typedef struct ca_challenge ca_challenge_t;

//  `secret`: the static challenge (required in static mode, at least 8 characters).
//  `ttl_s`: lifetime of one-time challenges (0 = 7 days). NULL with a reason in err.
ca_challenge_t *ca_challenge_new(ca_challenge_mode_t mode, const char *secret, int64_t ttl_s,
                                 char *err, size_t errlen);
void ca_challenge_destroy(ca_challenge_t **c);

ca_challenge_mode_t ca_challenge_mode(const ca_challenge_t *c);

//  The challenge to put into a new profile: the static secret, or a fresh
//  one-time challenge (32 characters) that is now outstanding. buf >= 64.
//  -1 when CA_CHALLENGE_MAX_OUTSTANDING are outstanding (a flood of profile
//  requests cannot exhaust memory).
int ca_challenge_issue(ca_challenge_t *c, char *buf, size_t size);

//  Durable one-time mode (see above): on = the store keeps and checks the
//  challenges; ca_challenge_issue then fails, ca_challenge_check refuses
//  one-time challenges (ca_scep defers them instead). No effect in static mode.
void ca_challenge_set_durable(ca_challenge_t *c, bool on);
bool ca_challenge_durable(const ca_challenge_t *c);

//  Durable mode: a fresh one-time challenge (32 characters) in buf (>= 64),
//  its SHA-256 in hash_hex and its expiry (ms since the epoch) in
//  *expires_ms; nothing is kept. The caller records the hash in the store
//  before it hands the challenge out. -1 outside durable mode or on failure.
int ca_challenge_make(ca_challenge_t *c, char *buf, size_t size, char hash_hex[65],
                      int64_t *expires_ms);

//  SHA-256 of a challenge, 64 lowercase hex digits (what the store keeps).
void ca_challenge_hash_hex(const char *password, char hex[65]);

//  Check (and in one-time mode consume) `password` for SCEP transaction
//  `txid` whose CSR key hashes to `key_hash` (32 bytes). true = accepted.
bool ca_challenge_check(ca_challenge_t *c, const char *password, const char *txid,
                        const uint8_t key_hash[32]);

//  Lifetime of one-time challenges, seconds.
int64_t ca_challenge_ttl(const ca_challenge_t *c);

//  Outstanding one-time challenges (tests, metrics).
size_t ca_challenge_outstanding(const ca_challenge_t *c);

//  Tests: pretend `seconds` have passed.
void ca_challenge_advance_clock(ca_challenge_t *c, int64_t seconds);

#endif
