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

struct ca_svc {
    ca_pki_t *pki;
    ca_challenge_t *ch;
    ca_scep_t *scep;
    ca_profile_opts_t profile;
    X509 *anchor;
    char topic[256];
};

ca_svc_t *ca_svc_new(const ca_svc_opts_t *o, char *err, size_t errlen)
{
    ca_svc_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->profile = o->profile;
    s->profile.challenge = NULL;
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
                   char identity_uuid[37], char *err, size_t errlen)
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
    if (ca_challenge_issue(s->ch, challenge, sizeof challenge) < 0) {
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

static pm_msg_t *s_scep(ca_svc_t *s, const pm_msg_t *req, pm_msg_t **event)
{
    size_t len = 0;
    const uint8_t *msg = pm_msg_bin(req, "message", &len);
    ca_scep_reply_t r = {0};
    ca_scep_handle(s->scep, pm_msg_str(req, "method"), pm_msg_str(req, "operation"), msg, len, &r);
    const char *remote = pm_msg_str(req, "remote");
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
        pm_warn("scep: %s refused: %s (transaction %s%s%s)", pm_msg_str(req, "operation"), r.reason,
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
    return rep ? rep : pm_msg_new_error(req, "internal", "cannot build the SCEP reply");
}

static pm_msg_t *s_profile(ca_svc_t *s, const pm_msg_t *req, pm_msg_t **event)
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
    if (ca_svc_profile(s, &ov, &der, &len, uuid, err, sizeof err) < 0) {
        pm_warn("profile: %s", err);
        return pm_msg_new_error(req, "bad_request", "%s", err);
    }
    const char *who = pm_msg_str(req, "for");
    bool one_time = ca_challenge_mode(s->ch) == CA_CHALLENGE_ONE_TIME;
    pm_info("profile: issued (identity %s%s%s%s)", uuid, one_time ? ", one-time challenge" : "",
            who ? ", for " : "", who ? who : "");
    pm_msg_t *rep = pm_msg_new_reply(req, PM_MSG_PROFILE_REPLY);
    if (rep &&
        (pm_msg_set_bin(rep, "profile", der, len) < 0 ||
         pm_msg_set_str(rep, "content_type", "application/x-apple-aspen-config") < 0 ||
         pm_msg_set_str(rep, "identity_uuid", uuid) < 0 ||
         pm_msg_set_bool(rep, "one_time", one_time) < 0 ||
         (one_time && pm_msg_set_uint(rep, "expires_s", (uint64_t)ca_challenge_ttl(s->ch)) < 0)))
        pm_msg_destroy(&rep);
    OPENSSL_free(der);
    if (event) {
        const char *kv[] = {"identity_uuid", uuid, "for", who};
        *event = s_event("ca.profile", kv, 4);
    }
    return rep ? rep : pm_msg_new_error(req, "internal", "cannot build the profile reply");
}

pm_msg_t *ca_svc_handle(ca_svc_t *s, const pm_msg_t *req, pm_msg_t **event)
{
    if (event)
        *event = NULL;
    switch (pm_msg_type(req)) {
    case PM_MSG_SCEP:
        return s_scep(s, req, event);
    case PM_MSG_PROFILE:
        return s_profile(s, req, event);
    default:
        pm_warn("request of type %s is not for the ca service: dropped with an error",
                pm_msg_type_name(pm_msg_type(req)));
        return pm_msg_new_error(req, "bad_request",
                                "the ca service answers scep and profile only, not %s",
                                pm_msg_type_name(pm_msg_type(req)));
    }
}
