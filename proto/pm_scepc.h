/*  pm_scepc — a minimal SCEP client (RFC 8894): what an Apple device does
 *  against our SCEP server. Used by picomdm-devsim (--enroll-url), the ca unit
 *  tests, tests/tools/ca_client and the enrollment benchmarks. Only OpenSSL;
 *  the SCEP attribute OIDs are registered here once and shared with the
 *  server (ca_scep).
 */
#ifndef PM_SCEPC_H
#define PM_SCEPC_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stddef.h>
#include <stdint.h>

//  SCEP messageType values (RFC 8894 §3.2.1.2)
enum { PM_SCEP_CERTREP = 3, PM_SCEP_RENEWALREQ = 17, PM_SCEP_PKCSREQ = 19 };
//  pkiStatus values
enum { PM_SCEP_SUCCESS = 0, PM_SCEP_FAILURE = 2, PM_SCEP_PENDING = 3 };

//  NIDs of the SCEP signed attributes (OIDs 2.16.840.1.113733.1.9.x, registered
//  with OBJ_create on first use). Static storage: do not free.
typedef struct {
    int message_type, pki_status, fail_info, sender_nonce, recipient_nonce, transaction_id;
} pm_scep_nids_t;
const pm_scep_nids_t *pm_scep_nids(void);

//  A PKCS#10 request for `key` with subject CN=`cn` (O=Test) and, if not NULL,
//  a challengePassword. Caller owns it.
X509_REQ *pm_scepc_csr(EVP_PKEY *key, const char *cn, const char *challenge);

//  The same with a full subject name (e.g. the profile's SCEP Subject).
X509_REQ *pm_scepc_csr_name(EVP_PKEY *key, const X509_NAME *name, const char *challenge);

//  The transient self-signed certificate a device signs its PKCSReq with.
X509 *pm_scepc_self_signed(EVP_PKEY *key, const char *cn);

//  A pkiMessage: `csr` enveloped (AES-128-CBC) to `recipient` (the CA or RA
//  certificate from GetCACert), signed (SHA-256) by signer/signer_key, with
//  messageType `type`, transactionID `txid` and senderNonce `nonce` (16 bytes).
//  *der is OPENSSL_malloc'd (caller frees with OPENSSL_free).
int pm_scepc_request(int type, X509_REQ *csr, X509 *signer, EVP_PKEY *signer_key, X509 *recipient,
                     const char *txid, const uint8_t nonce[16], uint8_t **der, size_t *len);

typedef struct {
    int pki_status; //  0 success, 2 failure, 3 pending, -1 missing
    int fail_info;  //  -1 when absent
    int message_type;
    char txid[129];
    uint8_t recipient_nonce[64];
    int recipient_nonce_len;
    X509 *cert; //  the issued certificate (caller frees), SUCCESS only
} pm_scepc_result_t;

//  Verify a CertRep signed by `ra` (whose issuer chain is `ca`) and, on
//  SUCCESS, decrypt the certificate with the requester's cert/key.
//  0 when the reply is a well-formed, correctly signed CertRep; -1 otherwise.
int pm_scepc_parse_reply(const uint8_t *der, size_t len, X509 *ra, X509 *req_cert,
                         EVP_PKEY *req_key, pm_scepc_result_t *res, char *err, size_t errlen);

#endif
