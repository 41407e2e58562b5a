/*  gw_eid unit tests: the enrollment id for every channel kind. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "gw_eid.h"

#include <string.h>

static int s_derive(gw_eid_keys_t k, char *eid, gw_eid_kind_t *kind, char *err)
{
    return gw_eid_derive(&k, eid, GW_EID_MAX, kind, err, 128);
}

static void s_ok(gw_eid_keys_t k, const char *want, gw_eid_kind_t want_kind, const char *kname)
{
    char eid[GW_EID_MAX], err[128] = "";
    gw_eid_kind_t kind = (gw_eid_kind_t)-1;
    if (s_derive(k, eid, &kind, err) != 0)
        fail_msg("expected %s, got error: %s", want, err);
    assert_string_equal(eid, want);
    assert_int_equal(kind, want_kind);
    assert_string_equal(gw_eid_kind_name(kind), kname);
}

static void s_bad(gw_eid_keys_t k, const char *reason_part)
{
    char eid[GW_EID_MAX], err[128] = "";
    gw_eid_kind_t kind;
    assert_int_equal(s_derive(k, eid, &kind, err), -1);
    if (!strstr(err, reason_part))
        fail_msg("reason '%s' lacks '%s'", err, reason_part);
}

static void test_device(void **state)
{
    (void)state;
    s_ok((gw_eid_keys_t){.udid = "00008030-001A2B3C4D5E6F70"}, "00008030-001A2B3C4D5E6F70",
         GW_EID_DEVICE, "device");
    //  empty strings count as absent
    s_ok((gw_eid_keys_t){.udid = "U1", .user_id = "", .enrollment_id = ""}, "U1", GW_EID_DEVICE,
         "device");
}

static void test_macos_user(void **state)
{
    (void)state;
    s_ok((gw_eid_keys_t){.udid = "U1",
                         .user_id = "A1B2C3D4-0000-1111-2222-333344445555",
                         .user_short_name = "alice",
                         .user_long_name = "Alice Example"},
         "U1:A1B2C3D4-0000-1111-2222-333344445555", GW_EID_USER, "user");
    //  UserAuthenticate carries only UDID and UserID
    s_ok((gw_eid_keys_t){.udid = "U1", .user_id = "GUID-1"}, "U1:GUID-1", GW_EID_USER, "user");
}

static void test_shared_ipad(void **state)
{
    (void)state;
    s_ok((gw_eid_keys_t){.udid = "U2",
                         .user_id = GW_EID_SHARED_IPAD_USERID,
                         .user_short_name = "bob@school.example"},
         "U2:bob@school.example", GW_EID_SHARED_IPAD_USER, "shared-ipad-user");
    //  an authenticated Shared iPad user: a real UserID, UserShortName, no UserLongName
    s_ok((gw_eid_keys_t){.udid = "U2",
                         .user_id = "1712CD64-6C7E-4041-BF67-B1E7C9BC2488",
                         .user_short_name = "student1@school.example"},
         "U2:1712CD64-6C7E-4041-BF67-B1E7C9BC2488", GW_EID_SHARED_IPAD_USER, "shared-ipad-user");
    s_bad((gw_eid_keys_t){.udid = "U2", .user_id = GW_EID_SHARED_IPAD_USERID},
          "without UserShortName");
}

static void test_user_enrollment(void **state)
{
    (void)state;
    s_ok((gw_eid_keys_t){.enrollment_id = "E-1234"}, "E-1234", GW_EID_USER_ENROLLMENT,
         "user-enrollment");
    s_ok((gw_eid_keys_t){.enrollment_id = "E-1234", .enrollment_user_id = "EU-9"}, "E-1234:EU-9",
         GW_EID_USER_ENROLLMENT_USER, "user-enrollment-user");
}

static void test_bad(void **state)
{
    (void)state;
    s_bad((gw_eid_keys_t){0}, "neither UDID nor EnrollmentID");
    s_bad((gw_eid_keys_t){.udid = "U1:evil"}, "':'");
    s_bad((gw_eid_keys_t){.udid = "U1\n"}, "control");
    s_bad((gw_eid_keys_t){.udid = "U1", .user_id = "x:y"}, "UserID");
    s_bad((gw_eid_keys_t){.udid = "U1", .user_short_name = "alice"}, "UserShortName without");
    s_bad((gw_eid_keys_t){.enrollment_id = "E", .enrollment_user_id = "a\x01"}, "EnrollmentUserID");
    char longid[GW_EID_PART_MAX + 2];
    memset(longid, 'A', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';
    s_bad((gw_eid_keys_t){.udid = longid}, "longer");
    //  the longest accepted parts still fit GW_EID_MAX
    longid[GW_EID_PART_MAX] = '\0';
    char eid[GW_EID_MAX], err[128];
    gw_eid_kind_t kind;
    gw_eid_keys_t k = {.enrollment_id = longid, .enrollment_user_id = longid};
    assert_int_equal(gw_eid_derive(&k, eid, sizeof eid, &kind, err, sizeof err), 0);
    assert_int_equal(strlen(eid), 2 * GW_EID_PART_MAX + 1);
    //  a small buffer is an error, not an overflow
    assert_int_equal(gw_eid_derive(&k, eid, 16, &kind, err, sizeof err), -1);
    //  the edge, both forms (copied, not formatted, since session 11): the id
    //  and its NUL fit exactly; one byte less is an error, the byte past the
    //  buffer untouched
    gw_eid_keys_t one = {.udid = "UDID-1"}, two = {.udid = "UDID-1", .user_id = "U-22"};
    const gw_eid_keys_t *ks[] = {&one, &two};
    const char *want[] = {"UDID-1", "UDID-1:U-22"};
    for (size_t i = 0; i < 2; i++) {
        size_t n = strlen(want[i]);
        char small[32];
        memset(small, '#', sizeof small);
        assert_int_equal(gw_eid_derive(ks[i], small, n + 1, &kind, err, sizeof err), 0);
        assert_string_equal(small, want[i]);
        assert_int_equal(small[n + 1], '#');
        memset(small, '#', sizeof small);
        assert_int_equal(gw_eid_derive(ks[i], small, n, &kind, err, sizeof err), -1);
        assert_non_null(strstr(err, "does not fit"));
        assert_int_equal(small[n], '#');
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device),      cmocka_unit_test(test_macos_user),
        cmocka_unit_test(test_shared_ipad), cmocka_unit_test(test_user_enrollment),
        cmocka_unit_test(test_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
