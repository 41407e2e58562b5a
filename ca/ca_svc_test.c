/*  ca_svc_test — the "ca" service end to end without a bus: every request and
 *  reply goes through pm_msg encode/decode as on the wire. A `profile`
 *  request yields a signed profile whose one-time challenge then enrolls a
 *  device over `scep` exactly once; events carry no secret. Both with the
 *  challenges in memory and signed (HMAC key file beside the CA key) with a
 *  (fake, in-test) store consuming them: there the profile needs no store,
 *  the PKCSReq is answered only after the store's verdict (ca.issued rides
 *  with it); forged, altered and expired challenges are refused without the
 *  store; a second service on the same key files accepts the first one's
 *  challenge; a store that does not answer gives an HTTP 503 for the PKCSReq
 *  (never a certificate); stopping answers every waiting request.
 */
#include "ca_scep.h"
#include "pm_scepc.h"
#include "ca_svc.h"
#include "ca_test_fixture.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <msgpack.h>
#include <openssl/cms.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <plist/plist.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

//  A fake store for durable challenges (the real one: store/store_chal_test.c).
typedef enum { S_STORE_SYNC, S_STORE_ASYNC, S_STORE_DOWN, S_STORE_ERROR } s_store_mode_t;

typedef struct {
    char hash[65], txid[130], kh[65];
    uint64_t expires_ms;
    bool used;
} s_row_t;

typedef struct {
    pm_msg_type_t type;
    char hash[65], txid[130], kh[65];
    uint64_t expires_ms;
    pm_bus_reply_fn *fn;
    void *fn_arg;
} s_callrec_t;

typedef struct {
    s_store_mode_t mode;
    s_row_t rows[16];
    int nrows;
    s_callrec_t queue[8]; //  ASYNC: calls not answered yet
    int nqueue;
    int uses;
    int seq;
    char last_event[32]; //  the event a use carried
} s_store_t;

typedef struct {
    ca_test_keys_t k;   //  temp dir and PKI files (ca_test_fixture.h)
    char chal_key[128]; //  challenge.key beside ca.key
    ca_svc_t *svc;
    s_store_t store;
    ca_svc_opts_t o;
} s_fix_t;

static void s_copy(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src ? src : "");
}

//  Answer one recorded call as the store would (scep_challenge.use): the
//  first use records the challenge, the same transaction and key again is
//  accepted, any other refused.
static void s_store_answer(s_store_t *st, const s_callrec_t *c)
{
    pm_msg_t *rep = NULL;
    if (st->mode == S_STORE_ERROR) {
        pm_msg_t *stub = pm_msg_new(c->type);
        rep = pm_msg_new_error(stub, "internal", "the database is on fire");
        pm_msg_destroy(&stub);
    } else {
        bool ok = false, found = false;
        for (int i = 0; i < st->nrows; i++) {
            s_row_t *r = &st->rows[i];
            if (strcmp(r->hash, c->hash) != 0)
                continue;
            found = true;
            ok = strcmp(r->txid, c->txid) == 0 && strcmp(r->kh, c->kh) == 0;
        }
        if (!found) {
            assert_true(st->nrows < 16);
            s_row_t *r = &st->rows[st->nrows++];
            memset(r, 0, sizeof *r);
            s_copy(r->hash, sizeof r->hash, c->hash);
            s_copy(r->txid, sizeof r->txid, c->txid);
            s_copy(r->kh, sizeof r->kh, c->kh);
            r->expires_ms = c->expires_ms;
            r->used = ok = true;
        }
        rep = pm_msg_new(PM_MSG_SCEP_CHALLENGE_USE_REPLY);
        pm_msg_set_bool(rep, "accepted", ok);
        if (ok)
            pm_msg_set_uint(rep, "seq", (uint64_t)++st->seq);
    }
    c->fn(c->fn_arg, rep, NULL);
    pm_msg_destroy(&rep);
}

