#!/bin/bash
# enroll_devices — N devices enroll from nothing but the enrollment URL:
# `picomdm up` (real broker, store, scheduler, ca, gateway), then
# picomdm-devsim --enroll-url: each device downloads its own signed profile
# from the gateway, verifies it to the CA from GetCACert, enrolls over SCEP
# with the one-time challenge, checks in (Authenticate, TokenUpdate, signed),
# gets a DeviceInformation command queued meanwhile and answers it (command
# round trip), renews its certificate (RenewalReq) and keeps checking in.
# Also: the same profile downloaded with curl verifies with openssl to the CA
# and has the schema keys; a wrong challenge gets SCEP FAILURE badRequest; a
# certificate from another CA is refused at check-in; 405/413/400 on /scep.
set -u
ROOT=${PICOMDM_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${BIN:-$ROOT/bin}
TT=${TT:-$ROOT/build/rel/tt}
N=${ENROLL_DEVICES:-20}
. "$(dirname "$0")/common.inc"
need_bins picomdm picomdm-devsim picomdm-ca picomdm-gateway picomdm-broker picomdm-store picomdm-scheduler
command -v openssl >/dev/null && command -v curl >/dev/null || { echo "openssl and curl CLIs needed (make deps)"; exit 77; }
T=$(mktemp -d /tmp/enroll_devices.XXXXXX)
UP_PID=
DS_PID=
cleanup() {
    [ -n "$DS_PID" ] && kill -TERM "$DS_PID" 2>/dev/null
    up_stop "$UP_PID" "$T"
    rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "--- server log (errors, warnings):"; grep -E "^[EW]:" "$T/up.log" | tail -n 20; exit 1; }

PORT=$(free_port) || { echo "no free port found"; exit 77; }

PICOMDM_ENROLL_BASIC_AUTH= enroll_up 120

# the profile, as a browser would download it: content type, CMS to the CA, schema keys
ct=$(curl -s --cacert "$TLS" -o "$T/p.mobileconfig" -w '%{http_code} %{content_type}' "$URL/mdm/enroll")
[ "$ct" = "200 application/x-apple-aspen-config" ] || fail "GET /mdm/enroll: $ct"
openssl cms -verify -inform DER -in "$T/p.mobileconfig" -CAfile "$T/var/pki/ca.crt" -binary \
    -purpose any -out "$T/p.plist" 2>/dev/null || fail "the downloaded profile does not verify to the device CA"
for k in com.apple.security.scep com.apple.mdm com.apple.security.root \
    "$URL/scep" "$URL/mdm/connect" "$URL/mdm/checkin" com.apple.mgmt.External.picomdm-lab \
    IdentityCertificateUUID SignMessage; do
    grep -q -- "$k" "$T/p.plist" || fail "profile lacks $k"
done
# `picomdm profile` writes the same kind of profile, through the bus
"$BIN/picomdm" profile -o "$T/cli.mobileconfig" 2>"$T/cli.err" || fail "picomdm profile: $(cat "$T/cli.err")"
grep -q "^wrote $T/cli.mobileconfig" "$T/cli.err" || fail "picomdm profile said: $(cat "$T/cli.err")"
openssl cms -verify -inform DER -in "$T/cli.mobileconfig" -CAfile "$T/var/pki/ca.crt" -binary \
    -purpose any -out "$T/cli.plist" 2>/dev/null || fail "picomdm profile: does not verify to the device CA"
grep -q "IdentityCertificateUUID" "$T/cli.plist" || fail "picomdm profile: no MDM payload"
"$BIN/picomdm" profile >/dev/null 2>&1 </dev/null; [ $? = 0 ] || fail "picomdm profile > file failed"
if command -v python3 >/dev/null; then
    python3 - "$T/p.plist" <<'PY' || fail "profile payload check"
import plistlib, sys
p = plistlib.load(open(sys.argv[1], "rb"))
pl = {x["PayloadType"]: x for x in p["PayloadContent"]}
scep, mdm = pl["com.apple.security.scep"], pl["com.apple.mdm"]
assert mdm["IdentityCertificateUUID"] == scep["PayloadUUID"], "UUID binding"
assert mdm["SignMessage"] is True and len(scep["PayloadContent"]["Challenge"]) >= 16
PY
fi
# wrong methods / sizes are answered, not crashed on
[ "$(curl -s --cacert "$TLS" -o /dev/null -w '%{http_code}' -X PUT "$URL/scep?operation=GetCACaps")" = 405 ] || fail "PUT /scep is not 405"
head -c 70000 /dev/zero >"$T/big"
[ "$(curl -s --cacert "$TLS" -o /dev/null -w '%{http_code}' --data-binary @"$T/big" "$URL/scep?operation=PKIOperation")" = 413 ] || fail "a 70 KB SCEP body is not 413"
[ "$(curl -s --cacert "$TLS" -o /dev/null -w '%{http_code}' "$URL/scep")" = 400 ] || fail "/scep without operation is not 400"

# N devices from the URL alone; commands are queued while they wait
"$BIN/picomdm-devsim" --enroll-url "$URL/mdm/enroll" --ca-bundle "$TLS" --devices "$N" \
    --concurrency 8 --rounds 1 --renew --session-delay-ms 8000 --timeout-ms 20000 >"$T/ds.out" 2>"$T/ds.err" &
DS_PID=$!
enrolled() { [ "$("$BIN/picomdm" devices 2>/dev/null | grep -c '^0000')" -ge "$N" ]; }
wait_for 40 enrolled || { cat "$T/ds.err"; fail "$N devices did not enroll"; }
ids=$("$BIN/picomdm" devices 2>/dev/null | awk '/^0000/ {print $1}')
"$BIN/picomdm" enqueue DeviceInformation --set Queries=UDID,OSVersion --to $ids --no-push >"$T/enq.out" 2>&1 \
    || fail "enqueue: $(cat "$T/enq.out")"
wait "$DS_PID"
rc=$?
DS_PID=
cat "$T/ds.out"
[ $rc = 0 ] || { tail -n 20 "$T/ds.err"; fail "devsim exited $rc"; }
grep -q "^scep: $N device(s) got their identity" "$T/ds.out" || fail "not every device enrolled over SCEP"
grep -q "^scep: $N certificate(s) renewed" "$T/ds.out" || fail "renewal"
grep -q "^enroll     $N enrollments.*; 0 failed" "$T/ds.out" || fail "check-in failures"
grep -q "$N command round trips" "$T/ds.out" || fail "want $N command round trips"
grep -q "^session 2  $N sessions.* 0 failed" "$T/ds.out" || fail "sessions with the renewed certificate failed"
# no new Authenticate after the renewal: the store re-bound every enrollment to
# its renewed certificate (the CA-signed renews extension), with an event each
rebound=$(for id in $ids; do "$BIN/picomdm" timeline "$id" 2>/dev/null; done | grep -c "enroll.cert_rebound")
[ "$rebound" = "$N" ] || fail "want $N enroll.cert_rebound events in the timelines, got $rebound"
auths=$(for id in $ids; do "$BIN/picomdm" timeline "$id" 2>/dev/null; done | grep -c "checkin.Authenticate")
[ "$auths" = "$N" ] || fail "want exactly $N Authenticate check-ins (none after the renewal), got $auths"

# a wrong challenge -> CertRep FAILURE badRequest, no certificate
"$BIN/picomdm-devsim" --enroll-url "$URL/mdm/enroll" --ca-bundle "$TLS" --devices 1 --rounds 0 \
    --scep-challenge wrong-challenge-123 >"$T/wrong.out" 2>&1 && fail "a wrong challenge was accepted"
grep -q "SCEP FAILURE failInfo 2" "$T/wrong.out" || fail "wrong challenge: want SCEP FAILURE badRequest: $(tail -3 "$T/wrong.out")"

# a certificate from another CA is refused at check-in
"$BIN/picomdm-devsim" --make-ca "$T/other" >/dev/null || fail "make-ca"
"$BIN/picomdm-devsim" --url "$URL" --ca-bundle "$TLS" --ca-cert "$T/other.pem" --ca-key "$T/other.key" \
    --devices 1 --rounds 0 >"$T/other.out" 2>&1 && fail "a device certificate from another CA was accepted"
grep -q "HTTP 400" "$T/other.out" || fail "another CA: want 400: $(tail -3 "$T/other.out")"
echo "PASS: $N devices enrolled from $URL/mdm/enroll over SCEP, answered a command, renewed"
