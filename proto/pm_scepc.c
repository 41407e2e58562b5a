/*  pm_scepc — the device side of SCEP (see pm_scepc.h). Only OpenSSL. */
#include "pm_scepc.h"

#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pkcs7.h>
#include <openssl/x509v3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pm_scep_nids_t s_nids;

static int s_obj(const char *oid, const char *sn, const char *ln)
{
    int nid = OBJ_txt2nid(oid);
    return nid != NID_undef ? nid : OBJ_create(oid, sn, ln);
}

const pm_scep_nids_t *pm_scep_nids(void)
{
    if (!s_nids.message_type) {
        s_nids.message_type = s_obj("2.16.840.1.113733.1.9.2", "messageType", "messageType");
        s_nids.pki_status = s_obj("2.16.840.1.113733.1.9.3", "pkiStatus", "pkiStatus");
        s_nids.fail_info = s_obj("2.16.840.1.113733.1.9.4", "failInfo", "failInfo");
        s_nids.sender_nonce = s_obj("2.16.840.1.113733.1.9.5", "senderNonce", "senderNonce");
        s_nids.recipient_nonce =
            s_obj("2.16.840.1.113733.1.9.6", "recipientNonce", "recipientNonce");
        s_nids.transaction_id = s_obj("2.16.840.1.113733.1.9.7", "transID", "transactionID");
    }
    return &s_nids;
}

X509_REQ *pm_scepc_csr_name(EVP_PKEY *key, const X509_NAME *name, const char *challenge)
{
    X509_REQ *req = X509_REQ_new();
    bool ok = req && name && X509_REQ_set_version(req, 0) && X509_REQ_set_subject_name(req, name) &&
              X509_REQ_set_pubkey(req, key);
    if (ok && challenge)
        ok = X509_REQ_add1_attr_by_NID(req, NID_pkcs9_challengePassword, MBSTRING_UTF8,
                                       (const unsigned char *)challenge, -1);
    ok = ok && X509_REQ_sign(req, key, EVP_sha256()) > 0;
    if (!ok) {
        X509_REQ_free(req);
        return NULL;
    }
    return req;
}

X509_REQ *pm_scepc_csr(EVP_PKEY *key, const char *cn, const char *challenge)
{
    X509_REQ *req = X509_REQ_new();
    X509_NAME *n = X509_REQ_get_subject_name(req);
    bool ok =
        req && X509_REQ_set_version(req, 0) &&
        X509_NAME_add_entry_by_txt(n, "O", MBSTRING_UTF8, (const unsigned char *)"Test", -1, -1,
                                   0) &&
        X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0) &&
        X509_REQ_set_pubkey(req, key);
    if (ok && challenge)
        ok = X509_REQ_add1_attr_by_NID(req, NID_pkcs9_challengePassword, MBSTRING_UTF8,
                                       (const unsigned char *)challenge, -1);
    ok = ok && X509_REQ_sign(req, key, EVP_sha256()) > 0;
    if (!ok) {
        X509_REQ_free(req);
        return NULL;
    }
    return req;
}

X509 *pm_scepc_self_signed(EVP_PKEY *key, const char *cn)
{
    X509 *x = X509_new();
    X509_NAME *n = X509_get_subject_name(x);
    bool ok =
        x && X509_set_version(x, 2) && ASN1_INTEGER_set(X509_get_serialNumber(x), 1) &&
        X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0) &&
        X509_set_issuer_name(x, n) && X509_gmtime_adj(X509_getm_notBefore(x), -60) &&
        X509_gmtime_adj(X509_getm_notAfter(x), 3600) && X509_set_pubkey(x, key) &&
        X509_sign(x, key, EVP_sha256()) > 0;
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

