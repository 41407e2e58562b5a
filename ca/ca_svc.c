/*  ca_svc — the "ca" bus service (see ca_svc.h). */
#include "ca_svc.h"
#include "ca_scep.h"
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
    ca_scep_pending_t *pending; //  scep: the PKCSReq
    ca_scep_reply_t r;
    uint8_t *der; //  profile: signed, held until the store has the challenge
    size_t len;
    char uuid[37];
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
    ca_scep_pending_destroy(&w->pending);
    ca_scep_reply_clear(&w->r);
    if (w->der) {
        OPENSSL_cleanse(w->der, w->len); //  it holds the challenge
        OPENSSL_free(w->der);
    }
    pm_msg_destroy(&w->stub);
    free(w->remote);
    free(w->who);
    free(w->operation);
    free(w);
}

ca_svc_t *ca_svc_new(const ca_svc_opts_t *o, char *err, size_t errlen)
{
    ca_svc_t *s = calloc(1, sizeof *s);
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
    ca_challenge_set_durable(s->ch, s->call != NULL);
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
    char challenge[64];
    int crc = ca_challenge_durable(s->ch)
                  ? (hash_hex && expires_ms ? ca_challenge_make(s->ch, challenge, sizeof challenge,
                                                                hash_hex, expires_ms)
                                            : -1)
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
        rc = ca_profile_sign(ca_pki_signer_cert(s->pki), ca_pki_signer_key(s->pki),
                             ca_pki_ca_cert(s->pki), xml, xlen, der, len, err, errlen);
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

//  The scep.reply (and event) for a finished SCEP operation r (cleared here).
//  req: the request, or its stub (type and rid).
static pm_msg_t *s_scep_answer(const pm_msg_t *req, const char *operation, const char *remote,
                               ca_scep_reply_t *rp, pm_msg_t **event)
{
    ca_scep_reply_t r = *rp;
    char hex[65] = "";
    if (r.pki_status == CA_SCEP_SUCCESS) {
        for (int i = 0; i < 32; i++)
            snprintf(hex + 2 * i, 3, "%02x", r.cert_sha256[i]);
        pm_info("scep: issued %s (%s, transaction %s, sha256 %s)%s%s", r.subject,
                r.message_type == CA_SCEP_RENEWALREQ ? "renewal" : "enrollment", r.txid, hex,
                remote ? " for " : "", remote ? remote : "");
        const char *kv[] = {
            "subject",        r.subject,
            "transaction_id", r.txid,
            "cert_sha256",    hex,
            "kind",           r.message_type == CA_SCEP_RENEWALREQ ? "renewal" : "enrollment"};
        if (event)
            *event = s_event("ca.issued", kv, 8);
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

//  The store's verdict on a PKCSReq's challenge.
static void s_on_use(void *arg, const pm_msg_t *reply, const char *error)
{
    s_wait_t *w = arg;
    if (w->finished) {
        s_wait_free(w);
        return;
    }
    ca_svc_t *s = w->svc;
    ca_scep_verdict_t v = CA_SCEP_CHALLENGE_UNCHECKED;
    if (reply && pm_msg_type(reply) == PM_MSG_SCEP_CHALLENGE_USE_REPLY) {
        v = pm_msg_bool(reply, "accepted", false) ? CA_SCEP_CHALLENGE_ACCEPTED
                                                  : CA_SCEP_CHALLENGE_REFUSED;
        if (v == CA_SCEP_CHALLENGE_REFUSED)
            pm_info("scep: the store refused the challenge of transaction %s (%s)", w->r.txid,
                    pm_msg_str(reply, "reason") ? pm_msg_str(reply, "reason") : "?");
    } else {
        pm_warn("scep: transaction %s: the store did not check the challenge (%s); answering 503 "
                "so the device retries (is picomdm-store running?)",
                w->r.txid,
                error                                         ? error
                : reply && pm_msg_type(reply) == PM_MSG_ERROR ? pm_msg_str(reply, "message")
                                                              : "unexpected reply");
    }
    ca_scep_resume(s->scep, &w->pending, v, &w->r);
    pm_msg_t *ev = NULL;
    pm_msg_t *rep = s_scep_answer(w->stub, w->operation, w->remote, &w->r, &ev);
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

static void s_scep(ca_svc_t *s, const pm_msg_t *req, ca_svc_done_fn *done, void *arg)
{
    size_t len = 0;
    const uint8_t *msg = pm_msg_bin(req, "message", &len);
    const char *remote = pm_msg_str(req, "remote"), *op = pm_msg_str(req, "operation");
    ca_scep_reply_t r = {0};
    ca_scep_pending_t *pending = NULL;
    pm_msg_t *ev = NULL;
    ca_scep_handle_deferred(s->scep, pm_msg_str(req, "method"), op, msg, len, &r,
                            s->call ? &pending : NULL);
    if (pending) {
        //  durable one-time challenge: the store consumes it (or not) first
        s_wait_t *w = s_wait_new(s, req, done, arg);
        if (!w) {
            ca_scep_resume(s->scep, &pending, CA_SCEP_CHALLENGE_UNCHECKED, &r);
        } else {
            w->pending = pending;
            w->r = r; //  the reply so far (txid, subject) moves to w
            pending = NULL;
            pm_msg_t *use = pm_msg_new(PM_MSG_SCEP_CHALLENGE_USE);
            bool sent =
                use &&
                pm_msg_set_str(use, "hash", ca_scep_pending_challenge_hash(w->pending)) == 0 &&
                pm_msg_set_str(use, "transaction_id", ca_scep_pending_txid(w->pending)) == 0 &&
                pm_msg_set_str(use, "key_hash", ca_scep_pending_key_hash(w->pending)) == 0 &&
                s->call(s->call_arg, use, s_on_use, w) == 0;
            pm_msg_destroy(&use);
            if (!sent) //  no verdict: the device retries
                s_on_use(w, NULL, "cannot send scep_challenge.use to the store");
            return;
        }
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
            !one_time                     ? ""
            : ca_challenge_durable(s->ch) ? ", one-time challenge kept by the store"
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

//  The store's answer to scep_challenge.add: only now is the profile handed out.
static void s_on_add(void *arg, const pm_msg_t *reply, const char *error)
{
    s_wait_t *w = arg;
    if (w->finished) {
        s_wait_free(w);
        return;
    }
    pm_msg_t *rep = NULL, *ev = NULL;
    if (reply && pm_msg_type(reply) == PM_MSG_OK) {
        rep = s_profile_answer(w->svc, w->stub, w->der, w->len, w->uuid, w->who, &ev);
        //  the store has logged (and publishes) ca.profile with the challenge
        pm_msg_destroy(&ev);
    } else {
        const char *code =
            reply && pm_msg_type(reply) == PM_MSG_ERROR ? pm_msg_str(reply, "code") : NULL;
        const char *why = error ? error
                          : reply && pm_msg_type(reply) == PM_MSG_ERROR
                              ? pm_msg_str(reply, "message")
                              : "unexpected reply";
        //  the gateway answers 503 for these: the download can simply be retried
        bool transient = !code || strcmp(code, "timeout") == 0 || strcmp(code, "no_service") == 0 ||
                         strcmp(code, "worker_lost") == 0;
        pm_warn("profile: the store did not record its one-time challenge (%s); not handed out",
                why ? why : "?");
        rep = pm_msg_new_error(w->stub, transient ? (code ? code : "timeout") : "internal",
                               "the one-time SCEP challenge could not be recorded by the store "
                               "(%s): retry; check that picomdm-store is running",
                               why ? why : "?");
    }
    s_finish(w, rep, ev);
    s_wait_free(w);
}

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
    char uuid[37] = "", err[300], hash[65] = "";
    int64_t expires_ms = 0;
    if (ca_svc_profile(s, &ov, &der, &len, uuid, hash, &expires_ms, err, sizeof err) < 0) {
        pm_warn("profile: %s", err);
        done(arg, pm_msg_new_error(req, "bad_request", "%s", err), NULL);
        return;
    }
    const char *who = pm_msg_str(req, "for");
    if (!ca_challenge_durable(s->ch)) {
        pm_msg_t *ev = NULL;
        pm_msg_t *rep = s_profile_answer(s, req, der, len, uuid, who, &ev);
        OPENSSL_cleanse(der, len);
        OPENSSL_free(der);
        done(arg, rep, ev);
        return;
    }
    //  durable first: the store records the challenge's hash, then the profile goes out
    s_wait_t *w = s_wait_new(s, req, done, arg);
    pm_msg_t *add = pm_msg_new(PM_MSG_SCEP_CHALLENGE_ADD);
    bool queued = false;
    //  the ca.profile event travels with it (one store round trip, not two)
    const char *kv[] = {"identity_uuid", uuid, "for", who};
    pm_msg_t *ev = s_event("ca.profile", kv, 4);
    if (w && add && ev && pm_msg_set_str(add, "hash", hash) == 0 &&
        pm_msg_set_uint(add, "expires_ms", (uint64_t)expires_ms) == 0 &&
        pm_msg_set_str(add, "event", "ca.profile") == 0 &&
        pm_msg_set_obj(add, "event_data", pm_msg_obj(ev, "data")) == 0) {
        w->der = der;
        w->len = len;
        der = NULL;
        snprintf(w->uuid, sizeof w->uuid, "%s", uuid);
        queued = true;
        if (s->call(s->call_arg, add, s_on_add, w) < 0)
            s_on_add(w, NULL, "cannot send scep_challenge.add to the store");
    }
    pm_msg_destroy(&add);
    pm_msg_destroy(&ev);
    if (der) {
        OPENSSL_cleanse(der, len);
        OPENSSL_free(der);
    }
    if (!queued) {
        if (w)
            s_on_add(w, NULL, "out of memory");
        else
            done(arg, pm_msg_new_error(req, "internal", "out of memory in picomdm-ca: retry"),
                 NULL);
    }
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
        pm_msg_t *rep = NULL, *ev = NULL;
        if (w->pending) {
            ca_scep_resume(s->scep, &w->pending, CA_SCEP_CHALLENGE_UNCHECKED, &w->r);
            rep = s_scep_answer(w->stub, w->operation, w->remote, &w->r, &ev);
        } else {
            rep = pm_msg_new_error(w->stub, "timeout",
                                   "picomdm-ca is stopping before the store recorded the "
                                   "challenge: retry");
        }
        s_finish(w, rep, ev);
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
