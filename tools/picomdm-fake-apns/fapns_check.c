/*  fapns_check — request validation, token list and failure rules of the APNs
 *  stand-in. See fapns_check.h.
 */
#include "fapns_check.h"

#include <czmq.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_LINE_MAX 1024
#define S_RULES_MAX 4096

struct fapns_tokens {
    zhashx_t *map; //  token hex -> topic string ("" = any topic)
};

struct fapns_rules {
    fapns_rule_t *v;
    size_t n, cap;
};

static void s_verdict(fapns_verdict_t *v, unsigned status, const char *reason)
{
    v->status = status;
    snprintf(v->reason, sizeof v->reason, "%s", reason);
}

static bool s_is_hex64(const char *s, size_t n)
{
    if (n != 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i]))
            return false;
    return true;
}

static void s_lower(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = (char)tolower((unsigned char)src[i]);
    dst[n] = 0;
}

//  {"mdm":"<magic>"} with optional whitespace between tokens; the magic is a
//  plain string (no escapes, no control characters), 1..FAPNS_MAGIC_MAX-1 bytes.
static bool s_parse_body(const uint8_t *b, size_t n, char *magic)
{
    size_t i = 0;
#define S_WS()                                                                                     \
    while (i < n && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n'))                 \
    i++
#define S_LIT(str)                                                                                 \
    do {                                                                                           \
        size_t l_ = strlen(str);                                                                   \
        if (n - i < l_ || memcmp(b + i, str, l_) != 0)                                             \
            return false;                                                                          \
        i += l_;                                                                                   \
    } while (0)
    S_WS();
    S_LIT("{");
    S_WS();
    S_LIT("\"mdm\"");
    S_WS();
    S_LIT(":");
    S_WS();
    S_LIT("\"");
    size_t start = i;
    while (i < n && b[i] != '"') {
        if (b[i] < 0x20 || b[i] == '\\')
            return false;
        i++;
    }
    size_t len = i - start;
    if (i >= n || len == 0 || len >= FAPNS_MAGIC_MAX)
        return false;
    memcpy(magic, b + start, len);
    magic[len] = 0;
    i++;
    S_WS();
    S_LIT("}");
    S_WS();
#undef S_WS
#undef S_LIT
    return i == n;
}

static bool s_digits(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return false;
    return true;
}

void fapns_check(const fapns_req_t *r, const fapns_tokens_t *known, fapns_verdict_t *v)
{
    memset(v, 0, sizeof *v);
    static const char prefix[] = "/3/device/";
    if (!r->method || strcmp(r->method, "POST") != 0)
        return s_verdict(v, 405, "MethodNotAllowed");
    if (!r->path || strncmp(r->path, prefix, sizeof prefix - 1) != 0)
        return s_verdict(v, 404, "BadPath");
    const char *tok = r->path + sizeof prefix - 1;
    size_t toklen = strcspn(tok, "?");
    if (toklen == 0)
        return s_verdict(v, 400, "MissingDeviceToken");
    if (!s_is_hex64(tok, toklen) || tok[toklen] != 0)
        return s_verdict(v, 400, "BadDeviceToken");
    s_lower(v->token, tok, 64);
    if (!r->cert_topic || !*r->cert_topic)
        return s_verdict(v, 403, "BadCertificate");
    if (!r->topic || !*r->topic)
        return s_verdict(v, 400, "MissingTopic");
    if (strcmp(r->topic, r->cert_topic) != 0)
        return s_verdict(v, 400, "BadTopic");
    if (r->push_type && strcmp(r->push_type, "mdm") != 0)
        return s_verdict(v, 400, "InvalidPushType");
    if (r->priority && strcmp(r->priority, "10") != 0 && strcmp(r->priority, "5") != 0)
        return s_verdict(v, 400, "BadPriority");
    if (r->expiration && !s_digits(r->expiration))
        return s_verdict(v, 400, "BadExpirationDate");
    if (r->body_too_large || r->body_len > FAPNS_BODY_MAX)
        return s_verdict(v, 413, "PayloadTooLarge");
    if (r->body_len == 0)
        return s_verdict(v, 400, "PayloadEmpty");
    if (!s_parse_body(r->body, r->body_len, v->magic))
        return s_verdict(v, 400, "BadPayload");
    if (known) {
        const char *topic = zhashx_lookup(known->map, v->token);
        if (!topic)
            return s_verdict(v, 400, "BadDeviceToken");
        if (*topic && strcmp(topic, r->topic) != 0)
            return s_verdict(v, 400, "DeviceTokenNotForTopic");
    }
    s_verdict(v, 200, "");
}

/* ---- tokens ---- */

fapns_tokens_t *fapns_tokens_new(void)
{
    fapns_tokens_t *t = calloc(1, sizeof *t);
    if (t && !(t->map = zhashx_new())) {
        free(t);
        return NULL;
    }
    if (t) {
        zhashx_set_destructor(t->map, (zhashx_destructor_fn *)zstr_free);
        zhashx_set_duplicator(t->map, (zhashx_duplicator_fn *)strdup);
    }
    return t;
}

void fapns_tokens_destroy(fapns_tokens_t **t)
{
    if (!t || !*t)
        return;
    zhashx_destroy(&(*t)->map);
    free(*t);
    *t = NULL;
}

//  Split a line into up to `max` space-separated words (in place).
static int s_words(char *line, char **w, int max)
{
    int n = 0;
    char *save = NULL;
    for (char *p = strtok_r(line, " \t\r\n", &save); p && n < max;
         p = strtok_r(NULL, " \t\r\n", &save))
        w[n++] = p;
    return n;
}

int fapns_tokens_add_line(fapns_tokens_t *t, const char *line, char *err, size_t errlen)
{
    char buf[S_LINE_MAX], *w[3];
    if (strlen(line) >= sizeof buf) {
        snprintf(err, errlen, "token line longer than %d bytes", S_LINE_MAX);
        return -1;
    }
    memcpy(buf, line, strlen(line) + 1);
    int n = s_words(buf, w, 3);
    if (n == 0 || w[0][0] == '#')
        return 1;
    if (n > 2 || !s_is_hex64(w[0], strlen(w[0])) || (n == 2 && strlen(w[1]) >= FAPNS_TOPIC_MAX)) {
        snprintf(err, errlen, "bad token line: want \"<64 hex characters> [topic]\"");
        return -1;
    }
    char tok[65];
    s_lower(tok, w[0], 64);
    zhashx_update(t->map, tok, n == 2 ? w[1] : "");
    return 0;
}

//  Feed every line of `path` to add(arg, line): the count of lines it took
//  (add returned 0), or -1 with err = "<path>:<line>: <why>".
typedef int(s_add_line_fn)(void *arg, const char *line, char *err, size_t errlen);
static int s_load_lines(const char *path, const char *what, s_add_line_fn *add, void *arg,
                        char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot open %s %s: %m", what, path);
        return -1;
    }
    char line[S_LINE_MAX];
    int count = 0, lineno = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char e[200];
        int rc = add(arg, line, e, sizeof e);
        if (rc < 0) {
            snprintf(err, errlen, "%s:%d: %s", path, lineno, e);
            fclose(f);
            return -1;
        }
        count += rc == 0;
    }
    fclose(f);
    return count;
}

