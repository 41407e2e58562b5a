/*  store_svc — the "store" bus service over store_db, with group commit
 *  (see store_svc.h). Runs in picomdm-store's single thread.
 */
#include "store_svc.h"
#include "pm_stats.h"
#include "store_doctor.h"
#include "store_inv.h"
#include "store_push.h"
#include "store_token.h"
#include "store_chal.h"

#include "pm_log.h"
#include "pm_mpck.h"

#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

typedef struct {
    pm_bus_job_t *job;
    pm_msg_t *reply;
    double at; //  when it arrived (monotonic ms): its time in the store is measured
} s_job_t;

struct store_svc {
    store_db_t *db;
    pm_bus_t *bus;
    store_svc_opts_t opts;
    s_job_t *jobs;
    size_t njobs, cap;
    msgpack_sbuffer a, b; //  scratch for one request, reused (they keep their capacity)
    pm_stats_t *stats;    //  borrowed, may be NULL
    pm_stats_series_t *ops[PM_MSG_COUNT]; //  store_ops_total{type}, on first use
    pm_stats_series_t *errors, *commit_ms, *commit_failed, *batches, *seq;
    pm_stats_series_t *apply_ms, *sync_ms, *ckpt_ms, *reply_ms, *requests; //  per batch
    pm_stats_series_t *inside_ms; //  per request: arrival to reply
    pm_stats_series_t *wal_frames, *wal_written, *ckpts, *ckpt_frames, *ckpt_max_ms; //  collected
    store_svc_timing_t timing;
    pm_stats_series_t *q_active, *q_sent, *q_wake; //  queue depths, read at each snapshot
    uint64_t commits, applied, redone;
    bool quiet; //  re-applying requests already counted: no stats (s_batch)
};

static int64_t s_now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

store_svc_t *store_svc_new(store_db_t *db, pm_bus_t *bus, const store_svc_opts_t *opts)
{
    store_svc_t *svc = calloc(1, sizeof *svc);
    if (!svc)
        return NULL;
    svc->db = db;
    svc->bus = bus;
    svc->opts = opts ? *opts : (store_svc_opts_t){.group_commit = true};
    if (svc->opts.batch_max <= 0)
        svc->opts.batch_max = 1024;
    msgpack_sbuffer_init(&svc->a);
    msgpack_sbuffer_init(&svc->b);
    return svc;
}

void store_svc_destroy(store_svc_t **psvc)
{
    if (!psvc || !*psvc)
        return;
    store_svc_t *svc = *psvc;
    for (size_t i = 0; i < svc->njobs; i++) {
        pm_bus_job_drop(&svc->jobs[i].job);
        pm_msg_destroy(&svc->jobs[i].reply);
    }
    free(svc->jobs);
    msgpack_sbuffer_destroy(&svc->a);
    msgpack_sbuffer_destroy(&svc->b);
    free(svc);
    *psvc = NULL;
}

void store_svc_on_job(void *arg, pm_bus_job_t *job)
{
    store_svc_t *svc = arg;
    if (svc->njobs == svc->cap) {
        size_t cap = svc->cap ? svc->cap * 2 : 256;
        s_job_t *j = realloc(svc->jobs, cap * sizeof *j);
        if (!j) {
            pm_error("out of memory parking a request; dropping it (the client will retry)");
            pm_bus_job_drop(&job);
            return;
        }
        svc->jobs = j;
        svc->cap = cap;
    }
    svc->jobs[svc->njobs++] = (s_job_t){job, NULL, pm_stats_now_ms()};
}

//  pm_stats collect hook: the queue depths, counted when a snapshot is taken
//  (every stats-interval-s), never on the request path.
static void s_collect_depths(void *arg, pm_stats_t *st)
{
    (void)st;
    store_svc_t *svc = arg;
    int64_t active = 0, sent = 0, wake = 0;
    if (store_db_depths(svc->db, &active, &sent, &wake) < 0)
        return; //  logged by store_db; the gauges keep their last value
    pm_stats_set(svc->q_active, (double)active);
    pm_stats_set(svc->q_sent, (double)sent);
    pm_stats_set(svc->q_wake, (double)wake);
    store_ckpt_stats_t w;
    store_db_wal_stats(svc->db, &w);
    pm_stats_set(svc->wal_frames, (double)w.wal_frames);
    pm_stats_set_count(svc->wal_written, w.written);
    pm_stats_set_count(svc->ckpts, w.passive + w.tidy);
    pm_stats_set_count(svc->ckpt_frames, w.frames);
    pm_stats_set(svc->ckpt_max_ms, w.ms_max / 1e3);
}

