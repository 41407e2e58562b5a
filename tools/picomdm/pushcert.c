/*  pushcert — `picomdm pushcert new|vendor-sign|show|install`. See pushcert.h.
 */
#include "pushcert.h"

//  The certificate module of the pusher, compiled into the CLI: the build
//  links each binary from its own folder (Makefile header), and a copy would
//  drift. It brings push_cert_load, push_cert_state, ...
#include "../../pusher/push_cert.c"

#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <plist/plist.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const pm_opt_t pushcert_opts[] = {
    {"out", PM_OPT_STR, NULL,
     "new: directory for push.key and push.csr (default .); vendor-sign: request file "
     "(default push.req)"},
    {"cn", PM_OPT_STR, "PicoMDM push", "new: the CSR's common name"},
    {"force", PM_OPT_BOOL, "false",
     "new: overwrite an existing key; install: accept another topic (cuts every device off)"},
    {"csr", PM_OPT_STR, NULL, "vendor-sign: the customer CSR (PEM or DER)"},
    {"vendor-cert", PM_OPT_STR, NULL,
     "vendor-sign: the MDM vendor certificate from the Apple developer portal (PEM or DER)"},
    {"vendor-key", PM_OPT_STR, NULL, "vendor-sign: the vendor certificate's private key (PEM)"},
    {"vendor-password", PM_OPT_STR, NULL, "vendor-sign: password of the vendor key"},
    {"chain", PM_OPT_STR, NULL,
     "vendor-sign: PEM file with the rest of the vendor chain (Apple WWDR intermediate, Apple "
     "root)"},
    {"key", PM_OPT_STR, NULL, "show/install: the private key, when not inside FILE"},
    {"password", PM_OPT_STR, NULL, "show/install: password of a .p12 or encrypted key"},
    {"dest", PM_OPT_STR, NULL,
     "install: where the pusher reads its certificate (its push-cert option)"},
    {"enrolled-topic", PM_OPT_STR, NULL,
     "install: the topic enrolled devices use, when no certificate is installed at --dest yet"},
    {NULL, 0, NULL, NULL}};

static void s_ossl_err(const char *what)
{
    char buf[256] = "no detail";
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    fprintf(stderr, "picomdm pushcert: %s (%s)\n", what, buf);
    ERR_clear_error();
}

//  Create `path` exclusively (or truncate with force) with mode 0600.
static FILE *s_create(const char *path, bool force)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (force ? O_TRUNC : O_EXCL), 0600);
    if (fd < 0) {
        fprintf(stderr, "picomdm pushcert: cannot create %s: %s%s\n", path, strerror(errno),
                errno == EEXIST ? " (it exists: --force replaces it)" : "");
        return NULL;
    }
    FILE *f = fdopen(fd, "w");
    if (!f)
        close(fd);
    return f;
}

/* ---- new ---- */

static int s_new(cli_ctx_t *ctx)
{
    const char *dir = pm_cfg_str(ctx->cfg, "out") ? pm_cfg_str(ctx->cfg, "out") : ".";
    bool force = pm_cfg_bool(ctx->cfg, "force");
    char kpath[4096], cpath[4096];
    snprintf(kpath, sizeof kpath, "%s/push.key", dir);
    snprintf(cpath, sizeof cpath, "%s/push.csr", dir);
    int rc = CLI_EXIT_FAIL;
    EVP_PKEY *key = EVP_RSA_gen(2048);
    X509_REQ *req = X509_REQ_new();
    X509_NAME *name = X509_NAME_new();
    FILE *kf = NULL, *cf = NULL;
    if (!key || !req || !name) {
        s_ossl_err("cannot make an RSA key");
        goto out;
    }
    if (!X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                    (const unsigned char *)pm_cfg_str(ctx->cfg, "cn"), -1, -1, 0) ||
        !X509_REQ_set_version(req, 0) || !X509_REQ_set_subject_name(req, name) ||
        !X509_REQ_set_pubkey(req, key) || !X509_REQ_sign(req, key, EVP_sha256())) {
        s_ossl_err("cannot make the CSR");
        goto out;
    }
    if (!(kf = s_create(kpath, force)) || !(cf = s_create(cpath, force)))
        goto out;
    if (!PEM_write_PrivateKey(kf, key, NULL, NULL, 0, NULL, NULL) || !PEM_write_X509_REQ(cf, req)) {
        s_ossl_err("cannot write the key or the CSR");
        goto out;
    }
    printf("key: %s (keep it: the push certificate is useless without it)\ncsr: %s\n"
           "next: have it signed by your MDM vendor (`picomdm pushcert vendor-sign`), upload "
           "the request at https://identity.apple.com/pushcert, then `picomdm pushcert install`\n",
           kpath, cpath);
    rc = CLI_EXIT_OK;
