#!/bin/bash
# Two workers of one service and a client: 1,000 requests through the broker
# are all answered once, and each worker got a substantial share.
. "$(dirname "$0")/broker_lib.bash"

start_broker broker
start_worker w1
start_worker w2
wait_log broker "registered for 'echo'" 2 20

timeout 60 "$TT/bustest" client --endpoint "$REQ" --count 1000 --inflight 32 >"$D/client.out" 2>"$D/client.log" \
    || { cat "$D/client.out"; fail "client did not get 1000 answers"; }
cat "$D/client.out"
[ "$(field answered "$D/client.out")" = 1000 ] || fail "answered != 1000"
[ "$(field failed "$D/client.out")" = 0 ] || fail "failures"
for w in w1 w2; do
    n=$(grep -oE "worker=$w count=[0-9]+" "$D/client.out" | cut -d= -f3)
    [ -n "$n" ] && [ "$n" -ge 250 ] || fail "worker $w answered only ${n:-0} of 1000 (want >= 250)"
done
echo "PASS: 1000 answered, spread over both workers"
