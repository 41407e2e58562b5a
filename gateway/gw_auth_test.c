/*  gw_auth unit tests: Mdm-Signature (CMS detached) verification and the
 *  certificate chain check, with a CA, leaves and signatures made here with
 *  the OpenSSL API (nothing read from the source tree).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "gw_auth.h"

#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- test PKI ---- */

typedef struct {
    X509 *cert;
    EVP_PKEY *key;
} ident_t;

static const char s_body[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\">"
                             "<dict><key>MessageType</key><string>Authenticate</string>"
                             "<key>UDID</key><string>0000-TEST</string></dict></plist>\n";

static void s_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    assert_non_null(ext);
    assert_int_equal(X509_add_ext(cert, ext, -1), 1);
    X509_EXTENSION_free(ext);
}

//  A certificate for `cn`, signed by `issuer` (NULL = self-signed), valid
//  from now+nb to now+na seconds.
static ident_t s_make(const char *cn, const ident_t *issuer, int ca, long nb, long na, int rsa)
{
    static long serial = 1;
    ident_t id;
    //  rsa: 1 RSA-2048, 2 Ed25519 (a key type no device enrolls with), 3 an
    //  EC key on the SM2 curve, else P-256
    id.key = rsa == 3   ? EVP_EC_gen("SM2")
             : rsa == 2 ? EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")
             : rsa      ? EVP_RSA_gen(2048)
                        : EVP_EC_gen("P-256");
    assert_non_null(id.key);
    id.cert = X509_new();
    assert_non_null(id.cert);
    X509_set_version(id.cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(id.cert), serial++);
    X509_gmtime_adj(X509_getm_notBefore(id.cert), nb);
    X509_gmtime_adj(X509_getm_notAfter(id.cert), na);
    X509_NAME *name = X509_get_subject_name(id.cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(id.cert, issuer ? X509_get_subject_name(issuer->cert) : name);
    X509_set_pubkey(id.cert, id.key);
    X509 *icert = issuer ? issuer->cert : id.cert;
    s_ext(id.cert, icert, NID_subject_key_identifier, "hash");
    s_ext(id.cert, icert, NID_authority_key_identifier, "keyid:always");
    if (ca) {
        s_ext(id.cert, icert, NID_basic_constraints, "critical,CA:TRUE");
        s_ext(id.cert, icert, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        s_ext(id.cert, icert, NID_basic_constraints, "critical,CA:FALSE");
        s_ext(id.cert, icert, NID_key_usage, "critical,digitalSignature,keyEncipherment");
        s_ext(id.cert, icert, NID_ext_key_usage, "clientAuth");
    }
    assert_true(X509_sign(id.cert, issuer ? issuer->key : id.key, EVP_sha256()) > 0);
    return id;
}

static void s_free(ident_t *id)
{
    X509_free(id->cert);
    EVP_PKEY_free(id->key);
}

static char *s_pem(X509 *cert)
{
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, cert);
    char *p;
    long n = BIO_get_mem_data(b, &p);
    char *s = strndup(p, (size_t)n);
    BIO_free(b);
    return s;
}

static void s_write_pem(const char *path, X509 *a, X509 *b)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    PEM_write_X509(f, a);
    if (b)
        PEM_write_X509(f, b);
    fclose(f);
}

//  Detached CMS over data by `n` signers (0 = certs-only, no SignerInfo),
//  `extra` certificates added (intermediates). Returns base64 (malloc'd).
static char *s_sign(const void *data, size_t len, const ident_t *signers, int n, const EVP_MD *md,
                    X509 *extra)
{
    BIO *in = BIO_new_mem_buf(data, (int)len);
    CMS_ContentInfo *cms =
        CMS_sign(NULL, NULL, NULL, NULL, CMS_PARTIAL | CMS_DETACHED | CMS_BINARY);
    assert_non_null(cms);
    for (int i = 0; i < n; i++)
        assert_non_null(CMS_add1_signer(cms, signers[i].cert, signers[i].key, md, CMS_BINARY));
    if (n == 0) //  certs-only: the signer's certificate but no SignerInfo
        assert_int_equal(CMS_add1_cert(cms, signers[0].cert), 1);
    if (extra)
        assert_int_equal(CMS_add1_cert(cms, extra), 1);
    if (n > 0) //  (OpenSSL refuses to "finalise" a SignedData without signers)
        assert_int_equal(CMS_final(cms, in, NULL, CMS_DETACHED | CMS_BINARY), 1);
    assert_non_null(cms);
    unsigned char *der = NULL;
    int dlen = i2d_CMS_ContentInfo(cms, &der);
    assert_true(dlen > 0);
    char *b64 = malloc((size_t)dlen / 3 * 4 + 8);
    EVP_EncodeBlock((unsigned char *)b64, der, dlen);
    OPENSSL_free(der);
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    return b64;
}

//  Detached CMS by one signer whose signingTime is now + skew seconds
//  (skew_s = LONG_MIN: no signingTime attribute at all, CMS_NOATTR).
static char *s_sign_at(const void *data, size_t len, const ident_t *id, long skew_s)
{
    BIO *in = BIO_new_mem_buf(data, (int)len);
    CMS_ContentInfo *cms =
        CMS_sign(NULL, NULL, NULL, NULL, CMS_PARTIAL | CMS_DETACHED | CMS_BINARY);
    assert_non_null(cms);
    bool noattr = skew_s == LONG_MIN;
    CMS_SignerInfo *si = CMS_add1_signer(cms, id->cert, id->key, EVP_sha256(),
                                         CMS_BINARY | (noattr ? CMS_NOATTR : 0));
    assert_non_null(si);
    if (!noattr) {
        ASN1_TIME *t = X509_gmtime_adj(NULL, skew_s);
        assert_non_null(t);
        assert_int_equal(CMS_signed_add1_attr_by_NID(si, NID_pkcs9_signingTime, t->type, t, -1), 1);
        ASN1_TIME_free(t);
    }
    assert_int_equal(CMS_final(cms, in, NULL, CMS_DETACHED | CMS_BINARY), 1);
    unsigned char *der = NULL;
    int dlen = i2d_CMS_ContentInfo(cms, &der);
    assert_true(dlen > 0);
    char *b64 = malloc((size_t)dlen / 3 * 4 + 8);
    EVP_EncodeBlock((unsigned char *)b64, der, dlen);
    OPENSSL_free(der);
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    return b64;
}

/* ---- fixture ---- */

typedef struct {
    char dir[64], ca_path[128], other_path[128];
    ident_t ca, other_ca, inter, leaf, leaf_rsa, expired, other_leaf, selfsigned, inter_leaf;
    gw_auth_t *auth;
    bool nocache; //  the group that runs every case without the caches
} fx_t;

