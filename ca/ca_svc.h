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
 */
#ifndef CA_SVC_H
#define CA_SVC_H

#include "ca_challenge.h"
#include "ca_pki.h"
#include "ca_profile.h"
#include "pm_msg.h"

typedef struct {
    ca_pki_opts_t pki;
    ca_challenge_mode_t challenge_mode;
    const char *challenge; //  static mode: the secret
    int64_t challenge_ttl_s;
    ca_profile_opts_t profile; //  defaults; `challenge` and `tls_anchor` are filled in here
    const char *tls_anchor;    //  PEM file to embed as trust anchor (NULL = none)
    const char *push_cert;     //  PEM push certificate to read the topic from (if no topic)
} ca_svc_opts_t;

typedef struct ca_svc ca_svc_t;

//  Load/make the keys, set up SCEP and the challenge policy. NULL + err.
ca_svc_t *ca_svc_new(const ca_svc_opts_t *opts, char *err, size_t errlen);
void ca_svc_destroy(ca_svc_t **svc);

ca_pki_t *ca_svc_pki(ca_svc_t *svc); //  borrowed

//  Handle one request. Returns the reply (caller owns; never NULL unless out
//  of memory). *event, if not NULL, receives an EVENT to publish (caller owns) or NULL.
pm_msg_t *ca_svc_handle(ca_svc_t *svc, const pm_msg_t *req, pm_msg_t **event);

//  A signed profile with the configured defaults (the `profile` command).
//  *der is OPENSSL_malloc'd. 0 / -1 + err.
int ca_svc_profile(ca_svc_t *svc, const ca_profile_opts_t *overrides, uint8_t **der, size_t *len,
                   char identity_uuid[37], char *err, size_t errlen);

#endif
