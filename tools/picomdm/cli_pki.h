/*  cli_pki — the certificates `picomdm up` makes on first start (OpenSSL 3):
 *  a self-signed device-identity CA and a self-signed TLS server certificate
 *  for the gateway. Both are reused on later starts; keys are written 0600.
 *
 *  The two are deliberately separate: a certificate issued by the device CA
 *  authenticates a device, so the TLS server certificate must not come from it.
 */
#ifndef CLI_PKI_H
#define CLI_PKI_H

#include <stdbool.h>
#include <stddef.h>

//  Make (or reuse) a CA certificate + key: P-256, 10 years, CA:TRUE,
//  keyCertSign|cRLSign. An existing pair that does not load or does not match
//  is an error (never silently replaced: enrolled devices depend on it).
//  *created says whether it was made now.
int cli_pki_ensure_ca(const char *cert_path, const char *key_path, const char *common_name,
                      bool *created, char *err, size_t errlen);

//  Make (or reuse) a TLS server certificate + key: P-256, 825 days,
//  serverAuth, subjectAltName = `names` (comma-separated; entries that parse
//  as IP addresses become IP SANs, the rest DNS). An existing certificate is
//  reused when it loads, matches its key, is valid for 30 more days and
//  covers every name; otherwise it is replaced. *created as above.
int cli_pki_ensure_tls(const char *cert_path, const char *key_path, const char *names,
                       bool *created, char *err, size_t errlen);

//  SHA-256 fingerprint of a PEM certificate file as "AB:CD:..." (buf >= 96).
int cli_pki_fingerprint(const char *cert_path, char *buf, size_t size);

#endif
