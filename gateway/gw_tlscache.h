/*  gw_tlscache — the gateway's TLS session cache (picomdm-gateway).
 *
 *  Resumption without encrypted tickets: the server keeps each new session
 *  (TLS 1.2 session ids, TLS 1.3 "stateful" tickets, which carry only an
 *  id) in this cache and finds it again by id. OpenSSL's stateless tickets
 *  serialize the session (i2d/d2i/i2d, with a client certificate that
 *  certificate is decoded again on every resumption) and encrypt it on every
 *  full handshake; here the SSL_SESSION object itself is kept (docs/gateway.md
 *  "Session 9"). OpenSSL's own internal cache cannot be used: libevent 2.1
 *  frees an SSL without SSL_shutdown, and OpenSSL then drops the session
 *  from its internal cache (ssl_clear_bad_session), so nothing would ever
 *  resume. This cache is external (SSL_SESS_CACHE_NO_INTERNAL), which that
 *  rule does not touch.
 *
 *  Bounded: at most `max` sessions, the oldest evicted first; a session past
 *  its timeout (SSL_CTX_set_timeout, OpenSSL's default 7,200 s) is never
 *  handed out. Per process, in memory: gateways sharing a port
 *  (SO_REUSEPORT) each resume only their own sessions, as with OpenSSL's
 *  per-process random ticket keys before.
 *
 *  The cache belongs to the SSL_CTX it is attached to (ex_data) and is freed
 *  with it (SSL_CTX_free); there is no destroy of its own.
 */
#ifndef GW_TLSCACHE_H
#define GW_TLSCACHE_H

#include <openssl/ssl.h>
#include <stddef.h>

//  Attaches a cache of at most `max` sessions to the server context `ctx`
//  (session cache mode, callbacks, SSL_OP_NO_TICKET). Call once per ctx,
//  before the first connection. Returns 0, or -1 (allocation).
int gw_tlscache_attach(SSL_CTX *ctx, size_t max);

//  Sessions held now in ctx's cache (0 when none is attached).
size_t gw_tlscache_size(SSL_CTX *ctx);

#endif
