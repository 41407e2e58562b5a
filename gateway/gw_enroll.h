/*  gw_enroll — the enrollment routes of picomdm-gateway (issue 6).
 *
 *    GET/POST <scep-path>    (default /scep) SCEP (RFC 8894): GetCACaps,
 *                            GetCACert, PKIOperation (GET ?message=base64 or
 *                            POST with the DER body)   -> `scep` to "ca"
 *    GET <enroll-path>       (default /mdm/enroll) the signed enrollment
 *                            profile (application/x-apple-aspen-config)
 *                            -> `profile` to "ca"
 *
 *  Both are forwarded asynchronously over the bus to the ca service, which
 *  holds every key; the gateway only relays the reply's status, content type
 *  and body. GetCACaps and GetCACert answers are the same for every device:
 *  the gateway keeps a 200 answer for GW_ENROLL_CA_CACHE_S seconds and serves
 *  it itself (two of the four ca round trips of an enrollment). The enrollment route is protected
 * as `enroll-auth` says: none   open (lab; the default unless enroll-basic-auth is set) basic  HTTP
 * basic auth (`enroll-basic-auth user:password`). A wrong or missing password gets 401 with a
 * WWW-Authenticate challenge: a browser asks for the password only after that challenge, and this
 *           route comes before enrollment, so no MDM client can drop anything.
 *    token  a one-time token made by `picomdm enroll-token new`, in the URL
 *           (<enroll-path>?token=T or <enroll-path>/T). The gateway hashes it
 *           and consumes it in the store (enroll_token.use) before it asks the
 *           ca; if the ca then fails it gives the token back
 *           (enroll_token.release). A missing, unknown, used, expired or
 *           revoked token gets 403 with a plain message (no challenge: there
 *           is no password to ask for).
 *  Every refusal is logged with its reason and raises an `enroll.refused`
 *  event {reason, remote, path} (appended to the store's event log).
 *
 *  Ownership: the routes borrow the event base and the bus from the gateway
 *  (gw_server), which calls gw_enroll_handle for every request it does not
 *  serve itself, and kicks the bus through the callback set here.
 */
#ifndef GW_ENROLL_H
#define GW_ENROLL_H

#include "pm_bus.h"

#include <event2/event.h>
#include <event2/http.h>
#include <stdint.h>

#define GW_ENROLL_SCEP_MAX (64 * 1024) //  SCEP request body limit (413 above)
#define GW_ENROLL_TOKEN_MIN 16         //  token length bounds (base64url characters)
#define GW_ENROLL_TOKEN_MAX 128
#define GW_ENROLL_CA_CACHE_S 60 //  GetCACaps/GetCACert replies are reused this long

typedef struct {
    const char *scep_path;   //  "/scep"; NULL or "" = route off
    const char *enroll_path; //  "/mdm/enroll"; NULL or "" = route off
    const char *auth;        //  "none", "basic", "token"; NULL/"" = basic if basic_auth, else none
    const char *basic_auth;  //  "user:password" protecting enroll_path, or NULL
    const char *token_service; //  bus service of enroll_token.use ("store"), NULL = the table's
    const char *service;       //  bus service, "ca"
    int timeout_ms;            //  total wait for the ca service (then 503)
    int retry_after_s;         //  Retry-After on 503
} gw_enroll_config_t;

typedef struct gw_enroll gw_enroll_t;

//  Called after every bus send so that the owner processes the bus now.
typedef void(gw_enroll_kick_fn)(void *arg);

//  NULL on bad configuration (reason logged).
gw_enroll_t *gw_enroll_new(const gw_enroll_config_t *cfg, struct event_base *base, pm_bus_t *bus);

//  Set by gw_server when it adopts the routes.
void gw_enroll_set_kick(gw_enroll_t *self, gw_enroll_kick_fn *fn, void *arg);

//  1 when `path` is one of our routes (the request is answered now or later),
//  0 when it is not ours (the caller goes on).
int gw_enroll_handle(gw_enroll_t *self, struct evhttp_request *req, const char *path,
                     const char *remote);

//  Answer every request still waiting for the ca with 503 (before the bus goes).
void gw_enroll_shutdown(gw_enroll_t *self);

//  Free everything (after the bus is destroyed). Safe twice.
void gw_enroll_destroy(gw_enroll_t **self);

typedef struct {
    uint64_t scep, profiles, denied, unavailable, tokens_used;
} gw_enroll_stats_t;
void gw_enroll_stats(const gw_enroll_t *self, gw_enroll_stats_t *st);

#endif