static int s_setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/gw_auth_testXXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->ca = s_make("PicoMDM Test Device CA", NULL, 1, -3600, 86400 * 365, 0);
    f->other_ca = s_make("Some Other CA", NULL, 1, -3600, 86400 * 365, 0);
    f->inter = s_make("PicoMDM Test Intermediate", &f->ca, 1, -3600, 86400 * 365, 0);
    f->leaf = s_make("device-1", &f->ca, 0, -3600, 86400, 0);
    f->leaf_rsa = s_make("device-rsa", &f->ca, 0, -3600, 86400, 1);
    f->expired = s_make("device-old", &f->ca, 0, -86400 * 10, -86400, 0);
    f->other_leaf = s_make("device-x", &f->other_ca, 0, -3600, 86400, 0);
    f->selfsigned = s_make("device-self", NULL, 0, -3600, 86400, 0);
    f->inter_leaf = s_make("device-2", &f->inter, 0, -3600, 86400, 0);
    snprintf(f->ca_path, sizeof f->ca_path, "%s/ca.pem", f->dir);
    snprintf(f->other_path, sizeof f->other_path, "%s/other.pem", f->dir);
    s_write_pem(f->ca_path, f->ca.cert, NULL);
    s_write_pem(f->other_path, f->other_ca.cert, NULL);
    char err[256];
    f->auth = gw_auth_new(f->ca_path, err, sizeof err);
    assert_non_null(f->auth);
    *state = f;
    return 0;
}

static int s_setup_nocache(void **state)
{
    s_setup(state);
    fx_t *f = *state;
    assert_int_equal(gw_auth_set_cache(f->auth, 0, 0, 16), 0);
    f->nocache = true;
    return 0;
}

