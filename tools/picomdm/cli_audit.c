/*  cli_audit — `picomdm audit` (see cli_audit.h and docs/audit.md). */
#include "cli_audit.h"
#include "pm_bus.h"
#include "pm_json.h"
#include "pm_log.h"
#include "pm_msg.h"

#include <czmq.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define S_PREFIX "{\"seq\":"
#define S_CHUNK 4096
#define S_FILL_LIMIT 1000

struct cli_audit {
    char *path;
    int fd;
    uint64_t last;
    uint64_t written; //  lines appended by this process
};

/* ---- the file ---- */

int cli_audit_line_seq(const char *line, size_t len, uint64_t *seq)
{
    size_t plen = strlen(S_PREFIX);
    if (len <= plen || memcmp(line, S_PREFIX, plen) != 0)
        return -1;
    uint64_t v = 0;
    size_t i = plen, digits = 0;
    for (; i < len && line[i] >= '0' && line[i] <= '9' && digits < 20; i++, digits++) {
        if (v > (UINT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (uint64_t)(line[i] - '0');
    }
    if (digits == 0 || i >= len || line[i] != ',')
        return -1;
    *seq = v;
    return 0;
}

//  Offset just after the last '\n' before `end` (0 if none). -1 on a read error.
static off_t s_line_start(int fd, off_t end)
{
    char buf[S_CHUNK];
    while (end > 0) {
        off_t from = end > S_CHUNK ? end - S_CHUNK : 0;
        ssize_t n = pread(fd, buf, (size_t)(end - from), from);
        if (n != end - from)
            return -1;
        for (ssize_t i = n - 1; i >= 0; i--)
            if (buf[i] == '\n')
                return from + i + 1;
        end = from;
    }
    return 0;
}

//  Cut a torn last line off and read the seq of the last complete one.
static int s_scan(cli_audit_t *a, uint64_t after)
{
    struct stat st;
    if (fstat(a->fd, &st) < 0)
        return -1;
    a->last = after;
    off_t size = st.st_size;
    if (size == 0)
        return 0;
    char c;
    if (pread(a->fd, &c, 1, size - 1) != 1)
        return -1;
    if (c != '\n') {
        off_t keep = s_line_start(a->fd, size);
        if (keep < 0)
            return -1;
        pm_warn("%s ends with a torn line (%lld bytes, a crash while writing): removing it; "
                "it is written again from the store",
                a->path, (long long)(size - keep));
        if (ftruncate(a->fd, keep) < 0)
            return -1;
        size = keep;
        if (size == 0)
            return 0;
    }
    off_t start = s_line_start(a->fd, size - 1);
    if (start < 0)
        return -1;
    char head[64];
    size_t want = (size_t)(size - start) < sizeof head ? (size_t)(size - start) : sizeof head;
    if (pread(a->fd, head, want, start) != (ssize_t)want)
        return -1;
    uint64_t seq;
    if (cli_audit_line_seq(head, want, &seq) < 0) {
        errno = EINVAL;
        fprintf(stderr,
                "picomdm audit: the last line of %s is not an audit line; give a new file "
                "(or move this one away)\n",
                a->path);
        return -1;
    }
    a->last = seq;
    return 0;
}

cli_audit_t *cli_audit_new(const char *path, uint64_t after)
{
    cli_audit_t *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->fd = -1;
    a->path = strdup(path);
    if (!a->path)
        goto fail;
    a->fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (a->fd < 0) {
        fprintf(stderr, "picomdm audit: cannot open %s: %s (check the directory and rights)\n",
                path, strerror(errno));
        goto fail;
    }
    if (s_scan(a, after) < 0) {
        if (errno != EINVAL)
            fprintf(stderr, "picomdm audit: cannot read %s: %s\n", path, strerror(errno));
        goto fail;
    }
    return a;
fail:
    cli_audit_destroy(&a);
    return NULL;
}

void cli_audit_destroy(cli_audit_t **pa)
{
    if (!pa || !*pa)
        return;
    cli_audit_t *a = *pa;
    if (a->fd >= 0)
        close(a->fd);
    free(a->path);
    free(a);
    *pa = NULL;
}

uint64_t cli_audit_last(const cli_audit_t *a)
{
    return a->last;
}

int cli_audit_reopen(cli_audit_t *a)
{
    int fd = open(a->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        pm_error("cannot reopen %s: %s; still writing to the old file (fix the directory and "
                 "send SIGHUP again)",
                 a->path, strerror(errno));
        return -1;
    }
    close(a->fd);
    a->fd = fd;
    pm_info("reopened %s (next seq %" PRIu64 ")", a->path, a->last + 1);
    return 0;
}

/* ---- rendering ---- */

static void s_pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

char *cli_audit_render(uint64_t seq, uint64_t ts, const char *name, const char *eid,
                       const char *source, const msgpack_object *data, size_t *len)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, eid ? 6 : 5);
    s_pack_str(&pk, "seq");
    msgpack_pack_uint64(&pk, seq);
    s_pack_str(&pk, "ts");
    msgpack_pack_uint64(&pk, ts);
    s_pack_str(&pk, "name");
    s_pack_str(&pk, name ? name : "");
    if (eid) {
        s_pack_str(&pk, "eid");
        s_pack_str(&pk, eid);
    }
    s_pack_str(&pk, "source");
    //  the store publishes a missing source as "store" (and logs it as NULL)
    s_pack_str(&pk, source ? source : "store");
    s_pack_str(&pk, "data");
    if (data && data->type != MSGPACK_OBJECT_NIL)
        msgpack_pack_object(&pk, *data);
    else
        msgpack_pack_map(&pk, 0);

    char *text = NULL, *line = NULL;
    msgpack_zone zone;
    msgpack_zone_init(&zone, 2048);
    msgpack_object obj;
    size_t off = 0;
    if (msgpack_unpack(sb.data, sb.size, &off, &zone, &obj) != MSGPACK_UNPACK_SUCCESS)
        goto out;
    size_t n = 0;
    text = pm_json_from_obj(&obj, &n);
    if (!text)
        goto out;
    line = malloc(n + 2);
    if (!line)
        goto out;
    memcpy(line, text, n);
    line[n] = '\n';
    line[n + 1] = '\0';
    if (len)
        *len = n + 1;
out:
    free(text);
    msgpack_zone_destroy(&zone);
    msgpack_sbuffer_destroy(&sb);
    return line;
}

