/*  ca_test_fixture.h — the key-file fixture the ca unit tests share: a temp
 *  directory, the six PKI file paths in it (CA, SCEP RA, profile signer:
 *  certificate and key each, made by ca_pki_new on first use) and the
 *  ca_pki options that point at them. Header only, for *_test.c files.
 */
#ifndef CA_TEST_FIXTURE_H
#define CA_TEST_FIXTURE_H

#include "ca_pki.h"

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

#endif
