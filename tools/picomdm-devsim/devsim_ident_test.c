/*  devsim_ident_test — identities issued by the simulator and its
 *  Mdm-Signature: verified here with OpenSSL's CMS_verify against the CA
 *  (as a server does), plus the negative-test signatures (two signers, zero
 *  signers, wrong CA, expired, tampered body).
 */
#include "devsim_ident.h"

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509_vfy.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

static const char s_body[] = "<?xml version=\"1.0\"?><plist><dict><key>Status</key>"
                             "<string>Idle</string></dict></plist>";

//  Decode the base64 Mdm-Signature and verify it over body against ca.
//  Returns the number of SignerInfos, or -1 if verification fails.
static int s_verify(const char *b64, const void *body, size_t len, X509 *ca)
{
    size_t blen = strlen(b64);
    unsigned char *der = malloc(blen);
    int n = EVP_DecodeBlock(der, (const unsigned char *)b64, (int)blen);
    assert_true(n > 0);
    while (blen > 0 && b64[blen - 1] == '=') { //  EVP_DecodeBlock counts padding
        n--;
        blen--;
    }
    const unsigned char *p = der;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, n);
    assert_non_null(cms);
    int signers = sk_CMS_SignerInfo_num(CMS_get0_SignerInfos(cms));
    X509_STORE *store = X509_STORE_new();
    X509_STORE_add_cert(store, ca);
    X509_STORE_set_purpose(store, X509_PURPOSE_ANY);
    BIO *content = BIO_new_mem_buf(body, (int)len);
    int ok = CMS_verify(cms, NULL, store, content, NULL, CMS_BINARY);
    ERR_clear_error();
    BIO_free(content);
    X509_STORE_free(store);
    CMS_ContentInfo_free(cms);
    free(der);
    return ok == 1 ? signers : -1;
}

//  The signingTime of a base64 Mdm-Signature (time_t), -1 when it has none.
static long s_signing_time(const char *b64)
{
    size_t blen = strlen(b64);
    unsigned char *der = malloc(blen);
    int n = EVP_DecodeBlock(der, (const unsigned char *)b64, (int)blen);
    while (blen > 0 && b64[blen - 1] == '=') {
        n--;
        blen--;
    }
    const unsigned char *p = der;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, n);
    assert_non_null(cms);
    long t = -1;
    CMS_SignerInfo *si = sk_CMS_SignerInfo_value(CMS_get0_SignerInfos(cms), 0);
    int ix = si ? CMS_signed_get_attr_by_NID(si, NID_pkcs9_signingTime, -1) : -1;
    if (ix >= 0) {
        ASN1_TYPE *at = X509_ATTRIBUTE_get0_type(CMS_signed_get_attr(si, ix), 0);
        struct tm tm;
        if (ASN1_TIME_to_tm((const ASN1_TIME *)at->value.asn1_string, &tm) == 1)
            t = (long)timegm(&tm);
    }
    CMS_ContentInfo_free(cms);
    free(der);
    return t;
}

