/*  push_drv — test driver for the push path (tests/it/push_e2e.sh): talks to
 *  the store and the pusher over the bus like the scheduler would.
 *  Prints `key=value` lines; exits 1 when something fails.
 *
 *    enroll   Authenticate + TokenUpdate to the store for enrollments
 *             <prefix><from..from+n-1>; token i = 32 bytes, i big-endian at
 *             the end (hex: printf %064x i), PushMagic "magic-<eid>", --topic
 *    wake     one wake to service "push" with those ids (--dup times each)
 *    events   poll the store's event log until --count events named --name
 *             exist for enrollments with --prefix (or --timeout-ms passes);
 *             prints count=, and reason= of the last one
 */
#include "pm_bus.h"
#include "pm_cfg.h"
#include "pm_log.h"

#include <czmq.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const pm_opt_t s_opts[] = {
    {"request-endpoint", PM_OPT_STR, "tcp://127.0.0.1:7401", "broker request endpoint"},
    {"n", PM_OPT_INT, "1", "number of enrollments"},
    {"from", PM_OPT_INT, "1", "first index"},
    {"prefix", PM_OPT_STR, "dev", "enrollment ids are <prefix><i>"},
    {"topic", PM_OPT_STR, "com.apple.mgmt.test", "enroll: Topic"},
    {"token-base", PM_OPT_INT, "0", "enroll: token of <prefix><i> is i + token-base"},
    {"dup", PM_OPT_INT, "1", "wake: each id this many times"},
    {"name", PM_OPT_STR, "push.sent", "events: event name"},
    {"count", PM_OPT_INT, "1", "events: how many to wait for"},
    {"timeout-ms", PM_OPT_INT, "20000", "events: give up after"},
    {NULL, 0, NULL, NULL}};

static pm_bus_t *s_bus;

static pm_msg_t *s_call(const char *svc, pm_msg_t *m)
{
    char err[256];
    pm_msg_t *r = pm_bus_call(s_bus, svc, m, 5000, 2, err, sizeof err);
    if (!r)
        fprintf(stderr, "push_drv: %s: %s\n", pm_msg_type_name(pm_msg_type(m)), err);
    else if (pm_msg_type(r) == PM_MSG_ERROR) {
        fprintf(stderr, "push_drv: %s: %s\n", pm_msg_type_name(pm_msg_type(m)),
                pm_msg_str(r, "message"));
        pm_msg_destroy(&r);
    }
    return r;
}

static int s_checkin(const char *eid, const char *mt, const char *topic, long tok)
{
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
    bool tu = strcmp(mt, "TokenUpdate") == 0;
    char magic[300];
    snprintf(magic, sizeof magic, "magic-%s", eid);
    uint8_t token[32] = {0};
    for (int i = 0; i < 8; i++)
        token[31 - i] = (uint8_t)((unsigned long)tok >> (8 * i));
    msgpack_pack_map(&pk, tu ? 5 : 3);
    msgpack_pack_str_with_body(&pk, "MessageType", 11);
    msgpack_pack_str_with_body(&pk, mt, strlen(mt));
    msgpack_pack_str_with_body(&pk, "UDID", 4);
    msgpack_pack_str_with_body(&pk, eid, strlen(eid));
    msgpack_pack_str_with_body(&pk, "Topic", 5);
    msgpack_pack_str_with_body(&pk, topic, strlen(topic));
    if (tu) {
        msgpack_pack_str_with_body(&pk, "PushMagic", 9);
        msgpack_pack_str_with_body(&pk, magic, strlen(magic));
        msgpack_pack_str_with_body(&pk, "Token", 5);
        msgpack_pack_bin_with_body(&pk, token, sizeof token);
    }
    pm_msg_t *m = pm_msg_new(PM_MSG_STORE_CHECKIN);
    pm_msg_set_str(m, "eid", eid);
    pm_msg_set_str(m, "kind", "device");
    pm_msg_set_str(m, "message_type", mt);
    pm_msg_set_packed(m, "body", (const uint8_t *)b.data, b.size);
    msgpack_sbuffer_destroy(&b);
    pm_msg_t *r = s_call("store", m);
    int rc = r && pm_msg_uint(r, "status", 0) == 200 ? 0 : -1;
    if (r && rc < 0)
        fprintf(stderr, "push_drv: %s %s answered %llu\n", mt, eid,
                (unsigned long long)pm_msg_uint(r, "status", 0));
    pm_msg_destroy(&r);
    pm_msg_destroy(&m);
    return rc;
}

