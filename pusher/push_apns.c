/*  push_apns — APNs HTTP/2 client over libcurl multi. See push_apns.h and
 *  docs/push.md for the outcome rules.
 */
#include "push_apns.h"
#include "pm_stats.h"
#include "pm_log.h"
#include "push_h2.h"

#include <czmq.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define S_RESP_MAX 512
#define S_EASY_POOL_MAX 4096

typedef enum { S_QUEUED = 0, S_INFLIGHT, S_WAITING, S_HELD } s_state_t;

//  Held pushes (topic stopped by a 403) are coalesced per enrollment, so they
//  are bounded by the enrollments; this cap only guards against a runaway.
#define S_HELD_MAX 1000000

typedef struct {
    char eid[PUSH_EID_MAX];
    char token_hex[2 * PUSH_TOKEN_MAX + 1];
    uint8_t token[PUSH_TOKEN_MAX];
    size_t token_len;
    char magic[PUSH_MAGIC_MAX];
    char topic[PUSH_CERT_TOPIC_MAX];
    char body[PUSH_MAGIC_MAX + 16];
    size_t body_len;
    char resp[S_RESP_MAX];
    size_t resp_len;
    char apns_id[64];
    int attempts;
    int64_t due_ms;
    s_state_t state;
    void *handle; //  in ready, waiting or held (zlistx handle)
    CURL *easy;
    unsigned gen; //  certificate generation the easy handle was configured with
    struct curl_slist *hdrs;
    double t0_ms; //  when the wake was queued (pm_stats_now_ms), for the latency histogram
} s_job_t;