static int s_fake_call(void *arg, const pm_msg_t *req, pm_bus_reply_fn *fn, void *fn_arg)
{
    s_store_t *st = arg;
    s_callrec_t c = {.type = pm_msg_type(req), .fn = fn, .fn_arg = fn_arg};
    assert_int_equal(c.type, PM_MSG_SCEP_CHALLENGE_USE);
    assert_string_equal(pm_msgdef(c.type)->service, "store");
    s_copy(c.hash, sizeof c.hash, pm_msg_str(req, "hash"));
    assert_int_equal(strlen(c.hash), 64);
    st->uses++;
    s_copy(c.txid, sizeof c.txid, pm_msg_str(req, "transaction_id"));
    s_copy(c.kh, sizeof c.kh, pm_msg_str(req, "key_hash"));
    assert_int_equal(strlen(c.kh), 64);
    c.expires_ms = pm_msg_uint(req, "expires_ms", 0);
    assert_true(c.expires_ms > (uint64_t)time(NULL) * 1000);
    //  the ca.issued event rides along (the store logs it when accepted)
    s_copy(st->last_event, sizeof st->last_event, pm_msg_str(req, "event"));
    const msgpack_object *d = pm_msg_obj(req, "event_data");
    assert_non_null(d);
    assert_int_equal(d->type, MSGPACK_OBJECT_MAP);
    switch (st->mode) {
    case S_STORE_SYNC:
    case S_STORE_ERROR:
        s_store_answer(st, &c);
        return 0;
    case S_STORE_ASYNC:
        assert_true(st->nqueue < 8);
        st->queue[st->nqueue++] = c;
        return 0;
    case S_STORE_DOWN:
    default:
        //  as pm_bus does after its retries: no reply, an error text
        fn(fn_arg, NULL, "no reply from service 'store'");
        return 0;
    }
}

//  ASYNC: answer every queued call now.
static void s_store_flush(s_store_t *st)
{
    while (st->nqueue > 0) {
        s_callrec_t c = st->queue[0];
        memmove(st->queue, st->queue + 1, (size_t)(--st->nqueue) * sizeof c);
        s_store_answer(st, &c);
    }
}

static int s_setup_mode(void **state, bool durable)
{
    s_fix_t *f = calloc(1, sizeof *f);
    if (ca_test_keys_init(&f->k, "ca_svc_test") < 0)
        return -1;
    char dir[64];
    memcpy(dir, f->k.dir, sizeof dir);
    snprintf(f->chal_key, sizeof f->chal_key, "%s/challenge.key", dir);
    ca_svc_opts_t o = {.pki = ca_test_pki_opts(&f->k),
                       .challenge_mode = CA_CHALLENGE_ONE_TIME,
                       .profile = {.server_url = "https://127.0.0.1:8443/mdm/server",
                                   .scep_url = "https://127.0.0.1:8443/scep",
                                   .topic = "com.apple.mgmt.test"},
                       .tls_anchor = f->k.paths[0]};
    if (durable) {
        o.call = s_fake_call;
        o.call_arg = &f->store;
    }
    char err[256];
    f->o = o;
    f->svc = ca_svc_new(&o, err, sizeof err);
    if (!f->svc)
        fprintf(stderr, "ca_svc_new: %s\n", err);
    *state = f;
    return f->svc ? 0 : -1;
}

static int s_setup(void **state)
{
    return s_setup_mode(state, false);
}

static int s_setup_durable(void **state)
{
    return s_setup_mode(state, true);
}

static int s_teardown(void **state)
{
    s_fix_t *f = *state;
    ca_svc_destroy(&f->svc);
    ca_svc_destroy(&f->svc);
    unlink(f->chal_key);
    ca_test_keys_remove(&f->k);
    free(f);
    return 0;
}

//  encode -> decode, as the bus would carry it
static pm_msg_t *s_wire(pm_msg_t *m)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[256];
    assert_int_equal(pm_msg_encode(m, &buf, &len, err, sizeof err), 0);
    pm_msg_t *out = NULL;
    assert_int_equal(pm_msg_decode(buf, len, &out, err, sizeof err), 0);
    free(buf);
    pm_msg_destroy(&m);
    return out;
}

typedef struct {
    int calls;
    pm_msg_t *rep, *ev;
} s_done_t;

static void s_on_done(void *arg, pm_msg_t *reply, pm_msg_t *event)
{
    s_done_t *d = arg;
    d->calls++;
    pm_msg_destroy(&d->rep);
    pm_msg_destroy(&d->ev);
    d->rep = reply;
    d->ev = event;
}

//  One request through ca_svc_request; an ASYNC store answers once the
//  request is seen waiting (the reply is not there before).
static pm_msg_t *s_call(s_fix_t *f, pm_msg_t *req, pm_msg_t **event)
{
    req = s_wire(req);
    s_done_t d = {0};
    ca_svc_request(f->svc, req, s_on_done, &d);
    if (f->store.mode == S_STORE_ASYNC && f->store.nqueue > 0) {
        assert_int_equal(d.calls, 0); //  durable first: no answer before the store's
        assert_int_equal(ca_svc_waiting(f->svc), 1);
        s_store_flush(&f->store);
    }
    assert_int_equal(d.calls, 1);
    assert_int_equal(ca_svc_waiting(f->svc), 0);
    pm_msg_t *rep = d.rep;
    if (event)
        *event = d.ev;
    else
        pm_msg_destroy(&d.ev);
    assert_non_null(rep);
    assert_string_equal(pm_msg_rid(rep), pm_msg_rid(req));
    pm_msg_destroy(&req);
    if (event && *event)
        *event = s_wire(*event);
    return s_wire(rep);
}

