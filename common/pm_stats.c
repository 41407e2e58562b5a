/*  pm_stats — counters, gauges, histograms; snapshot and Prometheus text (see pm_stats.h). */
#include "pm_stats.h"
#include "pm_log.h"

#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const double pm_stats_bucket_ms[PM_STATS_NBUCKETS] = {0.5, 1,   2,   5,   10,  20,
                                                      50,  100, 250, 500, 1000};

#define S_MAX_LABELS 2
#define S_HELP_MAX 200
#define S_WIRE_BUCKETS_MAX 32 //  what the renderer accepts from another process

struct pm_stats_series {
    pm_stats_kind_t kind;
    char name[PM_STATS_NAME_MAX];
    char key[S_MAX_LABELS][PM_STATS_NAME_MAX];
    char val[S_MAX_LABELS][PM_STATS_LABEL_MAX];
    const char *help;                   //  borrowed: a string literal
    uint64_t count;                     //  counter value, histogram count
    double value;                       //  gauge value, histogram sum (ms)
    uint64_t bucket[PM_STATS_NBUCKETS]; //  per bucket, not cumulative
};

struct pm_stats {
    char process[32];
    char instance[128];
    int interval_s;
    double start_ms, next_ms, fail_logged_ms;
    pm_stats_series_t *series;
    int n;
    bool warned;
    pm_stats_collect_fn *collect;
    void *collect_arg;
};

double pm_stats_now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

double pm_stats_wall_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

pm_stats_t *pm_stats_new(const char *process, const char *instance, int interval_s)
{
    pm_stats_t *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    st->series = calloc(PM_STATS_MAX_SERIES, sizeof *st->series);
    if (!st->series) {
        free(st);
        return NULL;
    }
    snprintf(st->process, sizeof st->process, "%s", process ? process : "unknown");
    if (instance && *instance)
        snprintf(st->instance, sizeof st->instance, "%s", instance);
    else {
        char host[64] = "localhost";
        if (gethostname(host, sizeof host) < 0)
            snprintf(host, sizeof host, "localhost");
        host[sizeof host - 1] = 0;
        snprintf(st->instance, sizeof st->instance, "%s:%ld", host, (long)getpid());
    }
    st->interval_s = interval_s > 0 ? interval_s : 0;
    st->start_ms = pm_stats_now_ms();
    //  the first snapshot soon after start, so a scrape sees the process early
    st->next_ms = st->start_ms + (st->interval_s > 1 ? 1000 : st->interval_s * 1000);
    return st;
}

void pm_stats_destroy(pm_stats_t **pst)
{
    if (!pst || !*pst)
        return;
    free((*pst)->series);
    free(*pst);
    *pst = NULL;
}

int pm_stats_from_cfg(const pm_cfg_t *cfg, const char *process, pm_stats_t **out)
{
    int64_t iv = pm_cfg_int(cfg, "stats-interval-s");
    if (iv < 0 || iv > 86400) {
        pm_error("stats-interval-s must be between 0 (off) and 86400, not %lld", (long long)iv);
        return -1;
    }
    *out = pm_stats_new(process, pm_cfg_str(cfg, "stats-instance"), (int)iv);
    if (!*out) {
        pm_error("out of memory for the stats registry");
        return -1;
    }
    return 0;
}

const char *pm_stats_process(const pm_stats_t *st)
{
    return st ? st->process : NULL;
}

const char *pm_stats_instance(const pm_stats_t *st)
{
    return st ? st->instance : NULL;
}

static bool s_valid_name(const char *s)
{
    if (!s || !*s || strlen(s) >= PM_STATS_NAME_MAX)
        return false;
    for (const char *p = s; *p; p++) {
        bool ok = (*p >= 'a' && *p <= 'z') || *p == '_' || (p != s && *p >= '0' && *p <= '9');
        if (!ok)
            return false;
    }
    return true;
}

static bool s_label_eq(const pm_stats_series_t *x, int i, const char *k, const char *v)
{
    if (!k)
        return !x->key[i][0];
    if (strcmp(x->key[i], k) != 0)
        return false;
    //  compare as stored (cut to PM_STATS_LABEL_MAX - 1)
    return strncmp(x->val[i], v ? v : "", PM_STATS_LABEL_MAX - 1) == 0 &&
           strlen(x->val[i]) == strnlen(v ? v : "", PM_STATS_LABEL_MAX - 1);
}

