/*  gw_auth — device authentication (Mdm-Signature CMS, mTLS, proxy header).
 *  See gw_auth.h. Every check that can fail says which one in res->code.
 */
#include "gw_auth.h"
#include "pm_str.h"
#include "pm_x509.h"

#include <event2/http.h>
#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/core_dispatch.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include <limits.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

//  One verified identity certificate: its SHA-256, when it stops being valid
//  (notAfter) and when its chain was verified.
typedef struct {
    uint8_t hash[32];
    int64_t not_after;      //  the earliest notAfter of the chain
    int64_t leaf_not_after; //  the identity certificate's own (reported to the store)
    int64_t verified_at;    //  0 = empty slot
} s_cached_t;

//  A parsed certificate, by the SHA-256 of its DER bytes. OpenSSL 3.0 spends
//  most of a signature check decoding the certificate's public key inside
//  d2i_CMS_ContentInfo (OSSL_DECODER_CTX_new_for_pkey per call); a device
//  sends the same certificate every time, so it is decoded once.
//  Sixteen-way set associative, least recently used out: with one way, two
//  devices whose hashes share a slot evict each other on every request
//  (measured: 12 % of the session requests of 1,000 devices decoded their
//  certificate again with 4,096 slots; each decode costs ~0.5 ms); with two
//  ways, 10,000 devices in 16,384 slots still leave ~14 % of them in a set
//  with more devices than ways (Poisson, 1.22 per set), with sixteen 0.5 %
//  (a look-up compares at most 16 hashes: nothing next to one decode).
//  Keyed by the SHA-256 of the DER: a hit needs all 32 bytes equal. (Session
//  6 tried SipHash with a kept copy of the DER compared on a hit: ~12,000
//  fewer instructions per request, but ~0.5 KiB more per device, 5 MB at
//  10,000 devices, which took the run's RSS to 147-148 of the 150 MB
//  budget; docs/gateway.md.)
#define S_XWAYS 16
//  Only certificates up to this size are cached: a device identity is
//  ~0.5-1.5 KiB, and entries are made before the chain is checked, so a
//  client sending large made-up certificates would otherwise fill 16,384
//  entries of up to ~50 KiB each (larger ones are decoded every time).
#define S_XDER_MAX 4096
typedef struct {
    uint8_t hash[32]; //  SHA-256 of the certificate's DER
    X509 *x;
    uint64_t used; //  tick of the last hit (LRU within the set)
} s_xcached_t;

struct gw_auth {
    X509_STORE *store;    //  trusted device CAs (purpose any, default time check)
    STACK_OF(X509) * cas; //  the same certificates, for their names
    s_cached_t *cache;    //  verified chains, direct-mapped by hash (NULL = no cache)
    size_t slots;
    int64_t ttl_s;
    uint64_t hits, misses;
    s_xcached_t *xcache; //  parsed certificates by their DER (xslots entries)
    size_t xslots;
    uint64_t xhits, xtick;
    uint64_t xdecodes; //  certificates decoded (d2i_X509) so far
    //  Library context whose only provider forwards to the default one but
    //  lists only its SubjectPublicKeyInfo decoders (s_spki_init); NULL:
    //  certificates are decoded with d2i_X509 (s_cert_decode).
    OSSL_LIB_CTX *declib;
    OSSL_PROVIDER *decprov;
    bool xkey_const; //  test hook: every DER goes to the first set
    //  SHA-256 and SHA-1 fetched once: EVP_sha256() in EVP_Digest looks the
    //  implementation up in the provider store on every call (a lock, a hash
    //  table walk, string compares), twice per request here.
    EVP_MD *sha256, *sha1;
    uint64_t lean; //  signatures checked by s_verify_lean
    uint64_t kept; //  of which with a kept verify context (s_sig_kept)
    bool kept_ctx; //  s_sig_kept on (default; off for the differential test)
};

//  What a request needs to know about an identity certificate besides the
//  X509 itself (its SHA-256, names, the certificate it renews):
//  worked out once, when the certificate is decoded into the cache, and
//  attached to that X509 (ex_data), so it lives exactly as long as the object
//  (an entry evicted while a request still holds the X509 stays valid).
//  Printing two names and hashing the certificate again cost ~7 % of a
//  cached signature check.
//  For an EC or RSA key also an EVP_PKEY_CTX ready for EVP_PKEY_verify (~600
//  bytes, measured for EC): CMS_SignerInfo_verify sets one up per call
//  (EVP_MD_fetch by name, EVP_PKEY_CTX_new_from_pkey, EVP_DigestVerifyInit:
//  ~60 allocations and ~8 us of the ~60 us a P-256 verification takes
//  here, half again the ~15 us of an RSA-2048 one); see s_sig_kept.
typedef struct {
    uint8_t hash[32], prev_hash[32];
    bool has_prev;
    char *subject, *issuer; //  into the same allocation
    EVP_PKEY_CTX *vctx;     //  EC: verify-initialised, no digest; RSA: PKCS#1 v1.5, SHA-256
    EVP_PKEY_CTX *vctx1;    //  RSA: the same with SHA-1, made on first use
    bool rsa;
    OSSL_LIB_CTX *lctx; //  where the certificate's key lives (NULL: the default context)
} s_certinfo_t;

static int s_exidx = -1;
static CRYPTO_ONCE s_exonce = CRYPTO_ONCE_STATIC_INIT;

static void s_certinfo_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                            void *argp)
{
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    s_certinfo_t *ci = ptr;
    if (ci) {
        EVP_PKEY_CTX_free(ci->vctx);
        EVP_PKEY_CTX_free(ci->vctx1);
    }
    free(ptr);
}

static void s_exidx_init(void)
{
    s_exidx = X509_get_ex_new_index(0, NULL, NULL, NULL, s_certinfo_free);
}

static int s_fail(gw_auth_result_t *res, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int s_fail(gw_auth_result_t *res, const char *code, const char *fmt, ...)
{
    res->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->reason, sizeof res->reason, fmt, ap);
    va_end(ap);
    ERR_clear_error();
    return -1;
}

//  Last OpenSSL error as text (or "no detail"), into buf.
static const char *s_ssl_err(char *buf, size_t size)
{
    unsigned long e = ERR_peek_last_error();
    if (e == 0)
        snprintf(buf, size, "no detail");
    else
        ERR_error_string_n(e, buf, size);
    return buf;
}

static void s_name(const X509_NAME *name, char *out, size_t size)
{
    out[0] = '\0';
    BIO *mem = BIO_new(BIO_s_mem());
    if (!mem)
        return;
    if (X509_NAME_print_ex(mem, name, 0, XN_FLAG_RFC2253) >= 0) {
        char *p;
        long n = BIO_get_mem_data(mem, &p);
        if (n > 0) {
            size_t k = (size_t)n < size - 1 ? (size_t)n : size - 1;
            memcpy(out, p, k);
            out[k] = '\0';
        }
    }
    BIO_free(mem);
}

static int s_load_file(gw_auth_t *self, const char *path, char *err, size_t errlen)
{
    int rc = -1, n = 0;
    BIO *bio = BIO_new_file(path, "r");
    if (!bio) {
        snprintf(err, errlen,
                 "cannot read device CA file '%s': check the device-ca option and the "
                 "file's permissions",
                 path);
        goto out;
    }
    X509 *x;
    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        if (X509_STORE_add_cert(self->store, x) != 1 || !sk_X509_push(self->cas, x)) {
            X509_free(x);
            snprintf(err, errlen, "cannot add a certificate of '%s' to the trust store", path);
            goto out;
        }
        n++;
    }
    ERR_clear_error(); //  the loop ends with "no start line"
    if (n == 0) {
        snprintf(err, errlen,
                 "device CA file '%s' holds no PEM certificate: give the CA that issues the "
                 "device identity certificates (SCEP CA)",
                 path);
        goto out;
    }
    rc = 0;
