/*  cli_up — `picomdm up`: start and supervise the whole MDM on one host
 *  (see cli_up.h).
 */
#include "cli_up.h"
#include "cli_pki.h"
#include "pm_log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define S_NPROC 6
#define S_BACKOFF_MIN_MS 500
#define S_STABLE_MS 10000 //  a process that ran this long restarts without backoff
#define S_IPC_MAX 100     //  sockaddr_un path limit, with room

const pm_opt_t cli_up_opts[] = {
    {"data-dir", PM_OPT_STR, "var", "data directory: database, certificates, run/ sockets"},
    {"bin-dir", PM_OPT_STR, NULL, "where the picomdm-* programs are (default: next to picomdm)"},
    {"listen", PM_OPT_STR, "127.0.0.1:8443",
     "gateway HTTPS address:port (0.0.0.0:8443 to serve devices on the network)"},
    {"public-host", PM_OPT_STR, NULL,
     "host name devices use in URLs (default: localhost on loopback, else this host's name)"},
    {"checkin-path", PM_OPT_STR, "/mdm/checkin", "CheckInURL path"},
    {"server-path", PM_OPT_STR, "/mdm/connect", "ServerURL path"},
    {"push-cert", PM_OPT_STR, NULL,
     "APNs push certificate and key (one PEM file); default <data-dir>/pki/push.pem if present"},
    {"tls-client-cert", PM_OPT_BOOL, "false",
     "gateway asks devices for a TLS client certificate (only for profiles without SignMessage)"},
    {"only", PM_OPT_STR, NULL, "comma-separated processes to start (default: every one built)"},
    {"stop-timeout", PM_OPT_INT, "10000", "milliseconds between SIGTERM and SIGKILL on stop"},
    {"max-backoff", PM_OPT_INT, "30000", "longest wait (ms) before restarting a failing process"},
    {NULL, 0, NULL, NULL}};

static const char *const s_names[S_NPROC] = {"broker", "store", "scheduler",
                                             "pusher", "ca",    "gateway"};

typedef struct {
    const char *name;
    char path[PATH_MAX];
    char pidfile[PATH_MAX];
    pid_t pid;
    int64_t started_ms;
    int64_t restart_at_ms;
    int backoff_ms;
    int restarts;
} s_proc_t;

typedef struct {
    char data[PATH_MAX];
    char run[PATH_MAX];
    char pki[PATH_MAX];
    char cfgfile[PATH_MAX];
    char bin[PATH_MAX];
    char req[PATH_MAX], pub[PATH_MAX], sub[PATH_MAX]; //  endpoints
    char ca_crt[PATH_MAX], ca_key[PATH_MAX], tls_crt[PATH_MAX], tls_key[PATH_MAX];
    char push[PATH_MAX];
    char host[256];
    s_proc_t procs[S_NPROC];
    int nprocs;
    int lockfd;
} s_up_t;

static volatile sig_atomic_t s_stop;

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop++;
}

static void s_on_child(int sig)
{
    (void)sig; //  only here to interrupt nanosleep
}

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void s_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL); //  a signal cuts it short, which is what we want
}

__attribute__((format(printf, 3, 4))) static int s_path(char *out, size_t size, const char *fmt,
                                                        ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, size, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= size) {
        fprintf(stderr, "picomdm up: path too long: %s...\n", out);
        return -1;
    }
    return 0;
}

static int s_mkdir(const char *path, mode_t mode)
{
    if (mkdir(path, mode) == 0 || errno == EEXIST)
        return 0;
    fprintf(stderr, "picomdm up: cannot create %s: %s (check permissions, or use --data-dir)\n",
            path, strerror(errno));
    return -1;
}

//  <dir of /proc/self/exe>
static int s_self_dir(char *out, size_t size)
{
    ssize_t n = readlink("/proc/self/exe", out, size - 1);
    if (n <= 0)
        return -1;
    out[n] = 0;
    char *slash = strrchr(out, '/');
    if (!slash)
        return -1;
    *slash = 0;
    return 0;
}

static void s_write_pidfile(const s_proc_t *p)
{
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", p->pidfile);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    fprintf(f, "%ld\n", (long)p->pid);
    if (fclose(f) == 0)
        rename(tmp, p->pidfile);
}

