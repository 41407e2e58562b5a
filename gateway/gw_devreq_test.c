/*  gw_devreq unit tests: the pure part of device-request handling — plist to
 *  route and enrollment id, the refusals, and the bus messages of both device
 *  paths (through the scheduler; straight to the store with the policy).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "gw_devreq.h"

#include <string.h>

#define BODY_MAX (1024 * 1024)

static const char *s_plist(const char *dict)
{
    static char buf[2048];
    snprintf(buf, sizeof buf,
             "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\"><dict>%s</dict>"
             "</plist>\n",
             dict);
    return buf;
}

static int s_parse(const char *dict, bool server_path, gw_devreq_t *d, char *why, size_t n)
{
    const char *x = s_plist(dict);
    return gw_devreq_parse((const uint8_t *)x, strlen(x), BODY_MAX, server_path, d, why, n);
}

static void test_checkin(void **state)
{
    (void)state;
    gw_devreq_t d;
    char why[400] = "";
    assert_int_equal(s_parse("<key>MessageType</key><string>Authenticate</string>"
                             "<key>UDID</key><string>U1</string>"
                             "<key>Topic</key><string>com.apple.mgmt.x</string>",
                             false, &d, why, sizeof why),
                     0);
    assert_int_equal(d.route, GW_DEVREQ_CHECKIN);
    assert_string_equal(d.eid, "U1");
    assert_string_equal(d.mtype, "Authenticate");
    pm_msg_t *m = gw_devreq_msg(&d, NULL, NULL);
    assert_int_equal(pm_msg_type(m), PM_MSG_CHECKIN);
    assert_string_equal(pm_msg_str(m, "kind"), "device");
    pm_msg_destroy(&m);
    gw_devreq_policy_t pol = {3, 5, 60};
    m = gw_devreq_msg(&d, NULL, &pol);
    assert_int_equal(pm_msg_type(m), PM_MSG_STORE_CHECKIN);
    assert_string_equal(pm_msg_str(m, "message_type"), "Authenticate");
    assert_non_null(pm_msg_obj(m, "body"));
    pm_msg_destroy(&m);
    gw_devreq_clear(&d);
    gw_devreq_clear(&d); //  safe twice
}

static void test_connect_direct(void **state)
{
    (void)state;
    gw_devreq_t d;
    char why[400] = "";
    assert_int_equal(s_parse("<key>Status</key><string>Acknowledged</string>"
                             "<key>UDID</key><string>U1</string>"
                             "<key>CommandUUID</key><string>C-1</string>",
                             true, &d, why, sizeof why),
                     0);
    assert_int_equal(d.route, GW_DEVREQ_CONNECT);
    gw_auth_result_t auth;
    memset(&auth, 0, sizeof auth);
    memset(auth.cert_hash, 0xab, sizeof auth.cert_hash);
    auth.not_after = 2000000000;
    auth.clock_skew_s = -42;
    auth.has_skew = true;
    gw_devreq_policy_t pol = {3, 5, 60};
    pm_msg_t *m = gw_devreq_msg(&d, &auth, &pol);
    assert_int_equal(pm_msg_type(m), PM_MSG_STORE_CONNECT);
    //  what the scheduler would have added: its policy and the device's rid
    assert_string_equal(pm_msg_str(m, "device_rid"), pm_msg_rid(m));
    assert_int_equal(pm_msg_uint(m, "notnow_limit", 0), 3);
    assert_int_equal(pm_msg_uint(m, "redeliver_limit", 0), 5);
    assert_int_equal(pm_msg_uint(m, "delivered_timeout_s", 0), 60);
    assert_string_equal(pm_msg_str(m, "command_uuid"), "C-1");
    size_t n = 0;
    assert_non_null(pm_msg_bin(m, "cert_hash", &n));
    assert_int_equal(n, 32);
    assert_false(pm_msg_has(m, "kind"));
    //  the doctor's facts (cert_not_after, clock_skew_s) travel on both paths
    int64_t sec = 0;
    uint32_t nsec = 1;
    assert_int_equal(pm_msg_time(m, "cert_not_after", &sec, &nsec), 0);
    assert_int_equal(sec, 2000000000);
    assert_int_equal(pm_msg_int(m, "clock_skew_s", 0), -42);
    pm_msg_destroy(&m);
    m = gw_devreq_msg(&d, &auth, NULL);
    assert_int_equal(pm_msg_type(m), PM_MSG_CONNECT);
    assert_false(pm_msg_has(m, "device_rid"));
    assert_int_equal(pm_msg_int(m, "clock_skew_s", 0), -42);
    assert_true(pm_msg_has(m, "cert_not_after"));
    pm_msg_destroy(&m);
    gw_devreq_clear(&d);
}

static void test_refusals(void **state)
{
    (void)state;
    static const struct {
        const char *dict;
        bool server;
        const char *why;
    } cases[] = {
        {"<key>Status</key><string>Idle</string><key>UDID</key><string>U</string>", false,
         "check-in body without MessageType"},
        {"<key>Status</key><string>Acknowledged</string><key>UDID</key><string>U</string>", true,
         "Status Acknowledged without a CommandUUID"},
        {"<key>Status</key><string>Sleeping</string><key>UDID</key><string>U</string>", true,
         "unknown Status 'Sleeping'"},
        {"<key>MessageType</key><string>Bogus</string><key>UDID</key><string>U</string>", false,
         "unknown MessageType 'Bogus'"},
        {"<key>MessageType</key><string>TokenUpdate</string><key>UDID</key><string>U</string>"
         "<key>Topic</key><string>t</string><key>PushMagic</key><string>m</string>",
         false, "TokenUpdate without Token"},
        {"<key>MessageType</key><string>Authenticate</string><key>Topic</key><string>t</string>",
         false, "bad enrollment id"},
        {"<key>MessageType</key><string>CheckOut</string><key>Status</key><string>Idle</string>"
         "<key>UDID</key><string>U</string>",
         true, "body has both MessageType and Status"},
        {"<key>UDID</key><integer>7</integer>", true, "UDID must be a string"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gw_devreq_t d;
        char why[400] = "";
        assert_int_equal(s_parse(cases[i].dict, cases[i].server, &d, why, sizeof why), -1);
        if (!strstr(why, cases[i].why))
            fail_msg("case %zu: '%s' does not say '%s'", i, why, cases[i].why);
        gw_devreq_clear(&d);
    }
    gw_devreq_t d;
    char why[400] = "";
    assert_int_equal(gw_devreq_parse((const uint8_t *)"", 0, BODY_MAX, true, &d, why, sizeof why),
                     -1);
    assert_non_null(strstr(why, "empty body"));
    gw_devreq_clear(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checkin),
        cmocka_unit_test(test_connect_direct),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
