/*  devsim_answer — command answers of a simulated device (see devsim_answer.h).
 *  Response keys per command: Apple's mdm/commands/<file>.yaml `responsekeys`;
 *  devsim_answer_test.c checks every emitted key against them.
 */
#include "devsim_answer.h"
#include "devsim_plist.h"

#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *const devsim_answer_supported[] = {
    "DeviceInformation", "SecurityInfo",       "ProfileList",      "InstalledApplicationList",
    "CertificateList",   "InstallProfile",     "RemoveProfile",    "DeviceLock",
    "ClearPasscode",     "RestartDevice",      "ShutDownDevice",   "EraseDevice",
    "Settings",          "AvailableOSUpdates", "ScheduleOSUpdate", NULL};

//  Commands a user channel accepts (the schema's "userchannel" ones we implement).
static const char *const s_user_ok[] = {
    "DeviceInformation",        "ProfileList", "InstallProfile", "RemoveProfile", "CertificateList",
    "InstalledApplicationList", NULL};

static bool s_in(const char *const *list, const char *s)
{
    for (int i = 0; list[i]; i++)
        if (strcmp(list[i], s) == 0)
            return true;
    return false;
}

//  ErrorChain item as Apple sends it: ErrorCode, ErrorDomain,
//  LocalizedDescription, USEnglishDescription (first item = top-level error).
static plist_t s_error_item(int64_t code, const char *domain, const char *desc)
{
    plist_t e = plist_new_dict();
    devsim_pl_int(e, "ErrorCode", code);
    devsim_pl_str(e, "ErrorDomain", domain);
    devsim_pl_str(e, "LocalizedDescription", desc);
    devsim_pl_str(e, "USEnglishDescription", desc);
    return e;
}

static void s_error(plist_t resp, int64_t code, const char *domain, const char *desc)
{
    plist_t chain = plist_new_array();
    plist_array_append_item(chain, s_error_item(code, domain, desc));
    plist_dict_set_item(resp, "ErrorChain", chain);
    plist_dict_set_item(resp, "Status", plist_new_string("Error"));
}

// ---- DeviceInformation ------------------------------------------------------------