static int s_spawn(s_up_t *up, s_proc_t *p)
{
    pid_t pid = fork();
    if (pid < 0) {
        pm_error("up: cannot start %s: fork: %s", p->name, strerror(errno));
        return -1;
    }
    if (pid == 0) {
        //  die with the supervisor, even if it is SIGKILLed
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGCHLD, SIG_DFL);
        char *argv[] = {p->path, "--config", up->cfgfile, NULL};
        execv(p->path, argv);
        fprintf(stderr, "picomdm up: cannot run %s: %s\n", p->path, strerror(errno));
        _exit(127);
    }
    p->pid = pid;
    p->started_ms = s_now_ms();
    s_write_pidfile(p);
    pm_info("up: started %s (pid %ld)", p->name, (long)pid);
    return 0;
}

static s_proc_t *s_by_pid(s_up_t *up, pid_t pid)
{
    for (int i = 0; i < up->nprocs; i++)
        if (up->procs[i].pid == pid)
            return &up->procs[i];
    return NULL;
}

//  Reap exited children; schedule restarts (unless stopping).
static void s_reap(s_up_t *up, bool stopping, int max_backoff)
{
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        s_proc_t *p = s_by_pid(up, pid);
        if (!p)
            continue;
        int64_t now = s_now_ms();
        int64_t ran = now - p->started_ms;
        p->pid = 0;
        unlink(p->pidfile);
        char how[64];
        if (WIFSIGNALED(st))
            snprintf(how, sizeof how, "was killed by signal %d", WTERMSIG(st));
        else
            snprintf(how, sizeof how, "exited with status %d", WEXITSTATUS(st));
        if (stopping) {
            pm_info("up: %s %s", p->name, how);
            continue;
        }
        if (ran >= S_STABLE_MS || p->backoff_ms == 0)
            p->backoff_ms = S_BACKOFF_MIN_MS;
        else
            p->backoff_ms = p->backoff_ms * 2 > max_backoff ? max_backoff : p->backoff_ms * 2;
        p->restart_at_ms = now + p->backoff_ms;
        p->restarts++;
        pm_warn("up: %s (pid %ld) %s after %.1f s; restarting in %.1f s (restart %d; its log "
                "lines above say why)",
                p->name, (long)pid, how, (double)ran / 1000, (double)p->backoff_ms / 1000,
                p->restarts);
    }
}

static bool s_is_core(const char *name)
{
    return strcmp(name, "store") == 0 || strcmp(name, "broker") == 0;
}

//  SIGTERM to one wave (the store and the broker, or everything else) and
//  wait until it has exited. false: the deadline passed or a second Ctrl-C.
static bool s_stop_wave(s_up_t *up, bool core, int64_t deadline)
{
    for (int i = up->nprocs - 1; i >= 0; i--)
        if (up->procs[i].pid > 0 && s_is_core(up->procs[i].name) == core)
            kill(up->procs[i].pid, SIGTERM);
    int signals_at_start = s_stop;
    for (;;) {
        s_reap(up, true, 0);
        int alive = 0;
        for (int i = 0; i < up->nprocs; i++)
            alive += up->procs[i].pid > 0 && s_is_core(up->procs[i].name) == core;
        if (!alive)
            return true;
        //  timeout, or a second Ctrl-C: no more waiting
        if (s_now_ms() >= deadline || s_stop > signals_at_start)
            return false;
        s_sleep_ms(20);
    }
}

//  The clients stop first (the ca and the scheduler hand their last events
//  and writes to the store as they stop), then the store and the broker.
static void s_stop_all(s_up_t *up, int timeout_ms)
{
    int64_t deadline = s_now_ms() + timeout_ms;
    int signals_at_start = s_stop;
    bool clients = s_stop_wave(up, false, deadline);
    //  the store and the broker get their SIGTERM and at least 2 s even when a
    //  client was slow (it is killed below); a second Ctrl-C skips the wait
    int64_t core_deadline = s_now_ms() + 2000 > deadline ? s_now_ms() + 2000 : deadline;
    if (s_stop > signals_at_start)
        core_deadline = 0;
    if (s_stop_wave(up, true, core_deadline) && clients)
        return;
    for (int i = 0; i < up->nprocs; i++)
        if (up->procs[i].pid > 0) {
            pm_warn("up: %s (pid %ld) did not stop after SIGTERM; sending SIGKILL",
                    up->procs[i].name, (long)up->procs[i].pid);
            kill(up->procs[i].pid, SIGKILL);
        }
    for (int i = 0; i < up->nprocs; i++)
        if (up->procs[i].pid > 0) {
            waitpid(up->procs[i].pid, NULL, 0);
            unlink(up->procs[i].pidfile);
            up->procs[i].pid = 0;
        }
}

