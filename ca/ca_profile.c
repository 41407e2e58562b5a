/*  ca_profile — enrollment profile building and CMS signing (see ca_profile.h). */
#include "ca_profile.h"

#include <ctype.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <plist/plist.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int s_fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int s_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    ERR_clear_error();
    return -1;
}

bool ca_profile_url_ok(const char *url)
{
    return url && strncasecmp(url, "https://", 8) == 0 && url[8] && !strpbrk(url, " \t\r\n<>\"");
}

//  A random (version 4) UUID, upper case. OpenSSL's DRBG: no system call per
//  UUID (zuuid reads the kernel's random source each time).
static int s_uuid(char out[37])
{
    unsigned char b[16];
    if (RAND_bytes(b, sizeof b) != 1)
        return -1;
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    static const char hex[] = "0123456789ABCDEF";
    int o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[36] = 0;
    return 0;
}

static void s_str(plist_t d, const char *k, const char *v)
{
    plist_dict_set_item(d, k, plist_new_string(v));
}

static void s_int(plist_t d, const char *k, int64_t v)
{
    plist_dict_set_item(d, k, plist_new_uint((uint64_t)v));
}

//  The keys every payload has (CommonPayloadKeys.yaml).
static plist_t s_payload(const char *type, const char *identifier, const char *uuid,
                         const char *display)
{
    plist_t d = plist_new_dict();
    s_str(d, "PayloadType", type);
    s_str(d, "PayloadIdentifier", identifier);
    s_str(d, "PayloadUUID", uuid);
    s_int(d, "PayloadVersion", 1);
    s_str(d, "PayloadDisplayName", display);
    return d;
}

//  SCEP Subject: [ [ ["O", org] ], [ ["CN", cn] ] ] (com.apple.security.scep.yaml)
static plist_t s_subject(const char *org, const char *cn)
{
    plist_t subject = plist_new_array();
    const char *pairs[2][2] = {{"O", org}, {"CN", cn}};
    for (int i = 0; i < 2; i++) {
        plist_t pair = plist_new_array();
        plist_array_append_item(pair, plist_new_string(pairs[i][0]));
        plist_array_append_item(pair, plist_new_string(pairs[i][1]));
        plist_t inner = plist_new_array();
        plist_array_append_item(inner, pair);
        plist_array_append_item(subject, inner);
    }
    return subject;
}

//  The UUIDs of one profile: top level, SCEP (== IdentityCertificateUUID), MDM, root.
typedef struct {
    char top[37], identity[37], mdm[37], root[37];
} s_uuids_t;

