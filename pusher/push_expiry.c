/*  push_expiry — periodic push-certificate validity rules. See push_expiry.h.
 */
#include "push_expiry.h"

#include <stdio.h>

void push_expiry_init(push_expiry_t *e)
{
    e->stopped = false;
    e->last_warn_day = -1;
}

int push_expiry_check(push_expiry_t *e, const push_cert_t *cert, time_t now, char *msg,
                      size_t msglen)
{
    int days = 0, act = 0;
    if (msglen)
        msg[0] = 0;
    push_cert_state_t st = push_cert_state(cert, now, &days);
    if (st == PUSH_CERT_EXPIRED || st == PUSH_CERT_NOT_YET_VALID) {
        if (e->stopped)
            return 0;
        e->stopped = true;
        e->last_warn_day = -1;
        snprintf(msg, msglen,
                 "the push certificate for %s is %s (notAfter %ld, notBefore %ld): APNs refuses "
                 "it, so pushes are held; renew it at identity.apple.com with the same Apple ID "
                 "and install it with `picomdm pushcert install` (the pusher picks it up)",
                 push_cert_topic(cert), push_cert_state_name(st), (long)push_cert_not_after(cert),
                 (long)push_cert_not_before(cert));
        return PUSH_EXPIRY_STOP;
    }
    if (e->stopped) {
        e->stopped = false;
        act |= PUSH_EXPIRY_RESUME;
        snprintf(msg, msglen, "the push certificate for %s is valid again: held pushes go out",
                 push_cert_topic(cert));
    }
    if (st == PUSH_CERT_EXPIRING) {
        if (days != e->last_warn_day) {
            e->last_warn_day = days;
            act |= PUSH_EXPIRY_WARN;
            snprintf(msg, msglen,
                     "the push certificate for %s expires in %d day%s (notAfter %ld): renew it "
                     "at identity.apple.com with the same Apple ID (the topic stays) and install "
                     "it with `picomdm pushcert install` before devices become unreachable",
                     push_cert_topic(cert), days, days == 1 ? "" : "s",
                     (long)push_cert_not_after(cert));
        }
    } else {
        e->last_warn_day = -1;
    }
    return act;
}