static bool s_listed(const char *list, const char *name)
{
    if (!list)
        return true;
    size_t n = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0)
            return true;
        p = comma ? comma + 1 : NULL;
    }
    return false;
}

static int s_write_config(s_up_t *up, const pm_cfg_t *cfg)
{
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", up->cfgfile);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        fprintf(stderr, "picomdm up: cannot write %s: %s\n", tmp, strerror(errno));
        return -1;
    }
    const char *log_level = pm_cfg_str(cfg, "log-level");
    const char *listen = pm_cfg_str(cfg, "listen");
    const char *port = listen && strrchr(listen, ':') ? strrchr(listen, ':') : "";
    //  Top-level names are read by every process (pm_cfg: <process>/<name>, then <name>);
    //  a section holds what only one process has.
    fprintf(f,
            "#   Generated by `picomdm up` on every start: change its options instead.\n"
            "#   Every PicoMDM process and the picomdm CLI read this file (--config or\n"
            "#   PICOMDM_CONFIG=%s).\n"
            "request-endpoint = \"%s\"\n"
            "publish-endpoint = \"%s\"\n"
            "subscribe-endpoint = \"%s\"\n"
            "data-dir = \"%s\"\n"
            "run-dir = \"%s\"\n"
            "log-level = \"%s\"\n"
            "device-ca = \"%s\"\n",
            up->cfgfile, up->req, up->pub, up->sub, up->data, up->run,
            log_level ? log_level : "info", up->ca_crt);
    //  Process sections. A process looks up <its pm_cfg name>/<option>, and
    //  some name themselves "gateway", others "picomdm-gateway": write both.
    //  tls-client-cert: our profiles set SignMessage, so every device request
    //  carries an Mdm-Signature, which the gateway checks first; a TLS client
    //  certificate would authenticate nothing and more than double the
    //  gateway's cost of each handshake in which a device sends one (~5.9 M
    //  instructions against ~2.5 M: docs/gateway.md, "Session 8").
    const char *mtls = pm_cfg_bool(cfg, "tls-client-cert") ? "true" : "false";
    for (int pass = 0; pass < 2; pass++) {
        const char *pre = pass ? "picomdm-" : "";
        fprintf(f,
                "%sgateway\n"
                "    listen = \"%s\"\n"
                "    tls-cert = \"%s\"\n"
                "    tls-key = \"%s\"\n"
                "    tls-client-cert = %s\n"
                "    checkin-path = \"%s\"\n"
                "    server-path = \"%s\"\n"
                "%sca\n"
                "    ca-cert = \"%s\"\n"
                "    ca-key = \"%s\"\n",
                pre, listen, up->tls_crt, up->tls_key, mtls, pm_cfg_str(cfg, "checkin-path"),
                pm_cfg_str(cfg, "server-path"), pre, up->ca_crt, up->ca_key);
        //  The enrollment profile points devices at this gateway: ServerURL,
        //  CheckInURL and the SCEP URL (relayed to ca), trusting our TLS cert.
        fprintf(f,
                "    server-url = \"https://%s%s%s\"\n"
                "    checkin-url = \"https://%s%s%s\"\n"
                "    scep-url = \"https://%s%s/scep\"\n"
                "    tls-anchor = \"%s\"\n",
                up->host, port, pm_cfg_str(cfg, "server-path"), up->host, port,
                pm_cfg_str(cfg, "checkin-path"), up->host, port, up->tls_crt);
        if (up->push[0])
            fprintf(f, "    push-cert = \"%s\"\n%spusher\n    push-cert = \"%s\"\n", up->push, pre,
                    up->push);
        else //  no push certificate: a lab topic (devices are not woken anyway)
            fprintf(f, "    topic = \"com.apple.mgmt.External.picomdm-lab\"\n");
    }
    //  for the CLI (section `picomdm`): the URL `picomdm enroll-token new` prints
    fprintf(f, "picomdm\n    enroll-url = \"https://%s%s/mdm/enroll\"\n", up->host, port);
    if (fclose(f) != 0 || rename(tmp, up->cfgfile) != 0) {
        fprintf(stderr, "picomdm up: cannot write %s: %s\n", up->cfgfile, strerror(errno));
        return -1;
    }
    return 0;
}

