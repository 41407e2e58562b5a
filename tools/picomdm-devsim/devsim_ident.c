/*  devsim_ident — device identities and Mdm-Signature (see devsim_ident.h). */
#include "devsim_ident.h"
#include "pm_pem.h"

#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct devsim_ca {
    X509 *cert;
    EVP_PKEY *key;
};

//  An identity's kept SignedData for one digest (see "the fast path" below):
//  made on its first signature with that digest, a cache, not state
//  (devsim_ident_sign takes a const identity). Everything is OpenSSL's;
//  cms, attrs, pctx and md are owned here, the other pointers borrowed
//  from cms (md_der, time_der from attrs).
typedef struct {
    int md_nid;                   //  the digest (EVP_MD_get_type); 0 = unused
    bool bad;                     //  not usable: sign the OpenSSL way
    EVP_MD *md;                   //  fetched once
    CMS_ContentInfo *cms;         //  OpenSSL's SignedData, values renewed per request
    CMS_SignerInfo *si;           //  its only SignerInfo
    ASN1_OCTET_STRING *digest;    //  the messageDigest attribute's value
    ASN1_UTCTIME *time;           //  the signingTime attribute's value
    X509_ATTRIBUTE *md_attr;      //  those two attributes
    X509_ATTRIBUTE *time_attr;    //
    STACK_OF(ASN1_TYPE) * attrs;  //  each signed attribute's DER (as a SEQUENCE value)
    ASN1_TYPE *md_der, *time_der; //  the two in attrs re-encoded per request
    EVP_PKEY_CTX *pctx;           //  EVP_PKEY_sign with the key and md
    size_t der_max;               //  bound on its DER's length (s_sign_kept), 0 = not known yet
    //  The signingTime in k->time was set for this second and skew (a
    //  device's requests of one session mostly fall in one second: the
    //  time and its attribute's DER are then the same, not made again).
    bool time_set;
    time_t time_at;
    long time_skew;
    unsigned char *set; //  the signed attributes' DER (a SET OF), owned
    int setcap;         //  its allocated size
} s_kept_t;

#define S_KEPT 2 //  digests kept per identity (SHA-256, SHA-1)

struct devsim_ident {
    X509 *cert;
    EVP_PKEY *key;
    char cn[128];
    unsigned char *der;
    size_t derlen;
    s_kept_t kept[S_KEPT];
};

static void s_kept_clear(s_kept_t *k);

//  The last OpenSSL error, as text for err.
static void s_sslerr(char *err, size_t errlen, const char *what)
{
    char buf[256];
    unsigned long e = ERR_get_error();
    ERR_error_string_n(e, buf, sizeof buf);
    snprintf(err, errlen, "%s: %s", what, e ? buf : "unknown OpenSSL error");
    ERR_clear_error();
}

static EVP_PKEY *s_genkey(devsim_key_t kt)
{
    return kt == DEVSIM_KEY_RSA ? EVP_RSA_gen(2048) : EVP_EC_gen("P-256");
}

static int s_add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ex = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ex)
        return -1;
    int rc = X509_add_ext(cert, ex, -1) ? 0 : -1;
    X509_EXTENSION_free(ex);
    return rc;
}

//  Build and sign a certificate for `key` with subject CN `cn`. issuer/ikey
//  NULL = self-signed. `is_ca` adds CA extensions.
static X509 *s_make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *ikey, bool is_ca,
                         long nb, long na)
{
    X509 *cert = X509_new();
    bool ok = false;
    if (!cert)
        return NULL;
    unsigned char serial[8];
    if (RAND_bytes(serial, sizeof serial) != 1)
        goto out;
    serial[0] &= 0x7f; //  positive
    BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
    if (!bn)
        goto out;
    ASN1_INTEGER *ai = BN_to_ASN1_INTEGER(bn, NULL);
    BN_free(bn);
    if (!ai)
        goto out;
    X509_set_serialNumber(cert, ai);
    ASN1_INTEGER_free(ai);
    X509_set_version(cert, 2);
    X509_NAME *name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"PicoMDM devsim", -1,
                               -1, 0);
    if (!X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
                                    0))
        goto out;
    X509_set_issuer_name(cert, issuer ? X509_get_subject_name(issuer) : name);
    X509_gmtime_adj(X509_getm_notBefore(cert), nb);
    X509_gmtime_adj(X509_getm_notAfter(cert), na);
    X509_set_pubkey(cert, key);
    X509 *iss = issuer ? issuer : cert;
    if (is_ca) {
        if (s_add_ext(cert, iss, NID_basic_constraints, "critical,CA:TRUE") ||
            s_add_ext(cert, iss, NID_key_usage, "critical,keyCertSign,cRLSign") ||
            s_add_ext(cert, iss, NID_subject_key_identifier, "hash"))
            goto out;
    } else {
        //  No extendedKeyUsage: like many SCEP-issued device certificates, and
        //  it lets `openssl cms -verify` (purpose smime_sign) accept it too.
        if (s_add_ext(cert, iss, NID_basic_constraints, "critical,CA:FALSE") ||
            s_add_ext(cert, iss, NID_key_usage, "critical,digitalSignature,keyEncipherment") ||
            s_add_ext(cert, iss, NID_subject_key_identifier, "hash"))
            goto out;
    }
    if (issuer && s_add_ext(cert, iss, NID_authority_key_identifier, "keyid:always"))
        goto out;
    if (!X509_sign(cert, ikey ? ikey : key, EVP_sha256()))
        goto out;
    ok = true;
