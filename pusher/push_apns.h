/*  push_apns — the pusher's APNs HTTP/2 client (bin/picomdm-pusher).
 *
 *  Wakeups in, MDM pushes out: POST <base>/3/device/<token hex> with body
 *  exactly {"mdm":"<PushMagic>"} and headers apns-topic, apns-push-type: mdm,
 *  apns-priority: 10, apns-expiration, through libcurl's multi interface
 *  (HTTP/2, CURLPIPE_MULTIPLEX) over a small pool of connections, the MDM
 *  push certificate as TLS client certificate.
 *
 *  Outcome rules (docs/push.md), each reported once through the callback:
 *    200                         -> PUSH_SENT
 *    410 Unregistered            -> PUSH_STALE: the token is stale, later
 *                                   wakes for it are refused until a wake
 *                                   brings another token (the next TokenUpdate)
 *    400 and other 4xx           -> PUSH_FAILED, never retried
 *    429                         -> that token backs off (exponential, with
 *                                   jitter), the push is retried; capped attempts
 *    5xx, GOAWAY, timeouts,
 *    transport errors            -> exponential backoff with jitter, retried
 *                                   up to max_attempts, then PUSH_FAILED
 *    403 (certificate problem)   -> PUSH_CERT_PROBLEM once for the topic (an
 *                                   alert: the push itself is not finished);
 *                                   that topic's pushes are held (this one,
 *                                   queued ones and later wakes, coalesced per
 *                                   enrollment) until push_apns_set_cert gives
 *                                   a new certificate, then they are sent
 *  A wake for an enrollment that already has a push queued, in flight or in
 *  backoff is coalesced into it (APNs keeps only the latest push anyway).
 *
 *  Threading: one thread drives it with push_apns_poll. Tokens are never
 *  logged or reported (secrets, CONVENTIONS §7).
 */
#ifndef PUSH_APNS_H
#define PUSH_APNS_H

#include "push_cert.h"
#include "pm_stats.h"

#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PUSH_APNS_PRODUCTION "https://api.push.apple.com"
#define PUSH_APNS_SANDBOX "https://api.sandbox.push.apple.com"
#define PUSH_EID_MAX 260
#define PUSH_MAGIC_MAX 256
#define PUSH_TOKEN_MAX 100 //  raw token bytes (real ones are 32)

typedef struct {
    const char *base_url; //  PUSH_APNS_PRODUCTION, PUSH_APNS_SANDBOX or any https URL
    const char *ca_file;  //  CA bundle to verify APNs (NULL = the system's)
    int connections;      //  pool size (0 = 2)
    int streams;          //  concurrent streams per connection (0 = 500)
    int max_inflight;     //  concurrent pushes over the whole pool (0 = streams): more in
                          //  flight than the round trip needs only costs CPU (libcurl's
                          //  per-transfer bookkeeping grows with the number of transfers)
    int timeout_ms;       //  per request (0 = 10000)
    int max_attempts;     //  per push, first try included (0 = 5)
    int backoff_ms;       //  first retry delay (0 = 1000); doubles per attempt
    int backoff_max_ms;   //  cap (0 = 60000)
    int64_t expiration_s; //  apns-expiration = now + this; 0 = "0" (deliver once, no storage)
    int priority;         //  apns-priority (0 = 10)
    bool use_curl;        //  libcurl instead of our own HTTP/2 client (push_h2.h)
} push_apns_cfg_t;

typedef enum {
    PUSH_SENT = 0,
    PUSH_FAILED,      //  permanent (4xx) or gave up after max_attempts, or refused
    PUSH_STALE,       //  410 Unregistered: token no longer valid for the topic
    PUSH_CERT_PROBLEM //  403: the push certificate was refused; topic stopped
} push_outcome_t;

