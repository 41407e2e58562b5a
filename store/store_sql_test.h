/*  store_sql_test.h — for the store's unit tests only (cmocka included
 *  first): one integer from a query, and PRAGMA integrity_check is "ok".
 *  Static in each test binary.
 */
#ifndef STORE_SQL_TEST_H
#define STORE_SQL_TEST_H

#include <sqlite3.h>
#include <stdint.h>

//  The first column of the first row of `sql` (which must return a row).
static inline int64_t s_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

//  The database's integrity check says "ok".
static inline void s_ok(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);
}

#endif
