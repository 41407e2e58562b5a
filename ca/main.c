/*  picomdm-ca — the device identity CA: SCEP (RFC 8894) for device
 *  certificates and CMS-signed enrollment profiles (docs/enrollment.md).
 *  Holds the CA key and the profile signing key; never parses device HTTP
 *  (the gateway forwards SCEP requests as `scep` bus messages).
 *
 *    picomdm-ca [options]            serve the "ca" bus service
 *    picomdm-ca [options] profile    write one signed profile (DER) to --out or
 *                                    stdout, without the bus (static challenge only)
 */
#include "ca_svc.h"
#include "pm_alloc.h"
#include "pm_bus.h"
#include "pm_cfg.h"
#include "pm_getpid.h"
#include "pm_log.h"
#include "pm_notify.h"
#include "pm_stats.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const pm_opt_t s_opts[] = {
    {"data-dir", PM_OPT_STR, "/var/lib/picomdm",
     "directory for the keys made on first start (created 0700)"},
    {"ca-cert", PM_OPT_STR, NULL, "device CA certificate, PEM (default <data-dir>/ca.crt)"},
    {"ca-key", PM_OPT_STR, NULL,
     "device CA key, PEM 0600 (default ca.key beside ca-cert, or in data-dir; both absent = make a "
     "new CA)"},
    {"ra-cert", PM_OPT_STR, NULL,
     "SCEP RA certificate, used when the CA key is not RSA (default scep-ra.crt beside ca-cert, or "
     "in data-dir)"},
    {"ra-key", PM_OPT_STR, NULL, "SCEP RA key (default <data-dir>/scep-ra.key)"},
    {"signer-cert", PM_OPT_STR, NULL,
     "profile signing certificate, made by the CA (default profile-signer.crt beside ca-cert, or "
     "in data-dir)"},
    {"signer-key", PM_OPT_STR, NULL, "profile signing key (default <data-dir>/profile-signer.key)"},
    {"cert-days", PM_OPT_INT, "365", "lifetime of issued device certificates, days"},
    {"key-usage", PM_OPT_STR, "critical,digitalSignature,keyEncipherment",
     "keyUsage of device certificates (OpenSSL extension syntax)"},
    {"ext-key-usage", PM_OPT_STR, "clientAuth",
     "extendedKeyUsage of device certificates (\"\" = none)"},
    {"subject", PM_OPT_STR, "",
     "subject of device certificates: \"\" = as requested, or /O=Org/OU=Devices + requested CN"},
    {"min-rsa-bits", PM_OPT_INT, "2048", "smallest RSA key accepted in a request"},
    {"challenge-mode", PM_OPT_STR, "one-time",
     "one-time: a fresh challenge per profile; static: `challenge` for everyone"},
    {"challenge", PM_OPT_STR, NULL,
     "the static SCEP challenge (prefer the PICOMDM_CHALLENGE environment variable)"},
    {"challenge-ttl", PM_OPT_INT, "604800", "seconds a one-time challenge stays valid"},
    {"server-url", PM_OPT_STR, NULL, "profile: ServerURL, https://host:port/path"},
    {"checkin-url", PM_OPT_STR, NULL, "profile: CheckInURL (default: ServerURL)"},
    {"scep-url", PM_OPT_STR, NULL, "profile: the SCEP URL devices use"},
    {"topic", PM_OPT_STR, NULL, "profile: APNs topic (default: from push-cert)"},
    {"push-cert", PM_OPT_STR, NULL, "push certificate (PEM) to read the topic from"},
    {"tls-anchor", PM_OPT_STR, NULL,
     "profile: self-made TLS server certificate (PEM) to include as trust anchor"},
    {"organization", PM_OPT_STR, "PicoMDM", "profile: PayloadOrganization and certificate O"},
    {"display-name", PM_OPT_STR, "MDM enrollment", "profile: PayloadDisplayName"},
    {"profile-identifier", PM_OPT_STR, "org.picomdm.enroll", "profile: PayloadIdentifier"},
    {"out", PM_OPT_STR, NULL, "profile command: write here instead of stdout"},
    {"request-endpoint", PM_OPT_STR, NULL,
     "broker request endpoint (default ipc://<run-dir>/request, as the broker's)"},
    {"publish-endpoint", PM_OPT_STR, NULL,
     "broker publish endpoint for events (default ipc://<run-dir>/publish; \"-\" = none)"},
    {"run-dir", PM_OPT_STR, NULL,
     "default ipc directory: $XDG_RUNTIME_DIR/picomdm or /tmp/picomdm"},
    {"heartbeat-ms", PM_OPT_INT, "1000", "bus heartbeat interval"},
    {"store-timeout-ms", PM_OPT_INT, "1500",
     "one-time challenges: wait this long for picomdm-store per attempt (one retry) before a "
     "PKCSReq is answered with 503, which the device retries (keep it under half the gateway's "
     "timeout)"},
    {"event-window-ms", PM_OPT_INT, "20",
     "audit events (ca.profile, renewals' ca.issued, ca.rejected) wait at most this long to go "
     "to the store's event log together, in one request and one commit (0: each at once); a "
     "kill -9 loses at most this window's events from the sequenced log"},
    {"server-key", PM_OPT_STR, NULL, "broker CURVE public key (Z85) when not on ipc/loopback"},
    {"curve-cert", PM_OPT_STR, NULL, "our CURVE certificate (zcert secret file)"},
    PM_STATS_OPTION,
    {NULL, 0, NULL, NULL}};