pm_stats_series_t *pm_stats_get(pm_stats_t *st, pm_stats_kind_t kind, const char *name,
                                const char *help, const char *k1, const char *v1, const char *k2,
                                const char *v2)
{
    if (!st)
        return NULL;
    if (!s_valid_name(name) || (k1 && !s_valid_name(k1)) || (k2 && !s_valid_name(k2)) ||
        (k2 && !k1) || kind < PM_STATS_COUNTER || kind > PM_STATS_HISTOGRAM) {
        pm_error("stats: bad metric '%s' (names and label keys are [a-z_][a-z0-9_]*); not counted",
                 name ? name : "(null)");
        return NULL;
    }
    for (int i = 0; i < st->n; i++) {
        pm_stats_series_t *x = &st->series[i];
        if (strcmp(x->name, name) != 0)
            continue;
        if (x->kind != kind) {
            pm_error("stats: '%s' registered twice with different kinds; not counted", name);
            return NULL;
        }
        if (s_label_eq(x, 0, k1, v1) && s_label_eq(x, 1, k2, v2))
            return x;
    }
    if (st->n == PM_STATS_MAX_SERIES) {
        if (!st->warned)
            pm_warn("stats: more than %d series; '%s' and later ones are not counted",
                    PM_STATS_MAX_SERIES, name);
        st->warned = true;
        return NULL;
    }
    pm_stats_series_t *x = &st->series[st->n++];
    x->kind = kind;
    snprintf(x->name, sizeof x->name, "%s", name);
    x->help = help;
    const char *k[2] = {k1, k2}, *v[2] = {v1, v2};
    for (int i = 0; i < S_MAX_LABELS; i++)
        if (k[i]) {
            snprintf(x->key[i], sizeof x->key[i], "%s", k[i]);
            snprintf(x->val[i], sizeof x->val[i], "%s", v[i] ? v[i] : "");
        }
    return x;
}

pm_stats_series_t *pm_stats_counter(pm_stats_t *st, const char *name, const char *help)
{
    return pm_stats_get(st, PM_STATS_COUNTER, name, help, NULL, NULL, NULL, NULL);
}

pm_stats_series_t *pm_stats_gauge(pm_stats_t *st, const char *name, const char *help)
{
    return pm_stats_get(st, PM_STATS_GAUGE, name, help, NULL, NULL, NULL, NULL);
}

pm_stats_series_t *pm_stats_histogram(pm_stats_t *st, const char *name, const char *help)
{
    return pm_stats_get(st, PM_STATS_HISTOGRAM, name, help, NULL, NULL, NULL, NULL);
}

void pm_stats_inc(pm_stats_series_t *s)
{
    if (s)
        s->count++;
}

void pm_stats_add(pm_stats_series_t *s, uint64_t n)
{
    if (s)
        s->count += n;
}

void pm_stats_set_count(pm_stats_series_t *s, uint64_t n)
{
    if (s)
        s->count = n;
}

void pm_stats_set(pm_stats_series_t *s, double v)
{
    if (s)
        s->value = v;
}

void pm_stats_observe_ms(pm_stats_series_t *s, double ms)
{
    if (!s || s->kind != PM_STATS_HISTOGRAM || isnan(ms))
        return;
    if (ms < 0)
        ms = 0;
    s->count++;
    s->value += ms;
    for (int i = 0; i < PM_STATS_NBUCKETS; i++)
        if (ms <= pm_stats_bucket_ms[i]) {
            s->bucket[i]++;
            break;
        }
}

double pm_stats_value(const pm_stats_series_t *s)
{
    if (!s)
        return 0;
    return s->kind == PM_STATS_GAUGE ? s->value : (double)s->count;
}

void pm_stats_set_collect(pm_stats_t *st, pm_stats_collect_fn *fn, void *arg)
{
    if (!st)
        return;
    st->collect = fn;
    st->collect_arg = arg;
}

/* ---- snapshot ---- */