out:
    BIO_free(bio);
    return rc;
}

/*  Decoding a device certificate without OpenSSL 3.0's decoder set-up.
 *
 *  d2i_X509 decodes the certificate's public key with
 *  OSSL_DECODER_CTX_new_for_pkey, which in OpenSSL 3.0 builds a method
 *  object for every decoder of every provider and matches names and
 *  properties among them, per call: ~1.2 M of the ~1.5 M instructions of a
 *  d2i_X509 in the running gateway, once per new device certificate (each
 *  enrollment's Authenticate). The default provider has 40 decoders; 12 of
 *  them take a DER SubjectPublicKeyInfo, and device certificates carry RSA
 *  (SCEP) or EC (ACME) keys. Certificates for the decoded-certificate cache
 *  are therefore decoded (ASN1_item_d2i_ex) in a library context of their
 *  own whose one provider hands out the default provider's own algorithms,
 *  the decoders narrowed to the RSA and EC SubjectPublicKeyInfo ones: the
 *  same implementations and the same bytes in, the same certificate and key
 *  out (test_spki_libctx; the differential test compares it with the plain
 *  d2i path), ~0.66 M instructions instead of ~1.15 M with 12 decoders
 *  (session 6, measured in a loop), 0.24 M (RSA) / 0.44 M (EC) with 2
 *  (session 11; 0.42 M / 0.66 M with 12). A certificate whose key this
 *  way leaves undecoded is decoded again with d2i_X509, so no certificate
 *  is refused for want of a decoder here. Everything done with such a certificate later (its chain,
 *  the signature) fetches from that context, i.e. from the default
 *  provider through the forwarder. Without a default provider in the
 *  default context (another provider configuration) this is off.
 */
#define S_SPKI_MAX 32
static OSSL_PROVIDER *s_dflt;                     //  the default provider (default context)
static OSSL_ALGORITHM s_spki_dec[S_SPKI_MAX + 1]; //  its SubjectPublicKeyInfo decoders
static bool s_spki_ok;
static CRYPTO_ONCE s_spki_once = CRYPTO_ONCE_STATIC_INIT;

static const OSSL_ALGORITHM *s_spki_query(void *provctx, int op, int *no_cache)
{
    (void)provctx;
    if (op == OSSL_OP_DECODER) {
        *no_cache = 0;
        return s_spki_dec;
    }
    return OSSL_PROVIDER_query_operation(s_dflt, op, no_cache);
}

static int s_spki_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
                       const OSSL_DISPATCH **out, void **provctx)
{
    (void)handle;
    (void)in;
    static const OSSL_DISPATCH d[] = {
        {OSSL_FUNC_PROVIDER_QUERY_OPERATION, (void (*)(void))s_spki_query}, {0, NULL}};
    *out = d;
    //  the default provider's own context: its functions are called with it
    *provctx = OSSL_PROVIDER_get0_provider_ctx(s_dflt);
    return *provctx != NULL;
}

//  Whether a decoder (its algorithm names, "RSA:rsaEncryption:...") is one
//  a device certificate's key needs: RSA (SCEP) or EC (ACME, P-256/P-384).
//  Other key types are decoded by d2i_X509 (s_cert_decode). (An
//  id-ecPublicKey key on the SM2 curve still comes out an SM2 key, as with
//  d2i_X509: the EC decoder makes it one.)
static bool s_spki_device_type(const char *names)
{
    static const char *const keep[] = {"RSA", "EC"};
    size_t n = names ? strcspn(names, ":") : 0;
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++)
        if (n == strlen(keep[i]) && strncmp(names, keep[i], n) == 0)
            return true;
    return false;
}

static void s_spki_setup(void)
{
    //  The private context reads no openssl.cnf: with FIPS in force (a fips
    //  provider, or fips=yes by default) certificates must go through the
    //  configured default context, so the feature is off.
    if (OSSL_PROVIDER_available(NULL, "default") != 1 ||
        OSSL_PROVIDER_available(NULL, "fips") == 1 || EVP_default_properties_is_fips_enabled(NULL))
        return;
    s_dflt = OSSL_PROVIDER_load(NULL, "default"); //  one more reference, kept
    if (!s_dflt)
        return;
    int nc = 1;
    const OSSL_ALGORITHM *all = OSSL_PROVIDER_query_operation(s_dflt, OSSL_OP_DECODER, &nc);
    size_t k = 0;
    for (size_t i = 0; all && !nc && all[i].algorithm_names && k < S_SPKI_MAX; i++) {
        const char *pd = all[i].property_definition;
        if (pd && strstr(pd, "input=der") && strstr(pd, "structure=SubjectPublicKeyInfo") &&
            s_spki_device_type(all[i].algorithm_names))
            s_spki_dec[k++] = all[i];
    }
    //  (the default provider's tables are static: nothing to give back)
    s_spki_ok = k > 0 && !nc;
    ERR_clear_error();
}

//  The private context of one gw_auth_t (NULL if that is not possible).
static void s_spki_new(gw_auth_t *self)
{
    CRYPTO_THREAD_run_once(&s_spki_once, s_spki_setup);
    if (!s_spki_ok)
        return;
    self->declib = OSSL_LIB_CTX_new();
    if (self->declib && OSSL_PROVIDER_add_builtin(self->declib, "picomdm-gw-spki", s_spki_init))
        self->decprov = OSSL_PROVIDER_load(self->declib, "picomdm-gw-spki");
    if (!self->decprov) {
        OSSL_LIB_CTX_free(self->declib);
        self->declib = NULL;
    }
    ERR_clear_error();
}

//  der[0..len) as one certificate (NULL if it is not exactly that), decoded
//  in the private context when there is one (*lctx = that context), else,
//  or when its key did not decode there, with d2i_X509 (*lctx = NULL).
static X509 *s_cert_decode(gw_auth_t *self, const uint8_t *der, size_t len, OSSL_LIB_CTX **lctx)
{
    const unsigned char *p = der;
    *lctx = NULL;
    self->xdecodes++;
    if (self->declib) {
        X509 *x =
            (X509 *)ASN1_item_d2i_ex(NULL, &p, (long)len, ASN1_ITEM_rptr(X509), self->declib, NULL);
        if (x && p == der + len && X509_get0_pubkey(x)) {
            *lctx = self->declib;
            return x;
        }
        ERR_clear_error();
        //  not one certificate: the plain decoder would say the same
        bool whole = x && p == der + len;
        X509_free(x);
        if (!whole)
            return NULL;
        p = der; //  a certificate whose key did not decode here: d2i_X509's turn
    }
    X509 *x = d2i_X509(NULL, &p, (long)len);
    if (x && p != der + len) {
        X509_free(x);
        x = NULL;
    }
    return x;
}

