/*  devsim_neg — negative tests (see devsim_neg.h). Plain blocking libcurl:
 *  one request at a time, so each status is printed next to its cause.
 */
#include "devsim_neg.h"
#include "devsim_plist.h"
#include "pm_log.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  GCC 12 reports a false "dangling pointer" through the inlined s_xml/s_tamper
//  pair (the buffer is heap memory from libplist, not a local).
#if defined(__GNUC__) && __GNUC__ >= 12 && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#endif

const char *const devsim_neg_spoofs[] = {"unsigned", "wrong-ca",    "expired",      "self-signed",
                                         "tampered", "two-signers", "zero-signers", "bad-base64",
                                         "another",  NULL};
const char *const devsim_neg_malformed[] = {"truncated", "nested",      "oversized",
                                            "garbage",   "wrong-types", NULL};

static size_t s_sink(char *d, size_t s, size_t n, void *a)
{
    (void)d, (void)a;
    return s * n;
}

//  PUT body with an optional Mdm-Signature; returns the HTTP status, 0 when
//  there was no HTTP answer.
static long s_put(const devsim_run_opts_t *o, bool checkin, const void *body, size_t len,
                  const char *sig, bool *transport)
{
    CURL *e = curl_easy_init();
    if (!e)
        return 0;
    char url[1024];
    snprintf(url, sizeof url, "%s%s", o->url, checkin ? o->checkin_path : o->server_path);
    struct curl_slist *h = NULL;
    h = curl_slist_append(h, checkin ? "Content-Type: application/x-apple-aspen-mdm-checkin"
                                     : "Content-Type: application/x-apple-aspen-mdm");
    h = curl_slist_append(h, "Expect:");
    char *sh = NULL;
    if (sig) {
        size_t n = strlen(sig) + 32;
        sh = malloc(n);
        if (sh) {
            snprintf(sh, n, "Mdm-Signature: %s", sig);
            h = curl_slist_append(h, sh);
        }
    }
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "PUT");
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "MDM/1.0");
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, s_sink);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, o->timeout_ms > 0 ? o->timeout_ms : 30000L);
    if (o->ca_bundle)
        curl_easy_setopt(e, CURLOPT_CAINFO, o->ca_bundle);
    if (o->insecure) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    long code = 0;
    CURLcode rc = curl_easy_perform(e);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    *transport = rc != CURLE_OK;
    if (rc != CURLE_OK && o->verbose)
        printf("    (transport: %s)\n", curl_easy_strerror(rc));
    curl_slist_free_all(h);
    free(sh);
    curl_easy_cleanup(e);
    return code;
}

//  Print one outcome; fold it into *worst.
static void s_outcome(const char *mode, const char *variant, const char *what, long code,
                      bool transport, bool reset_ok, int *worst)
{
    int rc;
    const char *verdict;
    if (code >= 200 && code < 300) {
        rc = DEVSIM_NEG_ACCEPTED;
        verdict = "ACCEPTED (the server must reject this with 400)";
    } else if (code >= 400 && code < 500) {
        rc = DEVSIM_NEG_REJECTED;
        verdict = code == 401 ? "rejected, but with 401 (use 400: a 401 can unenroll a device)"
                              : "rejected";
    } else if (code == 0 && transport && reset_ok) {
        rc = DEVSIM_NEG_REJECTED;
        verdict = "rejected (connection closed before an answer)";
    } else {
        rc = DEVSIM_NEG_TRANSPORT;
        verdict = code ? "server error (expected 400)" : "no HTTP answer (is the server up?)";
    }
    printf("%s %s: %s -> HTTP %ld %s\n", mode, variant, what, code, verdict);
    fflush(stdout);
    if (rc == DEVSIM_NEG_ACCEPTED || (rc == DEVSIM_NEG_TRANSPORT && *worst == DEVSIM_NEG_REJECTED))
        *worst = rc;
}

static char *s_xml(plist_t p, size_t *len)
{
    char *out = NULL;
    uint32_t n = 0;
    plist_to_xml(p, &out, &n);
    plist_free(p);
    *len = n;
    return out;
}

