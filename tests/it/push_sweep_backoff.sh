#!/bin/bash
# The wake sweep backs off per enrollment (docs/push.md "Sweep backoff"):
# a device that got a command and never connects is re-pushed by the sweep
# at growing intervals (sweep period, then 2x, 4x ... up to
# wake-backoff-max-s), not on every sweep; a new command starts it over; the
# backoff is derived from the store (last push vs last activity), so a
# scheduler and pusher restart does not bring a burst.
# broker + store + scheduler (sweep every 1 s, backoff cap 4 s) + pusher +
# the APNs stand-in; pushes are timed from the stand-in's delivery file.
. "$(dirname "$0")/push_lib.inc"
TT=${TT:-$ROOT/build/rel/tt}
for b in picomdm-broker picomdm-store picomdm-scheduler picomdm-pusher; do
    [ -x "$BIN/$b" ] || skip "bin/$b is not built (run make)"
done
[ -x "$TT/push_drv" ] && [ -x "$TT/queuedrv" ] || skip "build/rel/tt/{push_drv,queuedrv} are not built (run make)"
make_pki
REQ=ipc://$W/req PUB=ipc://$W/pub SUB=ipc://$W/sub
"$BIN/picomdm-broker" --request-endpoint "$REQ" --publish-endpoint "$PUB" \
    --subscribe-endpoint "$SUB" --run-dir "$W" > "$W/broker.log" 2>&1 &
PIDS+=($!)
"$BIN/picomdm-store" --data-dir "$W/data" --request-endpoint "$REQ" --publish-endpoint "$PUB" \
    > "$W/store.log" 2>&1 &
PIDS+=($!)
start_fapns fapns --accept-any --deliver-file "$W/delivered"
start_pusher() {
    "$PUSHER" --request-endpoint "$REQ" --apns "https://127.0.0.1:$FAPNS_PORT" --apns-ca "$W/ca.pem" \
        --push-cert "$W/push.pem" --log-level debug >> "$W/pusher.log" 2>&1 &
    PUSHER_PID=$!
    PIDS+=($!)
}
start_sched() {
    "$BIN/picomdm-scheduler" --request-endpoint "$REQ" --wake-sweep-s 1 --wake-backoff-max-s 4 \
        --silent-sweep-s 0 --delivered-timeout-s 0 >> "$W/sched.log" 2>&1 &
    SCHED_PID=$!
    PIDS+=($!)
}
start_pusher
start_sched
logs() { for f in store pusher sched fapns; do echo "--- $f"; tail -15 "$W/$f.log"; done; }
for _ in $(seq 300); do grep -q "serving 'push'" "$W/pusher.log" && break; sleep 0.1; done
timeout 60 "$TT/push_drv" --request-endpoint "$REQ" enroll --from 0 --n 2 --prefix dev --topic "$TOPIC" \
    > "$W/enroll.out" 2>&1 || { logs; fail "enroll: $(cat "$W/enroll.out")"; }
touch "$W/delivered"
T0=$(tok 0) T1=$(tok 1)
pushes() { grep -c "\"token\":\"$1\"" "$W/delivered"; }
# watch SECONDS: record the time (ms) of every push to dev0 into $W/at, for SECONDS
watch() {
    local end=$(($(date +%s%3N) + $1 * 1000)) seen now
    seen=$(pushes "$T0")
    while [ "$(date +%s%3N)" -lt $end ]; do
        now=$(pushes "$T0")
        while [ "$seen" -lt "$now" ]; do date +%s%3N >> "$W/at"; seen=$((seen + 1)); done
        sleep 0.05
    done
}
: > "$W/at"
# the recording starts before the enqueue: on a loaded machine the enqueue
# itself may take seconds, and the first pushes (1 s apart) come during it
watch 16 &
WATCHER=$!
timeout 30 "$TT/queuedrv" --request-endpoint "$REQ" enqueue --n 2 --prefix dev --no-push=false \
    > "$W/enq.out" 2>&1 || { logs; fail "enqueue: $(cat "$W/enq.out")"; }
wait "$WATCHER"
n=$(wc -l < "$W/at")
gaps=$(awk 'NR > 1 { printf "%d ", $1 - prev } { prev = $1 }' "$W/at")
echo "     dev0 pushed $n times in 16 s with a 1 s sweep; gaps (ms): $gaps"
[ "$n" -ge 3 ] || { logs; fail "only $n pushes: the sweep did not re-push"; }
[ "$n" -le 8 ] || { logs; fail "$n pushes in 16 s: no backoff (every sweep re-pushed)"; }
[ "$(pushes "$T1")" -ge 3 ] && [ "$(pushes "$T1")" -le 8 ] || fail "dev1 pushed $(pushes "$T1") times"
# the gaps grow to the cap: the last ones are near 4 s, the first near 1 s
# (without the cap the last would be 8 s: 0, 1, 3, 7, 15)
set -- $gaps
first=$1; last=${!#}
[ "$first" -lt 3100 ] || fail "first sweep re-push after $first ms, want 1-2 sweep periods"
[ "$last" -ge 3000 ] && [ "$last" -le 7000 ] || fail "last gap $last ms, want the 4 s cap"
echo "ok   never-connecting device: sweep pushes back off (first gap $first ms, last $last ms, cap 4 s)"
grep -q "sweep skipped, backing off" "$W/pusher.log" || fail "no backoff skip in the pusher log"

# restart the scheduler and the pusher: the backoff is derived from the store, no burst
kill "$SCHED_PID" "$PUSHER_PID"
wait "$SCHED_PID" "$PUSHER_PID" 2>/dev/null
before=$(pushes "$T0")
: > "$W/at"
start_pusher
start_sched
for _ in $(seq 300); do [ "$(grep -c "serving 'push'" "$W/pusher.log")" -ge 2 ] && break; sleep 0.1; done
watch 3
after=$(($(pushes "$T0") - before))
[ "$after" -le 1 ] || fail "$after pushes in 3 s after a restart: the backoff was reset (a storm)"
echo "ok   after a scheduler + pusher restart: $after push(es) in 3 s (backoff kept)"

# a new command starts the backoff over: pushed at once, then by the next
# sweep after 1 s (not after the 4 s cap): the gap between those two pushes
: > "$W/at"
watch 12 &
WATCHER=$!
timeout 30 "$TT/queuedrv" --request-endpoint "$REQ" enqueue --n 1 --prefix dev --no-push=false \
    > "$W/enq2.out" 2>&1 || { logs; fail "enqueue: $(cat "$W/enq2.out")"; }
wait "$WATCHER"
n=$(wc -l < "$W/at")
[ "$n" -ge 2 ] || { logs; fail "a new command: only $n push(es) in 12 s, want the push and sweep re-pushes"; }
gap=$(awk 'NR == 2 { print $1 - prev } { prev = $1 }' "$W/at")
[ "$gap" -lt 3500 ] || { logs; fail "a new command: the sweep re-pushed $gap ms after its push, want ~1 s (a reset backoff), not the 4 s cap"; }
echo "ok   a new command resets the backoff: re-pushed $gap ms after its push"
echo "PASS"