static int s_attr(PKCS7_SIGNER_INFO *si, int nid, int type, const void *data, int len)
{
    ASN1_STRING *s = ASN1_STRING_type_new(type);
    if (!s || !ASN1_STRING_set(s, data, len) || !PKCS7_add_signed_attribute(si, nid, type, s)) {
        ASN1_STRING_free(s);
        return -1;
    }
    return 0;
}

int pm_scepc_request(int type, X509_REQ *csr, X509 *signer, EVP_PKEY *signer_key, X509 *recipient,
                     const char *txid, const uint8_t nonce[16], uint8_t **der, size_t *len)
{
    const pm_scep_nids_t *n = pm_scep_nids();
    int rc = -1;
    uint8_t *csr_der = NULL, *env_der = NULL;
    BIO *csr_bio = NULL, *env_bio = NULL;
    PKCS7 *env = NULL, *p7 = NULL;
    STACK_OF(X509) *recips = sk_X509_new_null();
    int csr_len = i2d_X509_REQ(csr, &csr_der);
    if (csr_len <= 0 || !recips || !sk_X509_push(recips, recipient))
        goto out;
    csr_bio = BIO_new_mem_buf(csr_der, csr_len);
    env = csr_bio ? PKCS7_encrypt(recips, csr_bio, EVP_aes_128_cbc(), PKCS7_BINARY) : NULL;
    int env_len = env ? i2d_PKCS7(env, &env_der) : -1;
    if (env_len <= 0)
        goto out;
    env_bio = BIO_new_mem_buf(env_der, env_len);
    p7 = PKCS7_sign(NULL, NULL, NULL, NULL, PKCS7_PARTIAL | PKCS7_BINARY | PKCS7_NOSMIMECAP);
    PKCS7_SIGNER_INFO *si = p7 ? PKCS7_sign_add_signer(p7, signer, signer_key, EVP_sha256(),
                                                       PKCS7_BINARY | PKCS7_NOSMIMECAP)
                               : NULL;
    char mt[16];
    snprintf(mt, sizeof mt, "%d", type);
    if (!si || !env_bio ||
        s_attr(si, n->message_type, V_ASN1_PRINTABLESTRING, mt, (int)strlen(mt)) < 0 ||
        s_attr(si, n->transaction_id, V_ASN1_PRINTABLESTRING, txid, (int)strlen(txid)) < 0 ||
        s_attr(si, n->sender_nonce, V_ASN1_OCTET_STRING, nonce, 16) < 0 ||
        PKCS7_final(p7, env_bio, PKCS7_BINARY) != 1)
        goto out;
    *der = NULL;
    int l = i2d_PKCS7(p7, der);
    if (l <= 0)
        goto out;
    *len = (size_t)l;
    rc = 0;
out:
    OPENSSL_free(csr_der);
    OPENSSL_free(env_der);
    BIO_free(csr_bio);
    BIO_free(env_bio);
    PKCS7_free(env);
    PKCS7_free(p7);
    sk_X509_free(recips);
    ERR_clear_error();
    return rc;
}

static int s_get_int(PKCS7_SIGNER_INFO *si, int nid)
{
    ASN1_TYPE *t = PKCS7_get_signed_attribute(si, nid);
    if (!t || t->type != V_ASN1_PRINTABLESTRING)
        return -1;
    char buf[16];
    int n = ASN1_STRING_length(t->value.asn1_string);
    if (n <= 0 || n >= (int)sizeof buf)
        return -1;
    memcpy(buf, ASN1_STRING_get0_data(t->value.asn1_string), (size_t)n);
    buf[n] = 0;
    return (int)strtol(buf, NULL, 10);
}

