#!/bin/bash
# kill -9 one of two workers while requests are in flight: every request is
# still answered exactly once from the client's view (the broker fails the
# dead worker's requests back as worker_lost, the client resends them).
. "$(dirname "$0")/broker_lib.bash"

start_broker broker
start_worker w1 --delay-ms 50
W1=$LAST_PID
start_worker w2 --delay-ms 50
wait_log broker "registered for 'echo'" 2 20

timeout 60 "$TT/bustest" client --endpoint "$REQ" --count 1000 --inflight 32 \
    --timeout-ms 3000 --retries 5 >"$D/client.out" 2>"$D/client.log" &
C=$!
PIDS+=("$C")
sleep 0.5
kill -9 "$W1"
wait "$C"
rc=$?
cat "$D/client.out"
[ $rc = 0 ] || fail "client exit $rc"
[ "$(field answered "$D/client.out")" = 1000 ] || fail "answered != 1000"
[ "$(field failed "$D/client.out")" = 0 ] || fail "failures"
[ "$(field double "$D/client.out")" = 0 ] || fail "a request completed twice"
[ "$(field resends "$D/client.out")" -gt 0 ] || fail "no resends: the kill did not hit in-flight requests"
grep -qE "removed \(missed 3 heartbeats\); [1-9][0-9]* requests? in flight failed back" "$D/broker.log" \
    || fail "broker did not fail the dead worker's in-flight requests back"
echo "PASS: 1000 answered exactly once across a worker kill -9 (resends $(field resends "$D/client.out"), duplicates suppressed $(field duplicates "$D/client.out"))"
