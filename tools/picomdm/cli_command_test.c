/*  cli_command_test — the generated command table, value conversion and
 *  Command validation of the picomdm CLI. */
#include "cli_command.h"
#include "cmdtab.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

static const cmdtab_key_t *s_key(const char *rt, const char *name)
{
    const cmdtab_cmd_t *c = cmdtab_find(rt);
    assert_non_null(c);
    return cmdtab_child(c->key, c->nkey, name);
}

static void test_table_known_entries(void **state)
{
    (void)state;
    assert_true(cmdtab_ncmds >= 60);
    for (size_t i = 1; i < cmdtab_ncmds; i++)
        assert_true(strcmp(cmdtab_cmds[i - 1].request_type, cmdtab_cmds[i].request_type) < 0);

    //  DeviceInformation: Queries, a required array of strings, with the query names
    const cmdtab_key_t *q = s_key("DeviceInformation", "Queries");
    assert_non_null(q);
    assert_int_equal(q->type, CT_ARRAY);
    assert_true(q->flags & CT_REQUIRED);
    assert_int_equal(q->nchild, 1);
    const cmdtab_key_t *item = &cmdtab_keys[q->child];
    assert_int_equal(item->type, CT_STRING);
    char list[4096];
    assert_non_null(strstr(cmdtab_value_list(item, list, sizeof list), "LastCloudBackupDate"));
    assert_non_null(strstr(list, "SerialNumber"));
    const cmdtab_cmd_t *di = cmdtab_find("DeviceInformation");
    assert_true(di->platforms & CT_IOS);
    assert_true(di->platforms & CT_MACOS);
    assert_true(di->nresp >= 1);
    assert_string_equal(cmdtab_keys[di->resp].name, "QueryResponses");

    //  DeviceLock: PIN and Message, both optional strings; PIN is macOS only
    const cmdtab_key_t *pin = s_key("DeviceLock", "PIN");
    const cmdtab_key_t *msg = s_key("DeviceLock", "Message");
    assert_non_null(pin);
    assert_non_null(msg);
    assert_int_equal(pin->type, CT_STRING);
    assert_false(pin->flags & CT_REQUIRED);
    assert_int_equal(pin->platforms, CT_MACOS);
    assert_null(s_key("DeviceLock", "Pin"));

    //  InstallProfile requires Payload (data)
    const cmdtab_key_t *payload = s_key("InstallProfile", "Payload");
    assert_non_null(payload);
    assert_int_equal(payload->type, CT_DATA);
    assert_true(payload->flags & CT_REQUIRED);

    //  EraseDevice lists its allowed ObliterationBehavior values
    const cmdtab_key_t *ob = s_key("EraseDevice", "ObliterationBehavior");
    assert_non_null(ob);
    assert_string_equal(cmdtab_value_list(ob, list, sizeof list),
                        "Default, DoNotObliterate, ObliterateWithWarning, Always");

    //  SecurityInfo response: a dictionary at top level
    const cmdtab_cmd_t *si = cmdtab_find("SecurityInfo");
    assert_non_null(si);
    assert_string_equal(cmdtab_keys[si->resp].name, "SecurityInfo");
    assert_int_equal(cmdtab_keys[si->resp].type, CT_DICT);

    assert_null(cmdtab_find("NoSuchCommand"));
}

static void test_suggest(void **state)
{
    (void)state;
    assert_string_equal(cmdtab_suggest("DeviceInfo"), "DeviceInformation");
    assert_string_equal(cmdtab_suggest("devicelock"), "DeviceLock");
    assert_string_equal(cmdtab_suggest("InstalProfile"), "InstallProfile");
    assert_null(cmdtab_suggest("Xq"));
    const cmdtab_cmd_t *c = cmdtab_find("DeviceLock");
    assert_string_equal(cmdtab_child_suggest(c->key, c->nkey, "Pin"), "PIN");
}

