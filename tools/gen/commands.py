#!/usr/bin/env python3
"""Generate proto/pm_cmdtab.c, the MDM command table (the picomdm CLI checks
commands with it, the store validates responses and builds the inventory with
it), from Apple's device-management schema (mdm/commands/*.yaml).

    python3 tools/gen/commands.py [--schema DIR] [--out FILE] [--check]
    python3 tools/gen/commands.py --inventory-doc   # the table of docs/inventory.md

DIR defaults to $PICOMDM_APPLE_SCHEMA, then shared/apple-device-management
in the repository's parent (or grandparent) directory, the copy the project
works from. The output is
committed, so the CLI never needs the YAML at run time. --check regenerates in
memory and exits 1 if the committed file differs (for CI / lint).

Needs python3-yaml (Debian package, listed in deps.txt).

What goes into the table, per command: RequestType, title, the platforms that
support it, the payload keys as a tree (name, type, required, platforms,
default, allowed values, a one-line description) and the response keys as a
tree (name, type, required). Schema conventions handled here:
  * an <array> has one subkey describing its items (e.g. Queries/QueriesItem);
    Settings is the exception: several subkeys, each a dictionary shape the
    items may take (selected by the item's `Item` value);
  * a <string> with subkeys lists its allowed values as key names
    (DeviceInformation QueriesItem: one subkey per query);
  * a key named "ANY ..." or containing a space stands for any key name;
  * `introduced: n/a` under supportedOS means "not on that platform".

Inventory (docs/inventory.md): every command whose schema has responsekeys
must be classified below, either as an inventory source or as result-only
(with the reason); the generator stops when a command is missing or a name is
not in the schema, so the list cannot drift from Apple's.
"""
import argparse
import glob
import os
import sys

import yaml

PLATFORMS = [("iOS", "CT_IOS"), ("macOS", "CT_MACOS"), ("tvOS", "CT_TVOS"),
             ("visionOS", "CT_VISIONOS"), ("watchOS", "CT_WATCHOS")]
TYPES = {"<string>": "CT_STRING", "<integer>": "CT_INTEGER", "<boolean>": "CT_BOOLEAN",
         "<real>": "CT_REAL", "<data>": "CT_DATA", "<date>": "CT_DATE",
         "<array>": "CT_ARRAY", "<dictionary>": "CT_DICT", "<any>": "CT_ANY"}
DOC_MAX = 110

# RequestType -> how its answer feeds the inventory.
#   CT_INV_MERGE:   the answer holds only what was asked (DeviceInformation
#                   Queries): each QueryResponses key updates its attribute.
#   CT_INV_REPLACE: the answer is complete: it replaces every attribute this
#                   RequestType reported before (lists are replaced whole).
INVENTORY = {
    "DeviceInformation": "CT_INV_MERGE",
    "SecurityInfo": "CT_INV_REPLACE",
    "ProfileList": "CT_INV_REPLACE",
    "ProvisioningProfileList": "CT_INV_REPLACE",
    "InstalledApplicationList": "CT_INV_REPLACE",
    "ManagedApplicationList": "CT_INV_REPLACE",
    "CertificateList": "CT_INV_REPLACE",
    "AvailableOSUpdates": "CT_INV_REPLACE",
    "OSUpdateStatus": "CT_INV_REPLACE",
    "Restrictions": "CT_INV_REPLACE",
    "UserList": "CT_INV_REPLACE",
    "ActivationLockBypassCode": "CT_INV_REPLACE",
    "ManagedMediaList": "CT_INV_REPLACE",
    "ActiveNSExtensions": "CT_INV_REPLACE",
    "NSExtensionMappings": "CT_INV_REPLACE",
    "ContentCachingInformation": "CT_INV_REPLACE",
    "DeviceLocation": "CT_INV_REPLACE",
    "ManagedApplicationAttributes": "CT_INV_REPLACE",
    "ManagedApplicationConfiguration": "CT_INV_REPLACE",
    "ManagedApplicationFeedback": "CT_INV_REPLACE",
}
# Commands with responsekeys that stay result-only (the answer is the outcome
# of one action, not device state): kept in the results table, shown by
# `picomdm results`.
RESULT_ONLY = {
    "InstallApplication": "outcome of one install (Identifier, State)",
    "InstallMedia": "outcome of one install",
    "InviteToProgram": "outcome of one invitation",
    "DeviceLock": "outcome of one lock (MessageResult)",
    "LOMDeviceRequest": "outcome of one lights-out request",
    "LOMSetupRequest": "outcome of one lights-out setup",
    "RequestMirroring": "outcome of one mirroring request",
    "SetFirmwarePassword": "outcome of one password change",
    "VerifyFirmwarePassword": "outcome of one verification",
    "VerifyRecoveryLock": "outcome of one verification",
    "RequestUnlockToken": "a secret: kept only in the result, never in the inventory",
    "RotateFileVaultKey": "a secret (the new key): kept only in the result",
    "Settings": "outcome of one settings change",
    "ScheduleOSUpdateScan": "outcome of one scan request",
    "ScheduleOSUpdate": "outcome of one update request (OSUpdateStatus reports progress)",
}