out:
    if (!ok) {
        X509_free(cert);
        cert = NULL;
    }
    return cert;
}

static devsim_ident_t *s_ident_wrap(X509 *cert, EVP_PKEY *key)
{
    devsim_ident_t *id = calloc(1, sizeof *id);
    if (!id)
        return NULL;
    id->cert = cert;
    id->key = key;
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, id->cn, sizeof id->cn);
    int n = i2d_X509(cert, &id->der);
    if (n <= 0) {
        id->cert = NULL;
        id->key = NULL;
        free(id);
        return NULL;
    }
    id->derlen = (size_t)n;
    return id;
}

//  A certificate built here (X509_sign) replaced by itself decoded from its
//  DER: OpenSSL keeps a decoded certificate's tbsCertificate encoding and
//  reuses it whenever it encodes the certificate again (every Mdm-Signature
//  carries it: ~10 us less per signature); a built one is re-encoded field
//  by field each time. Loaded and SCEP-issued ones are decoded already.
//  Keeps the original if decoding fails.
static X509 *s_redecode(X509 *cert)
{
    unsigned char *der = NULL;
    int n = cert ? i2d_X509(cert, &der) : -1;
    const unsigned char *p = der;
    X509 *dec = n > 0 ? d2i_X509(NULL, &p, n) : NULL;
    if (dec && p == der + n) {
        X509_free(cert);
        cert = dec;
    } else
        X509_free(dec);
    OPENSSL_free(der);
    ERR_clear_error();
    return cert;
}

devsim_ident_t *devsim_ident_adopt(X509 **cert, EVP_PKEY **key)
{
    if (!cert || !*cert || !key || !*key || X509_check_private_key(*cert, *key) != 1)
        return NULL;
    devsim_ident_t *id = s_ident_wrap(*cert, *key);
    if (id)
        *cert = NULL, *key = NULL;
    return id;
}

static int s_write_pair(X509 *cert, EVP_PKEY *key, const char *cert_path, const char *key_path)
{
    int rc = -1;
    FILE *f = fopen(cert_path, "w");
    if (!f)
        return -1;
    if (!PEM_write_X509(f, cert)) {
        fclose(f);
        return -1;
    }
    if (fclose(f) != 0)
        return -1;
    f = fopen(key_path, "w");
    if (!f)
        return -1;
    if (PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL))
        rc = 0;
    if (fclose(f) != 0)
        rc = -1;
    return rc;
}

devsim_ca_t *devsim_ca_load(const char *cert_path, const char *key_path, char *err, size_t errlen)
{
    devsim_ca_t *ca = calloc(1, sizeof *ca);
    if (!ca)
        return NULL;
    ca->cert = pm_pem_read_cert(cert_path);
    ca->key = ca->cert ? pm_pem_read_key(key_path) : NULL;
    if (!ca->cert || !ca->key) {
        snprintf(err, errlen, "cannot read the CA %s from '%s' (a PEM file is expected)",
                 ca->cert ? "key" : "certificate", ca->cert ? key_path : cert_path);
        devsim_ca_destroy(&ca);
        return NULL;
    }
    if (!X509_check_private_key(ca->cert, ca->key)) {
        snprintf(err, errlen, "the CA key '%s' does not belong to the CA certificate '%s'",
                 key_path, cert_path);
        ERR_clear_error();
        devsim_ca_destroy(&ca);
    }
    return ca;
}

