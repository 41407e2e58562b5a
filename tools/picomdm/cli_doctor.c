/*  cli_doctor — `picomdm doctor [<id>]` (cli_doctor.h): the store's facts
 *  (store.doctor) turned into plain-word findings.
 */
#include "cli_doctor.h"

#include "cli_ops.h"
#include "cli_render.h"
#include "pm_bus.h"
#include "pm_json.h"
#include "pm_log.h"
#include "pm_msg.h"

#include <inttypes.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_DAY_MS (86400LL * 1000)

const pm_opt_t cli_doctor_opts[] = {
    {"push-cert", PM_OPT_STR, NULL,
     "the APNs push certificate (PEM) to check for expiry and topic (default: not checked)"},
    {"notnow-limit", PM_OPT_INT, "3", "a command answered NotNow this often is reported as stuck"},
    {"delivered-timeout", PM_OPT_STR, "60s",
     "a command delivered and unanswered this long is reported as stuck"},
    {"silent-for", PM_OPT_STR, "1d", "a device not seen this long is reported as silent"},
    {"identity-warn", PM_OPT_STR, "30d",
     "a device identity certificate expiring within this is reported"},
    {"max-skew", PM_OPT_STR, "5m",
     "a device clock further than this from the server's is reported"},
    {NULL, 0, NULL, NULL}};

/* ---- reading the facts ---- */