//  One query -> one key in QueryResponses. Returns false for queries this
//  device does not answer (unknown, or not on this platform): real devices
//  leave those out.
static bool s_query(const devsim_dev_t *d, const char *q, plist_t r)
{
    const devsim_dev_t *dc = d->user_channel ? d->parent : d; //  device facts
    bool ios = !dc->is_mac, ue = dc->user_enrollment;
#define IS(name) (strcmp(q, name) == 0)
    if (IS("UDID") && !ue)
        devsim_pl_str(r, q, dc->udid);
    else if (IS("DeviceName"))
        devsim_pl_str(r, q, dc->device_name);
    else if (IS("OSVersion"))
        devsim_pl_str(r, q, dc->os_version);
    else if (IS("BuildVersion"))
        devsim_pl_str(r, q, dc->build_version);
    else if (IS("ModelName"))
        devsim_pl_str(r, q, dc->model_name);
    else if (IS("Model"))
        devsim_pl_str(r, q, dc->model);
    else if (IS("ModelNumber"))
        devsim_pl_str(r, q, dc->model_number);
    else if (IS("ProductName"))
        devsim_pl_str(r, q, dc->product_name);
    else if (IS("SerialNumber") && !ue)
        devsim_pl_str(r, q, dc->serial);
    else if (IS("DeviceCapacity"))
        devsim_pl_real(r, q, dc->is_mac ? 494.38 : 119.07);
    else if (IS("AvailableDeviceCapacity"))
        devsim_pl_real(r, q, dc->is_mac ? 301.52 : 71.3 + (dc->index % 40));
    else if (IS("BatteryLevel"))
        devsim_pl_real(r, q, 0.5 + (double)(dc->index % 50) / 100.0);
    else if (IS("HasBattery") && dc->is_mac)
        devsim_pl_bool(r, q, true);
    else if (IS("IMEI") && dc->is_phone && !ue)
        devsim_pl_str(r, q, dc->imei);
    else if (IS("MEID") && dc->is_phone && !ue)
        devsim_pl_str(r, q, dc->meid);
    else if (IS("ModemFirmwareVersion") && dc->is_phone)
        devsim_pl_str(r, q, "1.60.02");
    else if (IS("CellularTechnology") && dc->is_phone)
        devsim_pl_int(r, q, 3);
    else if (IS("IsSupervised"))
        devsim_pl_bool(r, q, !ue);
    else if (IS("IsMultiUser") && ios)
        devsim_pl_bool(r, q, dc->shared_ipad);
    else if (IS("IsDeviceLocatorServiceEnabled") && ios)
        devsim_pl_bool(r, q, true);
    else if (IS("IsActivationLockEnabled"))
        devsim_pl_bool(r, q, false);
    else if (IS("IsDoNotDisturbInEffect") && ios)
        devsim_pl_bool(r, q, false);
    else if (IS("IsCloudBackupEnabled") && ios)
        devsim_pl_bool(r, q, true);
    else if (IS("LastCloudBackupDate") && ios)
        devsim_pl_date(r, q, time(NULL) - 3600L * (1 + dc->index % 48));
    else if (IS("AwaitingConfiguration") && !ue)
        devsim_pl_bool(r, q, false);
    else if (IS("iTunesStoreAccountIsActive"))
        devsim_pl_bool(r, q, true);
    else if (IS("TimeZone") && ios)
        devsim_pl_str(r, q, "Europe/Berlin");
    else if (IS("WiFiMAC"))
        devsim_pl_str(r, q, dc->wifi_mac);
    else if (IS("BluetoothMAC"))
        devsim_pl_str(r, q, dc->bt_mac);
    else if (IS("EthernetMAC") && dc->is_mac)
        devsim_pl_str(r, q, dc->wifi_mac);
    else if (IS("IsAppleSilicon") && dc->is_mac)
        devsim_pl_bool(r, q, true);
    else if (IS("SystemIntegrityProtectionEnabled") && dc->is_mac)
        devsim_pl_bool(r, q, true);
    else if ((IS("LocalHostName") || IS("HostName")) && dc->is_mac)
        devsim_pl_str(r, q, dc->device_name);
    else if (IS("IsMDMLostModeEnabled") && ios)
        devsim_pl_bool(r, q, false);
    else if (IS("PushToken"))
        devsim_pl_data(r, q, d->token, sizeof d->token);
    else if ((IS("DiagnosticSubmissionEnabled") || IS("AppAnalyticsEnabled")) && ios)
        devsim_pl_bool(r, q, false);
    else if ((IS("DataRoamingEnabled") || IS("VoiceRoamingEnabled") ||
              IS("PersonalHotspotEnabled") || IS("IsRoaming") || IS("IsNetworkTethered")) &&
             dc->is_phone)
        devsim_pl_bool(r, q, false);
    else if ((IS("CurrentCarrierNetwork") || IS("SIMCarrierNetwork") ||
              IS("SubscriberCarrierNetwork")) &&
             dc->is_phone)
        devsim_pl_str(r, q, "Telekom.de");
    else if ((IS("SIMMCC") || IS("SubscriberMCC") || IS("CurrentMCC")) && dc->is_phone)
        devsim_pl_str(r, q, "262");
    else if ((IS("SIMMNC") || IS("SubscriberMNC") || IS("CurrentMNC")) && dc->is_phone)
        devsim_pl_str(r, q, "01");
    else if (IS("CarrierSettingsVersion") && dc->is_phone)
        devsim_pl_str(r, q, "56.0");
    else if (IS("ICCID") && dc->is_phone && !ue)
        devsim_pl_str(r, q, "8949 0200 0012 3456 789");
    else if (IS("PhoneNumber") && dc->is_phone && !ue)
        devsim_pl_str(r, q, "+49 151 23456789");
    else if (IS("EASDeviceIdentifier") && ios)
        devsim_pl_str(r, q, "ABCDEFGHIJ0123456789KLMNOP");
    else if (IS("SupportsLOMDevice") && dc->is_mac)
        devsim_pl_bool(r, q, false);
    else if (IS("IsActivationLockSupported") && dc->is_mac)
        devsim_pl_bool(r, q, true);
    else if (IS("ProvisioningUDID") && dc->is_mac && !ue)
        devsim_pl_str(r, q, dc->udid);
    else if (IS("MaximumResidentUsers") && dc->shared_ipad)
        devsim_pl_int(r, q, 8);
    else if (IS("EstimatedResidentUsers") && dc->shared_ipad)
        devsim_pl_int(r, q, 8);
    else if (IS("ResidentUsers") && dc->shared_ipad)
        devsim_pl_int(r, q, 1);
    else if (IS("OSUpdateSettings") && dc->is_mac) {
        plist_t s = plist_new_dict();
        devsim_pl_bool(s, "AutoCheckEnabled", true);
        devsim_pl_bool(s, "BackgroundDownloadEnabled", true);
        devsim_pl_bool(s, "AutomaticAppInstallationEnabled", false);
        devsim_pl_bool(s, "AutomaticOSInstallationEnabled", false);
        devsim_pl_bool(s, "AutomaticSecurityUpdatesEnabled", true);
        plist_dict_set_item(r, q, s);
    } else
        return false;
#undef IS
    return true;
}

static int s_device_information(devsim_dev_t *d, plist_t c, plist_t resp)
{
    plist_t qs = devsim_pl_get(c, "Queries", PLIST_ARRAY);
    if (!qs)
        return -1; //  Queries is required (information.device.yaml)
    plist_t r = plist_new_dict();
    uint32_t n = plist_array_get_size(qs);
    for (uint32_t i = 0; i < n; i++) {
        plist_t q = plist_array_get_item(qs, i);
        if (plist_get_node_type(q) != PLIST_STRING)
            continue;
        uint64_t len = 0;
        const char *name = plist_get_string_ptr(q, &len);
        if (name && !plist_dict_get_item(r, name))
            s_query(d, name, r);
    }
    plist_dict_set_item(resp, "QueryResponses", r);
    return 0;
}

