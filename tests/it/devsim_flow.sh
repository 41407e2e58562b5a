#!/bin/bash
# devsim_flow: the simulator end to end against a signature-checking MDM stub:
# every device kind enrolls (Authenticate, TokenUpdate, user-channel
# TokenUpdate), answers every queued command over two sessions with NotNow
# now and then, NotNow'd commands come back in a later session; a server that
# re-offers a NotNow'd command in the same session is reported (exit 1).
source "$(dirname "$0")/devsim_lib.inc"
"$DEVSIM" --make-ca "$W/ca" >/dev/null || fail "--make-ca"

start_stub good --device-ca "$W/ca.pem"
timeout 60 "$DEVSIM" --url "http://127.0.0.1:$STUB_PORT" --ca-cert "$W/ca.pem" --ca-key "$W/ca.key" \
    --kind mix --devices 14 --rounds 3 --notnow-rate 0.2 --seed 11 >"$W/run.out" 2>"$W/run.err"
rc=$?
cat "$W/run.out"
[ $rc = 0 ] || { cat "$W/run.err"; fail "devsim exit $rc against a correct server"; }
stop_stub
cat "$STUB_STATS"
# 14 devices cycle through the 7 kinds twice; mac-user,
# ue-mac-user and shared-ipad add a user channel: 14 devices -> 20 channels.
[ "$(stat_of authenticate)" = 14 ] || fail "expected 14 Authenticate"
[ "$(stat_of tokenupdate)" = 20 ] || fail "expected 20 TokenUpdate (14 device + 6 user channels)"
[ "$(stat_of rejected)" = 0 ] || fail "the stub rejected signed requests"
[ "$(stat_of unknown_uuid)" = 0 ] || fail "reports with unknown CommandUUIDs"
[ "$(stat_of notnow)" -gt 0 ] || fail "no NotNow at rate 0.2"
[ "$(stat_of reoffered)" -gt 0 ] || fail "no NotNow'd command was re-offered"
# 9 commands per channel, each finally answered (ack/error) unless NotNow'd in the last round
done_=$(( $(stat_of acknowledged) + $(stat_of error) + $(stat_of formaterror) ))
[ "$done_" -ge 160 ] && [ "$done_" -le 180 ] || fail "expected ~180 final answers, got $done_"
[ "$(stat_of error)" -ge 20 ] || fail "EnableLostMode must be answered Error on every channel"
grep -q "same-session violations 0" "$W/run.out" || fail "violations reported against a correct server"
grep -q "^enroll .* 14 enrollments" "$W/run.out" || fail "enrollment figure missing"

# A server that breaks the NotNow rule must be caught.
start_stub bad --device-ca "$W/ca.pem" --bad-notnow
timeout 60 "$DEVSIM" --url "http://127.0.0.1:$STUB_PORT" --ca-cert "$W/ca.pem" --ca-key "$W/ca.key" \
    --devices 3 --notnow-rate 0.5 --seed 12 >"$W/bad.out" 2>"$W/bad.err"
rc=$?
cat "$W/bad.out"
[ $rc = 1 ] || fail "devsim exit $rc against a server re-offering NotNow in the same session (want 1)"
grep -q "NOTNOW VIOLATION" "$W/bad.err" || fail "no violation logged"
stop_stub

# EraseDevice: acknowledged, then the device never checks in again.
start_stub erase --device-ca "$W/ca.pem" --commands DeviceInformation,EraseDevice,ProfileList
timeout 60 "$DEVSIM" --url "http://127.0.0.1:$STUB_PORT" --ca-cert "$W/ca.pem" --ca-key "$W/ca.key" \
    --devices 2 --rounds 3 --seed 13 >"$W/erase.out" 2>&1 || { cat "$W/erase.out"; fail "erase run"; }
stop_stub
[ "$(stat_of acknowledged)" = 4 ] || fail "expected 4 acks (DeviceInformation + EraseDevice x2)"
[ "$(stat_of idle)" = 2 ] || fail "an erased device checked in again (Idle count $(stat_of idle), want 2)"
echo "devsim_flow: ok"
