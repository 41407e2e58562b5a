/*  devsim_push_test — the push listener of bin/picomdm-devsim: the stand-in's
 *  datagram is parsed strictly (bounded, no escapes, all three members), and a
 *  real datagram on the bound socket wakes only the device whose Token,
 *  topic and PushMagic match.
 */
#include "devsim_push.h"
#include "devsim_run.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>
#include <msgpack.h>

#define TOPIC "com.apple.mgmt.External.0b5e6c1e-3c53-4a8d-9d3a-6f0c2b7a1d42"
#define TOK "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF"

//  A datagram as the stand-in packs it: a msgpack map of n str pairs
//  (kv[2i] = key, kv[2i+1] = value; a NULL value packs the integer 1 instead).
static size_t s_pack(uint8_t *out, size_t size, int n, const char *const *kv)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, (size_t)n);
    for (int i = 0; i < 2 * n; i++) {
        if (!kv[i]) {
            msgpack_pack_int(&pk, 1);
            continue;
        }
        msgpack_pack_str(&pk, strlen(kv[i]));
        msgpack_pack_str_body(&pk, kv[i], strlen(kv[i]));
    }
    assert_true(sb.size <= size);
    memcpy(out, sb.data, sb.size);
    size_t len = sb.size;
    msgpack_sbuffer_destroy(&sb);
    return len;
}

static int s_parse4(const char *tok_, const char *topic_, const char *magic_, char *tok,
                    char *topic, char *magic)
{
    const char *kv[] = {"token", tok_, "topic", topic_, "mdm", magic_, "apns_id", "x"};
    uint8_t b[1024];
    size_t len = s_pack(b, sizeof b, 4, kv);
    return devsim_push_parse(b, len, tok, topic, 128, magic, 64);
}

static void test_parse(void **state)
{
    (void)state;
    char tok[65], topic[128], magic[64];
    assert_int_equal(s_parse4(TOK, TOPIC, "ABC-1", tok, topic, magic), 0);
    assert_string_equal(tok, "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
    assert_string_equal(topic, TOPIC);
    assert_string_equal(magic, "ABC-1");
    //  members in another order, no apns_id
    const char *kv[] = {"mdm", "m", "topic", "t", "token", TOK};
    uint8_t b[1024];
    size_t len = s_pack(b, sizeof b, 3, kv);
    assert_int_equal(devsim_push_parse(b, len, tok, topic, 128, magic, 64), 0);
    assert_string_equal(magic, "m");
    //  refused: no mdm, short token, not hex, a value that is not str
    const char *nomdm[] = {"token", TOK, "topic", "t"};
    len = s_pack(b, sizeof b, 2, nomdm);
    assert_int_equal(devsim_push_parse(b, len, tok, topic, 128, magic, 64), -1);
    assert_int_equal(s_parse4("abc", "t", "m", tok, topic, magic), -1);
    assert_int_equal(s_parse4("zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
                              "t", "m", tok, topic, magic),
                     -1);
    assert_int_equal(s_parse4(TOK, "t", NULL, tok, topic, magic), -1);
    //  truncated, trailing bytes, empty, not msgpack at all (the old JSON)
    len = s_pack(b, sizeof b, 3, kv);
    assert_int_equal(devsim_push_parse(b, len - 1, tok, topic, 128, magic, 64), -1);
    b[len] = 0xc0;
    assert_int_equal(devsim_push_parse(b, len + 1, tok, topic, 128, magic, 64), -1);
    assert_int_equal(devsim_push_parse(b, 0, tok, topic, 128, magic, 64), -1);
    const char *json = "{\"token\":\"" TOK "\",\"topic\":\"t\",\"mdm\":\"m\"}";
    assert_int_equal(
        devsim_push_parse((const uint8_t *)json, strlen(json), tok, topic, 128, magic, 64), -1);
    //  a map of maps (nesting) and a huge announced count are refused by the bounds
    const uint8_t nested[] = {0x81, 0xa1, 'a', 0x81, 0xa1, 'b', 0xa1, 'c'};
    assert_int_equal(devsim_push_parse(nested, sizeof nested, tok, topic, 128, magic, 64), -1);
    const uint8_t huge[] = {0xdf, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(devsim_push_parse(huge, sizeof huge, tok, topic, 128, magic, 64), -1);
    //  a value longer than its buffer is refused, not truncated
    char longmagic[101];
    memset(longmagic, 'A', 100);
    longmagic[100] = 0;
    assert_int_equal(s_parse4(TOK, "t", longmagic, tok, topic, magic), -1);
}

static void s_hex(const unsigned char *b, char *out)
{
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

static void s_send(const char *path, const uint8_t *msg, size_t len)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    assert_true(sendto(fd, msg, len, 0, (struct sockaddr *)&sa, sizeof sa) >= 0);
    close(fd);
}

static void s_send_push(const char *path, const char *tok, const char *topic, const char *magic)
{
    const char *kv[] = {"token", tok, "topic", topic, "mdm", magic, "apns_id", "1"};
    uint8_t b[1024];
    s_send(path, b, s_pack(b, sizeof b, 4, kv));
}

static void test_listener(void **state)
{
    (void)state;
    char dir[] = "/tmp/devsim_push_test.XXXXXX", path[128], err[256], hex[65];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/push.sock", dir);
    devsim_dev_t *devs[2] = {devsim_dev_new(DEVSIM_IPHONE, 0, 7, TOPIC),
                             devsim_dev_new(DEVSIM_IPHONE, 1, 7, TOPIC)};
    devs[0]->enrolled = devs[1]->enrolled = true;
    //  a run that never connects anywhere: wakes are only queued here
    devsim_run_opts_t ro = {.url = "https://127.0.0.1:1", .concurrency = 1};
    devsim_run_t *run = devsim_run_new(&ro, devs, 2);
    assert_non_null(run);
    devsim_push_t *p = devsim_push_new(path, devs, 2, run, err, sizeof err);
    assert_non_null(p);
    assert_true(devsim_push_fd(p) >= 0);

    s_hex(devs[1]->token, hex);
    s_send_push(path, hex, TOPIC, devs[1]->push_magic);   //  wakes device 1
    s_send_push(path, hex, TOPIC, "WRONG");               //  wrong PushMagic: ignored
    s_send_push(path, hex, "other", devs[1]->push_magic); //  wrong topic: ignored
    char other[65];
    snprintf(other, sizeof other, "%064x", 5);
    s_send_push(path, other, TOPIC, "x"); //  unknown token: ignored
    s_send(path, (const uint8_t *)"garbage", 7);
    devsim_push_on_ready(p);
    long rx, woken, ignored;
    devsim_push_counts(p, &rx, &woken, &ignored);
    assert_int_equal(rx, 5);
    assert_int_equal(woken, 1);
    assert_int_equal(ignored, 4);
    devsim_push_on_ready(p); //  nothing waiting: returns at once
    devsim_push_counts(p, &rx, &woken, &ignored);
    assert_int_equal(rx, 5);

    devsim_push_destroy(&p);
    devsim_push_destroy(&p);                  //  safe twice
    assert_int_equal(access(path, F_OK), -1); //  socket file removed
    //  a path that cannot be bound says why
    assert_null(devsim_push_new("/nonexistent-dir/x.sock", devs, 2, run, err, sizeof err));
    assert_non_null(strstr(err, "cannot bind"));
    devsim_run_destroy(&run);
    devsim_dev_destroy(&devs[0]);
    devsim_dev_destroy(&devs[1]);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_listener),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