gw_auth_t *gw_auth_new(const char *ca_files, char *err, size_t errlen)
{
    gw_auth_t *self = NULL;
    char *list = NULL;
    if (!ca_files || !*ca_files) {
        snprintf(err, errlen,
                 "no device CA given: set device-ca to the PEM file of the CA "
                 "that issues device identity certificates");
        goto fail;
    }
    self = calloc(1, sizeof *self);
    list = strdup(ca_files);
    if (!self || !list)
        goto oom;
    s_spki_new(self);
    self->store = X509_STORE_new();
    self->cas = sk_X509_new_null();
    if (!self->store || !self->cas)
        goto oom;
    //  Device identity certificates from SCEP carry various key usages; the
    //  brief (and NanoMDM's practice) is "purpose any", chain + time checked.
    X509_STORE_set_purpose(self->store, X509_PURPOSE_ANY);
    char *save = NULL;
    for (char *p = strtok_r(list, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        while (*p == ' ')
            p++;
        if (*p && s_load_file(self, p, err, errlen) < 0)
            goto fail;
    }
    if (sk_X509_num(self->cas) == 0) {
        snprintf(err, errlen, "device-ca lists no file");
        goto fail;
    }
    if (gw_auth_set_cache(self, GW_AUTH_CACHE_SLOTS, GW_AUTH_CACHE_TTL_S, GW_AUTH_CERT_SLOTS) < 0)
        goto oom;
    CRYPTO_THREAD_run_once(&s_exonce, s_exidx_init);
    self->kept_ctx = true;
    self->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    self->sha1 = EVP_MD_fetch(NULL, "SHA1", NULL);
    ERR_clear_error(); //  a missing one falls back to the implicit fetch (s_md)
    free(list);
    return self;
oom:
    snprintf(err, errlen, "out of memory loading the device CA");
fail:
    free(list);
    gw_auth_destroy(&self);
    return NULL;
}

//  Free the decoded-certificate cache (entries and array).
static void s_xcache_free(gw_auth_t *self)
{
    for (size_t i = 0; self->xcache && i < self->xslots; i++)
        X509_free(self->xcache[i].x);
    free(self->xcache);
    self->xcache = NULL;
}

void gw_auth_destroy(gw_auth_t **auth)
{
    if (!auth || !*auth)
        return;
    gw_auth_t *self = *auth;
    X509_STORE_free(self->store);
    sk_X509_pop_free(self->cas, X509_free);
    free(self->cache);
    s_xcache_free(self);
    EVP_MD_free(self->sha256);
    EVP_MD_free(self->sha1);
    //  last: the certificates above (and the CA keys' exports) used it
    if (self->decprov)
        OSSL_PROVIDER_unload(self->decprov);
    OSSL_LIB_CTX_free(self->declib);
    free(self);
    *auth = NULL;
}

int gw_auth_ca_count(const gw_auth_t *auth)
{
    return sk_X509_num(auth->cas);
}

STACK_OF(X509_NAME) * gw_auth_ca_names(const gw_auth_t *auth)
{
    STACK_OF(X509_NAME) *names = sk_X509_NAME_new_null();
    if (!names)
        return NULL;
    for (int i = 0; i < sk_X509_num(auth->cas); i++) {
        X509_NAME *n = X509_NAME_dup(X509_get_subject_name(sk_X509_value(auth->cas, i)));
        if (!n || !sk_X509_NAME_push(names, n)) {
            X509_NAME_free(n);
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            return NULL;
        }
    }
    return names;
}

void gw_auth_hash_hex(const uint8_t hash[32], char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[hash[i] >> 4];
        out[2 * i + 1] = hex[hash[i] & 15];
    }
    out[64] = '\0';
}

int gw_auth_set_cache(gw_auth_t *auth, size_t slots, int ttl_s, size_t cert_slots)
{
    s_xcache_free(auth);
    free(auth->cache);
    auth->cache = NULL;
    auth->xcache = NULL;
    auth->slots = auth->xslots = 0;
    auth->ttl_s = ttl_s;
    if (slots == 0 || ttl_s <= 0)
        return 0;
    //  A decoded X509 costs a few KiB (OpenSSL 3.0 keeps the provider key
    //  data with it): at most GW_AUTH_CERT_SLOTS of them stay decoded. The
    //  requests of one device session come close together, so even a small
    //  cache serves all but the first request of a session.
    size_t xslots = cert_slots ? cert_slots : 1;
    auth->cache = calloc(slots, sizeof *auth->cache);
    auth->xcache = calloc(xslots, sizeof *auth->xcache);
    if (!auth->cache || !auth->xcache) {
        free(auth->cache);
        free(auth->xcache);
        auth->cache = NULL;
        auth->xcache = NULL;
        return -1;
    }
    auth->slots = slots;
    auth->xslots = xslots;
    return 0;
}

void gw_auth_cache_stats(const gw_auth_t *auth, uint64_t *hits, uint64_t *misses)
{
    //  no verifier at all in lab mode without --device-ca
    *hits = auth ? auth->hits : 0;
    *misses = auth ? auth->misses : 0;
}

uint64_t gw_auth_cert_cache_hits(const gw_auth_t *auth)
{
    return auth ? auth->xhits : 0;
}

uint64_t gw_auth_cert_decodes(const gw_auth_t *auth)
{
    return auth ? auth->xdecodes : 0;
}

bool gw_auth_spki_ctx_on(const gw_auth_t *auth)
{
    return auth && auth->declib;
}

X509 *gw_auth_test_decode(gw_auth_t *auth, const uint8_t *der, size_t len, bool *own_ctx)
{
    OSSL_LIB_CTX *lctx = NULL;
    X509 *x = s_cert_decode(auth, der, len, &lctx);
    *own_ctx = lctx != NULL;
    return x;
}

void gw_auth_test_const_der_key(gw_auth_t *auth, bool on)
{
    auth->xkey_const = on;
}

uint64_t gw_auth_lean_checks(const gw_auth_t *auth)
{
    return auth ? auth->lean : 0;
}

uint64_t gw_auth_kept_checks(const gw_auth_t *auth)
{
    return auth ? auth->kept : 0;
}

void gw_auth_set_kept_ctx(gw_auth_t *auth, bool on)
{
    auth->kept_ctx = on;
}

//  The pre-fetched digest for a NID (SHA-1 or SHA-256), else the implicit one.
static const EVP_MD *s_md(const gw_auth_t *self, int nid)
{
    if (nid == NID_sha1)
        return self->sha1 ? self->sha1 : EVP_sha1();
    return self->sha256 ? self->sha256 : EVP_sha256();
}

static void s_name(const X509_NAME *name, char *out, size_t size);

//  Hash, names, renewal link of a certificate into res (as every request
//  reports them). -1 if the certificate cannot be hashed.
static int s_describe(const gw_auth_t *self, X509 *cert, gw_auth_result_t *res)
{
    s_name(X509_get_subject_name(cert), res->subject, sizeof res->subject);
    s_name(X509_get_issuer_name(cert), res->issuer, sizeof res->issuer);
    unsigned int n = 0;
    if (X509_digest(cert, s_md(self, NID_sha256), res->cert_hash, &n) != 1 || n != 32)
        return -1;
    //  a renewal names the certificate it replaces (the store may re-bind to it);
    //  trusted only because the chain check proves our CA signed it
    res->has_prev = pm_x509_get_renews(cert, res->prev_hash) == 1;
    return 0;
}

//  A context for EVP_PKEY_verify with pk: for RSA with PKCS#1 v1.5 padding
//  (the default) and the digest md, whose DigestInfo the verification
//  checks; for EC (md NULL) it takes the digest as it comes. NULL on failure.
static EVP_PKEY_CTX *s_vctx_new(OSSL_LIB_CTX *lctx, EVP_PKEY *pk, const EVP_MD *md)
{
    EVP_PKEY_CTX *k = EVP_PKEY_CTX_new_from_pkey(lctx, pk, NULL);
    if (k && (EVP_PKEY_verify_init(k) != 1 ||
              (md && (EVP_PKEY_CTX_set_rsa_padding(k, RSA_PKCS1_PADDING) <= 0 ||
                      EVP_PKEY_CTX_set_signature_md(k, md) <= 0)))) {
        EVP_PKEY_CTX_free(k);
        k = NULL;
    }
    ERR_clear_error();
    return k;
}

