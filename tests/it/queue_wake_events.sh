#!/bin/bash
# Wakeups without a pusher are never an operator error: an enqueue that asks
# for pushes is answered at once, its targets are marked wake_pending, and a
# device's next connection clears its mark. The event log replayed from the
# store is gapless and holds exactly the decisions made.
. "$(dirname "$0")/queue_lib.bash"
N=5
start_all
drv enroll --n $N >"$D/enroll.out" 2>"$D/enroll.log" || fail "enroll failed"
drv devices >"$D/dev0.out" 2>"$D/dev0.log" || fail "devices failed"
[ "$(field pushable "$D/dev0.out")" = $N ] || fail "TokenUpdate did not make the devices pushable"
[ "$(field wake_pending "$D/dev0.out")" = 0 ] || fail "wake marks before any enqueue"
drv enqueue --n $N --uuid WAKE-1 --no-push=false >"$D/enq.out" 2>"$D/enq.log" || fail "enqueue with push (no pusher running) failed: $(cat "$D/enq.log")"
[ "$(field queued "$D/enq.out")" = $N ] || fail "queued != $N"
# waiting for the missing pusher would take the broker's request-wait-ms (5 s)
[ "$(field ms "$D/enq.out")" -lt 4500 ] || fail "enqueue waited for the missing pusher ($(field ms "$D/enq.out") ms)"
drv devices >"$D/dev1.out" 2>"$D/dev1.log" || fail "devices failed"
[ "$(field wake_pending "$D/dev1.out")" = $N ] || fail "targets not marked for a wakeup"
drv sessions --n 2 --uuid WAKE-1 >"$D/sess.out" 2>"$D/sess.log" || fail "sessions failed"
drv devices >"$D/dev2.out" 2>"$D/dev2.log" || fail "devices failed"
[ "$(field wake_pending "$D/dev2.out")" = $((N - 2)) ] || fail "connecting did not clear the wake marks"
grep -q "^E:" "$D/sched.log" && fail "the scheduler logged errors"
drv events >"$D/ev.out" 2>"$D/ev.log" || fail "event replay: $(grep FAIL "$D/ev.log" | head -3)"
[ "$(field checkin.Authenticate "$D/ev.out")" = $N ] || fail "checkin.Authenticate events"
[ "$(field checkin.TokenUpdate "$D/ev.out")" = $N ] || fail "checkin.TokenUpdate events"
[ "$(field command.queued "$D/ev.out")" = 1 ] || fail "command.queued events"
[ "$(field command.delivered "$D/ev.out")" = 2 ] || fail "command.delivered events"
[ "$(field command.result "$D/ev.out")" = 2 ] || fail "command.result events"
[ "$(field events "$D/ev.out")" = $((2 * N + 5)) ] || fail "events total $(field events "$D/ev.out")"
echo "ok"
