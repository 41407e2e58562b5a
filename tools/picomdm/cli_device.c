/*  cli_device — `picomdm device <id>`, `picomdm timeline <id>` and the
 *  filtered `picomdm devices` (docs/inventory.md). Requests go to the
 *  scheduler (device, timeline, devices.find), which asks the store.
 */
#include "cli_ops.h"
#include "cli_render.h"
#include "pm_json.h"
#include "pm_msg.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void s_json_line(const msgpack_object *o)
{
    char *t = pm_json_from_obj(o, NULL);
    printf("%s\n", t ? t : "null");
    free(t);
}

static const char *s_cell(const msgpack_object *map, const char *key, char *buf, size_t size)
{
    return cli_render_scalar(key, cli_map_get(map, key), buf, size);
}

static const char *s_str(const msgpack_object *map, const char *key, char *buf, size_t size)
{
    const msgpack_object *o = cli_map_get(map, key);
    if (o && o->type == MSGPACK_OBJECT_STR)
        snprintf(buf, size, "%.*s", (int)o->via.str.size, o->via.str.ptr);
    else
        snprintf(buf, size, "-");
    return buf;
}

/* ---- device ---- */

int cli_op_device(cli_ctx_t *ctx)
{
    const char *eid = cli_arg(ctx, 0);
    if (!eid || cli_argc(ctx) > 1) {
        fprintf(stderr, "usage: picomdm device <enrollment id> [--json] (ids: picomdm devices)\n");
        return CLI_EXIT_USAGE;
    }
    pm_msg_t *req = pm_msg_new(PM_MSG_DEVICE), *reply = NULL;
    if (!req || pm_msg_set_str(req, "eid", eid) < 0) {
        pm_msg_destroy(&req);
        fprintf(stderr, "picomdm: cannot build the request\n");
        return CLI_EXIT_FAIL;
    }
    int rc = cli_call(ctx, req, &reply);
    pm_msg_destroy(&req);
    if (rc != CLI_EXIT_OK)
        return rc;
    const msgpack_object *dev = pm_msg_obj(reply, "device");
    const msgpack_object *inv = pm_msg_obj(reply, "inventory");
    if (pm_cfg_bool(ctx->cfg, "json")) {
        //  one object: the device's fields plus "inventory": {key: value}
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        uint32_t nd = dev && dev->type == MSGPACK_OBJECT_MAP ? dev->via.map.size : 0;
        uint32_t ni = inv && inv->type == MSGPACK_OBJECT_ARRAY ? inv->via.array.size : 0;
        msgpack_pack_map(&pk, nd + 1);
        for (uint32_t i = 0; i < nd; i++) {
            msgpack_pack_object(&pk, dev->via.map.ptr[i].key);
            msgpack_pack_object(&pk, dev->via.map.ptr[i].val);
        }
        msgpack_pack_str_with_body(&pk, "inventory", 9);
        msgpack_pack_map(&pk, ni);
        for (uint32_t i = 0; i < ni; i++) {
            const msgpack_object *row = &inv->via.array.ptr[i];
            const msgpack_object *k = cli_map_get(row, "key"), *v = cli_map_get(row, "value");
            if (k)
                msgpack_pack_object(&pk, *k);
            else
                msgpack_pack_str_with_body(&pk, "", 0);
            if (v)
                msgpack_pack_object(&pk, *v);
            else
                msgpack_pack_nil(&pk);
        }
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        if (msgpack_unpack_next(&u, sb.data, sb.size, NULL) == MSGPACK_UNPACK_SUCCESS)
            s_json_line(&u.data);
        msgpack_unpacked_destroy(&u);
        msgpack_sbuffer_destroy(&sb);
        pm_msg_destroy(&reply);
        return CLI_EXIT_OK;
    }
    static const char *const fields[][2] = {{"eid", "Enrollment"},
                                            {"kind", "Enrollment type"},
                                            {"udid", "UDID"},
                                            {"serial", "Serial"},
                                            {"model", "Model"},
                                            {"os_version", "OS"},
                                            {"topic", "Topic"},
                                            {"enrolled", "Enrolled"},
                                            {"pushable", "Push"},
                                            {"wake_pending", "Wake pending"},
                                            {"first_seen", "First seen"},
                                            {"last_seen", "Last check-in"},
                                            {"queued", "Queue depth"}};
    char buf[256];
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        printf("%-16s %s\n", fields[i][1], s_cell(dev, fields[i][0], buf, sizeof buf));
    uint32_t ni = inv && inv->type == MSGPACK_OBJECT_ARRAY ? inv->via.array.size : 0;
    printf("Inventory (%u attributes; `picomdm enqueue DeviceInformation --to %s` refreshes):\n",
           ni, eid);
    for (uint32_t i = 0; i < ni; i++) {
        const msgpack_object *row = &inv->via.array.ptr[i];
        char k[160], v[200], src[64], upd[40];
        s_str(row, "key", k, sizeof k);
        const msgpack_object *val = cli_map_get(row, "value");
        cli_render_scalar(k, val, v, sizeof v);
        printf("  %-40s %-40s  (%s, %s)\n", k, v, s_str(row, "source", src, sizeof src),
               cli_render_scalar("received", cli_map_get(row, "updated"), upd, sizeof upd));
    }
    pm_msg_destroy(&reply);
    return CLI_EXIT_OK;
}

