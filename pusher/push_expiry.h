/*  push_expiry — the pusher's periodic push-certificate validity check
 *  (bin/picomdm-pusher): run hourly and after every reload, it says what to
 *  do about the certificate in use at a given time (the clock is injected
 *  so the rules can be tested):
 *
 *    valid, more than 30 days left -> nothing (resume if it had stopped us)
 *    expiring (30 days or fewer)   -> PUSH_EXPIRY_WARN once per day left
 *                                     (push.cert_expiring event + warning)
 *    expired or not yet valid      -> PUSH_EXPIRY_STOP once (push.cert_expired
 *                                     event + alert): pushes are held, since
 *                                     APNs would refuse every one
 *    valid again (a new certificate
 *    or notBefore reached)         -> PUSH_EXPIRY_RESUME: held pushes go out
 *
 *  The state is a plain value owned by the caller (no allocation).
 */
#ifndef PUSH_EXPIRY_H
#define PUSH_EXPIRY_H

#include "push_cert.h"

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

enum {
    PUSH_EXPIRY_WARN = 1,  //  raise push.cert_expiring (msg says when)
    PUSH_EXPIRY_STOP = 2,  //  stop pushing for the topic, raise push.cert_expired
    PUSH_EXPIRY_RESUME = 4 //  the certificate is usable again: resume
};

typedef struct {
    bool stopped;      //  we stopped pushing because of the validity window
    int last_warn_day; //  days-left value of the last warning (-1 = none yet)
} push_expiry_t;

void push_expiry_init(push_expiry_t *e);

//  Check `cert` at `now`. Returns a mask of PUSH_EXPIRY_* actions (0 = none)
//  and, when it is not 0, a one-line message with the next step in msg.
int push_expiry_check(push_expiry_t *e, const push_cert_t *cert, time_t now, char *msg,
                      size_t msglen);

#endif
