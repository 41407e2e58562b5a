/*  devsim_scep — enrollment the way an Apple device does it, for
 *  bin/picomdm-devsim --enroll-url: download the enrollment profile
 *  (.mobileconfig), check its CMS signature chains to the device CA that the
 *  profile's SCEP server hands out (GetCACert), read its payloads
 *  (com.apple.security.scep, com.apple.mdm; IdentityCertificateUUID must be
 *  the SCEP payload's PayloadUUID), then get an identity over SCEP
 *  (GetCACert, GetCACaps, PKCSReq with the challenge) and renew it
 *  (RenewalReq signed with the current identity). The enrollment is a step
 *  machine (devsim_scep_dev_t: "the next request" / "its reply") that the
 *  engine (devsim_run) drives for many devices at once; the renewal is one
 *  blocking libcurl request. The SCEP messages come from proto/pm_scepc.
 */
#ifndef DEVSIM_SCEP_H
#define DEVSIM_SCEP_H

#include "devsim_ident.h"

#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>

//  The renewal's HTTP settings.
typedef struct {
    const char *ca_bundle; //  TLS trust for the server (NULL: system store)
    bool insecure;         //  do not verify TLS
    long timeout_ms;
    bool verbose;
    //  Where the device keeps its connection (a CURL *) between requests, as
    //  a real device does (one TLS connection, keep-alive); NULL: a new
    //  connection per request. Close with devsim_scep_conn_close.
    void **conn;
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

void devsim_profile_destroy(devsim_profile_t **p);

//  One device's enrollment from the enrollment URL, as HTTP exchanges: the
//  profile (its payloads read), GetCACert (the profile's CMS signature must
//  chain to that CA), GetCACaps (POSTPKIOperation), PKCSReq (the profile's
//  challenge and Subject, the device's RSA key) whose CertRep must be signed
//  by the RA, match the transaction and nonce, and carry a certificate from
//  the CA for that key. The caller sends each request and hands back the
//  reply; nothing here blocks.
typedef struct devsim_scep_dev devsim_scep_dev_t;

//  Which of a device's programs makes the request: Safari (or the enrollment
//  link) downloads the profile, the profile installer does SCEP; each is its
//  own TLS connection on a real device.
enum { DEVSIM_SCEP_PART_PROFILE = 1, DEVSIM_SCEP_PART_SCEP = 2 };

typedef struct {
    const char *url;           //  absolute (owned by the machine, valid until the reply)
    const unsigned char *body; //  NULL: GET; else POST these bytes
    size_t len;
    const char *ctype; //  the POST's "Content-Type: ..." header line
    const char *what;  //  "profile", "GetCACert", "GetCACaps", "PKCSReq" (logs)
    int part;          //  DEVSIM_SCEP_PART_*
    bool part_first;   //  the part's first request (a device opens a connection)
    bool part_last;    //  its last (the program is done with its connection)
} devsim_scep_req_t;

//  `key` (a reference is taken; NULL or another size: one is made when the
//  profile says its Keysize): the device's RSA key. `challenge` (NULL: the
//  profile's) replaces the profile's challenge (negative tests).
devsim_scep_dev_t *devsim_scep_dev_new(const char *enroll_url, EVP_PKEY *key,
                                       const char *challenge);
void devsim_scep_dev_destroy(devsim_scep_dev_t **d);
//  1 and *req: send this; 0: done (identity and profile ready).
int devsim_scep_dev_next(devsim_scep_dev_t *d, devsim_scep_req_t *req);
//  The reply to the request from devsim_scep_dev_next (status, body). 0 to go
//  on; -1 with the reason in err (a CertRep FAILURE says "FAILURE failInfo N").
int devsim_scep_dev_reply(devsim_scep_dev_t *d, long status, const unsigned char *body, size_t len,
                          char *err, size_t errlen);
//  When done: the verified profile (borrowed, or taken: the caller owns it)
//  and the identity (taken: the caller owns it). NULL before.
const devsim_profile_t *devsim_scep_dev_profile(const devsim_scep_dev_t *d);
devsim_profile_t *devsim_scep_dev_take_profile(devsim_scep_dev_t *d);
devsim_ident_t *devsim_scep_dev_take_ident(devsim_scep_dev_t *d);

//  RenewalReq signed with `old`: a new key, same subject. *id = the new identity.
int devsim_scep_renew(const devsim_profile_t *p, const devsim_scep_opts_t *o,
                      const devsim_ident_t *old, devsim_ident_t **id, char *err, size_t errlen);

//  Split "https://host:port/path" into base "https://host:port" and "/path".
int devsim_url_split(const char *url, char *base, size_t bsize, char *path, size_t psize);

#endif
