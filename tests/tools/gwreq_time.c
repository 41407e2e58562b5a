/*  gwreq_time — where the gateway's CPU per device request goes, step by step
 *  (issue #4; docs/gateway.md, "Session 4").
 *
 *  Builds one signed Idle request and one signed Acknowledged request the way
 *  the device simulator does (EC P-256 identity issued by a test CA, detached
 *  CMS with signed attributes over an XML plist), then times each step the
 *  gateway takes for them, N times in a loop, and counts the malloc calls of
 *  each step (malloc/calloc/realloc are wrapped in this program, which
 *  interposes them for every library: OpenSSL, libplist, msgpack-c...).
 *
 *  The gateway's own static steps (s_unbase64, s_split_certs, ...) are timed
 *  by compiling its modules into this program (#include of the .c files), so
 *  the code measured is exactly the code that runs; nothing here is linked
 *  into a PicoMDM binary.
 *
 *    build/rel/tt/gwreq_time [N [rsa]]  (default 20000 iterations per step;
 *                                        rsa: RSA-2048 device keys, else P-256)
 *
 *  Prints one line per step: microseconds per call and malloc calls per call.
 *  TLS: one record each way over a TLS 1.3 connection held in memory BIOs
 *  (the cipher devices and curl negotiate, TLS_AES_256_GCM_SHA384).
 */
#include "../../gateway/gw_auth.c"
#include "../../gateway/gw_devreq.c"
#include "../../gateway/gw_eid.c"
#include "../../gateway/gw_http.c"

#include "pm_plist.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/http.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <plist/plist.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- counting allocator ---- */

//  (not under AddressSanitizer, which has its own malloc: counts stay 0)
#if defined(__SANITIZE_ADDRESS__)
#define S_COUNTING 0
static unsigned long s_nmalloc;
#define s_raw_malloc malloc
#define s_raw_calloc calloc
#define s_raw_free free
#else
#define S_COUNTING 1
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
static unsigned long s_nmalloc;
void *malloc(size_t n)
{
    s_nmalloc++;
    return __libc_malloc(n);
}
void *calloc(size_t a, size_t b)
{
    s_nmalloc++;
    return __libc_calloc(a, b);
}
void *realloc(void *p, size_t n)
{
    s_nmalloc++;
    return __libc_realloc(p, n);
}
void free(void *p)
{
    __libc_free(p);
}
#define s_raw_malloc __libc_malloc
#define s_raw_calloc __libc_calloc
#define s_raw_free __libc_free
#endif

/* ---- timing ---- */

static double s_now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

#define TIME(label, n, stmt)                                                                       \
    do {                                                                                           \
        for (int w_ = 0; w_ < 50; w_++) {                                                          \
            stmt;                                                                                  \
        }                                                                                          \
        unsigned long m0_ = s_nmalloc;                                                             \
        double t0_ = s_now_us();                                                                   \
        for (int i_ = 0; i_ < (n); i_++) {                                                         \
            stmt;                                                                                  \
        }                                                                                          \
        double t1_ = s_now_us();                                                                   \
        printf("  %-44s %8.2f us  %6.1f mallocs\n", label, (t1_ - t0_) / (n),                      \
               (double)(s_nmalloc - m0_) / (n));                                                   \
    } while (0)

/* ---- a test PKI and a signed request ---- */

typedef struct {
    X509 *cert;
    EVP_PKEY *key;
} s_ident_t;

static void s_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
}

static bool s_rsa; //  device key RSA-2048 instead of EC P-256

