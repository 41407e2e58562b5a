/*  picomdm-gateway — the HTTPS front door for devices: check-in (CheckInURL)
 *  and command loop (ServerURL). Authenticates every request (Mdm-Signature,
 *  mTLS or a trusted proxy's certificate header), turns plist bodies into
 *  msgpack bus messages for the scheduler and its answers back into plists.
 *  Holds only its TLS key. See docs/gateway.md.
 */
#include "gw_admin.h"
#include "gw_auth.h"
#include "gw_server.h"
#include "pm_alloc.h"
#include "pm_bus.h"
#include "pm_cfg.h"
#include "pm_getpid.h"
#include "pm_log.h"
#include "pm_notify.h"
#include "pm_stats.h"

#include <czmq.h>
#include <event2/event.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  mimalloc's decommit delay (pm_alloc.h). With mimalloc's default (25 ms)
//  the gateway's heap breathes with the load: when requests come spread out
//  (the open loop), spans freed between two requests were decommitted and
//  faulted back in by the next ones, each madvise a TLB shootdown across both
//  CPUs (the libzmq I/O thread runs on the other). 1 s: ~250 -> ~4 madvise
//  and ~3,500 -> ~1,500 page faults per 20,000 open-loop requests; memory
//  still goes back after a burst (docs/gateway.md, "Session 9").
#define S_DECOMMIT_DELAY_MS 1000

static const pm_opt_t s_opts[] = {
    {"listen", PM_OPT_STR, "0.0.0.0:8443", "address:port for devices (shared with SO_REUSEPORT)"},
    {"tls-cert", PM_OPT_STR, NULL, "TLS server certificate chain (PEM)"},
    {"tls-key", PM_OPT_STR, NULL, "TLS server private key (PEM)"},
    {"tls-client-cert", PM_OPT_BOOL, "true",
     "ask TLS clients for their identity certificate (mTLS; checked per request)"},
    {"tls-session-cache", PM_OPT_INT, "4096",
     "TLS sessions kept for resumption (~1.3 KiB each, ~5 KiB with a client certificate: 4096 "
     "~5 MB, ~21 MB); 0: OpenSSL's encrypted session tickets instead"},
    {"device-ca", PM_OPT_STR, NULL,
     "PEM file(s), comma-separated, of the CA(s) that issue device identity certificates"},
    {"plain-http", PM_OPT_BOOL, "false", "serve plain HTTP behind a TLS-terminating proxy"},
    {"proxy-cert-header", PM_OPT_STR, "X-SSL-Client-Cert",
     "header carrying the client certificate as URL-escaped PEM (nginx $ssl_client_escaped_cert)"},
    {"trusted-proxies", PM_OPT_STR, "127.0.0.1,::1",
     "comma-separated proxy addresses allowed to send proxy-cert-header"},
    {"checkin-path", PM_OPT_STR, "/mdm/checkin", "path of the profile's CheckInURL"},
    {"server-path", PM_OPT_STR, "/mdm/connect", "path of the profile's ServerURL"},
    {"body-max", PM_OPT_INT, "8388608", "largest request body in bytes (answered 413 above)"},
    {"header-max", PM_OPT_INT, "65536", "largest request header block in bytes"},
    {"idle-timeout", PM_OPT_INT, "30", "seconds a connection may idle or trickle (slow clients)"},
    {"backend-timeout-ms", PM_OPT_INT, "10000", "wait this long for the scheduler, then 503"},
    {"retry-after", PM_OPT_INT, "10", "Retry-After seconds sent with 503"},
    {"insecure-lab-mode", PM_OPT_BOOL, "false",
     "accept UNSIGNED device requests (lab only: anyone can impersonate any device)"},
    {"user-authenticate", PM_OPT_STR, "decline",
     "UserAuthenticate: decline (HTTP 410, Apple's documented answer) or forward"},
    {"backend-service", PM_OPT_STR, "scheduler", "bus service that handles device traffic"},
    {"device-path", PM_OPT_STR, "direct",
     "direct: check-in and command-loop requests go straight to store-service with the "
     "policy fetched from backend-service (docs/queue.md); scheduler: every request through "
     "backend-service"},
    {"store-service", PM_OPT_STR, "store", "bus service that owns the queue (device-path direct)"},
    {"cert-cache", PM_OPT_INT, "16384",
     "device certificates kept decoded (~4.6 KiB each with their verify context, only for "
     "certificates seen; 0 = none: "
     "every request decodes and verifies the chain)"},
    {"scep-path", PM_OPT_STR, "/scep", "SCEP route relayed to the ca service (empty: off)"},
    {"enroll-path", PM_OPT_STR, "/mdm/enroll",
     "enrollment-profile download route, relayed to the ca service (empty: off)"},
    {"enroll-auth", PM_OPT_STR, NULL,
     "protection of the enrollment route: none, basic (enroll-basic-auth) or token (one-time "
     "tokens from `picomdm enroll-token new`); unset: basic when enroll-basic-auth is set, else "
     "none"},
    {"enroll-basic-auth", PM_OPT_STR, NULL,
     "user:password required to download the profile (prefer PICOMDM_ENROLL_BASIC_AUTH); "
     "unset: open (lab)"},
    {"ca-service", PM_OPT_STR, "ca", "bus service that answers SCEP and profile requests"},
    {"request-endpoint", PM_OPT_STR, "ipc:///tmp/picomdm/request", "broker request endpoint"},
    {"publish-endpoint", PM_OPT_STR, "ipc:///tmp/picomdm/publish",
     "broker event endpoint (XSUB) for security.rejected"},
    {"subscribe-endpoint", PM_OPT_STR, "ipc:///tmp/picomdm/subscribe",
     "broker event endpoint (XPUB): the other processes' stats.* snapshots for /metrics (empty: "
     "none)"},
    {"admin-listen", PM_OPT_STR, "127.0.0.1:9640",
     "admin listener (plain HTTP: GET /metrics, Prometheus text); keep it on loopback; off = none"},
    PM_STATS_OPTION,
    {"server-key", PM_OPT_STR, NULL, "broker CURVE public key (Z85) when not on ipc/loopback"},
    {"curve-cert", PM_OPT_STR, NULL, "our CURVE certificate file (with server-key)"},
    {NULL, 0, NULL, NULL}};

