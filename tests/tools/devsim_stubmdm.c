/*  devsim_stubmdm — a deliberately small MDM server for testing the device
 *  simulator (bin/picomdm-devsim) before/without the real gateway. Test helper
 *  only ($TT/devsim_stubmdm), plain HTTP on 127.0.0.1 (libevent evhttp).
 *
 *  It does what the simulator must be checked against: verifies Mdm-Signature
 *  (CMS over the exact body, exactly one signer, chain to --device-ca), binds
 *  the certificate at Authenticate and refuses another device's later, queues
 *  --commands for each enrolled channel, re-offers NotNow'd commands only in a
 *  later session (or, with --bad-notnow, wrongly in the same one), records
 *  every result, and writes counters to --stats on SIGTERM/SIGINT.
 *  Every rejection is HTTP 400 with a reason line on stderr.
 */
#include "pm_cfg.h"
#include "pm_log.h"

#include <czmq.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509_vfy.h>
#include <plist/plist.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CMDS 256
#define BODY_MAX (8 * 1024 * 1024)

typedef struct {
    char uuid[40];
    char rt[48];
    int state; //  0 pending, 1 sent, 2 done, 3 notnow
    int notnow_session;
} cmd_t;

typedef struct {
    unsigned char cert_hash[32];
    bool bound;
    bool tokened; //  TokenUpdate seen: the commands were queued
    int session;
    cmd_t cmds[MAX_CMDS];
    int ncmds;
    int inflight; //  index of the command last sent, or -1
} chan_t;

static struct {
    X509_STORE *store;
    zhashx_t *chans; //  enrollment id -> chan_t
    char **rts;      //  RequestTypes queued per enrolled channel
    int nrts;
    int refill; //  on Idle with an empty queue, queue this many more
    bool bad_notnow, accept_all;
    long n_auth, n_token, n_checkout, n_idle, n_ack, n_error, n_format, n_notnow, n_reoffered,
        n_rejected, n_unknown_uuid, n_bad_plist;
    const char *stats;
    unsigned long uuid_seq;
} S;

static void s_reject(struct evhttp_request *req, const char *why)
{
    S.n_rejected++;
    fprintf(stderr, "stubmdm: 400: %s\n", why);
    evhttp_send_reply(req, 400, "Bad Request", NULL);
}

//  Verify Mdm-Signature over body; on success *hash = SHA-256 of the signer cert.
static int s_verify(const char *b64, const unsigned char *body, size_t len, unsigned char *hash,
                    const char **why)
{
    int rc = -1;
    size_t blen = strlen(b64);
    unsigned char *der = malloc(blen + 1);
    CMS_ContentInfo *cms = NULL;
    BIO *content = NULL;
    STACK_OF(X509) *signers = NULL;
    if (!der)
        return -1;
    *why = "bad base64 in Mdm-Signature";
    if (blen == 0 || blen % 4)
        goto out;
    int n = EVP_DecodeBlock(der, (const unsigned char *)b64, (int)blen);
    if (n <= 0)
        goto out;
    for (size_t i = blen; i > 0 && b64[i - 1] == '='; i--)
        n--;
    const unsigned char *p = der;
    *why = "Mdm-Signature is not DER CMS";
    cms = d2i_CMS_ContentInfo(NULL, &p, n);
    if (!cms)
        goto out;
    *why = "not exactly one SignerInfo";
    if (sk_CMS_SignerInfo_num(CMS_get0_SignerInfos(cms)) != 1)
        goto out;
    content = BIO_new_mem_buf(body, (int)len);
    *why = "signature does not verify (body, chain, validity)";
    if (CMS_verify(cms, NULL, S.store, content, NULL, CMS_BINARY) != 1)
        goto out;
    signers = CMS_get0_signers(cms);
    if (!signers || sk_X509_num(signers) != 1)
        goto out;
    unsigned int hl = 32;
    X509_digest(sk_X509_value(signers, 0), EVP_sha256(), hash, &hl);
    rc = 0;
out:
    ERR_clear_error();
    sk_X509_free(signers);
    BIO_free(content);
    CMS_ContentInfo_free(cms);
    free(der);
    return rc;
}

static int s_depth(const char *d, size_t len)
{
    int depth = 0, max = 0;
    for (size_t i = 0; i + 1 < len; i++) {
        if (d[i] != '<')
            continue;
        const char *t = d + i + 1;
        bool close = *t == '/';
        t += close;
        size_t left = len - (size_t)(t - d);
        bool cont = (left >= 4 && !memcmp(t, "dict", 4)) || (left >= 5 && !memcmp(t, "array", 5));
        if (!cont)
            continue;
        const char *gt = memchr(t, '>', left);
        if (!gt)
            return -1;
        if (close)
            depth--;
        else if (gt[-1] != '/' && ++depth > max)
            max = depth;
    }
    return depth == 0 ? max : -1;
}

