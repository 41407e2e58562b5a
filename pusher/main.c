/*  picomdm-pusher — the APNs HTTP/2 client: wakeups in, MDM pushes out
 *  (push_apns.h for the rules, docs/push.md for the operator's view).
 *  Holds the push certificate's key and nothing else.
 *
 *  --stdin: wakes come from standard input and outcomes go to standard
 *  output (push_stdin.h) — tests, benchmarks, pushing a device by hand.
 *  SIGHUP reloads the push certificate (stopped topics resume), and so does a
 *  change of the certificate file (`picomdm pushcert install`). Its validity
 *  is re-checked every cert-check-s seconds and after every reload
 *  (push_expiry.h): warnings from 30 days before expiry; once expired,
 *  pushes are held until a valid certificate is loaded.
 */
#include "pm_cfg.h"
#include "pm_getpid.h"
#include "pm_log.h"
#include "pm_notify.h"
#include "pm_stats.h"
#include "push_apns.h"
#include "push_cert.h"
#include "push_expiry.h"
#include "push_stdin.h"
#include "push_svc.h"

#include <czmq.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const pm_opt_t s_opts[] = {
    {"push-cert", PM_OPT_STR, NULL,
     "MDM push certificate: PEM (key may be in the same file) or PKCS#12 (.p12)"},
    {"push-key", PM_OPT_STR, NULL, "its private key (PEM), when not inside push-cert"},
    {"push-cert-password", PM_OPT_STR, NULL, "password of the .p12 or of the encrypted PEM key"},
    {"apns", PM_OPT_STR, "production",
     "production (api.push.apple.com), development (api.sandbox.push.apple.com) or a base URL"},
    {"apns-ca", PM_OPT_STR, NULL, "CA bundle to verify the APNs server (default: the system's)"},
    {"connections", PM_OPT_INT, "2", "HTTP/2 connections to APNs (the pool)"},
    {"streams", PM_OPT_INT, "500", "concurrent pushes per connection"},
    {"max-inflight", PM_OPT_INT, "0",
     "concurrent pushes over the whole pool (0 = streams); spread over the connections"},
    {"transport", PM_OPT_STR, "curl",
     "curl: libcurl's multi interface (the project's HTTP client) or h2: opt-in HTTP/2 client "
     "on libnghttp2 (batches frames, ~4x less CPU per push; docs/push.md)"},
    {"timeout-ms", PM_OPT_INT, "10000", "per push request"},
    {"max-attempts", PM_OPT_INT, "5", "tries per push for 429/5xx/GOAWAY/timeouts"},
    {"backoff-ms", PM_OPT_INT, "1000", "first retry delay (doubles per attempt, with jitter)"},
    {"backoff-max-ms", PM_OPT_INT, "60000", "longest retry delay"},
    {"expiration", PM_OPT_INT, "86400",
     "APNs keeps an undelivered push this many seconds (0 = deliver now or never)"},
    {"cert-check-s", PM_OPT_INT, "3600",
     "re-check the certificate's validity this often (seconds; also after every reload)"},
    {"cert-watch-ms", PM_OPT_INT, "2000",
     "reload when the certificate file changes (checked this often; 0 = only on SIGHUP)"},
    {"request-endpoint", PM_OPT_STR, "tcp://127.0.0.1:7401",
     "broker request endpoint (ROUTER): we serve 'push' and call 'store'"},
    {"server-key", PM_OPT_STR, NULL, "broker CURVE public key (Z85) when not on ipc/loopback"},
    {"curve-cert", PM_OPT_STR, NULL, "our CURVE certificate file (with server-key)"},
    {"publish-endpoint", PM_OPT_STR, "tcp://127.0.0.1:7402",
     "broker publish endpoint (XSUB) for our stats snapshots (empty: none)"},
    PM_STATS_OPTION,
    {"stdin", PM_OPT_BOOL, "false",
     "read \"wake <eid> <token hex> <PushMagic> [topic]\" lines, print outcomes as JSON"},
    {NULL, 0, NULL, NULL}};

static volatile sig_atomic_t s_reload;

static void s_on_hup(int sig)
{
    (void)sig;
    s_reload = 1;
}

