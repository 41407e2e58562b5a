#!/bin/bash
# e2e_spoof — forged requests against an enrolled device with a command
# queued, through the real stack (broker, store, scheduler, TLS gateway):
# unsigned, wrong CA, expired certificate, self-signed, zero signers, two
# signers, tampered body, garbage signature, another enrollment's valid
# certificate. Each must be answered 400 (never 401), raise a
# security.rejected event (in the store's sequenced log), and change nothing: `picomdm devices`, `queue`
# and `results` read the same before and after. Then the real device still
# gets its command.
source "$(dirname "$0")/e2e_lib.bash"
[ -x "$BIN/picomdm-devsim" ] || skip "skipped: $BIN/picomdm-devsim is not built"
command -v openssl >/dev/null || skip "skipped: openssl CLI not installed"

e2e_up
U1=$(devsim_id 301)
U2=$(devsim_id 302)
devsim dev1 301 --rounds 0 >"$T/e1.out" 2>&1 || { cat "$T/e1.out"; fail "enroll U1"; }
devsim dev2 302 --rounds 0 >"$T/e2.out" 2>&1 || { cat "$T/e2.out"; fail "enroll U2"; }
CU=$(cli enqueue DeviceInformation --to "$U1" --set Queries=OSVersion) || fail enqueue

snapshot() { # the store as an operator sees it
    { cli devices && cli queue "$U1" --all && cli queue "$U2" --all &&
        cli results "$U1" 2>&1 && cli results "$U2" 2>&1; } >"$1" || fail "snapshot through the CLI"
}
snapshot "$T/before"
grep -q "^$CU  *DeviceInformation  *pending" "$T/before" || fail "command not pending: $(cat "$T/before")"

# refused WHAT CODE [GREP]: the last answer was 400 and a new security.rejected event came
n=0
refused() {
    expect 400 "$2" "$1"
    grep -q '^HTTP/[0-9.]* 401' "$T/resp.h" && fail "$1: a 401 was sent"
    n=$((n + 1))
    wait_event "$n" security.rejected '"source":"gateway"'
    [ -z "${3:-}" ] || grep -F '"name":"security.rejected"' "$T/events.jsonl" | tail -n 2 |
        grep -q -- "$3" || fail "$1: the event does not say '$3': $(tail -n 1 "$T/events.jsonl")"
}

# the requests an attacker wants: a new push token, and the device's command
plist MessageType TokenUpdate UDID "$U1" Topic com.apple.mgmt.External.x Token data:AAECAwQFBgc= \
    PushMagic EVIL-MAGIC >"$T/tok"
plist Status Idle UDID "$U1" >"$T/idle"
plist MessageType Authenticate UDID "$U1" Topic com.apple.mgmt.External.x >"$T/auth"

for f in tok idle; do
    p=/mdm/connect
    [ $f = tok ] && p=/mdm/checkin
    refused "$f unsigned" "$(put $p "$T/$f" -)" unsigned
    refused "$f signed by another CA" "$(put $p "$T/$f" evil)" untrusted_chain
    refused "$f self-signed signer" "$(put $p "$T/$f" self)" self_signed
    # tampered: signed by the right device, then one byte changed
    sig=$(sign "$T/$f" dev1)
    sed "s/$U1/${U1%?}X/" "$T/$f" >"$T/tampered"
    code=$(curl -sS -m 10 --cacert "$PKI/ca.pem" -o "$T/resp" -D "$T/resp.h" -w '%{http_code}' \
        -X PUT --data-binary "@$T/tampered" -H "Mdm-Signature: $sig" "$URL$p")
    refused "$f tampered body" "$code" bad_signature
    code=$(curl -sS -m 10 --cacert "$PKI/ca.pem" -o "$T/resp" -D "$T/resp.h" -w '%{http_code}' \
        -X PUT --data-binary "@$T/$f" -H "Mdm-Signature: !!not base64!!" "$URL$p")
    refused "$f garbage signature" "$code"
    # another enrollment's perfectly valid certificate (U2's)
    refused "$f with U2's certificate" "$(put $p "$T/$f" dev2)" "not the one bound"
done
refused "Authenticate for U1 with U2's certificate" "$(put /mdm/checkin "$T/auth" dev2)" "back end"
# a valid device certificate that was never enrolled, for U1
refused "Idle with an unenrolled device's certificate" "$(put /mdm/connect "$T/idle" dev3)" "back end"

# the simulator's own forgeries of U1's Authenticate (a re-enrollment would
# cancel U1's queue): expired certificate, zero signers, two signers, ...
for s in expired zero-signers two-signers wrong-ca unsigned tampered bad-base64; do
    timeout 60 "$BIN/picomdm-devsim" --url "$URL" --ca-bundle "$PKI/ca.pem" \
        --ca-cert "$PKI/ca.pem" --ca-key "$PKI/ca.key" --seed 301 \
        --spoof $s >"$T/spoof.out" 2>&1 || { cat "$T/spoof.out"; fail "devsim --spoof $s was accepted"; }
    grep -q '400' "$T/spoof.out" || fail "devsim --spoof $s: no 400 reported: $(cat "$T/spoof.out")"
    n=$((n + 1))
    wait_event "$n" security.rejected '"source":"gateway"'
    echo "ok  devsim --spoof $s -> 400"
done

# the gateway's rejections are in the store's sequenced event log (a seq each),
# so an auditor that missed them can replay them
grep -F '"name":"security.rejected"' "$T/events.jsonl" | grep -F '"source":"gateway"' >"$T/gwrej"
[ "$(grep -c '"seq":[0-9]' "$T/gwrej")" = "$(wc -l <"$T/gwrej")" ] ||
    fail "a gateway security.rejected without a seq: $(grep -v '"seq":' "$T/gwrej" | head -1)"
snapshot "$T/after"
diff "$T/before" "$T/after" >"$T/diff" || fail "a refused request changed the store: $(cat "$T/diff")"
echo "ok  devices, queues and results unchanged after $n refused requests"
grep -q 'EVIL-MAGIC\|AAECAwQFBgc' "$T/events.jsonl" "$T"/*.log && fail "a forged push secret was logged"

# the real device is unaffected: it gets its command
devsim dev1 301 --no-enroll --rounds 1 >"$T/s.out" 2>&1 || { cat "$T/s.out"; fail "real device session"; }
grep -q 'Acknowledged 1,' "$T/s.out" || fail "real device did not get its command"
cli results "$CU" | grep -q "Acknowledged  *on $U1 " || fail "no result for the real device"
kill -0 "$GW_PID" || fail "gateway died"
echo "e2e_spoof: all checks passed ($n refused, $(events) security.rejected events)"
