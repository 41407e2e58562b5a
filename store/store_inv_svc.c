/*  store_inv_svc — the store's bus requests for the inventory (store.device,
 *  store.timeline, store.devices.find): read-only queries over store_inv.
 */
#include "store_inv.h"

#include "pm_log.h"

#include <string.h>

//  A reply of `type` whose `field` is the packed value in b.
static store_rc_t s_packed_reply(const pm_msg_t *req, pm_msg_t **reply, pm_msg_type_t type,
                                 const char *field, const msgpack_sbuffer *b)
{
    if (!*reply)
        *reply = pm_msg_new_reply(req, type);
    if (!*reply)
        return STORE_ERR_DB;
    if (pm_msg_set_packed(*reply, field, (const uint8_t *)b->data, b->size) < 0) {
        pm_msg_destroy(reply);
        *reply = pm_msg_new_error(req, "internal",
                                  "the answer is too large for one message: ask for fewer "
                                  "(limit) and page");
    }
    return STORE_OK;
}

store_rc_t store_inv_svc(store_db_t *db, const pm_msg_t *req, pm_msg_t **reply, int64_t now_ms)
{
    store_inv_t *inv = store_db_inv(db);
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    store_rc_t rc = STORE_OK;
    *reply = NULL;
    if (!inv) {
        rc = STORE_ERR_DB;
        *reply = pm_msg_new_error(req, "internal", "out of memory in the store: retry");
        goto out;
    }
    switch (pm_msg_type(req)) {
    case PM_MSG_STORE_DEVICE: {
        const char *eid = pm_msg_str(req, "eid");
        store_inv_filter_t f = {.eid = eid ? eid : "", .now_ms = now_ms};
        if (store_inv_devices(inv, &f, NULL, 1, &b) < 0) {
            rc = STORE_ERR_DB;
            break;
        }
        //  b is [ {device} ] or [ ]
        if (b.size <= 1) {
            *reply = pm_msg_new_error(req, "not_found",
                                      "no enrollment %.128s: list them with `picomdm devices`",
                                      eid ? eid : "");
            rc = STORE_ERR_NOTFOUND;
            break;
        }
        msgpack_sbuffer dev;
        msgpack_sbuffer_init(&dev);
        msgpack_sbuffer_write(&dev, b.data + 1, b.size - 1); //  drop the 1-element array header
        rc = s_packed_reply(req, reply, PM_MSG_DEVICE_REPLY, "device", &dev);
        msgpack_sbuffer_destroy(&dev);
        msgpack_sbuffer_clear(&b);
        if (rc == STORE_OK && *reply && pm_msg_type(*reply) == PM_MSG_DEVICE_REPLY) {
            if (store_inv_list(inv, eid, &b) < 0)
                rc = STORE_ERR_DB;
            else
                rc = s_packed_reply(req, reply, PM_MSG_DEVICE_REPLY, "inventory", &b);
        }
        break;
    }
    case PM_MSG_STORE_TIMELINE:
        if (store_inv_timeline(inv, pm_msg_str(req, "eid"), pm_msg_uint(req, "after", 0),
                               (unsigned)pm_msg_uint(req, "limit", 1000), &b) < 0)
            rc = STORE_ERR_DB;
        else
            rc = s_packed_reply(req, reply, PM_MSG_EVENTS_REPLY, "events", &b);
        break;
    case PM_MSG_STORE_DEVICES_FIND: {
        store_inv_filter_t f = {.model = pm_msg_str(req, "model"),
                                .os_version = pm_msg_str(req, "os_version"),
                                .silent_for_ms =
                                    (int64_t)pm_msg_uint(req, "silent_for_s", 0) * 1000,
                                .query_key = pm_msg_str(req, "query_key"),
                                .query_value = pm_msg_str(req, "query_value"),
                                .now_ms = now_ms};
        if (store_inv_devices(inv, &f, pm_msg_str(req, "after"),
                              (unsigned)pm_msg_uint(req, "limit", 1000), &b) < 0)
            rc = STORE_ERR_DB;
        else
            rc = s_packed_reply(req, reply, PM_MSG_DEVICES_REPLY, "devices", &b);
        break;
    }
    default:
        rc = STORE_ERR_BAD;
        *reply = pm_msg_new_error(req, "unknown_type", "not an inventory request");
        break;
    }
    if (rc == STORE_ERR_DB && !*reply) {
        pm_error("inventory request %s failed: %s", pm_msg_rid(req), store_inv_errmsg(inv));
        *reply = pm_msg_new_error(req, "internal", "%s", store_inv_errmsg(inv));
    }
out:
    msgpack_sbuffer_destroy(&b);
    return rc;
}
