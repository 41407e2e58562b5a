#!/bin/bash
# multihost_push — enrollment and wake-ups across three "hosts" (network
# namespaces; layout in tests/it/multihost_lib.inc and docs/multihost.md):
# broker + store + scheduler + ca on A, gateway + pusher on B, APNs stand-in
# and device simulators on C; every bus endpoint (ipc on A, tcp across hosts)
# under CURVE, hosts A and B run deploy/examples/picomdm-multihost.cfg.
#   1. devices on C enroll from nothing but the enrollment URL on B: the
#      profile (/mdm/enroll) and SCEP (/scep) are relayed over the bus to the
#      ca on A; each device gets its identity, checks in, renews it
#      (RenewalReq, re-bound without a new Authenticate) and listens for pushes.
#   2. `picomdm enqueue` on A wakes a device: scheduler (A) -> pusher (B) ->
#      APNs stand-in (C) -> devsim push listener (C) -> gateway (B) ->
#      Acknowledged, the device never polling.
#   3. A-B cut for a while, a wake queued meanwhile from A: nothing reaches
#      the devices during the cut; after the link is back the same processes
#      carry on by themselves (the scheduler's wake sweep re-pushes) and each
#      device gets and acknowledges the command exactly once.
#   4. the same with the B-C link (pusher -> APNs stand-in, devices -> gateway)
#      cut while the wake is being pushed.
#   Meanwhile two auditors record the store's event log (ca events included):
#   the audit unit's own command line on A and `picomdm audit` on C.
# Needs root (CAP_NET_ADMIN): otherwise it says why and exits 77.
. "$(dirname "$0")/multihost_lib.inc"
N=3
mh_setup

# auditors: on A the audit unit's own command line (its ExecStart) with the
# example's file, i.e. A's key; on C one with alice's key across the A-C link
unit=$(dirname "$EXAMPLE")/../systemd/picomdm-audit.service.in
mkdir -p "$T/log"
audit_cmd=$(sed -n 's/^ExecStart=//p' "$unit" |
    sed "s|@BINDIR@|$BIN|; s|@SYSCONFDIR@/picomdm/picomdm.cfg|$T/a.cfg|; s|/var/log/picomdm|$T/log|")
[[ $audit_cmd == "$BIN/picomdm audit "* ]] || fail "unexpected ExecStart in $unit: $audit_cmd"
read -ra audit_argv <<<"$audit_cmd"
bg a audit "${audit_argv[@]}"
AUD_A=$LAST_PID
bg c auditc "$BIN/picomdm" audit --file "$T/audit-c.jsonl" "${OPS_C[@]}" "${CURVE[@]}" \
    --curve-cert "$OPKEY"
AUD_C=$LAST_PID

# ---- 1. enrollment from the URL alone, through B, the CA on A
# an auditor on C sees the ca's events (published on A) across the A-C link
on c timeout 30 "$BIN/picomdm" watch ca. --count $((3 * N)) --json "${OPS_C[@]}" "${CURVE[@]}" \
    --curve-cert "$OPKEY" >"$T/cawatch.out" 2>"$T/cawatch.log" &
CW=$!
for _ in $(seq 100); do grep -q "watching events" "$T/cawatch.log" && break; sleep 0.1; done
sleep 1 # the CURVE handshake and the subscription reach A (no replay in watch)
bg c devsim "$BIN/picomdm-devsim" --enroll-url "https://$GW/mdm/enroll" --ca-bundle "$T/tlsca.pem" \
    --devices $N --rounds 0 --renew --push-listen "$T/push.sock" --seed 4711 --timeout-ms 8000
DS_PID=$LAST_PID
for _ in $(seq 300); do
    grep -q "push-listen .* ready" "$T/devsim.log" && break
    kill -0 "$DS_PID" 2>/dev/null || break
    sleep 0.1
done
grep -q "push-listen .* ready, $N of $N devices enrolled" "$T/devsim.log" ||
    fail "devsim on C did not enroll $N devices from https://$GW/mdm/enroll"
grep -q "^scep: $N certificate(s) renewed" "$T/devsim.log" || fail "the devices did not renew over SCEP"
[ "$(grep -c "scep: issued" "$T/ca.log")" = $((2 * N)) ] ||
    fail "want $N certificates issued and $N renewed by the ca on A"
wait $CW || fail "the watcher on C did not see $((3 * N)) ca events: $(cat "$T/cawatch.out" "$T/cawatch.log")"
[ "$(grep -c '"ca.issued".*"kind":"enrollment"' "$T/cawatch.out")" = $N ] &&
    [ "$(grep -c '"ca.issued".*"kind":"renewal"' "$T/cawatch.out")" = $N ] &&
    [ "$(grep -c '"ca.profile"' "$T/cawatch.out")" = $N ] ||
    fail "want $N ca.profile and 2 x $N ca.issued events on C: $(cat "$T/cawatch.out")"