devsim_ca_t *devsim_ca_generate(const char *cn, devsim_key_t kt, char *err, size_t errlen)
{
    devsim_ca_t *ca = calloc(1, sizeof *ca);
    if (!ca)
        return NULL;
    ca->key = s_genkey(kt);
    ca->cert =
        ca->key ? s_make_cert(ca->key, cn, NULL, NULL, true, -3600, 10L * 365 * 86400) : NULL;
    if (!ca->cert) {
        s_sslerr(err, errlen, "cannot make a CA");
        devsim_ca_destroy(&ca);
    }
    return ca;
}

void devsim_ca_destroy(devsim_ca_t **cap)
{
    if (!cap || !*cap)
        return;
    X509_free((*cap)->cert);
    EVP_PKEY_free((*cap)->key);
    free(*cap);
    *cap = NULL;
}

X509 *devsim_ca_cert(const devsim_ca_t *ca)
{
    return ca->cert;
}

EVP_PKEY *devsim_ca_key(const devsim_ca_t *ca)
{
    return ca->key;
}

int devsim_ca_write(const devsim_ca_t *ca, const char *cert_path, const char *key_path)
{
    return s_write_pair(ca->cert, ca->key, cert_path, key_path);
}

//  A PEM private key. OpenSSL 3.0 builds a decoder chain (walking every
//  provider's decoders) for each PEM_read_PrivateKey: ~0.4 ms of CPU per key,
//  most of the simulator's start-up with thousands of identities. One decoder
//  context, made once and reused, decodes a key in ~0.03 ms. Anything it does
//  not take goes the ordinary way.
static EVP_PKEY *s_read_key(const char *path)
{
    static OSSL_DECODER_CTX *dctx;
    static EVP_PKEY *decoded; //  where dctx puts its result
    char buf[16384];
    size_t n = 0;
    FILE *f = fopen(path, "r");
    if (f) {
        n = fread(buf, 1, sizeof buf, f);
        fclose(f);
    }
    if (!dctx)
        dctx = OSSL_DECODER_CTX_new_for_pkey(&decoded, "PEM", NULL, NULL, EVP_PKEY_KEYPAIR, NULL,
                                             NULL);
    if (dctx && n > 0 && n < sizeof buf) {
        const unsigned char *p = (const unsigned char *)buf;
        size_t left = n;
        decoded = NULL;
        if (OSSL_DECODER_from_data(dctx, &p, &left) == 1 && decoded) {
            EVP_PKEY *k = decoded;
            decoded = NULL;
            return k;
        }
        EVP_PKEY_free(decoded);
        decoded = NULL;
        ERR_clear_error();
    }
    return pm_pem_read_key(path);
}

devsim_ident_t *devsim_ident_load(const char *cert_path, const char *key_path, char *err,
                                  size_t errlen)
{
    X509 *cert = pm_pem_read_cert(cert_path);
    EVP_PKEY *key = cert ? s_read_key(key_path) : NULL;
    devsim_ident_t *id = NULL;
    if (!cert || !key) {
        snprintf(err, errlen, "cannot read the device %s from '%s' (a PEM file is expected)",
                 cert ? "key" : "certificate", cert ? key_path : cert_path);
        goto out;
    }
    if (!X509_check_private_key(cert, key)) {
        snprintf(err, errlen, "the key '%s' does not belong to the certificate '%s'", key_path,
                 cert_path);
        ERR_clear_error();
        goto out;
    }
    id = s_ident_wrap(cert, key);
    if (id)
        cert = NULL, key = NULL;
out:
    X509_free(cert);
    EVP_PKEY_free(key);
    return id;
}

devsim_ident_t *devsim_ident_issue(const devsim_ca_t *ca, const char *cn, devsim_key_t kt,
                                   long not_before_s, long not_after_s, char *err, size_t errlen)
{
    EVP_PKEY *key = s_genkey(kt);
    X509 *cert = s_redecode(
        key ? s_make_cert(key, cn, ca->cert, ca->key, false, not_before_s, not_after_s) : NULL);
    devsim_ident_t *id = cert ? s_ident_wrap(cert, key) : NULL;
    if (!id) {
        s_sslerr(err, errlen, "cannot issue a device certificate");
        X509_free(cert);
        EVP_PKEY_free(key);
    }
    return id;
}

devsim_ident_t *devsim_ident_self_signed(const char *cn, devsim_key_t kt, char *err, size_t errlen)
{
    EVP_PKEY *key = s_genkey(kt);
    X509 *cert =
        s_redecode(key ? s_make_cert(key, cn, NULL, NULL, false, -3600, 365L * 86400) : NULL);
    devsim_ident_t *id = cert ? s_ident_wrap(cert, key) : NULL;
    if (!id) {
        s_sslerr(err, errlen, "cannot make a self-signed certificate");
        X509_free(cert);
        EVP_PKEY_free(key);
    }
    return id;
}