out:
    if (kf && fclose(kf) != 0)
        rc = CLI_EXIT_FAIL;
    if (cf && fclose(cf) != 0)
        rc = CLI_EXIT_FAIL;
    X509_NAME_free(name);
    X509_REQ_free(req);
    EVP_PKEY_free(key);
    return rc;
}

/* ---- vendor-sign ---- */

static X509_REQ *s_read_csr(const char *path)
{
    BIO *b = BIO_new_file(path, "rb");
    if (!b)
        return NULL;
    X509_REQ *r = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL);
    if (!r) {
        ERR_clear_error();
        (void)BIO_reset(b);
        r = d2i_X509_REQ_bio(b, NULL);
    }
    BIO_free(b);
    return r;
}

static X509 *s_read_cert(const char *path)
{
    BIO *b = BIO_new_file(path, "rb");
    if (!b)
        return NULL;
    X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    if (!x) {
        ERR_clear_error();
        (void)BIO_reset(b);
        x = d2i_X509_bio(b, NULL);
    }
    BIO_free(b);
    return x;
}

//  base64 (one line, no newlines) of data; malloc'd.
static char *s_b64(const unsigned char *data, size_t len)
{
    char *out = malloc(4 * ((len + 2) / 3) + 1);
    if (out)
        EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

static int s_vendor_sign(cli_ctx_t *ctx)
{
    const char *csr_path = pm_cfg_str(ctx->cfg, "csr"), *vc = pm_cfg_str(ctx->cfg, "vendor-cert"),
               *vk = pm_cfg_str(ctx->cfg, "vendor-key"), *chain = pm_cfg_str(ctx->cfg, "chain");
    const char *out_path = pm_cfg_str(ctx->cfg, "out") ? pm_cfg_str(ctx->cfg, "out") : "push.req";
    if (!csr_path || !vc || !vk) {
        fprintf(stderr,
                "picomdm pushcert vendor-sign: give --csr, --vendor-cert and --vendor-key\n");
        return CLI_EXIT_USAGE;
    }
    int rc = CLI_EXIT_FAIL;
    X509_REQ *req = s_read_csr(csr_path);
    X509 *vcert = s_read_cert(vc);
    EVP_PKEY *vkey = NULL;
    unsigned char *der = NULL, *sig = NULL;
    char *csr_b64 = NULL, *sig_b64 = NULL, *xml = NULL, *req_b64 = NULL;
    uint32_t xml_len = 0;
    BIO *pem = BIO_new(BIO_s_mem());
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    plist_t dict = NULL;
    FILE *f = NULL;
    BIO *kb = BIO_new_file(vk, "rb");
    const char *pw = pm_cfg_str(ctx->cfg, "vendor-password");
    if (kb)
        vkey = PEM_read_bio_PrivateKey(kb, NULL, NULL, (void *)(pw ? pw : ""));
    BIO_free(kb);
    if (!req) {
        s_ossl_err("cannot read the CSR (PEM or DER)");
        goto out;
    }
    if (!vcert || !vkey) {
        s_ossl_err("cannot read the vendor certificate or its key");
        goto out;
    }
    if (X509_check_private_key(vcert, vkey) != 1) {
        s_ossl_err("the vendor key does not belong to the vendor certificate");
        goto out;
    }
    EVP_PKEY *csr_key = X509_REQ_get0_pubkey(req);
    if (!csr_key || X509_REQ_verify(req, csr_key) != 1) {
        s_ossl_err("the CSR's own signature does not verify: make it again with `picomdm "
                   "pushcert new`");
        goto out;
    }
    int der_len = i2d_X509_REQ(req, &der);
    size_t sig_len = 0;
    if (der_len <= 0 || !md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, vkey) != 1 ||
        EVP_DigestSign(md, NULL, &sig_len, der, (size_t)der_len) != 1 || !(sig = malloc(sig_len)) ||
        EVP_DigestSign(md, sig, &sig_len, der, (size_t)der_len) != 1) {
        s_ossl_err("signing the CSR with the vendor key failed");
        goto out;
    }
    //  the chain: vendor certificate first, then the intermediate and the root
    if (!pem || PEM_write_bio_X509(pem, vcert) != 1) {
        s_ossl_err("cannot encode the vendor certificate");
        goto out;
    }
    if (chain) {
        BIO *cb = BIO_new_file(chain, "rb");
        X509 *x;
        int n = 0;
        while (cb && (x = PEM_read_bio_X509(cb, NULL, NULL, NULL))) {
            PEM_write_bio_X509(pem, x);
            X509_free(x);
            n++;
        }
        ERR_clear_error();
        BIO_free(cb);
        if (n == 0) {
            fprintf(stderr,
                    "picomdm pushcert: %s holds no PEM certificate (give the Apple WWDR "
                    "intermediate and Apple root as PEM)\n",
                    chain);
            goto out;
        }
    }
    char *pem_data = NULL;
    long pem_len = BIO_get_mem_data(pem, &pem_data);
    char *chain_str = malloc((size_t)pem_len + 1);
    if (!chain_str)
        goto out;
    memcpy(chain_str, pem_data, (size_t)pem_len);
    chain_str[pem_len] = 0;
    csr_b64 = s_b64(der, (size_t)der_len);
    sig_b64 = s_b64(sig, sig_len);
    dict = plist_new_dict();
    if (!csr_b64 || !sig_b64 || !dict) {
        free(chain_str);
        goto out;
    }
    plist_dict_set_item(dict, "PushCertRequestCSR", plist_new_string(csr_b64));
    plist_dict_set_item(dict, "PushCertCertificateChain", plist_new_string(chain_str));
    plist_dict_set_item(dict, "PushCertSignature", plist_new_string(sig_b64));
    free(chain_str);
    plist_to_xml(dict, &xml, &xml_len);
    if (!xml || !(req_b64 = s_b64((unsigned char *)xml, xml_len)))
        goto out;
    if (!(f = s_create(out_path, true)))
        goto out;
    if (fputs(req_b64, f) < 0 || fclose(f) != 0) {
        f = NULL;
        fprintf(stderr, "picomdm pushcert: cannot write %s: %s\n", out_path, strerror(errno));
        goto out;
    }
    f = NULL;
    printf("request: %s\nnext: upload it at https://identity.apple.com/pushcert (the customer's "
           "Apple ID), download the certificate, then `picomdm pushcert install`\n",
           out_path);
    if (!chain)
        printf("note: no --chain given; Apple's portal expects the vendor certificate followed by "
               "the Apple WWDR intermediate and the Apple root\n");
    rc = CLI_EXIT_OK;
out:
    if (f)
        fclose(f);
    plist_free(dict);
    free(xml);
    free(req_b64);
    free(csr_b64);
    free(sig_b64);
    free(sig);
    OPENSSL_free(der);
    EVP_MD_CTX_free(md);
    BIO_free(pem);
    EVP_PKEY_free(vkey);
    X509_free(vcert);
    X509_REQ_free(req);
    return rc;
}

