/*  fuzz_plist — libFuzzer target for the plist bridge (proto/pm_plist.c).
 *
 *  Any input: pm_plist_to_msgpack must fail cleanly or succeed; on success
 *  the msgpack must convert back to an XML plist that converts to the very
 *  same msgpack bytes. The one accepted refusal on the way back is a binary
 *  plist date with a fraction of a second (XML plist dates are whole seconds).
 *  The same bytes are also tried as msgpack: if pm_plist_from_msgpack_bytes
 *  accepts them, its XML must convert to msgpack and back to the same XML.
 *
 *      make fuzz-bins
 *      build/fuzz/fuzz_plist -max_total_time=60 tests/fuzz/corpus/plist
 */
#include "pm_plist.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

//  msgpack -> XML -> msgpack -> XML: the two XML texts must be identical.
static void s_from_msgpack(const uint8_t *data, size_t size)
{
    char err[256];
    char *x1 = NULL, *x2 = NULL;
    size_t l1 = 0, l2 = 0, n = 0;
    uint8_t *mp = NULL;
    if (pm_plist_from_msgpack_bytes(data, size, &x1, &l1, err, sizeof err) != 0) {
        if (x1 || l1 || !err[0])
            abort();
        return;
    }
    if (pm_plist_to_msgpack(x1, l1, &pm_plist_default_limits, &mp, &n, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_plist: XML made from msgpack was refused: %s\n%s\n", err, x1);
        abort();
    }
    if (pm_plist_from_msgpack_bytes(mp, n, &x2, &l2, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_plist: second msgpack -> XML failed: %s\n", err);
        abort();
    }
    if (l1 != l2 || memcmp(x1, x2, l1) != 0) {
        fprintf(stderr, "fuzz_plist: XML changed on the way round\n%s\n%s\n", x1, x2);
        abort();
    }
    free(x1);
    free(x2);
    free(mp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    s_from_msgpack(data, size);

    char err[256];
    uint8_t *mp1 = NULL, *mp2 = NULL;
    size_t n1 = 0, n2 = 0, xl = 0;
    char *xml = NULL;

    if (pm_plist_to_msgpack((const char *)data, size, &pm_plist_default_limits, &mp1, &n1, err,
                            sizeof err) != 0) {
        if (mp1 || n1 || !err[0])
            abort(); //  a failure leaves no output and always says why
        goto out;
    }
    //  the bounded entry point (pm_mpck) must accept whatever we produce
    if (pm_plist_from_msgpack_bytes(mp1, n1, &xml, &xl, err, sizeof err) != 0) {
        if (strstr(err, "fraction"))
            goto out;
        fprintf(stderr, "fuzz_plist: msgpack -> plist refused our own output: %s\n", err);
        abort();
    }
    if (strlen(xml) != xl)
        abort();
    if (pm_plist_to_msgpack(xml, xl, &pm_plist_default_limits, &mp2, &n2, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_plist: our own XML was refused: %s\n%s\n", err, xml);
        abort();
    }
    if (n1 != n2 || memcmp(mp1, mp2, n1) != 0) {
        fprintf(stderr, "fuzz_plist: round trip changed the msgpack (%zu vs %zu bytes)\n%s\n", n1,
                n2, xml);
        abort();
    }
out:
    free(mp1);
    free(mp2);
    free(xml);
    return 0;
}