void devsim_ident_destroy(devsim_ident_t **idp)
{
    if (!idp || !*idp)
        return;
    X509_free((*idp)->cert);
    EVP_PKEY_free((*idp)->key);
    OPENSSL_free((*idp)->der);
    for (int i = 0; i < S_KEPT; i++)
        s_kept_clear(&(*idp)->kept[i]);
    free(*idp);
    *idp = NULL;
}

X509 *devsim_ident_cert(const devsim_ident_t *id)
{
    return id->cert;
}

EVP_PKEY *devsim_ident_key(const devsim_ident_t *id)
{
    return id->key;
}

const char *devsim_ident_cn(const devsim_ident_t *id)
{
    return id->cn;
}

const unsigned char *devsim_ident_der(const devsim_ident_t *id, size_t *len)
{
    *len = id->derlen;
    return id->der;
}

int devsim_ident_write(const devsim_ident_t *id, const char *cert_path, const char *key_path)
{
    return s_write_pair(id->cert, id->key, cert_path, key_path);
}

//  DER-encode cms and base64 it on one line.
static int s_cms_b64(CMS_ContentInfo *cms, char **b64)
{
    unsigned char *der = NULL;
    int n = i2d_CMS_ContentInfo(cms, &der);
    if (n <= 0)
        return -1;
    size_t cap = 4 * (((size_t)n + 2) / 3) + 1;
    char *out = malloc(cap);
    if (!out) {
        OPENSSL_free(der);
        return -1;
    }
    EVP_EncodeBlock((unsigned char *)out, der, n);
    OPENSSL_free(der);
    *b64 = out;
    return 0;
}

static long s_clock_skew_s;

void devsim_ident_set_clock_skew(long seconds)
{
    s_clock_skew_s = seconds;
}

//  signingTime = now + the configured skew (CMS_final adds "now" only when
//  the attribute is absent).
static int s_signing_time(CMS_SignerInfo *si)
{
    if (!s_clock_skew_s)
        return 0;
    ASN1_TIME *t = X509_gmtime_adj(NULL, s_clock_skew_s);
    int ok = t && CMS_signed_add1_attr_by_NID(si, NID_pkcs9_signingTime, t->type, t, -1) == 1;
    ASN1_TIME_free(t);
    return ok ? 0 : -1;
}

//  One Mdm-Signature the OpenSSL way (CMS_sign, CMS_add1_signer, CMS_final):
//  every signature when the kept one is not usable, and the kept one itself.
//  *out is the caller's. 0 / -1.
static int s_sign_openssl_cms(const devsim_ident_t *id, const devsim_ident_t *extra,
                              const EVP_MD *md, const void *body, size_t len, CMS_ContentInfo **out)
{
    int rc = -1;
    const unsigned int flags = CMS_DETACHED | CMS_BINARY | CMS_PARTIAL;
    BIO *in = BIO_new_mem_buf(body, (int)len);
    CMS_ContentInfo *cms = in ? CMS_sign(NULL, NULL, NULL, NULL, flags) : NULL;
    if (!cms)
        goto out;
    CMS_SignerInfo *si = CMS_add1_signer(cms, id->cert, id->key, md, flags);
    if (!si || s_signing_time(si) < 0)
        goto out;
    if (extra && !(si = CMS_add1_signer(cms, extra->cert, extra->key, md, flags)))
        goto out;
    if (extra && s_signing_time(si) < 0)
        goto out;
    if (!CMS_final(cms, in, NULL, CMS_DETACHED | CMS_BINARY))
        goto out;
    *out = cms;
    cms = NULL;
    rc = 0;
out:
    if (rc)
        ERR_clear_error();
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    return rc;
}

//  base64 of der on one line, malloc'd into *b64.
static int s_b64(const unsigned char *der, size_t n, char **b64)
{
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    if (!out)
        return -1;
    EVP_EncodeBlock((unsigned char *)out, der, (int)n);
    *b64 = out;
    return 0;
}

