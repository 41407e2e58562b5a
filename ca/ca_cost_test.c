/*  ca_cost_test — what picomdm-ca's CPU per enrollment is made of (issue #6).
 *
 *  Runs the ca's two per-enrollment paths in process on real inputs, as the
 *  service runs them with `picomdm up`'s keys (P-256 CA, RSA-2048 SCEP RA,
 *  P-256 profile signer; also an RSA-2048 CA that is its own RA):
 *    - PKCSReq: a device's request built by pm_scepc (RSA-2048 key, AES-128,
 *      SHA-256, signed one-time challenge) through ca_scep_handle, as
 *      ca_svc runs it before the store consumes the challenge (the store's
 *      round trip is not the ca's CPU), with ca_scep_set_trace timing each step
 *      (wall clock per step, median over the requests, and OpenSSL
 *      allocations per step, counted with CRYPTO_set_mem_functions);
 *    - profile: ca_challenge_make + ca_profile_build + ca_profile_signer_sign, as
 *      ca_svc_profile does;
 *    - reference costs of single OpenSSL calls (the unavoidable private-key
 *      operations, one certificate / CSR / public-key decode, a fetch).
 *
 *  As a unit test (no environment variable) it runs a few requests and checks
 *  that each one issues a certificate; it never asserts on time.
 *  CA_COST=N prints the figures for N requests (tests/bench/ca_cost.sh).
 */
#include "ca_challenge.h"
#include "ca_pki.h"
#include "ca_profile.h"
#include "ca_scep.h"
#include "ca_test_fixture.h"
#include "pm_scepc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/cms.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- OpenSSL allocations, counted ---- */

static unsigned long s_allocs;

static void *s_malloc(size_t n, const char *file, int line)
{
    (void)file, (void)line;
    s_allocs++;
    return malloc(n);
}

static void *s_realloc(void *p, size_t n, const char *file, int line)
{
    (void)file, (void)line;
    s_allocs++;
    return realloc(p, n);
}

static void s_free(void *p, const char *file, int line)
{
    (void)file, (void)line;
    free(p);
}

