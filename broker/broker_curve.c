/*  broker_curve — keys and the ZAP authenticator (see broker_curve.h). */
#include "broker_curve.h"
#include "pm_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct broker_curve {
    zcert_t *cert;
    zactor_t *auth;
};

int broker_curve_keygen(const char *path)
{
    int rc = -1;
    char *dir = strdup(path);
    zcert_t *cert = zcert_new();
    if (!dir || !cert)
        goto out;
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = 0;
        if (zsys_dir_create("%s", dir) < 0) {
            pm_error("broker: cannot create directory '%s' for the key files; check "
                     "permissions",
                     dir);
            goto out;
        }
    }
    const char *name = slash ? strrchr(path, '/') + 1 : path;
    zcert_set_meta(cert, "name", "%s", name);
    zcert_set_meta(cert, "created-by", "picomdm-broker --keygen");
    if (zcert_save(cert, path) < 0) {
        pm_error("broker: cannot write '%s' and '%s_secret'; check the path and permissions", path,
                 path);
        goto out;
    }
    char secret[4096];
    snprintf(secret, sizeof secret, "%s_secret", path);
    chmod(secret, 0600);
    printf("%s\n", zcert_public_txt(cert));
    rc = 0;
out:
    zcert_destroy(&cert);
    free(dir);
    return rc;
}

broker_curve_t *broker_curve_new(const char *secret_file, const char *allow_dir, bool verbose)
{
    broker_curve_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    struct stat st;
    if (!allow_dir || stat(allow_dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        pm_error("broker: --curve-allow must name a directory of allowed client public "
                 "certificates (copy each client's DIR/NAME made by --keygen there); got '%s'",
                 allow_dir ? allow_dir : "(unset)");
        goto fail;
    }
    self->cert = zcert_load(secret_file);
    static const char zeros[41] = "0000000000000000000000000000000000000000";
    if (!self->cert || strcmp(zcert_secret_txt(self->cert), zeros) == 0) {
        pm_error("broker: cannot load the secret key from '%s' (make one with "
                 "picomdm-broker --keygen DIR/broker, then pass --curve-secret DIR/broker_secret)",
                 secret_file);
        goto fail;
    }
    self->auth = zactor_new(zauth, NULL);
    if (!self->auth)
        goto fail;
    if (verbose) {
        zstr_send(self->auth, "VERBOSE");
        zsock_wait(self->auth);
    }
    zstr_sendx(self->auth, "CURVE", allow_dir, NULL);
    zsock_wait(self->auth);
    return self;
fail:
    broker_curve_destroy(&self);
    return NULL;
}

void broker_curve_destroy(broker_curve_t **selfp)
{
    if (!selfp || !*selfp)
        return;
    zactor_destroy(&(*selfp)->auth);
    zcert_destroy(&(*selfp)->cert);
    free(*selfp);
    *selfp = NULL;
}

void broker_curve_apply(broker_curve_t *self, zsock_t *sock)
{
    zcert_apply(self->cert, sock);
    zsock_set_curve_server(sock, 1);
}

const char *broker_curve_public(broker_curve_t *self)
{
    return zcert_public_txt(self->cert);
}