//  devsim_ident_sign_into (session 9): the base64 written after the caller's
//  prefix in the caller's buffer, which grows; every signature verifies;
//  the signingTime (renewed only when the second or the skew changes) is
//  the current one: a later second and a new skew show in the next
//  signature, never the kept value.
static void test_sign_into(void **state)
{
    (void)state;
    char err[256];
    devsim_ca_t *ca = devsim_ca_generate("Device CA", DEVSIM_KEY_EC, err, sizeof err);
    assert_non_null(ca);
    devsim_ident_t *id =
        devsim_ident_issue(ca, "INTO-1", DEVSIM_KEY_EC, -60, 86400, err, sizeof err);
    assert_non_null(id);
    assert_int_equal(devsim_ident_prepare(id, EVP_sha256()), 0);
    static const char name[] = "Mdm-Signature: ";
    char *buf = NULL;
    size_t cap = 0;
    char body[64];
    long f0, o0, f1, o1;
    devsim_ident_sign_counts(&f0, &o0);
    for (int i = 0; i < 40; i++) {
        int bl = snprintf(body, sizeof body, "<plist>request %d</plist>", i);
        if (buf)
            memcpy(buf, name, sizeof name - 1);
        long before = (long)time(NULL);
        long n =
            devsim_ident_sign_into(id, EVP_sha256(), body, (size_t)bl, &buf, &cap, sizeof name - 1);
        long after = (long)time(NULL);
        assert_true(n > 100);
        assert_true(cap >= sizeof name + (size_t)n);
        if (i > 0) //  the prefix is the caller's: left as it was
            assert_memory_equal(buf, name, sizeof name - 1);
        assert_int_equal(strlen(buf + sizeof name - 1), (size_t)n);
        assert_int_equal(s_verify(buf + sizeof name - 1, body, (size_t)bl, devsim_ca_cert(ca)), 1);
        assert_int_equal(s_verify(buf + sizeof name - 1, "x", 1, devsim_ca_cert(ca)), -1);
        //  the second it was signed in (bracketed: a loaded machine may stall)
        long st = s_signing_time(buf + sizeof name - 1);
        assert_true(st >= before && st <= after);
    }
    devsim_ident_sign_counts(&f1, &o1);
    assert_int_equal(f1, f0 + 40); //  all from the kept structure
    //  a later second: the next signature carries it
    long t0 = s_signing_time(buf + sizeof name - 1);
    sleep(2);
    assert_true(devsim_ident_sign_into(id, EVP_sha256(), "a", 1, &buf, &cap, 0) > 0);
    assert_true(s_signing_time(buf) >= t0 + 2);
    assert_int_equal(s_verify(buf, "a", 1, devsim_ca_cert(ca)), 1);
    //  a new skew within the same second: the next signature carries it
    devsim_ident_set_clock_skew(900);
    long before = (long)time(NULL);
    assert_true(devsim_ident_sign_into(id, EVP_sha256(), "b", 1, &buf, &cap, 0) > 0);
    long after = (long)time(NULL);
    long st = s_signing_time(buf);
    assert_true(st >= before + 900 && st <= after + 900);
    assert_int_equal(s_verify(buf, "b", 1, devsim_ca_cert(ca)), 1);
    devsim_ident_set_clock_skew(0);
    before = (long)time(NULL);
    assert_true(devsim_ident_sign_into(id, EVP_sha256(), "c", 1, &buf, &cap, 0) > 0);
    after = (long)time(NULL);
    st = s_signing_time(buf);
    assert_true(st >= before && st <= after);
    free(buf);
    devsim_ident_destroy(&id);
    devsim_ca_destroy(&ca);
}

static void test_sign_and_verify(void **state)
{
    (void)state;
    char err[256];
    devsim_ca_t *ca = devsim_ca_generate("Device CA", DEVSIM_KEY_EC, err, sizeof err);
    assert_non_null(ca);
    for (int kt = 0; kt < 2; kt++) {
        devsim_ident_t *id = devsim_ident_issue(ca, "00008120-001C195A3E80801E", (devsim_key_t)kt,
                                                -60, 86400, err, sizeof err);
        assert_non_null(id);
        assert_string_equal(devsim_ident_cn(id), "00008120-001C195A3E80801E");
        char *sig = NULL;
        assert_int_equal(devsim_ident_sign(id, NULL, EVP_sha256(), s_body, strlen(s_body), &sig),
                         0);
        assert_null(strchr(sig, '\n'));
        assert_int_equal(s_verify(sig, s_body, strlen(s_body), devsim_ca_cert(ca)), 1);
        //  tampered body
        char bad[sizeof s_body];
        memcpy(bad, s_body, sizeof s_body);
        bad[60] ^= 1;
        assert_int_equal(s_verify(sig, bad, strlen(bad), devsim_ca_cert(ca)), -1);
        free(sig);
        assert_int_equal(devsim_ident_sign(id, NULL, EVP_sha1(), s_body, strlen(s_body), &sig), 0);
        assert_int_equal(s_verify(sig, s_body, strlen(s_body), devsim_ca_cert(ca)), 1);
        free(sig);
        devsim_ident_destroy(&id);
        devsim_ident_destroy(&id);
    }
    devsim_ca_destroy(&ca);
    devsim_ca_destroy(&ca);
}

