/*  push_h2 — the pusher's own HTTP/2 client for APNs (bin/picomdm-pusher),
 *  on libnghttp2 and OpenSSL: a pool of TLS connections (ALPN h2, the push
 *  certificate as client certificate, the server verified against a CA
 *  bundle and its host name or IP), requests multiplexed over them.
 *
 *  Why not libcurl: libcurl 7.88 writes every HTTP/2 frame with its own
 *  send() (HEADERS, DATA, then RST_STREAM per push) and walks every
 *  transfer on each turn, about 9 system calls and 90 us of CPU per push.
 *  Here every frame a loop turn produces goes out in one TLS write, and a
 *  read takes every answer that has arrived: a few system calls per batch.
 *
 *  Requests wait in a FIFO until a connection has a free stream (the
 *  server's SETTINGS_MAX_CONCURRENT_STREAMS, capped by `streams`); a
 *  connection is opened when the others are full, up to `connections`.
 *  Each request gets exactly one completion: the HTTP status with apns-id
 *  and body, or a transport error (connect/TLS failure, connection lost,
 *  stream reset, refused after GOAWAY, timeout), which the caller retries.
 *  A new identity (push_h2_set_identity) is used by new connections; the
 *  old ones finish their streams and close.
 *
 *  Threading: one thread. Ownership: `ud` is the caller's; strings passed
 *  to push_h2_submit are copied.
 */
#ifndef PUSH_H2_H
#define PUSH_H2_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct push_h2 push_h2_t;

typedef struct {
    void *ud;            //  from push_h2_submit
    const char *error;   //  NULL: answered; else the transport error (retry it)
    bool timeout;        //  the error is the request timeout
    unsigned status;     //  HTTP status when answered
    const char *apns_id; //  "" if none
    const char *body;    //  the answer's body (NUL-terminated, truncated to 511 bytes)
} push_h2_result_t;

typedef void(push_h2_done_fn)(void *arg, const push_h2_result_t *r);

typedef struct {
    const char *base_url; //  https://host[:port]
    const char *ca_file;  //  NULL = the system's CA paths
    int connections, streams, timeout_ms;
} push_h2_cfg_t;

//  NULL with a reason in err (bad URL, TLS setup).
push_h2_t *push_h2_new(const push_h2_cfg_t *cfg, X509 *cert, EVP_PKEY *key, push_h2_done_fn *fn,
                       void *arg, char *err, size_t errlen);
void push_h2_destroy(push_h2_t **h);

//  Use this client identity for new connections (existing ones drain). 0 / -1.
int push_h2_set_identity(push_h2_t *h, X509 *cert, EVP_PKEY *key, char *err, size_t errlen);

//  Queue one APNs request: POST <path> with the APNs headers and body.
//  0, or -1 when out of memory (nothing queued, no completion).
int push_h2_submit(push_h2_t *h, void *ud, const char *path, const char *topic, int priority,
                   long long expiration, const char *body, size_t body_len);

//  Fill fds (at most max) with what to poll; returns how many. Call
//  push_h2_process with the same array after poll().
int push_h2_pollfds(push_h2_t *h, struct pollfd *fds, int max);
//  Do the I/O the poll results allow, dispatch queued requests, expire
//  timeouts; completions are reported through the callback from here.
void push_h2_process(push_h2_t *h, const struct pollfd *fds, int n);
//  Milliseconds until push_h2_process has timed work (-1 = none).
long push_h2_next_ms(push_h2_t *h);
//  Requests not completed yet (queued or on a connection).
size_t push_h2_pending(const push_h2_t *h);
//  Connections opened so far (for tests and stats).
uint64_t push_h2_connects(const push_h2_t *h);

#endif
