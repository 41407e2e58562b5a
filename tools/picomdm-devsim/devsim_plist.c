/*  devsim_plist — libplist helpers for the device simulator (see devsim_plist.h). */
#include "devsim_plist.h"
#include "pm_plist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  Seconds between the Unix epoch and Apple's (2001-01-01T00:00:00Z).
#define APPLE_EPOCH_OFFSET 978307200L

void devsim_pl_str(plist_t dict, const char *key, const char *val)
{
    plist_dict_set_item(dict, key, plist_new_string(val ? val : ""));
}

void devsim_pl_bool(plist_t dict, const char *key, bool val)
{
    plist_dict_set_item(dict, key, plist_new_bool(val ? 1 : 0));
}

void devsim_pl_int(plist_t dict, const char *key, int64_t val)
{
    plist_dict_set_item(dict, key, plist_new_uint((uint64_t)val));
}

void devsim_pl_real(plist_t dict, const char *key, double val)
{
    plist_dict_set_item(dict, key, plist_new_real(val));
}

void devsim_pl_data(plist_t dict, const char *key, const void *val, size_t len)
{
    plist_dict_set_item(dict, key, plist_new_data((const char *)val, len));
}

void devsim_pl_date(plist_t dict, const char *key, time_t when)
{
    plist_dict_set_item(dict, key, plist_new_date((int32_t)(when - APPLE_EPOCH_OFFSET), 0));
}

plist_t devsim_pl_get(plist_t dict, const char *key, plist_type type)
{
    if (!dict || plist_get_node_type(dict) != PLIST_DICT)
        return NULL;
    plist_t n = plist_dict_get_item(dict, key);
    return n && plist_get_node_type(n) == type ? n : NULL;
}

//  libplist 2.2 only hands out copies of strings; these accessors read the
//  node's own buffer instead so callers need not free anything.
const char *devsim_pl_get_str(plist_t dict, const char *key)
{
    plist_t n = devsim_pl_get(dict, key, PLIST_STRING);
    if (!n)
        return NULL;
    uint64_t len = 0;
    const char *s = plist_get_string_ptr(n, &len);
    return s;
}

bool devsim_pl_get_bool(plist_t dict, const char *key, bool def)
{
    plist_t n = devsim_pl_get(dict, key, PLIST_BOOLEAN);
    if (!n)
        return def;
    uint8_t b = 0;
    plist_get_bool_val(n, &b);
    return b != 0;
}

bool devsim_pl_get_data(plist_t dict, const char *key, const char **val, size_t *len)
{
    plist_t n = devsim_pl_get(dict, key, PLIST_DATA);
    if (!n)
        return false;
    uint64_t l = 0;
    *val = plist_get_data_ptr(n, &l);
    *len = (size_t)l;
    return true;
}

int devsim_pl_to_xml(plist_t node, char **xml, size_t *len)
{
    char *out = NULL;
    uint32_t n = 0;
    plist_to_xml(node, &out, &n);
    if (!out)
        return -1;
    *xml = out;
    *len = n;
    return 0;
}

plist_t devsim_pl_parse(const char *data, size_t len, char *err, size_t errlen)
{
    if (len == 0) {
        snprintf(err, errlen, "empty body");
        return NULL;
    }
    if (len > DEVSIM_PLIST_MAX_BYTES) {
        snprintf(err, errlen, "plist of %zu bytes is over the %u-byte limit", len,
                 DEVSIM_PLIST_MAX_BYTES);
        return NULL;
    }
    //  The shared bridge's bounded parse: size, depth and node count are checked
    //  before libplist sees the bytes (XML and binary alike).
    pm_plist_limits_t lim = pm_plist_default_limits;
    lim.max_bytes = DEVSIM_PLIST_MAX_BYTES;
    lim.max_depth = DEVSIM_PLIST_MAX_DEPTH;
    plist_t root = NULL;
    if (pm_plist_parse(data, len, &lim, &root, err, errlen) < 0)
        return NULL;
    return root;
}
