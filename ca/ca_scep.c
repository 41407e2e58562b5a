/*  ca_scep — SCEP server core (see ca_scep.h). All PKCS#7 work is OpenSSL's. */
#include "ca_scep.h"

#include <openssl/err.h>
#include <openssl/pkcs7.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define S_NONCE_MAX 64
#define S_TXID_MAX 128

struct ca_scep {
    ca_pki_t *pki;
    ca_challenge_t *challenge;
    uint8_t *cacert; //  GetCACert reply, built once
    int cacert_len;
    const char *cacert_type;
    //  A library context without algorithms, to parse requests in: OpenSSL
    //  3.0 decodes every SubjectPublicKeyInfo it parses through a freshly
    //  set-up provider decoder (~100 us and ~1,400 allocations each here),
    //  and a PKCSReq carries the same key twice, in its signing certificate
    //  and in its CSR. Parsed here, keys are left undecoded (the decode finds
    //  no decoder at once): s_signer_key decodes a PKCSReq's RSA key once
    //  from its bytes, s_csr_key reuses it for the CSR when the two are the
    //  same bytes; anything else is decoded the usual way.
    OSSL_LIB_CTX *nokeys;
    OSSL_PROVIDER *nokeys_null;
    ca_scep_trace_fn *trace; //  step timing (ca_cost_test); NULL in service
    void *trace_arg;
};

#define S_STEP(s, name)                                                                            \
    do {                                                                                           \
        if ((s)->trace)                                                                            \
            (s)->trace((s)->trace_arg, name);                                                      \
    } while (0)

void ca_scep_set_trace(ca_scep_t *s, ca_scep_trace_fn *fn, void *arg)
{
    s->trace = fn;
    s->trace_arg = arg;
}

//  What we learnt from a request's signed attributes.
typedef struct {
    int message_type;
    char txid[S_TXID_MAX + 1];
    uint8_t nonce[S_NONCE_MAX];
    int nonce_len;
    const EVP_MD *md;
    X509 *signer; //  borrowed from the request
} s_req_t;

static int s_set_body(ca_scep_reply_t *r, int status, const char *type, const void *data,
                      size_t len)
{
    free(r->body);
    r->body = malloc(len ? len : 1);
    if (!r->body) {
        r->len = 0;
        r->status = 500;
        r->content_type = "text/plain";
        return -1;
    }
    memcpy(r->body, data, len);
    r->len = len;
    r->status = status;
    r->content_type = type;
    return 0;
}

//  A plain-text error for the HTTP client (no CertRep is possible).
static int s_http_error(ca_scep_reply_t *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int s_http_error(ca_scep_reply_t *r, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->reason, sizeof r->reason, fmt, ap);
    va_end(ap);
    ERR_clear_error();
    char text[300];
    int n = snprintf(text, sizeof text, "%s\n", r->reason);
    s_set_body(r, status, "text/plain", text,
               (size_t)n < sizeof text ? (size_t)n : sizeof text - 1);
    return status >= 500 ? -1 : 0;
}

//  A degenerate ("certs-only") PKCS#7 SignedData holding `certs`.
static int s_certs_only(X509 *const *certs, int n, uint8_t **der, int *len)
{
    PKCS7 *p7 = PKCS7_new();
    bool ok = p7 && PKCS7_set_type(p7, NID_pkcs7_signed) && PKCS7_content_new(p7, NID_pkcs7_data) &&
              PKCS7_set_detached(p7, 1);
    for (int i = 0; ok && i < n; i++)
        ok = PKCS7_add_certificate(p7, certs[i]) == 1;
    *der = NULL;
    *len = ok ? i2d_PKCS7(p7, der) : -1;
    PKCS7_free(p7);
    return *len > 0 ? 0 : -1;
}

