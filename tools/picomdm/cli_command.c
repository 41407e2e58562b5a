/*  cli_command — build and validate an MDM Command dict (see cli_command.h). */
#include "cli_command.h"
#include "pm_plist.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define S_MAC_EPOCH 978307200 //  plist dates count seconds from 2001-01-01 (libplist 2.2)
#define S_MAX_PROBLEMS 12
#define S_PATH_MAX 256
#define S_LIST_MAX 900

struct cli_command {
    bool raw;
    plist_t dict;
    char *type;
    char *uuid;
    const cmdtab_cmd_t *schema;
};

/* ---- problem list: lines appended to the caller's err buffer ---- */

typedef struct {
    char *buf;
    size_t size;
    size_t used;
    int count;
} s_problems_t;

static void s_problems_init(s_problems_t *p, char *buf, size_t size)
{
    p->buf = buf;
    p->size = size;
    p->used = buf && size ? strnlen(buf, size - 1) : 0;
    if (buf && size)
        buf[p->used] = 0;
    p->count = 0;
}

__attribute__((format(printf, 2, 3))) static void s_problem(s_problems_t *p, const char *fmt, ...)
{
    p->count++;
    if (!p->buf || p->size == 0 || p->used + 1 >= p->size)
        return;
    if (p->count > S_MAX_PROBLEMS) {
        if (p->count == S_MAX_PROBLEMS + 1) {
            int n = snprintf(p->buf + p->used, p->size - p->used, "%s(more problems not shown)",
                             p->used ? "\n" : "");
            p->used = n < 0 ? p->used : p->used + (size_t)n;
            if (p->used >= p->size)
                p->used = p->size - 1;
        }
        return;
    }
    if (p->used) {
        p->buf[p->used++] = '\n';
        p->buf[p->used] = 0;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(p->buf + p->used, p->size - p->used, fmt, ap);
    va_end(ap);
    if (n > 0)
        p->used += (size_t)n;
    if (p->used >= p->size)
        p->used = p->size - 1;
}

//  err = formatted text (replacing what was there).
__attribute__((format(printf, 3, 4))) static int s_fail(char *err, size_t errlen, const char *fmt,
                                                        ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* ---- life cycle ---- */

cli_command_t *cli_command_new(bool raw)
{
    cli_command_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->raw = raw;
    self->dict = plist_new_dict();
    if (!self->dict)
        cli_command_destroy(&self);
    return self;
}

void cli_command_destroy(cli_command_t **selfp)
{
    if (!selfp || !*selfp)
        return;
    cli_command_t *self = *selfp;
    if (self->dict)
        plist_free(self->dict);
    free(self->type);
    free(self->uuid);
    free(self);
    *selfp = NULL;
}

const char *cli_command_type(const cli_command_t *self)
{
    return self->type;
}

const cmdtab_cmd_t *cli_command_schema(const cli_command_t *self)
{
    return self->schema;
}

const char *cli_command_uuid(const cli_command_t *self)
{
    return self->uuid;
}

plist_t cli_command_dict(const cli_command_t *self)
{
    return self->dict;
}

/* ---- files ---- */

int cli_read_file(const char *path, size_t max, char **data, size_t *len, char *err, size_t errlen)
{
    *data = NULL;
    *len = 0;
    bool is_stdin = strcmp(path, "-") == 0;
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    if (!f)
        return s_fail(err, errlen, "cannot open '%s': %s (check the path)", path, strerror(errno));
    int rc = -1;
    size_t cap = 64 * 1024, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        s_fail(err, errlen, "out of memory reading '%s'", path);
        goto out;
    }
    for (;;) {
        if (n == cap) {
            if (cap >= max + 1) {
                s_fail(err, errlen, "'%s' is larger than %zu bytes (the limit for one value)", path,
                       max);
                goto out;
            }
            size_t ncap = cap * 2 > max + 1 ? max + 1 : cap * 2;
            char *nb = realloc(buf, ncap + 1);
            if (!nb) {
                s_fail(err, errlen, "out of memory reading '%s'", path);
                goto out;
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        s_fail(err, errlen, "cannot read '%s': %s", path, strerror(errno));
        goto out;
    }
    if (n > max) {
        s_fail(err, errlen, "'%s' is larger than %zu bytes (the limit for one value)", path, max);
        goto out;
    }
    buf[n] = 0;
    *data = buf;
    *len = n;
    buf = NULL;
    rc = 0;
out:
    free(buf);
    if (f && !is_stdin)
        fclose(f);
    return rc;
}

int cli_command_load_plist_mem(cli_command_t *self, const char *data, size_t len, char *err,
                               size_t errlen)
{
    //  libplist 2.2 reads out of bounds on tiny inputs and has no error codes:
    //  insist on a plausible header before handing it the bytes.
    bool xml = len >= 5 && (memmem(data, len < 256 ? len : 256, "<?xml", 5) ||
                            memmem(data, len < 256 ? len : 256, "<plist", 6));
    bool bin = len >= 8 && memcmp(data, "bplist00", 8) == 0;
    if (len > CLI_FILE_MAX || len > UINT32_MAX || (!xml && !bin))
        return s_fail(err, errlen,
                      "not a property list (expected an XML or binary plist of at most %u bytes)",
                      CLI_FILE_MAX);
    //  The shared bridge's bounded parse (size, depth, node count checked before
    //  libplist sees the bytes: libplist 2.2 itself would recurse without limit).
    plist_t root = NULL;
    char why[256];
    if (pm_plist_parse(data, len, &pm_plist_default_limits, &root, why, sizeof why) < 0)
        return s_fail(err, errlen, "not a usable property list: %s (check it with plutil -lint)",
                      why);
    if (plist_get_node_type(root) != PLIST_DICT) {
        plist_free(root);
        return s_fail(err, errlen, "the plist's top level must be a dictionary (the Command)");
    }
    //  A whole command ({CommandUUID, Command}) or just the Command dict.
    plist_t cmd = plist_dict_get_item(root, "Command");
    if (cmd && plist_get_node_type(cmd) == PLIST_DICT &&
        !plist_dict_get_item(root, "RequestType")) {
        plist_t uuid = plist_dict_get_item(root, "CommandUUID");
        if (uuid && plist_get_node_type(uuid) == PLIST_STRING) {
            char *s = NULL;
            plist_get_string_val(uuid, &s);
            free(self->uuid);
            self->uuid = s;
        }
        plist_t copy = plist_copy(cmd);
        plist_free(root);
        root = copy;
    }
    plist_free(self->dict);
    self->dict = root;
    return 0;
}

int cli_command_load_plist(cli_command_t *self, const char *path, char *err, size_t errlen)
{
    char *data = NULL;
    size_t len = 0;
    if (cli_read_file(path, CLI_FILE_MAX, &data, &len, err, errlen) < 0)
        return -1;
    char why[256] = "";
    int rc = cli_command_load_plist_mem(self, data, len, why, sizeof why);
    if (rc < 0)
        s_fail(err, errlen, "--plist %s: %s", path, why);
    free(data);
    return rc;
}

/* ---- RequestType ---- */

int cli_command_set_type(cli_command_t *self, const char *request_type, char *err, size_t errlen)
{
    char *from_plist = NULL;
    plist_t rt = plist_dict_get_item(self->dict, "RequestType");
    if (rt && plist_get_node_type(rt) == PLIST_STRING)
        plist_get_string_val(rt, &from_plist);
    int rc = -1;
    if (!request_type)
        request_type = from_plist;
    if (!request_type || !*request_type) {
        s_fail(err, errlen,
               "no RequestType: give it as the first argument (e.g. DeviceInformation); "
               "`picomdm commands` lists them all");
        goto out;
    }
    if (from_plist && strcmp(from_plist, request_type) != 0) {
        s_fail(err, errlen,
               "the plist says RequestType %s but the command line says %s: drop one of them",
               from_plist, request_type);
        goto out;
    }
    self->schema = cmdtab_find(request_type);
    if (!self->schema && !self->raw) {
        const char *near = cmdtab_suggest(request_type);
        if (near)
            s_fail(err, errlen,
                   "unknown RequestType '%s'; did you mean %s? (`picomdm commands` lists them "
                   "all; --raw sends it anyway)",
                   request_type, near);
        else
            s_fail(err, errlen,
                   "unknown RequestType '%s' (`picomdm commands` lists them all; --raw sends it "
                   "anyway)",
                   request_type);
        goto out;
    }
    free(self->type);
    self->type = strdup(request_type);
    if (!self->type) {
        s_fail(err, errlen, "out of memory");
        goto out;
    }
    plist_dict_set_item(self->dict, "RequestType", plist_new_string(request_type));
    rc = 0;
out:
    free(from_plist);
    return rc;
}

/* ---- value conversion ---- */

static int s_parse_int(const char *text, int64_t *v)
{
    char *end;
    errno = 0;
    long long x = strtoll(text, &end, 10);
    if (errno || end == text || *end)
        return -1;
    *v = (int64_t)x;
    return 0;
}

static int s_parse_bool(const char *text, bool *v)
{
    static const char *yes[] = {"true", "yes", "1", "on"}, *no[] = {"false", "no", "0", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(text, yes[i]) == 0) {
            *v = true;
            return 0;
        }
        if (strcasecmp(text, no[i]) == 0) {
            *v = false;
            return 0;
        }
    }
    return -1;
}

//  ISO 8601 UTC ("2025-01-31T12:00:00Z", "2025-01-31") or "now" -> Unix seconds.
static int s_parse_date(const char *text, int64_t *unix_s)
{
    if (strcasecmp(text, "now") == 0) {
        *unix_s = (int64_t)time(NULL);
        return 0;
    }
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(text, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!end) {
        memset(&tm, 0, sizeof tm);
        end = strptime(text, "%Y-%m-%d", &tm);
    }
    if (!end || (*end && strcmp(end, "Z") != 0))
        return -1;
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return -1;
    *unix_s = (int64_t)t;
    return 0;
}

static int s_make_data(const cmdtab_key_t *k, const char *text, plist_t *out, char *err,
                       size_t errlen)
{
    const char *name = k ? k->name : "value";
    if (text[0] == '@') {
        char *data = NULL;
        size_t len = 0;
        char why[256];
        if (cli_read_file(text + 1, CLI_FILE_MAX, &data, &len, why, sizeof why) < 0)
            return s_fail(err, errlen, "%s: %s", name, why);
        *out = plist_new_data(data, len);
        free(data);
        return *out ? 0 : s_fail(err, errlen, "out of memory");
    }
    size_t tlen = strlen(text);
    size_t max = tlen / 4 * 3 + 3;
    unsigned char *bin = malloc(max + 1);
    if (!bin)
        return s_fail(err, errlen, "out of memory");
    size_t blen = 0;
    const char *b64end = NULL;
    int rc = sodium_base642bin(bin, max, text, tlen, " \t\r\n", &blen, &b64end,
                               sodium_base64_VARIANT_ORIGINAL);
    if (rc != 0 || (b64end && *b64end)) {
        //  unpadded input is common when pasted: try that variant too
        rc = sodium_base642bin(bin, max, text, tlen, " \t\r\n", &blen, &b64end,
                               sodium_base64_VARIANT_ORIGINAL_NO_PADDING);
        if (rc != 0 || (b64end && *b64end)) {
            free(bin);
            return s_fail(err, errlen,
                          "%s is data: give base64 (e.g. aGVsbG8=) or @FILE to read a file", name);
        }
    }
    *out = plist_new_data((const char *)bin, blen);
    free(bin);
    return *out ? 0 : s_fail(err, errlen, "out of memory");
}

//  Guess a scalar for a key the schema does not know (raw mode).
static plist_t s_guess(const char *text)
{
    int64_t i;
    bool b;
    if (strcmp(text, "true") == 0 || strcmp(text, "false") == 0) {
        (void)s_parse_bool(text, &b);
        return plist_new_bool(b);
    }
    if (s_parse_int(text, &i) == 0)
        return plist_new_uint((uint64_t)i);
    return plist_new_string(text);
}

static int s_make_array(const cmdtab_key_t *k, const char *text, plist_t *out, char *err,
                        size_t errlen)
{
    const cmdtab_key_t *item = k && k->nchild == 1 ? &cmdtab_keys[k->child] : NULL;
    if (k && (k->nchild > 1 || (item && (item->type == CT_DICT || item->type == CT_ARRAY))))
        return s_fail(err, errlen,
                      "%s is an array of dictionaries: write the command as a plist and pass "
                      "it with --plist FILE",
                      k->name);
    plist_t arr = plist_new_array();
    char *buf = malloc(strlen(text) + 1);
    if (!arr || !buf) {
        free(buf);
        if (arr)
            plist_free(arr);
        return s_fail(err, errlen, "out of memory");
    }
    const char *p = text;
    while (*text) {
        size_t n = 0;
        while (*p && *p != ',') {
            if (*p == '\\' && (p[1] == ',' || p[1] == '\\'))
                p++;
            buf[n++] = *p++;
        }
        buf[n] = 0;
        plist_t v = NULL;
        char why[512];
        if (item && item->type != CT_ANY) {
            if (cli_value_convert(item, buf, &v, why, sizeof why) < 0) {
                s_fail(err, errlen, "%s: item '%s': %s", k->name, buf, why);
                free(buf);
                plist_free(arr);
                return -1;
            }
        } else
            v = item ? plist_new_string(buf) : s_guess(buf);
        plist_array_append_item(arr, v);
        if (*p == 0)
            break;
        p++; //  the comma
    }
    free(buf);
    *out = arr;
    return 0;
}

int cli_value_convert(const cmdtab_key_t *k, const char *text, plist_t *out, char *err,
                      size_t errlen)
{
    *out = NULL;
    if (!k) {
        *out = s_guess(text);
        return *out ? 0 : s_fail(err, errlen, "out of memory");
    }
    int64_t i;
    bool b;
    double d;
    char *end;
    switch (k->type) {
    case CT_STRING:
    case CT_ANY:
        *out = plist_new_string(text);
        break;
    case CT_INTEGER:
        if (s_parse_int(text, &i) < 0)
            return s_fail(err, errlen, "%s is an integer: '%s' is not a whole number", k->name,
                          text);
        *out = plist_new_uint((uint64_t)i);
        break;
    case CT_BOOLEAN:
        if (s_parse_bool(text, &b) < 0)
            return s_fail(err, errlen, "%s is a boolean: use true or false, not '%s'", k->name,
                          text);
        *out = plist_new_bool(b);
        break;
    case CT_REAL:
        errno = 0;
        d = strtod(text, &end);
        if (errno || end == text || *end || !isfinite(d))
            return s_fail(err, errlen, "%s is a real number: '%s' is not one (e.g. 1.5)", k->name,
                          text);
        *out = plist_new_real(d);
        break;
    case CT_DATA:
        return s_make_data(k, text, out, err, errlen);
    case CT_DATE:
        if (s_parse_date(text, &i) < 0 || i - S_MAC_EPOCH < INT32_MIN ||
            i - S_MAC_EPOCH > INT32_MAX)
            return s_fail(err, errlen,
                          "%s is a date: use 2025-01-31T12:00:00Z, 2025-01-31 or now, not '%s'",
                          k->name, text);
        *out = plist_new_date((int32_t)(i - S_MAC_EPOCH), 0);
        break;
    case CT_ARRAY:
        return s_make_array(k, text, out, err, errlen);
    case CT_DICT:
        return s_fail(err, errlen,
                      "%s is a dictionary: set its keys one by one (--set %s.Key=Value) or pass "
                      "the command as a plist with --plist FILE",
                      k->name, k->name);
    default:
        return s_fail(err, errlen, "%s: unsupported schema type", k->name);
    }
    return *out ? 0 : s_fail(err, errlen, "out of memory");
}

/* ---- --set Key=Value ---- */

//  "unknown key X for Y; did you mean Z? valid keys: ..." into err.
static int s_unknown_key(const char *name, const char *where, uint16_t first, uint16_t n, char *err,
                         size_t errlen)
{
    char list[S_LIST_MAX];
    const char *near = cmdtab_child_suggest(first, n, name);
    if (n == 0)
        return s_fail(err, errlen, "%s takes no keys, so '%s' is not valid (--raw sends it anyway)",
                      where, name);
    cmdtab_child_list(first, n, list, sizeof list);
    if (near)
        return s_fail(err, errlen, "%s has no key '%s'; did you mean %s? Valid keys: %s", where,
                      name, near, list);
    return s_fail(err, errlen, "%s has no key '%s'. Valid keys: %s", where, name, list);
}

int cli_command_set(cli_command_t *self, const char *assignment, char *err, size_t errlen)
{
    if (!self->type)
        return s_fail(err, errlen, "set the RequestType before its keys");
    const char *eq = strchr(assignment, '=');
    if (!eq || eq == assignment)
        return s_fail(err, errlen, "--set wants Key=Value, got '%s'", assignment);
    size_t klen = (size_t)(eq - assignment);
    if (klen >= S_PATH_MAX)
        return s_fail(err, errlen, "--set: key too long");
    char path[S_PATH_MAX];
    memcpy(path, assignment, klen);
    path[klen] = 0;
    const char *value = eq + 1;
    if (strcmp(path, "RequestType") == 0)
        return s_fail(err, errlen, "RequestType is the first argument of enqueue, not a --set key");

    plist_t cur = self->dict;
    const cmdtab_cmd_t *cmd = self->schema;
    uint16_t first = cmd ? cmd->key : 0, n = cmd ? cmd->nkey : 0;
    bool known = cmd != NULL; //  are we still inside the schema?
    char where[S_PATH_MAX + 64];
    snprintf(where, sizeof where, "%s", self->type);
    char *seg = path;
    for (;;) {
        char *dot = strchr(seg, '.');
        if (dot)
            *dot = 0;
        const cmdtab_key_t *k = known ? cmdtab_child(first, n, seg) : NULL;
        if (k && (k->flags & CT_WILDCARD) && dot) {
            *dot = '.'; //  a free-form key name takes the rest of the path, dots included
            dot = NULL;
        }
        if (known && !k && !self->raw)
            return s_unknown_key(seg, where, first, n, err, errlen);
        if (!dot) {
            plist_t v = NULL;
            char why[1024];
            if (cli_value_convert(k, value, &v, why, sizeof why) < 0)
                return s_fail(err, errlen, "--set %s: %s", assignment, why);
            plist_dict_set_item(cur, seg, v);
            return 0;
        }
        if (k && k->type != CT_DICT && k->type != CT_ANY)
            return s_fail(err, errlen, "--set %s: %s is a %s, it has no keys", assignment, seg,
                          cmdtab_type_name(k->type));
        plist_t sub = plist_dict_get_item(cur, seg);
        if (!sub || plist_get_node_type(sub) != PLIST_DICT) {
            sub = plist_new_dict();
            plist_dict_set_item(cur, seg, sub);
        }
        cur = sub;
        known = k && k->type == CT_DICT && k->nchild > 0;
        if (known) {
            first = k->child;
            n = k->nchild;
        }
        size_t wl = strlen(where);
        snprintf(where + wl, sizeof where - wl, ".%s", seg);
        seg = dot + 1;
        if (!*seg)
            return s_fail(err, errlen, "--set %s: the key ends with a dot", assignment);
    }
}

/* ---- validation ---- */

static void s_check_node(const cmdtab_key_t *k, plist_t node, const char *path, s_problems_t *p);

static void s_check_dict(uint16_t first, uint16_t n, plist_t dict, const char *path, bool top,
                         s_problems_t *p)
{
    plist_dict_iter it = NULL;
    plist_dict_new_iter(dict, &it);
    char list[S_LIST_MAX];
    for (;;) {
        char *key = NULL;
        plist_t val = NULL;
        plist_dict_next_item(dict, it, &key, &val);
        if (!val) {
            free(key);
            break;
        }
        char sub[S_PATH_MAX];
        snprintf(sub, sizeof sub, "%s%s%s", path, *path ? "." : "", key);
        if (top && strcmp(key, "RequestType") == 0) {
            free(key);
            continue;
        }
        const cmdtab_key_t *k = cmdtab_child(first, n, key);
        if (!k) {
            const char *near = cmdtab_child_suggest(first, n, key);
            if (n == 0)
                s_problem(p, "%s: unknown key: %s takes no keys (--raw sends it anyway)", sub,
                          *path ? path : "this command");
            else
                s_problem(p, "%s: unknown key%s%s%s. Valid keys: %s", sub,
                          near ? "; did you mean " : "", near ? near : "", near ? "?" : "",
                          cmdtab_child_list(first, n, list, sizeof list));
        } else
            s_check_node(k, val, sub, p);
        free(key);
    }
    free(it);
    for (uint16_t i = 0; i < n && (size_t)first + i < cmdtab_nkeys; i++) {
        const cmdtab_key_t *k = &cmdtab_keys[first + i];
        if (!(k->flags & CT_REQUIRED) || (k->flags & CT_WILDCARD))
            continue;
        if (plist_dict_get_item(dict, k->name))
            continue;
        if (top)
            s_problem(p, "missing required key %s (%s): add --set %s=...", k->name,
                      cmdtab_type_name(k->type), k->name);
        else
            s_problem(p, "%s: missing required key %s (%s)", *path ? path : "(top)", k->name,
                      cmdtab_type_name(k->type));
    }
}

static void s_check_allowed(const cmdtab_key_t *k, const char *text, const char *path,
                            s_problems_t *p)
{
    if (k->nvalue == 0)
        return;
    for (uint16_t i = 0; i < k->nvalue && (size_t)k->value + i < cmdtab_nvalues; i++)
        if (strcmp(cmdtab_values[k->value + i], text) == 0)
            return;
    //  nearest allowed value, for "did you mean"
    const char *near = NULL;
    for (uint16_t i = 0; i < k->nvalue && (size_t)k->value + i < cmdtab_nvalues; i++)
        if (strcasecmp(cmdtab_values[k->value + i], text) == 0 ||
            (strlen(text) >= 4 && strcasestr(cmdtab_values[k->value + i], text))) {
            near = cmdtab_values[k->value + i];
            break;
        }
    char list[320]; //  long lists (DeviceInformation queries) end in "..."
    s_problem(p, "%s: '%s' is not an allowed value%s%s%s. Allowed: %s", path, text,
              near ? "; did you mean " : "", near ? near : "", near ? "?" : "",
              cmdtab_value_list(k, list, sizeof list));
}

static void s_check_node(const cmdtab_key_t *k, plist_t node, const char *path, s_problems_t *p)
{
    plist_type t = plist_get_node_type(node);
    bool ok;
    switch (k->type) {
    case CT_STRING:
        ok = t == PLIST_STRING;
        break;
    case CT_INTEGER:
        ok = t == PLIST_UINT;
        break;
    case CT_BOOLEAN:
        ok = t == PLIST_BOOLEAN;
        break;
    case CT_REAL:
        ok = t == PLIST_REAL || t == PLIST_UINT;
        break;
    case CT_DATA:
        ok = t == PLIST_DATA;
        break;
    case CT_DATE:
        ok = t == PLIST_DATE;
        break;
    case CT_ARRAY:
        ok = t == PLIST_ARRAY;
        break;
    case CT_DICT:
        ok = t == PLIST_DICT;
        break;
    default:
        return; //  <any>
    }
    if (!ok) {
        s_problem(p, "%s: must be %s %s, not %s %s", path,
                  k->type == CT_INTEGER || k->type == CT_ARRAY ? "an" : "a",
                  cmdtab_type_name(k->type), t == PLIST_UINT || t == PLIST_ARRAY ? "an" : "a",
                  pm_plist_type_name(node));
        return;
    }
    if (t == PLIST_STRING && k->nvalue) {
        char *s = NULL;
        plist_get_string_val(node, &s);
        s_check_allowed(k, s ? s : "", path, p);
        free(s);
    } else if (t == PLIST_UINT && k->nvalue) {
        uint64_t u = 0;
        plist_get_uint_val(node, &u);
        char num[32];
        snprintf(num, sizeof num, "%lld", (long long)(int64_t)u);
        s_check_allowed(k, num, path, p);
    } else if (t == PLIST_DICT && k->nchild) {
        s_check_dict(k->child, k->nchild, node, path, false, p);
    } else if (t == PLIST_ARRAY && k->nchild) {
        uint32_t n = plist_array_get_size(node);
        for (uint32_t i = 0; i < n; i++) {
            plist_t item = plist_array_get_item(node, i);
            char sub[S_PATH_MAX];
            snprintf(sub, sizeof sub, "%s[%u]", path, i);
            if (k->nchild == 1) {
                s_check_node(&cmdtab_keys[k->child], item, sub, p);
                continue;
            }
            //  Several item shapes (Settings): the item's `Item` names its shape.
            char list[S_LIST_MAX];
            cmdtab_child_list(k->child, k->nchild, list, sizeof list);
            plist_t sel =
                plist_get_node_type(item) == PLIST_DICT ? plist_dict_get_item(item, "Item") : NULL;
            char *name = NULL;
            if (sel && plist_get_node_type(sel) == PLIST_STRING)
                plist_get_string_val(sel, &name);
            const cmdtab_key_t *shape = name ? cmdtab_child(k->child, k->nchild, name) : NULL;
            if (!shape || (shape->flags & CT_WILDCARD))
                s_problem(p, "%s: must be a dictionary whose Item is one of: %s", sub, list);
            else
                s_check_node(shape, item, sub, p);
            free(name);
        }
    }
}

int cli_value_check(const cmdtab_key_t *k, plist_t node, const char *path, char *err, size_t errlen)
{
    s_problems_t p;
    s_problems_init(&p, err, errlen);
    s_check_node(k, node, path, &p);
    return p.count;
}

int cli_command_validate(cli_command_t *self, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = 0;
    if (!self->type)
        return s_fail(err, errlen, "no RequestType set");
    if (self->raw || !self->schema)
        return 0;
    s_problems_t p;
    s_problems_init(&p, err, errlen);
    s_check_dict(self->schema->key, self->schema->nkey, self->dict, "", true, &p);
    return p.count ? -1 : 0;
}

/* ---- output ---- */

static int s_copy_out(char *data, uint32_t len, char **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    if (!data)
        return -1;
    char *copy = malloc((size_t)len + 1);
    if (copy) {
        memcpy(copy, data, len);
        copy[len] = 0;
        *out = copy;
        *outlen = len;
    }
    free(data); //  libplist 2.2 allocates with malloc (plist_to_*_free is free)
    return copy ? 0 : -1;
}

int cli_command_to_xml(const cli_command_t *self, char **out, size_t *len)
{
    char *data = NULL;
    uint32_t n = 0;
    plist_to_xml(self->dict, &data, &n);
    return s_copy_out(data, n, out, len);
}

int cli_command_to_bin(const cli_command_t *self, char **out, size_t *len)
{
    char *data = NULL;
    uint32_t n = 0;
    plist_to_bin(self->dict, &data, &n);
    return s_copy_out(data, n, out, len);
}