//  Load and vet the push certificate. NULL (logged) when unusable. With
//  `keep_expired` an expired (or not yet valid) certificate is returned with
//  an error logged: the validity check then holds pushes until a valid one
//  is installed, instead of the pusher failing in a restart loop.
static push_cert_t *s_load_cert(const pm_cfg_t *cfg, bool keep_expired)
{
    char err[512];
    push_cert_t *c = push_cert_load(pm_cfg_str(cfg, "push-cert"), pm_cfg_str(cfg, "push-key"),
                                    pm_cfg_str(cfg, "push-cert-password"), true, err, sizeof err);
    if (!c) {
        pm_error("%s", err);
        return NULL;
    }
    int days = 0;
    push_cert_state_t st = push_cert_state(c, time(NULL), &days);
    if (!*push_cert_topic(c)) {
        pm_error("the push certificate %s has no UID topic in its subject: it is not an MDM push "
                 "certificate (get one from identity.apple.com, see `picomdm pushcert`)",
                 pm_cfg_str(cfg, "push-cert"));
        push_cert_destroy(&c);
    } else if (st == PUSH_CERT_EXPIRED || st == PUSH_CERT_NOT_YET_VALID) {
        pm_error("the push certificate for %s is %s (notAfter %ld): APNs would refuse it; renew "
                 "it at identity.apple.com with the same Apple ID and install it with `picomdm "
                 "pushcert install`",
                 push_cert_topic(c), push_cert_state_name(st), (long)push_cert_not_after(c));
        if (!keep_expired)
            push_cert_destroy(&c);
    } else if (st == PUSH_CERT_EXPIRING) {
        pm_warn("the push certificate for %s expires in %d days: renew it at identity.apple.com "
                "(same Apple ID, so the topic stays) before devices become unreachable",
                push_cert_topic(c), days);
    } else {
        pm_info("push certificate for %s, valid for %d more days", push_cert_topic(c), days);
    }
    return c;
}

typedef struct {
    push_cert_t *cert; //  in use (owned)
    const pm_cfg_t *cfg;
    push_svc_t *svc; //  NULL in --stdin mode (log only)
    push_expiry_t exp;
    int64_t next_check_ms, next_watch_ms;
    struct stat seen[2]; //  push-cert, push-key as last loaded
} s_ctx_t;

static int64_t s_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

//  Remember the certificate files as loaded (a missing file is all zeros).
static void s_stamp(s_ctx_t *x)
{
    const char *paths[2] = {pm_cfg_str(x->cfg, "push-cert"), pm_cfg_str(x->cfg, "push-key")};
    for (int i = 0; i < 2; i++)
        if (!paths[i] || stat(paths[i], &x->seen[i]) < 0)
            memset(&x->seen[i], 0, sizeof x->seen[i]);
}

//  Whether a certificate file was replaced or rewritten since s_stamp.
static bool s_files_changed(s_ctx_t *x)
{
    const char *paths[2] = {pm_cfg_str(x->cfg, "push-cert"), pm_cfg_str(x->cfg, "push-key")};
    for (int i = 0; i < 2; i++) {
        struct stat now;
        if (!paths[i] || stat(paths[i], &now) < 0)
            continue; //  gone for a moment (being replaced): keep what we have
        if (now.st_ino != x->seen[i].st_ino || now.st_size != x->seen[i].st_size ||
            now.st_mtim.tv_sec != x->seen[i].st_mtim.tv_sec ||
            now.st_mtim.tv_nsec != x->seen[i].st_mtim.tv_nsec)
            return true;
    }
    return false;
}

//  The validity check (push_expiry.h): warn, hold pushes, resume.
static void s_check(s_ctx_t *x, push_apns_t *apns)
{
    char msg[600];
    int act = push_expiry_check(&x->exp, x->cert, time(NULL), msg, sizeof msg);
    if (act & PUSH_EXPIRY_STOP) {
        pm_error("%s", msg);
        push_apns_stop(apns, msg);
        if (x->svc)
            push_svc_event(x->svc, "push.cert_expired", msg);
    }
    if (act & PUSH_EXPIRY_RESUME) {
        pm_notice("%s", msg);
        push_apns_resume(apns);
    }
    if (act & PUSH_EXPIRY_WARN) {
        pm_warn("%s", msg);
        if (x->svc)
            push_svc_event(x->svc, "push.cert_expiring", msg);
    }
}