struct push_apns {
    push_apns_cfg_t cfg;
    char base_url[512];
    char ca_file[1024];
    bool prior_knowledge; //  http:// base URL: h2c (tests only)
    char cert_topic[PUSH_CERT_TOPIC_MAX];
    char *cert_pem, *key_pem;
    size_t cert_len, key_len;
    push_apns_event_fn *fn;
    void *arg;
    CURLM *multi;
    push_h2_t *h2;               //  our own HTTP/2 client (default); NULL = libcurl
    zlistx_t *ready;             //  s_job_t*, FIFO
    zlistx_t *waiting;           //  s_job_t*, due later (backoff)
    zlistx_t *held;              //  s_job_t*, topic stopped (403): sent after a new certificate
    zhashx_t *by_eid;            //  eid -> s_job_t* (coalescing)
    zhashx_t *stale;             //  token hex -> "" (410 until a new token)
    zhashx_t *token_until;       //  token hex -> int64_t* (429 backoff)
    zhashx_t *stopped;           //  topic -> reason (403)
    CURL *pool[S_EASY_POOL_MAX]; //  idle easy handles, configured for cert_gen
    int npool;
    unsigned cert_gen;
    size_t inflight, max_inflight;
    uint64_t rnd;
    bool kick; //  transfers finished: poll again soon
    //  Connections known to be up (local ports of answered requests). libcurl
    //  7.88 parks a transfer added while its connection is still being set up
    //  ("pending") and releases parked ones one at a time as others finish,
    //  which serialises everything; so we only add what fits on connections
    //  that answered, plus one transfer that may open the next connection.
    long ports[64];
    int nports;
    push_apns_stats_t st;
    pm_stats_series_t *latency; //  borrowed, may be NULL
};

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t s_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double s_rand01(push_apns_t *a)
{
    //  xorshift64*: jitter only, no security meaning
    a->rnd ^= a->rnd >> 12;
    a->rnd ^= a->rnd << 25;
    a->rnd ^= a->rnd >> 27;
    return (double)((a->rnd * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

const char *push_outcome_name(push_outcome_t o)
{
    switch (o) {
    case PUSH_SENT:
        return "sent";
    case PUSH_FAILED:
        return "failed";
    case PUSH_STALE:
        return "stale";
    case PUSH_CERT_PROBLEM:
        return "cert_problem";
    }
    return "?";
}

int push_token_hex(const uint8_t *token, size_t len, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    if (outlen < 2 * len + 1)
        return -1;
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = hex[token[i] >> 4];
        out[2 * i + 1] = hex[token[i] & 15];
    }
    out[2 * len] = 0;
    return 0;
}

int push_backoff_ms(int base_ms, int max_ms, int attempt, double rnd)
{
    double d = base_ms;
    for (int i = 2; i < attempt && d < max_ms; i++)
        d *= 2;
    if (d > max_ms)
        d = max_ms;
    return (int)(d / 2 + rnd * d / 2);
}

/* ---- reporting ---- */

static void s_job_free(push_apns_t *a, s_job_t *j)
{
    if (j->easy) {
        curl_multi_remove_handle(a->multi, j->easy);
        if (a->npool < S_EASY_POOL_MAX && j->gen == a->cert_gen)
            a->pool[a->npool++] = j->easy;
        else
            curl_easy_cleanup(j->easy);
    }
    curl_slist_free_all(j->hdrs);
    free(j);
}

//  Report the job's outcome and free it. The job must be in no list.
static void s_finish(push_apns_t *a, s_job_t *j, push_outcome_t o, unsigned status,
                     const char *reason, int64_t stale_since)
{
    zhashx_delete(a->by_eid, j->eid); //  first: the callback may wake the eid again
    pm_stats_observe_ms(a->latency, pm_stats_now_ms() - j->t0_ms);
    switch (o) {
    case PUSH_SENT:
        a->st.sent++;
        break;
    case PUSH_FAILED:
        a->st.failed++;
        break;
    case PUSH_STALE:
        a->st.stale++;
        break;
    case PUSH_CERT_PROBLEM:
        a->st.cert_problems++;
        break;
    }
    push_result_t r = {.eid = j->eid,
                       .outcome = o,
                       .status = status,
                       .reason = reason ? reason : "",
                       .topic = j->topic,
                       .apns_id = j->apns_id,
                       .attempts = j->attempts,
                       .stale_since_ms = stale_since,
                       .token = j->token,
                       .token_len = j->token_len};
    if (o == PUSH_SENT)
        pm_debug("push %s: sent (%d attempts)", j->eid, j->attempts);
    else
        pm_info("push %s: %s, status %u, %s (%d attempts)", j->eid, push_outcome_name(o), status,
                r.reason, j->attempts);
    if (a->fn)
        a->fn(a->arg, &r);
    s_job_free(a, j);
}

//  Report a refused wake (no job exists yet).
static void s_refuse(push_apns_t *a, const push_target_t *t, const char *reason)
{
    a->st.refused++;
    a->st.failed++;
    char eid[PUSH_EID_MAX];
    snprintf(eid, sizeof eid, "%s", t->eid ? t->eid : "");
    push_result_t r = {.eid = eid,
                       .outcome = PUSH_FAILED,
                       .reason = reason,
                       .topic = t->topic ? t->topic : "",
                       .apns_id = "",
                       .token = t->token,
                       .token_len = t->token && t->token_len <= PUSH_TOKEN_MAX ? t->token_len : 0};
    pm_info("push %s: refused: %s", eid, reason);
    if (a->fn)
        a->fn(a->arg, &r);
}

/* ---- the JSON reason of an APNs error body: {"reason":"X","timestamp":N} ---- */

//  APNs error bodies are tiny flat objects with two known keys; no library we
//  link reads JSON, so pick the two values out with bounds.
static void s_json_field(const char *body, const char *key, char *out, size_t outlen)
{
    out[0] = 0;
    char pat[32];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(body, pat);
    if (!p)
        return;
    p += strlen(pat);
    while (*p == ' ' || *p == ':')
        p++;
    bool quoted = *p == '"';
    if (quoted)
        p++;
    size_t n = 0;
    while (p[n] && n + 1 < outlen && (quoted ? p[n] != '"' : (p[n] >= '0' && p[n] <= '9')) &&
           (unsigned char)p[n] >= 0x20)
        n++;
    memcpy(out, p, n);
    out[n] = 0;
}

/* ---- curl plumbing ---- */

static size_t s_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    s_job_t *j = userdata;
    size_t n = size * nmemb, room = S_RESP_MAX - 1 - j->resp_len;
    memcpy(j->resp + j->resp_len, ptr, n < room ? n : room);
    j->resp_len += n < room ? n : room;
    j->resp[j->resp_len] = 0;
    return n;
}

static size_t s_header_cb(char *buf, size_t size, size_t nitems, void *userdata)
{
    s_job_t *j = userdata;
    size_t n = size * nitems;
    static const char h[] = "apns-id:";
    if (n > sizeof h && strncasecmp(buf, h, sizeof h - 1) == 0) {
        const char *v = buf + sizeof h - 1;
        size_t vl = n - (sizeof h - 1);
        while (vl && (*v == ' '))
            v++, vl--;
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
            vl--;
        if (vl < sizeof j->apns_id) {
            memcpy(j->apns_id, v, vl);
            j->apns_id[vl] = 0;
        }
    }
    return n;
}

static int s_start(push_apns_t *a, s_job_t *j)
{
    if (a->h2) {
        char path[16 + sizeof j->token_hex];
        snprintf(path, sizeof path, "/3/device/%s", j->token_hex);
        j->resp_len = 0;
        j->resp[0] = 0;
        j->apns_id[0] = 0;
        if (push_h2_submit(a->h2, j, path, j->topic, a->cfg.priority,
                           a->cfg.expiration_s > 0 ? (long long)(time(NULL) + a->cfg.expiration_s)
                                                   : 0LL,
                           j->body, j->body_len) < 0)
            return -1;
        j->attempts++;
        j->state = S_INFLIGHT;
        a->inflight++;
        a->st.requests++;
        if (j->attempts > 1)
            a->st.retries++;
        return 0;
    }
    //  a pooled handle keeps the options that never change; a new one gets them
    bool fresh = a->npool == 0;
    CURL *e = fresh ? curl_easy_init() : a->pool[--a->npool];
    if (!e)
        return -1;
    char url[sizeof a->base_url + 16 + sizeof j->token_hex];
    snprintf(url, sizeof url, "%s/3/device/%s", a->base_url, j->token_hex);
    char h[PUSH_CERT_TOPIC_MAX + 32];
    curl_slist_free_all(j->hdrs);
    j->hdrs = NULL;
    snprintf(h, sizeof h, "apns-topic: %s", j->topic);
    j->hdrs = curl_slist_append(j->hdrs, h);
    j->hdrs = curl_slist_append(j->hdrs, "apns-push-type: mdm");
    snprintf(h, sizeof h, "apns-priority: %d", a->cfg.priority);
    j->hdrs = curl_slist_append(j->hdrs, h);
    snprintf(h, sizeof h, "apns-expiration: %lld",
             a->cfg.expiration_s > 0 ? (long long)(time(NULL) + a->cfg.expiration_s) : 0LL);
    j->hdrs = curl_slist_append(j->hdrs, h);
    j->hdrs = curl_slist_append(j->hdrs, "content-type: application/json");
    j->hdrs = curl_slist_append(j->hdrs, "accept:");
    if (!j->hdrs) {
        curl_easy_cleanup(e);
        return -1;
    }
    if (fresh) {
        struct curl_blob cb = {.data = a->cert_pem, .len = a->cert_len, .flags = CURL_BLOB_COPY};
        struct curl_blob kb = {.data = a->key_pem, .len = a->key_len, .flags = CURL_BLOB_COPY};
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                         a->prior_knowledge ? (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE
                                            : (long)CURL_HTTP_VERSION_2TLS);
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_SSLCERT_BLOB, &cb);
        curl_easy_setopt(e, CURLOPT_SSLCERTTYPE, "PEM");
        curl_easy_setopt(e, CURLOPT_SSLKEY_BLOB, &kb);
        curl_easy_setopt(e, CURLOPT_SSLKEYTYPE, "PEM");
        if (a->ca_file[0])
            curl_easy_setopt(e, CURLOPT_CAINFO, a->ca_file);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)a->cfg.timeout_ms);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)a->cfg.timeout_ms);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, s_write_cb);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, s_header_cb);
    }
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, j->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)j->body_len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, j->hdrs);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, j);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, j);
    curl_easy_setopt(e, CURLOPT_PRIVATE, j);
    j->gen = a->cert_gen;
    j->resp_len = 0;
    j->resp[0] = 0;
    j->apns_id[0] = 0;
    j->attempts++;
    if (curl_multi_add_handle(a->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        j->attempts--;
        return -1;
    }
    j->easy = e;
    j->state = S_INFLIGHT;
    a->inflight++;
    a->st.requests++;
    if (j->attempts > 1)
        a->st.retries++;
    return 0;
}

