/*  ca_scep_server_test — the SCEP server core without the bus: GetCACaps, GetCACert,
 *  PKCSReq / RenewalReq built like a device builds them (pm_scepc), challenge
 *  policies, an EC CA with an RSA RA, and hostile input.
 *
 *  CA_SCEP_BENCH=N turns the binary into the enrollment benchmark instead
 *  (tests/bench/enroll.sh): N PKCSReq through the server core, printing
 *  enrollments/s and server CPU per enrollment.
 */
#include "ca_challenge.h"
#include "ca_pki.h"
#include "ca_scep.h"
#include "ca_test_fixture.h"
#include "pm_x509.h"
#include "pm_scepc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/ec.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHALLENGE "static-challenge-42"

typedef struct {
    ca_test_keys_t k; //  temp dir and PKI files (ca_test_fixture.h)
    ca_pki_t *pki;
    ca_challenge_t *ch;
    ca_scep_t *scep;
} s_fix_t;

static EVP_PKEY *s_dev_key, *s_dev_key2;
//  an RSA CA and profile signer made once; each fixture starts from a copy
//  (RSA key generation would otherwise dominate the test's run time)
static char s_tmpl[64];

static int s_copy(const char *from, const char *to, mode_t mode)
{
    FILE *in = fopen(from, "rb");
    int fd = open(to, O_WRONLY | O_CREAT | O_EXCL, mode);
    FILE *out = fd >= 0 ? fdopen(fd, "wb") : NULL;
    char buf[4096];
    size_t n;
    int rc = in && out ? 0 : -1;
    while (rc == 0 && (n = fread(buf, 1, sizeof buf, in)) > 0)
        rc = fwrite(buf, 1, n, out) == n ? 0 : -1;
    if (in)
        fclose(in);
    if (out)
        fclose(out);
    else if (fd >= 0)
        close(fd);
    return rc;
}

static ca_pki_opts_t s_opts(s_fix_t *f)
{
    return ca_test_pki_opts(&f->k);
}

static int s_setup_mode(void **state, ca_challenge_mode_t mode, bool ec_ca)
{
    s_fix_t *f = calloc(1, sizeof *f);
    if (ca_test_keys_init(&f->k, "ca_scep_test") < 0)
        return -1;
    if (!ec_ca && s_tmpl[0]) {
        static const int files[4] = {0, 1, 4, 5};
        static const char *names[6] = {"ca.crt", "ca.key", "", "", "signer.crt", "signer.key"};
        for (int i = 0; i < 4; i++) {
            char from[128];
            snprintf(from, sizeof from, "%s/%s", s_tmpl, names[files[i]]);
            if (s_copy(from, f->k.paths[files[i]], (files[i] & 1) ? 0600 : 0644) < 0)
                return -1;
        }
    }
    if (ec_ca) {
        //  a P-256 CA as `picomdm up` makes it: SCEP must then use an RSA RA
        if (ca_test_write_ec_ca(f->k.paths[0], f->k.paths[1]) < 0)
            return -1;
    }
    char err[256] = "";
    ca_pki_opts_t o = s_opts(f);
    f->pki = ca_pki_new(&o, NULL, err, sizeof err);
    if (!f->pki) {
        fprintf(stderr, "ca_pki_new: %s\n", err);
        return -1;
    }
    f->ch = ca_challenge_new(mode, mode == CA_CHALLENGE_STATIC ? CHALLENGE : NULL, 3600, err,
                             sizeof err);
    f->scep = f->ch ? ca_scep_new(f->pki, f->ch) : NULL;
    if (!f->scep)
        return -1;
    *state = f;
    return 0;
}

static int s_setup(void **state)
{
    return s_setup_mode(state, CA_CHALLENGE_STATIC, false);
}
static int s_setup_onetime(void **state)
{
    return s_setup_mode(state, CA_CHALLENGE_ONE_TIME, false);
}
static int s_setup_ec(void **state)
{
    return s_setup_mode(state, CA_CHALLENGE_STATIC, true);
}

static int s_teardown(void **state)
{
    s_fix_t *f = *state;
    ca_scep_destroy(&f->scep);
    ca_scep_destroy(&f->scep); //  safe twice
    ca_challenge_destroy(&f->ch);
    ca_pki_destroy(&f->pki);
    ca_pki_destroy(&f->pki);
    ca_test_keys_remove(&f->k);
    free(f);
    return 0;
}

//  A device's request: the reply and the parsed result.
typedef struct {
    ca_scep_reply_t rep;
    pm_scepc_result_t res;
    int parse_rc;
    uint8_t nonce[16];
} s_run_t;