//  Work out a freshly decoded certificate's description once and attach it
//  (s_certinfo_t). Nothing attached (each request then works it out) if
//  that fails.
static void s_certinfo_attach(const gw_auth_t *self, X509 *x, OSSL_LIB_CTX *lctx)
{
    if (s_exidx < 0)
        return;
    gw_auth_result_t r;
    memset(&r, 0, sizeof r);
    if (s_describe(self, x, &r) < 0) {
        ERR_clear_error();
        return;
    }
    size_t sl = strlen(r.subject) + 1, il = strlen(r.issuer) + 1;
    s_certinfo_t *ci = malloc(sizeof *ci + sl + il);
    if (!ci)
        return;
    memcpy(ci->hash, r.cert_hash, 32);
    memcpy(ci->prev_hash, r.prev_hash, 32);
    ci->has_prev = r.has_prev;
    ci->subject = (char *)(ci + 1);
    ci->issuer = ci->subject + sl;
    memcpy(ci->subject, r.subject, sl);
    memcpy(ci->issuer, r.issuer, il);
    ci->vctx = ci->vctx1 = NULL;
    ci->lctx = lctx;
    //  EC (not SM2, which CMS treats differently) and RSA (not RSA-PSS) keys
    //  get a kept verify context
    EVP_PKEY *pk = X509_get0_pubkey(x);
    int base = pk ? EVP_PKEY_get_base_id(pk) : EVP_PKEY_NONE;
    ci->rsa = base == EVP_PKEY_RSA && EVP_PKEY_is_a(pk, "RSA");
    if (ci->rsa || (base == EVP_PKEY_EC && EVP_PKEY_is_a(pk, "EC") && !EVP_PKEY_is_a(pk, "SM2")))
        ci->vctx = s_vctx_new(lctx, pk, ci->rsa ? s_md(self, NID_sha256) : NULL);
    ERR_clear_error();
    if (X509_set_ex_data(x, s_exidx, ci) != 1) {
        EVP_PKEY_CTX_free(ci->vctx);
        free(ci);
    }
}

//  The certificate encoded by der[0..len): from the cache, or decoded (and
//  cached). Returns a new reference (X509_free it), NULL if not a certificate.
//  A cached entry is used only when its DER has the same SHA-256.
static X509 *s_cert_get(gw_auth_t *self, const uint8_t *der, size_t len)
{
    uint8_t h[32];
    if (!self->xcache || len > S_XDER_MAX ||
        EVP_Digest(der, len, h, NULL, s_md(self, NID_sha256), NULL) != 1) {
        self->xdecodes++;
        const unsigned char *p = der;
        X509 *x = d2i_X509(NULL, &p, (long)len);
        if (x && p != der + len) {
            X509_free(x);
            x = NULL;
        }
        return x;
    }
    uint64_t k = 0;
    if (!self->xkey_const)
        memcpy(&k, h, sizeof k);
    size_t ways = self->xslots >= S_XWAYS ? S_XWAYS : self->xslots;
    s_xcached_t *set = &self->xcache[(k % (self->xslots / ways)) * ways], *c = set;
    for (size_t i = 0; i < ways; i++) {
        if (set[i].x && memcmp(set[i].hash, h, sizeof h) == 0) {
            self->xhits++;
            set[i].used = ++self->xtick;
            X509_up_ref(set[i].x);
            return set[i].x;
        }
        if (!set[i].x || (c->x && set[i].used < c->used))
            c = &set[i]; //  an empty way, else the least recently used
    }
    OSSL_LIB_CTX *lctx;
    X509 *x = s_cert_decode(self, der, len, &lctx);
    if (!x)
        return NULL;
    s_certinfo_attach(self, x, lctx);
    X509_free(c->x);
    memcpy(c->hash, h, sizeof h);
    c->x = x;
    c->used = ++self->xtick;
    X509_up_ref(x);
    return x;
}

#define S_OID_MAX 32

static bool s_tlv(const unsigned char **p, const unsigned char *end, long *len, int *tag, int *cls,
                  bool *constructed);

//  The OID content of digestAlgorithms (SET[content..end)) when it holds
//  exactly one AlgorithmIdentifier; else *len = 0.
static void s_one_dalg(const unsigned char *p, const unsigned char *end, uint8_t oid[S_OID_MAX],
                       size_t *len)
{
    long l;
    int tag, cls;
    bool cons;
    *len = 0;
    if (!s_tlv(&p, end, &l, &tag, &cls, &cons) || cls != V_ASN1_UNIVERSAL ||
        tag != V_ASN1_SEQUENCE || !cons || p + l != end)
        return;
    if (!s_tlv(&p, end, &l, &tag, &cls, &cons) || cls != V_ASN1_UNIVERSAL || tag != V_ASN1_OBJECT ||
        cons || l <= 0 || l > S_OID_MAX)
        return;
    memcpy(oid, p, (size_t)l);
    *len = (size_t)l;
}

//  One DER TLV header at *p (OpenSSL's reader, ASN1_get_object): definite
//  length only, and the element must fit in the bytes left. Advances *p past
//  the header; the content is (*p)[0..*len).
static bool s_tlv(const unsigned char **p, const unsigned char *end, long *len, int *tag, int *cls,
                  bool *constructed)
{
    if (*p >= end)
        return false;
    const unsigned char *h = *p;
    int r = ASN1_get_object(p, len, tag, cls, end - *p);
    if (r & 0x80) { //  error (or the content runs past end)
        ERR_clear_error();
        return false;
    }
    *constructed = (r & V_ASN1_CONSTRUCTED) != 0;
    if ((r & 1) || *len < 0 || *len > end - *p) //  r & 1: indefinite length (BER)
        return false;
    //  Canonical DER only: the header must be exactly what ASN1_put_object
    //  writes for it (minimal length, low tag form), so that re-encoding the
    //  wrappers changes nothing but their length values and d2i sees what
    //  it would have seen in the original.
    unsigned char canon[16], *w = canon;
    if (*p - h > (long)sizeof canon || ASN1_object_size(*constructed, *len, *tag) - *len != *p - h)
        return false;
    ASN1_put_object(&w, *constructed, *len, *tag, *cls);
    return w - canon == *p - h && memcmp(canon, h, (size_t)(*p - h)) == 0;
}