static int s_events(const char *name, const char *prefix, long want, long timeout_ms)
{
    int64_t deadline = zclock_mono() + timeout_ms;
    long count = 0;
    char reason[512] = "";
    do {
        count = 0;
        uint64_t after = 0;
        for (;;) {
            pm_msg_t *m = pm_msg_new(PM_MSG_EVENTS);
            pm_msg_set_uint(m, "after", after);
            pm_msg_set_uint(m, "limit", 1000);
            pm_msg_t *r = s_call("store", m);
            pm_msg_destroy(&m);
            const msgpack_object *ev = r ? pm_msg_obj(r, "events") : NULL;
            if (!ev || ev->type != MSGPACK_OBJECT_ARRAY) {
                pm_msg_destroy(&r);
                return -1;
            }
            for (uint32_t i = 0; i < ev->via.array.size; i++) {
                const msgpack_object *e = &ev->via.array.ptr[i];
                bool match_name = false, match_eid = false;
                for (uint32_t k = 0; k < e->via.map.size; k++) {
                    const msgpack_object *key = &e->via.map.ptr[k].key,
                                         *val = &e->via.map.ptr[k].val;
                    if (key->type != MSGPACK_OBJECT_STR)
                        continue;
                    if (key->via.str.size == 3 && !memcmp(key->via.str.ptr, "seq", 3))
                        after = val->via.u64;
                    if (key->via.str.size == 4 && !memcmp(key->via.str.ptr, "name", 4))
                        match_name = val->type == MSGPACK_OBJECT_STR &&
                                     val->via.str.size == strlen(name) &&
                                     !memcmp(val->via.str.ptr, name, strlen(name));
                    if (key->via.str.size == 3 && !memcmp(key->via.str.ptr, "eid", 3))
                        match_eid = val->type == MSGPACK_OBJECT_STR &&
                                    val->via.str.size >= strlen(prefix) &&
                                    !memcmp(val->via.str.ptr, prefix, strlen(prefix));
                    if (key->via.str.size == 4 && !memcmp(key->via.str.ptr, "data", 4) &&
                        val->type == MSGPACK_OBJECT_MAP && match_name && match_eid)
                        for (uint32_t d = 0; d < val->via.map.size; d++) {
                            const msgpack_object *dk = &val->via.map.ptr[d].key,
                                                 *dv = &val->via.map.ptr[d].val;
                            if (dk->type == MSGPACK_OBJECT_STR && dk->via.str.size == 6 &&
                                !memcmp(dk->via.str.ptr, "reason", 6) &&
                                dv->type == MSGPACK_OBJECT_STR &&
                                dv->via.str.size < sizeof reason) {
                                memcpy(reason, dv->via.str.ptr, dv->via.str.size);
                                reason[dv->via.str.size] = 0;
                            }
                        }
                }
                count += match_name && match_eid;
            }
            uint32_t got = ev->via.array.size;
            pm_msg_destroy(&r);
            if (got < 1000)
                break;
        }
        if (count >= want)
            break;
        zclock_sleep(100);
    } while (zclock_mono() < deadline && !zsys_interrupted);
    printf("count=%ld\nreason=%s\n", count, reason);
    return count >= want ? 0 : -1;
}

int main(int argc, char **argv)
{
    pm_cfg_t *cfg = NULL;
    if (pm_cfg_parse(&cfg, "push_drv", "push path test driver", s_opts, argc, argv) != PM_CFG_RUN)
        return 2;
    pm_cfg_start_logging(cfg);
    const char *mode = pm_cfg_arg(cfg, 0);
    pm_bus_config_t bc = {.name = "push_drv",
                          .request_endpoint = pm_cfg_str(cfg, "request-endpoint")};
    s_bus = pm_bus_new(&bc);
    int rc = 1;
    long n = pm_cfg_int(cfg, "n"), from = pm_cfg_int(cfg, "from");
    const char *prefix = pm_cfg_str(cfg, "prefix");
    char eid[300];
    if (!s_bus || !mode)
        goto out;
    if (strcmp(mode, "enroll") == 0) {
        int ok = 0;
        for (long i = from; i < from + n; i++) {
            snprintf(eid, sizeof eid, "%s%ld", prefix, i);
            const char *topic = pm_cfg_str(cfg, "topic");
            if (s_checkin(eid, "Authenticate", topic, 0) == 0 &&
                s_checkin(eid, "TokenUpdate", topic, i + pm_cfg_int(cfg, "token-base")) == 0)
                ok++;
        }
        printf("enrolled=%d\n", ok);
        rc = ok == n ? 0 : 1;
    } else if (strcmp(mode, "wake") == 0) {
        long dup = pm_cfg_int(cfg, "dup");
        const char **v = calloc((size_t)(n * dup), sizeof *v);
        char **names = calloc((size_t)n, sizeof *names);
        for (long i = 0; v && names && i < n; i++) {
            snprintf(eid, sizeof eid, "%s%ld", prefix, from + i);
            names[i] = strdup(eid);
            for (long d = 0; d < dup; d++)
                v[i * dup + d] = names[i];
        }
        pm_msg_t *m = pm_msg_new(PM_MSG_WAKE);
        pm_msg_set_strs(m, "eids", v, (size_t)(n * dup));
        pm_msg_t *r = s_call("push", m);
        rc = r && pm_msg_type(r) == PM_MSG_OK ? 0 : 1;
        printf("woken=%ld\n", rc == 0 ? n : 0);
        pm_msg_destroy(&r);
        pm_msg_destroy(&m);
        for (long i = 0; names && i < n; i++)
            free(names[i]);
        free(names);
        free(v);
    } else if (strcmp(mode, "events") == 0) {
        rc = s_events(pm_cfg_str(cfg, "name"), prefix, pm_cfg_int(cfg, "count"),
                      pm_cfg_int(cfg, "timeout-ms")) == 0
                 ? 0
                 : 1;
    }
out:
    pm_bus_destroy(&s_bus);
    pm_cfg_destroy(&cfg);
    return rc;
}
