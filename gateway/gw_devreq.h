/*  gw_devreq — what a device request says, for picomdm-gateway: the pure part
 *  of the check-in / command-loop handling, without HTTP or the bus.
 *
 *  The body (an XML or binary plist) becomes a bounded msgpack map; the
 *  enrollment id is derived from its id keys (gw_eid); the route follows
 *  from MessageType (check-in) or Status (command loop, only on the
 *  ServerURL path); the keys the Apple schema types (mdm/checkin/ *.yaml)
 *  are type-checked; then gw_devreq_msg builds the bus message (CHECKIN or
 *  CONNECT) the scheduler receives. gw_server.c calls these after the
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

//  The bus message for a parsed request (CHECKIN or CONNECT), with the
//  certificate facts from auth (NULL: no certificate, lab mode). The caller
//  owns the result; NULL if the table refused a field or out of memory.
pm_msg_t *gw_devreq_msg(const gw_devreq_t *d, const gw_auth_result_t *auth);

//  Free what gw_devreq_parse allocated (safe twice, safe on a zeroed d).
void gw_devreq_clear(gw_devreq_t *d);

#endif
