/*  ca_profile_test — the enrollment profile parses, its CMS signature
 *  verifies to the device CA, IdentityCertificateUUID is the SCEP payload's
 *  PayloadUUID, and every key (with its type) is in Apple's schema
 *  (ca_profile_keys.h, generated from mdm/profiles/<name>.yaml).
 */
#include "ca_pki.h"
#include "ca_profile.h"
#include "ca_test_fixture.h"
#include "ca_profile_keys.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/cms.h>
#include <openssl/pem.h>
#include <plist/plist.h>
#include "pm_plist.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    ca_test_keys_t k; //  temp dir and PKI files (ca_test_fixture.h)
    ca_pki_t *pki;
} s_fix_t;

static int s_setup(void **state)
{
    s_fix_t *f = calloc(1, sizeof *f);
    if (ca_test_keys_init(&f->k, "ca_profile_test") < 0)
        return -1;
    ca_pki_opts_t o = ca_test_pki_opts(&f->k);
    char err[256];
    f->pki = ca_pki_new(&o, NULL, err, sizeof err);
    *state = f;
    return f->pki ? 0 : -1;
}

static int s_teardown(void **state)
{
    s_fix_t *f = *state;
    ca_pki_destroy(&f->pki);
    ca_test_keys_remove(&f->k);
    free(f);
    return 0;
}

static const ca_profile_key_t *s_lookup(const char *payload, const char *key)
{
    for (const ca_profile_key_t *k = ca_profile_keys; k->payload; k++)
        if (strcmp(k->payload, payload) == 0 && strcmp(k->key, key) == 0)
            return k;
    return NULL;
}

static char *s_get_str(plist_t d, const char *key)
{
    plist_t n = plist_dict_get_item(d, key);
    char *s = NULL;
    if (n && plist_get_node_type(n) == PLIST_STRING)
        plist_get_string_val(n, &s);
    return s;
}

//  Every key of dict `d` (and of nested dicts) must be in the schema for
//  `payload` (or Common, for payloads) with the right type; every required
//  key must be present. Returns the number of keys checked.
static int s_check_dict(plist_t d, const char *payload, const char *prefix)
{
    int checked = 0;
    plist_dict_iter it = NULL;
    plist_dict_new_iter(d, &it);
    for (;;) {
        char *key = NULL;
        plist_t val = NULL;
        plist_dict_next_item(d, it, &key, &val);
        if (!key)
            break;
        char path[256];
        snprintf(path, sizeof path, "%s%s", prefix, key);
        const ca_profile_key_t *k = s_lookup(payload, path);
        if (!k && strcmp(payload, "TopLevel") != 0 && !prefix[0])
            k = s_lookup("Common", path);
        if (!k)
            fail_msg("key %s is not in Apple's schema for %s", path, payload);
        if (strcmp(k->type, pm_plist_type_name(val)) != 0)
            fail_msg("key %s of %s is a %s, the schema says %s", path, payload,
                     pm_plist_type_name(val), k->type);
        checked++;
        //  nested dictionaries that the schema describes key by key
        if (plist_get_node_type(val) == PLIST_DICT && strcmp(payload, "TopLevel") != 0) {
            char sub[300];
            snprintf(sub, sizeof sub, "%s.", path);
            checked += s_check_dict(val, payload, sub);
        }
        free(key);
    }
    free(it);
    for (const ca_profile_key_t *k = ca_profile_keys; k->payload; k++) {
        bool mine =
            strcmp(k->payload, payload) == 0 ||
            (!prefix[0] && strcmp(payload, "TopLevel") != 0 && strcmp(k->payload, "Common") == 0);
        size_t pl = strlen(prefix);
        if (!mine || !k->required || strncmp(k->key, prefix, pl) != 0 || strchr(k->key + pl, '.'))
            continue;
        if (!plist_dict_get_item(d, k->key + pl))
            fail_msg("required key %s missing in %s", k->key, payload);
    }
    return checked;
}

