/*  ca_test_fixture.h — the key-file fixture the ca unit tests share: a temp
 *  directory, the six PKI file paths in it (CA, SCEP RA, profile signer:
 *  certificate and key each, made by ca_pki_new on first use) and the
 *  ca_pki options that point at them, and a P-256 CA written to files.
 *  Header only, for *_test.c files.
 */
#ifndef CA_TEST_FIXTURE_H
#define CA_TEST_FIXTURE_H

#include "ca_pki.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { CA_TEST_PATHS = 6 };

typedef struct {
    char dir[64];
    char paths[CA_TEST_PATHS][128]; //  ca.crt ca.key ra.crt ra.key signer.crt signer.key
} ca_test_keys_t;

//  A fresh /tmp/<name>.XXXXXX and the paths in it. 0, or -1 (mkdtemp failed).
static inline int ca_test_keys_init(ca_test_keys_t *k, const char *name)
{
    static const char *names[CA_TEST_PATHS] = {"ca.crt", "ca.key",     "ra.crt",
                                               "ra.key", "signer.crt", "signer.key"};
    snprintf(k->dir, sizeof k->dir, "/tmp/%s.XXXXXX", name);
    if (!mkdtemp(k->dir))
        return -1;
    for (int i = 0; i < CA_TEST_PATHS; i++) {
        char dir[64];
        memcpy(dir, k->dir, sizeof dir);
        snprintf(k->paths[i], sizeof k->paths[i], "%s/%s", dir, names[i]);
    }
    return 0;
}

//  The options the tests use: those files, one-year certificates, the
//  device identity's key usage and clientAuth.
static inline ca_pki_opts_t ca_test_pki_opts(const ca_test_keys_t *k)
{
    ca_pki_opts_t o = {.ca_cert = k->paths[0],
                       .ca_key = k->paths[1],
                       .ra_cert = k->paths[2],
                       .ra_key = k->paths[3],
                       .signer_cert = k->paths[4],
                       .signer_key = k->paths[5],
                       .cert_days = 365,
                       .key_usage = "critical,digitalSignature,keyEncipherment",
                       .ext_key_usage = "clientAuth"};
    return o;
}

//  Remove the files and the directory (files not made are skipped).
static inline void ca_test_keys_remove(const ca_test_keys_t *k)
{
    for (int i = 0; i < CA_TEST_PATHS; i++)
        unlink(k->paths[i]);
    rmdir(k->dir);
}

//  A self-signed P-256 CA (as `picomdm up` makes it) written to these two
//  PEM files; ca_pki then makes the RSA RA and a P-256 signer. 0 / -1.
static inline int ca_test_write_ec_ca(const char *cert_path, const char *key_path)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    int rc = -1;
    if (!k || !x)
        goto out;
    X509_NAME *n = X509_get_subject_name(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)"EC CA", -1, -1, 0);
    X509_set_issuer_name(x, n);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, k);
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    const char *exts[][2] = {{"basicConstraints", "critical,CA:TRUE"},
                             {"subjectKeyIdentifier", "hash"}};
    for (int i = 0; i < 2; i++) {
        X509_EXTENSION *e = X509V3_EXT_conf(NULL, &ctx, exts[i][0], exts[i][1]);
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
    }
    X509_sign(x, k, EVP_sha256());
    FILE *fp = fopen(cert_path, "w");
    if (fp) {
        PEM_write_X509(fp, x);
        fclose(fp);
    }
    fp = fopen(key_path, "w");
    if (fp) {
        PEM_write_PrivateKey(fp, k, NULL, NULL, 0, NULL, NULL);
        fclose(fp);
        rc = 0;
    }
out:
    X509_free(x);
    EVP_PKEY_free(k);
    return rc;
}

#endif