//  An option's path, or `file` in the directory of `ca-cert` when that is set
//  (the RA and profile signer live beside the CA), else in data-dir.
static const char *s_path(const pm_cfg_t *cfg, const char *opt, const char *file, char *buf,
                          size_t size)
{
    const char *v = pm_cfg_str(cfg, opt);
    if (v && v[0])
        return v;
    const char *ca = pm_cfg_str(cfg, "ca-cert");
    const char *slash = ca ? strrchr(ca, '/') : NULL;
    if (slash)
        snprintf(buf, size, "%.*s/%s", (int)(slash - ca), ca, file);
    else
        snprintf(buf, size, "%s/%s", pm_cfg_str(cfg, "data-dir"), file);
    return buf;
}

//  Audit events wait at most `event-window-ms` (or until S_EV_MAX are
//  pending) and go to the store together, in one event.append_batch: an
//  enrollment raises two (ca.profile, ca.issued), and one store request each
//  was a tenth of the server's CPU per enrollment (docs/enrollment.md,
//  "Server CPU per enrollment"). A longer window shares more batches (250 ms:
//  0.4 fewer store commits per enrollment one device at a time) but a kill -9
//  loses that much more of the log, and at 16 enrollments in flight no CPU
//  difference showed: the default stays 20 ms (docs/enrollment.md, session 6).
#define S_EV_MAX 64

typedef struct {
    ca_svc_t *svc;
    pm_bus_t *bus;
    pm_msg_t *pending[S_EV_MAX]; //  events not yet sent to the store, oldest first
    int npending;
    double pending_since; //  pm_stats_now_ms() of the oldest
    int ev_wait_ms;       //  how long the oldest may wait (event-window-ms)
    bool publish;
    int store_timeout_ms;
    pm_stats_t *stats; //  may be NULL
    pm_stats_series_t *issued, *rejected, *profiles, *errors, *latency;
} s_ctx_t;

static void s_stats_init(s_ctx_t *c)
{
    c->issued = pm_stats_counter(c->stats, "ca_issued_total", "certificates issued (SCEP)");
    c->rejected = pm_stats_counter(c->stats, "ca_scep_failures_total",
                                   "SCEP PKIOperations refused (CertRep FAILURE)");
    c->profiles =
        pm_stats_counter(c->stats, "ca_profiles_signed_total", "enrollment profiles signed");
    c->errors = pm_stats_counter(c->stats, "ca_errors_total",
                                 "requests answered with an error or an HTTP status >= 400");
    c->latency = pm_stats_histogram(c->stats, "ca_request_duration_seconds",
                                    "time to handle one ca request");
}

