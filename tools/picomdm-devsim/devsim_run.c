/*  devsim_run — libcurl multi engine of the device simulator (see devsim_run.h). */
#include "devsim_run.h"
#include "devsim_plist.h"
#include "devsim_scep.h"
#include "devsim_sched.h"
#include "pm_log.h"

#include <curl/curl.h>
#include <czmq.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

//  ST_SCEP: the device's profile download and SCEP requests (devsim_scep_dev_t
//  says which request comes next), before its check-ins.
typedef enum { ST_SCEP, ST_AUTH, ST_TOKEN, ST_SESSION, ST_CHECKOUT } step_kind_t;

typedef struct {
    step_kind_t kind;
    devsim_dev_t *ch; //  the channel this step speaks for
} step_t;

typedef struct job {
    devsim_dev_t *dev;
    step_t steps[5];
    int nsteps, at;
    int cmds;       //  commands answered in the current session
    bool stop_next; //  the device ends the session after this PUT (EraseDevice...)
    int wake_ix;    //  index in wake_state for a wake job, else -1
    double sched;   //  open loop: scheduled start (ms, s_now_ms), else -1
    bool first;     //  open loop: the request in flight is the job's first
    //  Enrollment from the enrollment URL (devsim_run_enroll_url): the SCEP
    //  machine (owned), the check-in URL and SignMessage of the device's own
    //  profile, and how its programs use connections.
    devsim_scep_dev_t *scep;
    char *checkin_url; //  owned; NULL: the run's
    bool sign;
    devsim_conn_mode_t conn;
    struct job *next;
} job_t;

typedef struct {
    CURL *easy;
    job_t *job;
    char *body;
    size_t bodylen;
    //  The request headers, built without an allocation per request: three
    //  list nodes owned by the slot (curl only reads them), the first two
    //  constant, the third pointing into sig (the Mdm-Signature line).
    struct curl_slist hdr[3];
    char *sig;
    size_t sigcap;
    const char *url_set; //  the URL and User-Agent curl has (set only on change)
    const char *ua_set;
    //  What else the handle has, set only on change: method (0 PUT, 1 GET,
    //  2 POST), header list, and the connection options of an enrollment's
    //  requests (a new connection, closed after, no TLS session reuse).
    int method_set;
    const struct curl_slist *hdr_set;
    long fresh_set, forbid_set, sessid_set;
    char *resp;
    size_t resplen, respcap;
    bool overflow;
    double t0;
    char what[48]; //  for logs: message type or status sent
    bool in_multi; //  the handle is in the multi (a transfer in flight)
} slot_t;

#define MAX_PHASES 64

typedef struct {
    char name[32];
    double t0, t1;
    double *lat; //  ms, one per request
    size_t nlat, caplat;
    double *latk; //  ms, the requests sent on an already open connection (no TLS handshake)
    size_t nlatk, caplatk;
    long units;   //  enrollments or sessions completed
    long conns;   //  connections (TLS handshakes) the requests opened
    long scep_ok; //  devices that got an identity over SCEP (devsim_run_enroll_url)
    long cmds;    //  command round trips (a report with a CommandUUID)
    long failed;  //  jobs that failed
    //  Open loop (--rate): the schedule and how well it was kept.
    bool open;
    double rate;                    //  offered: jobs started per second
    long nsched;                    //  jobs on the timetable
    long nstarted;                  //  of them started
    long late;                      //  started more than 1 ms behind schedule
    long late_slot;                 //  of them, waited for a free transfer slot (server behind)
    double behind_last, behind_max; //  ms: the last job's start, the worst one
    int max_active;                 //  the most transfers in flight at once
    double *done;                   //  ms: when each job completed, in order
    size_t ndone, capdone;
    double *raw; //  ms, per request: the plain round trip (from when it was sent)
    size_t nraw, capraw;
    double *first; //  ms, per job: its first request from the job's scheduled start
    size_t nfirst, capfirst;
    double cpu0_user, cpu0_sys, cpu_user, cpu_sys; //  s: the simulator's own CPU in this phase
    long waits; //  epoll waits that could sleep (a non-zero timeout): the loop's wake-ups at most
    //  --warm-connections, before the phase (none of it in the figures above):
    //  requests sent, answered (any HTTP status), connections they opened,
    //  the HTTP status of the last answer, time and CPU taken.
    long warm_n, warm_ok, warm_conns, warm_code;
    double warm_ms, warm_cpu;
} phase_t;

struct devsim_run {
    devsim_run_opts_t o;
    char checkin_url[1024], server_url[1024];
    //  The same two URLs parsed once (CURLOPT_CURLU): with CURLOPT_URL curl
    //  parses the string again at every transfer's start; with a CURLU it
    //  copies the parsed parts. NULL: that URL goes as a string.
    CURLU *checkin_cu, *server_cu;
    devsim_dev_t **devs;
    int n;
    CURLM *multi;
    //  One event loop: curl tells which sockets to wait on (socket callback)
    //  and when its next timeout is due (timer callback); the loop waits in
    //  epoll_wait and hands curl exactly the socket that is ready. No poll of
    //  every connection per iteration, no zero-timeout checks per transfer.
    int epfd;
    double timer_at; //  ms (s_now_ms) curl wants CURL_SOCKET_TIMEOUT, < 0: none
    int push_fd;     //  the push socket once it is in epfd, else -1
    //  Per transfer socket (indexed by descriptor): the events it is
    //  registered for in epfd (EPOLLIN / EPOLLOUT; 0 = not in epfd) and
    //  S_FD_WANT while curl watches it. See s_sockcb.
    uint32_t *fdst;
    int nfdst;
    //  The loop waits with epoll_pwait2 (a timeout in nanoseconds: the next
    //  scheduled start is met without a timerfd to arm per start); false once
    //  the kernel refused it (then epoll_wait, whole milliseconds rounded up).
    bool pwait2_off;
    slot_t *slots;
    int nslots;
    job_t *head, *tail;
    phase_t phases[MAX_PHASES];
    int nphases;
    phase_t *ph;
    long st_ack, st_error, st_format, st_notnow, violations, http_errors, transport_errors;
    long bad_replies;
    //  Per channel (device i: 2i, its user channel: 2i+1): a wake job is
    //  queued/running, and whether another wake arrived meanwhile. A device
    //  runs one session at a time; a push during a session means one more.
    unsigned char *wake_state;
    double t_begin;            //  ms: devsim_run_new (the latency log's time origin)
    devsim_profile_t *profile; //  the first profile devsim_run_enroll_url got (owned)
};

enum { S_WAKE_IDLE = 0, S_WAKE_BUSY, S_WAKE_AGAIN };

//  The simulator's CPU time so far (user, system), seconds.
static void s_cpu(double *user, double *sys)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    *sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static size_t s_write(char *data, size_t size, size_t nmemb, void *arg)
{
    slot_t *s = arg;
    size_t n = size * nmemb;
    if (s->resplen + n > DEVSIM_PLIST_MAX_BYTES) {
        s->overflow = true;
        return 0; //  abort: a reply larger than any plist we accept
    }
    if (s->resplen + n + 1 > s->respcap) {
        size_t cap = s->respcap ? s->respcap : 4096;
        while (cap < s->resplen + n + 1)
            cap *= 2;
        char *p = realloc(s->resp, cap);
        if (!p)
            return 0;
        s->resp = p;
        s->respcap = cap;
    }
    memcpy(s->resp + s->resplen, data, n);
    s->resplen += n;
    s->resp[s->resplen] = 0;
    return n;
}

static curl_socket_t s_opensock(void *arg, curlsocktype purpose, struct curl_sockaddr *a);
static int s_closesock(void *arg, curl_socket_t fd);

