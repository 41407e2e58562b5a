/*  broker_curve — CURVE security for picomdm-broker: key generation
 *  (--keygen), the ZAP authenticator (czmq zauth) that admits only client keys
 *  found in the allow directory, and applying the server certificate to the
 *  bound sockets of all three planes.
 */
#ifndef BROKER_CURVE_H
#define BROKER_CURVE_H

#include <czmq.h>

typedef struct broker_curve broker_curve_t;

//  Write a new certificate: `path` (public) and `path`_secret (mode 0600);
//  print the public key on stdout. Returns 0 or -1 (reason logged).
int broker_curve_keygen(const char *path);

//  Load the server certificate (its secret file) and start the authenticator
//  for the client public certificates in allow_dir. NULL on failure (logged).
broker_curve_t *broker_curve_new(const char *secret_file, const char *allow_dir, bool verbose);
void broker_curve_destroy(broker_curve_t **self);

//  Make `sock` a CURVE server with our certificate (before it is bound).
void broker_curve_apply(broker_curve_t *self, zsock_t *sock);

//  Our public key (Z85, owned by self): what clients set as server key.
const char *broker_curve_public(broker_curve_t *self);

#endif
