/*  pm_stats unit tests: series registry, histogram bucket edges, snapshot
 *  encode/decode round trip and the Prometheus text exposition. */
#include "pm_stats.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

static void test_registry(void **state)
{
    (void)state;
    pm_stats_t *st = pm_stats_new("gateway", "host:1", 10);
    assert_non_null(st);
    assert_string_equal(pm_stats_instance(st), "host:1");
    pm_stats_series_t *a = pm_stats_get(st, PM_STATS_COUNTER, "requests_total", "requests", "route",
                                        "checkin", "code", "200");
    pm_stats_series_t *b = pm_stats_get(st, PM_STATS_COUNTER, "requests_total", NULL, "route",
                                        "checkin", "code", "200");
    pm_stats_series_t *c = pm_stats_get(st, PM_STATS_COUNTER, "requests_total", NULL, "route",
                                        "checkin", "code", "400");
    assert_ptr_equal(a, b);
    assert_ptr_not_equal(a, c);
    pm_stats_inc(a);
    pm_stats_add(b, 4);
    assert_true(pm_stats_value(a) == 5);
    assert_true(pm_stats_value(c) == 0);
    //  another kind for the same name, bad names: refused, NULL-safe bumps
    assert_null(pm_stats_gauge(st, "requests_total", NULL));
    assert_null(pm_stats_counter(st, "Bad-Name", NULL));
    assert_null(pm_stats_get(st, PM_STATS_COUNTER, "x", NULL, "0key", "v", NULL, NULL));
    pm_stats_inc(NULL);
    pm_stats_observe_ms(NULL, 1);
    assert_null(pm_stats_counter(NULL, "x", NULL));
    //  default instance: host:pid
    pm_stats_t *d = pm_stats_new("store", NULL, 0);
    char pid[32];
    snprintf(pid, sizeof pid, ":%ld", (long)getpid());
    assert_non_null(strstr(pm_stats_instance(d), pid));
    assert_int_equal(pm_stats_next_ms(d), -1);
    pm_stats_destroy(&d);
    pm_stats_destroy(&d);
    pm_stats_destroy(&st);
    assert_null(st);
}

static void test_full(void **state)
{
    (void)state;
    pm_stats_t *st = pm_stats_new("x", "i", 0);
    char name[32];
    for (int i = 0; i < PM_STATS_MAX_SERIES; i++) {
        snprintf(name, sizeof name, "c%d", i);
        assert_non_null(pm_stats_counter(st, name, NULL));
    }
    assert_null(pm_stats_counter(st, "one_more", NULL));
    assert_non_null(pm_stats_counter(st, "c7", NULL)); //  existing ones still found
    pm_stats_destroy(&st);
}

//  The cumulative bucket counts as the snapshot carries them.
static void s_buckets(pm_msg_t *snap, const char *name, uint64_t *cum, double *sum, uint64_t *count)
{
    const msgpack_object *m = pm_msg_obj(snap, "metrics");
    assert_non_null(m);
    assert_int_equal(m->type, MSGPACK_OBJECT_ARRAY);
    for (uint32_t i = 0; i < m->via.array.size; i++) {
        const msgpack_object *o = &m->via.array.ptr[i];
        const msgpack_object *n = NULL, *b = NULL, *s = NULL, *c = NULL;
        for (uint32_t k = 0; k < o->via.map.size; k++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[k];
            if (kv->key.via.str.size != 1)
                continue;
            switch (kv->key.via.str.ptr[0]) {
            case 'n':
                n = &kv->val;
                break;
            case 'b':
                b = &kv->val;
                break;
            case 's':
                s = &kv->val;
                break;
            case 'c':
                c = &kv->val;
                break;
            default:
                break;
            }
        }
        if (!n || n->via.str.size != strlen(name) || memcmp(n->via.str.ptr, name, strlen(name)))
            continue;
        assert_non_null(b);
        assert_int_equal(b->via.array.size, PM_STATS_NBUCKETS);
        for (int j = 0; j < PM_STATS_NBUCKETS; j++)
            cum[j] = b->via.array.ptr[j].via.u64;
        *sum = s->via.f64;
        *count = c->via.u64;
        return;
    }
    fail_msg("no metric %s in the snapshot", name);
}

