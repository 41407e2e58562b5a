/*  pm_plist — the plist <-> msgpack bridge (see pm_plist.h). Used by the
 *  gateway (device check-in and command bodies) and by tools that speak to
 *  devices.
 *
 *  Input is never handed to libplist 2.2 before it has been bounded:
 *    - XML: s_xml_scan validates the document against the plist grammar
 *      (only Apple's PLIST DOCTYPE, no ENTITY/CDATA/processing instructions,
 *      well-formed nesting, dict key/value alternation, strict integer, real,
 *      date and base64 text) while counting depth and nodes. libplist 2.2
 *      silently turns bad text into wrong values ("AB" data -> empty, "010"
 *      -> 8, "2024-13-01" -> 2023-12-31); after the scan it only sees text
 *      it reads exactly.
 *    - binary: s_bin_scan checks the trailer, then walks the object graph
 *      from the top object with an explicit stack, a depth bound, a cycle
 *      check and a count of the *expanded* tree (shared subtrees count every
 *      time they are referenced: libplist re-parses them each time).
 *  The tree libplist builds is then converted with bounded recursion (depth
 *  is at most PM_PLIST_DEPTH_CAP, 256).
 *
 *  libplist 2.2 quirks this file works around (measured, see pm_plist_test.c):
 *    - integers are one PLIST_UINT type holding a uint64; a hidden length
 *      field says whether values above INT64_MAX are negative (8) or large
 *      unsigned (16). plist_new_uint always makes the signed kind, so large
 *      unsigned values are built from a one-object binary plist, and told
 *      apart with plist_compare_node_value (which compares that length).
 *    - plist_get_date_val/plist_new_date use int32 seconds and truncate the
 *      microseconds wrongly (about half of all values come back off by one),
 *      so the exact double is read and written through a one-object binary
 *      plist (marker 0x33 + big-endian double) instead.
 *    - the XML writer prints dates without fractions and years without zero
 *      padding, and prints -0.0 as 0.0: dates must be whole seconds in years
 *      1000..9999 to go out as XML, and -0.0 / NaN payloads are normalized.
 *
 *  Ownership: every pointer returned through an out-argument is malloc'd and
 *  belongs to the caller (free()).
 */
#include "pm_plist.h"
#include "pm_mpck.h"

#include <plist/plist.h>

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

const pm_plist_limits_t pm_plist_default_limits = {
    .max_bytes = 8u * 1024 * 1024,
    .max_depth = 32,
    .max_nodes = 500000,
};

//  Hard ceiling on nesting whatever the limits say: the conversions recurse.
#define PM_PLIST_DEPTH_CAP 256

//  Seconds from the Unix epoch to Apple's (2001-01-01T00:00:00Z).
#define S_MAC_EPOCH 978307200LL
//  Dates accepted: 1000-01-01T00:00:00Z .. 9999-12-31T23:59:59Z (Unix seconds).
//  libplist's XML writer does not zero-pad years below 1000.
#define S_DATE_MIN (-30610224000LL)
#define S_DATE_MAX (253402300799LL)

static void s_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void s_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static unsigned s_depth_limit(const pm_plist_limits_t *lim)
{
    return lim->max_depth < PM_PLIST_DEPTH_CAP ? lim->max_depth : PM_PLIST_DEPTH_CAP;
}

// ---------------------------------------------------------------------------
//  Text: UTF-8 that XML 1.0 can carry (Char production: tab, LF, CR,
//  U+0020..U+D7FF, U+E000..U+FFFD, U+10000..U+10FFFF). The same rule applies
//  to every string in both directions so that whatever converts one way can
//  convert back.

static bool s_xml_char_ok(uint32_t c)
{
    if (c < 0x20)
        return c == 0x09 || c == 0x0A || c == 0x0D;
    if (c <= 0xD7FF)
        return true;
    if (c < 0xE000)
        return false;
    if (c <= 0xFFFD)
        return true;
    return c >= 0x10000 && c <= 0x10FFFF;
}