//  Sign and send a check-in body from `signer` (NULL = unsigned).
static long s_send(const devsim_run_opts_t *o, bool checkin, const char *body, size_t len,
                   const devsim_ident_t *signer, bool *transport)
{
    char *sig = NULL;
    if (signer && devsim_ident_sign(signer, NULL, o->md, body, len, &sig) < 0) {
        *transport = true;
        return 0;
    }
    long code = s_put(o, checkin, body, len, sig, transport);
    free(sig);
    return code;
}

//  Flip the low bit of the last character of `what` inside body.
static int s_tamper(char *body, const char *what)
{
    char *at = strstr(body, what);
    if (!at || !*what)
        return -1;
    at[strlen(what) - 1] ^= 0x01;
    return 0;
}

//  Enroll dev properly (Authenticate + TokenUpdate). 0 if both got 200.
static int s_enroll(const devsim_run_opts_t *o, devsim_dev_t *dev)
{
    plist_t msgs[2] = {devsim_dev_authenticate(dev), devsim_dev_tokenupdate(dev)};
    int rc = 0;
    for (int i = 0; i < 2; i++) {
        size_t len;
        char *xml = s_xml(msgs[i], &len);
        bool tr = false;
        long code = xml ? s_send(o, true, xml, len, devsim_dev_ident(dev), &tr) : 0;
        free(xml);
        if (code != 200) {
            pm_error("setup: enrolling %s got HTTP %ld (the server must accept a correctly "
                     "signed device first; check --ca-cert matches its device CA)",
                     devsim_dev_cn(dev), code);
            rc = -1;
        }
    }
    return rc;
}