//  The SCEP challenge inside a signed profile (verified against the CA first).
static char *s_challenge_of(s_fix_t *f, const uint8_t *der, size_t len)
{
    const unsigned char *p = der;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    assert_non_null(cms);
    X509_STORE *st = X509_STORE_new();
    X509_STORE_add_cert(st, ca_pki_ca_cert(ca_svc_pki(f->svc)));
    BIO *out = BIO_new(BIO_s_mem());
    assert_int_equal(CMS_verify(cms, NULL, st, NULL, out, CMS_BINARY), 1);
    char *xml = NULL;
    long xl = BIO_get_mem_data(out, &xml);
    plist_t root = NULL;
    plist_from_xml(xml, (uint32_t)xl, &root);
    assert_non_null(root);
    char *ch = NULL;
    plist_t content = plist_dict_get_item(root, "PayloadContent");
    for (uint32_t i = 0; i < plist_array_get_size(content); i++) {
        plist_t sc = plist_dict_get_item(plist_array_get_item(content, i), "PayloadContent");
        plist_t c = sc && plist_get_node_type(sc) == PLIST_DICT
                        ? plist_dict_get_item(sc, "Challenge")
                        : NULL;
        if (c)
            plist_get_string_val(c, &ch);
    }
    plist_free(root);
    BIO_free(out);
    X509_STORE_free(st);
    CMS_ContentInfo_free(cms);
    assert_non_null(ch);
    return ch;
}

//  A PKIOperation bus request carrying a PKCSReq for `challenge`, signed by
//  a transient self-signed certificate of `key` (returned in *self, the
//  caller frees it: the reply is encrypted to it).
static pm_msg_t *s_pkcsreq_msg(s_fix_t *f, EVP_PKEY *key, const char *challenge, const char *txid,
                               X509 **self)
{
    X509_REQ *csr = pm_scepc_csr(key, "svc-device", challenge);
    *self = pm_scepc_self_signed(key, "transient");
    uint8_t nonce[16], *der = NULL;
    size_t len = 0;
    RAND_bytes(nonce, sizeof nonce);
    assert_int_equal(pm_scepc_request(CA_SCEP_PKCSREQ, csr, *self, key,
                                      ca_pki_ra_cert(ca_svc_pki(f->svc)), txid, nonce, &der, &len),
                     0);
    X509_REQ_free(csr);
    pm_msg_t *req = pm_msg_new(PM_MSG_SCEP);
    pm_msg_set_str(req, "method", "POST");
    pm_msg_set_str(req, "operation", "PKIOperation");
    pm_msg_set_bin(req, "message", der, len);
    pm_msg_set_str(req, "remote", "127.0.0.1");
    OPENSSL_free(der);
    return req;
}

static pm_msg_t *s_pkiop(s_fix_t *f, EVP_PKEY *key, const char *challenge, const char *txid,
                         pm_msg_t **event, pm_scepc_result_t *res, X509 **self_out)
{
    X509 *self = NULL;
    pm_msg_t *req = s_pkcsreq_msg(f, key, challenge, txid, &self);
    pm_msg_t *rep = s_call(f, req, event);
    assert_int_equal(pm_msg_type(rep), PM_MSG_SCEP_REPLY);
    assert_int_equal(pm_msg_uint(rep, "status", 0), 200);
    size_t blen = 0;
    const uint8_t *body = pm_msg_bin(rep, "body", &blen);
    char err[200];
    assert_int_equal(pm_scepc_parse_reply(body, blen, ca_pki_ra_cert(ca_svc_pki(f->svc)), self, key,
                                          res, err, sizeof err),
                     0);
    *self_out = self;
    return rep;
}

