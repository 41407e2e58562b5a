/*  fapns_check unit tests: every APNs rule the stand-in enforces, the token
 *  list, and failure-rule parsing and matching (counts, wildcard, delay).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "fapns_check.h"

#include <stdio.h>
#include <string.h>

#define TOPIC "com.apple.mgmt.External.aaaa"
#define TOK "00000000000000000000000000000000000000000000000000000000000000ab"

static fapns_req_t s_good(const char *body)
{
    fapns_req_t r = {.method = "POST",
                     .path = "/3/device/" TOK,
                     .topic = TOPIC,
                     .push_type = "mdm",
                     .priority = "10",
                     .expiration = "0",
                     .body = (const uint8_t *)body,
                     .body_len = strlen(body),
                     .cert_topic = TOPIC};
    return r;
}

static void s_expect(const fapns_req_t *r, const fapns_tokens_t *known, unsigned status,
                     const char *reason)
{
    fapns_verdict_t v;
    fapns_check(r, known, &v);
    if (v.status != status || strcmp(v.reason, reason) != 0)
        fail_msg("got %u %s, want %u %s", v.status, v.reason, status, reason);
}

static void test_rules(void **state)
{
    (void)state;
    fapns_req_t r = s_good("{\"mdm\":\"MAGIC\"}");
    fapns_verdict_t v;
    fapns_check(&r, NULL, &v);
    assert_int_equal(v.status, 200);
    assert_string_equal(v.magic, "MAGIC");
    assert_string_equal(v.token, TOK);
    r = s_good(" { \"mdm\" : \"M\" } \n");
    s_expect(&r, NULL, 200, "");
    r = s_good("{\"mdm\":\"M\"}");
    r.method = "GET";
    s_expect(&r, NULL, 405, "MethodNotAllowed");
    r = s_good("{\"mdm\":\"M\"}");
    r.path = "/3/other/" TOK;
    s_expect(&r, NULL, 404, "BadPath");
    r.path = "/3/device/";
    s_expect(&r, NULL, 400, "MissingDeviceToken");
    r.path = "/3/device/abc";
    s_expect(&r, NULL, 400, "BadDeviceToken");
    r.path = "/3/device/" TOK "00";
    s_expect(&r, NULL, 400, "BadDeviceToken");
    r = s_good("{\"mdm\":\"M\"}");
    r.cert_topic = "";
    s_expect(&r, NULL, 403, "BadCertificate");
    r = s_good("{\"mdm\":\"M\"}");
    r.topic = NULL;
    s_expect(&r, NULL, 400, "MissingTopic");
    r.topic = "com.example";
    s_expect(&r, NULL, 400, "BadTopic");
    r = s_good("{\"mdm\":\"M\"}");
    r.push_type = "alert";
    s_expect(&r, NULL, 400, "InvalidPushType");
    r = s_good("{\"mdm\":\"M\"}");
    r.priority = "1";
    s_expect(&r, NULL, 400, "BadPriority");
    r = s_good("{\"mdm\":\"M\"}");
    r.expiration = "-5";
    s_expect(&r, NULL, 400, "BadExpirationDate");
    r = s_good("{\"mdm\":\"M\"}");
    r.body_too_large = true;
    s_expect(&r, NULL, 413, "PayloadTooLarge");
    const char *bad[] = {"",
                         "{}",
                         "{\"mdm\":\"\"}",
                         "{\"mdm\":\"M\",\"x\":1}",
                         "{\"mdm\":1}",
                         "{\"mdm\":\"a\\\"b\"}",
                         "{\"MDM\":\"M\"}",
                         "{\"mdm\":\"M\"}x"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        r = s_good(bad[i]);
        s_expect(&r, NULL, 400, i == 0 ? "PayloadEmpty" : "BadPayload");
    }
}

static void test_tokens(void **state)
{
    (void)state;
    fapns_tokens_t *t = fapns_tokens_new();
    char err[200];
    assert_int_equal(fapns_tokens_add_line(t, TOK "\n", err, sizeof err), 0);
    assert_int_equal(
        fapns_tokens_add_line(t,
                              "11111111111111111111111111111111111111111111111111111111111111AA "
                              "com.other\n",
                              err, sizeof err),
        0);
    assert_int_equal(fapns_tokens_add_line(t, "# comment", err, sizeof err), 1);
    assert_int_equal(fapns_tokens_add_line(t, "abc", err, sizeof err), -1);
    assert_int_equal(fapns_tokens_size(t), 2);
    fapns_req_t r = s_good("{\"mdm\":\"M\"}");
    s_expect(&r, t, 200, "");
    r.path = "/3/device/11111111111111111111111111111111111111111111111111111111111111aa";
    s_expect(&r, t, 400, "DeviceTokenNotForTopic");
    r.path = "/3/device/2222222222222222222222222222222222222222222222222222222222222222";
    s_expect(&r, t, 400, "BadDeviceToken");
    fapns_tokens_destroy(&t);
    fapns_tokens_destroy(&t);
}

static void test_failure_rules(void **state)
{
    (void)state;
    fapns_rules_t *r = fapns_rules_new();
    char err[200];
    fapns_rule_t m;
    assert_int_equal(fapns_rules_add_line(r, TOK " 429 count=2", err, sizeof err), 0);
    assert_int_equal(fapns_rules_add_line(r, "* 503 count=1 reason=Shutdown", err, sizeof err), 0);
    assert_int_equal(fapns_rules_add_line(r, "* delay delay=50", err, sizeof err), 0);
    assert_int_equal(fapns_rules_add_line(r, "  # nothing", err, sizeof err), 1);
    assert_int_equal(fapns_rules_add_line(r, TOK " 418", err, sizeof err), -1);
    assert_int_equal(fapns_rules_add_line(r, TOK " delay", err, sizeof err), -1);
    assert_int_equal(fapns_rules_add_line(r, "xyz 410", err, sizeof err), -1);
    assert_int_equal(fapns_rules_add_line(r, TOK " 410 count=-1", err, sizeof err), -1);
    assert_int_equal(fapns_rules_add_line(r, TOK " 410 bogus=1", err, sizeof err), -1);
    assert_int_equal(fapns_rules_size(r), 3);
    for (int i = 0; i < 2; i++) {
        assert_true(fapns_rules_match(r, TOK, &m));
        assert_int_equal(m.status, 429);
        assert_string_equal(m.reason, "TooManyRequests");
    }
    assert_true(fapns_rules_match(r, TOK, &m));
    assert_int_equal(m.status, 503);
    assert_string_equal(m.reason, "Shutdown");
    assert_true(fapns_rules_match(r, TOK, &m));
    assert_int_equal(m.act, FAPNS_ACT_DELAY);
    assert_int_equal(m.delay_ms, 50);
    assert_true(fapns_rules_match(r, TOK, &m)); //  no count: every time
    fapns_rules_clear(r);
    assert_false(fapns_rules_match(r, TOK, &m));
    assert_int_equal(fapns_rules_add_line(r, TOK " goaway count=1", err, sizeof err), 0);
    assert_false(fapns_rules_match(r, "ffff", &m));
    assert_true(fapns_rules_match(r, TOK, &m));
    assert_int_equal(m.act, FAPNS_ACT_GOAWAY);
    assert_false(fapns_rules_match(r, TOK, &m));
    assert_string_equal(fapns_default_reason(410), "Unregistered");
    fapns_rules_destroy(&r);
    fapns_rules_destroy(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rules),
        cmocka_unit_test(test_tokens),
        cmocka_unit_test(test_failure_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