typedef struct {
    const char *eid;
    push_outcome_t outcome;
    unsigned status;    //  HTTP status (0 = none: transport error or refused locally)
    const char *reason; //  Apple's reason, or ours ("timeout", "stale token", ...)
    const char *topic;
    const char *apns_id; //  from APNs, "" if none
    int attempts;
    int64_t stale_since_ms; //  410: APNs "timestamp" (0 if none)
    const uint8_t *token;   //  the raw token pushed to: for the store only, never in events/logs
    size_t token_len;
} push_result_t;

typedef void(push_apns_event_fn)(void *arg, const push_result_t *r);

typedef struct {
    const char *eid;
    const uint8_t *token; //  raw token bytes (TokenUpdate Token, as stored)
    size_t token_len;
    const char *push_magic;
    const char *topic;
    bool not_stale; //  the store vouches the token is current (a TokenUpdate after a 410
                    //  cleared it): forget our own stale mark for it
} push_target_t;

typedef struct {
    uint64_t wakes, coalesced, refused, sent, failed, stale, cert_problems, retries, requests;
    size_t queued, inflight, waiting, held; //  now
} push_apns_stats_t;

typedef struct push_apns push_apns_t;

//  `cert` is borrowed (must outlive the client or be replaced with
//  push_apns_set_cert). Returns NULL with a reason in err.
push_apns_t *push_apns_new(const push_apns_cfg_t *cfg, const push_cert_t *cert,
                           push_apns_event_fn *fn, void *arg, char *err, size_t errlen);
void push_apns_destroy(push_apns_t **apns);

//  Queue a push. Returns 0 queued, 1 coalesced into a pending push, -1 refused
//  (bad target, stale token, stopped topic: the callback has reported it).
int push_apns_wake(push_apns_t *apns, const push_target_t *t);

//  Wait up to timeout_ms for network activity (or until an extra fd is
//  readable; curl_multi_poll semantics), then do all due work and report
//  outcomes. Returns 0, -1 on a curl failure.
int push_apns_poll(push_apns_t *apns, struct curl_waitfd *extra, unsigned nextra, int timeout_ms);
//  Milliseconds until push_apns_poll has due work (-1 = nothing pending).
long push_apns_next_ms(push_apns_t *apns);
//  Pushes not yet reported (queued, in flight, waiting for a retry, held).
size_t push_apns_pending(const push_apns_t *apns);
void push_apns_stats(const push_apns_t *apns, push_apns_stats_t *out);
//  Observe every push's time from wake to outcome (ms) into `h` (borrowed; NULL = off).
void push_apns_set_latency(push_apns_t *apns, pm_stats_series_t *h);

//  Pushes held because their topic is stopped (403).
size_t push_apns_held(const push_apns_t *apns);
//  Report every held push as PUSH_FAILED with `why` (e.g. at exit).
void push_apns_drop_held(push_apns_t *apns, const char *why);

//  A new (fixed) certificate: used for new connections, stopped topics resume
//  and their held pushes are queued again.
int push_apns_set_cert(push_apns_t *apns, const push_cert_t *cert, char *err, size_t errlen);
//  Stop pushing for the certificate's topic (e.g. it expired): queued and
//  later pushes are held as after a 403. `why` is copied.
void push_apns_stop(push_apns_t *apns, const char *why);
//  Resume every stopped topic: held pushes are queued again.
void push_apns_resume(push_apns_t *apns);
//  Whether pushes for `topic` are stopped (403, push_apns_stop).
bool push_apns_topic_stopped(const push_apns_t *apns, const char *topic);

const char *push_outcome_name(push_outcome_t o); //  "sent", "failed", "stale", "cert_problem"
//  Lowercase hex of a raw token into out[2*len+1]. -1 if it does not fit.
int push_token_hex(const uint8_t *token, size_t len, char *out, size_t outlen);
//  Delay before attempt `attempt` (2 = first retry): base*2^(attempt-2) capped,
//  then "equal jitter" (half fixed, half random). `rnd` in [0,1).
int push_backoff_ms(int base_ms, int max_ms, int attempt, double rnd);

#endif