static plist_t s_build_verify(s_fix_t *f, ca_profile_opts_t *o, char uuid[37])
{
    char *xml = NULL, err[256] = "";
    size_t len = 0;
    if (ca_profile_build(o, &xml, &len, uuid, err, sizeof err) != 0)
        fail_msg("build: %s", err);
    uint8_t *der = NULL;
    size_t dlen = 0;
    assert_int_equal(ca_profile_sign(ca_pki_signer_cert(f->pki), ca_pki_signer_key(f->pki),
                                     ca_pki_ca_cert(f->pki), xml, len, &der, &dlen, err,
                                     sizeof err),
                     0);
    //  verify as a device would: CMS, content embedded, chain to the CA
    const unsigned char *p = der;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)dlen);
    assert_non_null(cms);
    X509_STORE *st = X509_STORE_new();
    X509_STORE_add_cert(st, ca_pki_ca_cert(f->pki));
    BIO *out = BIO_new(BIO_s_mem());
    assert_int_equal(CMS_verify(cms, NULL, st, NULL, out, CMS_BINARY), 1);
    char *content = NULL;
    long clen = BIO_get_mem_data(out, &content);
    assert_int_equal((size_t)clen, len);
    assert_memory_equal(content, xml, len);
    //  tampering breaks it
    uint8_t *bad = malloc(dlen);
    memcpy(bad, der, dlen);
    char *hit = memmem(bad, dlen, "ServerURL", 9);
    assert_non_null(hit);
    hit[0] = 's';
    p = bad;
    CMS_ContentInfo *cms2 = d2i_CMS_ContentInfo(NULL, &p, (long)dlen);
    assert_non_null(cms2);
    assert_int_not_equal(CMS_verify(cms2, NULL, st, NULL, NULL, CMS_BINARY), 1);
    CMS_ContentInfo_free(cms2);
    free(bad);
    plist_t root = NULL;
    plist_from_xml(content, (uint32_t)clen, &root);
    assert_non_null(root);
    BIO_free(out);
    X509_STORE_free(st);
    CMS_ContentInfo_free(cms);
    OPENSSL_free(der);
    free(xml);
    return root;
}