static int s_teardown(void **state)
{
    fx_t *f = *state;
    gw_auth_destroy(&f->auth);
    gw_auth_destroy(&f->auth); //  safe twice
    ident_t *all[] = {&f->ca,      &f->other_ca,   &f->inter,      &f->leaf,      &f->leaf_rsa,
                      &f->expired, &f->other_leaf, &f->selfsigned, &f->inter_leaf};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        s_free(all[i]);
    unlink(f->ca_path);
    unlink(f->other_path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static int s_verify(fx_t *f, const char *sig, const void *body, size_t len, gw_auth_result_t *r)
{
    return gw_auth_verify_signature(f->auth, sig, sig ? strlen(sig) : 0, body, len, r);
}

static void s_expect_fail(fx_t *f, const char *sig, const void *body, size_t len, const char *code)
{
    gw_auth_result_t r;
    assert_int_equal(s_verify(f, sig, body, len, &r), -1);
    assert_non_null(r.code);
    if (strcmp(r.code, code) != 0)
        fail_msg("expected code %s, got %s (%s)", code, r.code, r.reason);
    assert_true(strlen(r.reason) > 0);
}

/* ---- tests ---- */

static void test_good_sha256(void **state)
{
    fx_t *f = *state;
    char *sig = s_sign(s_body, strlen(s_body), &f->leaf, 1, EVP_sha256(), NULL);
    gw_auth_result_t r;
    int rc = s_verify(f, sig, s_body, strlen(s_body), &r);
    if (rc != 0)
        fail_msg("good signature rejected: %s %s", r.code, r.reason);
    //  cert_hash is SHA-256 over the DER certificate
    unsigned char *der = NULL;
    int dlen = i2d_X509(f->leaf.cert, &der);
    uint8_t want[32];
    EVP_Digest(der, (size_t)dlen, want, NULL, EVP_sha256(), NULL);
    OPENSSL_free(der);
    assert_memory_equal(r.cert_hash, want, 32);
    assert_string_equal(r.issuer, "CN=PicoMDM Test Device CA");
    assert_string_equal(r.subject, "CN=device-1");
    char hex[65];
    gw_auth_hash_hex(r.cert_hash, hex);
    assert_int_equal(strlen(hex), 64);
    free(sig);
}

//  The identity certificate's notAfter (also from the chain cache) and the
//  device's clock skew from the signingTime attribute, never a rejection.
static void test_not_after_and_skew(void **state)
{
    fx_t *f = *state;
    struct tm tm;
    assert_int_equal(ASN1_TIME_to_tm(X509_get0_notAfter(f->leaf.cert), &tm), 1);
    int64_t want_na = (int64_t)timegm(&tm);
    static const long skews[] = {900, -3600, 0};
    for (int i = 0; i < 3; i++) {
        char *sig = s_sign_at(s_body, strlen(s_body), &f->leaf, skews[i]);
        gw_auth_result_t r;
        if (s_verify(f, sig, s_body, strlen(s_body), &r) != 0)
            fail_msg("a signature with signingTime %+ld s rejected: %s %s", skews[i], r.code,
                     r.reason);
        assert_int_equal(r.not_after, want_na); //  second and third: from the cache
        assert_true(r.has_skew);
        if (r.clock_skew_s < skews[i] - 5 || r.clock_skew_s > skews[i] + 1)
            fail_msg("skew %+ld s measured as %lld", skews[i], (long long)r.clock_skew_s);
        free(sig);
    }
    char *sig = s_sign_at(s_body, strlen(s_body), &f->leaf, LONG_MIN);
    gw_auth_result_t r;
    assert_int_equal(s_verify(f, sig, s_body, strlen(s_body), &r), 0);
    assert_false(r.has_skew);
    assert_int_equal(r.not_after, want_na);
    free(sig);
    //  a certificate presented by TLS: notAfter too, no skew
    assert_int_equal(gw_auth_verify_cert(f->auth, f->leaf.cert, NULL, &r), 0);
    assert_int_equal(r.not_after, want_na);
    assert_false(r.has_skew);
}

static void test_good_sha1_rsa(void **state)
{
    fx_t *f = *state;
    char *sig = s_sign(s_body, strlen(s_body), &f->leaf_rsa, 1, EVP_sha1(), NULL);
    gw_auth_result_t r;
    int rc = s_verify(f, sig, s_body, strlen(s_body), &r);
    if (rc != 0)
        fail_msg("SHA-1 signature rejected: %s %s", r.code, r.reason);
    assert_string_equal(r.subject, "CN=device-rsa");
    free(sig);
}

static void test_sha512_refused(void **state)
{
    fx_t *f = *state;
    char *sig = s_sign(s_body, strlen(s_body), &f->leaf, 1, EVP_sha512(), NULL);
    s_expect_fail(f, sig, s_body, strlen(s_body), "bad_digest");
    free(sig);
}

static void test_base64_with_newlines(void **state)
{
    fx_t *f = *state;
    char *sig = s_sign(s_body, strlen(s_body), &f->leaf, 1, EVP_sha256(), NULL);
    size_t n = strlen(sig);
    char *wrapped = malloc(n + n / 64 + 2), *w = wrapped;
    for (size_t i = 0; i < n; i++) {
        *w++ = sig[i];
        if (i % 64 == 63)
            *w++ = '\n';
    }
    *w = '\0';
    gw_auth_result_t r;
    assert_int_equal(s_verify(f, wrapped, s_body, strlen(s_body), &r), 0);
    free(wrapped);
    free(sig);
}

static void test_intermediate_in_signature(void **state)
{
    fx_t *f = *state;
    //  the device sends its chain (iOS does); only the root is configured
    char *sig = s_sign(s_body, strlen(s_body), &f->inter_leaf, 1, EVP_sha256(), f->inter.cert);
    gw_auth_result_t r;
    int rc = s_verify(f, sig, s_body, strlen(s_body), &r);
    if (rc != 0)
        fail_msg("chain via intermediate rejected: %s %s", r.code, r.reason);
    free(sig);
    //  without the intermediate it cannot chain
    sig = s_sign(s_body, strlen(s_body), &f->inter_leaf, 1, EVP_sha256(), NULL);
    s_expect_fail(f, sig, s_body, strlen(s_body), "untrusted_chain");
    free(sig);
}

static void test_chain_cache(void **state)
{
    fx_t *f = *state;
    uint64_t h0, m0, h1, m1;
    gw_auth_result_t r;
    assert_int_equal(gw_auth_set_cache(f->auth, 1024, 600, 16), 0);
    //  the same device twice: one chain verification, then a cache hit
    ident_t dev = s_make("device-cache", &f->ca, 0, -3600, 86400, 0);
    char *sig = s_sign(s_body, strlen(s_body), &dev, 1, EVP_sha256(), NULL);
    gw_auth_cache_stats(f->auth, &h0, &m0);
    assert_int_equal(s_verify(f, sig, s_body, strlen(s_body), &r), 0);
    assert_int_equal(s_verify(f, sig, s_body, strlen(s_body), &r), 0);
    gw_auth_cache_stats(f->auth, &h1, &m1);
    assert_int_equal(m1 - m0, 1);
    assert_int_equal(h1 - h0, 1);
    //  ...and the certificate was decoded once, then taken from the cache
    uint64_t x0 = gw_auth_cert_cache_hits(f->auth);
    assert_int_equal(s_verify(f, sig, s_body, strlen(s_body), &r), 0);
    assert_int_equal(gw_auth_cert_cache_hits(f->auth), x0 + 1);
    assert_string_equal(r.issuer, "CN=PicoMDM Test Device CA");
    //  a cached certificate does not make a tampered body or another signer pass
    s_expect_fail(f, sig, "<plist/>", 8, "bad_signature");
    free(sig);
    //  a chain through an intermediate from the message is never cached
    sig = s_sign(s_body, strlen(s_body), &f->inter_leaf, 1, EVP_sha256(), f->inter.cert);
    gw_auth_cache_stats(f->auth, &h0, &m0);
    assert_int_equal(s_verify(f, sig, s_body, strlen(s_body), &r), 0);
    assert_int_equal(s_verify(f, sig, s_body, strlen(s_body), &r), 0);
    gw_auth_cache_stats(f->auth, &h1, &m1);
    assert_int_equal(h1 - h0, 0);
    free(sig);
    s_free(&dev);
    //  expiry is respected: a certificate valid for 2 more seconds is
    //  cached, then refused as expired once its notAfter has passed. A
    //  loaded machine may stall past those 2 s between making it and the
    //  first check: only then (its notAfter passed, refused as expired) is
    //  a new one made, at most 5 times
    ident_t brief = {0};
    int ok = -1;
    for (int i = 0; i < 5 && ok != 0; i++) {
        time_t t0 = time(NULL);
        brief = s_make("device-brief", &f->ca, 0, -3600, 2, 0);
        sig = s_sign(s_body, strlen(s_body), &brief, 1, EVP_sha256(), NULL);
        ok = s_verify(f, sig, s_body, strlen(s_body), &r);
        if (ok != 0) {
            assert_true(time(NULL) - t0 >= 3); //  notAfter >= t0 + 2 has passed
            assert_string_equal(r.code, "expired");
            free(sig);
            s_free(&brief);
        }
    }
    assert_int_equal(ok, 0);
    sleep(3);
    s_expect_fail(f, sig, s_body, strlen(s_body), "expired");
    free(sig);
    s_free(&brief);
    //  cache off: still correct
    assert_int_equal(gw_auth_set_cache(f->auth, 0, 0, 16), 0);
    sig = s_sign(s_body, strlen(s_body), &f->leaf, 1, EVP_sha256(), NULL);
    assert_int_equal(s_verify(f, sig, s_body, strlen(s_body), &r), 0);
    free(sig);
    assert_int_equal(gw_auth_set_cache(f->auth, f->nocache ? 0 : 16, 600, 16), 0);
}

//  Certificates decoded in the gateway's own library context (the default
//  provider's algorithms, only its SubjectPublicKeyInfo decoders) are the
//  same certificates with the same keys as d2i_X509's: same DER out, equal
//  keys, the CA's signature verifies over them (and not over a changed
//  copy), and signatures by EC and RSA devices (SHA-256 and SHA-1) verify
//  through the kept contexts made from such keys. Non-certificates and
//  trailing bytes are refused as before.
//  id's certificate as DER (*der, the caller frees it with OPENSSL_free;
//  *len its length when len is not NULL) decoded by gw_auth (*own: in its
//  private context)
static X509 *s_decode_ident(fx_t *f, const ident_t *id, unsigned char **der, int *len, bool *own)
{
    int n = i2d_X509(id->cert, der);
    assert_true(n > 0);
    if (len)
        *len = n;
    return gw_auth_test_decode(f->auth, *der, (size_t)n, own);
}

static void test_spki_libctx(void **state)
{
    fx_t *f = *state;
    assert_true(gw_auth_spki_ctx_on(f->auth));
    ident_t *ids[] = {&f->leaf, &f->leaf_rsa, &f->ca, &f->inter_leaf, &f->expired};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        unsigned char *der = NULL;
        int n = i2d_X509(ids[i]->cert, &der);
        assert_true(n > 0);
        bool own = false;
        X509 *x = gw_auth_test_decode(f->auth, der, (size_t)n, &own);
        assert_non_null(x);
        assert_true(own);
        assert_int_equal(X509_cmp(x, ids[i]->cert), 0);
        unsigned char *der2 = NULL;
        assert_int_equal(i2d_X509(x, &der2), n);
        assert_memory_equal(der, der2, (size_t)n);
        OPENSSL_free(der2);
        assert_non_null(X509_get0_pubkey(x));
        assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(x), X509_get0_pubkey(ids[i]->cert)), 1);
        X509 *issuer = ids[i] == &f->inter_leaf ? f->inter.cert : f->ca.cert;
        assert_int_equal(X509_verify(x, X509_get0_pubkey(issuer)), 1);
        X509_free(x);
        //  the CA's signature changed: decoded, and it no longer verifies
        der[n - 1] ^= 0x01;
        x = gw_auth_test_decode(f->auth, der, (size_t)n, &own);
        assert_non_null(x);
        assert_int_not_equal(X509_verify(x, X509_get0_pubkey(issuer)), 1);
        X509_free(x);
        ERR_clear_error();
        //  trailing byte, truncated: not a certificate
        unsigned char *longer = malloc((size_t)n + 1);
        memcpy(longer, der, (size_t)n);
        longer[n] = 0;
        assert_null(gw_auth_test_decode(f->auth, longer, (size_t)n + 1, &own));
        assert_null(gw_auth_test_decode(f->auth, der, (size_t)n - 1, &own));
        free(longer);
        OPENSSL_free(der);
    }
    //  Only the RSA and EC decoders are in that context (the key types of
    //  device certificates: SCEP, ACME): a certificate with another key type
    //  is decoded by d2i_X509 instead, the same certificate with the same key
    {
        ident_t ed = s_make("device-ed25519", &f->ca, 0, -3600, 86400, 2);
        unsigned char *der = NULL;
        bool own = true;
        X509 *x = s_decode_ident(f, &ed, &der, NULL, &own);
        assert_non_null(x);
        assert_false(own);
        assert_int_equal(X509_cmp(x, ed.cert), 0);
        assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(x), ed.key), 1);
        assert_int_equal(X509_verify(x, X509_get0_pubkey(f->ca.cert)), 1);
        X509_free(x);
        OPENSSL_free(der);
        s_free(&ed);
    }
    //  An id-ecPublicKey key on the SM2 curve: the EC decoder makes it an
    //  SM2 key, as d2i_X509 (with the SM2 decoder) does
    {
        ident_t sm = s_make("device-sm2", &f->ca, 0, -3600, 86400, 3);
        unsigned char *der = NULL;
        int n = 0;
        bool own = false;
        X509 *x = s_decode_ident(f, &sm, &der, &n, &own);
        const unsigned char *p = der;
        X509 *y = d2i_X509(NULL, &p, n);
        assert_non_null(x);
        assert_non_null(y);
        assert_true(own);
        assert_int_equal(EVP_PKEY_is_a(X509_get0_pubkey(x), "SM2"),
                         EVP_PKEY_is_a(X509_get0_pubkey(y), "SM2"));
        assert_int_equal(EVP_PKEY_is_a(X509_get0_pubkey(x), "EC"),
                         EVP_PKEY_is_a(X509_get0_pubkey(y), "EC"));
        assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(x), X509_get0_pubkey(y)), 1);
        X509_free(x);
        X509_free(y);
        OPENSSL_free(der);
        s_free(&sm);
    }
    //  end to end through the cache: EC SHA-256, RSA SHA-256 and SHA-1, all on
    //  the kept contexts of keys from that context
    assert_int_equal(gw_auth_set_cache(f->auth, 1024, 600, 16), 0);
    struct {
        ident_t *id;
        const EVP_MD *md;
    } c[] = {{&f->leaf, EVP_sha256()}, {&f->leaf_rsa, EVP_sha256()}, {&f->leaf_rsa, EVP_sha1()}};
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        char *sig = s_sign(s_body, strlen(s_body), c[i].id, 1, c[i].md, NULL);
        uint64_t k0 = gw_auth_kept_checks(f->auth);
        gw_auth_result_t r;
        for (int j = 0; j < 2; j++)
            assert_int_equal(s_verify(f, sig, s_body, strlen(s_body), &r), 0);
        assert_int_equal(gw_auth_kept_checks(f->auth) - k0, 2);
        s_expect_fail(f, sig, "<plist/>", 8, "bad_signature");
        free(sig);
    }
    assert_int_equal(gw_auth_set_cache(f->auth, f->nocache ? 0 : 16, 600, 16), 0);
}

