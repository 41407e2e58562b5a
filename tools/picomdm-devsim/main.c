/*  picomdm-devsim — a device simulator: behaves like Apple devices (iPhone,
 *  iPad, Mac, user channels, User Enrollment, Shared iPad) towards any MDM
 *  server that speaks the protocol: check-in (Authenticate, TokenUpdate,
 *  CheckOut), the command loop with Apple's response keys, signed requests
 *  (Mdm-Signature), NotNow, load mode with many devices, negative tests
 *  (--spoof, --malformed) and a print mode. See docs/devsim.md.
 */
#include "devsim_answer.h"
#include "devsim_dev.h"
#include "devsim_ident.h"
#include "devsim_neg.h"
#include "devsim_plist.h"
#include "devsim_push.h"
#include "devsim_run.h"
#include "devsim_scep.h"
#include "pm_cfg.h"
#include "pm_getpid.h"
#include "pm_log.h"

#include <czmq.h>
#include <curl/curl.h>
#include <errno.h>
#include <malloc.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <signal.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>

static const pm_opt_t s_opts[] = {
    {"url", PM_OPT_STR, "https://127.0.0.1:8443", "the MDM server (scheme://host:port, no path)"},
    {"checkin-path", PM_OPT_STR, "/mdm/checkin", "CheckInURL path"},
    {"server-path", PM_OPT_STR, "/mdm/connect", "ServerURL path"},
    {"ca-bundle", PM_OPT_STR, NULL, "PEM file to trust for the server's TLS certificate"},
    {"insecure", PM_OPT_BOOL, "false", "do not verify the server's TLS certificate"},
    {"cert", PM_OPT_STR, NULL, "device identity certificate (PEM), one device only"},
    {"key", PM_OPT_STR, NULL, "device identity private key (PEM) for --cert"},
    {"ca-cert", PM_OPT_STR, NULL, "device CA certificate (PEM): issue each device its identity"},
    {"ca-key", PM_OPT_STR, NULL, "device CA private key (PEM) for --ca-cert"},
    {"key-type", PM_OPT_STR, "ec", "device keys: ec (P-256, fast) or rsa (2048)"},
    {"digest", PM_OPT_STR, "sha256", "Mdm-Signature digest: sha256 or sha1"},
    {"sign", PM_OPT_BOOL, "true",
     "send Mdm-Signature (--no-sign: for servers using mTLS/lab mode)"},
    {"kind", PM_OPT_STR, "iphone",
     "iphone, ipad, mac, mac-user, ue, ue-mac-user, shared-ipad, or mix (all in turn)"},
    {"devices", PM_OPT_INT, "1", "number of simulated devices"},
    {"concurrency", PM_OPT_INT, "0",
     "HTTP transfers in flight at most (connections kept alive); 0 = 16, or 128 with --rate"},
    {"rate", PM_OPT_STR, "0",
     "open loop: start N sessions (and enrollments) per second on a fixed timetable, device i "
     "at i / N s, and time each session's first request from its scheduled start (a server "
     "that falls behind is charged for the wait); 0 = closed loop (the next session starts "
     "when one ends)"},
    {"latency-log", PM_OPT_STR, NULL,
     "write one line per request to this file: phase, sent and reply time (s since start), "
     "latency ms, 1 for an open loop's first request (timed from its schedule)"},
    {"warm-connections", PM_OPT_BOOL, "false",
     "before each enrollment / session phase, open the --concurrency connections (a TLS "
     "handshake each) with one GET of the ServerURL each, all at once, outside the phase's "
     "figures: an open loop then measures its steady state without the burst of handshakes at "
     "its start"},
    {"rate-jitter", PM_OPT_BOOL, "false",
     "with --rate: exponential gaps of mean 1 / N between starts (Poisson arrivals) instead of "
     "fixed ones"},
    {"rate-slack-ms", PM_OPT_STR, "0.5",
     "with --rate: a start due at t is made at the loop's first wake-up from t on (a reply), "
     "at the latest at t + this many ms, instead of a wake-up of its own for each start; the "
     "lateness is charged to the figures (0: every start at its time, a wake-up each)"},
    {"rounds", PM_OPT_INT, "1", "command-loop sessions per device after enrollment"},
    {"enroll", PM_OPT_BOOL, "true",
     "run Authenticate + TokenUpdate first (--no-enroll: already enrolled)"},
    {"checkout", PM_OPT_BOOL, "false", "send CheckOut at the end"},
    {"topic", PM_OPT_STR, "com.apple.mgmt.External.00000000-0000-0000-0000-000000000000",
     "push topic (the MDM push certificate's UID)"},
    {"seed", PM_OPT_INT, "0", "identifier seed (same seed = same UDIDs; 0 = from the clock)"},
    {"identity-dir", PM_OPT_STR, NULL,
     "keep each device's identity here (<id>.pem/.key; reused on the next run, as a real "
     "device keeps its certificate; with --ca-cert)"},
    {"apps", PM_OPT_INT, "200", "apps in InstalledApplicationList"},
    {"os-version", PM_OPT_STR, NULL,
     "report this OSVersion instead of the model's (e.g. an update between two runs)"},
    {"notnow-rate", PM_OPT_STR, "0", "chance 0..1 of answering a command NotNow"},
    {"drop-after-command", PM_OPT_BOOL, "false",
     "end each session on receiving a command, without answering it (a lost connection)"},
    {"clock-skew-s", PM_OPT_INT, "0",
     "sign with a signingTime this many seconds off the real clock (a device with a wrong "
     "clock; picomdm doctor reports it)"},
    {"timeout-ms", PM_OPT_INT, "30000", "per-request timeout"},
    {"max-commands", PM_OPT_INT, "1000", "commands per session before the device gives up"},
    {"verbose", PM_OPT_BOOL, "false", "print every exchange, bodies included (also -v)"},
    {"spoof", PM_OPT_STR, NULL,
     "negative test: unsigned, wrong-ca, expired, self-signed, tampered, two-signers, "
     "zero-signers, bad-base64, another; exit 1 if the server accepts"},
    {"malformed", PM_OPT_STR, NULL,
     "negative test: truncated, nested, oversized, garbage, wrong-types; exit 1 if accepted"},
    {"print", PM_OPT_STR, NULL,
     "print the plist the device would send and exit: authenticate, tokenupdate, checkout, "
     "idle, user-tokenupdate, or a RequestType (its answer)"},
    {"command", PM_OPT_STR, NULL, "with --print RequestType: answer this command plist file"},
    {"sig-out", PM_OPT_STR, NULL,
     "with --print: also write the body's Mdm-Signature (base64) here"},
    {"enroll-url", PM_OPT_STR, NULL,
     "enroll like a real device from this URL only: download the profile, verify it, get an "
     "identity over SCEP, then check in with the profile's URLs, topic and SignMessage"},
    {"go-file", PM_OPT_STR, NULL,
     "with --enroll-url: once the device keys are made, wait until this file exists before the "
     "first request (benchmarks start counting the server's CPU in between)"},
    {"enroll-connections", PM_OPT_STR, "device",
     "with --enroll-url: device = as a real device, the profile download, the SCEP requests and "
     "the check-ins each on its own new TLS connection (3 full handshakes per enrollment); "
     "shared = the --concurrency keep-alive connections shared by all devices; request = a new "
     "connection per request (6)"},
    {"key-dir", PM_OPT_STR, NULL,
     "with --enroll-url: take device i's RSA key from DIR/rsa<i>.pem, making and writing it "
     "there when missing (benchmarks: keys made once for several runs; each device of a run "
     "still has its own key)"},
    {"renew", PM_OPT_BOOL, "false",
     "with --enroll-url: after the sessions, renew every certificate over SCEP (RenewalReq) "
     "and run the sessions again with the new one"},
    {"scep-challenge", PM_OPT_STR, NULL,
     "negative test: send this challenge instead of the profile's (expect SCEP FAILURE)"},
    {"session-delay-ms", PM_OPT_INT, "0",
     "wait this long after enrollment before the sessions (time to queue commands)"},
    {"make-ca", PM_OPT_STR, NULL, "write a new device CA to PREFIX.pem and PREFIX.key and exit"},
    {"push-listen", PM_OPT_STR, NULL,
     "UNIX datagram socket for pushes (picomdm-fake-apns --deliver-unix): each push for a "
     "device's Token and PushMagic runs one session for it; implies --stay"},
    {"stay", PM_OPT_BOOL, "false",
     "after enrollment and --rounds, keep running (serving pushes) until SIGTERM; SIGHUP makes "
     "every device re-send TokenUpdate"},
    {"exit-after-idle-ms", PM_OPT_INT, "0",
     "with --stay/--push-listen: stop after this long with no push and nothing to do (0: never)"},
    {NULL, 0, NULL, NULL}};

