/*  ca_svc — the "ca" bus service (see ca_svc.h). */
#include "ca_svc.h"
#include "ca_scep.h"
#include "pm_bus_wire.h"
#include "pm_log.h"

#include <msgpack.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct s_wait s_wait_t;

struct ca_svc {
    ca_pki_t *pki;
    ca_challenge_t *ch;
    ca_scep_t *scep;
    ca_profile_signer_t *signer; //  signs every profile download
    ca_profile_opts_t profile;
    X509 *anchor;
    char topic[256];
    int (*call)(void *arg, const pm_msg_t *req, pm_bus_reply_fn *fn, void *fn_arg);
    void *call_arg;
    s_wait_t *waits; //  requests waiting for the store (and abandoned ones)
    size_t nwaiting;
};

//  A request waiting for the store's answer.
struct s_wait {
    ca_svc_t *svc;
    s_wait_t *prev, *next;
    bool finished;  //  answered (abandoned): a late store reply is ignored
    pm_msg_t *stub; //  the request's type and rid, for the reply
    char *remote, *who, *operation;
    ca_svc_done_fn *done;
    void *done_arg;
    ca_scep_reply_t r; //  the CertRep SUCCESS, held until the store's verdict
    char *method;
    uint8_t *msg; //  the PKIOperation, to answer FAILURE if the store refuses
    size_t len;
};

static void s_wait_free(s_wait_t *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else if (w->svc->waits == w)
        w->svc->waits = w->next;
    if (w->next)
        w->next->prev = w->prev;
    if (!w->finished)
        w->svc->nwaiting--;
    ca_scep_reply_clear(&w->r);
    free(w->method);
    free(w->msg);
    pm_msg_destroy(&w->stub);
    free(w->remote);
    free(w->who);
    free(w->operation);
    free(w);
}

ca_svc_t *ca_svc_new(const ca_svc_opts_t *o, char *err, size_t errlen)
{
    ca_svc_t *s = calloc(1, sizeof *s);
    char keypath[4200];
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->profile = o->profile;
    s->profile.challenge = NULL;
    s->call = o->call;
    s->call_arg = o->call_arg;
    if ((!o->profile.topic || !o->profile.topic[0]) && o->push_cert && o->push_cert[0]) {
        if (ca_profile_topic_from_cert(o->push_cert, s->topic, sizeof s->topic, err, errlen) < 0)
            goto fail;
        s->profile.topic = s->topic;
    }
    s->pki = ca_pki_new(&o->pki, NULL, err, errlen);
    if (!s->pki)
        goto fail;
    s->signer = ca_profile_signer_new(ca_pki_signer_cert(s->pki), ca_pki_signer_key(s->pki),
                                      ca_pki_ca_cert(s->pki), err, errlen);
    if (!s->signer)
        goto fail;
    if (o->tls_anchor && o->tls_anchor[0]) {
        FILE *f = fopen(o->tls_anchor, "r");
        s->anchor = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
        if (f)
            fclose(f);
        if (!s->anchor) {
            snprintf(err, errlen, "tls-anchor %s is not a readable PEM certificate", o->tls_anchor);
            goto fail;
        }
    }
    s->profile.tls_anchor = s->anchor;
    s->ch = ca_challenge_new(o->challenge_mode, o->challenge, o->challenge_ttl_s, err, errlen);
    if (!s->ch)
        goto fail;
    if (s->call && o->challenge_mode == CA_CHALLENGE_ONE_TIME) {
        //  signed one-time challenges: the key lives beside the CA key
        const char *ck = o->pki.ca_key ? o->pki.ca_key : "";
        const char *slash = strrchr(ck, '/');
        if (slash)
            snprintf(keypath, sizeof keypath, "%.*s/challenge.key", (int)(slash - ck), ck);
        else
            snprintf(keypath, sizeof keypath, "challenge.key");
        if (ca_challenge_set_key_file(s->ch, keypath, err, errlen) < 0)
            goto fail;
    }
    s->scep = ca_scep_new(s->pki, s->ch);
    if (!s->scep) {
        snprintf(err, errlen, "cannot set up SCEP (encoding the CA certificate failed)");
        goto fail;
    }
    return s;
fail:
    ca_svc_destroy(&s);
    return NULL;
}

