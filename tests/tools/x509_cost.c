/*  x509_cost — what decoding one certificate costs with the OpenSSL the
 *  processes link (tests/bench/floor.sh).
 *
 *  A certificate that a process has not seen before (a new device's identity
 *  at its first check-in, the CSR's key in a PKCSReq) must be decoded once;
 *  with OpenSSL 3.0, d2i_X509 also decodes the public key through the
 *  providers' decoders, which is most of the cost. Decodes the certificate
 *  N times (each a fresh X509, freed) and prints
 *
 *    x509_cost: N decodes of a KEYTYPE BITS-bit certificate, U µs each (CPU)
 *
 *    x509_cost CERT.pem [N]      (N default 2000)
 *  Exit 0 on success, 1 when the file cannot be read or decoded.
 */
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double s_cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: x509_cost CERT.pem [N]  (prints the CPU time of one d2i_X509)\n");
        return 1;
    }
    long n = argc == 3 ? strtol(argv[2], NULL, 10) : 2000;
    if (n < 1 || n > 10000000) {
        fprintf(stderr, "x509_cost: N must be 1..10000000, not %s\n", argv[2]);
        return 1;
    }
    FILE *f = fopen(argv[1], "r");
    X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    unsigned char *der = NULL;
    int len = x ? i2d_X509(x, &der) : -1;
    EVP_PKEY *pk = x ? X509_get0_pubkey(x) : NULL;
    if (len <= 0 || !pk) {
        fprintf(
            stderr,
            "x509_cost: cannot read a PEM certificate with a public key from %s: check the path\n",
            argv[1]);
        X509_free(x);
        OPENSSL_free(der);
        return 1;
    }
    const char *type = EVP_PKEY_get0_type_name(pk);
    int bits = EVP_PKEY_get_bits(pk);
    double t0 = s_cpu_us();
    for (long i = 0; i < n; i++) {
        const unsigned char *p = der;
        X509 *y = d2i_X509(NULL, &p, len);
        if (!y || !X509_get0_pubkey(y)) {
            fprintf(stderr, "x509_cost: decode %ld of %s failed\n", i, argv[1]);
            X509_free(y);
            X509_free(x);
            OPENSSL_free(der);
            return 1;
        }
        X509_free(y);
    }
    double us = (s_cpu_us() - t0) / (double)n;
    printf("x509_cost: %ld decodes of a %s %d-bit certificate, %.1f µs each (CPU)\n", n,
           type ? type : "?", bits, us);
    X509_free(x);
    OPENSSL_free(der);
    return 0;
}
