/*  ca_client — drives the "ca" bus service the way the gateway and a device
 *  would, for tests/it/ca_*.sh and tests/bench/enroll.sh.
 *
 *    ca_client profile --endpoint E [--for WHO] --out FILE
 *        a `profile` request; writes the signed profile, prints identity_uuid=
 *    ca_client caps --endpoint E
 *        GetCACaps; prints the capabilities
 *    ca_client enroll --endpoint E (--profile FILE | --challenge C) [--cn CN]
 *                     [--get] [--count N] [--cert-out F --key-out F]
 *        GetCACert, then N PKCSReq (the challenge taken from the profile,
 *        whose CMS signature is first verified against the CA); prints
 *        issued= failed= status=... and the last certificate's sha256
 *    ca_client renew --endpoint E --cert F --key F [--cn CN] [--cert-out F]
 *        RenewalReq signed with an issued certificate
 *    ca_client raw --endpoint E --method M --operation O [--message-file F]
 *        any scep request; prints status= content_type= and the body size
 *
 *  The device-side SCEP code is proto/pm_scepc.c (libpicomdm.a), shared
 *  with picomdm-devsim.
 */
#include "pm_scepc.h"

#include "pm_bus.h"
#include "pm_cfg.h"
#include "pm_log.h"

#include <czmq.h>
#include <openssl/cms.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <plist/plist.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const pm_opt_t s_opts[] = {
    {"endpoint", PM_OPT_STR, NULL, "broker request endpoint"},
    {"out", PM_OPT_STR, NULL, "profile: output file"},
    {"for", PM_OPT_STR, NULL, "profile: who it is for"},
    {"profile", PM_OPT_STR, NULL, "enroll: signed profile to take the challenge from"},
    {"challenge", PM_OPT_STR, NULL, "enroll: challenge (instead of --profile)"},
    {"cn", PM_OPT_STR, "it-device", "CN to request"},
    {"get", PM_OPT_BOOL, "false", "PKIOperation over GET (base64) instead of POST"},
    {"count", PM_OPT_INT, "1", "enroll: number of PKCSReq (one key per 8 requests is reused)"},
    {"inflight", PM_OPT_INT, "1", "enroll: requests in flight (> 1: pre-built, pipelined)"},
    {"cert-out", PM_OPT_STR, NULL, "write the (last) issued certificate here (PEM)"},
    {"key-out", PM_OPT_STR, NULL, "write its key here (PEM)"},
    {"cert", PM_OPT_STR, NULL, "renew: current certificate"},
    {"key", PM_OPT_STR, NULL, "renew: its key"},
    {"method", PM_OPT_STR, "GET", "raw: HTTP method"},
    {"operation", PM_OPT_STR, "GetCACaps", "raw: SCEP operation"},
    {"message-file", PM_OPT_STR, NULL, "raw: message bytes"},
    {"timeout-ms", PM_OPT_INT, "10000", "per-request timeout"},
    {NULL, 0, NULL, NULL}};

static pm_cfg_t *s_cfg;
static pm_bus_t *s_bus;

static pm_msg_t *s_call(pm_msg_t *req)
{
    char err[256];
    pm_msg_t *rep =
        pm_bus_call(s_bus, "ca", req, (int)pm_cfg_int(s_cfg, "timeout-ms"), 1, err, sizeof err);
    if (!rep)
        fprintf(stderr, "ca_client: no reply: %s\n", err);
    else if (pm_msg_type(rep) == PM_MSG_ERROR)
        fprintf(stderr, "ca_client: error %s: %s\n", pm_msg_str(rep, "code"),
                pm_msg_str(rep, "message"));
    pm_msg_destroy(&req);
    return rep;
}

static pm_msg_t *s_scep(const char *method, const char *op, const uint8_t *msg, size_t len)
{
    pm_msg_t *req = pm_msg_new(PM_MSG_SCEP);
    pm_msg_set_str(req, "method", method);
    pm_msg_set_str(req, "operation", op);
    if (msg)
        pm_msg_set_bin(req, "message", msg, len);
    pm_msg_set_str(req, "remote", "127.0.0.1");
    return s_call(req);
}