//  Split an Mdm-Signature (DER ContentInfo holding SignedData) into the same
//  structure without its `certificates` field, re-encoded in `out`, and the
//  certificates themselves (each from the cache, or decoded once). Walks the
//  DER with OpenSSL's TLV reader only as far as the certificates field; what
//  it does not recognise (BER, other certificate choices, no certificates)
//  returns -1 and the caller decodes the signature the ordinary way.
//
//  ContentInfo ::= SEQUENCE { contentType OID, content [0] EXPLICIT
//    SignedData ::= SEQUENCE { version, digestAlgorithms SET, encapContentInfo
//      SEQUENCE, certificates [0] IMPLICIT SET OF Certificate OPTIONAL, crls [1]
//      OPTIONAL, signerInfos SET } }   (RFC 5652 §3, §5.1)
//  Also notes, in dalg[0..*dalg_len), the content of the digest algorithm's
//  OID when digestAlgorithms holds exactly one AlgorithmIdentifier (else
//  *dalg_len = 0): see s_verify_lean.
static int s_split_certs(gw_auth_t *self, const uint8_t *der, size_t derlen, uint8_t **out,
                         size_t *outlen, STACK_OF(X509) * *certs, uint8_t dalg[S_OID_MAX],
                         size_t *dalg_len)
{
    const unsigned char *p = der, *end = der + derlen;
    long l1, l2, l3, l, lc;
    int tag, cls;
    bool cons;
    *out = NULL;
    *certs = NULL;
    if (!s_tlv(&p, end, &l1, &tag, &cls, &cons) || cls != V_ASN1_UNIVERSAL ||
        tag != V_ASN1_SEQUENCE || !cons || p + l1 != end)
        return -1;
    const unsigned char *oid = p;
    if (!s_tlv(&p, end, &l, &tag, &cls, &cons) || cls != V_ASN1_UNIVERSAL || tag != V_ASN1_OBJECT ||
        cons)
        return -1;
    p += l;
    size_t oidlen = (size_t)(p - oid);
    if (!s_tlv(&p, end, &l2, &tag, &cls, &cons) || cls != V_ASN1_CONTEXT_SPECIFIC || tag != 0 ||
        !cons || p + l2 != end)
        return -1;
    if (!s_tlv(&p, end, &l3, &tag, &cls, &cons) || cls != V_ASN1_UNIVERSAL ||
        tag != V_ASN1_SEQUENCE || !cons || p + l3 != end)
        return -1;
    const unsigned char *sd = p; //  SignedData content
    *dalg_len = 0;
    for (int i = 0; i < 3; i++) { //  version, digestAlgorithms, encapContentInfo
        if (!s_tlv(&p, end, &l, &tag, &cls, &cons) || cls != V_ASN1_UNIVERSAL)
            return -1;
        if (i == 1 && tag == V_ASN1_SET && cons)
            s_one_dalg(p, p + l, dalg, dalg_len);
        p += l;
    }
    const unsigned char *cstart = p;
    if (!s_tlv(&p, end, &lc, &tag, &cls, &cons) || cls != V_ASN1_CONTEXT_SPECIFIC || tag != 0 ||
        !cons)
        return -1;
    const unsigned char *cend = p + lc;
    STACK_OF(X509) *sk = sk_X509_new_null();
    if (!sk)
        return -1;
    while (p < cend) {
        const unsigned char *c = p;
        if (!s_tlv(&p, cend, &l, &tag, &cls, &cons) || cls != V_ASN1_UNIVERSAL ||
            tag != V_ASN1_SEQUENCE || !cons)
            goto fail;
        p += l;
        X509 *x = s_cert_get(self, c, (size_t)(p - c));
        if (!x || !sk_X509_push(sk, x)) {
            X509_free(x);
            goto fail;
        }
    }
    if (sk_X509_num(sk) == 0)
        goto fail;
    //  Re-encode: the SignedData without [certificates], then its wrappers.
    size_t before = (size_t)(cstart - sd), after = (size_t)(end - cend);
    int n3 = (int)(before + after);
    int s3 = ASN1_object_size(1, n3, V_ASN1_SEQUENCE);
    int s2 = ASN1_object_size(1, s3, 0);
    int n1 = (int)oidlen + s2;
    int s1 = ASN1_object_size(1, n1, V_ASN1_SEQUENCE);
    if (n3 < 0 || s3 < 0 || s2 < 0 || s1 < 0)
        goto fail;
    unsigned char *buf = malloc((size_t)s1), *w = buf;
    if (!buf)
        goto fail;
    ASN1_put_object(&w, 1, n1, V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL);
    memcpy(w, oid, oidlen);
    w += oidlen;
    ASN1_put_object(&w, 1, s3, 0, V_ASN1_CONTEXT_SPECIFIC);
    ASN1_put_object(&w, 1, n3, V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL);
    memcpy(w, sd, before);
    w += before;
    memcpy(w, cend, after);
    w += after;
    if (w != buf + s1) {
        free(buf);
        goto fail;
    }
    *out = buf;
    *outlen = (size_t)s1;
    *certs = sk;
    return 0;
fail:
    sk_X509_pop_free(sk, X509_free);
    return -1;
}

//  The set of S_WAYS slots where this hash may be (chain cache: sixteen-way
//  set associative; direct-mapped needed 65,536 slots, 3.5 MB, to keep
//  10,000 devices from evicting each other, sixteen ways do it in 16,384:
//  0.9 MB). Eight ways measured 11,076 verifications for 10,000
//  devices: a set holding more devices than ways, visited in the same order
//  every round, evicts each of them before its next use (oldest out).
#define S_WAYS 16
static s_cached_t *s_set(gw_auth_t *self, const uint8_t hash[32], size_t *ways)
{
    uint64_t k;
    memcpy(&k, hash, sizeof k); //  a SHA-256: its first bytes are as good as any hash
    *ways = self->slots >= S_WAYS ? S_WAYS : self->slots;
    return &self->cache[(k % (self->slots / *ways)) * *ways];
}

//  The slot holding this hash, or NULL.
static s_cached_t *s_slot(gw_auth_t *self, const uint8_t hash[32])
{
    size_t ways;
    s_cached_t *set = s_set(self, hash, &ways);
    for (size_t i = 0; i < ways; i++)
        if (set[i].verified_at != 0 && memcmp(set[i].hash, hash, 32) == 0)
            return &set[i];
    return NULL;
}

//  Was this exact certificate verified recently, and is it still valid now?
//  An entry past the certificate's notAfter or older than the ttl is dropped,
//  so expiry (and a changed device-ca after a restart) is always re-checked.
static bool s_cache_hit(gw_auth_t *self, const uint8_t hash[32], int64_t now, int64_t *leaf_na)
{
    if (!self->cache)
        return false;
    s_cached_t *c = s_slot(self, hash);
    if (!c)
        return false;
    if (now >= c->not_after || now - c->verified_at >= self->ttl_s || now < c->verified_at) {
        memset(c, 0, sizeof *c);
        return false;
    }
    *leaf_na = c->leaf_not_after;
    return true;
}

//  A certificate's notAfter as seconds since the epoch (0 if unreadable).
static int64_t s_not_after(const X509 *x)
{
    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) != 1)
        return 0;
    return (int64_t)timegm(&tm);
}

//  Remember a verified chain. Only chains whose every certificate above the
//  leaf is a configured CA are remembered: then the verdict depends on the
//  leaf alone, not on intermediates the request happened to carry (a chain
//  through an intermediate from the message is verified every time). The
//  entry expires with the earliest notAfter of the chain.
static void s_cache_put(gw_auth_t *self, const uint8_t hash[32], X509_STORE_CTX *ctx, int64_t now,
                        int64_t leaf_na)
{
    STACK_OF(X509) *chain = X509_STORE_CTX_get0_chain(ctx);
    if (!self->cache || !chain || sk_X509_num(chain) < 2)
        return;
    int64_t not_after = INT64_MAX;
    for (int i = 0; i < sk_X509_num(chain); i++) {
        X509 *x = sk_X509_value(chain, i);
        bool configured = i == 0;
        for (int j = 0; !configured && j < sk_X509_num(self->cas); j++)
            configured = X509_cmp(x, sk_X509_value(self->cas, j)) == 0;
        struct tm tm;
        if (!configured || ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) != 1)
            return;
        int64_t t = (int64_t)timegm(&tm);
        if (t < not_after)
            not_after = t;
    }
    s_cached_t *c = s_slot(self, hash);
    if (!c) { //  an empty way, else the one verified longest ago
        size_t ways;
        s_cached_t *set = s_set(self, hash, &ways);
        c = set;
        for (size_t i = 0; i < ways && c->verified_at != 0; i++)
            if (set[i].verified_at < c->verified_at)
                c = &set[i];
    }
    memcpy(c->hash, hash, 32);
    c->not_after = not_after;
    c->leaf_not_after = leaf_na;
    c->verified_at = now;
}