//  Counts of one handled request: SCEP by operation, what its event says.
static void s_count(s_ctx_t *c, const pm_msg_t *req, const pm_msg_t *rep, const pm_msg_t *ev,
                    double ms)
{
    if (!c->stats)
        return;
    pm_stats_observe_ms(c->latency, ms);
    if (pm_msg_type(req) == PM_MSG_SCEP) {
        static const char *const known[] = {"GetCACaps", "GetCACert", "PKIOperation"};
        const char *op = pm_msg_str(req, "operation"), *label = "other";
        for (size_t i = 0; op && i < sizeof known / sizeof *known; i++)
            if (strcmp(op, known[i]) == 0)
                label = known[i]; //  a bounded label set: the client chooses `op`
        pm_stats_inc(pm_stats_get(c->stats, PM_STATS_COUNTER, "ca_scep_requests_total",
                                  "SCEP requests, by operation", "operation", label, NULL, NULL));
    }
    const char *name = ev ? pm_msg_str(ev, "name") : NULL;
    if (name && strcmp(name, "ca.issued") == 0)
        pm_stats_inc(c->issued);
    else if (name && strcmp(name, "ca.rejected") == 0)
        pm_stats_inc(c->rejected);
    if (rep && pm_msg_type(rep) == PM_MSG_PROFILE_REPLY)
        pm_stats_inc(c->profiles);
    if (!rep || pm_msg_type(rep) == PM_MSG_ERROR ||
        (pm_msg_type(rep) == PM_MSG_SCEP_REPLY && pm_msg_uint(rep, "status", 500) >= 400))
        pm_stats_inc(c->errors);
}

//  Audit events on their way to the store's sequenced event log.
typedef struct {
    pm_bus_t *bus;
    pm_msg_t *ev[S_EV_MAX]; //  the plain EVENTs, published instead if the store does not take them
    int n;
} s_append_t;

static void s_publish_all(s_append_t *a)
{
    for (int i = 0; i < a->n; i++) {
        if (pm_bus_publish(a->bus, a->ev[i]) < 0)
            pm_warn("cannot publish %s: check publish-endpoint", pm_msg_str(a->ev[i], "name"));
        pm_msg_destroy(&a->ev[i]);
    }
    free(a);
}

static void s_on_append_reply(void *arg, const pm_msg_t *reply, const char *error)
{
    s_append_t *a = arg;
    if (!reply || pm_msg_type(reply) != PM_MSG_EVENT_APPEND_BATCH_REPLY) {
        //  No store: live subscribers still see them; only the sequenced log
        //  (auditors, replay after a gap) misses them.
        pm_warn("%d event(s) (%s...) not in the event log (%s); published without a seq (is "
                "picomdm-store running?)",
                a->n, pm_msg_str(a->ev[0], "name"),
                error                                         ? error
                : reply && pm_msg_type(reply) == PM_MSG_ERROR ? pm_msg_str(reply, "message")
                                                              : "unexpected reply");
        s_publish_all(a);
        return;
    }
    for (int i = 0; i < a->n; i++)
        pm_msg_destroy(&a->ev[i]);
    free(a);
}