//  The decoded-certificate cache takes an entry only when the DER's SHA-256
//  is the same: with every DER in the same set (test hook), the
//  same certificate hits, a different one is decoded on its own and
//  reported with its own SHA-256, and a copy of a cached certificate with
//  one byte of the CA's signature changed (same length, same set) is
//  decoded and refused, not served as the cached one. A certificate that
//  is refused (expired, other CA) stays refused when it comes from the
//  cache.
static void s_der_sha256(X509 *x, uint8_t out[32])
{
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    assert_true(n > 0);
    assert_int_equal(EVP_Digest(der, (size_t)n, out, NULL, EVP_sha256(), NULL), 1);
    OPENSSL_free(der);
}

static void test_der_key(void **state)
{
    fx_t *f = *state;
    gw_auth_result_t r;
    assert_int_equal(gw_auth_set_cache(f->auth, 1024, 600, 16), 0);
    gw_auth_test_const_der_key(f->auth, true);
    ident_t a = s_make("device-der-a", &f->ca, 0, -3600, 86400, 0);
    ident_t b = s_make("device-der-b", &f->ca, 0, -3600, 86400, 0);
    uint8_t ha[32], hb[32];
    s_der_sha256(a.cert, ha);
    s_der_sha256(b.cert, hb);
    char *siga = s_sign(s_body, strlen(s_body), &a, 1, EVP_sha256(), NULL);
    char *sigb = s_sign(s_body, strlen(s_body), &b, 1, EVP_sha256(), NULL);
    uint64_t d0 = gw_auth_cert_decodes(f->auth), x0 = gw_auth_cert_cache_hits(f->auth);
    assert_int_equal(s_verify(f, siga, s_body, strlen(s_body), &r), 0);
    assert_memory_equal(r.cert_hash, ha, 32);
    assert_int_equal(s_verify(f, siga, s_body, strlen(s_body), &r), 0); //  same DER: a hit
    assert_memory_equal(r.cert_hash, ha, 32);
    assert_int_equal(gw_auth_cert_decodes(f->auth) - d0, 1);
    assert_int_equal(gw_auth_cert_cache_hits(f->auth) - x0, 1);
    //  another DER with the same key: decoded, its own hash, its own subject
    assert_int_equal(s_verify(f, sigb, s_body, strlen(s_body), &r), 0);
    assert_memory_equal(r.cert_hash, hb, 32);
    assert_non_null(strstr(r.subject, "device-der-b"));
    assert_int_equal(gw_auth_cert_decodes(f->auth) - d0, 2);
    assert_int_equal(s_verify(f, sigb, s_body, strlen(s_body), &r), 0);
    assert_int_equal(gw_auth_cert_decodes(f->auth) - d0, 2);
    assert_int_equal(s_verify(f, siga, s_body, strlen(s_body), &r), 0);
    assert_memory_equal(r.cert_hash, ha, 32);
    assert_int_equal(gw_auth_cert_decodes(f->auth) - d0, 2);
    //  a's DER with the last byte of the CA's signature changed: same length,
    //  same key, same public key (a's key still signs for it)
    unsigned char *der = NULL;
    int n = i2d_X509(a.cert, &der);
    assert_true(n > 0);
    der[n - 1] ^= 0x01;
    const unsigned char *p = der;
    ident_t forged = {d2i_X509(NULL, &p, n), a.key};
    assert_non_null(forged.cert);
    OPENSSL_free(der);
    char *sigf = s_sign(s_body, strlen(s_body), &forged, 1, EVP_sha256(), NULL);
    s_expect_fail(f, sigf, s_body, strlen(s_body), "untrusted_chain");
    s_expect_fail(f, sigf, s_body, strlen(s_body), "untrusted_chain"); //  now cached: still refused
    assert_int_equal(gw_auth_cert_decodes(f->auth) - d0, 3);
    assert_int_equal(s_verify(f, siga, s_body, strlen(s_body), &r), 0); //  a is unharmed
    assert_memory_equal(r.cert_hash, ha, 32);
    //  refused certificates stay refused from the cache: expired, other CA
    char *sige = s_sign(s_body, strlen(s_body), &f->expired, 1, EVP_sha256(), NULL);
    char *sigo = s_sign(s_body, strlen(s_body), &f->other_leaf, 1, EVP_sha256(), NULL);
    for (int i = 0; i < 2; i++) {
        s_expect_fail(f, sige, s_body, strlen(s_body), "expired");
        s_expect_fail(f, sigo, s_body, strlen(s_body), "untrusted_chain");
    }
    assert_int_equal(gw_auth_cert_decodes(f->auth) - d0, 5);
    //  more certificates than ways: the least recently used goes, and
    //  every verdict is still right
    for (int i = 0; i < 20; i++) {
        char cn[32];
        snprintf(cn, sizeof cn, "device-der-%d", i);
        ident_t d = s_make(cn, &f->ca, 0, -3600, 86400, 0);
        char *sig = s_sign(s_body, strlen(s_body), &d, 1, EVP_sha256(), NULL);
        assert_int_equal(s_verify(f, sig, s_body, strlen(s_body), &r), 0);
        assert_non_null(strstr(r.subject, cn));
        free(sig);
        s_free(&d);
    }
    s_expect_fail(f, sigf, s_body, strlen(s_body), "untrusted_chain");
    assert_int_equal(s_verify(f, siga, s_body, strlen(s_body), &r), 0);
    assert_memory_equal(r.cert_hash, ha, 32);
    gw_auth_test_const_der_key(f->auth, false);
    X509_free(forged.cert);
    free(siga);
    free(sigb);
    free(sigf);
    free(sige);
    free(sigo);
    s_free(&a);
    s_free(&b);
    assert_int_equal(gw_auth_set_cache(f->auth, f->nocache ? 0 : 16, 600, 16), 0);
}

