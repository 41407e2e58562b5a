/*  gw_tlscache unit tests: in-memory handshakes (BIO pairs) between an
 *  OpenSSL client and a server context with the cache attached: sessions
 *  resume (TLS 1.3 and 1.2) although the server's SSL is freed without
 *  SSL_shutdown (as libevent does), the bound evicts the oldest, an expired
 *  session is not handed out, a second attach is refused. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "gw_tlscache.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

static EVP_PKEY *s_key;
static X509 *s_cert;

static int s_setup(void **state)
{
    (void)state;
    s_key = EVP_EC_gen("P-256");
    s_cert = X509_new();
    if (!s_key || !s_cert)
        return -1;
    X509_set_version(s_cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(s_cert), 1);
    X509_NAME *name = X509_get_subject_name(s_cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"gw_tlscache", -1,
                               -1, 0);
    X509_set_issuer_name(s_cert, name);
    X509_gmtime_adj(X509_getm_notBefore(s_cert), -60);
    X509_gmtime_adj(X509_getm_notAfter(s_cert), 3600);
    X509_set_pubkey(s_cert, s_key);
    return X509_sign(s_cert, s_key, EVP_sha256()) > 0 ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    X509_free(s_cert);
    EVP_PKEY_free(s_key);
    return 0;
}

static SSL_CTX *s_server_ctx(size_t max)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    assert_non_null(ctx);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_num_tickets(ctx, 1);
    assert_int_equal(SSL_CTX_use_certificate(ctx, s_cert), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(ctx, s_key), 1);
    static const unsigned char sid[] = "gw_tlscache_test";
    SSL_CTX_set_session_id_context(ctx, sid, sizeof sid - 1);
    assert_int_equal(gw_tlscache_attach(ctx, max), 0);
    return ctx;
}

static SSL_CTX *s_client_ctx(int version)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    SSL_CTX_set_min_proto_version(ctx, version);
    SSL_CTX_set_max_proto_version(ctx, version);
    return ctx;
}

//  One connection: handshake, one byte from the server (the client reads the
//  TLS 1.3 ticket with it), then both SSLs freed without SSL_shutdown.
//  *sess (in: the session to offer or NULL; out: the client's new one).
//  `corrupt`: before the frees, a forged application-data record reaches the
//  server, which fails to decrypt it and sends a fatal alert (bad_record_mac).
//  Returns whether the connection resumed.
static int s_connect_ex(SSL_CTX *sctx, SSL_CTX *cctx, SSL_SESSION **sess, long age, bool corrupt)
{
    SSL *srv = SSL_new(sctx), *cli = SSL_new(cctx);
    assert_non_null(srv);
    assert_non_null(cli);
    BIO *sb = NULL, *cb = NULL;
    assert_int_equal(BIO_new_bio_pair(&sb, 0, &cb, 0), 1);
    SSL_set_bio(srv, sb, sb);
    SSL_set_bio(cli, cb, cb);
    SSL_set_accept_state(srv);
    SSL_set_connect_state(cli);
    if (*sess)
        assert_int_equal(SSL_set_session(cli, *sess), 1);
    int sdone = 0, cdone = 0;
    for (int i = 0; i < 20 && !(sdone && cdone); i++) {
        if (!cdone)
            cdone = SSL_do_handshake(cli) == 1;
        if (!sdone)
            sdone = SSL_do_handshake(srv) == 1;
    }
    assert_true(sdone && cdone);
    assert_int_equal(SSL_write(srv, "x", 1), 1);
    char c = 0;
    assert_int_equal(SSL_read(cli, &c, 1), 1);
    int reused = SSL_session_reused(srv);
    assert_int_equal(reused, SSL_session_reused(cli));
    SSL_SESSION_free(*sess);
    *sess = SSL_get1_session(cli);
    assert_non_null(*sess);
    //  the server's session object is the one the cache holds (a full
    //  handshake's): `age` seconds older
    if (age)
        SSL_SESSION_set_time(SSL_get_session(srv),
                             SSL_SESSION_get_time(SSL_get_session(srv)) - age);
    if (corrupt) {
        unsigned char rec[5 + 32] = {0x17, 0x03, 0x03, 0x00, 0x20};
        for (size_t i = 5; i < sizeof rec; i++)
            rec[i] = (unsigned char)(i * 37u);
        assert_int_equal(BIO_write(SSL_get_wbio(cli), rec, (int)sizeof rec), (int)sizeof rec);
        assert_true(SSL_read(srv, &c, 1) <= 0);
        assert_int_equal(SSL_get_error(srv, -1), SSL_ERROR_SSL);
        ERR_clear_error();
    }
    SSL_free(srv);     //  no SSL_shutdown: what libevent 2.1 does
    SSL_shutdown(cli); //  (else libssl marks the client's copy not resumable)
    SSL_free(cli);
    return reused;
}

static int s_connect_aged(SSL_CTX *sctx, SSL_CTX *cctx, SSL_SESSION **sess, long age)
{
    return s_connect_ex(sctx, cctx, sess, age, false);
}

static int s_connect(SSL_CTX *sctx, SSL_CTX *cctx, SSL_SESSION **sess)
{
    return s_connect_aged(sctx, cctx, sess, 0);
}

static void s_resumes(int version)
{
    SSL_CTX *sctx = s_server_ctx(16), *cctx = s_client_ctx(version);
    SSL_SESSION *sess = NULL;
    assert_int_equal(gw_tlscache_size(sctx), 0);
    assert_int_equal(s_connect(sctx, cctx, &sess), 0);
    assert_int_equal(gw_tlscache_size(sctx), 1);
    assert_int_equal(s_connect(sctx, cctx, &sess), 1);
    assert_int_equal(s_connect(sctx, cctx, &sess), 1);
    //  a client without a session: a full handshake, one more session
    SSL_SESSION *other = NULL;
    assert_int_equal(s_connect(sctx, cctx, &other), 0);
    SSL_SESSION_free(other);
    SSL_SESSION_free(sess);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx); //  frees the cache and its sessions (ASan checks)
}

static void test_resume_tls13(void **state)
{
    (void)state;
    s_resumes(TLS1_3_VERSION);
}

static void test_resume_tls12(void **state)
{
    (void)state;
    s_resumes(TLS1_2_VERSION);
}

static void test_bound_evicts_oldest(void **state)
{
    (void)state;
    SSL_CTX *sctx = s_server_ctx(3), *cctx = s_client_ctx(TLS1_3_VERSION);
    SSL_SESSION *a = NULL, *b = NULL, *c = NULL, *d = NULL;
    assert_int_equal(s_connect(sctx, cctx, &a), 0);
    assert_int_equal(s_connect(sctx, cctx, &b), 0);
    assert_int_equal(s_connect(sctx, cctx, &c), 0);
    assert_int_equal(s_connect(sctx, cctx, &d), 0);
    //  at most 3 (OpenSSL 3.0 evicts once more than needed: it counts the
    //  session just added before it checks the bound)
    assert_true(gw_tlscache_size(sctx) >= 2 && gw_tlscache_size(sctx) <= 3);
    assert_int_equal(s_connect(sctx, cctx, &a), 0); //  the oldest, evicted: full handshake
    assert_int_equal(s_connect(sctx, cctx, &d), 1); //  the newest still resumes
    assert_true(gw_tlscache_size(sctx) <= 3);
    SSL_SESSION_free(a);
    SSL_SESSION_free(b);
    SSL_SESSION_free(c);
    SSL_SESSION_free(d);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

static void s_expired(int version)
{
    SSL_CTX *sctx = s_server_ctx(4), *cctx = s_client_ctx(version);
    SSL_SESSION *sess = NULL;
    //  a session older than the context's timeout (OpenSSL's 7,200 s)
    assert_int_equal(s_connect_aged(sctx, cctx, &sess, 7300), 0);
    assert_int_equal(gw_tlscache_size(sctx), 1);
    assert_int_equal(s_connect(sctx, cctx, &sess), 0);
    //  the fresh one resumes
    assert_int_equal(s_connect(sctx, cctx, &sess), 1);
    SSL_SESSION_free(sess);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

static void test_expired_not_resumed(void **state)
{
    (void)state;
    s_expired(TLS1_3_VERSION);
    s_expired(TLS1_2_VERSION);
}

//  A connection that ends in a fatal alert loses its session: the callback
//  that keeps sessions of connections freed without SSL_shutdown must not
//  keep one libssl invalidated.
static void s_fatal(int version)
{
    SSL_CTX *sctx = s_server_ctx(4), *cctx = s_client_ctx(version);
    SSL_SESSION *sess = NULL;
    assert_int_equal(s_connect(sctx, cctx, &sess), 0);
    assert_int_equal(s_connect_ex(sctx, cctx, &sess, 0, true), 1); //  resumed, then the alert
    assert_int_equal(s_connect(sctx, cctx, &sess), 0);             //  gone: full handshake
    assert_int_equal(s_connect(sctx, cctx, &sess), 1);             //  its successor resumes
    SSL_SESSION_free(sess);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

static void test_fatal_alert_not_resumed(void **state)
{
    (void)state;
    s_fatal(TLS1_3_VERSION);
    s_fatal(TLS1_2_VERSION);
}

static void test_attach_twice_refused(void **state)
{
    (void)state;
    SSL_CTX *sctx = s_server_ctx(4);
    assert_int_equal(gw_tlscache_attach(sctx, 4), -1);
    assert_int_equal(gw_tlscache_attach(NULL, 4), -1);
    SSL_CTX *other = SSL_CTX_new(TLS_server_method());
    assert_int_equal(gw_tlscache_attach(other, 0), -1);
    assert_int_equal(gw_tlscache_size(other), 0);
    SSL_CTX_free(other);
    SSL_CTX_free(sctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resume_tls13),
        cmocka_unit_test(test_resume_tls12),
        cmocka_unit_test(test_bound_evicts_oldest),
        cmocka_unit_test(test_expired_not_resumed),
        cmocka_unit_test(test_fatal_alert_not_resumed),
        cmocka_unit_test(test_attach_twice_refused),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