int pm_scepc_parse_reply(const uint8_t *der, size_t len, X509 *ra, X509 *req_cert,
                         EVP_PKEY *req_key, pm_scepc_result_t *res, char *err, size_t errlen)
{
    const pm_scep_nids_t *n = pm_scep_nids();
    memset(res, 0, sizeof *res);
    res->pki_status = res->fail_info = -1;
    int rc = -1;
    const unsigned char *p = der;
    PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)len), *env = NULL, *certs = NULL;
    STACK_OF(X509) *ras = sk_X509_new_null();
    BIO *content = BIO_new(BIO_s_mem()), *inner = BIO_new(BIO_s_mem());
    BIO *empty = NULL;
    if (!p7 || !PKCS7_type_is_signed(p7) || !ras || !sk_X509_push(ras, ra)) {
        snprintf(err, errlen, "not a PKCS#7 SignedData");
        goto out;
    }
    //  FAILURE replies carry no content (detached): verify over empty data
    if (PKCS7_get_detached(p7))
        empty = BIO_new(BIO_s_mem());
    if (PKCS7_verify(p7, ras, NULL, empty, content,
                     PKCS7_NOVERIFY | PKCS7_BINARY | PKCS7_NOINTERN) != 1) {
        snprintf(err, errlen, "CertRep signature does not verify with the RA certificate");
        goto out;
    }
    PKCS7_SIGNER_INFO *si = sk_PKCS7_SIGNER_INFO_value(PKCS7_get_signer_info(p7), 0);
    res->message_type = s_get_int(si, n->message_type);
    res->pki_status = s_get_int(si, n->pki_status);
    res->fail_info = s_get_int(si, n->fail_info);
    ASN1_TYPE *t = PKCS7_get_signed_attribute(si, n->transaction_id);
    if (t && t->type == V_ASN1_PRINTABLESTRING &&
        ASN1_STRING_length(t->value.asn1_string) < (int)sizeof res->txid)
        memcpy(res->txid, ASN1_STRING_get0_data(t->value.asn1_string),
               (size_t)ASN1_STRING_length(t->value.asn1_string));
    t = PKCS7_get_signed_attribute(si, n->recipient_nonce);
    if (t && t->type == V_ASN1_OCTET_STRING &&
        ASN1_STRING_length(t->value.octet_string) <= (int)sizeof res->recipient_nonce) {
        res->recipient_nonce_len = ASN1_STRING_length(t->value.octet_string);
        memcpy(res->recipient_nonce, ASN1_STRING_get0_data(t->value.octet_string),
               (size_t)res->recipient_nonce_len);
    }
    if (res->message_type != PM_SCEP_CERTREP || res->pki_status < 0 ||
        !PKCS7_get_signed_attribute(si, n->sender_nonce)) {
        snprintf(err, errlen, "not a CertRep (messageType, pkiStatus or senderNonce missing)");
        goto out;
    }
    if (res->pki_status != PM_SCEP_SUCCESS) {
        rc = 0;
        goto out;
    }
    const uint8_t *c = NULL;
    long clen = BIO_get_mem_data(content, (char **)&c);
    p = c;
    env = clen > 0 ? d2i_PKCS7(NULL, &p, clen) : NULL;
    if (!env || !PKCS7_type_is_enveloped(env) ||
        PKCS7_decrypt(env, req_key, req_cert, inner, 0) != 1) {
        snprintf(err, errlen, "cannot decrypt the CertRep envelope");
        goto out;
    }
    long ilen = BIO_get_mem_data(inner, (char **)&c);
    p = c;
    certs = ilen > 0 ? d2i_PKCS7(NULL, &p, ilen) : NULL;
    if (!certs || !PKCS7_type_is_signed(certs) || sk_X509_num(certs->d.sign->cert) < 1) {
        snprintf(err, errlen, "the envelope holds no certificate");
        goto out;
    }
    res->cert = X509_dup(sk_X509_value(certs->d.sign->cert, 0));
    rc = res->cert ? 0 : -1;
out:
    PKCS7_free(p7);
    PKCS7_free(env);
    PKCS7_free(certs);
    sk_X509_free(ras);
    BIO_free(content);
    BIO_free(inner);
    BIO_free(empty);
    ERR_clear_error();
    return rc;
}