static int64_t s_token_until(push_apns_t *a, const char *hex)
{
    int64_t *u = zhashx_lookup(a->token_until, hex);
    if (!u)
        return 0;
    if (*u <= s_now_ms()) {
        zhashx_delete(a->token_until, hex);
        return 0;
    }
    return *u;
}

static void s_wait(push_apns_t *a, s_job_t *j, int64_t due)
{
    j->state = S_WAITING;
    j->due_ms = due;
    j->handle = zlistx_add_end(a->waiting, j);
}

//  Park a push until a new certificate (the job is in no list).
static void s_hold(push_apns_t *a, s_job_t *j)
{
    j->state = S_HELD;
    j->handle = zlistx_add_end(a->held, j);
}

//  Start queued pushes while there is room.
static void s_pump(push_apns_t *a)
{
    size_t limit = a->h2 ? a->max_inflight : (size_t)a->nports * (size_t)a->cfg.streams + 1;
    if (limit > a->max_inflight)
        limit = a->max_inflight;
    while (a->inflight < limit) {
        s_job_t *j = zlistx_first(a->ready);
        if (!j)
            break;
        zlistx_delete(a->ready, j->handle);
        j->handle = NULL;
        if (zhashx_lookup(a->stopped, j->topic)) {
            s_hold(a, j);
            continue;
        }
        int64_t until = s_token_until(a, j->token_hex);
        if (until) {
            s_wait(a, j, until);
            continue;
        }
        if (s_start(a, j) < 0) {
            s_finish(a, j, PUSH_FAILED, 0, "could not start the request (out of memory?)", 0);
            continue;
        }
    }
}

//  Move due waiting jobs to the ready queue.
static void s_promote(push_apns_t *a)
{
    if (zlistx_size(a->waiting) == 0)
        return;
    int64_t now = s_now_ms();
    s_job_t *j = zlistx_first(a->waiting);
    while (j) {
        s_job_t *next = zlistx_next(a->waiting);
        if (j->due_ms <= now) {
            zlistx_delete(a->waiting, j->handle);
            j->state = S_QUEUED;
            j->handle = zlistx_add_end(a->ready, j);
        }
        j = next;
    }
}

