/*  ca_svc — the "ca" bus service of picomdm-ca, independent of the transport:
 *  a decoded request in, the reply (and an audit event) out. main.c connects
 *  it to the bus; the unit test drives it directly with pm_msg messages.
 *
 *  Requests (proto/pm_msgtab.def, section "ca"; docs/enrollment.md):
 *    scep     -> scep.reply     (SCEP over HTTP, forwarded by the gateway)
 *    profile  -> profile.reply  (a signed enrollment profile)
 *  anything else -> error bad_request.
 *  Events: ca.issued (a certificate was issued), ca.rejected (a PKIOperation
 *  was refused), ca.profile (a profile was handed out). Never a secret in them.
 *
 *  One-time challenges with a store (opts.call set; what picomdm-ca does):
 *  challenges are signed (ca_challenge.h; key file challenge.key beside the
 *  CA key, made on first start), so a profile is answered at once, without
 *  the store. A PKCSReq whose challenge checks out (tag, expiry) gets its
 *  CertRep built, then the store consumes the challenge (scep_challenge.use,
 *  carrying the ca.issued event); only an accepted verdict sends the CertRep
 *  SUCCESS, a refusal answers FAILURE badRequest (the request runs again with
 *  the challenge refused). That wait does not block the caller's loop:
 *  ca_svc_request calls `done` later, from the store reply's callback. No
 *  answer from the store: an HTTP 503 scep.reply (the device retries) —
 *  never a certificate without a consumed challenge. The ca.issued event of
 *  an accepted PKCSReq comes with `seq` set: the store logged (and
 *  publishes) it already.
 *  Without opts.call, one-time challenges are kept in this process's memory
 *  (unit tests; lost on restart).
 */
#ifndef CA_SVC_H
#define CA_SVC_H

#include "ca_challenge.h"
#include "ca_pki.h"
#include "ca_profile.h"
#include "pm_bus.h"
#include "pm_msg.h"

typedef struct {
    ca_pki_opts_t pki;
    ca_challenge_mode_t challenge_mode;
    const char *challenge; //  static mode: the secret
    int64_t challenge_ttl_s;
    ca_profile_opts_t profile; //  defaults; `challenge` and `tls_anchor` are filled in here
    const char *tls_anchor;    //  PEM file to embed as trust anchor (NULL = none)
    const char *push_cert;     //  PEM push certificate to read the topic from (if no topic)
    //  One-time challenges consumed in the store: how to reach it. Send `req` to the
    //  service that handles its type, call fn(fn_arg, reply, error) exactly
    //  once, later (or now); 0, or -1 when it could not be sent (fn is then
    //  not called). NULL = one-time challenges in memory.
    int (*call)(void *arg, const pm_msg_t *req, pm_bus_reply_fn *fn, void *fn_arg);
    void *call_arg;
} ca_svc_opts_t;

//  The answer to one request: the reply (never NULL unless out of memory) and
//  the audit event to publish (or NULL). The callee takes both.
typedef void(ca_svc_done_fn)(void *arg, pm_msg_t *reply, pm_msg_t *event);

typedef struct ca_svc ca_svc_t;

//  Load/make the keys, set up SCEP and the challenge policy. NULL + err.
ca_svc_t *ca_svc_new(const ca_svc_opts_t *opts, char *err, size_t errlen);
//  Requests still waiting are answered first (ca_svc_abandon): call it while
//  their `done` callbacks can still run, and after the bus (no store reply
//  may arrive later).
void ca_svc_destroy(ca_svc_t **svc);

ca_pki_t *ca_svc_pki(ca_svc_t *svc); //  borrowed

//  Handle one request: done(arg, ...) is called exactly once, before this
//  returns or — when the store must answer first — later, from the store
//  reply's callback (req need not outlive this call).
void ca_svc_request(ca_svc_t *svc, const pm_msg_t *req, ca_svc_done_fn *done, void *arg);

//  Requests waiting for the store (tests, metrics).
size_t ca_svc_waiting(const ca_svc_t *svc);

//  Stopping: answer every waiting request now (profile: error timeout; SCEP:
//  HTTP 503, the device retries), so no client waits for a process that is
//  going away. Store replies that still arrive for them are ignored.
void ca_svc_abandon(ca_svc_t *svc);

//  Handle one request synchronously. Returns the reply (caller owns; never
//  NULL unless out of memory). *event, if not NULL, receives an EVENT to
//  publish (caller owns) or NULL. For a service whose store answers at once
//  (or that has none); a request still waiting is answered error internal.
pm_msg_t *ca_svc_handle(ca_svc_t *svc, const pm_msg_t *req, pm_msg_t **event);

//  A signed profile with the configured defaults (the `profile` command).
//  *der is OPENSSL_malloc'd. 0 / -1 + err. With signed challenges, hash_hex
//  and *expires_ms (both may be NULL) receive the challenge's SHA-256 and
//  expiry (nothing needs recording: the store sees it at the PKCSReq).
int ca_svc_profile(ca_svc_t *svc, const ca_profile_opts_t *overrides, uint8_t **der, size_t *len,
                   char identity_uuid[37], char *hash_hex, int64_t *expires_ms, char *err,
                   size_t errlen);

#endif
