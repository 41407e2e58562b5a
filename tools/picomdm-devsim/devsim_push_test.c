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

#define TOPIC "com.apple.mgmt.External.0b5e6c1e-3c53-4a8d-9d3a-6f0c2b7a1d42"
#define TOK "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF"

static int s_parse(const char *s, char *tok, char *topic, char *magic)
{
    return devsim_push_parse(s, strlen(s), tok, topic, 128, magic, 64);
}

static void test_parse(void **state)
{
    (void)state;
    char tok[65], topic[128], magic[64];
    assert_int_equal(s_parse("{\"token\":\"" TOK "\",\"topic\":\"" TOPIC
                             "\",\"mdm\":\"ABC-1\",\"apns_id\":\"x\"}",
                             tok, topic, magic),
                     0);
    assert_string_equal(tok, "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
    assert_string_equal(topic, TOPIC);
    assert_string_equal(magic, "ABC-1");
    assert_int_equal(s_parse(" { \"mdm\" : \"m\" , \"topic\":\"t\", \"token\":\"" TOK "\" }\n", tok,
                             topic, magic),
                     0);
    const char *bad[] = {
        "",
        "{}",
        "{\"token\":\"" TOK "\",\"topic\":\"t\"}",                        //  no mdm
        "{\"token\":\"abc\",\"topic\":\"t\",\"mdm\":\"m\"}",              //  short token
        "{\"token\":\"" TOK "\",\"topic\":\"t\",\"mdm\":\"m\\\"\"}",      //  escape
        "{\"token\":\"" TOK "\",\"topic\":\"t\",\"mdm\":\"m\"} trailing", //  trailing data
        "{\"token\":\"" TOK "\",\"topic\":\"t\",\"mdm\":\"m\"",           //  truncated
        "{\"token\":\"" TOK "\",\"topic\":\"t\",\"mdm\":1}",              //  not a string
        "{\"token\":\"zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\","
        "\"topic\":\"t\",\"mdm\":\"m\"}", //  not hex
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(s_parse(bad[i], tok, topic, magic), -1);
    //  a value longer than its buffer is refused, not truncated
    char longmagic[200] = "{\"token\":\"" TOK "\",\"topic\":\"t\",\"mdm\":\"";
    size_t l = strlen(longmagic);
    memset(longmagic + l, 'A', 100);
    memcpy(longmagic + l + 100, "\"}", 3);
    assert_int_equal(s_parse(longmagic, tok, topic, magic), -1);
}

static void s_hex(const unsigned char *b, char *out)
{
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

static void s_send(const char *path, const char *msg)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    assert_true(sendto(fd, msg, strlen(msg), 0, (struct sockaddr *)&sa, sizeof sa) >= 0);
    close(fd);
}

static void test_listener(void **state)
{
    (void)state;
    char dir[] = "/tmp/devsim_push_test.XXXXXX", path[128], err[256], hex[65], msg[512];
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
    snprintf(msg, sizeof msg,
             "{\"token\":\"%s\",\"topic\":\"%s\",\"mdm\":\"%s\",\"apns_id\":\"1\"}", hex, TOPIC,
             devs[1]->push_magic);
    s_send(path, msg); //  wakes device 1
    snprintf(msg, sizeof msg, "{\"token\":\"%s\",\"topic\":\"%s\",\"mdm\":\"WRONG\"}", hex, TOPIC);
    s_send(path, msg); //  wrong PushMagic: ignored
    snprintf(msg, sizeof msg, "{\"token\":\"%s\",\"topic\":\"other\",\"mdm\":\"%s\"}", hex,
             devs[1]->push_magic);
    s_send(path, msg); //  wrong topic: ignored
    snprintf(msg, sizeof msg, "{\"token\":\"%064x\",\"topic\":\"%s\",\"mdm\":\"x\"}", 5, TOPIC);
    s_send(path, msg); //  unknown token: ignored
    s_send(path, "garbage");
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
