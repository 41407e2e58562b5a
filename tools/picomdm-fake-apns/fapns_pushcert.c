/*  fapns_pushcert — the push-certificate module (pusher/push_cert.c) compiled
 *  into the APNs stand-in, which reads the client certificate's UID topic
 *  exactly as the pusher does. The build links each binary from its own
 *  folder only (Makefile header), so the one implementation is included here
 *  rather than copied.
 */
#include "../../pusher/push_cert.c"