static void test_profile_then_scep(void **state)
{
    s_fix_t *f = *state;
    pm_msg_t *ev = NULL;
    pm_msg_t *req = pm_msg_new(PM_MSG_PROFILE);
    pm_msg_set_str(req, "for", "alice");
    pm_msg_t *rep = s_call(f, req, &ev);
    assert_int_equal(pm_msg_type(rep), PM_MSG_PROFILE_REPLY);
    assert_string_equal(pm_msg_str(rep, "content_type"), "application/x-apple-aspen-config");
    assert_true(pm_msg_bool(rep, "one_time", false));
    assert_int_equal(pm_msg_uint(rep, "expires_s", 0), 7 * 86400);
    assert_int_equal(strlen(pm_msg_str(rep, "identity_uuid")), 36);
    size_t plen = 0;
    const uint8_t *prof = pm_msg_bin(rep, "profile", &plen);
    char *challenge = s_challenge_of(f, prof, plen);
    //  signed (with a store): 64 characters; in memory: 32
    assert_int_equal(strlen(challenge), f->o.call ? 64 : 32);
    assert_int_equal(f->store.uses, 0); //  a profile needs no store
    assert_non_null(ev);
    assert_string_equal(pm_msg_str(ev, "name"), "ca.profile");
    pm_msg_destroy(&ev);
    pm_msg_destroy(&rep);

    EVP_PKEY *key = EVP_RSA_gen(2048);
    pm_scepc_result_t res;
    X509 *self = NULL;
    rep = s_pkiop(f, key, challenge, "SVC-TX-1", &ev, &res, &self);
    assert_int_equal(res.pki_status, CA_SCEP_SUCCESS);
    assert_non_null(res.cert);
    assert_non_null(ev);
    assert_string_equal(pm_msg_str(ev, "name"), "ca.issued");
    //  signed: the store consumed the challenge and logged ca.issued (seq)
    assert_int_equal(f->store.uses, f->o.call ? 1 : 0);
    assert_true(f->o.call ? pm_msg_uint(ev, "seq", 0) > 0 : pm_msg_uint(ev, "seq", 0) == 0);
    //  the event data is a map holding the certificate hash, and no challenge
    uint8_t *buf = NULL;
    size_t blen = 0;
    char err[200];
    assert_int_equal(pm_msg_encode(ev, &buf, &blen, err, sizeof err), 0);
    assert_null(memmem(buf, blen, challenge, strlen(challenge)));
    assert_non_null(memmem(buf, blen, "cert_sha256", 11));
    free(buf);
    pm_msg_destroy(&ev);
    pm_msg_destroy(&rep);
    X509_free(res.cert);
    X509_free(self);

    //  the challenge is spent: another transaction is refused
    rep = s_pkiop(f, key, challenge, "SVC-TX-2", &ev, &res, &self);
    assert_int_equal(res.pki_status, CA_SCEP_FAILURE);
    assert_int_equal(res.fail_info, CA_SCEP_BAD_REQUEST);
    assert_null(res.cert);
    assert_non_null(ev);
    assert_string_equal(pm_msg_str(ev, "name"), "ca.rejected");
    assert_int_equal(pm_msg_encode(ev, &buf, &blen, err, sizeof err), 0);
    assert_null(memmem(buf, blen, challenge, strlen(challenge)));
    free(buf);
    pm_msg_destroy(&ev);
    pm_msg_destroy(&rep);
    X509_free(self);
    EVP_PKEY_free(key);
    free(challenge);
}

static void test_scep_http_and_errors(void **state)
{
    s_fix_t *f = *state;
    pm_msg_t *req = pm_msg_new(PM_MSG_SCEP);
    pm_msg_set_str(req, "method", "GET");
    pm_msg_set_str(req, "operation", "GetCACaps");
    pm_msg_t *rep = s_call(f, req, NULL);
    assert_int_equal(pm_msg_uint(rep, "status", 0), 200);
    assert_string_equal(pm_msg_str(rep, "content_type"), "text/plain");
    size_t len = 0;
    const uint8_t *body = pm_msg_bin(rep, "body", &len);
    assert_non_null(memmem(body, len, "SCEPStandard", 12));
    pm_msg_destroy(&rep);

    pm_msg_t *ev = NULL;
    req = pm_msg_new(PM_MSG_SCEP);
    pm_msg_set_str(req, "method", "POST");
    pm_msg_set_str(req, "operation", "PKIOperation");
    pm_msg_set_bin(req, "message", "garbage", 7);
    rep = s_call(f, req, &ev);
    assert_int_equal(pm_msg_uint(rep, "status", 0), 400);
    assert_non_null(pm_msg_str(rep, "reason"));
    assert_non_null(ev);
    assert_string_equal(pm_msg_str(ev, "name"), "ca.rejected");
    pm_msg_destroy(&ev);
    pm_msg_destroy(&rep);

    //  not a ca request
    req = pm_msg_new(PM_MSG_ECHO);
    rep = s_call(f, req, NULL);
    assert_int_equal(pm_msg_type(rep), PM_MSG_ERROR);
    assert_string_equal(pm_msg_str(rep, "code"), "bad_request");
    pm_msg_destroy(&rep);

    //  a profile request with a bad override: error with the reason
    req = pm_msg_new(PM_MSG_PROFILE);
    pm_msg_set_str(req, "server_url", "http://insecure.test/");
    rep = s_call(f, req, NULL);
    assert_int_equal(pm_msg_type(rep), PM_MSG_ERROR);
    assert_non_null(strstr(pm_msg_str(rep, "message"), "https://"));
    pm_msg_destroy(&rep);
}

