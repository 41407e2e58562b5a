#!/bin/bash
# devsim_schema: the simulator's messages against Apple's YAML schema, read
# independently of the C code: (1) the generated key table
# tools/picomdm-devsim/devsim_schema_keys.h is up to date with the schema;
# (2) every check-in message (--print authenticate/tokenupdate/checkout, user
# channels) of every device kind carries its required keys and only keys of
# that message; (3) every command answer's keys are in the command's
# responsekeys (nested, with types).
source "$(dirname "$0")/devsim_lib.inc"
python3 -c 'import yaml, plistlib' 2>/dev/null || skip "python3 with PyYAML (python3-yaml) is not installed"
SCHEMA=
for d in "$ROOT/../shared/apple-device-management" /work/shared/apple-device-management; do
    [ -d "$d/mdm/commands" ] && { SCHEMA=$d; break; }
done
[ -n "$SCHEMA" ] || skip "Apple's schema (shared/apple-device-management) is not beside the repository"

python3 "$ROOT/tools/picomdm-devsim/gen_schema_keys.py" "$SCHEMA/mdm/commands" >"$W/keys.h" ||
    fail "gen_schema_keys.py failed"
# the committed copy is clang-formatted (make lint), so format before comparing
if command -v clang-format >/dev/null; then
    (cd "$ROOT" && clang-format --style=file --assume-filename=tools/picomdm-devsim/keys.h) \
        <"$W/keys.h" >"$W/keys.fmt.h" || fail "clang-format failed"
    diff -u "$ROOT/tools/picomdm-devsim/devsim_schema_keys.h" "$W/keys.fmt.h" ||
        fail "devsim_schema_keys.h is stale: regenerate it with gen_schema_keys.py, clang-format -i"
else
    echo "note: clang-format missing, the key table's freshness is not compared"
fi

KINDS="iphone ipad mac mac-user ue ue-mac-user shared-ipad"
RTS="DeviceInformation SecurityInfo ProfileList InstalledApplicationList CertificateList InstallProfile RemoveProfile DeviceLock ClearPasscode RestartDevice ShutDownDevice EraseDevice Settings AvailableOSUpdates ScheduleOSUpdate"
for k in $KINDS; do
    for m in authenticate tokenupdate checkout; do
        "$DEVSIM" --kind $k --print $m --seed 9 >"$W/checkin.$k.$m.plist" || fail "print $m $k"
    done
    case $k in mac-user | ue-mac-user | shared-ipad)
        "$DEVSIM" --kind $k --print user-tokenupdate --seed 9 >"$W/checkin.$k.user-tokenupdate.plist" ||
            fail "print user-tokenupdate $k" ;;
    esac
done
# answers: one kind per platform shape (the C unit test covers every kind)
for k in iphone mac ue shared-ipad; do
    for rt in $RTS; do
        "$DEVSIM" --kind $k --print $rt --seed 9 --apps 20 >"$W/answer.$k.$rt.plist" || fail "print $rt $k"
    done
done

python3 - "$SCHEMA" "$W" <<'PY' || fail "schema violations (above)"
import glob, os, plistlib, sys, datetime
import yaml
schema, w = sys.argv[1], sys.argv[2]
bad = 0
def err(msg):
    global bad
    bad += 1
    print("schema:", msg)

ptype = {"string": str, "integer": int, "real": float, "boolean": bool, "date": datetime.datetime,
         "data": bytes, "array": list, "dictionary": dict}
def walk(where, value, keys):
    """value: dict to check against a list of schema keys (subkeys)."""
    by = {k["key"]: k for k in keys or []}
    for name, v in value.items():
        k = by.get(name) or by.get("ANY")
        if not k:
            err(f"{where}: key {name} is not in the schema")
            continue
        t = k.get("type", "<any>").strip("<>")
        if t != "any" and not (isinstance(v, ptype[t]) and not (t == "integer" and isinstance(v, bool))):
            # Apple's docs: Settings response is an array of result dicts (schema says dict)
            if not (name == "Settings" and isinstance(v, list)):
                err(f"{where}: {name} is {type(v).__name__}, schema says {t}")
                continue
        if isinstance(v, dict) and t == "dictionary":
            walk(f"{where}/{name}", v, k.get("subkeys"))
        elif isinstance(v, list):
            sub = k.get("subkeys") or []
            for item in v:
                if isinstance(item, dict):
                    inner = sub[0].get("subkeys") if sub and sub[0].get("type") == "<dictionary>" else sub
                    walk(f"{where}/{name}[]", item, inner)

ENVELOPE = {"Status", "CommandUUID", "UDID", "EnrollmentID", "EnrollmentUserID", "UserID",
            "UserShortName", "UserLongName", "NotOnConsole", "ErrorChain"}
cmds = {}
for f in glob.glob(os.path.join(schema, "mdm/commands/*.yaml")):
    y = yaml.load(open(f), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    cmds[y["payload"]["requesttype"]] = y
checkin = {}
for f in glob.glob(os.path.join(schema, "mdm/checkin/*.yaml")):
    y = yaml.load(open(f), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    checkin[y["payload"]["requesttype"]] = y
n = 0
for f in sorted(glob.glob(os.path.join(w, "answer.*.plist"))):
    _, kind, rt, _ = os.path.basename(f).split(".")
    p = plistlib.load(open(f, "rb"))
    if p.get("Status") not in ("Acknowledged", "Error", "CommandFormatError", "NotNow"):
        err(f"{kind} {rt}: Status {p.get('Status')!r}")
    if p.get("Status") == "Error":
        for e in p.get("ErrorChain", [None]):
            if not isinstance(e, dict) or not {"ErrorCode", "ErrorDomain", "LocalizedDescription"} <= set(e):
                err(f"{kind} {rt}: ErrorChain item {e!r} lacks ErrorCode/ErrorDomain/LocalizedDescription")
    body = {k: v for k, v in p.items() if k not in ENVELOPE}
    walk(f"{kind} {rt}", body, cmds[rt].get("responsekeys"))
    n += 1
for f in sorted(glob.glob(os.path.join(w, "checkin.*.plist"))):
    _, kind, m, _ = os.path.basename(f).split(".")
    p = plistlib.load(open(f, "rb"))
    mt = p.get("MessageType")
    y = checkin[mt]
    walk(f"{kind} {m}", p, y["payloadkeys"])
    mac = kind in ("mac", "mac-user", "ue-mac-user")
    ue = kind.startswith("ue")
    user = m == "user-tokenupdate"
    need = {"MessageType", "Topic"} | ({"EnrollmentID"} if ue else {"UDID"})
    if mt == "Authenticate" and mac:
        need |= {"DeviceName", "Model", "ModelName"}
    if mt == "TokenUpdate":
        need |= {"Token", "PushMagic"}
        if user and mac:
            need |= {"UserLongName", "NotOnConsole"} | ({"EnrollmentUserID"} if ue else {"UserID"})
        if user and kind == "shared-ipad":
            need |= {"UserID", "UserShortName"}
    missing = need - set(p)
    if missing:
        err(f"{kind} {m}: required keys missing: {sorted(missing)}")
    if ue and ("UDID" in p or "SerialNumber" in p):
        err(f"{kind} {m}: User Enrollment must not reveal UDID/SerialNumber")
    n += 1
print(f"schema: {n} messages checked, {bad} violations")
sys.exit(1 if bad else 0)
PY
echo "devsim_schema: ok"
