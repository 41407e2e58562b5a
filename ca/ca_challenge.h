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
 *  How one-time challenges are made and checked:
 *    signed    (ca_challenge_set_key_file; what picomdm-ca's bus service
 *              uses) a challenge is self-authenticating: version, 16 random
 *              bytes, its expiry and an HMAC-SHA256 tag under the challenge
 *              key (challenge.key, 0600, beside the CA key, shared by every
 *              ca process like the CA key), URL-safe base64, 64 characters.
 *              Nothing is kept when a profile is made (no store write);
 *              ca_challenge_check verifies the tag and the expiry and
 *              remembers what the store must consume (ca_challenge_take_seen):
 *              the store records the used challenge's SHA-256 at the PKCSReq
 *              (scep_challenge.use, store/store_chal.h) and refuses a second
 *              use by another transaction or key. A restart or kill -9 of
 *              picomdm-ca loses nothing, and several ca processes accept each
 *              other's challenges. A new key invalidates every outstanding
 *              one-time profile.
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

//  The longest a one-time challenge may live: the store refuses expiries
//  further ahead (STORE_CHAL_MAX_TTL_MS, store/store_chal.h).
#define CA_CHALLENGE_MAX_TTL_S (366LL * 86400)

typedef struct ca_challenge ca_challenge_t;

//  `secret`: the static challenge (required in static mode, at least 8 characters).
//  `ttl_s`: lifetime of one-time challenges (0 = 7 days). NULL with a reason in err.
ca_challenge_t *ca_challenge_new(ca_challenge_mode_t mode, const char *secret, int64_t ttl_s,
                                 char *err, size_t errlen);
void ca_challenge_destroy(ca_challenge_t **c);

ca_challenge_mode_t ca_challenge_mode(const ca_challenge_t *c);

//  The challenge to put into a new profile: the static secret, or a fresh
//  in-memory one-time challenge (32 characters) that is now outstanding.
//  buf >= 64. Signed mode: ca_challenge_make instead (-1 here).
//  -1 when CA_CHALLENGE_MAX_OUTSTANDING are outstanding (a flood of profile
//  requests cannot exhaust memory).
int ca_challenge_issue(ca_challenge_t *c, char *buf, size_t size);

//  Signed one-time challenges (see above): load the 32-byte key from `path`
//  (64 hex digits), or make it (0600, atomically: of two processes starting
//  at once both end up with the same key) when the file does not exist. A
//  key file readable by others is tightened to 0600. -1 + err when the file
//  exists but is unreadable or malformed (it is never replaced: outstanding
//  profiles depend on it). No effect in static mode.
int ca_challenge_set_key_file(ca_challenge_t *c, const char *path, char *err, size_t errlen);
//  The same with a key in memory (tests). len >= 16.
int ca_challenge_set_key(ca_challenge_t *c, const uint8_t *key, size_t len);
bool ca_challenge_signed(const ca_challenge_t *c);

//  Signed mode: a fresh one-time challenge (64 characters) in buf (>= 65),
//  its SHA-256 in hash_hex (may be NULL) and its expiry (ms since the epoch)
//  in *expires_ms (may be NULL); nothing is kept. -1 outside signed mode.
int ca_challenge_make(ca_challenge_t *c, char *buf, size_t size, char hash_hex[65],
                      int64_t *expires_ms);

//  Signed mode: what the last accepting ca_challenge_check saw, for the
//  store's one-time check. Taking it clears it (out may be NULL: just clear).
typedef struct {
    char hash_hex[65];     //  SHA-256 of the challenge
    char key_hash_hex[65]; //  SHA-256 of the CSR's SubjectPublicKeyInfo
    char txid[128];        //  the SCEP transactionID as sent
    int64_t expires_ms;    //  the challenge's expiry
} ca_challenge_seen_t;
bool ca_challenge_take_seen(ca_challenge_t *c, ca_challenge_seen_t *out);

//  Signed mode: while on, ca_challenge_check refuses every challenge (the
//  store refused it: ca_svc runs the request again for its FAILURE CertRep).
void ca_challenge_refuse(ca_challenge_t *c, bool on);

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