static pm_msg_t *s_profile_req(s_fix_t *f, pm_msg_t **ev)
{
    pm_msg_t *req = pm_msg_new(PM_MSG_PROFILE);
    pm_msg_set_str(req, "for", "bob");
    return s_call(f, req, ev);
}

static char *s_profile_challenge(s_fix_t *f)
{
    pm_msg_t *ev = NULL;
    pm_msg_t *rep = s_profile_req(f, &ev);
    assert_int_equal(pm_msg_type(rep), PM_MSG_PROFILE_REPLY);
    assert_non_null(ev);
    assert_string_equal(pm_msg_str(ev, "name"), "ca.profile");
    size_t plen = 0;
    const uint8_t *prof = pm_msg_bin(rep, "profile", &plen);
    char *challenge = s_challenge_of(f, prof, plen);
    pm_msg_destroy(&ev);
    pm_msg_destroy(&rep);
    return challenge;
}

//  A PKCSReq with `challenge` refused (FAILURE badRequest, ca.rejected).
static void s_expect_refused(s_fix_t *f, EVP_PKEY *key, const char *challenge, const char *txid)
{
    pm_msg_t *ev = NULL;
    pm_scepc_result_t res;
    X509 *self = NULL;
    pm_msg_t *rep = s_pkiop(f, key, challenge, txid, &ev, &res, &self);
    assert_int_equal(res.pki_status, CA_SCEP_FAILURE);
    assert_int_equal(res.fail_info, CA_SCEP_BAD_REQUEST);
    assert_null(res.cert);
    assert_non_null(ev);
    assert_string_equal(pm_msg_str(ev, "name"), "ca.rejected");
    pm_msg_destroy(&ev);
    pm_msg_destroy(&rep);
    X509_free(self);
}

//  Signed challenges: the profile writes nothing to the store; the PKCSReq is
//  decided by the store (the challenge's hash and expiry), a retry of the same
//  transaction is accepted, another transaction refused; forged, altered and
//  expired challenges are refused by the ca without asking the store.
static void test_durable_store_decides(void **state)
{
    s_fix_t *f = *state;
    f->store.mode = S_STORE_ASYNC;
    char *challenge = s_profile_challenge(f);
    assert_int_equal(strlen(challenge), 64);
    assert_int_equal(f->store.uses + f->store.nqueue + f->store.nrows, 0);
    char hex[65];
    ca_challenge_hash_hex(challenge, hex);

    EVP_PKEY *key = EVP_RSA_gen(2048);
    pm_scepc_result_t res;
    X509 *self = NULL;
    pm_msg_t *ev = NULL;
    pm_msg_t *rep = s_pkiop(f, key, challenge, "DUR-TX-1", &ev, &res, &self);
    assert_int_equal(res.pki_status, CA_SCEP_SUCCESS);
    assert_non_null(res.cert);
    assert_string_equal(pm_msg_str(ev, "name"), "ca.issued");
    assert_true(pm_msg_uint(ev, "seq", 0) > 0); //  logged by the store
    assert_string_equal(f->store.last_event, "ca.issued");
    assert_int_equal(f->store.nrows, 1);
    assert_string_equal(f->store.rows[0].hash, hex);
    assert_string_equal(f->store.rows[0].txid, "DUR-TX-1");
    //  the expiry travels: the challenge-ttl (7 days) from now
    int64_t left = (int64_t)f->store.rows[0].expires_ms - (int64_t)time(NULL) * 1000;
    assert_true(left > 7 * 86400000LL - 60000 && left <= 7 * 86400000LL + 1000);
    pm_msg_destroy(&ev);
    pm_msg_destroy(&rep);
    X509_free(res.cert);
    X509_free(self);
    //  the same transaction and key again (a lost reply): accepted
    rep = s_pkiop(f, key, challenge, "DUR-TX-1", &ev, &res, &self);
    assert_int_equal(res.pki_status, CA_SCEP_SUCCESS);
    pm_msg_destroy(&ev);
    pm_msg_destroy(&rep);
    X509_free(res.cert);
    X509_free(self);
    //  another transaction: FAILURE badRequest, no certificate
    s_expect_refused(f, key, challenge, "DUR-TX-2");
    assert_int_equal(f->store.uses, 3);
    //  forged or altered challenges never reach the store
    char forged[65];
    memcpy(forged, challenge, 65);
    forged[40] = forged[40] == 'A' ? 'B' : 'A'; //  inside the tag
    s_expect_refused(f, key, forged, "DUR-TX-3");
    memcpy(forged, challenge, 65);
    forged[5] = forged[5] == 'A' ? 'B' : 'A'; //  inside the nonce
    s_expect_refused(f, key, forged, "DUR-TX-4");
    s_expect_refused(f, key, "nOtAChallengeTheCaMade0000000000", "DUR-TX-5");
    s_expect_refused(f, key, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_",
                     "DUR-TX-6");
    assert_int_equal(f->store.uses, 3);
    EVP_PKEY_free(key);
    free(challenge);
}

