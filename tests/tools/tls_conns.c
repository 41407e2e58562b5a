/*  tls_conns — a TLS connection driver for the gateway's handshake benchmark
 *  and tests (tests/bench/tls_handshake.sh, tests/it/gateway_tls.sh).
 *
 *  Opens N new TCP+TLS connections to 127.0.0.1:PORT one after the other;
 *  on each: a full handshake (or a resumption of the previous connection's
 *  session with --resume), one `GET PATH` (or `PUT PATH` with the bytes of
 *  --body FILE, at most 64 KiB) with `Connection: close`, the
 *  answer read to the end, close_notify, close. The client's own cost does
 *  not matter (it is what is measured on the server side); it only counts:
 *
 *    tls_conns: N connections, OK with status S, R resumed, version V CIPHER, group G
 *
 *  Exit 0 when every connection got the HTTP status --expect (200) (and, with --resume, every
 *  connection after the first resumed), 1 otherwise.
 *
 *  --parallel P forks P clients that each open N/P connections one after the
 *  other (P devices connecting at once, like the cold open loop's 128
 *  connections at t = 0); the counts are summed (with --resume each client
 *  resumes its own sessions: N - P resumed).
 *
 *    tls_conns PORT N [--path P] [--body FILE] [--resume] [--tls12] [--ca PEM]
 *              [--cert PEM --key PEM] [--groups LIST] [--expect STATUS] [--quiet]
 *              [--parallel P]
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int s_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

//  One connection: returns the HTTP status (or -1), *reused set.
static int s_one(SSL_CTX *ctx, int port, const char *path, const char *body, size_t blen,
                 SSL_SESSION **sess, int *reused, char *ver, size_t verlen, char *group,
                 size_t grouplen)
{
    int status = -1;
    int fd = s_connect(port);
    if (fd < 0)
        return -1;
    SSL *ssl = SSL_new(ctx);
    if (!ssl) {
        close(fd);
        return -1;
    }
    SSL_set_fd(ssl, fd);
    if (sess && *sess)
        SSL_set_session(ssl, *sess);
    if (SSL_connect(ssl) != 1) {
        ERR_print_errors_fp(stderr);
        goto out;
    }
    *reused = SSL_session_reused(ssl);
    snprintf(ver, verlen, "%s %s", SSL_get_version(ssl), SSL_get_cipher_name(ssl));
    const char *g = SSL_group_to_name(ssl, SSL_get_negotiated_group(ssl));
    snprintf(group, grouplen, "%s", g ? g : "?");
    char req[512];
    int n = body
                ? snprintf(req, sizeof req,
                           "PUT %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                           "Content-Type: application/xml\r\nContent-Length: %zu\r\n\r\n",
                           path, blen)
                : snprintf(req, sizeof req,
                           "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", path);
    if (n <= 0 || (size_t)n >= sizeof req || SSL_write(ssl, req, n) != n)
        goto out;
    if (body && blen && SSL_write(ssl, body, (int)blen) != (int)blen)
        goto out;
    char buf[4096];
    size_t have = 0;
    for (;;) {
        int r = SSL_read(ssl, buf + have, (int)(sizeof buf - 1 - have));
        if (r <= 0)
            break;
        have += (size_t)r;
        if (have >= sizeof buf - 1)
            have = 64; //  keep the status line, drop the rest
    }
    buf[have] = '\0';
    int st = 0;
    if (have >= 12 && strncmp(buf, "HTTP/1.", 7) == 0 && sscanf(buf + 9, "%3d", &st) == 1)
        status = st;
    if (sess) {
        //  TLS 1.3: the ticket arrives after the handshake; keep the newest
        SSL_SESSION *s = SSL_get1_session(ssl);
        if (s && SSL_SESSION_is_resumable(s)) {
            SSL_SESSION_free(*sess);
            *sess = s;
        } else
            SSL_SESSION_free(s);
    }
    SSL_shutdown(ssl);
out:
    SSL_free(ssl);
    close(fd);
    return status;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(
            stderr,
            "usage: tls_conns PORT N [--path P] [--body FILE] [--resume] [--tls12] [--ca PEM] "
            "[--cert PEM --key PEM] [--groups LIST] [--expect STATUS] [--quiet] [--parallel P]\n");
        return 2;
    }
    int port = (int)strtol(argv[1], NULL, 10);
    long n = strtol(argv[2], NULL, 10);
    const char *path = "/health", *ca = NULL, *cert = NULL, *key = NULL, *groups = NULL;
    const char *bodyfile = NULL;
    int resume = 0, tls12 = 0, quiet = 0, expect = 200;
    long par = 1;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--path") == 0 && i + 1 < argc)
            path = argv[++i];
        else if (strcmp(argv[i], "--expect") == 0 && i + 1 < argc)
            expect = (int)strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--body") == 0 && i + 1 < argc)
            bodyfile = argv[++i];
        else if (strcmp(argv[i], "--parallel") == 0 && i + 1 < argc)
            par = strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--resume") == 0)
            resume = 1;
        else if (strcmp(argv[i], "--tls12") == 0)
            tls12 = 1;
        else if (strcmp(argv[i], "--quiet") == 0)
            quiet = 1;
        else if (strcmp(argv[i], "--ca") == 0 && i + 1 < argc)
            ca = argv[++i];
        else if (strcmp(argv[i], "--cert") == 0 && i + 1 < argc)
            cert = argv[++i];
        else if (strcmp(argv[i], "--key") == 0 && i + 1 < argc)
            key = argv[++i];
        else if (strcmp(argv[i], "--groups") == 0 && i + 1 < argc)
            groups = argv[++i];
        else {
            fprintf(stderr, "tls_conns: unknown argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (port <= 0 || n <= 0 || par < 1 || par > 1024 || par > n) {
        fprintf(stderr, "tls_conns: give a port, a number of connections and 1 <= --parallel <= "
                        "min(N, 1024)\n");
        return 2;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        return 1;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (tls12)
        SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    if (groups && SSL_CTX_set1_groups_list(ctx, groups) != 1) {
        fprintf(stderr, "tls_conns: bad --groups '%s'\n", groups);
        return 2;
    }
    if (ca) {
        if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
            fprintf(stderr, "tls_conns: cannot load --ca '%s'\n", ca);
            return 2;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    //  only the certificate itself, as a device sends its identity (OpenSSL
    //  would otherwise add the CA from --ca to the Certificate message)
    SSL_CTX_set_mode(ctx, SSL_MODE_NO_AUTO_CHAIN);
    //  The gateway closes a `Connection: close` answer without close_notify
    //  (evhttp); OpenSSL 3 would call that a fatal error and mark the session
    //  not resumable.
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (cert && key &&
        (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
         SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)) {
        fprintf(stderr, "tls_conns: cannot load --cert/--key\n");
        return 2;
    }
    char body[65536];
    size_t blen = 0;
    if (bodyfile) {
        FILE *f = fopen(bodyfile, "rb");
        if (!f) {
            fprintf(stderr, "tls_conns: cannot read --body '%s'\n", bodyfile);
            return 2;
        }
        blen = fread(body, 1, sizeof body, f);
        fclose(f);
    }
    //  --parallel: P children, each its share of the N connections; each
    //  reports "ok reused ver|group" on a pipe, the parent sums them.
    int pfd[2] = {-1, -1};
    long first = 0, last = n, child = -1;
    if (par > 1) {
        if (pipe(pfd) < 0) {
            perror("tls_conns: pipe");
            return 1;
        }
        fflush(stdout);
        for (long c = 0; c < par; c++) {
            pid_t pid = fork();
            if (pid < 0) {
                perror("tls_conns: fork");
                return 1;
            }
            if (pid == 0) {
                child = c;
                first = n * c / par;
                last = n * (c + 1) / par;
                close(pfd[0]);
                break;
            }
        }
        if (child < 0) {
            close(pfd[1]);
            FILE *in = fdopen(pfd[0], "r");
            long ok = 0, reused = 0, got = 0, a, b;
            char ver[96] = "?", group[32] = "?";
            char line[256];
            while (in && fgets(line, sizeof line, in)) {
                char v1[48], v2[48], g[32];
                if (sscanf(line, "%ld %ld %47s %47s %31s", &a, &b, v1, v2, g) == 5) {
                    ok += a;
                    reused += b;
                    got++;
                    snprintf(ver, sizeof ver, "%s %s", v1, v2);
                    snprintf(group, sizeof group, "%s", g);
                }
            }
            if (in)
                fclose(in);
            while (wait(NULL) > 0)
                ;
            int failed = got != par;
            printf("tls_conns: %ld connections, %ld with status %d, %ld resumed, version %s, "
                   "group %s, %ld clients in parallel\n",
                   n, ok, expect, reused, ver, group, par);
            SSL_CTX_free(ctx);
            if (failed || ok != n)
                return 1;
            if (resume && reused != n - par)
                return 1;
            return 0;
        }
    }
    SSL_SESSION *sess = NULL;
    long ok = 0, reused = 0;
    char ver[96] = "?", group[32] = "?";
    for (long i = first; i < last; i++) {
        int r = 0;
        int st = s_one(ctx, port, path, bodyfile ? body : NULL, blen, resume ? &sess : NULL, &r,
                       ver, sizeof ver, group, sizeof group);
        if (st == expect)
            ok++;
        else if (!quiet)
            fprintf(stderr, "tls_conns: connection %ld: status %d\n", i, st);
        reused += r;
    }
    if (child >= 0) {
        char line[256];
        int l = snprintf(line, sizeof line, "%ld %ld %s %s\n", ok, reused, ver, group);
        if (l > 0 && write(pfd[1], line, (size_t)l) != l)
            return 1;
        close(pfd[1]);
        SSL_SESSION_free(sess);
        SSL_CTX_free(ctx);
        return 0;
    }
    printf("tls_conns: %ld connections, %ld with status %d, %ld resumed, version %s, group %s\n", n,
           ok, expect, reused, ver, group);
    SSL_SESSION_free(sess);
    SSL_CTX_free(ctx);
    if (ok != n)
        return 1;
    if (resume && reused != n - 1)
        return 1;
    return 0;
}
