/*  cli_pki — first-start certificates for `picomdm up` (see cli_pki.h). */
#include "cli_pki.h"
#include "pm_pem.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define S_CA_DAYS 3650
#define S_TLS_DAYS 825
#define S_RENEW_DAYS 30

__attribute__((format(printf, 3, 4))) static int s_fail(char *err, size_t errlen, const char *fmt,
                                                        ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
        unsigned long e = ERR_get_error();
        if (e && n >= 0 && (size_t)n < errlen) {
            char why[160];
            ERR_error_string_n(e, why, sizeof why);
            snprintf(err + n, errlen - (size_t)n, " (%s)", why);
        }
    }
    ERR_clear_error();
    return -1;
}

static int s_add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ext)
        return -1;
    int rc = X509_add_ext(cert, ext, -1) ? 0 : -1;
    X509_EXTENSION_free(ext);
    return rc;
}

//  A self-signed certificate for `key` with the given subject CN, lifetime
//  and extensions (NULL-terminated nid/value pairs).
static X509 *s_self_signed(EVP_PKEY *key, const char *cn, int days, const int *nids,
                           const char *const *values)
{
    X509 *x = X509_new();
    BIGNUM *bn = BN_new();
    X509_NAME *name = X509_NAME_new();
    bool ok = x && bn && name;
    ok = ok && X509_set_version(x, 2);
    //  a random 127-bit serial (positive), as CAs are asked to use
    ok = ok && BN_rand(bn, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) &&
         BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    ok = ok && X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                                          (const unsigned char *)"PicoMDM", -1, -1, 0);
    ok = ok && X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1,
                                          -1, 0);
    ok = ok && X509_set_subject_name(x, name) && X509_set_issuer_name(x, name);
    ok = ok && X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
         X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400);
    ok = ok && X509_set_pubkey(x, key);
    for (int i = 0; ok && nids[i]; i++)
        ok = s_add_ext(x, x, nids[i], values[i]) == 0;
    ok = ok && X509_sign(x, key, EVP_sha256()) > 0;
    BN_free(bn);
    X509_NAME_free(name);
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

static int s_make(const char *cert_path, const char *key_path, const char *cn, int days,
                  const int *nids, const char *const *values, char *err, size_t errlen)
{
    int rc = -1;
    X509 *x = NULL;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    if (!key) {
        s_fail(err, errlen, "cannot generate a P-256 key");
        goto out;
    }
    x = s_self_signed(key, cn, days, nids, values);
    if (!x) {
        s_fail(err, errlen, "cannot make the certificate for %s", cn);
        goto out;
    }
    //  key first: a certificate without its key is useless, the reverse is redone
    if (pm_pem_write(key_path, 0600, NULL, key, err, errlen) < 0 ||
        pm_pem_write(cert_path, 0644, x, NULL, err, errlen) < 0)
        goto out;
    rc = 0;
out:
    X509_free(x);
    EVP_PKEY_free(key);
    return rc;
}

int cli_pki_ensure_ca(const char *cert_path, const char *key_path, const char *common_name,
                      bool *created, char *err, size_t errlen)
{
    *created = false;
    bool have_cert = access(cert_path, F_OK) == 0, have_key = access(key_path, F_OK) == 0;
    if (have_cert || have_key) {
        X509 *x = pm_pem_read_cert(cert_path);
        EVP_PKEY *k = pm_pem_read_key(key_path);
        int ok = x && k && X509_check_private_key(x, k);
        X509_free(x);
        EVP_PKEY_free(k);
        if (!ok)
            return s_fail(err, errlen,
                          "the device CA in %s / %s is incomplete or does not match; enrolled "
                          "devices depend on it, so it is not replaced: restore both files, or "
                          "move them away to make a new CA (devices must then re-enroll)",
                          cert_path, key_path);
        struct stat st;
        if (stat(key_path, &st) == 0 && (st.st_mode & 077))
            chmod(key_path, 0600); //  tighten a key someone made readable
        return 0;
    }
    static const int nids[] = {NID_basic_constraints, NID_key_usage, NID_subject_key_identifier, 0};
    static const char *const values[] = {"critical,CA:TRUE", "critical,keyCertSign,cRLSign", "hash",
                                         NULL};
    if (s_make(cert_path, key_path, common_name, S_CA_DAYS, nids, values, err, errlen) < 0)
        return -1;
    *created = true;
    return 0;
}