//  This thread's CPU time: on the shared machine a step's wall time also
//  holds the time other processes had the core
static double s_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static double s_cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double s_median(double *v, int n)
{
    if (n <= 0)
        return 0;
    qsort(v, (size_t)n, sizeof *v, s_cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- step recorder (ca_scep_set_trace) ---- */

#define S_STEPS 24

typedef struct {
    int n; //  requests
    const char *name[S_STEPS];
    double *us[S_STEPS];
    double allocs[S_STEPS]; //  sum over the requests
    int nsteps;
    int req; //  the request being timed
    double mark;
    unsigned long amark;
} s_rec_t;

static int s_rec_init(s_rec_t *r, int n)
{
    memset(r, 0, sizeof *r);
    r->n = n;
    for (int i = 0; i < S_STEPS; i++)
        if (!(r->us[i] = calloc((size_t)n, sizeof(double))))
            return -1;
    return 0;
}

static void s_rec_free(s_rec_t *r)
{
    for (int i = 0; i < S_STEPS; i++)
        free(r->us[i]);
}

static void s_rec_start(s_rec_t *r)
{
    r->mark = s_now_us();
    r->amark = s_allocs;
}

static void s_rec_step(void *arg, const char *step)
{
    s_rec_t *r = arg;
    double now = s_now_us();
    int i = 0;
    while (i < r->nsteps && strcmp(r->name[i], step) != 0)
        i++;
    if (i == r->nsteps) {
        if (i == S_STEPS)
            return;
        r->name[r->nsteps++] = step;
    }
    r->us[i][r->req] += now - r->mark;
    r->allocs[i] += (double)(s_allocs - r->amark);
    r->mark = s_now_us();
    r->amark = s_allocs;
}

/* ---- fixture: the ca's keys as `picomdm up` makes them ---- */

typedef struct {
    ca_test_keys_t k; //  temp dir and PKI files (ca_test_fixture.h)
    ca_pki_t *pki;
    ca_challenge_t *ch;
    ca_scep_t *scep;
    ca_profile_signer_t *signer; //  as ca_svc keeps it
} s_fix_t;

static s_fix_t *s_fix_new(bool ec)
{
    s_fix_t *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    if (ca_test_keys_init(&f->k, "ca_cost_test") < 0) {
        free(f);
        return NULL;
    }
    if (ec && ca_test_write_ec_ca(f->k.paths[0], f->k.paths[1]) < 0)
        return f;
    ca_pki_opts_t o = ca_test_pki_opts(&f->k);
    char err[256] = "";
    f->pki = ca_pki_new(&o, NULL, err, sizeof err);
    if (!f->pki)
        fprintf(stderr, "ca_pki_new: %s\n", err);
    f->ch = ca_challenge_new(CA_CHALLENGE_ONE_TIME, NULL, 3600, err, sizeof err);
    static const uint8_t key[32] = {7, 1, 7}; //  the service loads challenge.key
    if (f->ch && ca_challenge_set_key(f->ch, key, sizeof key) < 0)
        ca_challenge_destroy(&f->ch);
    f->scep = f->pki && f->ch ? ca_scep_new(f->pki, f->ch) : NULL;
    f->signer = f->pki
                    ? ca_profile_signer_new(ca_pki_signer_cert(f->pki), ca_pki_signer_key(f->pki),
                                            ca_pki_ca_cert(f->pki), err, sizeof err)
                    : NULL;
    return f;
}

static void s_fix_destroy(s_fix_t **pf)
{
    s_fix_t *f = *pf;
    if (!f)
        return;
    ca_scep_destroy(&f->scep);
    ca_profile_signer_destroy(&f->signer);
    ca_challenge_destroy(&f->ch);
    ca_pki_destroy(&f->pki);
    ca_test_keys_remove(&f->k);
    free(f);
    *pf = NULL;
}

/* ---- the PKCSReq path ---- */

enum { S_KEYS = 4 };

typedef struct {
    EVP_PKEY *key[S_KEYS];
    X509 *self[S_KEYS];
    uint8_t **msg;
    size_t *len;
    int n;
} s_reqs_t;

static int s_reqs_make(s_fix_t *f, s_reqs_t *q, int n)
{
    memset(q, 0, sizeof *q);
    q->msg = calloc((size_t)n, sizeof *q->msg);
    q->len = calloc((size_t)n, sizeof *q->len);
    if (!q->msg || !q->len)
        return -1;
    q->n = n;
    for (int i = 0; i < S_KEYS; i++) {
        q->key[i] = EVP_RSA_gen(2048);
        q->self[i] = q->key[i] ? pm_scepc_self_signed(q->key[i], "transient") : NULL;
        if (!q->self[i])
            return -1;
    }
    for (int i = 0; i < n; i++) {
        //  a challenge string of the service's form; the store's verdict is given below
        char ch[80], hash[65], cn[32], tx[32];
        int64_t exp = 0;
        uint8_t nonce[16];
        if (ca_challenge_make(f->ch, ch, sizeof ch, hash, &exp) < 0 ||
            RAND_bytes(nonce, sizeof nonce) != 1)
            return -1;
        snprintf(cn, sizeof cn, "device-%d", i);
        snprintf(tx, sizeof tx, "TX-COST-%d", i);
        X509_REQ *csr = pm_scepc_csr(q->key[i % S_KEYS], cn, ch);
        int rc =
            csr ? pm_scepc_request(CA_SCEP_PKCSREQ, csr, q->self[i % S_KEYS], q->key[i % S_KEYS],
                                   ca_pki_ra_cert(f->pki), tx, nonce, &q->msg[i], &q->len[i])
                : -1;
        X509_REQ_free(csr);
        if (rc < 0)
            return -1;
    }
    return 0;
}

static void s_reqs_free(s_reqs_t *q)
{
    for (int i = 0; i < q->n; i++)
        OPENSSL_free(q->msg[i]);
    free(q->msg);
    free(q->len);
    for (int i = 0; i < S_KEYS; i++) {
        EVP_PKEY_free(q->key[i]);
        X509_free(q->self[i]);
    }
}

//  One PKCSReq through the core as ca_svc runs it. 0 when it issued a
//  certificate the device can decrypt and that carries its key.
static int s_pkcsreq(s_fix_t *f, s_reqs_t *q, int i, s_rec_t *rec, bool check)
{
    ca_scep_reply_t r = {0};
    int rc = -1;
    if (rec)
        s_rec_start(rec);
    if (ca_scep_handle(f->scep, "POST", "PKIOperation", q->msg[i], q->len[i], &r) != 0 ||
        r.pki_status != CA_SCEP_SUCCESS || !ca_challenge_take_seen(f->ch, NULL))
        goto out;
    rc = 0;
    if (check) {
        pm_scepc_result_t res;
        char err[200] = "";
        rc = pm_scepc_parse_reply(r.body, r.len, ca_pki_ra_cert(f->pki), q->self[i % S_KEYS],
                                  q->key[i % S_KEYS], &res, err, sizeof err) == 0 &&
                     res.pki_status == PM_SCEP_SUCCESS && res.cert &&
                     EVP_PKEY_eq(X509_get0_pubkey(res.cert), q->key[i % S_KEYS]) == 1 &&
                     X509_check_issued(ca_pki_ca_cert(f->pki), res.cert) == X509_V_OK
                 ? 0
                 : -1;
        if (rc < 0)
            fprintf(stderr, "reply: %s\n", err);
        X509_free(res.cert);
    }
out:
    ca_scep_reply_clear(&r);
    return rc;
}

/* ---- the profile path (ca_svc_profile) ---- */

static int s_profile(s_fix_t *f, double *t_chal, double *t_build, double *t_sign)
{
    ca_profile_opts_t o = {.server_url = "https://mdm.example.com/mdm",
                           .scep_url = "https://mdm.example.com/scep",
                           .topic = "com.apple.mgmt.External.cost",
                           .organization = "PicoMDM"};
    char challenge[80], hash[65], uuid[37], err[200];
    int64_t exp = 0;
    char *xml = NULL;
    size_t xlen = 0, dlen = 0;
    uint8_t *der = NULL;
    double t0 = s_now_us();
    int rc = ca_challenge_make(f->ch, challenge, sizeof challenge, hash, &exp);
    double t1 = s_now_us();
    o.challenge = challenge;
    rc = rc < 0 ? -1 : ca_profile_build(&o, &xml, &xlen, uuid, err, sizeof err);
    double t2 = s_now_us();
    rc = rc < 0 || !f->signer
             ? -1
             : ca_profile_signer_sign(f->signer, xml, xlen, &der, &dlen, err, sizeof err);
    double t3 = s_now_us();
    *t_chal = t1 - t0, *t_build = t2 - t1, *t_sign = t3 - t2;
    free(xml);
    OPENSSL_free(der);
    return rc;
}

/* ---- reference costs of single OpenSSL calls ---- */

typedef int (*s_ref_fn)(s_fix_t *f, s_reqs_t *q, int i);

static int s_ref_rsa_decrypt(s_fix_t *f, s_reqs_t *q, int i)
{
    (void)q, (void)i;
    static uint8_t ct[256];
    static size_t ctlen;
    static const EVP_PKEY *for_key; //  ct is encrypted to this key
    EVP_PKEY *k = ca_pki_ra_key(f->pki);
    if (for_key != k) {
        for_key = k;
        EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(k, NULL);
        ctlen = sizeof ct;
        if (!c || EVP_PKEY_encrypt_init(c) <= 0 ||
            EVP_PKEY_encrypt(c, ct, &ctlen, (const uint8_t *)"0123456789abcdef", 16) <= 0)
            ctlen = 0;
        EVP_PKEY_CTX_free(c);
    }
    uint8_t pt[256];
    size_t ptlen = sizeof pt;
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(k, NULL);
    int ok = c && EVP_PKEY_decrypt_init(c) > 0 && EVP_PKEY_decrypt(c, pt, &ptlen, ct, ctlen) > 0;
    EVP_PKEY_CTX_free(c);
    return ok ? 0 : -1;
}

static int s_sign_with(EVP_PKEY *k)
{
    uint8_t sig[512];
    size_t slen = sizeof sig;
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    int ok = m && EVP_DigestSignInit(m, NULL, EVP_sha256(), NULL, k) > 0 &&
             EVP_DigestSign(m, sig, &slen, (const uint8_t *)"data", 4) > 0;
    EVP_MD_CTX_free(m);
    return ok ? 0 : -1;
}

static int s_ref_rsa_sign(s_fix_t *f, s_reqs_t *q, int i)
{
    (void)q, (void)i;
    return s_sign_with(ca_pki_ra_key(f->pki));
}

static int s_ref_signer_sign(s_fix_t *f, s_reqs_t *q, int i)
{
    (void)q, (void)i;
    return s_sign_with(ca_pki_signer_key(f->pki));
}

static int s_ref_d2i_cert(s_fix_t *f, s_reqs_t *q, int i)
{
    (void)f;
    uint8_t *der = NULL;
    int len = i2d_X509(q->self[i % S_KEYS], &der);
    const unsigned char *p = der;
    X509 *x = len > 0 ? d2i_X509(NULL, &p, len) : NULL;
    int rc = x ? 0 : -1;
    X509_free(x);
    OPENSSL_free(der);
    return rc;
}

static int s_ref_i2d_cert(s_fix_t *f, s_reqs_t *q, int i)
{
    (void)f;
    uint8_t *der = NULL;
    int len = i2d_X509(q->self[i % S_KEYS], &der);
    OPENSSL_free(der);
    return len > 0 ? 0 : -1;
}

static int s_ref_d2i_spki(s_fix_t *f, s_reqs_t *q, int i)
{
    (void)f;
    uint8_t *der = NULL;
    int len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(q->self[i % S_KEYS]), &der);
    const unsigned char *p = der;
    X509_PUBKEY *k = len > 0 ? d2i_X509_PUBKEY(NULL, &p, len) : NULL;
    int rc = k && X509_PUBKEY_get0(k) ? 0 : -1;
    X509_PUBKEY_free(k);
    OPENSSL_free(der);
    return rc;
}

static int s_ref_md_fetch(s_fix_t *f, s_reqs_t *q, int i)
{
    (void)f, (void)q, (void)i;
    EVP_MD *md = EVP_MD_fetch(NULL, "SHA256", NULL);
    EVP_MD_free(md);
    return md ? 0 : -1;
}

static int s_ref_pkey_ctx(s_fix_t *f, s_reqs_t *q, int i)
{
    (void)q, (void)i;
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, ca_pki_ra_key(f->pki), NULL);
    int rc = c && EVP_PKEY_sign_init(c) > 0 ? 0 : -1;
    EVP_PKEY_CTX_free(c);
    return rc;
}

