/*  picomdm-ca — the device identity CA: SCEP (RFC 8894) for device
 *  certificates and CMS-signed enrollment profiles. Holds the CA key and the
 *  profile signing key; never parses device HTTP (the gateway forwards SCEP
 *  requests as `scep` bus messages).
 */
#include "ca_challenge.h"
#include "ca_pki.h"
#include "ca_scep.h"
#include "pm_cfg.h"
#include "pm_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const pm_opt_t s_opts[] = {
    {"data-dir", PM_OPT_STR, "/var/lib/picomdm", "directory for keys made on first start"},
    {"ca-cert", PM_OPT_STR, NULL, "device CA certificate (PEM; default <data-dir>/ca.crt)"},
    {"ca-key", PM_OPT_STR, NULL, "device CA key (PEM, 0600; default <data-dir>/ca.key)"},
    {NULL, 0, NULL, NULL}};

int main(int argc, char **argv)
{
    pm_cfg_t *cfg = NULL;
    pm_cfg_result_t r = pm_cfg_parse(&cfg, "ca", "PicoMDM device CA (SCEP, enrollment profiles)",
                                     s_opts, argc, argv);
    if (r == PM_CFG_EXIT)
        return 0;
    if (r == PM_CFG_ERROR)
        return 2;
    pm_cfg_destroy(&cfg);
    return 0;
}