static int s_token_line(void *arg, const char *line, char *err, size_t errlen)
{
    return fapns_tokens_add_line(arg, line, err, errlen);
}

int fapns_tokens_load(fapns_tokens_t *t, const char *path, char *err, size_t errlen)
{
    return s_load_lines(path, "token list", s_token_line, t, err, errlen);
}

size_t fapns_tokens_size(const fapns_tokens_t *t)
{
    return zhashx_size(t->map);
}

/* ---- rules ---- */

const char *fapns_default_reason(unsigned status)
{
    switch (status) {
    case 400:
        return "BadDeviceToken";
    case 403:
        return "BadCertificate";
    case 410:
        return "Unregistered";
    case 429:
        return "TooManyRequests";
    case 500:
        return "InternalServerError";
    case 503:
        return "ServiceUnavailable";
    default:
        return "";
    }
}

fapns_rules_t *fapns_rules_new(void)
{
    return calloc(1, sizeof(fapns_rules_t));
}

void fapns_rules_destroy(fapns_rules_t **r)
{
    if (!r || !*r)
        return;
    free((*r)->v);
    free(*r);
    *r = NULL;
}

static int s_long_arg(const char *w, const char *key, long max, long *out)
{
    size_t kl = strlen(key);
    if (strncmp(w, key, kl) != 0)
        return 0;
    char *end = NULL;
    long v = strtol(w + kl, &end, 10);
    if (end == w + kl || *end || v < 0 || v > max)
        return -1;
    *out = v;
    return 1;
}

