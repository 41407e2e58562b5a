/*  push_cert — the MDM push certificate (APNs client identity) for the pusher
 *  (bin/picomdm-pusher), the `picomdm pushcert` tooling and the APNs stand-in.
 *
 *  Loads the certificate and its key from PEM (certificate and key in one
 *  file or two) or PKCS#12 (.p12/.pfx, with a password), reads the push Topic
 *  from the subject's UID attribute (OID 0.9.2342.19200300.100.1.1, e.g.
 *  "com.apple.mgmt.External.<uuid>"), and classifies the validity window
 *  (warning from 30 days before expiry; expired or not-yet-valid is refused).
 *
 *  Ownership: push_cert_t owns its X509 and EVP_PKEY; every pointer returned
 *  by an accessor is owned by the push_cert_t and lives as long as it.
 *  Secrets: the key is never logged; push_cert_pem writes it only into the
 *  caller's buffer (for libcurl's in-memory key option).
 */
#ifndef PUSH_CERT_H
#define PUSH_CERT_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define PUSH_CERT_TOPIC_MAX 256
#define PUSH_CERT_WARN_DAYS 30 //  push.cert_expiring events from this many days before expiry

typedef struct push_cert push_cert_t;

typedef enum {
    PUSH_CERT_VALID = 0,    //  more than PUSH_CERT_WARN_DAYS left
    PUSH_CERT_EXPIRING,     //  valid, expires within PUSH_CERT_WARN_DAYS
    PUSH_CERT_EXPIRED,      //  notAfter is in the past: APNs refuses it
    PUSH_CERT_NOT_YET_VALID //  notBefore is in the future
} push_cert_state_t;

//  Load a certificate (and key). `cert_path`: PEM (may also hold the key) or
//  PKCS#12 (detected from the content; `password` may be NULL or "").
//  `key_path`: a separate PEM key, or NULL when the key is in cert_path.
//  With `need_key` false a certificate without a key loads (show). Returns
//  NULL and a one-line reason with the next step in err.
push_cert_t *push_cert_load(const char *cert_path, const char *key_path, const char *password,
                            bool need_key, char *err, size_t errlen);
void push_cert_destroy(push_cert_t **cert);

//  The topic (subject UID) or "" when the certificate has none.
const char *push_cert_topic(const push_cert_t *cert);
//  The subject as one line (RFC 2253), owned by cert.
const char *push_cert_subject(const push_cert_t *cert);
const char *push_cert_issuer(const push_cert_t *cert);
time_t push_cert_not_after(const push_cert_t *cert);
time_t push_cert_not_before(const push_cert_t *cert);
X509 *push_cert_x509(const push_cert_t *cert);
EVP_PKEY *push_cert_key(const push_cert_t *cert); //  NULL when loaded without a key
//  True when a key is loaded and it belongs to the certificate.
bool push_cert_key_matches(const push_cert_t *cert);

//  Validity at `now`; *days_left (may be NULL) gets whole days until notAfter
//  (negative once expired).
push_cert_state_t push_cert_state(const push_cert_t *cert, time_t now, int *days_left);
const char *push_cert_state_name(push_cert_state_t s);

//  The topic of any certificate (subject UID) into out[outlen]. 0, or -1 if
//  it has none or it does not fit.
int push_cert_topic_of(X509 *x, char *out, size_t outlen);

//  Certificate and key as PEM, malloc'd, for libcurl's *_BLOB options.
//  The caller frees both (and should OPENSSL_cleanse the key first).
int push_cert_pem(const push_cert_t *cert, char **cert_pem, size_t *cert_len, char **key_pem,
                  size_t *key_len);

#endif