//  SIGHUP while serving: every enrolled device re-sends TokenUpdate.
static volatile sig_atomic_t s_hup;
static void s_on_hup(int sig)
{
    (void)sig;
    s_hup = 1;
}

typedef struct {
    devsim_run_t *run;
    devsim_push_t *push;
    devsim_dev_t **devs;
    int n;
} s_serve_t;

//  Called by the serve loop after each wait.
static void s_on_ready(void *arg)
{
    s_serve_t *sv = arg;
    if (s_hup) {
        s_hup = 0;
        int k = 0;
        for (int i = 0; i < sv->n; i++)
            if (sv->devs[i]->enrolled && !sv->devs[i]->erased) {
                devsim_run_tokenupdate(sv->run, sv->devs[i]);
                k++;
            }
        pm_info("SIGHUP: %d device(s) re-send TokenUpdate", k);
    }
    if (sv->push)
        devsim_push_on_ready(sv->push);
}

//  --enroll-url: every device fetches its own profile (one-time challenge),
//  enrolls over SCEP and checks in, --concurrency (or --rate) devices at a
//  time (devsim_run_enroll_url). The first profile's URLs and SignMessage
//  then drive the sessions. Returns the devices that failed, -1 on set-up
//  errors (err).
static int s_scep_enroll(const pm_cfg_t *cfg, devsim_run_t *run, int n, devsim_conn_mode_t conn,
                         char *err, size_t errlen)
{
    const char *url = pm_cfg_str(cfg, "enroll-url");
    struct timespec t0, t1;
    //  Every device's RSA key first (2048 bits, the Keysize profiles ask for),
    //  one distinct key per device: key generation is the simulator's cost
    //  (a device makes its own), 100-500 ms of CPU each here, more than the whole
    //  server spends on an enrollment; made in the timed phase it would cap
    //  the offered rate at one core's keys per second and take the CPU from
    //  the server it measures.
    EVP_PKEY **keys = calloc((size_t)n, sizeof *keys);
    const char *kdir = pm_cfg_str(cfg, "key-dir");
    int made = 0, loaded = 0;
    if (kdir && mkdir(kdir, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create --key-dir '%s': %s", kdir, strerror(errno));
        free(keys);
        return -1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; keys && i < n && !zsys_interrupted; i++) {
        char kp[1024] = "";
        if (kdir) {
            snprintf(kp, sizeof kp, "%s/rsa%d.pem", kdir, i);
            FILE *f = fopen(kp, "r");
            if (f) {
                keys[i] = PEM_read_PrivateKey(f, NULL, NULL, NULL);
                fclose(f);
                loaded += keys[i] != NULL;
            }
        }
        if (!keys[i]) {
            keys[i] = EVP_RSA_gen(2048);
            made += keys[i] != NULL;
            //  a private key: 0600 whatever the umask or the directory
            int fd =
                kp[0] && keys[i] ? open(kp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) : -1;
            FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
            if (fd >= 0 && !f)
                close(fd);
            if (f) {
                PEM_write_PrivateKey(f, keys[i], NULL, NULL, 0, NULL, NULL);
                fclose(f);
            }
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ks = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (loaded)
        printf("scep: %d RSA-2048 device keys read from %s, %d made, in %.2f s, before the first "
               "request\n",
               loaded, kdir, made, ks);
    else
        printf("scep: %d RSA-2048 device keys made in %.2f s (%.1f ms each: one core makes "
               "%.1f/s), before the first request\n",
               n, ks, n > 0 ? ks * 1e3 / n : 0.0, ks > 0 ? n / ks : 0.0);
    fflush(stdout);
    int rc = -1;
    const char *go = pm_cfg_str(cfg, "go-file");
    for (int waited = 0; go && *go && access(go, F_OK) != 0 && !zsys_interrupted; waited += 10) {
        if (waited >= 600000) {
            snprintf(err, errlen, "--go-file %s did not appear within 600 s", go);
            goto out;
        }
        zclock_sleep(10);
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    rc = devsim_run_enroll_url(run, url, keys, pm_cfg_str(cfg, "scep-challenge"),
                               pm_cfg_bool(cfg, "enroll"), conn);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (rc < 0) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    long got = devsim_run_identities(run);
    printf("scep: %ld device(s) got their identity (profile + GetCACert + GetCACaps + PKCSReq, "
           "then the check-ins) in %.2f s, %.1f/s\n",
           got, s, s > 0 ? (double)got / s : 0.0);
    if (zsys_interrupted)
        rc = rc ? rc : 1;
out:
    for (int i = 0; keys && i < n; i++)
        EVP_PKEY_free(keys[i]);
    free(keys);
    return rc;
}

static int s_scep_renew(devsim_dev_t **devs, int n, const devsim_profile_t *p,
                        const devsim_scep_opts_t *so, char *err, size_t errlen)
{
    for (int i = 0; i < n && !zsys_interrupted; i++) {
        devsim_ident_t *id = NULL;
        void *conn = NULL;
        devsim_scep_opts_t dso = *so;
        dso.conn = &conn;
        int rc = devsim_scep_renew(p, &dso, devsim_dev_ident(devs[i]), &id, err, errlen);
        devsim_scep_conn_close(&conn);
        if (rc < 0)
            return -1;
        devsim_dev_set_ident(devs[i], &id);
    }
    printf("scep: %d certificate(s) renewed (RenewalReq)\n", n);
    return 0;
}

static const char *s_summary =
    "Simulated Apple devices for any MDM server: check-in, signed command loop, load, spoofing.";

static int s_read_file(const char *path, char **data, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap)
            break;
        if (cap >= DEVSIM_PLIST_MAX_BYTES) {
            free(buf);
            buf = NULL;
            break;
        }
        char *p = realloc(buf, cap * 2);
        if (!p) {
            free(buf);
            buf = NULL;
        }
        buf = p;
        cap *= 2;
    }
    fclose(f);
    if (!buf)
        return -1;
    *data = buf;
    *len = n;
    return 0;
}

//  --print: the plist a device would send (and optionally its signature).
static int s_print(const pm_cfg_t *cfg, devsim_dev_t *dev, const devsim_answer_opts_t *ao,
                   const EVP_MD *md)
{
    const char *what = pm_cfg_str(cfg, "print");
    plist_t p = NULL;
    if (strcmp(what, "authenticate") == 0)
        p = devsim_dev_authenticate(dev);
    else if (strcmp(what, "tokenupdate") == 0)
        p = devsim_dev_tokenupdate(dev);
    else if (strcmp(what, "checkout") == 0)
        p = devsim_dev_checkout(dev);
    else if (strcmp(what, "idle") == 0)
        p = devsim_dev_report(dev, "Idle", NULL);
    else if (strcmp(what, "user-tokenupdate") == 0) {
        if (!dev->user) {
            pm_error("--kind %s has no user channel (use mac-user, ue-mac-user or shared-ipad)",
                     devsim_kind_name(dev->kind));
            return 2;
        }
        p = devsim_dev_tokenupdate(dev->user);
    } else {
        plist_t cmd = NULL;
        const char *file = pm_cfg_str(cfg, "command");
        if (file) {
            char *data = NULL, err[160];
            size_t len = 0;
            if (s_read_file(file, &data, &len) < 0) {
                pm_error("cannot read the command plist '%s' (check the path)", file);
                return 2;
            }
            cmd = devsim_pl_parse(data, len, err, sizeof err);
            free(data);
            if (!cmd) {
                pm_error("'%s' is not a command plist: %s", file, err);
                return 2;
            }
        } else
            cmd = devsim_answer_sample_command(what);
        devsim_dev_session_begin(dev);
        devsim_answer_info_t info;
        p = devsim_answer(dev, cmd, ao, &info);
        plist_free(cmd);
    }
    char *xml = NULL;
    size_t len = 0;
    int rc = devsim_pl_to_xml(p, &xml, &len);
    plist_free(p);
    if (rc < 0)
        return 1;
    fwrite(xml, 1, len, stdout);
    const char *sig_out = pm_cfg_str(cfg, "sig-out");
    if (sig_out) {
        char *b64 = NULL;
        FILE *f = NULL;
        if (!devsim_dev_ident(dev) ||
            devsim_ident_sign(devsim_dev_ident(dev), NULL, md, xml, len, &b64) < 0 ||
            !(f = fopen(sig_out, "w")) || fprintf(f, "%s\n", b64) < 0) {
            pm_error("cannot write the signature to '%s' (need an identity and a writable path)",
                     sig_out);
            rc = -1;
        }
        if (f && fclose(f) != 0)
            rc = -1;
        free(b64);
    }
    free(xml);
    return rc < 0 ? 1 : 0;
}

int main(int argc, char **argv)
{
    pm_getpid_init(); //  getpid() without a syscall (libzmq, OpenSSL): pm_getpid.h
    pm_cfg_t *cfg = NULL;
    pm_cfg_result_t pr = pm_cfg_parse(&cfg, "picomdm-devsim", s_summary, s_opts, argc, argv);
    if (pr == PM_CFG_EXIT)
        return 0;
    if (pr == PM_CFG_ERROR)
        return 2;
    int rc = 2;
    devsim_dev_t **devs = NULL;
    devsim_ca_t *ca = NULL;
    devsim_run_t *run = NULL;
    devsim_push_t *push = NULL;
    const devsim_profile_t *profile = NULL; //  --enroll-url: the first device's profile
    FILE *latlog = NULL;                    //  --latency-log
    int n = 0;
    char err[256];
    bool verbose = pm_cfg_bool(cfg, "verbose");
    for (int i = 0; i < pm_cfg_argc(cfg); i++) {
        if (strcmp(pm_cfg_arg(cfg, i), "-v") == 0)
            verbose = true;
        else {
            fprintf(stderr, "picomdm-devsim: unexpected argument '%s' (see --help)\n",
                    pm_cfg_arg(cfg, i));
            goto out;
        }
    }
    if (pm_cfg_start_logging(cfg) < 0)
        goto out;

    //  Validate the options before doing anything.
    const char *kt_s = pm_cfg_str(cfg, "key-type");
    devsim_key_t kt = DEVSIM_KEY_EC;
    if (strcmp(kt_s, "rsa") == 0)
        kt = DEVSIM_KEY_RSA;
    else if (strcmp(kt_s, "ec") != 0) {
        pm_error("--key-type must be ec or rsa, not '%s'", kt_s);
        goto out;
    }
    const char *dg = pm_cfg_str(cfg, "digest");
    const EVP_MD *md = strcmp(dg, "sha1") == 0 ? EVP_sha1() : EVP_sha256();
    if (strcmp(dg, "sha1") && strcmp(dg, "sha256")) {
        pm_error("--digest must be sha256 or sha1, not '%s'", dg);
        goto out;
    }
    const char *kind_s = pm_cfg_str(cfg, "kind");
    bool mix = strcmp(kind_s, "mix") == 0;
    int kind = mix ? 0 : devsim_kind_parse(kind_s);
    if (kind < 0) {
        pm_error("--kind must be iphone, ipad, mac, mac-user, ue, ue-mac-user, shared-ipad or "
                 "mix, not '%s'",
                 kind_s);
        goto out;
    }
    n = (int)pm_cfg_int(cfg, "devices");
    int conc = (int)pm_cfg_int(cfg, "concurrency");
    int rounds = (int)pm_cfg_int(cfg, "rounds");
    int apps = (int)pm_cfg_int(cfg, "apps");
    if (n < 1 || n > 1000000 || conc < 0 || conc > 10000 || rounds < 0 || apps < 0 ||
        apps > 100000) {
        pm_error("--devices 1..1000000, --concurrency 0..10000, --rounds >= 0, --apps 0..100000");
        goto out;
    }
    char *end = NULL;
    errno = 0;
    double rate = strtod(pm_cfg_str(cfg, "rate"), &end);
    if (errno || !end || *end || !(rate >= 0) || rate > 1e9) {
        pm_error("--rate wants sessions per second from 0 (closed loop) to 1e9, e.g. 1500");
        goto out;
    }
    if (conc == 0)
        conc = rate > 0 ? 128 : 16;
    end = NULL;
    errno = 0;
    double slack = strtod(pm_cfg_str(cfg, "rate-slack-ms"), &end);
    if (errno || !end || *end || !(slack >= 0) || slack > 1000) {
        pm_error("--rate-slack-ms wants milliseconds from 0 to 1000, e.g. 0.5");
        goto out;
    }
    end = NULL;
    errno = 0;
    double notnow = strtod(pm_cfg_str(cfg, "notnow-rate"), &end);
    if (errno || !end || *end || notnow < 0 || notnow > 1) {
        pm_error("--notnow-rate wants a number from 0 to 1, e.g. 0.2");
        goto out;
    }
    int64_t skew = pm_cfg_int(cfg, "clock-skew-s");
    if (skew < -10L * 365 * 86400 || skew > 10L * 365 * 86400) {
        pm_error("--clock-skew-s wants seconds within ten years, e.g. 900 or -3600");
        goto out;
    }
    devsim_ident_set_clock_skew((long)skew);
    const char *cert = pm_cfg_str(cfg, "cert"), *key = pm_cfg_str(cfg, "key");
    const char *cacert = pm_cfg_str(cfg, "ca-cert"), *cakey = pm_cfg_str(cfg, "ca-key");
    if ((cert != NULL) != (key != NULL) || (cacert != NULL) != (cakey != NULL)) {
        pm_error("give --cert with --key, and --ca-cert with --ca-key");
        goto out;
    }
    if (cert && n != 1) {
        pm_error("--cert/--key is one device's identity: use --ca-cert/--ca-key for --devices %d",
                 n);
        goto out;
    }
    if (pr == PM_CFG_CHECK) {
        printf("ok\n");
        rc = 0;
        goto out;
    }
    //  glibc gives the top of the heap back to the kernel whenever 128 KiB
    //  are free there, and takes it again on the next request's buffers: a
    //  brk pair and fresh page faults per request (~8 % of the simulator's
    //  CPU, perf). Keep up to 64 MiB instead.
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    mallopt(M_TOP_PAD, 4 << 20);
    curl_global_init(CURL_GLOBAL_DEFAULT);

    const char *make_ca = pm_cfg_str(cfg, "make-ca");
    if (make_ca) {
        char cp[1024], kp[1024];
        snprintf(cp, sizeof cp, "%s.pem", make_ca);
        snprintf(kp, sizeof kp, "%s.key", make_ca);
        ca = devsim_ca_generate("PicoMDM devsim Device CA", kt, err, sizeof err);
        if (!ca || devsim_ca_write(ca, cp, kp) < 0) {
            pm_error("cannot write the CA to %s / %s (check the directory exists): %s", cp, kp,
                     ca ? "write failed" : err);
            goto out;
        }
        printf("device CA written: %s %s\n", cp, kp);
        rc = 0;
        goto out;
    }

    uint64_t seed = (uint64_t)pm_cfg_int(cfg, "seed");
    if (seed == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (uint64_t)ts.tv_sec * 1000000007ULL ^ (uint64_t)ts.tv_nsec ^ (uint64_t)getpid();
    }
    devsim_rand_seed(seed);
    devs = calloc((size_t)n, sizeof *devs);
    if (!devs)
        goto out;
    for (int i = 0; i < n; i++) {
        devsim_kind_t k = mix ? (devsim_kind_t)(i % DEVSIM_KIND_COUNT) : (devsim_kind_t)kind;
        devs[i] = devsim_dev_new(k, i, seed, pm_cfg_str(cfg, "topic"));
        if (!devs[i])
            goto out;
        const char *osv = pm_cfg_str(cfg, "os-version");
        if (osv)
            snprintf(devs[i]->os_version, sizeof devs[i]->os_version, "%s", osv);
    }

    //  Identities: given, issued by the given CA, or (no CA) by a throwaway CA.
    const char *print = pm_cfg_str(cfg, "print");
    const char *spoof = pm_cfg_str(cfg, "spoof"), *malformed = pm_cfg_str(cfg, "malformed");
    const char *enroll_url = pm_cfg_str(cfg, "enroll-url");
    devsim_scep_opts_t so = {pm_cfg_str(cfg, "ca-bundle"), pm_cfg_bool(cfg, "insecure"),
                             (long)pm_cfg_int(cfg, "timeout-ms"), verbose, NULL};
    char ebase[512] = "", echeckin[256] = "", eserver[256] = "";
    devsim_conn_mode_t econn = DEVSIM_CONN_DEVICE;
    if (enroll_url && (cert || cacert || spoof || malformed || print)) {
        pm_error("--enroll-url gets identities over SCEP: do not combine it with --cert, "
                 "--ca-cert, --spoof, --malformed or --print");
        goto out;
    }
    if (enroll_url) {
        const char *ec = pm_cfg_str(cfg, "enroll-connections");
        if (strcmp(ec, "shared") == 0)
            econn = DEVSIM_CONN_SHARED;
        else if (strcmp(ec, "request") == 0)
            econn = DEVSIM_CONN_REQUEST;
        else if (strcmp(ec, "device") != 0) {
            pm_error("--enroll-connections must be device, shared or request, not '%s'", ec);
            goto out;
        }
        //  the engine starts at the enrollment URL's server; the profile says
        //  where the check-ins and sessions go (devsim_run_set_target)
        if (devsim_url_split(enroll_url, ebase, sizeof ebase, echeckin, sizeof echeckin) < 0) {
            pm_error("--enroll-url must be https://host:port/path, not '%s'", enroll_url);
            goto out;
        }
    }
    bool need_ident = !enroll_url && (pm_cfg_bool(cfg, "sign") || spoof || malformed || print);
    if (cert) {
        devsim_ident_t *id = devsim_ident_load(cert, key, err, sizeof err);
        if (!id) {
            pm_error("%s", err);
            goto out;
        }
        devsim_dev_set_ident(devs[0], &id);
    } else if (need_ident) {
        if (cacert) {
            ca = devsim_ca_load(cacert, cakey, err, sizeof err);
            if (!ca) {
                pm_error("%s", err);
                goto out;
            }
        } else {
            ca = devsim_ca_generate("PicoMDM devsim throwaway CA", kt, err, sizeof err);
            if (!ca) {
                pm_error("%s", err);
                goto out;
            }
            if (!print && !spoof)
                pm_warn("no --ca-cert/--ca-key or --cert/--key: signing with a throwaway CA the "
                        "server does not trust (expect 400s); use --make-ca and give the server "
                        "that CA");
        }
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        const char *idir = pm_cfg_str(cfg, "identity-dir");
        if (idir && cacert && mkdir(idir, 0700) < 0 && errno != EEXIST) {
            pm_error("cannot create --identity-dir '%s': %s", idir, strerror(errno));
            goto out;
        }
        int reused = 0;
        for (int i = 0; i < n; i++) {
            //  --identity-dir: a device that ran before keeps its certificate
            //  (the server bound it at Authenticate); a new one is issued once.
            char cpath[1024] = "", kpath[1024] = "";
            if (idir && cacert) {
                snprintf(cpath, sizeof cpath, "%s/%s.pem", idir, devsim_dev_cn(devs[i]));
                snprintf(kpath, sizeof kpath, "%s/%s.key", idir, devsim_dev_cn(devs[i]));
            }
            devsim_ident_t *id = NULL;
            if (cpath[0] && access(cpath, R_OK) == 0 && access(kpath, R_OK) == 0) {
                id = devsim_ident_load(cpath, kpath, err, sizeof err);
                reused += id != NULL;
            } else {
                id = devsim_ident_issue(ca, devsim_dev_cn(devs[i]), kt, -3600, 365L * 86400, err,
                                        sizeof err);
                if (id && cpath[0] && devsim_ident_write(id, cpath, kpath) < 0) {
                    pm_error("cannot write the identity of %s to '%s'", devsim_dev_cn(devs[i]),
                             idir);
                    devsim_ident_destroy(&id);
                    goto out;
                }
            }
            if (!id) {
                pm_error("%s", err);
                goto out;
            }
            devsim_dev_set_ident(devs[i], &id);
            //  the signing state is made with the identity, not on its first request
            if (pm_cfg_bool(cfg, "sign"))
                devsim_ident_prepare(devsim_dev_ident(devs[i]), md);
            if (zsys_interrupted)
                goto out;
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (reused)
            pm_info("reused %d identities from --identity-dir", reused);
        if (n > 1)
            pm_info("issued %d %s identities in %.2f s", n - reused,
                    kt == DEVSIM_KEY_EC ? "EC P-256" : "RSA",
                    (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    }
    size_t ca_derlen = 0;
    unsigned char *ca_der = NULL;
    if (cacert && ca) {
        int l = i2d_X509(devsim_ca_cert(ca), &ca_der);
        ca_derlen = l > 0 ? (size_t)l : 0;
    }
    devsim_answer_opts_t ao = {notnow, apps, ca_der, ca_derlen};
    if (print) {
        rc = s_print(cfg, devs[0], &ao, md);
        OPENSSL_free(ca_der);
        goto out;
    }

    devsim_run_opts_t ro = {
        .url = enroll_url ? ebase : pm_cfg_str(cfg, "url"),
        .checkin_path = enroll_url ? echeckin : pm_cfg_str(cfg, "checkin-path"),
        .server_path = enroll_url ? eserver : pm_cfg_str(cfg, "server-path"),
        .ca_bundle = pm_cfg_str(cfg, "ca-bundle"),
        .insecure = pm_cfg_bool(cfg, "insecure"),
        .sign = enroll_url ? true : pm_cfg_bool(cfg, "sign"), //  then the profile's
        .md = md,
        .concurrency = conc,
        .max_commands = (int)pm_cfg_int(cfg, "max-commands"),
        .timeout_ms = (long)pm_cfg_int(cfg, "timeout-ms"),
        .verbose = verbose,
        .drop_after_command = pm_cfg_bool(cfg, "drop-after-command"),
        .rate = rate,
        .rate_jitter = pm_cfg_bool(cfg, "rate-jitter"),
        .rate_slack_ms = slack,
        .rate_seed = seed,
        .warm = pm_cfg_bool(cfg, "warm-connections"),
        .answer = ao,
    };
    if (spoof || malformed) {
        //  The CA only counts as "the server's" when it was given.
        rc = spoof ? devsim_neg_spoof(&ro, spoof, cacert ? ca : NULL, devs[0], kt, seed)
                   : devsim_neg_malformed_run(&ro, malformed, devs[0]);
        OPENSSL_free(ca_der);
        goto out;
    }

    const char *llog = pm_cfg_str(cfg, "latency-log");
    if (llog) {
        latlog = fopen(llog, "w");
        if (!latlog) {
            pm_error("cannot write --latency-log '%s': %s (check the directory)", llog,
                     strerror(errno));
            OPENSSL_free(ca_der);
            goto out;
        }
        ro.latency_log = latlog;
    }
    run = devsim_run_new(&ro, devs, n);
    if (!run) {
        OPENSSL_free(ca_der);
        goto out;
    }
    pm_info("%d %s device(s) -> %s, concurrency %d, %d round(s), NotNow rate %.2f, %s", n, kind_s,
            ro.url, conc, rounds, notnow, rate > 0 ? "open loop" : "closed loop");
    //  Bound before enrolling: a push that comes right after a TokenUpdate
    //  waits in the socket until the serve loop reads it.
    const char *listen = pm_cfg_str(cfg, "push-listen");
    if (listen) {
        push = devsim_push_new(listen, devs, n, run, err, sizeof err);
        if (!push) {
            pm_error("%s", err);
            OPENSSL_free(ca_der);
            goto out;
        }
    }
    int failed = 0;
    if (enroll_url) {
        int ef = s_scep_enroll(cfg, run, n, econn, err, sizeof err);
        profile = devsim_run_profile(run);
        char b2[512];
        if (ef != 0 || !profile) {
            if (ef < 0)
                pm_error("enrollment from %s failed: %s", enroll_url, err);
            else
                pm_error("enrollment from %s failed for %d device(s) (see the warnings above "
                         "for why)",
                         enroll_url, ef > 0 ? ef : n);
            devsim_run_report(run, stdout);
            OPENSSL_free(ca_der);
            rc = 1;
            goto out;
        }
        if (devsim_url_split(profile->server_url, ebase, sizeof ebase, eserver, sizeof eserver) <
                0 ||
            devsim_url_split(profile->checkin_url, b2, sizeof b2, echeckin, sizeof echeckin) < 0 ||
            strcmp(ebase, b2) != 0) {
            pm_error("the profile's ServerURL and CheckInURL must be https://host:port/path on "
                     "one server");
            OPENSSL_free(ca_der);
            rc = 1;
            goto out;
        }
        devsim_run_set_target(run, ebase, echeckin, eserver, profile->sign_message);
        if (!pm_cfg_bool(cfg, "enroll")) //  --no-enroll: enrolled before, by assumption
            for (int i = 0; i < n; i++) {
                devs[i]->enrolled = true;
                if (devs[i]->user)
                    devs[i]->user->enrolled = true;
            }
    } else if (pm_cfg_bool(cfg, "enroll"))
        failed += devsim_run_enroll(run);
    else
        for (int i = 0; i < n; i++) {
            devs[i]->enrolled = true;
            if (devs[i]->user)
                devs[i]->user->enrolled = true;
        }
    int64_t delay = pm_cfg_int(cfg, "session-delay-ms");
    if (delay > 0 && delay <= 600000)
        zclock_sleep((int)delay);
    for (int i = 0; i < rounds && !zsys_interrupted; i++)
        failed += devsim_run_sessions(run);
    if (enroll_url && pm_cfg_bool(cfg, "renew") && !zsys_interrupted) {
        if (s_scep_renew(devs, n, profile, &so, err, sizeof err) < 0) {
            pm_error("renewal failed: %s", err);
            failed++;
        } else {
            //  A renewed identity keeps the enrollment: the device goes on
            //  checking in with it, no new Authenticate (the server re-binds).
            for (int i = 0; i < (rounds > 0 ? rounds : 1) && !zsys_interrupted; i++)
                failed += devsim_run_sessions(run);
        }
    }
    if ((push || pm_cfg_bool(cfg, "stay")) && !zsys_interrupted) {
        long idle = (long)pm_cfg_int(cfg, "exit-after-idle-ms");
        pm_info("%s; serving until SIGTERM%s", push ? "listening for pushes" : "staying",
                idle > 0 ? " or idle" : "");
        if (push) {
            int ne = 0;
            for (int i = 0; i < n; i++)
                ne += devs[i]->enrolled;
            printf("push-listen %s ready, %d of %d devices enrolled\n", listen, ne, n);
            fflush(stdout);
        }
        s_serve_t sv = {run, push, devs, n};
        signal(SIGHUP, s_on_hup);
        failed += devsim_run_serve(run, push ? devsim_push_fd(push) : -1, s_on_ready, &sv, idle);
    }
    if (pm_cfg_bool(cfg, "checkout") && !zsys_interrupted)
        failed += devsim_run_checkout(run);
    int problems = devsim_run_report(run, stdout);
    if (push) {
        long rx, woken, ignored;
        devsim_push_counts(push, &rx, &woken, &ignored);
        printf("pushes     received %ld, woke a device %ld, ignored %ld\n", rx, woken, ignored);
    }
    OPENSSL_free(ca_der);
    rc = failed || problems || zsys_interrupted ? 1 : 0;
out:
    devsim_push_destroy(&push);
    devsim_run_destroy(&run);
    if (latlog && fclose(latlog) != 0) {
        pm_error("writing --latency-log failed (disk full?)");
        rc = rc ? rc : 1;
    }
    for (int i = 0; devs && i < n; i++)
        devsim_dev_destroy(&devs[i]);
    free(devs);
    devsim_ca_destroy(&ca);
    pm_cfg_destroy(&cfg);
    curl_global_cleanup();
    return rc;
}
