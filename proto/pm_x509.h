/*  pm_x509 — the "renews" certificate extension, shared by the ca (which
 *  writes it) and the gateway (which reads it).
 *
 *  When the CA issues a certificate for a SCEP RenewalReq it has just verified
 *  (signed with the device's current identity certificate, issued by this CA,
 *  for the same name), it records the SHA-256 of that current certificate in
 *  the new one, in a non-critical extension. The gateway passes it to the back
 *  end as `cert_prev_hash`; the store re-binds an enrollment from its bound
 *  certificate to the renewal only when this hash equals the bound one. The
 *  proof is the CA's signature over the new certificate: no state has to be
 *  shared between the ca and the store.
 */
#ifndef PM_X509_H
#define PM_X509_H

#include <openssl/x509.h>
#include <stdint.h>

//  A UUID-based OID (ITU-T X.667, arc 2.25): needs no registration.
#define PM_X509_OID_RENEWS "2.25.146377783496321046482201441288558616832"

//  Add the extension (OCTET STRING of the 32-byte hash). The certificate must be
//  signed afterwards. Returns 0 or -1.
int pm_x509_set_renews(X509 *cert, const uint8_t prev_sha256[32]);

//  Read it: 1 and the hash in `out` when present and well formed, 0 when absent,
//  -1 when present but malformed.
int pm_x509_get_renews(const X509 *cert, uint8_t out[32]);

#endif