void store_svc_set_stats(store_svc_t *svc, pm_stats_t *st)
{
    svc->stats = st;
    svc->errors =
        pm_stats_counter(st, "store_errors_total", "requests answered with an error (undone)");
    svc->commit_ms = pm_stats_histogram(st, "store_commit_duration_seconds",
                                        "time to commit one group-commit transaction");
    svc->commit_failed =
        pm_stats_counter(st, "store_commit_failures_total", "transactions that failed to commit");
    svc->batches = pm_stats_counter(st, "store_transactions_total",
                                    "transactions (one per batch of requests)");
    svc->requests = pm_stats_counter(st, "store_batched_requests_total",
                                     "requests applied in those transactions (their ratio is the "
                                     "group commit's batch size)");
    svc->apply_ms = pm_stats_histogram(st, "store_batch_apply_seconds",
                                       "time to apply one batch's requests (before its commit)");
    svc->sync_ms = pm_stats_histogram(
        st, "store_batch_sync_seconds",
        "time to commit one batch, without a checkpoint done inside the commit (the WAL sync)");
    svc->ckpt_ms = pm_stats_histogram(
        st, "store_batch_checkpoint_seconds",
        "time of a checkpoint on the store's thread: inside a batch's commit (--checkpoint "
        "inline), or the last few frames after a batch was answered (thread)");
    svc->inside_ms = pm_stats_histogram(
        st, "store_request_seconds",
        "time from a request's arrival to its reply (waiting for its batch, applying, committing)");
    svc->reply_ms = pm_stats_histogram(st, "store_batch_reply_seconds",
                                       "time to send one batch's replies and events");
    svc->wal_frames = pm_stats_gauge(st, "store_wal_frames", "frames (pages) in the WAL now");
    svc->wal_written = pm_stats_counter(st, "store_wal_frames_written_total",
                                        "WAL frames (pages) written by the store's commits");
    svc->ckpts = pm_stats_counter(st, "store_checkpoints_total", "WAL checkpoints run");
    svc->ckpt_frames =
        pm_stats_counter(st, "store_checkpoint_frames_total", "WAL frames copied by checkpoints");
    svc->ckpt_max_ms =
        pm_stats_gauge(st, "store_checkpoint_max_seconds", "the longest WAL checkpoint so far");
    svc->seq = pm_stats_gauge(st, "store_event_seq", "sequence number of the last event logged");
    svc->q_active = pm_stats_gauge(
        st, "store_queue_active", "commands queued for enrollments and not finished (all devices)");
    svc->q_sent = pm_stats_gauge(st, "store_queue_delivered_unanswered",
                                 "of those, delivered to the device and not answered yet");
    svc->q_wake = pm_stats_gauge(st, "store_wake_pending", "enrollments waiting for a push");
    pm_stats_set_collect(st, s_collect_depths, svc);
}

size_t store_svc_pending(const store_svc_t *svc)
{
    return svc->njobs;
}

void store_svc_counts(const store_svc_t *svc, uint64_t *commits, uint64_t *requests)
{
    *commits = svc->commits;
    *requests = svc->applied;
}

void store_svc_timing(const store_svc_t *svc, store_svc_timing_t *out)
{
    *out = svc->timing;
}

//  Count one batch phase of `ms` into its slot of the timing summary.
static void s_time(store_svc_phase_t *p, double ms)
{
    static const double bounds[STORE_SVC_NBUCKETS - 1] = {1, 2, 5, 10, 20, 50, 100};
    int i = 0;
    while (i < STORE_SVC_NBUCKETS - 1 && ms > bounds[i])
        i++;
    p->bucket[i]++;
    p->total_ms += ms;
    if (ms > p->max_ms)
        p->max_ms = ms;
}

/* ---- helpers ---- */

//  Pack a field's msgpack object into buf (cleared first). 0 / -1 if absent.
static int s_packed(const pm_msg_t *req, const char *field, msgpack_sbuffer *buf)
{
    msgpack_sbuffer_clear(buf);
    const msgpack_object *o = pm_msg_obj(req, field);
    if (!o)
        return -1;
    msgpack_packer pk;
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    return msgpack_pack_object(&pk, *o) == 0 ? 0 : -1;
}

//  The fields of the device path's two requests (store.checkin, store.connect)
//  by index: resolved once from the table, read with pm_msg_obj_at. The
//  by-name getters compare the name with each field (strlen + memcmp), ~250
//  instructions a call and ~13 calls per request (docs/queue.md, "Session 10,
//  storecpu5"). Same results as pm_msg_str / _uint / _int / _bin / _time.
enum {
    F_EID,
    F_KIND,
    F_MESSAGE_TYPE,
    F_STATUS,
    F_COMMAND_UUID,
    F_DEVICE_RID,
    F_CERT_HASH,
    F_CERT_PREV_HASH,
    F_CERT_ISSUER,
    F_CERT_NOT_AFTER,
    F_CLOCK_SKEW_S,
    F_BODY,
    F_NOTNOW_LIMIT,
    F_REDELIVER_LIMIT,
    F_DELIVERED_TIMEOUT_S,
    F_COUNT
};
static const char *const s_fname[F_COUNT] = {
    "eid",          "kind",      "message_type",   "status",          "command_uuid",
    "device_rid",   "cert_hash", "cert_prev_hash", "cert_issuer",     "cert_not_after",
    "clock_skew_s", "body",      "notnow_limit",   "redeliver_limit", "delivered_timeout_s"};
static int s_fidx[2][F_COUNT]; //  [0] store.checkin, [1] store.connect; -1: not declared
static bool s_fidx_ready;

