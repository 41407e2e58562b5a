/*  pm_plist_test — cmocka tests for the plist <-> msgpack bridge: lossless
 *  round trips (seed check-in/command plists, one sample per Apple schema
 *  message, XML and binary), the 64-bit integer range, dates, and hostile
 *  input (deep nesting, cycles, bad trailers, truncation, entity tricks).
 *  Ends with the conversion speed of a 200-app InstalledApplicationList.
 *
 *  Data: tests/data/plist/ (under $PICOMDM_ROOT, default: the current dir).
 */
#include "pm_plist.h"

#include <plist/plist.h>

#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

static char s_errbuf[256];

// ---------------------------------------------------------------- helpers

static char *s_path(const char *rel)
{
    static char buf[1024];
    const char *root = getenv("PICOMDM_ROOT");
    snprintf(buf, sizeof buf, "%s/tests/data/plist/%s", root ? root : ".", rel);
    return buf;
}

static char *s_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fail_msg("cannot open %s (run from the repository root or set PICOMDM_ROOT)", path);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = 0;
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static int s_conv(const char *data, size_t len, uint8_t **mp, size_t *mplen)
{
    s_errbuf[0] = 0;
    return pm_plist_to_msgpack(data, len, &pm_plist_default_limits, mp, mplen, s_errbuf,
                               sizeof s_errbuf);
}

//  Expect a clean failure whose reason contains `needle`.
static void s_expect_fail(const char *data, size_t len, const char *needle)
{
    uint8_t *mp = (uint8_t *)"untouched";
    size_t mplen = 7;
    int rc = s_conv(data, len, &mp, &mplen);
    if (rc == 0)
        fail_msg("accepted input that should fail (%s)", needle);
    assert_null(mp);
    assert_int_equal(mplen, 0);
    assert_true(strlen(s_errbuf) > 0);
    if (needle && !strstr(s_errbuf, needle))
        fail_msg("error \"%s\" does not mention \"%s\"", s_errbuf, needle);
}

//  msgpack bytes -> XML through the bounded entry point.
static int s_mp_to_xml(const uint8_t *mp, size_t mplen, char **xml, size_t *xmllen)
{
    s_errbuf[0] = 0;
    return pm_plist_from_msgpack_bytes(mp, mplen, xml, xmllen, s_errbuf, sizeof s_errbuf);
}

//  plist -> msgpack -> XML -> msgpack must give identical bytes. Returns the
//  first msgpack (caller frees).
static uint8_t *s_roundtrip(const char *data, size_t len, size_t *mplen, const char *what)
{
    uint8_t *mp1 = NULL, *mp2 = NULL;
    size_t n1 = 0, n2 = 0, xl = 0;
    char *xml = NULL;
    if (s_conv(data, len, &mp1, &n1) != 0)
        fail_msg("%s: plist -> msgpack failed: %s", what, s_errbuf);
    if (s_mp_to_xml(mp1, n1, &xml, &xl) != 0)
        fail_msg("%s: msgpack -> plist failed: %s", what, s_errbuf);
    assert_int_equal(strlen(xml), xl);
    if (s_conv(xml, xl, &mp2, &n2) != 0)
        fail_msg("%s: plist -> msgpack (second pass) failed: %s", what, s_errbuf);
    if (n1 != n2 || memcmp(mp1, mp2, n1) != 0)
        fail_msg("%s: round trip changed the msgpack (%zu vs %zu bytes)", what, n1, n2);
    free(xml);
    free(mp2);
    *mplen = n1;
    return mp1;
}

static char *s_xml_to_bin(const char *xml, size_t len, size_t *binlen)
{
    plist_t p = NULL;
    plist_from_xml(xml, (uint32_t)len, &p);
    assert_non_null(p);
    char *bin = NULL;
    uint32_t n = 0;
    plist_to_bin(p, &bin, &n);
    plist_free(p);
    assert_non_null(bin);
    *binlen = n;
    return bin;
}

static const char *s_hdr = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                           "<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" "
                           "\"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n"
                           "<plist version=\"1.0\">";

//  A whole XML plist around `body` (static buffer).
static const char *s_wrap(const char *body)
{
    static char buf[8192];
    snprintf(buf, sizeof buf, "%s%s</plist>\n", s_hdr, body);
    return buf;
}

//  Unpack msgpack bytes into `zone` (our own output).
static msgpack_object s_unpack(const uint8_t *mp, size_t n, msgpack_zone *zone)
{
    msgpack_object o;
    size_t off = 0;
    assert_int_equal(msgpack_unpack((const char *)mp, n, &off, zone, &o), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, n);
    return o;
}

static const msgpack_object *s_get(const msgpack_object *map, const char *key)
{
    assert_int_equal(map->type, MSGPACK_OBJECT_MAP);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(key) &&
            memcmp(k->via.str.ptr, key, k->via.str.size) == 0)
            return &map->via.map.ptr[i].val;
    }
    fail_msg("key %s missing", key);
    return NULL;
}

//  Binary plist builder: objects given as byte strings, 4-byte offsets,
//  `ref` bytes per reference. Trailer fields can be overridden by the caller.
typedef struct {
    uint8_t *buf;
    size_t len;
    size_t trailer; //  offset of the 32-byte trailer
} s_bp_t;

