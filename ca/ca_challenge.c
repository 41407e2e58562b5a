/*  ca_challenge — static or one-time SCEP challenges (see ca_challenge.h).
 *  One-time challenges are kept by their SHA-256 only, so the table holds no
 *  usable secret and the lookup does not compare secrets byte by byte.
 */
#include "ca_challenge.h"

#include <czmq.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define S_TXID_MAX 128

typedef struct {
    int64_t expires;
    bool used;
    char txid[S_TXID_MAX]; //  the transaction that used it
    uint8_t key_hash[32];
} s_entry_t;

struct ca_challenge {
    ca_challenge_mode_t mode;
    bool durable; //  one-time challenges live in the store
    char *secret;
    int64_t ttl_s;
    int64_t skew; //  test clock
    int64_t next_sweep;
    zhashx_t *table; //  hex SHA-256 of the challenge -> s_entry_t
};

static int64_t s_now(const ca_challenge_t *c)
{
    return (int64_t)time(NULL) + c->skew;
}

void ca_challenge_hash_hex(const char *password, char hex[65])
{
    uint8_t md[32];
    unsigned int len = 0;
    EVP_Digest(password, strlen(password), md, &len, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

static void s_entry_free(void **item)
{
    if (item && *item) {
        free(*item);
        *item = NULL;
    }
}

ca_challenge_t *ca_challenge_new(ca_challenge_mode_t mode, const char *secret, int64_t ttl_s,
                                 char *err, size_t errlen)
{
    if (mode == CA_CHALLENGE_STATIC && (!secret || strlen(secret) < 8)) {
        snprintf(err, errlen,
                 "challenge-mode static needs a challenge of at least 8 characters: set "
                 "`challenge` (or use challenge-mode one-time)");
        return NULL;
    }
    ca_challenge_t *c = calloc(1, sizeof *c);
    if (!c)
        goto oom;
    c->mode = mode;
    c->ttl_s = ttl_s > 0 ? ttl_s : 7 * 86400;
    c->secret = secret ? strdup(secret) : NULL;
    c->table = zhashx_new();
    if ((secret && !c->secret) || !c->table)
        goto oom;
    zhashx_set_destructor(c->table, s_entry_free);
    return c;
oom:
    snprintf(err, errlen, "out of memory");
    ca_challenge_destroy(&c);
    return NULL;
}

void ca_challenge_destroy(ca_challenge_t **p)
{
    if (!p || !*p)
        return;
    ca_challenge_t *c = *p;
    if (c->secret) {
        OPENSSL_cleanse(c->secret, strlen(c->secret));
        free(c->secret);
    }
    zhashx_destroy(&c->table);
    free(c);
    *p = NULL;
}

ca_challenge_mode_t ca_challenge_mode(const ca_challenge_t *c)
{
    return c->mode;
}

static void s_sweep(ca_challenge_t *c)
{
    int64_t now = s_now(c);
    if (now < c->next_sweep)
        return;
    c->next_sweep = now + 60;
    zlistx_t *keys = zhashx_keys(c->table);
    for (const char *k = keys ? zlistx_first(keys) : NULL; k; k = zlistx_next(keys)) {
        s_entry_t *e = zhashx_lookup(c->table, k);
        if (e && e->expires <= now)
            zhashx_delete(c->table, k);
    }
    zlistx_destroy(&keys);
}

//  24 random bytes -> 32 characters of URL-safe base64 (no padding). size >= 33.
static int s_random(char *buf)
{
    uint8_t rnd[24];
    unsigned char b64[40];
    if (RAND_bytes(rnd, sizeof rnd) != 1)
        return -1;
    EVP_EncodeBlock(b64, rnd, sizeof rnd);
    for (int i = 0; i < 32; i++)
        buf[i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : (char)b64[i];
    buf[32] = 0;
    OPENSSL_cleanse(rnd, sizeof rnd);
    OPENSSL_cleanse(b64, sizeof b64);
    return 0;
}

void ca_challenge_set_durable(ca_challenge_t *c, bool on)
{
    c->durable = on;
}

bool ca_challenge_durable(const ca_challenge_t *c)
{
    return c->mode == CA_CHALLENGE_ONE_TIME && c->durable;
}

int ca_challenge_make(ca_challenge_t *c, char *buf, size_t size, char hash_hex[65],
                      int64_t *expires_ms)
{
    if (!ca_challenge_durable(c) || size < 33 || s_random(buf) < 0)
        return -1;
    ca_challenge_hash_hex(buf, hash_hex);
    *expires_ms = (s_now(c) + c->ttl_s) * 1000;
    return 0;
}

int ca_challenge_issue(ca_challenge_t *c, char *buf, size_t size)
{
    if (c->mode == CA_CHALLENGE_STATIC) {
        if (strlen(c->secret) + 1 > size)
            return -1;
        memcpy(buf, c->secret, strlen(c->secret) + 1);
        return 0;
    }
    if (c->durable)
        return -1; //  ca_challenge_make: the store keeps it
    s_sweep(c);
    if (size < 33 || zhashx_size(c->table) >= CA_CHALLENGE_MAX_OUTSTANDING)
        return -1;
    if (s_random(buf) < 0)
        return -1;
    s_entry_t *e = calloc(1, sizeof *e);
    if (!e)
        return -1;
    e->expires = s_now(c) + c->ttl_s;
    char key[65];
    ca_challenge_hash_hex(buf, key);
    if (zhashx_insert(c->table, key, e) != 0) {
        free(e);
        return -1;
    }
    return 0;
}

bool ca_challenge_check(ca_challenge_t *c, const char *password, const char *txid,
                        const uint8_t key_hash[32])
{
    if (!password)
        return false;
    if (c->mode == CA_CHALLENGE_STATIC) {
        size_t a = strlen(password), b = strlen(c->secret);
        //  constant-time over the secret's length
        return a == b && CRYPTO_memcmp(password, c->secret, b) == 0;
    }
    if (c->durable)
        return false; //  the store decides (ca_scep defers the check)
    s_sweep(c);
    char key[65];
    ca_challenge_hash_hex(password, key);
    s_entry_t *e = zhashx_lookup(c->table, key);
    if (!e || e->expires <= s_now(c))
        return false;
    if (!e->used) {
        e->used = true;
        snprintf(e->txid, sizeof e->txid, "%s", txid ? txid : "");
        memcpy(e->key_hash, key_hash, 32);
        return true;
    }
    //  a retry of the same transaction with the same key
    return txid && strncmp(e->txid, txid, sizeof e->txid) == 0 && strlen(txid) < S_TXID_MAX &&
           CRYPTO_memcmp(e->key_hash, key_hash, 32) == 0;
}

int64_t ca_challenge_ttl(const ca_challenge_t *c)
{
    return c->ttl_s;
}

size_t ca_challenge_outstanding(const ca_challenge_t *c)
{
    size_t n = 0;
    int64_t now = s_now(c);
    for (s_entry_t *e = zhashx_first(c->table); e; e = zhashx_next(c->table))
        if (!e->used && e->expires > now)
            n++;
    return n;
}

void ca_challenge_advance_clock(ca_challenge_t *c, int64_t seconds)
{
    c->skew += seconds;
}
