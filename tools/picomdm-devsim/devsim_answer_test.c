/*  devsim_answer_test — the simulator's command answers against Apple's schema:
 *  every key a simulated device emits must be one of the command's
 *  `responsekeys` (devsim_schema_keys.h, generated from mdm/commands/<file>.yaml),
 *  with the schema's plist type, and exist on the device's platform; plus the
 *  state a device keeps (profiles, erase, NotNow bookkeeping).
 */
#include "devsim_answer.h"
#include "pm_plist.h"
#include "devsim_plist.h"
#include "devsim_schema_keys.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

//  The common envelope (Apple's documentation; not in the schema files).
static const char *const s_envelope[] = {
    "Status", "CommandUUID",   "UDID",         "EnrollmentID", "EnrollmentUserID",
    "UserID", "UserShortName", "UserLongName", "NotOnConsole", "ErrorChain",
    NULL};

static const devsim_schema_key_t *s_lookup(const char *rt, const char *path)
{
    for (const devsim_schema_key_t *k = devsim_schema_keys; k->rt; k++)
        if (strcmp(k->rt, rt) == 0 && strcmp(k->path, path) == 0)
            return k;
    return NULL;
}

static int s_violations;

static void s_check(const char *rt, const char *path, plist_t node, bool mac)
{
    const devsim_schema_key_t *k = s_lookup(rt, path);
    if (!k) {
        //  "a/b/c" may be allowed by an ANY member at "a/b/*"
        char any[512];
        const char *slash = strrchr(path, '/');
        if (slash) {
            snprintf(any, sizeof any, "%.*s/*", (int)(slash - path), path);
            if (s_lookup(rt, any))
                return; //  any value below ANY
        }
        if (s_violations++ < 10)
            fprintf(stderr, "%s: key %s is not in the schema's responsekeys\n", rt, path);
        return;
    }
    if (strcmp(k->type, "any") != 0 && strcmp(k->type, pm_plist_type_name(node)) != 0) {
        if (s_violations++ < 10)
            fprintf(stderr, "%s: key %s is a %s, the schema says %s\n", rt, path,
                    pm_plist_type_name(node), k->type);
    }
    if (mac ? !k->macos : !k->ios) {
        if (s_violations++ < 10)
            fprintf(stderr, "%s: key %s does not exist on %s\n", rt, path, mac ? "macOS" : "iOS");
    }
    char sub[512];
    if (plist_get_node_type(node) == PLIST_DICT) {
        plist_dict_iter it = NULL;
        plist_dict_new_iter(node, &it);
        char *key = NULL;
        plist_t val = NULL;
        for (plist_dict_next_item(node, it, &key, &val); val;
             plist_dict_next_item(node, it, &key, &val)) {
            snprintf(sub, sizeof sub, "%s/%s", path, key);
            s_check(rt, sub, val, mac);
            free(key);
            key = NULL;
        }
        free(it);
    } else if (plist_get_node_type(node) == PLIST_ARRAY) {
        snprintf(sub, sizeof sub, "%s[]", path);
        for (uint32_t i = 0; i < plist_array_get_size(node); i++)
            s_check(rt, sub, plist_array_get_item(node, i), mac);
    }
}

//  Check one whole response: envelope keys + the command's response keys.
static void s_check_response(const char *rt, plist_t resp, bool mac)
{
    plist_dict_iter it = NULL;
    plist_dict_new_iter(resp, &it);
    char *key = NULL;
    plist_t val = NULL;
    for (plist_dict_next_item(resp, it, &key, &val); val;
         plist_dict_next_item(resp, it, &key, &val)) {
        bool env = false;
        for (int i = 0; s_envelope[i]; i++)
            env |= strcmp(s_envelope[i], key) == 0;
        if (!env)
            s_check(rt, key, val, mac);
        free(key);
        key = NULL;
    }
    free(it);
}

static devsim_answer_opts_t s_opts = {0.0, 30, NULL, 0};