void ca_svc_destroy(ca_svc_t **p)
{
    if (!p || !*p)
        return;
    ca_svc_t *s = *p;
    ca_svc_abandon(s);
    while (s->waits)
        s_wait_free(s->waits);
    ca_scep_destroy(&s->scep);
    ca_profile_signer_destroy(&s->signer);
    ca_challenge_destroy(&s->ch);
    ca_pki_destroy(&s->pki);
    X509_free(s->anchor);
    free(s);
    *p = NULL;
}

ca_pki_t *ca_svc_pki(ca_svc_t *svc)
{
    return svc->pki;
}

static const char *s_or(const char *a, const char *b)
{
    return a && a[0] ? a : b;
}

int ca_svc_profile(ca_svc_t *s, const ca_profile_opts_t *ov, uint8_t **der, size_t *len,
                   char identity_uuid[37], char *hash_hex, int64_t *expires_ms, char *err,
                   size_t errlen)
{
    ca_profile_opts_t o = s->profile;
    if (ov) {
        o.server_url = s_or(ov->server_url, o.server_url);
        o.checkin_url = s_or(ov->checkin_url, o.checkin_url);
        o.scep_url = s_or(ov->scep_url, o.scep_url);
        o.topic = s_or(ov->topic, o.topic);
        o.display_name = s_or(ov->display_name, o.display_name);
        o.organization = s_or(ov->organization, o.organization);
        o.device_cn = s_or(ov->device_cn, o.device_cn);
    }
    char challenge[80];
    int crc = ca_challenge_signed(s->ch)
                  ? ca_challenge_make(s->ch, challenge, sizeof challenge, hash_hex, expires_ms)
                  : ca_challenge_issue(s->ch, challenge, sizeof challenge);
    if (crc < 0) {
        snprintf(err, errlen, "cannot make a challenge (too many outstanding?)");
        return -1;
    }
    o.challenge = challenge;
    char *xml = NULL;
    size_t xlen = 0;
    int rc = ca_profile_build(&o, &xml, &xlen, identity_uuid, err, errlen);
    OPENSSL_cleanse(challenge, sizeof challenge);
    if (rc == 0)
        rc = ca_profile_signer_sign(s->signer, xml, xlen, der, len, err, errlen);
    if (xml) {
        OPENSSL_cleanse(xml, xlen); //  it held the challenge
        free(xml);
    }
    return rc;
}

//  An EVENT with a flat string map as data.
static pm_msg_t *s_event(const char *name, const char *const *kv, int n)
{
    pm_msg_t *ev = pm_msg_new(PM_MSG_EVENT);
    if (!ev)
        return NULL;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int pairs = 0;
    for (int i = 0; i < n; i += 2)
        pairs += kv[i + 1] != NULL;
    msgpack_pack_map(&pk, (size_t)pairs);
    for (int i = 0; i < n; i += 2) {
        if (!kv[i + 1])
            continue;
        msgpack_pack_str_with_body(&pk, kv[i], strlen(kv[i]));
        msgpack_pack_str_with_body(&pk, kv[i + 1], strlen(kv[i + 1]));
    }
    if (pm_msg_set_str(ev, "name", name) < 0 || pm_msg_set_str(ev, "source", "ca") < 0 ||
        pm_msg_set_packed(ev, "data", (const uint8_t *)sb.data, sb.size) < 0)
        pm_msg_destroy(&ev);
    msgpack_sbuffer_destroy(&sb);
    return ev;
}

//  The ca.issued event of a CertRep SUCCESS: the one the ca publishes and
//  the one that rides scep_challenge.use for the store to log.
static pm_msg_t *s_issued_event(const ca_scep_reply_t *r)
{
    char hex[65];
    pm_bus_hex(r->cert_sha256, sizeof r->cert_sha256, hex);
    const char *kv[] = {
        "subject",        r->subject,
        "transaction_id", r->txid,
        "cert_sha256",    hex,
        "kind",           r->message_type == CA_SCEP_RENEWALREQ ? "renewal" : "enrollment"};
    return s_event("ca.issued", kv, 8);
}

