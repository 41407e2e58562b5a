/*  push_cert — the MDM push certificate: loading (PEM / PKCS#12), topic,
 *  validity. See push_cert.h.
 */
#include "push_cert.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_FILE_MAX (1024 * 1024) //  a certificate file larger than this is not one

struct push_cert {
    X509 *x509;
    EVP_PKEY *key;
    char topic[PUSH_CERT_TOPIC_MAX];
    char *subject;
    char *issuer;
    time_t not_before, not_after;
};

static void s_ossl_reason(char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    if (e)
        ERR_error_string_n(e, buf, len);
    else
        snprintf(buf, len, "no detail");
    ERR_clear_error();
}

//  Whole file into memory (bounded). Returns NULL with err set.
static unsigned char *s_slurp(const char *path, size_t *len, char *err, size_t errlen)
{
    unsigned char *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s: %m (check the path in the configuration)", path);
        return NULL;
    }
    buf = malloc(S_FILE_MAX + 1);
    size_t n = buf ? fread(buf, 1, S_FILE_MAX + 1, f) : 0;
    fclose(f);
    if (!buf || n == 0 || n > S_FILE_MAX) {
        snprintf(err, errlen, "%s is empty or larger than %d bytes: not a certificate file", path,
                 S_FILE_MAX);
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static char *s_name_line(const X509_NAME *name)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL;
    if (!b)
        return NULL;
    if (X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253) >= 0) {
        char *p = NULL;
        long n = BIO_get_mem_data(b, &p);
        out = malloc((size_t)n + 1);
        if (out) {
            memcpy(out, p, (size_t)n);
            out[n] = 0;
        }
    }
    BIO_free(b);
    return out;
}

static time_t s_asn1_time(const ASN1_TIME *t)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return timegm(&tm);
}

int push_cert_topic_of(X509 *x, char *out, size_t outlen)
{
    if (!x || outlen == 0)
        return -1;
    out[0] = 0;
    X509_NAME *name = X509_get_subject_name(x);
    int i = X509_NAME_get_index_by_NID(name, NID_userId, -1);
    if (i < 0)
        return -1;
    ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
    unsigned char *utf8 = NULL;
    int n = ASN1_STRING_to_UTF8(&utf8, s);
    int rc = -1;
    if (n > 0 && (size_t)n < outlen && memchr(utf8, 0, (size_t)n) == NULL) {
        memcpy(out, utf8, (size_t)n);
        out[n] = 0;
        rc = 0;
    }
    OPENSSL_free(utf8);
    return rc;
}

//  PKCS#12: certificate and key out of the container.
static int s_load_p12(push_cert_t *c, const unsigned char *data, size_t len, const char *password,
                      const char *path, char *err, size_t errlen)
{
    const unsigned char *p = data;
    PKCS12 *p12 = d2i_PKCS12(NULL, &p, (long)len);
    if (!p12)
        return 1; //  not PKCS#12 either
    STACK_OF(X509) *ca = NULL;
    int rc = 0;
    if (!PKCS12_parse(p12, password ? password : "", &c->key, &c->x509, &ca)) {
        char why[256];
        s_ossl_reason(why, sizeof why);
        snprintf(err, errlen,
                 "%s is PKCS#12 but cannot be opened (%s): check the password option "
                 "(push-cert-password)",
                 path, why);
        rc = -1;
    }
    sk_X509_pop_free(ca, X509_free);
    PKCS12_free(p12);
    return rc;
}

push_cert_t *push_cert_load(const char *cert_path, const char *key_path, const char *password,
                            bool need_key, char *err, size_t errlen)
{
    push_cert_t *c = calloc(1, sizeof *c);
    unsigned char *data = NULL;
    size_t len = 0;
    BIO *b = NULL;
    if (!c) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (!cert_path || !*cert_path) {
        snprintf(err, errlen, "no push certificate configured: set push-cert (PEM or .p12)");
        goto fail;
    }
    data = s_slurp(cert_path, &len, err, errlen);
    if (!data)
        goto fail;
    b = BIO_new_mem_buf(data, (int)len);
    if (b)
        c->x509 = PEM_read_bio_X509(b, NULL, NULL, NULL);
    if (c->x509) {
        //  the key may follow in the same file
        if (!key_path) {
            BIO *kb = BIO_new_mem_buf(data, (int)len); //  the key may come before or after
            if (kb)
                c->key =
                    PEM_read_bio_PrivateKey(kb, NULL, NULL, (void *)(password ? password : ""));
            BIO_free(kb);
        }
    } else {
        ERR_clear_error();
        int r = s_load_p12(c, data, len, password, cert_path, err, errlen);
        if (r < 0)
            goto fail;
        if (r > 0 || !c->x509) {
            snprintf(err, errlen,
                     "%s holds neither a PEM certificate nor a PKCS#12 bundle: give the push "
                     "certificate Apple issued (PEM) or its .p12 export",
                     cert_path);
            goto fail;
        }
    }
    ERR_clear_error();
    if (key_path && *key_path) {
        BIO_free(b);
        b = NULL;
        free(data);
        data = s_slurp(key_path, &len, err, errlen);
        if (!data)
            goto fail;
        b = BIO_new_mem_buf(data, (int)len);
        EVP_PKEY_free(c->key);
        c->key =
            b ? PEM_read_bio_PrivateKey(b, NULL, NULL, (void *)(password ? password : "")) : NULL;
        if (!c->key) {
            char why[256];
            s_ossl_reason(why, sizeof why);
            snprintf(err, errlen,
                     "%s is not a PEM private key (%s): give the key made with `picomdm pushcert "
                     "new`",
                     key_path, why);
            goto fail;
        }
    }
    if (need_key && !c->key) {
        snprintf(err, errlen,
                 "no private key for %s: put it in the same PEM file, set push-key, or use the "
                 ".p12 export",
                 cert_path);
        goto fail;
    }
    if (c->key && X509_check_private_key(c->x509, c->key) != 1) {
        ERR_clear_error();
        if (need_key) {
            snprintf(err, errlen,
                     "the private key does not belong to the certificate %s: use the key the CSR "
                     "was made with",
                     cert_path);
            goto fail;
        }
    }
    push_cert_topic_of(c->x509, c->topic, sizeof c->topic);
    c->subject = s_name_line(X509_get_subject_name(c->x509));
    c->issuer = s_name_line(X509_get_issuer_name(c->x509));
    c->not_before = s_asn1_time(X509_get0_notBefore(c->x509));
    c->not_after = s_asn1_time(X509_get0_notAfter(c->x509));
    BIO_free(b);
    if (data)
        OPENSSL_cleanse(data, len);
    free(data);
    return c;
fail:
    BIO_free(b);
    if (data)
        OPENSSL_cleanse(data, len);
    free(data);
    push_cert_destroy(&c);
    return NULL;
}