def c_str(s):
    if s is None:
        return "NULL"
    out = []
    for ch in str(s):
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x20:
            out.append("\\x%02x" % ord(ch))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def one_line(text):
    """First sentence of a description, at most DOC_MAX characters."""
    if not text:
        return None
    t = " ".join(str(text).split())
    for stop in (". ", ": "):
        i = t.find(stop)
        if 0 < i < DOC_MAX:
            t = t[:i + 1]
            break
    if len(t) > DOC_MAX:
        t = t[:DOC_MAX - 3].rstrip() + "..."
    return t


def platform_mask(supported, inherit):
    """Bit mask of platforms; a platform marked introduced: n/a is removed."""
    mask = inherit
    if not isinstance(supported, dict):
        return mask
    for name, bit in PLATFORMS:
        info = supported.get(name)
        if isinstance(info, dict) and str(info.get("introduced", "")).lower() == "n/a":
            mask = [b for b in mask if b != bit]
    return mask


def command_platforms(supported):
    mask = []
    for name, bit in PLATFORMS:
        info = (supported or {}).get(name)
        if isinstance(info, dict) and str(info.get("introduced", "n/a")).lower() != "n/a":
            mask.append(bit)
    return mask


class Table:
    def __init__(self):
        self.keys = []    # rows: dict
        self.values = []  # allowed-value strings

    def add_values(self, vals):
        first = len(self.values)
        self.values.extend(str(v).lower() if isinstance(v, bool) else str(v) for v in vals)
        return first, len(vals)

    def add_level(self, keys, inherit, payload):
        """Append one level of sibling keys (contiguous), then their children.
        Returns (first index, count)."""
        keys = keys or []
        first = len(self.keys)
        rows = []
        for k in keys:
            row = {
                "name": str(k["key"]),
                "type": TYPES.get(k.get("type"), "CT_ANY"),
                "required": k.get("presence") == "required",
                "wild": str(k["key"]).startswith("ANY") or " " in str(k["key"]),
                "plat": platform_mask(k.get("supportedOS"), inherit),
                "doc": one_line(k.get("content")) if payload else None,
                "def": None, "child": 0, "nchild": 0, "value": 0, "nvalue": 0,
            }
            if payload and "default" in k:
                d = k["default"]
                row["def"] = str(d).lower() if isinstance(d, bool) else str(d)
            self.keys.append(row)
            rows.append((row, k))
        if len(self.keys) > 65000:
            sys.exit("commands.py: too many keys for the uint16 indexes")
        for row, k in rows:
            subs = k.get("subkeys") or []
            if row["type"] == "CT_STRING" and subs:
                # allowed values listed as key names (DeviceInformation queries)
                row["value"], row["nvalue"] = self.add_values([s["key"] for s in subs])
            elif subs:
                row["child"], row["nchild"] = self.add_level(subs, row["plat"], payload)
            if payload and k.get("rangelist"):
                row["value"], row["nvalue"] = self.add_values(k["rangelist"])
        return first, len(keys)