//  A slot's transfer into / out of the multi handle (in_multi: destroy removes it).
static int s_add(devsim_run_t *r, slot_t *s);
static void s_remove(devsim_run_t *r, slot_t *s);

//  The options every request of a slot shares, set once per handle (not
//  reset and set again per request): what changes per request is the body,
//  the Mdm-Signature header and, rarely, the URL and User-Agent.
static void s_easy_setup(devsim_run_t *r, slot_t *s)
{
    CURL *e = s->easy;
    s->hdr[0].data = (char *)"Content-Type: application/x-apple-aspen-mdm";
    s->hdr[1].data = (char *)"Expect:"; //  devices do not send 100-continue
    s->hdr[0].next = &s->hdr[1];
    s->hdr[2].data = NULL;
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "PUT");
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, &s->hdr[0]);
    s->method_set = 0;
    s->hdr_set = &s->hdr[0];
    s->sessid_set = 1; //  curl's defaults: TLS session reuse on, no fresh connect
    s->fresh_set = s->forbid_set = 0;
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, s_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(e, CURLOPT_PRIVATE, s);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, s_opensock);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, r);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, s_closesock);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, r);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, r->o.timeout_ms > 0 ? r->o.timeout_ms : 30000L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    if (r->o.ca_bundle) {
        //  The bundle alone: Debian's libcurl also has a default CA directory
        //  (/etc/ssl/certs), and with one set libcurl neither caches the CA
        //  store nor skips the directory's lookups: every new connection
        //  parsed the bundle again (~1.5 M instructions per TLS handshake).
        //  Without it the store is built once and kept (CURLOPT_CA_CACHE_TIMEOUT,
        //  24 h by default, libcurl >= 7.87).
        curl_easy_setopt(e, CURLOPT_CAINFO, r->o.ca_bundle);
        curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
    }
    if (r->o.insecure) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
}

#define S_FD_WANT (1u << 30) //  fdst: curl watches the socket
#define S_FD_OURS (1u << 29) //  fdst: opened by s_opensock (closed through s_closesock)

//  The state of socket fd (0 for one never seen), growing the table.
static uint32_t *s_fd(devsim_run_t *r, int fd)
{
    if (fd < 0)
        return NULL;
    if (fd >= r->nfdst) {
        int n = r->nfdst ? r->nfdst : 256;
        while (n <= fd)
            n *= 2;
        uint32_t *t = realloc(r->fdst, (size_t)n * sizeof *t);
        if (!t)
            return NULL;
        memset(t + r->nfdst, 0, (size_t)(n - r->nfdst) * sizeof *t);
        r->fdst = t;
        r->nfdst = n;
    }
    return &r->fdst[fd];
}

//  curl: wait on socket fd for `what` (CURL_POLL_IN/OUT/INOUT/REMOVE).
//
//  A kept-alive connection is registered for input while a request waits
//  for its reply, then curl removes it and, on the next request on it, adds
//  it again: two epoll_ctl calls per request (~1-2 us of CPU each on this
//  VM). So a socket that waited for input only stays in epfd when curl lets
//  go of it (the connection is idle: the server sends nothing until the
//  next request), and the next wait for input costs no call. Should an
//  event come on it while curl does not watch it (the server closed an
//  idle connection), s_wait takes it out then. A socket number curl opens
//  anew (s_opensock) or closes (s_closesock) starts from "not in epfd".
//  Only transfer sockets (opened by s_opensock) are kept: a socket curl
//  makes otherwise (the threaded resolver's socketpair) is closed without
//  s_closesock, and its number may come back for another such socket.
static int s_sockcb(CURL *e, curl_socket_t fd, int what, void *arg, void *sockp)
{
    (void)e;
    (void)sockp;
    devsim_run_t *r = arg;
    uint32_t *st = s_fd(r, fd);
    if (!st) {
        pm_warn("no memory for the state of a transfer socket (the transfer will time out)");
        return -1;
    }
    uint32_t had = *st & (EPOLLIN | EPOLLOUT);
    uint32_t ours = *st & S_FD_OURS;
    if (what == CURL_POLL_REMOVE) {
        *st = had | ours;
        if ((had & EPOLLOUT) || !ours) { //  writable is always ready: do not keep it
            epoll_ctl(r->epfd, EPOLL_CTL_DEL, fd, NULL); //  (fails harmlessly if closed)
            *st = 0;
        }
        return 0;
    }
    uint32_t ev = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    if (had != ev) {
        struct epoll_event ee = {.events = ev, .data.fd = fd};
        if (epoll_ctl(r->epfd, had ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ee) < 0) {
            //  a stale entry (a descriptor closed behind curl's back), either way
            if (epoll_ctl(r->epfd, had ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ee) < 0) {
                pm_warn("epoll_ctl on a transfer socket failed: %s (the transfer will time out)",
                        strerror(errno));
                *st = 0;
                return -1;
            }
        }
    }
    *st = ev | S_FD_WANT | ours;
    return 0;
}

//  curl: open a transfer socket. A descriptor number can be one that an
//  earlier, closed socket had: it starts from "not in epfd".
static curl_socket_t s_opensock(void *arg, curlsocktype purpose, struct curl_sockaddr *a)
{
    (void)purpose;
    devsim_run_t *r = arg;
    curl_socket_t fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    uint32_t *st = fd >= 0 ? s_fd(r, fd) : NULL;
    if (st)
        *st = S_FD_OURS;
    return fd;
}

//  curl: close a transfer socket (out of epfd first if it is still there).
static int s_closesock(void *arg, curl_socket_t fd)
{
    devsim_run_t *r = arg;
    uint32_t *st = fd >= 0 && fd < r->nfdst ? &r->fdst[fd] : NULL;
    if (st && (*st & (EPOLLIN | EPOLLOUT)))
        epoll_ctl(r->epfd, EPOLL_CTL_DEL, fd, NULL);
    if (st)
        *st = 0;
    return close(fd);
}

//  curl: call CURL_SOCKET_TIMEOUT in ms milliseconds (-1: no timer).
static int s_timercb(CURLM *m, long ms, void *arg)
{
    (void)m;
    devsim_run_t *r = arg;
    r->timer_at = ms < 0 ? -1 : s_now_ms() + (double)ms;
    return 0;
}

static void s_parse_urls(devsim_run_t *r);

devsim_run_t *devsim_run_new(const devsim_run_opts_t *o, devsim_dev_t **devs, int n)
{
    devsim_run_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->epfd = -1;
    r->o = *o;
    if (r->o.concurrency < 1)
        r->o.concurrency = 1;
    if (r->o.max_commands < 1)
        r->o.max_commands = 1000;
    r->devs = devs;
    r->n = n;
    r->timer_at = -1;
    r->push_fd = -1;
    r->t_begin = s_now_ms();
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    r->multi = curl_multi_init();
    r->nslots = r->o.concurrency;
    r->slots = calloc((size_t)r->nslots, sizeof *r->slots);
    if (!r->multi || !r->slots || r->epfd < 0)
        goto fail;
    curl_multi_setopt(r->multi, CURLMOPT_SOCKETFUNCTION, s_sockcb);
    curl_multi_setopt(r->multi, CURLMOPT_SOCKETDATA, r);
    curl_multi_setopt(r->multi, CURLMOPT_TIMERFUNCTION, s_timercb);
    curl_multi_setopt(r->multi, CURLMOPT_TIMERDATA, r);
    curl_multi_setopt(r->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)r->nslots);
    curl_multi_setopt(r->multi, CURLMOPT_MAXCONNECTS, (long)r->nslots);
    snprintf(r->checkin_url, sizeof r->checkin_url, "%s%s", r->o.url, r->o.checkin_path);
    snprintf(r->server_url, sizeof r->server_url, "%s%s", r->o.url, r->o.server_path);
    s_parse_urls(r);
    for (int i = 0; i < r->nslots; i++) {
        slot_t *sl = &r->slots[i];
        sl->easy = curl_easy_init();
        if (!sl->easy)
            goto fail;
        s_easy_setup(r, sl);
    }
    return r;