static void test_every_response_key_is_in_the_schema(void **state)
{
    (void)state;
    char err[256];
    devsim_ca_t *ca = devsim_ca_generate("Test CA", DEVSIM_KEY_EC, err, sizeof err);
    assert_non_null(ca);
    for (int k = 0; k < DEVSIM_KIND_COUNT; k++) {
        devsim_dev_t *d = devsim_dev_new((devsim_kind_t)k, k, 42, "com.apple.mgmt.test");
        assert_non_null(d);
        devsim_ident_t *id =
            devsim_ident_issue(ca, devsim_dev_cn(d), DEVSIM_KEY_EC, -60, 86400, err, sizeof err);
        assert_non_null(id);
        devsim_dev_set_ident(d, &id);
        devsim_dev_session_begin(d);
        for (int i = 0; devsim_answer_supported[i]; i++) {
            const char *rt = devsim_answer_supported[i];
            assert_non_null(s_lookup(rt, "")); //  the schema knows the command
            plist_t cmd = devsim_answer_sample_command(rt);
            devsim_answer_info_t info;
            plist_t resp = devsim_answer(d, cmd, &s_opts, &info);
            assert_non_null(resp);
            assert_non_null(info.status);
            s_violations = 0;
            s_check_response(rt, resp, d->is_mac);
            if (s_violations)
                fprintf(stderr, "  (kind %s)\n", devsim_kind_name((devsim_kind_t)k));
            assert_int_equal(s_violations, 0);
            plist_free(resp);
            plist_free(cmd);
            if (d->user) { //  the user channel too
                cmd = devsim_answer_sample_command(rt);
                resp = devsim_answer(d->user, cmd, &s_opts, &info);
                s_check_response(rt, resp, d->is_mac);
                assert_int_equal(s_violations, 0);
                plist_free(resp);
                plist_free(cmd);
            }
        }
        //  Every query the schema knows, asked at once: whatever the device
        //  answers must exist on its platform.
        plist_t cmd = plist_new_dict();
        devsim_pl_str(cmd, "CommandUUID", "ALL-QUERIES");
        plist_t c = plist_new_dict();
        devsim_pl_str(c, "RequestType", "DeviceInformation");
        plist_t qs = plist_new_array();
        for (const devsim_schema_key_t *sk = devsim_schema_keys; sk->rt; sk++)
            if (strcmp(sk->rt, "DeviceInformation") == 0 &&
                strncmp(sk->path, "QueryResponses/", 15) == 0 && !strchr(sk->path + 15, '/'))
                plist_array_append_item(qs, plist_new_string(sk->path + 15));
        assert_true(plist_array_get_size(qs) > 50);
        plist_dict_set_item(c, "Queries", qs);
        plist_dict_set_item(cmd, "Command", c);
        devsim_answer_info_t info;
        plist_t resp = devsim_answer(d, cmd, &s_opts, &info);
        assert_true(plist_dict_get_size(devsim_pl_get(resp, "QueryResponses", PLIST_DICT)) > 15);
        s_check_response("DeviceInformation", resp, d->is_mac);
        if (s_violations)
            fprintf(stderr, "  (kind %s, all queries)\n", devsim_kind_name((devsim_kind_t)k));
        assert_int_equal(s_violations, 0);
        plist_free(resp);
        plist_free(cmd);
        devsim_dev_destroy(&d);
        devsim_dev_destroy(&d);
    }
    devsim_ca_destroy(&ca);
}

static plist_t s_run(devsim_dev_t *d, plist_t cmd, devsim_answer_info_t *info)
{
    plist_t resp = devsim_answer(d, cmd, &s_opts, info);
    plist_free(cmd);
    return resp;
}

static plist_t s_cmd(const char *rt)
{
    return devsim_answer_sample_command(rt);
}