/* ---- the report ---- */

static int s_report(bool ec, int n)
{
    s_fix_t *f = s_fix_new(ec);
    s_reqs_t q = {0};
    s_rec_t rec = {0};
    int rc = 1;
    if (!f || !f->scep || s_rec_init(&rec, n) < 0 || s_reqs_make(f, &q, n) < 0) {
        fprintf(stderr, "ca_cost: setup failed\n");
        goto out;
    }
    printf("== %s, %d PKCSReq (RSA-2048 device keys, signed one-time challenge)\n",
           ec ? "P-256 CA + RSA-2048 SCEP RA + P-256 profile signer (picomdm up)"
              : "RSA-2048 CA (its own RA) + RSA-2048 profile signer",
           n);
    //  warm up (first fetches, method stores) outside the figures
    s_pkcsreq(f, &q, 0, NULL, false);
    ca_scep_set_trace(f->scep, s_rec_step, &rec);
    double c0 = s_cpu_us();
    unsigned long a0 = s_allocs;
    int ok = 0;
    for (int i = 0; i < n; i++) {
        rec.req = i;
        ok += s_pkcsreq(f, &q, i, &rec, false) == 0;
    }
    double cpu = s_cpu_us() - c0;
    double allocs = (double)(s_allocs - a0) / n;
    ca_scep_set_trace(f->scep, NULL, NULL);
    printf("%-28s %10s %10s %12s\n", "PKCSReq step (thread CPU)", "median us", "mean us",
           "allocs/req");
    double sum_med = 0;
    for (int s = 0; s < rec.nsteps; s++) {
        double mean = 0;
        for (int i = 0; i < n; i++)
            mean += rec.us[s][i];
        mean /= n;
        double med = s_median(rec.us[s], n);
        sum_med += med;
        printf("%-28s %10.1f %10.1f %12.0f\n", rec.name[s], med, mean, rec.allocs[s] / n);
    }
    printf("%-28s %10.1f %10s %12.0f\n", "sum of steps", sum_med, "", allocs);
    printf("PKCSReq: %d of %d issued; process CPU %.1f us per PKCSReq (steps + trace)\n", ok, n,
           cpu / n);

    //  profile downloads
    int np = n * 4;
    double *tc = calloc((size_t)np, sizeof(double)), *tb = calloc((size_t)np, sizeof(double)),
           *ts = calloc((size_t)np, sizeof(double));
    double pc0 = s_cpu_us();
    unsigned long pa0 = s_allocs;
    int pok = 0;
    for (int i = 0; tc && tb && ts && i < np; i++)
        pok += s_profile(f, &tc[i], &tb[i], &ts[i]) == 0;
    double pcpu = (s_cpu_us() - pc0) / np;
    printf("profile: %d of %d signed; median us: challenge %.1f, build %.1f, sign %.1f; "
           "process CPU %.1f us per profile, %.0f allocs\n",
           pok, np, s_median(tc, np), s_median(tb, np), s_median(ts, np), pcpu,
           (double)(s_allocs - pa0) / np);
    free(tc);
    free(tb);
    free(ts);

    //  single calls
    static const struct {
        const char *name;
        s_ref_fn fn;
    } refs[] = {
        {"RSA-2048 decrypt (RA key)", s_ref_rsa_decrypt},
        {"RSA-2048 sign (RA key)", s_ref_rsa_sign},
        {"profile signer sign", s_ref_signer_sign},
        {"d2i_X509 (device cert)", s_ref_d2i_cert},
        {"i2d_X509 (device cert)", s_ref_i2d_cert},
        {"d2i_X509_PUBKEY + get0", s_ref_d2i_spki},
        {"EVP_MD_fetch SHA256", s_ref_md_fetch},
        {"EVP_PKEY_CTX new + init", s_ref_pkey_ctx},
    };
    double *t = calloc((size_t)n, sizeof(double));
    for (size_t r = 0; t && r < sizeof refs / sizeof *refs; r++) {
        unsigned long ra0 = s_allocs;
        int bad = 0;
        for (int i = 0; i < n; i++) {
            double t0 = s_now_us();
            bad += refs[r].fn(f, &q, i) != 0;
            t[i] = s_now_us() - t0;
        }
        printf("reference: %-28s %8.1f us median, %5.0f allocs%s\n", refs[r].name, s_median(t, n),
               (double)(s_allocs - ra0) / n, bad ? " (FAILED)" : "");
    }
    free(t);
    rc = ok == n && pok == np ? 0 : 1;
out:
    s_rec_free(&rec);
    s_reqs_free(&q);
    s_fix_destroy(&f);
    return rc;
}

