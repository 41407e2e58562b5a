/*  devsim_scep — enrollment the way an Apple device does it, for
 *  bin/picomdm-devsim --enroll-url: download the enrollment profile
 *  (.mobileconfig), check its CMS signature chains to the device CA that the
 *  profile's SCEP server hands out (GetCACert), read its payloads
 *  (com.apple.security.scep, com.apple.mdm; IdentityCertificateUUID must be
 *  the SCEP payload's PayloadUUID), then get an identity over SCEP
 *  (GetCACaps, GetCACert, PKCSReq with the challenge) and renew it
 *  (RenewalReq signed with the current identity). Blocking libcurl; the SCEP
 *  messages themselves come from proto/pm_scepc.
 */
#ifndef DEVSIM_SCEP_H
#define DEVSIM_SCEP_H

#include "devsim_ident.h"

#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct {
    const char *ca_bundle; //  TLS trust for the server (NULL: system store)
    bool insecure;         //  do not verify TLS
    long timeout_ms;
    bool verbose;
    //  Where the device keeps its connection (a CURL *) between its enrollment
    //  requests, as a real device does (one TLS connection, keep-alive);
    //  NULL: a new connection per request. Close with devsim_scep_conn_close.
    void **conn;
    //  PKCSReq: use this RSA key (borrowed) when it has the profile's Keysize,
    //  instead of making one after the profile download (devsim makes the
    //  keys of all devices first, so that the exchanges run back to back).
    EVP_PKEY *key;
} devsim_scep_opts_t;

//  Close the connection kept in *conn (safe on NULL and twice).
void devsim_scep_conn_close(void **conn);

//  What a device takes from its enrollment profile.
typedef struct devsim_profile devsim_profile_t;
struct devsim_profile {
    char scep_url[512];
    char challenge[256]; //  secret: never printed
    char server_url[512];
    char checkin_url[512];
    char topic[128];
    char identity_uuid[64];
    bool sign_message;
    int keysize;
    X509_NAME *subject; //  owned
    X509 *ca;           //  device CA (GetCACert), owned
    X509 *ra;           //  SCEP recipient (RA, or the CA itself), owned
};

//  Download the profile at `url`, verify and read it, fetch the CA over SCEP.
//  NULL with the reason in err.
devsim_profile_t *devsim_profile_fetch(const char *url, const devsim_scep_opts_t *o, char *err,
                                       size_t errlen);
//  Parse and verify profile bytes; `ca` (borrowed) is the trusted device CA, or
//  NULL to fetch it from the profile's SCEP URL.
devsim_profile_t *devsim_profile_parse(const unsigned char *der, size_t len, X509 *ca,
                                       const devsim_scep_opts_t *o, char *err, size_t errlen);
void devsim_profile_destroy(devsim_profile_t **p);

//  PKCSReq with the profile's challenge and Subject, a new RSA key of the
//  profile's Keysize. 0 and *id set; -1 with the reason in err (a CertRep
//  FAILURE says "FAILURE failInfo N").
int devsim_scep_enroll(const devsim_profile_t *p, const devsim_scep_opts_t *o, devsim_ident_t **id,
                       char *err, size_t errlen);

//  RenewalReq signed with `old`: a new key, same subject. *id = the new identity.
int devsim_scep_renew(const devsim_profile_t *p, const devsim_scep_opts_t *o,
                      const devsim_ident_t *old, devsim_ident_t **id, char *err, size_t errlen);

//  Split "https://host:port/path" into base "https://host:port" and "/path".
int devsim_url_split(const char *url, char *base, size_t bsize, char *path, size_t psize);

#endif