static int64_t s_int(const msgpack_object *m, const char *k, int64_t dflt)
{
    const msgpack_object *o = cli_map_get(m, k);
    if (o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        return o->via.u64 > INT64_MAX ? INT64_MAX : (int64_t)o->via.u64;
    if (o && o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return o->via.i64;
    return dflt;
}

static bool s_bool(const msgpack_object *m, const char *k)
{
    const msgpack_object *o = cli_map_get(m, k);
    return o && ((o->type == MSGPACK_OBJECT_BOOLEAN && o->via.boolean) ||
                 (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64));
}

//  A string field into buf ("" when absent); returns buf.
static const char *s_str(const msgpack_object *m, const char *k, char *buf, size_t size)
{
    const msgpack_object *o = cli_map_get(m, k);
    if (o && o->type == MSGPACK_OBJECT_STR)
        snprintf(buf, size, "%.*s", (int)o->via.str.size, o->via.str.ptr);
    else if (size)
        buf[0] = '\0';
    return buf;
}

//  ms since the epoch as "2025-01-31 12:00:00 UTC".
static const char *s_when(int64_t ms, char *buf, size_t size)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (ms <= 0 || !gmtime_r(&t, &tm) || !strftime(buf, size, "%Y-%m-%d %H:%M:%S UTC", &tm))
        snprintf(buf, size, "never");
    return buf;
}

//  A duration as "3d 4h", "5h 2m", "42s" ("30d", "15m" when the second part is 0).
static const char *s_ago(int64_t ms, char *buf, size_t size)
{
    long long s = ms > 0 ? ms / 1000 : 0;
    long long big, small;
    char bu, su;
    if (s >= 86400)
        big = s / 86400, small = s % 86400 / 3600, bu = 'd', su = 'h';
    else if (s >= 3600)
        big = s / 3600, small = s % 3600 / 60, bu = 'h', su = 'm';
    else if (s >= 60)
        big = s / 60, small = s % 60, bu = 'm', su = 's';
    else {
        snprintf(buf, size, "%llds", s);
        return buf;
    }
    if (small)
        snprintf(buf, size, "%lld%c %lld%c", big, bu, small, su);
    else
        snprintf(buf, size, "%lld%c", big, bu);
    return buf;
}

typedef struct {
    cli_doc_finding_t *out;
    int n, max;
} s_list_t;

static void s_add(s_list_t *l, cli_doc_level_t level, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void s_add(s_list_t *l, cli_doc_level_t level, const char *code, const char *fmt, ...)
{
    if (l->n >= l->max)
        return;
    cli_doc_finding_t *f = &l->out[l->n++];
    f->level = level;
    f->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->text, sizeof f->text, fmt, ap);
    va_end(ap);
}

/* ---- the diagnosis (pure) ---- */

static void s_push(s_list_t *l, const msgpack_object *dev, const cli_doc_opts_t *o,
                   int64_t last_seen)
{
    char a[40], b[40], topic[256], reason[128];
    s_str(dev, "topic", topic, sizeof topic);
    if (o->push_not_after_ms > 0 && o->push_not_after_ms <= o->now_ms)
        s_add(l, CLI_DOC_FAIL, "push_cert_expired",
              "push certificate expired on %s: APNs refuses every push, so no device is woken; "
              "renew it at identity.apple.com and restart picomdm-pusher",
              s_when(o->push_not_after_ms, a, sizeof a));
    else if (o->push_not_after_ms > 0 && o->push_not_after_ms - o->now_ms < 30 * S_DAY_MS)
        s_add(l, CLI_DOC_WARN, "push_cert_expiring",
              "push certificate expires on %s (in %s): renew it before then at "
              "identity.apple.com (the same Apple ID, so the topic stays)",
              s_when(o->push_not_after_ms, a, sizeof a),
              s_ago(o->push_not_after_ms - o->now_ms, b, sizeof b));
    if (o->push_topic && *o->push_topic && *topic && strcmp(o->push_topic, topic) != 0)
        s_add(l, CLI_DOC_FAIL, "topic_mismatch",
              "push topic mismatch: the device enrolled with topic %s but the push certificate "
              "is for %s, so APNs rejects its pushes; enroll it with a profile whose Topic is %s "
              "(or configure the certificate of %s)",
              topic, o->push_topic, o->push_topic, topic);
    if (s_bool(dev, "stale_token"))
        s_add(l, CLI_DOC_FAIL, "token_stale",
              "push token stale: APNs answered 410 for the device's token (no longer "
              "registered for this topic), so it is not pushed; a TokenUpdate from the device "
              "clears this (it sends one when it gets a new token; else re-enroll it)");
    else if (!s_bool(dev, "has_token"))
        s_add(l, CLI_DOC_FAIL, "no_token",
              "no push token: the device never sent a TokenUpdate with a Token, so it cannot "
              "be woken; re-enroll it");
    const msgpack_object *lp = cli_map_get(dev, "last_push");
    if (!lp || lp->type != MSGPACK_OBJECT_MAP) {
        s_add(l, CLI_DOC_WARN, "no_push_outcome",
              "no push outcome recorded (is picomdm-pusher running?): nothing says the device "
              "was ever woken; start the pusher with a push certificate (picomdm up "
              "--push-cert)");
        return;
    }
    char name[64];
    s_str(lp, "name", name, sizeof name);
    int64_t ts = s_int(lp, "ts", 0);
    const msgpack_object *data = cli_map_get(lp, "data");
    s_str(data, "reason", reason, sizeof reason);
    int64_t status = s_int(data, "status", 0);
    if (strcmp(name, "push.sent") == 0) {
        if (ts > last_seen)
            s_add(l, CLI_DOC_WARN, "not_connected_since_push",
                  "device has not connected since the last push: APNs accepted it at %s, the "
                  "last check-in was %s; the device is off, offline, or cannot reach this "
                  "server (check its network and the server's URL from the device)",
                  s_when(ts, a, sizeof a), s_when(last_seen, b, sizeof b));
        else
            s_add(l, CLI_DOC_INFO, "push_ok",
                  "last push accepted by APNs at %s; the device connected after it",
                  s_when(ts, a, sizeof a));
    } else if (strcmp(name, "push.stale") == 0) {
        if (!s_bool(dev, "stale_token"))
            s_add(l, CLI_DOC_INFO, "push_was_stale",
                  "the last push (%s) got 410 but the device sent a new token since",
                  s_when(ts, a, sizeof a));
    } else if (strcmp(name, "push.cert_problem") == 0)
        s_add(l, CLI_DOC_FAIL, "push_cert_problem",
              "the last push (%s) was refused because of the push certificate (status %" PRId64
              ", %s): check it with picomdm pushcert show and that its topic matches",
              s_when(ts, a, sizeof a), status, *reason ? reason : "no reason given");
    else
        s_add(l, CLI_DOC_FAIL, "push_failed",
              "the last push failed at %s (status %" PRId64 ", %s): see the pusher's log; the "
              "scheduler retries wakeups every wake-sweep-s",
              s_when(ts, a, sizeof a), status, *reason ? reason : "no reason given");
}

//  The device identity certificate (its notAfter, as the gateway saw it on the
//  last signed request) and the device's clock (Mdm-Signature signingTime
//  minus the server's clock). Adds to *unknown what could not be checked.
static void s_identity(s_list_t *l, const msgpack_object *dev, const cli_doc_opts_t *o,
                       char *unknown, size_t usize)
{
    char a[40], b[40];
    int64_t warn = o->identity_warn_ms > 0 ? o->identity_warn_ms : 30 * S_DAY_MS;
    int64_t smax = o->skew_max_s > 0 ? o->skew_max_s : 300;
    int64_t na = s_int(dev, "cert_not_after", 0);
    if (na <= 0)
        snprintf(unknown, usize, "identity certificate expiry");
    else if (na <= o->now_ms)
        s_add(l, CLI_DOC_FAIL, "identity_cert_expired",
              "identity certificate expired on %s: the gateway refuses every request the device "
              "signs with it (400), so it can neither check in nor renew it; re-enroll it "
              "(install the enrollment profile again)",
              s_when(na, a, sizeof a));
    else if (na - o->now_ms < warn) {
        int64_t left = na - o->now_ms;
        if (left >= S_DAY_MS)
            snprintf(b, sizeof b, "%lld days", (long long)((left + S_DAY_MS / 2) / S_DAY_MS));
        else
            s_ago(left, b, sizeof b);
        s_add(l, CLI_DOC_WARN, "identity_cert_expiring",
              "identity certificate expires in %s (%s): renew it (SCEP RenewalReq) or re-enroll "
              "the device before then; after it the gateway refuses the device's requests",
              b, s_when(na, a, sizeof a));
    } else
        s_add(l, CLI_DOC_INFO, "identity_cert_ok", "identity certificate valid until %s",
              s_when(na, a, sizeof a));
    const msgpack_object *sk = cli_map_get(dev, "clock_skew_s");
    if (!sk || (sk->type != MSGPACK_OBJECT_POSITIVE_INTEGER &&
                sk->type != MSGPACK_OBJECT_NEGATIVE_INTEGER)) {
        size_t n = strlen(unknown);
        snprintf(unknown + n, usize - n, "%sclock skew (no signingTime in its signatures)",
                 n ? " and " : "");
        return;
    }
    int64_t skew = s_int(dev, "clock_skew_s", 0), mag = skew < 0 ? -skew : skew;
    s_ago(mag * 1000, b, sizeof b);
    if (mag > smax)
        s_add(l, CLI_DOC_WARN, "clock_skew",
              "clock skew: the device's clock is %s %s the server's (Mdm-Signature signingTime; "
              "at this value since %s); with a wrong clock TLS and certificate checks fail on the "
              "device "
              "(certificates look expired or not yet valid); set its date and time to automatic",
              b, skew > 0 ? "ahead of" : "behind", s_when(s_int(dev, "skew_at", 0), a, sizeof a));
    else
        s_add(l, CLI_DOC_INFO, "clock_ok", "device clock within %s of the server's", b);
}

static void s_queue(s_list_t *l, const msgpack_object *dev, const cli_doc_opts_t *o,
                    int64_t last_seen)
{
    char a[40], b[40], rt[96], uuid[96], status[32];
    int64_t newest = s_int(dev, "newest_queued", 0);
    if (newest > last_seen)
        s_add(l, CLI_DOC_WARN, "not_connected_since_queued",
              "device has not connected since commands were queued (newest %s, last check-in "
              "%s%s): it was not woken or did not come; see the push findings",
              s_when(newest, a, sizeof a), s_when(last_seen, b, sizeof b),
              s_bool(dev, "wake_pending") ? ", wakeup pending" : "");
    const msgpack_object *head = cli_map_get(dev, "head");
    uint32_t n = head && head->type == MSGPACK_OBJECT_ARRAY ? head->via.array.size : 0;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *e = &head->via.array.ptr[i];
        s_str(e, "request_type", rt, sizeof rt);
        s_str(e, "uuid", uuid, sizeof uuid);
        s_str(e, "status", status, sizeof status);
        const char *where = i == 0 ? "at the head of the queue" : "in the queue";
        int64_t notnow = s_int(e, "notnow_count", 0), deliveries = s_int(e, "deliveries", 0);
        int64_t delivered = s_int(e, "delivered", 0);
        if (o->notnow_limit && notnow >= (int64_t)o->notnow_limit)
            s_add(l, CLI_DOC_WARN, "stuck_notnow",
                  "command %s (%s) %s was answered NotNow %" PRId64
                  " times: the device cannot run it now (locked, busy, or waiting for the "
                  "user); it is retried every session; unlock the device, or cancel it with "
                  "`picomdm cancel %s`",
                  rt, uuid, where, notnow, uuid);
        else if (strcmp(status, "sent") == 0 && delivered > 0 &&
                 o->now_ms - delivered >= o->delivered_timeout_ms)
            s_add(l, CLI_DOC_WARN, "stuck_unanswered",
                  "command %s (%s) %s was delivered at %s (%" PRId64
                  " deliveries) and never answered: the connection broke or the device did not "
                  "report back; it is delivered again in a later session and marked failed "
                  "after redeliver-limit",
                  rt, uuid, where, s_when(delivered, a, sizeof a), deliveries);
    }
}