static void s_put_be(uint8_t *p, uint64_t v, unsigned n)
{
    for (int i = (int)n - 1; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t s_be_read(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static s_bp_t s_bp_build(const uint8_t *const *objs, const size_t *lens, size_t n, size_t top,
                         unsigned ref)
{
    size_t body = 8;
    for (size_t i = 0; i < n; i++)
        body += lens[i];
    s_bp_t bp;
    bp.len = body + 4 * n + 32;
    bp.buf = calloc(1, bp.len);
    assert_non_null(bp.buf);
    memcpy(bp.buf, "bplist00", 8);
    size_t off = 8;
    for (size_t i = 0; i < n; i++) {
        memcpy(bp.buf + off, objs[i], lens[i]);
        s_put_be(bp.buf + body + 4 * i, off, 4);
        off += lens[i];
    }
    bp.trailer = body + 4 * n;
    uint8_t *t = bp.buf + bp.trailer;
    t[6] = 4;
    t[7] = (uint8_t)ref;
    s_put_be(t + 8, n, 8);
    s_put_be(t + 16, top, 8);
    s_put_be(t + 24, body, 8);
    return bp;
}

// ---------------------------------------------------------------- round trips

static void s_check_seed(const char *name, void (*check)(const msgpack_object *))
{
    char xname[128], bname[128];
    snprintf(xname, sizeof xname, "%s.plist", name);
    snprintf(bname, sizeof bname, "%s.bplist", name);
    size_t xl, bl, n1, n2;
    char *x = s_slurp(s_path(xname), &xl);
    char *b = s_slurp(s_path(bname), &bl);
    uint8_t *m1 = s_roundtrip(x, xl, &n1, xname);
    uint8_t *m2 = s_roundtrip(b, bl, &n2, bname);
    //  binary and XML forms of the same plist give the same msgpack
    assert_int_equal(n1, n2);
    assert_memory_equal(m1, m2, n1);
    //  and the committed binary file is what libplist makes of the XML
    size_t gl;
    char *g = s_xml_to_bin(x, xl, &gl);
    assert_int_equal(gl, bl);
    assert_memory_equal(g, b, bl);
    msgpack_zone zone;
    msgpack_zone_init(&zone, 1024);
    msgpack_object o = s_unpack(m1, n1, &zone);
    check(&o);
    msgpack_zone_destroy(&zone);
    free(g);
    free(m1);
    free(m2);
    free(x);
    free(b);
}

static void s_check_tokenupdate(const msgpack_object *o)
{
    assert_true(s_get(o, "MessageType")->type == MSGPACK_OBJECT_STR);
    const msgpack_object *aw = s_get(o, "AwaitingConfiguration");
    assert_int_equal(aw->type, MSGPACK_OBJECT_BOOLEAN);
    assert_false(aw->via.boolean);
    const msgpack_object *tok = s_get(o, "Token");
    assert_int_equal(tok->type, MSGPACK_OBJECT_BIN);
    assert_int_equal(tok->via.bin.size, 32);
    assert_int_equal((uint8_t)tok->via.bin.ptr[0], 0xab);
    assert_int_equal(s_get(o, "Topic")->via.str.size,
                     strlen("com.apple.mgmt.External.0F3A9C52-8D14-4E7B-B2A6-19C5E7D3F081"));
}

static void s_check_idle(const msgpack_object *o)
{
    assert_int_equal(o->via.map.size, 2);
    const msgpack_object *st = s_get(o, "Status");
    assert_int_equal(st->via.str.size, 4);
    assert_memory_equal(st->via.str.ptr, "Idle", 4);
}

static void s_check_devinfo(const msgpack_object *o)
{
    const msgpack_object *d = s_get(s_get(o, "QueryResponses"), "LastCloudBackupDate");
    msgpack_timestamp ts = {0, 0};
    assert_true(msgpack_object_to_timestamp(d, &ts));
    assert_int_equal(ts.tv_sec, 1715935333); //  2024-05-17T08:42:13Z
    assert_int_equal(ts.tv_nsec, 0);
}

static void test_seed_plists(void **state)
{
    (void)state;
    s_check_seed("tokenupdate", s_check_tokenupdate);
    s_check_seed("idle", s_check_idle);
    s_check_seed("deviceinformation-ack", s_check_devinfo);
}

static int s_name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_schema_samples(void **state)
{
    (void)state;
    DIR *d = opendir(s_path("schema"));
    assert_non_null(d);
    char *names[512];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 512)
        if (strstr(e->d_name, ".plist"))
            names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, n, sizeof *names, s_name_cmp);
    assert_true(n >= 100); //  8 check-in messages, 66 commands, their responses
    for (size_t i = 0; i < n; i++) {
        char rel[300];
        snprintf(rel, sizeof rel, "schema/%s", names[i]);
        size_t xl, bl, n1, n2;
        char *x = s_slurp(s_path(rel), &xl);
        char *b = s_xml_to_bin(x, xl, &bl);
        uint8_t *m1 = s_roundtrip(x, xl, &n1, names[i]);
        uint8_t *m2 = s_roundtrip(b, bl, &n2, names[i]);
        if (n1 != n2 || memcmp(m1, m2, n1))
            fail_msg("%s: binary and XML give different msgpack", names[i]);
        free(m1);
        free(m2);
        free(x);
        free(b);
        free(names[i]);
    }
    printf("# %zu schema sample plists round-trip (XML and binary)\n", n);
}

// ---------------------------------------------------------------- values

static void test_integers(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        bool neg;
        uint64_t u;
    } v[] = {
        {"-9223372036854775808", true, (uint64_t)INT64_MIN},
        {"-1", true, (uint64_t)-1},
        {"0", false, 0},
        {"1", false, 1},
        {"9223372036854775807", false, (uint64_t)INT64_MAX},
        {"9223372036854775808", false, (uint64_t)INT64_MAX + 1},
        {"18446744073709551615", false, UINT64_MAX},
    };
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        char body[128];
        snprintf(body, sizeof body, "<array><integer>%s</integer></array>", v[i].text);
        const char *x = s_wrap(body);
        size_t n, bl, n2;
        uint8_t *mp = s_roundtrip(x, strlen(x), &n, v[i].text);
        msgpack_zone zone;
        msgpack_zone_init(&zone, 256);
        msgpack_object o = s_unpack(mp, n, &zone);
        const msgpack_object *it = &o.via.array.ptr[0];
        if (v[i].neg) {
            assert_int_equal(it->type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
            assert_true((uint64_t)it->via.i64 == v[i].u);
        } else {
            assert_int_equal(it->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
            assert_true(it->via.u64 == v[i].u);
        }
        //  the XML libplist writes back carries the same text
        char *xml;
        size_t xl;
        assert_int_equal(s_mp_to_xml(mp, n, &xml, &xl), 0);
        char want[64];
        snprintf(want, sizeof want, "<integer>%s</integer>", v[i].text);
        if (!strstr(xml, want))
            fail_msg("%s came back as %s", v[i].text, xml);
        //  binary form
        char *b = s_xml_to_bin(x, strlen(x), &bl);
        uint8_t *mb = s_roundtrip(b, bl, &n2, v[i].text);
        assert_int_equal(n, n2);
        assert_memory_equal(mp, mb, n);
        free(b);
        free(mb);
        free(xml);
        msgpack_zone_destroy(&zone);
        free(mp);
    }
    //  values libplist would silently change are refused
    const char *bad[] = {"18446744073709551616",
                         "-9223372036854775809",
                         "010",
                         "0x10",
                         "+5",
                         " 5",
                         "5 ",
                         "",
                         "1.5",
                         "--1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char body[128];
        snprintf(body, sizeof body, "<integer>%s</integer>", bad[i]);
        const char *x = s_wrap(body);
        s_expect_fail(x, strlen(x), "integer");
    }
}

static void test_reals_and_scalars(void **state)
{
    (void)state;
    const char *ok[] = {
        "<real>0.5</real>",
        "<real>-1e300</real>",
        "<real>0.12345678901234567</real>",
        "<real>nan</real>",
        "<real>+infinity</real>",
        "<real>-infinity</real>",
        "<real>-0.0</real>",
        "<true/>",
        "<false/>",
        "<string></string>",
        "<string/>",
        "<string>&lt;&amp;&gt;&quot;&apos;&#65;&#x1F600; \t\r\n</string>",
        "<string>caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80</string>",
        "<data></data>",
        "<data/>",
        "<data>\n\tAAECAwQF\n\tBgc=\n</data>",
        "<dict/>",
        "<array/>",
        "<dict><key></key><string>empty key</string></dict>",
        "<dict><key>a&amp;b&lt;</key><false/></dict>",
        "<!-- c --><array><!-- c --><true/><!-- c --></array>",
        "<array ><true /><string >x</string ><dict\n><key >k</key\t><integer >5</integer>"
        "</dict ></array >",
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        const char *x = s_wrap(ok[i]);
        size_t n;
        free(s_roundtrip(x, strlen(x), &n, ok[i]));
    }
    //  -0.0 becomes 0.0 (the XML writer drops the sign, so normalize it)
    const char *x = s_wrap("<real>-0.0</real>");
    uint8_t *mp;
    size_t n;
    assert_int_equal(s_conv(x, strlen(x), &mp, &n), 0);
    assert_int_equal(n, 9);
    assert_int_equal(mp[0], 0xcb);
    for (int i = 1; i < 9; i++)
        assert_int_equal(mp[i], 0);
    free(mp);
}

static void test_dates(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int64_t unix_s;
    } v[] = {
        {"1000-01-01T00:00:00Z", -30610224000LL},
        {"1900-02-28T23:59:59Z", -2203891201LL},
        {"1970-01-01T00:00:00Z", 0},
        {"2001-01-01T00:00:00Z", 978307200},
        {"2024-02-29T12:00:00Z", 1709208000},
        {"2069-01-19T03:14:08Z", 3125790848LL},
        {"9999-12-31T23:59:59Z", 253402300799LL},
    };
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        char body[128];
        snprintf(body, sizeof body, "<date>%s</date>", v[i].text);
        const char *x = s_wrap(body);
        size_t n;
        uint8_t *mp = s_roundtrip(x, strlen(x), &n, v[i].text);
        msgpack_zone zone;
        msgpack_zone_init(&zone, 256);
        msgpack_object o = s_unpack(mp, n, &zone);
        msgpack_timestamp ts = {0, 0};
        assert_true(msgpack_object_to_timestamp(&o, &ts));
        if (ts.tv_sec != v[i].unix_s)
            fail_msg("%s -> %lld, want %lld", v[i].text, (long long)ts.tv_sec,
                     (long long)v[i].unix_s);
        assert_int_equal(ts.tv_nsec, 0);
        char *xml;
        size_t xl;
        assert_int_equal(s_mp_to_xml(mp, n, &xml, &xl), 0);
        if (!strstr(xml, v[i].text))
            fail_msg("%s came back as %s", v[i].text, xml);
        free(xml);
        msgpack_zone_destroy(&zone);
        free(mp);
    }
    const char *bad[] = {"0999-12-31T23:59:59Z",
                         "2024-13-01T00:00:00Z",
                         "2023-02-29T00:00:00Z",
                         "2024-01-01T24:00:00Z",
                         "2024-01-01T00:00:60Z",
                         "2024-01-01T00:00:00",
                         "2024-01-01",
                         "2024-01-01T00:00:00.5Z",
                         "garbage",
                         "2024-01-01T00:00:00+02:00"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char body[128];
        snprintf(body, sizeof body, "<date>%s</date>", bad[i]);
        const char *x = s_wrap(body);
        s_expect_fail(x, strlen(x), "date");
    }
    //  binary dates read through either path of s_date_get (libplist's own
    //  seconds + microseconds when exact, else the double itself): the same
    //  rounding to the microsecond as an independent computation
    static const double edge[] = {100.5,       100,          -100.25,         -100,
                                  -0.5,        0.000001,     1234.0000005,    1234.0000004,
                                  2147483647., 2147483648.,  -2147483648.,    -2147483649.5,
                                  3e9,         -3e10 + 0.25, 123456789.123456};
    for (size_t i = 0; i < sizeof edge / sizeof *edge; i++) {
        double mac = edge[i];
        uint8_t o[9] = {0x33};
        uint64_t u;
        memcpy(&u, &mac, 8);
        s_put_be(o + 1, u, 8);
        const uint8_t *objs[] = {o};
        size_t lens[] = {9};
        s_bp_t bp = s_bp_build(objs, lens, 1, 0, 1);
        uint8_t *mp;
        size_t n;
        if (s_conv((char *)bp.buf, bp.len, &mp, &n) != 0)
            fail_msg("binary date %f: %s", mac, s_errbuf);
        msgpack_zone zone;
        msgpack_zone_init(&zone, 64);
        msgpack_object obj = s_unpack(mp, n, &zone);
        msgpack_timestamp ts = {0, 0};
        assert_true(msgpack_object_to_timestamp(&obj, &ts));
        double whole = floor(mac), us = nearbyint((mac - whole) * 1e6);
        int64_t want_s = (int64_t)whole + 978307200;
        if (us >= 1e6) {
            want_s++;
            us = 0;
        }
        if (ts.tv_sec != want_s || ts.tv_nsec != (uint32_t)us * 1000u)
            fail_msg("date %.7f -> %lld.%09u, want %lld.%09u", mac, (long long)ts.tv_sec,
                     ts.tv_nsec, (long long)want_s, (uint32_t)us * 1000u);
        msgpack_zone_destroy(&zone);
        free(mp);
        free(bp.buf);
    }
    //  binary dates keep microseconds; exact both ways for a sweep of values
    for (int i = 0; i < 2000; i++) {
        double mac = -1e9 + i * 1234567.891234 + (i % 7) * 0.000001;
        mac = floor(mac * 1e6 + 0.5) / 1e6;
        uint8_t o[9] = {0x33};
        uint64_t u;
        memcpy(&u, &mac, 8);
        s_put_be(o + 1, u, 8);
        const uint8_t *objs[] = {o};
        size_t lens[] = {9};
        s_bp_t bp = s_bp_build(objs, lens, 1, 0, 1);
        uint8_t *mp;
        size_t n;
        if (s_conv((char *)bp.buf, bp.len, &mp, &n) != 0)
            fail_msg("binary date %f: %s", mac, s_errbuf);
        msgpack_zone zone;
        msgpack_zone_init(&zone, 64);
        msgpack_object obj = s_unpack(mp, n, &zone);
        msgpack_timestamp ts = {0, 0};
        assert_true(msgpack_object_to_timestamp(&obj, &ts));
        double back = (double)(ts.tv_sec - 978307200) + ts.tv_nsec / 1e9;
        if (fabs(back - mac) > 1e-6)
            fail_msg("date %.6f -> %lld.%09u", mac, (long long)ts.tv_sec, ts.tv_nsec);
        assert_int_equal(ts.tv_nsec % 1000, 0);
        //  a fraction cannot go out as XML: a clear error, not a silent cut
        char *xml = NULL;
        size_t xl;
        int rc = s_mp_to_xml(mp, n, &xml, &xl);
        if (ts.tv_nsec) {
            assert_int_equal(rc, -1);
            assert_non_null(strstr(s_errbuf, "fraction"));
        } else {
            assert_int_equal(rc, 0);
        }
        free(xml);
        msgpack_zone_destroy(&zone);
        free(mp);
        free(bp.buf);
    }
}

