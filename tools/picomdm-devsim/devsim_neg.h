/*  devsim_neg — negative tests of bin/picomdm-devsim: requests a server MUST
 *  reject. --spoof sends a check-in whose signature is wrong in one way
 *  (unsigned, wrong CA, expired, self-signed, tampered body, two signers,
 *  zero signers, garbage base64, another device's certificate);
 *  --malformed sends a correctly signed body that is bad (truncated, deeply
 *  nested, oversized, binary garbage, wrong-typed keys). Each request prints
 *  the HTTP status received; 2xx means the server accepted what it should
 *  have rejected.
 */
#ifndef DEVSIM_NEG_H
#define DEVSIM_NEG_H

#include "devsim_dev.h"
#include "devsim_ident.h"
#include "devsim_run.h"

//  Exit codes of a negative test.
enum {
    DEVSIM_NEG_REJECTED = 0, //  every request was refused (4xx)
    DEVSIM_NEG_ACCEPTED = 1, //  the server accepted a bad request (a security defect)
    DEVSIM_NEG_SETUP = 2,    //  the test could not be set up (options, CA missing)
    DEVSIM_NEG_TRANSPORT = 3 //  no HTTP answer at all, or a 5xx
};

//  Names, NULL-terminated (for --help and validation).
extern const char *const devsim_neg_spoofs[];
extern const char *const devsim_neg_malformed[];

//  ca: the device CA the server trusts (needed by expired, two-signers, another;
//  may be NULL otherwise). dev: a fresh device, with an identity unless the
//  variant makes its own. Returns one of the codes above.
int devsim_neg_spoof(const devsim_run_opts_t *o, const char *variant, const devsim_ca_t *ca,
                     devsim_dev_t *dev, devsim_key_t kt, uint64_t seed);
int devsim_neg_malformed_run(const devsim_run_opts_t *o, const char *variant, devsim_dev_t *dev);

#endif
