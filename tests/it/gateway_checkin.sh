#!/bin/bash
# gateway_checkin — the gateway over TLS on 127.0.0.1 with a real broker and
# the stand-in back end (gw_backend), driven by curl + openssl cms -sign:
# Authenticate -> TokenUpdate -> Idle gets the queued DeviceInformation ->
# Acknowledged; every Status; NotNow then re-offer; every check-in
# MessageType; mTLS and single-URL profiles; spoofing cases each 400 with an
# event and no state change; back end down -> 503 with Retry-After.
source "$(dirname "$0")/../../gateway/gw_it_lib.sh"

gw_pki
gw_broker
gw_backend
gw_tls --log-level debug --backend-timeout-ms 2000 --body-max 262144

U1=UDID-IT-0001
U2=UDID-IT-0002

# health: the back end answers
code=$(curl -sS -m 5 --cacert "$PKI/ca.pem" -o "$T/resp" -w '%{http_code}' "$URL/health")
expect 200 "$code" "GET /health"
grep -q '^backend: up' "$T/resp" || fail "/health does not report the back end up: $(cat "$T/resp")"

# ---- the seed flow ----
plist MessageType Authenticate UDID $U1 Topic com.apple.mgmt.test DeviceName d1 Model m \
    ModelName m >"$T/auth1"
expect 200 "$(put /mdm/checkin "$T/auth1" dev1)" "Authenticate (dev1, SHA-256)"
grep -q "^REQ checkin Authenticate eid=$U1 kind=device cert=yes" "$T/backend.out" ||
    fail "back end did not get CHECKIN Authenticate with cert_hash"

plist MessageType TokenUpdate UDID $U1 Topic com.apple.mgmt.test Token data:AAECAw== \
    PushMagic PM-1 >"$T/tok1"
expect 200 "$(MD=sha1 put /mdm/checkin "$T/tok1" dev1)" "TokenUpdate (SHA-1 signature)"

plist Status Idle UDID $U1 >"$T/idle1"
expect 200 "$(put /mdm/connect "$T/idle1" dev1)" "Idle"
grep -q '<string>DeviceInformation</string>' "$T/resp" || fail "Idle did not get the command plist"
grep -q 'application/xml' "$T/resp.h" || fail "command without Content-Type application/xml"
CU=$(grep -o 'CMD-[^<]*' "$T/resp" | head -1)
[ -n "$CU" ] || fail "no CommandUUID in the command plist"

plist Status Acknowledged CommandUUID "$CU" UDID $U1 >"$T/ack1"
expect 200 "$(put /mdm/connect "$T/ack1" dev1)" "Acknowledged"
[ ! -s "$T/resp" ] || fail "nothing queued but the body is not empty: $(cat "$T/resp")"

# ---- every Status value reaches the back end ----
for st in Error CommandFormatError NotNow; do
    plist Status $st CommandUUID X-$st UDID $U1 >"$T/st"
    expect 200 "$(put /mdm/connect "$T/st" dev1)" "Status $st"
    grep -q "^REQ connect $st eid=$U1 uuid=X-$st" "$T/backend.out" || fail "$st not forwarded"
done

# ---- NotNow, then re-offered on the next session (device 2, mTLS identity) ----
MTLS=(--cert "$PKI/dev2.pem" --key "$PKI/dev2.key")
plist MessageType Authenticate UDID $U2 Topic com.apple.mgmt.test >"$T/auth2"
expect 200 "$(put /mdm/checkin "$T/auth2" - "${MTLS[@]}")" "Authenticate over mTLS (no signature)"
plist Status Idle UDID $U2 >"$T/idle2"
expect 200 "$(put /mdm/connect "$T/idle2" - "${MTLS[@]}")" "Idle (dev2)"
CU2=$(grep -o 'CMD-[^<]*' "$T/resp" | head -1)
[ -n "$CU2" ] || fail "dev2 got no command"
plist Status NotNow CommandUUID "$CU2" UDID $U2 >"$T/nn2"
expect 200 "$(put /mdm/connect "$T/nn2" - "${MTLS[@]}")" "NotNow"
[ ! -s "$T/resp" ] || fail "NotNow command offered again in the same session"
expect 200 "$(put /mdm/connect "$T/idle2" - "${MTLS[@]}")" "next session Idle"
grep -q "$CU2" "$T/resp" || fail "NotNow command not re-offered on the next session"

# ---- the other check-in messages ----
plist MessageType GetBootstrapToken UDID $U1 >"$T/gbt"
expect 200 "$(put /mdm/checkin "$T/gbt" dev1)" "GetBootstrapToken"
grep -q '<key>BootstrapToken</key>' "$T/resp" || fail "GetBootstrapToken answer is not the plist"
plist MessageType SetBootstrapToken UDID $U1 BootstrapToken data:AQID >"$T/sbt"
expect 200 "$(put /mdm/checkin "$T/sbt" dev1)" "SetBootstrapToken"
plist MessageType DeclarativeManagement UDID $U1 Endpoint tokens >"$T/dm"
expect 200 "$(put /mdm/checkin "$T/dm" dev1)" "DeclarativeManagement"
[ "$(cat "$T/resp")" = "{}" ] || fail "DeclarativeManagement raw answer not passed through"
plist MessageType GetToken UDID $U1 TokenServiceType com.apple.maid >"$T/gt"
expect 200 "$(put /mdm/checkin "$T/gt" dev1)" "GetToken"
plist MessageType UserAuthenticate UDID $U1 UserID USER-1 DigestResponse x >"$T/ua"
expect 410 "$(put /mdm/checkin "$T/ua" dev1)" "UserAuthenticate declined"
# single-URL profiles: a check-in on the ServerURL
expect 200 "$(put /mdm/connect "$T/tok1" dev1)" "TokenUpdate on the ServerURL"
# macOS user channel id
plist MessageType TokenUpdate UDID $U1 UserID USER-1 UserShortName alice UserLongName "Alice Example" Token data:AAEC \
    PushMagic PM Topic t >"$T/utok"