int devsim_neg_spoof(const devsim_run_opts_t *o, const char *v, const devsim_ca_t *ca,
                     devsim_dev_t *dev, devsim_key_t kt, uint64_t seed)
{
    char err[256];
    int worst = DEVSIM_NEG_REJECTED;
    devsim_ident_t *tmp = NULL, *tmp2 = NULL;
    devsim_ca_t *other = NULL;
    devsim_dev_t *victim = NULL;
    size_t len = 0;
    char *body = s_xml(devsim_dev_authenticate(dev), &len);
    char *sig = NULL;
    bool tr = false;
    long code = 0;
    int rc = DEVSIM_NEG_SETUP;
    if (!body)
        goto out;
    const devsim_ident_t *own = devsim_dev_ident(dev);
    bool needs_ca =
        strcmp(v, "expired") == 0 || strcmp(v, "two-signers") == 0 || strcmp(v, "another") == 0;
    if (needs_ca && !ca) {
        pm_error("--spoof %s needs the device CA the server trusts: give --ca-cert and --ca-key",
                 v);
        goto out;
    }
    if (!own && strcmp(v, "unsigned") != 0 && strcmp(v, "wrong-ca") != 0 &&
        strcmp(v, "self-signed") != 0 && strcmp(v, "expired") != 0) {
        pm_error("--spoof %s needs a device identity: give --ca-cert/--ca-key or --cert/--key", v);
        goto out;
    }
    if (strcmp(v, "unsigned") == 0) {
        code = s_put(o, true, body, len, NULL, &tr);
    } else if (strcmp(v, "wrong-ca") == 0) {
        other = devsim_ca_generate("Not The Device CA", kt, err, sizeof err);
        tmp = other ? devsim_ident_issue(other, devsim_dev_cn(dev), kt, -60, 86400, err, sizeof err)
                    : NULL;
        if (!tmp)
            goto setup_fail;
        code = s_send(o, true, body, len, tmp, &tr);
    } else if (strcmp(v, "expired") == 0) {
        tmp = devsim_ident_issue(ca, devsim_dev_cn(dev), kt, -30L * 86400, -86400, err, sizeof err);
        if (!tmp)
            goto setup_fail;
        code = s_send(o, true, body, len, tmp, &tr);
    } else if (strcmp(v, "self-signed") == 0) {
        tmp = devsim_ident_self_signed(devsim_dev_cn(dev), kt, err, sizeof err);
        if (!tmp)
            goto setup_fail;
        code = s_send(o, true, body, len, tmp, &tr);
    } else if (strcmp(v, "tampered") == 0) {
        //  Sign the real body, then change one character of the UDID (or
        //  EnrollmentID): still a valid plist, no longer the signed bytes.
        if (devsim_ident_sign(own, NULL, o->md, body, len, &sig) < 0)
            goto setup_fail;
        if (s_tamper(body, devsim_dev_cn(dev)) < 0)
            goto setup_fail;
        code = s_put(o, true, body, len, sig, &tr);
    } else if (strcmp(v, "two-signers") == 0) {
        tmp = devsim_ident_issue(ca, "second-signer", kt, -60, 86400, err, sizeof err);
        if (!tmp || devsim_ident_sign(own, tmp, o->md, body, len, &sig) < 0)
            goto setup_fail;
        code = s_put(o, true, body, len, sig, &tr);
    } else if (strcmp(v, "zero-signers") == 0) {
        if (devsim_ident_sign_nosigner(own, &sig) < 0)
            goto setup_fail;
        code = s_put(o, true, body, len, sig, &tr);
    } else if (strcmp(v, "bad-base64") == 0) {
        code = s_put(o, true, body, len, "this-is-not*base64!!", &tr);
    } else if (strcmp(v, "another") == 0) {
        //  Two real devices enroll; then the attacker (dev) speaks for the victim
        //  with its own, perfectly valid, certificate.
        victim = devsim_dev_new(dev->kind, dev->index + 1000000, seed ^ 0x5A5A5A5AULL, dev->topic);
        tmp2 = victim
                   ? devsim_ident_issue(ca, devsim_dev_cn(victim), kt, -60, 86400, err, sizeof err)
                   : NULL;
        if (!tmp2)
            goto setup_fail;
        devsim_dev_set_ident(victim, &tmp2);
        if (s_enroll(o, victim) < 0 || s_enroll(o, dev) < 0)
            goto out;
        printf("spoof another: setup: %s and %s enrolled with their own certificates\n",
               devsim_dev_cn(victim), devsim_dev_cn(dev));
        free(body);
        body = s_xml(devsim_dev_tokenupdate(victim), &len);
        code = body ? s_send(o, true, body, len, own, &tr) : 0;
        s_outcome("spoof", v, "victim's TokenUpdate signed with another device's certificate", code,
                  tr, false, &worst);
        free(body);
        body = s_xml(devsim_dev_report(victim, "Idle", NULL), &len);
        code = body ? s_send(o, false, body, len, own, &tr) : 0;
        s_outcome("spoof", v, "victim's Status Idle signed with another device's certificate", code,
                  tr, false, &worst);
        rc = worst;
        goto out;
    } else {
        pm_error("unknown --spoof variant '%s' (see --help)", v);
        goto out;
    }
    s_outcome("spoof", v, "Authenticate", code, tr, false, &worst);
    rc = worst;
    goto out;
setup_fail:
    pm_error("--spoof %s: cannot prepare the request: %s", v, err[0] ? err : "OpenSSL failed");
out:
    free(sig);
    free(body);
    devsim_ident_destroy(&tmp);
    devsim_ident_destroy(&tmp2);
    devsim_ca_destroy(&other);
    devsim_dev_destroy(&victim);
    return rc;
}

