/*  cli_token — `picomdm enroll-token new|list|revoke`: one-time enrollment
 *  tokens for a gateway with `enroll-auth = token` (docs/enrollment.md).
 *
 *  `new` makes each token here (32 random bytes, base64url) and sends only
 *  its SHA-256 to the store (enroll_token.add), so the token itself exists
 *  only in this command's output: hand the printed URL to the user. The
 *  token's id (the first 12 hex digits of its hash) names it in `list` and
 *  `revoke`.
 */
#include "cli_ops.h"
#include "pm_json.h"

#include <msgpack.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#define S_TOKEN_BYTES 32
#define S_MAX_COUNT 1000

const pm_opt_t cli_token_opts[] = {
    {"count", PM_OPT_INT, "1", "new: how many tokens (each works once)"},
    {"ttl", PM_OPT_STR, "24h", "new: lifetime (90m, 24h, 7d)"},
    {"note", PM_OPT_STR, NULL, "new: who or what the tokens are for (shown by list, in events)"},
    {"enroll-url", PM_OPT_STR, NULL,
     "new: the gateway's enrollment URL (https://host:port/mdm/enroll); `picomdm up` sets it"},
    {"all", PM_OPT_BOOL, "false", "list: also used, expired and revoked tokens"},
    {NULL, 0, NULL, NULL}};

static int64_t s_now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

//  A fresh token (base64url, no padding) and the hex SHA-256 of its text.
static int s_make(char token[64], char hash[65])
{
    unsigned char raw[S_TOKEN_BYTES], b64[64], md[SHA256_DIGEST_LENGTH];
    if (RAND_bytes(raw, sizeof raw) != 1)
        return -1;
    int n = EVP_EncodeBlock(b64, raw, sizeof raw);
    OPENSSL_cleanse(raw, sizeof raw);
    int k = 0;
    for (int i = 0; i < n && b64[i] != '='; i++)
        token[k++] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : (char)b64[i];
    token[k] = '\0';
    OPENSSL_cleanse(b64, sizeof b64);
    SHA256((const unsigned char *)token, (size_t)k, md);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
        snprintf(hash + 2 * i, 3, "%02x", md[i]);
    return 0;
}

static void s_time(int64_t ms, char *buf, size_t size)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, size, "%Y-%m-%d %H:%M:%SZ", &tm);
}

static int s_new(cli_ctx_t *ctx)
{
    long count = pm_cfg_int(ctx->cfg, "count");
    long long ttl = cli_parse_duration(pm_cfg_str(ctx->cfg, "ttl"));
    const char *note = pm_cfg_str(ctx->cfg, "note");
    const char *url = pm_cfg_str(ctx->cfg, "enroll-url");
    bool json = pm_cfg_bool(ctx->cfg, "json");
    if (count < 1 || count > S_MAX_COUNT || ttl <= 0) {
        fprintf(stderr,
                "picomdm enroll-token new: --count takes 1 to %d, --ttl a duration like "
                "90m, 24h, 7d\n",
                S_MAX_COUNT);
        return CLI_EXIT_USAGE;
    }
    char(*tokens)[64] = calloc((size_t)count, sizeof *tokens);
    char(*hashes)[65] = calloc((size_t)count, sizeof *hashes);
    pm_msg_t *req = pm_msg_new(PM_MSG_ENROLL_TOKEN_ADD), *rep = NULL;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    int rc = CLI_EXIT_FAIL;
    if (!tokens || !hashes || !req)
        goto out;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, (size_t)count);
    for (long i = 0; i < count; i++) {
        if (s_make(tokens[i], hashes[i]) < 0) {
            fprintf(stderr, "picomdm enroll-token: no random bytes from OpenSSL\n");
            goto out;
        }
        msgpack_pack_str_with_body(&pk, hashes[i], 64);
    }
    int64_t expires = s_now_ms() + ttl * 1000;
    if (pm_msg_set_packed(req, "hashes", (const uint8_t *)sb.data, sb.size) < 0 ||
        pm_msg_set_uint(req, "expires_ms", (uint64_t)expires) < 0 ||
        (note && *note && pm_msg_set_str(req, "note", note) < 0))
        goto out;
    if (url && strlen(url) > 1000) { //  before the store keeps anything
        fprintf(stderr, "picomdm enroll-token: --enroll-url is too long for a link (at most "
                        "1,000 characters): give the gateway's public enrollment URL\n");
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    rc = cli_call_to(ctx, pm_msgdef(PM_MSG_ENROLL_TOKEN_ADD)->service, req, &rep);
    if (rc != CLI_EXIT_OK)
        goto out;
    char when[40];
    s_time(expires, when, sizeof when);
    const char *sep = url && strchr(url, '?') ? "&" : "?";
    for (long i = 0; i < count; i++) {
        char full[1200] = "";
        if (url) //  fits: the URL was checked above, a token is 43 characters
            snprintf(full, sizeof full, "%s%stoken=%s", url, sep, tokens[i]);
        if (json) { //  base64url and hex need no escaping; the URL may
            printf("{\"id\":\"%.12s\",\"token\":\"%s\",\"expires\":%lld", hashes[i], tokens[i],
                   (long long)expires);
            if (url) {
                fputs(",\"url\":\"", stdout);
                for (const char *c = full; *c; c++) {
                    if (*c == '"' || *c == '\\')
                        putchar('\\');
                    if ((unsigned char)*c < 0x20)
                        printf("\\u%04x", (unsigned char)*c);
                    else
                        putchar(*c);
                }
                putchar('"');
            }
            puts("}");
        } else
            printf("%s\n", url ? full : tokens[i]);
        OPENSSL_cleanse(full, sizeof full);
    }
    if (!json)
        fprintf(stderr, "%ld enrollment token(s), each usable once, until %s%s%s%s\n%s", count,
                when, note && *note ? " (" : "", note && *note ? note : "",
                note && *note ? ")" : "",
                url ? ""
                    : "no --enroll-url: append ?token=<token> to the gateway's enrollment URL "
                      "(https://host:port/mdm/enroll)\n");
out:
    if (tokens)
        OPENSSL_cleanse(tokens, (size_t)count * sizeof *tokens);
    free(tokens);
    free(hashes);
    msgpack_sbuffer_destroy(&sb);
    pm_msg_destroy(&req);
    pm_msg_destroy(&rep);
    return rc;
}