static void test_device_information_answers_exactly_the_queries(void **state)
{
    (void)state;
    devsim_dev_t *d = devsim_dev_new(DEVSIM_IPHONE, 1, 7, "t");
    plist_t cmd = plist_new_dict();
    devsim_pl_str(cmd, "CommandUUID", "U1");
    plist_t c = plist_new_dict();
    devsim_pl_str(c, "RequestType", "DeviceInformation");
    plist_t q = plist_new_array();
    plist_array_append_item(q, plist_new_string("LastCloudBackupDate"));
    plist_array_append_item(q, plist_new_string("IMEI"));
    plist_array_append_item(q, plist_new_string("NotARealQuery"));
    plist_dict_set_item(c, "Queries", q);
    plist_dict_set_item(cmd, "Command", c);
    devsim_answer_info_t info;
    plist_t r = s_run(d, cmd, &info);
    assert_string_equal(info.status, "Acknowledged");
    assert_string_equal(devsim_pl_get_str(r, "UDID"), d->udid);
    assert_string_equal(devsim_pl_get_str(r, "CommandUUID"), "U1");
    plist_t qr = devsim_pl_get(r, "QueryResponses", PLIST_DICT);
    assert_non_null(qr);
    assert_int_equal(plist_dict_get_size(qr), 2);
    assert_non_null(devsim_pl_get(qr, "LastCloudBackupDate", PLIST_DATE));
    assert_string_equal(devsim_pl_get_str(qr, "IMEI"), d->imei);
    plist_free(r);

    //  Queries is required: without it, CommandFormatError.
    cmd = plist_new_dict();
    devsim_pl_str(cmd, "CommandUUID", "U2");
    c = plist_new_dict();
    devsim_pl_str(c, "RequestType", "DeviceInformation");
    plist_dict_set_item(cmd, "Command", c);
    r = s_run(d, cmd, &info);
    assert_string_equal(info.status, "CommandFormatError");
    plist_free(r);
    devsim_dev_destroy(&d);
}

static void test_profiles_are_kept_in_state(void **state)
{
    (void)state;
    devsim_dev_t *d = devsim_dev_new(DEVSIM_IPAD, 2, 7, "t");
    devsim_answer_info_t info;
    plist_t r = s_run(d, s_cmd("ProfileList"), &info);
    assert_int_equal(plist_array_get_size(devsim_pl_get(r, "ProfileList", PLIST_ARRAY)), 1);
    plist_free(r);
    r = s_run(d, s_cmd("InstallProfile"), &info);
    assert_string_equal(info.status, "Acknowledged");
    plist_free(r);
    r = s_run(d, s_cmd("ProfileList"), &info);
    plist_t list = devsim_pl_get(r, "ProfileList", PLIST_ARRAY);
    assert_int_equal(plist_array_get_size(list), 2);
    plist_t p = plist_array_get_item(list, 1);
    assert_string_equal(devsim_pl_get_str(p, "PayloadIdentifier"), "com.example.wifi");
    assert_string_equal(devsim_pl_get_str(p, "PayloadDisplayName"), "Office Wi-Fi");
    plist_free(r);
    r = s_run(d, s_cmd("RemoveProfile"), &info);
    assert_string_equal(info.status, "Acknowledged");
    plist_free(r);
    r = s_run(d, s_cmd("RemoveProfile"), &info); //  gone now
    assert_string_equal(info.status, "Error");
    plist_t e = plist_array_get_item(devsim_pl_get(r, "ErrorChain", PLIST_ARRAY), 0);
    assert_non_null(devsim_pl_get(e, "ErrorCode", PLIST_UINT));
    assert_non_null(devsim_pl_get_str(e, "ErrorDomain"));
    assert_non_null(devsim_pl_get_str(e, "LocalizedDescription"));
    assert_non_null(devsim_pl_get_str(e, "USEnglishDescription"));
    plist_free(r);
    r = s_run(d, s_cmd("ProfileList"), &info);
    assert_int_equal(plist_array_get_size(devsim_pl_get(r, "ProfileList", PLIST_ARRAY)), 1);
    plist_free(r);

    //  Garbage payload: Error, state unchanged.
    plist_t cmd = s_cmd("InstallProfile");
    devsim_pl_data(devsim_pl_get(cmd, "Command", PLIST_DICT), "Payload", "garbage", 7);
    r = s_run(d, cmd, &info);
    assert_string_equal(info.status, "Error");
    plist_free(r);
    devsim_dev_destroy(&d);
}