static void test_profile(void **state)
{
    s_fix_t *f = *state;
    ca_profile_opts_t o = {.server_url = "https://mdm.example.test:8443/mdm/server",
                           .checkin_url = "https://mdm.example.test:8443/mdm/checkin",
                           .scep_url = "https://mdm.example.test:8443/scep",
                           .topic = "com.apple.mgmt.External.1234",
                           .challenge = "one-time-xyz",
                           .organization = "Example Org",
                           .tls_anchor = ca_pki_ca_cert(f->pki)};
    char uuid[37];
    plist_t root = s_build_verify(f, &o, uuid);
    int checked = s_check_dict(root, "TopLevel", "");
    plist_t content = plist_dict_get_item(root, "PayloadContent");
    assert_int_equal(plist_array_get_size(content), 3);
    char *scep_uuid = NULL, *identity = NULL;
    int seen = 0;
    for (uint32_t i = 0; i < plist_array_get_size(content); i++) {
        plist_t pl = plist_array_get_item(content, i);
        char *type = s_get_str(pl, "PayloadType");
        assert_non_null(type);
        checked += s_check_dict(pl, type, "");
        if (strcmp(type, "com.apple.security.scep") == 0) {
            scep_uuid = s_get_str(pl, "PayloadUUID");
            plist_t sc = plist_dict_get_item(pl, "PayloadContent");
            char *url = s_get_str(sc, "URL"), *ch = s_get_str(sc, "Challenge"),
                 *kt = s_get_str(sc, "Key Type");
            assert_string_equal(url, o.scep_url);
            assert_string_equal(ch, "one-time-xyz");
            assert_string_equal(kt, "RSA");
            uint64_t ks = 0;
            plist_get_uint_val(plist_dict_get_item(sc, "Keysize"), &ks);
            assert_int_equal(ks, 2048);
            free(url);
            free(ch);
            free(kt);
            seen |= 1;
        } else if (strcmp(type, "com.apple.mdm") == 0) {
            identity = s_get_str(pl, "IdentityCertificateUUID");
            char *topic = s_get_str(pl, "Topic");
            assert_string_equal(topic, o.topic);
            free(topic);
            uint64_t ar = 0;
            plist_get_uint_val(plist_dict_get_item(pl, "AccessRights"), &ar);
            assert_int_equal(ar, 8191);
            uint8_t b = 0;
            plist_get_bool_val(plist_dict_get_item(pl, "SignMessage"), &b);
            assert_true(b);
            plist_get_bool_val(plist_dict_get_item(pl, "CheckOutWhenRemoved"), &b);
            assert_true(b);
            plist_t caps = plist_dict_get_item(pl, "ServerCapabilities");
            assert_int_equal(plist_array_get_size(caps), 2);
            seen |= 2;
        } else if (strcmp(type, "com.apple.security.root") == 0) {
            char *data = NULL;
            uint64_t dl = 0;
            plist_get_data_val(plist_dict_get_item(pl, "PayloadContent"), &data, &dl);
            const unsigned char *p = (const unsigned char *)data;
            X509 *x = d2i_X509(NULL, &p, (long)dl);
            assert_non_null(x);
            assert_int_equal(X509_cmp(x, ca_pki_ca_cert(f->pki)), 0);
            X509_free(x);
            free(data);
            seen |= 4;
        }
        free(type);
    }
    assert_int_equal(seen, 7);
    assert_non_null(scep_uuid);
    assert_non_null(identity);
    assert_string_equal(identity, scep_uuid);
    assert_string_equal(identity, uuid);
    assert_true(checked > 30);
    free(scep_uuid);
    free(identity);
    plist_free(root);

    //  without an anchor: two payloads; two builds never share UUIDs
    o.tls_anchor = NULL;
    o.checkin_url = NULL;
    char uuid2[37];
    root = s_build_verify(f, &o, uuid2);
    assert_int_equal(plist_array_get_size(plist_dict_get_item(root, "PayloadContent")), 2);
    assert_string_not_equal(uuid, uuid2);
    s_check_dict(root, "TopLevel", "");
    plist_free(root);
}

static void test_bad_options(void **state)
{
    (void)state;
    ca_profile_opts_t o = {.server_url = "https://a.test/mdm",
                           .scep_url = "https://a.test/scep",
                           .topic = "com.apple.mgmt.X"};
    char *xml = NULL, uuid[37], err[256];
    size_t len;
    ca_profile_opts_t b = o;
    b.server_url = "http://a.test/mdm";
    assert_int_equal(ca_profile_build(&b, &xml, &len, uuid, err, sizeof err), -1);
    assert_non_null(strstr(err, "server-url"));
    b = o;
    b.scep_url = NULL;
    assert_int_equal(ca_profile_build(&b, &xml, &len, uuid, err, sizeof err), -1);
    b = o;
    b.topic = "com.example.nope";
    assert_int_equal(ca_profile_build(&b, &xml, &len, uuid, err, sizeof err), -1);
    assert_non_null(strstr(err, "topic"));
    b = o;
    b.key_size = 3000;
    assert_int_equal(ca_profile_build(&b, &xml, &len, uuid, err, sizeof err), -1);
    b = o;
    b.server_url = "https://a.test/<x>";
    assert_int_equal(ca_profile_build(&b, &xml, &len, uuid, err, sizeof err), -1);
    assert_null(xml);
    assert_int_equal(ca_profile_build(&o, &xml, &len, uuid, err, sizeof err), 0);
    free(xml);
}

