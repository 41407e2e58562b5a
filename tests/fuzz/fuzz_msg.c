/*  fuzz_msg — libFuzzer target for the bus message codec (pm_msg, pm_mpck).
 *
 *  Any input: pm_msg_decode must not crash, leak or read out of bounds. When
 *  it accepts, the message must survive encode -> decode unchanged, and the
 *  re-encoding must be byte-stable (encode(decode(encode(m))) == encode(m)),
 *  and it must render as JSON (pm_json) without raw control characters.
 *  Seed corpus: tests/fuzz/corpus/msg/ (valid messages of every type, written
 *  by PM_MSG_CORPUS=dir build/rel/test/pm_msg, plus hostile vectors).
 */
#include "pm_json.h"
#include "pm_msg.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    pm_msg_t *m = NULL, *m2 = NULL, *m3 = NULL;
    uint8_t *enc = NULL, *enc2 = NULL;
    size_t len = 0, len2 = 0;
    if (pm_msg_decode(data, size, &m, err, sizeof err) != 0) {
        if (m != NULL || strlen(err) == 0 || strchr(err, '\n'))
            abort(); //  a rejection leaves no message and gives a one-line reason
        return 0;
    }
    if (pm_msg_encode(m, &enc, &len, err, sizeof err) != 0) {
        fprintf(stderr, "re-encode of an accepted message failed: %s\n", err);
        abort();
    }
    if (pm_msg_decode(enc, len, &m2, err, sizeof err) != 0) {
        fprintf(stderr, "decode of our own encoding failed: %s\n", err);
        abort();
    }
    if (!pm_msg_equal(m, m2)) {
        fprintf(stderr, "decode(encode(m)) != m for a %s\n", pm_msg_type_name(pm_msg_type(m)));
        abort();
    }
    if (pm_msg_encode(m2, &enc2, &len2, err, sizeof err) != 0 || len2 != len ||
        memcmp(enc, enc2, len) != 0) {
        fprintf(stderr, "re-encoding is not byte-stable\n");
        abort();
    }
    //  a copy through the setters gives the same message
    m3 = pm_msg_new_reply(m, pm_msg_type(m));
    if (!m3)
        abort();
    pm_msg_set_ts(m3, pm_msg_ts(m));
    const pm_msgdef_t *d = pm_msgdef(pm_msg_type(m));
    for (int f = 0; f < d->nfields; f++) {
        const msgpack_object *o = pm_msg_obj(m, d->fields[f].name);
        if (o && pm_msg_set_obj(m3, d->fields[f].name, o) != 0) {
            fprintf(stderr, "set_obj refused field '%s' of a decoded message\n", d->fields[f].name);
            abort();
        }
    }
    if (!pm_msg_equal(m, m3)) {
        fprintf(stderr, "copy through pm_msg_set_obj differs\n");
        abort();
    }
    //  every accepted message renders as JSON (depth 32 < PM_JSON_MAX_DEPTH)
    size_t jlen = 0;
    char *json = pm_json_from_msg(m, &jlen);
    if (!json || strlen(json) != jlen) {
        fprintf(stderr, "pm_json_from_msg failed on an accepted message\n");
        abort();
    }
    for (size_t i = 0; i < jlen; i++)
        if ((unsigned char)json[i] < 0x20) {
            fprintf(stderr, "raw control character in JSON output\n");
            abort();
        }
    free(json);
    pm_msg_destroy(&m);
    pm_msg_destroy(&m2);
    pm_msg_destroy(&m3);
    free(enc);
    free(enc2);
    return 0;
}
