/*  ca_challenge — static or one-time SCEP challenges (see ca_challenge.h).
 *  In-memory one-time challenges are kept by their SHA-256 only, so the table
 *  holds no usable secret and the lookup does not compare secrets byte by
 *  byte. Signed ones are checked with CRYPTO_memcmp on their HMAC tag.
 */
#include "ca_challenge.h"
#include "pm_bus_wire.h"
#include "pm_log.h"

#include <czmq.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define S_TXID_MAX 128

//  A signed challenge: version | nonce | expiry (s, big-endian) | tag, 48
//  bytes, 64 characters of URL-safe base64 (no padding). The tag is the
//  first S_TAG bytes of HMAC-SHA256(key, S_LABEL | version | nonce | expiry).
#define S_VERSION 1
#define S_NONCE 16
#define S_TAG 23
#define S_RAW (1 + S_NONCE + 8 + S_TAG)
#define S_CHARS 64
#define S_LABEL "picomdm scep challenge v1"
#define S_KEY 32

typedef struct {
    int64_t expires;
    bool used;
    char txid[S_TXID_MAX]; //  the transaction that used it
    uint8_t key_hash[32];
} s_entry_t;

struct ca_challenge {
    ca_challenge_mode_t mode;
    char *secret;
    int64_t ttl_s;
    int64_t skew; //  test clock
    int64_t next_sweep;
    zhashx_t *table;  //  hex SHA-256 of the challenge -> s_entry_t
    bool is_signed;   //  signed one-time challenges (mac below)
    EVP_MAC_CTX *mac; //  HMAC-SHA256 keyed with the challenge key once; each tag uses a copy
    bool refuse;
    bool have_seen;
    ca_challenge_seen_t seen;
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
    pm_bus_hex(md, sizeof md, hex);
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
    if (ttl_s > CA_CHALLENGE_MAX_TTL_S) {
        snprintf(err, errlen,
                 "challenge-ttl %lld is more than 366 days (%lld s), which picomdm-store refuses: "
                 "set a shorter challenge-ttl",
                 (long long)ttl_s, (long long)CA_CHALLENGE_MAX_TTL_S);
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
    EVP_MAC_CTX_free(c->mac);
    OPENSSL_cleanse(&c->seen, sizeof c->seen);
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

int ca_challenge_set_key(ca_challenge_t *c, const uint8_t *key, size_t len)
{
    if (c->mode != CA_CHALLENGE_ONE_TIME)
        return 0;
    if (len < 16 || len > S_KEY)
        return -1;
    //  The HMAC is keyed here, once (the key's inner and outer blocks
    //  hashed): a tag then copies this context instead of fetching HMAC and
    //  SHA-256 and keying a new one, as the one-shot HMAC() does each time.
    EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *mac = m ? EVP_MAC_CTX_new(m) : NULL;
    EVP_MAC_free(m);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end()};
    if (!mac || EVP_MAC_init(mac, key, len, params) != 1) {
        EVP_MAC_CTX_free(mac);
        return -1;
    }
    EVP_MAC_CTX_free(c->mac);
    c->mac = mac;
    c->is_signed = true;
    return 0;
}

bool ca_challenge_signed(const ca_challenge_t *c)
{
    return c->mode == CA_CHALLENGE_ONE_TIME && c->is_signed;
}

static int s_hexval(char ch)
{
    return ch >= '0' && ch <= '9'   ? ch - '0'
           : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
           : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                    : -1;
}

//  Read an existing key file: 64 hex digits (a newline may follow). 0 / -1.
static int s_key_read(int fd, const char *path, uint8_t key[S_KEY], char *err, size_t errlen)
{
    char buf[130];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    int rc = -1;
    if (n < 2 * S_KEY) {
        snprintf(err, errlen,
                 "challenge key %s: %s (expected 64 hex digits): restore it from a backup or "
                 "move it away to make a new one (every outstanding one-time profile then stops "
                 "working)",
                 path, n < 0 ? strerror(errno) : "too short");
        goto out;
    }
    buf[n] = 0;
    for (int i = 0; i < S_KEY; i++) {
        int hi = s_hexval(buf[2 * i]), lo = s_hexval(buf[2 * i + 1]);
        if (hi < 0 || lo < 0)
            break;
        key[i] = (uint8_t)(hi << 4 | lo);
        if (i == S_KEY - 1)
            rc = 0;
    }
    if (rc == 0 && n > 2 * S_KEY && buf[2 * S_KEY] != '\n' && buf[2 * S_KEY] != '\r')
        rc = -1;
    if (rc < 0)
        snprintf(err, errlen,
                 "challenge key %s is not 64 hex digits: restore it from a backup or move it "
                 "away to make a new one (every outstanding one-time profile then stops working)",
                 path);
out:
    OPENSSL_cleanse(buf, sizeof buf);
    return rc;
}

//  A new key file, made under a temporary name and linked into place: link()
//  fails if another ca process made one meanwhile (then that one is read).
//  0 made, 1 someone else's exists now, -1 error.
static int s_key_make(const char *path, char *err, size_t errlen)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    uint8_t key[S_KEY];
    char hex[2 * S_KEY + 2];
    int rc = -1;
    if (RAND_bytes(key, sizeof key) != 1) {
        snprintf(err, errlen, "cannot make a challenge key: no randomness from OpenSSL");
        return -1;
    }
    pm_bus_hex(key, sizeof key, hex);
    hex[2 * S_KEY] = '\n';
    hex[2 * S_KEY + 1] = 0;
    (void)unlink(tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, hex, 2 * S_KEY + 1) != 2 * S_KEY + 1 || fsync(fd) < 0) {
        snprintf(err, errlen, "cannot write the challenge key %s: %s (check the directory)", tmp,
                 strerror(errno));
        goto out;
    }
    if (link(tmp, path) == 0) {
        rc = 0;
        //  the new name survives a crash only once its directory is synced:
        //  a lost key would silently void every profile handed out
        (void)unlink(tmp);
        char dir[4200];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash == dir)
            dir[1] = 0;
        else if (slash)
            *slash = 0;
        else
            snprintf(dir, sizeof dir, ".");
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0 || fsync(dfd) < 0)
            pm_warn("cannot sync the directory of the challenge key %s: %s (it may be lost if "
                    "the machine crashes now; check the directory)",
                    path, strerror(errno));
        if (dfd >= 0)
            close(dfd);
    } else if (errno == EEXIST)
        rc = 1;
    else
        snprintf(err, errlen, "cannot create the challenge key %s: %s", path, strerror(errno));
