#!/bin/bash
# kill -9 the broker in the middle of a run and start it again on the same
# endpoints (tcp on loopback this time): workers re-register and the client's
# retries complete the run by themselves.
. "$(dirname "$0")/broker_lib.bash"
PORT=$(free_port)
REQ=tcp://127.0.0.1:$PORT

start_broker broker1
start_worker w1 --delay-ms 20
start_worker w2 --delay-ms 20
wait_log broker1 "registered for 'echo'" 2 20

timeout 60 "$TT/bustest" client --endpoint "$REQ" --count 2000 --inflight 32 \
    --timeout-ms 1000 --retries 10 >"$D/client.out" 2>"$D/client.log" &
C=$!
PIDS+=("$C")
sleep 0.5
kill -9 "$BROKER"
sleep 1.0   # longer than 3 heartbeats (600 ms): workers see a silent broker
start_broker broker2
wait_log broker2 "registered for 'echo'" 2 10
wait "$C"
rc=$?
cat "$D/client.out"
[ $rc = 0 ] || fail "client exit $rc"
[ "$(field answered "$D/client.out")" = 2000 ] || fail "answered != 2000"
[ "$(field failed "$D/client.out")" = 0 ] || fail "failures"
n2=$(grep -c "registered for 'echo'" "$D/broker2.log")
[ "$n2" -ge 2 ] || fail "workers did not re-register with the new broker"
echo "PASS: 2000 answered across a broker kill -9 + restart (resends $(field resends "$D/client.out"))"
