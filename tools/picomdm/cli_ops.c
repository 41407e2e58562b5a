/*  cli_ops — bus subcommands of picomdm (see cli_ops.h). */
#include "cli_ops.h"
#include "cli_render.h"
#include "pm_bus.h"
#include "pm_json.h"
#include "pm_log.h"
#include "pm_msg.h"
#include "pm_plist.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_SERVICE "scheduler"

long long cli_parse_duration(const char *text)
{
    if (!text || !*text)
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || v < 0)
        return -1;
    long long mul = 1;
    if (*end == 's')
        end++;
    else if (*end == 'm')
        mul = 60, end++;
    else if (*end == 'h')
        mul = 3600, end++;
    else if (*end == 'd')
        mul = 86400, end++;
    else if (*end == 'w')
        mul = 7 * 86400, end++;
    if (*end || v > (long long)(UINT32_MAX) / mul * 1000)
        return -1;
    return v * mul;
}

/* ---- connection and calls ---- */

static pm_bus_t *s_connect(cli_ctx_t *ctx, bool events)
{
    pm_bus_config_t bc;
    memset(&bc, 0, sizeof bc);
    bc.name = "picomdm";
    bc.request_endpoint = events ? NULL : pm_cfg_str(ctx->cfg, "request-endpoint");
    bc.subscribe_endpoint = events ? pm_cfg_str(ctx->cfg, "subscribe-endpoint") : NULL;
    bc.server_public_key = pm_cfg_str(ctx->cfg, "server-key");
    bc.cert_file = pm_cfg_str(ctx->cfg, "curve-cert");
    pm_bus_t *bus = pm_bus_new(&bc);
    if (!bus)
        fprintf(stderr,
                "picomdm: cannot connect to the bus at %s (check --%s and the CURVE options; "
                "the log line above says why)\n",
                events ? bc.subscribe_endpoint : bc.request_endpoint,
                events ? "subscribe-endpoint" : "request-endpoint");
    return bus;
}

//  Send `req` to the scheduler. On CLI_EXIT_OK *reply is the caller's.
static int s_call_to(cli_ctx_t *ctx, const char *service, const pm_msg_t *req, pm_msg_t **reply);

static int s_call(cli_ctx_t *ctx, const pm_msg_t *req, pm_msg_t **reply)
{
    return s_call_to(ctx, S_SERVICE, req, reply);
}

static int s_call_to(cli_ctx_t *ctx, const char *service, const pm_msg_t *req, pm_msg_t **reply)
{
    *reply = NULL;
    int64_t timeout = pm_cfg_int(ctx->cfg, "timeout");
    int64_t retries = pm_cfg_int(ctx->cfg, "retries");
    if (timeout <= 0 || timeout > 3600000 || retries < 0 || retries > 100) {
        fprintf(stderr, "picomdm: --timeout must be 1..3600000 ms and --retries 0..100\n");
        return CLI_EXIT_USAGE;
    }
    pm_bus_t *bus = s_connect(ctx, false);
    if (!bus)
        return CLI_EXIT_BUS;
    char err[256] = "";
    pm_msg_t *r = pm_bus_call(bus, service, req, (int)timeout, (int)retries, err, sizeof err);
    pm_bus_destroy(&bus);
    if (!r) {
        fprintf(stderr,
                "picomdm: no reply from the %s service at %s (%s). Is `picomdm up` (or the "
                "broker and picomdm-%s) running? Check --request-endpoint or PICOMDM_CONFIG.\n",
                service, pm_cfg_str(ctx->cfg, "request-endpoint"), err[0] ? err : "timed out",
                service);
        return CLI_EXIT_BUS;
    }
    if (pm_msg_type(r) == PM_MSG_ERROR) {
        const char *code = pm_msg_str(r, "code");
        const char *message = pm_msg_str(r, "message");
        fprintf(stderr, "picomdm: %s: %s\n", code ? code : "error", message ? message : "");
        bool bus_trouble =
            code && (strcmp(code, "no_service") == 0 || strcmp(code, "timeout") == 0 ||
                     strcmp(code, "worker_lost") == 0);
        pm_msg_destroy(&r);
        return bus_trouble ? CLI_EXIT_BUS : CLI_EXIT_FAIL;
    }
    *reply = r;
    return CLI_EXIT_OK;
}

static bool s_json(const cli_ctx_t *ctx)
{
    return pm_cfg_bool(ctx->cfg, "json");
}