static void test_convert_scalars(void **state)
{
    (void)state;
    char err[512];
    plist_t v = NULL;
    cmdtab_key_t k = {.name = "K", .type = CT_INTEGER};
    assert_int_equal(cli_value_convert(&k, "-12", &v, err, sizeof err), 0);
    uint64_t u = 0;
    plist_get_uint_val(v, &u);
    assert_int_equal((int64_t)u, -12);
    plist_free(v);
    assert_int_equal(cli_value_convert(&k, "12x", &v, err, sizeof err), -1);
    assert_non_null(strstr(err, "integer"));
    assert_null(v);

    k.type = CT_BOOLEAN;
    uint8_t b = 0;
    assert_int_equal(cli_value_convert(&k, "yes", &v, err, sizeof err), 0);
    plist_get_bool_val(v, &b);
    assert_true(b);
    plist_free(v);
    assert_int_equal(cli_value_convert(&k, "maybe", &v, err, sizeof err), -1);
    assert_non_null(strstr(err, "true or false"));

    k.type = CT_REAL;
    double d = 0;
    assert_int_equal(cli_value_convert(&k, "1.5", &v, err, sizeof err), 0);
    plist_get_real_val(v, &d);
    assert_true(d == 1.5);
    plist_free(v);
    assert_int_equal(cli_value_convert(&k, "nan", &v, err, sizeof err), -1);

    k.type = CT_DATE;
    int32_t sec = 0, usec = 0;
    assert_int_equal(cli_value_convert(&k, "2001-01-02T00:00:00Z", &v, err, sizeof err), 0);
    plist_get_date_val(v, &sec, &usec);
    assert_int_equal(sec, 86400);
    plist_free(v);
    assert_int_equal(cli_value_convert(&k, "2001-01-01", &v, err, sizeof err), 0);
    plist_get_date_val(v, &sec, &usec);
    assert_int_equal(sec, 0);
    plist_free(v);
    assert_int_equal(cli_value_convert(&k, "yesterday", &v, err, sizeof err), -1);
    assert_non_null(strstr(err, "date"));

    k.type = CT_DICT;
    assert_int_equal(cli_value_convert(&k, "x", &v, err, sizeof err), -1);
    assert_non_null(strstr(err, "--plist"));
}