// ---------------------------------------------------------------- msgpack -> plist

static void s_expect_mp_fail(void (*build)(msgpack_packer *), const char *needle)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    build(&pk);
    char *xml = (char *)"untouched";
    size_t xl = 5;
    assert_int_equal(s_mp_to_xml((uint8_t *)sb.data, sb.size, &xml, &xl), -1);
    assert_null(xml);
    if (!strstr(s_errbuf, needle))
        fail_msg("error \"%s\" does not mention \"%s\"", s_errbuf, needle);
    msgpack_sbuffer_destroy(&sb);
}

static void s_mp_nil(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    msgpack_pack_str_with_body(pk, "a", 1);
    msgpack_pack_nil(pk);
}
static void s_mp_ext(msgpack_packer *pk)
{
    msgpack_pack_ext_with_body(pk, "abcd", 4, 5);
}
static void s_mp_intkey(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    msgpack_pack_int(pk, 1);
    msgpack_pack_true(pk);
}
static void s_mp_dupkey(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 3);
    msgpack_pack_str_with_body(pk, "a", 1);
    msgpack_pack_true(pk);
    msgpack_pack_str_with_body(pk, "b", 1);
    msgpack_pack_true(pk);
    msgpack_pack_str_with_body(pk, "a", 1);
    msgpack_pack_false(pk);
}
static void s_mp_nul(msgpack_packer *pk)
{
    msgpack_pack_str_with_body(pk, "a\0b", 3);
}
static void s_mp_badutf8(msgpack_packer *pk)
{
    msgpack_pack_str_with_body(pk, "\xc3\x28", 2);
}
static void s_mp_ctrl(msgpack_packer *pk)
{
    msgpack_pack_str_with_body(pk, "bell\x07", 5);
}
static void s_mp_tsfrac(msgpack_packer *pk)
{
    msgpack_timestamp ts = {1715935333, 500000000};
    msgpack_pack_timestamp(pk, &ts);
}
static void s_mp_tsfar(msgpack_packer *pk)
{
    msgpack_timestamp ts = {253402300800LL, 0};
    msgpack_pack_timestamp(pk, &ts);
}

