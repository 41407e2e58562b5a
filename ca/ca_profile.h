/*  ca_profile — the enrollment profile (.mobileconfig) picomdm-ca builds and
 *  CMS-signs (content embedded; served as application/x-apple-aspen-config).
 *
 *  Payloads, in order (keys per Apple's schema, mdm/profiles/<name>.yaml):
 *    com.apple.security.root  the TLS trust anchor, only when one is given
 *                             (the server certificate is self-made)
 *    com.apple.security.scep  URL, Challenge, Keysize, Key Type RSA, Key Usage,
 *                             Subject; its PayloadUUID is the device identity
 *    com.apple.mdm            ServerURL, CheckInURL, Topic, SignMessage,
 *                             AccessRights 8191, CheckOutWhenRemoved,
 *                             ServerCapabilities, and IdentityCertificateUUID —
 *                             the same variable as the SCEP PayloadUUID, so the
 *                             two cannot disagree.
 *  Plists are built with libplist; signing is OpenSSL CMS.
 */
#ifndef CA_PROFILE_H
#define CA_PROFILE_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *server_url;   //  https://... (required)
    const char *checkin_url;  //  https://... (NULL = ServerURL)
    const char *scep_url;     //  https://.../scep (required)
    const char *topic;        //  com.apple.mgmt.... (required)
    const char *challenge;    //  SCEP challenge (NULL = none)
    const char *organization; //  PayloadOrganization and the certificate subject O
    const char *display_name; //  top-level PayloadDisplayName
    const char *identifier;   //  top-level PayloadIdentifier (reverse DNS)
    const char *device_cn;    //  CN requested in the SCEP Subject (NULL = "PicoMDM device")
    int key_size;             //  1024, 2048, 4096 (0 = 2048)
    int key_usage;            //  1 signing | 4 encryption (0 = 5)
    int access_rights;        //  0 = 8191
    X509 *tls_anchor;         //  NULL = no root payload
} ca_profile_opts_t;

//  "https://..." check used for the URLs (Apple's format ^https://.*$).
bool ca_profile_url_ok(const char *url);

//  Build the profile XML. *xml is malloc'd (caller frees). identity_uuid
//  receives the SCEP payload's UUID (== IdentityCertificateUUID). 0 / -1 + err.
//  Fresh UUIDs and the challenge are written into a template kept from the
//  previous call with the same options (one per process: not thread-safe).
int ca_profile_build(const ca_profile_opts_t *o, char **xml, size_t *len, char identity_uuid[37],
                     char *err, size_t errlen);

//  CMS SignedData over `data`, content embedded, signer cert + `chain` included.
//  *der is OPENSSL_malloc'd (free with OPENSSL_free). One-off: a service
//  signing every download keeps a ca_profile_signer_t instead.
int ca_profile_sign(X509 *signer, EVP_PKEY *key, X509 *chain, const void *data, size_t len,
                    uint8_t **der, size_t *derlen, char *err, size_t errlen);

//  A profile signer: the certificate, key and chain (each up-ref'd: the caller
//  keeps its own references), the key's default digest and the
//  SMIMECapabilities attribute, worked out once. NULL + err when the key does
//  not match the certificate or has no default digest.
typedef struct ca_profile_signer ca_profile_signer_t;
ca_profile_signer_t *ca_profile_signer_new(X509 *signer, EVP_PKEY *key, X509 *chain, char *err,
                                           size_t errlen);
void ca_profile_signer_destroy(ca_profile_signer_t **p);

//  As ca_profile_sign, with the signer's prepared parts: the same SignedData
//  (signed attributes contentType, signingTime, messageDigest,
//  SMIMECapabilities; signer certificate, then `chain`). *der as above.
int ca_profile_signer_sign(ca_profile_signer_t *ps, const void *data, size_t len, uint8_t **der,
                           size_t *derlen, char *err, size_t errlen);

//  The APNs topic of a push certificate: its subject's UID (com.apple.mgmt.*).
int ca_profile_topic_from_cert(const char *pem_path, char *buf, size_t size, char *err,
                               size_t errlen);

#endif
