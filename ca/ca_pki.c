/*  ca_pki — key material and certificate issuance for picomdm-ca (see ca_pki.h). */
#include "ca_pki.h"
#include "pm_pem.h"
#include "pm_x509.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_CA_DAYS 3650
#define S_LEAF_DAYS 1825

struct ca_pki {
    X509 *ca;
    EVP_PKEY *ca_key;
    X509 *ra; //  == ca when the CA is RSA (not a second reference)
    EVP_PKEY *ra_key;
    X509 *signer;
    EVP_PKEY *signer_key;
    X509_STORE *store; //  the CA alone: renewal requests chain to it
    int cert_days;
    char *key_usage;
    char *ext_key_usage;
    X509_NAME *subject; //  NULL = the CSR's subject
    int min_rsa_bits;
    //  the extensions every device certificate carries that depend on the CA
    //  and the options only, made once (ca_pki_issue copies them in):
    //  basicConstraints, keyUsage, extendedKeyUsage (NULL = none), AKI
    X509_EXTENSION *ext_bc, *ext_ku, *ext_eku, *ext_aki;
};

static int s_fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int s_fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    ERR_clear_error();
    return -1;
}

static int s_add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ext)
        return -1;
    int rc = X509_add_ext(cert, ext, -1) ? 0 : -1;
    X509_EXTENSION_free(ext);
    return rc;
}

static int s_random_serial(X509 *x)
{
    BIGNUM *bn = BN_new();
    int ok = bn && BN_rand(bn, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) &&
             BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    return ok ? 0 : -1;
}

//  A certificate for `pub` named `name`, signed by issuer/ikey (issuer NULL = self-signed).
//  exts: NULL-terminated nid/value pairs (value NULL or "" skips it).
//  x's SubjectPublicKeyInfo = a copy of `from` (algorithm and key bits as
//  they arrived). X509_set_pubkey would re-encode the decoded key through
//  OpenSSL 3.0's encoder machinery, a sixth of an enrollment's CPU (perf).
//  false: an algorithm parameter we do not copy (the caller falls back).
static bool s_copy_spki(X509 *x, const X509_PUBKEY *from)
{
    const unsigned char *pk = NULL;
    int pklen = 0;
    X509_ALGOR *alg = NULL;
    if (!from || !X509_PUBKEY_get0_param(NULL, &pk, &pklen, &alg, from) || !pk || pklen <= 0)
        return false;
    const ASN1_OBJECT *aobj = NULL;
    int ptype = V_ASN1_UNDEF;
    const void *pval = NULL;
    X509_ALGOR_get0(&aobj, &ptype, &pval, alg);
    void *pv = NULL;
    if (ptype == V_ASN1_OBJECT)
        pv = OBJ_dup(pval);
    else if (ptype == V_ASN1_SEQUENCE)
        pv = ASN1_STRING_dup(pval);
    else if (ptype != V_ASN1_NULL && ptype != V_ASN1_UNDEF)
        return false;
    ASN1_OBJECT *o = OBJ_dup(aobj);
    unsigned char *enc = OPENSSL_memdup(pk, (size_t)pklen);
    if (!o || !enc || ((ptype == V_ASN1_OBJECT || ptype == V_ASN1_SEQUENCE) && !pv) ||
        !X509_PUBKEY_set0_param(X509_get_X509_PUBKEY(x), o, ptype, pv, enc, pklen)) {
        ASN1_OBJECT_free(o);
        OPENSSL_free(enc);
        if (ptype == V_ASN1_OBJECT)
            ASN1_OBJECT_free(pv);
        else if (ptype == V_ASN1_SEQUENCE)
            ASN1_STRING_free(pv);
        return false;
    }
    return true;
}

//  An unsigned certificate for `pub` named `name`, from issuer (NULL = self).
//  `spki`: the key as it arrived (a CSR's), copied as is; NULL: from `pub`.
static X509 *s_new_cert(EVP_PKEY *pub, const X509_PUBKEY *spki, X509_NAME *name, X509 *issuer,
                        int days)
{
    X509 *x = X509_new();
    bool ok = x && X509_set_version(x, 2) && s_random_serial(x) == 0;
    ok = ok && X509_set_subject_name(x, name) &&
         X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    ok = ok && X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
         X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400);
    ok = ok && ((spki && s_copy_spki(x, spki)) || (pub && X509_set_pubkey(x, pub)));
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