/* ---- timeline ---- */

int cli_op_timeline(cli_ctx_t *ctx)
{
    const char *eid = cli_arg(ctx, 0);
    if (!eid || cli_argc(ctx) > 1) {
        fprintf(stderr, "usage: picomdm timeline <enrollment id> [--limit N] [--after SEQ]\n");
        return CLI_EXIT_USAGE;
    }
    pm_msg_t *req = pm_msg_new(PM_MSG_TIMELINE), *reply = NULL;
    int64_t limit = pm_cfg_int(ctx->cfg, "limit"), after = pm_cfg_int(ctx->cfg, "after");
    if (!req || pm_msg_set_str(req, "eid", eid) < 0 ||
        (limit > 0 && pm_msg_set_uint(req, "limit", (uint64_t)limit) < 0) ||
        (after > 0 && pm_msg_set_uint(req, "after", (uint64_t)after) < 0)) {
        pm_msg_destroy(&req);
        fprintf(stderr, "picomdm: cannot build the request\n");
        return CLI_EXIT_FAIL;
    }
    int rc = cli_call(ctx, req, &reply);
    pm_msg_destroy(&req);
    if (rc != CLI_EXIT_OK)
        return rc;
    const msgpack_object *list = pm_msg_obj(reply, "events");
    uint32_t n = list && list->type == MSGPACK_OBJECT_ARRAY ? list->via.array.size : 0;
    if (n == 0)
        fprintf(stderr, "no events for %s (unknown id? list them with picomdm devices)\n", eid);
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *e = &list->via.array.ptr[i];
        if (pm_cfg_bool(ctx->cfg, "json")) {
            s_json_line(e);
            continue;
        }
        char seq[32], ts[40], name[64], ev_eid[160];
        const msgpack_object *data = cli_map_get(e, "data");
        char *dj = data && data->type == MSGPACK_OBJECT_MAP ? pm_json_from_obj(data, NULL) : NULL;
        s_str(e, "eid", ev_eid, sizeof ev_eid);
        printf("%6s  %s  %-22s %s%s%s\n", s_cell(e, "seq", seq, sizeof seq),
               s_cell(e, "ts", ts, sizeof ts), s_str(e, "name", name, sizeof name),
               strcmp(ev_eid, eid) ? ev_eid : "", strcmp(ev_eid, eid) ? " " : "", dj ? dj : "");
        free(dj);
    }
    pm_msg_destroy(&reply);
    return CLI_EXIT_OK;
}

/* ---- devices with filters ---- */