//  Does `x` cover every name in the comma-separated list?
static bool s_covers(X509 *x, const char *names)
{
    char *copy = strdup(names), *save = NULL;
    bool ok = copy != NULL;
    for (char *n = copy ? strtok_r(copy, ",", &save) : NULL; ok && n;
         n = strtok_r(NULL, ",", &save)) {
        unsigned char ip[16];
        if (inet_pton(AF_INET, n, ip) == 1 || inet_pton(AF_INET6, n, ip) == 1)
            ok = X509_check_ip_asc(x, n, 0) == 1;
        else
            ok = X509_check_host(x, n, 0, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL) == 1;
    }
    free(copy);
    return ok;
}

int cli_pki_ensure_tls(const char *cert_path, const char *key_path, const char *names,
                       bool *created, char *err, size_t errlen)
{
    *created = false;
    if (!names || !*names)
        return s_fail(err, errlen, "no host names for the TLS certificate");
    X509 *x = pm_pem_read_cert(cert_path);
    EVP_PKEY *k = x ? pm_pem_read_key(key_path) : NULL;
    bool reuse = x && k && X509_check_private_key(x, k) && s_covers(x, names);
    if (reuse) {
        time_t soon = time(NULL) + (time_t)S_RENEW_DAYS * 86400;
        reuse = X509_cmp_time(X509_get0_notAfter(x), &soon) > 0;
    }
    X509_free(x);
    EVP_PKEY_free(k);
    ERR_clear_error();
    if (reuse)
        return 0;

    //  subjectAltName: IP:... for addresses, DNS:... for the rest
    char san[2048];
    size_t used = 0;
    char *copy = strdup(names), *save = NULL;
    if (!copy)
        return s_fail(err, errlen, "out of memory");
    const char *first = NULL;
    for (char *n = strtok_r(copy, ",", &save); n; n = strtok_r(NULL, ",", &save)) {
        unsigned char ip[16];
        bool is_ip = inet_pton(AF_INET, n, ip) == 1 || inet_pton(AF_INET6, n, ip) == 1;
        int w = snprintf(san + used, sizeof san - used, "%s%s:%s", used ? "," : "",
                         is_ip ? "IP" : "DNS", n);
        if (w < 0 || (size_t)w >= sizeof san - used) {
            free(copy);
            return s_fail(err, errlen, "too many host names for the TLS certificate");
        }
        used += (size_t)w;
        if (!first && !is_ip)
            first = n;
    }
    char cn[256];
    snprintf(cn, sizeof cn, "%s", first ? first : "localhost");
    free(copy);
    const int nids[] = {NID_basic_constraints, NID_key_usage, NID_ext_key_usage,
                        NID_subject_alt_name, 0};
    const char *const values[] = {"critical,CA:FALSE", "critical,digitalSignature", "serverAuth",
                                  san, NULL};
    if (s_make(cert_path, key_path, cn, S_TLS_DAYS, nids, values, err, errlen) < 0)
        return -1;
    *created = true;
    return 0;
}

int cli_pki_fingerprint(const char *cert_path, char *buf, size_t size)
{
    X509 *x = pm_pem_read_cert(cert_path);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    int rc = -1;
    if (x && X509_digest(x, EVP_sha256(), md, &n) && size >= (size_t)n * 3) {
        for (unsigned int i = 0; i < n; i++)
            snprintf(buf + i * 3, size - i * 3, "%02X%s", md[i], i + 1 < n ? ":" : "");
        rc = 0;
    }
    X509_free(x);
    ERR_clear_error();
    return rc;
}
