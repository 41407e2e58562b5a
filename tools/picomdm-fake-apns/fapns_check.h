/*  fapns_check — the APNs rules the stand-in (bin/picomdm-fake-apns) enforces
 *  on one MDM push request, the device-token list, and the failure rules an
 *  operator or test injects. Pure logic, no I/O: the server (fapns_server.c)
 *  feeds it what arrived on an HTTP/2 stream.
 *
 *  Checks, in the order APNs documents its reasons (Apple, "Handling
 *  notification responses from APNs"; docs/push.md):
 *    method POST (405 MethodNotAllowed), path /3/device/<token> (404 BadPath),
 *    token present (400 MissingDeviceToken) and 64 hex characters
 *    (400 BadDeviceToken), apns-topic present (400 MissingTopic) and equal to
 *    the client certificate's UID topic (400 BadTopic; a certificate without
 *    one: 403 BadCertificate), apns-push-type mdm when present
 *    (400 InvalidPushType), apns-priority 5 or 10 (400 BadPriority),
 *    apns-expiration digits (400 BadExpirationDate), body at most 4096 bytes
 *    (413 PayloadTooLarge), not empty (400 PayloadEmpty), exactly
 *    {"mdm":"<PushMagic>"} (400 BadPayload — the stand-in's own reason: Apple
 *    documents none for a malformed MDM body), token known (400 BadDeviceToken)
 *    and registered for that topic (400 DeviceTokenNotForTopic).
 *
 *  Failure rules (config file or the control endpoint), one per line:
 *      <token|*> <status|goaway|delay> [count=N] [delay=MS] [reason=Text]
 *  status is 400, 403, 410, 429, 500 or 503; count=N applies the rule to the
 *  next N matching requests only (default: every one); delay=MS holds the
 *  answer that long (with `delay` the request is then answered normally).
 *  Rules apply to requests that passed every check above, first match wins.
 */
#ifndef FAPNS_CHECK_H
#define FAPNS_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FAPNS_BODY_MAX 4096 //  APNs payload limit
#define FAPNS_REASON_MAX 48
#define FAPNS_MAGIC_MAX 256
#define FAPNS_TOPIC_MAX 256

typedef struct {
    const char *method;     //  :method
    const char *path;       //  :path
    const char *topic;      //  apns-topic (NULL = absent)
    const char *push_type;  //  apns-push-type
    const char *priority;   //  apns-priority
    const char *expiration; //  apns-expiration
    const uint8_t *body;
    size_t body_len;
    bool body_too_large;    //  more than FAPNS_BODY_MAX bytes arrived
    const char *cert_topic; //  the client certificate's UID topic ("" = none)
} fapns_req_t;

typedef struct {
    unsigned status;               //  HTTP status to answer
    char reason[FAPNS_REASON_MAX]; //  Apple reason ("" for 200)
    char token[65];                //  the token from the path (lowercase), when well-formed
    char magic[FAPNS_MAGIC_MAX];   //  the PushMagic, when the body was right
} fapns_verdict_t;

/* ---- known device tokens ---- */
typedef struct fapns_tokens fapns_tokens_t;
fapns_tokens_t *fapns_tokens_new(void);
void fapns_tokens_destroy(fapns_tokens_t **t);
//  Add "<64 hex> [topic]" (topic "" = any). 0, or -1 with a reason in err.
int fapns_tokens_add_line(fapns_tokens_t *t, const char *line, char *err, size_t errlen);
//  Load a file of such lines (# comments, blank lines). Returns the count or -1.
int fapns_tokens_load(fapns_tokens_t *t, const char *path, char *err, size_t errlen);
size_t fapns_tokens_size(const fapns_tokens_t *t);

//  Validate one request. `known` NULL = accept any well-formed token.
//  Always fills v (status 200 when everything passed).
void fapns_check(const fapns_req_t *r, const fapns_tokens_t *known, fapns_verdict_t *v);

/* ---- failure rules ---- */
typedef enum { FAPNS_ACT_STATUS = 0, FAPNS_ACT_GOAWAY, FAPNS_ACT_DELAY } fapns_act_t;

typedef struct {
    char token[65]; //  "*" = any
    fapns_act_t act;
    unsigned status;
    char reason[FAPNS_REASON_MAX];
    long count; //  -1 = every time
    int delay_ms;
} fapns_rule_t;

typedef struct fapns_rules fapns_rules_t;
fapns_rules_t *fapns_rules_new(void);
void fapns_rules_destroy(fapns_rules_t **r);
//  Parse and append one rule line. 0, 1 for a blank/comment line, -1 with err.
int fapns_rules_add_line(fapns_rules_t *r, const char *line, char *err, size_t errlen);
int fapns_rules_load(fapns_rules_t *r, const char *path, char *err, size_t errlen);
void fapns_rules_clear(fapns_rules_t *r);
size_t fapns_rules_size(const fapns_rules_t *r);
//  The first live rule for `token` (its count is used up by one); copied into
//  *out. Returns true when one matched.
bool fapns_rules_match(fapns_rules_t *r, const char *token, fapns_rule_t *out);

//  Apple's default reason for an injected status.
const char *fapns_default_reason(unsigned status);

#endif
