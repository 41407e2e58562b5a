/*  devsim_scep — profile download + SCEP enrollment/renewal for picomdm-devsim
 *  (see devsim_scep.h). Keys follow Apple's mdm/profiles/com.apple.security.scep
 *  and com.apple.mdm schema files.
 */
#include "devsim_scep.h"
#include "pm_log.h"
#include "pm_scepc.h"

#include <curl/curl.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/pkcs7.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <plist/plist.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_MAX_BODY (1024 * 1024) //  profile / SCEP replies larger than this are refused

typedef struct {
    unsigned char *data;
    size_t len;
    bool too_big;
} s_buf_t;

static size_t s_on_data(char *ptr, size_t size, size_t nmemb, void *arg)
{
    s_buf_t *b = arg;
    size_t n = size * nmemb;
    if (b->len + n > S_MAX_BODY) {
        b->too_big = true;
        return 0;
    }
    unsigned char *p = realloc(b->data, b->len + n + 1);
    if (!p)
        return 0;
    memcpy(p + b->len, ptr, n);
    b->data = p;
    b->len += n;
    p[b->len] = 0;
    return n;
}

//  One HTTP request. 0 with the body in *out (caller frees out->data) and the
//  HTTP status; -1 on a transport error (err says why).
static int s_http(const devsim_scep_opts_t *o, const char *url, const void *post, size_t postlen,
                  const char *ctype, s_buf_t *out, long *status, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    CURL *c = o->conn && *o->conn ? *o->conn : curl_easy_init();
    struct curl_slist *hdr = NULL;
    int rc = -1;
    if (c && o->conn && *o->conn)
        curl_easy_reset(c); //  options only: the live connection stays
    else if (c && o->conn)
        *o->conn = c;
    if (!c) {
        snprintf(err, errlen, "curl_easy_init failed");
        return -1;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s_on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, o->timeout_ms > 0 ? o->timeout_ms : 30000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (o->ca_bundle)
        curl_easy_setopt(c, CURLOPT_CAINFO, o->ca_bundle);
    if (o->insecure) {
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (post) {
        hdr = curl_slist_append(NULL, ctype ? ctype : "Content-Type: application/octet-stream");
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, post);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)postlen);
    }
    CURLcode cc = curl_easy_perform(c);
    if (cc != CURLE_OK) {
        snprintf(err, errlen, "%s: %s%s", url, curl_easy_strerror(cc),
                 out->too_big ? " (reply too large)" : "");
        free(out->data);
        memset(out, 0, sizeof *out);
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    if (o->verbose)
        fprintf(stderr, "devsim: %s %s -> %ld (%zu bytes)\n", post ? "POST" : "GET", url, *status,
                out->len);
    rc = 0;
out:
    curl_slist_free_all(hdr);
    if (!o->conn)
        curl_easy_cleanup(c);
    return rc;
}

void devsim_scep_conn_close(void **conn)
{
    if (conn && *conn) {
        curl_easy_cleanup(*conn);
        *conn = NULL;
    }
}

static int s_scep_get(const devsim_scep_opts_t *o, const char *scep_url, const char *op,
                      s_buf_t *out, char *err, size_t errlen)
{
    char url[700];
    snprintf(url, sizeof url, "%s%coperation=%s", scep_url, strchr(scep_url, '?') ? '&' : '?', op);
    long st = 0;
    if (s_http(o, url, NULL, 0, NULL, out, &st, err, errlen) < 0)
        return -1;
    if (st != 200) {
        snprintf(err, errlen, "SCEP %s: HTTP %ld", op, st);
        free(out->data);
        out->data = NULL;
        return -1;
    }
    return 0;
}