static s_ident_t s_make(const char *cn, const s_ident_t *issuer)
{
    s_ident_t id;
    id.key = s_rsa && issuer ? EVP_RSA_gen(2048) : EVP_EC_gen("P-256");
    id.cert = X509_new();
    X509_set_version(id.cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(id.cert), issuer ? 2 : 1);
    X509_gmtime_adj(X509_getm_notBefore(id.cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(id.cert), 86400 * 365);
    X509_NAME *name = X509_get_subject_name(id.cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(id.cert, issuer ? X509_get_subject_name(issuer->cert) : name);
    X509_set_pubkey(id.cert, id.key);
    X509 *icert = issuer ? issuer->cert : id.cert;
    s_ext(id.cert, icert, NID_subject_key_identifier, "hash");
    s_ext(id.cert, icert, NID_authority_key_identifier, "keyid:always");
    s_ext(id.cert, icert, NID_basic_constraints, issuer ? "critical,CA:FALSE" : "critical,CA:TRUE");
    X509_sign(id.cert, issuer ? issuer->key : id.key, EVP_sha256());
    return id;
}

static char *s_sign(const char *data, size_t len, const s_ident_t *id)
{
    BIO *in = BIO_new_mem_buf(data, (int)len);
    CMS_ContentInfo *cms = CMS_sign(id->cert, id->key, NULL, in, CMS_DETACHED | CMS_BINARY);
    unsigned char *der = NULL;
    int dlen = i2d_CMS_ContentInfo(cms, &der);
    char *b64 = s_raw_malloc((size_t)dlen / 3 * 4 + 8);
    EVP_EncodeBlock((unsigned char *)b64, der, dlen);
    OPENSSL_free(der);
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    return b64;
}

static char *s_xml(plist_t p, size_t *len)
{
    char *xml = NULL;
    uint32_t n = 0;
    plist_to_xml(p, &xml, &n);
    plist_free(p);
    *len = n;
    return xml;
}

/* ---- TLS in memory ---- */

typedef struct {
    SSL *s, *c;
    BIO *s_in, *s_out, *c_in, *c_out; //  memory BIOs: c_out -> s_in, s_out -> c_in
} s_tls_t;

static void s_pump(BIO *from, BIO *to)
{
    char buf[32768];
    int n;
    while ((n = BIO_read(from, buf, sizeof buf)) > 0)
        BIO_write(to, buf, n);
}

static int s_tls_pair(s_tls_t *t, const s_ident_t *srv)
{
    SSL_CTX *sctx = SSL_CTX_new(TLS_server_method()), *cctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_use_certificate(sctx, srv->cert);
    SSL_CTX_use_PrivateKey(sctx, srv->key);
    t->s = SSL_new(sctx);
    t->c = SSL_new(cctx);
    t->s_in = BIO_new(BIO_s_mem());
    t->s_out = BIO_new(BIO_s_mem());
    t->c_in = BIO_new(BIO_s_mem());
    t->c_out = BIO_new(BIO_s_mem());
    SSL_set_bio(t->s, t->s_in, t->s_out);
    SSL_set_bio(t->c, t->c_in, t->c_out);
    SSL_set_accept_state(t->s);
    SSL_set_connect_state(t->c);
    for (int i = 0; i < 10; i++) {
        int a = SSL_do_handshake(t->c), b = SSL_do_handshake(t->s);
        s_pump(t->c_out, t->s_in);
        s_pump(t->s_out, t->c_in);
        if (a == 1 && b == 1)
            break;
    }
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    printf("  TLS: %s %s\n", SSL_get_version(t->s), SSL_get_cipher(t->s));
    return 0;
}

/* ---- HTTP through evhttp, in process ---- */

//  The gateway's HTTP layer for one request: evhttp reads and parses it from
//  a loopback TCP connection (plain: the TLS records are timed above), the
//  callback looks the signature header up and answers with gw_http_send,
//  evhttp writes the answer and goes back to reading. The client is this
//  process too (a blocking write of the request, non-blocking reads of the
//  answer), so its write() and read() are in the figure.
typedef struct {
    struct event_base *base;
    struct evhttp *http;
    int cfd;
    const char *reply;
    size_t rlen, anslen; //  anslen: bytes of one whole answer (found on the first)
    int answered;
} s_http_t;

static void s_http_cb(struct evhttp_request *req, void *arg)
{
    s_http_t *h = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    evbuffer_pullup(in, -1);
    if (!evhttp_find_header(evhttp_request_get_input_headers(req), "Mdm-Signature"))
        printf("  HTTP: no Mdm-Signature header?\n");
    gw_http_send(req, 200, h->rlen ? "application/xml" : NULL, h->reply, h->rlen);
    h->answered++;
}

static int s_http_open(s_http_t *h, const char *reply, size_t rlen)
{
    memset(h, 0, sizeof *h);
    h->reply = reply;
    h->rlen = rlen;
    //  as picomdm-gateway makes its base (main.c): epoll with the change list
    struct event_config *ecfg = event_config_new();
    if (ecfg)
        event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    h->base = ecfg ? event_base_new_with_config(ecfg) : NULL;
    event_config_free(ecfg);
    h->http = h->base ? evhttp_new(h->base) : NULL;
    if (!h->http)
        return -1;
    evhttp_set_gencb(h->http, s_http_cb, h);
    evhttp_set_allowed_methods(h->http, EVHTTP_REQ_PUT | EVHTTP_REQ_GET);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(h->http, "127.0.0.1", 0);
    if (!bs)
        return -1;
    struct sockaddr_in a;
    socklen_t alen = sizeof a;
    if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&a, &alen) < 0)
        return -1;
    h->cfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(h->cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(h->cfd, (struct sockaddr *)&a, alen) < 0)
        return -1;
    fcntl(h->cfd, F_SETFL, fcntl(h->cfd, F_GETFL) | O_NONBLOCK);
    return 0;
}