// ---- SecurityInfo -----------------------------------------------------------------

static void s_security_info(const devsim_dev_t *d, plist_t resp)
{
    const devsim_dev_t *dc = d->user_channel ? d->parent : d;
    plist_t s = plist_new_dict();
    plist_t ms = plist_new_dict();
    devsim_pl_bool(ms, "IsUserEnrollment", dc->user_enrollment);
    if (dc->is_mac) { //  the other ManagementStatus keys are macOS only
        devsim_pl_bool(ms, "EnrolledViaDEP", false);
        devsim_pl_bool(ms, "UserApprovedEnrollment", true);
        devsim_pl_bool(ms, "IsActivationLockManageable", false);
    }
    plist_dict_set_item(s, "ManagementStatus", ms);
    if (dc->is_mac) {
        devsim_pl_bool(s, "FDE_Enabled", true);
        devsim_pl_bool(s, "FDE_HasPersonalRecoveryKey", true);
        devsim_pl_bool(s, "FDE_HasInstitutionalRecoveryKey", false);
        devsim_pl_bool(s, "SystemIntegrityProtectionEnabled", true);
        devsim_pl_bool(s, "AuthenticatedRootVolumeEnabled", true);
        devsim_pl_bool(s, "RemoteDesktopEnabled", false);
        devsim_pl_bool(s, "IsRecoveryLockEnabled", false);
        devsim_pl_str(s, "BootstrapTokenAllowedForAuthentication", "allowed");
        devsim_pl_bool(s, "BootstrapTokenRequiredForSoftwareUpdate", false);
        devsim_pl_bool(s, "BootstrapTokenRequiredForKernelExtensionApproval", false);
        plist_t fw = plist_new_dict();
        devsim_pl_bool(fw, "FirewallEnabled", true);
        devsim_pl_bool(fw, "BlockAllIncoming", false);
        devsim_pl_bool(fw, "StealthMode", false);
        plist_dict_set_item(fw, "Applications", plist_new_array());
        plist_dict_set_item(s, "FirewallSettings", fw);
        plist_t sb = plist_new_dict();
        devsim_pl_str(sb, "SecureBootLevel", "full");
        devsim_pl_str(sb, "ExternalBootLevel", "disallowed");
        plist_dict_set_item(s, "SecureBoot", sb);
    } else {
        devsim_pl_int(s, "HardwareEncryptionCaps", 3);
        devsim_pl_bool(s, "PasscodePresent", true);
        devsim_pl_bool(s, "PasscodeCompliant", true);
        devsim_pl_bool(s, "PasscodeCompliantWithProfiles", true);
        devsim_pl_int(s, "PasscodeLockGracePeriodEnforced", 0);
        devsim_pl_int(s, "PasscodeLockGracePeriod", 0);
    }
    plist_dict_set_item(resp, "SecurityInfo", s);
}

// ---- ProfileList / InstallProfile / RemoveProfile -----------------------------------

static void s_profile_list(const devsim_dev_t *d, plist_t c, plist_t resp)
{
    bool managed_only = devsim_pl_get_bool(c, "ManagedOnly", false);
    plist_t out = plist_new_array();
    uint32_t n = plist_array_get_size(d->profiles);
    for (uint32_t i = 0; i < n; i++) {
        plist_t p = plist_array_get_item(d->profiles, i);
        if (managed_only && !devsim_pl_get_bool(p, "IsManaged", false))
            continue;
        plist_t item = plist_copy(p);
        if (d->is_mac) //  IsManaged: iOS only (profile.list.yaml)
            plist_dict_remove_item(item, "IsManaged");
        plist_array_append_item(out, item);
    }
    plist_dict_set_item(resp, "ProfileList", out);
}

static int s_find_profile(const devsim_dev_t *d, const char *ident)
{
    uint32_t n = plist_array_get_size(d->profiles);
    for (uint32_t i = 0; i < n; i++) {
        const char *id =
            devsim_pl_get_str(plist_array_get_item(d->profiles, i), "PayloadIdentifier");
        if (id && strcmp(id, ident) == 0)
            return (int)i;
    }
    return -1;
}

//  Payload is the .mobileconfig: an XML plist, or one wrapped in CMS
//  SignedData (signed profiles). The device only needs its content here.
static plist_t s_profile_parse(const char *data, size_t len)
{
    char err[128];
    if (len > 0 && (unsigned char)data[0] == 0x30) {
        plist_t root = NULL;
        BIO *b = BIO_new_mem_buf(data, (int)len);
        CMS_ContentInfo *cms = b ? d2i_CMS_bio(b, NULL) : NULL;
        ASN1_OCTET_STRING **content = cms ? CMS_get0_content(cms) : NULL;
        if (content && *content)
            root = devsim_pl_parse((const char *)ASN1_STRING_get0_data(*content),
                                   (size_t)ASN1_STRING_length(*content), err, sizeof err);
        CMS_ContentInfo_free(cms);
        BIO_free(b);
        ERR_clear_error();
        return root;
    }
    return devsim_pl_parse(data, len, err, sizeof err);
}