static void s_pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void s_pack_series(msgpack_packer *pk, const pm_stats_series_t *x)
{
    int nl = (x->key[0][0] != 0) + (x->key[1][0] != 0);
    bool hist = x->kind == PM_STATS_HISTOGRAM;
    msgpack_pack_map(pk, (size_t)(3 + (x->help ? 1 : 0) + (hist ? 3 : 1)));
    s_pack_str(pk, "n");
    s_pack_str(pk, x->name);
    s_pack_str(pk, "k");
    s_pack_str(pk, x->kind == PM_STATS_COUNTER ? "counter"
                   : x->kind == PM_STATS_GAUGE ? "gauge"
                                               : "histogram");
    if (x->help) {
        s_pack_str(pk, "h");
        s_pack_str(pk, x->help);
    }
    s_pack_str(pk, "l");
    msgpack_pack_map(pk, (size_t)nl);
    for (int i = 0; i < nl; i++) {
        s_pack_str(pk, x->key[i]);
        s_pack_str(pk, x->val[i]);
    }
    if (!hist) {
        s_pack_str(pk, "v");
        if (x->kind == PM_STATS_COUNTER)
            msgpack_pack_uint64(pk, x->count);
        else
            msgpack_pack_double(pk, x->value);
        return;
    }
    s_pack_str(pk, "b");
    msgpack_pack_array(pk, PM_STATS_NBUCKETS);
    uint64_t cum = 0;
    for (int i = 0; i < PM_STATS_NBUCKETS; i++) {
        cum += x->bucket[i];
        msgpack_pack_uint64(pk, cum);
    }
    s_pack_str(pk, "s");
    msgpack_pack_double(pk, x->value);
    s_pack_str(pk, "c");
    msgpack_pack_uint64(pk, x->count);
}

pm_msg_t *pm_stats_snapshot(pm_stats_t *st)
{
    if (!st)
        return NULL;
    if (st->collect)
        st->collect(st->collect_arg, st);
    pm_msg_t *msg = pm_msg_new(PM_MSG_STATS);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    if (!msg)
        goto fail;
    char topic[64];
    snprintf(topic, sizeof topic, "stats.%s", st->process);
    double up = pm_stats_now_ms() - st->start_ms;
    if (pm_msg_set_str(msg, "name", topic) < 0 || pm_msg_set_str(msg, "process", st->process) < 0 ||
        pm_msg_set_str(msg, "instance", st->instance) < 0 ||
        pm_msg_set_uint(msg, "pid", (uint64_t)getpid()) < 0 ||
        pm_msg_set_uint(msg, "uptime_ms", up > 0 ? (uint64_t)up : 0) < 0 ||
        pm_msg_set_uint(msg, "interval_s", (uint64_t)st->interval_s) < 0)
        goto fail;
    msgpack_pack_array(&pk, PM_STATS_NBUCKETS);
    for (int i = 0; i < PM_STATS_NBUCKETS; i++)
        msgpack_pack_double(&pk, pm_stats_bucket_ms[i]);
    if (pm_msg_set_packed(msg, "buckets_ms", (const uint8_t *)sb.data, sb.size) < 0)
        goto fail;
    msgpack_sbuffer_clear(&sb);
    msgpack_pack_array(&pk, (size_t)st->n);
    for (int i = 0; i < st->n; i++)
        s_pack_series(&pk, &st->series[i]);
    if (pm_msg_set_packed(msg, "metrics", (const uint8_t *)sb.data, sb.size) < 0)
        goto fail;
    msgpack_sbuffer_destroy(&sb);
    return msg;
fail:
    msgpack_sbuffer_destroy(&sb);
    pm_msg_destroy(&msg);
    return NULL;
}

int pm_stats_next_ms(const pm_stats_t *st)
{
    if (!st || st->interval_s == 0)
        return -1;
    double d = st->next_ms - pm_stats_now_ms();
    return d <= 0 ? 0 : d > 3600000 ? 3600000 : (int)d + 1;
}

void pm_stats_collect_bus(pm_stats_t *st, const pm_bus_t *bus)
{
    if (!st || !bus)
        return;
    pm_bus_stats_t b;
    pm_bus_stats(bus, &b);
    static const struct {
        const char *name, *help;
        size_t off;
    } f[] = {
        {"bus_requests_total", "bus calls made (client)", offsetof(pm_bus_stats_t, requests)},
        {"bus_resends_total", "bus call attempts after the first (timeouts, worker_lost)",
         offsetof(pm_bus_stats_t, resends)},
        {"bus_replies_total", "bus calls completed with a reply",
         offsetof(pm_bus_stats_t, replies)},
        {"bus_failures_total", "bus calls that failed after every retry",
         offsetof(pm_bus_stats_t, failures)},
        {"bus_jobs_total", "requests served as a worker", offsetof(pm_bus_stats_t, jobs)},
        {"bus_retried_jobs_total", "retried requests answered from the cache or dropped",
         offsetof(pm_bus_stats_t, retried_jobs)},
        {"bus_published_total", "messages published on the event plane",
         offsetof(pm_bus_stats_t, published)},
        {"bus_events_total", "events received from subscriptions",
         offsetof(pm_bus_stats_t, events)},
        {"bus_bad_frames_total", "malformed or undecodable bus input dropped",
         offsetof(pm_bus_stats_t, bad_frames)},
    };
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
        uint64_t v;
        memcpy(&v, (const char *)&b + f[i].off, sizeof v);
        pm_stats_set_count(pm_stats_counter(st, f[i].name, f[i].help), v);
    }
}