static void s_run(s_fix_t *f, int type, X509_REQ *csr, X509 *signer, EVP_PKEY *signer_key,
                  const char *txid, bool get, s_run_t *run)
{
    uint8_t *der = NULL;
    size_t len = 0;
    memset(run, 0, sizeof *run);
    RAND_bytes(run->nonce, sizeof run->nonce);
    assert_int_equal(pm_scepc_request(type, csr, signer, signer_key, ca_pki_ra_cert(f->pki), txid,
                                      run->nonce, &der, &len),
                     0);
    ca_scep_reply_clear(&run->rep);
    if (get) {
        //  the gateway hands over the URL-decoded `message` value: base64
        unsigned char *b64 = malloc(len * 2 + 8);
        int n = EVP_EncodeBlock(b64, der, (int)len);
        //  a gateway that form-decodes the query turns '+' into ' ': still accepted
        for (int i = 0; i < n; i++)
            if (b64[i] == '+')
                b64[i] = ' ';
        assert_int_equal(ca_scep_handle(f->scep, "GET", "PKIOperation", b64, (size_t)n, &run->rep),
                         0);
        free(b64);
    } else {
        assert_int_equal(ca_scep_handle(f->scep, "POST", "PKIOperation", der, len, &run->rep), 0);
    }
    OPENSSL_free(der);
    assert_int_equal(run->rep.status, 200);
    assert_string_equal(run->rep.content_type, "application/x-pki-message");
    char err[200] = "";
    run->parse_rc = pm_scepc_parse_reply(run->rep.body, run->rep.len, ca_pki_ra_cert(f->pki),
                                         signer, signer_key, &run->res, err, sizeof err);
    if (run->parse_rc != 0)
        fprintf(stderr, "parse: %s\n", err);
    assert_int_equal(run->parse_rc, 0);
    assert_int_equal(run->res.message_type, 3);
    assert_string_equal(run->res.txid, txid);
    assert_int_equal(run->res.recipient_nonce_len, 16);
    assert_memory_equal(run->res.recipient_nonce, run->nonce, 16);
}

static void s_run_free(s_run_t *run)
{
    ca_scep_reply_clear(&run->rep);
    X509_free(run->res.cert);
    run->res.cert = NULL;
}

static bool s_chains_to(X509 *cert, X509 *ca)
{
    X509_STORE *st = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    X509_STORE_add_cert(st, ca);
    X509_STORE_CTX_init(ctx, st, cert, NULL);
    X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT);
    bool ok = X509_verify_cert(ctx) == 1;
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(st);
    return ok;
}

