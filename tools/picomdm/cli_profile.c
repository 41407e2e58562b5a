/*  cli_profile — `picomdm profile [-o FILE]`: the signed enrollment profile
 *  (.mobileconfig), built by the ca service exactly as the gateway's enrollment
 *  route serves it (docs/enrollment.md). Every option overrides the ca's own
 *  configuration for this one profile.
 */
#include "cli_ops.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

const pm_opt_t cli_profile_opts[] = {
    {"output", PM_OPT_STR, NULL, "write the profile to this file (also -o FILE)"},
    {"server-url", PM_OPT_STR, NULL, "ServerURL (default: the ca's configuration)"},
    {"checkin-url", PM_OPT_STR, NULL, "CheckInURL (default: the ca's configuration)"},
    {"scep-url", PM_OPT_STR, NULL, "SCEP URL (default: the ca's configuration)"},
    {"topic", PM_OPT_STR, NULL, "APNs topic (default: the push certificate's)"},
    {"display-name", PM_OPT_STR, NULL, "PayloadDisplayName"},
    {"organization", PM_OPT_STR, NULL, "PayloadOrganization"},
    {"for", PM_OPT_STR, NULL, "who the profile is for (logs and events only)"},
    {NULL, 0, NULL, NULL}};

static int s_write_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int cli_profile_run(cli_ctx_t *ctx)
{
    const char *out = pm_cfg_str(ctx->cfg, "output");
    if (cli_argc(ctx) == 2 && strcmp(cli_arg(ctx, 0), "-o") == 0)
        out = cli_arg(ctx, 1);
    else if (cli_argc(ctx) > 0) {
        fprintf(stderr, "picomdm profile: unexpected '%s' (usage: picomdm profile [-o FILE])\n",
                cli_arg(ctx, 0));
        return CLI_EXIT_USAGE;
    }
    if (!out && isatty(STDOUT_FILENO)) {
        fprintf(stderr, "picomdm profile: the profile is binary (CMS): give -o FILE or redirect "
                        "standard output\n");
        return CLI_EXIT_USAGE;
    }
    pm_msg_t *req = pm_msg_new(PM_MSG_PROFILE);
    if (!req)
        return CLI_EXIT_FAIL;
    static const char *const map[][2] = {{"server-url", "server_url"},
                                         {"checkin-url", "checkin_url"},
                                         {"scep-url", "scep_url"},
                                         {"topic", "topic"},
                                         {"display-name", "display_name"},
                                         {"organization", "organization"},
                                         {"for", "for"}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        const char *v = pm_cfg_str(ctx->cfg, map[i][0]);
        if (v && *v)
            pm_msg_set_str(req, map[i][1], v);
    }
    if (!pm_msg_has(req, "for"))
        pm_msg_set_str(req, "for", "picomdm profile");
    pm_msg_t *rep = NULL;
    int rc = cli_call_to(ctx, "ca", req, &rep);
    pm_msg_destroy(&req);
    if (rc != CLI_EXIT_OK)
        return rc;
    size_t len = 0;
    const uint8_t *der =
        pm_msg_type(rep) == PM_MSG_PROFILE_REPLY ? pm_msg_bin(rep, "profile", &len) : NULL;
    if (!der || !len) {
        fprintf(stderr, "picomdm profile: the ca answered %s, not a profile\n",
                pm_msg_type_name(pm_msg_type(rep)));
        pm_msg_destroy(&rep);
        return CLI_EXIT_FAIL;
    }
    int fd = out ? open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : STDOUT_FILENO;
    if (fd < 0 || s_write_all(fd, der, len) < 0) {
        fprintf(stderr, "picomdm profile: cannot write %s: %s\n", out ? out : "standard output",
                strerror(errno));
        if (fd >= 0 && out)
            close(fd);
        pm_msg_destroy(&rep);
        return CLI_EXIT_FAIL;
    }
    if (out && close(fd) != 0) {
        fprintf(stderr, "picomdm profile: cannot write %s: %s\n", out, strerror(errno));
        pm_msg_destroy(&rep);
        return CLI_EXIT_FAIL;
    }
    bool one_time = pm_msg_bool(rep, "one_time", false);
    fprintf(stderr, "wrote %s (%zu bytes, %s; IdentityCertificateUUID %s)%s", out ? out : "profile",
            len, pm_msg_str(rep, "content_type"), pm_msg_str(rep, "identity_uuid"),
            one_time ? "" : "\n");
    if (one_time)
        fprintf(stderr, ": its SCEP challenge works once, within %llu s\n",
                (unsigned long long)pm_msg_uint(rep, "expires_s", 0));
    pm_msg_destroy(&rep);
    return CLI_EXIT_OK;
}