//  Differential check of the fast path: 3,000 mutated signatures (bit flips,
//  byte changes around the DER headers, truncation, insertion), each verified
//  with the caches (certificates split off with ASN1_get_object, decoded
//  once) and without them (plain d2i_CMS_ContentInfo): the verdict and the
//  failure code must be the same. Run under ASan by `make check`.
//  Both caches are set associative: devices whose hashes pick the same set
//  do not evict each other while the set has a free way (16 ways each; with
//  8 chain slots and 16 certificate slots every device lands in the one set).
static void test_cache_ways(void **state)
{
    fx_t *f = *state;
    enum { N = 8 };
    uint64_t h0, m0, h1, m1;
    gw_auth_result_t r;
    assert_int_equal(gw_auth_set_cache(f->auth, 8, 600, 16), 0);
    ident_t dev[N];
    char *sig[N];
    for (int i = 0; i < N; i++) {
        char cn[32];
        snprintf(cn, sizeof cn, "device-way-%d", i);
        dev[i] = s_make(cn, &f->ca, 0, -3600, 86400, 0);
        sig[i] = s_sign(s_body, strlen(s_body), &dev[i], 1, EVP_sha256(), NULL);
    }
    gw_auth_cache_stats(f->auth, &h0, &m0);
    uint64_t x0 = gw_auth_cert_cache_hits(f->auth);
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < N; i++)
            assert_int_equal(s_verify(f, sig[i], s_body, strlen(s_body), &r), 0);
    gw_auth_cache_stats(f->auth, &h1, &m1);
    assert_int_equal(m1 - m0, N); //  one chain verification per device
    assert_int_equal(h1 - h0, N);
    assert_int_equal(gw_auth_cert_cache_hits(f->auth) - x0, N); //  one decode per device
    //  a cached entry still gives the same verdicts: tampered body refused
    s_expect_fail(f, sig[3], "<plist/>", 8, "bad_signature");
    for (int i = 0; i < N; i++) {
        free(sig[i]);
        s_free(&dev[i]);
    }
}

static void test_fast_path_same_verdicts(void **state)
{
    fx_t *f = *state;
    char err[256];
    gw_auth_t *plain = gw_auth_new(f->ca_path, err, sizeof err);
    gw_auth_t *fast = gw_auth_new(f->ca_path, err, sizeof err);
    assert_non_null(plain);
    assert_non_null(fast);
    assert_int_equal(gw_auth_set_cache(plain, 0, 0, 16), 0);
    //  EC + SHA-256 (the lean signature path), via an intermediate (chain
    //  never cached), RSA + SHA-1, and no signed attributes (CMS_verify path)
    enum { NSIG = 4 };
    char *sigs[NSIG] = {
        s_sign(s_body, strlen(s_body), &f->leaf, 1, EVP_sha256(), NULL),
        s_sign(s_body, strlen(s_body), &f->inter_leaf, 1, EVP_sha256(), f->inter.cert),
        s_sign(s_body, strlen(s_body), &f->leaf_rsa, 1, EVP_sha1(), NULL),
        s_sign_at(s_body, strlen(s_body), &f->leaf, LONG_MIN)};
    srand(12345);
    int accepted = 0;
    for (int i = 0; i < 4000; i++) {
        const char *b64 = sigs[i % NSIG];
        unsigned char der[8192];
        int n = EVP_DecodeBlock(der, (const unsigned char *)b64, (int)strlen(b64));
        assert_true(n > 0 && n < (int)sizeof der - 16);
        while (n > 0 && der[n - 1] == 0 && b64[strlen(b64) - 1] == '=')
            n--; //  EVP_DecodeBlock keeps the padding bytes
        //  every 7th near the start (the wrappers), every 3rd in the last 200
        //  bytes (the SignerInfo: signed attributes, signature), else anywhere
        int what = rand() % 5, at = i % 7 == 0   ? rand() % 12
                                    : i % 3 == 0 ? n - 1 - rand() % (n < 200 ? n : 200)
                                                 : rand() % n;
        if (what == 0)
            der[at] ^= (unsigned char)(1u << (rand() % 8));
        else if (what == 1)
            der[at] = (unsigned char)rand();
        else if (what == 2)
            n = at + 1;
        else if (what == 3) {
            memmove(der + at + 1, der + at, (size_t)(n - at));
            der[at] = (unsigned char)rand();
            n++;
        } else
            der[at] = der[at] == 0x30 ? 0x31 : der[at] + 1;
        char mut[12000];
        EVP_EncodeBlock((unsigned char *)mut, der, n);
        gw_auth_result_t r1, r2;
        int a = gw_auth_verify_signature(plain, mut, strlen(mut), (const uint8_t *)s_body,
                                         strlen(s_body), &r1);
        int b = gw_auth_verify_signature(fast, mut, strlen(mut), (const uint8_t *)s_body,
                                         strlen(s_body), &r2);
        if (a != b || (a < 0 && strcmp(r1.code, r2.code) != 0))
            fail_msg("mutation %d (kind %d at %d): plain %d %s, fast %d %s", i, what, at, a,
                     a < 0 ? r1.code : "ok", b, b < 0 ? r2.code : "ok");
        if (a == 0) { //  and the same description of the sender
            assert_memory_equal(r1.cert_hash, r2.cert_hash, 32);
            assert_string_equal(r1.subject, r2.subject);
            assert_string_equal(r1.issuer, r2.issuer);
            assert_int_equal(r1.has_prev, r2.has_prev);
            assert_int_equal(r1.not_after, r2.not_after);
            assert_int_equal(r1.has_skew, r2.has_skew);
        }
        accepted += a == 0;
    }
    //  some mutations hit bytes nobody checks (e.g. inside an unused field);
    //  most must be refused
    assert_true(accepted < 2000);
    uint64_t x = gw_auth_cert_cache_hits(fast);
    assert_true(x > 0);
    //  the lean signature check ran (and only with the caches)
    assert_true(gw_auth_lean_checks(fast) > 500);
    assert_int_equal(gw_auth_lean_checks(plain), 0);
    //  most EC ones with the kept verify context (s_sig_kept)
    assert_true(gw_auth_kept_checks(fast) > 350); //  measured 500-545 of 800-860 lean
    assert_int_equal(gw_auth_kept_checks(plain), 0);
    for (int i = 0; i < NSIG; i++)
        free(sigs[i]);
    gw_auth_destroy(&plain);
    gw_auth_destroy(&fast);
}

