/*  ca_svc_test — the "ca" service end to end without a bus: every request and
 *  reply goes through pm_msg encode/decode as on the wire. A `profile`
 *  request yields a signed profile whose one-time challenge then enrolls a
 *  device over `scep` exactly once; events carry no secret.
 */
#include "ca_scep.h"
#include "pm_scepc.h"
#include "ca_svc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/cms.h>
#include <openssl/rand.h>
#include <plist/plist.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    char dir[64];
    char paths[6][128];
    ca_svc_t *svc;
} s_fix_t;

static int s_setup(void **state)
{
    s_fix_t *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/ca_svc_test.XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    static const char *names[6] = {"ca.crt", "ca.key",     "ra.crt",
                                   "ra.key", "signer.crt", "signer.key"};
    for (int i = 0; i < 6; i++) {
        char dir[64];
        memcpy(dir, f->dir, sizeof dir);
        snprintf(f->paths[i], sizeof f->paths[i], "%s/%s", dir, names[i]);
    }
    ca_svc_opts_t o = {.pki = {.ca_cert = f->paths[0],
                               .ca_key = f->paths[1],
                               .ra_cert = f->paths[2],
                               .ra_key = f->paths[3],
                               .signer_cert = f->paths[4],
                               .signer_key = f->paths[5],
                               .cert_days = 365,
                               .key_usage = "critical,digitalSignature,keyEncipherment",
                               .ext_key_usage = "clientAuth"},
                       .challenge_mode = CA_CHALLENGE_ONE_TIME,
                       .profile = {.server_url = "https://127.0.0.1:8443/mdm/server",
                                   .scep_url = "https://127.0.0.1:8443/scep",
                                   .topic = "com.apple.mgmt.test"},
                       .tls_anchor = f->paths[0]};
    char err[256];
    f->svc = ca_svc_new(&o, err, sizeof err);
    if (!f->svc)
        fprintf(stderr, "ca_svc_new: %s\n", err);
    *state = f;
    return f->svc ? 0 : -1;
}

static int s_teardown(void **state)
{
    s_fix_t *f = *state;
    ca_svc_destroy(&f->svc);
    ca_svc_destroy(&f->svc);
    for (int i = 0; i < 6; i++)
        unlink(f->paths[i]);
    rmdir(f->dir);
    free(f);
    return 0;
}

//  encode -> decode, as the bus would carry it
static pm_msg_t *s_wire(pm_msg_t *m)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[256];
    assert_int_equal(pm_msg_encode(m, &buf, &len, err, sizeof err), 0);
    pm_msg_t *out = NULL;
    assert_int_equal(pm_msg_decode(buf, len, &out, err, sizeof err), 0);
    free(buf);
    pm_msg_destroy(&m);
    return out;
}

static pm_msg_t *s_call(s_fix_t *f, pm_msg_t *req, pm_msg_t **event)
{
    req = s_wire(req);
    pm_msg_t *rep = ca_svc_handle(f->svc, req, event);
    assert_non_null(rep);
    assert_string_equal(pm_msg_rid(rep), pm_msg_rid(req));
    pm_msg_destroy(&req);
    if (event && *event)
        *event = s_wire(*event);
    return s_wire(rep);
}

//  The SCEP challenge inside a signed profile (verified against the CA first).
static char *s_challenge_of(s_fix_t *f, const uint8_t *der, size_t len)
{
    const unsigned char *p = der;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    assert_non_null(cms);
    X509_STORE *st = X509_STORE_new();
    X509_STORE_add_cert(st, ca_pki_ca_cert(ca_svc_pki(f->svc)));
    BIO *out = BIO_new(BIO_s_mem());
    assert_int_equal(CMS_verify(cms, NULL, st, NULL, out, CMS_BINARY), 1);
    char *xml = NULL;
    long xl = BIO_get_mem_data(out, &xml);
    plist_t root = NULL;
    plist_from_xml(xml, (uint32_t)xl, &root);
    assert_non_null(root);
    char *ch = NULL;
    plist_t content = plist_dict_get_item(root, "PayloadContent");
    for (uint32_t i = 0; i < plist_array_get_size(content); i++) {
        plist_t sc = plist_dict_get_item(plist_array_get_item(content, i), "PayloadContent");
        plist_t c = sc && plist_get_node_type(sc) == PLIST_DICT
                        ? plist_dict_get_item(sc, "Challenge")
                        : NULL;
        if (c)
            plist_get_string_val(c, &ch);
    }
    plist_free(root);
    BIO_free(out);
    X509_STORE_free(st);
    CMS_ContentInfo_free(cms);
    assert_non_null(ch);
    return ch;
}

static pm_msg_t *s_pkiop(s_fix_t *f, EVP_PKEY *key, const char *challenge, const char *txid,
                         pm_msg_t **event, pm_scepc_result_t *res, X509 **self_out)
{
    X509_REQ *csr = pm_scepc_csr(key, "svc-device", challenge);
    X509 *self = pm_scepc_self_signed(key, "transient");
    uint8_t nonce[16], *der = NULL;
    size_t len = 0;
    RAND_bytes(nonce, sizeof nonce);
    assert_int_equal(pm_scepc_request(CA_SCEP_PKCSREQ, csr, self, key,
                                      ca_pki_ra_cert(ca_svc_pki(f->svc)), txid, nonce, &der, &len),
                     0);
    pm_msg_t *req = pm_msg_new(PM_MSG_SCEP);
    pm_msg_set_str(req, "method", "POST");
    pm_msg_set_str(req, "operation", "PKIOperation");
    pm_msg_set_bin(req, "message", der, len);
    pm_msg_set_str(req, "remote", "127.0.0.1");
    OPENSSL_free(der);
    pm_msg_t *rep = s_call(f, req, event);
    assert_int_equal(pm_msg_type(rep), PM_MSG_SCEP_REPLY);
    assert_int_equal(pm_msg_uint(rep, "status", 0), 200);
    size_t blen = 0;
    const uint8_t *body = pm_msg_bin(rep, "body", &blen);
    char err[200];
    assert_int_equal(pm_scepc_parse_reply(body, blen, ca_pki_ra_cert(ca_svc_pki(f->svc)), self, key,
                                          res, err, sizeof err),
                     0);
    X509_REQ_free(csr);
    *self_out = self;
    return rep;
}