/* ---- show ---- */

static void s_time(time_t t, char *buf, size_t len)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int s_show(cli_ctx_t *ctx)
{
    const char *file = cli_arg(ctx, 1);
    if (!file) {
        fprintf(stderr, "usage: picomdm pushcert show FILE [--key KEY] [--password P]\n");
        return CLI_EXIT_USAGE;
    }
    char err[512];
    push_cert_t *c = push_cert_load(file, pm_cfg_str(ctx->cfg, "key"),
                                    pm_cfg_str(ctx->cfg, "password"), false, err, sizeof err);
    if (!c) {
        fprintf(stderr, "picomdm pushcert: %s\n", err);
        return CLI_EXIT_FAIL;
    }
    int days = 0;
    push_cert_state_t st = push_cert_state(c, time(NULL), &days);
    char nb[32], na[32];
    s_time(push_cert_not_before(c), nb, sizeof nb);
    s_time(push_cert_not_after(c), na, sizeof na);
    const char *key = !push_cert_key(c)          ? "none"
                      : push_cert_key_matches(c) ? "matches"
                                                 : "does not match";
    bool ok = *push_cert_topic(c) && (st == PUSH_CERT_VALID || st == PUSH_CERT_EXPIRING) &&
              strcmp(key, "does not match") != 0;
    if (pm_cfg_bool(ctx->cfg, "json")) {
        //  subject/issuer are RFC 2253 text: escape quotes and backslashes
        printf("{\"file\":\"%s\",\"topic\":\"%s\",\"state\":\"%s\",\"days_left\":%d,"
               "\"not_before\":\"%s\",\"not_after\":\"%s\",\"key\":\"%s\",\"subject\":\"",
               file, push_cert_topic(c), push_cert_state_name(st), days, nb, na, key);
        for (const char *p = push_cert_subject(c); *p; p++)
            printf(*p == '"' || *p == '\\' ? "\\%c" : "%c", *p);
        printf("\",\"issuer\":\"");
        for (const char *p = push_cert_issuer(c); *p; p++)
            printf(*p == '"' || *p == '\\' ? "\\%c" : "%c", *p);
        printf("\"}\n");
    } else {
        printf(
            "file:     %s\ntopic:    %s\nsubject:  %s\nissuer:   %s\n"
            "valid:    %s to %s (%d days left)\nstate:    %s\nkey:      %s\n",
            file, *push_cert_topic(c) ? push_cert_topic(c) : "(none: not an MDM push certificate)",
            push_cert_subject(c), push_cert_issuer(c), nb, na, days, push_cert_state_name(st), key);
        if (st == PUSH_CERT_EXPIRING)
            printf("warning:  renew it at identity.apple.com with the same Apple ID before it "
                   "expires\n");
        if (st == PUSH_CERT_EXPIRED)
            printf("error:    expired: APNs refuses it; renew it (same Apple ID, so the topic "
                   "stays) and install the new one\n");
    }
    push_cert_destroy(&c);
    return ok ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}

