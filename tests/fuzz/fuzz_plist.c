/*  fuzz_plist — libFuzzer target for the plist bridge (proto/pm_plist.c).
 *
 *  Any input: pm_plist_to_msgpack must fail cleanly or succeed; on success
 *  the msgpack must convert back to an XML plist that converts to the very
 *  same msgpack bytes. The one accepted refusal on the way back is a binary
 *  plist date with a fraction of a second (XML plist dates are whole seconds).
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
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
