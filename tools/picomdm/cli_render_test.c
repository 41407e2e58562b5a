/*  cli_render_test — `picomdm results` text: key: value lines, nesting,
 *  ErrorChain, data and times. */
#include "cli_render.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static void s_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

//  An Error result as a device sends it, with an ErrorChain.
static void s_pack_result(msgpack_sbuffer *sb)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 6);
    s_str(&pk, "CommandUUID");
    s_str(&pk, "0001");
    s_str(&pk, "Status");
    s_str(&pk, "Error");
    s_str(&pk, "ErrorChain");
    msgpack_pack_array(&pk, 2);
    msgpack_pack_map(&pk, 4);
    s_str(&pk, "ErrorDomain");
    s_str(&pk, "MCProfileErrorDomain");
    s_str(&pk, "ErrorCode");
    msgpack_pack_int(&pk, 1009);
    s_str(&pk, "LocalizedDescription");
    s_str(&pk, "The profile is malformed.");
    s_str(&pk, "USEnglishDescription");
    s_str(&pk, "The profile is malformed.");
    msgpack_pack_map(&pk, 3);
    s_str(&pk, "ErrorDomain");
    s_str(&pk, "MDMErrorDomain");
    s_str(&pk, "ErrorCode");
    msgpack_pack_int(&pk, 12021);
    s_str(&pk, "LocalizedDescription");
    s_str(&pk, "Profil ungültig\n");
    s_str(&pk, "QueryResponses");
    msgpack_pack_map(&pk, 3);
    s_str(&pk, "Queries");
    msgpack_pack_array(&pk, 2);
    s_str(&pk, "UDID");
    s_str(&pk, "OSVersion");
    s_str(&pk, "IsSupervised");
    msgpack_pack_true(&pk);
    s_str(&pk, "LastCloudBackupDate");
    //  timestamp ext, 4-byte form: 2023-11-14T22:13:20Z = 1700000000
    char ts[4] = {0x65, 0x53, (char)0xf1, 0x00};
    msgpack_pack_ext(&pk, 4, -1);
    msgpack_pack_ext_body(&pk, ts, 4);
    s_str(&pk, "Token");
    msgpack_pack_bin(&pk, 3);
    msgpack_pack_bin_body(&pk, "\x01\xab\xff", 3);
    s_str(&pk, "received");
    msgpack_pack_uint64(&pk, 1700000000123ULL);
}

static void test_render_result(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    s_pack_result(&sb);
    msgpack_zone zone;
    msgpack_zone_init(&zone, 2048);
    msgpack_object obj;
    assert_int_equal(msgpack_unpack(sb.data, sb.size, NULL, &zone, &obj), MSGPACK_UNPACK_SUCCESS);
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    const char *skip[] = {"CommandUUID", NULL};
    cli_render_map(out, &obj, 2, skip);
    fclose(out);
    assert_null(strstr(text, "CommandUUID"));
    assert_non_null(strstr(text, "  Status: Error\n"));
    assert_non_null(strstr(text, "  ErrorChain:\n"
                                 "    1. MCProfileErrorDomain 1009: The profile is malformed.\n"
                                 "    2. MDMErrorDomain 12021: Profil ungültig?\n"));
    assert_non_null(strstr(text, "  QueryResponses:\n    Queries: [UDID, OSVersion]\n"
                                 "    IsSupervised: true\n"
                                 "    LastCloudBackupDate: 2023-11-14T22:13:20Z\n"));
    assert_non_null(strstr(text, "  Token: 01abff (3 bytes)\n"));
    assert_non_null(strstr(text, "  received: 2023-11-14T22:13:20.123Z\n"));
    free(text);

    const msgpack_object *st = cli_map_get(&obj, "Status");
    assert_non_null(st);
    assert_null(cli_map_get(&obj, "Nope"));
    assert_null(cli_map_get(st, "Status")); //  not a map
    msgpack_zone_destroy(&zone);
    msgpack_sbuffer_destroy(&sb);
}

static void test_scalars(void **state)
{
    (void)state;
    char buf[64];
    msgpack_object o;
    memset(&o, 0, sizeof o);
    assert_string_equal(cli_render_scalar(NULL, NULL, buf, sizeof buf), "-");
    o.type = MSGPACK_OBJECT_POSITIVE_INTEGER;
    o.via.u64 = 1700000000000ULL;
    assert_string_equal(cli_render_scalar("created", &o, buf, sizeof buf), "2023-11-14T22:13:20Z");
    assert_string_equal(cli_render_scalar("priority", &o, buf, sizeof buf), "1700000000000");
    o.via.u64 = 0;
    assert_string_equal(cli_render_scalar("expires", &o, buf, sizeof buf), "-");
    o.type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
    o.via.i64 = -5;
    assert_string_equal(cli_render_scalar(NULL, &o, buf, sizeof buf), "-5");
    o.type = MSGPACK_OBJECT_BIN;
    o.via.bin.size = 100;
    o.via.bin.ptr = "";
    assert_string_equal(cli_render_scalar(NULL, &o, buf, sizeof buf), "<data, 100 bytes>");
    //  a long string is cut to the buffer
    o.type = MSGPACK_OBJECT_STR;
    o.via.str.ptr = "0123456789";
    o.via.str.size = 10;
    assert_string_equal(cli_render_scalar(NULL, &o, buf, 5), "0123");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_result),
        cmocka_unit_test(test_scalars),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