/* ---- install ---- */

static int s_install(cli_ctx_t *ctx)
{
    const char *file = cli_arg(ctx, 1), *dest = pm_cfg_str(ctx->cfg, "dest");
    bool force = pm_cfg_bool(ctx->cfg, "force");
    if (!file || !dest) {
        fprintf(stderr, "usage: picomdm pushcert install FILE --dest PATH [--key KEY] [--force]\n"
                        "  --dest is the pusher's push-cert path\n");
        return CLI_EXIT_USAGE;
    }
    char err[512], tmp[4096], bak[4096];
    int rc = CLI_EXIT_FAIL;
    push_cert_t *old = NULL;
    push_cert_t *c = push_cert_load(file, pm_cfg_str(ctx->cfg, "key"),
                                    pm_cfg_str(ctx->cfg, "password"), true, err, sizeof err);
    char *cp = NULL, *kp = NULL;
    size_t cl = 0, kl = 0;
    FILE *f = NULL;
    if (!c) {
        fprintf(stderr, "picomdm pushcert: %s\n", err);
        return CLI_EXIT_FAIL;
    }
    push_cert_state_t st = push_cert_state(c, time(NULL), NULL);
    if (!*push_cert_topic(c)) {
        fprintf(stderr, "picomdm pushcert: %s has no UID topic: not an MDM push certificate\n",
                file);
        goto out;
    }
    if (st == PUSH_CERT_EXPIRED || st == PUSH_CERT_NOT_YET_VALID) {
        fprintf(stderr, "picomdm pushcert: %s is %s: APNs would refuse it; nothing installed\n",
                file, push_cert_state_name(st));
        goto out;
    }
    const char *want = pm_cfg_str(ctx->cfg, "enrolled-topic");
    if (access(dest, F_OK) == 0) {
        old = push_cert_load(dest, NULL, NULL, false, err, sizeof err);
        if (!old && !force) {
            fprintf(stderr,
                    "picomdm pushcert: the installed certificate %s cannot be read (%s): its "
                    "topic cannot be compared; give --force to replace it anyway\n",
                    dest, err);
            goto out;
        }
        if (old && !want)
            want = push_cert_topic(old);
    }
    if (want && *want && strcmp(want, push_cert_topic(c)) != 0) {
        if (!force) {
            fprintf(stderr,
                    "picomdm pushcert: refused: the new certificate's topic is %s but enrolled "
                    "devices use %s.\nEvery enrolled device would be cut off (they only accept "
                    "pushes for their topic and must re-enroll).\nRenew the certificate at "
                    "identity.apple.com with the same Apple ID instead (the topic stays), or "
                    "give --force if you really mean to re-enroll every device.\n",
                    push_cert_topic(c), want);
            goto out;
        }
        fprintf(stderr,
                "picomdm pushcert: WARNING: topic changes from %s to %s: every enrolled device "
                "is cut off until it re-enrolls (--force)\n",
                want, push_cert_topic(c));
    }
    if (push_cert_pem(c, &cp, &cl, &kp, &kl) < 0) {
        fprintf(stderr, "picomdm pushcert: cannot encode the certificate and key\n");
        goto out;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", dest);
    snprintf(bak, sizeof bak, "%s.bak", dest);
    unlink(tmp);
    if (!(f = s_create(tmp, false)))
        goto out;
    if (fwrite(cp, 1, cl, f) != cl || fwrite(kp, 1, kl, f) != kl || fflush(f) != 0 ||
        fsync(fileno(f)) != 0) {
        fprintf(stderr, "picomdm pushcert: cannot write %s: %s\n", tmp, strerror(errno));
        goto out;
    }
    fclose(f);
    f = NULL;
    if (old && link(dest, bak) < 0 && errno == EEXIST) {
        unlink(bak);
        if (link(dest, bak) < 0)
            fprintf(stderr, "picomdm pushcert: note: no backup %s: %s\n", bak, strerror(errno));
    }
    if (rename(tmp, dest) < 0) {
        fprintf(stderr, "picomdm pushcert: cannot replace %s: %s\n", dest, strerror(errno));
        unlink(tmp);
        goto out;
    }
    printf("installed %s (topic %s)%s%s\nnext: reload the pusher (kill -HUP its pid, or "
           "systemctl reload picomdm-pusher) so it uses the new certificate\n",
           dest, push_cert_topic(c), old ? "; previous one kept as " : "", old ? bak : "");
    rc = CLI_EXIT_OK;
out:
    if (f) {
        fclose(f);
        unlink(tmp);
    }
    if (kp)
        OPENSSL_cleanse(kp, kl);
    free(kp);
    free(cp);
    push_cert_destroy(&old);
    push_cert_destroy(&c);
    return rc;
}

int pushcert_run(cli_ctx_t *ctx)
{
    const char *verb = cli_arg(ctx, 0);
    if (verb && strcmp(verb, "new") == 0)
        return s_new(ctx);
    if (verb && strcmp(verb, "vendor-sign") == 0)
        return s_vendor_sign(ctx);
    if (verb && strcmp(verb, "show") == 0)
        return s_show(ctx);
    if (verb && strcmp(verb, "install") == 0)
        return s_install(ctx);
    fprintf(stderr, "usage: picomdm pushcert new|vendor-sign|show FILE|install FILE [options]\n"
                    "(`picomdm pushcert --help` lists the options; docs/push.md has the steps)\n");
    return CLI_EXIT_USAGE;
}