expect 200 "$(put /mdm/checkin "$T/utok" dev1)" "user-channel TokenUpdate"
grep -q "^REQ checkin TokenUpdate eid=$U1:USER-1 kind=user" "$T/backend.out" ||
    fail "user channel id not derived"
CHECKOUT_BEFORE=$(grep -c "^REQ" "$T/backend.out")

# ---- spoofing and bad input: 400 (never 401), an event, and no state change ----
n0=$(events)
reqs0=$(grep -c "^REQ" "$T/backend.out")
expect 400 "$(put /mdm/checkin "$T/tok1" -)" "unsigned"
expect 400 "$(put /mdm/checkin "$T/tok1" evil)" "signed by another CA"
expect 400 "$(put /mdm/checkin "$T/tok1" self)" "self-signed signer"
sig=$(sign "$T/tok1" dev1)
sed 's/PM-1/PM-2/' "$T/tok1" >"$T/tampered"
code=$(curl -sS -m 5 --cacert "$PKI/ca.pem" -o "$T/resp" -w '%{http_code}' -X PUT \
    --data-binary "@$T/tampered" -H "Mdm-Signature: $sig" "$URL/mdm/checkin")
expect 400 "$code" "tampered body"
code=$(curl -sS -m 5 --cacert "$PKI/ca.pem" -o "$T/resp" -w '%{http_code}' -X PUT \
    --data-binary "@$T/tok1" -H "Mdm-Signature: !!garbage!!" "$URL/mdm/checkin")
expect 400 "$code" "garbage signature"
plist MessageType Bogus UDID $U1 >"$T/bogus"
expect 400 "$(put /mdm/checkin "$T/bogus" dev1)" "unknown MessageType"
plist Status Sleeping UDID $U1 >"$T/bogus2"
expect 400 "$(put /mdm/connect "$T/bogus2" dev1)" "unknown Status"
printf 'not a plist at all' >"$T/junk"
expect 400 "$(put /mdm/checkin "$T/junk" dev1)" "not a plist (signed)"
plist MessageType TokenUpdate Topic t >"$T/noid"
expect 400 "$(put /mdm/checkin "$T/noid" dev1)" "no UDID/EnrollmentID"
# untrusted proxy header on a TLS listener is ignored, not trusted: still unsigned
expect 400 "$(put /mdm/checkin "$T/tok1" - -H "X-SSL-Client-Cert: x")" "header spoof on TLS"
reqs1=$(grep -c "^REQ" "$T/backend.out")
[ "$reqs0" = "$reqs1" ] || fail "a rejected request reached the back end ($reqs0 -> $reqs1)"
wait_events $((n0 + 10))
grep -q "^EVENT security.rejected eid=- remote=127.0.0.1 path=/mdm/checkin reason=bad_signature" \
    "$T/backend.out" || fail "no bad_signature event"
grep -q "reason=unknown MessageType 'Bogus'" "$T/backend.out" || fail "no unknown-type event"
# another device's valid certificate for U1: refused by the back end binding
n1=$(events)
expect 400 "$(put /mdm/checkin "$T/tok1" dev3)" "dev3 certificate for dev1's UDID"
wait_events $((n1 + 1))
grep -q "eid=$U1 .*reason=back end: certificate not bound" "$T/backend.out" ||
    fail "no event for a certificate not bound to the enrollment"
grep -q ' 401 ' "$T/resp.h" && fail "a 401 was sent"

# oversized body: refused by the HTTP layer
head -c $((300 * 1024)) /dev/zero | tr '\0' 'A' >"$T/big"
# (Expect: 100-continue, as devices send large bodies: the 413 comes before
# the upload, so the client never writes into a closed connection)
expect 413 "$(put /mdm/checkin "$T/big" - -H "Expect: 100-continue")" "body over body-max"

# ---- back end down: 503 with Retry-After, promptly ----
kill "$BACKEND_PID"
wait "$BACKEND_PID" 2>/dev/null
start=$(date +%s%N)
expect 503 "$(put /mdm/connect "$T/idle1" dev1)" "back end down"
ms=$((($(date +%s%N) - start) / 1000000))
grep -qi '^Retry-After: 10' "$T/resp.h" || fail "503 without Retry-After"
[ $ms -lt 5000 ] || fail "503 took $ms ms (backend-timeout-ms is 2000)"
echo "ok  503 after $ms ms"
code=$(curl -sS -m 5 --cacert "$PKI/ca.pem" -o "$T/resp" -w '%{http_code}' "$URL/health")
expect 200 "$code" "health with the back end down"
grep -q '^backend: down' "$T/resp" || fail "/health does not report the back end down"
kill -0 $GW_PID || fail "gateway died"
grep -qi 'sanitizer\|segfault' "$T/gateway.log" && fail "gateway log shows a crash"
echo "gateway_checkin: all checks passed"