// ---- the fast path: OpenSSL's SignedData kept, its values renewed ----------------
//
//  OpenSSL's CMS signing costs ~120 us per request here (building the
//  SignedData object tree, S/MIME capabilities, algorithm fetches, a fresh
//  signing context) around a ~25 us ECDSA signature, and the simulator
//  shares the machine with the server it measures. Everything in the
//  SignedData but the messageDigest and signingTime attribute values and the
//  signature is the same for every request of an identity and digest. So
//  the first signature of an (identity, digest) builds OpenSSL's SignedData
//  (CMS_sign + CMS_add1_signer + CMS_final) and keeps the object; each
//  request then, through OpenSSL's API only: digests the body into the kept
//  messageDigest value (ASN1_OCTET_STRING_set), sets the kept signingTime
//  (ASN1_UTCTIME_adj, now + the clock skew), encodes the signed attributes
//  as the DER SET OF they are signed as (each attribute's i2d_X509_ATTRIBUTE
//  as a SEQUENCE value, made once and again for the two that change, the
//  set by i2d_ASN1_SET_ANY, which sorts like DER; RFC 5652 5.4), signs its digest
//  with the kept EVP_PKEY_sign context, puts the signature in the
//  SignerInfo (ASN1_STRING_set) and encodes the whole (i2d_CMS_ContentInfo).
//  CMS_SignerInfo_sign cannot be called twice on one SignerInfo in OpenSSL
//  3.0 (its signing context dangles after the first), hence the signature
//  by hand. The first such signature per (identity, digest) must pass
//  CMS_verify before it is used (see s_selfcheck); otherwise, and for
//  two-signer forgeries, every signature goes the OpenSSL way.

static long s_fast_count, s_openssl_count;

void devsim_ident_sign_counts(long *fast, long *openssl)
{
    *fast = s_fast_count;
    *openssl = s_openssl_count;
}

//  Does this SignedData verify over body (CMS_verify; the chain is not
//  checked here, only the signature) with exactly one signer, id's
//  certificate?
static bool s_verify_cms(const devsim_ident_t *id, CMS_ContentInfo *cms, const void *body,
                         size_t len)
{
    BIO *in = BIO_new_mem_buf(body, (int)len);
    STACK_OF(X509) *signers = NULL;
    bool ok = cms && in &&
              CMS_verify(cms, NULL, NULL, in, NULL, CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY) == 1;
    if (ok) {
        signers = CMS_get0_signers(cms);
        ok = signers && sk_X509_num(signers) == 1 &&
             X509_cmp(sk_X509_value(signers, 0), id->cert) == 0;
    }
    sk_X509_free(signers);
    ERR_clear_error();
    BIO_free(in);
    return ok;
}

//  The check of an identity's first renewed signature for a digest: its
//  kept SignedData verifies (CMS_verify: the signed attributes as OpenSSL
//  re-encodes them to verify, under the signature made over ours). Once per
//  process per (key type, digest), the DER sent is also decoded and verified
//  (decoding a certificate costs ~0.3 ms, so not for every identity). The
//  DER is OpenSSL's i2d of that same object either way.
static bool s_selfcheck(const devsim_ident_t *id, s_kept_t *k, const unsigned char *der,
                        size_t derlen, const void *body, size_t len)
{
    static struct {
        int key_id, md_nid;
    } checked[8];
    static int nchecked;
    int key_id = EVP_PKEY_get_base_id(id->key);
    if (!s_verify_cms(id, k->cms, body, len))
        return false;
    for (int i = 0; i < nchecked; i++)
        if (checked[i].key_id == key_id && checked[i].md_nid == k->md_nid)
            return true;
    const unsigned char *p = der;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)derlen);
    bool ok = cms && p == der + derlen && s_verify_cms(id, cms, body, len);
    CMS_ContentInfo_free(cms);
    ERR_clear_error();
    if (ok && nchecked < 8) {
        checked[nchecked].key_id = key_id;
        checked[nchecked++].md_nid = k->md_nid;
    }
    return ok;
}

static void s_kept_clear(s_kept_t *k)
{
    CMS_ContentInfo_free(k->cms);
    sk_ASN1_TYPE_pop_free(k->attrs, ASN1_TYPE_free);
    EVP_PKEY_CTX_free(k->pctx);
    OPENSSL_free(k->set);
    EVP_MD_free(k->md);
    int nid = k->md_nid;
    memset(k, 0, sizeof *k);
    k->md_nid = nid;
}