//  The values of one download (UUIDs, challenge) written over the template
//  kept from the previous build: the profile is the one a full build makes
//  (a challenge that needs XML escaping is built the long way: the reference).
static char *s_normalized(const char *xml, size_t len, const char *challenge, const char *uuids[4])
{
    char *n = strndup(xml, len);
    assert_non_null(n);
    for (int i = 0; i < 4; i++)
        for (char *p = n; uuids[i] && (p = strstr(p, uuids[i])) != NULL; p += 36)
            memset(p, 'U', 36);
    char *c = strstr(n, challenge);
    assert_non_null(c);
    memset(c, 'C', strlen(challenge));
    return n;
}

static void s_uuids_of(const char *xml, size_t len, const char *out[4], char store[4][37])
{
    plist_t root = NULL;
    plist_from_xml(xml, (uint32_t)len, &root);
    assert_non_null(root);
    char *u = s_get_str(root, "PayloadUUID");
    snprintf(store[0], 37, "%s", u);
    free(u);
    plist_t content = plist_dict_get_item(root, "PayloadContent");
    for (uint32_t i = 0; i < plist_array_get_size(content) && i < 3; i++) {
        u = s_get_str(plist_array_get_item(content, i), "PayloadUUID");
        snprintf(store[i + 1], 37, "%s", u);
        free(u);
    }
    for (int i = 0; i < 4; i++)
        out[i] = store[i];
    plist_free(root);
}

static void test_template(void **state)
{
    s_fix_t *f = *state;
    ca_profile_opts_t o = {.server_url = "https://t.test/mdm",
                           .scep_url = "https://t.test/scep",
                           .topic = "com.apple.mgmt.T",
                           .tls_anchor = ca_pki_ca_cert(f->pki),
                           .challenge = "Abcdefghijklmnopqrstuvwxyz012345"};
    char *a = NULL, *b = NULL, *ref = NULL, ua[37], ub[37], ur[37], err[256];
    size_t la, lb, lr;
    assert_int_equal(ca_profile_build(&o, &a, &la, ua, err, sizeof err), 0);
    o.challenge = "Zbcdefghijklmnopqrstuvwxyz01234_";
    assert_int_equal(ca_profile_build(&o, &b, &lb, ub, err, sizeof err), 0);
    assert_string_not_equal(ua, ub);
    assert_int_equal(la, lb);
    assert_non_null(strstr(a, "Abcdefghijklmnopqrstuvwxyz012345"));
    assert_null(strstr(a, "Zbcdefghijklmnopqrstuvwxyz01234_"));
    assert_non_null(strstr(b, "Zbcdefghijklmnopqrstuvwxyz01234_"));
    assert_null(strstr(b, "~~~~"));
    assert_null(strstr(b, "C0DE"));
    //  the reference: '+' is not written into the template
    o.challenge = "+bcdefghijklmnopqrstuvwxyz012345";
    assert_int_equal(ca_profile_build(&o, &ref, &lr, ur, err, sizeof err), 0);
    assert_int_equal(lr, lb);
    const char *uu[4];
    char st[3][4][37];
    s_uuids_of(b, lb, uu, st[0]);
    char *nb = s_normalized(b, lb, "Zbcdefghijklmnopqrstuvwxyz01234_", uu);
    s_uuids_of(ref, lr, uu, st[1]);
    char *nr = s_normalized(ref, lr, "+bcdefghijklmnopqrstuvwxyz012345", uu);
    assert_string_equal(nb, nr);
    //  every UUID differs between downloads
    s_uuids_of(a, la, uu, st[2]);
    for (int i = 0; i < 4; i++)
        assert_string_not_equal(st[0][i], st[2][i]);
    //  other options: a new template (no anchor, another topic)
    o.tls_anchor = NULL;
    o.topic = "com.apple.mgmt.Other";
    o.challenge = "Abcdefghijklmnopqrstuvwxyz012345";
    free(a);
    assert_int_equal(ca_profile_build(&o, &a, &la, ua, err, sizeof err), 0);
    assert_non_null(strstr(a, "com.apple.mgmt.Other"));
    assert_null(strstr(a, "com.apple.security.root"));
    //  no challenge at all
    o.challenge = NULL;
    free(b);
    assert_int_equal(ca_profile_build(&o, &b, &lb, ub, err, sizeof err), 0);
    assert_null(strstr(b, "Challenge"));
    free(a);
    free(b);
    free(ref);
    free(nb);
    free(nr);
}