static int s_install_profile(devsim_dev_t *d, plist_t c, plist_t resp)
{
    const char *data;
    size_t len;
    if (!devsim_pl_get_data(c, "Payload", &data, &len))
        return -1;
    plist_t prof = s_profile_parse(data, len);
    const char *ident = devsim_pl_get_str(prof, "PayloadIdentifier");
    const char *uuid = devsim_pl_get_str(prof, "PayloadUUID");
    const char *type = devsim_pl_get_str(prof, "PayloadType");
    if (!ident || !uuid || !type || strcmp(type, "Configuration") != 0) {
        s_error(resp, 1000, "MCProfileErrorDomain",
                "The profile is malformed: it is not a Configuration plist with "
                "PayloadIdentifier and PayloadUUID.");
        plist_free(prof);
        return 0;
    }
    plist_t item = plist_new_dict();
    devsim_pl_str(item, "PayloadIdentifier", ident);
    devsim_pl_str(item, "PayloadUUID", uuid);
    plist_t v = devsim_pl_get(prof, "PayloadVersion", PLIST_UINT);
    devsim_pl_int(item, "PayloadVersion", 1);
    if (v)
        plist_dict_set_item(item, "PayloadVersion", plist_copy(v));
    const char *s;
    if ((s = devsim_pl_get_str(prof, "PayloadDisplayName")))
        devsim_pl_str(item, "PayloadDisplayName", s);
    if ((s = devsim_pl_get_str(prof, "PayloadOrganization")))
        devsim_pl_str(item, "PayloadOrganization", s);
    if ((s = devsim_pl_get_str(prof, "PayloadDescription")))
        devsim_pl_str(item, "PayloadDescription", s);
    devsim_pl_bool(item, "PayloadRemovalDisallowed",
                   devsim_pl_get_bool(prof, "PayloadRemovalDisallowed", false));
    devsim_pl_bool(item, "IsManaged", true);
    plist_t content = plist_new_array();
    plist_t pc = devsim_pl_get(prof, "PayloadContent", PLIST_ARRAY);
    uint32_t n = pc ? plist_array_get_size(pc) : 0;
    for (uint32_t i = 0; i < n; i++) {
        plist_t p = plist_array_get_item(pc, i);
        const char *pt = devsim_pl_get_str(p, "PayloadType");
        const char *pi = devsim_pl_get_str(p, "PayloadIdentifier");
        const char *pu = devsim_pl_get_str(p, "PayloadUUID");
        if (!pt || !pi || !pu)
            continue;
        plist_t ci = plist_new_dict();
        devsim_pl_str(ci, "PayloadType", pt);
        devsim_pl_str(ci, "PayloadIdentifier", pi);
        devsim_pl_str(ci, "PayloadUUID", pu);
        plist_t pv = devsim_pl_get(p, "PayloadVersion", PLIST_UINT);
        plist_dict_set_item(ci, "PayloadVersion", pv ? plist_copy(pv) : plist_new_uint(1));
        if ((s = devsim_pl_get_str(p, "PayloadDisplayName")))
            devsim_pl_str(ci, "PayloadDisplayName", s);
        plist_array_append_item(content, ci);
    }
    plist_dict_set_item(item, "PayloadContent", content);
    int at = s_find_profile(d, ident);
    if (at >= 0) //  same identifier: the new profile replaces the old one
        plist_array_remove_item(d->profiles, (uint32_t)at);
    plist_array_append_item(d->profiles, item);
    plist_free(prof);
    return 0;
}

static int s_remove_profile(devsim_dev_t *d, plist_t c, plist_t resp)
{
    const char *ident = devsim_pl_get_str(c, "Identifier");
    if (!ident)
        return -1;
    int at = s_find_profile(d, ident);
    char msg[256];
    if (at < 0) {
        snprintf(msg, sizeof msg, "The profile \xE2\x80\x9C%.180s\xE2\x80\x9D is not installed.",
                 ident);
        s_error(resp, 1001, "MCProfileErrorDomain", msg);
    } else if (strcmp(ident, "com.picomdm.enrollment") == 0) {
        s_error(resp, 12024, "MCMDMErrorDomain",
                "The MDM enrollment profile cannot be removed with RemoveProfile.");
    } else
        plist_array_remove_item(d->profiles, (uint32_t)at);
    return 0;
}

// ---- InstalledApplicationList -------------------------------------------------------