//  exts: NULL-terminated nid/value pairs (value NULL or "" skips it).
static X509 *s_make_cert(EVP_PKEY *pub, const X509_PUBKEY *spki, X509_NAME *name, X509 *issuer,
                         EVP_PKEY *ikey, int days, const int *nids, const char *const *values)
{
    X509 *x = s_new_cert(pub, spki, name, issuer, days);
    bool ok = x != NULL;
    for (int i = 0; ok && nids[i]; i++)
        if (values[i] && values[i][0])
            ok = s_add_ext(x, issuer ? issuer : x, nids[i], values[i]) == 0;
    ok = ok && X509_sign(x, ikey, EVP_sha256()) > 0;
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

static X509_NAME *s_name_cn(const char *cn)
{
    X509_NAME *n = X509_NAME_new();
    if (n && (!X509_NAME_add_entry_by_txt(n, "O", MBSTRING_UTF8, (const unsigned char *)"PicoMDM",
                                          -1, -1, 0) ||
              !X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
                                          0))) {
        X509_NAME_free(n);
        return NULL;
    }
    return n;
}

//  "/O=Org/OU=Devices" -> X509_NAME (no escaping: '/' cannot appear in a value).
static X509_NAME *s_parse_dn(const char *dn)
{
    X509_NAME *n = X509_NAME_new();
    char *copy = strdup(dn);
    bool ok = n && copy && dn[0] == '/';
    char *save = NULL;
    for (char *p = ok ? strtok_r(copy, "/", &save) : NULL; ok && p;
         p = strtok_r(NULL, "/", &save)) {
        char *eq = strchr(p, '=');
        ok = eq && eq != p && eq[1];
        if (ok) {
            *eq = 0;
            ok = X509_NAME_add_entry_by_txt(n, p, MBSTRING_UTF8, (unsigned char *)eq + 1, -1, -1,
                                            0) == 1;
        }
    }
    free(copy);
    if (!ok || X509_NAME_entry_count(n) == 0) {
        X509_NAME_free(n);
        return NULL;
    }
    return n;
}

static bool s_is_rsa(EVP_PKEY *k)
{
    return k && EVP_PKEY_get_base_id(k) == EVP_PKEY_RSA;
}

//  Load a cert/key pair, or (both absent and make != NULL) make it.
typedef int(s_make_fn)(ca_pki_t *pki, const char *cert, const char *key, char *err, size_t errlen);

static int s_load_pair(ca_pki_t *pki, const char *cert_path, const char *key_path, X509 **x,
                       EVP_PKEY **k, s_make_fn *make, bool *made, const char *what, char *err,
                       size_t errlen)
{
    if (!cert_path || !key_path || !cert_path[0] || !key_path[0])
        return s_fail(err, errlen, "no file names for the %s: set them in the configuration", what);
    bool have_cert = access(cert_path, F_OK) == 0, have_key = access(key_path, F_OK) == 0;
    if (!have_cert && !have_key) {
        if (make(pki, cert_path, key_path, err, errlen) < 0)
            return -1;
        if (made)
            *made = true;
    }
    *x = pm_pem_read_cert(cert_path);
    *k = pm_pem_read_key(key_path);
    if (!*x || !*k || X509_check_private_key(*x, *k) != 1)
        return s_fail(err, errlen,
                      "the %s in %s / %s is incomplete, unreadable or does not match; it is not "
                      "replaced: restore both files, or move both away to make a new one",
                      what, cert_path, key_path);
    struct stat st;
    if (stat(key_path, &st) == 0 && (st.st_mode & 077))
        chmod(key_path, 0600); //  tighten a key someone made readable
    return 0;
}

static int s_make_ca(ca_pki_t *pki, const char *cert_path, const char *key_path, char *err,
                     size_t errlen)
{
    (void)pki;
    static const int nids[] = {NID_basic_constraints, NID_key_usage, NID_subject_key_identifier, 0};
    //  digitalSignature + keyEncipherment: an RSA CA is also the SCEP recipient and signer
    static const char *const values[] = {
        "critical,CA:TRUE", "critical,keyCertSign,cRLSign,digitalSignature,keyEncipherment", "hash",
        NULL};
    int rc = -1;
    EVP_PKEY *k = EVP_RSA_gen(2048);
    X509_NAME *n = s_name_cn("PicoMDM device CA");
    X509 *x = k && n ? s_make_cert(k, NULL, n, NULL, k, S_CA_DAYS, nids, values) : NULL;
    if (!x) {
        s_fail(err, errlen, "cannot make the device CA (OpenSSL failed)");
        goto out;
    }
    if (pm_pem_write(key_path, 0600, NULL, k, err, errlen) < 0 ||
        pm_pem_write(cert_path, 0644, x, NULL, err, errlen) < 0)
        goto out;
    rc = 0;
out:
    X509_free(x);
    X509_NAME_free(n);
    EVP_PKEY_free(k);
    return rc;
}