out:
    if (fd >= 0)
        close(fd);
    (void)unlink(tmp);
    OPENSSL_cleanse(key, sizeof key);
    OPENSSL_cleanse(hex, sizeof hex);
    return rc;
}

int ca_challenge_set_key_file(ca_challenge_t *c, const char *path, char *err, size_t errlen)
{
    if (c->mode != CA_CHALLENGE_ONE_TIME)
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 && errno == ENOENT) {
        int made = s_key_make(path, err, errlen);
        if (made < 0)
            return -1;
        if (made == 0)
            pm_info("made the one-time SCEP challenge key %s (0600; share it with every "
                    "picomdm-ca like the CA key)",
                    path);
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    }
    if (fd < 0) {
        snprintf(err, errlen, "cannot open the challenge key %s: %s (fix its permissions)", path,
                 strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && (st.st_mode & 077)) {
        pm_warn("challenge key %s was readable by others: tightened to 0600", path);
        if (fchmod(fd, 0600) < 0)
            pm_warn("cannot chmod %s: %s", path, strerror(errno));
    }
    uint8_t key[S_KEY];
    int rc = s_key_read(fd, path, key, err, errlen);
    close(fd);
    if (rc == 0)
        rc = ca_challenge_set_key(c, key, sizeof key);
    OPENSSL_cleanse(key, sizeof key);
    return rc;
}

//  The tag of raw[0 .. S_RAW - S_TAG). 0 / -1.
static int s_tag(const ca_challenge_t *c, const uint8_t *raw, uint8_t tag[S_TAG])
{
    uint8_t msg[sizeof S_LABEL + S_RAW], md[EVP_MAX_MD_SIZE];
    size_t mdlen = 0;
    memcpy(msg, S_LABEL, sizeof S_LABEL); //  with its NUL: a separator
    memcpy(msg + sizeof S_LABEL, raw, S_RAW - S_TAG);
    EVP_MAC_CTX *m = c->mac ? EVP_MAC_CTX_dup(c->mac) : NULL;
    int rc = m && EVP_MAC_update(m, msg, sizeof S_LABEL + S_RAW - S_TAG) == 1 &&
                     EVP_MAC_final(m, md, &mdlen, sizeof md) == 1 && mdlen >= S_TAG
                 ? 0
                 : -1;
    EVP_MAC_CTX_free(m);
    if (rc == 0)
        memcpy(tag, md, S_TAG);
    OPENSSL_cleanse(md, sizeof md);
    return rc;
}

