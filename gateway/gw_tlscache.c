/*  gw_tlscache — see gw_tlscache.h. */
#include "gw_tlscache.h"

#include <czmq.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#define GW_TLSCACHE_KEY (2 * SSL_MAX_SSL_SESSION_ID_LENGTH + 1)

typedef struct {
    zhashx_t *byid;                //  hex session id -> SSL_SESSION * (one reference each)
    char (*ring)[GW_TLSCACHE_KEY]; //  ids in insertion order (eviction)
    size_t max, head;
    pthread_mutex_t lock;
} gw_tlscache_t;

static int s_index = -1, s_ssl_index = -1;
static pthread_once_t s_index_once = PTHREAD_ONCE_INIT;

static void s_cache_free(gw_tlscache_t *self)
{
    if (!self)
        return;
    zhashx_destroy(&self->byid);
    free(self->ring);
    pthread_mutex_destroy(&self->lock);
    free(self);
}

//  ex_data free: the cache goes with its SSL_CTX
static void s_on_ctx_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                          void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    s_cache_free(ptr);
}

static gw_tlscache_t *s_of(SSL_CTX *ctx)
{
    return ctx && s_index >= 0 ? SSL_CTX_get_ex_data(ctx, s_index) : NULL;
}

//  SSL_free runs every SSL ex_data free callback before it would "clear a
//  bad session": one whose SSL never sent a close_notify, which libssl marks
//  not resumable (the object itself, the one this cache holds) and removes.
//  libevent 2.1 frees every SSL without SSL_shutdown, so every session would
//  be "bad". For our server connections we say the shutdown was sent. A
//  fatal alert still makes its session unresumable (libssl does that when
//  the alert is sent or received, not here).
static void s_on_ssl_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                          void *argp)
{
    (void)ptr, (void)ad, (void)idx, (void)argl, (void)argp;
    SSL *ssl = parent;
    if (ssl && SSL_is_server(ssl) && s_of(SSL_get_SSL_CTX(ssl)))
        SSL_set_shutdown(ssl, SSL_get_shutdown(ssl) | SSL_SENT_SHUTDOWN);
}

static void s_index_init(void)
{
    s_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, s_on_ctx_free);
    s_ssl_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, s_on_ssl_free);
}

static void s_session_free(void **item)
{
    if (item && *item) {
        SSL_SESSION_free(*item);
        *item = NULL;
    }
}

//  the id as a hex string; 0, or -1 when it is empty or too long
static int s_key(const unsigned char *id, unsigned len, char *key)
{
    static const char hex[] = "0123456789abcdef";
    if (len == 0 || len > SSL_MAX_SSL_SESSION_ID_LENGTH)
        return -1;
    for (unsigned i = 0; i < len; i++) {
        key[2 * i] = hex[id[i] >> 4];
        key[2 * i + 1] = hex[id[i] & 15];
    }
    key[2 * len] = '\0';
    return 0;
}

//  libssl: a new session (end of a TLS 1.2 handshake, or a TLS 1.3 ticket);
//  returning 1 keeps the reference libssl passed us.
static int s_on_new(SSL *ssl, SSL_SESSION *sess)
{
    gw_tlscache_t *self = s_of(SSL_get_SSL_CTX(ssl));
    unsigned len = 0;
    const unsigned char *id = SSL_SESSION_get_id(sess, &len);
    char key[GW_TLSCACHE_KEY];
    if (!self || s_key(id, len, key) < 0)
        return 0;
    pthread_mutex_lock(&self->lock);
    //  the oldest slot: its session (if still there) makes room
    char *slot = self->ring[self->head];
    if (*slot)
        zhashx_delete(self->byid, slot);
    zhashx_update(self->byid, key, sess);
    memcpy(slot, key, sizeof key);
    self->head = (self->head + 1) % self->max;
    pthread_mutex_unlock(&self->lock);
    return 1;
}

//  libssl: a client offers session `id`; *copy = 1 makes libssl take its own
//  reference (the cache keeps one).
static SSL_SESSION *s_on_get(SSL *ssl, const unsigned char *id, int len, int *copy)
{
    gw_tlscache_t *self = s_of(SSL_get_SSL_CTX(ssl));
    char key[GW_TLSCACHE_KEY];
    *copy = 1;
    if (!self || len < 0 || s_key(id, (unsigned)len, key) < 0)
        return NULL;
    pthread_mutex_lock(&self->lock);
    SSL_SESSION *sess = zhashx_lookup(self->byid, key);
    if (sess && SSL_SESSION_get_time(sess) + SSL_SESSION_get_timeout(sess) < (long)time(NULL)) {
        zhashx_delete(self->byid, key);
        sess = NULL;
    }
    pthread_mutex_unlock(&self->lock);
    return sess;
}

//  libssl: forget `sess` (after a fatal alert; also when a session times out
//  in OpenSSL's internal store, which is off)
static void s_on_remove(SSL_CTX *ctx, SSL_SESSION *sess)
{
    gw_tlscache_t *self = s_of(ctx);
    unsigned len = 0;
    const unsigned char *id = SSL_SESSION_get_id(sess, &len);
    char key[GW_TLSCACHE_KEY];
    if (!self || s_key(id, len, key) < 0)
        return;
    pthread_mutex_lock(&self->lock);
    if (zhashx_lookup(self->byid, key) == sess)
        zhashx_delete(self->byid, key);
    pthread_mutex_unlock(&self->lock);
}

int gw_tlscache_attach(SSL_CTX *ctx, size_t max)
{
    pthread_once(&s_index_once, s_index_init);
    if (!ctx || max == 0 || s_index < 0 || s_ssl_index < 0 || s_of(ctx))
        return -1;
    gw_tlscache_t *self = calloc(1, sizeof *self);
    if (!self)
        return -1;
    self->max = max;
    self->byid = zhashx_new();
    self->ring = calloc(max, sizeof *self->ring);
    pthread_mutex_init(&self->lock, NULL);
    if (!self->byid || !self->ring || SSL_CTX_set_ex_data(ctx, s_index, self) != 1) {
        s_cache_free(self);
        return -1;
    }
    zhashx_set_destructor(self->byid, s_session_free);
    //  No encrypted tickets: TLS 1.2 resumes by session id, TLS 1.3 sends
    //  "stateful" tickets (an id); both looked up here.
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL);
    SSL_CTX_sess_set_new_cb(ctx, s_on_new);
    SSL_CTX_sess_set_get_cb(ctx, s_on_get);
    SSL_CTX_sess_set_remove_cb(ctx, s_on_remove);
    return 0;
}

size_t gw_tlscache_size(SSL_CTX *ctx)
{
    gw_tlscache_t *self = s_of(ctx);
    if (!self)
        return 0;
    pthread_mutex_lock(&self->lock);
    size_t n = zhashx_size(self->byid);
    pthread_mutex_unlock(&self->lock);
    return n;
}