static void test_from_msgpack_rejects(void **state)
{
    (void)state;
    s_expect_mp_fail(s_mp_nil, "nil");
    s_expect_mp_fail(s_mp_ext, "ext");
    s_expect_mp_fail(s_mp_intkey, "key");
    s_expect_mp_fail(s_mp_dupkey, "same key");
    s_expect_mp_fail(s_mp_nul, "UTF-8");
    s_expect_mp_fail(s_mp_badutf8, "UTF-8");
    s_expect_mp_fail(s_mp_ctrl, "UTF-8");
    s_expect_mp_fail(s_mp_tsfrac, "fraction");
    s_expect_mp_fail(s_mp_tsfar, "years");
    //  nesting: msgpack_unpack stops at 32 levels, so build the objects by hand
    msgpack_object deep[100];
    for (int i = 0; i < 100; i++) {
        deep[i].type = MSGPACK_OBJECT_ARRAY;
        deep[i].via.array.size = i < 99 ? 1 : 0;
        deep[i].via.array.ptr = i < 99 ? &deep[i + 1] : NULL;
    }
    char *out = NULL;
    size_t outlen = 0;
    assert_int_equal(pm_plist_from_msgpack(&deep[0], &out, &outlen, s_errbuf, 256), -1);
    assert_non_null(strstr(s_errbuf, "deep"));
    assert_int_equal(pm_plist_from_msgpack(&deep[100 - 32], &out, &outlen, s_errbuf, 256), 0);
    free(out);
    assert_int_equal(pm_plist_from_msgpack(&deep[100 - 33], &out, &outlen, s_errbuf, 256), -1);
    //  hostile msgpack bytes never reach msgpack-c: a 5-byte "huge array",
    //  truncation, trailing bytes, empty input
    const uint8_t huge[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    char *x2 = NULL;
    size_t x2l = 0;
    assert_int_equal(pm_plist_from_msgpack_bytes(huge, sizeof huge, &x2, &x2l, s_errbuf, 256), -1);
    assert_null(x2);
    const uint8_t trunc[] = {0x82, 0xa1, 'a', 0xc3};
    assert_int_equal(pm_plist_from_msgpack_bytes(trunc, sizeof trunc, &x2, &x2l, s_errbuf, 256),
                     -1);
    const uint8_t trail[] = {0xc3, 0xc3};
    assert_int_equal(pm_plist_from_msgpack_bytes(trail, sizeof trail, &x2, &x2l, s_errbuf, 256),
                     -1);
    assert_int_equal(pm_plist_from_msgpack_bytes(trail, 0, &x2, &x2l, s_errbuf, 256), -1);
    const uint8_t one[] = {0xc3};
    assert_int_equal(pm_plist_from_msgpack_bytes(one, sizeof one, &x2, &x2l, s_errbuf, 256), 0);
    assert_non_null(strstr(x2, "<true/>"));
    free(x2);
    //  and the NULL argument checks
    char *xml;
    size_t xl;
    assert_int_equal(pm_plist_from_msgpack(NULL, &xml, &xl, s_errbuf, sizeof s_errbuf), -1);
}

// ---------------------------------------------------------------- hostile XML

static char *s_deep_xml(const char *open, const char *close, size_t depth, size_t *len)
{
    size_t ol = strlen(open), cl = strlen(close), hl = strlen(s_hdr);
    size_t n = hl + depth * (ol + cl) + 16;
    char *buf = malloc(n);
    assert_non_null(buf);
    char *p = buf;
    memcpy(p, s_hdr, hl), p += hl;
    for (size_t i = 0; i < depth; i++)
        memcpy(p, open, ol), p += ol;
    for (size_t i = 0; i < depth; i++)
        memcpy(p, close, cl), p += cl;
    memcpy(p, "</plist>", 8), p += 8;
    *len = (size_t)(p - buf);
    return buf;
}

static void test_deep_xml(void **state)
{
    (void)state;
    size_t len;
    char *x = s_deep_xml("<array>", "</array>", 100000, &len);
    s_expect_fail(x, len, "nesting");
    free(x);
    x = s_deep_xml("<dict><key>k</key>", "</dict>", 100000, &len);
    s_expect_fail(x, len, "nesting");
    free(x);
    //  exactly the limit passes, one more fails
    unsigned lim = pm_plist_default_limits.max_depth;
    x = s_deep_xml("<array>", "</array>", lim, &len);
    size_t n;
    free(s_roundtrip(x, len, &n, "depth at the limit"));
    free(x);
    x = s_deep_xml("<array>", "</array>", lim + 1, &len);
    s_expect_fail(x, len, "nesting");
    free(x);
    //  custom limits
    pm_plist_limits_t small = {.max_bytes = 1 << 20, .max_depth = 2, .max_nodes = 5};
    const char *y = s_wrap("<array><array><array/></array></array>");
    uint8_t *mp;
    assert_int_equal(pm_plist_to_msgpack(y, strlen(y), &small, &mp, &n, s_errbuf, 256), -1);
    assert_non_null(strstr(s_errbuf, "nesting"));
    y = s_wrap("<array><true/><true/><true/><true/><true/></array>");
    assert_int_equal(pm_plist_to_msgpack(y, strlen(y), &small, &mp, &n, s_errbuf, 256), -1);
    assert_non_null(strstr(s_errbuf, "values"));
}

//  The text check (16 bytes at a time where SSE2 is there, since session
//  11) against the rule written out plainly: every byte value at every
//  position of a 100-byte string value, so in every place of a 16-byte
//  block: the UTF-8 error exactly for the bytes XML text cannot carry alone
//  (C0 controls but tab, LF, CR; 0x80..0xFF), with the right offset; and a
//  two- and a three-byte character at every position are text.
static void test_text_check_bytes(void **state)
{
    (void)state;
    static const char head[] = "<plist version=\"1.0\"><string>", tail[] = "</string></plist>";
    char doc[256], err[256];
    size_t hl = strlen(head), tl = strlen(tail), seen_bad = 0;
    for (size_t pos = 0; pos < 100; pos++) {
        for (int b = 0; b < 256; b++) {
            memcpy(doc, head, hl);
            memset(doc + hl, 'a', 100);
            doc[hl + pos] = (char)b;
            memcpy(doc + hl + 100, tail, tl);
            size_t len = hl + 100 + tl;
            uint8_t *out = NULL;
            size_t outlen = 0;
            err[0] = 0;
            int rc = pm_plist_to_msgpack(doc, len, &pm_plist_default_limits, &out, &outlen, err,
                                         sizeof err);
            free(out);
            bool bad = (b < 0x20 && b != '\t' && b != '\n' && b != '\r') || b >= 0x80;
            char want[64];
            snprintf(want, sizeof want, "UTF-8 or a character XML cannot carry at byte %zu ",
                     hl + pos);
            if (bad != (strstr(err, want) != NULL) || (bad && rc == 0))
                fail_msg("byte 0x%02x at %zu: rc %d, err '%s'", b, pos, rc, err);
            seen_bad += bad;
            if (!bad && b != '<' && b != '&' && b != '>')
                assert_int_equal(rc, 0);
        }
        static const char *const multi[] = {"\xc3\xa9", "\xe2\x82\xac"};
        for (size_t m = 0; m < 2; m++) {
            size_t ml = strlen(multi[m]);
            if (pos + ml > 100)
                continue;
            memcpy(doc, head, hl);
            memset(doc + hl, 'a', 100);
            memcpy(doc + hl + pos, multi[m], ml);
            memcpy(doc + hl + 100, tail, tl);
            uint8_t *out = NULL;
            size_t outlen = 0;
            if (pm_plist_to_msgpack(doc, hl + 100 + tl, &pm_plist_default_limits, &out, &outlen,
                                    err, sizeof err) != 0)
                fail_msg("%zu-byte character at %zu refused: %s", ml, pos, err);
            free(out);
        }
    }
    assert_int_equal(seen_bad, 100 * (29 + 128));
}

//  Element names, classified once per tag since session 11: every name
//  and near misses of each (a letter short, one more, the same length with
//  another last letter or case, a prefix of another), opening and closing.
static void test_element_names(void **state)
{
    (void)state;
    static const char *const near[] = {
        "plis",   "plists",  "Plist", "dic",   "dicts",   "Dict",   "arra",  "arrays",
        "ke",     "keys",    "Key",   "strin", "strings", "intege", "int",   "rea",
        "reals",  "dat",     "dates", "datas", "tru",     "truex",  "fals",  "falsey",
        "d",      "da",      "date_", "x",     "dicx",    "plisT",  "arraY", "kez",
        "strinG", "integeR", "reaL",  "datE",  "dataa",   "truE",   "falsE"};
    char doc[200], err[256];
    uint8_t *out = NULL;
    size_t outlen = 0;
    for (size_t i = 0; i < sizeof near / sizeof *near; i++) {
        snprintf(doc, sizeof doc, "<plist version=\"1.0\"><array><%s/></array></plist>", near[i]);
        assert_int_equal(
            pm_plist_to_msgpack(doc, strlen(doc), NULL, &out, &outlen, err, sizeof err), -1);
        if (!strstr(err, "unknown element"))
            fail_msg("<%s/>: %s", near[i], err);
        snprintf(doc, sizeof doc, "<plist version=\"1.0\"><array></%s></plist>", near[i]);
        assert_int_equal(
            pm_plist_to_msgpack(doc, strlen(doc), NULL, &out, &outlen, err, sizeof err), -1);
        if (!strstr(err, "mismatched") && !strstr(err, "unknown element"))
            fail_msg("</%s>: %s", near[i], err);
    }
    static const struct {
        const char *value;
        const char *type; //  pm_plist_type_name of the element inside the array
    } ok[] = {{"<dict/>", "dictionary"},        {"<array/>", "array"},
              {"<string>s</string>", "string"}, {"<integer>1</integer>", "integer"},
              {"<real>1.5</real>", "real"},     {"<date>2024-01-02T03:04:05Z</date>", "date"},
              {"<data>QUJD</data>", "data"},    {"<true/>", "boolean"},
              {"<false/>", "boolean"}};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        snprintf(doc, sizeof doc, "<plist version=\"1.0\"><array>%s</array></plist>", ok[i].value);
        plist_t root = NULL;
        if (pm_plist_parse(doc, strlen(doc), NULL, &root, err, sizeof err) != 0)
            fail_msg("%s: %s", ok[i].value, err);
        assert_string_equal(pm_plist_type_name(plist_array_get_item(root, 0)), ok[i].type);
        plist_free(root);
    }
    //  a closing tag of another known element
    const char *cross = "<plist version=\"1.0\"><dict></array></plist>";
    assert_int_equal(
        pm_plist_to_msgpack(cross, strlen(cross), NULL, &out, &outlen, err, sizeof err), -1);
    assert_non_null(strstr(err, "mismatched"));
}