//  Send the pending events to the store (event.append_batch), which logs
//  them with sequence numbers and publishes them, as every event is
//  (DESIGN.md §3): an auditor that missed one replays it.
static void s_flush(s_ctx_t *c)
{
    if (c->npending == 0)
        return;
    if (!c->bus) { //  stopped: nothing can take them any more
        pm_warn("%d audit event(s) raised after the bus was closed are not logged", c->npending);
        for (int i = 0; i < c->npending; i++)
            pm_msg_destroy(&c->pending[i]);
        c->npending = 0;
        return;
    }
    s_append_t *a = calloc(1, sizeof *a);
    if (!a) {
        pm_warn("out of memory: %d audit event(s) dropped", c->npending);
        for (int i = 0; i < c->npending; i++)
            pm_msg_destroy(&c->pending[i]);
        c->npending = 0;
        return;
    }
    a->bus = c->bus;
    a->n = c->npending;
    memcpy(a->ev, c->pending, sizeof(pm_msg_t *) * (size_t)c->npending);
    c->npending = 0;
    pm_msg_t *app = pm_msg_new(PM_MSG_EVENT_APPEND_BATCH);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, (size_t)a->n);
    for (int i = 0; i < a->n; i++) {
        const msgpack_object *data = pm_msg_obj(a->ev[i], "data");
        const char *eid = pm_msg_has(a->ev[i], "eid") ? pm_msg_str(a->ev[i], "eid") : NULL;
        const char *name = pm_msg_str(a->ev[i], "name");
        msgpack_pack_map(&pk, 2 + (data != NULL) + (eid != NULL));
        msgpack_pack_str_with_body(&pk, "name", 4);
        msgpack_pack_str_with_body(&pk, name ? name : "", name ? strlen(name) : 0);
        msgpack_pack_str_with_body(&pk, "source", 6);
        msgpack_pack_str_with_body(&pk, "ca", 2);
        if (eid) {
            msgpack_pack_str_with_body(&pk, "eid", 3);
            msgpack_pack_str_with_body(&pk, eid, strlen(eid));
        }
        if (data) {
            msgpack_pack_str_with_body(&pk, "data", 4);
            msgpack_pack_object(&pk, *data);
        }
    }
    //  the service that owns the event log, as the message table says
    if (app && pm_msg_set_packed(app, "events", (const uint8_t *)sb.data, sb.size) == 0 &&
        pm_bus_call_async(c->bus, pm_msgdef(PM_MSG_EVENT_APPEND_BATCH)->service, app, 2000, 0,
                          s_on_append_reply, a) == 0)
        a = NULL; //  the callback owns it now
    msgpack_sbuffer_destroy(&sb);
    pm_msg_destroy(&app);
    if (a)
        s_publish_all(a);
}

//  ca.issued / ca.rejected / ca.profile: queued for the store (s_flush). Takes *evp.
static void s_emit(s_ctx_t *c, pm_msg_t **evp)
{
    if (c->npending == 0)
        c->pending_since = pm_stats_now_ms();
    c->pending[c->npending++] = *evp;
    *evp = NULL;
    if (c->npending == S_EV_MAX)
        s_flush(c);
}

static uint64_t s_in_flight(const pm_bus_t *bus)
{
    pm_bus_stats_t st;
    pm_bus_stats(bus, &st);
    return st.requests - st.replies - st.failures;
}

//  Milliseconds the bus loop may sleep before the pending events are due.
static int s_flush_due_ms(s_ctx_t *c, int poll_ms)
{
    if (c->npending == 0)
        return poll_ms;
    double left = c->pending_since + c->ev_wait_ms - pm_stats_now_ms();
    if (left <= 0) {
        s_flush(c);
        return poll_ms;
    }
    return left < poll_ms ? (int)left + 1 : poll_ms;
}

//  A request being handled: profiles and PKCSReqs with one-time challenges
//  wait for the store (ca_svc.h), the others are answered at once.
typedef struct {
    s_ctx_t *c;
    pm_bus_job_t *job;
    double t0;
} s_job_t;

//  The answer: reply to the job, count it, then log and publish the audit
//  event, if any.
static void s_on_done(void *arg, pm_msg_t *rep, pm_msg_t *ev)
{
    s_job_t *j = arg;
    s_ctx_t *c = j->c;
    //  the event is made even when not published: the counters read it
    s_count(c, pm_bus_job_msg(j->job), rep, ev, pm_stats_now_ms() - j->t0);
    //  an event with a seq is in the store's log already (ca.issued rides in
    //  scep_challenge.use) and the store publishes it
    if (!c->publish || (ev && pm_msg_uint(ev, "seq", 0) > 0))
        pm_msg_destroy(&ev);
    if (rep)
        pm_bus_job_reply(&j->job, rep);
    else
        pm_bus_job_drop(&j->job);
    pm_msg_destroy(&rep);
    free(j);
    if (ev)
        s_emit(c, &ev);
}