//  Chain check of an identity certificate + hash/issuer into res. The same
//  device sends the same certificate on every request: a verified chain is
//  remembered by the certificate's SHA-256 (bounded, expiry respected), so
//  the X509_verify_cert work (the CA's signature over the certificate) is
//  done once per certificate and ttl, not once per request.
static int s_verify_chain(gw_auth_t *self, X509 *cert, STACK_OF(X509) * untrusted,
                          gw_auth_result_t *res)
{
    int rc = -1;
    X509_STORE_CTX *ctx = NULL;
    const s_certinfo_t *ci = s_exidx >= 0 ? X509_get_ex_data(cert, s_exidx) : NULL;
    if (ci) { //  a certificate from the decoded-certificate cache: described once
        pm_str_copy(res->subject, sizeof res->subject, ci->subject, PM_STR_ALL);
        pm_str_copy(res->issuer, sizeof res->issuer, ci->issuer, PM_STR_ALL);
        memcpy(res->cert_hash, ci->hash, 32);
        memcpy(res->prev_hash, ci->prev_hash, 32);
        res->has_prev = ci->has_prev;
    } else if (s_describe(self, cert, res) < 0) {
        s_fail(res, "internal", "cannot hash the certificate");
        goto out;
    }
    int64_t now = (int64_t)time(NULL);
    if (s_cache_hit(self, res->cert_hash, now, &res->not_after)) {
        self->hits++;
        rc = 0;
        goto out;
    }
    self->misses++;
    res->not_after = s_not_after(cert);
    //  A self-signed signer proves only that the sender holds that key: never
    //  an identity (CVE-2026-114611 class). Refuse even if it is one of our CAs.
    if (X509_self_signed(cert, 0) == 1) {
        s_fail(res, "self_signed",
               "self-signed certificate (subject '%s') is not a device identity", res->subject);
        goto out;
    }
    ctx = X509_STORE_CTX_new();
    if (!ctx || X509_STORE_CTX_init(ctx, self->store, cert, untrusted) != 1) {
        s_fail(res, "internal", "cannot set up certificate verification (out of memory?)");
        goto out;
    }
    if (X509_verify_cert(ctx) != 1) {
        int e = X509_STORE_CTX_get_error(ctx);
        const char *code = e == X509_V_ERR_CERT_HAS_EXPIRED     ? "expired"
                           : e == X509_V_ERR_CERT_NOT_YET_VALID ? "not_yet_valid"
                                                                : "untrusted_chain";
        s_fail(res, code, "certificate (subject '%s', issuer '%s') rejected: %s", res->subject,
               res->issuer, X509_verify_cert_error_string(e));
        goto out;
    }
    s_cache_put(self, res->cert_hash, ctx, now, res->not_after);
    rc = 0;
out:
    X509_STORE_CTX_free(ctx);
    return rc;
}

static void s_reset(gw_auth_result_t *res)
{
    memset(res, 0, sizeof *res);
}

int gw_auth_verify_cert(gw_auth_t *auth, X509 *cert, STACK_OF(X509) * untrusted,
                        gw_auth_result_t *res)
{
    s_reset(res);
    if (!cert)
        return s_fail(res, "no_certificate", "no client certificate presented");
    return s_verify_chain(auth, cert, untrusted, res);
}

int gw_auth_verify_escaped_pem(gw_auth_t *auth, const char *escaped, gw_auth_result_t *res)
{
    s_reset(res);
    int rc = -1;
    char *pem = NULL;
    BIO *bio = NULL;
    X509 *cert = NULL;
    STACK_OF(X509) *chain = NULL;
    if (!escaped || !*escaped)
        return s_fail(res, "no_certificate", "empty forwarded certificate header");
    if (strlen(escaped) > GW_AUTH_PEM_MAX)
        return s_fail(res, "too_large", "forwarded certificate header longer than %u bytes",
                      GW_AUTH_PEM_MAX);
    size_t len = 0;
    pem = evhttp_uridecode(escaped, 0, &len); //  '+' stays '+' (base64)
    if (!pem) {
        s_fail(res, "bad_header", "forwarded certificate header is not URL-escaped text");
        goto out;
    }
    bio = BIO_new_mem_buf(pem, (int)len);
    chain = sk_X509_new_null();
    if (!bio || !chain) {
        s_fail(res, "internal", "out of memory");
        goto out;
    }
    cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    if (!cert) {
        s_fail(res, "bad_header", "forwarded certificate header holds no PEM certificate");
        goto out;
    }
    //  nginx forwards the leaf only; a proxy may append intermediates.
    X509 *x;
    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL)
        if (!sk_X509_push(chain, x))
            X509_free(x);
    ERR_clear_error();
    rc = s_verify_chain(auth, cert, chain, res);
out:
    X509_free(cert);
    sk_X509_pop_free(chain, X509_free);
    BIO_free(bio);
    free(pem);
    return rc;
}

//  One of the 64 letters of base64 (not '=').
static bool s_b64_letter(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

#if defined(__SSE2__)
//  16 bytes at a time: every request's ~2.7 KiB header went through the
//  comparisons above one byte at a time (~11,000 instructions per request
//  under callgrind, 1.3 % of the gateway's CPU in perf; docs/gateway.md,
//  "Session 11, gwcpu6"). The same set of bytes: signed compares, so bytes
//  >= 0x80 (negative) fall in no range. Returns the length checked (a
//  multiple of 16; what is left is checked byte by byte), or (size_t)-1 if a
//  byte is not a letter.
static size_t s_b64_letters16(const char *in, size_t n)
{
    const __m128i a0 = _mm_set1_epi8('A' - 1), a1 = _mm_set1_epi8('Z' + 1);
    const __m128i l0 = _mm_set1_epi8('a' - 1), l1 = _mm_set1_epi8('z' + 1);
    const __m128i d0 = _mm_set1_epi8('0' - 1), d1 = _mm_set1_epi8('9' + 1);
    const __m128i plus = _mm_set1_epi8('+'), slash = _mm_set1_epi8('/');
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(in + i));
        __m128i up = _mm_and_si128(_mm_cmpgt_epi8(v, a0), _mm_cmplt_epi8(v, a1));
        __m128i lo = _mm_and_si128(_mm_cmpgt_epi8(v, l0), _mm_cmplt_epi8(v, l1));
        __m128i dg = _mm_and_si128(_mm_cmpgt_epi8(v, d0), _mm_cmplt_epi8(v, d1));
        __m128i ok = _mm_or_si128(
            _mm_or_si128(up, lo),
            _mm_or_si128(dg, _mm_or_si128(_mm_cmpeq_epi8(v, plus), _mm_cmpeq_epi8(v, slash))));
        if (_mm_movemask_epi8(ok) != 0xFFFF)
            return (size_t)-1;
    }
    return i;
}
#endif

//  Is in[0..len) base64 in one piece: only the 64 letters, a multiple of 4,
//  '=' only as the last one or two characters? (What devices send.)
bool gw_auth_b64_plain(const char *in, size_t len, size_t *pad)
{
    *pad = 0;
    if (len == 0 || len % 4 != 0 || len > INT_MAX)
        return false;
    if (in[len - 1] == '=')
        *pad = in[len - 2] == '=' ? 2 : 1;
    size_t n = len - *pad, i = 0;
#if defined(__SSE2__)
    i = s_b64_letters16(in, n);
    if (i == (size_t)-1)
        return false;
#endif
    for (; i < n; i++)
        if (!s_b64_letter((unsigned char)in[i]))
            return false;
    return true;
}

//  Base64 (with or without line breaks) -> bytes. NULL if not base64.
static uint8_t *s_unbase64(const char *in, size_t inlen, size_t *outlen)
{
    uint8_t *out = malloc(inlen / 4 * 3 + 4);
    size_t pad;
    if (out && gw_auth_b64_plain(in, inlen, &pad)) {
        //  EVP_DecodeBlock: the same bytes for such input as the streaming
        //  decoder below (which also takes line breaks), at a third of its
        //  cost; it counts the padding as zero bytes, dropped here.
        int n = EVP_DecodeBlock(out, (const unsigned char *)in, (int)inlen);
        if (n >= 0 && (size_t)n == inlen / 4 * 3 && (size_t)n > pad) {
            *outlen = (size_t)n - pad;
            return out;
        }
        free(out);
        return NULL;
    }
    EVP_ENCODE_CTX *ctx = EVP_ENCODE_CTX_new();
    int n1 = 0, n2 = 0;
    if (!ctx || !out)
        goto fail;
    EVP_DecodeInit(ctx);
    if (EVP_DecodeUpdate(ctx, out, &n1, (const unsigned char *)in, (int)inlen) < 0)
        goto fail;
    if (EVP_DecodeFinal(ctx, out + n1, &n2) < 0)
        goto fail;
    if (n1 + n2 <= 0)
        goto fail;
    EVP_ENCODE_CTX_free(ctx);
    *outlen = (size_t)(n1 + n2);
    return out;
fail:
    EVP_ENCODE_CTX_free(ctx);
    free(out);
    return NULL;
}