static const char *s_str(plist_t d, const char *k)
{
    plist_t n = d ? plist_dict_get_item(d, k) : NULL;
    uint64_t l;
    return n && plist_get_node_type(n) == PLIST_STRING ? plist_get_string_ptr(n, &l) : NULL;
}

static bool s_has(plist_t d, const char *k, plist_type t)
{
    plist_t n = plist_dict_get_item(d, k);
    return n && plist_get_node_type(n) == t;
}

static void s_enqueue(chan_t *c, const char *rt)
{
    if (c->ncmds >= MAX_CMDS)
        return;
    cmd_t *m = &c->cmds[c->ncmds++];
    memset(m, 0, sizeof *m);
    snprintf(m->uuid, sizeof m->uuid, "STUB-%08lX-%s", ++S.uuid_seq, "CMD");
    snprintf(m->rt, sizeof m->rt, "%s", rt);
}

static plist_t s_command(const cmd_t *m)
{
    plist_t cmd = plist_new_dict(), c = plist_new_dict();
    plist_dict_set_item(cmd, "CommandUUID", plist_new_string(m->uuid));
    plist_dict_set_item(c, "RequestType", plist_new_string(m->rt));
    if (!strcmp(m->rt, "DeviceInformation")) {
        plist_t q = plist_new_array();
        const char *qs[] = {"UDID",        "DeviceName",          "OSVersion",    "SerialNumber",
                            "ProductName", "LastCloudBackupDate", "BatteryLevel", NULL};
        for (int i = 0; qs[i]; i++)
            plist_array_append_item(q, plist_new_string(qs[i]));
        plist_dict_set_item(c, "Queries", q);
    } else if (!strcmp(m->rt, "InstallProfile")) {
        const char *p =
            "<?xml version=\"1.0\"?><plist version=\"1.0\"><dict>"
            "<key>PayloadType</key><string>Configuration</string>"
            "<key>PayloadVersion</key><integer>1</integer>"
            "<key>PayloadIdentifier</key><string>com.example.stub</string>"
            "<key>PayloadUUID</key><string>11111111-2222-4333-8444-555555555555</string>"
            "<key>PayloadDisplayName</key><string>Stub Profile</string>"
            "<key>PayloadContent</key><array/></dict></plist>";
        plist_dict_set_item(c, "Payload", plist_new_data(p, strlen(p)));
    } else if (!strcmp(m->rt, "RemoveProfile"))
        plist_dict_set_item(c, "Identifier", plist_new_string("com.example.stub"));
    plist_dict_set_item(cmd, "Command", c);
    return cmd;
}

static void s_reply_plist(struct evhttp_request *req, plist_t p)
{
    struct evbuffer *out = evbuffer_new();
    if (p) {
        char *xml = NULL;
        uint32_t n = 0;
        plist_to_xml(p, &xml, &n);
        evbuffer_add(out, xml, n);
        plist_to_xml_free(xml);
        plist_free(p);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                          "application/xml");
    }
    evhttp_send_reply(req, 200, "OK", out);
    evbuffer_free(out);
}

//  Next command for a session: pending, or NotNow'd in an EARLIER session.
static plist_t s_next(chan_t *c)
{
    for (int i = 0; i < c->ncmds; i++) {
        cmd_t *m = &c->cmds[i];
        bool ok =
            m->state == 0 || (m->state == 3 && (S.bad_notnow || m->notnow_session < c->session));
        if (!ok)
            continue;
        if (m->state == 3)
            S.n_reoffered++;
        m->state = 1;
        c->inflight = i;
        return s_command(m);
    }
    c->inflight = -1;
    return NULL;
}