//  The SAN list: loopback names, this host, the public host, the listen address.
static void s_tls_names(const s_up_t *up, const char *listen, char *out, size_t size)
{
    char hostname[256] = "";
    gethostname(hostname, sizeof hostname - 1);
    char lhost[256] = "";
    const char *colon = listen ? strrchr(listen, ':') : NULL;
    if (colon && (size_t)(colon - listen) < sizeof lhost) {
        memcpy(lhost, listen, (size_t)(colon - listen));
        lhost[colon - listen] = 0;
    }
    const char *cands[] = {"localhost", "127.0.0.1", "::1", hostname, up->host, lhost};
    size_t used = 0;
    out[0] = 0;
    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++) {
        const char *c = cands[i];
        if (!*c || strcmp(c, "0.0.0.0") == 0 || strcmp(c, "::") == 0 || strchr(c, ','))
            continue;
        //  skip duplicates
        bool dup = false;
        for (size_t j = 0; j < i; j++)
            dup = dup || strcmp(cands[j], c) == 0;
        if (dup)
            continue;
        int n = snprintf(out + used, size - used, "%s%s", used ? "," : "", c);
        if (n < 0 || (size_t)n >= size - used)
            break;
        used += (size_t)n;
    }
}

static int s_setup(s_up_t *up, const pm_cfg_t *cfg)
{
    const char *data = pm_cfg_str(cfg, "data-dir");
    if (!data || !*data || strchr(data, '"')) {
        fprintf(stderr, "picomdm up: --data-dir must be a path without quotes\n");
        return -1;
    }
    if (s_mkdir(data, 0750) < 0)
        return -1;
    if (!realpath(data, up->data)) {
        fprintf(stderr, "picomdm up: %s: %s\n", data, strerror(errno));
        return -1;
    }
    if (s_path(up->run, sizeof up->run, "%s/run", up->data) < 0 ||
        s_path(up->pki, sizeof up->pki, "%s/pki", up->data) < 0 || s_mkdir(up->run, 0750) < 0 ||
        s_mkdir(up->pki, 0700) < 0)
        return -1;
    if (strlen(up->run) + 20 > S_IPC_MAX) {
        fprintf(stderr,
                "picomdm up: %s is too long a path for ipc:// sockets (limit ~100 bytes): use a "
                "shorter --data-dir\n",
                up->run);
        return -1;
    }
    if (s_path(up->cfgfile, sizeof up->cfgfile, "%s/picomdm.cfg", up->run) < 0 ||
        s_path(up->req, sizeof up->req, "ipc://%s/request.sock", up->run) < 0 ||
        s_path(up->pub, sizeof up->pub, "ipc://%s/publish.sock", up->run) < 0 ||
        s_path(up->sub, sizeof up->sub, "ipc://%s/subscribe.sock", up->run) < 0 ||
        s_path(up->ca_crt, sizeof up->ca_crt, "%s/ca.crt", up->pki) < 0 ||
        s_path(up->ca_key, sizeof up->ca_key, "%s/ca.key", up->pki) < 0 ||
        s_path(up->tls_crt, sizeof up->tls_crt, "%s/tls.crt", up->pki) < 0 ||
        s_path(up->tls_key, sizeof up->tls_key, "%s/tls.key", up->pki) < 0)
        return -1;

    //  one supervisor per data directory
    char lock[PATH_MAX];
    if (s_path(lock, sizeof lock, "%s/up.lock", up->run) < 0)
        return -1;
    up->lockfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (up->lockfd < 0 || flock(up->lockfd, LOCK_EX | LOCK_NB) < 0) {
        fprintf(stderr,
                "picomdm up: another `picomdm up` is already running with %s (stop it first, "
                "or use another --data-dir)\n",
                up->data);
        return -1;
    }
    if (ftruncate(up->lockfd, 0) == 0)
        dprintf(up->lockfd, "%ld\n", (long)getpid());

    const char *bin = pm_cfg_str(cfg, "bin-dir");
    if (bin ? s_path(up->bin, sizeof up->bin, "%s", bin) : s_self_dir(up->bin, sizeof up->bin)) {
        fprintf(stderr, "picomdm up: cannot tell where the programs are: use --bin-dir\n");
        return -1;
    }
    const char *only = pm_cfg_str(cfg, "only");
    for (int i = 0; i < S_NPROC; i++) {
        s_proc_t *p = &up->procs[up->nprocs];
        memset(p, 0, sizeof *p);
        p->name = s_names[i];
        if (s_path(p->path, sizeof p->path, "%s/picomdm-%s", up->bin, p->name) < 0 ||
            s_path(p->pidfile, sizeof p->pidfile, "%s/%s.pid", up->run, p->name) < 0)
            return -1;
        if (access(p->path, X_OK) == 0 && s_listed(only, p->name))
            up->nprocs++;
    }
    if (up->nprocs == 0) {
        fprintf(stderr,
                "picomdm up: no PicoMDM programs (picomdm-broker, ...) in %s%s: run "
                "make first, or point --bin-dir at them\n",
                up->bin, only ? " matching --only" : "");
        return -1;
    }

    const char *listen = pm_cfg_str(cfg, "listen");
    const char *ph = pm_cfg_str(cfg, "public-host");
    if (ph)
        snprintf(up->host, sizeof up->host, "%s", ph);
    else if (listen && (strncmp(listen, "127.", 4) == 0 || strncmp(listen, "localhost:", 10) == 0 ||
                        strncmp(listen, "[::1]", 5) == 0))
        snprintf(up->host, sizeof up->host, "localhost");
    else if (gethostname(up->host, sizeof up->host - 1) != 0)
        snprintf(up->host, sizeof up->host, "localhost");

    char err[512], cn[300];
    bool ca_new = false, tls_new = false;
    snprintf(cn, sizeof cn, "PicoMDM Device CA (%s)", up->host);
    if (cli_pki_ensure_ca(up->ca_crt, up->ca_key, cn, &ca_new, err, sizeof err) < 0) {
        fprintf(stderr, "picomdm up: %s\n", err);
        return -1;
    }
    char names[1024];
    s_tls_names(up, listen, names, sizeof names);
    if (cli_pki_ensure_tls(up->tls_crt, up->tls_key, names, &tls_new, err, sizeof err) < 0) {
        fprintf(stderr, "picomdm up: %s\n", err);
        return -1;
    }
    const char *push = pm_cfg_str(cfg, "push-cert");
    char def_push[PATH_MAX];
    if (!push && s_path(def_push, sizeof def_push, "%s/push.pem", up->pki) == 0 &&
        access(def_push, R_OK) == 0)
        push = def_push;
    if (push && access(push, R_OK) != 0) {
        fprintf(stderr, "picomdm up: cannot read the push certificate %s: %s\n", push,
                strerror(errno));
        return -1;
    }
    snprintf(up->push, sizeof up->push, "%s", push ? push : "");
    if (s_write_config(up, cfg) < 0)
        return -1;

    //  the banner: what runs where, and what to do next
    char fp[128] = "?";
    cli_pki_fingerprint(up->ca_crt, fp, sizeof fp);
    printf("PicoMDM %s on this host\n\n", PICOMDM_VERSION);
    printf("  data directory   %s\n", up->data);
    printf("  configuration    %s (generated)\n", up->cfgfile);
    printf("  bus              %s\n", up->req);
    printf("  processes       ");
    for (int i = 0; i < up->nprocs; i++)
        printf(" %s", up->procs[i].name);
    printf("\n");
    printf("  device CA        %s (%s)\n                   SHA-256 %s\n", up->ca_crt,
           ca_new ? "created now" : "reused", fp);
    printf("  TLS certificate  %s for %s (%s)\n", up->tls_crt, names,
           tls_new ? "created now" : "reused");
    const char *port = listen ? strrchr(listen, ':') : NULL;
    printf("  ServerURL        https://%s%s%s\n", up->host, port ? port : "",
           pm_cfg_str(cfg, "server-path"));
    printf("  CheckInURL       https://%s%s%s\n", up->host, port ? port : "",
           pm_cfg_str(cfg, "checkin-path"));
    char ca_bin[PATH_MAX + 32];
    snprintf(ca_bin, sizeof ca_bin, "%s/picomdm-ca", up->bin);
    bool have_ca = access(ca_bin, X_OK) == 0;
    if (have_ca) //  the gateway's default enrollment route (docs/gateway.md)
        printf("  Enrollment URL   https://%s%s/mdm/enroll   (the signed profile; SCEP at /scep)\n",
               up->host, port ? port : "");
    if (!up->push[0])
        printf("\nNOTICE: no APNs push certificate is configured, so devices are not woken\n"
               "        when commands are queued (they still get them at their next check-in).\n"
               "        Put the certificate and its key in %s/push.pem or use --push-cert.\n",
               up->pki);
    printf("\nNext:\n"
           "  export PICOMDM_CONFIG=%s   # picomdm then finds this bus from anywhere\n"
           "  %s/picomdm devices\n",
           up->cfgfile, up->bin);
    char devsim[PATH_MAX + 32];
    snprintf(devsim, sizeof devsim, "%s/picomdm-devsim", up->bin);
    if (access(devsim, X_OK) == 0 && have_ca)
        printf("  %s --enroll-url https://%s%s/mdm/enroll \\\n"
               "      --ca-bundle %s --devices 3   # simulated devices, enrolled like real ones\n",
               devsim, up->host, port ? port : "", up->tls_crt);
    else if (access(devsim, X_OK) == 0)
        printf("  %s --url https://%s%s --ca-bundle %s \\\n"
               "      --ca-cert %s --ca-key %s --devices 3   # simulated devices\n",
               devsim, up->host, port ? port : "", up->tls_crt, up->ca_crt, up->ca_key);
    printf("  %s/picomdm enqueue DeviceInformation --set Queries=UDID,OSVersion --to <id>\n"
           "  %s/picomdm watch   # every event, as JSON lines\n"
           "  curl -s http://127.0.0.1:9640/metrics   # every process's counters (Prometheus)\n"
           "Ctrl-C stops everything.\n\n",
           up->bin, up->bin);
    fflush(stdout);
    return 0;
}

