/*  gw_devreq — what a device request says (plist -> route, enrollment id,
 *  bus message). See gw_devreq.h.
 */
#include "gw_devreq.h"
#include "pm_mpck.h"
#include "pm_plist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const s_message_types[] = {
    "Authenticate",          "TokenUpdate",       "CheckOut",
    "UserAuthenticate",      "SetBootstrapToken", "GetBootstrapToken",
    "DeclarativeManagement", "GetToken",          NULL};

static const char *const s_statuses[] = {
    "Idle", "Acknowledged", "Error", "CommandFormatError", "NotNow", NULL};

//  Types of the keys the gateway checks per MessageType (Apple schema,
//  mdm/checkin/*.yaml): required keys must be present; any listed key that
//  is present must have the listed type. Keys not listed pass through.
typedef enum { K_STR, K_DATA, K_BOOL } s_ktype_t;
typedef struct {
    const char *mtype, *key;
    s_ktype_t type;
    bool required;
} s_keyrule_t;

static const s_keyrule_t s_rules[] = {{"Authenticate", "Topic", K_STR, true},
                                      {"Authenticate", "DeviceName", K_STR, false},
                                      {"Authenticate", "SerialNumber", K_STR, false},
                                      {"TokenUpdate", "Topic", K_STR, true},
                                      {"TokenUpdate", "Token", K_DATA, true},
                                      {"TokenUpdate", "PushMagic", K_STR, true},
                                      {"TokenUpdate", "UnlockToken", K_DATA, false},
                                      {"TokenUpdate", "AwaitingConfiguration", K_BOOL, false},
                                      {"TokenUpdate", "NotOnConsole", K_BOOL, false},
                                      {"CheckOut", "Topic", K_STR, false},
                                      {"SetBootstrapToken", "BootstrapToken", K_DATA, false},
                                      {"SetBootstrapToken", "AwaitingConfiguration", K_BOOL, false},
                                      {"GetBootstrapToken", "AwaitingConfiguration", K_BOOL, false},
                                      {"DeclarativeManagement", "Endpoint", K_STR, true},
                                      {"DeclarativeManagement", "Data", K_DATA, false},
                                      {"GetToken", "TokenServiceType", K_STR, true},
                                      {"UserAuthenticate", "UserID", K_STR, true},
                                      {"UserAuthenticate", "DigestResponse", K_STR, false},
                                      {"*", "UDID", K_STR, false},
                                      {"*", "UserID", K_STR, false},
                                      {"*", "UserShortName", K_STR, false},
                                      {"*", "UserLongName", K_STR, false},
                                      {"*", "EnrollmentID", K_STR, false},
                                      {"*", "EnrollmentUserID", K_STR, false},
                                      {"*", "CommandUUID", K_STR, false},
                                      {NULL, NULL, K_STR, false}};

//  0, or -1 with the reason in why.
static int s_check_keys(const msgpack_object *map, const char *mtype, char *why, size_t size)
{
    static const char *const tname[] = {"a string", "data", "a boolean"};
    for (const s_keyrule_t *k = s_rules; k->mtype; k++) {
        if (strcmp(k->mtype, "*") != 0 && strcmp(k->mtype, mtype) != 0)
            continue;
        const msgpack_object *v = pm_mp_get(map, k->key);
        if (!v) {
            if (k->required) {
                snprintf(why, size, "%s without %s", mtype, k->key);
                return -1;
            }
            continue;
        }
        bool ok = (k->type == K_STR && v->type == MSGPACK_OBJECT_STR) ||
                  (k->type == K_DATA && v->type == MSGPACK_OBJECT_BIN) ||
                  (k->type == K_BOOL && v->type == MSGPACK_OBJECT_BOOLEAN);
        if (!ok) {
            snprintf(why, size, "%s: %s must be %s", mtype, k->key, tname[k->type]);
            return -1;
        }
    }
    return 0;
}

static bool s_in(const char *const *list, const char *s)
{
    for (int i = 0; list[i]; i++)
        if (strcmp(list[i], s) == 0)
            return true;
    return false;
}

