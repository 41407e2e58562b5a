#!/usr/bin/env python3
"""Build sample plists from Apple's device-management schema.

Apple's mdm/checkin/*.yaml and mdm/commands/*.yaml carry no example plists,
so this walks each file's payloadkeys (and a command's responsekeys) and
writes one XML plist per message, every key present with a typical value of
its declared type. The output is committed under tests/data/plist/schema/ and
read by proto/pm_plist_test.c (round trips). Re-run after a schema update:

    tests/data/plist/gen_schema.py /work/shared/apple-device-management
"""
import datetime
import os
import plistlib
import sys

import yaml

DEPTH_MAX = 12


def sample(k, depth):
    t = k.get("type", "<string>")
    rng = k.get("rangelist") or []
    if t == "<string>":
        return str(rng[0]) if rng else "example-" + str(k.get("key", "value"))
    if t == "<integer>":
        return int(rng[0]) if rng and isinstance(rng[0], int) else 42
    if t == "<real>":
        return float(rng[0]) if rng and isinstance(rng[0], (int, float)) else 1.5
    if t == "<boolean>":
        return True
    if t == "<date>":
        return datetime.datetime(2024, 5, 17, 8, 42, 13)
    if t == "<data>":
        return bytes(range(24))
    if t == "<dictionary>":
        return keys_to_dict(k.get("subkeys") or [], depth + 1)
    if t == "<array>":
        sub = k.get("subkeys") or []
        if not sub or depth >= DEPTH_MAX:
            return []
        return [sample(sub[0], depth + 1)]
    return "any"  # <any>


def keys_to_dict(keys, depth):
    d = {}
    if depth >= DEPTH_MAX:
        return d
    for k in keys:
        name = k.get("key", "Key")
        if name == "ANY":
            name = "ExampleKey"
        d[name] = sample(k, depth)
    return d


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/apple-device-management"
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema")
    os.makedirs(out, exist_ok=True)
    n = 0
    for kind in ("checkin", "commands"):
        folder = os.path.join(root, "mdm", kind)
        for f in sorted(os.listdir(folder)):
            if not f.endswith(".yaml"):
                continue
            y = yaml.safe_load(open(os.path.join(folder, f)))
            base = kind + "-" + f[:-5]
            body = keys_to_dict(y.get("payloadkeys") or [], 0)
            rt = (y.get("payload") or {}).get("requesttype")
            if kind == "commands":
                body = {"CommandUUID": "7A1C3E5F-9B2D-4F60-8E11-A3C5D7E9F024",
                        "Command": dict(RequestType=rt, **body)}
            with open(os.path.join(out, base + ".plist"), "wb") as fp:
                plistlib.dump(body, fp, fmt=plistlib.FMT_XML, sort_keys=False)
            n += 1
            resp = y.get("responsekeys")
            if resp:
                r = {"CommandUUID": "7A1C3E5F-9B2D-4F60-8E11-A3C5D7E9F024",
                     "Status": "Acknowledged", "UDID": "00008030-001A2B3C4D5E6F70"}
                r.update(keys_to_dict(resp, 0))
                with open(os.path.join(out, base + "-response.plist"), "wb") as fp:
                    plistlib.dump(r, fp, fmt=plistlib.FMT_XML, sort_keys=False)
                n += 1
    print("wrote %d sample plists to %s" % (n, out))


if __name__ == "__main__":
    main()