static uint8_t *s_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    uint8_t *buf = malloc(1 << 20);
    *len = buf ? fread(buf, 1, 1 << 20, f) : 0;
    fclose(f);
    return buf;
}

//  GetCACert: *ca and *ra (RA == CA when a single certificate comes back).
static int s_cacert(X509 **ca, X509 **ra)
{
    pm_msg_t *rep = s_scep("GET", "GetCACert", NULL, 0);
    if (!rep || pm_msg_type(rep) != PM_MSG_SCEP_REPLY || pm_msg_uint(rep, "status", 0) != 200) {
        pm_msg_destroy(&rep);
        return -1;
    }
    size_t len = 0;
    const uint8_t *body = pm_msg_bin(rep, "body", &len);
    const unsigned char *p = body;
    const char *ct = pm_msg_str(rep, "content_type");
    int rc = -1;
    if (strcmp(ct, "application/x-x509-ca-cert") == 0) {
        *ca = d2i_X509(NULL, &p, (long)len);
        *ra = *ca ? X509_dup(*ca) : NULL;
        rc = *ca && *ra ? 0 : -1;
    } else if (strcmp(ct, "application/x-x509-ca-ra-cert") == 0) {
        PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)len);
        if (p7 && PKCS7_type_is_signed(p7) && sk_X509_num(p7->d.sign->cert) == 2) {
            *ra = X509_dup(sk_X509_value(p7->d.sign->cert, 0));
            *ca = X509_dup(sk_X509_value(p7->d.sign->cert, 1));
            rc = 0;
        }
        PKCS7_free(p7);
    }
    pm_msg_destroy(&rep);
    return rc;
}

//  The SCEP challenge from a signed profile, after verifying it against `ca`.
static char *s_profile_challenge(const char *path, X509 *ca)
{
    size_t len = 0;
    uint8_t *der = s_read(path, &len);
    const unsigned char *p = der;
    CMS_ContentInfo *cms = der ? d2i_CMS_ContentInfo(NULL, &p, (long)len) : NULL;
    X509_STORE *st = X509_STORE_new();
    X509_STORE_add_cert(st, ca);
    BIO *out = BIO_new(BIO_s_mem());
    char *ch = NULL;
    if (cms && CMS_verify(cms, NULL, st, NULL, out, CMS_BINARY) == 1) {
        char *xml = NULL;
        long xl = BIO_get_mem_data(out, &xml);
        plist_t root = NULL;
        plist_from_xml(xml, (uint32_t)xl, &root);
        plist_t content = root ? plist_dict_get_item(root, "PayloadContent") : NULL;
        for (uint32_t i = 0; content && i < plist_array_get_size(content); i++) {
            plist_t sc = plist_dict_get_item(plist_array_get_item(content, i), "PayloadContent");
            plist_t c = sc && plist_get_node_type(sc) == PLIST_DICT
                            ? plist_dict_get_item(sc, "Challenge")
                            : NULL;
            if (c)
                plist_get_string_val(c, &ch);
        }
        plist_free(root);
    } else {
        fprintf(stderr, "ca_client: the profile does not verify against the CA\n");
    }
    BIO_free(out);
    X509_STORE_free(st);
    CMS_ContentInfo_free(cms);
    free(der);
    return ch;
}

static void s_write_pem(const char *path, X509 *x, EVP_PKEY *k)
{
    FILE *f = path ? fopen(path, "w") : NULL;
    if (!f)
        return;
    if (x)
        PEM_write_X509(f, x);
    if (k)
        PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
    fclose(f);
}

static const char *s_status(int st)
{
    return st == 0 ? "SUCCESS" : st == 2 ? "FAILURE" : st == 3 ? "PENDING" : "NONE";
}