//  Decode one UTF-8 sequence at s[0..n); strict (no overlongs, surrogates,
//  values past U+10FFFF). Returns its length, 0 if invalid.
static size_t s_utf8_next(const uint8_t *s, size_t n, uint32_t *cp)
{
    uint8_t b = s[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    size_t len;
    uint32_t c, min;
    if ((b & 0xE0) == 0xC0) {
        len = 2, c = b & 0x1F, min = 0x80;
    } else if ((b & 0xF0) == 0xE0) {
        len = 3, c = b & 0x0F, min = 0x800;
    } else if ((b & 0xF8) == 0xF0) {
        len = 4, c = b & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    *cp = c;
    return len;
}

//  How many bytes from s[0] on (at most n) are printable ASCII (0x20..0x7F),
//  16 at a time: a device's XML body is that but for a line break and a tab
//  or two per line, and every request's body goes through s_text_check
//  (~4,800 instructions per request byte by byte under callgrind;
//  docs/gateway.md, "Session 11, gwcpu6").
static size_t s_ascii_run(const uint8_t *s, size_t n)
{
    size_t i = 0;
#if defined(__SSE2__)
    const __m128i lo = _mm_set1_epi8(0x1F);
    for (; i + 16 <= n; i += 16) {
        //  signed: 0x80..0xFF are negative, so "> 0x1F" is 0x20..0x7F
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
        unsigned m = (unsigned)_mm_movemask_epi8(_mm_cmpgt_epi8(v, lo)) ^ 0xFFFFu;
        if (m)
            return i + (size_t)__builtin_ctz(m);
    }
#endif
    while (i < n && s[i] >= 0x20 && s[i] < 0x80)
        i++;
    return i;
}

//  0 if s[0..n) is UTF-8 made only of XML characters; else -1 and *bad = offset.
static int s_text_check(const uint8_t *s, size_t n, size_t *bad)
{
    size_t i = 0;
    while (i < n) {
        uint32_t c;
        size_t k;
        if (s[i] >= 0x20 && s[i] < 0x80) { //  fast path: printable ASCII
            i += s_ascii_run(s + i, n - i);
            continue;
        }
        k = s_utf8_next(s + i, n - i, &c);
        if (k == 0 || !s_xml_char_ok(c)) {
            if (bad)
                *bad = i;
            return -1;
        }
        i += k;
    }
    return 0;
}

// ---------------------------------------------------------------------------
//  Dates: exact double seconds since 2001 <-> msgpack timestamp.

static bool s_mac_to_ts(double mac, msgpack_timestamp *ts)
{
    if (!isfinite(mac))
        return false;
    double whole = floor(mac);
    if (whole < (double)(S_DATE_MIN - S_MAC_EPOCH) || whole > (double)(S_DATE_MAX - S_MAC_EPOCH))
        return false;
    //  libplist 2.2 resolution is the microsecond: round the fraction to it.
    double usec = nearbyint((mac - whole) * 1e6);
    int64_t sec = (int64_t)whole + S_MAC_EPOCH;
    if (usec >= 1e6) {
        sec += 1;
        usec = 0;
    }
    if (sec > S_DATE_MAX)
        return false;
    ts->tv_sec = sec;
    ts->tv_nsec = (uint32_t)usec * 1000u;
    return true;
}

//  Read a date node's exact value. libplist 2.2 has no accessor for the
//  double it keeps: plist_get_date_val truncates it to int32 seconds and
//  microseconds (wrong outside 1933..2069 or below zero). So that reading is
//  used only when a date made from it (plist_new_date: seconds + micro-
//  seconds / 1e6, the same sum as below) compares equal to the node, which
//  makes it exact by construction; anything else (far dates, fractions
//  below a microsecond, negative fractions) is read by serializing the node
//  alone as a binary plist, whose only object is marker 0x33 and a
//  big-endian IEEE double at offset 8. The check costs well under 1 % of
//  that serialization (~60,000 instructions a date).
static int s_date_get(plist_t node, double *out)
{
    int32_t sec = 0, usec = 0;
    plist_get_date_val(node, &sec, &usec);
    plist_t probe = plist_new_date(sec, usec);
    bool same = probe && plist_compare_node_value(node, probe);
    plist_free(probe);
    if (same) {
        *out = (double)sec + (double)usec / 1000000;
        return 0;
    }
    char *bin = NULL;
    uint32_t n = 0;
    plist_to_bin(node, &bin, &n);
    if (!bin || n < 17 || (uint8_t)bin[8] != 0x33) {
        free(bin);
        return -1;
    }
    uint64_t u = 0;
    for (int i = 0; i < 8; i++)
        u = (u << 8) | (uint8_t)bin[9 + i];
    free(bin);
    memcpy(out, &u, sizeof *out);
    return 0;
}

//  Make a scalar node from a one-object binary plist: marker + payload.
static plist_t s_node_from_bin1(uint8_t marker, const uint8_t *payload, size_t plen)
{
    uint8_t buf[8 + 1 + 16 + 1 + 32];
    if (plen > 16)
        return NULL;
    size_t n = 0;
    memcpy(buf, "bplist00", 8);
    n = 8;
    buf[n++] = marker;
    memcpy(buf + n, payload, plen);
    n += plen;
    size_t table = n;
    buf[n++] = 8; //  offset table: object 0 at offset 8
    memset(buf + n, 0, 32);
    buf[n + 6] = 1;  //  offset size
    buf[n + 7] = 1;  //  ref size
    buf[n + 15] = 1; //  one object, top object 0
    buf[n + 31] = (uint8_t)table;
    n += 32;
    plist_t node = NULL;
    plist_from_bin((const char *)buf, (uint32_t)n, &node);
    return node;
}

static plist_t s_date_new(double mac)
{
    uint8_t be[8];
    uint64_t u;
    memcpy(&u, &mac, sizeof u);
    for (int i = 7; i >= 0; i--, u >>= 8)
        be[i] = (uint8_t)u;
    return s_node_from_bin1(0x33, be, 8);
}

//  An unsigned integer above INT64_MAX: a 16-byte binary integer, high half 0.
static plist_t s_big_uint_new(uint64_t v)
{
    uint8_t be[16] = {0};
    for (int i = 15; i >= 8; i--, v >>= 8)
        be[i] = (uint8_t)v;
    return s_node_from_bin1(0x14, be, 16);
}

// ---------------------------------------------------------------------------
//  Duplicate keys: a dict that names a key twice has no lossless msgpack
//  form (libplist's XML reader keeps the last, its binary reader keeps both).

typedef struct {
    const char *p;
    size_t n;
} s_key_t;

static int s_key_cmp(const void *a, const void *b)
{
    const s_key_t *x = a, *y = b;
    size_t m = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->p, y->p, m);
    if (c)
        return c;
    return x->n < y->n ? -1 : x->n > y->n;
}

//  Sorts `keys` in place; returns the index of a duplicate or -1.
static long s_key_dup(s_key_t *keys, size_t n)
{
    if (n < 2)
        return -1;
    qsort(keys, n, sizeof *keys, s_key_cmp);
    for (size_t i = 1; i < n; i++)
        if (s_key_cmp(&keys[i - 1], &keys[i]) == 0)
            return (long)i;
    return -1;
}

// ---------------------------------------------------------------------------
//  XML pre-scan.

typedef struct {
    const char *s, *p, *end;
    unsigned max_depth;
    size_t max_nodes, nodes;
    char *err;
    size_t errlen;
} s_xml_t;

enum { S_C_PLIST, S_C_DICT, S_C_ARRAY };

typedef struct {
    uint8_t kind;
    uint8_t want_value; //  dict: a <key> was read; plist: its value was read
} s_xframe_t;

//  The elements of an Apple XML plist. The name is classified once per tag
//  (it was compared with strcmp up to 14 times: ~2,500 instructions per
//  device request; docs/gateway.md, "Session 11, gwcpu6").
typedef enum {
    S_EL_UNKNOWN,
    S_EL_PLIST,
    S_EL_DICT,
    S_EL_ARRAY,
    S_EL_KEY, //  S_EL_KEY and after: leaves
    S_EL_STRING,
    S_EL_INTEGER,
    S_EL_REAL,
    S_EL_DATE,
    S_EL_DATA,
    S_EL_TRUE,
    S_EL_FALSE,
} s_el_t;

static s_el_t s_el_kind(const char *name, size_t nl)
{
    static const struct {
        const char *name;
        s_el_t el;
    } els[] = {{"plist", S_EL_PLIST}, {"dict", S_EL_DICT},     {"array", S_EL_ARRAY},
               {"key", S_EL_KEY},     {"string", S_EL_STRING}, {"integer", S_EL_INTEGER},
               {"real", S_EL_REAL},   {"date", S_EL_DATE},     {"data", S_EL_DATA},
               {"true", S_EL_TRUE},   {"false", S_EL_FALSE}};
    for (size_t i = 0; i < sizeof els / sizeof *els; i++)
        if (els[i].name[0] == name[0] && strlen(els[i].name) == nl &&
            memcmp(els[i].name, name, nl) == 0)
            return els[i].el;
    return S_EL_UNKNOWN;
}

static const char *const s_doctypes[] = {
    "<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" "
    "\"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">",
    "<!DOCTYPE plist PUBLIC \"-//Apple Computer//DTD PLIST 1.0//EN\" "
    "\"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">",
};

static bool s_is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool s_starts(const s_xml_t *x, const char *lit)
{
    size_t n = strlen(lit);
    return (size_t)(x->end - x->p) >= n && memcmp(x->p, lit, n) == 0;
}

static int s_xfail(s_xml_t *x, const char *what)
{
    s_err(x->err, x->errlen, "plist XML: %s at byte %zu (send a plain Apple XML plist)", what,
          (size_t)(x->p - x->s));
    return -1;
}

//  Advance past `lit` (searching forward); -1 if absent.
static int s_skip_past(s_xml_t *x, const char *lit)
{
    size_t n = strlen(lit);
    const char *q = memmem(x->p, (size_t)(x->end - x->p), lit, n);
    if (!q)
        return -1;
    x->p = q + n;
    return 0;
}

//  Entity or character reference at t[0] == '&' within [t, e). Returns its
//  length or 0 if it is not one libplist decodes to an XML character.
static size_t s_xml_ref(const char *t, const char *e)
{
    static const char *const named[] = {"&lt;", "&gt;", "&amp;", "&quot;", "&apos;"};
    for (size_t i = 0; i < sizeof named / sizeof *named; i++) {
        size_t n = strlen(named[i]);
        if ((size_t)(e - t) >= n && memcmp(t, named[i], n) == 0)
            return n;
    }
    if (e - t < 4 || t[1] != '#')
        return 0;
    const char *q = t + 2;
    bool hex = *q == 'x';
    if (hex)
        q++;
    uint32_t c = 0;
    const char *digits = q;
    while (q < e && q - digits < 8) {
        char d = *q;
        int v;
        if (d >= '0' && d <= '9')
            v = d - '0';
        else if (hex && d >= 'a' && d <= 'f')
            v = d - 'a' + 10;
        else if (hex && d >= 'A' && d <= 'F')
            v = d - 'A' + 10;
        else
            break;
        c = c * (hex ? 16 : 10) + (uint32_t)v;
        q++;
    }
    if (q == digits || q >= e || *q != ';' || !s_xml_char_ok(c))
        return 0;
    return (size_t)(q + 1 - t);
}

static bool s_digits(const char *t, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (t[i] < '0' || t[i] > '9')
            return false;
    return true;
}

//  -?[0-9]+ without leading zeros (libplist reads "010" as octal), within
//  INT64_MIN..UINT64_MAX (libplist saturates silently).
static bool s_xml_int_ok(const char *t, size_t n)
{
    bool neg = n > 0 && t[0] == '-';
    if (neg)
        t++, n--;
    if (!s_digits(t, n) || (n > 1 && t[0] == '0') || n > 20)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t d = (uint64_t)(t[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    return !neg || v <= (uint64_t)INT64_MAX + 1;
}

//  [+-]?(digits[.digits]|.digits)([eE][+-]?digits)?, or what libplist writes
//  for non-finite values.
static bool s_xml_real_ok(const char *t, size_t n)
{
    if ((n == 3 && memcmp(t, "nan", 3) == 0) || (n == 9 && memcmp(t, "+infinity", 9) == 0) ||
        (n == 9 && memcmp(t, "-infinity", 9) == 0))
        return true;
    if (n == 0 || n > 64)
        return false;
    size_t i = 0, d = 0;
    if (t[i] == '+' || t[i] == '-')
        i++;
    while (i < n && t[i] >= '0' && t[i] <= '9')
        i++, d++;
    if (i < n && t[i] == '.') {
        i++;
        while (i < n && t[i] >= '0' && t[i] <= '9')
            i++, d++;
    }
    if (d == 0)
        return false;
    if (i < n && (t[i] == 'e' || t[i] == 'E')) {
        i++;
        if (i < n && (t[i] == '+' || t[i] == '-'))
            i++;
        if (!s_digits(t + i, n - i))
            return false;
        return true;
    }
    return i == n;
}

static int s_num(const char *t, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (t[i] - '0');
    return v;
}

//  YYYY-MM-DDTHH:MM:SSZ, a real calendar date, years 1000..9999.
static bool s_xml_date_ok(const char *t, size_t n)
{
    if (n != 20 || t[4] != '-' || t[7] != '-' || t[10] != 'T' || t[13] != ':' || t[16] != ':' ||
        t[19] != 'Z')
        return false;
    static const uint8_t pos[] = {0, 4, 5, 2, 8, 2, 11, 2, 14, 2, 17, 2};
    for (size_t i = 0; i < sizeof pos; i += 2) {
        size_t len = i == 0 ? 4 : pos[i + 1];
        if (!s_digits(t + pos[i], len))
            return false;
    }
    int y = s_num(t, 4), mo = s_num(t + 5, 2), d = s_num(t + 8, 2);
    int h = s_num(t + 11, 2), mi = s_num(t + 14, 2), s = s_num(t + 17, 2);
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1000 || mo < 1 || mo > 12 || h > 23 || mi > 59 || s > 59 || d < 1)
        return false;
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return d <= mdays[mo - 1] + (mo == 2 && leap);
}

//  Base64 with whitespace anywhere, length a multiple of 4, '=' only as
//  the last one or two characters.
static bool s_xml_b64_ok(const char *t, size_t n)
{
    size_t count = 0, pad = 0;
    for (size_t i = 0; i < n; i++) {
        char c = t[i];
        if (s_is_ws(c))
            continue;
        if (c == '=') {
            pad++;
        } else if (pad || !((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                            (c >= '0' && c <= '9') || c == '+' || c == '/')) {
            return false;
        }
        count++;
    }
    return count % 4 == 0 && pad <= 2;
}

//  Leaf element content t[0..n) for element `name`.
static int s_xml_leaf(s_xml_t *x, s_el_t el, const char *name, const char *t, size_t n)
{
    bool ok;
    if (el == S_EL_STRING || el == S_EL_KEY) {
        ok = true;
        for (size_t i = 0; i < n && ok; i++) {
            if (t[i] == '&') {
                size_t k = s_xml_ref(t + i, t + n);
                ok = k > 0;
                if (ok)
                    i += k - 1;
            } else if (t[i] == '>' && i >= 2 && t[i - 1] == ']' && t[i - 2] == ']') {
                ok = false; //  "]]>" is not allowed in XML text
            }
        }
    } else if (el == S_EL_INTEGER) {
        ok = s_xml_int_ok(t, n);
    } else if (el == S_EL_REAL) {
        ok = s_xml_real_ok(t, n);
    } else if (el == S_EL_DATE) {
        ok = s_xml_date_ok(t, n);
    } else if (el == S_EL_DATA) {
        ok = s_xml_b64_ok(t, n);
    } else { //  true, false
        ok = n == 0;
    }
    if (!ok) {
        char what[64];
        snprintf(what, sizeof what, "bad <%s> content", name);
        return s_xfail(x, what);
    }
    return 0;
}

static bool s_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == ':' || c == '.';
}

//  Attributes of <plist>: name="value" or name='value', no '<' or '&'.
static int s_xml_attrs(s_xml_t *x)
{
    for (;;) {
        while (x->p < x->end && s_is_ws(*x->p))
            x->p++;
        if (x->p >= x->end || *x->p == '>' || *x->p == '/')
            return 0;
        const char *n0 = x->p;
        while (x->p < x->end && s_name_char(*x->p))
            x->p++;
        if (x->p == n0 || x->p >= x->end || *x->p != '=')
            return s_xfail(x, "bad attribute");
        x->p++;
        if (x->p >= x->end || (*x->p != '"' && *x->p != '\''))
            return s_xfail(x, "bad attribute");
        char q = *x->p++;
        while (x->p < x->end && *x->p != q) {
            if (*x->p == '<' || *x->p == '&')
                return s_xfail(x, "bad attribute value");
            x->p++;
        }
        if (x->p >= x->end)
            return s_xfail(x, "unterminated attribute");
        x->p++;
        if (x->p < x->end && !s_is_ws(*x->p) && *x->p != '>' && *x->p != '/')
            return s_xfail(x, "bad attribute");
    }
}

//  Misc between elements: comments anywhere outside leaves, the XML
//  declaration only at byte 0, one Apple DOCTYPE before the root.
static int s_xml_misc(s_xml_t *x, bool *doctype_ok, bool *handled)
{
    *handled = true;
    if (s_starts(x, "<!--")) {
        x->p += 4;
        if (s_skip_past(x, "-->") < 0)
            return s_xfail(x, "unterminated comment");
        return 0;
    }
    if (s_starts(x, "<?xml") && x->p == x->s) {
        const char *q = x->p + 5;
        if (q >= x->end || !s_is_ws(*q))
            return s_xfail(x, "bad XML declaration");
        for (; q + 1 < x->end && !(q[0] == '?' && q[1] == '>'); q++)
            if (*q == '<' || *q == '>')
                return s_xfail(x, "bad XML declaration");
        if (q + 1 >= x->end)
            return s_xfail(x, "unterminated XML declaration");
        x->p = q + 2;
        return 0;
    }
    if (s_starts(x, "<?"))
        return s_xfail(x, "processing instruction not accepted");
    if (s_starts(x, "<!DOCTYPE")) {
        if (!*doctype_ok)
            return s_xfail(x, "misplaced DOCTYPE");
        for (size_t i = 0; i < sizeof s_doctypes / sizeof *s_doctypes; i++) {
            if (s_starts(x, s_doctypes[i])) {
                x->p += strlen(s_doctypes[i]);
                *doctype_ok = false;
                return 0;
            }
        }
        return s_xfail(x, "only Apple's PLIST 1.0 DOCTYPE is accepted (no internal subset)");
    }
    if (s_starts(x, "<!"))
        return s_xfail(x, "DOCTYPE, ENTITY and CDATA sections are not accepted");
    *handled = false;
    return 0;
}

static int s_xml_scan(const char *data, size_t len, const pm_plist_limits_t *lim, char *err,
                      size_t errlen)
{
    s_xml_t x = {.s = data,
                 .p = data,
                 .end = data + len,
                 .max_depth = s_depth_limit(lim),
                 .max_nodes = lim->max_nodes,
                 .err = err,
                 .errlen = errlen};
    size_t bad;
    if (s_text_check((const uint8_t *)data, len, &bad) < 0) {
        s_err(err, errlen,
              "plist XML: invalid UTF-8 or a character XML cannot carry at byte %zu "
              "(send UTF-8 text)",
              bad);
        return -1;
    }
    //  containers: plist + max_depth dict/array levels
    s_xframe_t stack[PM_PLIST_DEPTH_CAP + 2];
    size_t sp = 0;
    bool doctype_ok = true, root_done = false;

    while (x.p < x.end) {
        if (*x.p != '<') {
            if (!s_is_ws(*x.p))
                return s_xfail(&x, "text outside a value");
            x.p++;
            continue;
        }
        bool handled;
        if (s_xml_misc(&x, &doctype_ok, &handled) < 0)
            return -1;
        if (handled)
            continue;
        if (root_done)
            return s_xfail(&x, "content after </plist>");
        doctype_ok = false;

        bool closing = x.p + 1 < x.end && x.p[1] == '/';
        x.p += closing ? 2 : 1;
        char name[16];
        size_t nl = 0;
        while (x.p < x.end && s_name_char(*x.p)) {
            if (nl + 1 >= sizeof name)
                return s_xfail(&x, "unknown element");
            name[nl++] = *x.p++;
        }
        name[nl] = 0;
        s_el_t el = nl ? s_el_kind(name, nl) : S_EL_UNKNOWN;

        if (closing) {
            while (x.p < x.end && s_is_ws(*x.p))
                x.p++;
            if (x.p >= x.end || *x.p != '>')
                return s_xfail(&x, "bad closing tag");
            x.p++;
            if (sp == 0)
                return s_xfail(&x, "unbalanced closing tag");
            s_xframe_t *top = &stack[sp - 1];
            static const s_el_t cel[] = {S_EL_PLIST, S_EL_DICT, S_EL_ARRAY};
            if (el != cel[top->kind])
                return s_xfail(&x, "mismatched closing tag");
            if (top->kind == S_C_DICT && top->want_value)
                return s_xfail(&x, "<key> without a value");
            if (top->kind == S_C_PLIST && !top->want_value)
                return s_xfail(&x, "<plist> without a value");
            if (--sp == 0)
                root_done = true;
            continue;
        }

        bool is_plist = el == S_EL_PLIST;
        bool is_cont = el == S_EL_DICT || el == S_EL_ARRAY;
        bool is_key = el == S_EL_KEY;
        if (el == S_EL_UNKNOWN)
            return s_xfail(&x, "unknown element");
        if (is_plist) {
            if (sp != 0)
                return s_xfail(&x, "nested <plist>");
            if (s_xml_attrs(&x) < 0)
                return -1;
        }
        while (x.p < x.end && s_is_ws(*x.p)) //  <true />, <dict > (libplist reads them)
            x.p++;
        bool empty = false;
        if (x.p < x.end && *x.p == '/') {
            empty = true;
            x.p++;
        }
        if (x.p >= x.end || *x.p != '>')
            return s_xfail(&x, "bad tag");
        x.p++;

        //  where may this element appear?
        if (sp == 0) {
            if (!is_plist)
                return s_xfail(&x, "the document must be a <plist> element");
            if (empty)
                return s_xfail(&x, "<plist> without a value");
            stack[sp++] = (s_xframe_t){S_C_PLIST, 0};
            continue;
        }
        s_xframe_t *top = &stack[sp - 1];
        if (top->kind == S_C_DICT && !top->want_value) {
            if (!is_key)
                return s_xfail(&x, "a dict value without a <key>");
        } else if (is_key) {
            return s_xfail(&x, "<key> outside a dict");
        } else if (top->kind == S_C_PLIST && top->want_value) {
            return s_xfail(&x, "<plist> holds more than one value");
        }
        if (!is_key && ++x.nodes > x.max_nodes) {
            s_err(err, errlen, "plist: more than %zu values (raise the limit or split the body)",
                  x.max_nodes);
            return -1;
        }
        //  the value is now in place in its parent
        if (top->kind == S_C_DICT)
            top->want_value = is_key;
        else if (top->kind == S_C_PLIST)
            top->want_value = 1;

        if (is_cont) {
            if (empty)
                continue;
            if (sp > x.max_depth) { //  sp - 1 containers already open below <plist>
                s_err(err, errlen,
                      "plist: nesting deeper than %u levels at byte %zu (flatten the body)",
                      x.max_depth, (size_t)(x.p - x.s));
                return -1;
            }
            stack[sp++] = (s_xframe_t){el == S_EL_DICT ? S_C_DICT : S_C_ARRAY, 0};
            continue;
        }
        //  a leaf: text up to the next '<', then exactly its closing tag
        const char *t = x.p;
        if (!empty) {
            const char *q = memchr(x.p, '<', (size_t)(x.end - x.p));
            if (!q)
                return s_xfail(&x, "unterminated element");
            x.p = q;
            //  "</" + name next (x.p is at a '<'); compared in place, not
            //  through a snprintf of the closing tag per value
            size_t cn = nl + 2;
            if ((size_t)(x.end - x.p) < cn || x.p[1] != '/' || memcmp(x.p + 2, name, nl) != 0)
                return s_xfail(&x, "markup inside a value (comments and CDATA are not accepted)");
            if (s_xml_leaf(&x, el, name, t, (size_t)(q - t)) < 0)
                return -1;
            x.p += cn;
            while (x.p < x.end && s_is_ws(*x.p))
                x.p++;
            if (x.p >= x.end || *x.p != '>')
                return s_xfail(&x, "bad closing tag");
            x.p++;
        } else if (el == S_EL_INTEGER || el == S_EL_REAL || el == S_EL_DATE) {
            return s_xfail(&x, "empty number or date");
        } else if (is_key) {
            return s_xfail(&x, "<key/> (libplist 2.2 needs <key></key>)");
        }
    }
    if (!root_done) {
        s_err(err, errlen, "plist XML: truncated document (no closing </plist>)");
        return -1;
    }
    return 0;
}

// ---------------------------------------------------------------------------
//  Binary pre-scan.

typedef struct {
    const uint8_t *d;
    size_t len;
    size_t body_end; //  offset table start: objects live in [8, body_end)
    unsigned off_size, ref_size;
    uint64_t nobj, top, table;
    uint64_t expanded, max_expanded; //  string/data bytes of the expanded tree
    char *err;
    size_t errlen;
} s_bin_t;

static uint64_t s_be(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

static int s_bfail(s_bin_t *b, const char *what, uint64_t obj)
{
    s_err(b->err, b->errlen, "binary plist: %s (object %llu); send a well-formed plist", what,
          (unsigned long long)obj);
    return -1;
}

//  Offset of object `obj`'s first byte, checked to lie in the object area.
static int s_bin_obj(s_bin_t *b, uint64_t obj, size_t *off)
{
    if (obj >= b->nobj)
        return s_bfail(b, "reference past the object count", obj);
    uint64_t o = s_be(b->d + b->table + obj * b->off_size, b->off_size);
    if (o < 8 || o >= b->body_end)
        return s_bfail(b, "object offset outside the object area", obj);
    *off = (size_t)o;
    return 0;
}

//  Element count of the object at `off` (low nibble, or 0xF + an int object);
//  *start = offset of the first content byte.
static int s_bin_count(s_bin_t *b, uint64_t obj, size_t off, uint64_t *count, size_t *start)
{
    uint8_t info = b->d[off] & 0x0F;
    off++;
    if (info != 0x0F) {
        *count = info;
        *start = off;
        return 0;
    }
    if (off >= b->body_end || (b->d[off] & 0xF0) != 0x10 || (b->d[off] & 0x0F) > 3)
        return s_bfail(b, "bad length", obj);
    unsigned n = 1u << (b->d[off] & 0x0F);
    off++;
    if (n > b->body_end - off)
        return s_bfail(b, "length runs past the object area", obj);
    *count = s_be(b->d + off, n);
    *start = off + n;
    return 0;
}

//  Check that `count` units of `unit` bytes fit in the object area from `start`.
static int s_bin_fits(s_bin_t *b, uint64_t obj, size_t start, uint64_t count, uint64_t unit)
{
    uint64_t avail = b->body_end - start;
    if (count > avail / unit)
        return s_bfail(b, "object runs past the object area", obj);
    return 0;
}

//  A string or data object shared by many references is copied by libplist
//  for each of them: bound the total as if the plist had been written out.
static int s_bin_expand(s_bin_t *b, uint64_t obj, uint64_t bytes)
{
    b->expanded += bytes;
    if (b->expanded > b->max_expanded) {
        s_err(b->err, b->errlen,
              "binary plist: shared objects expand past the %llu-byte limit (object %llu); "
              "send a smaller body",
              (unsigned long long)b->max_expanded, (unsigned long long)obj);
        return -1;
    }
    return 0;
}

//  UTF-16BE string: pairs well formed, every character allowed in XML.
static int s_bin_utf16_ok(const uint8_t *p, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        uint32_t c = (uint32_t)s_be(p + 2 * i, 2);
        if (c >= 0xD800 && c <= 0xDBFF) {
            if (i + 1 >= n)
                return -1;
            uint32_t lo = (uint32_t)s_be(p + 2 * (i + 1), 2);
            if (lo < 0xDC00 || lo > 0xDFFF)
                return -1;
            c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00);
            i++;
        } else if (c >= 0xDC00 && c <= 0xDFFF) {
            return -1;
        }
        if (!s_xml_char_ok(c))
            return -1;
    }
    return 0;
}

//  Check one object. Containers return their count and the offset of their
//  reference list (*is_cont = kind); scalars are fully checked here.
static int s_bin_check(s_bin_t *b, uint64_t obj, bool want_string, int *kind, uint64_t *count,
                       size_t *refs)
{
    size_t off, start;
    *kind = 0;
    if (s_bin_obj(b, obj, &off) < 0)
        return -1;
    uint8_t m = b->d[off], type = m >> 4, info = m & 0x0F;
    if (want_string && type != 0x5 && type != 0x6)
        return s_bfail(b, "dict key is not a string", obj);
    uint64_t n;
    size_t bad;
    switch (type) {
    case 0x0:
        if (info == 0x8 || info == 0x9)
            return 0;
        return s_bfail(b, "null and fill objects have no msgpack form", obj);
    case 0x1: //  int: 1, 2, 4, 8 bytes, or 16 with a zero high half
        if (info > 4)
            return s_bfail(b, "bad integer size", obj);
        if (s_bin_fits(b, obj, off + 1, 1, 1u << info) < 0)
            return -1;
        if (info == 4 && s_be(b->d + off + 1, 8) != 0)
            return s_bfail(b, "128-bit integer out of the 64-bit range", obj);
        return 0;
    case 0x2:
        if (info != 2 && info != 3)
            return s_bfail(b, "bad real size", obj);
        return s_bin_fits(b, obj, off + 1, 1, 1u << info);
    case 0x3:
        if (info != 3)
            return s_bfail(b, "bad date size", obj);
        return s_bin_fits(b, obj, off + 1, 1, 8);
    case 0x4:
        if (s_bin_count(b, obj, off, &n, &start) < 0 || s_bin_fits(b, obj, start, n, 1) < 0)
            return -1;
        return s_bin_expand(b, obj, n);
    case 0x5:
        if (s_bin_count(b, obj, off, &n, &start) < 0 || s_bin_fits(b, obj, start, n, 1) < 0 ||
            s_bin_expand(b, obj, n) < 0)
            return -1;
        if (s_text_check(b->d + start, (size_t)n, &bad) < 0)
            return s_bfail(b, "string is not XML-safe UTF-8", obj);
        return 0;
    case 0x6:
        if (s_bin_count(b, obj, off, &n, &start) < 0 || s_bin_fits(b, obj, start, n, 2) < 0 ||
            s_bin_expand(b, obj, 2 * n) < 0)
            return -1;
        if (s_bin_utf16_ok(b->d + start, n) < 0)
            return s_bfail(b, "string is not valid XML-safe UTF-16", obj);
        return 0;
    case 0x8:
        return s_bfail(b, "UID objects are not valid in MDM plists", obj);
    case 0xA:
    case 0xD:
        if (s_bin_count(b, obj, off, &n, &start) < 0)
            return -1;
        if (s_bin_fits(b, obj, start, n, (uint64_t)b->ref_size * (type == 0xD ? 2 : 1)) < 0)
            return -1;
        *kind = type == 0xA ? S_C_ARRAY : S_C_DICT;
        *count = n;
        *refs = start;
        return 0;
    default:
        return s_bfail(b, "unsupported object type (sets, ...)", obj);
    }
}

typedef struct {
    uint64_t obj, i, n;
    size_t refs;
    int kind;
} s_bframe_t;

static int s_bin_scan(const char *data, size_t len, const pm_plist_limits_t *lim, char *err,
                      size_t errlen)
{
    s_bin_t b = {.d = (const uint8_t *)data,
                 .len = len,
                 .max_expanded = lim->max_bytes,
                 .err = err,
                 .errlen = errlen};
    uint8_t *on_path = NULL;
    int rc = -1;
    if (len < 8 + 1 + 1 + 32) {
        s_err(err, errlen, "binary plist: truncated (%zu bytes); send the whole body", len);
        return -1;
    }
    const uint8_t *t = b.d + len - 32;
    b.off_size = t[6];
    b.ref_size = t[7];
    b.nobj = s_be(t + 8, 8);
    b.top = s_be(t + 16, 8);
    b.table = s_be(t + 24, 8);
    if ((b.off_size != 1 && b.off_size != 2 && b.off_size != 4 && b.off_size != 8) ||
        (b.ref_size != 1 && b.ref_size != 2 && b.ref_size != 4 && b.ref_size != 8)) {
        s_err(err, errlen, "binary plist: bad trailer (offset size %u, ref size %u)", b.off_size,
              b.ref_size);
        return -1;
    }
    size_t avail = len - 32;
    if (b.nobj == 0 || b.top >= b.nobj || b.table < 9 || b.table >= avail ||
        b.nobj > (avail - b.table) / b.off_size) {
        s_err(err, errlen,
              "binary plist: trailer points outside the data (objects %llu, top %llu, "
              "table at %llu of %zu bytes)",
              (unsigned long long)b.nobj, (unsigned long long)b.top, (unsigned long long)b.table,
              len);
        return -1;
    }
    b.body_end = (size_t)b.table;

    //  the expanded tree is bounded by max_nodes; the object table by the bytes
    on_path = calloc((size_t)b.nobj, 1);
    if (!on_path) {
        s_err(err, errlen, "binary plist: out of memory");
        return -1;
    }
    unsigned max_depth = s_depth_limit(lim);
    s_bframe_t stack[PM_PLIST_DEPTH_CAP + 1];
    size_t sp = 0, nodes = 0;
    uint64_t next = b.top; //  the value to visit next
    bool have_next = true;
    for (;;) {
        if (have_next) {
            int kind;
            uint64_t count = 0;
            size_t refs = 0;
            if (++nodes > lim->max_nodes) {
                s_err(err, errlen,
                      "plist: more than %zu values (raise the limit or split the body)",
                      lim->max_nodes);
                goto out;
            }
            if (s_bin_check(&b, next, false, &kind, &count, &refs) < 0)
                goto out;
            if (kind) {
                if (on_path[next]) {
                    s_bfail(&b, "reference cycle", next);
                    goto out;
                }
                if (sp >= max_depth) {
                    s_err(err, errlen, "plist: nesting deeper than %u levels (flatten the body)",
                          max_depth);
                    goto out;
                }
                on_path[next] = 1;
                stack[sp++] = (s_bframe_t){next, 0, count, refs, kind};
            }
            have_next = false;
        }
        if (sp == 0)
            break;
        s_bframe_t *f = &stack[sp - 1];
        if (f->i == f->n) {
            on_path[f->obj] = 0;
            sp--;
            continue;
        }
        const uint8_t *r = b.d + f->refs;
        if (f->kind == S_C_DICT) {
            uint64_t key = s_be(r + f->i * b.ref_size, b.ref_size);
            int kk;
            uint64_t kc;
            size_t kr;
            if (s_bin_check(&b, key, true, &kk, &kc, &kr) < 0)
                goto out;
            next = s_be(r + (f->n + f->i) * b.ref_size, b.ref_size);
        } else {
            next = s_be(r + f->i * b.ref_size, b.ref_size);
        }
        f->i++;
        have_next = true;
    }
    rc = 0;
out:
    free(on_path);
    return rc;
}

// ---------------------------------------------------------------------------
//  plist tree -> msgpack.

typedef struct {
    msgpack_packer pk;
    unsigned max_depth;
    size_t max_nodes, nodes;
    char *err;
    size_t errlen;
} s_pack_t;

static int s_pack_str(s_pack_t *c, const char *s, const char *what)
{
    size_t n = strlen(s);
    if (s_text_check((const uint8_t *)s, n, NULL) < 0) {
        s_err(c->err, c->errlen, "plist: %s is not XML-safe UTF-8", what);
        return -1;
    }
    msgpack_pack_str(&c->pk, n);
    msgpack_pack_str_body(&c->pk, s, n);
    return 0;
}

//  A PLIST_UINT above INT64_MAX is negative unless libplist marked it as a
//  16-byte (unsigned) integer; plist_new_uint makes the 8-byte kind, and
//  plist_compare_node_value compares that hidden width too.
static bool s_uint_is_unsigned(plist_t node, uint64_t v)
{
    plist_t probe = plist_new_uint(v);
    bool same = probe && plist_compare_node_value(node, probe);
    plist_free(probe);
    return !same;
}

static int s_pack_node(s_pack_t *c, plist_t node, unsigned depth);

static int s_pack_dict(s_pack_t *c, plist_t node, unsigned depth)
{
    uint32_t n = plist_dict_get_size(node);
    s_key_t *keys = calloc(n ? n : 1, sizeof *keys);
    plist_t *vals = calloc(n ? n : 1, sizeof *vals);
    plist_dict_iter it = NULL;
    uint32_t got = 0;
    int rc = -1;
    if (!keys || !vals) {
        s_err(c->err, c->errlen, "plist: out of memory");
        goto out;
    }
    plist_dict_new_iter(node, &it);
    while (it) {
        char *k = NULL;
        plist_t v = NULL;
        plist_dict_next_item(node, it, &k, &v);
        if (!k || !v) {
            free(k);
            break;
        }
        if (got == n) {
            free(k);
            s_err(c->err, c->errlen, "plist: dict size changed while reading it");
            goto out;
        }
        keys[got] = (s_key_t){k, strlen(k)};
        vals[got++] = v;
    }
    if (got != n) {
        s_err(c->err, c->errlen, "plist: dict size mismatch");
        goto out;
    }
    //  check duplicates on a sorted copy; pack in document order
    s_key_t *sorted = malloc((n ? n : 1) * sizeof *sorted);
    if (!sorted) {
        s_err(c->err, c->errlen, "plist: out of memory");
        goto out;
    }
    memcpy(sorted, keys, n * sizeof *sorted);
    long dup = s_key_dup(sorted, n);
    free(sorted);
    if (dup >= 0) {
        s_err(c->err, c->errlen, "plist: a dict has the same key twice; send each key once");
        goto out;
    }
    msgpack_pack_map(&c->pk, n);
    for (uint32_t i = 0; i < n; i++) {
        if (s_pack_str(c, keys[i].p, "dict key") < 0 || s_pack_node(c, vals[i], depth + 1) < 0)
            goto out;
    }
    rc = 0;
out:
    free(it);
    if (keys)
        for (uint32_t i = 0; i < got; i++)
            free((char *)keys[i].p);
    free(keys);
    free(vals);
    return rc;
}

static int s_pack_array(s_pack_t *c, plist_t node, unsigned depth)
{
    uint32_t n = plist_array_get_size(node), got = 0;
    plist_array_iter it = NULL;
    int rc = -1;
    msgpack_pack_array(&c->pk, n);
    plist_array_new_iter(node, &it);
    while (it) {
        plist_t v = NULL;
        plist_array_next_item(node, it, &v);
        if (!v)
            break;
        if (got++ == n || s_pack_node(c, v, depth + 1) < 0)
            goto out;
    }
    if (got != n) {
        s_err(c->err, c->errlen, "plist: array size mismatch");
        goto out;
    }
    rc = 0;
out:
    free(it);
    return rc;
}

static int s_pack_node(s_pack_t *c, plist_t node, unsigned depth)
{
    if (++c->nodes > c->max_nodes) {
        s_err(c->err, c->errlen, "plist: more than %zu values (raise the limit or split the body)",
              c->max_nodes);
        return -1;
    }
    switch (plist_get_node_type(node)) {
    case PLIST_BOOLEAN: {
        uint8_t v = 0;
        plist_get_bool_val(node, &v);
        return v ? msgpack_pack_true(&c->pk) : msgpack_pack_false(&c->pk);
    }
    case PLIST_UINT: {
        uint64_t v = 0;
        plist_get_uint_val(node, &v);
        if (v <= (uint64_t)INT64_MAX || s_uint_is_unsigned(node, v))
            return msgpack_pack_uint64(&c->pk, v);
        int64_t i;
        memcpy(&i, &v, sizeof i);
        return msgpack_pack_int64(&c->pk, i);
    }
    case PLIST_REAL: {
        double d = 0;
        plist_get_real_val(node, &d);
        //  the XML writer loses the sign of zero and NaN payloads: one of each
        if (d == 0)
            d = 0;
        else if (isnan(d))
            d = NAN;
        return msgpack_pack_double(&c->pk, d);
    }
    case PLIST_STRING: {
        char *s = NULL;
        plist_get_string_val(node, &s);
        int rc = s ? s_pack_str(c, s, "string") : -1;
        if (!s)
            s_err(c->err, c->errlen, "plist: unreadable string");
        free(s);
        return rc;
    }
    case PLIST_DATA: {
        char *p = NULL;
        uint64_t n = 0;
        plist_get_data_val(node, &p, &n);
        if (n > UINT32_MAX || (n && !p)) {
            free(p);
            s_err(c->err, c->errlen, "plist: unreadable data");
            return -1;
        }
        msgpack_pack_bin(&c->pk, (size_t)n);
        msgpack_pack_bin_body(&c->pk, p, (size_t)n);
        free(p);
        return 0;
    }
    case PLIST_DATE: {
        double mac;
        msgpack_timestamp ts;
        if (s_date_get(node, &mac) < 0 || !s_mac_to_ts(mac, &ts)) {
            s_err(c->err, c->errlen, "plist: date outside years 1000..9999");
            return -1;
        }
        return msgpack_pack_timestamp(&c->pk, &ts);
    }
    case PLIST_ARRAY:
    case PLIST_DICT:
        if (depth >= c->max_depth) {
            s_err(c->err, c->errlen, "plist: nesting deeper than %u levels (flatten the body)",
                  c->max_depth);
            return -1;
        }
        return plist_get_node_type(node) == PLIST_DICT ? s_pack_dict(c, node, depth)
                                                       : s_pack_array(c, node, depth);
    case PLIST_UID:
        s_err(c->err, c->errlen, "plist: UID values are not valid in MDM plists");
        return -1;
    default:
        s_err(c->err, c->errlen, "plist: unsupported value type");
        return -1;
    }
}

int pm_plist_parse(const char *data, size_t len, const pm_plist_limits_t *lim, plist_t *root,
                   char *err, size_t errlen)
{
    if (!lim)
        lim = &pm_plist_default_limits;
    if (!data || !root) {
        s_err(err, errlen, "plist: missing argument");
        return -1;
    }
    *root = NULL;
    if (len == 0) {
        s_err(err, errlen, "plist: empty body (send an XML or binary plist)");
        return -1;
    }
    if (len > lim->max_bytes || len > UINT32_MAX) {
        s_err(err, errlen, "plist: body of %zu bytes exceeds the %zu-byte limit", len,
              lim->max_bytes);
        return -1;
    }
    bool binary = len >= 8 && plist_is_binary(data, (uint32_t)len);
    if (binary ? s_bin_scan(data, len, lim, err, errlen) < 0
               : s_xml_scan(data, len, lim, err, errlen) < 0)
        return -1;
    if (binary)
        plist_from_bin(data, (uint32_t)len, root);
    else
        plist_from_xml(data, (uint32_t)len, root);
    if (!*root) {
        s_err(err, errlen, "plist: libplist rejected the %s body (send a well-formed plist)",
              binary ? "binary" : "XML");
        return -1;
    }
    return 0;
}

int pm_plist_to_msgpack(const char *data, size_t len, const pm_plist_limits_t *lim, uint8_t **out,
                        size_t *outlen, char *err, size_t errlen)
{
    plist_t root = NULL;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    int rc = -1;
    if (!lim)
        lim = &pm_plist_default_limits;
    if (!out || !outlen) {
        s_err(err, errlen, "plist: missing argument");
        goto out;
    }
    *out = NULL;
    *outlen = 0;
    if (pm_plist_parse(data, len, lim, &root, err, errlen) < 0)
        goto out;
    //  A first buffer the size of a device request's msgpack (a third to a
    //  half of its XML) instead of msgpack_sbuffer_write's 8 KiB: glibc
    //  serves an allocation above ~1 KiB from its large bins and first
    //  merges every freed small chunk (malloc_consolidate), on every request.
    if (len <= 4096) {
        sb.data = malloc(512);
        sb.alloc = sb.data ? 512 : 0;
    }
    s_pack_t c = {
        .max_depth = s_depth_limit(lim), .max_nodes = lim->max_nodes, .err = err, .errlen = errlen};
    msgpack_packer_init(&c.pk, &sb, msgpack_sbuffer_write);
    if (s_pack_node(&c, root, 0) < 0)
        goto out;
    *outlen = sb.size;
    *out = (uint8_t *)msgpack_sbuffer_release(&sb);
    rc = 0;
out:
    plist_free(root);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

// ---------------------------------------------------------------------------
//  msgpack -> plist tree -> XML.

typedef struct {
    unsigned max_depth;
    size_t max_nodes, nodes;
    char *err;
    size_t errlen;
} s_build_t;

static plist_t s_bfailn(s_build_t *b, const char *what)
{
    s_err(b->err, b->errlen, "msgpack->plist: %s", what);
    return NULL;
}

//  NUL-terminated copy of a msgpack str that a plist can carry.
static char *s_str_dup(s_build_t *b, const char *p, uint32_t n, const char *what)
{
    if ((n && !p) || s_text_check((const uint8_t *)p, n, NULL) < 0) {
        s_err(b->err, b->errlen,
              "msgpack->plist: %s is not XML-safe UTF-8 (no NUL or control characters)", what);
        return NULL;
    }
    char *s = malloc((size_t)n + 1);
    if (!s) {
        s_err(b->err, b->errlen, "msgpack->plist: out of memory");
        return NULL;
    }
    if (n)
        memcpy(s, p, n);
    s[n] = 0;
    return s;
}

static plist_t s_build(s_build_t *b, const msgpack_object *o, unsigned depth);

static plist_t s_build_map(s_build_t *b, const msgpack_object *o, unsigned depth)
{
    const msgpack_object_map *m = &o->via.map;
    s_key_t *keys = NULL;
    plist_t dict = NULL;
    if (m->size && !m->ptr)
        return s_bfailn(b, "corrupt map");
    keys = malloc((m->size ? m->size : 1) * sizeof *keys);
    if (!keys)
        return s_bfailn(b, "out of memory");
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR) {
            s_bfailn(b, "map key is not a string (plist dict keys are strings)");
            goto fail;
        }
        keys[i] = (s_key_t){k->via.str.ptr ? k->via.str.ptr : "", k->via.str.size};
    }
    if (s_key_dup(keys, m->size) >= 0) {
        s_bfailn(b, "map has the same key twice");
        goto fail;
    }
    dict = plist_new_dict();
    if (!dict) {
        s_bfailn(b, "out of memory");
        goto fail;
    }
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object_str *ks = &m->ptr[i].key.via.str;
        char *key = s_str_dup(b, ks->ptr, ks->size, "map key");
        if (!key)
            goto fail;
        plist_t v = s_build(b, &m->ptr[i].val, depth + 1);
        if (!v) {
            free(key);
            goto fail;
        }
        plist_dict_set_item(dict, key, v);
        free(key);
    }
    free(keys);
    return dict;