//  The scep.reply (and event) for a finished SCEP operation r (cleared here).
//  req: the request, or its stub (type and rid).
static pm_msg_t *s_scep_answer(const pm_msg_t *req, const char *operation, const char *remote,
                               ca_scep_reply_t *rp, pm_msg_t **event)
{
    ca_scep_reply_t r = *rp;
    if (r.pki_status == CA_SCEP_SUCCESS) {
        char hex[65];
        pm_bus_hex(r.cert_sha256, sizeof r.cert_sha256, hex);
        pm_info("scep: issued %s (%s, transaction %s, sha256 %s)%s%s", r.subject,
                r.message_type == CA_SCEP_RENEWALREQ ? "renewal" : "enrollment", r.txid, hex,
                remote ? " for " : "", remote ? remote : "");
        if (event)
            *event = s_issued_event(&r);
    } else if (r.pki_status == CA_SCEP_FAILURE || r.status >= 400) {
        pm_warn("scep: %s refused: %s (transaction %s%s%s)", operation ? operation : "?", r.reason,
                r.txid[0] ? r.txid : "-", remote ? ", from " : "", remote ? remote : "");
        char fi[16];
        snprintf(fi, sizeof fi, "%d", r.fail_info);
        const char *kv[] = {"reason",         r.reason,
                            "transaction_id", r.txid[0] ? r.txid : NULL,
                            "subject",        r.subject[0] ? r.subject : NULL,
                            "fail_info",      r.fail_info >= 0 ? fi : NULL,
                            "remote",         remote};
        if (event && r.status < 500)
            *event = s_event("ca.rejected", kv, 10);
    }
    pm_msg_t *rep = pm_msg_new_reply(req, PM_MSG_SCEP_REPLY);
    if (rep && (pm_msg_set_uint(rep, "status", (uint64_t)r.status) < 0 ||
                pm_msg_set_str(rep, "content_type", r.content_type) < 0 ||
                pm_msg_set_bin(rep, "body", r.body ? r.body : (const uint8_t *)"", r.len) < 0 ||
                (r.status != 200 && pm_msg_set_str(rep, "reason", r.reason) < 0)))
        pm_msg_destroy(&rep);
    ca_scep_reply_clear(&r);
    *rp = r;
    return rep ? rep : pm_msg_new_error(req, "internal", "cannot build the SCEP reply");
}

static void s_finish(s_wait_t *w, pm_msg_t *rep, pm_msg_t *ev)
{
    w->finished = true;
    w->svc->nwaiting--;
    w->done(w->done_arg, rep, ev);
}

//  HTTP 503 for a PKCSReq whose challenge the store did not check: no
//  CertRep, no event (not a refusal); the device retries.
static pm_msg_t *s_scep_503(const pm_msg_t *stub)
{
    static const char body[] = "the challenge cannot be checked now (picomdm-store did not "
                               "answer); retry later\n";
    pm_msg_t *rep = pm_msg_new_reply(stub, PM_MSG_SCEP_REPLY);
    if (rep && (pm_msg_set_uint(rep, "status", 503) < 0 ||
                pm_msg_set_str(rep, "content_type", "text/plain") < 0 ||
                pm_msg_set_bin(rep, "body", (const uint8_t *)body, sizeof body - 1) < 0 ||
                pm_msg_set_str(rep, "reason", "the store did not check the challenge") < 0))
        pm_msg_destroy(&rep);
    return rep ? rep : pm_msg_new_error(stub, "internal", "cannot build the SCEP reply");
}

