/*  devsim_dev — one simulated enrollment and its check-in messages (see devsim_dev.h). */
#include "devsim_dev.h"
#include "devsim_plist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *s_kind_names[DEVSIM_KIND_COUNT] = {
    "iphone", "ipad", "mac", "mac-user", "ue", "ue-mac-user", "shared-ipad"};

const char *devsim_kind_name(devsim_kind_t k)
{
    return k < DEVSIM_KIND_COUNT ? s_kind_names[k] : "?";
}

int devsim_kind_parse(const char *name)
{
    for (int i = 0; name && i < DEVSIM_KIND_COUNT; i++)
        if (strcmp(name, s_kind_names[i]) == 0)
            return i;
    return -1;
}

// ---- random numbers ------------------------------------------------------------

static uint64_t s_rng = 0x9E3779B97F4A7C15ULL;

void devsim_rand_seed(uint64_t seed)
{
    s_rng = seed ? seed : 0x9E3779B97F4A7C15ULL;
}

uint64_t devsim_rand(void)
{
    s_rng ^= s_rng >> 12;
    s_rng ^= s_rng << 25;
    s_rng ^= s_rng >> 27;
    return s_rng * 0x2545F4914F6CDD1DULL;
}

double devsim_rand01(void)
{
    return (double)(devsim_rand() >> 11) / 9007199254740992.0;
}

static void s_uuid_from(char *buf, size_t size, uint64_t a, uint64_t b)
{
    snprintf(buf, size, "%08X-%04X-4%03X-%04X-%012llX", (unsigned)(a >> 32),
             (unsigned)((a >> 16) & 0xffff), (unsigned)(a & 0xfff),
             (unsigned)(0x8000 | ((b >> 48) & 0x3fff)),
             (unsigned long long)(b & 0xffffffffffffULL));
}

void devsim_rand_uuid(char *buf, size_t size)
{
    uint64_t a = devsim_rand(), b = devsim_rand();
    s_uuid_from(buf, size, a, b);
}