fail:
    free(keys);
    plist_free(dict);
    return NULL;
}

static plist_t s_build_ts(s_build_t *b, const msgpack_object *o)
{
    msgpack_timestamp ts;
    if (!msgpack_object_to_timestamp(o, &ts) || ts.tv_nsec >= 1000000000u)
        return s_bfailn(b, "malformed timestamp");
    if (ts.tv_sec < S_DATE_MIN || ts.tv_sec > S_DATE_MAX)
        return s_bfailn(b, "timestamp outside years 1000..9999 (plist XML cannot carry it)");
    //  libplist writes XML dates in whole seconds; refuse to drop the rest
    if (ts.tv_nsec != 0)
        return s_bfailn(b, "timestamp has a fraction of a second (XML plist dates are whole "
                           "seconds: round it)");
    return s_date_new((double)(ts.tv_sec - S_MAC_EPOCH));
}

static plist_t s_build(s_build_t *b, const msgpack_object *o, unsigned depth)
{
    if (++b->nodes > b->max_nodes)
        return s_bfailn(b, "too many values");
    plist_t node = NULL;
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return s_bfailn(b, "nil has no plist form (leave the key out)");
    case MSGPACK_OBJECT_BOOLEAN:
        node = plist_new_bool(o->via.boolean ? 1 : 0);
        break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        node = o->via.u64 <= (uint64_t)INT64_MAX ? plist_new_uint(o->via.u64)
                                                 : s_big_uint_new(o->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: {
        uint64_t u;
        memcpy(&u, &o->via.i64, sizeof u);
        node = plist_new_uint(u); //  8-byte kind: read back as signed
        break;
    }
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        node = plist_new_real(o->via.f64);
        break;
    case MSGPACK_OBJECT_STR: {
        char *s = s_str_dup(b, o->via.str.ptr, o->via.str.size, "string");
        if (!s)
            return NULL;
        node = plist_new_string(s);
        free(s);
        break;
    }
    case MSGPACK_OBJECT_BIN:
        if (o->via.bin.size && !o->via.bin.ptr)
            return s_bfailn(b, "corrupt bin");
        node = plist_new_data(o->via.bin.size ? o->via.bin.ptr : "", o->via.bin.size);
        break;
    case MSGPACK_OBJECT_EXT:
        if (o->via.ext.type != -1)
            return s_bfailn(b, "ext types other than timestamp (-1) have no plist form");
        return s_build_ts(b, o);
    case MSGPACK_OBJECT_ARRAY:
        if (depth >= b->max_depth)
            return s_bfailn(b, "nesting too deep");
        if (o->via.array.size && !o->via.array.ptr)
            return s_bfailn(b, "corrupt array");
        node = plist_new_array();
        for (uint32_t i = 0; node && i < o->via.array.size; i++) {
            plist_t v = s_build(b, &o->via.array.ptr[i], depth + 1);
            if (!v) {
                plist_free(node);
                return NULL;
            }
            plist_array_append_item(node, v);
        }
        break;
    case MSGPACK_OBJECT_MAP:
        if (depth >= b->max_depth)
            return s_bfailn(b, "nesting too deep");
        return s_build_map(b, o, depth);
    default:
        return s_bfailn(b, "unknown msgpack type");
    }
    if (!node)
        return s_bfailn(b, "out of memory");
    return node;
}