# ... with their sequence numbers: they are in the store's event log, so an
# auditor that missed them can replay them
[ "$(grep -c '"seq":[0-9]' "$T/cawatch.out")" = $((3 * N)) ] ||
    fail "ca events without a seq (not in the store's log): $(head -n 2 "$T/cawatch.out")"
[ "$(db "SELECT COUNT(*) FROM events WHERE name = 'ca.issued' AND source = 'ca'")" = $((2 * N)) ] ||
    fail "want 2 x $N ca.issued in the store's event log: $(db "SELECT name, COUNT(*) FROM events GROUP BY name")"
# the renewed certificates re-bound the enrollments (no new Authenticate)
[ "$(db "SELECT COUNT(*) FROM events WHERE name = 'enroll.cert_rebound'")" = $N ] &&
    [ "$(db "SELECT COUNT(*) FROM events WHERE name = 'checkin.Authenticate'")" = $N ] ||
    fail "want $N enroll.cert_rebound and $N Authenticate: $(db "SELECT name, COUNT(*) FROM events GROUP BY name")"
cli_a devices --json --timeout 3000 | sed -n 's/.*"eid":"\([^"]*\)".*/\1/p' >"$T/eids"
[ "$(wc -l <"$T/eids")" = $N ] || fail "picomdm devices on A lists $(wc -l <"$T/eids") enrollments, want $N"
[ "$(db "SELECT COUNT(*) FROM enrollments WHERE topic = '$TOPIC' AND push_token IS NOT NULL")" = $N ] ||
    fail "not every enrollment has the push certificate's topic and a token"
echo "ok   $N devices on C enrolled from https://$GW/mdm/enroll (profile + SCEP relayed to the ca on A) and renewed"

uuid() { tr a-z A-Z </proc/sys/kernel/random/uuid; }
acked() { cli_a results "$1" --limit 100 --json 2>/dev/null | grep -c '"Acknowledged"'; }
wait_acked() { # UUID COUNT SECONDS
    local end=$(($(now_ms) + $3 * 1000))
    while [ "$(now_ms)" -lt $end ]; do [ "$(acked "$1")" -ge "$2" ] && return 0; sleep 0.1; done
    return 1
}
# sessions: how many command-loop requests each device made (the devsim does
# nothing without a push, so this only grows when a push woke it)
sessions() { db "SELECT COALESCE(SUM(session), 0) FROM sessions"; }

# ---- 2. enqueue on A wakes one device through B and C
e1=$(head -n 1 "$T/eids")
W1=$(uuid)
s0=$(sessions)
t0=$(now_ms)
cli_a enqueue DeviceInformation --to "$e1" --set Queries=OSVersion --uuid "$W1" >/dev/null 2>"$T/enq1.err" ||
    fail "enqueue on A: $(cat "$T/enq1.err")"
wait_acked "$W1" 1 20 || fail "device $e1 was not woken / did not acknowledge $W1"
t1=$(now_ms)
cli_a results "$e1" >"$T/r1" || fail "picomdm results $e1"
grep -q "$W1  Acknowledged" "$T/r1" && grep -q "OSVersion" "$T/r1" || fail "result: $(cat "$T/r1")"
[ "$(apns_stat delivered)" -ge 1 ] || fail "the APNs stand-in on C delivered no push"
# the outcome reaches the store in the pusher's next batch, maybe after the ack
pushed() { [ "$(db "SELECT COUNT(*) FROM events WHERE name = 'push.sent' AND eid = '$1'")" -ge 1 ]; }
for _ in $(seq 200); do pushed "$e1" && break; sleep 0.1; done
pushed "$e1" || fail "no push.sent for $e1 in the store's event log"
[ "$(sessions)" -gt "$s0" ] || fail "the device connected without a session being counted"
echo "ok   enqueue on A -> pusher on B -> APNs stand-in on C -> device -> gateway on B: Acknowledged in $((t1 - t0)) ms"

# ---- 3. a wake queued while A-B is down
W2=$(uuid)
paste -sd, "$T/eids" >"$T/toall"
del0=$(apns_stat delivered)
on a ip link set vab down
t0=$(now_ms)
cli_a enqueue DeviceInformation --to "$(cat "$T/toall")" --set Queries=OSVersion --uuid "$W2" \
    >/dev/null 2>"$T/enq2.err" || fail "enqueue on A during the cut: $(cat "$T/enq2.err")"
sleep 5 # longer than the bus liveness (3 heartbeats): B's workers count as gone
[ "$(acked "$W2")" = 0 ] || fail "a device acknowledged $W2 while A-B was down"
[ "$(apns_stat delivered)" = "$del0" ] || fail "a push was delivered while A-B was down"
[ "$(db "SELECT COUNT(*) FROM wake")" = $N ] || fail "want $N wake marks during the cut: $(db "SELECT * FROM wake")"
# the wake did not reach the pusher: the scheduler's call timed out, or the
# broker failed it back when it dropped the silent pusher; the marks (above)
# are what the sweep re-sends
grep -q "no reply from service 'push'.*picomdm-pusher" "$T/sched.log" ||
    grep -q "of 'push' removed (missed 3 heartbeats); [1-9][0-9]* requests* in flight failed back" \
        "$T/broker.log" ||
    fail "the scheduler's wake during the cut did not fail: the cut did not exercise the sweep"
