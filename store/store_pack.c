/*  store_pack — see store_pack.h. */
#include "store_pack.h"
#include "pm_log.h"

#include <string.h>

void store_pk_str(msgpack_packer *pk, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s ? s : "", n);
}

void store_pk_kstr(msgpack_packer *pk, const char *k, const char *v)
{
    store_pk_str(pk, k);
    if (v)
        store_pk_str(pk, v);
    else
        msgpack_pack_nil(pk);
}

void store_pk_kint(msgpack_packer *pk, const char *k, int64_t v)
{
    store_pk_str(pk, k);
    msgpack_pack_int64(pk, v);
}

void store_pk_kbool(msgpack_packer *pk, const char *k, bool v)
{
    store_pk_str(pk, k);
    if (v)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
}

void store_pk_col(msgpack_packer *pk, sqlite3_stmt *st, int i)
{
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER:
        msgpack_pack_int64(pk, sqlite3_column_int64(st, i));
        break;
    case SQLITE_TEXT: {
        const char *t = (const char *)sqlite3_column_text(st, i);
        size_t n = t ? (size_t)sqlite3_column_bytes(st, i) : 0;
        msgpack_pack_str(pk, n);
        msgpack_pack_str_body(pk, t ? t : "", n);
        break;
    }
    default:
        msgpack_pack_nil(pk);
        break;
    }
}

void store_pk_kcol(msgpack_packer *pk, const char *k, sqlite3_stmt *st, int i)
{
    store_pk_str(pk, k);
    store_pk_col(pk, st, i);
}

bool store_hex64_ok(const char *h)
{
    if (!h || strlen(h) != 64)
        return false;
    for (const char *p = h; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

store_rc_t store_db_fail(sqlite3 *sql, const pm_msg_t *req, pm_msg_t **reply, const char *what)
{
    pm_error("%s (request %s): %s", what, pm_msg_rid(req), sqlite3_errmsg(sql));
    *reply = pm_msg_new_error(req, "internal",
                              "%s failed in the database: %s; retry, and check "
                              "picomdm-store's log",
                              what, sqlite3_errmsg(sql));
    return STORE_ERR_DB;
}