int pm_plist_from_msgpack(const msgpack_object *obj, char **xml, size_t *xmllen, char *err,
                          size_t errlen)
{
    if (!obj || !xml || !xmllen) {
        s_err(err, errlen, "msgpack->plist: missing argument");
        return -1;
    }
    *xml = NULL;
    *xmllen = 0;
    s_build_t b = {.max_depth = s_depth_limit(&pm_plist_default_limits),
                   .max_nodes = pm_plist_default_limits.max_nodes,
                   .err = err,
                   .errlen = errlen};
    plist_t root = s_build(&b, obj, 0);
    if (!root)
        return -1;
    char *x = NULL;
    uint32_t n = 0;
    plist_to_xml(root, &x, &n);
    plist_free(root);
    if (!x) {
        s_err(err, errlen, "msgpack->plist: libplist could not write XML");
        return -1;
    }
    //  copy so that the buffer is ours and NUL-terminated whatever libplist did
    char *copy = malloc((size_t)n + 1);
    if (!copy) {
        free(x);
        s_err(err, errlen, "msgpack->plist: out of memory");
        return -1;
    }
    memcpy(copy, x, n);
    copy[n] = 0;
    free(x);
    *xml = copy;
    *xmllen = n;
    return 0;
}

int pm_plist_from_msgpack_bytes(const uint8_t *data, size_t len, char **xml, size_t *xmllen,
                                char *err, size_t errlen)
{
    if (!data || !xml || !xmllen) {
        s_err(err, errlen, "msgpack->plist: missing argument");
        return -1;
    }
    *xml = NULL;
    *xmllen = 0;
    //  same bounds as the plist direction: what one converts, the other can
    const pm_mpck_limits_t lim = {.max_depth = s_depth_limit(&pm_plist_default_limits),
                                  .max_elements = pm_plist_default_limits.max_nodes};
    msgpack_zone zone;
    msgpack_object obj;
    int rc = -1;
    if (!msgpack_zone_init(&zone, 4096)) {
        s_err(err, errlen, "msgpack->plist: out of memory");
        return -1;
    }
    if (pm_mpck_unpack(data, len, &lim, &zone, &obj, err, errlen) == 0)
        rc = pm_plist_from_msgpack(&obj, xml, xmllen, err, errlen);
    msgpack_zone_destroy(&zone);
    return rc;
}

const char *pm_plist_type_name(plist_t node)
{
    switch (plist_get_node_type(node)) {
    case PLIST_BOOLEAN:
        return "boolean";
    case PLIST_UINT:
        return "integer";
    case PLIST_REAL:
        return "real";
    case PLIST_STRING:
        return "string";
    case PLIST_ARRAY:
        return "array";
    case PLIST_DICT:
        return "dictionary";
    case PLIST_DATE:
        return "date";
    case PLIST_DATA:
        return "data";
    default:
        return "other";
    }
}