/* ---- writing ---- */

cli_audit_rc_t cli_audit_write(cli_audit_t *a, uint64_t seq, uint64_t ts, const char *name,
                               const char *eid, const char *source, const msgpack_object *data)
{
    if (seq <= a->last)
        return CLI_AUDIT_DUPLICATE;
    if (seq != a->last + 1)
        return CLI_AUDIT_GAP;
    size_t len = 0;
    char *line = cli_audit_render(seq, ts, name, eid, source, data, &len);
    if (!line) {
        errno = ENOMEM;
        return CLI_AUDIT_ERROR;
    }
    //  One write per line: a crash leaves whole lines (or a torn tail that
    //  cli_audit_new removes), never two events interleaved.
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(a->fd, line + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = errno;
            //  cut what was written so the file stays whole lines
            struct stat st;
            if (done && fstat(a->fd, &st) == 0 && st.st_size >= (off_t)done &&
                ftruncate(a->fd, st.st_size - (off_t)done) < 0)
                pm_warn("cannot cut a partial line from %s", a->path);
            free(line);
            errno = n < 0 ? e : ENOSPC;
            return CLI_AUDIT_ERROR;
        }
        done += (size_t)n;
    }
    free(line);
    a->last = seq;
    a->written++;
    return CLI_AUDIT_WRITTEN;
}

static const msgpack_object *s_get(const msgpack_object *map, const char *key)
{
    size_t klen = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == klen &&
            memcmp(kv->key.via.str.ptr, key, klen) == 0)
            return &kv->val;
    }
    return NULL;
}

