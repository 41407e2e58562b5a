/*  devsim_ident — device identities and Mdm-Signature (see devsim_ident.h). */
#include "devsim_ident.h"
#include "pm_pem.h"

#include <openssl/bio.h>
#include <openssl/cms.h>
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

devsim_ident_t *devsim_ident_load(const char *cert_path, const char *key_path, char *err,
                                  size_t errlen)
{
    X509 *cert = pm_pem_read_cert(cert_path);
    EVP_PKEY *key = cert ? pm_pem_read_key(key_path) : NULL;
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

int devsim_ident_sign(const devsim_ident_t *id, const devsim_ident_t *extra, const EVP_MD *md,
                      const void *body, size_t len, char **b64)
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
    rc = s_cms_b64(cms, b64);
out:
    if (rc)
        ERR_clear_error();
    CMS_ContentInfo_free(cms);
    BIO_free(in);
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