static void s_on_job(void *arg, pm_bus_job_t *job)
{
    s_ctx_t *c = arg;
    s_job_t *j = malloc(sizeof *j);
    if (!j) {
        pm_error("out of memory: request dropped (the client retries)");
        pm_bus_job_drop(&job);
        return;
    }
    *j = (s_job_t){c, job, pm_stats_now_ms()};
    ca_svc_request(c->svc, pm_bus_job_msg(job), s_on_done, j);
}

//  How ca_svc reaches the store (durable one-time challenges): never blocking
//  the loop; the service that handles the message, as the table says.
static int s_store_call(void *arg, const pm_msg_t *req, pm_bus_reply_fn *fn, void *fn_arg)
{
    s_ctx_t *c = arg;
    if (!c->bus)
        return -1;
    return pm_bus_call_async(c->bus, pm_msgdef(pm_msg_type(req))->service, req, c->store_timeout_ms,
                             1, fn, fn_arg);
}

static const char *s_endpoint(const pm_cfg_t *cfg, const char *opt, const char *name, char *buf,
                              size_t size)
{
    const char *v = pm_cfg_str(cfg, opt);
    if (v && v[0])
        return strcmp(v, "-") == 0 ? NULL : v;
    const char *rd = pm_cfg_str(cfg, "run-dir"), *xdg = getenv("XDG_RUNTIME_DIR");
    if (rd && rd[0])
        snprintf(buf, size, "ipc://%s/%s", rd, name);
    else if (xdg && xdg[0])
        snprintf(buf, size, "ipc://%s/picomdm/%s", xdg, name);
    else
        snprintf(buf, size, "ipc:///tmp/picomdm/%s", name);
    return buf;
}

static int s_write_out(const char *path, const uint8_t *data, size_t len)
{
    int fd = path ? open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644) : STDOUT_FILENO;
    if (fd < 0) {
        pm_error("cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, data + off, len - off);
        if (n <= 0) {
            pm_error("cannot write the profile: %s", strerror(errno));
            break;
        }
        off += (size_t)n;
    }
    if (path)
        close(fd);
    return off == len ? 0 : -1;
}