//  GetCACert: one DER certificate (CA = RA), or a degenerate PKCS#7 with the
//  RA (not self-signed) and the CA (self-signed).
static int s_get_ca(const devsim_scep_opts_t *o, const char *scep_url, X509 **ca, X509 **ra,
                    char *err, size_t errlen)
{
    s_buf_t b;
    if (s_scep_get(o, scep_url, "GetCACert", &b, err, errlen) < 0)
        return -1;
    int rc = -1;
    const unsigned char *p = b.data;
    X509 *one = d2i_X509(NULL, &p, (long)b.len);
    //  references, not copies: X509_dup re-encodes and decodes the key again
    //  (an OpenSSL 3.0 decoder set-up per copy, a tenth of a device's CPU)
    if (one && p == b.data + b.len) {
        *ca = one;
        *ra = X509_up_ref(one) ? one : NULL;
        rc = *ra ? 0 : -1;
        goto out;
    }
    X509_free(one);
    p = b.data;
    PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)b.len);
    STACK_OF(X509) *certs = p7 && PKCS7_type_is_signed(p7) ? p7->d.sign->cert : NULL;
    for (int i = 0; certs && i < sk_X509_num(certs); i++) {
        X509 *x = sk_X509_value(certs, i);
        bool self = X509_check_issued(x, x) == X509_V_OK;
        if (self && !*ca)
            *ca = X509_up_ref(x) ? x : NULL;
        else if (!self && !*ra)
            *ra = X509_up_ref(x) ? x : NULL;
    }
    PKCS7_free(p7);
    if (!*ca || !*ra) {
        X509_free(*ca);
        X509_free(*ra);
        *ca = *ra = NULL;
        snprintf(err, errlen, "GetCACert: neither a certificate nor an RA + CA PKCS#7");
        goto out;
    }
    rc = 0;
out:
    free(b.data);
    ERR_clear_error();
    return rc;
}

/* ---- the profile ---- */

static const char *s_str(plist_t dict, const char *key, char *buf, size_t size)
{
    plist_t n = plist_dict_get_item(dict, key);
    buf[0] = 0;
    if (!n || plist_get_node_type(n) != PLIST_STRING)
        return NULL;
    char *v = NULL;
    plist_get_string_val(n, &v);
    if (!v)
        return NULL;
    snprintf(buf, size, "%s", v);
    free(v);
    return buf;
}

//  Subject: [[["O","org"]],[["CN","name"]]] (an array of RDNs of pairs).
static X509_NAME *s_subject(plist_t arr)
{
    X509_NAME *n = X509_NAME_new();
    if (!n || !arr || plist_get_node_type(arr) != PLIST_ARRAY)
        goto fail;
    for (uint32_t i = 0; i < plist_array_get_size(arr); i++) {
        plist_t rdn = plist_array_get_item(arr, i);
        if (plist_get_node_type(rdn) != PLIST_ARRAY)
            goto fail;
        for (uint32_t j = 0; j < plist_array_get_size(rdn); j++) {
            plist_t pair = plist_array_get_item(rdn, j);
            if (plist_get_node_type(pair) != PLIST_ARRAY || plist_array_get_size(pair) != 2)
                goto fail;
            char *k = NULL, *v = NULL;
            plist_t pk = plist_array_get_item(pair, 0), pv = plist_array_get_item(pair, 1);
            if (plist_get_node_type(pk) == PLIST_STRING)
                plist_get_string_val(pk, &k);
            if (plist_get_node_type(pv) == PLIST_STRING)
                plist_get_string_val(pv, &v);
            int ok = k && v &&
                     X509_NAME_add_entry_by_txt(n, k, MBSTRING_UTF8, (const unsigned char *)v, -1,
                                                -1, 0);
            free(k);
            free(v);
            if (!ok)
                goto fail;
        }
    }
    if (X509_NAME_entry_count(n) == 0)
        goto fail;
    return n;
fail:
    X509_NAME_free(n);
    return NULL;
}

void devsim_profile_destroy(devsim_profile_t **pp)
{
    if (!pp || !*pp)
        return;
    devsim_profile_t *p = *pp;
    OPENSSL_cleanse(p->challenge, sizeof p->challenge);
    X509_NAME_free(p->subject);
    X509_free(p->ca);
    X509_free(p->ra);
    free(p);
    *pp = NULL;
}

