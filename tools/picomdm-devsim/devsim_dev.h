/*  devsim_dev — one simulated enrollment (a device channel, or a user channel
 *  of a Mac / Shared iPad / User Enrollment Mac) for bin/picomdm-devsim: its
 *  identifiers, its identity certificate, the state a real device keeps
 *  (installed profiles, push token, un-enrolled after EraseDevice, NotNow
 *  bookkeeping), and the check-in messages it sends (Authenticate,
 *  TokenUpdate, CheckOut) and the envelope of its command-loop reports.
 *
 *  The struct is public on purpose: the engine (devsim_run), the answers
 *  (devsim_answer) and the negative tests (devsim_neg) all read and update
 *  the same device state, and getters for forty fields would only hide that.
 *  Message shapes follow Apple's schema: mdm/checkin/authenticate.yaml,
 *  tokenupdate.yaml, checkout.yaml.
 */
#ifndef DEVSIM_DEV_H
#define DEVSIM_DEV_H

#include "devsim_ident.h"

#include <plist/plist.h>
#include <stdbool.h>
#include <stdint.h>

//  What --kind names. Each kind is a device channel, some add a user channel.
typedef enum {
    DEVSIM_IPHONE = 0,
    DEVSIM_IPAD,
    DEVSIM_MAC,         //  device channel only
    DEVSIM_MAC_USER,    //  Mac + macOS user channel (UserID, UserLongName, UserShortName)
    DEVSIM_UE,          //  User Enrollment iPhone (EnrollmentID, no UDID)
    DEVSIM_UE_MAC_USER, //  User Enrollment Mac + its user channel (EnrollmentUserID)
    DEVSIM_SHARED_IPAD, //  Shared iPad + one Managed Apple ID user channel
    DEVSIM_KIND_COUNT
} devsim_kind_t;

//  "iphone", "ipad", "mac", "mac-user", "ue", "ue-mac-user", "shared-ipad".
const char *devsim_kind_name(devsim_kind_t k);
//  -1 if unknown; "mix" is handled by the caller.
int devsim_kind_parse(const char *name);

#define DEVSIM_MAX_TRACK 32 //  CommandUUIDs remembered per channel for NotNow checks

typedef struct devsim_dev devsim_dev_t;
struct devsim_dev {
    int index;          //  0..N-1 in a run
    devsim_kind_t kind; //  what the whole device is
    bool is_mac, is_ipad, is_phone, user_enrollment, shared_ipad;
    bool user_channel;     //  this object is a user channel
    devsim_dev_t *parent;  //  user channel: its device channel (borrowed)
    devsim_dev_t *user;    //  device channel: its user channel (owned), or NULL
    devsim_ident_t *ident; //  device channel owns it; a user channel borrows the parent's

    char udid[48], enrollment_id[48], enrollment_user_id[48];
    char serial[16], imei[24], meid[24];
    char model[32], model_name[32], product_name[32], model_number[16];
    char os_version[16], build_version[16], device_name[64];
    char user_id[48], user_short[64], user_long[64];
    char topic[128];
    char wifi_mac[18], bt_mac[18];

    unsigned char token[32];
    char push_magic[40];
    unsigned char unlock_token[48];

    //  State a device keeps.
    plist_t profiles; //  array of ProfileList items (ProfileList response shape)
    bool enrolled;    //  after TokenUpdate succeeded
    bool erased;      //  after EraseDevice: behaves as un-enrolled, stops checking in
    bool locked;
    int session; //  command-loop sessions started

    //  NotNow bookkeeping: a NotNow'd command must come back in a LATER session.
    char notnow_now[DEVSIM_MAX_TRACK][40]; //  said NotNow in the current session
    int n_notnow_now;
    char notnow_wait[DEVSIM_MAX_TRACK][40]; //  said NotNow earlier, not re-offered yet
    int n_notnow_wait;
    long notnow_sent, notnow_reoffered, notnow_violations;
};

//  A device of `kind` number `index`; identifiers derive from (seed, index) so
//  runs are repeatable. `topic` is the push topic (com.apple.mgmt.External.*).
//  A user channel is created too where the kind has one (dev->user).
//  The identity is attached later with devsim_dev_set_ident.
devsim_dev_t *devsim_dev_new(devsim_kind_t kind, int index, uint64_t seed, const char *topic);
//  Frees the device, its user channel and its identity. Safe twice.
void devsim_dev_destroy(devsim_dev_t **dev);
//  Takes ownership of *id (device channel; the user channel borrows it).
void devsim_dev_set_ident(devsim_dev_t *dev, devsim_ident_t **id);
//  The identity used to sign this channel's requests.
devsim_ident_t *devsim_dev_ident(const devsim_dev_t *dev);
//  The name a certificate for this device should carry (UDID, or EnrollmentID).
const char *devsim_dev_cn(const devsim_dev_t *dev);
//  A short id for logs: UDID / EnrollmentID, plus ":user" ids on a user channel.
const char *devsim_dev_id(const devsim_dev_t *dev, char *buf, size_t size);

//  Check-in messages (caller frees with plist_free).
plist_t devsim_dev_authenticate(const devsim_dev_t *dev);
plist_t devsim_dev_tokenupdate(const devsim_dev_t *dev);
plist_t devsim_dev_checkout(const devsim_dev_t *dev);
//  A command-loop report: the channel's envelope (UDID or EnrollmentID, user
//  keys on a user channel) with Status and, unless NULL, CommandUUID.
plist_t devsim_dev_report(const devsim_dev_t *dev, const char *status, const char *cmd_uuid);

//  NotNow bookkeeping, called by the session loop.
void devsim_dev_session_begin(devsim_dev_t *dev);
//  A command arrived: returns true if it was NotNow'd earlier in THIS session
//  (a server violation; counted). Removes it from the waiting list if it was
//  NotNow'd in an earlier session (counted as re-offered).
bool devsim_dev_command_seen(devsim_dev_t *dev, const char *uuid);
//  Whether the device may say NotNow now (room to remember it).
bool devsim_dev_can_notnow(const devsim_dev_t *dev);
void devsim_dev_notnow(devsim_dev_t *dev, const char *uuid);

//  The run-wide pseudo-random generator (xorshift64*), seeded once.
void devsim_rand_seed(uint64_t seed);
uint64_t devsim_rand(void);
//  Uniform in [0,1).
double devsim_rand01(void);
//  A random UUID string (upper case, 36 chars + NUL) into buf[37+].
void devsim_rand_uuid(char *buf, size_t size);

#endif