//  ec: a P-256 key (else RSA 2048).
static int s_make_leaf(ca_pki_t *pki, const char *cert_path, const char *key_path, const char *cn,
                       const char *ku, const char *eku, bool ec, char *err, size_t errlen)
{
    const int nids[] = {NID_basic_constraints,
                        NID_key_usage,
                        NID_ext_key_usage,
                        NID_subject_key_identifier,
                        NID_authority_key_identifier,
                        0};
    const char *const values[] = {"critical,CA:FALSE", ku, eku, "hash", "keyid,issuer", NULL};
    int rc = -1;
    EVP_PKEY *k = ec ? EVP_EC_gen("P-256") : EVP_RSA_gen(2048);
    X509_NAME *n = s_name_cn(cn);
    X509 *x =
        k && n ? s_make_cert(k, NULL, n, pki->ca, pki->ca_key, S_LEAF_DAYS, nids, values) : NULL;
    if (!x) {
        s_fail(err, errlen, "cannot make the %s certificate (OpenSSL failed)", cn);
        goto out;
    }
    if (pm_pem_write(key_path, 0600, NULL, k, err, errlen) < 0 ||
        pm_pem_write(cert_path, 0644, x, NULL, err, errlen) < 0)
        goto out;
    rc = 0;
out:
    X509_free(x);
    X509_NAME_free(n);
    EVP_PKEY_free(k);
    return rc;
}

static int s_make_ra(ca_pki_t *pki, const char *c, const char *k, char *err, size_t errlen)
{
    //  RSA: SCEP devices encrypt their request to it (key transport)
    return s_make_leaf(pki, c, k, "PicoMDM SCEP RA", "critical,digitalSignature,keyEncipherment",
                       NULL, false, err, errlen);
}

static int s_make_signer(ca_pki_t *pki, const char *c, const char *k, char *err, size_t errlen)
{
    //  The key type of the CA: with a P-256 CA (`picomdm up`) the device
    //  already checks an ECDSA signature to trust the signer certificate,
    //  and a P-256 signature costs a tenth of an RSA-2048 one per profile
    //  (docs/enrollment.md, "Server CPU per enrollment").
    return s_make_leaf(pki, c, k, "PicoMDM profile signer", "critical,digitalSignature",
                       "emailProtection,codeSigning", !s_is_rsa(pki->ca_key), err, errlen);
}

//  The issuer must really be our CA (a swapped file would silently break chains).
static int s_check_issued(ca_pki_t *pki, X509 *x, const char *what, const char *path, char *err,
                          size_t errlen)
{
    if (X509_check_issued(pki->ca, x) != X509_V_OK)
        return s_fail(err, errlen,
                      "the %s certificate %s was not issued by the device CA: move it and its "
                      "key away to have a new one made",
                      what, path);
    return 0;
}