//  The value of the signed attribute nid, if it has exactly one, of ASN.1
//  type `type`; *attr = the attribute. NULL otherwise.
static ASN1_STRING *s_attr_value(CMS_SignerInfo *si, int nid, int type, X509_ATTRIBUTE **attr)
{
    int ix = CMS_signed_get_attr_by_NID(si, nid, -1);
    X509_ATTRIBUTE *a = ix >= 0 ? CMS_signed_get_attr(si, ix) : NULL;
    if (!a || X509_ATTRIBUTE_count(a) != 1 || CMS_signed_get_attr_by_NID(si, nid, ix) >= 0)
        return NULL;
    ASN1_TYPE *t = X509_ATTRIBUTE_get0_type(a, 0);
    if (!t || t->type != type)
        return NULL;
    *attr = a;
    return t->value.asn1_string;
}

//  The attribute's DER as the value of t (a SEQUENCE: ASN1_TYPE keeps it
//  whole). 0 / -1.
static int s_attr_der(X509_ATTRIBUTE *a, ASN1_TYPE *t)
{
    //  Renewed per request (messageDigest, signingTime): the same length
    //  each time (a digest's size, a 13-character UTCTime), so encoded in
    //  place into the value t already holds, without an allocation.
    ASN1_STRING *had = t->type == V_ASN1_SEQUENCE ? t->value.sequence : NULL;
    int n = i2d_X509_ATTRIBUTE(a, NULL);
    if (had && n > 0 && n == ASN1_STRING_length(had)) {
        //  (our own string: ASN1_STRING_get0_data's buffer is writable)
        unsigned char *p = (unsigned char *)ASN1_STRING_get0_data(had);
        return i2d_X509_ATTRIBUTE(a, &p) == n ? 0 : -1;
    }
    unsigned char *der = NULL;
    n = i2d_X509_ATTRIBUTE(a, &der);
    ASN1_STRING *s = n > 0 ? ASN1_STRING_type_new(V_ASN1_SEQUENCE) : NULL;
    if (!s) {
        OPENSSL_free(der);
        return -1;
    }
    ASN1_STRING_set0(s, der, n);
    ASN1_TYPE_set(t, V_ASN1_SEQUENCE, s);
    return 0;
}

static int s_sign_openssl_cms(const devsim_ident_t *id, const devsim_ident_t *extra,
                              const EVP_MD *md, const void *body, size_t len,
                              CMS_ContentInfo **out);

//  Make k's SignedData (OpenSSL's, over body) and what each request needs
//  from it. 0 / -1 (k then partly filled: s_kept_clear).
static int s_kept_make(const devsim_ident_t *id, s_kept_t *k, const EVP_MD *md, const void *body,
                       size_t len)
{
    k->md = EVP_MD_fetch(NULL, EVP_MD_get0_name(md), NULL);
    if (!k->md || s_sign_openssl_cms(id, NULL, md, body, len, &k->cms) < 0)
        return -1;
    STACK_OF(CMS_SignerInfo) *sis = CMS_get0_SignerInfos(k->cms);
    k->si = sk_CMS_SignerInfo_num(sis) == 1 ? sk_CMS_SignerInfo_value(sis, 0) : NULL;
    if (!k->si)
        return -1;
    X509_ATTRIBUTE *ma = NULL, *ta = NULL;
    k->digest = s_attr_value(k->si, NID_pkcs9_messageDigest, V_ASN1_OCTET_STRING, &ma);
    k->time = s_attr_value(k->si, NID_pkcs9_signingTime, V_ASN1_UTCTIME, &ta); //  to 2049
    int n = CMS_signed_get_attr_count(k->si);
    k->attrs = sk_ASN1_TYPE_new_null();
    if (!k->digest || !k->time || n < 2 || !k->attrs)
        return -1;
    k->md_attr = ma;
    k->time_attr = ta;
    for (int i = 0; i < n; i++) {
        X509_ATTRIBUTE *a = CMS_signed_get_attr(k->si, i);
        ASN1_TYPE *t = ASN1_TYPE_new();
        if (!t || !sk_ASN1_TYPE_push(k->attrs, t)) {
            ASN1_TYPE_free(t);
            return -1;
        }
        if (!a || s_attr_der(a, t) < 0)
            return -1;
        if (a == ma)
            k->md_der = t;
        else if (a == ta)
            k->time_der = t;
    }
    k->pctx = EVP_PKEY_CTX_new_from_pkey(NULL, id->key, NULL);
    if (!k->md_der || !k->time_der || !k->pctx || EVP_PKEY_sign_init(k->pctx) != 1 ||
        EVP_PKEY_CTX_set_signature_md(k->pctx, k->md) != 1)
        return -1;
    return 0;
}