int fapns_rules_add_line(fapns_rules_t *r, const char *line, char *err, size_t errlen)
{
    char buf[S_LINE_MAX], *w[8];
    if (strlen(line) >= sizeof buf) {
        snprintf(err, errlen, "rule line longer than %d bytes", S_LINE_MAX);
        return -1;
    }
    memcpy(buf, line, strlen(line) + 1);
    int n = s_words(buf, w, 8);
    if (n == 0 || w[0][0] == '#')
        return 1;
    fapns_rule_t rule = {.count = -1};
    if (n < 2 || (strcmp(w[0], "*") != 0 && !s_is_hex64(w[0], strlen(w[0])))) {
        snprintf(err, errlen,
                 "bad rule: want \"<token|*> <status|goaway|delay> [count=N] [delay=MS] "
                 "[reason=Text]\"");
        return -1;
    }
    if (strcmp(w[0], "*") == 0)
        memcpy(rule.token, "*", 2);
    else
        s_lower(rule.token, w[0], 64);
    if (strcmp(w[1], "goaway") == 0) {
        rule.act = FAPNS_ACT_GOAWAY;
        snprintf(rule.reason, sizeof rule.reason, "Shutdown");
    } else if (strcmp(w[1], "delay") == 0) {
        rule.act = FAPNS_ACT_DELAY;
    } else {
        long st = 0;
        char *end = NULL;
        st = strtol(w[1], &end, 10);
        if (*end || (st != 400 && st != 403 && st != 410 && st != 429 && st != 500 && st != 503)) {
            snprintf(err, errlen,
                     "bad rule action \"%.40s\": want 400, 403, 410, 429, 500, 503, goaway or "
                     "delay",
                     w[1]);
            return -1;
        }
        rule.act = FAPNS_ACT_STATUS;
        rule.status = (unsigned)st;
        snprintf(rule.reason, sizeof rule.reason, "%s", fapns_default_reason(rule.status));
    }
    for (int i = 2; i < n; i++) {
        long v = 0;
        int a = s_long_arg(w[i], "count=", 1000000000L, &v);
        if (a > 0) {
            rule.count = v;
            continue;
        }
        int b = a == 0 ? s_long_arg(w[i], "delay=", 600000L, &v) : -1;
        if (b > 0) {
            rule.delay_ms = (int)v;
            continue;
        }
        if (a == 0 && b == 0 && strncmp(w[i], "reason=", 7) == 0 && w[i][7] &&
            strlen(w[i] + 7) < sizeof rule.reason) {
            snprintf(rule.reason, sizeof rule.reason, "%s", w[i] + 7);
            continue;
        }
        snprintf(err, errlen,
                 "bad rule option \"%.40s\": want count=N, delay=MS (<= 600000) or reason=Text",
                 w[i]);
        return -1;
    }
    if (rule.act == FAPNS_ACT_DELAY && rule.delay_ms == 0) {
        snprintf(err, errlen, "a delay rule needs delay=MS");
        return -1;
    }
    if (r->n >= S_RULES_MAX) {
        snprintf(err, errlen, "too many rules (%d): clear them first", S_RULES_MAX);
        return -1;
    }
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        fapns_rule_t *v = realloc(r->v, cap * sizeof *v);
        if (!v) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        r->v = v;
        r->cap = cap;
    }
    r->v[r->n++] = rule;
    return 0;
}

static int s_rule_line(void *arg, const char *line, char *err, size_t errlen)
{
    return fapns_rules_add_line(arg, line, err, errlen);
}

int fapns_rules_load(fapns_rules_t *r, const char *path, char *err, size_t errlen)
{
    return s_load_lines(path, "rules file", s_rule_line, r, err, errlen);
}

void fapns_rules_clear(fapns_rules_t *r)
{
    r->n = 0;
}

size_t fapns_rules_size(const fapns_rules_t *r)
{
    return r->n;
}

bool fapns_rules_match(fapns_rules_t *r, const char *token, fapns_rule_t *out)
{
    for (size_t i = 0; i < r->n; i++) {
        fapns_rule_t *x = &r->v[i];
        if (x->count == 0)
            continue;
        if (strcmp(x->token, "*") != 0 && strcmp(x->token, token) != 0)
            continue;
        if (x->count > 0)
            x->count--;
        *out = *x;
        return true;
    }
    return false;
}