int devsim_neg_malformed_run(const devsim_run_opts_t *o, const char *v, devsim_dev_t *dev)
{
    const devsim_ident_t *id = devsim_dev_ident(dev);
    int worst = DEVSIM_NEG_REJECTED;
    bool tr = false;
    long code;
    size_t len = 0;
    char *body = NULL;
    if (!id && o->sign) {
        pm_error("--malformed needs a device identity to sign with: give --ca-cert/--ca-key or "
                 "--cert/--key (or --no-sign for a server in lab mode)");
        return DEVSIM_NEG_SETUP;
    }
    const devsim_ident_t *signer = o->sign ? id : NULL;
    if (strcmp(v, "truncated") == 0) {
        body = s_xml(devsim_dev_authenticate(dev), &len);
        if (!body)
            return DEVSIM_NEG_SETUP;
        code = s_send(o, true, body, len / 2, signer, &tr);
        s_outcome("malformed", v, "Authenticate cut in half", code, tr, false, &worst);
    } else if (strcmp(v, "nested") == 0) {
        const int depth = 100000;
        const char *head = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\">"
                           "<dict><key>MessageType</key><string>Authenticate</string>"
                           "<key>Deep</key>";
        const char *tail = "</dict></plist>\n";
        size_t cap = strlen(head) + strlen(tail) + (size_t)depth * 15 + 1;
        body = malloc(cap);
        if (!body)
            return DEVSIM_NEG_SETUP;
        size_t n = (size_t)snprintf(body, cap, "%s", head);
        for (int i = 0; i < depth; i++)
            memcpy(body + n, "<array>", 7), n += 7;
        for (int i = 0; i < depth; i++)
            memcpy(body + n, "</array>", 8), n += 8;
        n += (size_t)snprintf(body + n, cap - n, "%s", tail);
        code = s_send(o, true, body, n, signer, &tr);
        s_outcome("malformed", v, "100000 nested arrays", code, tr, false, &worst);
    } else if (strcmp(v, "oversized") == 0) {
        plist_t a = devsim_dev_authenticate(dev);
        size_t big = 17u * 1024u * 1024u;
        char *pad = malloc(big + 1);
        if (!pad) {
            plist_free(a);
            return DEVSIM_NEG_SETUP;
        }
        memset(pad, 'A', big);
        pad[big] = 0;
        devsim_pl_str(a, "Padding", pad);
        free(pad);
        body = s_xml(a, &len);
        if (!body)
            return DEVSIM_NEG_SETUP;
        code = s_send(o, true, body, len, signer, &tr);
        s_outcome("malformed", v, "17 MiB Authenticate", code, tr, true, &worst);
    } else if (strcmp(v, "garbage") == 0) {
        len = 4096;
        body = malloc(len);
        if (!body)
            return DEVSIM_NEG_SETUP;
        for (size_t i = 0; i < len; i++)
            body[i] = (char)(devsim_rand() & 0xff);
        code = s_send(o, true, body, len, signer, &tr);
        s_outcome("malformed", v, "4096 random bytes", code, tr, false, &worst);
        memcpy(body, "bplist00", 8); //  looks binary-plist, is not
        code = s_send(o, true, body, len, signer, &tr);
        s_outcome("malformed", v, "bplist00 + random bytes", code, tr, false, &worst);
    } else if (strcmp(v, "wrong-types") == 0) {
        plist_t a = devsim_dev_authenticate(dev);
        plist_dict_set_item(a, "Topic", plist_new_uint(42));
        plist_t arr = plist_new_array();
        plist_array_append_item(arr, plist_new_string(devsim_dev_cn(dev)));
        plist_dict_set_item(a, dev->user_enrollment ? "EnrollmentID" : "UDID", arr);
        body = s_xml(a, &len);
        code = body ? s_send(o, true, body, len, signer, &tr) : 0;
        s_outcome("malformed", v, "Authenticate with UDID as array, Topic as integer", code, tr,
                  false, &worst);
        free(body);
        plist_t t = devsim_dev_tokenupdate(dev);
        plist_dict_set_item(t, "Token", plist_new_string("not data"));
        plist_dict_set_item(t, "PushMagic", plist_new_bool(1));
        body = s_xml(t, &len);
        code = body ? s_send(o, true, body, len, signer, &tr) : 0;
        s_outcome("malformed", v, "TokenUpdate with Token as string, PushMagic as bool", code, tr,
                  false, &worst);
        free(body);
        plist_t m = devsim_dev_authenticate(dev);
        plist_dict_set_item(m, "MessageType", plist_new_uint(1));
        body = s_xml(m, &len);
        code = body ? s_send(o, true, body, len, signer, &tr) : 0;
        s_outcome("malformed", v, "MessageType as integer", code, tr, false, &worst);
    } else {
        pm_error("unknown --malformed variant '%s' (see --help)", v);
        return DEVSIM_NEG_SETUP;
    }
    free(body);
    return worst;
}
