/*  ca_scepc — a minimal SCEP client: what an Apple device does against our
 *  SCEP server. Used by the ca unit tests and the enrollment benchmark; it is
 *  independent of the server code except for the attribute NIDs (ca_scep_nids).
 */
#ifndef CA_SCEPC_H
#define CA_SCEPC_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stddef.h>
#include <stdint.h>

//  A PKCS#10 request for `key` with subject CN=`cn` (O=Test) and, if not NULL,
//  a challengePassword. Caller owns it.
X509_REQ *ca_scepc_csr(EVP_PKEY *key, const char *cn, const char *challenge);

//  The transient self-signed certificate a device signs its PKCSReq with.
X509 *ca_scepc_self_signed(EVP_PKEY *key, const char *cn);

//  A pkiMessage: `csr` enveloped (AES-128-CBC) to `recipient` (the CA or RA
//  certificate from GetCACert), signed (SHA-256) by signer/signer_key, with
//  messageType `type`, transactionID `txid` and senderNonce `nonce` (16 bytes).
//  *der is OPENSSL_malloc'd (caller frees with OPENSSL_free).
int ca_scepc_request(int type, X509_REQ *csr, X509 *signer, EVP_PKEY *signer_key, X509 *recipient,
                     const char *txid, const uint8_t nonce[16], uint8_t **der, size_t *len);

typedef struct {
    int pki_status; //  0 success, 2 failure, 3 pending, -1 missing
    int fail_info;  //  -1 when absent
    int message_type;
    char txid[129];
    uint8_t recipient_nonce[64];
    int recipient_nonce_len;
    X509 *cert; //  the issued certificate (caller frees), SUCCESS only
} ca_scepc_result_t;

//  Verify a CertRep signed by `ra` (whose issuer chain is `ca`) and, on
//  SUCCESS, decrypt the certificate with the requester's cert/key.
//  0 when the reply is a well-formed, correctly signed CertRep; -1 otherwise.
int ca_scepc_parse_reply(const uint8_t *der, size_t len, X509 *ra, X509 *req_cert,
                         EVP_PKEY *req_key, ca_scepc_result_t *res, char *err, size_t errlen);

#endif