static void s_fidx_resolve(void)
{
    const pm_msg_type_t types[2] = {PM_MSG_STORE_CHECKIN, PM_MSG_STORE_CONNECT};
    for (int t = 0; t < 2; t++) {
        const pm_msgdef_t *d = pm_msgdef(types[t]);
        for (int f = 0; f < F_COUNT; f++) {
            s_fidx[t][f] = -1;
            for (int i = 0; d && i < d->nfields; i++)
                if (strcmp(d->fields[i].name, s_fname[f]) == 0)
                    s_fidx[t][f] = i;
        }
    }
    s_fidx_ready = true;
}

//  Field f of a store.checkin or store.connect request (NULL if unset).
static const msgpack_object *s_f(const pm_msg_t *req, int f)
{
    if (!s_fidx_ready)
        s_fidx_resolve();
    pm_msg_type_t t = pm_msg_type(req);
    int i = t == PM_MSG_STORE_CONNECT   ? s_fidx[1][f]
            : t == PM_MSG_STORE_CHECKIN ? s_fidx[0][f]
                                        : -1;
    return i < 0 ? NULL : pm_msg_obj_at(req, i);
}

static const char *s_fstr(const pm_msg_t *req, int f)
{
    const msgpack_object *o = s_f(req, f);
    return o && o->type == MSGPACK_OBJECT_STR ? o->via.str.ptr : NULL; //  NUL-terminated (pm_msg)
}

static uint64_t s_fuint(const pm_msg_t *req, int f)
{
    const msgpack_object *o = s_f(req, f);
    return o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? o->via.u64 : 0;
}

