#!/bin/bash
# ca_profile: the real picomdm-ca binary writes a signed enrollment profile;
# `openssl cms -verify` (an independent verifier) checks it chains to the
# device CA; Python reads Apple's schema YAML directly and checks every key,
# its type and the required keys, and that IdentityCertificateUUID is the SCEP
# payload's PayloadUUID. Also: key files 0600, the CA is reused on the next
# start, a mismatched CA key is refused (never replaced).
set -u
ROOT=${PICOMDM_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${BIN:-$ROOT/bin}
SCHEMA=
for d in "$ROOT/../shared" "$ROOT/../../shared"; do
    [ -d "$d/apple-device-management/mdm/profiles" ] && SCHEMA=$d/apple-device-management/mdm/profiles && break
done
[ -x "$BIN/picomdm-ca" ] || { echo "bin/picomdm-ca not built (make)"; exit 77; }
command -v openssl >/dev/null || { echo "openssl CLI missing (make deps)"; exit 77; }
python3 -c 'import yaml' 2>/dev/null || { echo "python3-yaml missing (make deps)"; exit 77; }
[ -n "$SCHEMA" ] || { echo "Apple schema (shared/apple-device-management) not found"; exit 77; }

T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# a self-made TLS server certificate, to be carried as the trust anchor
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -days 2 -keyout "$T/tls.key" -out "$T/tls.crt" 2>/dev/null || fail "openssl req"

ca() {
    timeout 30 "$BIN/picomdm-ca" --data-dir "$T/data" --challenge-mode static \
        --server-url https://127.0.0.1:8443/mdm/server --checkin-url https://127.0.0.1:8443/mdm/checkin \
        --scep-url https://127.0.0.1:8443/scep --topic com.apple.mgmt.External.test \
        --tls-anchor "$T/tls.crt" "$@"
}
PICOMDM_CHALLENGE=it-static-challenge ca --out "$T/p1.mobileconfig" profile 2>"$T/log1" \
    || { cat "$T/log1"; fail "profile command"; }
grep -q it-static-challenge "$T/log1" && fail "the challenge appears in the log"
for k in ca.key profile-signer.key; do
    [ "$(stat -c %a "$T/data/$k")" = 600 ] || fail "$k is not 0600"
done

# independent CMS verification, chaining to the device CA
openssl cms -verify -inform DER -in "$T/p1.mobileconfig" -CAfile "$T/data/ca.crt" -binary \
    -out "$T/p1.plist" 2>"$T/verify.log" || { cat "$T/verify.log"; fail "CMS verify"; }
grep -q "Verification successful" "$T/verify.log" || fail "no verification message"
# a profile verified against another CA must fail
openssl cms -verify -inform DER -in "$T/p1.mobileconfig" -CAfile "$T/tls.crt" -binary \
    -out /dev/null 2>/dev/null && fail "verified against the wrong CA"

cat >"$T/check.py" <<'PY'
import plistlib, sys, yaml, os
schema_dir, path = sys.argv[1], sys.argv[2]
def load(name):
    with open(os.path.join(schema_dir, name + ".yaml")) as f:
        return yaml.safe_load(f)
def keys(y):
    out = {}
    def walk(ks, prefix):
        for k in ks or []:
            out[prefix + k["key"]] = k
            if k.get("type") == "<dictionary>" and k.get("subkeys"):
                walk(k["subkeys"], prefix + k["key"] + ".")
    walk(y.get("payloadkeys"), "")
    return out
TYPES = {str: "<string>", bool: "<boolean>", int: "<integer>", bytes: "<data>",
         dict: "<dictionary>", list: "<array>"}
top_schema = keys(load("TopLevel"))
common = keys(load("CommonPayloadKeys"))
errors = []
def check(d, schema, where, nested=True, prefix=""):
    for k, v in d.items():
        s = schema.get(prefix + k)
        if s is None:
            errors.append("%s: key %s%s not in Apple's schema" % (where, prefix, k)); continue
        if TYPES.get(type(v)) != s.get("type"):
            errors.append("%s: %s%s is %s, schema %s" % (where, prefix, k, TYPES.get(type(v)), s.get("type")))
        if nested and isinstance(v, dict):
            check(v, schema, where, nested, prefix + k + ".")
    for name, s in schema.items():
        if s.get("presence") == "required" and name.startswith(prefix) and "." not in name[len(prefix):] \
                and name[len(prefix):] not in d:
            errors.append("%s: required key %s missing" % (where, name))
with open(path, "rb") as f:
    p = plistlib.load(f)
check(p, top_schema, "TopLevel", nested=False)
types, scep_uuid, identity = [], None, None
for pl in p["PayloadContent"]:
    t = pl["PayloadType"]
    types.append(t)
    schema = dict(common)
    schema.update(keys(load(t)))
    check(pl, schema, t)
    if t == "com.apple.security.scep":
        scep_uuid = pl["PayloadUUID"]
        c = pl["PayloadContent"]
        if c.get("Key Type") != "RSA" or c.get("Keysize") not in (2048, 4096):
            errors.append("scep: key type/size")
        if c.get("Challenge") != "it-static-challenge":
            errors.append("scep: challenge not the configured one")
    if t == "com.apple.mdm":
        identity = pl["IdentityCertificateUUID"]
        if pl.get("AccessRights") != 8191 or pl.get("SignMessage") is not True \
                or pl.get("CheckOutWhenRemoved") is not True:
            errors.append("mdm: AccessRights/SignMessage/CheckOutWhenRemoved")
        caps = pl.get("ServerCapabilities", [])
        for c in ("com.apple.mdm.per-user-connections", "com.apple.mdm.bootstraptoken"):
            if c not in caps:
                errors.append("mdm: capability %s missing" % c)
        if pl.get("Topic") != "com.apple.mgmt.External.test":
            errors.append("mdm: topic")
if sorted(types) != ["com.apple.mdm", "com.apple.security.root", "com.apple.security.scep"]:
    errors.append("payload types %s" % types)
if not scep_uuid or identity != scep_uuid:
    errors.append("IdentityCertificateUUID %s != SCEP PayloadUUID %s" % (identity, scep_uuid))
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PY
python3 "$T/check.py" "$SCHEMA" "$T/p1.plist" || fail "schema check"
# the checker itself catches a bad key, a wrong type and a UUID mismatch
python3 - "$T/p1.plist" "$T/bad1.plist" "$T/bad2.plist" "$T/bad3.plist" <<'PY'
import plistlib, sys
p = plistlib.load(open(sys.argv[1], "rb"))
import copy
a = copy.deepcopy(p); a["PayloadContent"][-1]["ServerUrl"] = "typo"
b = copy.deepcopy(p); b["PayloadContent"][-1]["SignMessage"] = "true"
c = copy.deepcopy(p); c["PayloadContent"][-1]["IdentityCertificateUUID"] = "00000000-0000-0000-0000-000000000000"
for out, d in zip(sys.argv[2:], (a, b, c)):
    plistlib.dump(d, open(out, "wb"))
PY
for b in bad1 bad2 bad3; do
    python3 "$T/check.py" "$SCHEMA" "$T/$b.plist" >/dev/null && fail "checker accepted $b"
done

# the CA is reused on the next start; another profile has fresh UUIDs
fp1=$(openssl x509 -in "$T/data/ca.crt" -noout -fingerprint -sha256)
PICOMDM_CHALLENGE=it-static-challenge ca --out "$T/p2.mobileconfig" profile 2>/dev/null || fail "second run"
fp2=$(openssl x509 -in "$T/data/ca.crt" -noout -fingerprint -sha256)
[ "$fp1" = "$fp2" ] || fail "CA replaced on restart"
cmp -s "$T/p1.mobileconfig" "$T/p2.mobileconfig" && fail "two profiles are identical (UUIDs reused)"

# a CA key that does not match: refused, files untouched
cp "$T/data/profile-signer.key" "$T/other.key"
PICOMDM_CHALLENGE=it-static-challenge ca --ca-cert "$T/data/ca.crt" --ca-key "$T/other.key" \
    --out "$T/p3" profile 2>"$T/log3" && fail "mismatched CA key accepted"
grep -q "not replaced" "$T/log3" || { cat "$T/log3"; fail "no clear message for a mismatched key"; }
# offline profiles need a static challenge; a short static challenge is refused
ca --challenge-mode one-time --out "$T/p4" profile 2>/dev/null; [ $? = 2 ] || fail "one-time offline accepted"
PICOMDM_CHALLENGE=short ca --out "$T/p5" profile 2>/dev/null && fail "short challenge accepted"
echo "ok: profile verified (openssl cms), schema-checked against $SCHEMA, identity UUID bound"
exit 0