fail:
    devsim_run_destroy(&r);
    return NULL;
}

static void s_job_free(job_t *j)
{
    if (!j)
        return;
    devsim_scep_dev_destroy(&j->scep);
    free(j->checkin_url);
    free(j);
}

void devsim_run_destroy(devsim_run_t **rp)
{
    if (!rp || !*rp)
        return;
    devsim_run_t *r = *rp;
    for (int i = 0; r->slots && i < r->nslots; i++) {
        slot_t *s = &r->slots[i];
        if (s->easy) {
            if (s->in_multi)
                curl_multi_remove_handle(r->multi, s->easy);
            curl_easy_cleanup(s->easy);
        }
        s_job_free(s->job);
        free(s->body);
        free(s->resp);
        free(s->sig);
    }
    free(r->slots);
    free(r->wake_state);
    while (r->head) {
        job_t *j = r->head;
        r->head = j->next;
        s_job_free(j);
    }
    devsim_profile_destroy(&r->profile);
    for (int i = 0; i < r->nphases; i++) {
        free(r->phases[i].lat);
        free(r->phases[i].latk);
        free(r->phases[i].raw);
        free(r->phases[i].first);
        free(r->phases[i].done);
    }
    if (r->multi) //  (closes the kept connections: s_closesock still uses fdst)
        curl_multi_cleanup(r->multi);
    free(r->fdst);
    curl_url_cleanup(r->checkin_cu);
    curl_url_cleanup(r->server_cu);
    if (r->epfd >= 0)
        close(r->epfd);
    free(r);
    *rp = NULL;
}

static void s_push(devsim_run_t *r, job_t *j)
{
    j->next = NULL;
    if (r->tail)
        r->tail->next = j;
    else
        r->head = j;
    r->tail = j;
}

static job_t *s_pop(devsim_run_t *r)
{
    job_t *j = r->head;
    if (j) {
        r->head = j->next;
        if (!r->head)
            r->tail = NULL;
    }
    return j;
}

static job_t *s_job(devsim_dev_t *dev)
{
    job_t *j = calloc(1, sizeof *j);
    if (j) {
        j->dev = dev;
        j->wake_ix = -1;
        j->sched = -1;
    }
    return j;
}

static void s_add_step(job_t *j, step_kind_t k, devsim_dev_t *ch)
{
    if (j->nsteps < 4)
        j->steps[j->nsteps++] = (step_t){k, ch};
}

//  Point handle e at url: one of the run's two parsed ones (CURLOPT_CURLU,
//  which takes precedence over CURLOPT_URL), or a string (CURLU cleared).
static void s_set_url(devsim_run_t *r, CURL *e, const char *url)
{
    CURLU *cu = url == r->checkin_url ? r->checkin_cu : url == r->server_url ? r->server_cu : NULL;
    curl_easy_setopt(e, CURLOPT_CURLU, cu);
    if (!cu)
        curl_easy_setopt(e, CURLOPT_URL, url);
}

//  (Re)parse the run's two URLs for s_set_url; a URL curl cannot parse
//  stays a string (the transfer then reports curl's error).
static void s_parse_urls(devsim_run_t *r)
{
    //  (between phases: no transfer in flight) the handles let go of the
    //  old ones first, and set a URL again on their next request
    for (int i = 0; r->slots && i < r->nslots; i++) {
        if (r->slots[i].easy)
            curl_easy_setopt(r->slots[i].easy, CURLOPT_CURLU, NULL);
        r->slots[i].url_set = NULL;
    }
    curl_url_cleanup(r->checkin_cu);
    curl_url_cleanup(r->server_cu);
    r->checkin_cu = curl_url();
    r->server_cu = curl_url();
    if (r->checkin_cu &&
        curl_url_set(r->checkin_cu, CURLUPART_URL, r->checkin_url, 0) != CURLUE_OK) {
        curl_url_cleanup(r->checkin_cu);
        r->checkin_cu = NULL;
    }
    if (r->server_cu && curl_url_set(r->server_cu, CURLUPART_URL, r->server_url, 0) != CURLUE_OK) {
        curl_url_cleanup(r->server_cu);
        r->server_cu = NULL;
    }
}

static void s_opt_long(CURL *e, CURLoption opt, long *set, long v)
{
    if (*set != v)
        curl_easy_setopt(e, opt, v);
    *set = v;
}

//  Point slot s's handle at the next request (options set only when they
//  change). method 0 PUT, 1 GET, 2 POST. part_first / part_last: the request
//  opens / ends one program's use of a connection (an enrollment's profile
//  download, SCEP, check-ins); what that means depends on the job's mode.
static void s_send(devsim_run_t *r, slot_t *s, const char *url, const char *ua, int method,
                   const struct curl_slist *hdr, const char *body, size_t len, bool part_first,
                   bool part_last)
{
    (void)r;
    CURL *e = s->easy;
    if (s->url_set != url) //  only on change
        s_set_url(r, e, url);
    s->url_set = url;
    if (s->ua_set != ua)
        curl_easy_setopt(e, CURLOPT_USERAGENT, ua);
    s->ua_set = ua;
    if (s->method_set != method) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method == 0 ? "PUT" : NULL);
        if (method == 1)
            curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    }
    s->method_set = method;
    if (s->hdr_set != hdr)
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdr);
    s->hdr_set = hdr;
    if (method != 1) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    }
    //  DEVSIM_CONN_DEVICE: each program of the device (Safari, the profile
    //  installer, mdmd) opens its own connection with a full handshake (they
    //  share no TLS session) and is done with it after its last request;
    //  REQUEST: a new connection per request; SHARED: the pool's.
    devsim_conn_mode_t m = s->job->conn;
    bool fresh = m == DEVSIM_CONN_REQUEST || (m == DEVSIM_CONN_DEVICE && part_first);
    bool forbid = m == DEVSIM_CONN_REQUEST || (m == DEVSIM_CONN_DEVICE && part_last);
    s_opt_long(e, CURLOPT_FRESH_CONNECT, &s->fresh_set, fresh);
    s_opt_long(e, CURLOPT_FORBID_REUSE, &s->forbid_set, forbid);
    s_opt_long(e, CURLOPT_SSL_SESSIONID_CACHE, &s->sessid_set,
               fresh && m != DEVSIM_CONN_SHARED ? 0L : 1L);
    s->resplen = 0;
    s->overflow = false;
    if (s->resp)
        s->resp[0] = 0;
}