static void s_key(const msgpack_object *map, const char *key, char *buf, size_t size)
{
    if (pm_mp_get_str(map, key, buf, size) < 0)
        buf[0] = '\0';
}

int gw_devreq_parse(const uint8_t *body, size_t len, size_t body_max, bool is_server_path,
                    gw_devreq_t *d, char *why, size_t whysize)
{
    int rc = -1;
    char err[256];
    msgpack_zone zone;
    bool zone_ok = false;
    memset(d, 0, sizeof *d);

    //  the plist, bounded
    pm_plist_limits_t lim = pm_plist_default_limits;
    lim.max_bytes = body_max;
    //  the plist travels two levels down in the bus message (envelope, body)
    lim.max_depth = PM_MSG_MAX_DEPTH - 4;
    if (len == 0 || len > body_max ||
        pm_plist_to_msgpack((const char *)body, len, &lim, &d->mp, &d->mplen, err, sizeof err) <
            0) {
        snprintf(why, whysize, "bad plist: %s",
                 len == 0         ? "empty body"
                 : len > body_max ? "larger than body-max"
                                  : err);
        goto out;
    }
    //  a device request's map takes a few hundred bytes of zone; a chunk
    //  above ~1 KiB would come from glibc's large bins, which first merge
    //  every freed small chunk (malloc_consolidate), on every request
    msgpack_zone_init(&zone, 512);
    zone_ok = true;
    msgpack_object obj;
    pm_mpck_limits_t mlim = {PM_MSG_MAX_DEPTH, PM_MSG_MAX_ELEMENTS};
    if (pm_mpck_unpack(d->mp, d->mplen, &mlim, &zone, &obj, err, sizeof err) < 0 ||
        obj.type != MSGPACK_OBJECT_MAP) {
        snprintf(why, whysize, "plist is not a dictionary");
        goto out;
    }

    //  the enrollment (id keys of the wrong type must not silently become
    //  "absent": a user-channel message would land on the device)
    if (s_check_keys(&obj, "any message", why, whysize) < 0)
        goto out;
    char udid[GW_EID_PART_MAX + 1], uid[GW_EID_PART_MAX + 1], ushort[GW_EID_PART_MAX + 1], ulong[8],
        enr[GW_EID_PART_MAX + 1], enru[GW_EID_PART_MAX + 1];
    s_key(&obj, "UDID", udid, sizeof udid);
    s_key(&obj, "UserID", uid, sizeof uid);
    s_key(&obj, "UserShortName", ushort, sizeof ushort);
    //  only whether UserLongName is there matters (macOS vs Shared iPad)
    ulong[0] = pm_mp_get(&obj, "UserLongName") ? 'y' : '\0';
    ulong[1] = '\0';
    s_key(&obj, "EnrollmentID", enr, sizeof enr);
    s_key(&obj, "EnrollmentUserID", enru, sizeof enru);
    gw_eid_keys_t keys = {udid, uid, ushort, ulong, enr, enru};
    if (gw_eid_derive(&keys, d->eid, sizeof d->eid, &d->kind, err, sizeof err) < 0) {
        d->eid[0] = '\0';
        snprintf(why, whysize, "bad enrollment id: %s", err);
        goto out;
    }

    //  which kind of message
    bool has_mtype = pm_mp_get(&obj, "MessageType") != NULL;
    bool has_status = pm_mp_get(&obj, "Status") != NULL;
    if (has_mtype && !has_status)
        d->route = GW_DEVREQ_CHECKIN;
    else if (has_status && !has_mtype && is_server_path)
        d->route = GW_DEVREQ_CONNECT;
    else {
        snprintf(why, whysize, "%s",
                 has_mtype && has_status ? "body has both MessageType and Status"
                 : is_server_path        ? "body has neither MessageType nor Status"
                                         : "check-in body without MessageType");
        goto out;
    }

    if (d->route == GW_DEVREQ_CHECKIN) {
        if (pm_mp_get_str(&obj, "MessageType", d->mtype, sizeof d->mtype) < 0 ||
            !s_in(s_message_types, d->mtype)) {
            char shown[48];
            s_key(&obj, "MessageType", shown, sizeof shown);
            if (pm_mp_get(&obj, "MessageType")->type != MSGPACK_OBJECT_STR)
                snprintf(why, whysize, "MessageType is not a string");
            else
                snprintf(why, whysize, "unknown MessageType '%s'", shown);
            goto out;
        }
        if (s_check_keys(&obj, d->mtype, why, whysize) < 0)
            goto out;
    } else {
        if (pm_mp_get_str(&obj, "Status", d->status, sizeof d->status) < 0 ||
            !s_in(s_statuses, d->status)) {
            char shown[48];
            s_key(&obj, "Status", shown, sizeof shown);
            snprintf(why, whysize, "unknown Status '%s'", shown);
            goto out;
        }
        bool has_uuid =
            pm_mp_get_str(&obj, "CommandUUID", d->cuuid, sizeof d->cuuid) == 0 && *d->cuuid;
        if (!has_uuid)
            d->cuuid[0] = '\0';
        if (!has_uuid && strcmp(d->status, "Idle") != 0) {
            snprintf(why, whysize, "Status %s without a CommandUUID", d->status);
            goto out;
        }
    }
    rc = 0;
out:
    if (zone_ok)
        msgpack_zone_destroy(&zone);
    return rc;
}