int cli_doctor_diagnose(const msgpack_object *dev, const cli_doc_opts_t *o, cli_doc_finding_t *out,
                        int max)
{
    s_list_t l = {out, 0, max};
    char a[40], b[40];
    if (!dev || dev->type != MSGPACK_OBJECT_MAP) {
        s_add(&l, CLI_DOC_FAIL, "bad_reply",
              "the store's answer holds no device facts: check that picomdm-store is current");
        return l.n;
    }
    int64_t last_seen = s_int(dev, "last_seen", 0);
    if (!s_bool(dev, "activated")) {
        s_add(&l, CLI_DOC_FAIL, "not_activated",
              "enrollment not activated: the device sent Authenticate but no TokenUpdate, so it "
              "gets no commands; install the enrollment profile again");
        return l.n;
    }
    if (!s_bool(dev, "enrolled")) {
        s_add(&l, CLI_DOC_FAIL, "checked_out",
              "checked out: the device removed its MDM profile (CheckOut at %s); nothing reaches "
              "it until it enrolls again",
              s_when(last_seen, a, sizeof a));
        return l.n;
    }
    char unknown[160] = "";
    s_identity(&l, dev, o, unknown, sizeof unknown);
    s_push(&l, dev, o, last_seen);
    s_queue(&l, dev, o, last_seen);
    if (o->silent_ms > 0 && last_seen > 0 && o->now_ms - last_seen >= o->silent_ms)
        s_add(&l, CLI_DOC_WARN, "silent", "silent for %s (last check-in %s)",
              s_ago(o->now_ms - last_seen, a, sizeof a), s_when(last_seen, b, sizeof b));
    //  what the store cannot tell (yet)
    bool problem = false;
    for (int i = 0; i < l.n; i++)
        problem |= out[i].level >= CLI_DOC_WARN;
    if (!problem)
        s_add(&l, CLI_DOC_INFO, "ok",
              "no problem found: last check-in %s (%s ago), %" PRId64 " command(s) queued",
              s_when(last_seen, a, sizeof a), s_ago(o->now_ms - last_seen, b, sizeof b),
              s_int(dev, "queued", 0));
    if (*unknown)
        s_add(&l, CLI_DOC_INFO, "not_checked",
              "not checked: %s (the gateway records them from the device's signed requests)",
              unknown);
    //  problems first (the order above within a level), then the information
    for (int i = 1; i < l.n; i++) {
        cli_doc_finding_t f = out[i];
        int j = i;
        for (; j > 0 && (out[j - 1].level < CLI_DOC_WARN) && f.level >= CLI_DOC_WARN; j--)
            out[j] = out[j - 1];
        out[j] = f;
    }
    return l.n;
}