ca_scep_t *ca_scep_new(ca_pki_t *pki, ca_challenge_t *challenge)
{
    ca_scep_nids();
    ca_scep_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->pki = pki;
    s->challenge = challenge;
    //  the "null" provider: nothing at all, and it stops the default
    //  provider from being loaded into this context as a fallback
    s->nokeys = OSSL_LIB_CTX_new();
    s->nokeys_null = s->nokeys ? OSSL_PROVIDER_load(s->nokeys, "null") : NULL;
    if (!s->nokeys_null)
        goto fail;
    if (ca_pki_has_ra(pki)) {
        X509 *certs[2] = {ca_pki_ra_cert(pki), ca_pki_ca_cert(pki)};
        if (s_certs_only(certs, 2, &s->cacert, &s->cacert_len) < 0)
            goto fail;
        s->cacert_type = "application/x-x509-ca-ra-cert";
    } else {
        s->cacert_len = i2d_X509(ca_pki_ca_cert(pki), &s->cacert);
        if (s->cacert_len <= 0)
            goto fail;
        s->cacert_type = "application/x-x509-ca-cert";
    }
    return s;
fail:
    ERR_clear_error();
    ca_scep_destroy(&s);
    return NULL;
}

void ca_scep_destroy(ca_scep_t **p)
{
    if (!p || !*p)
        return;
    OPENSSL_free((*p)->cacert);
    if ((*p)->nokeys_null)
        OSSL_PROVIDER_unload((*p)->nokeys_null);
    OSSL_LIB_CTX_free((*p)->nokeys);
    free(*p);
    *p = NULL;
}

void ca_scep_reply_clear(ca_scep_reply_t *r)
{
    free(r->body);
    memset(r, 0, sizeof *r);
    r->pki_status = -1;
    r->fail_info = -1;
}

/* ---- request attributes ---- */

static int s_attr_string(PKCS7_SIGNER_INFO *si, int nid, char *buf, size_t size)
{
    ASN1_TYPE *t = PKCS7_get_signed_attribute(si, nid);
    if (!t || (t->type != V_ASN1_PRINTABLESTRING && t->type != V_ASN1_UTF8STRING &&
               t->type != V_ASN1_IA5STRING))
        return -1;
    const ASN1_STRING *s = t->value.asn1_string;
    int n = ASN1_STRING_length(s);
    if (n <= 0 || (size_t)n >= size)
        return -1;
    memcpy(buf, ASN1_STRING_get0_data(s), (size_t)n);
    buf[n] = 0;
    return strlen(buf) == (size_t)n ? 0 : -1; //  no embedded NUL
}

static int s_attr_octets(PKCS7_SIGNER_INFO *si, int nid, uint8_t *buf, int size)
{
    ASN1_TYPE *t = PKCS7_get_signed_attribute(si, nid);
    if (!t || t->type != V_ASN1_OCTET_STRING)
        return -1;
    int n = ASN1_STRING_length(t->value.octet_string);
    if (n <= 0 || n > size)
        return -1;
    memcpy(buf, ASN1_STRING_get0_data(t->value.octet_string), (size_t)n);
    return n;
}

static void s_sanitize(const char *in, char *out, size_t size)
{
    size_t i = 0;
    for (; in[i] && i + 1 < size; i++)
        out[i] = (in[i] > 0x20 && in[i] < 0x7f) ? in[i] : '?';
    out[i] = 0;
}

/* ---- CertRep ---- */

static int s_add_str_attr(PKCS7_SIGNER_INFO *si, int nid, const char *value)
{
    ASN1_PRINTABLESTRING *s = ASN1_PRINTABLESTRING_new();
    if (!s || !ASN1_STRING_set(s, value, -1) ||
        !PKCS7_add_signed_attribute(si, nid, V_ASN1_PRINTABLESTRING, s)) {
        ASN1_STRING_free(s);
        return -1;
    }
    return 0;
}

static int s_add_octet_attr(PKCS7_SIGNER_INFO *si, int nid, const uint8_t *data, int len)
{
    ASN1_OCTET_STRING *s = ASN1_OCTET_STRING_new();
    if (!s || !ASN1_OCTET_STRING_set(s, data, len) ||
        !PKCS7_add_signed_attribute(si, nid, V_ASN1_OCTET_STRING, s)) {
        ASN1_OCTET_STRING_free(s);
        return -1;
    }
    return 0;
}

