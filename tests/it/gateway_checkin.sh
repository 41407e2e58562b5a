#!/bin/bash
# gateway_checkin — the gateway over TLS on 127.0.0.1 in front of the real
# back end (broker, store, scheduler), driven by curl + openssl cms -sign
# (hand-made requests, byte for byte): Authenticate -> TokenUpdate -> Idle
# gets the DeviceInformation queued with `picomdm enqueue` -> Acknowledged;
# every Status; NotNow then re-offer (mTLS identity); every check-in
# MessageType; single-URL profiles; spoofing cases each 400 with an event
# and nothing reaching the store; 413; scheduler down -> still served (direct
# device path); store down -> 503 Retry-After.
source "$(dirname "$0")/e2e_lib.bash"

e2e_up --log-level debug --backend-timeout-ms 2000 --body-max 262144
# store_events: events the store raised (anything that changed or touched state)
store_events() { grep -c '"source":"store"' "$T/events.jsonl"; }

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
wait_event 1 checkin.Authenticate "\"eid\":\"$U1\""

plist MessageType TokenUpdate UDID $U1 Topic com.apple.mgmt.test Token data:AAECAw== \
    PushMagic PM-1 >"$T/tok1"
expect 200 "$(MD=sha1 put /mdm/checkin "$T/tok1" dev1)" "TokenUpdate (SHA-1 signature)"
cli devices | grep -q "^$U1  *device .* true  *true " || fail "$U1 not enrolled and pushable"
CU=$(cli enqueue DeviceInformation --to $U1 --set Queries=UDID) || fail "enqueue"

plist Status Idle UDID $U1 >"$T/idle1"
expect 200 "$(put /mdm/connect "$T/idle1" dev1)" "Idle"
grep -q '<string>DeviceInformation</string>' "$T/resp" || fail "Idle did not get the command plist"
grep -q 'application/xml' "$T/resp.h" || fail "command without Content-Type application/xml"
grep -q "<string>$CU</string>" "$T/resp" || fail "no CommandUUID $CU in the command plist"

plist Status Acknowledged CommandUUID "$CU" UDID $U1 >"$T/ack1"
expect 200 "$(put /mdm/connect "$T/ack1" dev1)" "Acknowledged"
[ ! -s "$T/resp" ] || fail "nothing queued but the body is not empty: $(cat "$T/resp")"
cli results $CU | grep -q "Acknowledged  *on $U1 " || fail "the result did not reach the store"

# ---- every Status value reaches the back end (unknown CommandUUIDs: command.unknown) ----
for st in Error CommandFormatError NotNow; do
    plist Status $st CommandUUID X-$st UDID $U1 >"$T/st"
    expect 200 "$(put /mdm/connect "$T/st" dev1)" "Status $st"
    wait_event 1 command.unknown "X-$st"
done

# ---- NotNow, then re-offered on the next session (device 2, mTLS identity) ----
MTLS=(--cert "$PKI/dev2.pem" --key "$PKI/dev2.key")
plist MessageType Authenticate UDID $U2 Topic com.apple.mgmt.test >"$T/auth2"
expect 200 "$(put /mdm/checkin "$T/auth2" - "${MTLS[@]}")" "Authenticate over mTLS (no signature)"
plist MessageType TokenUpdate UDID $U2 Topic com.apple.mgmt.test Token data:BAUG PushMagic PM-2 >"$T/tok2"
expect 200 "$(put /mdm/checkin "$T/tok2" - "${MTLS[@]}")" "TokenUpdate over mTLS"
CU2=$(cli enqueue ProfileList --to $U2) || fail "enqueue for dev2"
plist Status Idle UDID $U2 >"$T/idle2"
expect 200 "$(put /mdm/connect "$T/idle2" - "${MTLS[@]}")" "Idle (dev2)"
grep -q "<string>$CU2</string>" "$T/resp" || fail "dev2 got no command"
plist Status NotNow CommandUUID "$CU2" UDID $U2 >"$T/nn2"
expect 200 "$(put /mdm/connect "$T/nn2" - "${MTLS[@]}")" "NotNow"
[ ! -s "$T/resp" ] || fail "NotNow command offered again in the same session"
expect 200 "$(put /mdm/connect "$T/idle2" - "${MTLS[@]}")" "next session Idle"
grep -q "$CU2" "$T/resp" || fail "NotNow command not re-offered on the next session"

# ---- the other check-in messages ----
plist MessageType GetBootstrapToken UDID $U1 >"$T/gbt"
expect 200 "$(put /mdm/checkin "$T/gbt" dev1)" "GetBootstrapToken (none escrowed)"
grep -q '<dict/>\|<dict>' "$T/resp" || fail "GetBootstrapToken answer is not a plist dict"
grep -q 'BootstrapToken' "$T/resp" && fail "a BootstrapToken before one was escrowed"
plist MessageType SetBootstrapToken UDID $U1 BootstrapToken data:AQID >"$T/sbt"
expect 200 "$(put /mdm/checkin "$T/sbt" dev1)" "SetBootstrapToken"
expect 200 "$(put /mdm/checkin "$T/gbt" dev1)" "GetBootstrapToken (escrowed)"
grep -q '<key>BootstrapToken</key>' "$T/resp" && grep -q 'AQID' "$T/resp" ||
    fail "GetBootstrapToken does not return the escrowed token: $(cat "$T/resp")"