//  Retry after a backoff, or give up.
static void s_retry(push_apns_t *a, s_job_t *j, unsigned status, const char *reason)
{
    if (j->attempts >= a->cfg.max_attempts) {
        char why[160];
        snprintf(why, sizeof why, "%s (gave up after %d attempts)", reason, j->attempts);
        s_finish(a, j, PUSH_FAILED, status, why, 0);
        return;
    }
    int d = push_backoff_ms(a->cfg.backoff_ms, a->cfg.backoff_max_ms, j->attempts + 1, s_rand01(a));
    pm_debug("push %s: %s, retry in %d ms", j->eid, reason, d);
    s_wait(a, j, s_now_ms() + d);
}

//  Hold every queued or waiting push for a stopped topic.
static void s_hold_topic(push_apns_t *a, const char *topic)
{
    zlistx_t *lists[2] = {a->ready, a->waiting};
    for (int l = 0; l < 2; l++) {
        s_job_t *j = zlistx_first(lists[l]);
        while (j) {
            s_job_t *next = zlistx_next(lists[l]);
            if (strcmp(j->topic, topic) == 0) {
                zlistx_delete(lists[l], j->handle);
                s_hold(a, j);
            }
            j = next;
        }
    }
}

//  Report the 403 alert for a job without finishing it (it is held and sent
//  after the certificate is fixed): the one push.cert_problem of this stop.
static void s_alert(push_apns_t *a, s_job_t *j, const char *reason)
{
    a->st.cert_problems++;
    push_result_t r = {.eid = j->eid,
                       .outcome = PUSH_CERT_PROBLEM,
                       .status = 403,
                       .reason = reason,
                       .topic = j->topic,
                       .apns_id = j->apns_id,
                       .attempts = j->attempts,
                       .token = j->token,
                       .token_len = j->token_len};
    if (a->fn)
        a->fn(a->arg, &r);
}

static void s_outcome(push_apns_t *a, s_job_t *j, const char *terr, long status);

static void s_done(push_apns_t *a, CURL *e, CURLcode res)
{
    s_job_t *j = NULL;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&j);
    if (!j)
        return;
    long status = 0, port = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(e, CURLINFO_LOCAL_PORT, &port);
    curl_multi_remove_handle(a->multi, e);
    if (a->npool < S_EASY_POOL_MAX && j->gen == a->cert_gen)
        a->pool[a->npool++] = e;
    else
        curl_easy_cleanup(e);
    j->easy = NULL;
    a->inflight--;
    if (res == CURLE_OK) {
        int i = 0;
        while (i < a->nports && a->ports[i] != port)
            i++;
        if (i == a->nports && a->nports < a->cfg.connections && a->nports < 64)
            a->ports[a->nports++] = port;
    } else {
        a->nports = 0; //  connections may be gone: probe again before flooding
    }
    s_outcome(a, j,
              res == CURLE_OK                   ? NULL
              : res == CURLE_OPERATION_TIMEDOUT ? "timeout"
                                                : curl_easy_strerror(res),
              status);
}

//  The push_h2 completion.
static void s_h2_done(void *arg, const push_h2_result_t *r)
{
    push_apns_t *a = arg;
    s_job_t *j = r->ud;
    a->inflight--;
    snprintf(j->resp, sizeof j->resp, "%s", r->body ? r->body : "");
    j->resp_len = strlen(j->resp);
    snprintf(j->apns_id, sizeof j->apns_id, "%s", r->apns_id ? r->apns_id : "");
    a->kick = true;
    s_outcome(a, j, r->error, (long)r->status);
}

