#!/bin/bash
# wake_e2e — the whole wake loop through real processes: `picomdm up`
# (broker, store, scheduler, pusher, ca, gateway) with a push certificate made
# here (UID = the topic, issued by the CA the APNs stand-in trusts), the
# stand-in (accept-any, delivery datagrams to the simulator's socket) and
# picomdm-devsim --push-listen with devices enrolled under the same topic.
#   1. enqueue to one device -> push -> it connects, answers -> `picomdm
#      results` shows Acknowledged; the enqueue-to-result time is printed.
#   2. one enqueue to 50 devices: every one is woken and acknowledges.
#   3. pusher kill -9 right after an enqueue to 200 devices (answers held back
#      by a stand-in delay rule): `picomdm up` restarts it, the scheduler's
#      wake sweep (--wake-sweep-s 2) re-pushes whatever is still undelivered,
#      and all 200 acknowledge.
#   4. a 410 for one device's token marks it stale (`picomdm device` shows
#      Push false), no push goes to it; after its next TokenUpdate (devsim SIGHUP)
#      it is pushed and woken again.
. "$(dirname "$0")/push_lib.inc"
for b in picomdm picomdm-broker picomdm-store picomdm-scheduler picomdm-gateway picomdm-pusher \
    picomdm-devsim; do
    [ -x "$BIN/$b" ] || skip "bin/$b is not built (run make)"