/* ---- as a unit test: the harness's paths work ---- */

static void test_paths(void **state)
{
    (void)state;
    for (int ec = 0; ec < 2; ec++) {
        s_fix_t *f = s_fix_new(ec);
        assert_non_null(f);
        assert_non_null(f->scep);
        s_reqs_t q;
        s_rec_t rec;
        assert_int_equal(s_rec_init(&rec, 3), 0);
        assert_int_equal(s_reqs_make(f, &q, 3), 0);
        ca_scep_set_trace(f->scep, s_rec_step, &rec);
        for (int i = 0; i < 3; i++) {
            rec.req = i;
            assert_int_equal(s_pkcsreq(f, &q, i, &rec, true), 0);
        }
        //  every step of a PKCSReq reported itself
        assert_true(rec.nsteps >= 8);
        double a, b, c;
        assert_int_equal(s_profile(f, &a, &b, &c), 0);
        s_rec_free(&rec);
        s_reqs_free(&q);
        s_fix_destroy(&f);
    }
}

int main(void)
{
    //  before OpenSSL allocates anything
    CRYPTO_set_mem_functions(s_malloc, s_realloc, s_free);
    const char *n = getenv("CA_COST");
    if (n && *n) {
        int count = (int)strtol(n, NULL, 10);
        if (count <= 0)
            count = 200;
        return s_report(true, count) | s_report(false, count);
    }
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_paths)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
