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

//  GetCACert's reply: one DER certificate (CA = RA), or a degenerate PKCS#7
//  with the RA (not self-signed) and the CA (self-signed).
static int s_parse_ca(const unsigned char *der, size_t len, X509 **ca, X509 **ra, char *err,
                      size_t errlen)
{
    int rc = -1;
    const unsigned char *p = der;
    X509 *one = d2i_X509(NULL, &p, (long)len);
    //  references, not copies: X509_dup re-encodes and decodes the key again
    //  (an OpenSSL 3.0 decoder set-up per copy, a tenth of a device's CPU)
    if (one && p == der + len) {
        *ca = one;
        *ra = X509_up_ref(one) ? one : NULL;
        rc = *ra ? 0 : -1;
        goto out;
    }
    X509_free(one);
    p = der;
    PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)len);
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

//  The profile's CMS and its payloads (not verified yet: the SCEP URL it names
//  says where the CA to verify it with is). *cms is the caller's.
static devsim_profile_t *s_profile_read(const unsigned char *der, size_t len, CMS_ContentInfo **cms,
                                        char *err, size_t errlen)
{
    devsim_profile_t *p = calloc(1, sizeof *p);
    BIO *in = BIO_new_mem_buf(der, (int)len);
    plist_t root = NULL;
    bool ok = false;
    *cms = in ? d2i_CMS_bio(in, NULL) : NULL;
    if (!p)
        goto out;
    if (!*cms || OBJ_obj2nid(CMS_get0_type(*cms)) != NID_pkcs7_signed) {
        snprintf(err, errlen, "the profile is not a CMS SignedData (not a signed .mobileconfig)");
        goto out;
    }
    ASN1_OCTET_STRING **pc = CMS_get0_content(*cms);
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
    ok = true;
out:
    plist_free(root);
    BIO_free(in);
    ERR_clear_error();
    if (!ok) {
        devsim_profile_destroy(&p);
        CMS_ContentInfo_free(*cms);
        *cms = NULL;
    }
    return p;
}

//  GetCACert's reply into p->ca / p->ra, then the profile's signature: its
//  signer must chain to that device CA.
static int s_profile_verify(devsim_profile_t *p, CMS_ContentInfo *cms, const unsigned char *der,
                            size_t len, char *err, size_t errlen)
{
    if (s_parse_ca(der, len, &p->ca, &p->ra, err, errlen) < 0)
        return -1;
    X509_STORE *store = X509_STORE_new();
    BIO *out = BIO_new(BIO_s_mem());
    int rc = -1;
    if (!store || !out)
        goto out;
    X509_STORE_add_cert(store, p->ca);
    X509_STORE_set_purpose(store, X509_PURPOSE_ANY);
    if (CMS_verify(cms, NULL, store, NULL, out, CMS_BINARY) != 1) {
        unsigned long e = ERR_peek_last_error();
        snprintf(err, errlen, "the profile's signature does not verify to the device CA: %s",
                 e ? ERR_reason_error_string(e) : "?");
        goto out;
    }
    rc = 0;
out:
    BIO_free(out);
    X509_STORE_free(store);
    ERR_clear_error();
    return rc;
}

/* ---- SCEP ---- */

//  A PKIOperation in flight: what the reply is checked against.
typedef struct {
    uint8_t nonce[16];
    char txid[40];
    uint8_t *der; //  the request (OPENSSL_malloc'd)
    size_t len;
} s_pkiop_t;

static int s_pkiop_build(const devsim_profile_t *p, int type, X509_REQ *csr, X509 *signer,
                         EVP_PKEY *signer_key, s_pkiop_t *op, char *err, size_t errlen)
{
    uint8_t rnd[16];
    memset(op, 0, sizeof *op);
    if (RAND_bytes(op->nonce, sizeof op->nonce) != 1 || RAND_bytes(rnd, sizeof rnd) != 1) {
        snprintf(err, errlen, "no random bytes for the SCEP nonce (OpenSSL RAND_bytes failed)");
        return -1;
    }
    for (int i = 0; i < 16; i++)
        snprintf(op->txid + 2 * i, 3, "%02X", rnd[i]);
    if (pm_scepc_request(type, csr, signer, signer_key, p->ra, op->txid, op->nonce, &op->der,
                         &op->len) < 0) {
        snprintf(err, errlen, "cannot build the SCEP request");
        ERR_clear_error();
        return -1;
    }
    return 0;
}