static void s_handle(struct evhttp_request *req, void *arg)
{
    (void)arg;
    const char *path = evhttp_request_get_uri(req);
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (evhttp_request_get_command(req) != EVHTTP_REQ_PUT) {
        s_reject(req, "not a PUT");
        return;
    }
    if (len == 0 || len > BODY_MAX) {
        s_reject(req, "empty or oversized body");
        return;
    }
    const unsigned char *body = evbuffer_pullup(in, -1);
    const char *sig = evhttp_find_header(evhttp_request_get_input_headers(req), "Mdm-Signature");
    unsigned char hash[32] = {0};
    const char *why = "no Mdm-Signature";
    if (!S.accept_all && (!sig || s_verify(sig, body, len, hash, &why) < 0)) {
        s_reject(req, why);
        return;
    }
    int depth = s_depth((const char *)body, len);
    plist_t p = NULL;
    if (depth >= 0 && depth <= 32 && !plist_is_binary((const char *)body, (uint32_t)len))
        plist_from_xml((const char *)body, (uint32_t)len, &p);
    if (!p || plist_get_node_type(p) != PLIST_DICT) {
        S.n_bad_plist++;
        plist_free(p);
        s_reject(req, "not a bounded XML plist dict");
        return;
    }
    const char *udid = s_str(p, "UDID"), *eid = s_str(p, "EnrollmentID");
    const char *uid = s_str(p, "UserID"), *euid = s_str(p, "EnrollmentUserID");
    const char *mt = s_str(p, "MessageType"), *status = s_str(p, "Status");
    char id[256];
    snprintf(id, sizeof id, "%s%s%s",
             udid  ? udid
             : eid ? eid
                   : "",
             (uid || euid) ? ":" : "",
             euid  ? euid
             : uid ? uid
                   : "");
    if (!id[0] || (!mt && !status)) {
        plist_free(p);
        s_reject(req, "no UDID/EnrollmentID, or neither MessageType nor Status");
        return;
    }
    //  The binding is per device: user channels share the device's certificate.
    char devid[128];
    snprintf(devid, sizeof devid, "%s", udid ? udid : eid);
    chan_t *dev = zhashx_lookup(S.chans, devid);
    chan_t *c = zhashx_lookup(S.chans, id);
    if (mt && !strcmp(mt, "Authenticate")) {
        if (!s_str(p, "Topic")) {
            plist_free(p);
            s_reject(req, "Authenticate without a string Topic");
            return;
        }
        if (dev && dev->bound && memcmp(dev->cert_hash, hash, 32) != 0 && !S.accept_all) {
            plist_free(p);
            s_reject(req, "Authenticate for an enrolled device with another certificate");
            return;
        }
        if (!dev) {
            dev = calloc(1, sizeof *dev);
            dev->inflight = -1;
            zhashx_insert(S.chans, devid, dev);
        }
        memcpy(dev->cert_hash, hash, 32);
        dev->bound = true;
        S.n_auth++;
        plist_free(p);
        s_reply_plist(req, NULL);
        return;
    }
    if (!dev || (!S.accept_all && (!dev->bound || memcmp(dev->cert_hash, hash, 32) != 0))) {
        plist_free(p);
        s_reject(req, dev ? "certificate is not the one bound at Authenticate"
                          : "unknown device (no Authenticate)");
        return;
    }
    if (mt) {
        if (!strcmp(mt, "TokenUpdate")) {
            if (!s_has(p, "Token", PLIST_DATA) || !s_str(p, "PushMagic") || !s_str(p, "Topic")) {
                plist_free(p);
                s_reject(req, "TokenUpdate without Token data / PushMagic / Topic");
                return;
            }
            if (!c) {
                c = calloc(1, sizeof *c);
                c->inflight = -1;
                zhashx_insert(S.chans, id, c);
            }
            if (!c->tokened) //  the device channel's entry exists since Authenticate
                for (int i = 0; i < S.nrts; i++)
                    s_enqueue(c, S.rts[i]);
            c->tokened = true;
            S.n_token++;
        } else if (!strcmp(mt, "CheckOut"))
            S.n_checkout++;
        else {
            plist_free(p);
            s_reject(req, "unknown MessageType");
            return;
        }
        plist_free(p);
        s_reply_plist(req, NULL);
        return;
    }
    (void)path;
    if (!c || !c->tokened) {
        plist_free(p);
        s_reject(req, "command loop before TokenUpdate");
        return;
    }
    if (!strcmp(status, "Idle")) {
        S.n_idle++;
        c->session++;
        bool empty = true;
        for (int i = 0; i < c->ncmds; i++)
            empty &= c->cmds[i].state == 2;
        if (empty && S.refill > 0) {
            c->ncmds = 0;
            for (int i = 0; i < S.refill; i++)
                s_enqueue(c, S.rts[i % S.nrts]);
        }
    } else {
        const char *uuid = s_str(p, "CommandUUID");
        int at = -1;
        for (int i = 0; uuid && i < c->ncmds; i++)
            if (!strcmp(c->cmds[i].uuid, uuid))
                at = i;
        if (at < 0)
            S.n_unknown_uuid++;
        else if (!strcmp(status, "NotNow")) {
            S.n_notnow++;
            c->cmds[at].state = 3;
            c->cmds[at].notnow_session = c->session;
        } else {
            c->cmds[at].state = 2;
            if (!strcmp(status, "Acknowledged"))
                S.n_ack++;
            else if (!strcmp(status, "Error"))
                S.n_error++;
            else
                S.n_format++;
        }
    }
    plist_free(p);
    s_reply_plist(req, s_next(c));
}