//  Apply the outcome rules to an answered (terr NULL) or failed request.
static void s_outcome(push_apns_t *a, s_job_t *j, const char *terr, long status)
{
    char reason[64];
    s_json_field(j->resp, "reason", reason, sizeof reason);
    if (terr) {
        s_retry(a, j, 0, terr);
        return;
    }
    if (status == 200) {
        s_finish(a, j, PUSH_SENT, 200, "", 0);
    } else if (status == 410) {
        char ts[24];
        s_json_field(j->resp, "timestamp", ts, sizeof ts);
        zhashx_update(a->stale, j->token_hex, "");
        s_finish(a, j, PUSH_STALE, 410, *reason ? reason : "Unregistered",
                 *ts ? strtoll(ts, NULL, 10) : s_wall_ms());
    } else if (status == 403) {
        //  the certificate is refused: hold this push and every later one for
        //  the topic (coalesced per enrollment), alert once, resume on a new
        //  certificate (push_apns_set_cert)
        if (!zhashx_lookup(a->stopped, j->topic)) {
            char why[200];
            snprintf(why, sizeof why,
                     "topic stopped: APNs refused the push certificate (403 %s); install a valid "
                     "certificate (picomdm pushcert install) and reload the pusher",
                     *reason ? reason : "Forbidden");
            zhashx_update(a->stopped, j->topic, why);
            pm_error("APNs refused the push certificate for %s (403 %s): pushes for this topic "
                     "are held until a valid certificate is installed and loaded (picomdm "
                     "pushcert install, then SIGHUP)",
                     j->topic, *reason ? reason : "Forbidden");
            s_alert(a, j, *reason ? reason : "Forbidden");
            s_hold_topic(a, j->topic);
        }
        s_hold(a, j);
    } else if (status == 429) {
        int d =
            push_backoff_ms(a->cfg.backoff_ms, a->cfg.backoff_max_ms, j->attempts + 1, s_rand01(a));
        int64_t *u = malloc(sizeof *u);
        if (u) {
            *u = s_now_ms() + d;
            zhashx_update(a->token_until, j->token_hex, u);
        }
        s_retry(a, j, 429, *reason ? reason : "TooManyRequests");
    } else if (status >= 500 && status < 600) {
        char why[80];
        snprintf(why, sizeof why, "%ld %s", status, *reason ? reason : "server error");
        s_retry(a, j, (unsigned)status, why);
    } else {
        char why[80];
        snprintf(why, sizeof why, "%s", *reason ? reason : "rejected by APNs");
        s_finish(a, j, PUSH_FAILED, (unsigned)status, why, 0);
    }
}

/* ---- public ---- */

static void s_free_int(void **p)
{
    free(*p);
    *p = NULL;
}

push_apns_t *push_apns_new(const push_apns_cfg_t *cfg, const push_cert_t *cert,
                           push_apns_event_fn *fn, void *arg, char *err, size_t errlen)
{
    push_apns_t *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->cfg = *cfg;
    if (a->cfg.connections <= 0)
        a->cfg.connections = 2;
    if (a->cfg.streams <= 0)
        a->cfg.streams = 500;
    if (a->cfg.timeout_ms <= 0)
        a->cfg.timeout_ms = 10000;
    if (a->cfg.max_attempts <= 0)
        a->cfg.max_attempts = 5;
    if (a->cfg.backoff_ms <= 0)
        a->cfg.backoff_ms = 1000;
    if (a->cfg.backoff_max_ms <= 0)
        a->cfg.backoff_max_ms = 60000;
    if (a->cfg.priority <= 0)
        a->cfg.priority = 10;
    a->fn = fn;
    a->arg = arg;
    a->rnd = ((uint64_t)getpid() << 32) ^ (uint64_t)s_wall_ms() ^ 0x9e3779b97f4a7c15ULL;
    a->max_inflight = (size_t)a->cfg.connections * (size_t)a->cfg.streams;
    if (a->cfg.max_inflight <= 0)
        a->cfg.max_inflight = a->cfg.streams;
    if ((size_t)a->cfg.max_inflight < a->max_inflight)
        a->max_inflight = (size_t)a->cfg.max_inflight;
    const char *base = cfg->base_url && *cfg->base_url ? cfg->base_url : PUSH_APNS_PRODUCTION;
    size_t bl = strlen(base);
    while (bl && base[bl - 1] == '/')
        bl--;
    if (bl >= sizeof a->base_url ||
        (strncmp(base, "https://", 8) != 0 && strncmp(base, "http://", 7) != 0)) {
        snprintf(err, errlen, "bad APNs URL \"%.100s\": want https://host[:port]", base);
        goto fail;
    }
    memcpy(a->base_url, base, bl);
    a->base_url[bl] = 0;
    a->prior_knowledge = strncmp(base, "http://", 7) == 0;
    snprintf(a->ca_file, sizeof a->ca_file, "%s", cfg->ca_file ? cfg->ca_file : "");
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(err, errlen, "libcurl initialisation failed");
        goto fail;
    }
    a->multi = curl_multi_init();
    a->ready = zlistx_new();
    a->waiting = zlistx_new();
    a->held = zlistx_new();
    a->by_eid = zhashx_new();
    a->stale = zhashx_new();
    a->token_until = zhashx_new();
    a->stopped = zhashx_new();
    if (!a->multi || !a->ready || !a->waiting || !a->held || !a->by_eid || !a->stale ||
        !a->token_until || !a->stopped) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    zhashx_set_destructor(a->stopped, (zhashx_destructor_fn *)zstr_free);
    zhashx_set_duplicator(a->stopped, (zhashx_duplicator_fn *)strdup);
    zhashx_set_destructor(a->stale, (zhashx_destructor_fn *)zstr_free);
    zhashx_set_duplicator(a->stale, (zhashx_duplicator_fn *)strdup);
    zhashx_set_destructor(a->token_until, s_free_int);
    curl_multi_setopt(a->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    curl_multi_setopt(a->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)a->cfg.connections);
    curl_multi_setopt(a->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)a->cfg.connections);
    curl_multi_setopt(a->multi, CURLMOPT_MAXCONNECTS, (long)a->cfg.connections);
    curl_multi_setopt(a->multi, CURLMOPT_MAX_CONCURRENT_STREAMS, (long)a->cfg.streams);
    if (!cfg->use_curl) {
        if (a->prior_knowledge) {
            snprintf(err, errlen, "http:// (h2c) APNs URLs need --transport curl");
            goto fail;
        }
        push_h2_cfg_t hc = {.base_url = a->base_url,
                            .ca_file = a->ca_file[0] ? a->ca_file : NULL,
                            .connections = a->cfg.connections,
                            .streams = a->cfg.streams,
                            .timeout_ms = a->cfg.timeout_ms};
        if (!cert || !push_cert_key(cert)) {
            snprintf(err, errlen, "the push certificate has no usable key");
            goto fail;
        }
        a->h2 =
            push_h2_new(&hc, push_cert_x509(cert), push_cert_key(cert), s_h2_done, a, err, errlen);
        if (!a->h2)
            goto fail;
    }
    if (push_apns_set_cert(a, cert, err, errlen) < 0)
        goto fail;
    return a;