//  Once per loop turn: SIGHUP or a changed certificate file loads the
//  certificate again; on success the client switches to it (stopped topics
//  resume), on failure the old one stays in use. Then the validity check,
//  every cert-check-s seconds and after every reload.
static void s_tick(void *arg, push_apns_t *apns)
{
    s_ctx_t *x = arg;
    int64_t now = s_mono_ms();
    int64_t watch = pm_cfg_int(x->cfg, "cert-watch-ms");
    bool reload = s_reload;
    if (!reload && watch > 0 && now >= x->next_watch_ms) {
        x->next_watch_ms = now + watch;
        if (s_files_changed(x)) {
            pm_notice("the push certificate file changed: reloading it");
            reload = true;
        }
    }
    if (reload) {
        s_reload = 0;
        pm_notice("reloading the push certificate");
        s_stamp(x); //  a broken file is tried again only when it changes again
        push_cert_t *fresh = s_load_cert(x->cfg, false);
        char err[256];
        if (!fresh) {
            pm_error("reload failed: still using the previous certificate");
        } else if (push_apns_set_cert(apns, fresh, err, sizeof err) < 0) {
            pm_error("reload failed: %s", err);
            push_cert_destroy(&fresh);
        } else {
            push_cert_destroy(&x->cert);
            x->cert = fresh;
            //  set_cert resumed every stopped topic: start the check afresh
            push_expiry_init(&x->exp);
            x->next_check_ms = 0;
        }
    }
    if (now >= x->next_check_ms) {
        int64_t every = pm_cfg_int(x->cfg, "cert-check-s");
        x->next_check_ms = now + (every > 0 ? every : 3600) * 1000;
        s_check(x, apns);
    }
}

