/*  devsim_scep_test — the enrollment step machine of bin/picomdm-devsim
 *  (devsim_scep_dev_t), fed replies by hand: the requests come in a device's
 *  order (profile, GetCACert, GetCACaps, PKCSReq) with the URLs and the
 *  connection boundaries of each program (profile download, SCEP), and every
 *  check still refuses what a device refuses: a profile signed by another CA,
 *  an IdentityCertificateUUID that is not the SCEP payload's, a GetCACaps
 *  without POSTPKIOperation, HTTP errors, a reply that is not a CertRep.
 *  The SCEP exchange with a real CA is tests/it/enroll_concurrent.sh's.
 */
#include "devsim_ident.h"
#include "devsim_scep.h"

#include <openssl/cms.h>
#include <openssl/rsa.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define ENROLL_URL "https://mdm.example.com:8443/mdm/enroll?token=abc"
#define SCEP_URL "https://mdm.example.com:8443/scep"

typedef struct {
    devsim_ca_t *ca, *other;
    unsigned char *ca_der;
    int ca_len;
} s_fix_t;

static int s_setup(void **state)
{
    char err[256];
    s_fix_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    //  RSA: the SCEP request is enveloped to it (key transport), as to an RA
    f->ca = devsim_ca_generate("devsim_scep_test CA", DEVSIM_KEY_RSA, err, sizeof err);
    f->other = devsim_ca_generate("devsim_scep_test other CA", DEVSIM_KEY_EC, err, sizeof err);
    assert_non_null(f->ca);
    assert_non_null(f->other);
    f->ca_len = i2d_X509(devsim_ca_cert(f->ca), &f->ca_der);
    assert_true(f->ca_len > 0);
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    s_fix_t *f = *state;
    devsim_ca_destroy(&f->ca);
    devsim_ca_destroy(&f->other);
    OPENSSL_free(f->ca_der);
    free(f);
    return 0;
}

//  A signed .mobileconfig (DER CMS) with a SCEP payload (Keysize 1024: the
//  machine makes the key when given none; a small one keeps the test fast)
//  and an MDM payload naming `identity_uuid`, signed by `ca`.
static unsigned char *s_profile(const devsim_ca_t *ca, const char *identity_uuid, int *len)
{
    char xml[4096];
    snprintf(xml, sizeof xml,
             "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\"><dict>"
             "<key>PayloadContent</key><array>"
             "<dict><key>PayloadType</key><string>com.apple.security.scep</string>"
             "<key>PayloadUUID</key><string>11111111-2222-3333-4444-555555555555</string>"
             "<key>PayloadContent</key><dict><key>URL</key><string>" SCEP_URL "</string>"
             "<key>Challenge</key><string>chal-0123456789abcdef</string>"
             "<key>Keysize</key><integer>1024</integer>"
             "<key>Subject</key><array><array><array><string>O</string><string>Test</string>"
             "</array></array><array><array><string>CN</string><string>dev</string></array>"
             "</array></array></dict></dict>"
             "<dict><key>PayloadType</key><string>com.apple.mdm</string>"
             "<key>ServerURL</key><string>https://mdm.example.com:8443/mdm/connect</string>"
             "<key>CheckInURL</key><string>https://mdm.example.com:8443/mdm/checkin</string>"
             "<key>Topic</key><string>com.apple.mgmt.External.test</string>"
             "<key>IdentityCertificateUUID</key><string>%s</string>"
             "<key>SignMessage</key><true/></dict>"
             "</array></dict></plist>\n",
             identity_uuid);
    BIO *in = BIO_new_mem_buf(xml, (int)strlen(xml));
    CMS_ContentInfo *cms =
        CMS_sign(devsim_ca_cert(ca), devsim_ca_key(ca), NULL, in, CMS_BINARY | CMS_NOSMIMECAP);
    assert_non_null(cms);
    unsigned char *der = NULL;
    *len = i2d_CMS_ContentInfo(cms, &der);
    assert_true(*len > 0);
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    return der;
}

#define UUID_OK "11111111-2222-3333-4444-555555555555"