fail:
    push_apns_destroy(&a);
    return NULL;
}

static void s_free_pem(push_apns_t *a)
{
    if (a->key_pem)
        OPENSSL_cleanse(a->key_pem, a->key_len);
    free(a->key_pem);
    free(a->cert_pem);
    a->key_pem = a->cert_pem = NULL;
}

void push_apns_destroy(push_apns_t **apns)
{
    if (!apns || !*apns)
        return;
    push_apns_t *a = *apns;
    push_h2_destroy(&a->h2); //  no completions from here on
    if (a->by_eid) {
        //  every job is in by_eid
        for (s_job_t *j = zhashx_first(a->by_eid); j; j = zhashx_next(a->by_eid)) {
            if (j->easy)
                curl_multi_remove_handle(a->multi, j->easy), curl_easy_cleanup(j->easy);
            curl_slist_free_all(j->hdrs);
            free(j);
        }
    }
    for (int i = 0; i < a->npool; i++)
        curl_easy_cleanup(a->pool[i]);
    if (a->multi)
        curl_multi_cleanup(a->multi);
    zlistx_destroy(&a->ready);
    zlistx_destroy(&a->waiting);
    zlistx_destroy(&a->held);
    zhashx_destroy(&a->by_eid);
    zhashx_destroy(&a->stale);
    zhashx_destroy(&a->token_until);
    zhashx_destroy(&a->stopped);
    s_free_pem(a);
    curl_global_cleanup();
    free(a);
    *apns = NULL;
}

//  Stopped topics resume: held pushes are queued again (a fresh set of
//  attempts); those for a topic the certificate does not serve fail.
static void s_resume(push_apns_t *a)
{
    zhashx_purge(a->stopped);
    if (a->held) {
        s_job_t *j;
        while ((j = zlistx_first(a->held))) {
            zlistx_delete(a->held, j->handle);
            j->attempts = 0;
            if (strcmp(j->topic, a->cert_topic) != 0) {
                j->handle = NULL;
                s_finish(a, j, PUSH_FAILED, 0,
                         "topic differs from the new push certificate's: the device enrolled "
                         "with another certificate (re-enroll it, or install the certificate "
                         "it uses)",
                         0);
                continue;
            }
            j->state = S_QUEUED;
            j->handle = zlistx_add_end(a->ready, j);
        }
    }
}

int push_apns_set_cert(push_apns_t *a, const push_cert_t *cert, char *err, size_t errlen)
{
    char *cp = NULL, *kp = NULL;
    size_t cl = 0, kl = 0;
    if (!cert || push_cert_pem(cert, &cp, &cl, &kp, &kl) < 0) {
        snprintf(err, errlen, "the push certificate has no usable key");
        return -1;
    }
    if (a->h2 &&
        push_h2_set_identity(a->h2, push_cert_x509(cert), push_cert_key(cert), err, errlen) < 0) {
        OPENSSL_cleanse(kp, kl);
        free(kp);
        free(cp);
        return -1;
    }
    //  curl copies the blobs into each handle (CURL_BLOB_COPY): the old ones can go;
    //  idle handles hold the old identity, in-flight ones are not pooled again
    s_free_pem(a);
    for (int i = 0; i < a->npool; i++)
        curl_easy_cleanup(a->pool[i]);
    a->npool = 0;
    a->cert_gen++;
    a->cert_pem = cp;
    a->cert_len = cl;
    a->key_pem = kp;
    a->key_len = kl;
    snprintf(a->cert_topic, sizeof a->cert_topic, "%s", push_cert_topic(cert));
    if (zhashx_size(a->stopped))
        pm_notice("new push certificate: pushes resume for %zu stopped topic(s), %zu held "
                  "push(es) go out now",
                  zhashx_size(a->stopped), a->held ? zlistx_size(a->held) : 0);
    s_resume(a);
    return 0;
}