//  The store's verdict on a PKCSReq's challenge. The CertRep SUCCESS in w->r
//  goes out only when accepted; refused: the request runs again with the
//  challenge refused, for its FAILURE CertRep; no verdict: HTTP 503.
static void s_on_use(void *arg, const pm_msg_t *reply, const char *error)
{
    s_wait_t *w = arg;
    if (w->finished) {
        s_wait_free(w);
        return;
    }
    ca_svc_t *s = w->svc;
    pm_msg_t *ev = NULL, *rep = NULL;
    if (reply && pm_msg_type(reply) == PM_MSG_SCEP_CHALLENGE_USE_REPLY &&
        pm_msg_bool(reply, "accepted", false)) {
        rep = s_scep_answer(w->stub, w->operation, w->remote, &w->r, &ev);
        //  the store logged ca.issued with the challenge: mark it with its seq
        uint64_t seq = pm_msg_uint(reply, "seq", 0);
        if (ev && seq > 0 && pm_msg_set_uint(ev, "seq", seq) < 0)
            pm_msg_destroy(&ev);
    } else if (reply && pm_msg_type(reply) == PM_MSG_SCEP_CHALLENGE_USE_REPLY) {
        char hex[65];
        pm_bus_hex(w->r.cert_sha256, sizeof w->r.cert_sha256, hex);
        pm_warn("scep: the store refused the challenge of transaction %s (%s): the certificate "
                "signed for it (sha256 %s) is discarded, never handed out; the device gets a "
                "FAILURE",
                w->r.txid, pm_msg_str(reply, "reason") ? pm_msg_str(reply, "reason") : "?", hex);
        ca_scep_reply_clear(&w->r); //  the certificate is never handed out
        ca_challenge_refuse(s->ch, true);
        ca_scep_handle(s->scep, w->method, w->operation, w->msg, w->len, &w->r);
        ca_challenge_refuse(s->ch, false);
        ca_challenge_take_seen(s->ch, NULL);
        rep = s_scep_answer(w->stub, w->operation, w->remote, &w->r, &ev);
    } else if (reply && pm_msg_type(reply) == PM_MSG_ERROR) {
        //  the store answered, with an error: say its words, not "down"
        pm_error("scep: transaction %s: picomdm-store refused to check the challenge: %s (%s); "
                 "answering 503 so the device retries once that is fixed",
                 w->r.txid, pm_msg_str(reply, "message") ? pm_msg_str(reply, "message") : "?",
                 pm_msg_str(reply, "code") ? pm_msg_str(reply, "code") : "error");
        ca_scep_reply_clear(&w->r);
        rep = s_scep_503(w->stub);
    } else {
        pm_warn("scep: transaction %s: the store did not check the challenge (%s); answering 503 "
                "so the device retries (is picomdm-store running?)",
                w->r.txid, error ? error : "unexpected reply");
        ca_scep_reply_clear(&w->r);
        rep = s_scep_503(w->stub);
    }
    s_finish(w, rep, ev);
    s_wait_free(w);
}

//  A new waiting request for req (NULL: out of memory).
static s_wait_t *s_wait_new(ca_svc_t *s, const pm_msg_t *req, ca_svc_done_fn *done, void *arg)
{
    s_wait_t *w = calloc(1, sizeof *w);
    const char *remote = pm_msg_str(req, "remote"), *who = pm_msg_str(req, "for"),
               *op = pm_msg_str(req, "operation");
    if (!w)
        return NULL;
    w->svc = s;
    w->done = done;
    w->done_arg = arg;
    ca_scep_reply_clear(&w->r);
    w->stub = pm_msg_new(pm_msg_type(req));
    w->remote = remote ? strdup(remote) : NULL;
    w->who = who ? strdup(who) : NULL;
    w->operation = op ? strdup(op) : NULL;
    if (!w->stub || pm_msg_set_rid(w->stub, pm_msg_rid(req)) < 0 || (remote && !w->remote) ||
        (who && !w->who) || (op && !w->operation)) {
        w->finished = true; //  not counted yet
        w->svc = s;
        s_wait_free(w);
        return NULL;
    }
    w->next = s->waits;
    if (s->waits)
        s->waits->prev = w;
    s->waits = w;
    s->nwaiting++;
    return w;
}