//  Sign a CertRep with the RA. content == NULL: no pkcsPKIEnvelope (FAILURE).
static int s_certrep(ca_scep_t *s, const s_req_t *q, int status, int fail_info,
                     const uint8_t *content, int clen, ca_scep_reply_t *r)
{
    const ca_scep_nids_t *n = ca_scep_nids();
    int flags = PKCS7_BINARY | PKCS7_NOSMIMECAP | PKCS7_PARTIAL | (content ? 0 : PKCS7_DETACHED);
    PKCS7 *p7 = PKCS7_sign(NULL, NULL, NULL, NULL, flags);
    BIO *in = content ? BIO_new_mem_buf(content, clen) : BIO_new(BIO_s_mem());
    uint8_t *der = NULL;
    int rc = -1;
    PKCS7_SIGNER_INFO *si =
        p7 && in ? PKCS7_sign_add_signer(p7, ca_pki_ra_cert(s->pki), ca_pki_ra_key(s->pki), q->md,
                                         PKCS7_BINARY | PKCS7_NOSMIMECAP)
                 : NULL;
    uint8_t nonce[16];
    char num[16];
    bool ok = si && RAND_bytes(nonce, sizeof nonce) == 1;
    snprintf(num, sizeof num, "%d", CA_SCEP_CERTREP);
    ok = ok && s_add_str_attr(si, n->message_type, num) == 0;
    ok = ok && s_add_str_attr(si, n->transaction_id, q->txid) == 0;
    snprintf(num, sizeof num, "%d", status);
    ok = ok && s_add_str_attr(si, n->pki_status, num) == 0;
    if (status == CA_SCEP_FAILURE) {
        snprintf(num, sizeof num, "%d", fail_info);
        ok = ok && s_add_str_attr(si, n->fail_info, num) == 0;
    }
    ok = ok && s_add_octet_attr(si, n->sender_nonce, nonce, sizeof nonce) == 0;
    if (q->nonce_len > 0)
        ok = ok && s_add_octet_attr(si, n->recipient_nonce, q->nonce, q->nonce_len) == 0;
    ok = ok && PKCS7_final(p7, in, PKCS7_BINARY) == 1;
    int len = ok ? i2d_PKCS7(p7, &der) : -1;
    if (len <= 0) {
        s_http_error(r, 500, "cannot build the CertRep (OpenSSL failed)");
        goto out;
    }
    S_STEP(s, "CertRep (RA key)");
    r->pki_status = status;
    r->fail_info = status == CA_SCEP_FAILURE ? fail_info : -1;
    rc = s_set_body(r, 200, "application/x-pki-message", der, (size_t)len);
out:
    OPENSSL_free(der);
    BIO_free(in);
    PKCS7_free(p7);
    ERR_clear_error();
    return rc;
}

static int s_failure(ca_scep_t *s, const s_req_t *q, int fail_info, ca_scep_reply_t *r,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static int s_failure(ca_scep_t *s, const s_req_t *q, int fail_info, ca_scep_reply_t *r,
                     const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->reason, sizeof r->reason, fmt, ap);
    va_end(ap);
    ERR_clear_error();
    return s_certrep(s, q, CA_SCEP_FAILURE, fail_info, NULL, 0, r);
}

//  The cipher the device used for its request, if it is one we answer with.
static const EVP_CIPHER *s_reply_cipher(PKCS7 *env)
{
    const ASN1_OBJECT *alg = env->d.enveloped->enc_data->algorithm->algorithm;
    switch (OBJ_obj2nid(alg)) {
    case NID_aes_128_cbc:
        return EVP_aes_128_cbc();
    case NID_aes_192_cbc:
        return EVP_aes_192_cbc();
    case NID_aes_256_cbc:
        return EVP_aes_256_cbc();
    case NID_des_ede3_cbc:
        return EVP_des_ede3_cbc();
    default:
        return NULL;
    }
}

static bool s_same_cn(X509_NAME *a, X509_NAME *b)
{
    int i = X509_NAME_get_index_by_NID(a, NID_commonName, -1);
    int j = X509_NAME_get_index_by_NID(b, NID_commonName, -1);
    if (i < 0 || j < 0)
        return i < 0 && j < 0;
    return ASN1_STRING_cmp(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(a, i)),
                           X509_NAME_ENTRY_get_data(X509_NAME_get_entry(b, j))) == 0;
}