//  Serialise, sign and hand one PUT to curl on slot s.
static int s_submit(devsim_run_t *r, slot_t *s, plist_t msg, bool checkin)
{
    char *xml = NULL;
    size_t len = 0;
    int rc = devsim_pl_to_xml(msg, &xml, &len);
    plist_free(msg);
    if (rc < 0)
        return -1;
    free(s->body);
    s->body = xml;
    s->bodylen = len;
    s->hdr[0].data = checkin ? (char *)"Content-Type: application/x-apple-aspen-mdm-checkin"
                             : (char *)"Content-Type: application/x-apple-aspen-mdm";
    s->hdr[1].next = NULL;
    const devsim_ident_t *id = devsim_dev_ident(s->job->dev);
    bool sign = s->job->checkin_url ? s->job->sign : r->o.sign; //  the profile's SignMessage
    if (sign && id) {
        //  the header line in the slot's buffer: the base64 written in place
        //  after its name (no allocation or copy per request)
        static const char name[] = "Mdm-Signature: ";
        if (devsim_ident_sign_into(id, r->o.md, xml, len, &s->sig, &s->sigcap, sizeof name - 1) <
            0) {
            pm_error("cannot sign a request for %s (out of memory, or OpenSSL could not sign: "
                     "check the identity's key)",
                     devsim_dev_cn(s->job->dev));
            return -1;
        }
        memcpy(s->sig, name, sizeof name - 1);
        s->hdr[2].data = s->sig;
        s->hdr[2].next = NULL;
        s->hdr[1].next = &s->hdr[2];
    }
    const char *url = checkin ? r->checkin_url : r->server_url;
    if (checkin && s->job->checkin_url)
        url = s->job->checkin_url; //  the device's own profile's CheckInURL
    const char *ua = s->job->dev->is_mac ? "MDM-OSX/1.0" : "MDM/1.0";
    //  an enrollment's check-ins (mdmd): their own connection in DEVICE mode
    step_kind_t k = s->job->steps[s->job->at].kind;
    bool first = k == ST_AUTH,
         last = (k == ST_AUTH || k == ST_TOKEN) && s->job->at + 1 == s->job->nsteps;
    s_send(r, s, url, ua, 0, &s->hdr[0], s->body, s->bodylen, first, last);
    if (r->o.verbose) {
        char idbuf[128];
        printf("--> PUT %s  [%s, %s]%s\n%.*s\n", url,
               devsim_dev_id(s->job->dev, idbuf, sizeof idbuf), s->what,
               sign && id ? " Mdm-Signature: yes" : " unsigned", (int)len, xml);
        fflush(stdout);
    }
    s->t0 = s_now_ms();
    return s_add(r, s);
}

//  One SCEP step of the job on slot s: the request its machine asks for.
static int s_submit_scep(devsim_run_t *r, slot_t *s, const devsim_scep_req_t *q)
{
    snprintf(s->what, sizeof s->what, "%s", q->what);
    //  GET: no Content-Type (only "Expect:"); POST: the machine's
    s->hdr[2].data = (char *)q->ctype;
    s->hdr[2].next = NULL;
    s->hdr[1].next = q->body ? &s->hdr[2] : NULL;
    s->url_set = NULL; //  the machine's URL buffer holds a new URL each time
    s_send(r, s, q->url, NULL, q->body ? 2 : 1, &s->hdr[1], (const char *)q->body, q->len,
           q->part_first, q->part_last);
    if (r->o.verbose) {
        char idbuf[128];
        printf("--> %s %s  [%s, %s]\n", q->body ? "POST" : "GET", q->url,
               devsim_dev_id(s->job->dev, idbuf, sizeof idbuf), q->what);
        fflush(stdout);
    }
    s->t0 = s_now_ms();
    return s_add(r, s);
}

//  Start the job's current step (skipping steps that no longer apply).
static int s_start_step(devsim_run_t *r, slot_t *s)
{
    job_t *j = s->job;
    while (j->at < j->nsteps) {
        step_t *st = &j->steps[j->at];
        devsim_dev_t *ch = st->ch;
        bool erased = ch->erased || (ch->parent && ch->parent->erased);
        if (erased || ((st->kind == ST_SESSION || st->kind == ST_CHECKOUT) && !ch->enrolled)) {
            j->at++;
            continue;
        }
        switch (st->kind) {
        case ST_SCEP: {
            devsim_scep_req_t q;
            if (devsim_scep_dev_next(j->scep, &q) == 1)
                return s_submit_scep(r, s, &q);
            j->at++; //  done (s_finish took the identity)
            continue;
        }
        case ST_AUTH:
            snprintf(s->what, sizeof s->what, "Authenticate");
            return s_submit(r, s, devsim_dev_authenticate(ch), true);
        case ST_TOKEN:
            snprintf(s->what, sizeof s->what, "TokenUpdate");
            return s_submit(r, s, devsim_dev_tokenupdate(ch), true);
        case ST_CHECKOUT:
            snprintf(s->what, sizeof s->what, "CheckOut");
            return s_submit(r, s, devsim_dev_checkout(ch), true);
        case ST_SESSION:
            devsim_dev_session_begin(ch);
            j->cmds = 0;
            j->stop_next = false;
            snprintf(s->what, sizeof s->what, "Status Idle");
            return s_submit(r, s, devsim_dev_report(ch, "Idle", NULL), false);
        }
    }
    return 1; //  nothing left
}

static void s_lat(double **v, size_t *n, size_t *cap, double ms)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 1024;
        double *l = realloc(*v, c * sizeof *l);
        if (!l)
            return;
        *v = l;
        *cap = c;
    }
    (*v)[(*n)++] = ms;
}

static bool s_blank(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\n' && p[i] != '\r' && p[i] != '\t')
            return false;
    return true;
}

//  A reply to one of a device's enrollment requests (profile, SCEP): the next
//  request, or (identity obtained) the device's identity, topic and check-in
//  URL from its own profile, then its check-ins. 0 / 1 / -1 as s_finish.
static int s_finish_scep(devsim_run_t *r, slot_t *s, long code)
{
    job_t *j = s->job;
    char err[256], idbuf[128];
    if (devsim_scep_dev_reply(j->scep, code, (const unsigned char *)s->resp, s->resplen, err,
                              sizeof err) < 0) {
        if (code != 200)
            r->http_errors++;
        else
            r->bad_replies++;
        pm_warn("%s: enrollment failed at %s: %s", devsim_dev_id(j->dev, idbuf, sizeof idbuf),
                s->what, err);
        return -1;
    }
    devsim_scep_req_t q;
    if (devsim_scep_dev_next(j->scep, &q) == 1)
        return s_submit_scep(r, s, &q) < 0 ? -1 : 0;
    const devsim_profile_t *p = devsim_scep_dev_profile(j->scep);
    devsim_ident_t *id = devsim_scep_dev_take_ident(j->scep);
    j->checkin_url = p ? strdup(p->checkin_url) : NULL;
    if (!p || !id || !j->checkin_url) {
        devsim_ident_destroy(&id);
        return -1;
    }
    devsim_dev_set_ident(j->dev, &id);
    j->sign = p->sign_message;
    snprintf(j->dev->topic, sizeof j->dev->topic, "%s", p->topic);
    if (j->dev->user)
        snprintf(j->dev->user->topic, sizeof j->dev->user->topic, "%s", p->topic);
    r->ph->scep_ok++;
    if (!r->profile)
        r->profile = devsim_scep_dev_take_profile(j->scep);
    if (j->at + 1 == j->nsteps)
        r->ph->units++; //  identity only (no check-ins)
    j->at++;
    int rc = s_start_step(r, s);
    return rc < 0 ? -1 : rc;
}