//  One JSON line for a msgpack object (shared renderer).
static void s_print_json(const msgpack_object *obj)
{
    char *text = pm_json_from_obj(obj, NULL);
    if (text) {
        printf("%s\n", text);
        free(text);
    } else
        printf("null\n");
}

//  One JSON line with the fields of `msg` (its body), in table order.
static void s_print_json_fields(const pm_msg_t *msg)
{
    const pm_msgdef_t *def = pm_msgdef(pm_msg_type(msg));
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int n = 0;
    for (int i = 0; def && i < def->nfields; i++)
        n += pm_msg_has(msg, def->fields[i].name);
    msgpack_pack_map(&pk, (size_t)n);
    for (int i = 0; def && i < def->nfields; i++) {
        const char *name = def->fields[i].name;
        const msgpack_object *o = pm_msg_obj(msg, name);
        if (!pm_msg_has(msg, name) || !o)
            continue;
        msgpack_pack_str(&pk, strlen(name));
        msgpack_pack_str_body(&pk, name, strlen(name));
        msgpack_pack_object(&pk, *o);
    }
    msgpack_zone zone;
    msgpack_object obj;
    if (msgpack_zone_init(&zone, sb.size + 256)) {
        if (msgpack_unpack(sb.data, sb.size, NULL, &zone, &obj) == MSGPACK_UNPACK_SUCCESS)
            s_print_json(&obj);
        msgpack_zone_destroy(&zone);
    }
    msgpack_sbuffer_destroy(&sb);
}

static const msgpack_object *s_items(const pm_msg_t *reply, const char *field)
{
    const msgpack_object *o = pm_msg_obj(reply, field);
    return o && o->type == MSGPACK_OBJECT_ARRAY ? o : NULL;
}

//  A map field as one cell of text.
static const char *s_cell(const msgpack_object *map, const char *key, char *buf, size_t size)
{
    return cli_render_scalar(key, cli_map_get(map, key), buf, size);
}

/* ---- enqueue ---- */

int cli_op_enqueue(cli_ctx_t *ctx, const cli_command_t *cmd)
{
    int rc = CLI_EXIT_FAIL;
    char *bin = NULL;
    size_t binlen = 0;
    uint8_t *mp = NULL;
    size_t mplen = 0;
    pm_msg_t *req = NULL, *reply = NULL;
    char err[256];
    if (ctx->nto == 0) {
        fprintf(stderr, "picomdm: enqueue needs at least one target: --to ID (`picomdm devices` "
                        "lists them)\n");
        return CLI_EXIT_USAGE;
    }
    long long ttl = -1;
    const char *ttl_text = pm_cfg_str(ctx->cfg, "ttl");
    if (ttl_text && (ttl = cli_parse_duration(ttl_text)) <= 0) {
        fprintf(stderr, "picomdm: --ttl wants a duration such as 90s, 30m, 1h or 2d, not '%s'\n",
                ttl_text);
        return CLI_EXIT_USAGE;
    }
    //  plist -> msgpack through the shared bridge: the device gets exactly these types
    if (cli_command_to_bin(cmd, &bin, &binlen) < 0 ||
        pm_plist_to_msgpack(bin, binlen, &pm_plist_default_limits, &mp, &mplen, err, sizeof err) <
            0) {
        fprintf(stderr, "picomdm: the command cannot be encoded for the bus: %s\n", err);
        goto out;
    }
    req = pm_msg_new(PM_MSG_ENQUEUE);
    const char *uuid = pm_cfg_str(ctx->cfg, "uuid");
    if (!uuid)
        uuid = cli_command_uuid(cmd);
    if (!req || pm_msg_set_packed(req, "command", mp, mplen) < 0 ||
        pm_msg_set_strs(req, "targets", ctx->to, (size_t)ctx->nto) < 0 ||
        (uuid && pm_msg_set_str(req, "command_uuid", uuid) < 0) ||
        pm_msg_set_int(req, "priority", pm_cfg_int(ctx->cfg, "priority")) < 0 ||
        (ttl > 0 && pm_msg_set_uint(req, "ttl_s", (uint64_t)ttl) < 0) ||
        (pm_cfg_bool(ctx->cfg, "no-push") && pm_msg_set_bool(req, "no_push", true) < 0)) {
        fprintf(stderr, "picomdm: cannot build the enqueue request (too large?)\n");
        goto out;
    }
    rc = s_call(ctx, req, &reply);
    if (rc != CLI_EXIT_OK)
        goto out;
    if (s_json(ctx))
        s_print_json_fields(reply);
    else {
        printf("%s\n", pm_msg_str(reply, "command_uuid") ? pm_msg_str(reply, "command_uuid") : "");
        fprintf(stderr, "queued %s for %" PRIu64 " enrollment(s)%s\n", cli_command_type(cmd),
                pm_msg_uint(reply, "queued", 0),
                pm_cfg_bool(ctx->cfg, "no-push") ? " (no push)" : "");
    }
out:
    free(bin);
    free(mp);
    pm_msg_destroy(&req);
    pm_msg_destroy(&reply);
    return rc;
}

