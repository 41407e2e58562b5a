/*  cli_audit_test — the auditor's file handling without a bus: the line
 *  format, resuming from the last line, a torn tail cut off, duplicates
 *  skipped, gaps refused, replayed rows rendered like live events, SIGHUP-style
 *  reopen. (The bus side: tests/it/audit_complete.sh.) */
#include "cli_audit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

static char s_dir[] = "/tmp/cli_audit_test.XXXXXX";
static char s_path[256];

static int s_setup(void **state)
{
    (void)state;
    if (!mkdtemp(s_dir))
        return -1;
    snprintf(s_path, sizeof s_path, "%s/audit.jsonl", s_dir);
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    unlink(s_path);
    char moved[300];
    snprintf(moved, sizeof moved, "%s.1", s_path);
    unlink(moved);
    rmdir(s_dir);
    return 0;
}

static char *s_slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

//  {"k": "v"} as a msgpack object (zone-backed).
static msgpack_object s_map(msgpack_sbuffer *sb, msgpack_zone *zone)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str(&pk, 1);
    msgpack_pack_str_body(&pk, "k", 1);
    msgpack_pack_str(&pk, 1);
    msgpack_pack_str_body(&pk, "v", 1);
    msgpack_object obj;
    size_t off = 0;
    msgpack_unpack(sb->data, sb->size, &off, zone, &obj);
    return obj;
}

static void test_render_and_seq(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_zone zone;
    msgpack_zone_init(&zone, 256);
    msgpack_object data = s_map(&sb, &zone);
    size_t len = 0;
    char *line =
        cli_audit_render(42, 1700000000000ULL, "command.queued", "dev\"1", NULL, &data, &len);
    assert_non_null(line);
    assert_string_equal(line,
                        "{\"seq\":42,\"ts\":1700000000000,\"name\":\"command.queued\","
                        "\"eid\":\"dev\\\"1\",\"source\":\"store\",\"data\":{\"k\":\"v\"}}\n");
    assert_int_equal(len, strlen(line));
    uint64_t seq = 0;
    assert_int_equal(cli_audit_line_seq(line, len, &seq), 0);
    assert_int_equal(seq, 42);
    free(line);
    line = cli_audit_render(7, 1, "x", NULL, "gateway", NULL, NULL);
    assert_string_equal(line,
                        "{\"seq\":7,\"ts\":1,\"name\":\"x\",\"source\":\"gateway\",\"data\":{}}\n");
    free(line);
    assert_int_equal(cli_audit_line_seq("{\"seq\":,", 8, &seq), -1);
    assert_int_equal(cli_audit_line_seq("{\"seq\":12", 9, &seq), -1);
    assert_int_equal(cli_audit_line_seq("{\"name\":1,", 10, &seq), -1);
    assert_int_equal(cli_audit_line_seq("{\"seq\":99999999999999999999,", 29, &seq), -1);
    msgpack_zone_destroy(&zone);
    msgpack_sbuffer_destroy(&sb);
}

static void test_write_resume_torn(void **state)
{
    (void)state;
    unlink(s_path);
    cli_audit_t *a = cli_audit_new(s_path, 0);
    assert_non_null(a);
    assert_int_equal(cli_audit_last(a), 0);
    assert_int_equal(cli_audit_write(a, 2, 0, "e", NULL, NULL, NULL), CLI_AUDIT_GAP);
    assert_int_equal(cli_audit_write(a, 1, 10, "e1", "d", NULL, NULL), CLI_AUDIT_WRITTEN);
    assert_int_equal(cli_audit_write(a, 1, 10, "e1", "d", NULL, NULL), CLI_AUDIT_DUPLICATE);
    assert_int_equal(cli_audit_write(a, 2, 20, "e2", NULL, NULL, NULL), CLI_AUDIT_WRITTEN);
    assert_int_equal(cli_audit_last(a), 2);
    cli_audit_destroy(&a);
    cli_audit_destroy(&a); //  safe twice
    assert_null(a);

    //  resume from the last line
    a = cli_audit_new(s_path, 100); //  `after` only applies to an empty file
    assert_non_null(a);
    assert_int_equal(cli_audit_last(a), 2);
    cli_audit_destroy(&a);

    //  a torn tail (crash mid-write) is cut off, then written again
    FILE *f = fopen(s_path, "ab");
    fputs("{\"seq\":3,\"ts\":3", f);
    fclose(f);
    a = cli_audit_new(s_path, 0);
    assert_non_null(a);
    assert_int_equal(cli_audit_last(a), 2);
    assert_int_equal(cli_audit_write(a, 3, 30, "e3", NULL, NULL, NULL), CLI_AUDIT_WRITTEN);
    cli_audit_destroy(&a);
    const char *text = s_slurp(s_path);
    assert_string_equal(text,
                        "{\"seq\":1,\"ts\":10,\"name\":\"e1\",\"eid\":\"d\",\"source\":\"store\","
                        "\"data\":{}}\n"
                        "{\"seq\":2,\"ts\":20,\"name\":\"e2\",\"source\":\"store\",\"data\":{}}\n"
                        "{\"seq\":3,\"ts\":30,\"name\":\"e3\",\"source\":\"store\",\"data\":{}}\n");

    //  a file that is not an audit file is refused, not appended to
    f = fopen(s_path, "wb");
    fputs("hello\n", f);
    fclose(f);
    assert_null(cli_audit_new(s_path, 0));
    //  an empty file starts at `after`
    f = fopen(s_path, "wb");
    fclose(f);
    a = cli_audit_new(s_path, 5);
    assert_int_equal(cli_audit_last(a), 5);
    cli_audit_destroy(&a);
}

