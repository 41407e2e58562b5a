#!/bin/bash
# One command fanned out to 1,000 enrollments through broker, scheduler and
# store: every enrollment receives it exactly once at Idle, acknowledges,
# gets an empty reply; a replayed Acknowledged changes nothing; the results
# are stored once per enrollment; a second round of sessions gets nothing.
# Two schedulers serve at once (the broker spreads the sessions over both):
# all decisions are store transactions, so nothing is delivered twice.
. "$(dirname "$0")/queue_lib.bash"
N=1000
start_all
"$BIN/picomdm-scheduler" --request-endpoint "$REQ" --delivered-timeout-s 0 --wake-sweep-s 0 \
    >"$D/sched2.log" 2>&1 &
SCHED2_PID=$!
PIDS+=($SCHED2_PID)
wait_log sched2 "serving 'scheduler'" 1 10
drv enroll --n $N --window 128 >"$D/enroll.out" 2>"$D/enroll.log" || fail "enroll failed"
[ "$(field enrolled "$D/enroll.out")" = $N ] || fail "enrolled != $N"
drv enqueue --n $N --uuid FANOUT-1 >"$D/enq.out" 2>"$D/enq.log" || fail "enqueue failed"
[ "$(field queued "$D/enq.out")" = $N ] || fail "queued != $N"
echo "enqueue to $N: $(field ms "$D/enq.out") ms"
drv sessions --n $N --uuid FANOUT-1 --replay --window 100 >"$D/sess.out" 2>"$D/sess.log" \
    || fail "sessions: $(grep FAIL "$D/sess.log" | head -3)"
[ "$(field failures "$D/sess.out")" = 0 ] || fail "session failures"
[ "$(field ops "$D/sess.out")" = $((3 * N)) ] || fail "ops != 3N"
echo "sessions: $(field per_s "$D/sess.out") connects/s"
drv results --uuid FANOUT-1 >"$D/res.out" 2>"$D/res.log" || fail "results: $(cat "$D/res.log")"
[ "$(field count "$D/res.out")" = $N ] || fail "results count $(field count "$D/res.out") != $N"
drv drain --n $N >"$D/drain.out" 2>"$D/drain.log" || fail "drain failed"
[ "$(field acked "$D/drain.out")" = 0 ] || fail "a second session was offered commands again"
# an unknown target makes the whole enqueue fail with a useful message
drv enqueue --n 3 --prefix nobody- >"$D/bad.out" 2>"$D/bad.log" && fail "enqueue to unknown ids succeeded"
grep -q "unknown enrollment ids: nobody-0, nobody-1, nobody-2" "$D/bad.log" || fail "no clear unknown-ids message"
grep -q "picomdm devices" "$D/bad.log" || fail "unknown-ids message does not say what to do"
# both schedulers took part
kill -TERM "$SCHED_PID" "$SCHED2_PID"
wait_log sched "stopping after" 1 10
wait_log sched2 "stopping after" 1 10
for l in sched sched2; do
    n=$(sed -n 's/.*stopping after \([0-9]*\) requests.*/\1/p' "$D/$l.log")
    [ "${n:-0}" -gt 100 ] || fail "scheduler $l handled only ${n:-0} requests; the test did not run two"
done
echo "ok"