//  One PKIOperation; returns the parsed result (cert owned by caller).
static int s_pkiop(int type, X509_REQ *csr, X509 *signer, EVP_PKEY *skey, X509 *ra, bool get,
                   pm_scepc_result_t *res)
{
    uint8_t nonce[16], *der = NULL;
    size_t len = 0;
    char txid[40], err[200];
    RAND_bytes(nonce, sizeof nonce);
    for (int i = 0; i < 16; i++)
        snprintf(txid + 2 * i, 3, "%02X", nonce[(i + 7) % 16] ^ 0x5c);
    if (pm_scepc_request(type, csr, signer, skey, ra, txid, nonce, &der, &len) < 0)
        return -1;
    pm_msg_t *rep = NULL;
    if (get) {
        unsigned char *b64 = malloc(len * 2 + 8);
        int n = EVP_EncodeBlock(b64, der, (int)len);
        rep = s_scep("GET", "PKIOperation", b64, (size_t)n);
        free(b64);
    } else {
        rep = s_scep("POST", "PKIOperation", der, len);
    }
    OPENSSL_free(der);
    int rc = -1;
    if (rep && pm_msg_type(rep) == PM_MSG_SCEP_REPLY && pm_msg_uint(rep, "status", 0) == 200) {
        size_t blen = 0;
        const uint8_t *body = pm_msg_bin(rep, "body", &blen);
        rc = pm_scepc_parse_reply(body, blen, ra, signer, skey, res, err, sizeof err);
        if (rc < 0)
            fprintf(stderr, "ca_client: bad CertRep: %s\n", err);
        else if (strcmp(res->txid, txid) != 0 || res->recipient_nonce_len != 16 ||
                 memcmp(res->recipient_nonce, nonce, 16) != 0) {
            fprintf(stderr, "ca_client: CertRep transactionID/recipientNonce mismatch\n");
            rc = -1;
        }
    } else if (rep && pm_msg_type(rep) == PM_MSG_SCEP_REPLY) {
        fprintf(stderr, "ca_client: HTTP %u: %s\n", (unsigned)pm_msg_uint(rep, "status", 0),
                pm_msg_str(rep, "reason") ? pm_msg_str(rep, "reason") : "");
    }
    pm_msg_destroy(&rep);
    return rc;
}

static void s_print_cert(X509 *x)
{
    unsigned char *der = NULL;
    int len = i2d_X509(x, &der);
    uint8_t md[32];
    EVP_Digest(der, (size_t)len, md, NULL, EVP_sha256(), NULL);
    OPENSSL_free(der);
    printf("cert_sha256=");
    for (int i = 0; i < 32; i++)
        printf("%02x", md[i]);
    char cn[128] = "";
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn);
    printf(" cn=%s\n", cn);
}

//  Pipelined enrollment: requests pre-built, K in flight.
typedef struct {
    uint8_t *der;
    size_t len;
    int key;
    char txid[40];
    uint8_t nonce[16];
} s_job_t;

static struct {
    s_job_t *jobs;
    int n, next, done, issued, failed, errors;
    EVP_PKEY **keys;
    X509 **selfs;
    X509 *ra;
} s_pipe;

static void s_send_next(void);

static void s_on_reply(void *arg, const pm_msg_t *rep, const char *error)
{
    s_job_t *j = arg;
    s_pipe.done++;
    if (!rep || pm_msg_type(rep) != PM_MSG_SCEP_REPLY || pm_msg_uint(rep, "status", 0) != 200) {
        if (s_pipe.errors++ == 0)
            fprintf(stderr, "ca_client: request failed: %s\n", error ? error : "bad reply");
    } else {
        size_t blen = 0;
        const uint8_t *body = pm_msg_bin(rep, "body", &blen);
        pm_scepc_result_t res;
        char err[200];
        if (pm_scepc_parse_reply(body, blen, s_pipe.ra, s_pipe.selfs[j->key], s_pipe.keys[j->key],
                                 &res, err, sizeof err) < 0 ||
            strcmp(res.txid, j->txid) != 0)
            s_pipe.errors++;
        else if (res.pki_status == 0 && res.cert)
            s_pipe.issued++;
        else
            s_pipe.failed++;
        X509_free(res.cert);
    }
    OPENSSL_free(j->der);
    j->der = NULL;
    s_send_next();
}