pm_msg_t *gw_devreq_msg(const gw_devreq_t *d, const gw_auth_result_t *auth,
                        const gw_devreq_policy_t *pol)
{
    bool checkin = d->route == GW_DEVREQ_CHECKIN;
    pm_msg_type_t t = checkin ? (pol ? PM_MSG_STORE_CHECKIN : PM_MSG_CHECKIN)
                              : (pol ? PM_MSG_STORE_CONNECT : PM_MSG_CONNECT);
    pm_msg_t *msg = pm_msg_new(t);
    if (!msg)
        return NULL;
    int bad = 0;
    bad |= pm_msg_set_str(msg, "eid", d->eid);
    if (checkin || !pol) //  store.connect has no kind
        bad |= pm_msg_set_str(msg, "kind", gw_eid_kind_name(d->kind));
    if (checkin) {
        bad |= pm_msg_set_str(msg, "message_type", d->mtype);
        if (auth)
            bad |= pm_msg_set_str(msg, "cert_issuer", auth->issuer);
    } else {
        bad |= pm_msg_set_str(msg, "status", d->status);
        if (*d->cuuid)
            bad |= pm_msg_set_str(msg, "command_uuid", d->cuuid);
    }
    if (auth)
        bad |= pm_msg_set_bin(msg, "cert_hash", auth->cert_hash, sizeof auth->cert_hash);
    if (auth && auth->has_prev)
        bad |= pm_msg_set_bin(msg, "cert_prev_hash", auth->prev_hash, sizeof auth->prev_hash);
    if (auth && auth->not_after > 0) //  for picomdm doctor (gw_auth.h)
        bad |= pm_msg_set_time(msg, "cert_not_after", auth->not_after, 0);
    if (auth && auth->has_skew)
        bad |= pm_msg_set_int(msg, "clock_skew_s", auth->clock_skew_s);
    bad |= pm_msg_set_packed(msg, "body", d->mp, d->mplen);
    if (!checkin && pol) {
        //  what the scheduler adds (sched_store_request): our request id (a
        //  retry, even across a store restart, gets the same answer) and its policy
        bad |= pm_msg_set_str(msg, "device_rid", pm_msg_rid(msg));
        bad |= pm_msg_set_uint(msg, "notnow_limit", pol->notnow_limit);
        bad |= pm_msg_set_uint(msg, "redeliver_limit", pol->redeliver_limit);
        bad |= pm_msg_set_uint(msg, "delivered_timeout_s", pol->delivered_timeout_s);
    }
    if (bad)
        pm_msg_destroy(&msg);
    return msg;
}

void gw_devreq_clear(gw_devreq_t *d)
{
    if (!d)
        return;
    free(d->mp);
    d->mp = NULL;
    d->mplen = 0;
}
