/*  ca_pki — the key material of picomdm-ca and certificate issuance (OpenSSL 3).
 *
 *  Holds three certificate/key pairs, each loaded from PEM files or made on
 *  first start (keys written 0600, never logged):
 *    - the device CA: issues every device identity certificate. Made as RSA
 *      2048 / SHA-256 / 10 years when both files are absent; an existing pair
 *      that does not load or match is an error, never replaced (enrolled
 *      devices depend on it). `picomdm up` makes a P-256 CA: that works too.
 *    - the SCEP RA: the certificate devices encrypt their SCEP requests to and
 *      that signs CertRep. SCEP (RFC 8894 §2.2) needs RSA here (key transport),
 *      so it is the CA itself when the CA key is RSA, otherwise an RSA 2048
 *      certificate issued by the CA (GetCACert then returns CA + RA).
 *    - the profile signer: a leaf issued by the CA that CMS-signs enrollment
 *      profiles (the CA key never signs anything but certificates and, as RA,
 *      SCEP replies).
 *
 *  Issued device certificates: subject from the CSR (or the configured prefix
 *  + the CSR's CN), a random 127-bit serial, the configured lifetime, key
 *  usage and extended key usage (OpenSSL extension syntax, validated at start),
 *  CA:FALSE, SKI/AKI. Served by picomdm-ca only.
 */
#ifndef CA_PKI_H
#define CA_PKI_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct {
    const char *ca_cert;       //  PEM paths; both absent = make a new CA
    const char *ca_key;        //
    const char *ra_cert;       //  used only when the CA key is not RSA (made if absent)
    const char *ra_key;        //
    const char *signer_cert;   //  profile signer (made if absent)
    const char *signer_key;    //
    const char *ca_name;       //  CN of a new CA ("PicoMDM device CA")
    int cert_days;             //  lifetime of issued device certificates (> 0)
    const char *key_usage;     //  e.g. "critical,digitalSignature,keyEncipherment"
    const char *ext_key_usage; //  e.g. "clientAuth"; NULL or "" = none
    const char *subject; //  "" / NULL = the CSR's subject; "/O=Org/OU=Devices" = these + CSR CN
    int min_rsa_bits;    //  smallest RSA key accepted in a CSR (0 = 2048)
} ca_pki_opts_t;

typedef struct ca_pki ca_pki_t;

//  Load or make the three pairs. NULL with the reason (and what to do) in err.
//  *created (may be NULL) says whether a new CA was made.
ca_pki_t *ca_pki_new(const ca_pki_opts_t *opts, bool *created, char *err, size_t errlen);
void ca_pki_destroy(ca_pki_t **pki);

//  Borrowed pointers, valid while pki lives.
X509 *ca_pki_ca_cert(const ca_pki_t *pki);
X509 *ca_pki_ra_cert(const ca_pki_t *pki); //  == ca cert when the CA is RSA
EVP_PKEY *ca_pki_ra_key(const ca_pki_t *pki);
X509 *ca_pki_signer_cert(const ca_pki_t *pki);
EVP_PKEY *ca_pki_signer_key(const ca_pki_t *pki);
bool ca_pki_has_ra(const ca_pki_t *pki); //  a separate RA certificate is in use

//  Check a CSR (self-signature, key type and size). `pub`: the CSR's public
//  key, decoded by the caller (NULL = the one decoded with the CSR). 0, or -1
//  with a reason.
int ca_pki_check_csr(const ca_pki_t *pki, X509_REQ *req, EVP_PKEY *pub, char *err, size_t errlen);

//  Issue a device certificate for a checked CSR (`pub` as above; the
//  certificate carries the CSR's SubjectPublicKeyInfo as it arrived). Caller
//  owns the result. `renews` (NULL for a first enrollment) is the SHA-256 of
//  the certificate a verified RenewalReq was signed with: it is recorded in
//  the new certificate (pm_x509.h) so that the store can re-bind the
//  enrollment to it.
X509 *ca_pki_issue(ca_pki_t *pki, X509_REQ *req, EVP_PKEY *pub, const uint8_t *renews, char *err,
                   size_t errlen);

//  Was `cert` issued by our CA, and is it valid now? (renewal requests)
bool ca_pki_issued_by_us(const ca_pki_t *pki, X509 *cert);

//  "CN=...,O=..." one-line subject for logs (buf >= 64).
void ca_pki_subject_line(X509_NAME *name, char *buf, size_t size);

#endif