static int s_challenge_of(X509_REQ *req, char *buf, size_t size)
{
    int i = X509_REQ_get_attr_by_NID(req, NID_pkcs9_challengePassword, -1);
    X509_ATTRIBUTE *a = i >= 0 ? X509_REQ_get_attr(req, i) : NULL;
    ASN1_TYPE *t = a && X509_ATTRIBUTE_count(a) == 1 ? X509_ATTRIBUTE_get0_type(a, 0) : NULL;
    if (!t || (t->type != V_ASN1_PRINTABLESTRING && t->type != V_ASN1_UTF8STRING &&
               t->type != V_ASN1_IA5STRING && t->type != V_ASN1_T61STRING))
        return -1;
    int n = ASN1_STRING_length(t->value.asn1_string);
    if (n <= 0 || (size_t)n >= size)
        return -1;
    memcpy(buf, ASN1_STRING_get0_data(t->value.asn1_string), (size_t)n);
    buf[n] = 0;
    return strlen(buf) == (size_t)n ? 0 : -1;
}

static int s_issue(ca_scep_t *s, const s_req_t *q, X509_REQ *req, EVP_PKEY *key,
                   const EVP_CIPHER *cipher, ca_scep_reply_t *r);

//  The CSR's public key (a new reference; NULL when it cannot be decoded).
//  The CSR was parsed without decoding it (s->nokeys): when its
//  SubjectPublicKeyInfo is byte for byte the signing certificate's (a
//  PKCSReq), that certificate's key, decoded with the message, is the CSR's
//  key; otherwise (a RenewalReq's new key, a mismatch) it is decoded here.
static EVP_PKEY *s_csr_key(X509_REQ *req, X509 *signer)
{
    X509_PUBKEY *a = X509_REQ_get_X509_PUBKEY(req), *b = X509_get_X509_PUBKEY(signer);
    const unsigned char *ka = NULL, *kb = NULL;
    int la = 0, lb = 0;
    X509_ALGOR *aa = NULL, *ab = NULL;
    EVP_PKEY *k = NULL;
    if (!a || !X509_PUBKEY_get0_param(NULL, &ka, &la, &aa, a))
        return NULL;
    if (b && X509_PUBKEY_get0_param(NULL, &kb, &lb, &ab, b) && la == lb && la > 0 && aa && ab &&
        X509_ALGOR_cmp(aa, ab) == 0 && memcmp(ka, kb, (size_t)la) == 0) {
        k = X509_get0_pubkey(signer);
        if (k && EVP_PKEY_up_ref(k) == 1)
            return k;
        return NULL;
    }
    unsigned char *der = NULL;
    int len = i2d_X509_PUBKEY(a, &der);
    const unsigned char *p = der;
    k = len > 0 ? d2i_PUBKEY(NULL, &p, len) : NULL;
    if (k && p != der + len) {
        EVP_PKEY_free(k);
        k = NULL;
    }
    OPENSSL_free(der);
    return k;
}

//  A PKCSReq is signed with a transient self-signed certificate that only
//  carries the device's key (RFC 8894 §2.3): it is used for that key alone
//  (the request's signature, the CSR's key, the reply's recipient), never
//  verified nor re-encoded. Its RSA key (rsaEncryption) is decoded from the
//  certificate's bytes by d2i_PublicKey, which needs no provider decoder
//  set-up (s->nokeys), and set into the certificate. false: not that case
//  (a RenewalReq, whose certificate is verified and hashed as it arrived;
//  another key type; a key that does not decode): the caller parses the
//  message again the usual way.
static bool s_signer_key(const s_req_t *q)
{
    if (q->message_type != CA_SCEP_PKCSREQ)
        return false;
    X509_PUBKEY *xpk = X509_get_X509_PUBKEY(q->signer);
    ASN1_OBJECT *alg = NULL;
    const unsigned char *pk = NULL;
    int pklen = 0, ptype = V_ASN1_UNDEF;
    X509_ALGOR *a = NULL;
    if (!xpk || !X509_PUBKEY_get0_param(&alg, &pk, &pklen, &a, xpk) || !a || !pk || pklen <= 0 ||
        OBJ_obj2nid(alg) != NID_rsaEncryption)
        return false;
    X509_ALGOR_get0(NULL, &ptype, NULL, a);
    if (ptype != V_ASN1_NULL && ptype != V_ASN1_UNDEF)
        return false;
    const unsigned char *p = pk;
    EVP_PKEY *k = d2i_PublicKey(EVP_PKEY_RSA, NULL, &p, pklen);
    bool ok = k && p == pk + pklen && X509_set_pubkey(q->signer, k) == 1;
    EVP_PKEY_free(k);
    ERR_clear_error();
    return ok;
}