static int s_der_cmp(const void *a, const void *b)
{
    const unsigned char *const *x = a, *const *y = b;
    //  DER SET OF order (X.690 11.6): the encodings as octet strings
    long lx = 0, ly = 0;
    int tag, cls;
    const unsigned char *px = *x, *py = *y;
    ASN1_get_object(&px, &lx, &tag, &cls, 4096);
    ASN1_get_object(&py, &ly, &tag, &cls, 4096);
    size_t nx = (size_t)(px - *x) + (size_t)lx, ny = (size_t)(py - *y) + (size_t)ly;
    int c = memcmp(*x, *y, nx < ny ? nx : ny);
    return c ? c : (nx > ny) - (nx < ny);
}

//  Detached CMS by f->leaf (EC, SHA-256) over s_body with one unsigned
//  attribute (unsigned_nid: signingTime, else an IA5String of that nid),
//  and/or (dup) signingTime twice among the signed attributes: shapes
//  OpenSSL's signing refuses, so the signed attributes are encoded (DER
//  order) and signed here. Returns base64 (malloc'd).
static char *s_sign_attrs(fx_t *f, int unsigned_nid, bool dup)
{
    CMS_ContentInfo *cms =
        CMS_sign(NULL, NULL, NULL, NULL, CMS_PARTIAL | CMS_DETACHED | CMS_BINARY);
    CMS_SignerInfo *si =
        CMS_add1_signer(cms, f->leaf.cert, f->leaf.key, EVP_sha256(), CMS_BINARY | CMS_PARTIAL);
    assert_non_null(si);
    ASN1_TIME *t = X509_gmtime_adj(NULL, 0);
    unsigned char md[32];
    assert_int_equal(EVP_Digest(s_body, strlen(s_body), md, NULL, EVP_sha256(), NULL), 1);
    assert_int_equal(CMS_signed_add1_attr_by_NID(si, NID_pkcs9_contentType, V_ASN1_OBJECT,
                                                 OBJ_nid2obj(NID_pkcs7_data), -1),
                     1);
    assert_int_equal(
        CMS_signed_add1_attr_by_NID(si, NID_pkcs9_messageDigest, V_ASN1_OCTET_STRING, md, 32), 1);
    //  (CMS_add1_signer with CMS_PARTIAL adds no signingTime: CMS_final would)
    for (int i = 0; i < (dup ? 2 : 1); i++)
        assert_int_equal(CMS_signed_add1_attr_by_NID(si, NID_pkcs9_signingTime, t->type, t, -1), 1);
    //  the signed attributes in DER order, signed
    int n = CMS_signed_get_attr_count(si), total = 0;
    assert_true(n > 0 && n < 16);
    unsigned char *enc[16];
    for (int i = 0; i < n; i++) {
        enc[i] = NULL;
        total += i2d_X509_ATTRIBUTE(CMS_signed_get_attr(si, i), &enc[i]);
    }
    qsort(enc, (size_t)n, sizeof enc[0], s_der_cmp);
    unsigned char buf[2048], *w = buf;
    ASN1_put_object(&w, 1, total, V_ASN1_SET, V_ASN1_UNIVERSAL);
    for (int i = 0; i < n; i++) {
        const unsigned char *p = enc[i];
        long l = 0;
        int tag, cls;
        ASN1_get_object(&p, &l, &tag, &cls, 4096);
        size_t k = (size_t)(p - enc[i]) + (size_t)l;
        memcpy(w, enc[i], k);
        w += k;
        OPENSSL_free(enc[i]);
    }
    unsigned char sig[128];
    size_t siglen = sizeof sig;
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestSignInit(mctx, NULL, EVP_sha256(), NULL, f->leaf.key), 1);
    assert_int_equal(EVP_DigestSign(mctx, sig, &siglen, buf, (size_t)(w - buf)), 1);
    EVP_MD_CTX_free(mctx);
    assert_int_equal(ASN1_STRING_set(CMS_SignerInfo_get0_signature(si), sig, (int)siglen), 1);
    if (unsigned_nid == NID_pkcs9_signingTime)
        assert_int_equal(CMS_unsigned_add1_attr_by_NID(si, unsigned_nid, t->type, t, -1), 1);
    else if (unsigned_nid)
        assert_int_equal(CMS_unsigned_add1_attr_by_NID(si, unsigned_nid, V_ASN1_IA5STRING, "x", 1),
                         1);
    ASN1_TIME_free(t);
    unsigned char *der = NULL;
    int dlen = i2d_CMS_ContentInfo(cms, &der);
    assert_true(dlen > 0);
    char *b64 = malloc((size_t)dlen / 3 * 4 + 8);
    EVP_EncodeBlock((unsigned char *)b64, der, dlen);
    OPENSSL_free(der);
    CMS_ContentInfo_free(cms);
    return b64;
}