//  One request in, its whole answer out. Returns the answer's size, 0 on error.
static size_t s_http_once(s_http_t *h, const char *req, size_t len)
{
    for (size_t off = 0; off < len;) {
        ssize_t w = write(h->cfd, req + off, len - off);
        if (w <= 0 && errno != EAGAIN)
            return 0;
        if (w > 0)
            off += (size_t)w;
        else
            event_base_loop(h->base, EVLOOP_NONBLOCK);
    }
    char buf[65536];
    size_t got = 0;
    for (int spin = 0; spin < 100000; spin++) {
        event_base_loop(h->base, EVLOOP_NONBLOCK);
        ssize_t r = read(h->cfd, buf + got, sizeof buf - got);
        if (r > 0)
            got += (size_t)r;
        if (h->anslen ? got >= h->anslen : got > 0 && strstr(buf, "\r\n\r\n") != NULL) {
            if (!h->anslen) {
                //  the first answer: headers + Content-Length bytes
                buf[got < sizeof buf ? got : sizeof buf - 1] = '\0';
                const char *cl = strstr(buf, "Content-Length: ");
                const char *eoh = strstr(buf, "\r\n\r\n");
                size_t want = (size_t)(eoh - buf) + 4 + (cl ? strtoul(cl + 16, NULL, 10) : 0);
                if (got < want)
                    continue;
                h->anslen = want;
            }
            return got;
        }
    }
    return 0;
}

static void s_http_close(s_http_t *h)
{
    if (h->cfd > 0)
        close(h->cfd);
    if (h->http)
        evhttp_free(h->http);
    if (h->base)
        event_base_free(h->base);
}

/* ---- one request ---- */