static int s_build(const ca_profile_opts_t *o, const s_uuids_t *u, char **xml, size_t *len,
                   char *err, size_t errlen)
{
    *xml = NULL;
    if (!ca_profile_url_ok(o->server_url))
        return s_fail(err, errlen, "server-url must be an https:// URL (got '%s')",
                      o->server_url ? o->server_url : "");
    if (o->checkin_url && o->checkin_url[0] && !ca_profile_url_ok(o->checkin_url))
        return s_fail(err, errlen, "checkin-url must be an https:// URL");
    if (!ca_profile_url_ok(o->scep_url))
        return s_fail(err, errlen, "scep-url must be an https:// URL (got '%s')",
                      o->scep_url ? o->scep_url : "");
    if (!o->topic || strncmp(o->topic, "com.apple.mgmt.", 15) != 0)
        return s_fail(err, errlen,
                      "the push topic must start with com.apple.mgmt. (set `topic`, or "
                      "`push-cert` to read it from the push certificate)");
    int key_size = o->key_size ? o->key_size : 2048;
    if (key_size != 1024 && key_size != 2048 && key_size != 4096)
        return s_fail(err, errlen, "key size %d is not one Apple accepts (1024, 2048, 4096)",
                      key_size);
    const char *org = o->organization && o->organization[0] ? o->organization : "PicoMDM";
    const char *ident = o->identifier && o->identifier[0] ? o->identifier : "org.picomdm.enroll";
    char id[512];
    //  one variable: the SCEP PayloadUUID and the MDM IdentityCertificateUUID
    const char *identity_uuid = u->identity;
    plist_t top = plist_new_dict(), content = plist_new_array();
    if (o->tls_anchor) {
        unsigned char *der = NULL;
        int dlen = i2d_X509(o->tls_anchor, &der);
        if (dlen <= 0) {
            plist_free(top);
            plist_free(content);
            return s_fail(err, errlen, "cannot encode the TLS trust anchor");
        }
        snprintf(id, sizeof id, "%s.tls-anchor", ident);
        plist_t root = s_payload("com.apple.security.root", id, u->root, "MDM server certificate");
        s_str(root, "PayloadCertificateFileName", "mdm-server.cer");
        plist_dict_set_item(root, "PayloadContent",
                            plist_new_data((const char *)der, (uint64_t)dlen));
        OPENSSL_free(der);
        plist_array_append_item(content, root);
    }
    snprintf(id, sizeof id, "%s.scep", ident);
    plist_t scep =
        s_payload("com.apple.security.scep", id, identity_uuid, "Device identity (SCEP)");
    plist_t sc = plist_new_dict();
    s_str(sc, "URL", o->scep_url);
    s_str(sc, "Name", org);
    if (o->challenge && o->challenge[0])
        s_str(sc, "Challenge", o->challenge);
    s_int(sc, "Keysize", key_size);
    s_str(sc, "Key Type", "RSA");
    s_int(sc, "Key Usage", o->key_usage ? o->key_usage : 5);
    plist_dict_set_item(
        sc, "Subject",
        s_subject(org, o->device_cn && o->device_cn[0] ? o->device_cn : "PicoMDM device"));
    plist_dict_set_item(scep, "PayloadContent", sc);
    plist_array_append_item(content, scep);

    snprintf(id, sizeof id, "%s.mdm", ident);
    plist_t mdm = s_payload("com.apple.mdm", id, u->mdm, "Device management");
    s_str(mdm, "IdentityCertificateUUID", identity_uuid);
    s_str(mdm, "ServerURL", o->server_url);
    s_str(mdm, "CheckInURL", o->checkin_url && o->checkin_url[0] ? o->checkin_url : o->server_url);
    s_str(mdm, "Topic", o->topic);
    plist_dict_set_item(mdm, "SignMessage", plist_new_bool(1));
    s_int(mdm, "AccessRights", o->access_rights ? o->access_rights : 8191);
    plist_dict_set_item(mdm, "CheckOutWhenRemoved", plist_new_bool(1));
    plist_t caps = plist_new_array();
    plist_array_append_item(caps, plist_new_string("com.apple.mdm.per-user-connections"));
    plist_array_append_item(caps, plist_new_string("com.apple.mdm.bootstraptoken"));
    plist_dict_set_item(mdm, "ServerCapabilities", caps);
    plist_array_append_item(content, mdm);

    plist_dict_set_item(top, "PayloadContent", content);
    s_str(top, "PayloadType", "Configuration");
    s_str(top, "PayloadIdentifier", ident);
    s_str(top, "PayloadUUID", u->top);
    s_int(top, "PayloadVersion", 1);
    s_str(top, "PayloadDisplayName",
          o->display_name && o->display_name[0] ? o->display_name : "MDM enrollment");
    s_str(top, "PayloadOrganization", org);
    s_str(top, "PayloadDescription", "Enrolls this device in PicoMDM device management.");

    char *out = NULL;
    uint32_t olen = 0;
    plist_to_xml(top, &out, &olen);
    plist_free(top);
    if (!out || !olen)
        return s_fail(err, errlen, "cannot serialize the profile (libplist)");
    *xml = malloc(olen + 1);
    if (!*xml) {
        plist_to_xml_free(out);
        return s_fail(err, errlen, "out of memory");
    }
    memcpy(*xml, out, olen);
    (*xml)[olen] = 0;
    *len = olen;
    plist_to_xml_free(out);
    return 0;
}

/* ---- the template: the XML of the last options, values per download patched in ---- */

//  A profile differs between downloads only in its UUIDs and its challenge,
//  all of fixed length and needing no XML escaping: the XML is built once per
//  set of options with placeholders, and each download copies it and writes
//  its own values over them (a tenth of the cost of building the plist).
#define S_NSLOTS                                                                                   \
    5 //  top, identity (SCEP PayloadUUID), identity (IdentityCertificateUUID), mdm, root

