/*  push_expiry unit tests, with an injected clock: no warning while more
 *  than 30 days are left, one push.cert_expiring warning per day left from
 *  30 days before expiry, one stop once expired (pushes held, not crashing),
 *  resume when a valid certificate is in use; not-yet-valid stops too. And
 *  the APNs client's hold and resume (push_apns_stop/resume, no network).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "push_apns.h"
#include "push_cert.h"
#include "push_expiry.h"

#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TOPIC "com.apple.mgmt.External.11111111-2222-3333-4444-555555555555"
#define DAY 86400

static char s_dir[] = "/tmp/push_expiry_test.XXXXXX";
static EVP_PKEY *s_key;

//  A certificate valid from now+nb_s to now+na_s (seconds), loaded.
static push_cert_t *s_cert(long nb_s, long na_s)
{
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), nb_s);
    X509_gmtime_adj(X509_getm_notAfter(x), na_s);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_NID(n, NID_userId, MBSTRING_UTF8, (const unsigned char *)TOPIC, -1, -1,
                               0);
    X509_set_issuer_name(x, n);
    X509_set_pubkey(x, s_key);
    X509_sign(x, s_key, EVP_sha256());
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/c.pem", s_dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    PEM_write_X509(f, x);
    PEM_write_PrivateKey(f, s_key, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    X509_free(x);
    push_cert_t *c = push_cert_load(path, NULL, NULL, true, err, sizeof err);
    assert_non_null(c);
    return c;
}

static int s_setup(void **state)
{
    (void)state;
    assert_non_null(mkdtemp(s_dir));
    s_key = EVP_EC_gen("P-256");
    return s_key ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    EVP_PKEY_free(s_key);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_expiry_timeline(void **state)
{
    (void)state;
    push_cert_t *c = s_cert(-DAY, 40 * DAY);
    time_t t0 = time(NULL);
    push_expiry_t e;
    push_expiry_init(&e);
    char msg[600];
    //  40 days left: nothing, however often it is checked
    assert_int_equal(push_expiry_check(&e, c, t0, msg, sizeof msg), 0);
    assert_int_equal(push_expiry_check(&e, c, t0 + 3600, msg, sizeof msg), 0);
    //  29.5 days left: one warning, then silence for the rest of that day
    time_t t = t0 + 10 * DAY + DAY / 2;
    assert_int_equal(push_expiry_check(&e, c, t, msg, sizeof msg), PUSH_EXPIRY_WARN);
    assert_non_null(strstr(msg, "expires in 29 days"));
    assert_non_null(strstr(msg, "pushcert install"));
    assert_int_equal(push_expiry_check(&e, c, t + 3600, msg, sizeof msg), 0);
    assert_int_equal(push_expiry_check(&e, c, t + 7200, msg, sizeof msg), 0);
    //  the next day: the next warning
    assert_int_equal(push_expiry_check(&e, c, t + DAY, msg, sizeof msg), PUSH_EXPIRY_WARN);
    assert_non_null(strstr(msg, "expires in 28 days"));
    //  an hour before: still a warning (0 days)
    assert_int_equal(push_expiry_check(&e, c, t0 + 40 * DAY - 3600, msg, sizeof msg),
                     PUSH_EXPIRY_WARN);
    //  expired: one stop, not repeated
    assert_int_equal(push_expiry_check(&e, c, t0 + 40 * DAY + 60, msg, sizeof msg),
                     PUSH_EXPIRY_STOP);
    assert_non_null(strstr(msg, "expired"));
    assert_non_null(strstr(msg, "held"));
    assert_true(e.stopped);
    assert_int_equal(push_expiry_check(&e, c, t0 + 40 * DAY + 3600, msg, sizeof msg), 0);
    assert_int_equal(push_expiry_check(&e, c, t0 + 41 * DAY, msg, sizeof msg), 0);
    push_cert_destroy(&c);
    //  a renewed certificate (a year): resume, no warning
    c = s_cert(-DAY, 400 * DAY);
    assert_int_equal(push_expiry_check(&e, c, t0 + 41 * DAY, msg, sizeof msg), PUSH_EXPIRY_RESUME);
    assert_false(e.stopped);
    assert_int_equal(push_expiry_check(&e, c, t0 + 42 * DAY, msg, sizeof msg), 0);
    push_cert_destroy(&c);
    //  renewed with only 10 days left: resume and warn at once
    push_expiry_init(&e);
    e.stopped = true;
    c = s_cert(-DAY, 10 * DAY);
    assert_int_equal(push_expiry_check(&e, c, t0, msg, sizeof msg),
                     PUSH_EXPIRY_RESUME | PUSH_EXPIRY_WARN);
    push_cert_destroy(&c);
}

static void test_not_yet_valid(void **state)
{
    (void)state;
    push_cert_t *c = s_cert(3600, 365 * DAY);
    time_t t0 = time(NULL);
    push_expiry_t e;
    push_expiry_init(&e);
    char msg[600];
    assert_int_equal(push_expiry_check(&e, c, t0, msg, sizeof msg), PUSH_EXPIRY_STOP);
    assert_non_null(strstr(msg, "not yet valid"));
    assert_int_equal(push_expiry_check(&e, c, t0 + 60, msg, sizeof msg), 0);
    //  notBefore reached: resume
    assert_int_equal(push_expiry_check(&e, c, t0 + 3700, msg, sizeof msg), PUSH_EXPIRY_RESUME);
    push_cert_destroy(&c);
}

typedef struct {
    int n;
    push_outcome_t last;
    char reason[300];
} s_seen_t;

static void s_on_result(void *arg, const push_result_t *r)
{
    s_seen_t *s = arg;
    s->n++;
    s->last = r->outcome;
    snprintf(s->reason, sizeof s->reason, "%s", r->reason);
}

static void test_client_hold_and_resume(void **state)
{
    (void)state;
    char err[512];
    push_cert_t *c = s_cert(-DAY, 365 * DAY);
    s_seen_t seen = {0};
    push_apns_cfg_t cfg = {.base_url = "https://127.0.0.1:1"};
    push_apns_t *a = push_apns_new(&cfg, c, s_on_result, &seen, err, sizeof err);
    assert_non_null(a);
    uint8_t tok[32] = {1};
    push_target_t t = {.eid = "dev1", .token = tok, .token_len = 32, .push_magic = "M"};
    assert_int_equal(push_apns_wake(a, &t), 0); //  queued
    push_apns_stop(a, "expired");
    assert_true(push_apns_topic_stopped(a, TOPIC));
    push_apns_stats_t st;
    push_apns_stats(a, &st);
    assert_int_equal(st.queued, 0);
    assert_int_equal(st.held, 1);
    //  later wakes are held too, coalesced per enrollment, nothing reported
    t.eid = "dev2";
    assert_int_equal(push_apns_wake(a, &t), 0);
    assert_int_equal(push_apns_wake(a, &t), 1);
    assert_int_equal(push_apns_held(a), 2);
    assert_int_equal(push_apns_pending(a), 2);
    assert_int_equal(seen.n, 0);
    push_apns_resume(a);
    assert_false(push_apns_topic_stopped(a, TOPIC));
    push_apns_stats(a, &st);
    assert_int_equal(st.held, 0);
    assert_int_equal(st.queued, 2);
    assert_int_equal(seen.n, 0);
    //  stopped again, then dropped (end of --stdin input): reported as failed
    push_apns_stop(a, "expired");
    assert_int_equal(push_apns_held(a), 2);
    push_apns_drop_held(a, "dropped");
    assert_int_equal(seen.n, 2);
    assert_int_equal(seen.last, PUSH_FAILED);
    assert_string_equal(seen.reason, "dropped");
    assert_int_equal(push_apns_pending(a), 0);
    push_apns_destroy(&a);
    push_cert_destroy(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_expiry_timeline),
        cmocka_unit_test(test_not_yet_valid),
        cmocka_unit_test(test_client_hold_and_resume),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
