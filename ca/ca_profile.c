/*  ca_profile — enrollment profile building and CMS signing (see ca_profile.h). */
#include "ca_profile.h"

#include <ctype.h>
#include <czmq.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <plist/plist.h>
#include <stdarg.h>
#include <stdio.h>
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

static int s_uuid(char out[37])
{
    zuuid_t *u = zuuid_new();
    if (!u)
        return -1;
    const char *s = zuuid_str_canonical(u);
    for (int i = 0; i < 36; i++)
        out[i] = (char)toupper((unsigned char)s[i]);
    out[36] = 0;
    zuuid_destroy(&u);
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

int ca_profile_build(const ca_profile_opts_t *o, char **xml, size_t *len, char identity_uuid[37],
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
    char top_uuid[37], mdm_uuid[37], root_uuid[37], id[512];
    //  one variable: the SCEP PayloadUUID and the MDM IdentityCertificateUUID
    if (s_uuid(top_uuid) < 0 || s_uuid(identity_uuid) < 0 || s_uuid(mdm_uuid) < 0 ||
        s_uuid(root_uuid) < 0)
        return s_fail(err, errlen, "cannot make UUIDs");
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
        plist_t root =
            s_payload("com.apple.security.root", id, root_uuid, "MDM server certificate");
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
    plist_t mdm = s_payload("com.apple.mdm", id, mdm_uuid, "Device management");
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
    s_str(top, "PayloadUUID", top_uuid);
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

int ca_profile_sign(X509 *signer, EVP_PKEY *key, X509 *chain, const void *data, size_t len,
                    uint8_t **der, size_t *derlen, char *err, size_t errlen)
{
    int rc = -1;
    *der = NULL;
    STACK_OF(X509) *certs = sk_X509_new_null();
    BIO *in = BIO_new_mem_buf(data, (int)len);
    CMS_ContentInfo *cms = NULL;
    if (!certs || !in || (chain && !sk_X509_push(certs, chain))) {
        s_fail(err, errlen, "out of memory");
        goto out;
    }
    cms = CMS_sign(signer, key, certs, in, CMS_BINARY);
    int l = cms ? i2d_CMS_ContentInfo(cms, der) : -1;
    if (l <= 0) {
        s_fail(err, errlen, "cannot sign the profile (OpenSSL CMS failed)");
        goto out;
    }
    *derlen = (size_t)l;
    rc = 0;
out:
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    sk_X509_free(certs);
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