/* ---- queue ---- */

int cli_op_queue(cli_ctx_t *ctx)
{
    const char *eid = cli_arg(ctx, 0);
    if (!eid || cli_argc(ctx) > 1) {
        fprintf(stderr, "usage: picomdm queue <enrollment id> [--all]\n");
        return CLI_EXIT_USAGE;
    }
    pm_msg_t *req = pm_msg_new(PM_MSG_QUEUE), *reply = NULL;
    if (!req || pm_msg_set_str(req, "eid", eid) < 0 ||
        (pm_cfg_bool(ctx->cfg, "all") && pm_msg_set_bool(req, "all", true) < 0)) {
        pm_msg_destroy(&req);
        fprintf(stderr, "picomdm: cannot build the request\n");
        return CLI_EXIT_FAIL;
    }
    int rc = s_call(ctx, req, &reply);
    pm_msg_destroy(&req);
    if (rc != CLI_EXIT_OK)
        return rc;
    const msgpack_object *items = s_items(reply, "items");
    uint32_t n = items ? items->via.array.size : 0;
    if (s_json(ctx)) {
        for (uint32_t i = 0; i < n; i++)
            s_print_json(&items->via.array.ptr[i]);
    } else if (n == 0)
        fprintf(stderr, "the queue of %s is empty%s\n", eid,
                pm_cfg_bool(ctx->cfg, "all") ? "" : " (--all shows finished commands too)");
    else {
        printf("%-36s  %-26s  %-12s  %3s  %-20s  %6s  %s\n", "COMMAND UUID", "REQUEST TYPE",
               "STATUS", "PRI", "CREATED", "NOTNOW", "EXPIRES");
        for (uint32_t i = 0; i < n; i++) {
            const msgpack_object *it = &items->via.array.ptr[i];
            char a[64], b[64], c[32], d[24], e[32], f[24], g[32];
            printf("%-36s  %-26s  %-12s  %3s  %-20s  %6s  %s\n",
                   s_cell(it, "command_uuid", a, sizeof a), s_cell(it, "request_type", b, sizeof b),
                   s_cell(it, "status", c, sizeof c), s_cell(it, "priority", d, sizeof d),
                   s_cell(it, "created", e, sizeof e), s_cell(it, "notnow_count", f, sizeof f),
                   s_cell(it, "expires", g, sizeof g));
        }
    }
    pm_msg_destroy(&reply);
    return CLI_EXIT_OK;
}

/* ---- results ---- */

static bool s_looks_like_uuid(const char *s)
{
    //  8-4-4-4-12 hex digits
    static const int groups[] = {8, 4, 4, 4, 12};
    for (int g = 0; g < 5; g++) {
        for (int i = 0; i < groups[g]; i++, s++)
            if (!isxdigit((unsigned char)*s))
                return false;
        if (g < 4 && *s++ != '-')
            return false;
    }
    return *s == 0;
}

static int s_results_query(cli_ctx_t *ctx, const char *field, const char *value, pm_msg_t **reply)
{
    pm_msg_t *req = pm_msg_new(PM_MSG_RESULTS);
    int64_t limit = pm_cfg_int(ctx->cfg, "limit");
    if (!req || pm_msg_set_str(req, field, value) < 0 ||
        (limit > 0 && pm_msg_set_uint(req, "limit", (uint64_t)limit) < 0)) {
        pm_msg_destroy(&req);
        fprintf(stderr, "picomdm: cannot build the request\n");
        return CLI_EXIT_FAIL;
    }
    int rc = s_call(ctx, req, reply);
    pm_msg_destroy(&req);
    return rc;
}