//  The kept EC verify context (gw_auth.c s_sig_kept) is used only for the
//  plain attribute shape; anything else goes through CMS_SignerInfo_verify,
//  and the verdict is the same as CMS_verify's (the uncached gw_auth) in
//  every case, with and without kept contexts.
static void test_kept_ctx(void **state)
{
    fx_t *f = *state;
    if (f->nocache)
        return;
    char err[256];
    gw_auth_t *plain = gw_auth_new(f->ca_path, err, sizeof err);
    gw_auth_t *nokept = gw_auth_new(f->ca_path, err, sizeof err);
    assert_non_null(plain);
    assert_non_null(nokept);
    assert_int_equal(gw_auth_set_cache(plain, 0, 0, 16), 0);
    gw_auth_set_kept_ctx(nokept, false);
    struct {
        char *sig;
        int ok, kept; //  expected verdict (0 / -1), kept context used
    } c[] = {
        {s_sign(s_body, strlen(s_body), &f->leaf, 1, EVP_sha256(), NULL), 0, 1},
        {s_sign(s_body, strlen(s_body), &f->leaf, 1, EVP_sha1(), NULL), 0, 1},
        {s_sign_attrs(f, 0, false), 0, 1}, //  (this test's own signing, plain shape)
        {s_sign_attrs(f, NID_pkcs9_emailAddress, false), 0, 0}, //  an unsigned attribute
        {s_sign_attrs(f, NID_pkcs9_signingTime, false), -1, 0}, //  OpenSSL: must be signed
        {s_sign_attrs(f, 0, true), -1, 0}, //  signingTime twice: OpenSSL refuses
        {s_sign(s_body, strlen(s_body), &f->leaf_rsa, 1, EVP_sha256(), NULL), 0, 1}, //  RSA
        {s_sign(s_body, strlen(s_body), &f->leaf_rsa, 1, EVP_sha1(), NULL), 0, 1},
        {s_sign(s_body, strlen(s_body), &f->leaf_rsa, 1, EVP_sha1(), NULL), 0, 1}, //  kept SHA-1
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        gw_auth_result_t r0, r1, r2;
        uint64_t k0 = gw_auth_kept_checks(f->auth);
        int a = s_verify(f, c[i].sig, s_body, strlen(s_body), &r0);
        int b = gw_auth_verify_signature(plain, c[i].sig, strlen(c[i].sig), (const uint8_t *)s_body,
                                         strlen(s_body), &r1);
        int d = gw_auth_verify_signature(nokept, c[i].sig, strlen(c[i].sig),
                                         (const uint8_t *)s_body, strlen(s_body), &r2);
        if (a != c[i].ok || b != c[i].ok || d != c[i].ok)
            fail_msg("case %zu: expected %d, got %d (%s) / CMS_verify %d (%s) / not kept %d (%s)",
                     i, c[i].ok, a, a ? r0.reason : "ok", b, b ? r1.reason : "ok", d,
                     d ? r2.reason : "ok");
        if (gw_auth_kept_checks(f->auth) - k0 != (uint64_t)c[i].kept)
            fail_msg("case %zu: kept context used %d times, expected %d", i,
                     (int)(gw_auth_kept_checks(f->auth) - k0), c[i].kept);
        //  the body changed by one byte: refused on the kept path too
        char body2[sizeof s_body];
        memcpy(body2, s_body, sizeof s_body);
        body2[60] ^= 1;
        assert_int_equal(s_verify(f, c[i].sig, body2, strlen(body2), &r0), -1);
        assert_string_equal(r0.code, "bad_signature");
        free(c[i].sig);
    }
    assert_int_equal(gw_auth_kept_checks(nokept), 0);
    //  a signature value changed by one bit, on the kept path: bad_signature
    char *sig = s_sign(s_body, strlen(s_body), &f->leaf, 1, EVP_sha256(), NULL);
    unsigned char der[8192];
    int n = EVP_DecodeBlock(der, (const unsigned char *)sig, (int)strlen(sig));
    while (n > 0 && der[n - 1] == 0 && sig[strlen(sig) - 1] == '=')
        n--;
    der[n - 5] ^= 0x10; //  inside the ECDSA signature (the SignerInfo's last field)
    char mut[12000];
    EVP_EncodeBlock((unsigned char *)mut, der, n);
    gw_auth_result_t r;
    uint64_t k0 = gw_auth_kept_checks(f->auth);
    assert_int_equal(s_verify(f, mut, s_body, strlen(s_body), &r), -1);
    assert_string_equal(r.code, "bad_signature");
    assert_int_equal(gw_auth_kept_checks(f->auth) - k0, 1);
    free(sig);
    gw_auth_destroy(&plain);
    gw_auth_destroy(&nokept);
}

//  gw_auth_b64_plain (16 bytes at a time where SSE2 is there, the rest
//  byte by byte) against the rule written out plainly: every byte value at
//  every position of headers of 4..96 characters, i.e. inside a 16-byte
//  block, in the tail after the blocks and in the padding.
static bool s_b64_plain_ref(const char *in, size_t len, size_t *pad)
{
    *pad = 0;
    if (len == 0 || len % 4 != 0)
        return false;
    if (in[len - 1] == '=')
        *pad = in[len - 2] == '=' ? 2 : 1;
    for (size_t i = 0; i < len - *pad; i++)
        if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", in[i]) ||
            in[i] == 0)
            return false;
    return true;
}

