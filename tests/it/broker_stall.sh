#!/bin/bash
# A worker that stalls (blocks its loop, e.g. a long commit) past 3 heartbeats
# is declared dead by the broker, which fails its request back (worker_lost)
# and the client resends. When the worker wakes, its late reply still reaches
# the client, it re-registers, and the resent copy is answered from its reply
# cache: the caller sees one answer and the handler ran exactly once.
. "$(dirname "$0")/broker_lib.bash"

start_broker broker
start_worker w1 --stall-ms 1500
WPID=$LAST_PID
wait_log broker "registered for 'echo'" 1 20
timeout 30 "$TT/bustest" client --endpoint "$REQ" --count 1 --inflight 1 --timeout-ms 5000 \
    --retries 2 >"$D/client.out" 2>"$D/client.log"
rc=$?
cat "$D/client.out"
[ $rc = 0 ] || fail "client exit $rc"
[ "$(field answered "$D/client.out")" = 1 ] || fail "not answered"
[ "$(field resends "$D/client.out")" -ge 1 ] || fail "no resend: the stall was not detected"
grep -q "requests* in flight failed back" "$D/broker.log" || fail "broker did not fail the request back"
# the late reply of the expired worker reached the client first, so the cached
# answer to the resend was the duplicate
[ "$(field duplicates "$D/client.out")" -ge 1 ] || fail "late reply from the expired worker was not forwarded"
wait_log broker "registered for 'echo'" 2 20
sleep 0.5
kill -TERM "$WPID"
for _ in $(seq 1 400); do grep -q "^worker w1" "$D/w1.log" && break; sleep 0.05; done
grep "^worker w1" "$D/w1.log"
[ "$(grep -oE "jobs=[0-9]+" "$D/w1.log" | cut -d= -f2)" = 1 ] || fail "handler ran more than once"
[ "$(grep -oE "retried=[0-9]+" "$D/w1.log" | cut -d= -f2)" -ge 1 ] || fail "the resent copy never reached the worker's cache"
echo "PASS: stalled worker: one answer, handler ran once, resend answered from the reply cache"
