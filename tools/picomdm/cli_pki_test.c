/*  cli_pki_test — first-start certificates of `picomdm up`: made once with
 *  the right shape and permissions, reused later, never silently replaced. */
#include "cli_pki.h"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

typedef struct {
    char dir[64];
    char ca_crt[128], ca_key[128], tls_crt[128], tls_key[128];
} s_fix_t;

static int s_setup(void **state)
{
    s_fix_t *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/cli_pki_test_XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->ca_crt, sizeof f->ca_crt, "%s/ca.crt", f->dir);
    snprintf(f->ca_key, sizeof f->ca_key, "%s/ca.key", f->dir);
    snprintf(f->tls_crt, sizeof f->tls_crt, "%s/tls.crt", f->dir);
    snprintf(f->tls_key, sizeof f->tls_key, "%s/tls.key", f->dir);
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    s_fix_t *f = *state;
    unlink(f->ca_crt);
    unlink(f->ca_key);
    unlink(f->tls_crt);
    unlink(f->tls_key);
    rmdir(f->dir);
    free(f);
    return 0;
}

static X509 *s_load(const char *path)
{
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    X509 *x = PEM_read_X509(fp, NULL, NULL, NULL);
    fclose(fp);
    assert_non_null(x);
    return x;
}

static void test_ca(void **state)
{
    s_fix_t *f = *state;
    char err[512];
    bool created = false;
    assert_int_equal(cli_pki_ensure_ca(f->ca_crt, f->ca_key, "Test CA", &created, err, sizeof err),
                     0);
    assert_true(created);
    struct stat st;
    assert_int_equal(stat(f->ca_key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    X509 *x = s_load(f->ca_crt);
    assert_int_equal(X509_check_ca(x), 1);
    assert_true(X509_get_key_usage(x) & KU_KEY_CERT_SIGN);
    X509_free(x);
    char fp1[128], fp2[128];
    assert_int_equal(cli_pki_fingerprint(f->ca_crt, fp1, sizeof fp1), 0);
    assert_int_equal(strlen(fp1), 95);

    //  reused, unchanged
    assert_int_equal(cli_pki_ensure_ca(f->ca_crt, f->ca_key, "Test CA", &created, err, sizeof err),
                     0);
    assert_false(created);
    assert_int_equal(cli_pki_fingerprint(f->ca_crt, fp2, sizeof fp2), 0);
    assert_string_equal(fp1, fp2);

    //  a missing key is an error, not a silent new CA
    unlink(f->ca_key);
    assert_int_equal(cli_pki_ensure_ca(f->ca_crt, f->ca_key, "Test CA", &created, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "not replaced"));
    assert_int_equal(cli_pki_fingerprint(f->ca_crt, fp2, sizeof fp2), 0);
    assert_string_equal(fp1, fp2);
}

static void test_tls(void **state)
{
    s_fix_t *f = *state;
    char err[512];
    bool created = false;
    assert_int_equal(cli_pki_ensure_tls(f->tls_crt, f->tls_key, "localhost,127.0.0.1,mdm.test",
                                        &created, err, sizeof err),
                     0);
    assert_true(created);
    X509 *x = s_load(f->tls_crt);
    assert_int_equal(X509_check_host(x, "localhost", 0, 0, NULL), 1);
    assert_int_equal(X509_check_host(x, "mdm.test", 0, 0, NULL), 1);
    assert_int_equal(X509_check_ip_asc(x, "127.0.0.1", 0), 1);
    assert_int_equal(X509_check_host(x, "other.test", 0, 0, NULL), 0);
    assert_int_equal(X509_check_ca(x), 0);
    assert_true(X509_get_extended_key_usage(x) & XKU_SSL_SERVER);
    X509_free(x);
    struct stat st;
    assert_int_equal(stat(f->tls_key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    char fp1[128], fp2[128];
    cli_pki_fingerprint(f->tls_crt, fp1, sizeof fp1);
    //  same names (any subset): reused
    assert_int_equal(cli_pki_ensure_tls(f->tls_crt, f->tls_key, "localhost,127.0.0.1", &created,
                                        err, sizeof err),
                     0);
    assert_false(created);
    cli_pki_fingerprint(f->tls_crt, fp2, sizeof fp2);
    assert_string_equal(fp1, fp2);
    //  a new name: replaced
    assert_int_equal(
        cli_pki_ensure_tls(f->tls_crt, f->tls_key, "localhost,new.test", &created, err, sizeof err),
        0);
    assert_true(created);
    cli_pki_fingerprint(f->tls_crt, fp2, sizeof fp2);
    assert_string_not_equal(fp1, fp2);
    assert_int_equal(cli_pki_ensure_tls(f->tls_crt, f->tls_key, "", &created, err, sizeof err), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ca, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_tls, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
