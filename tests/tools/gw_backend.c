/*  gw_backend — a stand-in "scheduler" for the gateway's integration tests
 *  and benchmark (tests/it/gateway_*.sh, tests/bench/gateway.sh), so the
 *  gateway can be tested before and independently of the real store and
 *  scheduler. It is deliberately simple, not a scheduler:
 *
 *    CHECKIN Authenticate  binds eid -> cert_hash (a different hash later is
 *                          refused with 400, like the real back end), queues
 *                          one DeviceInformation command for the eid
 *    CHECKIN others        200 (GetBootstrapToken: a BootstrapToken dict;
 *                          DeclarativeManagement: raw JSON "{}")
 *    CONNECT Idle/Ack/...  the next queued command, or an empty 200. A
 *                          command answered NotNow is not offered again until
 *                          the next Idle.
 *    ECHO                  echo.reply (the gateway's /health probe)
 *
 *  Every request and every security.* event it sees is printed on stdout as
 *  one line ("REQ checkin Authenticate eid=... cert=yes", "EVENT
 *  security.rejected eid=... reason=..."), so a test can assert on them.
 *
 *  gw_backend --endpoint E --subscribe-endpoint S [--service scheduler] [--delay-ms D]
 */
#include "pm_bus.h"
#include "pm_cfg.h"
#include "pm_log.h"
#include "pm_mpck.h"
#include "pm_msg.h"

#include <czmq.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEV 4096

typedef struct {
    char eid[300];
    uint8_t hash[32];
    bool has_hash;
    int queued;     //  commands still to deliver
    int seq;        //  for CommandUUIDs
    char sent[320]; //  CommandUUID delivered and not answered
    bool notnow;    //  sent[] was answered NotNow: hold until next Idle
} dev_t_;

static dev_t_ s_dev[MAX_DEV];
static int s_ndev;
static int s_delay_ms;

typedef struct held {
    pm_bus_job_t *job;
    pm_msg_t *reply;
    int64_t due;
    struct held *next;
} held_t;
static held_t *s_held;

static dev_t_ *s_find(const char *eid, bool create)
{
    for (int i = 0; i < s_ndev; i++)
        if (strcmp(s_dev[i].eid, eid) == 0)
            return &s_dev[i];
    if (!create || s_ndev == MAX_DEV)
        return NULL;
    dev_t_ *d = &s_dev[s_ndev++];
    memset(d, 0, sizeof *d);
    snprintf(d->eid, sizeof d->eid, "%s", eid);
    return d;
}

static void s_pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

//  {CommandUUID, Command{RequestType: DeviceInformation, Queries: [...]}}
static void s_set_command(pm_msg_t *rep, const char *uuid)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    s_pack_str(&pk, "CommandUUID");
    s_pack_str(&pk, uuid);
    s_pack_str(&pk, "Command");
    msgpack_pack_map(&pk, 2);
    s_pack_str(&pk, "RequestType");
    s_pack_str(&pk, "DeviceInformation");
    s_pack_str(&pk, "Queries");
    msgpack_pack_array(&pk, 2);
    s_pack_str(&pk, "DeviceName");
    s_pack_str(&pk, "OSVersion");
    pm_msg_set_packed(rep, "command", (const uint8_t *)sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

static pm_msg_t *s_reject(const pm_msg_t *req, pm_msg_type_t t, const char *reason)
{
    pm_msg_t *rep = pm_msg_new_reply(req, t);
    pm_msg_set_uint(rep, "status", 400);
    pm_msg_set_str(rep, "reason", reason);
    return rep;
}

static pm_msg_t *s_checkin(const pm_msg_t *req)
{
    const char *eid = pm_msg_str(req, "eid");
    const char *mt = pm_msg_str(req, "message_type");
    size_t hlen = 0;
    const uint8_t *hash = pm_msg_bin(req, "cert_hash", &hlen);
    printf("REQ checkin %s eid=%s kind=%s cert=%s\n", mt, eid, pm_msg_str(req, "kind"),
           hash ? "yes" : "no");
    dev_t_ *d = s_find(eid, true); //  user channels start with TokenUpdate
    if (d && d->has_hash && hash && (hlen != 32 || memcmp(d->hash, hash, 32) != 0))
        return s_reject(req, PM_MSG_CHECKIN_REPLY, "certificate not bound to this enrollment");
    if (!d)
        return s_reject(req, PM_MSG_CHECKIN_REPLY, "unknown enrollment: Authenticate first");
    pm_msg_t *rep = pm_msg_new_reply(req, PM_MSG_CHECKIN_REPLY);
    pm_msg_set_uint(rep, "status", 200);
    if (strcmp(mt, "Authenticate") == 0) {
        if (hash && hlen == 32) {
            memcpy(d->hash, hash, 32);
            d->has_hash = true;
        }
        d->queued = 1;
    } else if (strcmp(mt, "GetBootstrapToken") == 0) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 1);
        s_pack_str(&pk, "BootstrapToken");
        msgpack_pack_bin(&pk, 4);
        msgpack_pack_bin_body(&pk, "\x01\x02\x03\x04", 4);
        pm_msg_set_packed(rep, "body", (const uint8_t *)sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
    } else if (strcmp(mt, "DeclarativeManagement") == 0) {
        pm_msg_set_bin(rep, "raw", "{}", 2);
    }
    return rep;
}