ca_pki_t *ca_pki_new(const ca_pki_opts_t *o, bool *created, char *err, size_t errlen)
{
    if (created)
        *created = false;
    ca_pki_t *pki = calloc(1, sizeof *pki);
    if (!pki) {
        s_fail(err, errlen, "out of memory");
        return NULL;
    }
    pki->cert_days = o->cert_days;
    pki->min_rsa_bits = o->min_rsa_bits > 0 ? o->min_rsa_bits : 2048;
    pki->key_usage = strdup(o->key_usage ? o->key_usage : "");
    pki->ext_key_usage = strdup(o->ext_key_usage ? o->ext_key_usage : "");
    if (!pki->key_usage || !pki->ext_key_usage) {
        s_fail(err, errlen, "out of memory");
        goto fail;
    }
    if (pki->cert_days <= 0 || pki->cert_days > 36500) {
        s_fail(err, errlen, "certificate lifetime %d days is out of range: use 1..36500",
               pki->cert_days);
        goto fail;
    }
    if (o->subject && o->subject[0] && !(pki->subject = s_parse_dn(o->subject))) {
        s_fail(err, errlen,
               "subject '%s' is not a DN like /O=Example/OU=Devices (known attribute names, "
               "no '/' inside values)",
               o->subject);
        goto fail;
    }
    if (s_load_pair(pki, o->ca_cert, o->ca_key, &pki->ca, &pki->ca_key, s_make_ca, created,
                    "device CA", err, errlen) < 0)
        goto fail;
    if (X509_check_ca(pki->ca) == 0) {
        s_fail(err, errlen, "%s is not a CA certificate (basicConstraints CA:TRUE missing)",
               o->ca_cert);
        goto fail;
    }
    if (s_is_rsa(pki->ca_key)) {
        pki->ra = pki->ca;
        pki->ra_key = pki->ca_key;
    } else {
        if (s_load_pair(pki, o->ra_cert, o->ra_key, &pki->ra, &pki->ra_key, s_make_ra, NULL,
                        "SCEP RA", err, errlen) < 0 ||
            s_check_issued(pki, pki->ra, "SCEP RA", o->ra_cert, err, errlen) < 0)
            goto fail;
        if (!s_is_rsa(pki->ra_key)) {
            s_fail(err, errlen, "the SCEP RA key %s must be RSA (SCEP encrypts to it)", o->ra_key);
            goto fail;
        }
    }
    if (s_load_pair(pki, o->signer_cert, o->signer_key, &pki->signer, &pki->signer_key,
                    s_make_signer, NULL, "profile signer", err, errlen) < 0 ||
        s_check_issued(pki, pki->signer, "profile signer", o->signer_cert, err, errlen) < 0)
        goto fail;
    //  the configured extensions must parse now, not at the first enrollment
    {
        EVP_PKEY *probe_key = pki->signer_key;
        X509_NAME *n = s_name_cn("probe");
        const int nids[] = {NID_key_usage, NID_ext_key_usage, 0};
        const char *const values[] = {pki->key_usage, pki->ext_key_usage, NULL};
        X509 *probe =
            n ? s_make_cert(probe_key, NULL, n, pki->ca, pki->ca_key, 1, nids, values) : NULL;
        X509_NAME_free(n);
        if (!probe) {
            s_fail(err, errlen,
                   "key-usage '%s' or ext-key-usage '%s' is not valid OpenSSL extension syntax "
                   "(e.g. critical,digitalSignature,keyEncipherment / clientAuth)",
                   pki->key_usage, pki->ext_key_usage);
            goto fail;
        }
        //  the device certificates' fixed extensions, as ca_pki_issue made
        //  them each time before (X509V3_EXT_conf_nid with the CA as issuer)
        X509V3_CTX ctx;
        X509V3_set_ctx(&ctx, pki->ca, probe, NULL, NULL, 0);
        pki->ext_bc = X509V3_EXT_conf_nid(NULL, &ctx, NID_basic_constraints, "critical,CA:FALSE");
        pki->ext_ku = pki->key_usage[0]
                          ? X509V3_EXT_conf_nid(NULL, &ctx, NID_key_usage, pki->key_usage)
                          : NULL;
        pki->ext_eku = pki->ext_key_usage[0]
                           ? X509V3_EXT_conf_nid(NULL, &ctx, NID_ext_key_usage, pki->ext_key_usage)
                           : NULL;
        pki->ext_aki =
            X509V3_EXT_conf_nid(NULL, &ctx, NID_authority_key_identifier, "keyid,issuer");
        X509_free(probe);
        if (!pki->ext_bc || (pki->key_usage[0] && !pki->ext_ku) ||
            (pki->ext_key_usage[0] && !pki->ext_eku) || !pki->ext_aki) {
            s_fail(err, errlen, "cannot make the device certificate extensions (OpenSSL failed)");
            goto fail;
        }
    }
    pki->store = X509_STORE_new();
    if (!pki->store || X509_STORE_add_cert(pki->store, pki->ca) != 1) {
        s_fail(err, errlen, "out of memory");
        goto fail;
    }
    return pki;
fail:
    ca_pki_destroy(&pki);
    return NULL;
}

void ca_pki_destroy(ca_pki_t **p)
{
    if (!p || !*p)
        return;
    ca_pki_t *pki = *p;
    if (pki->ra != pki->ca) {
        X509_free(pki->ra);
        EVP_PKEY_free(pki->ra_key);
    }
    X509_free(pki->ca);
    EVP_PKEY_free(pki->ca_key);
    X509_free(pki->signer);
    EVP_PKEY_free(pki->signer_key);
    X509_STORE_free(pki->store);
    X509_NAME_free(pki->subject);
    X509_EXTENSION_free(pki->ext_bc);
    X509_EXTENSION_free(pki->ext_ku);
    X509_EXTENSION_free(pki->ext_eku);
    X509_EXTENSION_free(pki->ext_aki);
    free(pki->key_usage);
    free(pki->ext_key_usage);
    free(pki);
    *p = NULL;
}