typedef struct {
    ca_profile_opts_t o; //  the options it was built from (strings owned below)
    char *strs[8];
    X509 *anchor; //  a reference
    size_t challenge_len;
    char *xml;
    size_t len;
    size_t at[S_NSLOTS]; //  offsets of the UUID placeholders (0 = absent)
    size_t challenge_at; //  offset of the challenge placeholder (0 = none)
} s_tmpl_t;

//  One template for the process (picomdm-ca serves its requests on one thread).
static s_tmpl_t s_tmpl;

static bool s_same_str(const char *a, const char *b)
{
    return (!a || !*a) ? (!b || !*b) : (b && strcmp(a, b) == 0);
}

static bool s_tmpl_matches(const ca_profile_opts_t *o, size_t challenge_len)
{
    const s_tmpl_t *t = &s_tmpl;
    return t->xml && t->challenge_len == challenge_len &&
           s_same_str(t->o.server_url, o->server_url) &&
           s_same_str(t->o.checkin_url, o->checkin_url) && s_same_str(t->o.scep_url, o->scep_url) &&
           s_same_str(t->o.topic, o->topic) && s_same_str(t->o.organization, o->organization) &&
           s_same_str(t->o.display_name, o->display_name) &&
           s_same_str(t->o.identifier, o->identifier) && s_same_str(t->o.device_cn, o->device_cn) &&
           t->o.key_size == o->key_size && t->o.key_usage == o->key_usage &&
           t->o.access_rights == o->access_rights &&
           (t->anchor ? o->tls_anchor && X509_cmp(t->anchor, o->tls_anchor) == 0 : !o->tls_anchor);
}

static void s_tmpl_clear(void)
{
    for (int i = 0; i < 8; i++)
        free(s_tmpl.strs[i]);
    X509_free(s_tmpl.anchor);
    free(s_tmpl.xml);
    memset(&s_tmpl, 0, sizeof s_tmpl);
}

//  The one offset of `needle` in the template (which must hold it `want` times: else 0).
static size_t s_find(const char *xml, size_t len, const char *needle, int want, size_t *second)
{
    size_t n = strlen(needle), first = 0;
    int count = 0;
    for (const char *p = xml; (p = memmem(p, len - (size_t)(p - xml), needle, n)) != NULL; p += n) {
        count++;
        if (count == 1)
            first = (size_t)(p - xml);
        else if (count == 2 && second)
            *second = (size_t)(p - xml);
    }
    return count == want ? first : 0;
}

//  Build the template for `o` (challenge of challenge_len characters). 0 / -1.
static int s_tmpl_make(const ca_profile_opts_t *o, size_t challenge_len, char *err, size_t errlen)
{
    s_tmpl_clear();
    //  placeholders: values no option can hold, as long as the real ones
    s_uuids_t u = {.top = "00000000-0000-0000-0000-00000000C0DE",
                   .identity = "00000000-0000-0000-0000-00000001C0DE",
                   .mdm = "00000000-0000-0000-0000-00000002C0DE",
                   .root = "00000000-0000-0000-0000-00000003C0DE"};
    char ch[129];
    if (challenge_len >= sizeof ch)
        return -1;
    memset(ch, '~', challenge_len);
    ch[challenge_len] = 0;
    ca_profile_opts_t b = *o;
    b.challenge = challenge_len ? ch : NULL;
    char *xml = NULL;
    size_t len = 0;
    if (s_build(&b, &u, &xml, &len, err, errlen) < 0)
        return -1;
    s_tmpl_t *t = &s_tmpl;
    t->xml = xml;
    t->len = len;
    size_t second = 0;
    t->at[0] = s_find(xml, len, u.top, 1, NULL);
    t->at[1] = s_find(xml, len, u.identity, 2, &second);
    t->at[2] = second;
    t->at[3] = s_find(xml, len, u.mdm, 1, NULL);
    t->at[4] = o->tls_anchor ? s_find(xml, len, u.root, 1, NULL) : 0;
    t->challenge_at = challenge_len ? s_find(xml, len, ch, 1, NULL) : 0;
    bool ok = t->at[0] && t->at[1] && t->at[2] && t->at[3] && (!o->tls_anchor || t->at[4]) &&
              (!challenge_len || t->challenge_at);
    const char *in[8] = {o->server_url,   o->checkin_url,  o->scep_url,   o->topic,
                         o->organization, o->display_name, o->identifier, o->device_cn};
    for (int i = 0; ok && i < 8; i++)
        ok = !in[i] || (t->strs[i] = strdup(in[i])) != NULL;
    if (!ok) {
        s_tmpl_clear(); //  a placeholder did not come out as expected: build each time
        return -1;
    }
    t->o = *o;
    t->o.server_url = t->strs[0];
    t->o.checkin_url = t->strs[1];
    t->o.scep_url = t->strs[2];
    t->o.topic = t->strs[3];
    t->o.organization = t->strs[4];
    t->o.display_name = t->strs[5];
    t->o.identifier = t->strs[6];
    t->o.device_cn = t->strs[7];
    t->o.challenge = NULL;
    t->o.tls_anchor = NULL;
    if (o->tls_anchor && X509_up_ref(o->tls_anchor))
        t->anchor = o->tls_anchor;
    else if (o->tls_anchor) {
        s_tmpl_clear();
        return -1;
    }
    t->challenge_len = challenge_len;
    return 0;
}