int main(int argc, char **argv)
{
    pm_getpid_init(); //  getpid() without a syscall (libzmq, OpenSSL): pm_getpid.h
    pm_cfg_t *cfg = NULL;
    pm_cfg_result_t r = pm_cfg_parse(&cfg, "ca", "PicoMDM device CA (SCEP, enrollment profiles)",
                                     s_opts, argc, argv);
    if (r == PM_CFG_EXIT)
        return 0;
    if (r == PM_CFG_ERROR)
        return 2;
    int rc = 1;
    ca_svc_t *svc = NULL;
    pm_stats_t *stats = NULL;
    if (pm_cfg_start_logging(cfg) < 0 || pm_stats_from_cfg(cfg, "ca", &stats) < 0)
        goto out;
    const char *cmd = pm_cfg_argc(cfg) > 0 ? pm_cfg_arg(cfg, 0) : NULL;
    if (cmd && strcmp(cmd, "profile") != 0) {
        fprintf(stderr, "picomdm-ca: unknown command '%s' (the only command is `profile`)\n", cmd);
        rc = 2;
        goto out;
    }
    const char *mode = pm_cfg_str(cfg, "challenge-mode");
    ca_challenge_mode_t cm;
    if (mode && strcmp(mode, "static") == 0)
        cm = CA_CHALLENGE_STATIC;
    else if (mode && strcmp(mode, "one-time") == 0)
        cm = CA_CHALLENGE_ONE_TIME;
    else {
        pm_error("challenge-mode must be one-time or static, not '%s'", mode ? mode : "");
        rc = 2;
        goto out;
    }
    if (cmd && cm != CA_CHALLENGE_STATIC) {
        pm_error("`picomdm-ca profile` runs without the service, which would not know a one-time "
                 "challenge: use --challenge-mode static with a challenge, or ask the running "
                 "service (`picomdm profile`)");
        rc = 2;
        goto out;
    }
    const char *dir = pm_cfg_str(cfg, "data-dir");
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        pm_error("cannot create data-dir %s: %s", dir, strerror(errno));
        goto out;
    }
    char p[6][4096];
    s_ctx_t ctx = {.stats = stats};
    int64_t sto = pm_cfg_int(cfg, "store-timeout-ms");
    ctx.store_timeout_ms = sto >= 100 && sto <= 60000 ? (int)sto : 1500;
    int64_t evw = pm_cfg_int(cfg, "event-window-ms");
    if (evw < 0 || evw > 2000) {
        pm_error("event-window-ms must be 0..2000 (ms the audit events wait to go to the store "
                 "together), not %lld",
                 (long long)evw);
        rc = 2;
        goto out;
    }
    ctx.ev_wait_ms = (int)evw;
    ca_svc_opts_t o = {
        .pki = {.ca_cert = s_path(cfg, "ca-cert", "ca.crt", p[0], sizeof p[0]),
                .ca_key = s_path(cfg, "ca-key", "ca.key", p[1], sizeof p[1]),
                .ra_cert = s_path(cfg, "ra-cert", "scep-ra.crt", p[2], sizeof p[2]),
                .ra_key = s_path(cfg, "ra-key", "scep-ra.key", p[3], sizeof p[3]),
                .signer_cert = s_path(cfg, "signer-cert", "profile-signer.crt", p[4], sizeof p[4]),
                .signer_key = s_path(cfg, "signer-key", "profile-signer.key", p[5], sizeof p[5]),
                .cert_days = (int)pm_cfg_int(cfg, "cert-days"),
                .key_usage = pm_cfg_str(cfg, "key-usage"),
                .ext_key_usage = pm_cfg_str(cfg, "ext-key-usage"),
                .subject = pm_cfg_str(cfg, "subject"),
                .min_rsa_bits = (int)pm_cfg_int(cfg, "min-rsa-bits")},
        .challenge_mode = cm,
        .challenge = pm_cfg_str(cfg, "challenge"),
        .challenge_ttl_s = pm_cfg_int(cfg, "challenge-ttl"),
        .profile = {.server_url = pm_cfg_str(cfg, "server-url"),
                    .checkin_url = pm_cfg_str(cfg, "checkin-url"),
                    .scep_url = pm_cfg_str(cfg, "scep-url"),
                    .topic = pm_cfg_str(cfg, "topic"),
                    .organization = pm_cfg_str(cfg, "organization"),
                    .display_name = pm_cfg_str(cfg, "display-name"),
                    .identifier = pm_cfg_str(cfg, "profile-identifier")},
        .tls_anchor = pm_cfg_str(cfg, "tls-anchor"),
        .push_cert = pm_cfg_str(cfg, "push-cert"),
        //  the service keeps one-time challenges in the store (durable, shared
        //  by every ca process); the offline `profile` command is static only
        .call = cmd ? NULL : s_store_call,
        .call_arg = &ctx};
    char err[512];
    //  the CA's directory (e.g. /var/lib/picomdm/ca) is made on first start too
    if (pm_cfg_str(cfg, "ca-cert") && strrchr(pm_cfg_str(cfg, "ca-cert"), '/')) {
        char cadir[4096];
        const char *c = pm_cfg_str(cfg, "ca-cert");
        snprintf(cadir, sizeof cadir, "%.*s", (int)(strrchr(c, '/') - c), c);
        if (cadir[0] && mkdir(cadir, 0700) < 0 && errno != EEXIST) {
            pm_error("cannot create %s for the CA: %s", cadir, strerror(errno));
            goto out;
        }
    }
    svc = ca_svc_new(&o, err, sizeof err);
    if (!svc) {
        //  bad options or key files: a restart cannot fix that (exit 2, see deploy.md)
        pm_error("%s", err);
        rc = 2;
        goto out;
    }
    char alloc[64]; //  glibc's; mimalloc if linked (Makefile ALLOC_PROCS)
    pm_info("device CA %s ready (SCEP %s, challenge %s, allocator: %s)", o.pki.ca_cert,
            ca_pki_has_ra(ca_svc_pki(svc)) ? "via RSA RA" : "by the CA", mode,
            pm_alloc_name(alloc, sizeof alloc));
    if (r == PM_CFG_CHECK) {
        printf("ok\n");
        rc = 0;
        goto out;
    }
    if (cmd) {
        uint8_t *der = NULL;
        size_t len = 0;
        char uuid[37];
        if (ca_svc_profile(svc, NULL, &der, &len, uuid, NULL, NULL, err, sizeof err) < 0) {
            pm_error("profile: %s", err);
            goto out;
        }
        rc = s_write_out(pm_cfg_str(cfg, "out"), der, len) == 0 ? 0 : 1;
        OPENSSL_free(der);
        goto out;
    }
    {
        char req[1200], pub[1200];
        pm_bus_config_t bc = {
            .name = "ca",
            .request_endpoint = s_endpoint(cfg, "request-endpoint", "request", req, sizeof req),
            .publish_endpoint = s_endpoint(cfg, "publish-endpoint", "publish", pub, sizeof pub),
            .server_public_key = pm_cfg_str(cfg, "server-key"),
            .cert_file = pm_cfg_str(cfg, "curve-cert"),
            .heartbeat_ms = (int)pm_cfg_int(cfg, "heartbeat-ms")};
        ctx.svc = svc;
        ctx.publish = bc.publish_endpoint != NULL;
        s_stats_init(&ctx);
        ctx.bus = pm_bus_new(&bc);
        if (!ctx.bus || pm_bus_serve(ctx.bus, "ca", s_on_job, &ctx) < 0) {
            pm_error("cannot connect to the broker at %s: check request-endpoint",
                     bc.request_endpoint);
            pm_bus_destroy(&ctx.bus);
            goto out;
        }
        pm_info("serving \"ca\" at %s", bc.request_endpoint);
        pm_notify_ready();
        pm_notify_status("serving \"ca\" via %s", bc.request_endpoint);
        int64_t wd = pm_notify_watchdog_ms();
        int poll_ms = wd > 0 && wd < 1000 ? (int)wd : 1000;
        while (pm_bus_run_once(ctx.bus, s_flush_due_ms(&ctx, poll_ms)) >= 0) {
            s_flush_due_ms(&ctx, poll_ms);
            if (wd > 0)
                pm_notify_watchdog();
            pm_stats_tick(stats, ctx.bus);
        }
        pm_notify_stopping();
        pm_info("stopping");
        //  requests still waiting for the store get an answer the client retries
        if (ca_svc_waiting(svc) > 0)
            pm_info("answering %zu requests still waiting for the store with a retryable error",
                    ca_svc_waiting(svc));
        ca_svc_abandon(svc);
        //  those replies go out, then no new job is taken (a job arriving now
        //  would issue a certificate whose event could miss the flush below)
        pm_bus_unserve(ctx.bus);
        //  the last events: give the store 200 ms to take them
        s_flush(&ctx);
        for (int i = 0; i < 20 && s_in_flight(ctx.bus) > 0; i++) {
            usleep(10000);
            pm_bus_process(ctx.bus);
        }
        pm_bus_destroy(&ctx.bus);
        ca_svc_abandon(svc); //  none expected: no job was taken since
        s_flush(&ctx);       //  frees (and counts in a warning) any late event
        rc = 0;
    }
out:
    ca_svc_destroy(&svc);
    pm_stats_destroy(&stats);
    pm_cfg_destroy(&cfg);
    return rc;
}