static pm_msg_t *s_connect(const pm_msg_t *req)
{
    const char *eid = pm_msg_str(req, "eid");
    const char *st = pm_msg_str(req, "status");
    const char *cu = pm_msg_str(req, "command_uuid");
    size_t hlen = 0;
    const uint8_t *hash = pm_msg_bin(req, "cert_hash", &hlen);
    printf("REQ connect %s eid=%s uuid=%s cert=%s\n", st, eid, cu ? cu : "-", hash ? "yes" : "no");
    dev_t_ *d = s_find(eid, false);
    if (!d)
        return s_reject(req, PM_MSG_CONNECT_REPLY, "unknown enrollment");
    if (d->has_hash && hash && (hlen != 32 || memcmp(d->hash, hash, 32) != 0))
        return s_reject(req, PM_MSG_CONNECT_REPLY, "certificate not bound to this enrollment");
    pm_msg_t *rep = pm_msg_new_reply(req, PM_MSG_CONNECT_REPLY);
    pm_msg_set_uint(rep, "status", 200);
    if (strcmp(st, "Idle") == 0)
        d->notnow = false;
    else if (cu && strcmp(cu, d->sent) == 0) {
        if (strcmp(st, "NotNow") == 0)
            d->notnow = true; //  stays queued, not again in this session
        else {
            d->sent[0] = '\0';
            d->queued--;
        }
    }
    if (d->queued > 0 && !d->notnow) {
        if (!d->sent[0])
            snprintf(d->sent, sizeof d->sent, "CMD-%d-%s", ++d->seq, d->eid);
        s_set_command(rep, d->sent);
    }
    fflush(stdout);
    return rep;
}

static void s_on_job(void *arg, pm_bus_job_t *job)
{
    (void)arg;
    const pm_msg_t *req = pm_bus_job_msg(job);
    pm_msg_t *rep = NULL;
    switch (pm_msg_type(req)) {
    case PM_MSG_CHECKIN:
        rep = s_checkin(req);
        break;
    case PM_MSG_CONNECT:
        rep = s_connect(req);
        break;
    case PM_MSG_ECHO:
        rep = pm_msg_new_reply(req, PM_MSG_ECHO_REPLY);
        break;
    default:
        rep = pm_msg_new_error(req, "unknown_type", "gw_backend handles checkin/connect/echo");
    }
    fflush(stdout);
    if (s_delay_ms > 0) {
        held_t *h = calloc(1, sizeof *h);
        h->job = job;
        h->reply = rep;
        h->due = zclock_mono() + s_delay_ms;
        h->next = s_held;
        s_held = h;
        return;
    }
    pm_bus_job_reply(&job, rep);
    pm_msg_destroy(&rep);
}

static void s_on_event(void *arg, const char *topic, const pm_msg_t *ev)
{
    (void)arg;
    const msgpack_object *data = pm_msg_obj(ev, "data");
    char reason[300] = "", remote[64] = "", path[128] = "";
    if (data) {
        pm_mp_get_str(data, "reason", reason, sizeof reason);
        pm_mp_get_str(data, "remote", remote, sizeof remote);
        pm_mp_get_str(data, "path", path, sizeof path);
    }
    const char *eid = pm_msg_str(ev, "eid");
    printf("EVENT %s eid=%s remote=%s path=%s reason=%s\n", topic, eid ? eid : "-", remote, path,
           reason);
    fflush(stdout);
}

static const pm_opt_t s_opts[] = {
    {"endpoint", PM_OPT_STR, NULL, "broker request endpoint"},
    {"subscribe-endpoint", PM_OPT_STR, NULL, "broker XPUB endpoint (security.* events)"},
    {"service", PM_OPT_STR, "scheduler", "service to serve"},
    {"delay-ms", PM_OPT_INT, "0", "answer every request this much later"},
    {NULL, 0, NULL, NULL}};

int main(int argc, char **argv)
{
    pm_cfg_t *cfg = NULL;
    pm_cfg_result_t r = pm_cfg_parse(&cfg, "gw_backend", "stand-in scheduler for gateway tests",
                                     s_opts, argc, argv);
    if (r != PM_CFG_RUN)
        return r == PM_CFG_ERROR ? 2 : 0;
    pm_cfg_start_logging(cfg);
    s_delay_ms = (int)pm_cfg_int(cfg, "delay-ms");
    pm_bus_config_t bc = {.name = "gw_backend",
                          .request_endpoint = pm_cfg_str(cfg, "endpoint"),
                          .subscribe_endpoint = pm_cfg_str(cfg, "subscribe-endpoint")};
    pm_bus_t *bus = pm_bus_new(&bc);
    if (!bus || pm_bus_serve(bus, pm_cfg_str(cfg, "service"), s_on_job, NULL) < 0)
        return 1;
    if (bc.subscribe_endpoint && pm_bus_subscribe(bus, "security.", s_on_event, NULL) < 0)
        return 1;
    printf("READY\n");
    fflush(stdout);
    while (pm_bus_run_once(bus, 5) >= 0) {
        int64_t now = zclock_mono();
        for (held_t **pp = &s_held; *pp;) {
            held_t *h = *pp;
            if (h->due <= now) {
                *pp = h->next;
                pm_bus_job_reply(&h->job, h->reply);
                pm_msg_destroy(&h->reply);
                free(h);
            } else
                pp = &h->next;
        }
    }
    pm_bus_destroy(&bus);
    pm_cfg_destroy(&cfg);
    return 0;
}