X509 *ca_pki_ca_cert(const ca_pki_t *pki)
{
    return pki->ca;
}
X509 *ca_pki_ra_cert(const ca_pki_t *pki)
{
    return pki->ra;
}
EVP_PKEY *ca_pki_ra_key(const ca_pki_t *pki)
{
    return pki->ra_key;
}
X509 *ca_pki_signer_cert(const ca_pki_t *pki)
{
    return pki->signer;
}
EVP_PKEY *ca_pki_signer_key(const ca_pki_t *pki)
{
    return pki->signer_key;
}
bool ca_pki_has_ra(const ca_pki_t *pki)
{
    return pki->ra != pki->ca;
}

int ca_pki_check_csr(const ca_pki_t *pki, X509_REQ *req, EVP_PKEY *pub, char *err, size_t errlen)
{
    if (!pub)
        pub = X509_REQ_get0_pubkey(req);
    if (!pub)
        return s_fail(err, errlen, "CSR has no usable public key");
    //  the default library context, whatever the CSR was parsed with (ca_scep)
    if (X509_REQ_verify_ex(req, pub, NULL, NULL) != 1)
        return s_fail(err, errlen, "CSR self-signature does not verify");
    int id = EVP_PKEY_get_base_id(pub);
    if (id == EVP_PKEY_RSA) {
        if (EVP_PKEY_get_bits(pub) < pki->min_rsa_bits)
            return s_fail(err, errlen, "CSR RSA key has %d bits, at least %d required",
                          EVP_PKEY_get_bits(pub), pki->min_rsa_bits);
    } else if (id != EVP_PKEY_EC) {
        return s_fail(err, errlen, "CSR key type is neither RSA nor EC");
    }
    return 0;
}

static X509_NAME *s_subject_for(const ca_pki_t *pki, X509_REQ *req)
{
    X509_NAME *from = X509_REQ_get_subject_name(req);
    if (!pki->subject)
        return X509_NAME_dup(from);
    X509_NAME *n = X509_NAME_dup(pki->subject);
    if (!n)
        return NULL;
    if (X509_NAME_get_index_by_NID(n, NID_commonName, -1) < 0) {
        int i = X509_NAME_get_index_by_NID(from, NID_commonName, -1);
        if (i >= 0 && !X509_NAME_add_entry(n, X509_NAME_get_entry(from, i), -1, 0)) {
            X509_NAME_free(n);
            return NULL;
        }
    }
    return n;
}

X509 *ca_pki_issue(ca_pki_t *pki, X509_REQ *req, EVP_PKEY *pub, const uint8_t *renews, char *err,
                   size_t errlen)
{
    X509_NAME *name = s_subject_for(pki, req);
    if (!name || X509_NAME_entry_count(name) == 0) {
        X509_NAME_free(name);
        s_fail(err, errlen, "CSR has an empty subject and no subject is configured");
        return NULL;
    }
    //  extensions in the order they always had: basicConstraints, keyUsage,
    //  extendedKeyUsage, SKI (the hash of this key), AKI, and for a renewal
    //  the certificate it replaces; one signature over all of them
    X509 *x = s_new_cert(pub ? pub : X509_REQ_get0_pubkey(req), X509_REQ_get_X509_PUBKEY(req), name,
                         pki->ca, pki->cert_days);
    X509_NAME_free(name);
    bool ok = x && X509_add_ext(x, pki->ext_bc, -1) == 1 &&
              (!pki->ext_ku || X509_add_ext(x, pki->ext_ku, -1) == 1) &&
              (!pki->ext_eku || X509_add_ext(x, pki->ext_eku, -1) == 1) &&
              s_add_ext(x, pki->ca, NID_subject_key_identifier, "hash") == 0 &&
              X509_add_ext(x, pki->ext_aki, -1) == 1 &&
              (!renews || pm_x509_set_renews(x, renews) == 0) &&
              X509_sign(x, pki->ca_key, EVP_sha256()) > 0;
    if (!ok) {
        X509_free(x);
        s_fail(err, errlen, "cannot issue the certificate (OpenSSL failed)");
        return NULL;
    }
    return x;
}

bool ca_pki_issued_by_us(const ca_pki_t *pki, X509 *cert)
{
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    bool ok =
        ctx && X509_STORE_CTX_init(ctx, pki->store, cert, NULL) == 1 && X509_verify_cert(ctx) == 1;
    X509_STORE_CTX_free(ctx);
    ERR_clear_error();
    return ok;
}

void ca_pki_subject_line(X509_NAME *name, char *buf, size_t size)
{
    buf[0] = 0;
    BIO *b = BIO_new(BIO_s_mem());
    if (!b)
        return;
    X509_NAME_print_ex(b, name, 0, XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB);
    int n = BIO_read(b, buf, (int)size - 1);
    buf[n > 0 ? n : 0] = 0;
    BIO_free(b);
}
