#!/bin/bash
# `picomdm pushcert`: new (key + CSR), vendor-sign (the base64 plist Apple's
# portal takes, signature checked with openssl), show (topic, validity, key
# match, exit codes), install (first install, topic change refused without
# --force, mismatching key refused, atomic replace with a backup).
. "$(dirname "$0")/push_lib.inc"
PICOMDM=$BIN/picomdm
[ -x "$PICOMDM" ] || skip "bin/picomdm is not built (run make)"
command -v python3 >/dev/null || skip "python3 missing (make deps)"
make_pki
cd "$W" || fail "no temp dir"

# new
mkdir -p new
"$PICOMDM" pushcert new --out new --cn "Example Corp push" > new.out || fail "new: $(cat new.out)"
[ "$(stat -c %a new/push.key)" = 600 ] || fail "push.key mode $(stat -c %a new/push.key)"
openssl req -in new/push.csr -noout -verify 2>&1 | grep -q "verify OK" || fail "CSR does not verify"
openssl req -in new/push.csr -noout -subject | grep -q "Example Corp push" || fail "CSR subject"
"$PICOMDM" pushcert new --out new 2>err && fail "new overwrote an existing key"
grep -q -- "--force" err || fail "no hint about --force: $(cat err)"
echo "ok   new: key (0600) and a verifying CSR; an existing key is not overwritten"

# vendor-sign, with a made-up vendor certificate and chain
openssl req -x509 -newkey rsa:2048 -nodes -keyout vendor.key -out vendor.pem -subj "/CN=MDM Vendor: Test" -days 30 2>/dev/null
cat ca.pem rogue-ca.pem > chain.pem
"$PICOMDM" pushcert vendor-sign --csr new/push.csr --vendor-cert vendor.pem --vendor-key vendor.key \
    --chain chain.pem --out push.req > vs.out || fail "vendor-sign: $(cat vs.out)"
python3 - <<'PY' || fail "vendor-sign request is wrong"
import base64, plistlib, subprocess, sys
req = open("push.req", "rb").read()
assert b"\n" not in req.strip(), "request must be one base64 block"
p = plistlib.loads(base64.b64decode(req))
assert set(p) == {"PushCertRequestCSR", "PushCertCertificateChain", "PushCertSignature"}, p.keys()
csr = base64.b64decode(p["PushCertRequestCSR"])
want = subprocess.run(["openssl", "req", "-in", "new/push.csr", "-outform", "DER"], capture_output=True).stdout
assert csr == want, "PushCertRequestCSR is not the CSR's DER"
chain = p["PushCertCertificateChain"]
assert chain.count("BEGIN CERTIFICATE") == 3, "chain must be vendor + 2"
assert chain.startswith(open("vendor.pem").read().strip()[:60]), "vendor certificate must come first"
open("csr.der", "wb").write(csr)
open("sig.bin", "wb").write(base64.b64decode(p["PushCertSignature"]))
PY
openssl x509 -in vendor.pem -pubkey -noout > vendor.pub
openssl dgst -sha256 -verify vendor.pub -signature sig.bin csr.der | grep -q "Verified OK" \
    || fail "PushCertSignature does not verify with the vendor key"
echo "ok   vendor-sign: base64 plist with CSR DER, vendor chain (3), SHA-256 signature verified"
"$PICOMDM" pushcert vendor-sign --csr new/push.csr --vendor-cert vendor.pem --vendor-key new/push.key \
    --out x.req 2>err && fail "vendor key of another certificate accepted"
echo "ok   vendor-sign refuses a key that is not the vendor certificate's"

# show
"$PICOMDM" pushcert show push.pem > show.out || fail "show: $(cat show.out)"
grep -q "^topic: *$TOPIC" show.out && grep -q "^key: *matches" show.out && grep -q "^state: *expiring" show.out \
    || fail "show output: $(cat show.out)"
"$PICOMDM" pushcert show push.crt --json > show.json || fail "show --json"
python3 -c "import json,sys; d=json.load(open('show.json')); assert d['topic']=='$TOPIC' and d['key']=='none', d" \
    || fail "show --json: $(cat show.json)"
"$PICOMDM" pushcert show no-uid.pem > show2.out && fail "show accepted a certificate without topic"
grep -q "none: not an MDM push certificate" show2.out || fail "$(cat show2.out)"
"$PICOMDM" pushcert show push.crt --key other-topic.key > show3.out && fail "mismatching key not reported"
grep -q "^key: *does not match" show3.out || fail "$(cat show3.out)"
echo "ok   show: topic, state, key match; exit 1 without topic or with the wrong key"

# install
mkdir -p etc
"$PICOMDM" pushcert install push.crt --key push.key --dest etc/push.pem > i1.out \
    || fail "first install: $(cat i1.out)"
"$PICOMDM" pushcert show etc/push.pem | grep -q "^key: *matches" || fail "installed file lacks the key"
[ "$(stat -c %a etc/push.pem)" = 600 ] || fail "installed file mode"
before=$(sha256sum < etc/push.pem)
"$PICOMDM" pushcert install other-topic.pem --dest etc/push.pem 2> i2.err && fail "topic change accepted"
grep -q "Every enrolled device would be cut off" i2.err || fail "no cut-off warning: $(cat i2.err)"
[ "$(sha256sum < etc/push.pem)" = "$before" ] || fail "refused install changed the file"
"$PICOMDM" pushcert install push.crt --key other-topic.key --dest etc/push.pem 2>i3.err && fail "wrong key installed"
"$PICOMDM" pushcert install other-topic.pem --dest etc/push.pem --force > i4.out 2>&1 || fail "--force: $(cat i4.out)"
"$PICOMDM" pushcert show etc/push.pem | grep -q "External.ffffffff" || fail "not replaced"
"$PICOMDM" pushcert show etc/push.pem.bak | grep -q "$TOPIC" || fail "no backup of the previous certificate"
"$PICOMDM" pushcert install push.pem --dest etc/new.pem --enrolled-topic com.apple.mgmt.External.x 2>/dev/null \
    && fail "--enrolled-topic not enforced"
echo "ok   install: first install, topic change refused (cut-off warning), --force with backup"
echo "PASS"