long long cli_doctor_fleet(FILE *out, const msgpack_object *fleet, const cli_doc_opts_t *o)
{
    char a[40], b[40];
    int64_t silent_ms = o->silent_ms;
    int64_t total = s_int(fleet, "total", 0), active = s_int(fleet, "active", 0);
    int64_t notact = s_int(fleet, "not_activated", 0), out_ = s_int(fleet, "checked_out", 0);
    int64_t notok = s_int(fleet, "no_token", 0), stale = s_int(fleet, "stale_token", 0);
    int64_t wake = s_int(fleet, "wake_pending", 0), silent = s_int(fleet, "silent", 0);
    int64_t stuck = s_int(fleet, "stuck", 0);
    fprintf(out,
            "%" PRId64 " enrollment(s): %" PRId64 " active, %" PRId64
            " not activated (no TokenUpdate), %" PRId64 " checked out\n",
            total, active, notact, out_);
    fprintf(out,
            "push: %" PRId64 " stale token (410), %" PRId64 " without token, %" PRId64
            " waiting for a wakeup (queued, not connected since)\n",
            stale, notok, wake);
    if (!s_bool(fleet, "push_outcomes"))
        fprintf(out, "push: no push outcome recorded (is picomdm-pusher running?)\n");
    fprintf(out,
            "%" PRId64 " active enrollment(s) silent for %s or more; %" PRId64
            " with a stuck command (NotNow or unanswered)\n",
            silent, s_ago(silent_ms, a, sizeof a), stuck);
    int64_t idexp = s_int(fleet, "identity_expired", 0),
            idsoon = s_int(fleet, "identity_expiring", 0);
    int64_t skewed = s_int(fleet, "clock_skewed", 0);
    fprintf(out,
            "identity: %" PRId64 " certificate(s) expired, %" PRId64 " expiring within %s; %" PRId64
            " device clock(s) off by more than %s\n",
            idexp, idsoon,
            s_ago(o->identity_warn_ms > 0 ? o->identity_warn_ms : 30 * S_DAY_MS, a, sizeof a),
            skewed, s_ago((o->skew_max_s > 0 ? o->skew_max_s : 300) * 1000, b, sizeof b));
    long long attention =
        (long long)(notact + stale + notok + silent + stuck + idexp + idsoon + skewed);
    if (attention > 0)
        fprintf(out, "find them: picomdm devices --silent-for %s; then picomdm doctor <id>\n",
                s_ago(silent_ms, a, sizeof a));
    else
        fprintf(out, "no problem found\n");
    return attention;
}