static void test_profile_then_scep(void **state)
{
    s_fix_t *f = *state;
    pm_msg_t *ev = NULL;
    pm_msg_t *req = pm_msg_new(PM_MSG_PROFILE);
    pm_msg_set_str(req, "for", "alice");
    pm_msg_t *rep = s_call(f, req, &ev);
    assert_int_equal(pm_msg_type(rep), PM_MSG_PROFILE_REPLY);
    assert_string_equal(pm_msg_str(rep, "content_type"), "application/x-apple-aspen-config");
    assert_true(pm_msg_bool(rep, "one_time", false));
    assert_int_equal(pm_msg_uint(rep, "expires_s", 0), 7 * 86400);
    assert_int_equal(strlen(pm_msg_str(rep, "identity_uuid")), 36);
    size_t plen = 0;
    const uint8_t *prof = pm_msg_bin(rep, "profile", &plen);
    char *challenge = s_challenge_of(f, prof, plen);
    assert_int_equal(strlen(challenge), 32);
    assert_non_null(ev);
    assert_string_equal(pm_msg_str(ev, "name"), "ca.profile");
    pm_msg_destroy(&ev);
    pm_msg_destroy(&rep);

    EVP_PKEY *key = EVP_RSA_gen(2048);
    pm_scepc_result_t res;
    X509 *self = NULL;
    rep = s_pkiop(f, key, challenge, "SVC-TX-1", &ev, &res, &self);
    assert_int_equal(res.pki_status, CA_SCEP_SUCCESS);
    assert_non_null(res.cert);
    assert_non_null(ev);
    assert_string_equal(pm_msg_str(ev, "name"), "ca.issued");
    //  the event data is a map holding the certificate hash, and no challenge
    uint8_t *buf = NULL;
    size_t blen = 0;
    char err[200];
    assert_int_equal(pm_msg_encode(ev, &buf, &blen, err, sizeof err), 0);
    assert_null(memmem(buf, blen, challenge, strlen(challenge)));
    assert_non_null(memmem(buf, blen, "cert_sha256", 11));
    free(buf);
    pm_msg_destroy(&ev);
    pm_msg_destroy(&rep);
    X509_free(res.cert);
    X509_free(self);

    //  the challenge is spent: another transaction is refused
    rep = s_pkiop(f, key, challenge, "SVC-TX-2", &ev, &res, &self);
    assert_int_equal(res.pki_status, CA_SCEP_FAILURE);
    assert_int_equal(res.fail_info, CA_SCEP_BAD_REQUEST);
    assert_null(res.cert);
    assert_non_null(ev);
    assert_string_equal(pm_msg_str(ev, "name"), "ca.rejected");
    assert_int_equal(pm_msg_encode(ev, &buf, &blen, err, sizeof err), 0);
    assert_null(memmem(buf, blen, challenge, strlen(challenge)));
    free(buf);
    pm_msg_destroy(&ev);
    pm_msg_destroy(&rep);
    X509_free(self);
    EVP_PKEY_free(key);
    free(challenge);
}

static void test_scep_http_and_errors(void **state)
{
    s_fix_t *f = *state;
    pm_msg_t *req = pm_msg_new(PM_MSG_SCEP);
    pm_msg_set_str(req, "method", "GET");
    pm_msg_set_str(req, "operation", "GetCACaps");
    pm_msg_t *rep = s_call(f, req, NULL);
    assert_int_equal(pm_msg_uint(rep, "status", 0), 200);
    assert_string_equal(pm_msg_str(rep, "content_type"), "text/plain");
    size_t len = 0;
    const uint8_t *body = pm_msg_bin(rep, "body", &len);
    assert_non_null(memmem(body, len, "SCEPStandard", 12));
    pm_msg_destroy(&rep);

    pm_msg_t *ev = NULL;
    req = pm_msg_new(PM_MSG_SCEP);
    pm_msg_set_str(req, "method", "POST");
    pm_msg_set_str(req, "operation", "PKIOperation");
    pm_msg_set_bin(req, "message", "garbage", 7);
    rep = s_call(f, req, &ev);
    assert_int_equal(pm_msg_uint(rep, "status", 0), 400);
    assert_non_null(pm_msg_str(rep, "reason"));
    assert_non_null(ev);
    assert_string_equal(pm_msg_str(ev, "name"), "ca.rejected");
    pm_msg_destroy(&ev);
    pm_msg_destroy(&rep);

    //  not a ca request
    req = pm_msg_new(PM_MSG_ECHO);
    rep = s_call(f, req, NULL);
    assert_int_equal(pm_msg_type(rep), PM_MSG_ERROR);
    assert_string_equal(pm_msg_str(rep, "code"), "bad_request");
    pm_msg_destroy(&rep);

    //  a profile request with a bad override: error with the reason
    req = pm_msg_new(PM_MSG_PROFILE);
    pm_msg_set_str(req, "server_url", "http://insecure.test/");
    rep = s_call(f, req, NULL);
    assert_int_equal(pm_msg_type(rep), PM_MSG_ERROR);
    assert_non_null(strstr(pm_msg_str(rep, "message"), "https://"));
    pm_msg_destroy(&rep);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_profile_then_scep, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_scep_http_and_errors, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