//  A row of an events.reply renders exactly like the live event.
static void test_row_equals_live(void **state)
{
    (void)state;
    unlink(s_path);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 6);
    msgpack_pack_str_with_body(&pk, "seq", 3);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_str_with_body(&pk, "ts", 2);
    msgpack_pack_uint64(&pk, 99);
    msgpack_pack_str_with_body(&pk, "name", 4);
    msgpack_pack_str_with_body(&pk, "command.result", 14);
    msgpack_pack_str_with_body(&pk, "eid", 3);
    msgpack_pack_nil(&pk); //  the log stores a missing eid as NULL
    msgpack_pack_str_with_body(&pk, "source", 6);
    msgpack_pack_str_with_body(&pk, "store", 5);
    msgpack_pack_str_with_body(&pk, "data", 4);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "k", 1);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_zone zone;
    msgpack_zone_init(&zone, 256);
    msgpack_object row;
    size_t off = 0;
    assert_int_equal(msgpack_unpack(sb.data, sb.size, &off, &zone, &row), MSGPACK_UNPACK_SUCCESS);

    cli_audit_t *a = cli_audit_new(s_path, 0);
    assert_int_equal(cli_audit_write_row(a, &row), CLI_AUDIT_WRITTEN);
    cli_audit_destroy(&a);
    char *from_row = strdup(s_slurp(s_path));

    msgpack_sbuffer sb2;
    msgpack_sbuffer_init(&sb2);
    msgpack_object data = s_map(&sb2, &zone);
    char *live = cli_audit_render(1, 99, "command.result", NULL, "store", &data, NULL);
    assert_string_equal(from_row, live);
    free(live);
    free(from_row);

    //  malformed rows are refused
    msgpack_object bad = row;
    bad.type = MSGPACK_OBJECT_ARRAY;
    bad.via.array.size = 0;
    a = cli_audit_new(s_path, 0);
    assert_int_equal(cli_audit_write_row(a, &bad), CLI_AUDIT_ERROR);
    cli_audit_destroy(&a);
    msgpack_zone_destroy(&zone);
    msgpack_sbuffer_destroy(&sb);
    msgpack_sbuffer_destroy(&sb2);
}

//  Rotation: the file is moved away, reopen continues in a new file.
static void test_reopen(void **state)
{
    (void)state;
    unlink(s_path);
    char moved[300];
    snprintf(moved, sizeof moved, "%s.1", s_path);
    cli_audit_t *a = cli_audit_new(s_path, 0);
    assert_int_equal(cli_audit_write(a, 1, 1, "a", NULL, NULL, NULL), CLI_AUDIT_WRITTEN);
    assert_int_equal(rename(s_path, moved), 0);
    assert_int_equal(cli_audit_write(a, 2, 2, "b", NULL, NULL, NULL), CLI_AUDIT_WRITTEN);
    assert_int_equal(cli_audit_reopen(a), 0);
    assert_int_equal(cli_audit_write(a, 3, 3, "c", NULL, NULL, NULL), CLI_AUDIT_WRITTEN);
    cli_audit_destroy(&a);
    assert_non_null(strstr(s_slurp(moved), "\"seq\":2,"));
    const char *now = s_slurp(s_path);
    assert_int_equal(strncmp(now, "{\"seq\":3,", 9), 0);
    assert_string_equal(strchr(now, '\n'), "\n"); //  exactly one line
    unlink(moved);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_and_seq), cmocka_unit_test(test_write_resume_torn),
        cmocka_unit_test(test_row_equals_live), cmocka_unit_test(test_reopen)};
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
