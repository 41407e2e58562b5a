/*  pm_x509 — the "renews" certificate extension (see pm_x509.h). */
#include "pm_x509.h"

#include <openssl/asn1.h>
#include <openssl/objects.h>
#include <openssl/x509v3.h>
#include <string.h>

static ASN1_OBJECT *s_oid(void)
{
    return OBJ_txt2obj(PM_X509_OID_RENEWS, 1);
}

int pm_x509_set_renews(X509 *cert, const uint8_t prev_sha256[32])
{
    int rc = -1;
    ASN1_OBJECT *oid = s_oid();
    ASN1_OCTET_STRING *inner = ASN1_OCTET_STRING_new();
    ASN1_OCTET_STRING *value = ASN1_OCTET_STRING_new();
    X509_EXTENSION *ext = NULL;
    unsigned char *der = NULL;
    if (!oid || !inner || !value || !ASN1_OCTET_STRING_set(inner, prev_sha256, 32))
        goto out;
    int len = i2d_ASN1_OCTET_STRING(inner, &der);
    if (len <= 0 || !ASN1_OCTET_STRING_set(value, der, len))
        goto out;
    ext = X509_EXTENSION_create_by_OBJ(NULL, oid, 0, value);
    if (ext && X509_add_ext(cert, ext, -1) == 1)
        rc = 0;
out:
    OPENSSL_free(der);
    X509_EXTENSION_free(ext);
    ASN1_OCTET_STRING_free(value);
    ASN1_OCTET_STRING_free(inner);
    ASN1_OBJECT_free(oid);
    return rc;
}

int pm_x509_get_renews(const X509 *cert, uint8_t out[32])
{
    ASN1_OBJECT *oid = s_oid();
    if (!oid)
        return -1;
    int i = X509_get_ext_by_OBJ(cert, oid, -1);
    ASN1_OBJECT_free(oid);
    if (i < 0)
        return 0;
    X509_EXTENSION *ext = X509_get_ext(cert, i);
    ASN1_OCTET_STRING *value = ext ? X509_EXTENSION_get_data(ext) : NULL;
    if (!value)
        return -1;
    const unsigned char *p = ASN1_STRING_get0_data(value);
    ASN1_OCTET_STRING *inner = d2i_ASN1_OCTET_STRING(NULL, &p, ASN1_STRING_length(value));
    int rc = -1;
    //  exactly one OCTET STRING of 32 bytes, nothing after it
    if (inner && ASN1_STRING_length(inner) == 32 &&
        p == ASN1_STRING_get0_data(value) + ASN1_STRING_length(value)) {
        memcpy(out, ASN1_STRING_get0_data(inner), 32);
        rc = 1;
    }
    ASN1_OCTET_STRING_free(inner);
    return rc;
}