//  A transfer finished. Returns 0 to continue the job (next request already
//  submitted), 1 when the job is done, -1 when it failed.
static int s_finish(devsim_run_t *r, slot_t *s, CURLcode res)
{
    job_t *j = s->job;
    step_t *st = &j->steps[j->at];
    devsim_dev_t *ch = st->ch;
    char idbuf[128];
    double now = s_now_ms();
    double ms = devsim_sched_latency(now, s->t0, j->sched, j->first);
    phase_t *ph = r->ph;
    s_lat(&ph->lat, &ph->nlat, &ph->caplat, ms);
    if (r->o.latency_log)
        fprintf(r->o.latency_log, "%s %.6f %.6f %.3f %d\n", ph->name, (s->t0 - r->t_begin) / 1e3,
                (now - r->t_begin) / 1e3, ms, j->sched >= 0 && j->first ? 1 : 0);
    if (j->sched >= 0) {
        s_lat(&ph->raw, &ph->nraw, &ph->capraw, now - s->t0);
        if (j->first)
            s_lat(&ph->first, &ph->nfirst, &ph->capfirst, ms);
    }
    j->first = false;
    long conns = 1; //  new connections this transfer made (0: it reused one)
    if (curl_easy_getinfo(s->easy, CURLINFO_NUM_CONNECTS, &conns) == CURLE_OK && conns == 0)
        s_lat(&ph->latk, &ph->nlatk, &ph->caplatk, ms);
    else if (conns > 0)
        ph->conns += conns;
    long code = 0;
    curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &code);
    if (r->o.verbose) {
        printf("<-- %ld (%zu bytes)%s%s\n%.*s\n", code, s->resplen,
               res != CURLE_OK ? " transport error: " : "",
               res != CURLE_OK ? curl_easy_strerror(res) : "", (int)s->resplen,
               s->resp ? s->resp : "");
        fflush(stdout);
    }
    if (res != CURLE_OK) {
        r->transport_errors++;
        pm_warn("%s: %s failed: %s%s", devsim_dev_id(ch, idbuf, sizeof idbuf), s->what,
                s->overflow ? "reply too large" : curl_easy_strerror(res),
                res == CURLE_PEER_FAILED_VERIFICATION
                    ? " (give --ca-bundle with the CA of the server's TLS certificate, or "
                      "--insecure)"
                    : " (is the server running and the --url right?)");
        return -1;
    }
    if (st->kind == ST_SCEP) //  the machine judges the reply, status included
        return s_finish_scep(r, s, code);
    if (code != 200) {
        r->http_errors++;
        pm_warn("%s: %s answered HTTP %ld (expected 200; see the server's log)",
                devsim_dev_id(ch, idbuf, sizeof idbuf), s->what, code);
        if (code == 401) //  a real device drops its enrollment on 401
            ch->enrolled = false;
        return -1;
    }
    bool next_step = true;
    if (st->kind == ST_TOKEN) {
        ch->enrolled = true;
        if (!ch->user_channel && !ch->user)
            r->ph->units++;
        else if (ch->user_channel)
            r->ph->units++;
    } else if (st->kind == ST_CHECKOUT) {
        ch->enrolled = false;
        r->ph->units++;
    } else if (st->kind == ST_SESSION) {
        if (j->stop_next || s->resplen == 0 || s_blank(s->resp, s->resplen)) {
            r->ph->units++; //  an empty 200 body ends the session
        } else if (r->o.drop_after_command) {
            //  a device that loses its connection (or crashes) after fetching a
            //  command: the server has it as delivered and never answered
            pm_info("%s: got a command; --drop-after-command: session ended without answering",
                    devsim_dev_id(ch, idbuf, sizeof idbuf));
            r->ph->units++;
        } else if (j->cmds >= r->o.max_commands) {
            pm_warn("%s: more than %d commands in one session; the simulator stops here",
                    devsim_dev_id(ch, idbuf, sizeof idbuf), r->o.max_commands);
            r->bad_replies++;
            return -1;
        } else {
            char err[160];
            plist_t cmd = devsim_pl_parse(s->resp, s->resplen, err, sizeof err);
            if (!cmd) {
                r->bad_replies++;
                pm_warn("%s: the server's reply is not a command plist: %s",
                        devsim_dev_id(ch, idbuf, sizeof idbuf), err);
                return -1;
            }
            devsim_answer_info_t info;
            plist_t rep = devsim_answer(ch, cmd, &r->o.answer, &info);
            plist_free(cmd);
            if (info.violation) {
                r->violations++;
                pm_warn("%s: NOTNOW VIOLATION: command %s (%s) was re-offered in the same "
                        "session it was answered NotNow in (it must wait for a later one)",
                        devsim_dev_id(ch, idbuf, sizeof idbuf), info.uuid, info.request_type);
            }
            const char *stt = info.status ? info.status : "?";
            if (strcmp(stt, "Acknowledged") == 0)
                r->st_ack++;
            else if (strcmp(stt, "Error") == 0)
                r->st_error++;
            else if (strcmp(stt, "NotNow") == 0)
                r->st_notnow++;
            else
                r->st_format++;
            if (info.uuid[0])
                r->ph->cmds++;
            j->cmds++;
            j->stop_next = info.stop;
            snprintf(s->what, sizeof s->what, "%.20s %.24s", stt,
                     info.request_type[0] ? info.request_type : "?");
            next_step = false;
            if (s_submit(r, s, rep, false) < 0)
                return -1;
        }
    }
    if (!next_step)
        return 0;
    j->at++;
    int rc = s_start_step(r, s);
    return rc < 0 ? -1 : rc; //  0: submitted, 1: nothing left
}

//  A job ended: a wake that arrived while it was queued or running runs now.
static void s_job_done(devsim_run_t *r, job_t *j)
{
    if (j->wake_ix >= 0 && r->wake_state) {
        bool again = r->wake_state[j->wake_ix] == S_WAKE_AGAIN;
        r->wake_state[j->wake_ix] = S_WAKE_IDLE;
        if (again)
            devsim_run_wake(r, j->dev);
    }
    s_job_free(j);
}

static int s_add(devsim_run_t *r, slot_t *s)
{
    if (curl_multi_add_handle(r->multi, s->easy) != CURLM_OK)
        return -1;
    s->in_multi = true;
    return 0;
}

static void s_remove(devsim_run_t *r, slot_t *s)
{
    if (!s)
        return;
    curl_multi_remove_handle(r->multi, s->easy);
    s->in_multi = false;
}

//  epoll_wait with a timeout of tmo_ms, to the nanosecond (epoll_pwait2:
//  the next scheduled start needs no timerfd and no timerfd_settime per
//  start, one system call less per session); whole milliseconds rounded up
//  where the kernel refuses epoll_pwait2. Counts the waits that may sleep.
static int s_epoll(devsim_run_t *r, struct epoll_event *ev, int max, double tmo_ms)
{
    if (!(tmo_ms > 0))
        tmo_ms = 0;
    else if (r->ph)
        r->ph->waits++;
    if (!r->pwait2_off) {
        struct timespec ts;
        ts.tv_sec = (time_t)(tmo_ms / 1e3);
        ts.tv_nsec = (long)ceil((tmo_ms - (double)ts.tv_sec * 1e3) * 1e6);
        if (ts.tv_nsec > 999999999L)
            ts.tv_nsec = 999999999L;
        int n = epoll_pwait2(r->epfd, ev, max, &ts, NULL);
        if (n >= 0 || errno == EINTR)
            return n;
        pm_warn("epoll_pwait2: %s; the loop waits in whole milliseconds instead (a scheduled "
                "start up to 1 ms late, charged to the figures)",
                strerror(errno));
        r->pwait2_off = true;
    }
    return epoll_wait(r->epfd, ev, max, (int)ceil(tmo_ms));
}