def generate(schema):
    files = sorted(glob.glob(os.path.join(schema, "mdm", "commands", "*.yaml")))
    if not files:
        sys.exit("commands.py: no mdm/commands/*.yaml under %s (pass --schema DIR)" % schema)
    table = Table()
    cmds = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            y = yaml.safe_load(fh)
        payload = y.get("payload") or {}
        rt = payload.get("requesttype")
        if not rt:
            continue
        plat = command_platforms(payload.get("supportedOS"))
        key, nkey = table.add_level(y.get("payloadkeys"), plat, True)
        resp, nresp = table.add_level(y.get("responsekeys"), plat, False)
        cmds.append({"respnames": [str(k["key"]) for k in (y.get("responsekeys") or [])],
                     "rt": rt, "title": y.get("title"), "plat": plat, "key": key,
                     "nkey": nkey, "resp": resp, "nresp": nresp,
                     "file": os.path.basename(f)})
    cmds.sort(key=lambda c: c["rt"])
    names = {c["rt"] for c in cmds}
    for n in list(INVENTORY) + list(RESULT_ONLY):
        if n not in names:
            sys.exit("commands.py: %s is classified for the inventory but not in the schema" % n)
    for c in cmds:
        c["inv"] = INVENTORY.get(c["rt"], "CT_INV_NONE")
        if c["nresp"] and c["rt"] not in INVENTORY and c["rt"] not in RESULT_ONLY:
            sys.exit("commands.py: %s has responsekeys: classify it in INVENTORY or "
                     "RESULT_ONLY (docs/inventory.md)" % c["rt"])

    src = []
    w = src.append
    w("/*  pm_cmdtab.c — GENERATED — DO NOT EDIT. Regenerate with: python3 tools/gen/commands.py")
    w(" *")
    w(" *  The MDM command table (see pm_cmdtab.h for its shape).")
    w(" *  Source: Apple's device-management schema (the mdm/commands YAML files) from")
    w(" *  https://github.com/apple/device-management (commit b6202ca2fbd3,")
    w(" *  \"Release_iOS-18-1_macOS-15-1\"). Copyright (c) 2022-2024 Apple Inc.,")
    w(" *  MIT license (LICENSE.txt in that repository): \"The above copyright notice")
    w(" *  and this permission notice shall be included in all copies or substantial")
    w(" *  portions of the Software.\" Descriptions are shortened to one sentence.")
    w(" */")
    w('#include "pm_cmdtab.h"')
    w("")
    w("#include <stddef.h>")
    w("#include <string.h>")
    w("")
    w("// clang-format off")
    w("const char *const cmdtab_values[] = {")
    for i, v in enumerate(table.values):
        w("    /* %4d */ %s," % (i, c_str(v)))
    w("    NULL};")
    w("")
    w("//  name, doc, default, type, flags, platforms, child, nchild, value, nvalue")
    w("const cmdtab_key_t cmdtab_keys[] = {")
    for i, r in enumerate(table.keys):
        flags = []
        if r["required"]:
            flags.append("CT_REQUIRED")
        if r["wild"]:
            flags.append("CT_WILDCARD")
        w("    /* %4d */ {%s, %s, %s, %s, %s, %s, %d, %d, %d, %d}," % (
            i, c_str(r["name"]), c_str(r["doc"]), c_str(r["def"]), r["type"],
            "|".join(flags) or "0", "|".join(r["plat"]) or "0", r["child"], r["nchild"],
            r["value"], r["nvalue"]))
    w("    {NULL, NULL, NULL, 0, 0, 0, 0, 0, 0, 0}};")
    w("")
    w("//  RequestType, title, platforms, payload keys, response keys, inventory")
    w("//  (sorted by RequestType)")
    w("const cmdtab_cmd_t cmdtab_cmds[] = {")
    for c in cmds:
        w("    {%s, %s, %s, %d, %d, %d, %d, %s}, /* %s */" % (
            c_str(c["rt"]), c_str(c["title"]), "|".join(c["plat"]) or "0",
            c["key"], c["nkey"], c["resp"], c["nresp"], c["inv"], c["file"]))
    w("    {NULL, NULL, 0, 0, 0, 0, 0, 0}};")
    w("// clang-format on")
    w("")
    w("const size_t cmdtab_ncmds = %d;" % len(cmds))
    w("const size_t cmdtab_nkeys = %d;" % len(table.keys))
    w("const size_t cmdtab_nvalues = %d;" % len(table.values))
    w("")
    w("const cmdtab_cmd_t *cmdtab_find(const char *request_type)")
    w("{")
    w("    if (!request_type)")
    w("        return NULL;")
    w("    size_t lo = 0, hi = cmdtab_ncmds;")
    w("    while (lo < hi) {")
    w("        size_t mid = lo + (hi - lo) / 2;")
    w("        int c = strcmp(request_type, cmdtab_cmds[mid].request_type);")
    w("        if (c == 0)")
    w("            return &cmdtab_cmds[mid];")
    w("        if (c < 0)")
    w("            hi = mid;")
    w("        else")
    w("            lo = mid + 1;")
    w("    }")
    w("    return NULL;")
    w("}")
    return "\n".join(src) + "\n", len(cmds), len(table.keys), len(table.values), cmds


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # the project's copy sits in ../shared next to the repository (or next to
    # the directory holding git worktrees)
    default = os.environ.get("PICOMDM_APPLE_SCHEMA")
    for up in ("..", os.path.join("..", "..")):
        cand = os.path.normpath(os.path.join(root, up, "shared", "apple-device-management"))
        if not default and os.path.isdir(cand):
            default = cand
    ap.add_argument("--schema", default=default or "apple-device-management")
    ap.add_argument("--out", default=os.path.join(root, "proto", "pm_cmdtab.c"))
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if the committed file is not what the schema generates")
    ap.add_argument("--inventory-doc", action="store_true",
                    help="print the markdown table of docs/inventory.md")
    a = ap.parse_args()
    text, ncmd, nkey, nval, cmds = generate(a.schema)
    if a.inventory_doc:
        print("| RequestType | response keys | what PicoMDM does |")
        print("|---|---|---|")
        for c in cmds:
            if not c["nresp"]:
                continue
            what = {"CT_INV_MERGE": "inventory: each answered query updates its attribute",
                    "CT_INV_REPLACE": "inventory: the answer replaces what this command reported before",
                    }.get(c["inv"]) or "result only: " + RESULT_ONLY[c["rt"]]
            print("| %s | %s | %s |" % (c["rt"], ", ".join(c["respnames"]), what))
        return
    if a.check:
        try:
            with open(a.out, encoding="utf-8") as fh:
                same = fh.read() == text
        except OSError:
            same = False
        print("%s: %s" % (a.out, "up to date" if same else
                          "OUT OF DATE: run python3 tools/gen/commands.py"))
        sys.exit(0 if same else 1)
    tmp = a.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, a.out)
    print("%s: %d commands, %d keys, %d allowed values" % (a.out, ncmd, nkey, nval))


if __name__ == "__main__":
    main()