static void test_topic_from_cert(void **state)
{
    s_fix_t *f = *state;
    char path[160], buf[128], err[256];
    snprintf(path, sizeof path, "%s/push.pem", f->k.dir);
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_NID(n, NID_userId, MBSTRING_UTF8,
                               (const unsigned char *)"com.apple.mgmt.External.abc-123", -1, -1, 0);
    X509_NAME_add_entry_by_NID(n, NID_commonName, MBSTRING_UTF8, (const unsigned char *)"APSP:abc",
                               -1, -1, 0);
    X509_set_issuer_name(x, n);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 60);
    X509_set_pubkey(x, k);
    X509_sign(x, k, EVP_sha256());
    FILE *fp = fopen(path, "w");
    PEM_write_X509(fp, x);
    fclose(fp);
    assert_int_equal(ca_profile_topic_from_cert(path, buf, sizeof buf, err, sizeof err), 0);
    assert_string_equal(buf, "com.apple.mgmt.External.abc-123");
    assert_int_equal(ca_profile_topic_from_cert(f->k.paths[0], buf, sizeof buf, err, sizeof err),
                     -1);
    assert_int_equal(ca_profile_topic_from_cert("/nonexistent", buf, sizeof buf, err, sizeof err),
                     -1);
    unlink(path);
    X509_free(x);
    EVP_PKEY_free(k);
}

//  The profile signer (its digest and SMIMECapabilities worked out once) makes
//  the SignedData OpenSSL's CMS_sign makes: same digest, same signed
//  attributes (signingTime aside: its second), same certificates in the same
//  order, same content; it verifies to the CA; a key that is not the
//  certificate's is refused when the signer is made.
static CMS_ContentInfo *s_d2i_cms(const uint8_t *der, size_t len)
{
    const unsigned char *p = der;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    assert_non_null(cms);
    return cms;
}

