/*  fuzz_stats — libFuzzer target for the metrics renderer (common/pm_stats):
 *  the gateway turns every stats.* message from the bus into Prometheus text.
 *
 *  Any input that decodes as a bus message: pm_stats_render must not crash,
 *  leak or read out of bounds, and whatever it prints must stay valid
 *  exposition text: every line is `# HELP picomdm_...`, `# TYPE picomdm_...`
 *  or `picomdm_<name>{label="value",...} <number>` with every quote and
 *  backslash inside a label value escaped, so a hostile process cannot inject
 *  series or break a scraper. Seed corpus: tests/fuzz/corpus/stats/.
 */
#include "pm_msg.h"
#include "pm_stats.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool s_name_char(char c, bool first)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
           (!first && c >= '0' && c <= '9');
}

//  One sample line: name{k="v",...} value
static bool s_sample_ok(const char *p, const char *end)
{
    if (end - p < 8 || memcmp(p, "picomdm_", 8) != 0)
        return false;
    const char *q = p;
    if (!s_name_char(*q, true))
        return false;
    while (q < end && s_name_char(*q, false))
        q++;
    if (q < end && *q == '{') {
        q++;
        for (;;) {
            if (q >= end || !s_name_char(*q, true))
                return false;
            while (q < end && s_name_char(*q, false))
                q++;
            if (q + 1 >= end || q[0] != '=' || q[1] != '"')
                return false;
            q += 2;
            while (q < end && *q != '"') {
                if (*q == '\\') {
                    if (q + 1 >= end || (q[1] != '\\' && q[1] != '"' && q[1] != 'n'))
                        return false;
                    q++;
                }
                q++;
            }
            if (q >= end)
                return false;
            q++; //  closing quote
            if (q < end && *q == ',') {
                q++;
                continue;
            }
            if (q < end && *q == '}') {
                q++;
                break;
            }
            return false;
        }
    }
    if (q >= end || *q != ' ')
        return false;
    q++;
    if (q >= end)
        return false;
    for (; q < end; q++)
        if (*q == ' ' || *q == '{' || *q == '}')
            return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    pm_msg_t *m = NULL;
    if (pm_msg_decode(data, size, &m, err, sizeof err) != 0)
        return 0;
    const pm_msg_t *snaps[2] = {m, m}; //  the same process twice: grouping under one TYPE
    double ages[2] = {0.5, 1e300};
    size_t len = 0;
    char *text = pm_stats_render(snaps, ages, 2, &len);
    if (!text)
        abort(); //  only on out of memory, which the fuzzer's inputs cannot cause
    if (strlen(text) != len)
        abort(); //  a NUL inside: a label value carried one through
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) {
            fprintf(stderr, "last line without a newline\n");
            abort();
        }
        bool ok = (nl - p > 15 && (memcmp(p, "# HELP picomdm_", 15) == 0 ||
                                   memcmp(p, "# TYPE picomdm_", 15) == 0)) ||
                  s_sample_ok(p, nl);
        if (!ok) {
            fprintf(stderr, "bad exposition line: %.*s\n", (int)(nl - p), p);
            abort();
        }
        p = nl + 1;
    }
    free(text);
    pm_msg_destroy(&m);
    return 0;
}