//  splitmix64: identifiers derive from (seed, index, purpose), independent of
//  the order in which anything else draws random numbers.
static uint64_t s_mix(uint64_t seed, uint64_t index, uint64_t what)
{
    uint64_t z = seed + index * 0x9E3779B97F4A7C15ULL + what * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void s_serial(char *buf, size_t size, uint64_t r)
{
    //  Apple's randomised 10-character serials (2021+): no vowels, no 0/1 confusion.
    static const char alpha[] = "BCDFGHJKLMNPQRTVWXYZ23456789";
    size_t n = sizeof alpha - 1, i;
    for (i = 0; i < 10 && i + 1 < size; i++) {
        buf[i] = alpha[r % n];
        r /= n;
        if (r == 0)
            r = 0x5DEECE66DULL * (i + 7);
    }
    buf[i] = 0;
}

static void s_mac_addr(char *buf, size_t size, uint64_t r)
{
    snprintf(buf, size, "%02x:%02x:%02x:%02x:%02x:%02x", 0xa4, 0x83, 0xe7, (unsigned)(r & 0xff),
             (unsigned)((r >> 8) & 0xff), (unsigned)((r >> 16) & 0xff));
}

#define COPY(dst, src) snprintf((dst), sizeof(dst), "%s", (src))

devsim_dev_t *devsim_dev_new(devsim_kind_t kind, int index, uint64_t seed, const char *topic)
{
    if (kind >= DEVSIM_KIND_COUNT)
        return NULL;
    devsim_dev_t *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->index = index;
    d->kind = kind;
    d->is_mac = kind == DEVSIM_MAC || kind == DEVSIM_MAC_USER || kind == DEVSIM_UE_MAC_USER;
    d->is_ipad = kind == DEVSIM_IPAD || kind == DEVSIM_SHARED_IPAD;
    d->is_phone = kind == DEVSIM_IPHONE || kind == DEVSIM_UE;
    d->user_enrollment = kind == DEVSIM_UE || kind == DEVSIM_UE_MAC_USER;
    d->shared_ipad = kind == DEVSIM_SHARED_IPAD;
    COPY(d->topic, topic ? topic : "com.apple.mgmt.External.00000000-0000-0000-0000-000000000000");
    uint64_t u = s_mix(seed, (uint64_t)index, 1);
    if (d->is_mac)
        s_uuid_from(d->udid, sizeof d->udid, u, s_mix(seed, (uint64_t)index, 2));
    else //  iOS 12+ UDID shape: 8 hex, dash, 16 hex
        snprintf(d->udid, sizeof d->udid, "%08X-%016llX", (unsigned)(0x00008000 | (u & 0x1ff)),
                 (unsigned long long)s_mix(seed, (uint64_t)index, 2));
    if (d->user_enrollment) {
        s_uuid_from(d->enrollment_id, sizeof d->enrollment_id, s_mix(seed, (uint64_t)index, 3),
                    s_mix(seed, (uint64_t)index, 4));
        d->udid[0] = 0; //  User Enrollment never reveals the UDID
    }
    s_serial(d->serial, sizeof d->serial, s_mix(seed, (uint64_t)index, 5));
    uint64_t im = s_mix(seed, (uint64_t)index, 6);
    if (d->is_mac) {
        COPY(d->product_name, "Mac14,2");
        COPY(d->model, "Mac14,2");
        COPY(d->model_name, "MacBook Air");
        COPY(d->model_number, "Z15S");
        COPY(d->os_version, "14.5");
        COPY(d->build_version, "23F79");
        snprintf(d->device_name, sizeof d->device_name, "Sim MacBook Air %04d", index);
    } else if (d->is_ipad) {
        COPY(d->product_name, "iPad13,18");
        COPY(d->model, "MPQ03LL/A");
        COPY(d->model_name, "iPad");
        COPY(d->model_number, "MPQ03");
        COPY(d->os_version, "17.5.1");
        COPY(d->build_version, "21F90");
        snprintf(d->device_name, sizeof d->device_name, "Sim iPad %04d", index);
    } else {
        COPY(d->product_name, "iPhone15,2");
        COPY(d->model, "MQ0T3LL/A");
        COPY(d->model_name, "iPhone");
        COPY(d->model_number, "MQ0T3");
        COPY(d->os_version, "17.5.1");
        COPY(d->build_version, "21F90");
        snprintf(d->device_name, sizeof d->device_name, "Sim iPhone %04d", index);
        //  IMEI: TAC 35 + 12 digits as iOS prints it ("35 123456 789012 3").
        snprintf(d->imei, sizeof d->imei, "35 %06llu %06llu %llu",
                 (unsigned long long)(im % 1000000), (unsigned long long)((im / 1000000) % 1000000),
                 (unsigned long long)((im / 1000000000000ULL) % 10));
        snprintf(d->meid, sizeof d->meid, "35%012llX",
                 (unsigned long long)(im & 0xffffffffffffULL));
    }
    s_mac_addr(d->wifi_mac, sizeof d->wifi_mac, s_mix(seed, (uint64_t)index, 7));
    s_mac_addr(d->bt_mac, sizeof d->bt_mac, s_mix(seed, (uint64_t)index, 8));
    for (size_t i = 0; i < sizeof d->token; i += 8) {
        uint64_t r = s_mix(seed, (uint64_t)index, 100 + i);
        memcpy(d->token + i, &r, 8);
    }
    for (size_t i = 0; i + 8 <= sizeof d->unlock_token; i += 8) {
        uint64_t r = s_mix(seed, (uint64_t)index, 200 + i);
        memcpy(d->unlock_token + i, &r, 8);
    }
    s_uuid_from(d->push_magic, sizeof d->push_magic, s_mix(seed, (uint64_t)index, 9),
                s_mix(seed, (uint64_t)index, 10));
    d->profiles = plist_new_array();

    //  A real device lists its enrollment (MDM) profile.
    plist_t p = plist_new_dict();
    devsim_pl_str(p, "PayloadIdentifier", "com.picomdm.enrollment");
    devsim_pl_str(p, "PayloadUUID", "B2F3A4C5-0D1E-4F20-8A31-42536475A6B7");
    devsim_pl_int(p, "PayloadVersion", 1);
    devsim_pl_str(p, "PayloadDisplayName", "MDM Enrollment");
    devsim_pl_str(p, "PayloadOrganization", "PicoMDM");
    devsim_pl_bool(p, "PayloadRemovalDisallowed", false);
    devsim_pl_bool(p, "IsManaged", true);
    plist_t content = plist_new_array();
    plist_t item = plist_new_dict();
    devsim_pl_str(item, "PayloadType", "com.apple.mdm");
    devsim_pl_int(item, "PayloadVersion", 1);
    devsim_pl_str(item, "PayloadIdentifier", "com.picomdm.enrollment.mdm");
    devsim_pl_str(item, "PayloadUUID", "C3A4B5D6-1E2F-4031-9B42-536475869708");
    plist_array_append_item(content, item);
    plist_dict_set_item(p, "PayloadContent", content);
    plist_array_append_item(d->profiles, p);

    //  The user channel, for the kinds that have one.
    if (kind == DEVSIM_MAC_USER || kind == DEVSIM_UE_MAC_USER || kind == DEVSIM_SHARED_IPAD) {
        devsim_dev_t *uc = calloc(1, sizeof *uc);
        if (!uc) {
            devsim_dev_destroy(&d);
            return NULL;
        }
        *uc = *d;
        uc->user = NULL;
        uc->ident = NULL;
        uc->user_channel = true;
        uc->parent = d;
        uc->profiles = plist_new_array(); //  user profiles: none yet
        s_uuid_from(uc->user_id, sizeof uc->user_id, s_mix(seed, (uint64_t)index, 11),
                    s_mix(seed, (uint64_t)index, 12));
        if (d->shared_ipad) {
            snprintf(uc->user_short, sizeof uc->user_short, "student%04d@appleid.example.org",
                     index);
        } else {
            snprintf(uc->user_short, sizeof uc->user_short, "user%04d", index);
            snprintf(uc->user_long, sizeof uc->user_long, "Sim User %04d", index);
        }
        if (d->user_enrollment) {
            s_uuid_from(uc->enrollment_user_id, sizeof uc->enrollment_user_id,
                        s_mix(seed, (uint64_t)index, 13), s_mix(seed, (uint64_t)index, 14));
            uc->user_id[0] = 0; //  User Enrollment: EnrollmentUserID instead of UserID
        }
        for (size_t i = 0; i < sizeof uc->token; i += 8) {
            uint64_t r = s_mix(seed, (uint64_t)index, 300 + i);
            memcpy(uc->token + i, &r, 8);
        }
        s_uuid_from(uc->push_magic, sizeof uc->push_magic, s_mix(seed, (uint64_t)index, 15),
                    s_mix(seed, (uint64_t)index, 16));
        d->user = uc;
    }
    return d;
}

void devsim_dev_destroy(devsim_dev_t **dp)
{
    if (!dp || !*dp)
        return;
    devsim_dev_t *d = *dp;
    if (d->user) {
        plist_free(d->user->profiles);
        free(d->user);
    }
    plist_free(d->profiles);
    devsim_ident_destroy(&d->ident);
    free(d);
    *dp = NULL;
}

void devsim_dev_set_ident(devsim_dev_t *dev, devsim_ident_t **id)
{
    devsim_ident_destroy(&dev->ident);
    dev->ident = *id;
    *id = NULL;
}

devsim_ident_t *devsim_dev_ident(const devsim_dev_t *dev)
{
    return dev->user_channel ? dev->parent->ident : dev->ident;
}

const char *devsim_dev_cn(const devsim_dev_t *dev)
{
    return dev->user_enrollment ? dev->enrollment_id : dev->udid;
}

const char *devsim_dev_id(const devsim_dev_t *dev, char *buf, size_t size)
{
    const char *base = devsim_dev_cn(dev);
    if (!dev->user_channel)
        snprintf(buf, size, "%s", base);
    else
        snprintf(buf, size, "%s:%s", base,
                 dev->enrollment_user_id[0] ? dev->enrollment_user_id : dev->user_id);
    return buf;
}

//  UDID or EnrollmentID, and the user keys of a user channel: the part every
//  message of this channel carries (tokenupdate.yaml, the response envelope).
static void s_ids(const devsim_dev_t *d, plist_t p, bool tokenupdate)
{
    if (d->user_enrollment)
        devsim_pl_str(p, "EnrollmentID", d->enrollment_id);
    else
        devsim_pl_str(p, "UDID", d->udid);
    if (!d->user_channel)
        return;
    if (d->enrollment_user_id[0])
        devsim_pl_str(p, "EnrollmentUserID", d->enrollment_user_id);
    if (d->user_id[0])
        devsim_pl_str(p, "UserID", d->user_id);
    if (d->user_short[0])
        devsim_pl_str(p, "UserShortName", d->user_short);
    if (d->is_mac) {
        devsim_pl_str(p, "UserLongName", d->user_long);
        if (tokenupdate)
            devsim_pl_bool(p, "NotOnConsole", false);
    }
}

plist_t devsim_dev_authenticate(const devsim_dev_t *d)
{
    plist_t p = plist_new_dict();
    devsim_pl_str(p, "MessageType", "Authenticate");
    devsim_pl_str(p, "Topic", d->topic);
    s_ids(d, p, false);
    devsim_pl_str(p, "OSVersion", d->os_version);
    devsim_pl_str(p, "BuildVersion", d->build_version);
    devsim_pl_str(p, "ProductName", d->product_name);
    if (d->is_mac) { //  DeviceName, Model, ModelName: macOS only (authenticate.yaml)
        devsim_pl_str(p, "DeviceName", d->device_name);
        devsim_pl_str(p, "Model", d->model);
        devsim_pl_str(p, "ModelName", d->model_name);
    }
    if (!d->user_enrollment) {
        devsim_pl_str(p, "SerialNumber", d->serial);
        if (d->is_phone) {
            devsim_pl_str(p, "IMEI", d->imei);
            devsim_pl_str(p, "MEID", d->meid);
        }
    }
    return p;
}

plist_t devsim_dev_tokenupdate(const devsim_dev_t *d)
{
    plist_t p = plist_new_dict();
    devsim_pl_str(p, "MessageType", "TokenUpdate");
    devsim_pl_str(p, "Topic", d->topic);
    s_ids(d, p, true);
    devsim_pl_data(p, "Token", d->token, sizeof d->token);
    devsim_pl_str(p, "PushMagic", d->push_magic);
    //  UnlockToken: iOS device channel, not on Shared iPad, not in User Enrollment.
    if (!d->is_mac && !d->user_channel && !d->shared_ipad && !d->user_enrollment)
        devsim_pl_data(p, "UnlockToken", d->unlock_token, sizeof d->unlock_token);
    //  AwaitingConfiguration: device channel (macOS: never on the user channel).
    if (!d->user_channel)
        devsim_pl_bool(p, "AwaitingConfiguration", false);
    return p;
}

plist_t devsim_dev_checkout(const devsim_dev_t *d)
{
    plist_t p = plist_new_dict();
    devsim_pl_str(p, "MessageType", "CheckOut");
    devsim_pl_str(p, "Topic", d->topic);
    s_ids(d, p, false);
    return p;
}

plist_t devsim_dev_report(const devsim_dev_t *d, const char *status, const char *cmd_uuid)
{
    plist_t p = plist_new_dict();
    s_ids(d, p, false);
    devsim_pl_str(p, "Status", status);
    if (cmd_uuid)
        devsim_pl_str(p, "CommandUUID", cmd_uuid);
    return p;
}

void devsim_dev_session_begin(devsim_dev_t *dev)
{
    //  Everything NotNow'd in the session that just ended now waits for a later one.
    for (int i = 0; i < dev->n_notnow_now && dev->n_notnow_wait < DEVSIM_MAX_TRACK; i++)
        memcpy(dev->notnow_wait[dev->n_notnow_wait++], dev->notnow_now[i], 40);
    dev->n_notnow_now = 0;
    dev->session++;
}

bool devsim_dev_command_seen(devsim_dev_t *dev, const char *uuid)
{
    for (int i = 0; i < dev->n_notnow_now; i++)
        if (strncmp(dev->notnow_now[i], uuid, 39) == 0) {
            dev->notnow_violations++;
            return true;
        }
    for (int i = 0; i < dev->n_notnow_wait; i++)
        if (strncmp(dev->notnow_wait[i], uuid, 39) == 0) {
            dev->notnow_reoffered++;
            memmove(dev->notnow_wait[i], dev->notnow_wait[i + 1],
                    (size_t)(dev->n_notnow_wait - i - 1) * 40);
            dev->n_notnow_wait--;
            break;
        }
    return false;
}

bool devsim_dev_can_notnow(const devsim_dev_t *dev)
{
    return dev->n_notnow_now < DEVSIM_MAX_TRACK &&
           dev->n_notnow_now + dev->n_notnow_wait < DEVSIM_MAX_TRACK;
}

void devsim_dev_notnow(devsim_dev_t *dev, const char *uuid)
{
    if (dev->n_notnow_now >= DEVSIM_MAX_TRACK)
        return;
    snprintf(dev->notnow_now[dev->n_notnow_now++], 40, "%s", uuid);
    dev->notnow_sent++;
}
