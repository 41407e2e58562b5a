/*  cli_schema — lookups over the generated command table (cmdtab.h):
 *  find a RequestType or key, suggest the closest name, list names.
 */
#include "cmdtab.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define S_NAME_MAX 64
#define S_LIST_MAX 2048

//  Case-insensitive Levenshtein distance, names truncated to S_NAME_MAX.
static size_t s_distance(const char *a, const char *b)
{
    size_t la = strnlen(a, S_NAME_MAX), lb = strnlen(b, S_NAME_MAX);
    size_t row[S_NAME_MAX + 1];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            int same = tolower((unsigned char)a[i - 1]) == tolower((unsigned char)b[j - 1]);
            size_t best = diag + (same ? 0 : 1);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

//  Score of `cand` as a suggestion for `name`: lower is better, SIZE_MAX = no.
//  A case-insensitive substring counts as close ("deviceinfo" -> DeviceInformation).
static size_t s_score(const char *name, const char *cand)
{
    size_t ln = strlen(name);
    if (ln == 0 || cand == NULL)
        return (size_t)-1;
    if (strcasecmp(name, cand) == 0)
        return 0;
    if (ln >= 3 && strcasestr(cand, name))
        return 1 + strlen(cand) - ln / 2;
    size_t d = s_distance(name, cand);
    size_t limit = ln / 3 < 2 ? 2 : ln / 3;
    //  a long common prefix ("Query" -> "Queries") is close too
    size_t prefix = 0;
    while (name[prefix] && cand[prefix] &&
           tolower((unsigned char)name[prefix]) == tolower((unsigned char)cand[prefix]))
        prefix++;
    if (prefix >= 4 && prefix * 3 >= ln * 2 && d > limit)
        d = limit;
    return d <= limit ? d : (size_t)-1;
}

const char *cmdtab_suggest(const char *name)
{
    const char *best = NULL;
    size_t best_score = (size_t)-1;
    for (size_t i = 0; name && i < cmdtab_ncmds; i++) {
        size_t s = s_score(name, cmdtab_cmds[i].request_type);
        if (s < best_score) {
            best_score = s;
            best = cmdtab_cmds[i].request_type;
        }
    }
    return best;
}

const cmdtab_key_t *cmdtab_child(uint16_t first, uint16_t n, const char *name)
{
    const cmdtab_key_t *wild = NULL;
    for (uint16_t i = 0; name && i < n && (size_t)first + i < cmdtab_nkeys; i++) {
        const cmdtab_key_t *k = &cmdtab_keys[first + i];
        if (k->flags & CT_WILDCARD)
            wild = wild ? wild : k;
        else if (strcmp(k->name, name) == 0)
            return k;
    }
    return wild;
}

const char *cmdtab_child_suggest(uint16_t first, uint16_t n, const char *name)
{
    const char *best = NULL;
    size_t best_score = (size_t)-1;
    for (uint16_t i = 0; name && i < n && (size_t)first + i < cmdtab_nkeys; i++) {
        const cmdtab_key_t *k = &cmdtab_keys[first + i];
        if (k->flags & CT_WILDCARD)
            continue;
        size_t s = s_score(name, k->name);
        if (s < best_score) {
            best_score = s;
            best = k->name;
        }
    }
    return best;
}

//  Append "a, b" style items; the list ends with "..." when buf is too small.
static void s_append(char *buf, size_t size, size_t *used, const char *item)
{
    if (*used + 1 >= size)
        return;
    int n = snprintf(buf + *used, size - *used, "%s%s", *used ? ", " : "", item);
    if (n < 0 || (size_t)n >= size - *used) {
        if (size >= 4)
            memcpy(buf + size - 4, "...", 4);
        *used = size;
        return;
    }
    *used += (size_t)n;
}

const char *cmdtab_child_list(uint16_t first, uint16_t n, char *buf, size_t size)
{
    size_t used = 0;
    if (size)
        buf[0] = 0;
    for (uint16_t i = 0; i < n && (size_t)first + i < cmdtab_nkeys; i++)
        s_append(buf, size, &used, cmdtab_keys[first + i].name);
    return buf;
}

const char *cmdtab_value_list(const cmdtab_key_t *k, char *buf, size_t size)
{
    size_t used = 0;
    if (size)
        buf[0] = 0;
    for (uint16_t i = 0; k && i < k->nvalue && (size_t)k->value + i < cmdtab_nvalues; i++)
        s_append(buf, size, &used, cmdtab_values[k->value + i]);
    return buf;
}

const char *cmdtab_type_name(int type)
{
    switch (type) {
    case CT_STRING:
        return "string";
    case CT_INTEGER:
        return "integer";
    case CT_BOOLEAN:
        return "boolean";
    case CT_REAL:
        return "real";
    case CT_DATA:
        return "data";
    case CT_DATE:
        return "date";
    case CT_ARRAY:
        return "array";
    case CT_DICT:
        return "dictionary";
    case CT_ANY:
        return "any";
    default:
        return "?";
    }
}

const char *cmdtab_platform_list(int platforms, char *buf, size_t size)
{
    static const struct {
        int bit;
        const char *name;
    } names[] = {{CT_IOS, "iOS"},
                 {CT_MACOS, "macOS"},
                 {CT_TVOS, "tvOS"},
                 {CT_VISIONOS, "visionOS"},
                 {CT_WATCHOS, "watchOS"}};
    size_t used = 0;
    if (size)
        buf[0] = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (platforms & names[i].bit)
            s_append(buf, size, &used, names[i].name);
    return buf;
}

static void s_describe_keys(FILE *out, uint16_t first, uint16_t n, int depth, int cmd_platforms)
{
    char buf[S_LIST_MAX];
    for (uint16_t i = 0; i < n && (size_t)first + i < cmdtab_nkeys && depth < 8; i++) {
        const cmdtab_key_t *k = &cmdtab_keys[first + i];
        char left[96];
        snprintf(left, sizeof left, "%*s%s", depth * 2, "", k->name);
        fprintf(out, "  %-34s %-10s %s", left, cmdtab_type_name(k->type),
                (k->flags & CT_REQUIRED) ? "required" : "optional");
        if (k->platforms != cmd_platforms && k->platforms)
            fprintf(out, "  [%s only]", cmdtab_platform_list(k->platforms, buf, sizeof buf));
        if (k->def)
            fprintf(out, "  default %s", k->def);
        fprintf(out, "\n");
        if (k->doc)
            fprintf(out, "  %*s    %s\n", depth * 2, "", k->doc);
        if (k->nvalue)
            fprintf(out, "  %*s    values: %s\n", depth * 2, "",
                    cmdtab_value_list(k, buf, sizeof buf));
        //  an array's single item entry carries no information of its own
        if (k->type == CT_ARRAY && k->nchild == 1) {
            const cmdtab_key_t *item = &cmdtab_keys[k->child];
            if (item->nvalue)
                fprintf(out, "  %*s    items (%s): %s\n", depth * 2, "",
                        cmdtab_type_name(item->type), cmdtab_value_list(item, buf, sizeof buf));
            else if (item->nchild)
                s_describe_keys(out, item->child, item->nchild, depth + 1, cmd_platforms);
            else
                fprintf(out, "  %*s    items: %s\n", depth * 2, "", cmdtab_type_name(item->type));
        } else if (k->nchild)
            s_describe_keys(out, k->child, k->nchild, depth + 1, cmd_platforms);
    }
}

void cmdtab_describe(FILE *out, const cmdtab_cmd_t *cmd)
{
    char buf[S_LIST_MAX];
    fprintf(out, "%s — %s\nplatforms: %s\n\n", cmd->request_type, cmd->title ? cmd->title : "",
            cmdtab_platform_list(cmd->platforms, buf, sizeof buf));
    if (cmd->nkey) {
        fprintf(out, "keys (--set Key=Value; Dict.Key=Value inside dictionaries):\n");
        s_describe_keys(out, cmd->key, cmd->nkey, 0, cmd->platforms);
    } else
        fprintf(out, "keys: none\n");
    if (cmd->nresp)
        fprintf(out, "\nresponse keys: %s\n",
                cmdtab_child_list(cmd->resp, cmd->nresp, buf, sizeof buf));
}