//  The scep_challenge.use for a PKCSReq whose signed challenge checked out
//  here; the ca.issued event rides along (logged by the store if accepted).
static pm_msg_t *s_use_req(const ca_challenge_seen_t *seen, const ca_scep_reply_t *r)
{
    pm_msg_t *ev = s_issued_event(r);
    pm_msg_t *use = pm_msg_new(PM_MSG_SCEP_CHALLENGE_USE);
    if (!ev || !use || pm_msg_set_str(use, "hash", seen->hash_hex) < 0 ||
        pm_msg_set_str(use, "transaction_id", seen->txid) < 0 ||
        pm_msg_set_str(use, "key_hash", seen->key_hash_hex) < 0 ||
        pm_msg_set_uint(use, "expires_ms", (uint64_t)seen->expires_ms) < 0 ||
        pm_msg_set_str(use, "event", "ca.issued") < 0 ||
        pm_msg_set_obj(use, "event_data", pm_msg_obj(ev, "data")) < 0)
        pm_msg_destroy(&use);
    pm_msg_destroy(&ev);
    return use;
}

static void s_scep(ca_svc_t *s, const pm_msg_t *req, ca_svc_done_fn *done, void *arg)
{
    size_t len = 0;
    const uint8_t *msg = pm_msg_bin(req, "message", &len);
    const char *remote = pm_msg_str(req, "remote"), *op = pm_msg_str(req, "operation"),
               *method = pm_msg_str(req, "method");
    ca_scep_reply_t r = {0};
    pm_msg_t *ev = NULL;
    ca_challenge_seen_t seen;
    ca_challenge_take_seen(s->ch, NULL);
    ca_scep_handle(s->scep, method, op, msg, len, &r);
    bool check = ca_challenge_take_seen(s->ch, &seen) && s->call &&
                 r.pki_status == CA_SCEP_SUCCESS && r.message_type == CA_SCEP_PKCSREQ;
    if (check) {
        //  a signed one-time challenge: the store consumes it before the
        //  certificate goes out (durable, shared by every ca process)
        s_wait_t *w = s_wait_new(s, req, done, arg);
        pm_msg_t *use = w ? s_use_req(&seen, &r) : NULL;
        if (w) {
            w->r = r; //  the CertRep moves to w
            memset(&r, 0, sizeof r);
            w->method = method ? strdup(method) : NULL;
            w->msg = len ? malloc(len) : NULL;
            if (w->msg)
                memcpy(w->msg, msg, len);
            w->len = len;
        }
        OPENSSL_cleanse(&seen, sizeof seen);
        if (!w) {
            ca_scep_reply_clear(&r);
            done(arg, pm_msg_new_error(req, "internal", "out of memory in picomdm-ca: retry"),
                 NULL);
        } else if (!use || (method && !w->method) || (len && !w->msg)) {
            s_on_use(w, NULL, "out of memory");
        } else if (s->call(s->call_arg, use, s_on_use, w) < 0) {
            s_on_use(w, NULL, "cannot send scep_challenge.use to the store");
        }
        pm_msg_destroy(&use);
        return;
    }
    pm_msg_t *rep = s_scep_answer(req, op, remote, &r, &ev);
    done(arg, rep, ev);
}

//  The profile.reply (and ca.profile event) for a signed profile.
static pm_msg_t *s_profile_answer(ca_svc_t *s, const pm_msg_t *req, const uint8_t *der, size_t len,
                                  const char *uuid, const char *who, pm_msg_t **event)
{
    bool one_time = ca_challenge_mode(s->ch) == CA_CHALLENGE_ONE_TIME;
    pm_info("profile: issued (identity %s%s%s%s)", uuid,
            !one_time                    ? ""
            : ca_challenge_signed(s->ch) ? ", signed one-time challenge"
                                         : ", one-time challenge",
            who ? ", for " : "", who ? who : "");
    pm_msg_t *rep = pm_msg_new_reply(req, PM_MSG_PROFILE_REPLY);
    if (rep &&
        (pm_msg_set_bin(rep, "profile", der, len) < 0 ||
         pm_msg_set_str(rep, "content_type", "application/x-apple-aspen-config") < 0 ||
         pm_msg_set_str(rep, "identity_uuid", uuid) < 0 ||
         pm_msg_set_bool(rep, "one_time", one_time) < 0 ||
         (one_time && pm_msg_set_uint(rep, "expires_s", (uint64_t)ca_challenge_ttl(s->ch)) < 0)))
        pm_msg_destroy(&rep);
    const char *kv[] = {"identity_uuid", uuid, "for", who};
    *event = s_event("ca.profile", kv, 4);
    return rep ? rep : pm_msg_new_error(req, "internal", "cannot build the profile reply");
}

