/*  gw_devreq — what a device request says, for picomdm-gateway: the pure part
 *  of the check-in / command-loop handling, without HTTP or the bus.
 *
 *  The body (an XML or binary plist) becomes a bounded msgpack map; the
 *  enrollment id is derived from its id keys (gw_eid); the route follows
 *  from MessageType (check-in) or Status (command loop, only on the
 *  ServerURL path); the keys the Apple schema types (mdm/checkin/ *.yaml)
 *  are type-checked; then gw_devreq_msg builds the bus message: CHECKIN or
 *  CONNECT for the scheduler, or, on the direct device path (docs/queue.md),
 *  STORE_CHECKIN or STORE_CONNECT for the store. gw_server.c calls these after the
 *  request is authenticated (gw_auth); the libFuzzer target
 *  tests/fuzz/fuzz_gateway.c calls them directly.
 */
#ifndef GW_DEVREQ_H
#define GW_DEVREQ_H

#include "gw_auth.h"
#include "gw_eid.h"
#include "pm_msg.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { GW_DEVREQ_CHECKIN = 1, GW_DEVREQ_CONNECT } gw_devreq_route_t;

typedef struct {
    gw_devreq_route_t route;
    gw_eid_kind_t kind;
    char eid[GW_EID_MAX]; //  set once derived (also on a later rejection, for the event)
    char mtype[48];       //  check-in: MessageType
    char status[48];      //  command loop: Status
    char cuuid[80];       //  command loop: CommandUUID ("" for Idle)
    uint8_t *mp;          //  the body as msgpack (owned; gw_devreq_clear frees it)
    size_t mplen;
} gw_devreq_t;

//  Parse body[0..len) (at most body_max bytes). is_server_path: the request
//  came to the ServerURL path, where a Status body is allowed. Returns 0 with
//  d filled, or -1 with the one-line reason for the 400 in why (d->eid may be
//  set). Call gw_devreq_clear(d) after either.
int gw_devreq_parse(const uint8_t *body, size_t len, size_t body_max, bool is_server_path,
                    gw_devreq_t *d, char *why, size_t whysize);

//  The scheduler's command-queue policy (policy.reply), which store.connect
//  takes as parameters.
typedef struct {
    uint64_t notnow_limit, redeliver_limit, delivered_timeout_s;
} gw_devreq_policy_t;

//  The bus message for a parsed request, with the certificate facts from auth
//  (NULL: no certificate, lab mode). pol NULL: CHECKIN / CONNECT for the
//  scheduler; else STORE_CHECKIN / STORE_CONNECT straight to the store, with
//  the policy and device_rid = the message's own request id (what the
//  scheduler would have added). The caller owns the result; NULL if the
//  table refused a field or out of memory.
pm_msg_t *gw_devreq_msg(const gw_devreq_t *d, const gw_auth_result_t *auth,
                        const gw_devreq_policy_t *pol);

//  Free what gw_devreq_parse allocated (safe twice, safe on a zeroed d).
void gw_devreq_clear(gw_devreq_t *d);

#endif
