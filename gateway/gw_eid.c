/*  gw_eid — enrollment id derivation. See gw_eid.h for the table. */
#include "gw_eid.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static bool s_present(const char *s)
{
    return s && *s;
}

//  A key value usable inside an id: bounded, printable, no ':' (our separator).
static int s_check(const char *what, const char *v, char *err, size_t errlen)
{
    size_t n = strlen(v);
    if (n > GW_EID_PART_MAX) {
        snprintf(err, errlen, "%s is longer than %d bytes", what, GW_EID_PART_MAX);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c < 0x20 || c == 0x7f || c == ':') {
            snprintf(err, errlen, "%s contains a control character or ':'", what);
            return -1;
        }
    }
    return 0;
}

static int s_join(char *eid, size_t size, const char *a, const char *b, char *err, size_t errlen)
{
    //  a or a:b, copied rather than formatted (no snprintf per request)
    size_t la = strlen(a), lb = b ? strlen(b) : 0, n = la + (b ? 1 + lb : 0);
    if (n >= size) {
        snprintf(err, errlen, "enrollment id does not fit in %zu bytes", size);
        return -1;
    }
    memcpy(eid, a, la);
    if (b) {
        eid[la] = ':';
        memcpy(eid + la + 1, b, lb);
    }
    eid[n] = '\0';
    return 0;
}

int gw_eid_derive(const gw_eid_keys_t *k, char *eid, size_t size, gw_eid_kind_t *kind, char *err,
                  size_t errlen)
{
    if (size)
        eid[0] = '\0';
    if (s_present(k->udid)) {
        if (s_check("UDID", k->udid, err, errlen) < 0)
            return -1;
        if (!s_present(k->user_id)) {
            if (s_present(k->user_short_name)) {
                snprintf(err, errlen, "UserShortName without UserID: cannot tell the channel");
                return -1;
            }
            *kind = GW_EID_DEVICE;
            return s_join(eid, size, k->udid, NULL, err, errlen);
        }
        if (strcmp(k->user_id, GW_EID_SHARED_IPAD_USERID) == 0) {
            if (!s_present(k->user_short_name)) {
                snprintf(err, errlen, "Shared iPad user channel without UserShortName");
                return -1;
            }
            if (s_check("UserShortName", k->user_short_name, err, errlen) < 0)
                return -1;
            *kind = GW_EID_SHARED_IPAD_USER;
            return s_join(eid, size, k->udid, k->user_short_name, err, errlen);
        }
        if (s_check("UserID", k->user_id, err, errlen) < 0)
            return -1;
        *kind = s_present(k->user_short_name) && !s_present(k->user_long_name)
                    ? GW_EID_SHARED_IPAD_USER
                    : GW_EID_USER;
        return s_join(eid, size, k->udid, k->user_id, err, errlen);
    }
    if (s_present(k->enrollment_id)) {
        if (s_check("EnrollmentID", k->enrollment_id, err, errlen) < 0)
            return -1;
        if (!s_present(k->enrollment_user_id)) {
            *kind = GW_EID_USER_ENROLLMENT;
            return s_join(eid, size, k->enrollment_id, NULL, err, errlen);
        }
        if (s_check("EnrollmentUserID", k->enrollment_user_id, err, errlen) < 0)
            return -1;
        *kind = GW_EID_USER_ENROLLMENT_USER;
        return s_join(eid, size, k->enrollment_id, k->enrollment_user_id, err, errlen);
    }
    snprintf(err, errlen, "message has neither UDID nor EnrollmentID");
    return -1;
}

const char *gw_eid_kind_name(gw_eid_kind_t kind)
{
    switch (kind) {
    case GW_EID_DEVICE:
        return "device";
    case GW_EID_USER:
        return "user";
    case GW_EID_USER_ENROLLMENT:
        return "user-enrollment";
    case GW_EID_USER_ENROLLMENT_USER:
        return "user-enrollment-user";
    case GW_EID_SHARED_IPAD_USER:
        return "shared-ipad-user";
    }
    return "unknown";
}