//  A str field as a NUL-terminated copy in buf (NULL if absent or nil). -1 if malformed.
static int s_str(const msgpack_object *map, const char *key, char *buf, size_t cap,
                 const char **out)
{
    const msgpack_object *o = s_get(map, key);
    *out = NULL;
    if (!o || o->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (o->type != MSGPACK_OBJECT_STR || o->via.str.size >= cap)
        return -1;
    memcpy(buf, o->via.str.ptr, o->via.str.size);
    buf[o->via.str.size] = '\0';
    *out = buf;
    return 0;
}

cli_audit_rc_t cli_audit_write_row(cli_audit_t *a, const msgpack_object *row)
{
    char name_buf[256], eid_buf[512], src_buf[128];
    const char *name, *eid, *source;
    const msgpack_object *seq = row->type == MSGPACK_OBJECT_MAP ? s_get(row, "seq") : NULL;
    const msgpack_object *ts = seq ? s_get(row, "ts") : NULL;
    if (!seq || seq->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        (ts && ts->type != MSGPACK_OBJECT_POSITIVE_INTEGER) ||
        s_str(row, "name", name_buf, sizeof name_buf, &name) < 0 || !name ||
        s_str(row, "eid", eid_buf, sizeof eid_buf, &eid) < 0 ||
        s_str(row, "source", src_buf, sizeof src_buf, &source) < 0) {
        errno = EINVAL;
        return CLI_AUDIT_ERROR;
    }
    return cli_audit_write(a, seq->via.u64, ts ? ts->via.u64 : 0, name, eid, source,
                           s_get(row, "data"));
}

/* ---- the subcommand ---- */

const pm_opt_t cli_audit_opts[] = {
    {"file", PM_OPT_STR, "audit.jsonl", "append events here, one JSON line each"},
    {"after", PM_OPT_INT, "0", "when the file holds no event yet, start after this seq"},
    {"poll-ms", PM_OPT_INT, "2000", "also ask the store for missed events this often"},
    {NULL, 0, NULL, NULL}};

typedef struct {
    cli_audit_t *file;
    pm_bus_t *bus;
    int timeout_ms;
    bool filling;     //  inside s_fill: live events only noted
    uint64_t pending; //  highest live seq seen (and not written) while filling
    uint64_t gaps;    //  gaps detected
    bool failed;      //  cannot write: stop
} s_auditor_t;

static volatile sig_atomic_t s_hup;

static void s_on_hup(int sig)
{
    (void)sig;
    s_hup = 1;
}

//  Ask the store for everything after the file's last seq until caught up.
//  0, or -1 when the store did not answer (retried at the next poll).
static int s_fill(s_auditor_t *au)
{
    int rc = -1;
    au->filling = true;
    for (;;) {
        pm_msg_t *req = pm_msg_new(PM_MSG_EVENTS);
        if (!req || pm_msg_set_uint(req, "after", cli_audit_last(au->file)) < 0 ||
            pm_msg_set_uint(req, "limit", S_FILL_LIMIT) < 0) {
            pm_msg_destroy(&req);
            goto out;
        }
        char err[256] = "";
        uint64_t before = cli_audit_last(au->file);
        pm_msg_t *reply = pm_bus_call(au->bus, "store", req, au->timeout_ms, 0, err, sizeof err);
        pm_msg_destroy(&req);
        if (!reply || pm_msg_type(reply) != PM_MSG_EVENTS_REPLY) {
            pm_warn("cannot replay events after seq %" PRIu64 " from the store (%s); retrying "
                    "in a moment (is the store running?)",
                    before,
                    reply ? (pm_msg_str(reply, "message") ? pm_msg_str(reply, "message") : "error")
                          : err);
            pm_msg_destroy(&reply);
            goto out;
        }
        const msgpack_object *ev = pm_msg_obj(reply, "events");
        uint32_t n = ev && ev->type == MSGPACK_OBJECT_ARRAY ? ev->via.array.size : 0;
        for (uint32_t i = 0; i < n; i++) {
            cli_audit_rc_t r = cli_audit_write_row(au->file, &ev->via.array.ptr[i]);
            if (r == CLI_AUDIT_ERROR && errno == EINVAL) {
                pm_warn("the store sent a malformed event row; skipped");
                continue;
            }
            if (r == CLI_AUDIT_ERROR) {
                pm_error("cannot write to the audit file: %s (free space or fix rights, then "
                         "restart: it resumes from the last line)",
                         strerror(errno));
                au->failed = true;
                pm_msg_destroy(&reply);
                goto out;
            }
            if (r == CLI_AUDIT_GAP) {
                //  a hole in the store's own log (rolled-back sequence): accept it
                const msgpack_object *s = s_get(&ev->via.array.ptr[i], "seq");
                pm_warn("the store's log jumps from seq %" PRIu64 " to %" PRIu64
                        "; continuing from there",
                        cli_audit_last(au->file), s->via.u64);
                au->file->last = s->via.u64 - 1;
                if (cli_audit_write_row(au->file, &ev->via.array.ptr[i]) == CLI_AUDIT_ERROR) {
                    au->failed = true;
                    pm_msg_destroy(&reply);
                    goto out;
                }
            }
        }
        pm_msg_destroy(&reply);
        if (cli_audit_last(au->file) > before)
            pm_debug("replayed seq %" PRIu64 "..%" PRIu64 " from the store", before + 1,
                     cli_audit_last(au->file));
        //  caught up with the log as it was when the store answered; a live
        //  event seen meanwhile that is still ahead means: ask once more.
        if (n < S_FILL_LIMIT && au->pending <= cli_audit_last(au->file))
            break;
        if (n == 0 && au->pending > cli_audit_last(au->file)) {
            //  announced but not in the log yet (should not happen: events are
            //  published after commit); leave it to the next poll
            break;
        }
    }
    rc = 0;
out:
    au->filling = false;
    au->pending = 0;
    return rc;
}

static void s_on_event(void *arg, const char *topic, const pm_msg_t *event)
{
    (void)topic;
    s_auditor_t *au = arg;
    if (!pm_msg_has(event, "seq")) {
        pm_debug("event %s without seq (not from the store's log); not audited",
                 pm_msg_str(event, "name"));
        return;
    }
    uint64_t seq = pm_msg_uint(event, "seq", 0);
    if (au->filling) {
        if (seq > au->pending)
            au->pending = seq;
        return;
    }
    cli_audit_rc_t r = cli_audit_write(au->file, seq, pm_msg_ts(event), pm_msg_str(event, "name"),
                                       pm_msg_str(event, "eid"), pm_msg_str(event, "source"),
                                       pm_msg_obj(event, "data"));
    if (r == CLI_AUDIT_GAP) {
        au->gaps++;
        pm_info("gap: got seq %" PRIu64 " after %" PRIu64 "; replaying the missing events from "
                "the store",
                seq, cli_audit_last(au->file));
        au->pending = seq;
        s_fill(au);
    } else if (r == CLI_AUDIT_ERROR) {
        pm_error("cannot write to the audit file: %s (free space or fix rights, then restart: "
                 "it resumes from the last line)",
                 strerror(errno));
        au->failed = true;
    }
}

static int64_t s_now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int cli_audit_run(cli_ctx_t *ctx)
{
    if (cli_argc(ctx) > 0) {
        fprintf(stderr, "usage: picomdm audit [--file PATH] [--after SEQ] [--poll-ms N]\n");
        return CLI_EXIT_USAGE;
    }
    int64_t after = pm_cfg_int(ctx->cfg, "after");
    int64_t poll_ms = pm_cfg_int(ctx->cfg, "poll-ms");
    int64_t timeout = pm_cfg_int(ctx->cfg, "timeout");
    const char *path = pm_cfg_str(ctx->cfg, "file");
    if (after < 0 || poll_ms < 100 || poll_ms > 3600000 || timeout <= 0 || timeout > 3600000 ||
        !path || !*path) {
        fprintf(stderr, "picomdm audit: --after must be >= 0, --poll-ms 100..3600000, "
                        "--timeout 1..3600000 and --file a path\n");
        return CLI_EXIT_USAGE;
    }
    int rc = CLI_EXIT_BUS;
    s_auditor_t au;
    memset(&au, 0, sizeof au);
    au.timeout_ms = (int)timeout;
    au.file = cli_audit_new(path, (uint64_t)after);
    if (!au.file)
        return CLI_EXIT_FAIL;

    pm_bus_config_t bc;
    memset(&bc, 0, sizeof bc);
    bc.name = "picomdm-audit";
    bc.request_endpoint = pm_cfg_str(ctx->cfg, "request-endpoint");
    bc.subscribe_endpoint = pm_cfg_str(ctx->cfg, "subscribe-endpoint");
    bc.server_public_key = pm_cfg_str(ctx->cfg, "server-key");
    bc.cert_file = pm_cfg_str(ctx->cfg, "curve-cert");
    au.bus = pm_bus_new(&bc);
    if (!au.bus) {
        fprintf(stderr,
                "picomdm audit: cannot connect to the bus at %s / %s (check "
                "--request-endpoint, --subscribe-endpoint and the CURVE options)\n",
                bc.request_endpoint, bc.subscribe_endpoint);
        goto out;
    }
    if (pm_bus_subscribe(au.bus, "", s_on_event, &au) < 0) {
        fprintf(stderr, "picomdm audit: cannot subscribe to the event plane\n");
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_hup;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGHUP, &sa, NULL);

    pm_info("auditing events into %s from seq %" PRIu64 " (SIGHUP reopens the file)", path,
            cli_audit_last(au.file) + 1);
    s_fill(&au); //  what happened while we were away
    int64_t next_poll = s_now_ms() + poll_ms;
    while (!au.failed && !zsys_interrupted) {
        if (s_hup) {
            s_hup = 0;
            cli_audit_reopen(au.file);
        }
        int64_t wait = next_poll - s_now_ms();
        if (pm_bus_run_once(au.bus, wait < 0 ? 0 : (int)(wait > 500 ? 500 : wait)) < 0)
            break;
        if (s_now_ms() >= next_poll) {
            //  the tail: events dropped with nothing after them to reveal the gap
            s_fill(&au);
            next_poll = s_now_ms() + poll_ms;
        }
    }
    pm_info("audit stopped at seq %" PRIu64 " (%" PRIu64 " lines written, %" PRIu64 " gaps filled)",
            cli_audit_last(au.file), au.file->written, au.gaps);
    rc = au.failed ? CLI_EXIT_FAIL : CLI_EXIT_OK;
out:
    pm_bus_destroy(&au.bus);
    cli_audit_destroy(&au.file);
    return rc;
}