static const char *const s_builtin_apps[][2] = {
    {"com.apple.mobilesafari", "Safari"},
    {"com.apple.mobilemail", "Mail"},
    {"com.apple.MobileSMS", "Messages"},
    {"com.apple.mobilecal", "Calendar"},
    {"com.apple.camera", "Camera"},
    {"com.apple.Maps", "Maps"},
    {"com.apple.Preferences", "Settings"},
    {"com.apple.mobilenotes", "Notes"},
    {"com.apple.reminders", "Reminders"},
    {"com.apple.weather", "Weather"},
    {"com.microsoft.Office.Outlook", "Microsoft Outlook"},
    {"com.google.chrome.ios", "Google Chrome"},
};
#define N_BUILTIN ((int)(sizeof s_builtin_apps / sizeof s_builtin_apps[0]))

static bool s_item_wanted(plist_t items, const char *key)
{
    if (!items)
        return true;
    uint32_t n = plist_array_get_size(items);
    for (uint32_t i = 0; i < n; i++) {
        plist_t it = plist_array_get_item(items, i);
        uint64_t len;
        const char *s =
            plist_get_node_type(it) == PLIST_STRING ? plist_get_string_ptr(it, &len) : NULL;
        if (s && strcmp(s, key) == 0)
            return true;
    }
    return false;
}

static void s_installed_apps(const devsim_dev_t *d, plist_t c, const devsim_answer_opts_t *o,
                             plist_t resp)
{
    plist_t ids = devsim_pl_get(c, "Identifiers", PLIST_ARRAY);
    plist_t items = devsim_pl_get(c, "Items", PLIST_ARRAY);
    bool managed_only = devsim_pl_get_bool(c, "ManagedAppsOnly", false);
    const devsim_dev_t *dc = d->user_channel ? d->parent : d;
    plist_t out = plist_new_array();
    for (int i = 0; i < o->apps; i++) {
        char id[96], name[96];
        if (i < N_BUILTIN) {
            snprintf(id, sizeof id, "%s", s_builtin_apps[i][0]);
            snprintf(name, sizeof name, "%s", s_builtin_apps[i][1]);
        } else {
            snprintf(id, sizeof id, "com.example.app%04d", i);
            snprintf(name, sizeof name, "Example App %04d", i);
        }
        bool managed = i >= N_BUILTIN && i % 10 == 0;
        if (managed_only && !managed)
            continue;
        if (ids && !s_item_wanted(ids, id))
            continue;
        char ver[32], sver[32];
        snprintf(ver, sizeof ver, "%d", 100 + i % 900);
        snprintf(sver, sizeof sver, "%d.%d.%d", 1 + i % 9, i % 13, i % 5);
        plist_t a = plist_new_dict();
#define ITEM(key, call)                                                                            \
    if (s_item_wanted(items, key))                                                                 \
    call
        ITEM("Identifier", devsim_pl_str(a, "Identifier", id));
        ITEM("Name", devsim_pl_str(a, "Name", name));
        ITEM("Version", devsim_pl_str(a, "Version", ver));
        ITEM("ShortVersion", devsim_pl_str(a, "ShortVersion", sver));
        ITEM("BundleSize", devsim_pl_int(a, "BundleSize", 1048576LL * (5 + i % 300)));
        ITEM("Installing", devsim_pl_bool(a, "Installing", false));
        ITEM("HasUpdateAvailable", devsim_pl_bool(a, "HasUpdateAvailable", i % 17 == 0));
        ITEM("ExternalVersionIdentifier",
             devsim_pl_int(a, "ExternalVersionIdentifier", 850000000LL + i));
        if (!dc->is_mac) { //  iOS-only keys (application.installed.list.yaml)
            ITEM("DynamicSize", devsim_pl_int(a, "DynamicSize", 65536LL * (1 + i % 700)));
            ITEM("IsValidated", devsim_pl_bool(a, "IsValidated", true));
            ITEM("AppStoreVendable", devsim_pl_bool(a, "AppStoreVendable", i >= N_BUILTIN));
            ITEM("DeviceBasedVPP", devsim_pl_bool(a, "DeviceBasedVPP", managed));
            ITEM("BetaApp", devsim_pl_bool(a, "BetaApp", false));
            ITEM("AdHocCodeSigned", devsim_pl_bool(a, "AdHocCodeSigned", false));
            ITEM("IsAppClip", devsim_pl_bool(a, "IsAppClip", false));
        }
#undef ITEM
        plist_array_append_item(out, a);
    }
    plist_dict_set_item(resp, "InstalledApplicationList", out);
}

// ---- CertificateList ----------------------------------------------------------------

static void s_cert_item(plist_t out, const unsigned char *der, size_t len, bool identity)
{
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    char cn[128] = "";
    if (x)
        X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn);
    X509_free(x);
    plist_t it = plist_new_dict();
    devsim_pl_str(it, "CommonName", cn);
    devsim_pl_bool(it, "IsIdentity", identity);
    devsim_pl_data(it, "Data", der, len);
    plist_array_append_item(out, it);
}

