/*  gw_auth — device authentication for the gateway (picomdm-gateway).
 *
 *  Every check-in and command-loop request must prove which device identity
 *  certificate sent it, BEFORE its body is parsed (DESIGN.md §1.5, §5):
 *
 *    - Mdm-Signature header: base64 of a detached CMS SignedData over the exact
 *      body bytes (profile key SignMessage = true). Exactly one SignerInfo;
 *      SHA-1 or SHA-256 digests; the signer certificate must chain to one of
 *      the configured device CAs, be within its validity and not be
 *      self-signed. Then the signature itself is checked (CMS_verify,
 *      CMS_BINARY: no MIME canonicalisation; the signer's chain is not
 *      built a second time there, it was just verified for that certificate).
 *    - the TLS client certificate (mTLS), same chain check;
 *    - a certificate forwarded by a trusted TLS-terminating proxy as
 *      URL-escaped PEM (nginx $ssl_client_escaped_cert), same chain check.
 *
 *  The result is the certificate's SHA-256 over its DER encoding (the back end
 *  binds it to the enrollment at Authenticate), its issuer DN, its notAfter and,
 *  for a signature with a signingTime attribute, the device's clock skew (both
 *  for `picomdm doctor`; free: the notAfter is kept in the chain cache). On failure a
 *  short `code` and a one-line `reason` (for the log and the security.rejected
 *  event; never sent to the device).
 *
 *  Pure OpenSSL; no bus, no HTTP. Thread use: one gw_auth_t per thread.
 */
#ifndef GW_AUTH_H
#define GW_AUTH_H

#include <openssl/x509.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

//  Largest Mdm-Signature header accepted (base64 text). A signature carrying
//  the device's whole chain is a few KiB.
#define GW_AUTH_SIG_MAX (32u * 1024)
//  Largest forwarded certificate header (URL-escaped PEM).
#define GW_AUTH_PEM_MAX (32u * 1024)

typedef struct gw_auth gw_auth_t;

typedef struct {
    uint8_t cert_hash[32]; //  SHA-256 of the identity certificate (DER)
    uint8_t prev_hash[32]; //  the certificate it renews (pm_x509.h), when has_prev
    bool has_prev;
    char issuer[256];  //  issuer DN, RFC 2253 one line (truncated if longer)
    char subject[256]; //  subject DN (for logs)
    int64_t not_after; //  the identity certificate's notAfter, seconds since the epoch
    //  Mdm-Signature only: the CMS signingTime signed attribute minus the
    //  server's clock (seconds), when the signature carries one (has_skew).
    //  Only recorded, never a reason to reject (doctor reports it).
    int64_t clock_skew_s;
    bool has_skew;
    const char *code; //  failure: static short code ("bad_signature", "expired"...)
    char reason[256]; //  failure: one line, what was wrong
} gw_auth_result_t;

//  Load the device CA certificate(s): `ca_files` is one path or several
//  separated by commas; each file holds one or more PEM certificates (roots
//  and intermediates). Returns NULL with a reason in err if a file is
//  unreadable or holds no certificate.
gw_auth_t *gw_auth_new(const char *ca_files, char *err, size_t errlen);
void gw_auth_destroy(gw_auth_t **auth);

//  Number of CA certificates loaded.
int gw_auth_ca_count(const gw_auth_t *auth);

//  The CA subject names, for the TLS CertificateRequest (SSL_CTX_set_client_CA_list
//  takes ownership of the returned stack). NULL on allocation failure.
STACK_OF(X509_NAME) * gw_auth_ca_names(const gw_auth_t *auth);

//  Verify an Mdm-Signature header value (`sig`, `siglen` bytes of base64)
//  over body[0..len). Returns 0 and fills res->cert_hash/issuer/subject, or -1
//  with res->code/reason.
int gw_auth_verify_signature(gw_auth_t *auth, const char *sig, size_t siglen, const uint8_t *body,
                             size_t len, gw_auth_result_t *res);