static int s_pkioperation(ca_scep_t *s, const uint8_t *der, size_t len, ca_scep_reply_t *r)
{
    const ca_scep_nids_t *n = ca_scep_nids();
    int rc = 0;
    PKCS7 *p7 = NULL, *env = NULL;
    STACK_OF(X509) *signers = NULL;
    BIO *content = NULL, *csr_bio = NULL;
    X509_REQ *req = NULL;
    EVP_PKEY *csr_key = NULL;
    s_req_t q = {.md = EVP_sha256()};
    char err[200];

    //  parsed first without decoding the certificate's key (s_signer_key)
    const unsigned char *p = der;
    p7 = (PKCS7 *)ASN1_item_d2i_ex(NULL, &p, (long)len, ASN1_ITEM_rptr(PKCS7), s->nokeys, NULL);
    if (!p7 || p != der + len) {
        rc = s_http_error(r, 400, "PKIOperation: the message is not one DER PKCS#7 structure");
        goto out;
    }
    if (!PKCS7_type_is_signed(p7) || !p7->d.sign || PKCS7_get_detached(p7) ||
        !PKCS7_type_is_data(p7->d.sign->contents)) {
        rc = s_http_error(r, 400, "PKIOperation: the message is not a PKCS#7 SignedData of data");
        goto out;
    }
    S_STEP(s, "d2i request");
    STACK_OF(PKCS7_SIGNER_INFO) *sis = PKCS7_get_signer_info(p7);
    if (!sis || sk_PKCS7_SIGNER_INFO_num(sis) != 1) {
        rc = s_http_error(r, 400, "PKIOperation: the message must have exactly one signer");
        goto out;
    }
    PKCS7_SIGNER_INFO *si = sk_PKCS7_SIGNER_INFO_value(sis, 0);
    char mt[16];
    if (s_attr_string(si, n->transaction_id, q.txid, sizeof q.txid) < 0 ||
        s_attr_string(si, n->message_type, mt, sizeof mt) < 0) {
        rc = s_http_error(r, 400,
                          "PKIOperation: transactionID or messageType signed attribute missing");
        goto out;
    }
    s_sanitize(q.txid, r->txid, sizeof r->txid);
    char *end = NULL;
    long v = strtol(mt, &end, 10);
    q.message_type = (end && *end == 0 && v > 0 && v < 100) ? (int)v : -1;
    r->message_type = q.message_type;
    q.nonce_len = s_attr_octets(si, n->sender_nonce, q.nonce, sizeof q.nonce);
    {
        const EVP_MD *md = EVP_get_digestbyobj(si->digest_alg->algorithm);
        int mdn = md ? EVP_MD_get_type(md) : NID_undef;
        if (mdn == NID_sha1 || mdn == NID_sha256 || mdn == NID_sha384 || mdn == NID_sha512)
            q.md = md;
    }
    //  the signature (content and attributes) against the certificate in the message;
    //  whether that certificate is acceptable depends on the message type (below)
    signers = PKCS7_get0_signers(p7, NULL, 0);
    q.signer = signers && sk_X509_num(signers) == 1 ? sk_X509_value(signers, 0) : NULL;
    if (q.signer && !s_signer_key(&q)) {
        //  the usual way: parsed again, the certificate's key decoded by OpenSSL
        sk_X509_free(signers);
        PKCS7_free(p7);
        p = der;
        p7 = d2i_PKCS7(NULL, &p, (long)len);
        signers = p7 && p == der + len ? PKCS7_get0_signers(p7, NULL, 0) : NULL;
        q.signer = signers && sk_X509_num(signers) == 1 ? sk_X509_value(signers, 0) : NULL;
    }
    if (!q.signer) {
        rc = s_failure(s, &q, CA_SCEP_BAD_MESSAGE_CHECK, r, "no signer certificate in the message");
        goto out;
    }
    if (q.nonce_len < 0) {
        q.nonce_len = 0;
        rc = s_failure(s, &q, CA_SCEP_BAD_REQUEST, r, "senderNonce missing");
        goto out;
    }
    S_STEP(s, "attributes, signer");
    content = BIO_new(BIO_s_mem());
    if (!content ||
        PKCS7_verify(p7, NULL, NULL, NULL, content, PKCS7_NOVERIFY | PKCS7_BINARY) != 1) {
        rc =
            s_failure(s, &q, CA_SCEP_BAD_MESSAGE_CHECK, r, "the message signature does not verify");
        goto out;
    }
    if (q.message_type != CA_SCEP_PKCSREQ && q.message_type != CA_SCEP_RENEWALREQ) {
        rc = s_failure(
            s, &q, q.message_type == CA_SCEP_CERTPOLL ? CA_SCEP_BAD_CERT_ID : CA_SCEP_BAD_REQUEST,
            r, "messageType %s is not served (only PKCSReq and RenewalReq)", mt);
        goto out;
    }
    S_STEP(s, "verify request");
    //  the pkcsPKIEnvelope: EnvelopedData to our RA holding the PKCS#10 request
    const uint8_t *cdata = NULL;
    long clen = BIO_get_mem_data(content, (char **)&cdata);
    p = cdata;
    env = clen > 0 ? d2i_PKCS7(NULL, &p, clen) : NULL;
    if (!env || p != cdata + clen || !PKCS7_type_is_enveloped(env)) {
        rc = s_failure(s, &q, CA_SCEP_BAD_REQUEST, r, "the signed content is not an EnvelopedData");
        goto out;
    }
    const EVP_CIPHER *cipher = s_reply_cipher(env);
    if (!cipher) {
        rc = s_failure(s, &q, CA_SCEP_BAD_ALG, r,
                       "content encryption algorithm not supported (use AES-CBC or 3DES)");
        goto out;
    }
    S_STEP(s, "d2i envelope");
    csr_bio = BIO_new(BIO_s_mem());
    if (!csr_bio ||
        PKCS7_decrypt(env, ca_pki_ra_key(s->pki), ca_pki_ra_cert(s->pki), csr_bio, 0) != 1) {
        rc = s_failure(s, &q, CA_SCEP_BAD_MESSAGE_CHECK, r,
                       "cannot decrypt the request (not encrypted to our CA/RA certificate?)");
        goto out;
    }
    S_STEP(s, "decrypt (RA key)");
    const uint8_t *csr_der = NULL;
    long csr_len = BIO_get_mem_data(csr_bio, (char **)&csr_der);
    p = csr_der;
    req = csr_len > 0 ? (X509_REQ *)ASN1_item_d2i_ex(NULL, &p, csr_len, ASN1_ITEM_rptr(X509_REQ),
                                                     s->nokeys, NULL)
                      : NULL;
    if (!req || p != csr_der + csr_len) {
        rc = s_failure(s, &q, CA_SCEP_BAD_REQUEST, r, "the decrypted content is not a PKCS#10 CSR");
        goto out;
    }
    csr_key = s_csr_key(req, q.signer);
    S_STEP(s, "d2i CSR");
    ca_pki_subject_line(X509_REQ_get_subject_name(req), r->subject, sizeof r->subject);
    if (ca_pki_check_csr(s->pki, req, csr_key, err, sizeof err) < 0) {
        rc = s_failure(s, &q,
                       strstr(err, "bits") || strstr(err, "type") ? CA_SCEP_BAD_ALG
                                                                  : CA_SCEP_BAD_REQUEST,
                       r, "%s", err);
        goto out;
    }
    S_STEP(s, "check CSR");
    if (q.message_type == CA_SCEP_PKCSREQ) {
        //  the transient self-signed certificate must carry the requested key
        if (EVP_PKEY_eq(X509_get0_pubkey(q.signer), csr_key) != 1) {
            rc = s_failure(s, &q, CA_SCEP_BAD_REQUEST, r,
                           "PKCSReq signed with a key other than the CSR's");
            goto out;
        }
        char pw[256];
        uint8_t kh[32];
        unsigned char *kder = NULL;
        //  the CSR's SubjectPublicKeyInfo as received (re-encoding the key
        //  through OpenSSL 3's encoders costs more than the rest of the check)
        int klen = i2d_X509_PUBKEY(X509_REQ_get_X509_PUBKEY(req), &kder);
        bool hashed = klen > 0 && EVP_Digest(kder, (size_t)klen, kh, NULL, EVP_sha256(), NULL);
        OPENSSL_free(kder);
        bool have_pw = s_challenge_of(req, pw, sizeof pw) == 0;
        S_STEP(s, "key match, hashes");
        bool good = have_pw && hashed && ca_challenge_check(s->challenge, pw, q.txid, kh);
        OPENSSL_cleanse(pw, sizeof pw);
        if (!good) {
            rc = s_failure(s, &q, CA_SCEP_BAD_REQUEST, r,
                           have_pw ? "challenge password rejected (wrong, expired or used)"
                                   : "CSR has no challengePassword");
            goto out;
        }
    } else {
        //  RenewalReq: signed with a still-valid certificate we issued, for the same name
        if (!ca_pki_issued_by_us(s->pki, q.signer) || X509_check_ca(q.signer) != 0) {
            rc = s_failure(s, &q, CA_SCEP_BAD_REQUEST, r,
                           "RenewalReq not signed with a valid certificate from this CA");
            goto out;
        }
        if (!s_same_cn(X509_get_subject_name(q.signer), X509_REQ_get_subject_name(req))) {
            rc = s_failure(s, &q, CA_SCEP_BAD_REQUEST, r,
                           "RenewalReq asks for another common name than the current certificate");
            goto out;
        }
    }
    rc = s_issue(s, &q, req, csr_key, cipher, r);
out:
    EVP_PKEY_free(csr_key);
    X509_REQ_free(req);
    BIO_free(csr_bio);
    PKCS7_free(env);
    BIO_free(content);
    sk_X509_free(signers);
    PKCS7_free(p7);
    ERR_clear_error();
    return rc;
}