static void s_send_next(void)
{
    if (s_pipe.next >= s_pipe.n)
        return;
    s_job_t *j = &s_pipe.jobs[s_pipe.next++];
    pm_msg_t *req = pm_msg_new(PM_MSG_SCEP);
    pm_msg_set_str(req, "method", "POST");
    pm_msg_set_str(req, "operation", "PKIOperation");
    pm_msg_set_bin(req, "message", j->der, j->len);
    if (pm_bus_call_async(s_bus, "ca", req, (int)pm_cfg_int(s_cfg, "timeout-ms"), 1, s_on_reply,
                          j) < 0) {
        s_pipe.errors++;
        s_pipe.done++;
    }
    pm_msg_destroy(&req);
}

static int s_enroll_pipelined(X509 *ra, const char *challenge, int count, int inflight)
{
    //  at most 8 device keys (generating them is the client's cost, not the server's)
    enum { MAX_KEYS = 8 };
    const int KEYS = count < MAX_KEYS ? count : MAX_KEYS;
    EVP_PKEY *keys[MAX_KEYS] = {0};
    X509 *selfs[MAX_KEYS] = {0};
    for (int k = 0; k < KEYS; k++) {
        keys[k] = EVP_RSA_gen(2048);
        selfs[k] = pm_scepc_self_signed(keys[k], "transient");
    }
    s_pipe.jobs = calloc((size_t)count, sizeof *s_pipe.jobs);
    s_pipe.n = count;
    s_pipe.keys = keys;
    s_pipe.selfs = selfs;
    s_pipe.ra = ra;
    for (int i = 0; i < count; i++) {
        s_job_t *j = &s_pipe.jobs[i];
        j->key = i % KEYS;
        RAND_bytes(j->nonce, sizeof j->nonce);
        snprintf(j->txid, sizeof j->txid, "PIPE-%d", i);
        X509_REQ *csr = pm_scepc_csr(keys[j->key], pm_cfg_str(s_cfg, "cn"), challenge);
        pm_scepc_request(19, csr, selfs[j->key], keys[j->key], ra, j->txid, j->nonce, &j->der,
                         &j->len);
        X509_REQ_free(csr);
    }
    int64_t t0 = zclock_usecs();
    for (int i = 0; i < inflight; i++)
        s_send_next();
    int64_t until = zclock_mono() + 600000;
    while (s_pipe.done < count && zclock_mono() < until && pm_bus_run_once(s_bus, 100) >= 0)
        ;
    double secs = (double)(zclock_usecs() - t0) / 1e6;
    printf("issued=%d failed=%d errors=%d status=%s fail_info=-1\n", s_pipe.issued, s_pipe.failed,
           s_pipe.errors + (count - s_pipe.done), s_pipe.issued == count ? "SUCCESS" : "MIXED");
    printf("pipelined=%d inflight=%d seconds=%.3f rate=%.1f/s\n", count, inflight, secs,
           secs > 0 ? count / secs : 0);
    for (int k = 0; k < KEYS; k++) {
        EVP_PKEY_free(keys[k]);
        X509_free(selfs[k]);
    }
    for (int i = 0; i < count; i++)
        OPENSSL_free(s_pipe.jobs[i].der);
    free(s_pipe.jobs);
    return s_pipe.issued == count ? 0 : 1;
}