//  --clock-skew-s: the signingTime signed attribute is shifted; the signature
//  still verifies (the attribute is signed).
static void test_clock_skew(void **state)
{
    (void)state;
    char err[256];
    devsim_ca_t *ca = devsim_ca_generate("Device CA", DEVSIM_KEY_EC, err, sizeof err);
    devsim_ident_t *id = devsim_ident_issue(ca, "SKEW", DEVSIM_KEY_EC, -60, 86400, err, sizeof err);
    assert_true(ca && id);
    static const long skews[] = {900, -3600, 0};
    for (int i = 0; i < 3; i++) {
        devsim_ident_set_clock_skew(skews[i]);
        char *sig = NULL;
        assert_int_equal(devsim_ident_sign(id, NULL, EVP_sha256(), s_body, strlen(s_body), &sig),
                         0);
        assert_int_equal(s_verify(sig, s_body, strlen(s_body), devsim_ca_cert(ca)), 1);
        //  read the attribute back
        size_t blen = strlen(sig);
        unsigned char *der = malloc(blen);
        int n = EVP_DecodeBlock(der, (const unsigned char *)sig, (int)blen);
        assert_true(n > 0);
        const unsigned char *p = der;
        CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, n);
        assert_non_null(cms);
        CMS_SignerInfo *si = sk_CMS_SignerInfo_value(CMS_get0_SignerInfos(cms), 0);
        int ix = CMS_signed_get_attr_by_NID(si, NID_pkcs9_signingTime, -1);
        assert_true(ix >= 0);
        ASN1_TYPE *t = X509_ATTRIBUTE_get0_type(CMS_signed_get_attr(si, ix), 0);
        struct tm tm;
        assert_int_equal(ASN1_TIME_to_tm((const ASN1_TIME *)t->value.asn1_string, &tm), 1);
        long d = (long)(timegm(&tm) - time(NULL));
        if (d < skews[i] - 5 || d > skews[i] + 1)
            fail_msg("signingTime off by %ld s, wanted %ld", d, skews[i]);
        CMS_ContentInfo_free(cms);
        free(der);
        free(sig);
    }
    devsim_ident_set_clock_skew(0);
    devsim_ident_destroy(&id);
    devsim_ca_destroy(&ca);
}

//  The fast path (signatures renewed in an identity's kept SignedData,
//  through OpenSSL's API): every one verifies against the CA, is canonical DER
//  (OpenSSL decodes and re-encodes it to the same bytes), carries this
//  identity's certificate, a signingTime of now, the body's messageDigest
//  (a tampered body fails), and each is a fresh signature. Many signatures,
//  so ECDSA's 70-72-byte encodings (length bytes) all occur.
static void test_fast_path(void **state)
{
    (void)state;
    char err[256];
    devsim_ca_t *ca = devsim_ca_generate("Device CA", DEVSIM_KEY_EC, err, sizeof err);
    assert_non_null(ca);
    static const char *bodies[] = {"", "x", s_body, NULL};
    char big[3000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    bodies[3] = big;
    for (int kt = 0; kt < 2; kt++) {
        devsim_ident_t *a =
            devsim_ident_issue(ca, "FAST-A", (devsim_key_t)kt, -60, 86400, err, sizeof err);
        devsim_ident_t *b = devsim_ident_issue(ca, "FAST-BBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
                                               (devsim_key_t)kt, -60, 86400, err, sizeof err);
        assert_true(a && b);
        for (int mdi = 0; mdi < 2; mdi++) {
            const EVP_MD *md = mdi ? EVP_sha1() : EVP_sha256();
            char *prev = NULL;
            int rounds = kt == DEVSIM_KEY_EC ? 60 : 6;
            for (int i = 0; i < rounds; i++) {
                devsim_ident_t *id = i % 3 == 2 ? b : a;
                const char *body = bodies[i % 4];
                long f0, o0, f1, o1;
                devsim_ident_sign_counts(&f0, &o0);
                char *sig = NULL;
                assert_int_equal(devsim_ident_sign(id, NULL, md, body, strlen(body), &sig), 0);
                devsim_ident_sign_counts(&f1, &o1);
                if (i > 0) //  the first of a (key type, digest) may be OpenSSL's
                    assert_int_equal(f1, f0 + 1);
                assert_int_equal(s_verify(sig, body, strlen(body), devsim_ca_cert(ca)), 1);
                char bad[3100];
                snprintf(bad, sizeof bad, "%s!", body);
                assert_int_equal(s_verify(sig, bad, strlen(bad), devsim_ca_cert(ca)), -1);
                //  canonical DER, this identity's certificate, signingTime now
                size_t blen = strlen(sig);
                unsigned char *der = malloc(blen), *re = NULL;
                int n = EVP_DecodeBlock(der, (const unsigned char *)sig, (int)blen);
                while (blen > 0 && sig[blen - 1] == '=') {
                    n--;
                    blen--;
                }
                const unsigned char *p = der;
                CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, n);
                assert_non_null(cms);
                assert_ptr_equal(p, der + n);
                int rl = i2d_CMS_ContentInfo(cms, &re);
                assert_int_equal(rl, n);
                assert_memory_equal(re, der, (size_t)n);
                STACK_OF(X509) *certs = CMS_get1_certs(cms);
                assert_int_equal(sk_X509_num(certs), 1);
                assert_int_equal(X509_cmp(sk_X509_value(certs, 0), devsim_ident_cert(id)), 0);
                sk_X509_pop_free(certs, X509_free);
                CMS_SignerInfo *si = sk_CMS_SignerInfo_value(CMS_get0_SignerInfos(cms), 0);
                assert_int_equal(CMS_SignerInfo_cert_cmp(si, devsim_ident_cert(id)), 0);
                int ix = CMS_signed_get_attr_by_NID(si, NID_pkcs9_signingTime, -1);
                assert_true(ix >= 0);
                ASN1_TYPE *t = X509_ATTRIBUTE_get0_type(CMS_signed_get_attr(si, ix), 0);
                struct tm tm;
                assert_int_equal(ASN1_TIME_to_tm((const ASN1_TIME *)t->value.asn1_string, &tm), 1);
                long d = (long)(timegm(&tm) - time(NULL));
                assert_true(d >= -5 && d <= 1);
                assert_true(CMS_signed_get_attr_count(si) >= 3);
                //  a fresh signature every time (ECDSA k, a new messageDigest)
                if (prev)
                    assert_string_not_equal(prev, sig);
                free(prev);
                prev = sig;
                OPENSSL_free(re);
                CMS_ContentInfo_free(cms);
                free(der);
            }
            free(prev);
        }
        devsim_ident_destroy(&a);
        devsim_ident_destroy(&b);
    }
    long fast, openssl;
    devsim_ident_sign_counts(&fast, &openssl);
    assert_true(fast > 100);
    devsim_ca_destroy(&ca);
}

