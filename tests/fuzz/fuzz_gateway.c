/*  fuzz_gateway — libFuzzer target for what the gateway parses of a device
 *  request (gateway/gw_devreq.c, gateway/gw_auth.c), without the network.
 *
 *  Input: one mode byte, then the request.
 *    mode & 3 == 0 / 1: the rest is a body sent to the CheckInURL / ServerURL
 *        path: gw_devreq_parse (plist -> map, enrollment id, MessageType /
 *        Status routing, schema key types) and, when accepted, the bus
 *        messages (gw_devreq_msg: for the scheduler, and for the store on the
 *        direct path), which the strict decoder must take back unchanged,
 *        since the back end decodes them.
 *    mode & 3 == 2: "<Mdm-Signature base64>\0<body>": gw_auth_verify_signature
 *        (base64, the CMS certificate split-off fast path or, with mode & 8,
 *        the uncached OpenSSL path; chain to the test CA below; signature);
 *        a body it accepts is then parsed as above (mode & 4: ServerURL).
 *    mode & 3 == 3: "<proxy client-cert header>\0<body>":
 *        gw_auth_verify_escaped_pem, then the body likewise.
 *  Invariants: a refusal always says why; an accepted request always has an
 *  enrollment id and a route, and always makes a message the table takes.
 *  Seeds (tests/fuzz/corpus/gateway): every MessageType and Status, XML and
 *  binary plists, user channels, signed with a device certificate issued by
 *  the CA below (its key is not kept: the seeds are signed once).
 *
 *      make fuzz-bins
 *      build/fuzz/fuzz_gateway -max_total_time=60 tests/fuzz/corpus/gateway
 */
#include "../../gateway/gw_auth.h"
#include "../../gateway/gw_devreq.h"
#include "pm_log.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

//  The device CA of the seed signatures (EC P-256, valid until 2126).
static const char s_ca_pem[] = "-----BEGIN CERTIFICATE-----\n"
                               "MIIBmjCCAT+gAwIBAgIUGgr4K5jjnm9bGwg0ulHw2880DZEwCgYIKoZIzj0EAwIw\n"
                               "GTEXMBUGA1UEAwwOZnV6eiBkZXZpY2UgQ0EwIBcNMjYxMTI4MTgwMDU0WhgPMjEy\n"
                               "NjExMDQxODAwNTRaMBkxFzAVBgNVBAMMDmZ1enogZGV2aWNlIENBMFkwEwYHKoZI\n"
                               "zj0CAQYIKoZIzj0DAQcDQgAEjnfU7feu1SIBtIFRJEtEFtZwQ9JLrFFYJ8pbHcxl\n"
                               "bT4XuKXRr4gBaS+RgtHGK9hKSHI+C9o+oGKj9oWnEEEjTqNjMGEwHQYDVR0OBBYE\n"
                               "FBeSDsenCX/b8cBgdmzwRGC14esTMB8GA1UdIwQYMBaAFBeSDsenCX/b8cBgdmzw\n"
                               "RGC14esTMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMAoGCCqGSM49\n"
                               "BAMCA0kAMEYCIQDNvQE1u4GjRJte/IpwnBhDk8c0SZNAh5DDzxl8rzVTWgIhANlB\n"
                               "TOn4DiiUbN9W3RAC0/wQbxSY2PwK1tU9n1FXhq8K\n"
                               "-----END CERTIFICATE-----\n";

#define BODY_MAX (256u * 1024)

static gw_auth_t *s_auth[2]; //  [0] caches on (default), [1] caches off

static gw_auth_t *s_auth_new(bool cached)
{
    char path[] = "/tmp/fuzz_gateway_ca.XXXXXX", err[256];
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, s_ca_pem, sizeof s_ca_pem - 1) != (ssize_t)(sizeof s_ca_pem - 1))
        abort();
    close(fd);
    gw_auth_t *a = gw_auth_new(path, err, sizeof err);
    unlink(path);
    if (!a) {
        fprintf(stderr, "fuzz_gateway: test CA refused: %s\n", err);
        abort();
    }
    if (!cached && gw_auth_set_cache(a, 0, 0, 0) < 0)
        abort();
    return a;
}

//  Parse a body as the gateway does after authentication.
static void s_device(const uint8_t *body, size_t len, bool server_path,
                     const gw_auth_result_t *auth)
{
    gw_devreq_t d;
    char why[400] = "";
    if (gw_devreq_parse(body, len, BODY_MAX, server_path, &d, why, sizeof why) < 0) {
        if (!why[0])
            abort(); //  every 400 says why (log line, security.rejected event)
        gw_devreq_clear(&d);
        return;
    }
    if (!d.eid[0] || (d.route != GW_DEVREQ_CHECKIN && d.route != GW_DEVREQ_CONNECT) ||
        (d.route == GW_DEVREQ_CONNECT && !server_path))
        abort();
    //  both paths: through the scheduler, and straight to the store
    static const gw_devreq_policy_t pol = {3, 5, 60};
    for (int direct = 0; direct < 2; direct++) {
        pm_msg_t *msg = gw_devreq_msg(&d, auth, direct ? &pol : NULL), *back = NULL;
        if (!msg) {
            fprintf(stderr, "fuzz_gateway: the table refused an accepted request (eid %s)\n",
                    d.eid);
            abort();
        }
        uint8_t *enc = NULL;
        size_t n = 0;
        char err[256];
        if (pm_msg_encode(msg, &enc, &n, err, sizeof err) < 0 ||
            pm_msg_decode(enc, n, &back, err, sizeof err) < 0) {
            fprintf(stderr, "fuzz_gateway: the back end would refuse our message: %s\n", err);
            abort();
        }
        if (!pm_msg_equal(msg, back))
            abort();
        free(enc);
        pm_msg_destroy(&back);
        pm_msg_destroy(&msg);
    }
    gw_devreq_clear(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!s_auth[0]) {
        pm_log_init("fuzz_gateway", "error", false);
        s_auth[0] = s_auth_new(true);
        s_auth[1] = s_auth_new(false);
    }
    if (size < 1)
        return 0;
    int mode = data[0];
    data++;
    size--;
    if ((mode & 3) < 2) {
        s_device(data, size, (mode & 3) == 1, NULL);
        return 0;
    }
    //  header \0 body (the header is a C string for libevent too)
    const uint8_t *nul = memchr(data, 0, size);
    if (!nul)
        return 0;
    size_t hlen = (size_t)(nul - data);
    char *hdr = malloc(hlen + 1);
    if (!hdr)
        return 0;
    memcpy(hdr, data, hlen);
    hdr[hlen] = '\0';
    const uint8_t *body = nul + 1;
    size_t blen = size - hlen - 1;
    gw_auth_result_t res;
    memset(&res, 0, sizeof res);
    gw_auth_t *a = s_auth[(mode & 8) ? 1 : 0];
    int rc = (mode & 3) == 2 ? gw_auth_verify_signature(a, hdr, hlen, body, blen, &res)
                             : gw_auth_verify_escaped_pem(a, hdr, &res);
    if (rc < 0) {
        if (!res.code || !res.reason[0])
            abort(); //  every rejection has a code and a reason
    } else {
        s_device(body, blen, (mode & 4) != 0, &res);
    }
    free(hdr);
    return 0;
}