static int s_enroll(X509 *ca, X509 *ra)
{
    const char *challenge = pm_cfg_str(s_cfg, "challenge");
    char *from_profile = NULL;
    if (pm_cfg_str(s_cfg, "profile")) {
        from_profile = s_profile_challenge(pm_cfg_str(s_cfg, "profile"), ca);
        if (!from_profile)
            return 1;
        challenge = from_profile;
    }
    int count = (int)pm_cfg_int(s_cfg, "count"), issued = 0, failed = 0, errors = 0;
    if (pm_cfg_int(s_cfg, "inflight") > 1) {
        int rc = s_enroll_pipelined(ra, challenge, count, (int)pm_cfg_int(s_cfg, "inflight"));
        free(from_profile);
        return rc;
    }
    enum { KEYS = 8 };
    EVP_PKEY *keys[KEYS] = {0};
    X509 *selfs[KEYS] = {0}, *last = NULL;
    EVP_PKEY *last_key = NULL;
    int last_status = -1, last_fail = -1;
    for (int i = 0; i < count; i++) {
        int k = i % KEYS;
        if (!keys[k]) {
            keys[k] = EVP_RSA_gen(2048);
            selfs[k] = pm_scepc_self_signed(keys[k], "transient");
        }
        X509_REQ *csr = pm_scepc_csr(keys[k], pm_cfg_str(s_cfg, "cn"), challenge);
        pm_scepc_result_t res;
        if (s_pkiop(19, csr, selfs[k], keys[k], ra, pm_cfg_bool(s_cfg, "get"), &res) < 0) {
            errors++;
        } else {
            last_status = res.pki_status;
            last_fail = res.fail_info;
            if (res.pki_status == 0 && res.cert) {
                issued++;
                X509_free(last);
                last = res.cert;
                last_key = keys[k];
            } else {
                failed++;
                X509_free(res.cert);
            }
        }
        X509_REQ_free(csr);
    }
    printf("issued=%d failed=%d errors=%d status=%s fail_info=%d\n", issued, failed, errors,
           s_status(last_status), last_fail);
    if (last) {
        //  the certificate must chain to the CA from GetCACert
        X509_STORE *st = X509_STORE_new();
        X509_STORE_CTX *ctx = X509_STORE_CTX_new();
        X509_STORE_add_cert(st, ca);
        X509_STORE_CTX_init(ctx, st, last, NULL);
        printf("chains_to_ca=%s\n", X509_verify_cert(ctx) == 1 ? "yes" : "no");
        X509_STORE_CTX_free(ctx);
        X509_STORE_free(st);
        s_print_cert(last);
        s_write_pem(pm_cfg_str(s_cfg, "cert-out"), last, NULL);
        s_write_pem(pm_cfg_str(s_cfg, "key-out"), NULL, last_key);
    }
    X509_free(last);
    for (int k = 0; k < KEYS; k++) {
        EVP_PKEY_free(keys[k]);
        X509_free(selfs[k]);
    }
    free(from_profile);
    return errors ? 1 : 0;
}