//  Wait (bounded) for the broker's request socket so the others connect at once.
static void s_wait_broker(const s_up_t *up)
{
    const char *path = up->req + strlen("ipc://");
    for (int i = 0; i < 100 && !s_stop; i++) {
        if (access(path, F_OK) == 0)
            return;
        s_sleep_ms(50);
    }
    pm_warn("up: the broker's socket %s did not appear within 5 s; starting the others anyway",
            path);
}

int cli_up_run(cli_ctx_t *ctx)
{
    s_up_t *up = calloc(1, sizeof *up);
    if (!up) {
        fprintf(stderr, "picomdm up: out of memory\n");
        return CLI_EXIT_FAIL;
    }
    up->lockfd = -1;
    int rc = CLI_EXIT_FAIL;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal; //  no SA_RESTART: sleeps end at once
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = s_on_child;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);

    if (cli_argc(ctx) > 0) {
        fprintf(stderr, "picomdm up: unexpected argument '%s' (see picomdm up --help)\n",
                cli_arg(ctx, 0));
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    if (s_setup(up, ctx->cfg) < 0)
        goto out;
    int64_t stop_timeout = pm_cfg_int(ctx->cfg, "stop-timeout");
    int64_t max_backoff = pm_cfg_int(ctx->cfg, "max-backoff");
    if (stop_timeout < 0 || stop_timeout > 600000 || max_backoff < S_BACKOFF_MIN_MS ||
        max_backoff > 3600000) {
        fprintf(stderr, "picomdm up: --stop-timeout must be 0..600000 and --max-backoff "
                        "500..3600000 (milliseconds)\n");
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    for (int i = 0; i < up->nprocs && !s_stop; i++) {
        s_spawn(up, &up->procs[i]);
        if (strcmp(up->procs[i].name, "broker") == 0)
            s_wait_broker(up);
    }
    while (!s_stop) {
        s_reap(up, false, (int)max_backoff);
        int64_t now = s_now_ms();
        for (int i = 0; i < up->nprocs && !s_stop; i++) {
            s_proc_t *p = &up->procs[i];
            if (p->pid == 0 && now >= p->restart_at_ms)
                s_spawn(up, p);
        }
        s_sleep_ms(100);
    }
    pm_info("up: stopping (SIGTERM to the clients, then to the store and the broker; SIGKILL after "
            "%lld ms)",
            (long long)stop_timeout);
    s_stop_all(up, (int)stop_timeout);
    pm_info("up: stopped");
    rc = CLI_EXIT_OK;
out:
    if (up->lockfd >= 0)
        close(up->lockfd);
    free(up);
    return rc;
}
