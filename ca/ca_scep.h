/*  ca_scep — the SCEP server core of picomdm-ca (RFC 8894, as Apple devices use it).
 *
 *  Operations (the gateway forwards the HTTP request as a `scep` bus message):
 *    GetCACaps     text/plain: POSTPKIOperation, Renewal, SHA-256, AES, SCEPStandard
 *    GetCACert     the CA certificate (application/x-x509-ca-cert, DER), or, when
 *                  a separate RA is in use, a degenerate PKCS#7 with RA + CA
 *                  (application/x-x509-ca-ra-cert)
 *    PKIOperation  GET (message = the base64 `message` query value, URL-decoded)
 *                  or POST (message = the DER body). PKCSReq (19) and
 *                  RenewalReq (17) are served; the reply is a CertRep
 *                  (application/x-pki-message): SUCCESS with the certificate in
 *                  a degenerate PKCS#7 enveloped to the requester's signing
 *                  certificate, or FAILURE with failInfo (badAlg, badMessageCheck,
 *                  badRequest, badCertId). CertPoll/GetCert/GetCRL: FAILURE.
 *  Input that is not a SCEP pkiMessage at all (garbage, truncated, wrong
 *  PKCS#7 type, no transactionID) cannot carry a CertRep: HTTP 400 text/plain.
 *  Every input is bounded (CA_SCEP_MAX_MESSAGE) and never crashes.
 */
#ifndef CA_SCEP_H
#define CA_SCEP_H

#include "ca_challenge.h"
#include "ca_pki.h"
#include "pm_scepc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CA_SCEP_MAX_MESSAGE (64 * 1024)

//  SCEP messageType values (RFC 8894 §3.2.1.2)
enum {
    CA_SCEP_CERTREP = 3,
    CA_SCEP_RENEWALREQ = 17,
    CA_SCEP_PKCSREQ = 19,
    CA_SCEP_CERTPOLL = 20,
    CA_SCEP_GETCERT = 21,
    CA_SCEP_GETCRL = 22
};
//  pkiStatus and failInfo values
enum { CA_SCEP_SUCCESS = 0, CA_SCEP_FAILURE = 2, CA_SCEP_PENDING = 3 };
enum {
    CA_SCEP_BAD_ALG = 0,
    CA_SCEP_BAD_MESSAGE_CHECK = 1,
    CA_SCEP_BAD_REQUEST = 2,
    CA_SCEP_BAD_TIME = 3,
    CA_SCEP_BAD_CERT_ID = 4
};

//  NIDs of the SCEP signed attributes (OIDs 2.16.840.1.113733.1.9.x): registered
//  once in proto/pm_scepc.c, shared with the device-side client.
typedef pm_scep_nids_t ca_scep_nids_t;
static inline const ca_scep_nids_t *ca_scep_nids(void)
{
    return pm_scep_nids();
}

typedef struct {
    int status;               //  HTTP status for the device
    const char *content_type; //  static string
    uint8_t *body;            //  owned by the reply (ca_scep_reply_clear)
    size_t len;
    //  PKIOperation outcome, for logs and events
    int message_type; //  request messageType, 0 if none
    int pki_status;   //  -1 = no CertRep
    int fail_info;    //  -1 = none
    char txid[80];    //  sanitized transactionID (printable ASCII)
    char subject[256];
    char reason[256];        //  why it failed (never contains the challenge)
    uint8_t cert_sha256[32]; //  issued certificate, when pki_status == SUCCESS
} ca_scep_reply_t;

typedef struct ca_scep ca_scep_t;

//  pki and challenge are borrowed and must outlive the server.
ca_scep_t *ca_scep_new(ca_pki_t *pki, ca_challenge_t *challenge);
void ca_scep_destroy(ca_scep_t **s);

//  Handle one SCEP HTTP request. Always fills *r (clear it afterwards);
//  returns 0, or -1 when the reply is an internal error (500).
int ca_scep_handle(ca_scep_t *s, const char *method, const char *operation, const uint8_t *msg,
                   size_t len, ca_scep_reply_t *r);
void ca_scep_reply_clear(ca_scep_reply_t *r);

//  Step timing for the cost harness (ca/ca_cost_test.c): when set, fn is called
//  at the end of each step of a PKIOperation with the step's name (a static
//  string), so the caller can read its clock. NULL (the default): no calls.
typedef void ca_scep_trace_fn(void *arg, const char *step);
void ca_scep_set_trace(ca_scep_t *s, ca_scep_trace_fn *fn, void *arg);

#endif