static void test_histogram_edges(void **state)
{
    (void)state;
    pm_stats_t *st = pm_stats_new("store", "i", 10);
    pm_stats_series_t *h = pm_stats_histogram(st, "commit_duration_seconds", "commit");
    //  on a bound: counted in that bucket (le = less or equal)
    pm_stats_observe_ms(h, 0.5);  //  bucket 0
    pm_stats_observe_ms(h, 0.51); //  bucket 1 (<= 1)
    pm_stats_observe_ms(h, 1);    //  bucket 1
    pm_stats_observe_ms(h, 1000); //  last bucket
    pm_stats_observe_ms(h, 1001); //  only +Inf
    pm_stats_observe_ms(h, -3);   //  clamped to 0: bucket 0
    pm_stats_observe_ms(h, NAN);  //  ignored
    pm_msg_t *snap = pm_stats_snapshot(st);
    assert_non_null(snap);
    uint64_t cum[PM_STATS_NBUCKETS], count = 0;
    double sum = 0;
    s_buckets(snap, "commit_duration_seconds", cum, &sum, &count);
    assert_int_equal(count, 6);
    assert_int_equal(cum[0], 2);
    assert_int_equal(cum[1], 4);
    assert_int_equal(cum[9], 4);
    assert_int_equal(cum[10], 5);
    for (int i = 1; i < PM_STATS_NBUCKETS; i++)
        assert_true(cum[i] >= cum[i - 1]);
    assert_true(fabs(sum - (0.5 + 0.51 + 1 + 1000 + 1001)) < 1e-9);
    pm_msg_destroy(&snap);
    pm_stats_destroy(&st);
}

static int s_collected;
static void s_collect(void *arg, pm_stats_t *st)
{
    (void)st;
    pm_stats_set_count(arg, 42);
    s_collected++;
}

