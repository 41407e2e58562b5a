#!/bin/bash
# kill -9 the store in the middle of 10,000 enqueues, restart it: the
# clients' retries (same request id) complete every enqueue, and afterwards
# every enqueue that got a reply is in the queue exactly once — 10,000
# entries, no duplicates from retries that crossed the crash.
. "$(dirname "$0")/queue_lib.bash"
COUNT=10000
start_all
drv enroll --n 1 >"$D/enroll.out" 2>"$D/enroll.log" || fail "enroll failed"
drv enqueue-many --count $COUNT --eid dev-0 --log "$D/enq.txt" --window 32 \
    --timeout-ms 1000 --retries 30 >"$D/many.out" 2>"$D/many.log" &
DRV=$!
PIDS+=($DRV)
for ((i = 0; i < 300; i++)); do
    [ "$(cat "$D/enq.txt" 2>/dev/null | wc -l)" -ge 2000 ] && break
    sleep 0.1
done
before=$(wc -l <"$D/enq.txt")
[ "$before" -ge 2000 ] || fail "only $before enqueues answered after 30 s"
[ "$before" -lt $COUNT ] || fail "all enqueues finished before the kill; the test proves nothing"
kill -9 "$STORE_PID"
wait "$STORE_PID" 2>/dev/null
echo "killed the store after $before replies"
sleep 0.3
start_store
burst_all_present
grep -q "at schema version" "$D/store.log" || fail "store did not log its schema version"
echo "ok: $COUNT enqueues, store killed after $before, all present exactly once"
