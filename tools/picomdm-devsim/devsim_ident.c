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

struct devsim_ident {
    X509 *cert;
    EVP_PKEY *key;
    char cn[128];
    unsigned char *der;
    size_t derlen;
    //  Made on the first signature (a cache, not state: devsim_ident_sign
    //  takes a const identity): the signer's IssuerAndSerialNumber DER and
    //  a signing context for the key, initialised once for md_nid.
    unsigned char *sid;
    size_t sidlen;
    EVP_PKEY_CTX *pctx;
    int pctx_md;
};

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

static int s_ident_prepare(devsim_ident_t *id, const EVP_MD *md);

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
    //  The signing context and IssuerAndSerialNumber for SHA-256 now, with
    //  the key, rather than on the first request (a device has its key
    //  ready); another digest makes its own when used. Failure is not fatal:
    //  the first signature tries again.
    if (s_ident_prepare(id, EVP_sha256()) < 0)
        ERR_clear_error();
    return id;
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
    X509 *cert =
        key ? s_make_cert(key, cn, ca->cert, ca->key, false, not_before_s, not_after_s) : NULL;
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
    X509 *cert = key ? s_make_cert(key, cn, NULL, NULL, false, -3600, 365L * 86400) : NULL;
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
    free((*idp)->sid);
    EVP_PKEY_CTX_free((*idp)->pctx);
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
//  the reference the fast path below is built from and checked against.
static int s_sign_openssl(const devsim_ident_t *id, const devsim_ident_t *extra, const EVP_MD *md,
                          const void *body, size_t len, unsigned char **der, int *derlen)
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
    *der = NULL;
    *derlen = i2d_CMS_ContentInfo(cms, der);
    rc = *derlen > 0 ? 0 : -1;
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

// ---- the fast path: the same SignedData, assembled from a template -------------
//
//  OpenSSL's CMS signing costs ~120 us per request here (building the
//  SignedData object tree, S/MIME capabilities, re-encoding the certificate,
//  fetching algorithms, a fresh signing context) around a ~25 us ECDSA
//  signature, and the simulator shares the machine with the server it
//  measures. Everything in the SignedData but the messageDigest and
//  signingTime attributes and the signature itself is the same for every
//  request of a given key type and digest, or of a given identity. So the
//  first signature of a (key type, digest) is made by OpenSSL and cut into
//  its parts (a "shape"), and the following ones are assembled from them:
//  digest of the body, the signed attributes with that digest and the
//  current time patched in, one EVP_PKEY_sign over their DER, the encoding
//  around it. The result is byte for byte what OpenSSL would encode for the
//  same attribute values (the attributes keep OpenSSL's DER order: their
//  lengths never change). Each shape is checked once with CMS_verify before
//  it is used; if that fails, or the template has something unexpected,
//  every signature goes the OpenSSL way.

typedef struct {
    int key_id, md_nid;    //  what it is for (EVP_PKEY_get_base_id, EVP_MD_get_type)
    bool bad;              //  not usable: sign the OpenSSL way
    EVP_MD *md;            //  fetched once
    unsigned char *ci_oid; //  ContentInfo's contentType (signedData), DER
    size_t ci_oidlen;
    unsigned char *sd_pre; //  SignedData: version, digestAlgorithms, encapContentInfo
    size_t sd_prelen;
    unsigned char *si_ver; //  SignerInfo version
    size_t si_verlen;
    unsigned char *si_dalg; //  SignerInfo digestAlgorithm
    size_t si_dalglen;
    unsigned char *attrs; //  signed attributes, contents of the [0] (SET OF)
    size_t attrslen;
    size_t md_off, time_off; //  in attrs: the messageDigest octets, the UTCTime's 13 chars
    unsigned char *sigalg;   //  signatureAlgorithm
    size_t sigalglen;
} s_shape_t;

#define S_SHAPES 8
static s_shape_t s_shapes[S_SHAPES];
static int s_nshapes;
static long s_fast_count, s_openssl_count;