static void test_roundtrip(void **state)
{
    (void)state;
    pm_stats_t *st = pm_stats_new("pusher", "h\"ost\\x\ny", 5);
    pm_stats_series_t *sent = pm_stats_get(st, PM_STATS_COUNTER, "pushes_total",
                                           "pushes by outcome", "outcome", "sent", NULL, NULL);
    pm_stats_get(st, PM_STATS_COUNTER, "pushes_total", NULL, "outcome", "failed", NULL, NULL);
    pm_stats_set(pm_stats_gauge(st, "in_flight", "in flight\nnow \\ here"), 3);
    pm_stats_observe_ms(pm_stats_histogram(st, "push_duration_seconds", "latency"), 7);
    pm_stats_set_collect(st, s_collect, sent);
    pm_msg_t *snap = pm_stats_snapshot(st);
    assert_int_equal(s_collected, 1);
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[200];
    assert_int_equal(pm_msg_encode(snap, &buf, &len, err, sizeof err), 0);
    const char *corpus = getenv("PM_STATS_CORPUS"); //  seed for tests/fuzz/fuzz_stats.c
    if (corpus) {
        char path[512];
        snprintf(path, sizeof path, "%s/snapshot", corpus);
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(buf, 1, len, f), len);
        fclose(f);
    }
    pm_msg_t *back = NULL;
    assert_int_equal(pm_msg_decode(buf, len, &back, err, sizeof err), 0);
    free(buf);
    assert_true(pm_msg_equal(snap, back));
    assert_int_equal(pm_msg_type(back), PM_MSG_STATS);
    assert_string_equal(pm_msg_str(back, "name"), "stats.pusher");
    assert_string_equal(pm_msg_str(back, "process"), "pusher");
    assert_int_equal(pm_msg_uint(back, "pid", 0), (uint64_t)getpid());
    assert_int_equal(pm_msg_uint(back, "interval_s", 0), 5);

    const pm_msg_t *snaps[2] = {back, NULL};
    double ages[2] = {1.5, 0};
    size_t tlen = 0;
    char *text = pm_stats_render(snaps, ages, 2, &tlen);
    assert_non_null(text);
    assert_int_equal(strlen(text), tlen);
    const char *inst = "instance=\"h\\\"ost\\\\x\\ny\"";
    char want[512];
    snprintf(want, sizeof want, "picomdm_pushes_total{process=\"pusher\",%s,outcome=\"sent\"} 42\n",
             inst);
    assert_non_null(strstr(text, want));
    snprintf(want, sizeof want,
             "picomdm_pushes_total{process=\"pusher\",%s,outcome=\"failed\"} 0\n", inst);
    assert_non_null(strstr(text, want));
    assert_non_null(strstr(text, "# HELP picomdm_in_flight in flight\\nnow \\\\ here\n"));
    assert_non_null(strstr(text, "# TYPE picomdm_pushes_total counter\n"));
    assert_non_null(strstr(text, "# TYPE picomdm_push_duration_seconds histogram\n"));
    snprintf(want, sizeof want,
             "picomdm_push_duration_seconds_bucket{process=\"pusher\",%s,le=\"0.005\"} 0\n", inst);
    assert_non_null(strstr(text, want));
    snprintf(want, sizeof want,
             "picomdm_push_duration_seconds_bucket{process=\"pusher\",%s,le=\"0.01\"} 1\n", inst);
    assert_non_null(strstr(text, want));
    snprintf(want, sizeof want,
             "picomdm_push_duration_seconds_bucket{process=\"pusher\",%s,le=\"+Inf\"} 1\n", inst);
    assert_non_null(strstr(text, want));
    snprintf(want, sizeof want, "picomdm_push_duration_seconds_sum{process=\"pusher\",%s} 0.007\n",
             inst);
    assert_non_null(strstr(text, want));
    snprintf(want, sizeof want, "picomdm_stats_age_seconds{process=\"pusher\",%s} 1.5\n", inst);
    assert_non_null(strstr(text, want));
    //  exactly one TYPE line per name
    const char *p = strstr(text, "# TYPE picomdm_pushes_total");
    assert_null(strstr(p + 1, "# TYPE picomdm_pushes_total"));
    free(text);
    pm_msg_destroy(&back);
    pm_msg_destroy(&snap);
    pm_stats_destroy(&st);
}