//  Issue the certificate for a request that passed every check, and the
//  CertRep SUCCESS carrying it (q, req borrowed).
static int s_issue(ca_scep_t *s, const s_req_t *q, X509_REQ *req, EVP_PKEY *key,
                   const EVP_CIPHER *cipher, ca_scep_reply_t *r)
{
    int rc = 0;
    X509 *issued = NULL;
    uint8_t *certs_der = NULL, *env_der = NULL, *issued_der = NULL;
    STACK_OF(X509) *recips = NULL;
    PKCS7 *reply_env = NULL;
    BIO *certs_bio = NULL;
    char err[200];
    uint8_t renews[32];
    unsigned renews_len = 0;
    if (q->message_type == CA_SCEP_RENEWALREQ &&
        X509_digest(q->signer, EVP_sha256(), renews, &renews_len) != 1) {
        rc = s_http_error(r, 500, "cannot hash the certificate being renewed");
        goto out;
    }
    issued = ca_pki_issue(s->pki, req, key, renews_len == 32 ? renews : NULL, err, sizeof err);
    if (!issued) {
        rc = s_http_error(r, 500, "%s", err);
        goto out;
    }
    S_STEP(s, "issue (CA key)");
    ca_pki_subject_line(X509_get_subject_name(issued), r->subject, sizeof r->subject);
    int ilen = i2d_X509(issued, &issued_der);
    if (ilen > 0)
        EVP_Digest(issued_der, (size_t)ilen, r->cert_sha256, NULL, EVP_sha256(), NULL);
    //  the certificate in a degenerate PKCS#7, enveloped to the requester's signing cert
    int certs_len = 0;
    S_STEP(s, "i2d, hash certificate");
    recips = sk_X509_new_null();
    if (ilen <= 0 || s_certs_only(&issued, 1, &certs_der, &certs_len) < 0 || !recips ||
        !sk_X509_push(recips, q->signer) || !(certs_bio = BIO_new_mem_buf(certs_der, certs_len)) ||
        !(reply_env = PKCS7_encrypt(recips, certs_bio, cipher, PKCS7_BINARY))) {
        rc = s_failure(s, q, CA_SCEP_BAD_ALG, r,
                       "cannot encrypt the reply to the requester's certificate (RSA key needed)");
        goto out;
    }
    int env_len = i2d_PKCS7(reply_env, &env_der);
    if (env_len <= 0) {
        rc = s_http_error(r, 500, "cannot encode the reply envelope");
        goto out;
    }
    S_STEP(s, "envelope reply");
    snprintf(r->reason, sizeof r->reason, "issued");
    rc = s_certrep(s, q, CA_SCEP_SUCCESS, 0, env_der, env_len, r);
out:
    OPENSSL_free(env_der);
    OPENSSL_free(certs_der);
    OPENSSL_free(issued_der);
    PKCS7_free(reply_env);
    sk_X509_free(recips);
    BIO_free(certs_bio);
    X509_free(issued);
    ERR_clear_error();
    return rc;
}

