/*  gw_http unit tests: the answers gw_http_send writes, over a real evhttp
 *  server on loopback (plain HTTP) and a raw client socket. Since session 11
 *  gw_http makes the Date and Content-Length lines itself instead of evhttp
 *  (gw_http.c s_std_headers); every answer here must be byte for byte the
 *  one evhttp makes itself (gw_http_test_own_headers(false)), for HTTP/1.1
 *  and 1.0, GET and HEAD, with and without a body, 204, 304 and a 503 with
 *  Retry-After.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "gw_http.h"

#include <arpa/inet.h>
#include <event2/event.h>
#include <event2/http.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int code; //  the answer to give (503: gw_http_send_503)
    const char *ctype;
    const char *body;
} s_answer_t;

static void s_on_request(struct evhttp_request *req, void *arg)
{
    const s_answer_t *a = arg;
    if (a->code == 503)
        gw_http_send_503(req, 7, a->body);
    else
        gw_http_send(req, a->code, a->ctype, a->body, a->body ? strlen(a->body) : 0);
}

//  One request on a new connection; the whole answer (the server closes:
//  "Connection: close", or our side's end after a keep-alive request) into
//  out. Returns its length.
static size_t s_roundtrip(struct event_base *base, int port, const char *request, char *out,
                          size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(write(fd, request, strlen(request)), (ssize_t)strlen(request));
    shutdown(fd, SHUT_WR); //  a keep-alive connection closes too, once answered
    size_t n = 0;
    time_t t0 = time(NULL);
    for (;;) {
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        ssize_t r = recv(fd, out + n, cap - 1 - n, MSG_DONTWAIT);
        if (r == 0)
            break;
        if (r > 0)
            n += (size_t)r;
        else if (time(NULL) - t0 > 20)
            fail_msg("no complete answer to '%.40s' in 20 s (%zu bytes)", request, n);
        else
            usleep(1000);
        assert_true(n < cap - 1);
    }
    out[n] = '\0';
    close(fd);
    return n;
}

static void test_same_bytes_as_evhttp(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    assert_non_null(base);
    struct evhttp *http = evhttp_new(base);
    assert_non_null(http);
    static s_answer_t answer;
    evhttp_set_gencb(http, s_on_request, &answer);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(http, "127.0.0.1", 0);
    assert_non_null(bs);
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    assert_int_equal(getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sa, &sl), 0);
    int port = ntohs(sa.sin_port);

    //  own: the lines gw_http must add itself (Date, and Content-Length
    //  when the answer has a body); HTTP/1.0 answers are left to evhttp
    static const struct {
        s_answer_t a;
        const char *request;
        unsigned long own;
    } cases[] = {
        {{200, "application/xml", "<plist/>"}, "PUT /mdm/connect HTTP/1.1\r\nHost: x\r\n", 2},
        {{200, NULL, NULL}, "PUT /mdm/connect HTTP/1.1\r\nHost: x\r\n", 2},
        {{400, "text/plain; charset=utf-8", "bad request\n"}, "GET /x HTTP/1.1\r\nHost: x\r\n", 2},
        {{200, "text/plain", "hello"}, "HEAD /x HTTP/1.1\r\nHost: x\r\n", 1},
        {{204, NULL, NULL}, "GET /x HTTP/1.1\r\nHost: x\r\n", 1},
        {{304, NULL, NULL}, "GET /x HTTP/1.1\r\nHost: x\r\n", 1},
        {{503, NULL, "try later\n"}, "GET /x HTTP/1.1\r\nHost: x\r\n", 2},
        {{200, "text/plain", "hello"}, "GET /x HTTP/1.0\r\n", 0},
        {{200, "text/plain", "hello"}, "GET /x HTTP/1.0\r\nConnection: keep-alive\r\n", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char req[256], ours[2048], theirs[2048];
        snprintf(req, sizeof req, "%s%s\r\n", cases[i].request,
                 strstr(cases[i].request, "Connection:") ? "" : "Connection: close\r\n");
        answer = cases[i].a;
        for (int attempt = 0;; attempt++) { //  again if the second turned in between
            time_t t = time(NULL);
            gw_http_test_own_headers(true);
            unsigned long lines = gw_http_test_own_lines();
            s_roundtrip(base, port, req, ours, sizeof ours);
            //  the lines compared below are gw_http's own, not evhttp's
            //  made because gw_http fell back
            if (gw_http_test_own_lines() - lines != cases[i].own)
                fail_msg("case %zu (%.30s): gw_http added %lu header lines, not %lu", i,
                         cases[i].request, gw_http_test_own_lines() - lines, cases[i].own);
            gw_http_test_own_headers(false);
            s_roundtrip(base, port, req, theirs, sizeof theirs);
            gw_http_test_own_headers(true);
            if (time(NULL) == t || attempt == 3)
                break;
        }
        if (strcmp(ours, theirs) != 0)
            fail_msg("case %zu (%.30s): ours\n%s\n--- evhttp's\n%s", i, cases[i].request, ours,
                     theirs);
        //  HTTP/1.1 answers carry both lines (made by gw_http), so the
        //  comparison above is about them
        if (i == 0) {
            assert_non_null(strstr(ours, "\r\nDate: "));
            assert_non_null(strstr(ours, "\r\nContent-Length: 8\r\n"));
        }
    }
    evhttp_free(http);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_bytes_as_evhttp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