void push_apns_stop(push_apns_t *a, const char *why)
{
    if (!zhashx_lookup(a->stopped, a->cert_topic))
        pm_notice("pushes for %s are held until a usable certificate is loaded", a->cert_topic);
    zhashx_update(a->stopped, a->cert_topic, (void *)why);
    s_hold_topic(a, a->cert_topic);
}

void push_apns_resume(push_apns_t *a)
{
    if (zhashx_size(a->stopped))
        pm_notice("pushes resume for %zu stopped topic(s), %zu held push(es) go out now",
                  zhashx_size(a->stopped), zlistx_size(a->held));
    s_resume(a);
}

bool push_apns_topic_stopped(const push_apns_t *a, const char *topic)
{
    return zhashx_lookup(a->stopped, topic) != NULL;
}

int push_apns_wake(push_apns_t *a, const push_target_t *t)
{
    a->st.wakes++;
    const char *topic = t->topic && *t->topic ? t->topic : a->cert_topic;
    if (!t->eid || !*t->eid || strlen(t->eid) >= PUSH_EID_MAX) {
        s_refuse(a, t, "bad target: enrollment id missing or too long");
        return -1;
    }
    if (!t->token || t->token_len == 0 || t->token_len > PUSH_TOKEN_MAX) {
        s_refuse(a, t, "no push token: the device has not sent TokenUpdate yet");
        return -1;
    }
    if (!t->push_magic || !*t->push_magic || strlen(t->push_magic) >= PUSH_MAGIC_MAX ||
        strpbrk(t->push_magic, "\"\\")) {
        s_refuse(a, t, "no usable PushMagic: the device must send TokenUpdate again");
        return -1;
    }
    if (strcmp(topic, a->cert_topic) != 0) {
        s_refuse(a, t,
                 "topic differs from the push certificate's: the device enrolled with another "
                 "certificate (re-enroll it, or install the certificate it uses)");
        return -1;
    }
    bool stopped = zhashx_lookup(a->stopped, topic) != NULL;
    if (stopped && !zhashx_lookup(a->by_eid, t->eid) && zlistx_size(a->held) >= S_HELD_MAX) {
        s_refuse(a, t, zhashx_lookup(a->stopped, topic));
        return -1;
    }
    char hex[2 * PUSH_TOKEN_MAX + 1];
    push_token_hex(t->token, t->token_len, hex, sizeof hex);
    if (t->not_stale)
        zhashx_delete(a->stale, hex);
    if (zhashx_lookup(a->stale, hex)) {
        s_refuse(a, t,
                 "stale token (APNs said 410 Unregistered): waiting for the next TokenUpdate");
        return -1;
    }
    s_job_t *j = zhashx_lookup(a->by_eid, t->eid);
    if (j) {
        a->st.coalesced++;
        if (j->state != S_INFLIGHT && strcmp(j->token_hex, hex) != 0) {
            //  a newer TokenUpdate: push to the new token
            memcpy(j->token_hex, hex, sizeof hex);
            memcpy(j->token, t->token, t->token_len);
            j->token_len = t->token_len;
        }
        if (j->state != S_INFLIGHT && strcmp(j->magic, t->push_magic) != 0) {
            snprintf(j->magic, sizeof j->magic, "%s", t->push_magic);
            j->body_len = (size_t)snprintf(j->body, sizeof j->body, "{\"mdm\":\"%s\"}", j->magic);
        }
        return 1;
    }
    j = calloc(1, sizeof *j);
    if (!j) {
        s_refuse(a, t, "out of memory");
        return -1;
    }
    j->t0_ms = pm_stats_now_ms();
    snprintf(j->eid, sizeof j->eid, "%s", t->eid);
    memcpy(j->token_hex, hex, sizeof hex);
    memcpy(j->token, t->token, t->token_len);
    j->token_len = t->token_len;
    snprintf(j->magic, sizeof j->magic, "%s", t->push_magic);
    snprintf(j->topic, sizeof j->topic, "%s", topic);
    j->body_len = (size_t)snprintf(j->body, sizeof j->body, "{\"mdm\":\"%s\"}", j->magic);
    zhashx_insert(a->by_eid, j->eid, j);
    if (stopped) {
        s_hold(a, j);
        return 0;
    }
    j->state = S_QUEUED;
    j->handle = zlistx_add_end(a->ready, j);
    return 0;
}