//  Wait for the next event (a transfer socket, curl's timer, the push
//  socket fd) and let curl act on it. The wait is bounded (100 ms with
//  transfers, 1 s without) only so that SIGTERM and the idle limit are seen.
static void s_wait(devsim_run_t *r, bool serve, int fd, int active, long idle_ms, double idle_since)
{
    int running = 0;
    double now = s_now_ms();
    if (r->timer_at >= 0 && r->timer_at <= now) { //  due: no wait
        r->timer_at = -1;
        curl_multi_socket_action(r->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        return;
    }
    //  open loop: the next job is due later and a slot is free for it
    double due = r->head && r->head->sched >= 0 && active < r->nslots ? r->head->sched : -1;
    if (!serve && active == 0 && due < 0)
        return;
    double tmo = active > 0 ? 100 : 1000; //  ms
    if (serve && active == 0 && !r->head && idle_ms > 0) {
        double rem = (double)idle_ms - (now - idle_since);
        tmo = rem < 1 ? 1 : rem < tmo ? rem : tmo;
    }
    if (r->timer_at >= 0 && r->timer_at - now < tmo)
        tmo = r->timer_at - now;
    if (due >= 0) {
        //  until the start is due, plus --rate-slack-ms: a reply that wakes
        //  the loop in between starts it then (the lateness is charged)
        double dt = devsim_sched_wait_ms(now, due, r->o.rate_slack_ms);
        if (dt <= 0)
            return;
        if (dt < tmo)
            tmo = dt;
    }
    if (serve && fd >= 0 && r->push_fd != fd) {
        //  the push socket waits in the same epoll as the transfers: a
        //  datagram wakes the loop at once
        struct epoll_event ee = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ee) == 0 || errno == EEXIST)
            r->push_fd = fd;
    }
    struct epoll_event ev[64];
    int n = s_epoll(r, ev, 64, tmo);
    for (int i = 0; i < n; i++) {
        if (ev[i].data.fd == r->push_fd)
            continue; //  on_ready reads it
        int efd = ev[i].data.fd;
        if (efd >= 0 && efd < r->nfdst && !(r->fdst[efd] & S_FD_WANT)) {
            //  an idle kept socket (s_sockcb): the server closed it or sent
            //  something unasked; curl sees that when it reuses it
            epoll_ctl(r->epfd, EPOLL_CTL_DEL, efd, NULL);
            r->fdst[efd] &= S_FD_OURS; //  out of epfd, still ours
            continue;
        }
        int what = (ev[i].events & EPOLLIN ? CURL_CSELECT_IN : 0) |
                   (ev[i].events & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
                   (ev[i].events & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR : 0);
        curl_multi_socket_action(r->multi, ev[i].data.fd, what, &running);
    }
    if (r->timer_at >= 0 && r->timer_at <= s_now_ms()) {
        r->timer_at = -1;
        curl_multi_socket_action(r->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
}

//  --warm-connections: one GET of the ServerURL on every transfer slot at
//  once, so that as many connections are open (each a TLS handshake) when
//  the phase starts; curl keeps them (CURLMOPT_MAXCONNECTS = the slots) for
//  the phase's requests. Any HTTP status will do (PicoMDM's gateway answers
//  405 "devices use PUT" without asking its back end); a transport error is
//  only logged. None of it is in the phase's figures: the phase's clock and
//  CPU start again after it, its requests are neither timed nor counted.
static void s_warm(devsim_run_t *r)
{
    phase_t *p = r->ph;
    double t0 = s_now_ms(), u0, s0, u1, s1;
    s_cpu(&u0, &s0);
    int active = 0;
    for (int i = 0; i < r->nslots; i++) {
        slot_t *s = &r->slots[i];
        CURL *e = s->easy;
        if (s->job)
            continue; //  (a phase starts with every slot free)
        if (s->url_set != r->server_url)
            s_set_url(r, e, r->server_url);
        s->url_set = r->server_url;
        if (s->method_set != 1) {
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, NULL);
            curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
        }
        s->method_set = 1;
        s->hdr[1].next = NULL; //  "Expect:" alone: no Content-Type, no signature
        if (s->hdr_set != &s->hdr[1])
            curl_easy_setopt(e, CURLOPT_HTTPHEADER, &s->hdr[1]);
        s->hdr_set = &s->hdr[1];
        s_opt_long(e, CURLOPT_FRESH_CONNECT, &s->fresh_set, 0);
        s_opt_long(e, CURLOPT_FORBID_REUSE, &s->forbid_set, 0);
        s_opt_long(e, CURLOPT_SSL_SESSIONID_CACHE, &s->sessid_set, 1);
        s->resplen = 0;
        s->overflow = false;
        if (s_add(r, s) < 0)
            continue;
        active++;
        p->warm_n++;
    }
    while (active > 0) {
        if (zsys_interrupted) { //  take the GETs back; destroy() cleans up the rest
            for (int i = 0; i < r->nslots; i++)
                if (!r->slots[i].job)
                    s_remove(r, &r->slots[i]);
            break;
        }
        s_wait(r, false, -1, active, 0, 0);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(r->multi, &left))) {
            if (m->msg != CURLMSG_DONE)
                continue;
            long conns = 0, code = 0;
            curl_easy_getinfo(m->easy_handle, CURLINFO_NUM_CONNECTS, &conns);
            curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &code);
            if (m->data.result == CURLE_OK) {
                p->warm_ok++;
                p->warm_code = code;
            } else
                pm_warn("warm-up GET %s failed: %s (the phase opens its own connections)",
                        r->server_url, curl_easy_strerror(m->data.result));
            p->warm_conns += conns > 0 ? conns : 0;
            slot_t *ws = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&ws);
            s_remove(r, ws);
            active--;
        }
    }
    s_cpu(&u1, &s1);
    p->warm_ms = s_now_ms() - t0;
    p->warm_cpu = (u1 - u0) + (s1 - s0);
    p->t0 = s_now_ms();
    s_cpu(&p->cpu0_user, &p->cpu0_sys);
}

//  Open loop: a job on the timetable starts now.
static void s_started(phase_t *p, job_t *j, double now, bool slot_wait)
{
    double b = devsim_sched_behind(now, j->sched);
    if (b > 1.0 && slot_wait)
        p->late_slot++;
    j->first = true;
    p->nstarted++;
    p->behind_last = b;
    if (b > p->behind_max)
        p->behind_max = b;
    if (b > 1.0)
        p->late++;
}

//  Open loop: put the queued jobs on the timetable, the first one now.
static void s_schedule(devsim_run_t *r)
{
    if (!(r->o.rate > 0))
        return;
    phase_t *p = r->ph;
    double t0 = s_now_ms(), t = t0;
    uint64_t rs = r->o.rate_seed ^ (uint64_t)(r->nphases * 0x9E3779B9L);
    long i = 0;
    p->open = true;
    p->rate = r->o.rate;
    p->t0 = t0; //  the phase runs from the first scheduled start
    for (job_t *j = r->head; j; j = j->next, i++) {
        if (r->o.rate_jitter) {
            j->sched = t;
            t += devsim_sched_gap_ms(r->o.rate, true, devsim_sched_uniform(&rs));
        } else
            j->sched = devsim_sched_at(t0, i, r->o.rate);
    }
    p->nsched = i;
}