static void test_bad_xml(void **state)
{
    (void)state;
    static const struct {
        const char *doc;
        const char *needle;
    } v[] = {
        {"<?xml version=\"1.0\"?><!DOCTYPE plist [<!ENTITY a \"aaaa\">]><plist "
         "version=\"1.0\"><string>&a;</string></plist>",
         "DOCTYPE"},
        {"<?xml version=\"1.0\"?><!DOCTYPE plist SYSTEM \"file:///etc/passwd\"><plist "
         "version=\"1.0\"><string>x</string></plist>",
         "DOCTYPE"},
        {"<plist version=\"1.0\"><!ENTITY a \"b\"><string>x</string></plist>", "ENTITY"},
        {"<plist version=\"1.0\"><string><![CDATA[x]]></string></plist>", "markup"},
        {"<plist version=\"1.0\"><string>a<!-- c -->b</string></plist>", "markup"},
        {"<plist version=\"1.0\"><string>&unknown;</string></plist>", "string"},
        {"<plist version=\"1.0\"><string>&#0;</string></plist>", "string"},
        {"<plist version=\"1.0\"><string>&#x1;</string></plist>", "string"},
        {"<plist version=\"1.0\"><string>&#xD800;</string></plist>", "string"},
        {"<plist version=\"1.0\"><string>a&b</string></plist>", "string"},
        {"<plist version=\"1.0\"><string>bell\x07</string></plist>", "UTF-8"},
        {"<plist version=\"1.0\"><string>\xff\xfe</string></plist>", "UTF-8"},
        {"<plist version=\"1.0\"><string>\xc0\xaf</string></plist>", "UTF-8"},
        {"<plist version=\"1.0\"><string>\xed\xa0\x80</string></plist>", "UTF-8"},
        {"<plist version=\"1.0\"><data>AB</data></plist>", "data"},
        {"<plist version=\"1.0\"><data>A=B=</data></plist>", "data"},
        {"<plist version=\"1.0\"><data>AB$=</data></plist>", "data"},
        {"<plist version=\"1.0\"><real>abc</real></plist>", "real"},
        {"<plist version=\"1.0\"><real>0x10</real></plist>", "real"},
        {"<plist version=\"1.0\"><real>1.5x</real></plist>", "real"},
        {"<plist version=\"1.0\"><real/></plist>", "empty"},
        {"<plist version=\"1.0\"><true>x</true></plist>", "true"},
        {"<plist version=\"1.0\"><uid>1</uid></plist>", "unknown"},
        {"<plist version=\"1.0\"><set/></plist>", "unknown"},
        {"<plist version=\"1.0\"><key>k</key></plist>", "key"},
        {"<plist version=\"1.0\"><dict><key/><true/></dict></plist>", "<key/>"},
        {"<plist version=\"1.0\"><dict><string>v</string></dict></plist>", "key"},
        {"<plist version=\"1.0\"><dict><key>k</key></dict></plist>", "key"},
        {"<plist version=\"1.0\"><dict><key>a</key><true/><key>a</key><false/></dict></plist>",
         NULL}, //  handled below: duplicate keys
        {"<plist version=\"1.0\"><array><true/></dict></plist>", "mismatched"},
        {"<plist version=\"1.0\"><array><true/></plist>", "mismatched"},
        {"<plist version=\"1.0\"><array>", "truncated"},
        {"<plist version=\"1.0\"><true/><true/></plist>", "more than one"},
        {"<plist version=\"1.0\"></plist>", "without a value"},
        {"<plist version=\"1.0\"/>", "without a value"},
        {"<plist version=\"1.0\"><true/></plist><plist/>", "after"},
        {"<plist version=\"1.0\"><true/></plist>junk", "text"},
        {"<plist version=\"1.0\"><plist><true/></plist></plist>", "nested"},
        {"<true/>", "<plist>"},
        {"hello world", "text"},
        {"{\"json\": true}", "text"},
        {"<html><body>hi</body></html>", "unknown"},
        {" <?xml version=\"1.0\"?><plist version=\"1.0\"><true/></plist>", "processing"},
        {"<?php echo 1; ?><plist version=\"1.0\"><true/></plist>", "processing"},
        {"<plist version=\"1.0\" a=\"<\"><true/></plist>", "attribute"},
        {"<plist version=\"1.0\"><string a=\"b\">x</string></plist>", "tag"},
        {"<plist version=\"1.0\"><!-- unterminated <true/></plist>", "comment"},
        {"<plist version=\"1.0\"><string>x</strin></plist>", "markup"},
        {"<plist version=\"1.0\"><string>x</string x></plist>", "closing"},
    };
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        if (!v[i].needle)
            continue;
        s_expect_fail(v[i].doc, strlen(v[i].doc), v[i].needle);
    }
    //  libplist's XML reader keeps the last of two equal keys: not lossless,
    //  but consistent; the result is a one-key map
    const char *dup = NULL;
    for (size_t i = 0; i < sizeof v / sizeof *v; i++)
        if (!v[i].needle)
            dup = v[i].doc;
    assert_non_null(dup);
    uint8_t *mp;
    size_t n;
    assert_int_equal(s_conv(dup, strlen(dup), &mp, &n), 0);
    assert_int_equal(mp[0], 0x81);
    free(mp);
    //  empty, oversized, NULL
    s_expect_fail("", 0, "empty");
    pm_plist_limits_t small = {.max_bytes = 64, .max_depth = 32, .max_nodes = 100};
    const char *x = s_wrap("<string>this document is larger than sixty-four bytes</string>");
    assert_int_equal(pm_plist_to_msgpack(x, strlen(x), &small, &mp, &n, s_errbuf, 256), -1);
    assert_non_null(strstr(s_errbuf, "limit"));
    assert_int_equal(pm_plist_to_msgpack(NULL, 5, NULL, &mp, &n, s_errbuf, 256), -1);
    //  the bounded parse hands out the libplist tree
    plist_t root = (plist_t)1;
    x = s_wrap("<dict><key>a</key><array><true/></array></dict>");
    assert_int_equal(pm_plist_parse(x, strlen(x), NULL, &root, s_errbuf, 256), 0);
    assert_int_equal(plist_get_node_type(root), PLIST_DICT);
    assert_int_equal(plist_dict_get_size(root), 1);
    plist_free(root);
    size_t dl;
    char *deep = s_deep_xml("<array>", "</array>", 100000, &dl);
    assert_int_equal(pm_plist_parse(deep, dl, NULL, &root, s_errbuf, 256), -1);
    assert_null(root);
    free(deep);
    //  a tiny error buffer is fine
    char tiny[4];
    assert_int_equal(pm_plist_to_msgpack("x", 1, NULL, &mp, &n, tiny, sizeof tiny), -1);
    assert_int_equal(strlen(tiny), 3);
    //  random garbage never crashes and never passes
    srand(7);
    for (int i = 0; i < 2000; i++) {
        char g[256];
        size_t gl = (size_t)(rand() % 255) + 1;
        for (size_t j = 0; j < gl; j++)
            g[j] = (char)(rand() & 0xff);
        if (s_conv(g, gl, &mp, &n) == 0)
            free(mp);
    }
}