void devsim_ident_sign_counts(long *fast, long *openssl)
{
    *fast = s_fast_count;
    *openssl = s_openssl_count;
}

//  One DER element at p (before e): single-byte tag, definite length.
//  *hl = header length, *cl = content length. 0 / -1.
static int s_tlv(const unsigned char *p, const unsigned char *e, int *tag, size_t *hl, size_t *cl)
{
    if (e - p < 2 || (p[0] & 0x1f) == 0x1f)
        return -1;
    *tag = p[0];
    size_t n = p[1], h = 2;
    if (n & 0x80) {
        size_t k = n & 0x7f;
        if (k == 0 || k > 4 || (size_t)(e - p) < 2 + k)
            return -1;
        n = 0;
        for (size_t i = 0; i < k; i++)
            n = (n << 8) | p[2 + i];
        h += k;
    }
    if ((size_t)(e - p) - h < n)
        return -1;
    *hl = h;
    *cl = n;
    return 0;
}

static size_t s_hdr_len(size_t n)
{
    return n < 0x80 ? 2 : n < 0x100 ? 3 : n < 0x10000 ? 4 : 5;
}

//  Tag and DER length of n at p; returns the bytes written.
static size_t s_put_hdr(unsigned char *p, int tag, size_t n)
{
    size_t h = s_hdr_len(n);
    p[0] = (unsigned char)tag;
    if (h == 2)
        p[1] = (unsigned char)n;
    else {
        p[1] = (unsigned char)(0x80 | (h - 2));
        for (size_t i = h - 1; i >= 2; i--, n >>= 8)
            p[i] = (unsigned char)(n & 0xff);
    }
    return h;
}

static unsigned char *s_dup(const unsigned char *p, size_t n)
{
    unsigned char *d = malloc(n ? n : 1);
    if (d)
        memcpy(d, p, n);
    return d;
}

//  Position of the value of the attribute with this OID in attrs (after the
//  OID, its SET, and the value's tag and length), requiring value tag `tag`
//  and length `vlen`. 0 if absent or different.
static size_t s_attr_value(const unsigned char *attrs, size_t len, const unsigned char *oid,
                           size_t oidlen, int tag, size_t vlen)
{
    for (size_t i = 0; i + oidlen + 4 + vlen <= len; i++) {
        if (memcmp(attrs + i, oid, oidlen) != 0)
            continue;
        const unsigned char *v = attrs + i + oidlen;
        if (v[0] == 0x31 && (size_t)v[1] == vlen + 2 && v[2] == tag && (size_t)v[3] == vlen)
            return i + oidlen + 4;
        return 0;
    }
    return 0;
}