bool pm_stats_due(pm_stats_t *st)
{
    if (!st || st->interval_s == 0)
        return false;
    double now = pm_stats_now_ms();
    if (now < st->next_ms)
        return false;
    st->next_ms = now + st->interval_s * 1000.0;
    return true;
}

int pm_stats_tick(pm_stats_t *st, pm_bus_t *bus)
{
    if (!bus || !pm_stats_due(st))
        return 0;
    double now = pm_stats_now_ms();
    pm_stats_collect_bus(st, bus);
    pm_msg_t *snap = pm_stats_snapshot(st);
    int rc = snap && pm_bus_publish(bus, snap) == 0 ? 1 : -1;
    pm_msg_destroy(&snap);
    if (rc < 0 && now - st->fail_logged_ms > 60000) {
        st->fail_logged_ms = now;
        pm_warn("stats: snapshot not published (check publish-endpoint, or set "
                "stats-interval-s 0 to turn stats off)");
    }
    return rc;
}

/* ---- Prometheus text exposition ---- */

typedef struct {
    char name[PM_STATS_NAME_MAX];
    const char *kind; //  "counter", "gauge", "histogram" (static)
    const char *help; //  points into the snapshot, help_len bytes
    size_t help_len;
    char *text; //  the sample lines (malloc'd)
    size_t idx; //  input order, for a stable sort
} s_row_t;

typedef struct {
    s_row_t *rows;
    size_t n, cap;
} s_rows_t;

static const msgpack_object *s_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == kl &&
            memcmp(kv->key.via.str.ptr, key, kl) == 0)
            return &kv->val;
    }
    return NULL;
}

static bool s_num(const msgpack_object *o, double *out)
{
    if (!o)
        return false;
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        *out = (double)o->via.u64;
        return true;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *out = (double)o->via.i64;
        return true;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        *out = o->via.f64;
        return true;
    default:
        return false;
    }
}

//  A name from the wire: [a-z_][a-z0-9_]* (as registered), else false.
static bool s_wire_name(const msgpack_object *o, char *out, size_t outlen)
{
    if (!o || o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0 || o->via.str.size >= outlen)
        return false;
    memcpy(out, o->via.str.ptr, o->via.str.size);
    out[o->via.str.size] = 0;
    return s_valid_name(out);
}

static void s_put_escaped(FILE *f, const char *s, size_t n, bool quote)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\\')
            fputs("\\\\", f);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '"' && quote)
            fputs("\\\"", f);
        else if ((unsigned char)c < 0x20 || c == 0x7f)
            fputc('?', f); //  control bytes (NUL included) would break the text format
        else
            fputc(c, f);
    }
}

static void s_put_value(FILE *f, double v)
{
    if (isnan(v))
        fputs("NaN", f);
    else if (isinf(v))
        fputs(v > 0 ? "+Inf" : "-Inf", f);
    else if (v == floor(v) && fabs(v) < 1e15)
        fprintf(f, "%.0f", v);
    else
        fprintf(f, "%.9g", v);
}