//  The extensions of an issued device certificate, in the order they always
//  had (ca_pki makes the CA-dependent ones once at start): basicConstraints,
//  keyUsage, extendedKeyUsage, SKI = SHA-1 of this certificate's key, AKI =
//  the CA's SKI (or its issuer and serial when it has none), and for a
//  renewal the certificate it replaces (pm_x509.h), all under one signature.
static void s_check_exts(X509 *cert, X509 *ca, bool renewal)
{
    const int want[] = {NID_basic_constraints, NID_key_usage, NID_ext_key_usage,
                        NID_subject_key_identifier, NID_authority_key_identifier};
    int n = X509_get_ext_count(cert);
    assert_int_equal(n, renewal ? 6 : 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(OBJ_obj2nid(X509_EXTENSION_get_object(X509_get_ext(cert, i))), want[i]);
    if (renewal) {
        char oid[80];
        OBJ_obj2txt(oid, sizeof oid, X509_EXTENSION_get_object(X509_get_ext(cert, 5)), 1);
        assert_string_equal(oid, PM_X509_OID_RENEWS);
    }
    uint8_t md[20];
    unsigned mdlen = 0;
    assert_int_equal(X509_pubkey_digest(cert, EVP_sha1(), md, &mdlen), 1);
    const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(cert);
    assert_non_null(ski);
    assert_int_equal(ASN1_STRING_length(ski), 20);
    assert_memory_equal(ASN1_STRING_get0_data(ski), md, 20);
    const ASN1_OCTET_STRING *ca_ski = X509_get0_subject_key_id(ca);
    if (ca_ski) {
        assert_non_null(X509_get0_authority_key_id(cert));
        assert_int_equal(ASN1_STRING_cmp(X509_get0_authority_key_id(cert), ca_ski), 0);
    } else {
        assert_non_null(X509_get0_authority_serial(cert));
        assert_int_equal(
            ASN1_INTEGER_cmp(X509_get0_authority_serial(cert), X509_get0_serialNumber(ca)), 0);
    }
    EVP_PKEY *ca_key = X509_get0_pubkey(ca);
    assert_int_equal(X509_verify(cert, ca_key), 1);
}

static void test_getcacaps(void **state)
{
    s_fix_t *f = *state;
    ca_scep_reply_t r = {0};
    assert_int_equal(ca_scep_handle(f->scep, "GET", "GetCACaps", NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.content_type, "text/plain");
    char text[256] = "";
    memcpy(text, r.body, r.len < 255 ? r.len : 255);
    const char *caps[] = {"POSTPKIOperation\n", "Renewal\n", "SHA-256\n", "AES\n",
                          "SCEPStandard\n"};
    for (size_t i = 0; i < sizeof caps / sizeof *caps; i++)
        assert_non_null(strstr(text, caps[i]));
    ca_scep_reply_clear(&r);
}

static void test_getcacert(void **state)
{
    s_fix_t *f = *state;
    ca_scep_reply_t r = {0};
    assert_int_equal(ca_scep_handle(f->scep, "GET", "GetCACert", NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.content_type, "application/x-x509-ca-cert");
    const unsigned char *p = r.body;
    X509 *x = d2i_X509(NULL, &p, (long)r.len);
    assert_non_null(x);
    assert_ptr_equal(p, r.body + r.len);
    assert_int_equal(X509_cmp(x, ca_pki_ca_cert(f->pki)), 0);
    assert_int_equal(EVP_PKEY_get_base_id(X509_get0_pubkey(x)), EVP_PKEY_RSA);
    X509_free(x);
    ca_scep_reply_clear(&r);
}

static void test_pkcsreq_success(void **state)
{
    s_fix_t *f = *state;
    for (int get = 0; get < 2; get++) {
        X509_REQ *csr = pm_scepc_csr(s_dev_key, "device-1", CHALLENGE);
        X509 *self = pm_scepc_self_signed(s_dev_key, "transient");
        s_run_t run;
        s_run(f, CA_SCEP_PKCSREQ, csr, self, s_dev_key, get ? "TX-GET-1" : "TX-POST-1", get, &run);
        assert_int_equal(run.res.pki_status, CA_SCEP_SUCCESS);
        assert_non_null(run.res.cert);
        assert_true(s_chains_to(run.res.cert, ca_pki_ca_cert(f->pki)));
        assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(run.res.cert), s_dev_key), 1);
        //  subject from the CSR, configured key usage, not a CA
        char cn[64] = "";
        X509_NAME_get_text_by_NID(X509_get_subject_name(run.res.cert), NID_commonName, cn,
                                  sizeof cn);
        assert_string_equal(cn, "device-1");
        assert_int_equal(X509_check_ca(run.res.cert), 0);
        assert_true(X509_get_key_usage(run.res.cert) & KU_DIGITAL_SIGNATURE);
        assert_true(X509_get_extended_key_usage(run.res.cert) & XKU_SSL_CLIENT);
        //  the reply reports the hash of what it issued
        uint8_t md[32];
        unsigned char *der = NULL;
        int len = i2d_X509(run.res.cert, &der);
        EVP_Digest(der, (size_t)len, md, NULL, EVP_sha256(), NULL);
        OPENSSL_free(der);
        assert_memory_equal(md, run.rep.cert_sha256, 32);
        assert_int_equal(run.rep.pki_status, CA_SCEP_SUCCESS);
        s_check_exts(run.res.cert, ca_pki_ca_cert(f->pki), false);
        s_run_free(&run);
        X509_REQ_free(csr);
        X509_free(self);
    }
}

static void test_wrong_challenge(void **state)
{
    s_fix_t *f = *state;
    const char *bad[] = {"wrong-challenge", NULL, CHALLENGE "x", "static-challenge-4"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        X509_REQ *csr = pm_scepc_csr(s_dev_key, "device-1", bad[i]);
        X509 *self = pm_scepc_self_signed(s_dev_key, "transient");
        s_run_t run;
        s_run(f, CA_SCEP_PKCSREQ, csr, self, s_dev_key, "TX-BAD", false, &run);
        assert_int_equal(run.res.pki_status, CA_SCEP_FAILURE);
        assert_int_equal(run.res.fail_info, CA_SCEP_BAD_REQUEST);
        assert_null(run.res.cert);
        //  no certificate travels in a FAILURE: the CertRep has no content
        const unsigned char *p = run.rep.body;
        PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)run.rep.len);
        assert_non_null(p7);
        assert_true(PKCS7_get_detached(p7));
        assert_int_equal(sk_X509_num(p7->d.sign->cert), 1); //  only the signer (RA)
        PKCS7_free(p7);
        assert_null(strstr(run.rep.reason, CHALLENGE)); //  never echoed
        s_run_free(&run);
        X509_REQ_free(csr);
        X509_free(self);
    }
}

static X509 *s_enroll(s_fix_t *f, EVP_PKEY *key, const char *cn, const char *challenge)
{
    X509_REQ *csr = pm_scepc_csr(key, cn, challenge);
    X509 *self = pm_scepc_self_signed(key, "transient");
    s_run_t run;
    s_run(f, CA_SCEP_PKCSREQ, csr, self, key, "TX-ENROLL", false, &run);
    assert_int_equal(run.res.pki_status, CA_SCEP_SUCCESS);
    X509 *cert = run.res.cert;
    run.res.cert = NULL;
    s_run_free(&run);
    X509_REQ_free(csr);
    X509_free(self);
    return cert;
}