int cli_op_devices_find(cli_ctx_t *ctx)
{
    const char *model = pm_cfg_str(ctx->cfg, "model"), *os = pm_cfg_str(ctx->cfg, "os");
    const char *silent = pm_cfg_str(ctx->cfg, "silent-for"), *query = pm_cfg_str(ctx->cfg, "query");
    if (!model && !os && !silent && !query)
        return cli_op_devices(ctx);
    if (cli_argc(ctx) > 0) {
        fprintf(stderr, "usage: picomdm devices [--model M] [--os V] [--silent-for 7d] "
                        "[--query Attr=Value]\n");
        return CLI_EXIT_USAGE;
    }
    long long silent_s = silent ? cli_parse_duration(silent) : 0;
    if (silent_s < 0) {
        fprintf(stderr, "picomdm: --silent-for takes a duration like 90s, 12h, 7d\n");
        return CLI_EXIT_USAGE;
    }
    char qk[128] = "";
    const char *qv = NULL;
    if (query) {
        const char *eq = strchr(query, '=');
        if (!eq || eq == query || (size_t)(eq - query) >= sizeof qk) {
            fprintf(stderr, "picomdm: --query takes Attr=Value, e.g. --query OSVersion=18.1 or "
                            "--query SecurityInfo.PasscodePresent=true (attribute names: "
                            "picomdm device <id>)\n");
            return CLI_EXIT_USAGE;
        }
        snprintf(qk, sizeof qk, "%.*s", (int)(eq - query), query);
        qv = eq + 1;
    }
    pm_msg_t *req = pm_msg_new(PM_MSG_DEVICES_FIND), *reply = NULL;
    int64_t limit = pm_cfg_int(ctx->cfg, "limit");
    const char *after = pm_cfg_str(ctx->cfg, "after");
    if (!req || (model && pm_msg_set_str(req, "model", model) < 0) ||
        (os && pm_msg_set_str(req, "os_version", os) < 0) ||
        (silent_s > 0 && pm_msg_set_uint(req, "silent_for_s", (uint64_t)silent_s) < 0) ||
        (qv && (pm_msg_set_str(req, "query_key", qk) < 0 ||
                pm_msg_set_str(req, "query_value", qv) < 0)) ||
        (limit > 0 && pm_msg_set_uint(req, "limit", (uint64_t)limit) < 0) ||
        (after && pm_msg_set_str(req, "after", after) < 0)) {
        pm_msg_destroy(&req);
        fprintf(stderr, "picomdm: cannot build the request\n");
        return CLI_EXIT_FAIL;
    }
    int rc = cli_call(ctx, req, &reply);
    pm_msg_destroy(&req);
    if (rc != CLI_EXIT_OK)
        return rc;
    const msgpack_object *list = pm_msg_obj(reply, "devices");
    uint32_t n = list && list->type == MSGPACK_OBJECT_ARRAY ? list->via.array.size : 0;
    if (n == 0)
        fprintf(stderr, "no enrollment matches\n");
    else if (!pm_cfg_bool(ctx->cfg, "json"))
        printf("%-42s  %-8s  %-14s  %-8s  %6s  %s\n", "ENROLLMENT ID", "KIND", "MODEL", "OS",
               "QUEUED", "LAST SEEN");
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *d = &list->via.array.ptr[i];
        if (pm_cfg_bool(ctx->cfg, "json")) {
            s_json_line(d);
            continue;
        }
        char a[128], b[32], c[64], e[32], h[24], k[40];
        printf("%-42s  %-8s  %-14s  %-8s  %6s  %s\n", s_cell(d, "eid", a, sizeof a),
               s_cell(d, "kind", b, sizeof b), s_cell(d, "model", c, sizeof c),
               s_cell(d, "os_version", e, sizeof e), s_cell(d, "queued", h, sizeof h),
               s_cell(d, "last_seen", k, sizeof k));
    }
    pm_msg_destroy(&reply);
    return CLI_EXIT_OK;
}
