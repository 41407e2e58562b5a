#!/bin/bash
# doctor_devsim — `picomdm doctor` over the real stack (`picomdm up`, the
# device simulator through the gateway). Each condition is created for real:
#   - fleet summary counts the enrolled device, says no push outcome is recorded;
#   - a command answered NotNow five times (devsim --notnow-rate 1, 5 sessions)
#     is named as stuck at the head of the queue with its tally;
#   - a command queued (with a wakeup) after the device's last connection:
#     "has not connected since commands were queued";
#   - no push certificate (pusher idle or absent): "no push outcome recorded
#     (is picomdm-pusher running?)";
#   - --push-cert with another topic: "push topic mismatch";
#   - an unknown id fails with a hint.
UP_NAME=doctor_devsim
source "$(dirname "$0")/up_lib.inc"
up_start
up_device doctor-test-device
DS+=(--seed 11)

timeout 30 "${DS[@]}" --rounds 1 >"$T/ds1.out" 2>&1 || { cat "$T/ds1.out"; fail "enrollment failed"; }
eid=$("${P[@]}" devices --json | sed -n 's/.*"eid":"\([^"]*\)".*/\1/p' | head -1)
[ -n "$eid" ] || fail "no enrollment after devsim"

# 1. the fleet
"${P[@]}" doctor >"$T/fleet.txt" 2>&1 || { cat "$T/fleet.txt"; fail "doctor (fleet) failed"; }
cat "$T/fleet.txt"
grep -q "^1 enrollment(s): 1 active, 0 not activated" "$T/fleet.txt" || fail "fleet line does not count the active device"
grep -q "no push outcome recorded (is picomdm-pusher running?)" "$T/fleet.txt" || fail "fleet does not say no push outcome is recorded"
grep -q "0 with a stuck command" "$T/fleet.txt" || fail "fleet counts a stuck command before any was queued"

# 2. a healthy device (but no pusher)
"${P[@]}" doctor "$eid" >"$T/d1.txt" 2>&1
rc=$?
cat "$T/d1.txt"
[ $rc -eq 1 ] || fail "doctor exit $rc without a push outcome (expected 1: a problem found)"
grep -q "no push outcome recorded (is picomdm-pusher running?)" "$T/d1.txt" || fail "no 'no push outcome recorded'"
grep -q "NotNow\|never answered\|not connected since" "$T/d1.txt" && fail "doctor reports a queue problem on an empty queue"

# 3. a command answered NotNow five times, in five sessions
uuid=$("${P[@]}" enqueue SecurityInfo --to "$eid" --no-push 2>/dev/null) || fail "enqueue SecurityInfo"
timeout 40 "${DS[@]}" --no-enroll --rounds 5 --notnow-rate 1 >"$T/ds2.out" 2>&1 || { cat "$T/ds2.out"; fail "NotNow rounds failed"; }
"${P[@]}" doctor "$eid" >"$T/d2.txt" 2>&1
cat "$T/d2.txt"
grep -q "command SecurityInfo ($uuid) at the head of the queue was answered NotNow 5 times" "$T/d2.txt" ||
    fail "doctor does not name the NotNow-stuck command with its tally 5"
"${P[@]}" doctor >"$T/fleet2.txt" 2>&1
grep -q "1 with a stuck command" "$T/fleet2.txt" || { cat "$T/fleet2.txt"; fail "fleet does not count the stuck device"; }
"${P[@]}" cancel "$uuid" >/dev/null 2>&1 || fail "cancel $uuid"

# 4. a command queued with a wakeup after the last connection; the device stays away
sleep 1.1
"${P[@]}" enqueue ProfileList --to "$eid" >/dev/null 2>&1 || fail "enqueue ProfileList"
"${P[@]}" doctor "$eid" >"$T/d3.txt" 2>&1
grep -q "has not connected since commands were queued" "$T/d3.txt" || { cat "$T/d3.txt"; fail "doctor does not say the device has not connected since the queueing"; }
if [ -f "$T/var/run/pusher.pid" ] && kill -0 "$(cat "$T/var/run/pusher.pid")" 2>/dev/null; then
    # a real pusher without a push certificate records a failed outcome for the wakeup
    wait_for 10 sh -c "'${P[0]}' --timeout 3000 doctor '$eid' 2>&1 | grep -q 'the last push failed.*no push certificate'" ||
        { "${P[@]}" doctor "$eid"; fail "doctor does not report the pusher's failed outcome (no push certificate)"; }
    echo "ok  pusher outcome: the last push failed (no push certificate)"
else
    grep -q "no push outcome recorded (is picomdm-pusher running?)" "$T/d3.txt" || fail "no 'no push outcome recorded' without a pusher"
fi
"${P[@]}" doctor "$eid" >"$T/d3.txt" 2>&1
cat "$T/d3.txt"
grep -q "NotNow" "$T/d3.txt" && fail "a cancelled command is still reported"

# 5. a push certificate for another topic
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/push.key" -out "$T/push.pem" -days 30 \
    -subj "/UID=com.apple.mgmt.External.doctor-other/CN=APSP:doctor" 2>/dev/null || fail "cannot make a push certificate"
"${P[@]}" doctor "$eid" --push-cert "$T/push.pem" >"$T/d4.txt" 2>&1
cat "$T/d4.txt"
grep -q "push topic mismatch: the device enrolled with topic .* but the push certificate is for com.apple.mgmt.External.doctor-other" "$T/d4.txt" ||
    fail "doctor does not report the topic mismatch"
grep -q "push certificate expires on" "$T/d4.txt" || fail "a certificate expiring in 30 days is not reported"

# 6. unknown id
"${P[@]}" doctor NO-SUCH-DEVICE >"$T/d5.txt" 2>&1 && fail "doctor of an unknown id succeeded"
grep -q "no enrollment NO-SUCH-DEVICE: list them with" "$T/d5.txt" || { cat "$T/d5.txt"; fail "no hint for an unknown id"; }
kill -TERM "$UP_PID"; wait "$UP_PID"; UP_PID=
echo "doctor_devsim: all checks passed"