static void test_unsupported_command_gets_error_chain(void **state)
{
    (void)state;
    devsim_dev_t *d = devsim_dev_new(DEVSIM_MAC, 3, 7, "t");
    devsim_answer_info_t info;
    plist_t r = s_run(d, s_cmd("EnableLostMode"), &info);
    assert_string_equal(info.status, "Error");
    plist_t chain = devsim_pl_get(r, "ErrorChain", PLIST_ARRAY);
    assert_non_null(chain);
    plist_t e = plist_array_get_item(chain, 0);
    assert_string_equal(devsim_pl_get_str(e, "ErrorDomain"), "MCMDMErrorDomain");
    plist_free(r);

    //  No CommandUUID at all: CommandFormatError and the session ends.
    plist_t cmd = plist_new_dict();
    plist_dict_set_item(cmd, "Command", plist_new_dict());
    r = s_run(d, cmd, &info);
    assert_string_equal(info.status, "CommandFormatError");
    assert_true(info.stop);
    plist_free(r);
    devsim_dev_destroy(&d);
}

static void test_notnow_bookkeeping(void **state)
{
    (void)state;
    devsim_dev_t *d = devsim_dev_new(DEVSIM_IPHONE, 4, 7, "t");
    devsim_answer_opts_t always = {1.0, 5, NULL, 0};
    devsim_answer_info_t info;
    devsim_dev_session_begin(d);
    plist_t cmd = s_cmd("SecurityInfo");
    plist_t r = devsim_answer(d, cmd, &always, &info);
    assert_string_equal(info.status, "NotNow");
    assert_false(info.violation);
    plist_free(r);
    //  The same command again in the same session: a server violation.
    r = devsim_answer(d, cmd, &s_opts, &info);
    assert_true(info.violation);
    assert_int_equal(d->notnow_violations, 1);
    plist_free(r);
    devsim_dev_destroy(&d);

    d = devsim_dev_new(DEVSIM_IPHONE, 5, 7, "t");
    devsim_dev_session_begin(d);
    r = devsim_answer(d, cmd, &always, &info);
    plist_free(r);
    devsim_dev_session_begin(d); //  next session: re-offer is correct
    r = devsim_answer(d, cmd, &s_opts, &info);
    assert_false(info.violation);
    assert_string_equal(info.status, "Acknowledged");
    assert_int_equal(d->notnow_reoffered, 1);
    assert_int_equal(d->n_notnow_wait, 0);
    plist_free(r);
    plist_free(cmd);
    devsim_dev_destroy(&d);
}

static void test_erase_and_clear_passcode(void **state)
{
    (void)state;
    devsim_dev_t *d = devsim_dev_new(DEVSIM_IPHONE, 6, 7, "t");
    devsim_answer_info_t info;
    plist_t r = s_run(d, s_cmd("ClearPasscode"), &info); //  wrong token
    assert_string_equal(info.status, "Error");
    plist_free(r);
    plist_t cmd = s_cmd("ClearPasscode");
    devsim_pl_data(devsim_pl_get(cmd, "Command", PLIST_DICT), "UnlockToken", d->unlock_token,
                   sizeof d->unlock_token);
    r = s_run(d, cmd, &info);
    assert_string_equal(info.status, "Acknowledged");
    plist_free(r);
    r = s_run(d, s_cmd("EraseDevice"), &info);
    assert_string_equal(info.status, "Acknowledged");
    assert_true(info.stop);
    assert_true(d->erased);
    plist_free(r);
    devsim_dev_destroy(&d);
}