//  Run the job queue: until it is empty, or (serve) until interrupted or
//  idle_ms without a job (0: no limit), calling on_ready after each wait on
//  fd (the push socket, or -1). Returns the number of failed jobs.
static int s_loop(devsim_run_t *r, bool serve, int fd, void (*on_ready)(void *), void *arg,
                  long idle_ms)
{
    int active = 0;
    long failed0 = r->ph->failed;
    double idle_since = s_now_ms();
    //  open loop: a job was due while every slot was busy (a late start then
    //  waited for the server, not for the simulator)
    bool full = false;
    for (;;) {
        for (int i = 0; i < r->nslots && r->head; i++) {
            slot_t *s = &r->slots[i];
            if (s->job)
                continue;
            if (r->head->sched >= 0) { //  open loop: not before its time
                double now = s_now_ms();
                if (r->head->sched > now)
                    break;
                s_started(r->ph, r->head, now, full);
            }
            s->job = s_pop(r);
            int rc = s_start_step(r, s);
            if (rc != 0) {
                if (rc < 0)
                    r->ph->failed++;
                s_job_done(r, s->job);
                s->job = NULL;
                continue;
            }
            active++;
            if (active > r->ph->max_active)
                r->ph->max_active = active;
        }
        full =
            active >= r->nslots && r->head && r->head->sched >= 0 && r->head->sched <= s_now_ms();
        if (active == 0 && !r->head) {
            if (!serve)
                break;
            if (idle_ms > 0 && s_now_ms() - idle_since >= (double)idle_ms) {
                pm_info("no push for %ld ms and nothing to do: stopping", idle_ms);
                break;
            }
        } else
            idle_since = s_now_ms();
        if (zsys_interrupted) { //  SIGINT/SIGTERM: stop; destroy() cleans up transfers
            pm_notice("interrupted: stopping with %d transfers in flight", active);
            break;
        }
        s_wait(r, serve, fd, active, idle_ms, idle_since);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(r->multi, &left))) {
            if (m->msg != CURLMSG_DONE)
                continue;
            slot_t *s = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&s);
            CURLcode res = m->data.result;
            s_remove(r, s);
            int rc = s_finish(r, s, res);
            if (rc != 0) {
                if (rc < 0)
                    r->ph->failed++;
                else if (s->job->sched >= 0)
                    s_lat(&r->ph->done, &r->ph->ndone, &r->ph->capdone, s_now_ms());
                s_job_done(r, s->job);
                s->job = NULL;
                active--;
            }
        }
        if (serve && on_ready)
            on_ready(arg); //  reads without blocking: nothing waiting costs one recv
    }
    return (int)(r->ph->failed - failed0);
}

static int s_drain(devsim_run_t *r)
{
    return s_loop(r, false, -1, NULL, NULL, 0);
}

static phase_t *s_phase(devsim_run_t *r, const char *name)
{
    if (r->nphases == MAX_PHASES) //  reuse the last one rather than overflow
        r->nphases--;
    phase_t *p = &r->phases[r->nphases++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->t0 = s_now_ms();
    s_cpu(&p->cpu0_user, &p->cpu0_sys);
    r->ph = p;
    return p;
}

//  Close the current phase: its end time and the CPU it took.
static void s_phase_end(devsim_run_t *r)
{
    phase_t *p = r->ph;
    double u, s;
    p->t1 = s_now_ms();
    s_cpu(&u, &s);
    p->cpu_user = u - p->cpu0_user;
    p->cpu_sys = s - p->cpu0_sys;
}

static int s_run_phase(devsim_run_t *r)
{
    int failed = s_drain(r);
    s_phase_end(r);
    return failed;
}

//  A device's enrollment check-ins: Authenticate, TokenUpdate, and the
//  user channel's TokenUpdate when it has one.
static void s_add_checkins(job_t *j, devsim_dev_t *d)
{
    s_add_step(j, ST_AUTH, d);
    s_add_step(j, ST_TOKEN, d);
    if (d->user)
        s_add_step(j, ST_TOKEN, d->user);
}

int devsim_run_enroll(devsim_run_t *r)
{
    s_phase(r, "enroll");
    if (r->o.warm)
        s_warm(r);
    for (int i = 0; i < r->n; i++) {
        devsim_dev_t *d = r->devs[i];
        job_t *j = s_job(d);
        if (!j)
            return -1;
        s_add_checkins(j, d);
        s_push(r, j);
    }
    s_schedule(r);
    return s_run_phase(r);
}

int devsim_run_enroll_url(devsim_run_t *r, const char *enroll_url, EVP_PKEY **keys,
                          const char *challenge, bool checkin, devsim_conn_mode_t conn)
{
    s_phase(r, "enroll");
    for (int i = 0; i < r->n; i++) {
        devsim_dev_t *d = r->devs[i];
        job_t *j = s_job(d);
        if (j)
            j->scep = devsim_scep_dev_new(enroll_url, keys ? keys[i] : NULL, challenge);
        if (!j || !j->scep) {
            s_job_free(j);
            return -1;
        }
        j->conn = conn;
        s_add_step(j, ST_SCEP, d);
        if (checkin)
            s_add_checkins(j, d);
        s_push(r, j);
    }
    s_schedule(r);
    return s_run_phase(r);
}

const devsim_profile_t *devsim_run_profile(const devsim_run_t *r)
{
    return r->profile;
}

long devsim_run_identities(const devsim_run_t *r)
{
    long n = 0;
    for (int i = 0; i < r->nphases; i++)
        n += r->phases[i].scep_ok;
    return n;
}

void devsim_run_set_target(devsim_run_t *r, const char *url, const char *checkin_path,
                           const char *server_path, bool sign)
{
    r->o.url = url;
    r->o.checkin_path = checkin_path;
    r->o.server_path = server_path;
    r->o.sign = sign;
    snprintf(r->checkin_url, sizeof r->checkin_url, "%s%s", url, checkin_path);
    snprintf(r->server_url, sizeof r->server_url, "%s%s", url, server_path);
    s_parse_urls(r);
}

void devsim_run_wake(devsim_run_t *r, devsim_dev_t *d)
{
    int ix = -1;
    if (r->wake_state && d->index >= 0 && d->index < r->n) {
        ix = 2 * d->index + (d->user_channel ? 1 : 0);
        if (r->wake_state[ix] != S_WAKE_IDLE) {
            r->wake_state[ix] = S_WAKE_AGAIN; //  one more session after this one
            return;
        }
        r->wake_state[ix] = S_WAKE_BUSY;
    }
    job_t *j = s_job(d);
    if (!j) {
        if (ix >= 0)
            r->wake_state[ix] = S_WAKE_IDLE;
        return;
    }
    j->wake_ix = ix;
    s_add_step(j, ST_SESSION, d);
    if (d->user)
        s_add_step(j, ST_SESSION, d->user);
    s_push(r, j);
}

void devsim_run_tokenupdate(devsim_run_t *r, devsim_dev_t *d)
{
    job_t *j = s_job(d);
    if (!j)
        return;
    s_add_step(j, ST_TOKEN, d);
    if (d->user)
        s_add_step(j, ST_TOKEN, d->user);
    s_push(r, j);
}

int devsim_run_pending(devsim_run_t *r)
{
    if (!r->ph || r->ph->t1 > 0)
        s_phase(r, "wake");
    return s_run_phase(r);
}

int devsim_run_serve(devsim_run_t *r, int fd, void (*on_ready)(void *arg), void *arg, long idle_ms)
{
    if (!r->wake_state) {
        r->wake_state = calloc((size_t)r->n * 2, 1);
        if (!r->wake_state)
            return -1;
    }
    s_phase(r, "wake");
    int failed = s_loop(r, true, fd, on_ready, arg, idle_ms);
    s_phase_end(r);
    return failed;
}

int devsim_run_sessions(devsim_run_t *r)
{
    char name[32];
    int k = 0;
    for (int i = 0; i < r->nphases; i++)
        k += strncmp(r->phases[i].name, "session", 7) == 0;
    snprintf(name, sizeof name, "session %d", k + 1);
    s_phase(r, name);
    if (r->o.warm)
        s_warm(r);
    for (int i = 0; i < r->n; i++)
        if (r->devs[i]->enrolled && !r->devs[i]->erased)
            devsim_run_wake(r, r->devs[i]);
    s_schedule(r);
    return s_run_phase(r);
}

int devsim_run_checkout(devsim_run_t *r)
{
    s_phase(r, "checkout");
    for (int i = 0; i < r->n; i++) {
        devsim_dev_t *d = r->devs[i];
        if (!d->enrolled || d->erased)
            continue;
        job_t *j = s_job(d);
        if (!j)
            return -1;
        s_add_step(j, ST_CHECKOUT, d);
        s_push(r, j);
    }
    return s_run_phase(r);
}

static int s_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double s_pct(const double *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)ceil(p * (double)n) - 1;
    return v[i < n ? i : n - 1];
}

