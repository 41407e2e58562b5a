#!/bin/bash
# kill -9 the scheduler while 1,000 devices are in their sessions (5 commands
# each), start another: every session completes, no command is delivered twice
# within a session, every command is acknowledged exactly once (5,000), the
# results are stored once, and a second round of sessions gets nothing.
. "$(dirname "$0")/queue_lib.bash"
N=1000
start_all
drv enroll --n $N --window 128 >"$D/enroll.out" 2>"$D/enroll.log" || fail "enroll failed"
for c in 1 2 3 4 5; do
    drv enqueue --n $N --uuid "KS-$c" >"$D/enq$c.out" 2>"$D/enq$c.log" || fail "enqueue $c failed"
done
drv drain --n $N --window 20 --timeout-ms 1000 --retries 20 >"$D/drain.out" 2>"$D/drain.log" &
DRV=$!
PIDS+=($DRV)
# kill once the sessions are under way but not finished (~6,000 requests take >1 s)
sleep 0.3
[ -s "$D/drain.out" ] && fail "the sessions finished before the kill; the test proves nothing"
kill -9 "$SCHED_PID"
wait "$SCHED_PID" 2>/dev/null
echo "killed the scheduler"
start_sched
wait "$DRV" || fail "driver failed: $(grep FAIL "$D/drain.log" | head -5)"
[ "$(field failures "$D/drain.out")" = 0 ] || fail "failures in sessions"
[ "$(field acked "$D/drain.out")" = $((5 * N)) ] || fail "acked $(field acked "$D/drain.out") != $((5 * N))"
for c in 1 2 3 4 5; do
    drv results --uuid "KS-$c" >"$D/res$c.out" 2>"$D/res$c.log" || fail "results $c: $(cat "$D/res$c.log")"
    [ "$(field count "$D/res$c.out")" = $N ] || fail "KS-$c has $(field count "$D/res$c.out") results, not $N"
done
drv drain --n $N >"$D/drain2.out" 2>"$D/drain2.log" || fail "second drain failed"
[ "$(field acked "$D/drain2.out")" = 0 ] || fail "commands offered again in a new session"
echo "ok"