int ca_challenge_make(ca_challenge_t *c, char *buf, size_t size, char hash_hex[65],
                      int64_t *expires_ms)
{
    if (!ca_challenge_signed(c) || size < S_CHARS + 1)
        return -1;
    uint8_t raw[S_RAW];
    unsigned char b64[S_CHARS + 4];
    int64_t exp = s_now(c) + c->ttl_s;
    raw[0] = S_VERSION;
    if (RAND_bytes(raw + 1, S_NONCE) != 1)
        return -1;
    for (int i = 0; i < 8; i++)
        raw[1 + S_NONCE + i] = (uint8_t)((uint64_t)exp >> (56 - 8 * i));
    if (s_tag(c, raw, raw + S_RAW - S_TAG) < 0)
        return -1;
    EVP_EncodeBlock(b64, raw, S_RAW);
    for (int i = 0; i < S_CHARS; i++)
        buf[i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : (char)b64[i];
    buf[S_CHARS] = 0;
    OPENSSL_cleanse(raw, sizeof raw);
    OPENSSL_cleanse(b64, sizeof b64);
    if (hash_hex)
        ca_challenge_hash_hex(buf, hash_hex);
    if (expires_ms)
        *expires_ms = exp * 1000;
    return 0;
}

//  A signed challenge's tag and expiry. true = genuine and unexpired; then
//  *expires (s) is set.
static bool s_verify(const ca_challenge_t *c, const char *pw, int64_t *expires)
{
    if (strlen(pw) != S_CHARS)
        return false;
    unsigned char b64[S_CHARS + 1];
    uint8_t raw[S_RAW + 3], tag[S_TAG];
    for (int i = 0; i < S_CHARS; i++) {
        char ch = pw[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_'))
            return false;
        b64[i] = ch == '-' ? '+' : ch == '_' ? '/' : (unsigned char)ch;
    }
    b64[S_CHARS] = 0;
    bool ok = EVP_DecodeBlock(raw, b64, S_CHARS) == S_RAW && raw[0] == S_VERSION &&
              s_tag(c, raw, tag) == 0 && CRYPTO_memcmp(tag, raw + S_RAW - S_TAG, S_TAG) == 0;
    int64_t exp = 0;
    for (int i = 0; ok && i < 8; i++)
        exp = (int64_t)((uint64_t)exp << 8 | raw[1 + S_NONCE + i]);
    ok = ok && exp > s_now(c);
    OPENSSL_cleanse(b64, sizeof b64);
    OPENSSL_cleanse(raw, sizeof raw);
    if (ok)
        *expires = exp;
    return ok;
}

bool ca_challenge_take_seen(ca_challenge_t *c, ca_challenge_seen_t *out)
{
    bool had = c->have_seen;
    if (out && had)
        *out = c->seen;
    c->have_seen = false;
    OPENSSL_cleanse(&c->seen, sizeof c->seen);
    return had;
}

void ca_challenge_refuse(ca_challenge_t *c, bool on)
{
    c->refuse = on;
}

int ca_challenge_issue(ca_challenge_t *c, char *buf, size_t size)
{
    if (c->mode == CA_CHALLENGE_STATIC) {
        if (strlen(c->secret) + 1 > size)
            return -1;
        memcpy(buf, c->secret, strlen(c->secret) + 1);
        return 0;
    }
    if (c->is_signed)
        return -1; //  ca_challenge_make
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
    if (c->is_signed) {
        //  genuine and unexpired here; the store decides the one-time use
        int64_t exp = 0;
        if (c->refuse || !s_verify(c, password, &exp) || !txid || strlen(txid) >= S_TXID_MAX)
            return false;
        ca_challenge_hash_hex(password, c->seen.hash_hex);
        pm_bus_hex(key_hash, 32, c->seen.key_hash_hex);
        snprintf(c->seen.txid, sizeof c->seen.txid, "%s", txid);
        c->seen.expires_ms = exp * 1000;
        c->have_seen = true;
        return true;
    }
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
