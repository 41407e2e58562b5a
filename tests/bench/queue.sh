#!/bin/bash
# Command queue benchmark through the real bus (broker, store, scheduler,
# tests/tools/queuedrv): enrollments/s, one command fanned out to FAN
# enrollments, enqueue/s, next-command-plus-result/s from many concurrent
# sessions, store RSS — with group commit, then without. synchronous=FULL.
#   FAN=100000 SESS=5000 ENQ=20000 tests/bench/queue.sh
set -u
cd "$(dirname "$0")/../.."
BIN=${BIN:-$PWD/bin}
TT=${TT:-$PWD/build/rel/tt}
FAN=${FAN:-100000}
SESS=${SESS:-5000}
ENQ=${ENQ:-20000}
[ -x "$BIN/picomdm-broker" ] && [ -x "$TT/queuedrv" ] || { echo "queue bench: build first (make)"; exit 0; }
D=$(mktemp -d /tmp/queue_bench.XXXXXX)
REQ=ipc://$D/req
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; [ -n "${KEEP:-}" ] && echo "kept $D" || rm -rf "$D"' EXIT
f() { sed -n "s/^$1=//p" "$2" | tail -n 1; }
drv() { timeout 600 "$TT/queuedrv" --request-endpoint "$REQ" "$@"; }
rss() { echo $(($(ps -o rss= -p "$1") / 1024)); }
# CPU ticks (1/100 s) a process has used: figures below also give CPU per
# operation, which stays meaningful when the machine is shared
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
snap() { C0=$(($(cpu $BROKER) + $(cpu $SCHED) + $(cpu $STORE))); S0=$(cpu $STORE); }
# cpu_per OPS: "CPU µs/op: all N (store M)" since the last snap
cpu_per() {
    local all=$(($(cpu $BROKER) + $(cpu $SCHED) + $(cpu $STORE) - C0)) st=$(($(cpu $STORE) - S0))
    echo "CPU/op: broker+scheduler+store $((all * 10000 / $1)) µs, store $((st * 10000 / $1)) µs"
}

"$BIN/picomdm-broker" --request-endpoint "$REQ" --publish-endpoint "ipc://$D/pub" \
    --subscribe-endpoint "ipc://$D/sub" --run-dir "$D" >"$D/broker.log" 2>&1 &
BROKER=$!
PIDS+=($!)
"$BIN/picomdm-scheduler" --request-endpoint "$REQ" --delivered-timeout-s 0 --wake-sweep-s 0 \
    >"$D/sched.log" 2>&1 &
SCHED=$!
PIDS+=($!)
start_store() {
    "$BIN/picomdm-store" --data-dir "$D/data" --request-endpoint "$REQ" \
        --publish-endpoint "ipc://$D/pub" "$@" >>"$D/store.log" 2>&1 &
    STORE=$!
    PIDS+=($STORE)
    sleep 0.5
}
round() { # label
    snap
    drv enqueue-many --count "$ENQ" --eid "dev-$((FAN - 1))" --log "$D/enq.txt" --window 128 >"$D/m.out" 2>&1
    printf "%-18s enqueue (1 target):   %7s /s   (%s enqueues, 128 in flight)\n" "$1" \
        "$(f per_s "$D/m.out")" "$ENQ"
    echo "                   $(cpu_per "$ENQ")"
    for c in 1 2 3 4; do drv enqueue --n "$SESS" >/dev/null 2>&1; done
    snap
    drv drain --n "$SESS" --window 256 >"$D/d.out" 2>&1
    printf "%-18s next-command+result: %7s /s   (%s sessions x 4+ commands, 256 in flight, failures=%s)\n" \
        "$1" "$(f per_s "$D/d.out")" "$SESS" "$(f failures "$D/d.out")"
    echo "                   $(cpu_per "$(f ops "$D/d.out")")"
}

start_store
drv enroll --n "$FAN" --window 256 >"$D/e.out" 2>&1
echo "enrollments:       $(f enrolled "$D/e.out") in $(f ms "$D/e.out") ms ($(f per_s "$D/e.out") check-ins/s)"
snap
drv enqueue --n "$FAN" --uuid FANOUT >"$D/fan.out" 2>&1
echo "fan-out:           1 command to $(f queued "$D/fan.out") enrollments in $(f ms "$D/fan.out") ms (target < 2000 ms)"
echo "                   CPU: store $((($(cpu $STORE) - S0) * 10)) ms, all $((($(cpu $BROKER) + $(cpu $SCHED) + $(cpu $STORE) - C0) * 10)) ms; load average $(cut -d' ' -f1 /proc/loadavg)"
echo "store RSS:         $(rss $STORE) MB with $FAN enrollments (target < 100 MB)"
round "group commit"
echo "store RSS:         $(rss $STORE) MB"
kill "$STORE"; wait "$STORE" 2>/dev/null
start_store --group-commit=false
round "no group commit"
echo "database size:     $(du -sh "$D/data" | cut -f1)"