//  CPU per Mdm-Signature (not an assertion of speed: a figure for
//  docs/devsim.md): 2,000 signatures of ~1 KiB bodies by one EC identity
//  with SHA-256 (and 200 by an RSA one), after the first; the first
//  signature per identity is timed separately (it makes the kept SignedData).
static double s_cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void test_sign_cost(void **state)
{
    (void)state;
    char err[256], body[1024];
    devsim_ca_t *ca = devsim_ca_generate("Device CA", DEVSIM_KEY_EC, err, sizeof err);
    assert_non_null(ca);
    memset(body, 'b', sizeof body);
    for (int kt = 0; kt < 2; kt++) {
        int n = kt == DEVSIM_KEY_EC ? 2000 : 200;
        double first = 0;
        for (int k = 0; k < 3; k++) { //  first signature of three fresh identities
            devsim_ident_t *id =
                devsim_ident_issue(ca, "COST", (devsim_key_t)kt, -60, 86400, err, sizeof err);
            assert_non_null(id);
            char *sig = NULL;
            double t0 = s_cpu_us();
            assert_int_equal(devsim_ident_sign(id, NULL, EVP_sha256(), body, sizeof body, &sig), 0);
            first += s_cpu_us() - t0;
            free(sig);
            if (k < 2) {
                devsim_ident_destroy(&id);
                continue;
            }
            long f0, o0, f1, o1;
            devsim_ident_sign_counts(&f0, &o0);
            double t1 = s_cpu_us();
            for (int i = 0; i < n; i++) {
                body[i % sizeof body] ^= 1;
                assert_int_equal(devsim_ident_sign(id, NULL, EVP_sha256(), body, sizeof body, &sig),
                                 0);
                free(sig);
            }
            double per = (s_cpu_us() - t1) / n, la[1] = {0};
            if (getloadavg(la, 1) != 1)
                la[0] = -1;
            devsim_ident_sign_counts(&f1, &o1);
            printf("sign cost: %s SHA-256, 1 KiB body: %.1f us CPU per signature (%d; %ld "
                   "assembled, %ld OpenSSL), first per identity %.1f us; load average %.2f\n",
                   kt == DEVSIM_KEY_EC ? "EC P-256" : "RSA-2048", per, n, f1 - f0, o1 - o0,
                   first / 3, la[0]);
            devsim_ident_destroy(&id);
        }
    }
    devsim_ca_destroy(&ca);
}