static void s_on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    pm_info("signal %d: shutting down", (int)sig);
    pm_notify_stopping();
    event_base_loopbreak(arg);
}

int main(int argc, char **argv)
{
    pm_getpid_init(); //  getpid() without a syscall (libzmq, OpenSSL): pm_getpid.h
    long decommit_ms = pm_alloc_decommit_delay(S_DECOMMIT_DELAY_MS);
    pm_cfg_t *cfg = NULL;
    gw_auth_t *auth = NULL;
    pm_bus_t *bus = NULL;
    gw_server_t *srv = NULL;
    gw_enroll_t *enroll = NULL;
    gw_admin_t *admin = NULL;
    pm_stats_t *stats = NULL;
    struct event_base *base = NULL;
    struct event *sigint = NULL, *sigterm = NULL;
    int rc = 1;
    pm_cfg_result_t r = pm_cfg_parse(
        &cfg, "picomdm-gateway", "HTTPS check-in and command loop for devices", s_opts, argc, argv);
    if (r == PM_CFG_EXIT)
        return 0;
    if (r == PM_CFG_ERROR)
        return 2;
    if (pm_cfg_start_logging(cfg) < 0 || pm_stats_from_cfg(cfg, "gateway", &stats) < 0)
        goto out;

    bool lab = pm_cfg_bool(cfg, "insecure-lab-mode");
    const char *ca = pm_cfg_str(cfg, "device-ca");
    const char *ua = pm_cfg_str(cfg, "user-authenticate");
    if (!ua || (strcmp(ua, "decline") != 0 && strcmp(ua, "forward") != 0)) {
        pm_error("user-authenticate must be 'decline' or 'forward'");
        goto out;
    }
    int64_t body_max = pm_cfg_int(cfg, "body-max"), header_max = pm_cfg_int(cfg, "header-max");
    if (body_max < 1024 || body_max > 256 * 1024 * 1024 || header_max < 4096 ||
        header_max > 1024 * 1024) {
        pm_error("body-max must be 1 KiB..256 MiB and header-max 4 KiB..1 MiB");
        goto out;
    }
    char err[256];
    if (ca && *ca) {
        auth = gw_auth_new(ca, err, sizeof err);
        if (!auth) {
            pm_error("%s", err);
            goto out;
        }
        long long certs = pm_cfg_int(cfg, "cert-cache");
        if (certs < 0 || certs > 10000000) {
            pm_error("cert-cache %lld is out of range: give 0 (off) to 10000000", certs);
            goto out;
        }
        if (gw_auth_set_cache(auth, certs ? GW_AUTH_CACHE_SLOTS : 0, GW_AUTH_CACHE_TTL_S,
                              (size_t)certs) < 0) {
            pm_error("cannot allocate the certificate caches: lower cert-cache");
            goto out;
        }
    } else if (!lab) {
        pm_error("device-ca is required: the PEM file of the CA that issues device identity "
                 "certificates (or insecure-lab-mode, in a lab only)");
        goto out;
    }
    if (lab)
        pm_warn("*** INSECURE LAB MODE: unsigned device requests are accepted; anyone who can "
                "reach this port can impersonate any device. Never use this in production. ***");
    pm_info("%s, %d device CA certificate(s)", OpenSSL_version(OPENSSL_VERSION),
            auth ? gw_auth_ca_count(auth) : 0);
    char alloc[64];
    if (decommit_ms >= 0)
        pm_info("allocator: %s, freed memory returned to the OS after %ld ms unused",
                pm_alloc_name(alloc, sizeof alloc), decommit_ms);
    else if (decommit_ms == -2)
        pm_info("allocator: %s (not tuned: unknown version)", pm_alloc_name(alloc, sizeof alloc));
    else
        pm_info("allocator: %s", pm_alloc_name(alloc, sizeof alloc));

    gw_server_config_t sc = {
        .listen = pm_cfg_str(cfg, "listen"),
        .tls_cert = pm_cfg_str(cfg, "tls-cert"),
        .tls_key = pm_cfg_str(cfg, "tls-key"),
        .tls_client_cert = pm_cfg_bool(cfg, "tls-client-cert"),
        .tls_session_cache = (long)pm_cfg_int(cfg, "tls-session-cache"),
        .plain_http = pm_cfg_bool(cfg, "plain-http"),
        .proxy_cert_header = pm_cfg_str(cfg, "proxy-cert-header"),
        .trusted_proxies = pm_cfg_str(cfg, "trusted-proxies"),
        .checkin_path = pm_cfg_str(cfg, "checkin-path"),
        .server_path = pm_cfg_str(cfg, "server-path"),
        .body_max = (size_t)body_max,
        .header_max = (size_t)header_max,
        .idle_timeout_s = (int)pm_cfg_int(cfg, "idle-timeout"),
        .backend_timeout_ms = (int)pm_cfg_int(cfg, "backend-timeout-ms"),
        .retry_after_s = (int)pm_cfg_int(cfg, "retry-after"),
        .insecure_lab_mode = lab,
        .user_auth_forward = strcmp(ua, "forward") == 0,
        .backend_service = pm_cfg_str(cfg, "backend-service"),
        .store_service = pm_cfg_str(cfg, "store-service"),
    };
    const char *dp = pm_cfg_str(cfg, "device-path");
    if (!dp || (strcmp(dp, "direct") != 0 && strcmp(dp, "scheduler") != 0)) {
        pm_error("device-path must be 'direct' or 'scheduler'");
        goto out;
    }
    sc.direct_store = strcmp(dp, "direct") == 0;
    if (sc.tls_session_cache < 0 || sc.tls_session_cache > 1000000) {
        pm_error("tls-session-cache must be 0 (encrypted tickets) to 1000000 sessions");
        goto out;
    }
    if (sc.backend_timeout_ms < 200 || sc.idle_timeout_s < 1) {
        pm_error("backend-timeout-ms must be >= 200 and idle-timeout >= 1");
        goto out;
    }

    gw_enroll_config_t ec = {
        .scep_path = pm_cfg_str(cfg, "scep-path"),
        .enroll_path = pm_cfg_str(cfg, "enroll-path"),
        .basic_auth = pm_cfg_str(cfg, "enroll-basic-auth"),
        .auth = pm_cfg_str(cfg, "enroll-auth"),
        .service = pm_cfg_str(cfg, "ca-service"),
        .timeout_ms = sc.backend_timeout_ms,
        .retry_after_s = sc.retry_after_s,
    };

    //  The epoll changelist: evhttp and the TLS bufferevents enable and
    //  disable reading/writing several times per request; with it, changes
    //  made within one loop iteration become at most one epoll_ctl per fd
    //  (and none when they cancel out). We never dup() sockets, the case the
    //  libevent documentation warns about.
    struct event_config *ecfg = event_config_new();
    if (ecfg)
        event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    base = ecfg ? event_base_new_with_config(ecfg) : event_base_new();
    event_config_free(ecfg);
    if (!base) {
        pm_error("cannot create the event loop");
        goto out;
    }
    if (r == PM_CFG_CHECK) {
        //  bind and load everything, without the bus
        srv = gw_server_new(&sc, base, NULL, auth);
        enroll = srv ? gw_enroll_new(&ec, base, NULL) : NULL;
        if (!srv || !enroll)
            goto out;
        printf("ok\n");
        rc = 0;
        goto out;
    }
    pm_bus_config_t bc = {
        .name = "gateway",
        .request_endpoint = pm_cfg_str(cfg, "request-endpoint"),
        .publish_endpoint = pm_cfg_str(cfg, "publish-endpoint"),
        .subscribe_endpoint = pm_cfg_str(cfg, "subscribe-endpoint"),
        .server_public_key = pm_cfg_str(cfg, "server-key"),
        .cert_file = pm_cfg_str(cfg, "curve-cert"),
    };
    if (bc.subscribe_endpoint && !*bc.subscribe_endpoint)
        bc.subscribe_endpoint = NULL;
    bus = pm_bus_new(&bc);
    if (!bus)
        goto out;
    srv = gw_server_new(&sc, base, bus, auth);
    enroll = srv ? gw_enroll_new(&ec, base, bus) : NULL;
    if (!srv || !enroll)
        goto out;
    gw_server_set_enroll(srv, enroll);
    gw_admin_config_t ac = {.listen = pm_cfg_str(cfg, "admin-listen"),
                            .checkin_path = sc.checkin_path,
                            .server_path = sc.server_path,
                            .scep_path = ec.scep_path,
                            .enroll_path = ec.enroll_path};
    admin = gw_admin_new(&ac, base, bus, stats, srv, enroll);
    if (!admin)
        goto out;
    //  libevent's handlers replace czmq's (installed by the bus) so that a
    //  signal ends the loop at once.
    sigint = evsignal_new(base, SIGINT, s_on_signal, base);
    sigterm = evsignal_new(base, SIGTERM, s_on_signal, base);
    if (!sigint || !sigterm || event_add(sigint, NULL) < 0 || event_add(sigterm, NULL) < 0)
        goto out;
    signal(SIGPIPE, SIG_IGN);
    pm_notify_ready();
    event_base_dispatch(base);
    rc = 0;
out:
    gw_server_shutdown(srv);
    pm_bus_destroy(&bus);
    gw_admin_destroy(&admin); //  after the bus: no stats.* callback can come any more
    gw_server_destroy(&srv);
    gw_enroll_destroy(&enroll);
    if (sigint)
        event_free(sigint);
    if (sigterm)
        event_free(sigterm);
    if (base)
        event_base_free(base);
    gw_auth_destroy(&auth);
    pm_stats_destroy(&stats);
    pm_cfg_destroy(&cfg);
    return rc;
}