int cli_doctor_push_cert(const char *path, char *topic, size_t size, int64_t *not_after_ms)
{
    int rc = -1;
    FILE *f = fopen(path, "r");
    X509 *x = NULL;
    if (!f) {
        fprintf(stderr, "picomdm doctor: cannot read the push certificate %s: check --push-cert\n",
                path);
        return -1;
    }
    x = PEM_read_X509(f, NULL, NULL, NULL);
    if (!x) {
        fprintf(stderr,
                "picomdm doctor: %s holds no PEM certificate: give the push certificate "
                "(BEGIN CERTIFICATE) with --push-cert\n",
                path);
        goto out;
    }
    topic[0] = '\0';
    X509_NAME *nm = X509_get_subject_name(x);
    int idx = X509_NAME_get_index_by_NID(nm, NID_userId, -1);
    if (idx >= 0) {
        ASN1_STRING *d = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(nm, idx));
        snprintf(topic, size, "%.*s", ASN1_STRING_length(d),
                 (const char *)ASN1_STRING_get0_data(d));
    }
    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) != 1) {
        fprintf(stderr, "picomdm doctor: %s: unreadable expiry date\n", path);
        goto out;
    }
    *not_after_ms = (int64_t)timegm(&tm) * 1000;
    rc = 0;
out:
    X509_free(x);
    fclose(f);
    return rc;
}