//  `process="..",instance=".."` plus the series' labels (from the wire, checked).
static bool s_put_labels(FILE *f, const char *process, const char *instance,
                         const msgpack_object *labels)
{
    fputs("process=\"", f);
    s_put_escaped(f, process, strlen(process), true);
    fputs("\",instance=\"", f);
    s_put_escaped(f, instance, strlen(instance), true);
    fputc('"', f);
    if (!labels)
        return true;
    if (labels->type != MSGPACK_OBJECT_MAP || labels->via.map.size > 8)
        return false;
    for (uint32_t i = 0; i < labels->via.map.size; i++) {
        const msgpack_object_kv *kv = &labels->via.map.ptr[i];
        char key[PM_STATS_NAME_MAX];
        if (!s_wire_name(&kv->key, key, sizeof key) || kv->val.type != MSGPACK_OBJECT_STR ||
            strcmp(key, "process") == 0 || strcmp(key, "instance") == 0 || strcmp(key, "le") == 0)
            return false;
        for (uint32_t j = 0; j < i; j++) { //  a repeated label key breaks the whole scrape
            char prev[PM_STATS_NAME_MAX];
            if (s_wire_name(&labels->via.map.ptr[j].key, prev, sizeof prev) &&
                strcmp(prev, key) == 0)
                return false;
        }
        fprintf(f, ",%s=\"", key);
        s_put_escaped(f, kv->val.via.str.ptr, kv->val.via.str.size, true);
        fputc('"', f);
    }
    return true;
}

static int s_rows_add(s_rows_t *rs, const char *name, const char *kind, const char *help,
                      size_t help_len, char *text)
{
    if (rs->n == rs->cap) {
        size_t cap = rs->cap ? rs->cap * 2 : 64;
        s_row_t *r = realloc(rs->rows, cap * sizeof *r);
        if (!r)
            return -1;
        rs->rows = r;
        rs->cap = cap;
    }
    s_row_t *r = &rs->rows[rs->n];
    snprintf(r->name, sizeof r->name, "%s", name);
    r->kind = kind;
    r->help = help;
    r->help_len = help_len;
    r->text = text;
    r->idx = rs->n;
    rs->n++;
    return 0;
}