static void test_signer_as_cms_sign(void **state)
{
    s_fix_t *f = *state;
    X509 *cert = ca_pki_signer_cert(f->pki), *ca = ca_pki_ca_cert(f->pki);
    EVP_PKEY *key = ca_pki_signer_key(f->pki);
    static const char xml[] = "<?xml version=\"1.0\"?>\n<plist><dict/></plist>\n";
    char err[256] = "";
    //  reference: OpenSSL's one call, as ca_profile_sign was
    BIO *in = BIO_new_mem_buf(xml, sizeof xml - 1);
    STACK_OF(X509) *chain = sk_X509_new_null();
    sk_X509_push(chain, ca);
    CMS_ContentInfo *ref0 = CMS_sign(cert, key, chain, in, CMS_BINARY);
    assert_non_null(ref0);
    //  compared as it goes out: encoded (DER sorts the SET OF certificates)
    uint8_t *rder = NULL;
    int rlen = i2d_CMS_ContentInfo(ref0, &rder);
    assert_true(rlen > 0);
    CMS_ContentInfo *ref = s_d2i_cms(rder, (size_t)rlen);
    OPENSSL_free(rder);
    CMS_ContentInfo_free(ref0);
    sk_X509_free(chain);
    BIO_free(in);
    ca_profile_signer_t *ps = ca_profile_signer_new(cert, key, ca, err, sizeof err);
    assert_non_null(ps);
    for (int round = 0; round < 2; round++) { //  the prepared parts serve again
        uint8_t *der = NULL;
        size_t dlen = 0;
        assert_int_equal(
            ca_profile_signer_sign(ps, xml, sizeof xml - 1, &der, &dlen, err, sizeof err), 0);
        CMS_ContentInfo *cms = s_d2i_cms(der, dlen);
        X509_STORE *st = X509_STORE_new();
        X509_STORE_add_cert(st, ca);
        BIO *out = BIO_new(BIO_s_mem());
        assert_int_equal(CMS_verify(cms, NULL, st, NULL, out, CMS_BINARY), 1);
        char *content = NULL;
        assert_int_equal(BIO_get_mem_data(out, &content), (long)(sizeof xml - 1));
        assert_memory_equal(content, xml, sizeof xml - 1);
        //  certificates: signer and CA, as CMS_sign puts them
        STACK_OF(X509) *c1 = CMS_get1_certs(ref), *c2 = CMS_get1_certs(cms);
        assert_int_equal(sk_X509_num(c2), 2);
        assert_int_equal(sk_X509_num(c1), sk_X509_num(c2));
        for (int i = 0; i < sk_X509_num(c1); i++)
            assert_int_equal(X509_cmp(sk_X509_value(c1, i), sk_X509_value(c2, i)), 0);
        sk_X509_pop_free(c1, X509_free);
        sk_X509_pop_free(c2, X509_free);
        //  one signer, same digest and signature algorithms, same signed attributes
        CMS_SignerInfo *s1 = sk_CMS_SignerInfo_value(CMS_get0_SignerInfos(ref), 0);
        CMS_SignerInfo *s2 = sk_CMS_SignerInfo_value(CMS_get0_SignerInfos(cms), 0);
        assert_int_equal(sk_CMS_SignerInfo_num(CMS_get0_SignerInfos(cms)), 1);
        X509_ALGOR *d1, *d2, *a1, *a2;
        CMS_SignerInfo_get0_algs(s1, NULL, NULL, &d1, &a1);
        CMS_SignerInfo_get0_algs(s2, NULL, NULL, &d2, &a2);
        assert_int_equal(X509_ALGOR_cmp(d1, d2), 0);
        assert_int_equal(X509_ALGOR_cmp(a1, a2), 0);
        assert_int_equal(CMS_signed_get_attr_count(s2), 4);
        assert_int_equal(CMS_signed_get_attr_count(s1), CMS_signed_get_attr_count(s2));
        int seen = 0;
        for (int i = 0; i < CMS_signed_get_attr_count(s1); i++) {
            X509_ATTRIBUTE *x1 = CMS_signed_get_attr(s1, i);
            const ASN1_OBJECT *o = X509_ATTRIBUTE_get0_object(x1);
            int j = CMS_signed_get_attr_by_OBJ(s2, o, -1);
            assert_true(j >= 0);
            seen += OBJ_obj2nid(o) == NID_SMIMECapabilities;
            if (OBJ_obj2nid(o) == NID_pkcs9_signingTime)
                continue;
            unsigned char *e1 = NULL, *e2 = NULL;
            int l1 = i2d_X509_ATTRIBUTE(x1, &e1),
                l2 = i2d_X509_ATTRIBUTE(CMS_signed_get_attr(s2, j), &e2);
            assert_true(l1 > 0);
            assert_int_equal(l1, l2);
            assert_memory_equal(e1, e2, (size_t)l1);
            OPENSSL_free(e1);
            OPENSSL_free(e2);
        }
        assert_int_equal(seen, 1);
        BIO_free(out);
        X509_STORE_free(st);
        CMS_ContentInfo_free(cms);
        OPENSSL_free(der);
    }
    ca_profile_signer_destroy(&ps);
    ca_profile_signer_destroy(&ps); //  safe twice
    CMS_ContentInfo_free(ref);
    //  a key that is not the certificate's
    EVP_PKEY *other = EVP_EC_gen("P-256");
    assert_non_null(other);
    err[0] = 0;
    assert_null(ca_profile_signer_new(cert, other, ca, err, sizeof err));
    assert_non_null(strstr(err, "does not match"));
    EVP_PKEY_free(other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_profile, s_setup, s_teardown),
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test_setup_teardown(test_template, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_topic_from_cert, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_signer_as_cms_sign, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