static void test_renewal(void **state)
{
    s_fix_t *f = *state;
    X509 *old = s_enroll(f, s_dev_key, "device-r", CHALLENGE);
    //  a new key, signed with the old certificate; no challenge needed
    X509_REQ *csr = pm_scepc_csr(s_dev_key2, "device-r", NULL);
    s_run_t run;
    s_run(f, CA_SCEP_RENEWALREQ, csr, old, s_dev_key, "TX-RENEW", true, &run);
    assert_int_equal(run.res.pki_status, CA_SCEP_SUCCESS);
    assert_non_null(run.res.cert);
    assert_true(s_chains_to(run.res.cert, ca_pki_ca_cert(f->pki)));
    assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(run.res.cert), s_dev_key2), 1);
    assert_int_not_equal(
        ASN1_INTEGER_cmp(X509_get0_serialNumber(old), X509_get0_serialNumber(run.res.cert)), 0);
    //  the renewal names the certificate it replaces (the store re-binds on it);
    //  a first enrollment names none
    uint8_t want[32], got[32];
    unsigned wl = 0;
    assert_int_equal(X509_digest(old, EVP_sha256(), want, &wl), 1);
    assert_int_equal(pm_x509_get_renews(run.res.cert, got), 1);
    assert_memory_equal(got, want, 32);
    assert_int_equal(pm_x509_get_renews(old, got), 0);
    s_check_exts(run.res.cert, ca_pki_ca_cert(f->pki), true);
    s_check_exts(old, ca_pki_ca_cert(f->pki), false);
    s_run_free(&run);
    X509_REQ_free(csr);

    //  renewal signed with a self-signed certificate: refused
    X509 *self = pm_scepc_self_signed(s_dev_key, "device-r");
    csr = pm_scepc_csr(s_dev_key2, "device-r", NULL);
    s_run(f, CA_SCEP_RENEWALREQ, csr, self, s_dev_key, "TX-RENEW-2", false, &run);
    assert_int_equal(run.res.pki_status, CA_SCEP_FAILURE);
    assert_int_equal(run.res.fail_info, CA_SCEP_BAD_REQUEST);
    assert_null(run.res.cert);
    s_run_free(&run);
    X509_REQ_free(csr);
    X509_free(self);

    //  renewal for another device's name: refused
    csr = pm_scepc_csr(s_dev_key2, "device-other", NULL);
    s_run(f, CA_SCEP_RENEWALREQ, csr, old, s_dev_key, "TX-RENEW-3", false, &run);
    assert_int_equal(run.res.pki_status, CA_SCEP_FAILURE);
    assert_null(run.res.cert);
    s_run_free(&run);
    X509_REQ_free(csr);
    X509_free(old);
}

static void test_policy_failures(void **state)
{
    s_fix_t *f = *state;
    s_run_t run;
    //  PKCSReq signed by a certificate whose key is not the CSR's
    X509_REQ *csr = pm_scepc_csr(s_dev_key, "device-1", CHALLENGE);
    X509 *self2 = pm_scepc_self_signed(s_dev_key2, "transient");
    s_run(f, CA_SCEP_PKCSREQ, csr, self2, s_dev_key2, "TX-KEY", false, &run);
    assert_int_equal(run.res.pki_status, CA_SCEP_FAILURE);
    assert_int_equal(run.res.fail_info, CA_SCEP_BAD_REQUEST);
    s_run_free(&run);
    X509_REQ_free(csr);
    X509_free(self2);

    //  a P-256 device key (the CSR and signing certificate are fine, but SCEP
    //  answers by RSA key transport to that certificate): badAlg, nothing issued
    EVP_PKEY *ec = EVP_EC_gen("P-256");
    csr = pm_scepc_csr(ec, "device-ec", CHALLENGE);
    X509 *self_ec = pm_scepc_self_signed(ec, "transient");
    s_run(f, CA_SCEP_PKCSREQ, csr, self_ec, ec, "TX-EC", false, &run);
    assert_int_equal(run.res.pki_status, CA_SCEP_FAILURE);
    assert_int_equal(run.res.fail_info, CA_SCEP_BAD_ALG);
    assert_null(run.res.cert);
    s_run_free(&run);
    X509_REQ_free(csr);
    //  ... and a P-256 CSR in a request signed with an RSA certificate: not the CSR's key
    csr = pm_scepc_csr(ec, "device-ec", CHALLENGE);
    X509 *self_rsa = pm_scepc_self_signed(s_dev_key, "transient");
    s_run(f, CA_SCEP_PKCSREQ, csr, self_rsa, s_dev_key, "TX-EC-2", false, &run);
    assert_int_equal(run.res.pki_status, CA_SCEP_FAILURE);
    assert_int_equal(run.res.fail_info, CA_SCEP_BAD_REQUEST);
    s_run_free(&run);
    X509_REQ_free(csr);
    X509_free(self_rsa);
    X509_free(self_ec);
    EVP_PKEY_free(ec);

    //  a 1024-bit RSA key: badAlg
    EVP_PKEY *small = EVP_RSA_gen(1024);
    csr = pm_scepc_csr(small, "device-1", CHALLENGE);
    X509 *self = pm_scepc_self_signed(small, "transient");
    s_run(f, CA_SCEP_PKCSREQ, csr, self, small, "TX-SMALL", false, &run);
    assert_int_equal(run.res.pki_status, CA_SCEP_FAILURE);
    assert_int_equal(run.res.fail_info, CA_SCEP_BAD_ALG);
    s_run_free(&run);
    X509_REQ_free(csr);
    X509_free(self);
    EVP_PKEY_free(small);

    //  CertPoll (we never answer PENDING): FAILURE badCertId
    csr = pm_scepc_csr(s_dev_key, "device-1", CHALLENGE);
    self = pm_scepc_self_signed(s_dev_key, "transient");
    s_run(f, CA_SCEP_CERTPOLL, csr, self, s_dev_key, "TX-POLL", false, &run);
    assert_int_equal(run.res.pki_status, CA_SCEP_FAILURE);
    assert_int_equal(run.res.fail_info, CA_SCEP_BAD_CERT_ID);
    s_run_free(&run);
    X509_REQ_free(csr);
    X509_free(self);
}