//  One digest with a context kept for the process (EVP_Digest makes and
//  frees one per call; the simulator is one thread). 0 / -1.
static int s_digest(const EVP_MD *md, const void *data, size_t len, unsigned char *out,
                    unsigned int *outlen)
{
    static EVP_MD_CTX *ctx;
    if (!ctx && !(ctx = EVP_MD_CTX_new()))
        return -1;
    return EVP_DigestInit_ex(ctx, md, NULL) == 1 && EVP_DigestUpdate(ctx, data, len) == 1 &&
                   EVP_DigestFinal_ex(ctx, out, outlen) == 1
               ? 0
               : -1;
}

//  The SignedData for body from k's kept one, DER-encoded by OpenSSL into
//  *der (a buffer of the process's, valid until the next call; do not free).
//  0 / -1.
//
//  i2d_CMS_ContentInfo with no buffer walks the whole tree twice (once for
//  the length, once to write) and allocates; with one it writes in one walk.
//  The buffer's size is a bound known after the first encoding: between two
//  signatures only the messageDigest value (the same length for a digest),
//  the signingTime (a UTCTime, always 13 characters) and the signature (at
//  most EVP_PKEY_get_size bytes) change, and each of the six TLVs that
//  enclose the signature can grow its length field by at most one byte.
static int s_sign_kept(const devsim_ident_t *id, s_kept_t *k, const void *body, size_t len,
                       unsigned char **der, int *derlen)
{
    static unsigned char *buf;
    static size_t cap;
    unsigned char hash[EVP_MAX_MD_SIZE], sig[1024];
    unsigned int hl = 0;
    size_t siglen = sizeof sig, maxsig = (size_t)EVP_PKEY_get_size(id->key);
    int rc = -1;
    if (maxsig > sizeof sig)
        return -1;
    //  the new values, then the signed attributes' DER (a SET OF, sorted) with
    //  them; the signingTime only when the second (or the skew) changed
    time_t now = time(NULL);
    bool renew_time = !k->time_set || k->time_at != now || k->time_skew != s_clock_skew_s;
    k->time_set = false; //  (until renewed below)
    if (s_digest(k->md, body, len, hash, &hl) < 0 ||
        ASN1_OCTET_STRING_set(k->digest, hash, (int)hl) != 1 ||
        (renew_time && !ASN1_UTCTIME_adj(k->time, now, 0, s_clock_skew_s)) ||
        s_attr_der(k->md_attr, k->md_der) < 0 ||
        (renew_time && s_attr_der(k->time_attr, k->time_der) < 0))
        goto out;
    k->time_set = true;
    k->time_at = now;
    k->time_skew = s_clock_skew_s;
    //  the SET OF into k's buffer (measured first: OpenSSL does the same
    //  two walks when it allocates, plus the allocation)
    int sl = i2d_ASN1_SET_ANY(k->attrs, NULL);
    if (sl > k->setcap) {
        unsigned char *nb = OPENSSL_realloc(k->set, (size_t)sl);
        if (!nb)
            goto out;
        k->set = nb;
        k->setcap = sl;
    }
    unsigned char *sp = k->set;
    if (sl <= 0 || i2d_ASN1_SET_ANY(k->attrs, &sp) != sl ||
        s_digest(k->md, k->set, (size_t)sl, hash, &hl) < 0 ||
        EVP_PKEY_sign(k->pctx, sig, &siglen, hash, hl) != 1 ||
        ASN1_STRING_set(CMS_SignerInfo_get0_signature(k->si), sig, (int)siglen) != 1)
        goto out;
    if (!k->der_max) { //  the first time: OpenSSL measures and allocates
        unsigned char *first = NULL;
        int n = i2d_CMS_ContentInfo(k->cms, &first);
        if (n > 0)
            k->der_max = (size_t)n + maxsig + 8 + 64; //  + a margin on top of the bound
        OPENSSL_free(first);
        if (n <= 0)
            goto out;
    }
    if (k->der_max > cap) {
        unsigned char *p = realloc(buf, k->der_max);
        if (!p)
            goto out;
        buf = p;
        cap = k->der_max;
    }
    unsigned char *p = buf;
    *derlen = i2d_CMS_ContentInfo(k->cms, &p);
    *der = buf;
    if (*derlen > 0 && (size_t)*derlen > k->der_max)
        abort(); //  the bound above is wrong: a programming error, not bad input
    rc = *derlen > 0 ? 0 : -1;
out:
    return rc;
}

