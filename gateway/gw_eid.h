/*  gw_eid — enrollment ids for the gateway (picomdm-gateway).
 *
 *  Every check-in and command-loop request names its enrollment with a few
 *  plist keys (Apple schema, mdm/checkin/ *.yaml): UDID, EnrollmentID (User
 *  Enrollment, BYOD), UserID / UserShortName (macOS user channel, Shared iPad)
 *  and EnrollmentUserID (the user channel of a User Enrollment). The gateway
 *  collapses them into one id and a kind, the key the back end uses:
 *
 *    UDID only                        -> "<UDID>"                       device
 *    UDID + UserID                    -> "<UDID>:<UserID>"              user (macOS)
 *    UDID + UserID + UserShortName,
 *           no UserLongName           -> "<UDID>:<UserID>"              shared-ipad-user
 *    UDID + UserID FFFFFFFF-...-FFFF  -> "<UDID>:<UserShortName>"       shared-ipad-user
 *    EnrollmentID only                -> "<EnrollmentID>"               user-enrollment
 *    EnrollmentID + EnrollmentUserID  -> "<EnrollmentID>:<EnrollmentUserID>"
 *                                                                       user-enrollment-user
 *
 *  The macOS user channel always carries UserLongName (required there,
 *  "macOS only" in tokenupdate.yaml, declarativemanagement.yaml,
 *  gettoken.yaml); the Shared iPad user channel carries UserShortName (its
 *  Managed Apple Account) and never UserLongName. When a Shared iPad user is
 *  not authenticated, UserID is FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF for
 *  every user, so it cannot tell users apart and UserShortName does. (The
 *  kind is a label; the id does not depend on the macOS/Shared iPad guess.)
 *  Pure functions, no allocation.
 */
#ifndef GW_EID_H
#define GW_EID_H

#include <stddef.h>

#define GW_EID_PART_MAX 128                  //  longest accepted key value
#define GW_EID_MAX (2 * GW_EID_PART_MAX + 2) //  buffer size for an id

//  The Shared iPad UserID sentinel.
#define GW_EID_SHARED_IPAD_USERID "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"

typedef enum {
    GW_EID_DEVICE = 0,
    GW_EID_USER,
    GW_EID_USER_ENROLLMENT,
    GW_EID_USER_ENROLLMENT_USER,
    GW_EID_SHARED_IPAD_USER
} gw_eid_kind_t;

//  The plist keys; NULL or "" = absent. Borrowed, not kept.
typedef struct {
    const char *udid;
    const char *user_id;
    const char *user_short_name;
    const char *user_long_name;
    const char *enrollment_id;
    const char *enrollment_user_id;
} gw_eid_keys_t;

//  Derive the id into eid[size] (size >= GW_EID_MAX is always enough) and
//  the kind. Returns 0, or -1 with a one-line reason in err (no id key, a key
//  too long or with control characters or ':', Shared iPad without
//  UserShortName...).
int gw_eid_derive(const gw_eid_keys_t *keys, char *eid, size_t size, gw_eid_kind_t *kind, char *err,
                  size_t errlen);

//  "device", "user", "user-enrollment", "user-enrollment-user", "shared-ipad-user".
const char *gw_eid_kind_name(gw_eid_kind_t kind);

#endif