//  Cut OpenSSL's SignedData (der) into the shape's parts. 0 / -1.
static int s_shape_parse(s_shape_t *sh, const unsigned char *der, size_t len)
{
    static const unsigned char oid_md[] = {0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
                                           0xf7, 0x0d, 0x01, 0x09, 0x04};
    static const unsigned char oid_time[] = {0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
                                             0xf7, 0x0d, 0x01, 0x09, 0x05};
    const unsigned char *p = der, *e = der + len, *x;
    int tag;
    size_t hl, cl;
    //  ContentInfo SEQUENCE { contentType OID, [0] { SignedData SEQUENCE { ... } } }
    if (s_tlv(p, e, &tag, &hl, &cl) || tag != 0x30 || hl + cl != len)
        return -1;
    p += hl;
    if (s_tlv(p, e, &tag, &hl, &cl) || tag != 0x06)
        return -1;
    sh->ci_oid = s_dup(p, hl + cl);
    sh->ci_oidlen = hl + cl;
    p += hl + cl;
    if (s_tlv(p, e, &tag, &hl, &cl) || tag != 0xa0)
        return -1;
    p += hl;
    if (s_tlv(p, e, &tag, &hl, &cl) || tag != 0x30)
        return -1;
    p += hl;
    e = p + cl;
    //  version INTEGER, digestAlgorithms SET, encapContentInfo SEQUENCE
    x = p;
    for (int i = 0; i < 3; i++) {
        static const int want[3] = {0x02, 0x31, 0x30};
        if (s_tlv(p, e, &tag, &hl, &cl) || tag != want[i])
            return -1;
        p += hl + cl;
    }
    sh->sd_pre = s_dup(x, (size_t)(p - x));
    sh->sd_prelen = (size_t)(p - x);
    //  certificates [0] (the signer's only), no crls, then signerInfos SET of one
    if (s_tlv(p, e, &tag, &hl, &cl) || tag != 0xa0)
        return -1;
    p += hl + cl;
    if (s_tlv(p, e, &tag, &hl, &cl) || tag != 0x31 || p + hl + cl != e)
        return -1;
    p += hl;
    if (s_tlv(p, e, &tag, &hl, &cl) || tag != 0x30 || p + hl + cl != e)
        return -1;
    p += hl;
    //  SignerInfo: version, sid (IssuerAndSerialNumber), digestAlgorithm,
    //  signedAttrs [0], signatureAlgorithm, signature OCTET STRING, nothing else
    if (s_tlv(p, e, &tag, &hl, &cl) || tag != 0x02)
        return -1;
    sh->si_ver = s_dup(p, hl + cl);
    sh->si_verlen = hl + cl;
    p += hl + cl;
    if (s_tlv(p, e, &tag, &hl, &cl) || tag != 0x30)
        return -1;
    p += hl + cl;
    if (s_tlv(p, e, &tag, &hl, &cl) || tag != 0x30)
        return -1;
    sh->si_dalg = s_dup(p, hl + cl);
    sh->si_dalglen = hl + cl;
    p += hl + cl;
    if (s_tlv(p, e, &tag, &hl, &cl) || tag != 0xa0)
        return -1;
    sh->attrs = s_dup(p + hl, cl);
    sh->attrslen = cl;
    p += hl + cl;
    if (s_tlv(p, e, &tag, &hl, &cl) || tag != 0x30)
        return -1;
    sh->sigalg = s_dup(p, hl + cl);
    sh->sigalglen = hl + cl;
    p += hl + cl;
    if (s_tlv(p, e, &tag, &hl, &cl) || tag != 0x04 || p + hl + cl != e)
        return -1;
    if (!sh->ci_oid || !sh->sd_pre || !sh->si_ver || !sh->si_dalg || !sh->attrs || !sh->sigalg)
        return -1;
    sh->md_off = s_attr_value(sh->attrs, sh->attrslen, oid_md, sizeof oid_md, 0x04,
                              (size_t)EVP_MD_get_size(sh->md));
    sh->time_off = s_attr_value(sh->attrs, sh->attrslen, oid_time, sizeof oid_time, 0x17, 13);
    return sh->md_off && sh->time_off ? 0 : -1; //  (a GeneralizedTime, from 2050: not here)
}

//  The identity's IssuerAndSerialNumber and signing context (made once).
static int s_ident_prepare(devsim_ident_t *id, const EVP_MD *md)
{
    int md_nid = EVP_MD_get_type(md);
    if (!id->sid) {
        unsigned char *name = NULL, *serial = NULL;
        int nl = i2d_X509_NAME(X509_get_issuer_name(id->cert), &name);
        int sl = i2d_ASN1_INTEGER(X509_get0_serialNumber(id->cert), &serial);
        if (nl > 0 && sl > 0) {
            size_t c = (size_t)nl + (size_t)sl;
            id->sid = malloc(s_hdr_len(c) + c);
            if (id->sid) {
                size_t h = s_put_hdr(id->sid, 0x30, c);
                memcpy(id->sid + h, name, (size_t)nl);
                memcpy(id->sid + h + nl, serial, (size_t)sl);
                id->sidlen = h + c;
            }
        }
        OPENSSL_free(name);
        OPENSSL_free(serial);
        if (!id->sid)
            return -1;
    }
    if (!id->pctx || id->pctx_md != md_nid) {
        EVP_PKEY_CTX_free(id->pctx);
        id->pctx = EVP_PKEY_CTX_new_from_pkey(NULL, id->key, NULL);
        if (!id->pctx || EVP_PKEY_sign_init(id->pctx) != 1 ||
            EVP_PKEY_CTX_set_signature_md(id->pctx, md) != 1) {
            EVP_PKEY_CTX_free(id->pctx);
            id->pctx = NULL;
            return -1;
        }
        id->pctx_md = md_nid;
    }
    return 0;
}

