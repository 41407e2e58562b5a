/*  devsim_run — the simulator's HTTP engine (bin/picomdm-devsim): drives many
 *  simulated devices against one MDM server with libcurl's multi interface
 *  (many transfers in one thread, keep-alive connections reused), and keeps
 *  the figures (enrollments/s, command round trips/s, latency percentiles).
 *
 *  Work is a queue of jobs; a job is one device running a short program:
 *  enroll (Authenticate, TokenUpdate, then the user channel's TokenUpdate) or
 *  a session (device channel, then user channel: PUT Idle, answer each command,
 *  stop at an empty 200 body). At most `concurrency` jobs are in flight.
 *  devsim_run_wake() is the hook for pushes: "wake up and connect" queues a
 *  session for one device, exactly what an APNs push makes a device do.
 */
#ifndef DEVSIM_RUN_H
#define DEVSIM_RUN_H

#include "devsim_answer.h"
#include "devsim_dev.h"
#include "devsim_scep.h"

#include <openssl/evp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

//  How an enrollment's requests use connections (devsim_run_enroll_url).
typedef enum {
    DEVSIM_CONN_SHARED = 0, //  the engine's keep-alive pool (--concurrency connections in all)
    DEVSIM_CONN_DEVICE,     //  as a device: the profile download (Safari), SCEP (the profile
                            //  installer) and the check-ins (mdmd) each on a new connection
                            //  with a full TLS handshake: 3 per enrollment
    DEVSIM_CONN_REQUEST,    //  a new connection per request (6 per enrollment)
} devsim_conn_mode_t;

typedef struct {
    const char *url;          //  https://host:port (no path)
    const char *checkin_path; //  CheckInURL path, e.g. /mdm/checkin
    const char *server_path;  //  ServerURL path, e.g. /mdm/connect
    const char *ca_bundle;    //  the server's TLS trust (NULL = system store)
    bool insecure;            //  do not verify the server's TLS certificate
    bool sign;                //  send Mdm-Signature (SignMessage)
    const EVP_MD *md;         //  signature digest
    int concurrency;          //  transfers in flight
    int max_commands;         //  per session: a server that never stops is cut off here
    long timeout_ms;          //  per request
    bool verbose;             //  print every exchange (bodies included)
    bool drop_after_command;  //  end each session on receiving a command, without answering it
    //  Open loop (--rate): > 0 = enrollments / sessions started per second on
    //  a fixed timetable (devsim_sched.h), each first request timed from its
    //  scheduled start; 0 = closed loop (the next starts when one ends).
    double rate;
    bool rate_jitter; //  exponential gaps of mean 1 / rate instead of fixed ones
    //  Open loop: a start due at t is made at the first wake-up of the loop
    //  from t on (a reply, another start), at the latest at t + rate_slack_ms
    //  (its own wake-up). 0 = at t exactly (a wake-up per start). The
    //  lateness is charged to the figures (latency from the scheduled start).
    double rate_slack_ms;
    //  --warm-connections: before each enrollment / session phase, one GET of
    //  the ServerURL per transfer slot, all at once, so that `concurrency`
    //  connections are open (TLS handshakes done) when the phase starts; not
    //  counted in the phase's figures (a "warm-up" line of its own).
    bool warm;
    uint64_t rate_seed; //  the jitter's random state (any value)
    //  One line per request: phase, seconds since the run began when it was
    //  sent and when its reply came, latency ms (as reported: corrected for
    //  a first request of an open loop), 1 if it was such a first request.
    //  Borrowed; NULL = none.
    FILE *latency_log;
    devsim_answer_opts_t answer;
} devsim_run_opts_t;

typedef struct devsim_run devsim_run_t;

//  devs: n devices (borrowed; the caller destroys them after the run).
devsim_run_t *devsim_run_new(const devsim_run_opts_t *o, devsim_dev_t **devs, int n);
void devsim_run_destroy(devsim_run_t **r);

//  Enroll every device (Authenticate + TokenUpdate on each channel). Returns
//  the number of devices that failed. With opts.rate, enroll and sessions
//  start device i at (phase start) + i / rate (open loop; see devsim_sched.h)
//  and the report adds an "open loop:" line per such phase.
int devsim_run_enroll(devsim_run_t *r);
//  Enroll every device from the enrollment URL, `concurrency` (or, open
//  loop, `rate` per second) at a time, each in order: profile, GetCACert,
//  GetCACaps, PKCSReq (devsim_scep_dev_t: every check a device makes), then,
//  with `checkin`, Authenticate + TokenUpdate to its own profile's CheckInURL
//  with its SignMessage. keys[i] (borrowed, may be NULL): device i's RSA key.
//  challenge: replaces the profiles' (negative tests), or NULL. The phase is
//  "enroll" in the report. Returns the number of devices that failed.
int devsim_run_enroll_url(devsim_run_t *r, const char *enroll_url, EVP_PKEY **keys,
                          const char *challenge, bool checkin, devsim_conn_mode_t conn);
//  The first profile devsim_run_enroll_url got (owned by the run), or NULL.
const devsim_profile_t *devsim_run_profile(const devsim_run_t *r);
//  Devices that got their identity over SCEP so far.
long devsim_run_identities(const devsim_run_t *r);
//  Where later check-ins and sessions go (strings borrowed: keep them alive).
void devsim_run_set_target(devsim_run_t *r, const char *url, const char *checkin_path,
                           const char *server_path, bool sign);
//  One session for every enrolled device (both channels). Returns failures.
int devsim_run_sessions(devsim_run_t *r);
//  Send CheckOut for every enrolled device. Returns failures.
int devsim_run_checkout(devsim_run_t *r);

//  Push hook: queue a session for one device; devsim_run_pending() runs the
//  queue to completion. Returns failures.
void devsim_run_wake(devsim_run_t *r, devsim_dev_t *dev);
int devsim_run_pending(devsim_run_t *r);
//  Queue a TokenUpdate (both channels) for an enrolled device, as a device
//  does when its token may have changed; a server clears a stale-token mark.
void devsim_run_tokenupdate(devsim_run_t *r, devsim_dev_t *dev);
//  Serve pushes: one loop runs the transfers and waits on `fd` (the push
//  socket) in the same curl_multi_poll; when fd is readable (or jobs are
//  queued) on_ready(arg) is called, which calls devsim_run_wake() per push.
//  A device runs one session at a time (a push during a session queues one
//  more). Returns when interrupted (SIGINT/SIGTERM) or after idle_ms with
//  nothing to do (0: never). Returns the number of failed sessions.
int devsim_run_serve(devsim_run_t *r, int fd, void (*on_ready)(void *arg), void *arg, long idle_ms);

//  Print the figures of every phase run so far. Returns the number of
//  problems seen (HTTP errors, transport errors, NotNow violations).
int devsim_run_report(devsim_run_t *r, FILE *out);

#endif
