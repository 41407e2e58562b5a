#!/bin/bash
# gateway_devsim — the device simulator against the gateway (TLS, real broker,
# store and scheduler): every enrollment kind (iPhone, iPad, Mac, Mac user
# channel, User Enrollment and its user, Shared iPad user) enrolls and runs
# command-loop sessions with NotNow answers; then every spoofing and
# malformed-body variant the simulator knows must be refused (it exits 1 if
# the server accepts one), each with a security.rejected event.
source "$(dirname "$0")/e2e_lib.bash"
[ -x "$BIN/picomdm-devsim" ] || skip "skipped: $BIN/picomdm-devsim is not built"
gw_pki
gw_broker
gw_backend
gw_tls
DS=("$BIN/picomdm-devsim" --url "$URL" --ca-bundle "$PKI/ca.pem" --ca-cert "$PKI/ca.pem"
    --ca-key "$PKI/ca.key" --identity-dir "$T/ids" --timeout-ms 10000)

"${DS[@]}" --kind mix --devices 14 --rounds 0 --seed 42 >"$T/enroll.out" 2>&1 ||
    { cat "$T/enroll.out"; fail "devsim mix enrollment failed"; }
for k in device user user-enrollment user-enrollment-user shared-ipad-user; do
    grep -F '"name":"checkin.TokenUpdate"' "$T/events.jsonl" | grep -q "\"kind\":\"$k\"" ||
        fail "no TokenUpdate of kind $k reached the store"
done
# a command for every enrollment (device and user channels), then sessions with NotNow
cli devices | awk 'NR > 1 { print $1 }' >"$T/eids"
[ "$(wc -l <"$T/eids")" -ge 14 ] || fail "fewer than 14 enrollments: $(cat "$T/eids")"
CU=$(cli enqueue ProfileList --to $(cat "$T/eids")) || fail "enqueue to every enrollment"
"${DS[@]}" --kind mix --devices 14 --no-enroll --rounds 3 --notnow-rate 0.5 --seed 42 >"$T/mix.out" 2>&1 ||
    { cat "$T/mix.out"; fail "devsim mix flow failed"; }
cat "$T/mix.out"
grep -q 'http errors 0, transport errors 0, bad replies 0' "$T/mix.out" || fail "devsim saw errors"
nres=$(cli results "$CU" --limit 1000 | grep -c "^ProfileList $CU ")
echo "results for $CU: $nres of $(wc -l <"$T/eids") enrollments"
nack=$(sed -n 's/^answers *Acknowledged \([0-9]*\),.*/\1/p' "$T/mix.out")
[ "$nres" -ge 1 ] && [ "$nres" = "$nack" ] ||
    fail "$nres ProfileList results stored, the devices acknowledged ${nack:-?}"
grep -q "same-session violations 0" "$T/mix.out" || fail "NotNow re-offered in the same session"

n0=$(events)
for s in unsigned wrong-ca expired self-signed tampered two-signers zero-signers bad-base64; do
    "${DS[@]}" --spoof $s --seed 43 >"$T/spoof.out" 2>&1 || { cat "$T/spoof.out"; fail "spoof $s accepted"; }
    echo "ok  spoof $s refused"
done
for m in truncated nested oversized garbage wrong-types; do
    "${DS[@]}" --malformed $m --seed 44 >"$T/mal.out" 2>&1 || { cat "$T/mal.out"; fail "malformed $m accepted"; }
    echo "ok  malformed $m refused"
done
wait_events $((n0 + 13))
# "another": a valid certificate of another device for an enrolled UDID,
# refused by the back end's binding
"${DS[@]}" --spoof another --seed 45 >"$T/spoof.out" 2>&1 || { cat "$T/spoof.out"; fail "spoof another accepted"; }
echo "ok  spoof another refused"
grep -q 'back end: certificate is not the one bound' "$T/events.jsonl" ||
    fail "no event for another device's certificate"
kill -0 $GW_PID || fail "gateway died"
echo "gateway_devsim: all checks passed ($(events) security.rejected events)"