//  A second ca process (its own service, the same key files) accepts a
//  challenge the first one made; the key file is 0600 and reused.
static void test_second_ca_accepts(void **state)
{
    s_fix_t *f = *state;
    char *challenge = s_profile_challenge(f);
    struct stat st;
    assert_int_equal(stat(f->chal_key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    ca_svc_destroy(&f->svc); //  the first ca goes away (kill -9: nothing of it is needed)
    char err[256];
    f->svc = ca_svc_new(&f->o, err, sizeof err);
    assert_non_null(f->svc);
    EVP_PKEY *key = EVP_RSA_gen(2048);
    pm_scepc_result_t res;
    X509 *self = NULL;
    pm_msg_t *ev = NULL;
    pm_msg_t *rep = s_pkiop(f, key, challenge, "SECOND-TX", &ev, &res, &self);
    assert_int_equal(res.pki_status, CA_SCEP_SUCCESS);
    assert_non_null(res.cert);
    pm_msg_destroy(&ev);
    pm_msg_destroy(&rep);
    X509_free(res.cert);
    X509_free(self);
    s_expect_refused(f, key, challenge, "SECOND-TX-2");
    free(challenge);
    //  a new key (rotation) invalidates outstanding challenges
    challenge = s_profile_challenge(f);
    ca_svc_destroy(&f->svc);
    assert_int_equal(unlink(f->chal_key), 0);
    f->svc = ca_svc_new(&f->o, err, sizeof err);
    assert_non_null(f->svc);
    s_expect_refused(f, key, challenge, "ROTATED-TX");
    free(challenge);
    //  a malformed key file is an error, never replaced
    ca_svc_destroy(&f->svc);
    FILE *kf = fopen(f->chal_key, "w");
    assert_non_null(kf);
    fputs("not a key\n", kf);
    fclose(kf);
    assert_null(ca_svc_new(&f->o, err, sizeof err));
    assert_non_null(strstr(err, "challenge key"));
    //  a key file readable by others is tightened to 0600
    kf = fopen(f->chal_key, "w");
    fputs("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n", kf);
    fclose(kf);
    chmod(f->chal_key, 0644);
    f->svc = ca_svc_new(&f->o, err, sizeof err);
    assert_non_null(f->svc);
    assert_int_equal(stat(f->chal_key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    EVP_PKEY_free(key);
}

//  The tag format, pinned independently of ca_challenge (session 5 keys the
//  HMAC once and copies it per tag): version | nonce | expiry | first 23
//  bytes of HMAC-SHA256(key, "picomdm scep challenge v1\0" | the 25 bytes
//  before the tag), URL-safe base64. raw: 48 bytes; out: 65.
static void s_tag_hmac(const uint8_t *key, size_t klen, uint8_t raw[48])
{
    static const char label[] = "picomdm scep challenge v1";
    uint8_t msg[sizeof label + 25], md[32];
    unsigned int mdlen = 0;
    memcpy(msg, label, sizeof label);
    memcpy(msg + sizeof label, raw, 25);
    assert_non_null(HMAC(EVP_sha256(), key, (int)klen, msg, sizeof msg, md, &mdlen));
    memcpy(raw + 25, md, 23);
}

static void s_b64url(const uint8_t raw[48], char out[65])
{
    unsigned char b64[68];
    assert_int_equal(EVP_EncodeBlock(b64, raw, 48), 64);
    for (int i = 0; i < 64; i++)
        out[i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : (char)b64[i];
    out[64] = 0;
}

//  ca_challenge's signed mode by itself: expiry, the key, what the store gets.
static void test_signed_challenge(void **state)
{
    (void)state;
    char err[200], buf[80], hex[65], hex2[65];
    uint8_t key[32] = {1, 2, 3}, kh[32] = {9};
    ca_challenge_t *c = ca_challenge_new(CA_CHALLENGE_ONE_TIME, NULL, 60, err, sizeof err);
    ca_challenge_t *other = ca_challenge_new(CA_CHALLENGE_ONE_TIME, NULL, 60, err, sizeof err);
    assert_non_null(c);
    assert_int_equal(ca_challenge_make(c, buf, sizeof buf, hex, NULL), -1); //  no key yet
    assert_int_equal(ca_challenge_set_key(c, key, sizeof key), 0);
    key[0] = 2;
    assert_int_equal(ca_challenge_set_key(other, key, sizeof key), 0);
    assert_true(ca_challenge_signed(c));
    int64_t exp = 0;
    assert_int_equal(ca_challenge_make(c, buf, 64, hex, &exp), -1); //  too small
    assert_int_equal(ca_challenge_make(c, buf, sizeof buf, hex, &exp), 0);
    assert_int_equal(strlen(buf), 64);
    assert_int_equal(ca_challenge_issue(c, buf + 70, 10), -1);
    ca_challenge_hash_hex(buf, hex2);
    assert_string_equal(hex, hex2);
    assert_true(exp > ((int64_t)time(NULL) + 55) * 1000);
    //  the tag is HMAC-SHA256 as specified: computed here with the one-shot
    //  HMAC() over the challenge's own first 25 bytes, it is the same; and a
    //  challenge made that way (as earlier versions made them) is accepted
    uint8_t raw[48], raw2[48];
    unsigned char b64[68];
    for (int i = 0; i < 64; i++)
        b64[i] = buf[i] == '-' ? '+' : buf[i] == '_' ? '/' : (unsigned char)buf[i];
    b64[64] = 0;
    uint8_t dec[51];
    assert_int_equal(EVP_DecodeBlock(dec, b64, 64), 48);
    memcpy(raw, dec, 48);
    memcpy(raw2, raw, 48);
    key[0] = 1; //  c's key
    s_tag_hmac(key, sizeof key, raw2);
    assert_memory_equal(raw, raw2, 48);
    raw2[5] ^= 1; //  another nonce, tagged the old way
    s_tag_hmac(key, sizeof key, raw2);
    char old_way[65];
    s_b64url(raw2, old_way);
    assert_true(ca_challenge_check(c, old_way, "tx-old", kh));
    assert_true(ca_challenge_take_seen(c, NULL));
    raw2[47] ^= 1; //  its tag altered
    s_b64url(raw2, old_way);
    assert_false(ca_challenge_check(c, old_way, "tx-old", kh));
    key[0] = 2;
    //  another key does not accept it
    assert_false(ca_challenge_check(other, buf, "tx", kh));
    assert_false(ca_challenge_take_seen(other, NULL));
    //  accepted: what the store must consume
    ca_challenge_seen_t seen;
    assert_true(ca_challenge_check(c, buf, "tx-1", kh));
    assert_true(ca_challenge_take_seen(c, &seen));
    assert_string_equal(seen.hash_hex, hex);
    assert_string_equal(seen.txid, "tx-1");
    assert_int_equal(seen.expires_ms, exp);
    assert_int_equal(strncmp(seen.key_hash_hex, "0900", 4), 0);
    assert_false(ca_challenge_take_seen(c, &seen)); //  taken
    //  refused on request (the store said no)
    ca_challenge_refuse(c, true);
    assert_false(ca_challenge_check(c, buf, "tx-1", kh));
    ca_challenge_refuse(c, false);
    //  expired
    ca_challenge_advance_clock(c, 61);
    assert_false(ca_challenge_check(c, buf, "tx-1", kh));
    assert_false(ca_challenge_take_seen(c, NULL));
    ca_challenge_destroy(&c);
    ca_challenge_destroy(&c);
    ca_challenge_destroy(&other);
}

//  A PKCSReq with a genuine challenge whose store does not answer: HTTP 503,
//  no CertRep, no certificate, no event.
static void s_expect_503(s_fix_t *f, const char *challenge)
{
    EVP_PKEY *key = EVP_RSA_gen(2048);
    X509 *self = NULL;
    pm_msg_t *req = s_pkcsreq_msg(f, key, challenge, "DOWN-TX", &self);
    pm_msg_t *ev = NULL;
    pm_msg_t *rep = s_call(f, req, &ev);
    assert_int_equal(pm_msg_type(rep), PM_MSG_SCEP_REPLY);
    assert_int_equal(pm_msg_uint(rep, "status", 0), 503);
    assert_string_equal(pm_msg_str(rep, "content_type"), "text/plain");
    assert_null(ev); //  not a refusal: the device retries
    pm_msg_destroy(&rep);
    X509_free(self);
    EVP_PKEY_free(key);
}

static void test_durable_store_down(void **state)
{
    s_fix_t *f = *state;
    f->store.mode = S_STORE_DOWN;
    //  the profile needs no store
    char *challenge = s_profile_challenge(f);
    s_expect_503(f, challenge);
    //  the store answers with an error: the same
    f->store.mode = S_STORE_ERROR;
    s_expect_503(f, challenge);
    assert_int_equal(f->store.nrows, 0);
    //  the store is back: the challenge was not spent
    f->store.mode = S_STORE_SYNC;
    EVP_PKEY *key = EVP_RSA_gen(2048);
    pm_scepc_result_t res;
    X509 *self = NULL;
    pm_msg_t *ev = NULL;
    pm_msg_t *rep = s_pkiop(f, key, challenge, "BACK-TX", &ev, &res, &self);
    assert_int_equal(res.pki_status, CA_SCEP_SUCCESS);
    pm_msg_destroy(&ev);
    pm_msg_destroy(&rep);
    X509_free(res.cert);
    X509_free(self);
    EVP_PKEY_free(key);
    free(challenge);
}

//  A PKCSReq request for `challenge`, sent without waiting for the answer.
static void s_pkcsreq_async(s_fix_t *f, const char *challenge, const char *txid, s_done_t *d)
{
    EVP_PKEY *key = EVP_RSA_gen(2048);
    X509 *self = NULL;
    pm_msg_t *req = s_wire(s_pkcsreq_msg(f, key, challenge, txid, &self));
    ca_svc_request(f->svc, req, s_on_done, d);
    pm_msg_destroy(&req);
    X509_free(self);
    EVP_PKEY_free(key);
}

//  Stopping with requests waiting: each is answered once (503), late store
//  replies are ignored, nothing leaks (ASan).
static void test_durable_abandon(void **state)
{
    s_fix_t *f = *state;
    f->store.mode = S_STORE_ASYNC;
    char *c1 = s_profile_challenge(f), *c2 = s_profile_challenge(f);
    s_done_t d1 = {0}, d2 = {0};
    s_pkcsreq_async(f, c1, "AB-1", &d1);
    s_pkcsreq_async(f, c2, "AB-2", &d2);
    assert_int_equal(ca_svc_waiting(f->svc), 2);
    assert_int_equal(d1.calls + d2.calls, 0);
    ca_svc_abandon(f->svc);
    assert_int_equal(ca_svc_waiting(f->svc), 0);
    assert_int_equal(d1.calls, 1);
    assert_int_equal(d2.calls, 1);
    assert_int_equal(pm_msg_type(d1.rep), PM_MSG_SCEP_REPLY);
    assert_int_equal(pm_msg_uint(d1.rep, "status", 0), 503);
    assert_null(d1.ev);
    //  one late reply arrives; the other never does (freed with the service)
    s_callrec_t c = f->store.queue[0];
    f->store.nqueue = 0;
    s_store_answer(&f->store, &c);
    assert_int_equal(d1.calls + d2.calls, 2);
    pm_msg_destroy(&d1.rep);
    pm_msg_destroy(&d2.rep);
    pm_msg_destroy(&d1.ev);
    pm_msg_destroy(&d2.ev);
    free(c1);
    free(c2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_profile_then_scep, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_scep_http_and_errors, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_profile_then_scep, s_setup_durable, s_teardown),
        cmocka_unit_test_setup_teardown(test_scep_http_and_errors, s_setup_durable, s_teardown),
        cmocka_unit_test_setup_teardown(test_durable_store_decides, s_setup_durable, s_teardown),
        cmocka_unit_test_setup_teardown(test_durable_store_down, s_setup_durable, s_teardown),
        cmocka_unit_test_setup_teardown(test_durable_abandon, s_setup_durable, s_teardown),
        cmocka_unit_test_setup_teardown(test_second_ca_accepts, s_setup_durable, s_teardown),
        cmocka_unit_test(test_signed_challenge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