static int s_renew(X509 *ca, X509 *ra)
{
    (void)ca;
    FILE *f = fopen(pm_cfg_str(s_cfg, "cert") ? pm_cfg_str(s_cfg, "cert") : "", "r");
    X509 *old = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    f = fopen(pm_cfg_str(s_cfg, "key") ? pm_cfg_str(s_cfg, "key") : "", "r");
    EVP_PKEY *old_key = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    if (!old || !old_key) {
        fprintf(stderr, "ca_client: renew needs --cert and --key (PEM)\n");
        return 2;
    }
    EVP_PKEY *key = EVP_RSA_gen(2048);
    X509_REQ *csr = pm_scepc_csr(key, pm_cfg_str(s_cfg, "cn"), NULL);
    pm_scepc_result_t res;
    int rc = s_pkiop(17, csr, old, old_key, ra, false, &res);
    if (rc == 0) {
        printf("status=%s fail_info=%d\n", s_status(res.pki_status), res.fail_info);
        if (res.cert) {
            s_print_cert(res.cert);
            s_write_pem(pm_cfg_str(s_cfg, "cert-out"), res.cert, NULL);
        }
        X509_free(res.cert);
    }
    X509_REQ_free(csr);
    EVP_PKEY_free(key);
    EVP_PKEY_free(old_key);
    X509_free(old);
    return rc == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    pm_cfg_result_t r =
        pm_cfg_parse(&s_cfg, "ca_client", "drive the ca service (tests)", s_opts, argc, argv);
    if (r == PM_CFG_EXIT)
        return 0;
    if (r != PM_CFG_RUN || pm_cfg_argc(s_cfg) != 1 || !pm_cfg_str(s_cfg, "endpoint")) {
        fprintf(stderr, "usage: ca_client profile|caps|enroll|renew|raw --endpoint E ...\n");
        pm_cfg_destroy(&s_cfg);
        return 2;
    }
    pm_cfg_start_logging(s_cfg);
    const char *cmd = pm_cfg_arg(s_cfg, 0);
    pm_bus_config_t bc = {.name = "ca_client", .request_endpoint = pm_cfg_str(s_cfg, "endpoint")};
    s_bus = pm_bus_new(&bc);
    int rc = 1;
    X509 *ca = NULL, *ra = NULL;
    if (!s_bus)
        goto out;
    if (strcmp(cmd, "profile") == 0) {
        pm_msg_t *req = pm_msg_new(PM_MSG_PROFILE);
        if (pm_cfg_str(s_cfg, "for"))
            pm_msg_set_str(req, "for", pm_cfg_str(s_cfg, "for"));
        pm_msg_t *rep = s_call(req);
        if (rep && pm_msg_type(rep) == PM_MSG_PROFILE_REPLY) {
            size_t len = 0;
            const uint8_t *der = pm_msg_bin(rep, "profile", &len);
            FILE *f =
                fopen(pm_cfg_str(s_cfg, "out") ? pm_cfg_str(s_cfg, "out") : "/dev/null", "wb");
            if (f && fwrite(der, 1, len, f) == len)
                rc = 0;
            if (f)
                fclose(f);
            printf("identity_uuid=%s one_time=%s content_type=%s\n",
                   pm_msg_str(rep, "identity_uuid"),
                   pm_msg_bool(rep, "one_time", false) ? "yes" : "no",
                   pm_msg_str(rep, "content_type"));
        }
        pm_msg_destroy(&rep);
    } else if (strcmp(cmd, "caps") == 0 || strcmp(cmd, "raw") == 0) {
        bool raw = strcmp(cmd, "raw") == 0;
        size_t len = 0;
        uint8_t *msg = raw && pm_cfg_str(s_cfg, "message-file")
                           ? s_read(pm_cfg_str(s_cfg, "message-file"), &len)
                           : NULL;
        pm_msg_t *rep = s_scep(raw ? pm_cfg_str(s_cfg, "method") : "GET",
                               raw ? pm_cfg_str(s_cfg, "operation") : "GetCACaps", msg, len);
        free(msg);
        if (rep && pm_msg_type(rep) == PM_MSG_SCEP_REPLY) {
            size_t blen = 0;
            const uint8_t *body = pm_msg_bin(rep, "body", &blen);
            printf("status=%u content_type=%s body_bytes=%zu\n",
                   (unsigned)pm_msg_uint(rep, "status", 0), pm_msg_str(rep, "content_type"), blen);
            if (strcmp(pm_msg_str(rep, "content_type"), "text/plain") == 0)
                fwrite(body, 1, blen, stdout);
            rc = 0;
        }
        pm_msg_destroy(&rep);
    } else if (strcmp(cmd, "enroll") == 0 || strcmp(cmd, "renew") == 0) {
        if (s_cacert(&ca, &ra) < 0) {
            fprintf(stderr, "ca_client: GetCACert failed\n");
            goto out;
        }
        rc = strcmp(cmd, "enroll") == 0 ? s_enroll(ca, ra) : s_renew(ca, ra);
    } else {
        fprintf(stderr, "ca_client: unknown command %s\n", cmd);
        rc = 2;
    }
out:
    X509_free(ca);
    X509_free(ra);
    pm_bus_destroy(&s_bus);
    pm_cfg_destroy(&s_cfg);
    return rc;
}
