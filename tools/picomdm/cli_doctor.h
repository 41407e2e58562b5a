/*  cli_doctor — `picomdm doctor [<id>]`: why is a device silent? Asks the
 *  store for the facts (store.doctor, service "store"; read-only) and turns
 *  them into findings in plain words: not activated / checked out, push
 *  certificate expired or topic mismatch (with --push-cert), stale token
 *  (410), no push outcome recorded, not connected since the last push or
 *  since commands were queued, a command stuck at the head of the queue
 *  (NotNow tally, delivered but unanswered), silent for long, the device's
 *  identity certificate expired or near expiry, its clock skewed (both as
 *  measured by the gateway on its signed requests). Without an id:
 *  the fleet in a few lines. docs/inventory.md "Doctor".
 *
 *  The diagnosis is a pure function of the facts (unit-tested in
 *  cli_doctor_test.c); findings are the caller's (fixed array).
 */
#ifndef CLI_DOCTOR_H
#define CLI_DOCTOR_H

#include "cli.h"

#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>

typedef enum { CLI_DOC_INFO = 0, CLI_DOC_WARN = 1, CLI_DOC_FAIL = 2 } cli_doc_level_t;

typedef struct {
    cli_doc_level_t level;
    const char *code; //  stable tag: not_activated, checked_out, push_cert_expired, ...
    char text[512];   //  one sentence: the cause and what to do next
} cli_doc_finding_t;

typedef struct {
    int64_t now_ms;               //  the store's clock
    unsigned notnow_limit;        //  NotNow answers that make a command "stuck" (0 = never)
    int64_t delivered_timeout_ms; //  delivered and unanswered for this long = stuck
    int64_t silent_ms;            //  not seen for this long = silent (0 = never)
    const char *push_topic;       //  the push certificate's topic (UID), NULL = unknown
    int64_t push_not_after_ms;    //  its expiry, 0 = unknown
    int64_t identity_warn_ms;     //  identity certificate expiring this soon = WARN (0 = 30 days)
    int64_t skew_max_s;           //  |device clock - server clock| beyond this = WARN (0 = 300)
} cli_doc_opts_t;

#define CLI_DOC_MAX 16

//  Findings for one enrollment's facts (the DOCTOR_REPLY.device map) into
//  out[0..max); returns how many. Problems first, in the order a silent
//  device should be checked; "ok" alone when nothing is wrong.
int cli_doctor_diagnose(const msgpack_object *dev, const cli_doc_opts_t *o, cli_doc_finding_t *out,
                        int max);

//  The fleet summary (DOCTOR_REPLY.fleet) as a few lines. Returns the number
//  of enrollments needing attention.
long long cli_doctor_fleet(FILE *out, const msgpack_object *fleet, const cli_doc_opts_t *o);

//  Read a push certificate (PEM): its topic (subject UID) into topic and its
//  expiry. 0 / -1 (message printed).
int cli_doctor_push_cert(const char *path, char *topic, size_t size, int64_t *not_after_ms);

extern const pm_opt_t cli_doctor_opts[];
int cli_doctor_run(cli_ctx_t *ctx);

#endif