long push_apns_next_ms(push_apns_t *a)
{
    long next = -1;
    if (zlistx_size(a->ready) &&
        (a->h2 || a->inflight < (size_t)a->nports * (size_t)a->cfg.streams + 1) &&
        a->inflight < a->max_inflight)
        return 0;
    if (zlistx_size(a->waiting)) {
        int64_t now = s_now_ms(), min = INT64_MAX;
        for (s_job_t *j = zlistx_first(a->waiting); j; j = zlistx_next(a->waiting))
            if (j->due_ms < min)
                min = j->due_ms;
        next = min <= now ? 0 : (long)(min - now);
    }
    long ct = -1;
    if (a->h2)
        ct = push_h2_next_ms(a->h2);
    else
        curl_multi_timeout(a->multi, &ct);
    if (ct >= 0 && (next < 0 || ct < next))
        next = ct;
    return next;
}

//  push_apns_poll with our HTTP/2 client: one poll() over its sockets and
//  the caller's descriptors.
static int s_poll_h2(push_apns_t *a, struct curl_waitfd *extra, unsigned nextra, int timeout_ms)
{
    struct pollfd fds[80];
    s_promote(a);
    s_pump(a);
    unsigned ne = nextra < 16 ? nextra : 16;
    for (unsigned i = 0; i < ne; i++) {
        short ev = 0;
        if (extra[i].events & CURL_WAIT_POLLIN)
            ev |= POLLIN;
        if (extra[i].events & CURL_WAIT_POLLPRI)
            ev |= POLLPRI;
        if (extra[i].events & CURL_WAIT_POLLOUT)
            ev |= POLLOUT;
        fds[i] = (struct pollfd){.fd = extra[i].fd, .events = ev};
        extra[i].revents = 0;
    }
    int nh = push_h2_pollfds(a->h2, fds + ne, (int)(sizeof fds / sizeof *fds) - (int)ne);
    long next = push_apns_next_ms(a);
    int wait = timeout_ms;
    if (next >= 0 && next < wait)
        wait = (int)next;
    if (a->kick && wait > 0)
        wait = 0;
    a->kick = false;
    int rv = poll(fds, ne + (unsigned)nh, wait < 0 ? 0 : wait);
    if (rv < 0 && errno != EINTR)
        return -1;
    for (unsigned i = 0; rv > 0 && i < ne; i++) {
        if (fds[i].revents & (POLLIN | POLLHUP | POLLERR))
            extra[i].revents |= CURL_WAIT_POLLIN;
        if (fds[i].revents & POLLPRI)
            extra[i].revents |= CURL_WAIT_POLLPRI;
        if (fds[i].revents & POLLOUT)
            extra[i].revents |= CURL_WAIT_POLLOUT;
    }
    if (rv <= 0)
        for (int i = 0; i < nh; i++)
            fds[ne + (unsigned)i].revents = 0;
    push_h2_process(a->h2, fds + ne, nh);
    s_promote(a);
    s_pump(a);
    return 0;
}

int push_apns_poll(push_apns_t *a, struct curl_waitfd *extra, unsigned nextra, int timeout_ms)
{
    if (a->h2)
        return s_poll_h2(a, extra, nextra, timeout_ms);
    int running = 0, numfds = 0;
    s_promote(a);
    s_pump(a);
    if (curl_multi_perform(a->multi, &running) != CURLM_OK)
        return -1;
    long next = push_apns_next_ms(a);
    int wait = timeout_ms;
    if (next >= 0 && next < wait)
        wait = (int)next;
    //  libcurl 7.88 parks transfers added while a connection is being set up
    //  ("pending") and releases them when others finish, without always
    //  arming a timer: after completions, look again at once.
    if (a->kick && wait > 1)
        wait = 1;
    a->kick = false;
    if (curl_multi_poll(a->multi, extra, nextra, wait, &numfds) != CURLM_OK)
        return -1;
    if (curl_multi_perform(a->multi, &running) != CURLM_OK)
        return -1;
    CURLMsg *m;
    int left = 0;
    while ((m = curl_multi_info_read(a->multi, &left)))
        if (m->msg == CURLMSG_DONE) {
            s_done(a, m->easy_handle, m->data.result);
            a->kick = true;
        }
    s_promote(a);
    s_pump(a);
    curl_multi_perform(a->multi, &running);
    return 0;
}

size_t push_apns_pending(const push_apns_t *a)
{
    return zhashx_size(a->by_eid);
}

void push_apns_stats(const push_apns_t *a, push_apns_stats_t *out)
{
    *out = a->st;
    out->queued = zlistx_size(a->ready);
    out->inflight = a->inflight;
    out->waiting = zlistx_size(a->waiting);
    out->held = zlistx_size(a->held);
}

size_t push_apns_held(const push_apns_t *a)
{
    return zlistx_size(a->held);
}

void push_apns_drop_held(push_apns_t *a, const char *why)
{
    s_job_t *j;
    while ((j = zlistx_first(a->held))) {
        zlistx_delete(a->held, j->handle);
        j->handle = NULL;
        s_finish(a, j, PUSH_FAILED, 0, why, 0);
    }
}

void push_apns_set_latency(push_apns_t *apns, pm_stats_series_t *h)
{
    apns->latency = h;
}