static void s_certificate_list(const devsim_dev_t *d, const devsim_answer_opts_t *o, plist_t resp)
{
    plist_t out = plist_new_array();
    const devsim_ident_t *id = devsim_dev_ident(d);
    if (id) {
        size_t len;
        const unsigned char *der = devsim_ident_der(id, &len);
        s_cert_item(out, der, len, true);
    }
    if (o->ca_der)
        s_cert_item(out, o->ca_der, o->ca_derlen, false);
    plist_dict_set_item(resp, "CertificateList", out);
}

// ---- Settings, OS updates -----------------------------------------------------------

static const char *const s_setting_items[] = {"Wallpaper",
                                              "DataRoaming",
                                              "VoiceRoaming",
                                              "PersonalHotspot",
                                              "Bluetooth",
                                              "ApplicationConfiguration",
                                              "ApplicationAttributes",
                                              "DeviceName",
                                              "HostName",
                                              "OrganizationInfo",
                                              "MDMOptions",
                                              "MaximumResidentUsers",
                                              "SharedDeviceConfiguration",
                                              "DiagnosticSubmission",
                                              "AppAnalytics",
                                              "PasscodeLockGracePeriod",
                                              "TimeZone",
                                              "SoftwareUpdateSettings",
                                              "AccessibilitySettings",
                                              NULL};

static int s_settings(devsim_dev_t *d, plist_t c, plist_t resp)
{
    plist_t in = devsim_pl_get(c, "Settings", PLIST_ARRAY);
    if (!in)
        return -1;
    plist_t out = plist_new_array();
    bool failed = false;
    uint32_t n = plist_array_get_size(in);
    for (uint32_t i = 0; i < n; i++) {
        plist_t s = plist_array_get_item(in, i);
        const char *item = devsim_pl_get_str(s, "Item");
        plist_t r = plist_new_dict();
        const char *ident = devsim_pl_get_str(s, "Identifier");
        if (ident)
            devsim_pl_str(r, "Identifier", ident);
        if (!item || !s_in(s_setting_items, item)) {
            plist_t chain = plist_new_array();
            plist_array_append_item(chain, s_error_item(12070, "MCMDMErrorDomain",
                                                        "The setting item is not supported."));
            plist_dict_set_item(r, "ErrorChain", chain);
            devsim_pl_str(r, "Status", "Error");
            failed = true;
        } else {
            const char *name;
            if (strcmp(item, "DeviceName") == 0 && (name = devsim_pl_get_str(s, "DeviceName"))) {
                devsim_dev_t *dc = d->user_channel ? d->parent : d;
                snprintf(dc->device_name, sizeof dc->device_name, "%s", name);
            }
            devsim_pl_str(r, "Status", "Acknowledged");
        }
        plist_array_append_item(out, r);
    }
    plist_dict_set_item(resp, "Settings", out);
    if (failed)
        s_error(resp, 12070, "MCMDMErrorDomain", "One or more settings could not be applied.");
    return 0;
}

static void s_available_updates(const devsim_dev_t *d, plist_t resp)
{
    const devsim_dev_t *dc = d->user_channel ? d->parent : d;
    plist_t out = plist_new_array();
    plist_t u = plist_new_dict();
    bool mac = dc->is_mac;
    devsim_pl_str(u, "ProductKey", mac ? "MSU_UPDATE_23G80_patch_14.6" : "iOSUpdate21G80");
    devsim_pl_str(u, "HumanReadableName", mac ? "macOS Sonoma 14.6" : "iOS 17.6");
    devsim_pl_str(u, "Version", mac ? "14.6" : "17.6");
    devsim_pl_str(u, "Build", mac ? "23G80" : "21G80");
    devsim_pl_int(u, "DownloadSize", mac ? 1610612736LL : 478150656LL);
    devsim_pl_bool(u, "IsCritical", false);
    devsim_pl_bool(u, "RestartRequired", true);
    devsim_pl_bool(u, "AllowsInstallLater", true);
    devsim_pl_bool(u, "IsSecurityResponse", false);
    //  system.update.available.yaml: some keys exist on one platform only.
    if (mac) {
        devsim_pl_str(u, "HumanReadableNameLocale", "en");
        devsim_pl_str(u, "MetadataURL", "https://swscan.apple.invalid/metadata.dist");
        plist_dict_set_item(u, "AppIdentifiersToClose", plist_new_array());
        devsim_pl_bool(u, "IsConfigDataUpdate", false);
        devsim_pl_bool(u, "IsFirmwareUpdate", false);
        devsim_pl_bool(u, "IsMajorOSUpdate", false);
        devsim_pl_bool(u, "RequiresBootstrapToken", false);
    } else {
        devsim_pl_str(u, "ProductName", "iOS");
        devsim_pl_int(u, "InstallSize", 2147483648LL);
    }
    plist_array_append_item(out, u);
    plist_dict_set_item(resp, "AvailableOSUpdates", out);
}