//  The payloads of the (not yet verified) plist into p.
static int s_read_payloads(devsim_profile_t *p, plist_t root, char *err, size_t errlen)
{
    plist_t content = plist_dict_get_item(root, "PayloadContent");
    if (!content || plist_get_node_type(content) != PLIST_ARRAY) {
        snprintf(err, errlen, "profile has no PayloadContent array");
        return -1;
    }
    bool have_scep = false, have_mdm = false;
    char scep_uuid[64] = "", type[128];
    for (uint32_t i = 0; i < plist_array_get_size(content); i++) {
        plist_t pl = plist_array_get_item(content, i);
        if (plist_get_node_type(pl) != PLIST_DICT || !s_str(pl, "PayloadType", type, sizeof type))
            continue;
        if (strcmp(type, "com.apple.security.scep") == 0) {
            plist_t c = plist_dict_get_item(pl, "PayloadContent");
            if (!c || plist_get_node_type(c) != PLIST_DICT ||
                !s_str(c, "URL", p->scep_url, sizeof p->scep_url) ||
                !s_str(pl, "PayloadUUID", scep_uuid, sizeof scep_uuid)) {
                snprintf(err, errlen, "SCEP payload lacks URL or PayloadUUID");
                return -1;
            }
            s_str(c, "Challenge", p->challenge, sizeof p->challenge);
            uint64_t ks = 2048;
            plist_t k = plist_dict_get_item(c, "Keysize");
            if (k && plist_get_node_type(k) == PLIST_UINT)
                plist_get_uint_val(k, &ks);
            if (ks < 1024 || ks > 4096) {
                snprintf(err, errlen, "SCEP Keysize %llu is not 1024..4096",
                         (unsigned long long)ks);
                return -1;
            }
            p->keysize = (int)ks;
            p->subject = s_subject(plist_dict_get_item(c, "Subject"));
            if (!p->subject) {
                snprintf(err, errlen, "SCEP Subject is missing or not [[[\"O\",...]],...]");
                return -1;
            }
            have_scep = true;
        } else if (strcmp(type, "com.apple.mdm") == 0) {
            if (!s_str(pl, "ServerURL", p->server_url, sizeof p->server_url) ||
                !s_str(pl, "Topic", p->topic, sizeof p->topic) ||
                !s_str(pl, "IdentityCertificateUUID", p->identity_uuid, sizeof p->identity_uuid)) {
                snprintf(err, errlen,
                         "MDM payload lacks ServerURL, Topic or "
                         "IdentityCertificateUUID");
                return -1;
            }
            if (!s_str(pl, "CheckInURL", p->checkin_url, sizeof p->checkin_url))
                snprintf(p->checkin_url, sizeof p->checkin_url, "%s", p->server_url);
            uint8_t b = 0;
            plist_t sm = plist_dict_get_item(pl, "SignMessage");
            if (sm && plist_get_node_type(sm) == PLIST_BOOLEAN)
                plist_get_bool_val(sm, &b);
            p->sign_message = b;
            have_mdm = true;
        }
    }
    if (!have_scep || !have_mdm) {
        snprintf(err, errlen, "profile lacks the %s payload",
                 !have_scep ? "com.apple.security.scep" : "com.apple.mdm");
        return -1;
    }
    //  A device installs the MDM payload only with the identity it names.
    if (strcmp(p->identity_uuid, scep_uuid) != 0) {
        snprintf(err, errlen,
                 "IdentityCertificateUUID %s is not the SCEP payload's PayloadUUID %s: refused",
                 p->identity_uuid, scep_uuid);
        return -1;
    }
    return 0;
}