/* ---- the subcommand ---- */

//  Send `req` to the store (service "store", read-only). On CLI_EXIT_OK *reply is the caller's.
static int s_call_store(cli_ctx_t *ctx, const pm_msg_t *req, pm_msg_t **reply)
{
    *reply = NULL;
    int64_t timeout = pm_cfg_int(ctx->cfg, "timeout"), retries = pm_cfg_int(ctx->cfg, "retries");
    if (timeout <= 0 || timeout > 3600000 || retries < 0 || retries > 100) {
        fprintf(stderr, "picomdm: --timeout must be 1..3600000 ms and --retries 0..100\n");
        return CLI_EXIT_USAGE;
    }
    pm_bus_config_t bc;
    memset(&bc, 0, sizeof bc);
    bc.name = "picomdm-doctor";
    bc.request_endpoint = pm_cfg_str(ctx->cfg, "request-endpoint");
    bc.server_public_key = pm_cfg_str(ctx->cfg, "server-key");
    bc.cert_file = pm_cfg_str(ctx->cfg, "curve-cert");
    pm_bus_t *bus = pm_bus_new(&bc);
    if (!bus) {
        fprintf(stderr,
                "picomdm: cannot connect to the bus at %s (check --request-endpoint and "
                "the CURVE options)\n",
                bc.request_endpoint);
        return CLI_EXIT_BUS;
    }
    char err[256] = "";
    pm_msg_t *r = pm_bus_call(bus, "store", req, (int)timeout, (int)retries, err, sizeof err);
    pm_bus_destroy(&bus);
    if (!r) {
        fprintf(stderr,
                "picomdm: no reply from the store service at %s (%s). Is `picomdm up` (or the "
                "broker and picomdm-store) running? Check --request-endpoint or PICOMDM_CONFIG.\n",
                bc.request_endpoint, err[0] ? err : "timed out");
        return CLI_EXIT_BUS;
    }
    if (pm_msg_type(r) == PM_MSG_ERROR) {
        const char *code = pm_msg_str(r, "code"), *message = pm_msg_str(r, "message");
        fprintf(stderr, "picomdm: %s: %s\n", code ? code : "error", message ? message : "");
        bool bus_trouble =
            code && (strcmp(code, "no_service") == 0 || strcmp(code, "timeout") == 0 ||
                     strcmp(code, "worker_lost") == 0);
        pm_msg_destroy(&r);
        return bus_trouble ? CLI_EXIT_BUS : CLI_EXIT_FAIL;
    }
    *reply = r;
    return CLI_EXIT_OK;
}

static const char *const s_level[] = {"info", "WARN", "FAIL"};

