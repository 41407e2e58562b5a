/*  devsim_answer — how a simulated device answers MDM commands (picomdm-devsim).
 *
 *  Input: the plist a server sent on the ServerURL ({CommandUUID, Command:
 *  {RequestType, ...}}). Output: the report the device PUTs back, with
 *  Apple's response keys for that RequestType (mdm/commands/<file>.yaml,
 *  `responsekeys`) inside the common envelope (Status, CommandUUID, UDID or
 *  EnrollmentID, user keys on a user channel). Commands change the device's
 *  state where a real device would (InstallProfile/RemoveProfile ->
 *  ProfileList, Settings DeviceName, DeviceLock, EraseDevice -> un-enrolled).
 *  Unsupported RequestTypes get Status Error with an ErrorChain; commands
 *  missing a required key get CommandFormatError. With a NotNow rate the
 *  device sometimes answers NotNow instead (and remembers the CommandUUID, so
 *  a re-offer in the same session is reported as a server violation).
 */
#ifndef DEVSIM_ANSWER_H
#define DEVSIM_ANSWER_H

#include "devsim_dev.h"

#include <plist/plist.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct {
    double notnow_rate;          //  0..1: chance to answer NotNow
    int apps;                    //  InstalledApplicationList size
    const unsigned char *ca_der; //  CA certificate for CertificateList (may be NULL)
    size_t ca_derlen;
} devsim_answer_opts_t;

typedef struct {
    char request_type[64]; //  "" if the command had none
    char uuid[64];         //  CommandUUID ("" if none)
    const char *status;    //  Acknowledged, Error, CommandFormatError, NotNow
    bool violation;        //  a NotNow'd command came back in the same session
    bool stop;             //  the device ends the session after PUTting this (EraseDevice,
                           //  or a reply it cannot answer at all)
} devsim_answer_info_t;

//  The RequestTypes a simulated device executes (others get Status Error).
extern const char *const devsim_answer_supported[];

//  Answer one command. Returns the report to PUT (caller frees with
//  plist_free); never NULL for a non-NULL cmd. Updates dev's state.
plist_t devsim_answer(devsim_dev_t *dev, plist_t cmd, const devsim_answer_opts_t *o,
                      devsim_answer_info_t *info);

//  A sample command of `request_type` with plausible request keys (for
//  --print and tests). Caller frees.
plist_t devsim_answer_sample_command(const char *request_type);

#endif
