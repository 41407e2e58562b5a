/*  devsim_ident — device identities for the simulator (bin/picomdm-devsim):
 *  a certificate + private key, loaded from PEM files or issued on the spot by
 *  a CA the simulator was given (--ca-cert/--ca-key), and the Mdm-Signature
 *  (base64 of a DER detached CMS SignedData over the exact body).
 *
 *  Key generation is done once per device; EC P-256 is the default because it
 *  is cheap to generate and to sign with, RSA 2048 is available.
 */
#ifndef DEVSIM_IDENT_H
#define DEVSIM_IDENT_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct devsim_ident devsim_ident_t;

typedef enum { DEVSIM_KEY_EC = 0, DEVSIM_KEY_RSA = 1 } devsim_key_t;

//  A CA that issues identities: certificate + key, both owned by the object.
typedef struct devsim_ca devsim_ca_t;

//  Load a CA from PEM files. NULL with a reason in err.
devsim_ca_t *devsim_ca_load(const char *cert_path, const char *key_path, char *err, size_t errlen);
//  A fresh self-signed CA (used for "wrong CA" spoofing and tests).
devsim_ca_t *devsim_ca_generate(const char *cn, devsim_key_t kt, char *err, size_t errlen);
void devsim_ca_destroy(devsim_ca_t **ca);
//  Borrowed pointers (owned by the CA).
X509 *devsim_ca_cert(const devsim_ca_t *ca);
EVP_PKEY *devsim_ca_key(const devsim_ca_t *ca);
//  Write the CA as PEM files. 0 / -1.
int devsim_ca_write(const devsim_ca_t *ca, const char *cert_path, const char *key_path);

//  Load a single identity from PEM files (--cert/--key).
devsim_ident_t *devsim_ident_load(const char *cert_path, const char *key_path, char *err,
                                  size_t errlen);
//  Issue an identity: new key of type kt, certificate with CN = cn signed by ca,
//  valid from now + not_before_s to now + not_after_s (seconds, may be negative
//  to make an expired certificate).
devsim_ident_t *devsim_ident_issue(const devsim_ca_t *ca, const char *cn, devsim_key_t kt,
                                   long not_before_s, long not_after_s, char *err, size_t errlen);
//  An identity from a certificate and its key (e.g. issued over SCEP): takes
//  both (NULLs the caller's pointers) on success; NULL if they do not match.
devsim_ident_t *devsim_ident_adopt(X509 **cert, EVP_PKEY **key);
//  A self-signed identity (no CA at all).
devsim_ident_t *devsim_ident_self_signed(const char *cn, devsim_key_t kt, char *err, size_t errlen);
void devsim_ident_destroy(devsim_ident_t **id);

//  Borrowed pointers (owned by the identity).
X509 *devsim_ident_cert(const devsim_ident_t *id);
EVP_PKEY *devsim_ident_key(const devsim_ident_t *id);
//  The certificate's subject CN (owned by the identity; "" if none).
const char *devsim_ident_cn(const devsim_ident_t *id);
//  The certificate as DER (owned by the identity).
const unsigned char *devsim_ident_der(const devsim_ident_t *id, size_t *len);

//  Write certificate and key as PEM files. 0 / -1.
int devsim_ident_write(const devsim_ident_t *id, const char *cert_path, const char *key_path);

//  Mdm-Signature: base64 (one line, no newlines) of a DER detached CMS
//  SignedData over body, signer certificate included, CMS_BINARY.
//  md = EVP_sha256() or EVP_sha1(). `extra` (may be NULL) adds a second signer
//  (negative tests: "two signers"). *b64 is malloc'd, caller frees. 0 / -1.
//  The signingTime signed attribute is the simulator's clock plus the skew set
//  here (default 0: OpenSSL's own, now), like a device whose clock is off
//  (option --clock-skew-s; picomdm doctor reports it). Process-wide.
void devsim_ident_set_clock_skew(long seconds);
//  With one signer, the first signature per (identity, digest) builds
//  OpenSSL's SignedData (CMS_sign) and keeps it; every signature then
//  renews its messageDigest, signingTime and signature through OpenSSL's
//  API and encodes it with i2d (checked with CMS_verify before use): ~3x
//  less CPU than CMS_sign each time. See devsim_ident.c.
int devsim_ident_sign(const devsim_ident_t *id, const devsim_ident_t *extra, const EVP_MD *md,
                      const void *body, size_t len, char **b64);
//  The same signature (one signer), its base64 written at (*buf) + off and
//  NUL-terminated, *buf grown with realloc (*cap its size; the caller owns
//  it, the off bytes before are left as they are): no allocation per
//  request once the buffer is large enough. The base64's length / -1.
long devsim_ident_sign_into(const devsim_ident_t *id, const EVP_MD *md, const void *body,
                            size_t len, char **buf, size_t *cap, size_t off);
//  Signatures made so far: from a kept SignedData, and by CMS_sign each time.
void devsim_ident_sign_counts(long *fast, long *openssl);

//  Make (and check) the identity's kept SignedData for md now, as the first
//  devsim_ident_sign would: a load generator does it while loading its
//  identities, so the measured requests are steady-state ones. Not counted
//  in devsim_ident_sign_counts. 0 / -1 (signing then goes the OpenSSL way).
int devsim_ident_prepare(const devsim_ident_t *id, const EVP_MD *md);

//  A CMS SignedData with the certificate but zero SignerInfos (negative tests).
int devsim_ident_sign_nosigner(const devsim_ident_t *id, char **b64);

#endif