static void test_checkin_messages_follow_the_schema(void **state)
{
    (void)state;
    devsim_dev_t *ue = devsim_dev_new(DEVSIM_UE_MAC_USER, 8, 7, "topic");
    plist_t a = devsim_dev_authenticate(ue);
    assert_null(devsim_pl_get_str(a, "UDID"));
    assert_null(devsim_pl_get_str(a, "SerialNumber"));
    assert_non_null(devsim_pl_get_str(a, "EnrollmentID"));
    assert_non_null(devsim_pl_get_str(a, "DeviceName")); //  macOS: required
    plist_free(a);
    plist_t t = devsim_dev_tokenupdate(ue->user);
    assert_non_null(devsim_pl_get_str(t, "EnrollmentUserID"));
    assert_non_null(devsim_pl_get_str(t, "UserLongName"));
    assert_non_null(devsim_pl_get(t, "NotOnConsole", PLIST_BOOLEAN));
    assert_null(devsim_pl_get(t, "UnlockToken", PLIST_DATA));
    const char *tok;
    size_t len;
    assert_true(devsim_pl_get_data(t, "Token", &tok, &len));
    assert_int_equal(len, 32);
    plist_free(t);
    devsim_dev_destroy(&ue);

    devsim_dev_t *ph = devsim_dev_new(DEVSIM_IPHONE, 9, 7, "topic");
    a = devsim_dev_authenticate(ph);
    assert_non_null(devsim_pl_get_str(a, "IMEI"));
    assert_null(devsim_pl_get_str(a, "DeviceName")); //  iOS: n/a in authenticate.yaml
    plist_free(a);
    t = devsim_dev_tokenupdate(ph);
    assert_true(devsim_pl_get_data(t, "UnlockToken", &tok, &len));
    assert_non_null(devsim_pl_get(t, "AwaitingConfiguration", PLIST_BOOLEAN));
    assert_int_equal(strlen(devsim_pl_get_str(t, "PushMagic")), 36);
    plist_free(t);
    devsim_dev_destroy(&ph);

    devsim_dev_t *sh = devsim_dev_new(DEVSIM_SHARED_IPAD, 10, 7, "topic");
    t = devsim_dev_tokenupdate(sh->user);
    assert_non_null(devsim_pl_get_str(t, "UserID"));
    assert_non_null(devsim_pl_get_str(t, "UserShortName"));
    assert_non_null(devsim_pl_get_str(t, "UDID"));
    assert_null(devsim_pl_get(t, "UnlockToken", PLIST_DATA));
    plist_free(t);
    devsim_dev_destroy(&sh);
}

static void test_bounded_parse(void **state)
{
    (void)state;
    char err[128];
    static char deep[40 * 15 + 64];
    size_t n = (size_t)snprintf(deep, sizeof deep, "<plist version=\"1.0\">");
    for (int i = 0; i < 40; i++)
        n += (size_t)snprintf(deep + n, sizeof deep - n, "<array>");
    for (int i = 0; i < 40; i++)
        n += (size_t)snprintf(deep + n, sizeof deep - n, "</array>");
    n += (size_t)snprintf(deep + n, sizeof deep - n, "</plist>");
    assert_null(devsim_pl_parse(deep, n, err, sizeof err));
    assert_non_null(strstr(err, "deep"));
    assert_null(devsim_pl_parse("\x01\x02garbage", 9, err, sizeof err));
    assert_null(devsim_pl_parse("", 0, err, sizeof err));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_response_key_is_in_the_schema),
        cmocka_unit_test(test_device_information_answers_exactly_the_queries),
        cmocka_unit_test(test_profiles_are_kept_in_state),
        cmocka_unit_test(test_unsupported_command_gets_error_chain),
        cmocka_unit_test(test_notnow_bookkeeping),
        cmocka_unit_test(test_erase_and_clear_passcode),
        cmocka_unit_test(test_checkin_messages_follow_the_schema),
        cmocka_unit_test(test_bounded_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
