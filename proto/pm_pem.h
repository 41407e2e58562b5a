/*  pm_pem — PEM files of certificates and keys, for every process and tool that
 *  keeps some (ca, picomdm up, devsim, pusher tooling): read one, or write one
 *  atomically with its mode set from creation.
 */
#ifndef PM_PEM_H
#define PM_PEM_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stddef.h>
#include <sys/types.h>

//  The first certificate / private key in a PEM file; NULL if the file cannot be
//  read or holds none. The caller owns the result.
X509 *pm_pem_read_cert(const char *path);
EVP_PKEY *pm_pem_read_key(const char *path);

//  Write `cert` (or, when NULL, `key`) to `path` through a temporary file that
//  is fsynced and renamed, so a crash never leaves half a key; `mode` applies
//  from creation (no window where a key is world-readable). 0, or -1 with a
//  reason in err.
int pm_pem_write(const char *path, mode_t mode, X509 *cert, EVP_PKEY *key, char *err,
                 size_t errlen);

#endif