//  A challenge goes into the template only when it needs no XML escaping
//  (ca_challenge's are URL-safe base64); any other is built the long way.
static bool s_plain(const char *s)
{
    for (; s && *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_' && *s != '.')
            return false;
    return true;
}

int ca_profile_build(const ca_profile_opts_t *o, char **xml, size_t *len, char identity_uuid[37],
                     char *err, size_t errlen)
{
    *xml = NULL;
    s_uuids_t u;
    if (s_uuid(u.top) < 0 || s_uuid(u.identity) < 0 || s_uuid(u.mdm) < 0 || s_uuid(u.root) < 0)
        return s_fail(err, errlen, "cannot make UUIDs");
    memcpy(identity_uuid, u.identity, 37);
    size_t clen = o->challenge ? strlen(o->challenge) : 0;
    if (!s_plain(o->challenge) || clen > 128 ||
        (!s_tmpl_matches(o, clen) && s_tmpl_make(o, clen, err, errlen) < 0))
        return s_build(o, &u, xml, len, err,
                       errlen); //  (re-checks the options, says what is wrong)
    const s_tmpl_t *t = &s_tmpl;
    char *out = malloc(t->len + 1);
    if (!out)
        return s_fail(err, errlen, "out of memory");
    memcpy(out, t->xml, t->len + 1);
    const char *vals[S_NSLOTS] = {u.top, u.identity, u.identity, u.mdm, u.root};
    for (int i = 0; i < S_NSLOTS; i++)
        if (t->at[i])
            memcpy(out + t->at[i], vals[i], 36);
    if (t->challenge_at)
        memcpy(out + t->challenge_at, o->challenge, clen);
    *xml = out;
    *len = t->len;
    return 0;
}

/* ---- signing ---- */

//  What CMS_sign works out again for every profile, worked out once per
//  signer (issue #6, session 5): the signer's default digest
//  (EVP_PKEY_get_default_digest_nid asks the key manager each time) fetched
//  once, and the SMIMECapabilities list (CMS_add_standard_smimecap looks up
//  ten ciphers by name each time) built once. The SignedData is the same:
//  same signed attributes (contentType, signingTime, messageDigest,
//  SMIMECapabilities), same certificates in the same order, same digest.
struct ca_profile_signer {
    X509 *cert;
    EVP_PKEY *key;
    X509 *chain;
    EVP_MD *md;
    STACK_OF(X509_ALGOR) * smcap;
};

ca_profile_signer_t *ca_profile_signer_new(X509 *signer, EVP_PKEY *key, X509 *chain, char *err,
                                           size_t errlen)
{
    ca_profile_signer_t *ps = calloc(1, sizeof *ps);
    int nid = NID_undef;
    if (!ps || !signer || !key) {
        s_fail(err, errlen, ps ? "no profile signer certificate or key" : "out of memory");
        goto fail;
    }
    if (X509_check_private_key(signer, key) != 1) {
        s_fail(err, errlen, "the profile signer key does not match its certificate");
        goto fail;
    }
    if (EVP_PKEY_get_default_digest_nid(key, &nid) <= 0 || nid == NID_undef ||
        !(ps->md = EVP_MD_fetch(NULL, OBJ_nid2sn(nid), NULL))) {
        s_fail(err, errlen, "no default digest for the profile signer key");
        goto fail;
    }
    if (CMS_add_standard_smimecap(&ps->smcap) != 1) {
        s_fail(err, errlen, "out of memory");
        goto fail;
    }
    X509_up_ref(signer);
    ps->cert = signer;
    EVP_PKEY_up_ref(key);
    ps->key = key;
    if (chain) {
        X509_up_ref(chain);
        ps->chain = chain;
    }
    return ps;
fail:
    ca_profile_signer_destroy(&ps);
    return NULL;
}

void ca_profile_signer_destroy(ca_profile_signer_t **p)
{
    if (!p || !*p)
        return;
    ca_profile_signer_t *ps = *p;
    X509_free(ps->cert);
    EVP_PKEY_free(ps->key);
    X509_free(ps->chain);
    EVP_MD_free(ps->md);
    sk_X509_ALGOR_pop_free(ps->smcap, X509_ALGOR_free);
    free(ps);
    *p = NULL;
}

int ca_profile_signer_sign(ca_profile_signer_t *ps, const void *data, size_t len, uint8_t **der,
                           size_t *derlen, char *err, size_t errlen)
{
    //  As CMS_sign(cert, key, {chain}, data, CMS_BINARY) does it: an empty
    //  SignedData, the signer (its certificate first), the chain, then the
    //  content digested and the signed attributes signed in CMS_final.
    const unsigned int flags = CMS_BINARY;
    int rc = -1;
    *der = NULL;
    BIO *in = BIO_new_mem_buf(data, (int)len);
    CMS_ContentInfo *cms = in ? CMS_sign(NULL, NULL, NULL, NULL, flags | CMS_PARTIAL) : NULL;
    CMS_SignerInfo *si =
        cms ? CMS_add1_signer(cms, ps->cert, ps->key, ps->md, flags | CMS_NOSMIMECAP) : NULL;
    if (!si || CMS_add_smimecap(si, ps->smcap) != 1 ||
        (ps->chain && CMS_add1_cert(cms, ps->chain) != 1) || CMS_final(cms, in, NULL, flags) != 1) {
        s_fail(err, errlen, "cannot sign the profile (OpenSSL CMS failed)");
        goto out;
    }
    int l = i2d_CMS_ContentInfo(cms, der);
    if (l <= 0) {
        s_fail(err, errlen, "cannot encode the signed profile (OpenSSL CMS failed)");
        goto out;
    }
    *derlen = (size_t)l;
    rc = 0;
out:
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    return rc;
}

int ca_profile_sign(X509 *signer, EVP_PKEY *key, X509 *chain, const void *data, size_t len,
                    uint8_t **der, size_t *derlen, char *err, size_t errlen)
{
    *der = NULL;
    ca_profile_signer_t *ps = ca_profile_signer_new(signer, key, chain, err, errlen);
    int rc = ps ? ca_profile_signer_sign(ps, data, len, der, derlen, err, errlen) : -1;
    ca_profile_signer_destroy(&ps);
    return rc;
}

int ca_profile_topic_from_cert(const char *pem_path, char *buf, size_t size, char *err,
                               size_t errlen)
{
    FILE *f = fopen(pem_path, "r");
    if (!f)
        return s_fail(err, errlen, "cannot open the push certificate %s: %s", pem_path,
                      strerror(errno));
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!x)
        return s_fail(err, errlen, "%s is not a PEM certificate", pem_path);
    int n = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_userId, buf, (int)size);
    X509_free(x);
    if (n <= 0 || strncmp(buf, "com.apple.mgmt.", 15) != 0)
        return s_fail(err, errlen,
                      "the push certificate %s has no com.apple.mgmt.* UID in its subject: is it "
                      "an MDM push certificate? (or set `topic`)",
                      pem_path);
    return 0;
}