static void test_b64_plain(void **state)
{
    (void)state;
    static const char letters[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char buf[100];
    size_t checked = 0, plain = 0;
    for (size_t len = 4; len <= 96; len += 4) {
        for (size_t i = 0; i < len; i++) {
            for (int b = 0; b < 256; b++) {
                for (size_t k = 0; k < len; k++)
                    buf[k] = letters[(k * 7 + len) % 64];
                if (len % 8 == 0) //  half of them padded
                    buf[len - 1] = '=';
                buf[i] = (char)b;
                size_t pad = 9, rpad = 9;
                bool got = gw_auth_b64_plain(buf, len, &pad);
                bool want = s_b64_plain_ref(buf, len, &rpad);
                if (got != want || (want && pad != rpad))
                    fail_msg("len %zu, byte 0x%02x at %zu: got %d pad %zu, want %d pad %zu", len, b,
                             i, got, pad, want, rpad);
                checked++;
                plain += got;
            }
        }
    }
    assert_true(checked > 300000);
    assert_true(plain > 50000); //  both verdicts seen many times
    size_t pad;
    assert_false(gw_auth_b64_plain("", 0, &pad));
    assert_false(gw_auth_b64_plain("QUJD=", 5, &pad));
}

static void test_unsigned(void **state)
{
    fx_t *f = *state;
    s_expect_fail(f, NULL, s_body, strlen(s_body), "unsigned");
    s_expect_fail(f, "", s_body, strlen(s_body), "unsigned");
}

static void test_wrong_ca(void **state)
{
    fx_t *f = *state;
    char *sig = s_sign(s_body, strlen(s_body), &f->other_leaf, 1, EVP_sha256(), NULL);
    s_expect_fail(f, sig, s_body, strlen(s_body), "untrusted_chain");
    free(sig);
}

static void test_expired(void **state)
{
    fx_t *f = *state;
    char *sig = s_sign(s_body, strlen(s_body), &f->expired, 1, EVP_sha256(), NULL);
    s_expect_fail(f, sig, s_body, strlen(s_body), "expired");
    free(sig);
}

static void test_zero_signers(void **state)
{
    fx_t *f = *state;
    char *sig = s_sign(s_body, strlen(s_body), &f->leaf, 0, EVP_sha256(), NULL);
    s_expect_fail(f, sig, s_body, strlen(s_body), "signer_count");
    free(sig);
}

static void test_two_signers(void **state)
{
    fx_t *f = *state;
    ident_t two[2] = {f->leaf, f->leaf_rsa}; //  both individually valid
    char *sig = s_sign(s_body, strlen(s_body), two, 2, EVP_sha256(), NULL);
    s_expect_fail(f, sig, s_body, strlen(s_body), "signer_count");
    free(sig);
}

static void test_tampered_body(void **state)
{
    fx_t *f = *state;
    char *sig = s_sign(s_body, strlen(s_body), &f->leaf, 1, EVP_sha256(), NULL);
    char *body = strdup(s_body);
    char *u = strstr(body, "0000-TEST");
    u[0] = '1'; //  another device's UDID
    s_expect_fail(f, sig, body, strlen(body), "bad_signature");
    s_expect_fail(f, sig, s_body, strlen(s_body) - 1, "bad_signature"); //  truncated
    s_expect_fail(f, sig, "", 0, "bad_signature");
    free(body);
    free(sig);
}

static void test_garbage(void **state)
{
    fx_t *f = *state;
    s_expect_fail(f, "!!!not base64***", s_body, strlen(s_body), "bad_base64");
    s_expect_fail(f, "aGVsbG8gd29ybGQ=", s_body, strlen(s_body), "bad_cms"); //  "hello world"
    //  a valid signature with trailing bytes after the DER
    char *sig = s_sign(s_body, strlen(s_body), &f->leaf, 1, EVP_sha256(), NULL);
    size_t n = strlen(sig);
    char *longer = malloc(n + 8);
    memcpy(longer, sig, n);
    //  strip padding and append more base64: decodes to DER + garbage
    while (n && longer[n - 1] == '=')
        n--;
    memcpy(longer + n, "QUFB", 5);
    gw_auth_result_t r;
    assert_int_equal(s_verify(f, longer, s_body, strlen(s_body), &r), -1);
    free(longer);
    //  a signature that is too large is refused before decoding
    char *huge = malloc(GW_AUTH_SIG_MAX + 8);
    memset(huge, 'A', GW_AUTH_SIG_MAX + 4);
    huge[GW_AUTH_SIG_MAX + 4] = '\0';
    s_expect_fail(f, huge, s_body, strlen(s_body), "too_large");
    free(huge);
    free(sig);
}

static void test_self_signed(void **state)
{
    fx_t *f = *state;
    //  a self-signed leaf nobody issued
    char *sig = s_sign(s_body, strlen(s_body), &f->selfsigned, 1, EVP_sha256(), NULL);
    s_expect_fail(f, sig, s_body, strlen(s_body), "self_signed");
    free(sig);
    //  even the trusted CA itself is not a device identity
    sig = s_sign(s_body, strlen(s_body), &f->ca, 1, EVP_sha256(), NULL);
    s_expect_fail(f, sig, s_body, strlen(s_body), "self_signed");
    free(sig);
}

static void test_verify_cert_and_pem(void **state)
{
    fx_t *f = *state;
    gw_auth_result_t r;
    assert_int_equal(gw_auth_verify_cert(f->auth, f->leaf.cert, NULL, &r), 0);
    uint8_t h1[32];
    memcpy(h1, r.cert_hash, 32);
    assert_int_equal(gw_auth_verify_cert(f->auth, f->other_leaf.cert, NULL, &r), -1);
    assert_string_equal(r.code, "untrusted_chain");
    assert_int_equal(gw_auth_verify_cert(f->auth, NULL, NULL, &r), -1);
    assert_string_equal(r.code, "no_certificate");

    //  URL-escaped PEM, as nginx's $ssl_client_escaped_cert
    char *pem = s_pem(f->leaf.cert);
    char *esc = malloc(strlen(pem) * 3 + 1), *e = esc;
    for (const char *p = pem; *p; p++) {
        if (*p == '\n' || *p == ' ' || *p == '+' || *p == '/' || *p == '=')
            e += snprintf(e, 4, "%%%02X", (unsigned char)*p);
        else
            *e++ = *p;
    }
    *e = '\0';
    assert_int_equal(gw_auth_verify_escaped_pem(f->auth, esc, &r), 0);
    assert_memory_equal(r.cert_hash, h1, 32);
    assert_int_equal(gw_auth_verify_escaped_pem(f->auth, pem, &r), 0); //  plain PEM too
    assert_int_equal(gw_auth_verify_escaped_pem(f->auth, "%ZZgarbage", &r), -1);
    assert_int_equal(gw_auth_verify_escaped_pem(f->auth, "", &r), -1);
    free(esc);
    free(pem);
    pem = s_pem(f->expired.cert);
    assert_int_equal(gw_auth_verify_escaped_pem(f->auth, pem, &r), -1);
    assert_string_equal(r.code, "expired");
    free(pem);
}

static void test_load_errors(void **state)
{
    fx_t *f = *state;
    char err[256] = "";
    assert_null(gw_auth_new("/nonexistent/ca.pem", err, sizeof err));
    assert_non_null(strstr(err, "/nonexistent/ca.pem"));
    assert_null(gw_auth_new("", err, sizeof err));
    char empty[160];
    snprintf(empty, sizeof empty, "%s/empty.pem", f->dir);
    FILE *fp = fopen(empty, "w");
    fputs("not a certificate\n", fp);
    fclose(fp);
    assert_null(gw_auth_new(empty, err, sizeof err));
    assert_non_null(strstr(err, "no PEM certificate"));
    unlink(empty);

    //  several files, and several certificates in one file
    char list[300];
    snprintf(list, sizeof list, "%s, %s", f->other_path, f->ca_path);
    gw_auth_t *a = gw_auth_new(list, err, sizeof err);
    assert_non_null(a);
    assert_int_equal(gw_auth_ca_count(a), 2);
    STACK_OF(X509_NAME) *names = gw_auth_ca_names(a);
    assert_int_equal(sk_X509_NAME_num(names), 2);
    sk_X509_NAME_pop_free(names, X509_NAME_free);
    gw_auth_result_t r;
    assert_int_equal(gw_auth_verify_cert(a, f->other_leaf.cert, NULL, &r), 0);
    assert_int_equal(gw_auth_verify_cert(a, f->leaf.cert, NULL, &r), 0);
    gw_auth_destroy(&a);
    char both[160];
    snprintf(both, sizeof both, "%s/both.pem", f->dir);
    s_write_pem(both, f->other_ca.cert, f->ca.cert);
    a = gw_auth_new(both, err, sizeof err);
    assert_non_null(a);
    assert_int_equal(gw_auth_ca_count(a), 2);
    gw_auth_destroy(&a);
    unlink(both);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_sha256),
        cmocka_unit_test(test_good_sha1_rsa),
        cmocka_unit_test(test_not_after_and_skew),
        cmocka_unit_test(test_sha512_refused),
        cmocka_unit_test(test_base64_with_newlines),
        cmocka_unit_test(test_intermediate_in_signature),
        cmocka_unit_test(test_chain_cache),
        cmocka_unit_test(test_cache_ways),
        cmocka_unit_test(test_der_key),
        cmocka_unit_test(test_spki_libctx),
        cmocka_unit_test(test_fast_path_same_verdicts),
        cmocka_unit_test(test_kept_ctx),
        cmocka_unit_test(test_b64_plain),
        cmocka_unit_test(test_unsigned),
        cmocka_unit_test(test_wrong_ca),
        cmocka_unit_test(test_expired),
        cmocka_unit_test(test_zero_signers),
        cmocka_unit_test(test_two_signers),
        cmocka_unit_test(test_tampered_body),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_self_signed),
        cmocka_unit_test(test_verify_cert_and_pem),
        cmocka_unit_test(test_load_errors),
    };
    //  every case twice: with the caches (the default) and without them, so
    //  the fast path (certificates from the cache) and the plain
    //  d2i_CMS_ContentInfo path give the same verdicts
    int failed = cmocka_run_group_tests_name("caches on", tests, s_setup, s_teardown);
    return failed + cmocka_run_group_tests_name("caches off", tests, s_setup_nocache, s_teardown);
}
