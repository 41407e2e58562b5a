/*  picomdm-fake-apns — an APNs stand-in for tests and benchmarks: HTTP/2 over
 *  TLS (ALPN h2 only), a client certificate from a configured CA, Apple's
 *  status codes and reasons, injectable failures, and a delivery hook that
 *  hands every accepted push to the device simulator. See docs/push.md.
 */
#include "fapns_server.h"
#include "pm_cfg.h"
#include "pm_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const pm_opt_t s_opts[] = {
    {"listen", PM_OPT_STR, "127.0.0.1:2197", "IP:PORT to serve HTTP/2 on (port 0 = any free one)"},
    {"tls-cert", PM_OPT_STR, NULL, "server certificate (PEM; chain allowed)"},
    {"tls-key", PM_OPT_STR, NULL, "server private key (PEM)"},
    {"client-ca", PM_OPT_STR, NULL, "CA (PEM) that must have issued the client push certificate"},
    {"tokens", PM_OPT_STR, NULL,
     "known device tokens: lines \"<64 hex> [topic]\" (unknown -> 400 BadDeviceToken)"},
    {"accept-any", PM_OPT_BOOL, "false", "accept any well-formed token (no --tokens list)"},
    {"rules", PM_OPT_STR, NULL,
     "failure rules file: \"<token|*> <400|403|410|429|500|503|goaway|delay> [count=N] "
     "[delay=MS] [reason=X]\""},
    {"control", PM_OPT_STR, NULL,
     "IP:PORT of the control endpoint (GET /stats, POST|DELETE /rules, POST /tokens)"},
    {"deliver-unix", PM_OPT_STR, NULL,
     "UNIX datagram socket that receives one JSON object per accepted push"},
    {"deliver-file", PM_OPT_STR, NULL, "file that gets one JSON line per accepted push"},
    {"max-streams", PM_OPT_INT, "1000", "SETTINGS_MAX_CONCURRENT_STREAMS per connection"},
    {NULL, 0, NULL, NULL}};

int main(int argc, char **argv)
{
    pm_cfg_t *cfg = NULL;
    pm_cfg_result_t r =
        pm_cfg_parse(&cfg, "fake-apns", "APNs stand-in (HTTP/2, MDM pushes)", s_opts, argc, argv);
    if (r == PM_CFG_EXIT)
        return 0;
    if (r == PM_CFG_ERROR)
        return 2;
    int rc = 1;
    char err[512];
    fapns_tokens_t *tokens = NULL;
    fapns_rules_t *rules = NULL;
    fapns_server_t *srv = NULL;
    if (pm_cfg_start_logging(cfg) < 0)
        goto out;
    const char *tfile = pm_cfg_str(cfg, "tokens"), *rfile = pm_cfg_str(cfg, "rules");
    if (!pm_cfg_str(cfg, "tls-cert") || !pm_cfg_str(cfg, "tls-key") ||
        !pm_cfg_str(cfg, "client-ca")) {
        pm_error("--tls-cert, --tls-key and --client-ca are required (see --help)");
        goto out;
    }
    if (!tfile && !pm_cfg_bool(cfg, "accept-any")) {
        pm_error("give --tokens FILE (the devices APNs knows) or --accept-any");
        goto out;
    }
    if (tfile) {
        tokens = fapns_tokens_new();
        int n = tokens ? fapns_tokens_load(tokens, tfile, err, sizeof err) : -1;
        if (n < 0) {
            pm_error("%s", tokens ? err : "out of memory");
            goto out;
        }
        pm_info("%d known device tokens from %s", n, tfile);
    }
    if (rfile) {
        rules = fapns_rules_new();
        int n = rules ? fapns_rules_load(rules, rfile, err, sizeof err) : -1;
        if (n < 0) {
            pm_error("%s (fix the rule line)", rules ? err : "out of memory");
            goto out;
        }
        pm_info("%d failure rules from %s", n, rfile);
    }
    fapns_server_cfg_t sc = {.listen = pm_cfg_str(cfg, "listen"),
                             .tls_cert = pm_cfg_str(cfg, "tls-cert"),
                             .tls_key = pm_cfg_str(cfg, "tls-key"),
                             .client_ca = pm_cfg_str(cfg, "client-ca"),
                             .control = pm_cfg_str(cfg, "control"),
                             .deliver_unix = pm_cfg_str(cfg, "deliver-unix"),
                             .deliver_file = pm_cfg_str(cfg, "deliver-file"),
                             .max_streams = (int)pm_cfg_int(cfg, "max-streams")};
    srv = fapns_server_new(&sc, &tokens, &rules, err, sizeof err);
    if (!srv) {
        pm_error("%s", err);
        goto out;
    }
    if (r == PM_CFG_CHECK) {
        printf("ok\n");
        rc = 0;
        goto out;
    }
    //  The address as given (its port may be 0 = any): the host part of
    //  IP:PORT, then the port actually bound.
    const char *colon = strrchr(sc.listen, ':');
    pm_info("listening on %.*s:%d (h2 only)", colon ? (int)(colon - sc.listen) : 0, sc.listen,
            fapns_server_port(srv));
    if (fapns_server_control_port(srv) > 0)
        pm_info("control on port %d", fapns_server_control_port(srv));
    rc = fapns_server_run(srv) == 0 ? 0 : 1;
    pm_info("stopped");
out:
    fapns_server_destroy(&srv);
    fapns_tokens_destroy(&tokens);
    fapns_rules_destroy(&rules);
    pm_cfg_destroy(&cfg);
    return rc;
}