//  base64 (the GET form of PKIOperation; newlines and padding tolerated). A
//  space is read as '+': a query string decoded as a form turns '+' into ' '.
static uint8_t *s_unbase64(const uint8_t *in, size_t len, size_t *outlen)
{
    uint8_t *out = malloc(len / 4 * 3 + 4);
    uint8_t *fixed = malloc(len + 1);
    EVP_ENCODE_CTX *ctx = EVP_ENCODE_CTX_new();
    int n1 = 0, n2 = 0;
    bool ok = out && fixed && ctx;
    if (ok) {
        for (size_t i = 0; i < len; i++)
            fixed[i] = in[i] == ' ' ? '+' : in[i];
        EVP_DecodeInit(ctx);
        ok = EVP_DecodeUpdate(ctx, out, &n1, fixed, (int)len) >= 0 &&
             EVP_DecodeFinal(ctx, out + n1, &n2) == 1;
    }
    free(fixed);
    EVP_ENCODE_CTX_free(ctx);
    if (!ok || n1 + n2 == 0) {
        free(out);
        return NULL;
    }
    *outlen = (size_t)(n1 + n2);
    return out;
}

int ca_scep_handle(ca_scep_t *s, const char *method, const char *operation, const uint8_t *msg,
                   size_t len, ca_scep_reply_t *r)
{
    ca_scep_reply_clear(r);
    bool get = method && strcasecmp(method, "GET") == 0;
    bool post = method && strcasecmp(method, "POST") == 0;
    if (!get && !post)
        return s_http_error(r, 405, "SCEP: method must be GET or POST");
    if (!operation)
        return s_http_error(r, 400, "SCEP: the `operation` parameter is missing");
    if (len > CA_SCEP_MAX_MESSAGE)
        return s_http_error(r, 413, "SCEP: message larger than %d bytes", CA_SCEP_MAX_MESSAGE);
    if (strcmp(operation, "GetCACaps") == 0) {
        static const char caps[] = "POSTPKIOperation\nRenewal\nSHA-256\nAES\nSCEPStandard\n";
        snprintf(r->reason, sizeof r->reason, "caps");
        return s_set_body(r, 200, "text/plain", caps, sizeof caps - 1);
    }
    if (strcmp(operation, "GetCACert") == 0) {
        snprintf(r->reason, sizeof r->reason, "cacert");
        return s_set_body(r, 200, s->cacert_type, s->cacert, (size_t)s->cacert_len);
    }
    if (strcmp(operation, "PKIOperation") != 0)
        return s_http_error(r, 400, "SCEP: unknown operation (GetCACaps, GetCACert, PKIOperation)");
    if (!msg || len == 0)
        return s_http_error(r, 400, "PKIOperation: empty message");
    if (post)
        return s_pkioperation(s, msg, len, r);
    size_t dlen = 0;
    uint8_t *der = s_unbase64(msg, len, &dlen);
    if (!der)
        return s_http_error(r, 400, "PKIOperation: the GET message is not base64");
    int rc = s_pkioperation(s, der, dlen, r);
    free(der);
    return rc;
}
