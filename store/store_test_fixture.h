/*  store_test_fixture.h — for the store's unit tests only (cmocka included first):
 *  the store's service over a database, without the bus, and one request
 *  applied the way the group commit applies it (own transaction and
 *  savepoint, events flushed). Each test binary gets its own copy (static).
 *  s_db / s_svc: the open store; s_setup / s_teardown: an in-memory one.
 */
#ifndef STORE_TEST_FIXTURE_H
#define STORE_TEST_FIXTURE_H

#include "store_db.h"
#include "store_svc.h"

#include <stdint.h>
#include <sys/time.h>

static store_db_t *s_db;
static store_svc_t *s_svc;

static inline void s_open(const char *path)
{
    char err[256];
    s_db = store_db_new(path, NULL, err, sizeof err);
    assert_non_null(s_db);
    s_svc = store_svc_new(s_db, NULL, NULL);
    assert_non_null(s_svc);
}

static inline void s_close(void)
{
    store_svc_destroy(&s_svc);
    store_svc_destroy(&s_svc); //  safe twice
    store_db_destroy(&s_db);
}

static inline int s_setup(void **state)
{
    (void)state;
    s_open(":memory:");
    return 0;
}

static inline int s_teardown(void **state)
{
    (void)state;
    s_close();
    return 0;
}

static inline int64_t s_now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

//  One request in its own transaction; the reply (caller owns), which must
//  carry the request's rid. Takes req.
static inline pm_msg_t *s_apply(pm_msg_t *req)
{
    pm_msg_t *reply = NULL;
    assert_int_equal(store_db_begin(s_db), 0);
    assert_int_equal(store_db_op_begin(s_db), 0);
    bool keep = store_svc_apply(s_svc, req, &reply);
    store_db_op_end(s_db, keep);
    assert_int_equal(store_db_commit(s_db), 0);
    store_db_events_flush(s_db, NULL, NULL);
    assert_non_null(reply);
    assert_string_equal(pm_msg_rid(reply), pm_msg_rid(req));
    pm_msg_destroy(&req);
    return reply;
}

#endif
