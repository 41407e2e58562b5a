# Shared by tests/it/queue_*.sh: a private temp dir with ipc:// endpoints
# (no TCP ports, so parallel runs never collide), process start helpers that
# log into it, bounded waits, and a trap that kills everything we started.
set -u
[ -x "$BIN/picomdm-broker" ] || { echo "picomdm-broker is not built (the bus has not landed?)"; exit 77; }
D=$(mktemp -d /tmp/queue_it.XXXXXX)
REQ=ipc://$D/req
PUB=ipc://$D/pub
SUB=ipc://$D/sub
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    wait 2>/dev/null
    [ -n "${KEEP:-}" ] || rm -rf "$D"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*"
    for f in "$D"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 20 "$f"; }; done
    exit 1
}
start_broker() {
    "$BIN/picomdm-broker" --request-endpoint "$REQ" --publish-endpoint "$PUB" \
        --subscribe-endpoint "$SUB" --run-dir "$D" >>"$D/broker.log" 2>&1 &
    BROKER_PID=$!; PIDS+=($!)
}
start_store() {
    "$BIN/picomdm-store" --data-dir "$D/data" --request-endpoint "$REQ" \
        --publish-endpoint "$PUB" "$@" >>"$D/store.log" 2>&1 &
    STORE_PID=$!; PIDS+=($!)
}
start_sched() {
    "$BIN/picomdm-scheduler" --request-endpoint "$REQ" --delivered-timeout-s 0 \
        --wake-sweep-s 0 "$@" >>"$D/sched.log" 2>&1 &
    SCHED_PID=$!; PIDS+=($!)
}
# wait_log FILE PATTERN COUNT SECONDS: until PATTERN appears COUNT times in $D/FILE.log
wait_log() {
    local i
    for ((i = 0; i < $4 * 10; i++)); do
        [ "$(grep -c -- "$2" "$D/$1.log" 2>/dev/null)" -ge "$3" ] && return 0
        sleep 0.1
    done
    fail "timed out waiting for '$2' in $1.log"
}
# field NAME FILE: the value of a name=value line
field() { sed -n "s/^$1=//p" "$2" | tail -n 1; }
drv() { timeout 120 "$TT/queuedrv" --request-endpoint "$REQ" "$@"; }
# burst_all_present: after a crash during a burst of $COUNT enqueues for
# dev-0 (driver $DRV, its log $D/enq.txt): the driver got $COUNT replies and
# every replied enqueue is in the queue exactly once
burst_all_present() {
    wait "$DRV" || fail "driver failed: $(grep FAIL "$D/many.log" | head -3)"
    [ "$(field replied "$D/many.out")" = $COUNT ] || fail "replied $(field replied "$D/many.out") != $COUNT"
    drv verify-enqueues --eid dev-0 --log "$D/enq.txt" >"$D/verify.out" 2>"$D/verify.log" \
        || fail "verify: $(grep FAIL "$D/verify.log" | head -5)"
    [ "$(field missing "$D/verify.out")" = 0 ] || fail "replied enqueues missing after the crash"
    [ "$(field queue_entries "$D/verify.out")" = $COUNT ] \
        || fail "queue has $(field queue_entries "$D/verify.out") entries, expected exactly $COUNT"
}
start_all() {
    start_broker
    start_store "${STORE_ARGS[@]}"
    start_sched "${SCHED_ARGS[@]}"
    wait_log store "serving 'store'" 1 30
    wait_log sched "serving 'scheduler'" 1 30
}
STORE_ARGS=()
SCHED_ARGS=()