static int s_schedule_update(const devsim_dev_t *d, plist_t c, plist_t resp)
{
    plist_t ups = devsim_pl_get(c, "Updates", PLIST_ARRAY);
    if (!ups)
        return -1;
    const devsim_dev_t *dc = d->user_channel ? d->parent : d;
    plist_t out = plist_new_array();
    uint32_t n = plist_array_get_size(ups);
    for (uint32_t i = 0; i < n; i++) {
        plist_t u = plist_array_get_item(ups, i);
        const char *action = devsim_pl_get_str(u, "InstallAction");
        const char *key = devsim_pl_get_str(u, "ProductKey");
        if (!action) {
            plist_free(out);
            return -1; //  InstallAction is required (system.update.schedule.yaml)
        }
        plist_t r = plist_new_dict();
        devsim_pl_str(r, "ProductKey",
                      key          ? key
                      : dc->is_mac ? "MSU_UPDATE_23G80_patch_14.6"
                                   : "iOSUpdate21G80");
        devsim_pl_str(r, "InstallAction", action);
        devsim_pl_str(r, "Status", strcmp(action, "NotifyOnly") == 0 ? "Idle" : "Downloading");
        plist_array_append_item(out, r);
    }
    plist_dict_set_item(resp, "UpdateResults", out);
    return 0;
}

// ---- the dispatcher -----------------------------------------------------------------

plist_t devsim_answer(devsim_dev_t *d, plist_t cmd, const devsim_answer_opts_t *o,
                      devsim_answer_info_t *info)
{
    memset(info, 0, sizeof *info);
    const char *uuid = devsim_pl_get_str(cmd, "CommandUUID");
    plist_t c = devsim_pl_get(cmd, "Command", PLIST_DICT);
    const char *rt = devsim_pl_get_str(c, "RequestType");
    if (uuid)
        snprintf(info->uuid, sizeof info->uuid, "%s", uuid);
    if (rt)
        snprintf(info->request_type, sizeof info->request_type, "%s", rt);
    plist_t resp = devsim_dev_report(d, "Acknowledged", uuid);
    if (!uuid || !rt) {
        //  Not a command a device can attribute: report it and leave the session.
        plist_dict_set_item(resp, "Status", plist_new_string("CommandFormatError"));
        info->status = "CommandFormatError";
        info->stop = !uuid;
        return resp;
    }
    info->violation = devsim_dev_command_seen(d, uuid);
    if (o->notnow_rate > 0 && devsim_dev_can_notnow(d) && devsim_rand01() < o->notnow_rate) {
        devsim_dev_notnow(d, uuid);
        plist_dict_set_item(resp, "Status", plist_new_string("NotNow"));
        info->status = "NotNow";
        return resp;
    }
    int rc = 0;
    char msg[192];
    if (!s_in(devsim_answer_supported, rt)) {
        snprintf(msg, sizeof msg, "The command \xE2\x80\x9C%.64s\xE2\x80\x9D is not supported.",
                 rt);
        s_error(resp, 12021, "MCMDMErrorDomain", msg);
    } else if (d->user_channel && !s_in(s_user_ok, rt)) {
        snprintf(msg, sizeof msg,
                 "The command \xE2\x80\x9C%.64s\xE2\x80\x9D is not supported on the user channel.",
                 rt);
        s_error(resp, 12078, "MCMDMErrorDomain", msg);
    } else if (strcmp(rt, "DeviceInformation") == 0)
        rc = s_device_information(d, c, resp);
    else if (strcmp(rt, "SecurityInfo") == 0)
        s_security_info(d, resp);
    else if (strcmp(rt, "ProfileList") == 0)
        s_profile_list(d, c, resp);
    else if (strcmp(rt, "InstallProfile") == 0)
        rc = s_install_profile(d, c, resp);
    else if (strcmp(rt, "RemoveProfile") == 0)
        rc = s_remove_profile(d, c, resp);
    else if (strcmp(rt, "InstalledApplicationList") == 0)
        s_installed_apps(d, c, o, resp);
    else if (strcmp(rt, "CertificateList") == 0)
        s_certificate_list(d, o, resp);
    else if (strcmp(rt, "DeviceLock") == 0) {
        const char *pin = devsim_pl_get_str(c, "PIN");
        if (d->is_mac && (!pin || strlen(pin) != 6))
            s_error(resp, 12067, "MCMDMErrorDomain", "A 6-digit PIN is required to lock a Mac.");
        else
            d->locked = true;
    } else if (strcmp(rt, "ClearPasscode") == 0) {
        const char *tok;
        size_t len;
        if (!devsim_pl_get_data(c, "UnlockToken", &tok, &len))
            rc = -1;
        else if (len != sizeof d->unlock_token || memcmp(tok, d->unlock_token, len) != 0)
            s_error(resp, 12010, "MCMDMErrorDomain", "The unlock token is invalid.");
    } else if (strcmp(rt, "RestartDevice") == 0 || strcmp(rt, "ShutDownDevice") == 0) {
        //  Acknowledged; the simulator does not actually go away.
    } else if (strcmp(rt, "EraseDevice") == 0) {
        d->erased = true;
        info->stop = true; //  wiped: no more sessions, behaves as un-enrolled
    } else if (strcmp(rt, "Settings") == 0)
        rc = s_settings(d, c, resp);
    else if (strcmp(rt, "AvailableOSUpdates") == 0)
        s_available_updates(d, resp);
    else if (strcmp(rt, "ScheduleOSUpdate") == 0)
        rc = s_schedule_update(d, c, resp);
    if (rc < 0) {
        //  A required request key is missing or of the wrong type.
        plist_free(resp);
        resp = devsim_dev_report(d, "CommandFormatError", uuid);
        d->erased = false;
        info->stop = false;
    }
    info->status = devsim_pl_get_str(resp, "Status");
    return resp;
}