static void s_expect_http(s_fix_t *f, const char *method, const char *op, const void *msg,
                          size_t len, int status)
{
    ca_scep_reply_t r = {0};
    ca_scep_handle(f->scep, method, op, msg, len, &r);
    assert_int_equal(r.status, status);
    assert_string_equal(r.content_type, "text/plain");
    assert_true(r.reason[0]);
    assert_int_equal(r.pki_status, -1);
    ca_scep_reply_clear(&r);
}

static void test_garbage(void **state)
{
    s_fix_t *f = *state;
    s_expect_http(f, "PUT", "GetCACaps", NULL, 0, 405);
    s_expect_http(f, "GET", "Nope", NULL, 0, 400);
    s_expect_http(f, "GET", NULL, NULL, 0, 400);
    s_expect_http(f, "POST", "PKIOperation", NULL, 0, 400);
    s_expect_http(f, "POST", "PKIOperation", "hello world", 11, 400);
    s_expect_http(f, "GET", "PKIOperation", "!!!not base64!!!", 16, 400);
    uint8_t big[CA_SCEP_MAX_MESSAGE + 1];
    memset(big, 0x30, sizeof big);
    s_expect_http(f, "POST", "PKIOperation", big, sizeof big, 413);

    //  a real request, truncated at many lengths, and with trailing bytes
    X509_REQ *csr = pm_scepc_csr(s_dev_key, "device-1", CHALLENGE);
    X509 *self = pm_scepc_self_signed(s_dev_key, "transient");
    uint8_t nonce[16] = {1}, *der = NULL;
    size_t len = 0;
    assert_int_equal(pm_scepc_request(CA_SCEP_PKCSREQ, csr, self, s_dev_key, ca_pki_ra_cert(f->pki),
                                      "TX-T", nonce, &der, &len),
                     0);
    for (size_t cut = 1; cut < len; cut += (cut < 64 ? 1 : 97))
        s_expect_http(f, "POST", "PKIOperation", der, cut, 400);
    uint8_t *longer = malloc(len + 1);
    memcpy(longer, der, len);
    longer[len] = 0;
    s_expect_http(f, "POST", "PKIOperation", longer, len + 1, 400);
    free(longer);

    //  bit flips anywhere: a 400, or a CertRep FAILURE, never a certificate
    for (size_t i = 0; i < len; i += 13) {
        uint8_t *m = malloc(len);
        memcpy(m, der, len);
        m[i] ^= 0x5a;
        ca_scep_reply_t r = {0};
        ca_scep_handle(f->scep, "POST", "PKIOperation", m, len, &r);
        //  (flips in unsigned parts, e.g. the transient certificate's own
        //  signature, which SCEP does not check, may still succeed)
        assert_true(r.status == 400 || (r.status == 200 && (r.pki_status == CA_SCEP_FAILURE ||
                                                            r.pki_status == CA_SCEP_SUCCESS)));
        ca_scep_reply_clear(&r);
        free(m);
    }
    OPENSSL_free(der);

    //  wrong PKCS#7 types: EnvelopedData at top level, certs-only SignedData
    STACK_OF(X509) *rc = sk_X509_new_null();
    sk_X509_push(rc, ca_pki_ra_cert(f->pki));
    BIO *in = BIO_new_mem_buf("data", 4);
    PKCS7 *env = PKCS7_encrypt(rc, in, EVP_aes_128_cbc(), PKCS7_BINARY);
    der = NULL;
    int l = i2d_PKCS7(env, &der);
    s_expect_http(f, "POST", "PKIOperation", der, (size_t)l, 400);
    OPENSSL_free(der);
    PKCS7_free(env);
    BIO_free(in);
    sk_X509_free(rc);
    ca_scep_reply_t r = {0};
    assert_int_equal(ca_scep_handle(f->scep, "GET", "GetCACert", NULL, 0, &r), 0);
    X509 *one[1];
    const unsigned char *p = r.body;
    one[0] = d2i_X509(NULL, &p, (long)r.len);
    PKCS7 *co = PKCS7_new();
    PKCS7_set_type(co, NID_pkcs7_signed);
    PKCS7_content_new(co, NID_pkcs7_data);
    PKCS7_set_detached(co, 1);
    PKCS7_add_certificate(co, one[0]);
    der = NULL;
    l = i2d_PKCS7(co, &der);
    s_expect_http(f, "POST", "PKIOperation", der, (size_t)l, 400);
    OPENSSL_free(der);
    PKCS7_free(co);
    X509_free(one[0]);
    ca_scep_reply_clear(&r);

    //  signed by one key, claiming another's certificate: badMessageCheck
    X509 *self2 = pm_scepc_self_signed(s_dev_key2, "transient");
    s_run_t run;
    memset(&run, 0, sizeof run);
    der = NULL;
    if (pm_scepc_request(CA_SCEP_PKCSREQ, csr, self2, s_dev_key, ca_pki_ra_cert(f->pki), "TX-MIX",
                         nonce, &der, &len) == 0) {
        ca_scep_handle(f->scep, "POST", "PKIOperation", der, len, &run.rep);
        assert_int_equal(run.rep.status, 200);
        assert_int_equal(run.rep.pki_status, CA_SCEP_FAILURE);
        assert_int_equal(run.rep.fail_info, CA_SCEP_BAD_MESSAGE_CHECK);
        OPENSSL_free(der);
        ca_scep_reply_clear(&run.rep);
    }
    X509_free(self2);
    X509_REQ_free(csr);
    X509_free(self);
}