//  The DER of the request's SignedData: *der points into the kept
//  structure's buffer (*own NULL) or is OpenSSL's allocation (*own = it, the
//  caller frees it with OPENSSL_free). 0 / -1.
static int s_sign_der(const devsim_ident_t *cid, const devsim_ident_t *extra, const EVP_MD *md,
                      const void *body, size_t len, unsigned char **der, int *dl,
                      unsigned char **own)
{
    devsim_ident_t *id = (devsim_ident_t *)cid; //  its kept SignedData is a cache
    unsigned char *kder = NULL;                 //  s_sign_kept's (not to be freed)
    int md_nid = EVP_MD_get_type(md);
    s_kept_t *k = NULL;
    *own = NULL;
    if (!extra) { //  two signers (a negative test) always go the OpenSSL way
        for (int i = 0; i < S_KEPT && !k; i++)
            if (id->kept[i].md_nid == md_nid)
                k = &id->kept[i];
        for (int i = 0; i < S_KEPT && !k; i++)
            if (id->kept[i].md_nid == 0) {
                k = &id->kept[i];
                k->md_nid = md_nid;
                //  made now; its first signature must verify before it is used
                if (s_kept_make(id, k, md, body, len) < 0 ||
                    s_sign_kept(id, k, body, len, &kder, dl) < 0 ||
                    !s_selfcheck(id, k, kder, (size_t)*dl, body, len)) {
                    s_kept_clear(k);
                    k->bad = true;
                    ERR_clear_error();
                } else
                    goto fast;
            }
    }
    if (k && k->cms && !k->bad && s_sign_kept(id, k, body, len, &kder, dl) == 0)
        goto fast;
    ERR_clear_error();
    CMS_ContentInfo *cms = NULL;
    int rc = -1;
    if (s_sign_openssl_cms(id, extra, md, body, len, &cms) == 0) {
        *dl = i2d_CMS_ContentInfo(cms, own);
        if (*dl > 0) {
            s_openssl_count++;
            *der = *own;
            rc = 0;
        }
    }
    CMS_ContentInfo_free(cms);
    if (rc)
        ERR_clear_error();
    return rc;
fast:
    s_fast_count++;
    *der = kder;
    return 0;
}

int devsim_ident_sign(const devsim_ident_t *id, const devsim_ident_t *extra, const EVP_MD *md,
                      const void *body, size_t len, char **b64)
{
    unsigned char *der = NULL, *own = NULL;
    int dl = 0;
    int rc = s_sign_der(id, extra, md, body, len, &der, &dl, &own);
    if (rc == 0)
        rc = s_b64(der, (size_t)dl, b64);
    OPENSSL_free(own);
    return rc;
}

long devsim_ident_sign_into(const devsim_ident_t *id, const EVP_MD *md, const void *body,
                            size_t len, char **buf, size_t *cap, size_t off)
{
    unsigned char *der = NULL, *own = NULL;
    int dl = 0;
    long n = -1;
    if (s_sign_der(id, NULL, md, body, len, &der, &dl, &own) == 0) {
        size_t need = off + 4 * (((size_t)dl + 2) / 3) + 1;
        if (need > *cap) {
            char *p = realloc(*buf, need);
            if (p) {
                *buf = p;
                *cap = need;
            }
        }
        if (need <= *cap)
            n = EVP_EncodeBlock((unsigned char *)*buf + off, der, dl);
    }
    OPENSSL_free(own);
    return n;
}

int devsim_ident_prepare(const devsim_ident_t *id, const EVP_MD *md)
{
    long fast = s_fast_count, slow = s_openssl_count;
    char *b64 = NULL;
    int rc = devsim_ident_sign(id, NULL, md, "", 0, &b64);
    free(b64);
    s_fast_count = fast;
    s_openssl_count = slow;
    return rc;
}

int devsim_ident_sign_nosigner(const devsim_ident_t *id, char **b64)
{
    int rc = -1;
    STACK_OF(X509) *certs = sk_X509_new_null();
    CMS_ContentInfo *cms = NULL;
    if (!certs || !sk_X509_push(certs, id->cert))
        goto out;
    //  signcert and pkey NULL: a certificates-only SignedData (no SignerInfo);
    //  left partial (nothing to finalise) and marked detached.
    cms = CMS_sign(NULL, NULL, certs, NULL, CMS_DETACHED | CMS_BINARY | CMS_PARTIAL);
    if (!cms || !CMS_set_detached(cms, 1))
        goto out;
    rc = s_cms_b64(cms, b64);
out:
    if (rc)
        ERR_clear_error();
    CMS_ContentInfo_free(cms);
    sk_X509_free(certs);
    return rc;
}