devsim_profile_t *devsim_profile_parse(const unsigned char *der, size_t len, X509 *ca,
                                       const devsim_scep_opts_t *o, char *err, size_t errlen)
{
    devsim_profile_t *p = calloc(1, sizeof *p);
    BIO *in = BIO_new_mem_buf(der, (int)len), *out = BIO_new(BIO_s_mem());
    CMS_ContentInfo *cms = in ? d2i_CMS_bio(in, NULL) : NULL;
    X509_STORE *store = X509_STORE_new();
    plist_t root = NULL;
    bool ok = false;
    if (!p || !out || !store)
        goto out;
    if (!cms || OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_signed) {
        snprintf(err, errlen, "the profile is not a CMS SignedData (not a signed .mobileconfig)");
        goto out;
    }
    //  Read the content first (the SCEP URL says where the CA is), verify next.
    ASN1_OCTET_STRING **pc = CMS_get0_content(cms);
    if (!pc || !*pc || ASN1_STRING_length(*pc) <= 0) {
        snprintf(err, errlen, "the profile's CMS has no embedded content");
        goto out;
    }
    plist_from_memory((const char *)ASN1_STRING_get0_data(*pc), (uint32_t)ASN1_STRING_length(*pc),
                      &root);
    if (!root || plist_get_node_type(root) != PLIST_DICT) {
        snprintf(err, errlen, "the profile's content is not a plist dictionary");
        goto out;
    }
    if (s_read_payloads(p, root, err, errlen) < 0)
        goto out;
    if (s_get_ca(o, p->scep_url, &p->ca, &p->ra, err, errlen) < 0)
        goto out;
    if (ca && X509_cmp(ca, p->ca) != 0) {
        snprintf(err, errlen, "the SCEP server's CA is not the expected device CA");
        goto out;
    }
    //  Trust: the signer must chain to the device CA from GetCACert.
    X509_STORE_add_cert(store, p->ca);
    X509_STORE_set_purpose(store, X509_PURPOSE_ANY);
    if (CMS_verify(cms, NULL, store, NULL, out, CMS_BINARY) != 1) {
        unsigned long e = ERR_peek_last_error();
        snprintf(err, errlen, "the profile's signature does not verify to the device CA: %s",
                 e ? ERR_reason_error_string(e) : "?");
        goto out;
    }
    ok = true;
out:
    plist_free(root);
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    BIO_free(out);
    X509_STORE_free(store);
    ERR_clear_error();
    if (!ok)
        devsim_profile_destroy(&p);
    return p;
}

devsim_profile_t *devsim_profile_fetch(const char *url, const devsim_scep_opts_t *o, char *err,
                                       size_t errlen)
{
    s_buf_t b;
    long st = 0;
    if (s_http(o, url, NULL, 0, NULL, &b, &st, err, errlen) < 0)
        return NULL;
    devsim_profile_t *p = NULL;
    if (st != 200)
        snprintf(err, errlen, "enrollment profile %s: HTTP %ld", url, st);
    else
        p = devsim_profile_parse(b.data, b.len, NULL, o, err, errlen);
    free(b.data);
    return p;
}

/* ---- SCEP ---- */

static int s_pkiop(const devsim_profile_t *p, const devsim_scep_opts_t *o, int type, X509_REQ *csr,
                   X509 *signer, EVP_PKEY *signer_key, EVP_PKEY *newkey, devsim_ident_t **id,
                   char *err, size_t errlen)
{
    uint8_t nonce[16], rnd[16], *der = NULL;
    size_t len = 0;
    char txid[40];
    s_buf_t b = {0};
    int rc = -1;
    pm_scepc_result_t res = {0};
    if (RAND_bytes(nonce, sizeof nonce) != 1 || RAND_bytes(rnd, sizeof rnd) != 1)
        goto out;
    for (int i = 0; i < 16; i++)
        snprintf(txid + 2 * i, 3, "%02X", rnd[i]);
    if (pm_scepc_request(type, csr, signer, signer_key, p->ra, txid, nonce, &der, &len) < 0) {
        snprintf(err, errlen, "cannot build the SCEP request");
        goto out;
    }
    char url[700];
    snprintf(url, sizeof url, "%s%coperation=PKIOperation", p->scep_url,
             strchr(p->scep_url, '?') ? '&' : '?');
    long st = 0;
    if (s_http(o, url, der, len, "Content-Type: application/x-pki-message", &b, &st, err, errlen) <
        0)
        goto out;
    if (st != 200) {
        snprintf(err, errlen, "SCEP PKIOperation: HTTP %ld", st);
        goto out;
    }
    if (pm_scepc_parse_reply(b.data, b.len, p->ra, signer, signer_key, &res, err, errlen) < 0)
        goto out;
    if (strcmp(res.txid, txid) != 0 || res.recipient_nonce_len != 16 ||
        memcmp(res.recipient_nonce, nonce, 16) != 0) {
        snprintf(err, errlen, "CertRep transactionID or recipientNonce does not match the request");
        goto out;
    }
    if (res.pki_status != PM_SCEP_SUCCESS) {
        snprintf(err, errlen, "SCEP FAILURE failInfo %d (pkiStatus %d)", res.fail_info,
                 res.pki_status);
        goto out;
    }
    //  the certificate must chain to the CA and carry our new key
    if (X509_check_issued(p->ca, res.cert) != X509_V_OK ||
        X509_verify(res.cert, X509_get0_pubkey(p->ca)) != 1) {
        snprintf(err, errlen, "the issued certificate is not signed by the device CA");
        goto out;
    }
    EVP_PKEY *k = newkey;
    if (!EVP_PKEY_up_ref(k))
        goto out;
    *id = devsim_ident_adopt(&res.cert, &k);
    EVP_PKEY_free(k);
    if (!*id) {
        snprintf(err, errlen, "the issued certificate does not carry our key");
        goto out;
    }
    rc = 0;
out:
    X509_free(res.cert);
    OPENSSL_free(der);
    free(b.data);
    ERR_clear_error();
    return rc;
}