// ---- sample commands (for --print and tests) ----------------------------------------

static plist_t s_str_array(const char *const *v)
{
    plist_t a = plist_new_array();
    for (int i = 0; v[i]; i++)
        plist_array_append_item(a, plist_new_string(v[i]));
    return a;
}

plist_t devsim_answer_sample_command(const char *rt)
{
    plist_t cmd = plist_new_dict();
    char uuid[40];
    devsim_rand_uuid(uuid, sizeof uuid);
    devsim_pl_str(cmd, "CommandUUID", uuid);
    plist_t c = plist_new_dict();
    devsim_pl_str(c, "RequestType", rt);
    if (strcmp(rt, "DeviceInformation") == 0) {
        static const char *const q[] = {"UDID",
                                        "DeviceName",
                                        "OSVersion",
                                        "BuildVersion",
                                        "ModelName",
                                        "Model",
                                        "ProductName",
                                        "SerialNumber",
                                        "DeviceCapacity",
                                        "AvailableDeviceCapacity",
                                        "BatteryLevel",
                                        "IMEI",
                                        "MEID",
                                        "IsSupervised",
                                        "LastCloudBackupDate",
                                        "WiFiMAC",
                                        "BluetoothMAC",
                                        "OSUpdateSettings",
                                        "NoSuchQuery",
                                        NULL};
        plist_dict_set_item(c, "Queries", s_str_array(q));
    } else if (strcmp(rt, "InstallProfile") == 0) {
        const char *prof =
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\"><dict>"
            "<key>PayloadType</key><string>Configuration</string>"
            "<key>PayloadVersion</key><integer>1</integer>"
            "<key>PayloadIdentifier</key><string>com.example.wifi</string>"
            "<key>PayloadUUID</key><string>5A1B2C3D-4E5F-4061-8273-948596A7B8C9</string>"
            "<key>PayloadDisplayName</key><string>Office Wi-Fi</string>"
            "<key>PayloadContent</key><array><dict>"
            "<key>PayloadType</key><string>com.apple.wifi.managed</string>"
            "<key>PayloadVersion</key><integer>1</integer>"
            "<key>PayloadIdentifier</key><string>com.example.wifi.1</string>"
            "<key>PayloadUUID</key><string>6B2C3D4E-5F60-4172-9384-A5B6C7D8E9F0</string>"
            "<key>SSID_STR</key><string>Office</string>"
            "</dict></array></dict></plist>\n";
        devsim_pl_data(c, "Payload", prof, strlen(prof));
    } else if (strcmp(rt, "RemoveProfile") == 0)
        devsim_pl_str(c, "Identifier", "com.example.wifi");
    else if (strcmp(rt, "Settings") == 0) {
        plist_t s = plist_new_array();
        plist_t i1 = plist_new_dict();
        devsim_pl_str(i1, "Item", "DeviceName");
        devsim_pl_str(i1, "DeviceName", "Renamed Device");
        plist_array_append_item(s, i1);
        plist_t i2 = plist_new_dict();
        devsim_pl_str(i2, "Item", "Bluetooth");
        devsim_pl_bool(i2, "Enabled", true);
        plist_array_append_item(s, i2);
        plist_dict_set_item(c, "Settings", s);
    } else if (strcmp(rt, "ScheduleOSUpdate") == 0) {
        plist_t a = plist_new_array();
        plist_t u = plist_new_dict();
        devsim_pl_str(u, "ProductKey", "iOSUpdate21G80");
        devsim_pl_str(u, "InstallAction", "InstallASAP");
        plist_array_append_item(a, u);
        plist_dict_set_item(c, "Updates", a);
    } else if (strcmp(rt, "ClearPasscode") == 0)
        devsim_pl_data(c, "UnlockToken", "wrong-token", 11);
    else if (strcmp(rt, "DeviceLock") == 0) {
        devsim_pl_str(c, "Message", "This device was locked by IT.");
        devsim_pl_str(c, "PIN", "123456");
    }
    plist_dict_set_item(cmd, "Command", c);
    return cmd;
}