//  The CertRep for `op`: signed by the RA, for our transaction and nonce,
//  SUCCESS, a certificate from the device CA for `newkey`. *id on success.
static int s_pkiop_check(const devsim_profile_t *p, const s_pkiop_t *op, long status,
                         const unsigned char *body, size_t blen, X509 *signer, EVP_PKEY *signer_key,
                         EVP_PKEY *newkey, devsim_ident_t **id, char *err, size_t errlen)
{
    pm_scepc_result_t res = {0};
    int rc = -1;
    if (status != 200) {
        snprintf(err, errlen, "SCEP PKIOperation: HTTP %ld", status);
        goto out;
    }
    if (pm_scepc_parse_reply(body, blen, p->ra, signer, signer_key, &res, err, errlen) < 0)
        goto out;
    if (strcmp(res.txid, op->txid) != 0 || res.recipient_nonce_len != 16 ||
        memcmp(res.recipient_nonce, op->nonce, 16) != 0) {
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
    ERR_clear_error();
    return rc;
}

/* ---- one device's enrollment as HTTP exchanges ---- */

typedef enum { S_PROFILE, S_CACERT, S_CACAPS, S_PKIOP, S_DONE } s_step_t;

struct devsim_scep_dev {
    s_step_t step;
    char enroll_url[512];
    char url[700];       //  the request being made
    char challenge[256]; //  replaces the profile's when set (negative tests); secret
    EVP_PKEY *key;       //  the device key (a reference)
    CMS_ContentInfo *cms;
    devsim_profile_t *profile;
    X509_REQ *csr;
    X509 *self;
    s_pkiop_t op;
    devsim_ident_t *ident;
};

devsim_scep_dev_t *devsim_scep_dev_new(const char *enroll_url, EVP_PKEY *key, const char *challenge)
{
    devsim_scep_dev_t *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    snprintf(d->enroll_url, sizeof d->enroll_url, "%s", enroll_url);
    if (challenge)
        snprintf(d->challenge, sizeof d->challenge, "%s", challenge);
    if (key && EVP_PKEY_up_ref(key) == 1)
        d->key = key;
    return d;
}

void devsim_scep_dev_destroy(devsim_scep_dev_t **dp)
{
    if (!dp || !*dp)
        return;
    devsim_scep_dev_t *d = *dp;
    EVP_PKEY_free(d->key);
    CMS_ContentInfo_free(d->cms);
    devsim_profile_destroy(&d->profile);
    X509_REQ_free(d->csr);
    X509_free(d->self);
    OPENSSL_free(d->op.der);
    devsim_ident_destroy(&d->ident);
    OPENSSL_cleanse(d->challenge, sizeof d->challenge);
    free(d);
    *dp = NULL;
}

static void s_op_url(devsim_scep_dev_t *d, const char *op)
{
    const char *u = d->profile->scep_url;
    snprintf(d->url, sizeof d->url, "%s%coperation=%s", u, strchr(u, '?') ? '&' : '?', op);
}

int devsim_scep_dev_next(devsim_scep_dev_t *d, devsim_scep_req_t *req)
{
    memset(req, 0, sizeof *req);
    req->url = d->url;
    switch (d->step) {
    case S_PROFILE:
        snprintf(d->url, sizeof d->url, "%s", d->enroll_url);
        req->what = "profile";
        req->part = DEVSIM_SCEP_PART_PROFILE;
        req->part_first = req->part_last = true;
        return 1;
    case S_CACERT:
        s_op_url(d, "GetCACert");
        req->what = "GetCACert";
        req->part = DEVSIM_SCEP_PART_SCEP;
        req->part_first = true;
        return 1;
    case S_CACAPS:
        s_op_url(d, "GetCACaps");
        req->what = "GetCACaps";
        req->part = DEVSIM_SCEP_PART_SCEP;
        return 1;
    case S_PKIOP:
        s_op_url(d, "PKIOperation");
        req->what = "PKCSReq";
        req->part = DEVSIM_SCEP_PART_SCEP;
        req->part_last = true;
        req->body = d->op.der;
        req->len = d->op.len;
        req->ctype = "Content-Type: application/x-pki-message";
        return 1;
    case S_DONE:
        break;
    }
    return 0;
}

int devsim_scep_dev_reply(devsim_scep_dev_t *d, long status, const unsigned char *body, size_t len,
                          char *err, size_t errlen)
{
    static const unsigned char none[1] = {0};
    if (!body)
        body = none;
    switch (d->step) {
    case S_PROFILE:
        if (status != 200) {
            snprintf(err, errlen, "enrollment profile %s: HTTP %ld", d->enroll_url, status);
            return -1;
        }
        d->profile = s_profile_read(body, len, &d->cms, err, errlen);
        if (!d->profile)
            return -1;
        if (d->challenge[0]) //  --scep-challenge: a negative test's challenge
            snprintf(d->profile->challenge, sizeof d->profile->challenge, "%s", d->challenge);
        d->step = S_CACERT;
        return 0;
    case S_CACERT:
        if (status != 200) {
            snprintf(err, errlen, "SCEP GetCACert: HTTP %ld", status);
            return -1;
        }
        if (s_profile_verify(d->profile, d->cms, body, len, err, errlen) < 0)
            return -1;
        CMS_ContentInfo_free(d->cms);
        d->cms = NULL;
        d->step = S_CACAPS;
        return 0;
    case S_CACAPS: {
        if (status != 200) {
            snprintf(err, errlen, "SCEP GetCACaps: HTTP %ld", status);
            return -1;
        }
        if (!memmem(body, len, "POSTPKIOperation", 16)) {
            snprintf(err, errlen, "GetCACaps lacks POSTPKIOperation");
            return -1;
        }
        //  the key made before the run when it has the profile's Keysize
        devsim_profile_t *p = d->profile;
        if (!d->key || !EVP_PKEY_is_a(d->key, "RSA") || EVP_PKEY_get_bits(d->key) != p->keysize) {
            EVP_PKEY_free(d->key);
            d->key = EVP_RSA_gen((unsigned)p->keysize);
        }
        d->csr = d->key
                     ? pm_scepc_csr_name(d->key, p->subject, p->challenge[0] ? p->challenge : NULL)
                     : NULL;
        d->self = d->key ? pm_scepc_self_signed(d->key, "devsim SCEP transient") : NULL;
        if (!d->csr || !d->self) {
            snprintf(err, errlen, "cannot make the key and request");
            return -1;
        }
        if (s_pkiop_build(p, PM_SCEP_PKCSREQ, d->csr, d->self, d->key, &d->op, err, errlen) < 0)
            return -1;
        d->step = S_PKIOP;
        return 0;
    }
    case S_PKIOP:
        if (s_pkiop_check(d->profile, &d->op, status, body, len, d->self, d->key, d->key, &d->ident,
                          err, errlen) < 0)
            return -1;
        d->step = S_DONE;
        return 0;
    case S_DONE:
        break;
    }
    snprintf(err, errlen, "no request in flight");
    return -1;
}

devsim_profile_t *devsim_scep_dev_take_profile(devsim_scep_dev_t *d)
{
    devsim_profile_t *p = d->step == S_DONE ? d->profile : NULL;
    if (p)
        d->profile = NULL;
    return p;
}

const devsim_profile_t *devsim_scep_dev_profile(const devsim_scep_dev_t *d)
{
    return d->step == S_DONE ? d->profile : NULL;
}

devsim_ident_t *devsim_scep_dev_take_ident(devsim_scep_dev_t *d)
{
    devsim_ident_t *id = d->ident;
    d->ident = NULL;
    return id;
}

int devsim_scep_renew(const devsim_profile_t *p, const devsim_scep_opts_t *o,
                      const devsim_ident_t *old, devsim_ident_t **id, char *err, size_t errlen)
{
    EVP_PKEY *key = EVP_RSA_gen((unsigned)p->keysize);
    X509_REQ *csr =
        key ? pm_scepc_csr_name(key, X509_get_subject_name(devsim_ident_cert(old)), NULL) : NULL;
    s_pkiop_t op = {0};
    s_buf_t b = {0};
    int rc = -1;
    char url[700];
    snprintf(url, sizeof url, "%s%coperation=PKIOperation", p->scep_url,
             strchr(p->scep_url, '?') ? '&' : '?');
    long st = 0;
    if (!csr)
        snprintf(err, errlen, "cannot make the renewal key and request");
    else if (s_pkiop_build(p, PM_SCEP_RENEWALREQ, csr, devsim_ident_cert(old),
                           devsim_ident_key(old), &op, err, errlen) == 0 &&
             s_http(o, url, op.der, op.len, "Content-Type: application/x-pki-message", &b, &st, err,
                    errlen) == 0)
        rc = s_pkiop_check(p, &op, st, b.data, b.len, devsim_ident_cert(old), devsim_ident_key(old),
                           key, id, err, errlen);
    free(b.data);
    OPENSSL_free(op.der);
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
