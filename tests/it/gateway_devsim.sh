#!/bin/bash
# gateway_devsim — the device simulator against the gateway (TLS, real broker,
# stand-in back end): every enrollment kind (iPhone, iPad, Mac, Mac user
# channel, User Enrollment and its user, Shared iPad user) enrolls and runs
# command-loop sessions with NotNow answers; then every spoofing and
# malformed-body variant the simulator knows must be refused (it exits 1 if
# the server accepts one), each with a security.rejected event.
source "$(dirname "$0")/../../gateway/gw_it_lib.sh"
[ -x "$BIN/picomdm-devsim" ] || skip "skipped: $BIN/picomdm-devsim is not built"
gw_pki
gw_broker
gw_backend
gw_tls
DS=("$BIN/picomdm-devsim" --url "$URL" --ca-bundle "$PKI/ca.pem" --ca-cert "$PKI/ca.pem"
    --ca-key "$PKI/ca.key" --timeout-ms 10000)

"${DS[@]}" --kind mix --devices 14 --rounds 3 --notnow-rate 0.5 --seed 42 >"$T/mix.out" 2>&1 ||
    { cat "$T/mix.out"; fail "devsim mix flow failed"; }
cat "$T/mix.out"
grep -q 'http errors 0, transport errors 0, bad replies 0' "$T/mix.out" || fail "devsim saw errors"
for k in device user user-enrollment user-enrollment-user shared-ipad-user; do
    grep -q "^REQ checkin TokenUpdate eid=[^ ]* kind=$k cert=yes" "$T/backend.out" ||
        fail "no TokenUpdate of kind $k reached the back end"
done
grep -q "same-session violations 0" "$T/mix.out" || fail "NotNow re-offered in the same session"

n0=$(events)
reqs0=$(grep -c '^REQ' "$T/backend.out")
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
grep -q 'reason=back end: certificate not bound' "$T/backend.out" || fail "no event for another device's certificate"
kill -0 $GW_PID || fail "gateway died"
echo "gateway_devsim: all checks passed ($(events) security.rejected events)"