static void s_request(const char *name, gw_auth_t *auth, const char *body, size_t len,
                      const char *sig, const s_tls_t *tls, const char *reply, size_t rlen, int n)
{
    size_t siglen = strlen(sig);
    printf("%s: body %zu bytes, Mdm-Signature %zu bytes, reply %zu bytes\n", name, len, siglen,
           rlen);
    gw_auth_result_t res;
    if (gw_auth_verify_signature(auth, sig, siglen, (const uint8_t *)body, len, &res) < 0) {
        printf("  signature REJECTED: %s %s\n", res.code, res.reason);
        exit(1);
    }

    //  TLS: the request as the gateway reads it (one record: headers with the
    //  signature + body), the answer as it writes it.
    size_t reqlen = siglen + len + 300;
    char *reqbuf = s_raw_calloc(1, reqlen), *rd = s_raw_malloc(reqlen);
    //  n + 50 records from the client, queued for the server (a TLS 1.3
    //  record cannot be replayed: each has its own sequence number)
    for (int i = 0; i < n + 50; i++) {
        SSL_write(tls->c, reqbuf, (int)reqlen);
        s_pump(tls->c_out, tls->s_in);
    }
    TIME("TLS record decrypt (request)", n, SSL_read(tls->s, rd, (int)reqlen));
    //  the answer: ~120 bytes of status line and headers, then the body
    char rrec[65536], *ans = s_raw_calloc(1, rlen + 120);
    memcpy(ans + 120, reply, rlen);
    TIME("TLS record encrypt (answer)", n, {
        SSL_write(tls->s, ans, (int)(rlen + 120));
        BIO_read(tls->s_out, rrec, sizeof rrec);
    });
    s_raw_free(ans);
    s_raw_free(reqbuf);
    s_raw_free(rd);

    //  HTTP: the request as curl (the simulator) sends it, through evhttp
    s_http_t ht;
    size_t hlen = siglen + len + 512;
    char *hreq = s_raw_malloc(hlen);
    int hn = snprintf(hreq, hlen,
                      "PUT /mdm/connect HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nAccept: */*\r\n"
                      "Mdm-Signature: %s\r\nContent-Type: application/x-apple-aspen-mdm\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      sig, len);
    memcpy(hreq + hn, body, len);
    if (s_http_open(&ht, reply, rlen) == 0 && s_http_once(&ht, hreq, (size_t)hn + len) > 0) {
        TIME("HTTP: evhttp in + gw_http_send out (TCP)", n,
             s_http_once(&ht, hreq, (size_t)hn + len));
        printf("  (HTTP answer %zu bytes, %d answered)\n", ht.anslen, ht.answered);
    } else
        printf("  HTTP step failed (loopback socket?)\n");
    s_http_close(&ht);
    s_raw_free(hreq);

    uint8_t *der = NULL;
    size_t derlen = 0;
    TIME("base64 (s_unbase64)", n, {
        der = s_unbase64(sig, siglen, &derlen);
        free(der);
    });
    der = s_unbase64(sig, siglen, &derlen);
    uint8_t *stripped = NULL, dalg[S_OID_MAX];
    size_t slen = 0, dlen = 0;
    STACK_OF(X509) *certs = NULL;
    TIME("split certs + cert cache (s_split_certs)", n, {
        s_split_certs(auth, der, derlen, &stripped, &slen, &certs, dalg, &dlen);
        free(stripped);
        sk_X509_pop_free(certs, X509_free);
    });
    TIME("  of which SHA-256 of the certificate DER", n, {
        uint8_t h[32];
        EVP_Digest(der, 400, h, NULL, s_md(auth, NID_sha256), NULL);
    });
    s_split_certs(auth, der, derlen, &stripped, &slen, &certs, dalg, &dlen);
    CMS_ContentInfo *cms = NULL;
    TIME("CMS decode without certs (d2i_CMS)", n, {
        const unsigned char *p = stripped;
        cms = d2i_CMS_ContentInfo(NULL, &p, (long)slen);
        CMS_ContentInfo_free(cms);
    });
    const unsigned char *p = stripped;
    cms = d2i_CMS_ContentInfo(NULL, &p, (long)slen);
    CMS_SignerInfo *si = sk_CMS_SignerInfo_value(CMS_get0_SignerInfos(cms), 0);
    X509 *signer = sk_X509_value(certs, 0);
    TIME("signer match (CMS_SignerInfo_cert_cmp)", n, CMS_SignerInfo_cert_cmp(si, signer));
    TIME("chain check, cached (s_verify_chain)", n, {
        gw_auth_result_t r2;
        memset(&r2, 0, sizeof r2);
        s_verify_chain(auth, signer, certs, &r2);
    });
    TIME("signature (CMS_SignerInfo_verify)", n, {
        CMS_SignerInfo_set1_signer_cert(si, signer);
        CMS_SignerInfo_verify(si);
    });
    {
        //  the same ECDSA verification without CMS: fresh contexts per call
        //  (what CMS_SignerInfo_verify sets up), and one EVP_PKEY_CTX kept
        ASN1_OCTET_STRING *sigos = CMS_SignerInfo_get0_signature(si);
        uint8_t dg[32];
        EVP_Digest(body, len, dg, NULL, s_md(auth, NID_sha256), NULL);
        EVP_PKEY *pk = X509_get0_pubkey(signer);
        TIME("  verify: EVP_DigestVerify, fresh contexts", n, {
            EVP_MD_CTX *m = EVP_MD_CTX_new();
            EVP_DigestVerifyInit_ex(m, NULL, "SHA256", NULL, NULL, pk, NULL);
            EVP_DigestVerify(m, sigos->data, (size_t)sigos->length, dg, 32);
            EVP_MD_CTX_free(m);
        });
        EVP_PKEY_CTX *kc = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
        EVP_PKEY_verify_init(kc);
        if (s_rsa)
            EVP_PKEY_CTX_set_signature_md(kc, EVP_sha256());
        TIME("  verify: EVP_PKEY_verify, one kept context", n,
             EVP_PKEY_verify(kc, sigos->data, (size_t)sigos->length, dg, 32));
        ERR_clear_error();
        EVP_PKEY_CTX_free(kc);
    }
    TIME("body digest (EVP_Digest SHA-256)", n, {
        uint8_t md[32];
        EVP_Digest(body, len, md, NULL, s_md(auth, NID_sha256), NULL);
    });
    TIME("signingTime (s_signing_time)", n, {
        gw_auth_result_t r2;
        s_signing_time(si, &r2);
    });
    TIME("WHOLE gw_auth_verify_signature", n,
         gw_auth_verify_signature(auth, sig, siglen, (const uint8_t *)body, len, &res));
    CMS_ContentInfo_free(cms);
    free(stripped);
    sk_X509_pop_free(certs, X509_free);
    free(der);

    uint8_t *mp = NULL;
    size_t mplen = 0;
    char err[256];
    pm_plist_limits_t lim = pm_plist_default_limits;
    TIME("plist -> msgpack (pm_plist_to_msgpack)", n, {
        pm_plist_to_msgpack(body, len, &lim, &mp, &mplen, err, sizeof err);
        free(mp);
    });
    gw_devreq_t d;
    char why[400];
    TIME("WHOLE gw_devreq_parse", n, {
        gw_devreq_parse((const uint8_t *)body, len, 8u << 20, true, &d, why, sizeof why);
        gw_devreq_clear(&d);
    });
    gw_devreq_parse((const uint8_t *)body, len, 8u << 20, true, &d, why, sizeof why);
    gw_devreq_policy_t pol = {3, 3, 600};
    TIME("bus message (gw_devreq_msg + encode)", n, {
        pm_msg_t *m = gw_devreq_msg(&d, &res, &pol);
        uint8_t *enc = NULL;
        size_t elen = 0;
        pm_msg_encode(m, &enc, &elen, err, sizeof err);
        free(enc);
        pm_msg_destroy(&m);
    });
    gw_devreq_clear(&d);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? (int)strtol(argv[1], NULL, 10) : 20000;
    if (n <= 0)
        n = 20000;
    s_rsa = argc > 2 && strcmp(argv[2], "rsa") == 0;
    s_ident_t ca = s_make("PicoMDM Bench CA", NULL), dev = s_make("device-bench", &ca),
              tlsid = s_make("localhost", &ca);
    char dir[] = "/tmp/gwreq_timeXXXXXX", path[64];
    if (!mkdtemp(dir))
        return 1;
    snprintf(path, sizeof path, "%s/ca.pem", dir);
    FILE *f = fopen(path, "w");
    PEM_write_X509(f, ca.cert);
    fclose(f);
    char err[256];
    gw_auth_t *auth = gw_auth_new(path, err, sizeof err);
    unlink(path);
    rmdir(dir);
    if (!auth) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    s_tls_t tls;
    s_tls_pair(&tls, &tlsid);

    //  Idle, answered with the DeviceInformation command (as in the e2e bench)
    plist_t idle = plist_new_dict();
    plist_dict_set_item(idle, "Status", plist_new_string("Idle"));
    plist_dict_set_item(idle, "UDID", plist_new_string("4E8A1F2C-0B7D-4C55-9A1E-3F6B2D9C0A17"));
    size_t ilen;
    char *ibody = s_xml(idle, &ilen);
    char *isig = s_sign(ibody, ilen, &dev);

    plist_t cmd = plist_new_dict(), c = plist_new_dict(), q = plist_new_array();
    plist_array_append_item(q, plist_new_string("OSVersion"));
    plist_array_append_item(q, plist_new_string("LastCloudBackupDate"));
    plist_dict_set_item(c, "RequestType", plist_new_string("DeviceInformation"));
    plist_dict_set_item(c, "Queries", q);
    plist_dict_set_item(cmd, "Command", c);
    plist_dict_set_item(cmd, "CommandUUID",
                        plist_new_string("7d1c55a6-3b0e-4f7a-9c2d-0e1f2a3b4c5d"));
    char *cmdmp_xml;
    size_t cmdlen;
    cmdmp_xml = s_xml(plist_copy(cmd), &cmdlen);

    plist_t ack = plist_new_dict(), qr = plist_new_dict();
    plist_dict_set_item(ack, "Status", plist_new_string("Acknowledged"));
    plist_dict_set_item(ack, "UDID", plist_new_string("4E8A1F2C-0B7D-4C55-9A1E-3F6B2D9C0A17"));
    plist_dict_set_item(ack, "CommandUUID",
                        plist_new_string("7d1c55a6-3b0e-4f7a-9c2d-0e1f2a3b4c5d"));
    plist_dict_set_item(qr, "OSVersion", plist_new_string("17.4.1"));
    plist_dict_set_item(qr, "LastCloudBackupDate", plist_new_date(760000000, 0));
    plist_dict_set_item(ack, "QueryResponses", qr);
    size_t alen;
    char *abody = s_xml(ack, &alen);
    char *asig = s_sign(abody, alen, &dev);

    s_request("Idle", auth, ibody, ilen, isig, &tls, cmdmp_xml, cmdlen, n);

    //  the answer to Idle: the command, msgpack -> XML plist
    uint8_t *cmp = NULL;
    size_t cmplen = 0;
    pm_plist_limits_t lim = pm_plist_default_limits;
    pm_plist_to_msgpack(cmdmp_xml, cmdlen, &lim, &cmp, &cmplen, err, sizeof err);
    msgpack_zone zone;
    msgpack_zone_init(&zone, 2048);
    msgpack_object obj;
    msgpack_unpack((const char *)cmp, cmplen, NULL, &zone, &obj);
    TIME("answer: command msgpack -> XML plist", n, {
        char *xml = NULL;
        size_t xl = 0;
        pm_plist_from_msgpack(&obj, &xml, &xl, err, sizeof err);
        free(xml);
    });
    msgpack_zone_destroy(&zone);
    free(cmp);

    s_request("Acknowledged", auth, abody, alen, asig, &tls, "", 0, n);

    plist_free(cmd);
    gw_auth_destroy(&auth);
    return 0;
}
