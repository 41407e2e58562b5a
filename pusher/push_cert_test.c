/*  push_cert and push_apns unit tests: loading PEM (one file, two files) and
 *  PKCS#12, the UID topic, the validity classes (valid, expiring within 30
 *  days, expired, not yet valid), key mismatch; token hex, backoff bounds,
 *  and the APNs client's local refusals and coalescing (no network).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "push_apns.h"
#include "push_cert.h"

#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TOPIC "com.apple.mgmt.External.11111111-2222-3333-4444-555555555555"

static char s_dir[] = "/tmp/push_cert_test.XXXXXX";

//  A self-signed certificate valid from now+nb_days to now+na_days.
static X509 *s_cert(EVP_PKEY *key, const char *uid, long nb_days, long na_days)
{
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), nb_days * 86400);
    X509_gmtime_adj(X509_getm_notAfter(x), na_days * 86400);
    X509_NAME *n = X509_get_subject_name(x);
    if (uid)
        X509_NAME_add_entry_by_NID(n, NID_userId, MBSTRING_UTF8, (const unsigned char *)uid, -1, -1,
                                   0);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)"APSP:test", -1, -1,
                               0);
    X509_set_issuer_name(x, n);
    X509_set_pubkey(x, key);
    X509_sign(x, key, EVP_sha256());
    return x;
}

static void s_write(const char *name, X509 *x, EVP_PKEY *key, char *path, size_t len)
{
    snprintf(path, len, "%s/%s", s_dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    if (x)
        PEM_write_X509(f, x);
    if (key)
        PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    fclose(f);
}

static EVP_PKEY *s_key1, *s_key2;

static int s_setup(void **state)
{
    (void)state;
    assert_non_null(mkdtemp(s_dir));
    s_key1 = EVP_EC_gen("P-256");
    s_key2 = EVP_EC_gen("P-256");
    return s_key1 && s_key2 ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    EVP_PKEY_free(s_key1);
    EVP_PKEY_free(s_key2);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_pem_one_file(void **state)
{
    (void)state;
    char path[512], err[512];
    X509 *x = s_cert(s_key1, TOPIC, -1, 365);
    s_write("one.pem", x, s_key1, path, sizeof path);
    push_cert_t *c = push_cert_load(path, NULL, NULL, true, err, sizeof err);
    assert_non_null(c);
    assert_string_equal(push_cert_topic(c), TOPIC);
    assert_true(push_cert_key_matches(c));
    int days = 0;
    assert_int_equal(push_cert_state(c, time(NULL), &days), PUSH_CERT_VALID);
    assert_true(days >= 363 && days <= 365);
    char *cp, *kp;
    size_t cl, kl;
    assert_int_equal(push_cert_pem(c, &cp, &cl, &kp, &kl), 0);
    assert_non_null(strstr(cp, "BEGIN CERTIFICATE"));
    assert_non_null(strstr(kp, "PRIVATE KEY"));
    free(cp);
    free(kp);
    push_cert_destroy(&c);
    push_cert_destroy(&c); //  safe twice
    X509_free(x);
}

static void test_pem_two_files_and_mismatch(void **state)
{
    (void)state;
    char cpath[512], kpath[512], k2path[512], err[512];
    X509 *x = s_cert(s_key1, TOPIC, -1, 365);
    s_write("cert.pem", x, NULL, cpath, sizeof cpath);
    s_write("key.pem", NULL, s_key1, kpath, sizeof kpath);
    s_write("key2.pem", NULL, s_key2, k2path, sizeof k2path);
    push_cert_t *c = push_cert_load(cpath, kpath, NULL, true, err, sizeof err);
    assert_non_null(c);
    push_cert_destroy(&c);
    //  no key at all
    assert_null(push_cert_load(cpath, NULL, NULL, true, err, sizeof err));
    assert_non_null(strstr(err, "no private key"));
    //  show without a key is fine
    c = push_cert_load(cpath, NULL, NULL, false, err, sizeof err);
    assert_non_null(c);
    assert_false(push_cert_key_matches(c));
    push_cert_destroy(&c);
    //  the wrong key
    assert_null(push_cert_load(cpath, k2path, NULL, true, err, sizeof err));
    assert_non_null(strstr(err, "does not belong"));
    //  missing file and garbage
    assert_null(push_cert_load("/nonexistent/x.pem", NULL, NULL, true, err, sizeof err));
    assert_non_null(strstr(err, "cannot open"));
    char gpath[512];
    snprintf(gpath, sizeof gpath, "%s/garbage", s_dir);
    FILE *f = fopen(gpath, "w");
    fputs("not a certificate\n", f);
    fclose(f);
    assert_null(push_cert_load(gpath, NULL, NULL, true, err, sizeof err));
    assert_non_null(strstr(err, "neither a PEM certificate nor a PKCS#12"));
    X509_free(x);
}

static void test_p12(void **state)
{
    (void)state;
    char path[512], err[512];
    X509 *x = s_cert(s_key1, TOPIC, -1, 365);
    PKCS12 *p12 = PKCS12_create("secret", "push", s_key1, x, NULL, 0, 0, 0, 0, 0);
    assert_non_null(p12);
    snprintf(path, sizeof path, "%s/push.p12", s_dir);
    FILE *f = fopen(path, "wb");
    i2d_PKCS12_fp(f, p12);
    fclose(f);
    push_cert_t *c = push_cert_load(path, NULL, "secret", true, err, sizeof err);
    assert_non_null(c);
    assert_string_equal(push_cert_topic(c), TOPIC);
    assert_true(push_cert_key_matches(c));
    push_cert_destroy(&c);
    assert_null(push_cert_load(path, NULL, "wrong", true, err, sizeof err));
    assert_non_null(strstr(err, "password"));
    PKCS12_free(p12);
    X509_free(x);
}

static void test_states(void **state)
{
    (void)state;
    char path[512], err[512];
    struct {
        long nb, na;
        push_cert_state_t want;
    } cases[] = {{-10, 365, PUSH_CERT_VALID},   {-10, 10, PUSH_CERT_EXPIRING},
                 {-10, 29, PUSH_CERT_EXPIRING}, {-10, 31, PUSH_CERT_VALID},
                 {-30, -1, PUSH_CERT_EXPIRED},  {2, 30, PUSH_CERT_NOT_YET_VALID}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        X509 *x = s_cert(s_key1, TOPIC, cases[i].nb, cases[i].na);
        s_write("s.pem", x, s_key1, path, sizeof path);
        push_cert_t *c = push_cert_load(path, NULL, NULL, true, err, sizeof err);
        assert_non_null(c);
        int days = 0;
        assert_int_equal(push_cert_state(c, time(NULL), &days), cases[i].want);
        if (cases[i].want == PUSH_CERT_EXPIRED)
            assert_true(days < 0);
        push_cert_destroy(&c);
        X509_free(x);
    }
    //  no UID: loads, topic empty
    X509 *x = s_cert(s_key1, NULL, -1, 365);
    s_write("nouid.pem", x, s_key1, path, sizeof path);
    push_cert_t *c = push_cert_load(path, NULL, NULL, true, err, sizeof err);
    assert_non_null(c);
    assert_string_equal(push_cert_topic(c), "");
    push_cert_destroy(&c);
    X509_free(x);
}

static void test_hex_and_backoff(void **state)
{
    (void)state;
    uint8_t tok[32];
    for (int i = 0; i < 32; i++)
        tok[i] = (uint8_t)(i * 8 + 1);
    char hex[65];
    assert_int_equal(push_token_hex(tok, 32, hex, sizeof hex), 0);
    assert_int_equal(strlen(hex), 64);
    assert_memory_equal(hex, "0109111921293139", 16);
    assert_int_equal(push_token_hex(tok, 32, hex, 64), -1);
    //  attempt 2 = first retry: [base/2, base]; doubles; capped
    assert_int_equal(push_backoff_ms(1000, 60000, 2, 0.0), 500);
    assert_int_equal(push_backoff_ms(1000, 60000, 2, 0.999999), 999);
    assert_int_equal(push_backoff_ms(1000, 60000, 3, 0.0), 1000);
    assert_int_equal(push_backoff_ms(1000, 60000, 5, 0.0), 4000);
    assert_int_equal(push_backoff_ms(1000, 60000, 40, 0.0), 30000);
    assert_true(push_backoff_ms(1000, 60000, 40, 0.999) <= 60000);
}

typedef struct {
    int n;
    push_outcome_t last;
    char reason[256];
} s_seen_t;

static void s_on_result(void *arg, const push_result_t *r)
{
    s_seen_t *s = arg;
    s->n++;
    s->last = r->outcome;
    snprintf(s->reason, sizeof s->reason, "%s", r->reason);
}

static void test_client_refusals_and_coalescing(void **state)
{
    (void)state;
    char path[512], err[512];
    X509 *x = s_cert(s_key1, TOPIC, -1, 365);
    s_write("client.pem", x, s_key1, path, sizeof path);
    push_cert_t *c = push_cert_load(path, NULL, NULL, true, err, sizeof err);
    assert_non_null(c);
    s_seen_t seen = {0};
    push_apns_cfg_t cfg = {.base_url = "https://127.0.0.1:1"};
    push_apns_t *a = push_apns_new(&cfg, c, s_on_result, &seen, err, sizeof err);
    assert_non_null(a);
    uint8_t tok[32] = {1};
    push_target_t t = {.eid = "dev1", .token = tok, .token_len = 32, .push_magic = "M"};
    assert_int_equal(push_apns_wake(a, &t), 0); //  topic defaults to the certificate's
    assert_int_equal(push_apns_wake(a, &t), 1); //  coalesced
    assert_int_equal(push_apns_pending(a), 1);
    assert_int_equal(seen.n, 0);
    push_target_t bad = t;
    bad.eid = "dev2";
    bad.token_len = 0;
    assert_int_equal(push_apns_wake(a, &bad), -1);
    assert_int_equal(seen.last, PUSH_FAILED);
    assert_non_null(strstr(seen.reason, "TokenUpdate"));
    bad = t;
    bad.eid = "dev3";
    bad.topic = "com.apple.mgmt.External.other";
    assert_int_equal(push_apns_wake(a, &bad), -1);
    assert_non_null(strstr(seen.reason, "topic differs"));
    bad = t;
    bad.eid = "dev4";
    bad.push_magic = "has\"quote";
    assert_int_equal(push_apns_wake(a, &bad), -1);
    bad = t;
    bad.eid = "";
    assert_int_equal(push_apns_wake(a, &bad), -1);
    assert_int_equal(seen.n, 4);
    push_apns_stats_t st;
    push_apns_stats(a, &st);
    assert_int_equal(st.wakes, 6);
    assert_int_equal(st.coalesced, 1);
    assert_int_equal(st.refused, 4);
    assert_int_equal(st.queued, 1);
    assert_false(push_apns_topic_stopped(a, TOPIC));
    //  a bad URL is refused at creation
    push_apns_cfg_t badcfg = {.base_url = "ftp://x"};
    assert_null(push_apns_new(&badcfg, c, NULL, NULL, err, sizeof err));
    assert_non_null(strstr(err, "bad APNs URL"));
    push_apns_destroy(&a);
    push_apns_destroy(&a);
    push_cert_destroy(&c);
    X509_free(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pem_one_file),
        cmocka_unit_test(test_pem_two_files_and_mismatch),
        cmocka_unit_test(test_p12),
        cmocka_unit_test(test_states),
        cmocka_unit_test(test_hex_and_backoff),
        cmocka_unit_test(test_client_refusals_and_coalescing),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
