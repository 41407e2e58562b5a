/*  cli_doctor_test — the diagnosis of `picomdm doctor` from hand-made store
 *  facts: each finding appears for its condition and names the cause; a
 *  healthy device gets "no problem found". (The facts themselves from a real
 *  stack: tests/it/doctor_devsim.sh.)
 */
#include "cli_doctor.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#define NOW 1700000000000LL
#define MIN 60000LL

typedef struct {
    msgpack_sbuffer sb;
    msgpack_unpacked u;
} s_facts_t;

static void s_s(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

static void s_b(msgpack_packer *pk, const char *k, int v)
{
    s_s(pk, k);
    if (v)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
}

static void s_i(msgpack_packer *pk, const char *k, int64_t v)
{
    s_s(pk, k);
    msgpack_pack_int64(pk, v);
}

typedef struct {
    int activated, enrolled, has_token, stale, wake;
    int64_t last_seen, newest_queued;
    const char *push; //  NULL = no push event
    int64_t push_ts;
    int notnow;          //  head entry's NotNow tally (-1 = no head)
    const char *hstatus; //  head status
    int64_t delivered;
    int64_t cert_na; //  identity certificate notAfter (0 = not recorded)
    int has_skew;
    int64_t skew; //  device clock minus server clock, s
} s_spec_t;

static const msgpack_object *s_make(s_facts_t *f, const s_spec_t *s)
{
    msgpack_sbuffer_init(&f->sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &f->sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 13 + (s->cert_na ? 1 : 0) + (s->has_skew ? 2 : 0));
    if (s->cert_na)
        s_i(&pk, "cert_not_after", s->cert_na);
    if (s->has_skew) {
        s_i(&pk, "clock_skew_s", s->skew);
        s_i(&pk, "skew_at", NOW - MIN);
    }
    s_s(&pk, "eid");
    s_s(&pk, "DEV1");
    s_b(&pk, "activated", s->activated);
    s_b(&pk, "enrolled", s->enrolled);
    s_b(&pk, "has_token", s->has_token);
    s_s(&pk, "topic");
    s_s(&pk, "com.apple.mgmt.External.abc");
    s_b(&pk, "stale_token", s->stale);
    s_b(&pk, "wake_pending", s->wake);
    s_i(&pk, "last_seen", s->last_seen);
    s_i(&pk, "newest_queued", s->newest_queued);
    s_i(&pk, "queued", s->notnow >= 0 ? 1 : 0);
    s_i(&pk, "push_events", s->push ? 1 : 0);
    s_s(&pk, "head");
    if (s->notnow >= 0) {
        msgpack_pack_array(&pk, 1);
        msgpack_pack_map(&pk, 6);
        s_s(&pk, "uuid");
        s_s(&pk, "U-1");
        s_s(&pk, "request_type");
        s_s(&pk, "SecurityInfo");
        s_s(&pk, "status");
        s_s(&pk, s->hstatus ? s->hstatus : "notnow");
        s_i(&pk, "notnow_count", s->notnow);
        s_i(&pk, "deliveries", 1);
        s_i(&pk, "delivered", s->delivered);
    } else
        msgpack_pack_array(&pk, 0);
    s_s(&pk, "last_push");
    if (s->push) {
        msgpack_pack_map(&pk, 3);
        s_s(&pk, "name");
        s_s(&pk, s->push);
        s_i(&pk, "ts", s->push_ts);
        s_s(&pk, "data");
        msgpack_pack_map(&pk, 2);
        s_i(&pk, "status", 403);
        s_s(&pk, "reason");
        s_s(&pk, "BadCertificateEnvironment");
    } else
        msgpack_pack_nil(&pk);
    msgpack_unpacked_init(&f->u);
    assert_int_equal(msgpack_unpack_next(&f->u, f->sb.data, f->sb.size, NULL),
                     MSGPACK_UNPACK_SUCCESS);
    return &f->u.data;
}

static void s_free(s_facts_t *f)
{
    msgpack_unpacked_destroy(&f->u);
    msgpack_sbuffer_destroy(&f->sb);
}

static const cli_doc_opts_t s_opts = {
    .now_ms = NOW, .notnow_limit = 3, .delivered_timeout_ms = 60000, .silent_ms = 86400000};

//  The finding with `code` (NULL if absent).
static const cli_doc_finding_t *s_find(const cli_doc_finding_t *f, int n, const char *code)
{
    for (int i = 0; i < n; i++)
        if (strcmp(f[i].code, code) == 0)
            return &f[i];
    return NULL;
}

static const s_spec_t s_healthy = {.activated = 1,
                                   .enrolled = 1,
                                   .has_token = 1,
                                   .last_seen = NOW - MIN,
                                   .push = "push.sent",
                                   .push_ts = NOW - 2 * MIN,
                                   .notnow = -1};

static void test_healthy(void **state)
{
    (void)state;
    s_facts_t f;
    cli_doc_finding_t out[CLI_DOC_MAX];
    int n = cli_doctor_diagnose(s_make(&f, &s_healthy), &s_opts, out, CLI_DOC_MAX);
    const cli_doc_finding_t *ok = s_find(out, n, "ok");
    if (!ok || !strstr(ok->text, "no problem found"))
        fail_msg("healthy device: no \"no problem found\" finding (%d findings, first: %s)", n,
                 n ? out[0].text : "-");
    for (int i = 0; i < n; i++)
        assert_true(out[i].level == CLI_DOC_INFO);
    //  nothing recorded about the identity: said, as information
    const cli_doc_finding_t *nc = s_find(out, n, "not_checked");
    assert_non_null(nc);
    assert_non_null(strstr(nc->text, "identity certificate expiry and clock skew"));
    s_free(&f);
    //  both recorded and fine: no "not checked"
    s_spec_t good = s_healthy;
    good.cert_na = NOW + 200 * 86400000LL;
    good.has_skew = 1;
    good.skew = -20;
    n = cli_doctor_diagnose(s_make(&f, &good), &s_opts, out, CLI_DOC_MAX);
    assert_non_null(s_find(out, n, "ok"));
    assert_null(s_find(out, n, "not_checked"));
    assert_non_null(s_find(out, n, "identity_cert_ok"));
    assert_non_null(s_find(out, n, "clock_ok"));
    for (int i = 0; i < n; i++)
        assert_true(out[i].level == CLI_DOC_INFO);
    s_free(&f);
}

//  One condition per row: the spec, the code expected, words the text must hold.
typedef struct {
    const char *name;
    s_spec_t spec;
    cli_doc_opts_t opts;
    const char *code;
    const char *words;
} s_case_t;

static void test_conditions(void **state)
{
    (void)state;
    cli_doc_opts_t expired = s_opts, mismatch = s_opts;
    expired.push_not_after_ms = NOW - 86400000;
    mismatch.push_topic = "com.apple.mgmt.External.other";
    s_spec_t notact = s_healthy, out_ = s_healthy, stale = s_healthy, nopush = s_healthy,
             since = s_healthy, notnow = s_healthy, sent = s_healthy, silent = s_healthy,
             queued = s_healthy, cert = s_healthy, notok = s_healthy, idexp = s_healthy,
             idsoon = s_healthy, ahead = s_healthy, behind = s_healthy;
    idexp.cert_na = NOW - 86400000LL;
    idsoon.cert_na = NOW + 3 * 86400000LL - 5000;
    ahead.has_skew = behind.has_skew = 1;
    ahead.skew = 900;
    behind.skew = -7200;
    notact.activated = 0;
    notact.enrolled = 0;
    out_.enrolled = 0;
    stale.stale = 1;
    notok.has_token = 0;
    nopush.push = NULL;
    since.push_ts = NOW - 10;
    since.last_seen = NOW - 30 * MIN;
    notnow.notnow = 5;
    sent.notnow = 0;
    sent.hstatus = "sent";
    sent.delivered = NOW - 5 * MIN;
    silent.last_seen = NOW - 3 * 86400000LL;
    silent.push_ts = silent.last_seen - 1;
    queued.wake = 1;
    queued.newest_queued = NOW - 1000;
    cert.push = "push.cert_problem";
    const s_case_t cases[] = {
        {"not activated", notact, s_opts, "not_activated", "no TokenUpdate"},
        {"checked out", out_, s_opts, "checked_out", "CheckOut"},
        {"push cert expired", s_healthy, expired, "push_cert_expired", "push certificate expired"},
        {"topic mismatch", s_healthy, mismatch, "topic_mismatch", "topic mismatch"},
        {"stale token", stale, s_opts, "token_stale", "410"},
        {"no token", notok, s_opts, "no_token", "no push token"},
        {"no push outcome", nopush, s_opts, "no_push_outcome",
         "no push outcome recorded (is picomdm-pusher running?)"},
        {"not connected since push", since, s_opts, "not_connected_since_push",
         "has not connected since the last push"},
        {"not connected since queued", queued, s_opts, "not_connected_since_queued",
         "has not connected since commands were queued"},
        {"NotNow tally", notnow, s_opts, "stuck_notnow", "answered NotNow 5 times"},
        {"delivered unanswered", sent, s_opts, "stuck_unanswered", "never answered"},
        {"silent", silent, s_opts, "silent", "silent for 3d"},
        {"push cert problem", cert, s_opts, "push_cert_problem", "BadCertificateEnvironment"},
        {"identity cert expired", idexp, s_opts, "identity_cert_expired",
         "identity certificate expired on 2023-11-13"},
        {"identity cert expiring", idsoon, s_opts, "identity_cert_expiring",
         "identity certificate expires in 3 days (2023-11-17 22:13:15 UTC): renew it (SCEP "
         "RenewalReq) or re-enroll"},
        {"clock ahead", ahead, s_opts, "clock_skew",
         "the device's clock is 15m ahead of the server's"},
        {"clock behind", behind, s_opts, "clock_skew", "the device's clock is 2h behind"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s_facts_t f;
        cli_doc_finding_t out[CLI_DOC_MAX];
        int n = cli_doctor_diagnose(s_make(&f, &cases[i].spec), &cases[i].opts, out, CLI_DOC_MAX);
        const cli_doc_finding_t *x = s_find(out, n, cases[i].code);
        if (!x || !strstr(x->text, cases[i].words) || x->level < CLI_DOC_WARN)
            fail_msg("%s: expected %s with \"%s\"; got %d findings, first: %s", cases[i].name,
                     cases[i].code, cases[i].words, n, n ? out[0].text : "-");
        assert_null(s_find(out, n, "ok"));
        assert_true(out[0].level >= CLI_DOC_WARN); //  problems first
        s_free(&f);
    }
}

static void test_not_a_map(void **state)
{
    (void)state;
    cli_doc_finding_t out[CLI_DOC_MAX];
    assert_int_equal(cli_doctor_diagnose(NULL, &s_opts, out, CLI_DOC_MAX), 1);
    assert_string_equal(out[0].code, "bad_reply");
    msgpack_object nil = {.type = MSGPACK_OBJECT_NIL};
    assert_int_equal(cli_doctor_diagnose(&nil, &s_opts, out, CLI_DOC_MAX), 1);
}

static void test_fleet(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 7);
    s_i(&pk, "total", 7);
    s_i(&pk, "active", 5);
    s_i(&pk, "stuck", 2);
    s_b(&pk, "push_outcomes", 0);
    s_i(&pk, "identity_expired", 1);
    s_i(&pk, "identity_expiring", 2);
    s_i(&pk, "clock_skewed", 1);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, sb.data, sb.size, NULL), MSGPACK_UNPACK_SUCCESS);
    char buf[2048] = "";
    FILE *f = fmemopen(buf, sizeof buf - 1, "w");
    assert_non_null(f);
    assert_int_equal(cli_doctor_fleet(f, &u.data, &s_opts), 6);
    fclose(f);
    assert_non_null(strstr(buf, "7 enrollment(s): 5 active"));
    assert_non_null(strstr(buf, "no push outcome recorded (is picomdm-pusher running?)"));
    assert_non_null(strstr(buf, "2 with a stuck command"));
    assert_non_null(strstr(buf, "identity: 1 certificate(s) expired, 2 expiring within 30d; 1 "
                                "device clock(s) off by more than 5m"));
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_healthy), cmocka_unit_test(test_conditions),
        cmocka_unit_test(test_not_a_map), cmocka_unit_test(test_fleet)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