//  The SignedData for body, assembled from the shape. *der malloc'd. 0 / -1.
static int s_sign_fast(devsim_ident_t *id, const s_shape_t *sh, const void *body, size_t len,
                       unsigned char **der, size_t *derlen)
{
    if (s_ident_prepare(id, sh->md) < 0)
        return -1;
    unsigned char attrs[4096], hash[EVP_MAX_MD_SIZE], sig[1024];
    unsigned int hl = 0;
    size_t siglen = sizeof sig;
    if (sh->attrslen + 8 > sizeof attrs)
        return -1;
    //  the attributes as signed: tagged SET OF (RFC 5652 5.4), digest and time in place
    size_t ah = s_put_hdr(attrs, 0x31, sh->attrslen);
    unsigned char *a = attrs + ah;
    memcpy(a, sh->attrs, sh->attrslen);
    if (EVP_Digest(body, len, a + sh->md_off, &hl, sh->md, NULL) != 1)
        return -1;
    time_t now = time(NULL) + s_clock_skew_s;
    struct tm tm;
    char t[64];
    if (!gmtime_r(&now, &tm) || tm.tm_year < 50 || tm.tm_year >= 150)
        return -1; //  UTCTime covers 1950-2049
    snprintf(t, sizeof t, "%02d%02d%02d%02d%02d%02dZ", tm.tm_year % 100, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec);
    memcpy(a + sh->time_off, t, 13);
    if (EVP_Digest(attrs, ah + sh->attrslen, hash, &hl, sh->md, NULL) != 1 ||
        EVP_PKEY_sign(id->pctx, sig, &siglen, hash, hl) != 1)
        return -1;
    //  lengths, inside out
    size_t attrs_el = s_hdr_len(sh->attrslen) + sh->attrslen;
    size_t sig_el = s_hdr_len(siglen) + siglen;
    size_t si_c = sh->si_verlen + id->sidlen + sh->si_dalglen + attrs_el + sh->sigalglen + sig_el;
    size_t si_el = s_hdr_len(si_c) + si_c;
    size_t sis_el = s_hdr_len(si_el) + si_el;
    size_t certs_el = s_hdr_len(id->derlen) + id->derlen;
    size_t sd_c = sh->sd_prelen + certs_el + sis_el;
    size_t sd_el = s_hdr_len(sd_c) + sd_c;
    size_t x_el = s_hdr_len(sd_el) + sd_el;
    size_t ci_c = sh->ci_oidlen + x_el;
    size_t total = s_hdr_len(ci_c) + ci_c;
    unsigned char *out = malloc(total), *p = out;
    if (!out)
        return -1;
#define PUT(src, n) (memcpy(p, (src), (n)), p += (n))
    p += s_put_hdr(p, 0x30, ci_c);
    PUT(sh->ci_oid, sh->ci_oidlen);
    p += s_put_hdr(p, 0xa0, sd_el);
    p += s_put_hdr(p, 0x30, sd_c);
    PUT(sh->sd_pre, sh->sd_prelen);
    p += s_put_hdr(p, 0xa0, id->derlen);
    PUT(id->der, id->derlen);
    p += s_put_hdr(p, 0x31, si_el);
    p += s_put_hdr(p, 0x30, si_c);
    PUT(sh->si_ver, sh->si_verlen);
    PUT(id->sid, id->sidlen);
    PUT(sh->si_dalg, sh->si_dalglen);
    p += s_put_hdr(p, 0xa0, sh->attrslen);
    PUT(a, sh->attrslen);
    PUT(sh->sigalg, sh->sigalglen);
    p += s_put_hdr(p, 0x04, siglen);
    PUT(sig, siglen);
#undef PUT
    if ((size_t)(p - out) != total) {
        free(out);
        return -1;
    }
    *der = out;
    *derlen = total;
    return 0;
}