static void test_one_time(void **state)
{
    s_fix_t *f = *state;
    char c1[64], c2[64];
    assert_int_equal(ca_challenge_issue(f->ch, c1, sizeof c1), 0);
    assert_int_equal(ca_challenge_issue(f->ch, c2, sizeof c2), 0);
    assert_int_equal(strlen(c1), 32);
    assert_string_not_equal(c1, c2);
    assert_int_equal(ca_challenge_outstanding(f->ch), 2);

    X509_REQ *csr = pm_scepc_csr(s_dev_key, "device-ot", c1);
    X509 *self = pm_scepc_self_signed(s_dev_key, "transient");
    s_run_t run;
    s_run(f, CA_SCEP_PKCSREQ, csr, self, s_dev_key, "TX-OT-1", false, &run);
    assert_int_equal(run.res.pki_status, CA_SCEP_SUCCESS);
    s_run_free(&run);
    assert_int_equal(ca_challenge_outstanding(f->ch), 1);
    //  a retry of the same transaction (lost reply) is answered again
    s_run(f, CA_SCEP_PKCSREQ, csr, self, s_dev_key, "TX-OT-1", false, &run);
    assert_int_equal(run.res.pki_status, CA_SCEP_SUCCESS);
    s_run_free(&run);
    //  another transaction with the used challenge: refused
    s_run(f, CA_SCEP_PKCSREQ, csr, self, s_dev_key, "TX-OT-2", false, &run);
    assert_int_equal(run.res.pki_status, CA_SCEP_FAILURE);
    assert_int_equal(run.res.fail_info, CA_SCEP_BAD_REQUEST);
    s_run_free(&run);
    X509_REQ_free(csr);
    X509_free(self);
    //  same transaction id but another key: refused
    csr = pm_scepc_csr(s_dev_key2, "device-ot", c1);
    self = pm_scepc_self_signed(s_dev_key2, "transient");
    s_run(f, CA_SCEP_PKCSREQ, csr, self, s_dev_key2, "TX-OT-1", false, &run);
    assert_int_equal(run.res.pki_status, CA_SCEP_FAILURE);
    s_run_free(&run);
    X509_REQ_free(csr);
    X509_free(self);
    //  the second challenge expires
    ca_challenge_advance_clock(f->ch, 3601);
    assert_int_equal(ca_challenge_outstanding(f->ch), 0);
    csr = pm_scepc_csr(s_dev_key, "device-ot2", c2);
    self = pm_scepc_self_signed(s_dev_key, "transient");
    s_run(f, CA_SCEP_PKCSREQ, csr, self, s_dev_key, "TX-OT-3", false, &run);
    assert_int_equal(run.res.pki_status, CA_SCEP_FAILURE);
    s_run_free(&run);
    X509_REQ_free(csr);
    X509_free(self);
}