int cli_op_results(cli_ctx_t *ctx)
{
    const char *what = cli_arg(ctx, 0);
    if (!what || cli_argc(ctx) > 1) {
        fprintf(stderr, "usage: picomdm results <enrollment id | CommandUUID> [--limit N]\n");
        return CLI_EXIT_USAGE;
    }
    pm_msg_t *reply = NULL;
    //  A macOS UDID is a UUID too: try it as a CommandUUID first, then as an enrollment.
    bool uuid = s_looks_like_uuid(what);
    int rc = s_results_query(ctx, uuid ? "command_uuid" : "eid", what, &reply);
    const msgpack_object *list = rc == CLI_EXIT_OK ? s_items(reply, "results") : NULL;
    if (rc == CLI_EXIT_OK && uuid && (!list || list->via.array.size == 0)) {
        pm_msg_destroy(&reply);
        rc = s_results_query(ctx, "eid", what, &reply);
        list = rc == CLI_EXIT_OK ? s_items(reply, "results") : NULL;
    }
    if (rc != CLI_EXIT_OK)
        return rc;
    uint32_t n = list ? list->via.array.size : 0;
    if (n == 0 && !s_json(ctx))
        fprintf(stderr,
                "no results for %s yet (a queued command has a result once the device "
                "answers; `picomdm queue <id>` shows what is pending)\n",
                what);
    static const char *const skip[] = {"CommandUUID", "Status", "UDID", "EnrollmentID", NULL};
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *r = &list->via.array.ptr[i];
        if (s_json(ctx)) {
            s_print_json(r);
            continue;
        }
        char rt[64], cu[64], st[32], eid[128], at[40];
        printf("%s%s %s  %s  on %s  at %s\n", i ? "\n" : "",
               s_cell(r, "request_type", rt, sizeof rt), s_cell(r, "command_uuid", cu, sizeof cu),
               s_cell(r, "status", st, sizeof st), s_cell(r, "eid", eid, sizeof eid),
               s_cell(r, "received", at, sizeof at));
        const msgpack_object *body = cli_map_get(r, "body");
        if (body)
            cli_render_map(stdout, body, 2, skip);
    }
    pm_msg_destroy(&reply);
    return CLI_EXIT_OK;
}

/* ---- devices ---- */

int cli_op_devices(cli_ctx_t *ctx)
{
    if (cli_argc(ctx) > 0) {
        fprintf(stderr, "usage: picomdm devices [--limit N] [--after ID]\n");
        return CLI_EXIT_USAGE;
    }
    pm_msg_t *req = pm_msg_new(PM_MSG_DEVICES), *reply = NULL;
    int64_t limit = pm_cfg_int(ctx->cfg, "limit");
    const char *after = pm_cfg_str(ctx->cfg, "after");
    if (!req || (limit > 0 && pm_msg_set_uint(req, "limit", (uint64_t)limit) < 0) ||
        (after && pm_msg_set_str(req, "after", after) < 0)) {
        pm_msg_destroy(&req);
        fprintf(stderr, "picomdm: cannot build the request\n");
        return CLI_EXIT_FAIL;
    }
    int rc = s_call(ctx, req, &reply);
    pm_msg_destroy(&req);
    if (rc != CLI_EXIT_OK)
        return rc;
    const msgpack_object *list = s_items(reply, "devices");
    uint32_t n = list ? list->via.array.size : 0;
    if (s_json(ctx)) {
        for (uint32_t i = 0; i < n; i++)
            s_print_json(&list->via.array.ptr[i]);
    } else if (n == 0)
        fprintf(stderr, "no enrollments yet (devices appear after their first check-in)\n");
    else {
        printf("%-42s  %-8s  %-14s  %-8s  %-8s  %-8s  %6s  %s\n", "ENROLLMENT ID", "KIND", "MODEL",
               "OS", "ENROLLED", "PUSHABLE", "QUEUED", "LAST SEEN");
        for (uint32_t i = 0; i < n; i++) {
            const msgpack_object *d = &list->via.array.ptr[i];
            char a[128], b[32], c[64], e[32], f[16], g[16], h[24], k[40];
            printf("%-42s  %-8s  %-14s  %-8s  %-8s  %-8s  %6s  %s\n", s_cell(d, "eid", a, sizeof a),
                   s_cell(d, "kind", b, sizeof b), s_cell(d, "model", c, sizeof c),
                   s_cell(d, "os_version", e, sizeof e), s_cell(d, "enrolled", f, sizeof f),
                   s_cell(d, "pushable", g, sizeof g), s_cell(d, "queued", h, sizeof h),
                   s_cell(d, "last_seen", k, sizeof k));
        }
    }
    pm_msg_destroy(&reply);
    return CLI_EXIT_OK;
}