int devsim_scep_enroll(const devsim_profile_t *p, const devsim_scep_opts_t *o, devsim_ident_t **id,
                       char *err, size_t errlen)
{
    s_buf_t caps = {0};
    EVP_PKEY *key = NULL;
    X509_REQ *csr = NULL;
    X509 *self = NULL;
    int rc = -1;
    if (s_scep_get(o, p->scep_url, "GetCACaps", &caps, err, errlen) < 0)
        goto out;
    if (!caps.data || !strstr((char *)caps.data, "POSTPKIOperation")) {
        snprintf(err, errlen, "GetCACaps lacks POSTPKIOperation");
        goto out;
    }
    if (o->key && EVP_PKEY_is_a(o->key, "RSA") && EVP_PKEY_get_bits(o->key) == p->keysize &&
        EVP_PKEY_up_ref(o->key) == 1)
        key = o->key;
    else
        key = EVP_RSA_gen((unsigned)p->keysize);
    csr = key ? pm_scepc_csr_name(key, p->subject, p->challenge[0] ? p->challenge : NULL) : NULL;
    self = key ? pm_scepc_self_signed(key, "devsim SCEP transient") : NULL;
    if (!csr || !self) {
        snprintf(err, errlen, "cannot make the key and request");
        goto out;
    }
    rc = s_pkiop(p, o, PM_SCEP_PKCSREQ, csr, self, key, key, id, err, errlen);
out:
    free(caps.data);
    EVP_PKEY_free(key);
    X509_REQ_free(csr);
    X509_free(self);
    return rc;
}

int devsim_scep_renew(const devsim_profile_t *p, const devsim_scep_opts_t *o,
                      const devsim_ident_t *old, devsim_ident_t **id, char *err, size_t errlen)
{
    EVP_PKEY *key = EVP_RSA_gen((unsigned)p->keysize);
    X509_REQ *csr =
        key ? pm_scepc_csr_name(key, X509_get_subject_name(devsim_ident_cert(old)), NULL) : NULL;
    int rc = -1;
    if (!csr)
        snprintf(err, errlen, "cannot make the renewal key and request");
    else
        rc = s_pkiop(p, o, PM_SCEP_RENEWALREQ, csr, devsim_ident_cert(old), devsim_ident_key(old),
                     key, id, err, errlen);
    EVP_PKEY_free(key);
    X509_REQ_free(csr);
    return rc;
}

int devsim_url_split(const char *url, char *base, size_t bsize, char *path, size_t psize)
{
    const char *s = strstr(url, "://");
    const char *slash = s ? strchr(s + 3, '/') : NULL;
    if (!s || !slash || (size_t)(slash - url) >= bsize || strlen(slash) >= psize)
        return -1;
    memcpy(base, url, (size_t)(slash - url));
    base[slash - url] = 0;
    snprintf(path, psize, "%s", slash);
    return 0;
}