static void test_challenge_cap(void **state)
{
    (void)state;
    char err[128], buf[64];
    ca_challenge_t *c = ca_challenge_new(CA_CHALLENGE_ONE_TIME, NULL, 60, err, sizeof err);
    assert_non_null(c);
    int issued = 0;
    while (ca_challenge_issue(c, buf, sizeof buf) == 0 && issued <= CA_CHALLENGE_MAX_OUTSTANDING)
        issued++;
    assert_int_equal(issued, CA_CHALLENGE_MAX_OUTSTANDING);
    //  expired ones are swept and make room again
    ca_challenge_advance_clock(c, 61);
    assert_int_equal(ca_challenge_issue(c, buf, sizeof buf), 0);
    ca_challenge_destroy(&c);
    ca_challenge_destroy(&c);
    //  static mode refuses a short or missing secret
    assert_null(ca_challenge_new(CA_CHALLENGE_STATIC, "short", 0, err, sizeof err));
    assert_null(ca_challenge_new(CA_CHALLENGE_STATIC, NULL, 0, err, sizeof err));
}

static void test_ec_ca_with_ra(void **state)
{
    s_fix_t *f = *state;
    assert_true(ca_pki_has_ra(f->pki));
    ca_scep_reply_t r = {0};
    assert_int_equal(ca_scep_handle(f->scep, "GET", "GetCACert", NULL, 0, &r), 0);
    assert_string_equal(r.content_type, "application/x-x509-ca-ra-cert");
    const unsigned char *p = r.body;
    PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)r.len);
    assert_non_null(p7);
    assert_true(PKCS7_type_is_signed(p7));
    assert_int_equal(sk_X509_num(p7->d.sign->cert), 2);
    X509 *ra = sk_X509_value(p7->d.sign->cert, 0);
    assert_int_equal(X509_cmp(ra, ca_pki_ra_cert(f->pki)), 0);
    assert_int_equal(EVP_PKEY_get_base_id(X509_get0_pubkey(ra)), EVP_PKEY_RSA);
    assert_int_equal(X509_check_issued(ca_pki_ca_cert(f->pki), ra), X509_V_OK);
    PKCS7_free(p7);
    ca_scep_reply_clear(&r);
    X509 *cert = s_enroll(f, s_dev_key, "device-ec", CHALLENGE);
    assert_true(s_chains_to(cert, ca_pki_ca_cert(f->pki)));
    X509_free(cert);

    //  the RA and signer files were made 0600 and are reused on the next start
    struct stat st;
    assert_int_equal(stat(f->k.paths[3], &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char err[256];
    ca_pki_opts_t o = s_opts(f);
    ca_pki_t *again = ca_pki_new(&o, NULL, err, sizeof err);
    assert_non_null(again);
    assert_int_equal(X509_cmp(ca_pki_ra_cert(again), ca_pki_ra_cert(f->pki)), 0);
    ca_pki_destroy(&again);
}

static void test_pki_files(void **state)
{
    s_fix_t *f = *state;
    struct stat st;
    assert_int_equal(stat(f->k.paths[1], &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(f->k.paths[5], &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char err[256];
    ca_pki_opts_t o = s_opts(f);
    bool created = true;
    ca_pki_t *again = ca_pki_new(&o, &created, err, sizeof err);
    assert_non_null(again);
    assert_false(created);
    assert_int_equal(X509_cmp(ca_pki_ca_cert(again), ca_pki_ca_cert(f->pki)), 0);
    ca_pki_destroy(&again);
    //  bad options are refused with a reason
    o.key_usage = "critical,notAUsage";
    assert_null(ca_pki_new(&o, NULL, err, sizeof err));
    assert_non_null(strstr(err, "key-usage"));
    o = s_opts(f);
    o.subject = "O=NoSlash";
    assert_null(ca_pki_new(&o, NULL, err, sizeof err));
    o = s_opts(f);
    o.cert_days = 0;
    assert_null(ca_pki_new(&o, NULL, err, sizeof err));
    //  a CA key that does not match the certificate: error, never replaced
    o = s_opts(f);
    o.ca_key = f->k.paths[5];
    assert_null(ca_pki_new(&o, NULL, err, sizeof err));
    assert_non_null(strstr(err, "not replaced"));
    //  only one of the pair present: error
    o = s_opts(f);
    o.ca_key = "/nonexistent/ca.key";
    assert_null(ca_pki_new(&o, NULL, err, sizeof err));
}

static void test_subject_policy(void **state)
{
    s_fix_t *f = *state;
    char err[256];
    ca_pki_opts_t o = s_opts(f);
    o.subject = "/O=Acme/OU=Devices";
    o.cert_days = 30;
    ca_pki_t *pki = ca_pki_new(&o, NULL, err, sizeof err);
    assert_non_null(pki);
    X509_REQ *csr = pm_scepc_csr(s_dev_key, "device-s", NULL);
    assert_int_equal(ca_pki_check_csr(pki, csr, NULL, err, sizeof err), 0);
    X509 *x = ca_pki_issue(pki, csr, NULL, NULL, err, sizeof err);
    assert_non_null(x);
    char line[256];
    ca_pki_subject_line(X509_get_subject_name(x), line, sizeof line);
    assert_string_equal(line, "O = Acme, OU = Devices, CN = device-s");
    int days = 0, secs = 0;
    ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(x), X509_get0_notAfter(x));
    assert_in_range(days, 30, 31);
    X509_free(x);
    X509_REQ_free(csr);
    ca_pki_destroy(&pki);
}

/* ---- benchmark mode ---- */

static double s_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double s_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int s_bench(int n, bool ec)
{
    void *state = NULL;
    if (s_setup_mode(&state, CA_CHALLENGE_ONE_TIME, ec) < 0)
        return 1;
    s_fix_t *f = state;
    //  device side prepared up front (key generation is the device's cost)
    enum { KEYS = 8 };
    EVP_PKEY *keys[KEYS];
    X509 *selfs[KEYS];
    for (int i = 0; i < KEYS; i++) {
        keys[i] = EVP_RSA_gen(2048);
        selfs[i] = pm_scepc_self_signed(keys[i], "transient");
    }
    uint8_t **msgs = calloc((size_t)n, sizeof *msgs);
    size_t *lens = calloc((size_t)n, sizeof *lens);
    for (int i = 0; i < n; i++) {
        char ch[64], cn[32], tx[32];
        uint8_t nonce[16];
        RAND_bytes(nonce, sizeof nonce);
        ca_challenge_issue(f->ch, ch, sizeof ch);
        snprintf(cn, sizeof cn, "bench-%d", i);
        snprintf(tx, sizeof tx, "TX-%d", i);
        X509_REQ *csr = pm_scepc_csr(keys[i % KEYS], cn, ch);
        pm_scepc_request(CA_SCEP_PKCSREQ, csr, selfs[i % KEYS], keys[i % KEYS],
                         ca_pki_ra_cert(f->pki), tx, nonce, &msgs[i], &lens[i]);
        X509_REQ_free(csr);
    }
    int ok = 0;
    double c0 = s_cpu(), w0 = s_wall();
    for (int i = 0; i < n; i++) {
        ca_scep_reply_t r = {0};
        ca_scep_handle(f->scep, "POST", "PKIOperation", msgs[i], lens[i], &r);
        ok += r.pki_status == CA_SCEP_SUCCESS;
        ca_scep_reply_clear(&r);
    }
    double cpu = s_cpu() - c0, wall = s_wall() - w0;
    printf("enroll: %d PKCSReq (%s, one-time challenges), %d issued\n", n,
           ec ? "P-256 CA + RSA-2048 SCEP RA" : "RSA-2048 CA", ok);
    printf("enroll: %.0f enrollments/s on one core, server CPU %.3f ms per enrollment "
           "(target <= 3 ms)\n",
           n / wall, cpu * 1000 / n);
    for (int i = 0; i < n; i++)
        OPENSSL_free(msgs[i]);
    free(msgs);
    free(lens);
    for (int i = 0; i < KEYS; i++) {
        EVP_PKEY_free(keys[i]);
        X509_free(selfs[i]);
    }
    s_teardown(&state);
    return ok == n ? 0 : 1;
}

int main(void)
{
    const char *bench = getenv("CA_SCEP_BENCH");
    if (bench) {
        int n = (int)strtol(bench, NULL, 10) > 0 ? (int)strtol(bench, NULL, 10) : 200;
        return s_bench(n, false) | s_bench(n, true);
    }
    s_dev_key = EVP_RSA_gen(2048);
    s_dev_key2 = EVP_RSA_gen(2048);
    void *tmpl = NULL;
    if (s_setup(&tmpl) == 0) {
        memcpy(s_tmpl, ((s_fix_t *)tmpl)->k.dir, sizeof s_tmpl);
        ca_scep_destroy(&((s_fix_t *)tmpl)->scep);
        ca_challenge_destroy(&((s_fix_t *)tmpl)->ch);
        ca_pki_destroy(&((s_fix_t *)tmpl)->pki);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_getcacaps, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_getcacert, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_pkcsreq_success, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_wrong_challenge, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_renewal, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_policy_failures, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_garbage, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_one_time, s_setup_onetime, s_teardown),
        cmocka_unit_test_setup_teardown(test_ec_ca_with_ra, s_setup_ec, s_teardown),
        cmocka_unit_test(test_challenge_cap),
        cmocka_unit_test_setup_teardown(test_pki_files, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_subject_policy, s_setup, s_teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (tmpl)
        s_teardown(&tmpl); //  removes the template files
    EVP_PKEY_free(s_dev_key);
    EVP_PKEY_free(s_dev_key2);
    return rc;
}
