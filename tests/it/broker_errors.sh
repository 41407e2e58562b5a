#!/bin/bash
# The broker's own `error` replies: a request for a service nobody serves is
# answered no_service after request-wait-ms (naming the service and what to
# start); a service whose workers are all busy queues a bounded number of
# requests and answers the rest busy.
. "$(dirname "$0")/broker_lib.bash"

start_broker broker --request-wait-ms 300 --max-queue 5

# 1. nobody serves 'ghost'
t0=$(date +%s%N)
timeout 30 "$TT/bustest" client --endpoint "$REQ" --service ghost --count 3 --inflight 3 \
    --timeout-ms 5000 --retries 0 >"$D/ghost.out" 2>"$D/ghost.log"
[ $? = 1 ] || fail "requests to a missing service did not fail"
ms=$((($(date +%s%N) - t0) / 1000000))
cat "$D/ghost.out"
grep -q "^error=no_service count=3" "$D/ghost.out" || fail "want 3 no_service replies"
grep -q "no worker of service 'ghost' registered with the broker within 300 ms: start picomdm-ghost" \
    "$D/ghost.out" || fail "no_service message does not say what to start"
[ "$ms" -lt 4000 ] || fail "no_service took $ms ms (request-wait-ms is 300, client timeout 5000)"

# 2. one worker, capacity 1, replies after 3 s: 1 in flight + 5 queued, 4 refused busy
#    at once, the 5 queued answered busy after request-wait-ms
start_worker w1 --capacity 1 --delay-ms 3000
wait_log broker "registered for 'echo'" 1 20
timeout 30 "$TT/bustest" client --endpoint "$REQ" --count 10 --inflight 10 --timeout-ms 5000 \
    --retries 0 >"$D/busy.out" 2>"$D/busy.log"
cat "$D/busy.out"
[ "$(field answered "$D/busy.out")" = 1 ] || fail "want exactly the 1 in-flight request answered"
grep -q "^error=busy count=9" "$D/busy.out" || fail "want 9 busy replies (4 over the queue bound, 5 expired)"
grep -q "retry later" "$D/busy.out" || fail "busy message does not say what to do"
echo "PASS: no_service and busy answered by the broker with clear messages"