static void test_negative_signatures(void **state)
{
    (void)state;
    char err[256];
    devsim_ca_t *ca = devsim_ca_generate("Device CA", DEVSIM_KEY_EC, err, sizeof err);
    devsim_ca_t *other = devsim_ca_generate("Other CA", DEVSIM_KEY_EC, err, sizeof err);
    devsim_ident_t *a = devsim_ident_issue(ca, "A", DEVSIM_KEY_EC, -60, 86400, err, sizeof err);
    devsim_ident_t *b = devsim_ident_issue(ca, "B", DEVSIM_KEY_EC, -60, 86400, err, sizeof err);
    devsim_ident_t *w = devsim_ident_issue(other, "W", DEVSIM_KEY_EC, -60, 86400, err, sizeof err);
    devsim_ident_t *x =
        devsim_ident_issue(ca, "X", DEVSIM_KEY_EC, -2 * 86400, -86400, err, sizeof err);
    devsim_ident_t *s = devsim_ident_self_signed("S", DEVSIM_KEY_EC, err, sizeof err);
    assert_true(a && b && w && x && s);
    size_t len = strlen(s_body);
    char *sig = NULL;
    //  two signers: verifies, but carries 2 SignerInfos (a server must insist on 1)
    assert_int_equal(devsim_ident_sign(a, b, EVP_sha256(), s_body, len, &sig), 0);
    assert_int_equal(s_verify(sig, s_body, len, devsim_ca_cert(ca)), 2);
    free(sig);
    //  zero signers
    assert_int_equal(devsim_ident_sign_nosigner(a, &sig), 0);
    assert_int_equal(s_verify(sig, s_body, len, devsim_ca_cert(ca)), -1);
    free(sig);
    //  wrong CA, expired, self-signed
    const devsim_ident_t *bad[] = {w, x, s};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(devsim_ident_sign(bad[i], NULL, EVP_sha256(), s_body, len, &sig), 0);
        assert_int_equal(s_verify(sig, s_body, len, devsim_ca_cert(ca)), -1);
        free(sig);
    }
    devsim_ident_destroy(&a);
    devsim_ident_destroy(&b);
    devsim_ident_destroy(&w);
    devsim_ident_destroy(&x);
    devsim_ident_destroy(&s);
    devsim_ca_destroy(&ca);
    devsim_ca_destroy(&other);
}

static void test_pem_round_trip(void **state)
{
    (void)state;
    char err[256], dir[] = "/tmp/devsim_ident_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cc[128], ck[128], ic[128], ik[128];
    snprintf(cc, sizeof cc, "%s/ca.pem", dir);
    snprintf(ck, sizeof ck, "%s/ca.key", dir);
    snprintf(ic, sizeof ic, "%s/dev.pem", dir);
    snprintf(ik, sizeof ik, "%s/dev.key", dir);
    devsim_ca_t *ca = devsim_ca_generate("CA", DEVSIM_KEY_RSA, err, sizeof err);
    assert_int_equal(devsim_ca_write(ca, cc, ck), 0);
    devsim_ca_t *ca2 = devsim_ca_load(cc, ck, err, sizeof err);
    assert_non_null(ca2);
    devsim_ident_t *id = devsim_ident_issue(ca2, "dev", DEVSIM_KEY_EC, -60, 600, err, sizeof err);
    assert_int_equal(devsim_ident_write(id, ic, ik), 0);
    devsim_ident_t *id2 = devsim_ident_load(ic, ik, err, sizeof err);
    assert_non_null(id2);
    assert_string_equal(devsim_ident_cn(id2), "dev");
    //  mismatched pair and missing file: clear errors, no crash
    assert_null(devsim_ident_load(ic, ck, err, sizeof err));
    assert_non_null(strstr(err, "does not belong"));
    assert_null(devsim_ident_load("/nonexistent.pem", ik, err, sizeof err));
    assert_non_null(strstr(err, "cannot read"));
    devsim_ident_destroy(&id);
    devsim_ident_destroy(&id2);
    devsim_ca_destroy(&ca);
    devsim_ca_destroy(&ca2);
    unlink(cc), unlink(ck), unlink(ic), unlink(ik);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sign_and_verify),     cmocka_unit_test(test_fast_path),
        cmocka_unit_test(test_negative_signatures), cmocka_unit_test(test_clock_skew),
        cmocka_unit_test(test_pem_round_trip),      cmocka_unit_test(test_sign_into),
        cmocka_unit_test(test_sign_cost),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