on a ip link set vab up
wait_acked "$W2" $N 30 || fail "only $(acked "$W2") of $N devices acknowledged $W2 after the A-B link came back"
t1=$(now_ms)
kill -0 "$GW_PID" 2>/dev/null || fail "the gateway died"
kill -0 "$PUSHER_PID" 2>/dev/null || fail "the pusher died"
kill -0 "$DS_PID" 2>/dev/null || fail "the device simulator died"
sleep 2.5 # one more wake sweep: nothing may be delivered twice
cmd=$(db "SELECT id FROM commands WHERE uuid = '$W2'")
[ -n "$cmd" ] || fail "$W2 is not in the store"
[ "$(db "SELECT COUNT(*) FROM queue WHERE cmd = $cmd AND status = 'acknowledged' AND deliveries = 1")" = $N ] ||
    fail "want $N queue entries acknowledged after exactly one delivery: $(db "SELECT eid, status, deliveries FROM queue WHERE cmd = $cmd")"
[ "$(db "SELECT COUNT(*) FROM results WHERE cmd = $cmd AND status = 'Acknowledged'")" = $N ] ||
    fail "want $N Acknowledged results for $W2"
[ "$(db "SELECT COUNT(*) FROM wake")" = 0 ] || fail "wake marks left after every device connected"
echo "ok   A-B cut 5 s with a wake queued from A: after the link came back all $N acknowledged $W2 exactly once ($((t1 - t0)) ms after the enqueue)"

# ---- 4. the B-C link (pusher -> APNs, and devices -> gateway) cut while a
# wake is pushed: the pusher's attempts time out or fail; after the link is
# back the pusher's retries or the sweep deliver it, each device answers once
W3=$(uuid)
on b ip link set vbc down
cli_a enqueue DeviceInformation --to "$(cat "$T/toall")" --set Queries=OSVersion --uuid "$W3" \
    >/dev/null 2>"$T/enq3.err" || fail "enqueue on A during the B-C cut: $(cat "$T/enq3.err")"
t0=$(now_ms)
sleep 4
[ "$(acked "$W3")" = 0 ] || fail "a device acknowledged $W3 while B-C was down"
on b ip link set vbc up
wait_acked "$W3" $N 30 || fail "only $(acked "$W3") of $N devices acknowledged $W3 after the B-C link came back"
t1=$(now_ms)
kill -0 "$PUSHER_PID" 2>/dev/null || fail "the pusher died"
sleep 2.5 # one more wake sweep: nothing may be delivered twice
cmd=$(db "SELECT id FROM commands WHERE uuid = '$W3'")
[ "$(db "SELECT COUNT(*) FROM queue WHERE cmd = $cmd AND status = 'acknowledged' AND deliveries = 1")" = $N ] ||
    fail "want $N queue entries acknowledged after exactly one delivery: $(db "SELECT eid, status, deliveries FROM queue WHERE cmd = $cmd")"
echo "ok   B-C cut 4 s during the push of $W3: all $N acknowledged it exactly once after the link came back ($((t1 - t0)) ms after the enqueue)"

# the devices only ever connected because of a push, and never saw a command twice
kill -TERM "$DS_PID"
for _ in $(seq 50); do kill -0 "$DS_PID" 2>/dev/null || break; sleep 0.1; done
grep -E "^(scep|pushes|answers)" "$T/devsim.log"
grep -q "^pushes .* ignored 0" "$T/devsim.log" || fail "the device simulator ignored pushes (wrong PushMagic/topic?)"
grep -q "same-session violations 0" "$T/devsim.log" || fail "devsim saw a command re-offered in the same session"
grep -q "Acknowledged $((2 * N + 1))," "$T/devsim.log" ||
    fail "want exactly $((2 * N + 1)) commands answered by the devices: $(grep "^answers" "$T/devsim.log")"
# both auditors hold the store's whole event log: seq 1..last, each once, in order
last=$(db "SELECT MAX(seq) FROM events")
for f in "$T/log/audit.jsonl" "$T/audit-c.jsonl"; do
    seqs() { sed -n 's/^{"seq":\([0-9]*\),.*/\1/p' "$f" 2>/dev/null; }
    for _ in $(seq 300); do [ "$(seqs | tail -n 1)" = "$last" ] && break; sleep 0.1; done
    seqs | diff -q - <(seq 1 "$last") >/dev/null ||
        fail "$f is not seq 1..$last: $(seqs | tr '\n' ' ' | head -c 300)"
done
kill -0 "$AUD_A" && kill -0 "$AUD_C" || fail "an auditor died"
grep -q '"name":"ca.issued"' "$T/audit-c.jsonl" || fail "no ca.issued in the audit file"
echo "ok   the audit unit's command on A and an auditor on C both hold seq 1..$last"
echo "PASS"
