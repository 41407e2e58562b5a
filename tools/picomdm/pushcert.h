/*  pushcert — `picomdm pushcert ...`: the MDM push certificate's life cycle
 *  (docs/push.md, "Push certificate").
 *      new          a key and a CSR for the customer (the MDM operator)
 *      vendor-sign  sign a customer CSR with the MDM vendor certificate and
 *                   write the request Apple's portal (identity.apple.com)
 *                   accepts: a plist with PushCertRequestCSR,
 *                   PushCertCertificateChain and PushCertSignature,
 *                   base64-encoded as a whole
 *      show FILE    topic, subject, issuer, validity, key/certificate match
 *      install FILE copy a new certificate (and key) to the configured place;
 *                   refuses another topic than the installed one (--force)
 *  Uses the pusher's certificate module (pusher/push_cert.c).
 */
#ifndef PUSHCERT_H
#define PUSHCERT_H

#include "cli.h"
#include "pm_cfg.h"

extern const pm_opt_t pushcert_opts[];

//  Run `picomdm pushcert <verb> ...`. Returns a CLI_EXIT_* code.
int pushcert_run(cli_ctx_t *ctx);

#endif