void push_cert_destroy(push_cert_t **cert)
{
    if (!cert || !*cert)
        return;
    push_cert_t *c = *cert;
    X509_free(c->x509);
    EVP_PKEY_free(c->key);
    free(c->subject);
    free(c->issuer);
    free(c);
    *cert = NULL;
}

const char *push_cert_topic(const push_cert_t *cert)
{
    return cert->topic;
}

const char *push_cert_subject(const push_cert_t *cert)
{
    return cert->subject ? cert->subject : "";
}

const char *push_cert_issuer(const push_cert_t *cert)
{
    return cert->issuer ? cert->issuer : "";
}

time_t push_cert_not_after(const push_cert_t *cert)
{
    return cert->not_after;
}

time_t push_cert_not_before(const push_cert_t *cert)
{
    return cert->not_before;
}

X509 *push_cert_x509(const push_cert_t *cert)
{
    return cert->x509;
}

EVP_PKEY *push_cert_key(const push_cert_t *cert)
{
    return cert->key;
}

bool push_cert_key_matches(const push_cert_t *cert)
{
    if (!cert->key)
        return false;
    bool ok = X509_check_private_key(cert->x509, cert->key) == 1;
    ERR_clear_error();
    return ok;
}

push_cert_state_t push_cert_state(const push_cert_t *cert, time_t now, int *days_left)
{
    double left = difftime(cert->not_after, now);
    if (days_left)
        *days_left = (int)(left >= 0 ? left / 86400 : -((-left + 86399) / 86400));
    if (now < cert->not_before)
        return PUSH_CERT_NOT_YET_VALID;
    if (left < 0)
        return PUSH_CERT_EXPIRED;
    if (left < PUSH_CERT_WARN_DAYS * 86400.0)
        return PUSH_CERT_EXPIRING;
    return PUSH_CERT_VALID;
}

const char *push_cert_state_name(push_cert_state_t s)
{
    switch (s) {
    case PUSH_CERT_VALID:
        return "valid";
    case PUSH_CERT_EXPIRING:
        return "expiring";
    case PUSH_CERT_EXPIRED:
        return "expired";
    case PUSH_CERT_NOT_YET_VALID:
        return "not yet valid";
    }
    return "?";
}

static int s_bio_take(BIO *b, char **out, size_t *len)
{
    char *p = NULL;
    long n = BIO_get_mem_data(b, &p);
    if (n <= 0 || !(*out = malloc((size_t)n + 1)))
        return -1;
    memcpy(*out, p, (size_t)n);
    (*out)[n] = 0;
    *len = (size_t)n;
    return 0;
}

int push_cert_pem(const push_cert_t *cert, char **cert_pem, size_t *cert_len, char **key_pem,
                  size_t *key_len)
{
    int rc = -1;
    BIO *bc = BIO_new(BIO_s_mem()), *bk = BIO_new(BIO_s_mem());
    *cert_pem = *key_pem = NULL;
    if (!bc || !bk || !cert->key)
        goto out;
    if (PEM_write_bio_X509(bc, cert->x509) != 1 ||
        PEM_write_bio_PrivateKey(bk, cert->key, NULL, NULL, 0, NULL, NULL) != 1)
        goto out;
    if (s_bio_take(bc, cert_pem, cert_len) < 0 || s_bio_take(bk, key_pem, key_len) < 0)
        goto out;
    rc = 0;
out:
    if (rc < 0) {
        free(*cert_pem);
        free(*key_pem);
        *cert_pem = *key_pem = NULL;
    }
    BIO_free(bc);
    BIO_free_all(bk); //  a mem BIO frees (not cleanses) its buffer: acceptable for a copy
    ERR_clear_error();
    return rc;
}