int devsim_run_report(devsim_run_t *r, FILE *out)
{
    for (int i = 0; i < r->nphases; i++) {
        phase_t *p = &r->phases[i];
        double secs = (p->t1 - p->t0) / 1e3;
        if (p->nlat > 1)
            qsort(p->lat, p->nlat, sizeof *p->lat, s_cmp);
        if (p->nlatk > 1)
            qsort(p->latk, p->nlatk, sizeof *p->latk, s_cmp);
        bool enroll = strcmp(p->name, "enroll") == 0;
        bool checkout = strcmp(p->name, "checkout") == 0;
        fprintf(out, "%-10s %ld %s in %.3f s = %.1f/s", p->name, p->units,
                enroll     ? "enrollments"
                : checkout ? "check-outs"
                           : "sessions",
                secs, secs > 0 ? (double)p->units / secs : 0.0);
        if (!enroll && !checkout)
            fprintf(out, ", %ld command round trips = %.1f/s", p->cmds,
                    secs > 0 ? (double)p->cmds / secs : 0.0);
        fprintf(out, "; %zu requests, latency p50 %.2f ms p99 %.2f ms max %.2f ms; %ld failed\n",
                p->nlat, s_pct(p->lat, p->nlat, 0.50), s_pct(p->lat, p->nlat, 0.99),
                p->nlat ? p->lat[p->nlat - 1] : 0.0, p->failed);
        //  TLS handshakes: what the server paid for connections in this phase
        fprintf(out, "%-10s connections opened (TLS handshakes): %ld = %.2f per %s\n", p->name,
                p->conns, p->units > 0 ? (double)p->conns / (double)p->units : 0.0,
                enroll     ? "enrollment"
                : checkout ? "check-out"
                           : "session");
        if (p->warm_n > 0)
            fprintf(
                out,
                "%-10s warm-up (--warm-connections, before the phase, not in its figures): "
                "%ld connections opened (TLS handshakes) by %ld GET requests of the ServerURL "
                "sent at once, %ld answered (last HTTP %ld), in %.1f ms, simulator CPU %.3f s\n",
                p->name, p->warm_conns, p->warm_n, p->warm_ok, p->warm_code, p->warm_ms,
                p->warm_cpu);
        //  The requests that opened a connection wait for the TLS handshake
        //  (and, at a phase's start, for every other connection's): this
        //  line is the latency of the rest, once the connections are open.
        if (p->nlatk > 0 && p->nlatk < p->nlat)
            fprintf(out,
                    "%-10s on an open connection (%zu of the requests): p50 %.2f ms p99 %.2f ms "
                    "max %.2f ms (the other %zu opened a TLS connection first)\n",
                    p->name, p->nlatk, s_pct(p->latk, p->nlatk, 0.50),
                    s_pct(p->latk, p->nlatk, 0.99), p->nlatk ? p->latk[p->nlatk - 1] : 0.0,
                    p->nlat - p->nlatk);
        //  Open loop: the first request of each job timed from its scheduled
        //  start (the line above already is); the same requests timed from
        //  when they were sent, for comparison; and how well the timetable
        //  was kept (a simulator or server that falls behind starts late).
        if (p->open) {
            if (p->nraw > 1)
                qsort(p->raw, p->nraw, sizeof *p->raw, s_cmp);
            if (p->nfirst > 1)
                qsort(p->first, p->nfirst, sizeof *p->first, s_cmp);
            //  requests per job, and the rate the jobs were completed at
            //  (devsim_sched_rate: first to last end, 1 % trimmed each side)
            double per = p->ndone > 0 ? (double)p->nlat / (double)p->ndone : 0;
            double jobs_s = devsim_sched_rate(p->done, p->ndone);
            if (jobs_s <= 0 && secs > 0)
                jobs_s = (double)p->ndone / secs;
            const char *what = enroll ? "enrollments" : "sessions";
            fprintf(out,
                    "%-10s open loop: offered %.1f %s/s (= %.1f device requests/s at the %.2f "
                    "requests per %s seen), achieved %.1f device requests/s = %.1f %s/s "
                    "(first to last end, 1 %% trimmed); "
                    "latency (corrected: a first request from its scheduled start) p50 %.2f ms "
                    "p99 %.2f ms max %.2f ms; first requests alone p50 %.2f ms p99 %.2f ms; "
                    "uncorrected round trips p50 %.2f ms p99 %.2f ms; last started %.2f ms "
                    "behind schedule (worst %.2f ms; %ld of %ld started > 1 ms late, %ld of them "
                    "for want of a free transfer slot; %ld never started); at most %d of %d "
                    "transfers in flight; a start rides on another wake-up up to %.2f ms after "
                    "its time (--rate-slack-ms)\n",
                    p->name, p->rate, what, p->rate * per, per, enroll ? "enrollment" : "session",
                    jobs_s * per, jobs_s, what, s_pct(p->lat, p->nlat, 0.50),
                    s_pct(p->lat, p->nlat, 0.99), p->nlat ? p->lat[p->nlat - 1] : 0.0,
                    s_pct(p->first, p->nfirst, 0.50), s_pct(p->first, p->nfirst, 0.99),
                    s_pct(p->raw, p->nraw, 0.50), s_pct(p->raw, p->nraw, 0.99), p->behind_last,
                    p->behind_max, p->late, p->nsched, p->late_slot, p->nsched - p->nstarted,
                    p->max_active, r->nslots, r->o.rate_slack_ms);
        }
    }
    //  The simulator's own CPU per request of each phase (start-up, key
    //  loading and issuing excluded): how much of the machine it takes.
    for (int i = 0; i < r->nphases; i++) {
        phase_t *p = &r->phases[i];
        double c = p->cpu_user + p->cpu_sys;
        fprintf(out,
                "devsim     %s: cpu user %.2f s sys %.2f s = %.0f us per request (%zu requests; "
                "%ld event waits = %.2f per request)\n",
                p->name, p->cpu_user, p->cpu_sys, p->nlat ? c / (double)p->nlat * 1e6 : 0.0,
                p->nlat, p->waits, p->nlat ? (double)p->waits / (double)p->nlat : 0.0);
    }
    long fast = 0, slow = 0;
    devsim_ident_sign_counts(&fast, &slow);
    if (fast + slow > 0)
        fprintf(out,
                "devsim     signatures: %ld made from the kept OpenSSL structure, %ld by OpenSSL "
                "CMS_sign\n",
                fast, slow);
    long reoffered = 0, waiting = 0;
    for (int i = 0; i < r->n; i++) {
        devsim_dev_t *d = r->devs[i];
        reoffered += d->notnow_reoffered + (d->user ? d->user->notnow_reoffered : 0);
        waiting += d->n_notnow_wait + d->n_notnow_now +
                   (d->user ? d->user->n_notnow_wait + d->user->n_notnow_now : 0);
    }
    fprintf(out,
            "answers    Acknowledged %ld, Error %ld, CommandFormatError %ld, NotNow %ld "
            "(re-offered in a later session %ld, not re-offered yet %ld, same-session "
            "violations %ld)\n",
            r->st_ack, r->st_error, r->st_format, r->st_notnow, reoffered, waiting, r->violations);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    fprintf(out,
            "devsim     cpu user %.2f s sys %.2f s, max RSS %ld MiB; http errors %ld, transport "
            "errors %ld, bad replies %ld\n",
            (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
            (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6, ru.ru_maxrss / 1024,
            r->http_errors, r->transport_errors, r->bad_replies);
    return (int)(r->http_errors + r->transport_errors + r->violations + r->bad_replies);
}