//  One metric of a snapshot as sample lines. NULL if malformed (skipped).
static char *s_render_metric(const msgpack_object *m, const char *process, const char *instance,
                             const double *les, size_t nles, char *name, const char **kind,
                             const char **help, size_t *help_len)
{
    const msgpack_object *k = s_get(m, "k"), *h = s_get(m, "h"), *l = s_get(m, "l");
    if (!s_wire_name(s_get(m, "n"), name, PM_STATS_NAME_MAX) || !k || k->type != MSGPACK_OBJECT_STR)
        return NULL;
    if (k->via.str.size == 7 && memcmp(k->via.str.ptr, "counter", 7) == 0)
        *kind = "counter";
    else if (k->via.str.size == 5 && memcmp(k->via.str.ptr, "gauge", 5) == 0)
        *kind = "gauge";
    else if (k->via.str.size == 9 && memcmp(k->via.str.ptr, "histogram", 9) == 0)
        *kind = "histogram";
    else
        return NULL;
    *help = NULL;
    *help_len = 0;
    if (h && h->type == MSGPACK_OBJECT_STR) {
        *help = h->via.str.ptr;
        *help_len = h->via.str.size;
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    bool ok = true;
    if (**kind != 'h') {
        double v;
        ok = s_num(s_get(m, "v"), &v);
        if (ok) {
            fprintf(f, "picomdm_%s{", name);
            ok = s_put_labels(f, process, instance, l);
            fputs("} ", f);
            s_put_value(f, v);
            fputc('\n', f);
        }
    } else {
        const msgpack_object *b = s_get(m, "b");
        double sum, count, prev = 0;
        ok = b && b->type == MSGPACK_OBJECT_ARRAY && b->via.array.size == nles &&
             s_num(s_get(m, "s"), &sum) && s_num(s_get(m, "c"), &count);
        for (size_t i = 0; ok && i < nles; i++) {
            double c;
            ok = s_num(&b->via.array.ptr[i], &c) && c >= prev && c <= count;
            prev = c;
            if (!ok)
                break;
            fprintf(f, "picomdm_%s_bucket{", name);
            ok = s_put_labels(f, process, instance, l);
            fprintf(f, ",le=\"%g\"} ", les[i] / 1000.0); //  ms on the wire, seconds here
            s_put_value(f, c);
            fputc('\n', f);
        }
        if (ok) {
            const char *tail[3] = {"_bucket", "_sum", "_count"};
            double val[3] = {count, sum / 1000.0, count};
            for (int i = 0; i < 3; i++) {
                fprintf(f, "picomdm_%s%s{", name, tail[i]);
                s_put_labels(f, process, instance, l);
                fputs(i == 0 ? ",le=\"+Inf\"} " : "} ", f);
                s_put_value(f, val[i]);
                fputc('\n', f);
            }
        }
    }
    if (fclose(f) != 0 || !ok) {
        free(buf);
        return NULL;
    }
    return buf;
}

//  Lines of one process-level gauge (age, uptime).
static char *s_render_gauge(const char *name, const char *process, const char *instance, double v)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    fprintf(f, "picomdm_%s{", name);
    s_put_labels(f, process, instance, NULL);
    fputs("} ", f);
    s_put_value(f, v);
    fputc('\n', f);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static int s_row_cmp(const void *a, const void *b)
{
    const s_row_t *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c)
        return c;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static const char s_age_help[] = "seconds since this process's last stats snapshot arrived";
static const char s_uptime_help[] = "seconds since the process started";

char *pm_stats_render(const pm_msg_t *const *snaps, const double *ages_s, size_t n, size_t *len)
{
    s_rows_t rs = {0};
    char *out = NULL;
    size_t outlen = 0;
    FILE *f = NULL;
    bool oom = false;
    for (size_t i = 0; i < n && !oom; i++) {
        const pm_msg_t *s = snaps[i];
        if (!s || pm_msg_type(s) != PM_MSG_STATS)
            continue;
        const char *process = pm_msg_str(s, "process"), *instance = pm_msg_str(s, "instance");
        const msgpack_object *metrics = pm_msg_obj(s, "metrics"), *bk = pm_msg_obj(s, "buckets_ms");
        if (!process || !instance || !metrics || metrics->type != MSGPACK_OBJECT_ARRAY || !bk ||
            bk->type != MSGPACK_OBJECT_ARRAY || bk->via.array.size > S_WIRE_BUCKETS_MAX)
            continue;
        double les[S_WIRE_BUCKETS_MAX];
        size_t nles = bk->via.array.size;
        bool bk_ok = true;
        for (size_t j = 0; j < nles; j++)
            bk_ok = bk_ok && s_num(&bk->via.array.ptr[j], &les[j]) && isfinite(les[j]) &&
                    (j == 0 || les[j] > les[j - 1]);
        char *t = s_render_gauge("stats_age_seconds", process, instance, ages_s ? ages_s[i] : 0);
        if (!t || s_rows_add(&rs, "stats_age_seconds", "gauge", s_age_help, sizeof s_age_help - 1,
                             t) < 0) {
            free(t);
            oom = true;
            break;
        }
        t = s_render_gauge("uptime_seconds", process, instance,
                           (double)pm_msg_uint(s, "uptime_ms", 0) / 1000.0);
        if (!t || s_rows_add(&rs, "uptime_seconds", "gauge", s_uptime_help,
                             sizeof s_uptime_help - 1, t) < 0) {
            free(t);
            oom = true;
            break;
        }
        for (uint32_t j = 0; j < metrics->via.array.size; j++) {
            char name[PM_STATS_NAME_MAX];
            const char *kind = NULL, *help = NULL;
            size_t help_len = 0;
            const msgpack_object *m = &metrics->via.array.ptr[j];
            if (!bk_ok && s_get(m, "b"))
                continue;
            t = s_render_metric(m, process, instance, les, nles, name, &kind, &help, &help_len);
            if (!t)
                continue; //  malformed: skipped
            if (strcmp(name, "stats_age_seconds") == 0 || strcmp(name, "uptime_seconds") == 0 ||
                s_rows_add(&rs, name, kind, help, help_len, t) < 0)
                free(t);
        }
    }
    if (oom)
        goto out;
    qsort(rs.rows, rs.n, sizeof *rs.rows, s_row_cmp);
    f = open_memstream(&out, &outlen);
    if (!f)
        goto out;
    for (size_t i = 0; i < rs.n; i++) {
        s_row_t *r = &rs.rows[i];
        if (i == 0 || strcmp(r->name, rs.rows[i - 1].name) != 0) {
            //  one # HELP / # TYPE per name; a kind clash between processes
            //  (a version skew) keeps the first kind and drops the others
            fprintf(f, "# HELP picomdm_%s ", r->name);
            if (r->help)
                s_put_escaped(f, r->help, r->help_len, false);
            fprintf(f, "\n# TYPE picomdm_%s %s\n", r->name, r->kind);
        } else {
            size_t first = i;
            while (first > 0 && strcmp(rs.rows[first - 1].name, r->name) == 0)
                first--;
            if (strcmp(rs.rows[first].kind, r->kind) != 0)
                continue;
        }
        fputs(r->text, f);
    }
    if (fclose(f) != 0) {
        free(out);
        out = NULL;
    }
    f = NULL;
out:
    for (size_t i = 0; i < rs.n; i++)
        free(rs.rows[i].text);
    free(rs.rows);
    if (out && len)
        *len = outlen;
    return out;
}

/* ---- board ---- */

typedef struct {
    char process[64];
    char instance[128];
    pm_msg_t *snap; //  decoded copy
    double at_ms;   //  when it arrived (pm_stats_now_ms)
} s_slot_t;

struct pm_stats_board {
    s_slot_t *slots;
    int n, max;
};

pm_stats_board_t *pm_stats_board_new(int max)
{
    pm_stats_board_t *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->max = max > 0 ? max : 256;
    b->slots = calloc((size_t)b->max, sizeof *b->slots);
    if (!b->slots) {
        free(b);
        return NULL;
    }
    return b;
}

void pm_stats_board_destroy(pm_stats_board_t **pb)
{
    if (!pb || !*pb)
        return;
    for (int i = 0; i < (*pb)->n; i++)
        pm_msg_destroy(&(*pb)->slots[i].snap);
    free((*pb)->slots);
    free(*pb);
    *pb = NULL;
}

int pm_stats_board_put(pm_stats_board_t *b, const pm_msg_t *snap)
{
    if (!b || !snap || pm_msg_type(snap) != PM_MSG_STATS)
        return -1;
    const char *process = pm_msg_str(snap, "process"), *instance = pm_msg_str(snap, "instance");
    if (!process || !instance || strlen(process) >= sizeof b->slots[0].process ||
        strlen(instance) >= sizeof b->slots[0].instance)
        return -1;
    int i;
    for (i = 0; i < b->n; i++)
        if (strcmp(b->slots[i].process, process) == 0 &&
            strcmp(b->slots[i].instance, instance) == 0)
            break;
    if (i == b->max)
        return -1;
    //  the bus owns `snap` only during its callback: keep a decoded copy
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[200];
    pm_msg_t *copy = NULL;
    int rc = pm_msg_encode(snap, &buf, &len, err, sizeof err) == 0 &&
                     pm_msg_decode(buf, len, &copy, err, sizeof err) == 0
                 ? 0
                 : -1;
    free(buf);
    if (rc < 0)
        return -1;
    s_slot_t *s = &b->slots[i];
    if (i == b->n) {
        b->n++;
        snprintf(s->process, sizeof s->process, "%s", process);
        snprintf(s->instance, sizeof s->instance, "%s", instance);
    }
    pm_msg_destroy(&s->snap);
    s->snap = copy;
    s->at_ms = pm_stats_now_ms();
    return 0;
}

void pm_stats_board_expire(pm_stats_board_t *b, double min_keep_s)
{
    if (!b)
        return;
    double now = pm_stats_now_ms();
    for (int i = b->n - 1; i >= 0; i--) {
        uint64_t iv = pm_msg_uint(b->slots[i].snap, "interval_s", 0);
        if (iv > 86400) //  as pm_stats_from_cfg allows: a peer cannot pin its snapshot
            iv = 86400;
        double keep = 10.0 * (double)iv;
        if (keep < min_keep_s)
            keep = min_keep_s;
        if (now - b->slots[i].at_ms > keep * 1000) {
            pm_msg_destroy(&b->slots[i].snap);
            b->slots[i] = b->slots[--b->n];
            memset(&b->slots[b->n], 0, sizeof b->slots[b->n]);
        }
    }
}

int pm_stats_board_count(const pm_stats_board_t *b)
{
    return b ? b->n : 0;
}

char *pm_stats_board_render(const pm_stats_board_t *b, const pm_msg_t *own, size_t *len)
{
    int n = b ? b->n : 0;
    const pm_msg_t **snaps = calloc((size_t)n + 1, sizeof *snaps);
    double *ages = calloc((size_t)n + 1, sizeof *ages);
    char *text = NULL;
    if (!snaps || !ages)
        goto out;
    size_t k = 0;
    if (own)
        snaps[k++] = own; //  age 0: live
    double now = pm_stats_now_ms();
    for (int i = 0; i < n; i++) {
        snaps[k] = b->slots[i].snap;
        ages[k++] = (now - b->slots[i].at_ms) / 1000.0;
    }
    text = pm_stats_render(snaps, ages, k, len);
out:
    free(snaps);
    free(ages);
    return text;
}