static void test_truncated_xml(void **state)
{
    (void)state;
    size_t xl;
    char *x = s_slurp(s_path("deviceinformation-ack.plist"), &xl);
    for (size_t cut = 0; cut + 1 < xl; cut++) {
        uint8_t *mp;
        size_t n;
        //  only the final newline may go
        if (s_conv(x, cut, &mp, &n) == 0)
            fail_msg("accepted the document cut at byte %zu of %zu", cut, xl);
    }
    free(x);
}

// ---------------------------------------------------------------- hostile binary

static void test_bin_cycles_and_trailers(void **state)
{
    (void)state;
    //  object 0: array holding itself
    const uint8_t self[] = {0xA1, 0x00};
    const uint8_t *o1[] = {self};
    size_t l1[] = {sizeof self};
    s_bp_t bp = s_bp_build(o1, l1, 1, 0, 1);
    s_expect_fail((char *)bp.buf, bp.len, "cycle");
    free(bp.buf);
    //  0 -> 1 -> 0 through a dict value
    const uint8_t a0[] = {0xA1, 0x01}, d1[] = {0xD1, 0x02, 0x00}, k2[] = {0x51, 'k'};
    const uint8_t *o2[] = {a0, d1, k2};
    size_t l2[] = {sizeof a0, sizeof d1, sizeof k2};
    bp = s_bp_build(o2, l2, 3, 0, 1);
    s_expect_fail((char *)bp.buf, bp.len, "cycle");
    free(bp.buf);
    //  a shared (not cyclic) subtree is fine: [[k],[k]] with one inner array
    const uint8_t outer[] = {0xA2, 0x01, 0x01}, inner[] = {0xA1, 0x02};
    const uint8_t *o3[] = {outer, inner, k2};
    size_t l3[] = {sizeof outer, sizeof inner, sizeof k2};
    bp = s_bp_build(o3, l3, 3, 0, 1);
    uint8_t *mp;
    size_t n;
    assert_int_equal(s_conv((char *)bp.buf, bp.len, &mp, &n), 0);
    free(mp);
    //  trailer lies: object count huge, top past the count, table outside
    uint8_t *t = bp.buf + bp.trailer;
    s_put_be(t + 8, UINT64_MAX / 2, 8);
    s_expect_fail((char *)bp.buf, bp.len, "trailer");
    s_put_be(t + 8, 3, 8);
    s_put_be(t + 16, 3, 8);
    s_expect_fail((char *)bp.buf, bp.len, "trailer");
    s_put_be(t + 16, 0, 8);
    uint64_t table = s_be_read(t + 24);
    s_put_be(t + 24, bp.len, 8);
    s_expect_fail((char *)bp.buf, bp.len, "trailer");
    s_put_be(t + 24, UINT64_MAX - 2, 8);
    s_expect_fail((char *)bp.buf, bp.len, "trailer");
    s_put_be(t + 24, table, 8);
    t[6] = 3;
    s_expect_fail((char *)bp.buf, bp.len, "trailer");
    t[6] = 4;
    t[7] = 0;
    s_expect_fail((char *)bp.buf, bp.len, "trailer");
    t[7] = 1;
    //  an offset pointing outside the object area
    s_put_be(bp.buf + table + 4, bp.len + 100, 4);
    s_expect_fail((char *)bp.buf, bp.len, "offset");
    s_put_be(bp.buf + table + 4, 2, 4);
    s_expect_fail((char *)bp.buf, bp.len, "offset");
    free(bp.buf);
}