static void s_stop(evutil_socket_t fd, short ev, void *base)
{
    (void)fd, (void)ev;
    event_base_loopbreak(base);
}

static const pm_opt_t s_opts[] = {
    {"port", PM_OPT_INT, "0", "TCP port on 127.0.0.1"},
    {"device-ca", PM_OPT_STR, NULL, "CA (PEM) device identities must chain to"},
    {"commands", PM_OPT_STR,
     "DeviceInformation,ProfileList,InstallProfile,ProfileList,RemoveProfile,SecurityInfo,"
     "InstalledApplicationList,CertificateList,EnableLostMode",
     "RequestTypes queued for each channel at TokenUpdate (comma-separated)"},
    {"refill", PM_OPT_INT, "0", "on Idle with nothing queued, queue this many commands again"},
    {"bad-notnow", PM_OPT_BOOL, "false", "WRONGLY re-offer NotNow commands in the same session"},
    {"accept-all", PM_OPT_BOOL, "false", "WRONGLY accept unsigned/bad requests (negative tests)"},
    {"stats", PM_OPT_STR, NULL, "write counters here on exit"},
    {NULL, 0, NULL, NULL}};

int main(int argc, char **argv)
{
    pm_cfg_t *cfg = NULL;
    pm_cfg_result_t pr = pm_cfg_parse(&cfg, "devsim_stubmdm", "MDM stub for testing the simulator",
                                      s_opts, argc, argv);
    if (pr != PM_CFG_RUN)
        return pr == PM_CFG_EXIT ? 0 : 2;
    pm_cfg_start_logging(cfg);
    int port = (int)pm_cfg_int(cfg, "port");
    const char *ca = pm_cfg_str(cfg, "device-ca");
    S.accept_all = pm_cfg_bool(cfg, "accept-all");
    S.bad_notnow = pm_cfg_bool(cfg, "bad-notnow");
    S.refill = (int)pm_cfg_int(cfg, "refill");
    S.stats = pm_cfg_str(cfg, "stats");
    if (port <= 0 || (!ca && !S.accept_all)) {
        fprintf(stderr, "devsim_stubmdm: give --port and --device-ca\n");
        return 2;
    }
    S.store = X509_STORE_new();
    if (ca && X509_STORE_load_file(S.store, ca) != 1) {
        fprintf(stderr, "devsim_stubmdm: cannot load %s\n", ca);
        return 2;
    }
    X509_STORE_set_purpose(S.store, X509_PURPOSE_ANY);
    char *list = strdup(pm_cfg_str(cfg, "commands"));
    S.rts = calloc(64, sizeof *S.rts);
    for (char *t = strtok(list, ","); t && S.nrts < 64; t = strtok(NULL, ","))
        S.rts[S.nrts++] = t;
    S.chans = zhashx_new();
    zhashx_set_destructor(S.chans, (zhashx_destructor_fn *)zstr_free);
    struct event_base *base = event_base_new();
    struct evhttp *http = evhttp_new(base);
    evhttp_set_max_body_size(http, BODY_MAX);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_PUT | EVHTTP_REQ_GET | EVHTTP_REQ_POST);
    evhttp_set_gencb(http, s_handle, NULL);
    if (!evhttp_bind_socket_with_handle(http, "127.0.0.1", (ev_uint16_t)port)) {
        fprintf(stderr, "devsim_stubmdm: cannot listen on 127.0.0.1:%d\n", port);
        return 2;
    }
    struct event *sigint = evsignal_new(base, SIGINT, s_stop, base);
    struct event *sigterm = evsignal_new(base, SIGTERM, s_stop, base);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    fprintf(stderr, "devsim_stubmdm: listening on 127.0.0.1:%d\n", port);
    event_base_dispatch(base);
    if (S.stats) {
        FILE *f = fopen(S.stats, "w");
        if (f) {
            fprintf(f,
                    "authenticate %ld\ntokenupdate %ld\ncheckout %ld\nidle %ld\nacknowledged %ld\n"
                    "error %ld\nformaterror %ld\nnotnow %ld\nreoffered %ld\nrejected %ld\n"
                    "unknown_uuid %ld\nbad_plist %ld\n",
                    S.n_auth, S.n_token, S.n_checkout, S.n_idle, S.n_ack, S.n_error, S.n_format,
                    S.n_notnow, S.n_reoffered, S.n_rejected, S.n_unknown_uuid, S.n_bad_plist);
            fclose(f);
        }
    }
    event_free(sigint);
    event_free(sigterm);
    evhttp_free(http);
    event_base_free(base);
    zhashx_destroy(&S.chans);
    X509_STORE_free(S.store);
    free(S.rts);
    free(list);
    pm_cfg_destroy(&cfg);
    return 0;
}