//  A hostile snapshot from the bus: bad names, label injection, non-cumulative buckets.
static void test_render_hostile(void **state)
{
    (void)state;
    pm_msg_t *m = pm_msg_new(PM_MSG_STATS);
    pm_msg_set_str(m, "name", "stats.evil");
    pm_msg_set_str(m, "process", "evil");
    pm_msg_set_str(m, "instance", "i");
    pm_msg_set_uint(m, "pid", 1);
    pm_msg_set_uint(m, "uptime_ms", 2000);
    pm_msg_set_uint(m, "interval_s", 1);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_double(&pk, 1);
    msgpack_pack_double(&pk, 2);
    pm_msg_set_packed(m, "buckets_ms", (const uint8_t *)sb.data, sb.size);
    msgpack_sbuffer_clear(&sb);
    msgpack_pack_array(&pk, 5);
    //  1: bad name
    msgpack_pack_map(&pk, 3);
    msgpack_pack_str_with_body(&pk, "n", 1);
    msgpack_pack_str_with_body(&pk, "x} 1\nfoo", 8);
    msgpack_pack_str_with_body(&pk, "k", 1);
    msgpack_pack_str_with_body(&pk, "gauge", 5);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_pack_uint64(&pk, 1);
    //  2: label key "le" (reserved)
    msgpack_pack_map(&pk, 4);
    msgpack_pack_str_with_body(&pk, "n", 1);
    msgpack_pack_str_with_body(&pk, "ok", 2);
    msgpack_pack_str_with_body(&pk, "k", 1);
    msgpack_pack_str_with_body(&pk, "gauge", 5);
    msgpack_pack_str_with_body(&pk, "l", 1);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "le", 2);
    msgpack_pack_str_with_body(&pk, "1", 1);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_pack_uint64(&pk, 1);
    //  3: histogram with decreasing buckets
    msgpack_pack_map(&pk, 5);
    msgpack_pack_str_with_body(&pk, "n", 1);
    msgpack_pack_str_with_body(&pk, "h", 1);
    msgpack_pack_str_with_body(&pk, "k", 1);
    msgpack_pack_str_with_body(&pk, "histogram", 9);
    msgpack_pack_str_with_body(&pk, "b", 1);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_uint64(&pk, 5);
    msgpack_pack_uint64(&pk, 3);
    msgpack_pack_str_with_body(&pk, "s", 1);
    msgpack_pack_double(&pk, 1);
    msgpack_pack_str_with_body(&pk, "c", 1);
    msgpack_pack_uint64(&pk, 5);
    //  4: fine, value with a string label holding quotes
    msgpack_pack_map(&pk, 4);
    msgpack_pack_str_with_body(&pk, "n", 1);
    msgpack_pack_str_with_body(&pk, "good", 4);
    msgpack_pack_str_with_body(&pk, "k", 1);
    msgpack_pack_str_with_body(&pk, "counter", 7);
    msgpack_pack_str_with_body(&pk, "l", 1);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "a", 1);
    msgpack_pack_str_with_body(&pk, "\"}", 2);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_pack_uint64(&pk, 9);
    //  5: a label key twice (Prometheus would reject the whole scrape)
    msgpack_pack_map(&pk, 4);
    msgpack_pack_str_with_body(&pk, "n", 1);
    msgpack_pack_str_with_body(&pk, "twice", 5);
    msgpack_pack_str_with_body(&pk, "k", 1);
    msgpack_pack_str_with_body(&pk, "gauge", 5);
    msgpack_pack_str_with_body(&pk, "l", 1);
    msgpack_pack_map(&pk, 2);
    msgpack_pack_str_with_body(&pk, "route", 5);
    msgpack_pack_str_with_body(&pk, "a", 1);
    msgpack_pack_str_with_body(&pk, "route", 5);
    msgpack_pack_str_with_body(&pk, "b", 1);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_pack_uint64(&pk, 1);
    pm_msg_set_packed(m, "metrics", (const uint8_t *)sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    const pm_msg_t *snaps[1] = {m};
    char *text = pm_stats_render(snaps, NULL, 1, NULL);
    assert_non_null(text);
    assert_null(strstr(text, "foo"));
    assert_null(strstr(text, "picomdm_ok"));
    assert_null(strstr(text, "picomdm_h_"));
    assert_null(strstr(text, "route=\"b\""));
    assert_non_null(strstr(text, "picomdm_good{process=\"evil\",instance=\"i\",a=\"\\\"}\"} 9\n"));
    assert_non_null(strstr(text, "picomdm_uptime_seconds{process=\"evil\",instance=\"i\"} 2\n"));
    free(text);
    pm_msg_destroy(&m);
}

static void test_tick(void **state)
{
    (void)state;
    pm_stats_t *st = pm_stats_new("x", "i", 1);
    assert_true(pm_stats_next_ms(st) >= 0);
    assert_true(pm_stats_next_ms(st) <= 1001);
    assert_int_equal(pm_stats_tick(st, NULL), 0); //  no bus: nothing
    pm_stats_destroy(&st);
}