/* ---- cancel ---- */

int cli_op_cancel(cli_ctx_t *ctx)
{
    const char *uuid = cli_arg(ctx, 0);
    if (!uuid || cli_argc(ctx) > 1) {
        fprintf(stderr, "usage: picomdm cancel <CommandUUID> [--to ID...]\n");
        return CLI_EXIT_USAGE;
    }
    pm_msg_t *req = pm_msg_new(PM_MSG_CANCEL), *reply = NULL;
    if (!req || pm_msg_set_str(req, "command_uuid", uuid) < 0 ||
        (ctx->nto && pm_msg_set_strs(req, "targets", ctx->to, (size_t)ctx->nto) < 0)) {
        pm_msg_destroy(&req);
        fprintf(stderr, "picomdm: cannot build the request\n");
        return CLI_EXIT_FAIL;
    }
    int rc = s_call(ctx, req, &reply);
    pm_msg_destroy(&req);
    if (rc != CLI_EXIT_OK)
        return rc;
    uint64_t n = pm_msg_uint(reply, "cancelled", 0);
    if (s_json(ctx))
        s_print_json_fields(reply);
    else
        printf("cancelled %" PRIu64 " queue entr%s\n", n, n == 1 ? "y" : "ies");
    pm_msg_destroy(&reply);
    if (n == 0) {
        fprintf(stderr,
                "picomdm: nothing to cancel for %s: unknown, or already answered by "
                "every target (`picomdm results %s` shows the answers)\n",
                uuid, uuid);
        return CLI_EXIT_FAIL;
    }
    return CLI_EXIT_OK;
}

/* ---- watch ---- */

typedef struct {
    long long seen;
    uint64_t last_seq; //  gap report: seq of the previous event (0 = none yet)
    bool stats;        //  the prefix asks for stats.* snapshots (docs/metrics.md)
} s_watch_t;

static void s_on_event(void *arg, const char *topic, const pm_msg_t *event)
{
    (void)topic;
    s_watch_t *w = arg;
    if (pm_msg_type(event) == PM_MSG_STATS && !w->stats)
        return; //  every process's counters every few seconds: only when asked for
    uint64_t seq = pm_msg_uint(event, "seq", 0);
    if (seq && w->last_seq && seq > w->last_seq + 1)
        fprintf(stderr,
                "picomdm watch: gap: %" PRIu64 " event(s) missed (seq %" PRIu64 "..%" PRIu64
                "); `picomdm audit` replays them from the store\n",
                seq - w->last_seq - 1, w->last_seq + 1, seq - 1);
    if (seq > w->last_seq)
        w->last_seq = seq;
    char *text = pm_json_from_msg(event, NULL);
    if (text) {
        printf("%s\n", text);
        fflush(stdout);
        free(text);
    }
    w->seen++;
}

int cli_op_watch(cli_ctx_t *ctx)
{
    if (cli_argc(ctx) > 1) {
        fprintf(stderr, "usage: picomdm watch [topic-prefix] [--count N]\n");
        return CLI_EXIT_USAGE;
    }
    const char *prefix = cli_arg(ctx, 0) ? cli_arg(ctx, 0) : "";
    int64_t count = pm_cfg_int(ctx->cfg, "count");
    pm_bus_t *bus = s_connect(ctx, true);
    if (!bus)
        return CLI_EXIT_BUS;
    s_watch_t w = {.stats = strncmp(prefix, "stats", 5) == 0};
    if (pm_bus_subscribe(bus, prefix, s_on_event, &w) < 0) {
        fprintf(stderr, "picomdm: cannot subscribe to '%s'\n", prefix);
        pm_bus_destroy(&bus);
        return CLI_EXIT_BUS;
    }
    pm_info("watching events%s%s on %s (Ctrl-C stops)", *prefix ? " starting with " : "", prefix,
            pm_cfg_str(ctx->cfg, "subscribe-endpoint"));
    while (count <= 0 || w.seen < count)
        if (pm_bus_run_once(bus, 500) < 0)
            break; //  interrupted
    pm_bus_destroy(&bus);
    return CLI_EXIT_OK;
}

int cli_call(cli_ctx_t *ctx, const pm_msg_t *req, pm_msg_t **reply)
{
    return s_call(ctx, req, reply);
}

int cli_call_to(cli_ctx_t *ctx, const char *service, const pm_msg_t *req, pm_msg_t **reply)
{
    return s_call_to(ctx, service, req, reply);
}
