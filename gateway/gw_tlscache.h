/*  gw_tlscache — the gateway's TLS session cache (picomdm-gateway).
 *
 *  Resumption without encrypted tickets: OpenSSL's server session cache
 *  (SSL_SESS_CACHE_SERVER, SSL_OP_NO_TICKET) keeps each new session (TLS
 *  1.2 session ids, TLS 1.3 "stateful" tickets, which carry only an id) and
 *  finds it again by id. OpenSSL's stateless tickets serialize the session
 *  (i2d/d2i/i2d; with a client certificate that certificate is decoded
 *  again on every resumption) and encrypt it on every full handshake; here
 *  the SSL_SESSION object itself is kept (docs/gateway.md "Session 9").
 *
 *  What this module adds: libevent 2.1 frees an SSL without SSL_shutdown,
 *  and SSL_free then drops its session from the cache as "bad" (no
 *  close_notify sent: ssl_clear_bad_session, which also marks it not
 *  resumable), so nothing would ever resume (session 8 found that). An
 *  SSL ex_data free callback, which SSL_free runs first, marks the shutdown
 *  as sent for server connections of a context with the cache attached. A
 *  fatal alert still makes its session unresumable.
 *
 *  Bounded: at most `max` sessions (OpenSSL evicts the oldest; 3.0 evicts
 *  one more than needed, so max - 1 are kept once full); a session past its
 *  timeout (SSL_CTX_set_timeout, OpenSSL's default 7,200 s) is not resumed.
 *  Memory: ~1.3 KiB per session, ~5 KiB with a client certificate. Per
 *  process, in memory: gateways sharing a port (SO_REUSEPORT) each resume
 *  only their own sessions, as with OpenSSL's per-process random ticket
 *  keys before.
 */
#ifndef GW_TLSCACHE_H
#define GW_TLSCACHE_H

#include <openssl/ssl.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>

//  Attaches a cache of at most `max` sessions to the server context `ctx`
//  (session cache mode, callbacks, SSL_OP_NO_TICKET). Call once per ctx,
//  before the first connection. Returns 0, or -1 (allocation).
int gw_tlscache_attach(SSL_CTX *ctx, size_t max);

//  Sessions held now in ctx's cache (0 when none is attached).
size_t gw_tlscache_size(SSL_CTX *ctx);

#endif