int main(int argc, char **argv)
{
    pm_getpid_init(); //  getpid() without a syscall (libzmq, OpenSSL): pm_getpid.h
    pm_cfg_t *cfg = NULL;
    pm_cfg_result_t r =
        pm_cfg_parse(&cfg, "pusher", "PicoMDM APNs pusher (HTTP/2)", s_opts, argc, argv);
    if (r == PM_CFG_EXIT)
        return 0;
    if (r == PM_CFG_ERROR)
        return 2;
    int rc = 1;
    push_cert_t *cert = NULL;
    push_apns_t *apns = NULL;
    pm_bus_t *bus = NULL;
    push_svc_t *svc = NULL;
    pm_stats_t *stats = NULL;
    char err[512];
    if (pm_cfg_start_logging(cfg) < 0 || pm_stats_from_cfg(cfg, "pusher", &stats) < 0)
        goto out;
    const char *pub = pm_cfg_str(cfg, "publish-endpoint");
    if (pub && !*pub)
        pub = NULL;
    if (!pm_cfg_str(cfg, "push-cert") && !pm_cfg_bool(cfg, "stdin") && r != PM_CFG_CHECK) {
        //  `picomdm up` without a certificate: serve "push" and answer every wake
        //  with push.failed saying what to do, instead of failing in a restart loop
        pm_notice("NOTICE: no push certificate configured (push-cert): devices are not woken; "
                  "every wake is reported as push.failed until one is installed");
        pm_bus_config_t bc = {.name = "pusher",
                              .request_endpoint = pm_cfg_str(cfg, "request-endpoint"),
                              .publish_endpoint = pub,
                              .server_public_key = pm_cfg_str(cfg, "server-key"),
                              .cert_file = pm_cfg_str(cfg, "curve-cert")};
        if (!(bus = pm_bus_new(&bc)) || !(svc = push_svc_new(bus)))
            goto out;
        push_svc_set_stats(svc, stats);
        pm_notify_ready();
        rc = push_svc_run(svc, NULL, NULL) == 0 ? 0 : 1;
        pm_notify_stopping();
        goto out;
    }
    if (!(cert = s_load_cert(cfg, r != PM_CFG_CHECK)))
        goto out;
    const char *env = pm_cfg_str(cfg, "apns");
    const char *base = strcmp(env, "production") == 0    ? PUSH_APNS_PRODUCTION
                       : strcmp(env, "development") == 0 ? PUSH_APNS_SANDBOX
                                                         : env;
    push_apns_cfg_t ac = {.base_url = base,
                          .ca_file = pm_cfg_str(cfg, "apns-ca"),
                          .connections = (int)pm_cfg_int(cfg, "connections"),
                          .streams = (int)pm_cfg_int(cfg, "streams"),
                          .max_inflight = (int)pm_cfg_int(cfg, "max-inflight"),
                          .timeout_ms = (int)pm_cfg_int(cfg, "timeout-ms"),
                          .max_attempts = (int)pm_cfg_int(cfg, "max-attempts"),
                          .backoff_ms = (int)pm_cfg_int(cfg, "backoff-ms"),
                          .backoff_max_ms = (int)pm_cfg_int(cfg, "backoff-max-ms"),
                          .expiration_s = pm_cfg_int(cfg, "expiration"),
                          .use_curl = strcmp(pm_cfg_str(cfg, "transport"), "curl") == 0};
    if (strcmp(pm_cfg_str(cfg, "transport"), "curl") != 0 &&
        strcmp(pm_cfg_str(cfg, "transport"), "h2") != 0) {
        pm_error("transport must be h2 or curl, not \"%s\"", pm_cfg_str(cfg, "transport"));
        goto out;
    }
    bool use_stdin = pm_cfg_bool(cfg, "stdin");
    if (!use_stdin && r != PM_CFG_CHECK) {
        pm_bus_config_t bc = {.name = "pusher",
                              .request_endpoint = pm_cfg_str(cfg, "request-endpoint"),
                              .publish_endpoint = pub,
                              .server_public_key = pm_cfg_str(cfg, "server-key"),
                              .cert_file = pm_cfg_str(cfg, "curve-cert")};
        if (!(bus = pm_bus_new(&bc))) {
            pm_error("cannot connect to the broker at %s (check request-endpoint)",
                     bc.request_endpoint);
            goto out;
        }
        if (!(svc = push_svc_new(bus)))
            goto out;
    }
    apns = push_apns_new(&ac, cert, svc ? push_svc_outcome : push_stdin_print,
                         svc ? (void *)svc : (void *)stdout, err, sizeof err);
    if (!apns) {
        pm_error("%s", err);
        goto out;
    }
    if (r == PM_CFG_CHECK) {
        printf("ok\n");
        rc = 0;
        goto out;
    }
    signal(SIGHUP, s_on_hup);
    signal(SIGPIPE, SIG_IGN);
    s_ctx_t ctx = {.cert = cert, .cfg = cfg, .svc = svc};
    cert = NULL; //  owned by ctx from here
    push_expiry_init(&ctx.exp);
    s_stamp(&ctx);
    if (use_stdin) {
        pm_info("pushing to %s with %d connection(s); reading wakes from stdin", base,
                ac.connections);
        rc = push_stdin_run(apns, 0, stdout, s_tick, &ctx) == 0 ? 0 : 1;
        push_apns_destroy(&apns);
        push_cert_destroy(&ctx.cert);
        goto out;
    }
    push_svc_attach(svc, apns);
    push_svc_set_stats(svc, stats);
    pm_info("serving 'push' via %s; pushing to %s with %d connection(s)",
            pm_cfg_str(cfg, "request-endpoint"), base, ac.connections);
    pm_notify_ready();
    rc = push_svc_run(svc, s_tick, &ctx) == 0 ? 0 : 1;
    pm_notify_stopping();
    push_apns_destroy(&apns);
    push_cert_destroy(&ctx.cert);
out:
    push_apns_destroy(&apns);
    push_svc_destroy(&svc);
    pm_bus_destroy(&bus);
    push_cert_destroy(&cert);
    pm_stats_destroy(&stats);
    pm_cfg_destroy(&cfg);
    return rc;
}