static void test_convert_data(void **state)
{
    (void)state;
    char err[512];
    plist_t v = NULL;
    cmdtab_key_t k = {.name = "Payload", .type = CT_DATA};
    char *data = NULL;
    uint64_t len = 0;
    assert_int_equal(cli_value_convert(&k, "aGVsbG8=", &v, err, sizeof err), 0);
    plist_get_data_val(v, &data, &len);
    assert_int_equal(len, 5);
    assert_memory_equal(data, "hello", 5);
    free(data);
    plist_free(v);
    assert_int_equal(cli_value_convert(&k, "aGVsbG8", &v, err, sizeof err), 0); //  unpadded
    plist_free(v);
    assert_int_equal(cli_value_convert(&k, "not base64!", &v, err, sizeof err), -1);
    assert_non_null(strstr(err, "@FILE"));

    char path[] = "/tmp/cli_command_test_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "\x00\x01\x02", 3), 3);
    close(fd);
    char arg[64];
    snprintf(arg, sizeof arg, "@%s", path);
    assert_int_equal(cli_value_convert(&k, arg, &v, err, sizeof err), 0);
    data = NULL;
    plist_get_data_val(v, &data, &len);
    assert_int_equal(len, 3);
    assert_memory_equal(data, "\x00\x01\x02", 3);
    free(data);
    plist_free(v);
    unlink(path);
    assert_int_equal(cli_value_convert(&k, "@/nonexistent/file", &v, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot open"));
}

static void test_convert_array(void **state)
{
    (void)state;
    char err[512];
    plist_t v = NULL;
    const cmdtab_key_t *q = s_key("DeviceInformation", "Queries");
    assert_int_equal(cli_value_convert(q, "UDID,SerialNumber,A\\,B", &v, err, sizeof err), 0);
    assert_int_equal(plist_array_get_size(v), 3);
    char *s = NULL;
    plist_get_string_val(plist_array_get_item(v, 2), &s);
    assert_string_equal(s, "A,B");
    free(s);
    plist_free(v);
    assert_int_equal(cli_value_convert(q, "", &v, err, sizeof err), 0);
    assert_int_equal(plist_array_get_size(v), 0);
    plist_free(v);

    //  array items are typed by the schema (InstalledApplicationList Identifiers: strings)
    const cmdtab_key_t *ids = s_key("InstalledApplicationList", "Identifiers");
    assert_non_null(ids);
    assert_int_equal(cli_value_convert(ids, "com.a,com.b", &v, err, sizeof err), 0);
    assert_int_equal(plist_array_get_size(v), 2);
    plist_free(v);
    //  Settings is an array of dictionaries: --plist only
    const cmdtab_key_t *settings = s_key("Settings", "Settings");
    assert_int_equal(cli_value_convert(settings, "x", &v, err, sizeof err), -1);
    assert_non_null(strstr(err, "--plist"));
}

static void test_build_and_validate(void **state)
{
    (void)state;
    char err[2048];
    cli_command_t *c = cli_command_new(false);
    assert_non_null(c);
    assert_int_equal(cli_command_set_type(c, "DeviceInformation", err, sizeof err), 0);
    assert_int_equal(cli_command_validate(c, err, sizeof err), -1);
    assert_non_null(strstr(err, "missing required key Queries"));
    assert_int_equal(cli_command_set(c, "Queries=LastCloudBackupDate", err, sizeof err), 0);
    assert_int_equal(cli_command_validate(c, err, sizeof err), 0);
    char *xml = NULL;
    size_t len = 0;
    assert_int_equal(cli_command_to_xml(c, &xml, &len), 0);
    assert_non_null(strstr(xml, "<string>DeviceInformation</string>"));
    assert_non_null(strstr(xml, "<string>LastCloudBackupDate</string>"));
    free(xml);
    //  an unknown query name is caught, with a suggestion
    assert_int_equal(cli_command_set(c, "Queries=SerialNumber,LastCloudBackup", err, sizeof err),
                     0);
    assert_int_equal(cli_command_validate(c, err, sizeof err), -1);
    assert_non_null(strstr(err, "Queries[1]: 'LastCloudBackup' is not an allowed value"));
    assert_non_null(strstr(err, "did you mean LastCloudBackupDate"));
    //  unknown key: rejected with the list of valid ones
    assert_int_equal(cli_command_set(c, "Query=UDID", err, sizeof err), -1);
    assert_non_null(strstr(err, "did you mean Queries"));
    assert_non_null(strstr(err, "Valid keys: Queries"));
    assert_int_equal(cli_command_set(c, "RequestType=X", err, sizeof err), -1);
    assert_int_equal(cli_command_set(c, "NoEquals", err, sizeof err), -1);
    cli_command_destroy(&c);
    cli_command_destroy(&c); //  safe twice
    assert_null(c);

    c = cli_command_new(false);
    assert_int_equal(cli_command_set_type(c, "DeviceLock", err, sizeof err), 0);
    assert_int_equal(cli_command_set(c, "Pin=123456", err, sizeof err), -1);
    assert_non_null(strstr(err, "did you mean PIN?"));
    assert_non_null(strstr(err, "Message"));
    assert_int_equal(cli_command_set(c, "PIN=123456", err, sizeof err), 0);
    assert_int_equal(cli_command_set(c, "Message=Call 555", err, sizeof err), 0);
    assert_int_equal(cli_command_validate(c, err, sizeof err), 0);
    cli_command_destroy(&c);

    c = cli_command_new(false);
    assert_int_equal(cli_command_set_type(c, "InstallProfile", err, sizeof err), 0);
    assert_int_equal(cli_command_validate(c, err, sizeof err), -1);
    assert_non_null(strstr(err, "missing required key Payload (data)"));
    assert_int_equal(cli_command_set(c, "Payload=aGVsbG8=", err, sizeof err), 0);
    assert_int_equal(cli_command_validate(c, err, sizeof err), 0);
    cli_command_destroy(&c);

    //  dotted paths into dictionaries, with typed and range-checked values
    c = cli_command_new(false);
    assert_int_equal(cli_command_set_type(c, "InstallApplication", err, sizeof err), 0);
    assert_int_equal(cli_command_set(c, "Options.PurchaseMethod=1", err, sizeof err), 0);
    assert_int_equal(cli_command_validate(c, err, sizeof err), 0);
    assert_int_equal(cli_command_set(c, "Options.PurchaseMethod=7", err, sizeof err), 0);
    assert_int_equal(cli_command_validate(c, err, sizeof err), -1);
    assert_non_null(strstr(err, "Options.PurchaseMethod: '7' is not an allowed value"));
    assert_int_equal(cli_command_set(c, "Options.Bogus=1", err, sizeof err), -1);
    assert_non_null(strstr(err, "InstallApplication.Options has no key 'Bogus'"));
    assert_int_equal(cli_command_set(c, "Options.PurchaseMethod=one", err, sizeof err), -1);
    assert_non_null(strstr(err, "integer"));
    //  free-form keys (Configuration.ANY) keep their dots
    assert_int_equal(cli_command_set(c, "Options.PurchaseMethod=0", err, sizeof err), 0);
    assert_int_equal(cli_command_set(c, "Configuration.com.example.url=https://x", err, sizeof err),
                     0);
    assert_int_equal(cli_command_validate(c, err, sizeof err), 0);
    plist_t conf = plist_dict_get_item(cli_command_dict(c), "Configuration");
    assert_non_null(plist_dict_get_item(conf, "com.example.url"));
    cli_command_destroy(&c);

    //  a command that takes no keys
    c = cli_command_new(false);
    assert_int_equal(cli_command_set_type(c, "ShutDownDevice", err, sizeof err), 0);
    assert_int_equal(cli_command_set(c, "Foo=1", err, sizeof err), -1);
    assert_non_null(strstr(err, "takes no keys"));
    assert_int_equal(cli_command_validate(c, err, sizeof err), 0);
    cli_command_destroy(&c);
}

static void test_request_type(void **state)
{
    (void)state;
    char err[512];
    cli_command_t *c = cli_command_new(false);
    assert_int_equal(cli_command_set_type(c, "DeviceInfo", err, sizeof err), -1);
    assert_non_null(strstr(err, "did you mean DeviceInformation?"));
    assert_int_equal(cli_command_set_type(c, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "first argument"));
    assert_int_equal(cli_command_set(c, "A=1", err, sizeof err), -1);
    cli_command_destroy(&c);

    //  --raw: anything goes, values guessed
    c = cli_command_new(true);
    assert_int_equal(cli_command_set_type(c, "FutureCommand", err, sizeof err), 0);
    assert_null(cli_command_schema(c));
    assert_int_equal(cli_command_set(c, "Count=3", err, sizeof err), 0);
    assert_int_equal(cli_command_set(c, "Flag=true", err, sizeof err), 0);
    assert_int_equal(cli_command_set(c, "Name=x", err, sizeof err), 0);
    assert_int_equal(cli_command_validate(c, err, sizeof err), 0);
    plist_t d = cli_command_dict(c);
    assert_int_equal(plist_get_node_type(plist_dict_get_item(d, "Count")), PLIST_UINT);
    assert_int_equal(plist_get_node_type(plist_dict_get_item(d, "Flag")), PLIST_BOOLEAN);
    assert_int_equal(plist_get_node_type(plist_dict_get_item(d, "Name")), PLIST_STRING);
    cli_command_destroy(&c);

    //  --raw with a known command still types known keys, but does not validate
    c = cli_command_new(true);
    assert_int_equal(cli_command_set_type(c, "DeviceInformation", err, sizeof err), 0);
    assert_int_equal(cli_command_set(c, "Queries=Whatever", err, sizeof err), 0);
    assert_int_equal(cli_command_set(c, "Extra=1", err, sizeof err), 0);
    assert_int_equal(cli_command_validate(c, err, sizeof err), 0);
    d = cli_command_dict(c);
    assert_int_equal(plist_get_node_type(plist_dict_get_item(d, "Queries")), PLIST_ARRAY);
    cli_command_destroy(&c);
}

static const char s_whole[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                              "<plist version=\"1.0\"><dict>\n"
                              "<key>CommandUUID</key><string>0001-XYZ</string>\n"
                              "<key>Command</key><dict>\n"
                              "  <key>RequestType</key><string>Settings</string>\n"
                              "  <key>Settings</key><array>\n"
                              "    <dict><key>Item</key><string>DeviceName</string>"
                              "          <key>DeviceName</key><string>Lab 1</string></dict>\n"
                              "    <dict><key>Item</key><string>Bluetooth</string>"
                              "          <key>Enabled</key><string>yes</string></dict>\n"
                              "    <dict><key>Item</key><string>Teleport</string></dict>\n"
                              "  </array>\n"
                              "</dict></dict></plist>\n";

static void test_plist_input(void **state)
{
    (void)state;
    char err[2048];
    cli_command_t *c = cli_command_new(false);
    assert_int_equal(cli_command_load_plist_mem(c, s_whole, strlen(s_whole), err, sizeof err), 0);
    assert_string_equal(cli_command_uuid(c), "0001-XYZ");
    assert_int_equal(cli_command_set_type(c, NULL, err, sizeof err), 0);
    assert_string_equal(cli_command_type(c), "Settings");
    assert_int_equal(cli_command_validate(c, err, sizeof err), -1);
    //  item 1: wrong type; item 2: unknown shape; item 0 is fine
    assert_null(strstr(err, "Settings[0]"));
    assert_non_null(strstr(err, "Settings[1].Enabled: must be a boolean, not a string"));
    assert_non_null(strstr(err, "Settings[2]: must be a dictionary whose Item is one of"));
    //  the command line may not contradict the file
    assert_int_equal(cli_command_set_type(c, "DeviceLock", err, sizeof err), -1);
    assert_non_null(strstr(err, "plist says RequestType Settings"));
    cli_command_destroy(&c);

    c = cli_command_new(false);
    assert_int_equal(cli_command_load_plist_mem(c, "x", 1, err, sizeof err), -1);
    assert_non_null(strstr(err, "not a property list"));
    assert_int_equal(cli_command_load_plist_mem(c, "<plist><array/></plist>", 23, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "dictionary"));
    //  deep nesting is refused before libplist sees it
    char deep[4096];
    size_t dl =
        (size_t)snprintf(deep, sizeof deep, "<?xml version=\"1.0\"?><plist><dict><key>A</key>");
    for (int i = 0; i < 200; i++)
        dl += (size_t)snprintf(deep + dl, sizeof deep - dl, "<array>");
    for (int i = 0; i < 200; i++)
        dl += (size_t)snprintf(deep + dl, sizeof deep - dl, "</array>");
    snprintf(deep + dl, sizeof deep - dl, "</dict></plist>");
    assert_int_equal(cli_command_load_plist_mem(c, deep, strlen(deep), err, sizeof err), -1);
    assert_non_null(strstr(err, "not a usable property list"));
    assert_int_equal(cli_command_load_plist(c, "/nonexistent.plist", err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot open"));
    cli_command_destroy(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_known_entries), cmocka_unit_test(test_suggest),
        cmocka_unit_test(test_convert_scalars),     cmocka_unit_test(test_convert_data),
        cmocka_unit_test(test_convert_array),       cmocka_unit_test(test_build_and_validate),
        cmocka_unit_test(test_request_type),        cmocka_unit_test(test_plist_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
