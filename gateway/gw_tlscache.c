/*  gw_tlscache — see gw_tlscache.h. No state of its own: OpenSSL's server
 *  session cache holds the sessions; this file turns it on and keeps
 *  libevent's way of freeing connections from emptying it.
 */
#include "gw_tlscache.h"

#include <pthread.h>

static int s_ctx_index = -1, s_ssl_index = -1;
static pthread_once_t s_index_once = PTHREAD_ONCE_INIT;
static char s_mark; //  ex_data of a context whose cache this module turned on

static bool s_attached(SSL_CTX *ctx)
{
    return ctx && s_ctx_index >= 0 && SSL_CTX_get_ex_data(ctx, s_ctx_index) == &s_mark;
}

//  SSL_free runs every SSL ex_data free callback before it would "clear a
//  bad session": one whose SSL never sent a close_notify, which libssl marks
//  not resumable and removes from the cache (remove_session_lock). libevent
//  2.1 frees every SSL without SSL_shutdown, so every session would be
//  "bad". For our server connections we say the shutdown was sent. A fatal
//  alert still makes its session unresumable (libssl does that when the
//  alert is sent or received, not here).
static void s_on_ssl_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                          void *argp)
{
    (void)ptr, (void)ad, (void)idx, (void)argl, (void)argp;
    SSL *ssl = parent;
    if (ssl && SSL_is_server(ssl) && s_attached(SSL_get_SSL_CTX(ssl)))
        SSL_set_shutdown(ssl, SSL_get_shutdown(ssl) | SSL_SENT_SHUTDOWN);
}

static void s_index_init(void)
{
    s_ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    s_ssl_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, s_on_ssl_free);
}

int gw_tlscache_attach(SSL_CTX *ctx, size_t max)
{
    pthread_once(&s_index_once, s_index_init);
    if (!ctx || max == 0 || max > LONG_MAX || s_ctx_index < 0 || s_ssl_index < 0 || s_attached(ctx))
        return -1;
    if (SSL_CTX_set_ex_data(ctx, s_ctx_index, &s_mark) != 1)
        return -1;
    //  No encrypted tickets: TLS 1.2 resumes by session id, TLS 1.3 sends
    //  "stateful" tickets (an id); both found in the server cache, which
    //  evicts the least recently used session beyond `max` and drops
    //  expired ones (SSL_CTX_set_timeout).
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_sess_set_cache_size(ctx, (long)max);
    return 0;
}

size_t gw_tlscache_size(SSL_CTX *ctx)
{
    return s_attached(ctx) ? (size_t)SSL_CTX_sess_number(ctx) : 0;
}