//  The requests in a device's order, each with its URL, method and the
//  connection boundaries; a PKIOperation reply that is not a CertRep fails.
static void test_order(void **state)
{
    s_fix_t *f = *state;
    char err[256] = "";
    int plen = 0;
    unsigned char *prof = s_profile(f->ca, UUID_OK, &plen);
    devsim_scep_dev_t *d = devsim_scep_dev_new(ENROLL_URL, NULL, NULL);
    assert_non_null(d);
    devsim_scep_req_t q;

    assert_int_equal(devsim_scep_dev_next(d, &q), 1);
    assert_string_equal(q.url, ENROLL_URL);
    assert_null(q.body);
    assert_string_equal(q.what, "profile");
    assert_int_equal(q.part, DEVSIM_SCEP_PART_PROFILE);
    assert_true(q.part_first && q.part_last); //  Safari: one request, its own connection
    assert_null(devsim_scep_dev_profile(d));
    assert_int_equal(devsim_scep_dev_reply(d, 200, prof, (size_t)plen, err, sizeof err), 0);

    assert_int_equal(devsim_scep_dev_next(d, &q), 1);
    assert_string_equal(q.url, SCEP_URL "?operation=GetCACert");
    assert_null(q.body);
    assert_int_equal(q.part, DEVSIM_SCEP_PART_SCEP);
    assert_true(q.part_first && !q.part_last); //  the profile installer opens its connection
    assert_int_equal(devsim_scep_dev_reply(d, 200, f->ca_der, (size_t)f->ca_len, err, sizeof err),
                     0);

    assert_int_equal(devsim_scep_dev_next(d, &q), 1);
    assert_string_equal(q.url, SCEP_URL "?operation=GetCACaps");
    assert_true(!q.part_first && !q.part_last);
    const char caps[] = "POSTPKIOperation\nSHA-256\nAES\n";
    assert_int_equal(
        devsim_scep_dev_reply(d, 200, (const unsigned char *)caps, strlen(caps), err, sizeof err),
        0);

    assert_int_equal(devsim_scep_dev_next(d, &q), 1);
    assert_string_equal(q.url, SCEP_URL "?operation=PKIOperation");
    assert_string_equal(q.what, "PKCSReq");
    assert_non_null(q.body);
    assert_true(q.len > 500); //  a signed, enveloped PKCS#10
    assert_string_equal(q.ctype, "Content-Type: application/x-pki-message");
    assert_true(!q.part_first && q.part_last);
    assert_int_equal(devsim_scep_dev_reply(d, 500, NULL, 0, err, sizeof err), -1);
    assert_non_null(strstr(err, "HTTP 500"));
    //  not done: no identity, no profile handed out
    assert_null(devsim_scep_dev_take_ident(d));
    assert_null(devsim_scep_dev_take_profile(d));
    devsim_scep_dev_destroy(&d);
    devsim_scep_dev_destroy(&d); //  safe twice

    //  the same up to the PKIOperation, answered 200 with garbage
    d = devsim_scep_dev_new(ENROLL_URL, NULL, "override-challenge");
    assert_int_equal(devsim_scep_dev_reply(d, 200, prof, (size_t)plen, err, sizeof err), 0);
    assert_int_equal(devsim_scep_dev_reply(d, 200, f->ca_der, (size_t)f->ca_len, err, sizeof err),
                     0);
    assert_int_equal(
        devsim_scep_dev_reply(d, 200, (const unsigned char *)caps, strlen(caps), err, sizeof err),
        0);
    assert_int_equal(devsim_scep_dev_next(d, &q), 1);
    const unsigned char junk[] = "not a CertRep";
    assert_int_equal(devsim_scep_dev_reply(d, 200, junk, sizeof junk, err, sizeof err), -1);
    devsim_scep_dev_destroy(&d);
    OPENSSL_free(prof);
}

//  What a device refuses, at the step where it finds out.
static void test_refusals(void **state)
{
    s_fix_t *f = *state;
    char err[256] = "";
    int plen = 0;
    const char caps_no_post[] = "SHA-256\nAES\n";

    //  the profile download answered 404
    devsim_scep_dev_t *d = devsim_scep_dev_new(ENROLL_URL, NULL, NULL);
    assert_int_equal(devsim_scep_dev_reply(d, 404, NULL, 0, err, sizeof err), -1);
    assert_non_null(strstr(err, "HTTP 404"));
    devsim_scep_dev_destroy(&d);

    //  not a signed profile
    d = devsim_scep_dev_new(ENROLL_URL, NULL, NULL);
    const unsigned char plain[] = "<plist></plist>";
    assert_int_equal(devsim_scep_dev_reply(d, 200, plain, sizeof plain, err, sizeof err), -1);
    assert_non_null(strstr(err, "not a CMS SignedData"));
    devsim_scep_dev_destroy(&d);

    //  IdentityCertificateUUID is not the SCEP payload's PayloadUUID
    unsigned char *prof = s_profile(f->ca, "99999999-2222-3333-4444-555555555555", &plen);
    d = devsim_scep_dev_new(ENROLL_URL, NULL, NULL);
    assert_int_equal(devsim_scep_dev_reply(d, 200, prof, (size_t)plen, err, sizeof err), -1);
    assert_non_null(strstr(err, "IdentityCertificateUUID"));
    devsim_scep_dev_destroy(&d);
    OPENSSL_free(prof);

    //  signed by another CA than the one GetCACert hands out
    prof = s_profile(f->other, UUID_OK, &plen);
    d = devsim_scep_dev_new(ENROLL_URL, NULL, NULL);
    assert_int_equal(devsim_scep_dev_reply(d, 200, prof, (size_t)plen, err, sizeof err), 0);
    assert_int_equal(devsim_scep_dev_reply(d, 200, f->ca_der, (size_t)f->ca_len, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "does not verify to the device CA"));
    devsim_scep_dev_destroy(&d);
    OPENSSL_free(prof);

    //  GetCACert that is no certificate; GetCACaps without POSTPKIOperation
    prof = s_profile(f->ca, UUID_OK, &plen);
    d = devsim_scep_dev_new(ENROLL_URL, NULL, NULL);
    assert_int_equal(devsim_scep_dev_reply(d, 200, prof, (size_t)plen, err, sizeof err), 0);
    assert_int_equal(devsim_scep_dev_reply(d, 200, plain, sizeof plain, err, sizeof err), -1);
    assert_non_null(strstr(err, "GetCACert"));
    devsim_scep_dev_destroy(&d);
    d = devsim_scep_dev_new(ENROLL_URL, NULL, NULL);
    assert_int_equal(devsim_scep_dev_reply(d, 200, prof, (size_t)plen, err, sizeof err), 0);
    assert_int_equal(devsim_scep_dev_reply(d, 200, f->ca_der, (size_t)f->ca_len, err, sizeof err),
                     0);
    assert_int_equal(devsim_scep_dev_reply(d, 200, (const unsigned char *)caps_no_post,
                                           strlen(caps_no_post), err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "POSTPKIOperation"));
    devsim_scep_dev_destroy(&d);
    OPENSSL_free(prof);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
