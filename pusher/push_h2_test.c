/*  push_h2 unit tests (no APNs needed): base URL parsing, a connection
 *  refused on loopback reported once per request as a transport error,
 *  requests that time out while queued, destroy with requests pending.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "push_h2.h"

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static X509 *s_x;
static EVP_PKEY *s_key;

static int s_setup(void **state)
{
    (void)state;
    s_key = EVP_EC_gen("P-256");
    s_x = X509_new();
    X509_set_version(s_x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(s_x), 1);
    X509_gmtime_adj(X509_getm_notBefore(s_x), -60);
    X509_gmtime_adj(X509_getm_notAfter(s_x), 86400);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(s_x), "CN", MBSTRING_UTF8,
                               (const unsigned char *)"t", -1, -1, 0);
    X509_set_issuer_name(s_x, X509_get_subject_name(s_x));
    X509_set_pubkey(s_x, s_key);
    X509_sign(s_x, s_key, EVP_sha256());
    return s_key && s_x ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    X509_free(s_x);
    EVP_PKEY_free(s_key);
    return 0;
}

typedef struct {
    int n, timeouts;
    char error[400];
} s_seen_t;

static void s_done(void *arg, const push_h2_result_t *r)
{
    s_seen_t *s = arg;
    s->n++;
    s->timeouts += r->timeout;
    snprintf(s->error, sizeof s->error, "%s", r->error ? r->error : "");
}

static void test_urls(void **state)
{
    (void)state;
    char err[512];
    const char *bad[] = {
        "http://x",         "https://",     "https://:443",      "https://host:",
        "https://host:99x", "https://[::1", "https://host/path", "ftp://api.push.apple.com"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        push_h2_cfg_t c = {.base_url = bad[i]};
        push_h2_t *h = push_h2_new(&c, s_x, s_key, s_done, NULL, err, sizeof err);
        if (h)
            fail_msg("accepted %s", bad[i]);
        assert_non_null(strstr(err, "bad APNs URL"));
    }
    const char *good[] = {"https://api.push.apple.com", "https://127.0.0.1:2197/",
                          "https://[::1]:443"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        push_h2_cfg_t c = {.base_url = good[i]};
        push_h2_t *h = push_h2_new(&c, s_x, s_key, s_done, NULL, err, sizeof err);
        if (!h)
            fail_msg("refused %s: %s", good[i], err);
        //  pending requests are dropped without completions on destroy
        assert_int_equal(push_h2_submit(h, NULL, "/3/device/00", "t", 10, 0, "{}", 2), 0);
        assert_int_equal(push_h2_pending(h), 1);
        push_h2_destroy(&h);
        push_h2_destroy(&h);
    }
}

//  Run the client until every request completed (bounded).
static void s_run(push_h2_t *h, int max_ms)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (push_h2_pending(h) > 0) {
        struct pollfd fds[8];
        int n = push_h2_pollfds(h, fds, 8);
        long next = push_h2_next_ms(h);
        poll(fds, (nfds_t)n, next >= 0 && next < 50 ? (int)next : 50);
        push_h2_process(h, fds, n);
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 > max_ms)
            fail_msg("requests still pending after %d ms", max_ms);
    }
}

static void test_refused_and_timeout(void **state)
{
    (void)state;
    char err[512];
    s_seen_t seen = {0};
    //  port 1 on loopback: connection refused, every queued request fails once
    push_h2_cfg_t c = {.base_url = "https://127.0.0.1:1", .timeout_ms = 5000};
    push_h2_t *h = push_h2_new(&c, s_x, s_key, s_done, &seen, err, sizeof err);
    assert_non_null(h);
    for (int i = 0; i < 3; i++)
        assert_int_equal(push_h2_submit(h, NULL, "/3/device/00", "t", 10, 0, "{}", 2), 0);
    s_run(h, 3000);
    assert_int_equal(seen.n, 3);
    assert_int_equal(seen.timeouts, 0);
    assert_non_null(strstr(seen.error, "cannot connect to 127.0.0.1:1"));
    assert_int_equal(push_h2_connects(h), 1);
    push_h2_destroy(&h);
    //  a request that cannot even be queued on a connection times out
    //  (a reconnect backoff after the first failure keeps it queued)
    memset(&seen, 0, sizeof seen);
    push_h2_cfg_t c2 = {.base_url = "https://127.0.0.1:1", .timeout_ms = 50};
    h = push_h2_new(&c2, s_x, s_key, s_done, &seen, err, sizeof err);
    assert_non_null(h);
    assert_int_equal(push_h2_submit(h, NULL, "/3/device/00", "t", 10, 0, "{}", 2), 0);
    s_run(h, 3000);
    assert_int_equal(seen.n, 1);
    assert_int_equal(push_h2_submit(h, NULL, "/3/device/00", "t", 10, 0, "{}", 2), 0);
    s_run(h, 3000);
    assert_int_equal(seen.n, 2);
    assert_true(seen.timeouts >= 1); //  the second waited out the reconnect backoff
    assert_string_equal(seen.error, "timeout");
    push_h2_destroy(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_urls),
        cmocka_unit_test(test_refused_and_timeout),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