static void test_board(void **state)
{
    (void)state;
    pm_stats_t *a = pm_stats_new("store", "h:1", 0), *a2 = pm_stats_new("store", "h:1", 0);
    pm_stats_t *b = pm_stats_new("ca", "h:2", 0), *c = pm_stats_new("pusher", "h:3", 0);
    pm_stats_inc(pm_stats_counter(a, "store_ops_total", "ops"));
    pm_stats_add(pm_stats_counter(a2, "store_ops_total", "ops"), 7);
    pm_msg_t *sa = pm_stats_snapshot(a), *sa2 = pm_stats_snapshot(a2);
    pm_msg_t *sb = pm_stats_snapshot(b), *sc = pm_stats_snapshot(c);
    pm_msg_t *ev = pm_msg_new(PM_MSG_EVENT);
    pm_msg_set_str(ev, "name", "stats.fake");
    pm_stats_board_t *board = pm_stats_board_new(2);
    assert_int_equal(pm_stats_board_put(board, sa), 0);
    assert_int_equal(pm_stats_board_put(board, sa2), 0); //  same process+instance: replaced
    assert_int_equal(pm_stats_board_count(board), 1);
    assert_int_equal(pm_stats_board_put(board, ev), -1); //  not a stats message
    assert_int_equal(pm_stats_board_put(board, sb), 0);
    assert_int_equal(pm_stats_board_put(board, sc), -1); //  full
    pm_msg_destroy(&sa2);                                //  the board keeps its own copy
    char *text = pm_stats_board_render(board, sc, NULL);
    assert_non_null(text);
    assert_non_null(
        strstr(text, "picomdm_store_ops_total{process=\"store\",instance=\"h:1\"} 7\n"));
    assert_non_null(strstr(text, "picomdm_stats_age_seconds{process=\"ca\",instance=\"h:2\"} "));
    assert_non_null(
        strstr(text, "picomdm_stats_age_seconds{process=\"pusher\",instance=\"h:3\"} 0\n"));
    free(text);
    pm_stats_board_expire(board, 3600);
    assert_int_equal(pm_stats_board_count(board), 2);
    pm_stats_board_expire(board, 0); //  interval 0: kept max(0, 0) s
    assert_int_equal(pm_stats_board_count(board), 0);
    pm_stats_board_destroy(&board);
    pm_stats_board_destroy(&board);
    pm_msg_destroy(&ev);
    pm_msg_destroy(&sa);
    pm_msg_destroy(&sb);
    pm_msg_destroy(&sc);
    pm_stats_destroy(&a);
    pm_stats_destroy(&a2);
    pm_stats_destroy(&b);
    pm_stats_destroy(&c);
}

//  What a bump costs on the hot path, and a snapshot + render of a busy
//  registry (printed, not asserted: the machine is shared).
static void test_timing(void **state)
{
    (void)state;
    pm_stats_t *st = pm_stats_new("gateway", "i", 10);
    pm_stats_series_t *c = pm_stats_counter(st, "c_total", NULL);
    pm_stats_series_t *h = pm_stats_histogram(st, "h_seconds", NULL);
    char name[32];
    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof name, "g%d", i);
        pm_stats_set(pm_stats_gauge(st, name, "a gauge"), i);
    }
    const int n = 5000000;
    double t0 = pm_stats_now_ms();
    for (int i = 0; i < n; i++)
        pm_stats_inc(c);
    double t1 = pm_stats_now_ms();
    for (int i = 0; i < n; i++)
        pm_stats_observe_ms(h, (double)(i % 2000));
    double t2 = pm_stats_now_ms();
    assert_true(pm_stats_value(c) == n);
    const int m = 200;
    size_t len = 0;
    for (int i = 0; i < m; i++) {
        pm_msg_t *snap = pm_stats_snapshot(st);
        const pm_msg_t *one[1] = {snap};
        char *text = pm_stats_render(one, NULL, 1, &len);
        assert_non_null(text);
        free(text);
        pm_msg_destroy(&snap);
    }
    double t3 = pm_stats_now_ms();
    printf("timing: inc %.1f ns, observe %.1f ns, snapshot+render of 102 series %.1f us (%zu "
           "bytes)\n",
           (t1 - t0) * 1e6 / n, (t2 - t1) * 1e6 / n, (t3 - t2) * 1e3 / m, len);
    pm_stats_destroy(&st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),        cmocka_unit_test(test_full),
        cmocka_unit_test(test_histogram_edges), cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_render_hostile),  cmocka_unit_test(test_tick),
        cmocka_unit_test(test_board),           cmocka_unit_test(test_timing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