//  The signingTime signed attribute (RFC 5652 §11.3; OpenSSL's CMS_sign adds
//  one, so do devices) minus our clock, into res->clock_skew_s. Called after
//  CMS_verify: the attribute is covered by the verified signature. A missing
//  or odd attribute just leaves has_skew false.
static void s_signing_time(CMS_SignerInfo *si, gw_auth_result_t *res)
{
    int i = CMS_signed_get_attr_by_NID(si, NID_pkcs9_signingTime, -1);
    if (i < 0)
        return;
    X509_ATTRIBUTE *a = CMS_signed_get_attr(si, i);
    ASN1_TYPE *t = a && X509_ATTRIBUTE_count(a) == 1 ? X509_ATTRIBUTE_get0_type(a, 0) : NULL;
    struct tm tm;
    if (!t || (t->type != V_ASN1_UTCTIME && t->type != V_ASN1_GENERALIZEDTIME) ||
        ASN1_TIME_to_tm((const ASN1_TIME *)t->value.asn1_string, &tm) != 1) {
        ERR_clear_error();
        return;
    }
    res->clock_skew_s = (int64_t)timegm(&tm) - (int64_t)time(NULL);
    res->has_skew = true;
}

//  CMS_verify's signature work for our one SignerInfo, without the rest of
//  CMS_verify (looking the signer up again, a BIO chain with a digest BIO
//  per digestAlgorithms entry, a copy of the body through it): the
//  signature over the signed attributes with the signer's key
//  (CMS_SignerInfo_verify, the very call CMS_verify makes), then the
//  messageDigest attribute against the body's digest, with the same rules as
//  CMS_SignerInfo_verify_content (exactly one single-valued messageDigest,
//  same length, same bytes). Used only where CMS_verify would do exactly
//  this: signed attributes present, and digestAlgorithms holding only the
//  signer's digest algorithm (SHA-1 or SHA-256, so CMS_verify's digest BIO
//  set-up cannot fail and finds it). The caller checked everything else
//  CMS_verify checks (one signer, its certificate, its chain).
//  CMS_SignerInfo_verify for an EC or RSA signer with the kept verify context of its
//  cached certificate (s_certinfo_t.vctx), where the signed attributes have
//  the plain shape devices send, for which OpenSSL 3.0's attribute rules
//  (ossl_cms_si_check_attributes: contentType, messageDigest, signingTime
//  and the ESS attributes signed, each at most once and single-valued;
//  countersignature unsigned; contentType and messageDigest present) cannot
//  fail: every attribute single-valued, no OID twice, contentType and
//  messageDigest present, no countersignature among them, no unsigned
//  attributes. The rest is what CMS_SignerInfo_verify computes: the DER of
//  the signed attributes in the order received, tagged SET (its
//  CMS_Attributes_Verify item: a SET header, then each X509_ATTRIBUTE
//  re-encoded by i2d_X509_ATTRIBUTE), digested with the SignerInfo's digest
//  algorithm, and the ECDSA or RSA verification of the signature over that
//  digest (for EC keys CMS adds no check of signatureAlgorithm; for RSA it
//  takes PKCS#1 v1.5 for rsaEncryption; the provider's digest-verify path
//  ends in the same ecdsa_verify / rsa_verify call with the same digest).
//  Returns 1
//  verified, 0 not verified, -1 not applicable (the caller then calls
//  CMS_SignerInfo_verify itself).
static int s_sig_kept(const gw_auth_t *self, CMS_SignerInfo *si, X509 *signer, int dnid)
{
    s_certinfo_t *ci = s_exidx >= 0 ? X509_get_ex_data(signer, s_exidx) : NULL;
    if (!ci || !ci->vctx || CMS_unsigned_get_attr_count(si) > 0)
        return -1;
    EVP_PKEY_CTX *k = ci->vctx;
    if (ci->rsa) {
        //  CMS's RSA rule (rsa_cms_verify): PKCS#1 v1.5 unless the
        //  signatureAlgorithm says RSA-PSS; kept only for rsaEncryption
        //  itself, what OpenSSL's CMS_sign writes (anything else: CMS)
        X509_ALGOR *salg = NULL;
        CMS_SignerInfo_get0_algs(si, NULL, NULL, NULL, &salg);
        if (!salg || OBJ_obj2nid(salg->algorithm) != NID_rsaEncryption)
            return -1;
        if (dnid == NID_sha1) {
            if (!ci->vctx1)
                ci->vctx1 = s_vctx_new(ci->lctx, X509_get0_pubkey(signer), s_md(self, NID_sha1));
            if (!ci->vctx1)
                return -1;
            k = ci->vctx1;
        }
    }
    int n = CMS_signed_get_attr_count(si);
    if (n < 2 || n > 16)
        return -1;
    bool ctype = false, mdig = false;
    int total = 0;
    for (int i = 0; i < n; i++) {
        X509_ATTRIBUTE *a = CMS_signed_get_attr(si, i);
        ASN1_OBJECT *o = a ? X509_ATTRIBUTE_get0_object(a) : NULL;
        if (!o || X509_ATTRIBUTE_count(a) != 1)
            return -1;
        int nid = OBJ_obj2nid(o);
        if (nid == NID_pkcs9_countersignature)
            return -1;
        ctype = ctype || nid == NID_pkcs9_contentType;
        mdig = mdig || nid == NID_pkcs9_messageDigest;
        for (int j = 0; j < i; j++)
            if (OBJ_cmp(o, X509_ATTRIBUTE_get0_object(CMS_signed_get_attr(si, j))) == 0)
                return -1;
        int l = i2d_X509_ATTRIBUTE(a, NULL);
        if (l <= 0 || l > 4096)
            return -1;
        total += l;
    }
    if (!ctype || !mdig)
        return -1;
    //  devices sign a few short attributes: ~100 bytes
    unsigned char buf[1024], *w = buf;
    int size = ASN1_object_size(1, total, V_ASN1_SET);
    if (size < 0 || size > (int)sizeof buf)
        return -1;
    ASN1_put_object(&w, 1, total, V_ASN1_SET, V_ASN1_UNIVERSAL);
    for (int i = 0; i < n; i++)
        if (i2d_X509_ATTRIBUTE(CMS_signed_get_attr(si, i), &w) <= 0)
            return -1;
    if (w != buf + size)
        return -1;
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(buf, (size_t)size, md, &mdlen, s_md(self, dnid), NULL) != 1)
        return 0;
    const ASN1_OCTET_STRING *sig = CMS_SignerInfo_get0_signature(si);
    if (!sig)
        return 0;
    return EVP_PKEY_verify(k, ASN1_STRING_get0_data(sig), (size_t)ASN1_STRING_length(sig), md,
                           mdlen) == 1;
}

