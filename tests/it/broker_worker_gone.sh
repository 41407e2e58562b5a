#!/bin/bash
# kill -9 an idle worker, then send requests at once: the broker finds it
# gone on the first send (no route: EHOSTUNREACH) and hands the request to
# the live worker, instead of queueing every request behind the dead one
# until it misses 3 heartbeats (3 s here). Unit test: broker_router's
# test_worker_gone.
. "$(dirname "$0")/broker_lib.bash"

start_broker broker
# w1 registers first: with both idle, ties go to it
"$TT/bustest" worker --endpoint "$REQ" --name w1 --heartbeat-ms 1000 >"$D/w1.log" 2>&1 &
W1=$!
PIDS+=("$W1")
wait_log broker "registered for 'echo'" 1 20
"$TT/bustest" worker --endpoint "$REQ" --name w2 --heartbeat-ms 1000 >"$D/w2.log" 2>&1 &
PIDS+=("$!")
wait_log broker "registered for 'echo'" 2 20
# the broker's connected sockets (ss -p; 0 where it cannot see them)
bconns() { ss -xpn 2>/dev/null | grep -c "pid=$BROKER,"; }
c0=$(bconns)
kill -9 "$W1"
wait "$W1" 2>/dev/null
# let the broker's I/O thread see the connection close (milliseconds; a
# request sent before that goes into the dying pipe and waits for the
# expiry, which this test would report as the bug): it has closed its end
# once its socket is gone (bounded); where ss cannot see it, 0.5 s
if [ "${c0:-0}" -gt 0 ]; then
    for _ in $(seq 1 200); do [ "$(bconns)" -lt "$c0" ] && break; sleep 0.05; done
    [ "$(bconns)" -lt "$c0" ] || fail "the broker kept the killed worker's connection for 10 s"
else
    sleep 0.5
fi

timeout 30 "$TT/bustest" client --endpoint "$REQ" --count 20 --inflight 1 --timeout-ms 10000 \
    --retries 0 >"$D/client.out" 2>"$D/client.log"
rc=$?
cat "$D/client.out"
[ $rc = 0 ] || fail "client exit $rc"
[ "$(field answered "$D/client.out")" = 20 ] || fail "answered != 20"
max=$(field max_us "$D/client.out")
[ -n "$max" ] && [ "$max" -lt 1000000 ] ||
    fail "the slowest request took ${max} us: it waited for the dead worker's heartbeats"
grep -q "removed (its connection is gone)" "$D/broker.log" ||
    fail "the broker did not remove the dead worker when a send to it failed"
echo "PASS: requests went to the live worker at once (slowest ${max} us) after the other was killed"