//  Verify a certificate presented another way (TLS client certificate).
//  `untrusted` may hold intermediates sent by the peer (may be NULL).
int gw_auth_verify_cert(gw_auth_t *auth, X509 *cert, STACK_OF(X509) * untrusted,
                        gw_auth_result_t *res);

//  Verify a certificate forwarded by a trusted proxy: URL-escaped PEM, as
//  nginx's $ssl_client_escaped_cert (plain PEM is accepted too).
int gw_auth_verify_escaped_pem(gw_auth_t *auth, const char *escaped, gw_auth_result_t *res);

//  Verified-chain cache (on by default): slots (sixteen-way set associative,
//  56 bytes each) and how long a verification is trusted before it is redone. An
//  entry is never used past the notAfter of any certificate of its chain,
//  and only chains made of the leaf and configured CAs are cached. Plus up
//  to cert_slots decoded certificates (looked up by the SHA-256 of their
//  DER, all 32 bytes compared; 0 is taken as 1). slots 0 or ttl_s 0 turns both
//  off (every request decodes the certificate and verifies the chain). Returns -1 on allocation
//  failure (caches then off).
#define GW_AUTH_CACHE_SLOTS 16384
#define GW_AUTH_CACHE_TTL_S 600
//  Decoded certificates kept (cert_slots; option cert-cache).
#define GW_AUTH_CERT_SLOTS 16384
int gw_auth_set_cache(gw_auth_t *auth, size_t slots, int ttl_s, size_t cert_slots);
//  Cache hits and misses (chain verifications done) so far.
void gw_auth_cache_stats(const gw_auth_t *auth, uint64_t *hits, uint64_t *misses);
//  Certificates in Mdm-Signatures taken from the parsed-certificate cache
//  (same slots; decoding an X509 is most of a signature check in OpenSSL 3.0).
uint64_t gw_auth_cert_cache_hits(const gw_auth_t *auth);
//  Certificates decoded (d2i_X509) for Mdm-Signatures so far: the misses of
//  that cache, or every certificate with the caches off.
uint64_t gw_auth_cert_decodes(const gw_auth_t *auth);
//  Whether certificates for the decoded-certificate cache are decoded in
//  the gateway's own library context (default provider, only its
//  SubjectPublicKeyInfo decoders: OpenSSL 3.0's decoder set-up at a
//  fraction of its cost; gw_auth.c s_spki_init).
bool gw_auth_spki_ctx_on(const gw_auth_t *auth);
//  Tests only: decode der[0..len) as the cache does (a new X509, NULL if
//  not exactly one certificate); *own_ctx: decoded in that context.
X509 *gw_auth_test_decode(gw_auth_t *auth, const uint8_t *der, size_t len, bool *own_ctx);
//  Tests only: every DER goes to the same set of the cache (every look-up
//  compares full SHA-256s), to show that sharing a set is never a hit.
void gw_auth_test_const_der_key(gw_auth_t *auth, bool on);

//  Whether in[0..len) is base64 in one piece (only the 64 letters, a multiple
//  of 4 long, '=' only as the last one or two characters; *pad = their
//  number): such a Mdm-Signature is decoded with EVP_DecodeBlock, anything
//  else with OpenSSL's streaming decoder. Public for its test.
bool gw_auth_b64_plain(const char *in, size_t len, size_t *pad);

//  Signatures checked without CMS_verify's set-up (signed attributes and one
//  digest algorithm; the same checks, see gw_auth.c s_verify_lean), so far.
uint64_t gw_auth_lean_checks(const gw_auth_t *auth);
//  Of those, signatures of EC and RSA signers verified with the verify context kept
//  with their cached certificate (gw_auth.c s_sig_kept), so far.
uint64_t gw_auth_kept_checks(const gw_auth_t *auth);
//  Use kept verify contexts (default true; the unit tests compare both ways).
void gw_auth_set_kept_ctx(gw_auth_t *auth, bool on);
//  Lower-case hex of a 32-byte hash into out (at least 65 bytes).
void gw_auth_hash_hex(const uint8_t hash[32], char *out);

#endif
