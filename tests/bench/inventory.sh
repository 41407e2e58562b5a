#!/bin/bash
# inventory bench — N devices (default 10000) each answer
# InstalledApplicationList with A apps (default 200) through the real broker,
# scheduler and store (`picomdm up`, synchronous=full, group commit). Driven
# with the queuedrv bus driver (lighter than devsim: no TLS, no plist; the
# store path — result, inventory rows, inventory.changed — is the same).
# Prints: ingest rate, store size, and the time of `picomdm devices`
# filtered queries over the fleet (target < 1 s each) with the rows each
# matched (the devices report a model and an OS at Authenticate, so --model
# and --os find N/4 and N/3 of them).
set -u
ROOT=${PICOMDM_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${BIN:-$ROOT/bin}; TT=${TT:-$ROOT/build/rel/tt}
N=${INV_BENCH_DEVICES:-10000}; A=${INV_BENCH_APPS:-200}; W=${INV_BENCH_WINDOW:-64}
T=$(mktemp -d /tmp/inventory_bench.XXXXXX); UP_PID=
cleanup() {
    [ -n "$UP_PID" ] && kill -TERM "$UP_PID" 2>/dev/null && sleep 1 && kill -KILL "$UP_PID" 2>/dev/null
    for f in "$T"/var/run/*.pid; do [ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT
[ -x "$BIN/picomdm" ] && [ -x "$TT/queuedrv" ] || { echo "build first (make)"; exit 1; }
for _ in $(seq 50); do
    port=$((20000 + RANDOM % 12000)); ss -ltn | grep -q ":$port\b" || break
done
"$BIN/picomdm" up --data-dir "$T/var" --listen "127.0.0.1:$port" --stop-timeout 5000 >"$T/up.log" 2>&1 &
UP_PID=$!
export PICOMDM_CONFIG=$T/var/run/picomdm.cfg
P=("$BIN/picomdm" --timeout 10000 --retries 0)
for _ in $(seq 100); do "${P[@]}" devices >/dev/null 2>&1 && break; sleep 0.2; done
EP="ipc://$T/var/run/request.sock"
Q=("$TT/queuedrv" --request-endpoint "$EP" --n "$N" --window "$W" --timeout-ms 30000 --log-level warn)
ms() { date +%s%3N; }
echo "load:    $(cut -d" " -f1-3 /proc/loadavg) (1, 5, 15 min)"
echo "inventory bench: $N devices x InstalledApplicationList with $A apps (queuedrv over the bus; store synchronous=full)"
t0=$(ms); "${Q[@]}" enroll >"$T/enroll.out" || { cat "$T/enroll.out"; exit 1; }
echo "enroll:  $N enrollments in $(( $(ms) - t0 )) ms"
"${Q[@]}" enqueue --apps "$A" >"$T/enq.out" || { cat "$T/enq.out"; exit 1; }
uuid=$(sed -n 's/^uuid=//p' "$T/enq.out")
[ -n "$uuid" ] || { cat "$T/enq.out"; exit 1; }
sz0=$(du -sk "$T/var" --exclude=run | cut -f1)
t0=$(ms); "${Q[@]}" sessions --uuid "$uuid" --apps "$A" >"$T/sess.out" || { cat "$T/sess.out"; exit 1; }
dt=$(( $(ms) - t0 ))
grep -q "^failures=0" "$T/sess.out" || { cat "$T/sess.out"; exit 1; }
echo "ingest:  $N answers ($((N * A)) apps) in $dt ms = $(( N * 1000 / (dt > 0 ? dt : 1) )) answers/s, $(( N * A * 1000 / (dt > 0 ? dt : 1) )) apps/s"
sleep 1
sz1=$(du -sk "$T/var" --exclude=run | cut -f1)
echo "store:   $(( (sz1 - sz0) / 1024 )) MiB added ($(( (sz1 - sz0) * 1024 / N )) bytes/device); data dir $(( sz1 / 1024 )) MiB"
rows=$(python3 -c "import sqlite3; c=sqlite3.connect('file:$T/var/picomdm.db?mode=ro', uri=True); print(c.execute(\"select count(*) from inventory where key='InstalledApplicationList'\").fetchone()[0])")
echo "rows:    $rows InstalledApplicationList inventory rows"
[ "$rows" -eq "$N" ] || { echo "FAIL: expected $N inventory rows"; exit 1; }
# q WANT ARGS...: time one filtered query; WANT = rows it must match ("-": not checked)
q() {
    local want=$1 t0 n dt; shift
    t0=$(ms); n=$("${P[@]}" devices "$@" 2>/dev/null | tail -n +2 | wc -l); dt=$(( $(ms) - t0 ))
    echo "query:   devices $* -> $n rows matched in $dt ms"
    [ "$want" = - ] || [ "$n" -eq "$want" ] || { echo "FAIL: expected $want rows"; exit 1; }
}
# queuedrv's Authenticate: device i reports model i % 4 (iPhone15,2 first) and OS i % 3
# (17.5.1 first); the list is capped by --limit (default 1000 in the store)
lim=$((N + 1))
sleep 1
q - --silent-for 1s --limit 1000
q - --silent-for 1s --limit 1000 --after dev-5000
q $(( (N + 3) / 4 )) --model iPhone15,2 --limit $lim
q $(( (N + 2) / 3 )) --os 17.5.1 --limit $lim
q $(( (N + 11) / 12 )) --model iPhone15,2 --os 17.5.1 --limit $lim
# then every device answers a DeviceInformation (OSVersion in QueryResponses),
# so --query matches inventory rows
"${Q[@]}" enqueue >"$T/enq2.out" || { cat "$T/enq2.out"; exit 1; }
uuid2=$(sed -n 's/^uuid=//p' "$T/enq2.out")
t0=$(ms); "${Q[@]}" sessions --uuid "$uuid2" --query-responses >"$T/sess2.out" || { cat "$T/sess2.out"; exit 1; }
grep -q "^failures=0" "$T/sess2.out" || { cat "$T/sess2.out"; exit 1; }
echo "ingest:  $N DeviceInformation answers in $(( $(ms) - t0 )) ms"
sleep 1
q $(( (N + 2) / 3 )) --query OSVersion=17.5.1 --limit $lim
q 0 --query OSVersion=99.0 --limit $lim
t0=$(ms); "${P[@]}" doctor >/dev/null; echo "doctor:  fleet summary over $N enrollments in $(( $(ms) - t0 )) ms"