done
N=200
UP_PID=
DS_PID=
wake_cleanup() {
    [ -n "$DS_PID" ] && kill "$DS_PID" 2>/dev/null
    if [ -n "$UP_PID" ]; then
        kill -TERM "$UP_PID" 2>/dev/null
        for _ in $(seq 80); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$UP_PID" 2>/dev/null
    fi
    for f in "$W"/var/run/*.pid; do [ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null; done
    cleanup
}
trap wake_cleanup EXIT
logs() {
    for f in up.log fapns.log ds.out ds.err; do echo "--- $f"; tail -n 15 "$W/$f" 2>/dev/null; done
    grep -h "E:\|W:" "$W"/var/log/*.log 2>/dev/null | tail -n 10
}
die() { logs; fail "$*"; }
now_ms() { date +%s%3N; }
uuid() { tr a-z A-Z </proc/sys/kernel/random/uuid; }
WAKE_ONE=$(uuid) WAKE_50=$(uuid) WAKE_KILL=$(uuid) WAKE_410=$(uuid) WAKE_410B=$(uuid)

make_pki
start_fapns fapns --accept-any --deliver-unix "$W/push.sock"
port=$(free_port) || fail "no free port"
# The pusher and scheduler options that `picomdm up` does not write to its
# config come from the environment (pm_cfg: config file < PICOMDM_* < argv).
env PICOMDM_APNS="https://127.0.0.1:$FAPNS_PORT" PICOMDM_APNS_CA="$W/ca.pem" \
    PICOMDM_WAKE_SWEEP_S=2 PICOMDM_BACKOFF_MS=100 \
    "$BIN/picomdm" up --data-dir "$W/var" --listen "127.0.0.1:$port" --push-cert "$W/push.pem" \
    --stop-timeout 3000 --max-backoff 1000 >"$W/up.log" 2>&1 &
UP_PID=$!
export PICOMDM_CONFIG=$W/var/run/picomdm.cfg
P=("$BIN/picomdm" --timeout 5000 --retries 1)
for _ in $(seq 200); do "${P[@]}" devices >/dev/null 2>&1 && break; sleep 0.1; done
"${P[@]}" devices >/dev/null 2>&1 || die "the scheduler does not answer"

"$BIN/picomdm-devsim" --url "https://127.0.0.1:$port" --ca-bundle "$W/var/pki/tls.crt" \
    --ca-cert "$W/var/pki/ca.crt" --ca-key "$W/var/pki/ca.key" --devices $N --concurrency 16 \
    --topic "$TOPIC" --seed 4242 --rounds 0 --timeout-ms 20000 --push-listen "$W/push.sock" \
    >"$W/ds.out" 2>"$W/ds.err" &
DS_PID=$!
PIDS+=("$DS_PID")
for _ in $(seq 600); do grep -q "push-listen .* ready" "$W/ds.out" && break; kill -0 "$DS_PID" || break; sleep 0.1; done
grep -q "push-listen .* ready" "$W/ds.out" || die "devsim did not enroll $N devices and listen"
grep -q "ready, $N of $N devices enrolled" "$W/ds.out" || die "not every device enrolled"
"${P[@]}" devices --json --limit 1000 2>/dev/null | sed -n 's/.*"eid":"\([^"]*\)".*/\1/p' >"$W/eids" ||
    "${P[@]}" devices --json | sed -n 's/.*"eid":"\([^"]*\)".*/\1/p' >"$W/eids"
[ "$(wc -l <"$W/eids")" = $N ] || die "store lists $(wc -l <"$W/eids") enrollments, want $N"
echo "ok   $N simulated devices enrolled with topic $TOPIC, listening for pushes"

# acked UUID: how many targets of CommandUUID answered Acknowledged
acked() { "${P[@]}" results "$1" --limit 10000 --json 2>/dev/null | grep -c '"Acknowledged"'; }
# wait_acked UUID COUNT SECONDS
wait_acked() {
    local end=$(($(now_ms) + $3 * 1000))
    while [ "$(now_ms)" -lt $end ]; do [ "$(acked "$1")" -ge "$2" ] && return 0; sleep 0.05; done
    return 1
}

# --- 1. one device
e1=$(head -1 "$W/eids")
t0=$(now_ms)
"${P[@]}" enqueue DeviceInformation --to "$e1" --set Queries=OSVersion --uuid "$WAKE_ONE" >/dev/null ||
    die "enqueue to $e1"
wait_acked "$WAKE_ONE" 1 20 || die "device $e1 was not woken / did not acknowledge"
t1=$(now_ms)
"${P[@]}" results "$e1" >"$W/r1" || die "picomdm results $e1"
grep -q "Acknowledged" "$W/r1" && grep -q "OSVersion" "$W/r1" || { cat "$W/r1"; die "result lacks OSVersion"; }
echo "ok   enqueue -> push -> wake -> fetch -> Acknowledged for one device in $((t1 - t0)) ms"

# --- 2. one enqueue to 50 devices
head -50 "$W/eids" | paste -sd, >"$W/to50"
t0=$(now_ms)
"${P[@]}" enqueue DeviceInformation --to "$(cat "$W/to50")" --set Queries=OSVersion --uuid "$WAKE_50" \
    >/dev/null || die "enqueue to 50"
wait_acked "$WAKE_50" 50 40 || die "only $(acked "$WAKE_50") of 50 devices acknowledged"
t1=$(now_ms)
echo "ok   one enqueue to 50 devices: all 50 woken and Acknowledged in $((t1 - t0)) ms"

# --- 3. pusher kill -9 mid-burst; the wake sweep re-pushes
pusher_pid=$(cat "$W/var/run/pusher.pid" 2>/dev/null)
[ -n "$pusher_pid" ] && kill -0 "$pusher_pid" || die "no pusher pid"
# hold every answer back 1.5 s, so pushes are in flight when the pusher dies
ctl POST /rules "* delay delay=1500" >/dev/null || die "cannot set the delay rule"
del0=$(apns_stat delivered)
paste -sd, "$W/eids" >"$W/toall"
t0=$(now_ms)
"${P[@]}" enqueue DeviceInformation --to "$(cat "$W/toall")" --set Queries=OSVersion --uuid "$WAKE_KILL" \
    >/dev/null || die "enqueue to $N"
for _ in $(seq 100); do [ "$(apns_stat requests)" -gt "$(apns_stat delivered)" ] && break; sleep 0.02; done
kill -9 "$pusher_pid" || die "kill -9 pusher"
sleep 0.3
# count before the delay rule goes: the restarted pusher's sweep re-pushes are
# still held back by it, so only answers of the killed pusher could count here
lost=$(( N - ($(apns_stat delivered) - del0) ))
ctl DELETE /rules >/dev/null
wait_acked "$WAKE_KILL" $N 50 || die "only $(acked "$WAKE_KILL") of $N acknowledged after the pusher restart"
t1=$(now_ms)
new_pid=$(cat "$W/var/run/pusher.pid" 2>/dev/null)
[ -n "$new_pid" ] && [ "$new_pid" != "$pusher_pid" ] || die "the pusher was not restarted"
[ "$lost" -gt 0 ] || die "the kill lost no push: the test did not exercise the sweep"
echo "ok   pusher kill -9 mid-burst ($lost of $N pushes undelivered): restarted, sweep re-pushed, all $N Acknowledged in $((t1 - t0)) ms"

# --- 4. 410 -> stale; no pushes until the next TokenUpdate
e4=$(sed -n 7p "$W/eids")
# the rule below takes the next push to any token: first let stragglers of
# step 3 (the sweep's re-pushes still answered by the stand-in) drain, so it
# is e4's push that gets the 410
for _ in $(seq 20); do
    r1=$(apns_stat requests); sleep 0.5; [ "$(apns_stat requests)" = "$r1" ] && break
done
ctl POST /rules "* 410 count=1" >/dev/null || die "cannot set the 410 rule"
"${P[@]}" enqueue DeviceInformation --to "$e4" --set Queries=OSVersion --uuid "$WAKE_410" >/dev/null ||
    die "enqueue to $e4"
for _ in $(seq 100); do "${P[@]}" device "$e4" | grep -q "^Push  *false" && break; sleep 0.1; done
"${P[@]}" device "$e4" >"$W/d4" || die "picomdm device $e4"
grep -q "^Push  *false" "$W/d4" || { cat "$W/d4"; die "410 did not mark $e4 stale"; }
[ "$(acked "$WAKE_410")" = 0 ] || die "the device was woken although APNs answered 410"
req0=$(apns_stat requests)
"${P[@]}" enqueue DeviceInformation --to "$e4" --set Queries=OSVersion --uuid "$WAKE_410B" >/dev/null ||
    die "second enqueue to $e4"
sleep 2.5 # one wake and one sweep (2 s) would each have pushed by now
[ "$(apns_stat requests)" = "$req0" ] || die "a push went to the stale token"
echo "ok   410 marks $e4 stale (picomdm device: Push false); no push to it afterwards"
kill -HUP "$DS_PID" # every device re-sends TokenUpdate
for _ in $(seq 100); do "${P[@]}" device "$e4" | grep -q "^Push  *true" && break; sleep 0.1; done
grep -q "^Push  *true" <("${P[@]}" device "$e4") || die "TokenUpdate did not clear the stale mark"
wait_acked "$WAKE_410B" 1 20 || die "$e4 not woken after its TokenUpdate"
wait_acked "$WAKE_410" 1 20 || die "$e4 did not get the first command after its TokenUpdate"
echo "ok   after the device's next TokenUpdate it is pushed and woken again"

kill "$DS_PID"
for _ in $(seq 50); do kill -0 "$DS_PID" 2>/dev/null || break; sleep 0.1; done
DS_PID=
cat "$W/ds.out" | grep -E "^(wake|pushes|answers)"
grep -q "same-session violations 0" "$W/ds.out" || die "devsim saw NotNow violations"
grep -E "^pushes .* ignored 0" "$W/ds.out" >/dev/null || die "devsim ignored pushes (wrong PushMagic/topic?)"
echo "PASS"