//  A profile needs no store: a signed challenge is checked by its tag at the
//  PKCSReq, and consumed in the store then.
static void s_profile(ca_svc_t *s, const pm_msg_t *req, ca_svc_done_fn *done, void *arg)
{
    ca_profile_opts_t ov = {.server_url = pm_msg_str(req, "server_url"),
                            .checkin_url = pm_msg_str(req, "checkin_url"),
                            .scep_url = pm_msg_str(req, "scep_url"),
                            .topic = pm_msg_str(req, "topic"),
                            .display_name = pm_msg_str(req, "display_name"),
                            .organization = pm_msg_str(req, "organization"),
                            .device_cn = pm_msg_str(req, "device_name")};
    uint8_t *der = NULL;
    size_t len = 0;
    char uuid[37] = "", err[300];
    if (ca_svc_profile(s, &ov, &der, &len, uuid, NULL, NULL, err, sizeof err) < 0) {
        pm_warn("profile: %s", err);
        done(arg, pm_msg_new_error(req, "bad_request", "%s", err), NULL);
        return;
    }
    pm_msg_t *ev = NULL;
    pm_msg_t *rep = s_profile_answer(s, req, der, len, uuid, pm_msg_str(req, "for"), &ev);
    OPENSSL_cleanse(der, len); //  it holds the challenge
    OPENSSL_free(der);
    done(arg, rep, ev);
}

void ca_svc_request(ca_svc_t *s, const pm_msg_t *req, ca_svc_done_fn *done, void *arg)
{
    switch (pm_msg_type(req)) {
    case PM_MSG_SCEP:
        s_scep(s, req, done, arg);
        return;
    case PM_MSG_PROFILE:
        s_profile(s, req, done, arg);
        return;
    default:
        pm_warn("request of type %s is not for the ca service: dropped with an error",
                pm_msg_type_name(pm_msg_type(req)));
        done(arg,
             pm_msg_new_error(req, "bad_request",
                              "the ca service answers scep and profile only, not %s",
                              pm_msg_type_name(pm_msg_type(req))),
             NULL);
    }
}

size_t ca_svc_waiting(const ca_svc_t *s)
{
    return s->nwaiting;
}

void ca_svc_abandon(ca_svc_t *s)
{
    for (s_wait_t *w = s->waits; w; w = w->next) {
        if (w->finished)
            continue;
        //  only PKCSReqs wait (for the store's verdict): the device retries
        ca_scep_reply_clear(&w->r);
        s_finish(w, s_scep_503(w->stub), NULL);
    }
}

typedef struct {
    bool done;
    pm_msg_t *rep, *ev;
} s_sync_t;

static void s_sync_done(void *arg, pm_msg_t *reply, pm_msg_t *event)
{
    s_sync_t *y = arg;
    y->done = true;
    y->rep = reply;
    y->ev = event;
}

pm_msg_t *ca_svc_handle(ca_svc_t *s, const pm_msg_t *req, pm_msg_t **event)
{
    s_sync_t *y = calloc(1, sizeof *y);
    if (event)
        *event = NULL;
    if (!y)
        return NULL;
    ca_svc_request(s, req, s_sync_done, y);
    if (!y->done) {
        //  the store answers later: that request is abandoned here (y stays
        //  with it, freed never; only tests call this with an async store)
        return pm_msg_new_error(req, "internal", "ca_svc_handle: the store answers later");
    }
    pm_msg_t *rep = y->rep;
    if (event)
        *event = y->ev;
    else
        pm_msg_destroy(&y->ev);
    free(y);
    return rep;
}