static void test_bin_bad_objects(void **state)
{
    (void)state;
    static const struct {
        uint8_t obj[24];
        size_t len;
        const char *needle;
    } v[] = {
        {{0x80, 0x01}, 2, "UID"},
        {{0x00}, 1, "null"},
        {{0x0F}, 1, "null"},
        {{0xC1, 0x00}, 2, "unsupported"},
        {{0x15, 0, 0, 0, 0}, 5, "integer"},
        {{0x14, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1}, 17, "128-bit"},
        {{0x21, 0, 0}, 3, "real"},
        {{0x32, 0, 0, 0, 0}, 5, "date"},
        {{0x33, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0}, 9, "date"}, //  +inf
        {{0x33, 0x42, 0xf0, 0, 0, 0, 0, 0, 0}, 9, "date"}, //  year ~ 9 million
        {{0x55, 'a', 'b'}, 3, "past"},                     //  string longer than the data
        {{0x5F, 0x13, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 10, "past"},
        {{0x5F, 0x55}, 2, "length"},
        {{0x52, 'a', 0x00}, 3, "string"},
        {{0x52, 0xc3, 0x28}, 3, "string"},
        {{0x61, 0xd8, 0x00}, 3, "UTF-16"}, //  lone surrogate
        {{0x61, 0x00, 0x00}, 3, "UTF-16"}, //  NUL
        {{0x4F, 0x13, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 10, "past"},
        {{0xAF, 0x13, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 10, "past"},
        {{0xA3, 0x00, 0x00}, 3, "past"}, //  count 3, 2 refs
        {{0xA1, 0x07}, 2, "reference"},  //  ref past the count
        {{0xD1, 0x00, 0x00}, 3, "key"},  //  key is the dict itself
    };
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        const uint8_t *objs[] = {v[i].obj};
        size_t lens[] = {v[i].len};
        s_bp_t bp = s_bp_build(objs, lens, 1, 0, 1);
        s_expect_fail((char *)bp.buf, bp.len, v[i].needle);
        free(bp.buf);
    }
    //  a dict whose key is not a string
    const uint8_t d[] = {0xD1, 0x01, 0x01}, i1[] = {0x10, 0x05};
    const uint8_t *o[] = {d, i1};
    size_t l[] = {sizeof d, sizeof i1};
    s_bp_t bp = s_bp_build(o, l, 2, 0, 1);
    s_expect_fail((char *)bp.buf, bp.len, "key");
    free(bp.buf);
    //  a binary dict naming the same key twice (libplist would keep both)
    const uint8_t dd[] = {0xD2, 0x01, 0x02, 0x03, 0x03}, ka[] = {0x51, 'a'}, kb[] = {0x51, 'a'},
                  t[] = {0x09};
    const uint8_t *o2[] = {dd, ka, kb, t};
    size_t l2[] = {sizeof dd, sizeof ka, sizeof kb, sizeof t};
    bp = s_bp_build(o2, l2, 4, 0, 1);
    s_expect_fail((char *)bp.buf, bp.len, "same key");
    free(bp.buf);
    //  binary negative and big unsigned integers
    const uint8_t arr[] = {0xA3, 0x01, 0x02, 0x03},
                  neg[] = {0x13, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
                  big[] = {0x14, 0,    0,    0,    0,    0,    0,    0,   0,
                           0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
                  u8[] = {0x10, 0xff};
    const uint8_t *o3[] = {arr, neg, big, u8};
    size_t l3[] = {sizeof arr, sizeof neg, sizeof big, sizeof u8};
    bp = s_bp_build(o3, l3, 4, 0, 1);
    size_t n;
    uint8_t *mp = s_roundtrip((char *)bp.buf, bp.len, &n, "binary ints");
    const uint8_t want[] = {0x93, 0xff, 0xcf, 0xff, 0xff, 0xff, 0xff,
                            0xff, 0xff, 0xff, 0xff, 0xcc, 0xff};
    assert_int_equal(n, sizeof want);
    assert_memory_equal(mp, want, n);
    free(mp);
    free(bp.buf);
}

static void test_bin_deep_and_wide(void **state)
{
    (void)state;
    //  100,000 arrays, each holding the next
    size_t depth = 100000;
    uint8_t(*objs)[5] = calloc(depth + 1, 5);
    const uint8_t **ptrs = calloc(depth + 1, sizeof *ptrs);
    size_t *lens = calloc(depth + 1, sizeof *lens);
    for (size_t i = 0; i < depth; i++) {
        objs[i][0] = 0xA1;
        s_put_be(&objs[i][1], i + 1, 4);
        ptrs[i] = objs[i];
        lens[i] = 5;
    }
    objs[depth][0] = 0x09;
    ptrs[depth] = objs[depth];
    lens[depth] = 1;
    s_bp_t bp = s_bp_build(ptrs, lens, depth + 1, 0, 4);
    s_expect_fail((char *)bp.buf, bp.len, "nesting");
    free(bp.buf);
    //  "billion laughs": 30 arrays, each referencing the next twice
    for (size_t i = 0; i < 30; i++) {
        objs[i][0] = 0xA2;
        objs[i][1] = (uint8_t)(i + 1);
        objs[i][2] = (uint8_t)(i + 1);
        lens[i] = 3;
    }
    objs[30][0] = 0x09;
    lens[30] = 1;
    bp = s_bp_build(ptrs, lens, 31, 0, 1);
    s_expect_fail((char *)bp.buf, bp.len, "values");
    free(bp.buf);
    free(objs);
    free(ptrs);
    free(lens);
    //  one 1 MiB string referenced 100 times: 100 MiB once libplist copies it
    size_t big = 1u << 20;
    uint8_t *str = malloc(big + 6), arr[1 + 2 + 100];
    str[0] = 0x5F, str[1] = 0x12;
    s_put_be(str + 2, big, 4);
    memset(str + 6, 'a', big);
    arr[0] = 0xAF, arr[1] = 0x10, arr[2] = 100;
    memset(arr + 3, 1, 100);
    const uint8_t *o2[] = {arr, str};
    size_t l2[] = {sizeof arr, big + 6};
    bp = s_bp_build(o2, l2, 2, 0, 1);
    s_expect_fail((char *)bp.buf, bp.len, "expand");
    free(bp.buf);
    //  referenced 3 times it is 3 MiB: within the 8 MiB default
    arr[2] = 3;
    l2[0] = 3 + 3;
    bp = s_bp_build(o2, l2, 2, 0, 1);
    uint8_t *mp;
    size_t n;
    assert_int_equal(s_conv((char *)bp.buf, bp.len, &mp, &n), 0);
    assert_true(n > 3 * big);
    free(mp);
    free(bp.buf);
    free(str);
}

static void test_bin_truncated(void **state)
{
    (void)state;
    const char *names[] = {"tokenupdate.bplist", "idle.bplist", "deviceinformation-ack.bplist"};
    for (size_t f = 0; f < 3; f++) {
        size_t bl;
        char *b = s_slurp(s_path(names[f]), &bl);
        for (size_t cut = 0; cut < bl; cut++) {
            char *copy = malloc(cut ? cut : 1); //  exact size: ASan sees any overread
            memcpy(copy, b, cut);
            uint8_t *mp;
            size_t n;
            assert_int_equal(s_conv(copy, cut, &mp, &n), -1);
            free(copy);
        }
        //  and every single-byte corruption is handled (accepted or refused)
        for (size_t pos = 0; pos < bl; pos++) {
            for (int bit = 0; bit < 8; bit++) {
                char *copy = malloc(bl);
                memcpy(copy, b, bl);
                copy[pos] ^= (char)(1 << bit);
                uint8_t *mp;
                size_t n;
                if (s_conv(copy, bl, &mp, &n) == 0)
                    free(mp);
                free(copy);
            }
        }
        free(b);
    }
}

// ---------------------------------------------------------------- speed

static char *s_app_list(size_t apps, size_t *len)
{
    size_t cap = 512 + apps * 1024, n = 0;
    char *b = malloc(cap);
    assert_non_null(b);
    n += (size_t)snprintf(b + n, cap - n,
                          "%s<dict><key>CommandUUID</key><string>7A1C3E5F-9B2D-4F60-8E11-"
                          "A3C5D7E9F024</string><key>InstalledApplicationList</key><array>",
                          s_hdr);
    for (size_t i = 0; i < apps; i++)
        n += (size_t)snprintf(
            b + n, cap - n,
            "\n\t<dict>\n\t\t<key>AdHocCodeSigned</key><false/>"
            "<key>AppStoreVendable</key><true/><key>BetaApp</key><false/>"
            "<key>BundleSize</key><integer>%zu</integer>"
            "<key>DeviceBasedVPP</key><false/><key>DynamicSize</key><integer>%zu</integer>"
            "<key>ExternalVersionIdentifier</key><integer>%zu</integer>"
            "<key>HasUpdateAvailable</key><false/>"
            "<key>Identifier</key><string>com.example.app%zu</string>"
            "<key>Installing</key><false/><key>IsAppClip</key><false/>"
            "<key>IsValidated</key><true/><key>Name</key><string>Example App %zu</string>"
            "<key>ShortVersion</key><string>%zu.2.3</string>"
            "<key>Version</key><string>%zu</string>\n\t</dict>",
            12345678 + i, 4096 * i, 800000000 + i, i, i, i % 20, 1000 + i);
    n += (size_t)snprintf(b + n, cap - n,
                          "</array><key>Status</key><string>Acknowledged</string><key>UDID</"
                          "key><string>00008030-001A2B3C4D5E6F70</string></dict></plist>\n");
    *len = n;
    return b;
}

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void test_speed_app_list(void **state)
{
    (void)state;
    size_t xl, n;
    char *x = s_app_list(200, &xl);
    uint8_t *mp = s_roundtrip(x, xl, &n, "app list");
    size_t bl;
    char *b = s_xml_to_bin(x, xl, &bl);
#ifdef __SANITIZE_ADDRESS__
    int iters = 10; //  the figure only means something in the rel build
#else
    int iters = 50; //  tests/bench/plist.sh runs 2000
#endif
    if (getenv("PM_PLIST_BENCH")) //  tests/bench/plist.sh
        iters = (int)strtol(getenv("PM_PLIST_BENCH"), NULL, 10);
    if (iters < 1)
        iters = 1;
    double t0 = s_now();
    for (int i = 0; i < iters; i++) {
        uint8_t *m;
        size_t ml;
        assert_int_equal(s_conv(x, xl, &m, &ml), 0);
        free(m);
    }
    double t1 = s_now();
    for (int i = 0; i < iters; i++) {
        uint8_t *m;
        size_t ml;
        assert_int_equal(s_conv(b, bl, &m, &ml), 0);
        free(m);
    }
    double t2 = s_now();
    for (int i = 0; i < iters; i++) {
        char *o;
        size_t ol;
        assert_int_equal(s_mp_to_xml(mp, n, &o, &ol), 0);
        free(o);
    }
    double t3 = s_now();
    double ux = (t1 - t0) / iters * 1e6, ub = (t2 - t1) / iters * 1e6, uo = (t3 - t2) / iters * 1e6;
    printf("# 200-app InstalledApplicationList: XML %zu B -> msgpack %zu B: %.0f us/body "
           "(%.1f MB/s); binary %zu B: %.0f us/body (%.1f MB/s); msgpack -> XML: %.0f us/body\n",
           xl, n, ux, xl / ux, bl, ub, bl / ub, uo);
    free(b);
    free(mp);
    free(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed_plists),
        cmocka_unit_test(test_schema_samples),
        cmocka_unit_test(test_integers),
        cmocka_unit_test(test_reals_and_scalars),
        cmocka_unit_test(test_dates),
        cmocka_unit_test(test_from_msgpack_rejects),
        cmocka_unit_test(test_deep_xml),
        cmocka_unit_test(test_bad_xml),
        cmocka_unit_test(test_text_check_bytes),
        cmocka_unit_test(test_element_names),
        cmocka_unit_test(test_truncated_xml),
        cmocka_unit_test(test_bin_cycles_and_trailers),
        cmocka_unit_test(test_bin_bad_objects),
        cmocka_unit_test(test_bin_deep_and_wide),
        cmocka_unit_test(test_bin_truncated),
        cmocka_unit_test(test_speed_app_list),
    };
    if (getenv("PM_PLIST_BENCH")) {
        const struct CMUnitTest bench[] = {cmocka_unit_test(test_speed_app_list)};
        return cmocka_run_group_tests(bench, NULL, NULL);
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