static int64_t s_fint(const pm_msg_t *req, int f)
{
    const msgpack_object *o = s_f(req, f);
    if (o && o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return o->via.i64;
    if (o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= (uint64_t)INT64_MAX)
        return (int64_t)o->via.u64;
    return 0;
}

static const uint8_t *s_fbin(const pm_msg_t *req, int f, size_t *len)
{
    const msgpack_object *o = s_f(req, f);
    *len = 0;
    if (!o || o->type != MSGPACK_OBJECT_BIN)
        return NULL;
    *len = o->via.bin.size;
    return o->via.bin.size ? (const uint8_t *)o->via.bin.ptr : (const uint8_t *)"";
}

//  A TIME field's seconds (0 if absent or not a valid timestamp).
static int64_t s_ftime_s(const pm_msg_t *req, int f)
{
    const msgpack_object *o = s_f(req, f);
    msgpack_timestamp ts;
    if (!o || o->type != MSGPACK_OBJECT_EXT || o->via.ext.type != -1 ||
        !msgpack_object_to_timestamp(o, &ts) || ts.tv_nsec >= 1000000000u)
        return 0;
    return ts.tv_sec;
}

//  Pack field f's msgpack object into buf (cleared first). 0 / -1 if absent.
static int s_fpacked(const pm_msg_t *req, int f, msgpack_sbuffer *buf)
{
    msgpack_sbuffer_clear(buf);
    const msgpack_object *o = s_f(req, f);
    if (!o)
        return -1;
    msgpack_packer pk;
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    return msgpack_pack_object(&pk, *o) == 0 ? 0 : -1;
}

//  NUL-terminated copies of a STRS field: one allocation (*block, caller frees)
//  holding the pointer array and the strings. Absent field: n = 0.
static const char **s_strs(const pm_msg_t *req, const char *field, size_t *n, void **block)
{
    *n = 0;
    *block = NULL;
    const msgpack_object *o = pm_msg_obj(req, field);
    if (!o || o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size == 0)
        return NULL;
    size_t count = o->via.array.size, bytes = count * sizeof(char *);
    for (size_t i = 0; i < count; i++)
        if (o->via.array.ptr[i].type == MSGPACK_OBJECT_STR)
            bytes += o->via.array.ptr[i].via.str.size + 1;
    char **v = malloc(bytes);
    if (!v)
        return NULL;
    char *p = (char *)(v + count);
    for (size_t i = 0; i < count; i++) {
        const msgpack_object *s = &o->via.array.ptr[i];
        size_t len = s->type == MSGPACK_OBJECT_STR ? s->via.str.size : 0;
        if (len)
            memcpy(p, s->via.str.ptr, len);
        p[len] = '\0';
        v[i] = p;
        p += len + 1;
    }
    *n = count;
    *block = v;
    return (const char **)v;
}

//  A str value from the check-in body, NUL-terminated into buf (NULL if absent).
static const char *s_body_str(const msgpack_object *body, const char *key, char *buf, size_t size)
{
    return pm_mp_get_str(body, key, buf, size) == 0 ? buf : NULL;
}

static const uint8_t *s_body_bin(const msgpack_object *body, const char *key, size_t *len)
{
    const msgpack_object *o = pm_mp_get(body, key);
    *len = 0;
    if (!o || o->type != MSGPACK_OBJECT_BIN)
        return NULL;
    *len = o->via.bin.size;
    return (const uint8_t *)o->via.bin.ptr;
}

static pm_msg_t *s_error(store_svc_t *svc, const pm_msg_t *req, store_rc_t rc)
{
    const char *code = rc == STORE_ERR_BAD        ? "bad_request"
                       : rc == STORE_ERR_NOTFOUND ? "not_found"
                       : rc == STORE_ERR_CONFLICT ? "conflict"
                                                  : "internal";
    if (rc == STORE_ERR_DB)
        pm_error("%s (request %s)", store_db_errmsg(svc->db), pm_msg_rid(req));
    return pm_msg_new_error(req, code, "%s", store_db_errmsg(svc->db));
}

/* ---- one handler per request type ---- */

//  What the gateway measured on an accepted request, for picomdm doctor
//  (store_doctor.h): the identity certificate's notAfter, the clock skew.
//  Never a reason to refuse; a skew beyond STORE_DOCTOR_SKEW_MAX_S is logged
//  when it is recorded (so once, not on every request).
static store_rc_t s_doctor_note(store_svc_t *svc, const pm_msg_t *req, const char *eid,
                                int64_t now_ms)
{
    int64_t skew = 0;
    bool has_skew = s_f(req, F_CLOCK_SKEW_S) != NULL;
    int64_t na = s_ftime_s(req, F_CERT_NOT_AFTER);
    if (has_skew)
        skew = s_fint(req, F_CLOCK_SKEW_S);
    int r = store_db_doctor_note(svc->db, eid, na > 0 ? na * 1000 : 0, has_skew, skew, now_ms);
    if (r < 0)
        return STORE_ERR_DB;
    if (r == 1 && has_skew && (skew > STORE_DOCTOR_SKEW_MAX_S || skew < -STORE_DOCTOR_SKEW_MAX_S))
        pm_warn("eid=%s: the device's clock is %lld s %s the server's (Mdm-Signature signingTime);"
                " its TLS and certificate checks may fail: picomdm doctor %s",
                eid, (long long)(skew < 0 ? -skew : skew), skew < 0 ? "behind" : "ahead of", eid);
    return STORE_OK;
}

static store_rc_t s_checkin(store_svc_t *svc, const pm_msg_t *req, pm_msg_t **reply,
                            msgpack_sbuffer *a, msgpack_sbuffer *b)
{
    const msgpack_object *body = s_f(req, F_BODY);
    char udid[256], serial[128], model[128], osv[64], name[256], topic[256], magic[256];
    store_checkin_t in = {.eid = s_fstr(req, F_EID),
                          .kind = s_fstr(req, F_KIND),
                          .message_type = s_fstr(req, F_MESSAGE_TYPE),
                          .cert_issuer = s_fstr(req, F_CERT_ISSUER),
                          .awaiting_configuration = -1,
                          .now_ms = s_now_ms()};
    in.cert_hash = s_fbin(req, F_CERT_HASH, &in.cert_hash_len);
    in.cert_prev_hash = s_fbin(req, F_CERT_PREV_HASH, &in.cert_prev_hash_len);
    if (s_fpacked(req, F_BODY, a) == 0) {
        in.body = (const uint8_t *)a->data;
        in.body_len = a->size;
    }
    in.udid = s_body_str(body, "UDID", udid, sizeof udid);
    if (!in.udid)
        in.udid = s_body_str(body, "EnrollmentID", udid, sizeof udid);
    in.serial = s_body_str(body, "SerialNumber", serial, sizeof serial);
    in.model = s_body_str(body, "Model", model, sizeof model);
    in.os_version = s_body_str(body, "OSVersion", osv, sizeof osv);
    in.device_name = s_body_str(body, "DeviceName", name, sizeof name);
    in.topic = s_body_str(body, "Topic", topic, sizeof topic);
    in.push_magic = s_body_str(body, "PushMagic", magic, sizeof magic);
    in.token = s_body_bin(body, "Token", &in.token_len);
    in.unlock_token = s_body_bin(body, "UnlockToken", &in.unlock_token_len);
    in.bootstrap_token = s_body_bin(body, "BootstrapToken", &in.bootstrap_token_len);
    const msgpack_object *ac = pm_mp_get(body, "AwaitingConfiguration");
    if (ac && ac->type == MSGPACK_OBJECT_BOOLEAN)
        in.awaiting_configuration = ac->via.boolean;
    store_checkin_res_t res;
    store_rc_t rc = store_db_checkin(svc->db, &in, &res, b);
    if (rc == STORE_OK && res.status == 200)
        rc = s_doctor_note(svc, req, in.eid, in.now_ms);
    if (rc != STORE_OK)
        return rc;
    *reply = pm_msg_new_reply(req, PM_MSG_CHECKIN_REPLY);
    if (!*reply)
        return STORE_ERR_DB;
    pm_msg_set_uint(*reply, "status", res.status);
    if (res.reason[0])
        pm_msg_set_str(*reply, "reason", res.reason);
    if (b->size)
        pm_msg_set_packed(*reply, "body", (const uint8_t *)b->data, b->size);
    return STORE_OK;
}

static store_rc_t s_connect(store_svc_t *svc, const pm_msg_t *req, pm_msg_t **reply,
                            msgpack_sbuffer *a, msgpack_sbuffer *b)
{
    store_policy_t pol = {.notnow_limit = (int)s_fuint(req, F_NOTNOW_LIMIT),
                          .redeliver_limit = (int)s_fuint(req, F_REDELIVER_LIMIT),
                          .delivered_timeout_ms =
                              (int64_t)s_fuint(req, F_DELIVERED_TIMEOUT_S) * 1000};
    store_connect_t in = {.eid = s_fstr(req, F_EID),
                          .status = s_fstr(req, F_STATUS),
                          .command_uuid = s_fstr(req, F_COMMAND_UUID),
                          .rid = s_fstr(req, F_DEVICE_RID),
                          .now_ms = s_now_ms(),
                          .policy = &pol};
    in.cert_hash = s_fbin(req, F_CERT_HASH, &in.cert_hash_len);
    in.cert_prev_hash = s_fbin(req, F_CERT_PREV_HASH, &in.cert_prev_hash_len);
    if (s_fpacked(req, F_BODY, a) == 0) {
        in.body = (const uint8_t *)a->data;
        in.body_len = a->size;
    }
    store_connect_res_t res;
    store_rc_t rc = store_db_connect(svc->db, &in, &res, b);
    if (rc == STORE_OK && res.status == 200)
        rc = s_doctor_note(svc, req, in.eid, in.now_ms);
    if (rc != STORE_OK)
        return rc;
    *reply = pm_msg_new_reply(req, PM_MSG_CONNECT_REPLY);
    if (!*reply)
        return STORE_ERR_DB;
    pm_msg_set_uint(*reply, "status", res.status);
    if (res.reason[0])
        pm_msg_set_str(*reply, "reason", res.reason);
    if (b->size && pm_msg_set_packed(*reply, "command", (const uint8_t *)b->data, b->size) < 0) {
        pm_error("stored command for %s is not a valid map; answering 200 empty", in.eid);
    }
    return STORE_OK;
}

static store_rc_t s_enqueue(store_svc_t *svc, const pm_msg_t *req, pm_msg_t **reply,
                            msgpack_sbuffer *a)
{
    char rtype[128];
    const msgpack_object *cmd = pm_msg_obj(req, "command");
    if (pm_mp_get_str(cmd, "RequestType", rtype, sizeof rtype) < 0) {
        *reply = pm_msg_new_error(req, "bad_request",
                                  "the command has no RequestType string: give the Command dict "
                                  "as Apple's schema defines it");
        return STORE_ERR_BAD;
    }
    s_packed(req, "command", a);
    size_t n;
    void *block;
    const char **targets = s_strs(req, "targets", &n, &block);
    store_enqueue_t in = {.rid = pm_msg_str(req, "op_rid"),
                          .command_uuid = pm_msg_str(req, "command_uuid"),
                          .request_type = rtype,
                          .command = (const uint8_t *)a->data,
                          .command_len = a->size,
                          .targets = targets,
                          .ntargets = n,
                          .priority = pm_msg_int(req, "priority", 0),
                          .expires_ms = (int64_t)pm_msg_uint(req, "expires_ms", 0),
                          .no_push = pm_msg_bool(req, "no_push", false),
                          .now_ms = s_now_ms()};
    char uuid[256];
    uint64_t queued = 0;
    store_rc_t rc = store_db_enqueue(svc->db, &in, uuid, sizeof uuid, &queued);
    free(block);
    if (rc != STORE_OK)
        return rc;
    *reply = pm_msg_new_reply(req, PM_MSG_ENQUEUE_REPLY);
    if (!*reply)
        return STORE_ERR_DB;
    pm_msg_set_str(*reply, "command_uuid", uuid);
    pm_msg_set_uint(*reply, "queued", queued);
    return STORE_OK;
}

static store_rc_t s_cancel(store_svc_t *svc, const pm_msg_t *req, pm_msg_t **reply)
{
    size_t n;
    void *block;
    const char **targets = s_strs(req, "targets", &n, &block);
    uint64_t cancelled = 0;
    store_rc_t rc = store_db_cancel(svc->db, pm_msg_str(req, "command_uuid"), targets, n,
                                    s_now_ms(), &cancelled);
    free(block);
    if (rc != STORE_OK)
        return rc;
    *reply = pm_msg_new_reply(req, PM_MSG_CANCEL_REPLY);
    if (!*reply)
        return STORE_ERR_DB;
    pm_msg_set_uint(*reply, "cancelled", cancelled);
    return STORE_OK;
}

//  A reply of `type` whose `field` is the packed list in b.
static store_rc_t s_list_reply(const pm_msg_t *req, pm_msg_t **reply, pm_msg_type_t type,
                               const char *field, msgpack_sbuffer *b)
{
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

//  event.append_batch: every event of the batch in this request's savepoint
//  (all or none), each checked as event.append checks one. The ca sends its
//  audit events this way: one request instead of one per event.
#define S_BATCH_MAX 256
#define S_BATCH_STR 256

static int s_batch_str(const msgpack_object *v, char *buf, bool required)
{
    buf[0] = '\0';
    if (!v)
        return required ? -1 : 0;
    if (v->type != MSGPACK_OBJECT_STR || v->via.str.size >= S_BATCH_STR ||
        memchr(v->via.str.ptr, 0, v->via.str.size))
        return -1;
    memcpy(buf, v->via.str.ptr, v->via.str.size);
    buf[v->via.str.size] = '\0';
    return required && !buf[0] ? -1 : 0;
}

static store_rc_t s_event_batch(store_svc_t *svc, const pm_msg_t *req, pm_msg_t **reply,
                                msgpack_sbuffer *a)
{
    const msgpack_object *o = pm_msg_obj(req, "events");
    if (!o || o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size == 0 ||
        o->via.array.size > S_BATCH_MAX) {
        *reply = pm_msg_new_error(req, "bad_request",
                                  "event.append_batch: events must be an array of 1..%d maps",
                                  S_BATCH_MAX);
        return STORE_ERR_BAD;
    }
    uint64_t seq = 0;
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *e = &o->via.array.ptr[i];
        const msgpack_object *name = NULL, *eid = NULL, *source = NULL, *data = NULL;
        bool ok = e->type == MSGPACK_OBJECT_MAP;
        for (uint32_t k = 0; ok && k < e->via.map.size; k++) {
            const msgpack_object_kv *kv = &e->via.map.ptr[k];
            const msgpack_object **slot = NULL;
            if (kv->key.type == MSGPACK_OBJECT_STR) {
                const char *kp = kv->key.via.str.ptr;
                uint32_t kl = kv->key.via.str.size;
                slot = kl == 4 && !memcmp(kp, "name", 4)     ? &name
                       : kl == 3 && !memcmp(kp, "eid", 3)    ? &eid
                       : kl == 6 && !memcmp(kp, "source", 6) ? &source
                       : kl == 4 && !memcmp(kp, "data", 4)   ? &data
                                                             : NULL;
            }
            ok = slot && !*slot;
            if (ok)
                *slot = &kv->val;
        }
        char n[S_BATCH_STR], d[S_BATCH_STR], src[S_BATCH_STR];
        ok = ok && s_batch_str(name, n, true) == 0 && s_batch_str(eid, d, false) == 0 &&
             s_batch_str(source, src, false) == 0 && (!data || data->type == MSGPACK_OBJECT_MAP);
        if (!ok) {
            *reply = pm_msg_new_error(req, "bad_request",
                                      "event.append_batch: event %u is not a map of name "
                                      "(string), eid, source (strings), data (map)",
                                      (unsigned)i);
            return STORE_ERR_BAD;
        }
        msgpack_sbuffer_clear(a);
        if (data) {
            msgpack_packer pk;
            msgpack_packer_init(&pk, a, msgpack_sbuffer_write);
            if (msgpack_pack_object(&pk, *data) != 0)
                return STORE_ERR_DB;
        }
        store_rc_t rc = store_db_event_append(svc->db, n, d[0] ? d : NULL, src[0] ? src : NULL,
                                              (const uint8_t *)a->data, a->size, s_now_ms(), &seq);
        if (rc != STORE_OK)
            return rc;
    }
    *reply = pm_msg_new_reply(req, PM_MSG_EVENT_APPEND_BATCH_REPLY);
    if (*reply && (pm_msg_set_uint(*reply, "seq", seq) < 0 ||
                   pm_msg_set_uint(*reply, "count", o->via.array.size) < 0))
        pm_msg_destroy(reply);
    return STORE_OK;
}

bool store_svc_apply(store_svc_t *svc, const pm_msg_t *req, pm_msg_t **reply)
{
    msgpack_sbuffer_clear(&svc->a);
    msgpack_sbuffer_clear(&svc->b);
    msgpack_sbuffer *a = &svc->a, *b = &svc->b;
    *reply = NULL;
    store_rc_t rc = STORE_OK;
    uint64_t seq = 0;
    switch (pm_msg_type(req)) {
    case PM_MSG_STORE_CHECKIN:
        rc = s_checkin(svc, req, reply, a, b);
        break;
    case PM_MSG_STORE_CONNECT:
        rc = s_connect(svc, req, reply, a, b);
        break;
    case PM_MSG_STORE_ENQUEUE:
        rc = s_enqueue(svc, req, reply, a);
        break;
    case PM_MSG_STORE_CANCEL:
        rc = s_cancel(svc, req, reply);
        break;
    case PM_MSG_STORE_QUEUE: {
        store_policy_t pol = {.notnow_limit = (int)pm_msg_uint(req, "notnow_limit", 0)};
        rc = store_db_queue(svc->db, pm_msg_str(req, "eid"), pm_msg_bool(req, "all", false), &pol,
                            s_now_ms(), b);
        if (rc == STORE_OK)
            rc = s_list_reply(req, reply, PM_MSG_QUEUE_REPLY, "items", b);
        break;
    }
    case PM_MSG_STORE_RESULTS:
        rc = store_db_results(svc->db, pm_msg_str(req, "eid"), pm_msg_str(req, "command_uuid"),
                              (unsigned)pm_msg_uint(req, "limit", 100), b);
        if (rc == STORE_OK)
            rc = s_list_reply(req, reply, PM_MSG_RESULTS_REPLY, "results", b);
        break;
    case PM_MSG_STORE_DEVICES:
        rc = store_db_devices(svc->db, pm_msg_str(req, "after"),
                              (unsigned)pm_msg_uint(req, "limit", 1000), b);
        if (rc == STORE_OK)
            rc = s_list_reply(req, reply, PM_MSG_DEVICES_REPLY, "devices", b);
        break;
    case PM_MSG_STORE_DEVICE:
    case PM_MSG_STORE_TIMELINE:
    case PM_MSG_STORE_DEVICES_FIND:
        rc = store_inv_svc(svc->db, req, reply, s_now_ms());
        break;
    case PM_MSG_STORE_DOCTOR:
        rc = store_doctor_svc(svc->db, req, reply, s_now_ms());
        break;
    case PM_MSG_EVENT_APPEND:
        s_packed(req, "data", a);
        rc = store_db_event_append(svc->db, pm_msg_str(req, "name"), pm_msg_str(req, "eid"),
                                   pm_msg_str(req, "source"), (const uint8_t *)a->data, a->size,
                                   s_now_ms(), &seq);
        if (rc == STORE_OK && (*reply = pm_msg_new_reply(req, PM_MSG_EVENT_APPEND_REPLY)))
            pm_msg_set_uint(*reply, "seq", seq);
        break;
    case PM_MSG_EVENT_APPEND_BATCH:
        rc = s_event_batch(svc, req, reply, a);
        break;
    case PM_MSG_EVENTS:
        rc = store_db_events(svc->db, pm_msg_uint(req, "after", 0),
                             (unsigned)pm_msg_uint(req, "limit", 1000), b);
        if (rc == STORE_OK)
            rc = s_list_reply(req, reply, PM_MSG_EVENTS_REPLY, "events", b);
        break;
    case PM_MSG_WAKE_PENDING:
        if (pm_msg_has(req, "silent_s"))
            rc = store_db_silent(svc->db, (unsigned)pm_msg_uint(req, "limit", 1000),
                                 s_now_ms() - (int64_t)pm_msg_uint(req, "silent_s", 0) * 1000, b);
        else
            rc = store_db_wake_pending(svc->db, (unsigned)pm_msg_uint(req, "limit", 1000),
                                       pm_msg_bool(req, "clear", false), b);
        if (rc == STORE_OK)
            rc = s_list_reply(req, reply, PM_MSG_WAKE_PENDING_REPLY, "eids", b);
        break;
    case PM_MSG_PUSH_INFO:
    case PM_MSG_PUSH_OUTCOME:
        rc = store_push_apply(svc->db, req, reply, s_now_ms());
        break;
    case PM_MSG_ENROLL_TOKEN_ADD:
    case PM_MSG_ENROLL_TOKEN_LIST:
    case PM_MSG_ENROLL_TOKEN_REVOKE:
    case PM_MSG_ENROLL_TOKEN_USE:
    case PM_MSG_ENROLL_TOKEN_RELEASE:
        rc = store_token_apply(svc->db, req, reply, s_now_ms());
        break;
    case PM_MSG_SCEP_CHALLENGE_USE:
        rc = store_chal_apply(svc->db, req, reply, s_now_ms());
        break;
    default:
        pm_warn("request %s: type %s is not a store request; answered bad_request", pm_msg_rid(req),
                pm_msg_type_name(pm_msg_type(req)));
        *reply = pm_msg_new_error(req, "unknown_type",
                                  "the store does not handle %s: send it to its own service "
                                  "(see docs/bus.md)",
                                  pm_msg_type_name(pm_msg_type(req)));
        rc = STORE_ERR_BAD;
        break;
    }
    pm_msg_type_t t = pm_msg_type(req);
    if (svc->stats && !svc->quiet && t > PM_MSG_INVALID && t < PM_MSG_COUNT) {
        if (!svc->ops[t])
            svc->ops[t] = pm_stats_get(svc->stats, PM_STATS_COUNTER, "store_ops_total",
                                       "requests applied, by message type", "type",
                                       pm_msg_type_name(t), NULL, NULL);
        pm_stats_inc(svc->ops[t]);
    }
    if (rc != STORE_OK && !svc->quiet)
        pm_stats_inc(svc->errors);
    if (rc != STORE_OK && !*reply)
        *reply = s_error(svc, req, rc);
    else if (!*reply)
        *reply = pm_msg_new_error(req, "internal", "out of memory in the store: retry");
    //  do not keep a big list's buffer for ever
    if (svc->b.alloc > (1u << 20)) {
        msgpack_sbuffer_destroy(&svc->b);
        msgpack_sbuffer_init(&svc->b);
    }
    return rc == STORE_OK;
}

/* ---- group commit ---- */

static void s_publish(void *arg, uint64_t seq, int64_t ts, const char *name, const char *eid,
                      const char *source, const uint8_t *data, size_t len)
{
    store_svc_t *svc = arg;
    (void)ts;
    if ((double)seq > pm_stats_value(svc->seq))
        pm_stats_set(svc->seq, (double)seq);
    if (!svc->bus)
        return;
    //  the data is msgpack already (store_db packed it): published as it is,
    //  no pm_msg_t built, unpacked and packed again (pm_bus_publish_event)
    pm_bus_event_t ev = {.name = name,
                         .has_seq = true,
                         .seq = seq,
                         .eid = eid,
                         .source = source,
                         .data = data,
                         .len = len};
    if (pm_bus_publish_event(svc->bus, &ev) < 0)
        pm_debug("event %s (seq %llu) not published; it is in the log", name,
                 (unsigned long long)seq);
}

//  One transaction over jobs[from, to). Optimistic: the requests are applied
//  without a savepoint each, because SQLite copies every page a request
//  changes under a savepoint into its sub-journal first (memory copies and
//  allocations for ~5-10 pages per device request), and requests almost
//  never fail. When one does, the whole transaction is rolled back and the
//  batch applied again with a savepoint per request, so a failing request is
//  still undone alone and the others are answered as if it had not been
//  there. Handlers change nothing outside the transaction except log lines
//  and their reply, which is made again (and store_chal's cached count of
//  live challenges, recounted after a rollback).
static void s_batch(store_svc_t *svc, size_t from, size_t to)
{
    double t0 = pm_stats_now_ms();
    bool tx = store_db_begin(svc->db) == 0;
    bool savepoints = false;
    size_t counted = from; //  requests before this one are in the stats already
again:
    for (size_t i = from; i < to; i++) {
        s_job_t *j = &svc->jobs[i];
        const pm_msg_t *req = pm_bus_job_msg(j->job);
        if (!tx) {
            j->reply = pm_msg_new_error(req, "internal", "%s", store_db_errmsg(svc->db));
            continue;
        }
        if (savepoints && store_db_op_begin(svc->db) < 0) {
            j->reply = pm_msg_new_error(req, "internal", "%s", store_db_errmsg(svc->db));
            continue;
        }
        svc->quiet = i < counted;
        bool keep = store_svc_apply(svc, req, &j->reply);
        svc->quiet = false;
        if (savepoints) {
            store_db_op_end(svc->db, keep);
            continue;
        }
        if (keep)
            continue;
        //  undo the batch, then again with a savepoint per request
        store_db_rollback(svc->db);
        store_chal_prune_due(); //  recount: its live count has the undone rows
        for (size_t k = from; k <= i; k++)
            pm_msg_destroy(&svc->jobs[k].reply);
        counted = i + 1;
        savepoints = true;
        svc->redone++;
        tx = store_db_begin(svc->db) == 0;
        goto again;
    }
    double t1 = pm_stats_now_ms();
    svc->commits++;
    svc->applied += to - from;
    int crc = tx ? store_db_commit(svc->db) : 0;
    double tc = pm_stats_now_ms();
    double ckpt = store_db_commit_checkpoint_ms(svc->db);
    if (tx) {
        pm_stats_observe_ms(svc->commit_ms, tc - t1);
        pm_stats_observe_ms(svc->apply_ms, t1 - t0);
        pm_stats_observe_ms(svc->sync_ms, tc - t1 - ckpt);
        if (ckpt > 0)
            pm_stats_observe_ms(svc->ckpt_ms, ckpt);
        pm_stats_inc(svc->batches);
        pm_stats_add(svc->requests, to - from);
        s_time(&svc->timing.apply, t1 - t0);
        s_time(&svc->timing.sync, tc - t1 - ckpt);
        if (ckpt > 0)
            s_time(&svc->timing.checkpoint, ckpt);
        size_t n = to - from;
        if (n > svc->timing.batch_max)
            svc->timing.batch_max = n;
    }
    if (tx && crc < 0) {
        pm_stats_inc(svc->commit_failed);
        store_chal_prune_due();
        pm_error("commit failed: %s; answering %zu requests with an error",
                 store_db_errmsg(svc->db), to - from);
        for (size_t i = from; i < to; i++) {
            s_job_t *j = &svc->jobs[i];
            pm_msg_destroy(&j->reply);
            j->reply = pm_msg_new_error(pm_bus_job_msg(j->job), "internal",
                                        "the store could not commit (%s); retry",
                                        store_db_errmsg(svc->db));
        }
    }
    //  durable now: answer, then tell the world
    for (size_t i = from; i < to; i++) {
        s_job_t *j = &svc->jobs[i];
        if (j->reply)
            pm_bus_job_reply(&j->job, j->reply);
        else
            pm_bus_job_drop(&j->job);
        pm_msg_destroy(&j->reply);
        double in = pm_stats_now_ms() - j->at;
        pm_stats_observe_ms(svc->inside_ms, in);
        s_time(&svc->timing.request, in);
    }
    store_db_events_flush(svc->db, s_publish, svc);
    double t2 = pm_stats_now_ms();
    if (tx) {
        pm_stats_observe_ms(svc->reply_ms, t2 - tc);
        s_time(&svc->timing.reply, t2 - tc);
    }
    //  answered: now is the time to let the WAL start over (store_ckpt.h)
    double tidy = store_db_wal_tidy(svc->db);
    if (tidy > 0) {
        pm_stats_observe_ms(svc->ckpt_ms, tidy);
        s_time(&svc->timing.checkpoint, tidy);
    }
    if (t2 - t0 >= 250)
        pm_info("slow batch: %zu requests, %.0f ms applying, %.0f ms committing (%.0f of them "
                "checkpointing), %.0f ms replying and publishing",
                to - from, t1 - t0, tc - t1, ckpt, t2 - tc);
}

int store_svc_flush(store_svc_t *svc)
{
    size_t n = svc->njobs;
    size_t step = svc->opts.group_commit ? (size_t)svc->opts.batch_max : 1;
    for (size_t from = 0; from < n; from += step)
        s_batch(svc, from, from + step < n ? from + step : n);
    svc->njobs = 0;
    return (int)n;
}