//  Does this SignedData verify over body with id's certificate (chain not
//  checked: the shape's own check)?
static bool s_selfcheck(const devsim_ident_t *id, const unsigned char *der, size_t derlen,
                        const void *body, size_t len)
{
    const unsigned char *p = der;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)derlen);
    BIO *in = BIO_new_mem_buf(body, (int)len);
    STACK_OF(X509) *signers = NULL;
    bool ok = cms && in && p == der + derlen &&
              CMS_verify(cms, NULL, NULL, in, NULL, CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY) == 1;
    if (ok) { //  and signed by this identity's certificate
        signers = CMS_get0_signers(cms);
        ok = signers && sk_X509_num(signers) == 1 &&
             X509_cmp(sk_X509_value(signers, 0), id->cert) == 0;
    }
    sk_X509_free(signers);
    ERR_clear_error();
    BIO_free(in);
    CMS_ContentInfo_free(cms);
    return ok;
}

static void s_shape_clear(s_shape_t *sh)
{
    EVP_MD_free(sh->md);
    free(sh->ci_oid);
    free(sh->sd_pre);
    free(sh->si_ver);
    free(sh->si_dalg);
    free(sh->attrs);
    free(sh->sigalg);
    int k = sh->key_id, m = sh->md_nid;
    memset(sh, 0, sizeof *sh);
    sh->key_id = k;
    sh->md_nid = m;
}

int devsim_ident_sign(const devsim_ident_t *cid, const devsim_ident_t *extra, const EVP_MD *md,
                      const void *body, size_t len, char **b64)
{
    devsim_ident_t *id = (devsim_ident_t *)cid; //  its sid/pctx are a cache
    unsigned char *der = NULL;
    size_t derlen = 0;
    int rc = -1;
    s_shape_t *sh = NULL;
    int key_id = EVP_PKEY_get_base_id(id->key), md_nid = EVP_MD_get_type(md);
    if (!extra) { //  two signers (a negative test) always go the OpenSSL way
        for (int i = 0; i < s_nshapes && !sh; i++)
            if (s_shapes[i].key_id == key_id && s_shapes[i].md_nid == md_nid)
                sh = &s_shapes[i];
        if (!sh && s_nshapes < S_SHAPES) {
            sh = &s_shapes[s_nshapes++];
            memset(sh, 0, sizeof *sh);
            sh->key_id = key_id;
            sh->md_nid = md_nid;
            sh->bad = true; //  until made and checked below
            int dl = 0;
            sh->md = EVP_MD_fetch(NULL, EVP_MD_get0_name(md), NULL);
            if (sh->md && s_sign_openssl(id, NULL, md, body, len, &der, &dl) == 0) {
                //  the OpenSSL signature answers this request; a fast one over
                //  the same body must verify before the shape is used
                unsigned char *fd = NULL;
                size_t fl = 0;
                if (s_shape_parse(sh, der, (size_t)dl) == 0 &&
                    s_sign_fast(id, sh, body, len, &fd, &fl) == 0)
                    sh->bad = !s_selfcheck(id, fd, fl, body, len);
                free(fd);
                rc = s_b64(der, (size_t)dl, b64);
                s_openssl_count++;
            }
            if (sh->bad) {
                s_shape_clear(sh);
                sh->bad = true;
            }
            ERR_clear_error();
            OPENSSL_free(der);
            return rc;
        }
    }
    if (sh && !sh->bad && s_sign_fast(id, sh, body, len, &der, &derlen) == 0) {
        s_fast_count++;
        rc = s_b64(der, derlen, b64);
        free(der);
        return rc;
    }
    int dl = 0;
    ERR_clear_error();
    if (s_sign_openssl(id, extra, md, body, len, &der, &dl) < 0)
        goto out;
    s_openssl_count++;
    rc = s_b64(der, (size_t)dl, b64);
out:
    OPENSSL_free(der);
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