int cli_doctor_run(cli_ctx_t *ctx)
{
    const char *eid = cli_arg(ctx, 0);
    if (cli_argc(ctx) > 1) {
        fprintf(stderr, "usage: picomdm doctor [<enrollment id>] [--push-cert PEM]\n");
        return CLI_EXIT_USAGE;
    }
    cli_doc_opts_t o = {.notnow_limit = (unsigned)pm_cfg_int(ctx->cfg, "notnow-limit")};
    long long silent = cli_parse_duration(pm_cfg_str(ctx->cfg, "silent-for"));
    long long dto = cli_parse_duration(pm_cfg_str(ctx->cfg, "delivered-timeout"));
    if (silent < 0 || dto < 0 || pm_cfg_int(ctx->cfg, "notnow-limit") < 0) {
        fprintf(stderr, "picomdm doctor: --silent-for and --delivered-timeout take a duration "
                        "like 90s, 12h, 7d; --notnow-limit a count\n");
        return CLI_EXIT_USAGE;
    }
    long long iwarn = cli_parse_duration(pm_cfg_str(ctx->cfg, "identity-warn"));
    long long mskew = cli_parse_duration(pm_cfg_str(ctx->cfg, "max-skew"));
    if (iwarn <= 0 || mskew <= 0) {
        fprintf(stderr, "picomdm doctor: --identity-warn and --max-skew take a duration like "
                        "30d or 5m (more than 0)\n");
        return CLI_EXIT_USAGE;
    }
    o.silent_ms = silent * 1000;
    o.delivered_timeout_ms = dto * 1000;
    o.identity_warn_ms = iwarn * 1000;
    o.skew_max_s = mskew;
    char topic[256] = "";
    const char *pc = pm_cfg_str(ctx->cfg, "push-cert");
    if (pc) {
        if (cli_doctor_push_cert(pc, topic, sizeof topic, &o.push_not_after_ms) < 0)
            return CLI_EXIT_USAGE;
        o.push_topic = topic;
    }
    pm_msg_t *req = pm_msg_new(PM_MSG_STORE_DOCTOR), *reply = NULL;
    if (!req || (eid && pm_msg_set_str(req, "eid", eid) < 0) ||
        pm_msg_set_uint(req, "silent_s", (uint64_t)silent) < 0 ||
        pm_msg_set_uint(req, "notnow_limit", o.notnow_limit) < 0 ||
        pm_msg_set_uint(req, "identity_warn_s", (uint64_t)iwarn) < 0 ||
        pm_msg_set_uint(req, "skew_max_s", (uint64_t)mskew) < 0) {
        pm_msg_destroy(&req);
        fprintf(stderr, "picomdm: cannot build the request\n");
        return CLI_EXIT_FAIL;
    }
    int rc = s_call_store(ctx, req, &reply);
    pm_msg_destroy(&req);
    if (rc != CLI_EXIT_OK)
        return rc;
    o.now_ms = (int64_t)pm_msg_uint(reply, "now", 0);
    bool json = pm_cfg_bool(ctx->cfg, "json");
    if (!eid) {
        const msgpack_object *fleet = pm_msg_obj(reply, "fleet");
        if (json) {
            char *t = pm_json_from_obj(fleet, NULL);
            printf("%s\n", t ? t : "null");
            free(t);
        } else
            cli_doctor_fleet(stdout, fleet, &o);
        pm_msg_destroy(&reply);
        return CLI_EXIT_OK;
    }
    cli_doc_finding_t f[CLI_DOC_MAX];
    int n = cli_doctor_diagnose(pm_msg_obj(reply, "device"), &o, f, CLI_DOC_MAX);
    int problems = 0;
    for (int i = 0; i < n; i++) {
        problems += f[i].level >= CLI_DOC_WARN;
        if (json) {
            char *t = NULL;
            msgpack_sbuffer sb;
            msgpack_sbuffer_init(&sb);
            msgpack_packer pk;
            msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
            msgpack_pack_map(&pk, 3);
            msgpack_pack_str_with_body(&pk, "level", 5);
            msgpack_pack_str_with_body(&pk, s_level[f[i].level], strlen(s_level[f[i].level]));
            msgpack_pack_str_with_body(&pk, "code", 4);
            msgpack_pack_str_with_body(&pk, f[i].code, strlen(f[i].code));
            msgpack_pack_str_with_body(&pk, "text", 4);
            msgpack_pack_str_with_body(&pk, f[i].text, strlen(f[i].text));
            msgpack_unpacked u;
            msgpack_unpacked_init(&u);
            if (msgpack_unpack_next(&u, sb.data, sb.size, NULL) == MSGPACK_UNPACK_SUCCESS)
                t = pm_json_from_obj(&u.data, NULL);
            printf("%s\n", t ? t : "null");
            free(t);
            msgpack_unpacked_destroy(&u);
            msgpack_sbuffer_destroy(&sb);
        } else
            printf("%s  %s\n", s_level[f[i].level], f[i].text);
    }
    pm_msg_destroy(&reply);
    return problems ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}