# not configured on this server: 404 from the back end, passed through
plist MessageType DeclarativeManagement UDID $U1 Endpoint tokens >"$T/dm"
expect 404 "$(put /mdm/checkin "$T/dm" dev1)" "DeclarativeManagement (not configured)"
plist MessageType GetToken UDID $U1 TokenServiceType com.apple.maid >"$T/gt"
expect 404 "$(put /mdm/checkin "$T/gt" dev1)" "GetToken (not configured)"
plist MessageType UserAuthenticate UDID $U1 UserID USER-1 DigestResponse x >"$T/ua"
expect 410 "$(put /mdm/checkin "$T/ua" dev1)" "UserAuthenticate declined"
# single-URL profiles: a check-in on the ServerURL
expect 200 "$(put /mdm/connect "$T/tok1" dev1)" "TokenUpdate on the ServerURL"
# macOS user channel id
plist MessageType TokenUpdate UDID $U1 UserID USER-1 UserShortName alice UserLongName "Alice Example" Token data:AAEC \
    PushMagic PM Topic t >"$T/utok"
expect 200 "$(put /mdm/checkin "$T/utok" dev1)" "user-channel TokenUpdate"
cli devices | grep -q "^$U1:USER-1  *user " || fail "user channel id not derived: $(cli devices)"

# ---- spoofing and bad input: 400 (never 401), an event, and no state change ----
n0=$(events)
reqs0=$(store_events)
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
wait_events $((n0 + 10))
reqs1=$(store_events)
[ "$reqs0" = "$reqs1" ] || fail "a rejected request reached the store ($reqs0 -> $reqs1 events)"
grep '"name":"security.rejected"' "$T/events.jsonl" | grep '"path":"/mdm/checkin"' |
    grep -q '"reason":"bad_signature' || fail "no bad_signature event"
grep -q "unknown MessageType 'Bogus'" "$T/events.jsonl" || fail "no unknown-type event"
# another device's valid certificate for U1: refused by the back end binding
n1=$(events)
expect 400 "$(put /mdm/checkin "$T/tok1" dev3)" "dev3 certificate for dev1's UDID"
wait_events $((n1 + 1))
grep '"name":"security.rejected"' "$T/events.jsonl" | grep "\"eid\":\"$U1\"" |
    grep -q 'back end: certificate is not the one bound' ||
    fail "no event for a certificate not bound to the enrollment"
grep -q ' 401 ' "$T/resp.h" && fail "a 401 was sent"

# oversized body: refused by the HTTP layer
head -c $((300 * 1024)) /dev/zero | tr '\0' 'A' >"$T/big"
# (Expect: 100-continue, as devices send large bodies: the 413 comes before
# the upload, so the client never writes into a closed connection)
expect 413 "$(put /mdm/checkin "$T/big" - -H "Expect: 100-continue")" "body over body-max"

# ---- scheduler down: devices are still served (direct device path, docs/queue.md) ----
code=$(curl -sS -m 5 --cacert "$PKI/ca.pem" -o "$T/resp" -w '%{http_code}' "$URL/health")
grep -q '^device_path: direct to the store' "$T/resp" || fail "/health: not on the direct path: $(cat "$T/resp")"
kill "$SCHED_PID"
wait "$SCHED_PID" 2>/dev/null
expect 200 "$(put /mdm/connect "$T/idle1" dev1)" "Idle with the scheduler stopped"

# ---- back end (the store) down: 503 with Retry-After, promptly ----
kill "$STORE_PID"
wait "$STORE_PID" 2>/dev/null
start=$(date +%s%N)
expect 503 "$(put /mdm/connect "$T/idle1" dev1)" "back end down"
ms=$((($(date +%s%N) - start) / 1000000))
grep -qi '^Retry-After: 10' "$T/resp.h" || fail "503 without Retry-After"
# without the back-end timeout curl would give up after 15 s (put's -m 15);
# the time includes signing and a TLS handshake on a loaded machine
[ $ms -lt 10000 ] || fail "503 took $ms ms (backend-timeout-ms is 2000)"
echo "ok  503 after $ms ms"
code=$(curl -sS -m 5 --cacert "$PKI/ca.pem" -o "$T/resp" -w '%{http_code}' "$URL/health")
expect 200 "$code" "health with the back end down"
grep -q '^backend: down' "$T/resp" || fail "/health does not report the back end down"
kill -0 $GW_PID || fail "gateway died"
grep -qi 'sanitizer\|segfault' "$T/gateway.log" && fail "gateway log shows a crash"
echo "gateway_checkin: all checks passed"