static int s_verify_lean(gw_auth_t *self, CMS_SignerInfo *si, X509 *signer, int dnid,
                         const uint8_t *body, size_t len, gw_auth_result_t *res)
{
    char ebuf[160];
    //  ERR_clear_error walks all 16 slots of the queue (~870 instructions)
    //  even when it is empty, as it is here on every good request; peeking
    //  first costs ~10 % of that (docs/gateway.md, "Session 11, gwcpu6").
    if (ERR_peek_error() != 0)
        ERR_clear_error();
    int kept = self->kept_ctx ? s_sig_kept(self, si, signer, dnid) : -1;
    if (kept >= 0)
        self->kept++;
    if (kept == 0)
        return s_fail(res, "bad_signature", "Mdm-Signature does not verify over the body (%s)",
                      s_ssl_err(ebuf, sizeof ebuf));
    if (kept < 0) {
        CMS_SignerInfo_set1_signer_cert(si, signer);
        if (CMS_SignerInfo_verify(si) <= 0)
            return s_fail(res, "bad_signature", "Mdm-Signature does not verify over the body (%s)",
                          s_ssl_err(ebuf, sizeof ebuf));
    }
    const ASN1_OCTET_STRING *os = CMS_signed_get0_data_by_OBJ(
        si, OBJ_nid2obj(NID_pkcs9_messageDigest), -3, V_ASN1_OCTET_STRING);
    if (!os)
        return s_fail(res, "bad_signature",
                      "Mdm-Signature has no (single) messageDigest signed attribute");
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(body ? (const void *)body : "", len, md, &mdlen, s_md(self, dnid), NULL) != 1)
        return s_fail(res, "bad_signature", "cannot digest the body (%s)",
                      s_ssl_err(ebuf, sizeof ebuf));
    if ((int)mdlen != ASN1_STRING_length(os) || memcmp(md, ASN1_STRING_get0_data(os), mdlen) != 0)
        return s_fail(res, "bad_signature",
                      "Mdm-Signature does not verify over the body (messageDigest differs)");
    return 0;
}

int gw_auth_verify_signature(gw_auth_t *auth, const char *sig, size_t siglen, const uint8_t *body,
                             size_t len, gw_auth_result_t *res)
{
    s_reset(res);
    int rc = -1;
    uint8_t *der = NULL;
    CMS_ContentInfo *cms = NULL;
    STACK_OF(X509) *certs = NULL;
    STACK_OF(X509) *signers = NULL;
    BIO *content = NULL;
    char ebuf[160];

    if (!sig || siglen == 0)
        return s_fail(res, "unsigned", "no Mdm-Signature header");
    if (siglen > GW_AUTH_SIG_MAX)
        return s_fail(res, "too_large", "Mdm-Signature longer than %u bytes", GW_AUTH_SIG_MAX);
    size_t derlen = 0;
    der = s_unbase64(sig, siglen, &derlen);
    if (!der) {
        s_fail(res, "bad_base64", "Mdm-Signature is not valid base64");
        goto out;
    }
    //  Fast path: the certificates come out of the cache (decoded once per
    //  certificate), the rest of the structure is decoded by d2i as usual.
    uint8_t *stripped = NULL, dalg[S_OID_MAX];
    size_t slen = 0, dalg_len = 0;
    if (auth->xcache &&
        s_split_certs(auth, der, derlen, &stripped, &slen, &certs, dalg, &dalg_len) == 0) {
        free(der);
        der = stripped;
        derlen = slen;
    }
    const unsigned char *p = der;
    cms = d2i_CMS_ContentInfo(NULL, &p, (long)derlen);
    if (!cms || p != der + derlen) {
        s_fail(res, "bad_cms", "Mdm-Signature is not one DER CMS structure");
        goto out;
    }
    if (OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_signed) {
        s_fail(res, "bad_cms", "Mdm-Signature is CMS but not SignedData");
        goto out;
    }
    if (CMS_is_detached(cms) != 1) {
        s_fail(res, "bad_cms", "Mdm-Signature carries content; a detached signature is required");
        goto out;
    }
    //  Exactly one signer, checked here rather than trusting the library's
    //  verdict on degenerate structures (JLSEC-2026-736 class).
    STACK_OF(CMS_SignerInfo) *sis = CMS_get0_SignerInfos(cms);
    int nsi = sis ? sk_CMS_SignerInfo_num(sis) : 0;
    if (nsi != 1) {
        s_fail(res, "signer_count", "Mdm-Signature has %d signers; exactly one is required", nsi);
        goto out;
    }
    CMS_SignerInfo *si = sk_CMS_SignerInfo_value(sis, 0);
    X509_ALGOR *dig = NULL;
    CMS_SignerInfo_get0_algs(si, NULL, NULL, &dig, NULL);
    int dnid = dig ? OBJ_obj2nid(dig->algorithm) : NID_undef;
    if (dnid != NID_sha1 && dnid != NID_sha256) {
        s_fail(res, "bad_digest", "Mdm-Signature digest %s is not accepted (SHA-1 or SHA-256)",
               dnid == NID_undef ? "unknown" : OBJ_nid2sn(dnid));
        goto out;
    }
    if (!certs)
        certs = CMS_get1_certs(cms);
    X509 *signer = NULL;
    for (int i = 0; certs && i < sk_X509_num(certs); i++)
        if (CMS_SignerInfo_cert_cmp(si, sk_X509_value(certs, i)) == 0) {
            signer = sk_X509_value(certs, i);
            break;
        }
    if (!signer) {
        s_fail(res, "no_signer_cert", "Mdm-Signature does not carry the signer's certificate");
        goto out;
    }
    //  Chain first, for a precise reason (expired, unknown CA, self-signed)...
    if (s_verify_chain(auth, signer, certs, res) < 0)
        goto out;
    //  ...then the signature over the exact body bytes. The signer's chain was
    //  just verified (or found verified and unexpired in the cache) for this
    //  very certificate object, so CMS_verify does not build it a second time
    //  (CMS_NO_SIGNER_CERT_VERIFY: safe only because of the s_verify_chain
    //  above); the check below makes sure CMS_verify used that certificate.
    const ASN1_OBJECT *dobj = dig ? dig->algorithm : NULL;
    if (dalg_len > 0 && dobj && (size_t)OBJ_length(dobj) == dalg_len &&
        memcmp(OBJ_get0_data(dobj), dalg, dalg_len) == 0 && CMS_signed_get_attr_count(si) >= 0) {
        auth->lean++;
        if (s_verify_lean(auth, si, signer, dnid, body, len, res) < 0)
            goto out;
        s_signing_time(si, res);
        rc = 0;
        goto out;
    }
    //  The body goes to CMS_verify through a buffer filter, not as a bare
    //  memory BIO: given a memory BIO, OpenSSL 3.0's CMS_verify makes its own
    //  read-only copy of it and, with CMS_BINARY, does not free that copy when
    //  CMS_dataInit fails (a SignedData with no digest algorithm, for one;
    //  seen with Debian 12's 3.0.19, reported upstream as openssl/openssl#30471),
    //  so any client could make the gateway leak a few hundred bytes per
    //  request. A filter is not a memory BIO: CMS_verify reads through it and
    //  allocates nothing of its own.
    BIO *mem = BIO_new_mem_buf(body ? (const void *)body : "", (int)len);
    BIO *filter = mem ? BIO_new(BIO_f_buffer()) : NULL;
    content = filter ? BIO_push(filter, mem) : NULL;
    if (!content) {
        BIO_free(filter);
        BIO_free(mem);
        s_fail(res, "internal", "out of memory");
        goto out;
    }
    ERR_clear_error();
    unsigned int flags = CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY;
    if (CMS_verify(cms, certs, auth->store, content, NULL, flags) != 1) {
        s_fail(res, "bad_signature", "Mdm-Signature does not verify over the body (%s)",
               s_ssl_err(ebuf, sizeof ebuf));
        goto out;
    }
    signers = CMS_get0_signers(cms);
    if (!signers || sk_X509_num(signers) != 1 || X509_cmp(sk_X509_value(signers, 0), signer) != 0) {
        s_fail(res, "bad_signature", "verified signer differs from the checked certificate");
        goto out;
    }
    s_signing_time(si, res);
    rc = 0;
out:
    sk_X509_free(signers);
    sk_X509_pop_free(certs, X509_free);
    CMS_ContentInfo_free(cms);
    BIO_free_all(content);
    free(der);
    if (rc < 0 && !res->code)
        s_fail(res, "internal", "authentication failed");
    return rc;
}