static const msgpack_object *s_get(const msgpack_object *m, const char *key)
{
    if (m->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object_kv *kv = &m->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == kl &&
            memcmp(kv->key.via.str.ptr, key, kl) == 0)
            return &kv->val;
    }
    return NULL;
}

static void s_print_str(const msgpack_object *m, const char *key, int width)
{
    const msgpack_object *o = s_get(m, key);
    if (o && o->type == MSGPACK_OBJECT_STR)
        printf("%-*.*s", width, (int)o->via.str.size, o->via.str.ptr);
    else
        printf("%-*s", width, "-");
}

static void s_print_time(const msgpack_object *m, const char *key)
{
    const msgpack_object *o = s_get(m, key);
    char t[40] = "-";
    if (o && (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER))
        s_time((int64_t)o->via.u64, t, sizeof t);
    printf("%-22s", t);
}

static int s_list(cli_ctx_t *ctx)
{
    pm_msg_t *req = pm_msg_new(PM_MSG_ENROLL_TOKEN_LIST), *rep = NULL;
    if (!req)
        return CLI_EXIT_FAIL;
    if (pm_cfg_bool(ctx->cfg, "all"))
        pm_msg_set_bool(req, "all", true);
    int rc = cli_call_to(ctx, pm_msgdef(PM_MSG_ENROLL_TOKEN_LIST)->service, req, &rep);
    pm_msg_destroy(&req);
    if (rc != CLI_EXIT_OK)
        return rc;
    const msgpack_object *a = pm_msg_obj(rep, "tokens");
    if (!a || a->type != MSGPACK_OBJECT_ARRAY) {
        fprintf(stderr, "picomdm enroll-token list: the store answered %s, not a token list\n",
                pm_msg_type_name(pm_msg_type(rep)));
        pm_msg_destroy(&rep);
        return CLI_EXIT_FAIL;
    }
    bool json = pm_cfg_bool(ctx->cfg, "json");
    if (!json)
        printf("%-13s %-8s %-22s %-22s %-22s %s\n", "ID", "STATE", "CREATED", "EXPIRES", "USED",
               "NOTE / USED BY");
    for (uint32_t i = 0; i < a->via.array.size; i++) {
        const msgpack_object *m = &a->via.array.ptr[i];
        if (json) {
            char *t = pm_json_from_obj(m, NULL);
            if (t)
                printf("%s\n", t);
            free(t);
            continue;
        }
        s_print_str(m, "id", 13);
        printf(" ");
        s_print_str(m, "state", 8);
        printf(" ");
        s_print_time(m, "created");
        printf(" ");
        s_print_time(m, "expires");
        printf(" ");
        s_print_time(m, "used");
        printf(" ");
        s_print_str(m, "note", 0);
        const msgpack_object *by = s_get(m, "used_by");
        if (by && by->type == MSGPACK_OBJECT_STR)
            printf(" (by %.*s)", (int)by->via.str.size, by->via.str.ptr);
        printf("\n");
    }
    if (!json && a->via.array.size == 0)
        fprintf(stderr, "no %senrollment tokens (picomdm enroll-token new makes some)\n",
                pm_cfg_bool(ctx->cfg, "all") ? "" : "usable ");
    pm_msg_destroy(&rep);
    return CLI_EXIT_OK;
}

static int s_revoke(cli_ctx_t *ctx)
{
    if (cli_argc(ctx) != 2) {
        fprintf(stderr, "usage: picomdm enroll-token revoke <id> (ids: picomdm enroll-token "
                        "list)\n");
        return CLI_EXIT_USAGE;
    }
    pm_msg_t *req = pm_msg_new(PM_MSG_ENROLL_TOKEN_REVOKE), *rep = NULL;
    if (!req || pm_msg_set_str(req, "id", cli_arg(ctx, 1)) < 0) {
        pm_msg_destroy(&req);
        return CLI_EXIT_FAIL;
    }
    int rc = cli_call_to(ctx, pm_msgdef(PM_MSG_ENROLL_TOKEN_REVOKE)->service, req, &rep);
    pm_msg_destroy(&req);
    if (rc == CLI_EXIT_OK)
        printf("revoked %s\n", cli_arg(ctx, 1));
    pm_msg_destroy(&rep);
    return rc;
}

int cli_token_run(cli_ctx_t *ctx)
{
    const char *sub = cli_arg(ctx, 0);
    if (sub && strcmp(sub, "new") == 0 && cli_argc(ctx) == 1)
        return s_new(ctx);
    if (sub && strcmp(sub, "list") == 0 && cli_argc(ctx) == 1)
        return s_list(ctx);
    if (sub && strcmp(sub, "revoke") == 0)
        return s_revoke(ctx);
    fprintf(stderr, "usage: picomdm enroll-token new [--count N] [--ttl 24h] [--note TEXT] | list "
                    "[--all] | revoke <id>\n");
    return CLI_EXIT_USAGE;
}
