#!/bin/bash
# APNs push throughput against the stand-in (bin/picomdm-fake-apns, accept-any):
# N wakes (distinct enrollments) fed to `picomdm-pusher --stdin`, through one
# HTTP/2 connection and through the pool, with libcurl (the default
# transport) and with the opt-in own HTTP/2 client (--transport h2). Prints pushes/s (first wake to last
# outcome, measured inside the pusher), wall time, and CPU of both processes.
#   PUSH_BENCH_N=10000 PUSH_BENCH_POOL=4 tests/bench/push.sh
. "$(dirname "$0")/../it/push_lib.inc"
[ -x "$PUSHER" ] || { echo "bin/picomdm-pusher is not built (run make)"; exit 1; }
N=${PUSH_BENCH_N:-10000}
POOL=${PUSH_BENCH_POOL:-4}
make_pki
start_fapns bench --accept-any --max-streams 1000
awk -v n="$N" 'BEGIN { for (i = 1; i <= n; i++) printf "wake bench-%d %064x magic-%d\n", i, i, i }' > "$W/in"
run() { # label connections streams [pusher options]
    local t0 t1 out cpu0 cpu1
    cpu0=$(awk '{print $14 + $15}' "/proc/$FAPNS_PID/stat")
    t0=$(date +%s%N)
    out=$(/usr/bin/time -f '%U %S' -o "$W/time" "$PUSHER" --stdin --log-level error \
        --apns "https://127.0.0.1:$FAPNS_PORT" --apns-ca "$W/ca.pem" --push-cert "$W/push.pem" \
        --connections "$2" --streams "$3" "${@:4}" < "$W/in" | tail -1)
    t1=$(date +%s%N)
    cpu1=$(awk '{print $14 + $15}' "/proc/$FAPNS_PID/stat")
    local sent ms
    sent=$(grep -o '"sent":[0-9]*' <<<"$out" | cut -d: -f2)
    ms=$(grep -o '"elapsed_ms":[0-9]*' <<<"$out" | cut -d: -f2)
    [ "${sent:-0}" = "$N" ] || echo "  WARNING: only ${sent:-0} of $N sent: $out"
    local cpu
    cpu=$(awk '{print $1 + $2}' "$W/time")
    printf '%-28s %6d pushes in %6d ms = %6d pushes/s (wall %d ms; pusher CPU %s s user/sys = %d us/push; stand-in CPU %.2f s = %d us/push; load %s)\n' \
        "$1" "${sent:-0}" "${ms:-0}" $(( ${sent:-0} * 1000 / (${ms:-1} > 0 ? ${ms:-1} : 1) )) \
        $(((t1 - t0) / 1000000)) "$(tr ' ' / < "$W/time")" \
        "$(echo "$cpu * 1000000 / (${sent:-0} + 0.001)" | bc)" "$(echo "($cpu1 - $cpu0) / $(getconf CLK_TCK)" | bc -l)" \
        "$(echo "($cpu1 - $cpu0) * 1000000 / $(getconf CLK_TCK) / (${sent:-0} + 0.001)" | bc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
}
echo "push bench: $N wakes, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
run "libcurl, one connection" 1 500 --transport curl
run "libcurl, pool of $POOL" "$POOL" 500 --transport curl
run "h2, one connection" 1 500 --transport h2
run "h2, pool of $POOL connections" "$POOL" 500 --transport h2
run "h2, pool of $POOL, 2000 in flight" "$POOL" 500 --transport h2 --max-inflight 2000
echo "stand-in: $(curl -s "http://127.0.0.1:$CTL_PORT/stats" | awk '$1=="connections"||$1=="accepted"||$1=="max_concurrent_streams"{printf "%s=%s ", $1, $2}')"

# through the bus: broker + store + pusher; one wake for PUSH_BENCH_BUS_N
# enrollments, timed until the store has logged every push.sent event
NB=${PUSH_BENCH_BUS_N:-2000}
TT=${TT:-$ROOT/build/rel/tt}
if [ "$NB" -gt 0 ] && [ -x "$BIN/picomdm-broker" ] && [ -x "$BIN/picomdm-store" ] && [ -x "$TT/push_drv" ]; then
    REQ=ipc://$W/req PUB=ipc://$W/pub SUB=ipc://$W/sub
    "$BIN/picomdm-broker" --request-endpoint "$REQ" --publish-endpoint "$PUB" \
        --subscribe-endpoint "$SUB" --run-dir "$W" > "$W/broker.log" 2>&1 &
    BROKER_PID=$!
    PIDS+=($!)
    "$BIN/picomdm-store" --data-dir "$W/data" --request-endpoint "$REQ" --publish-endpoint "$PUB" \
        > "$W/store.log" 2>&1 &
    STORE_PID=$!
    PIDS+=($!)
    "$PUSHER" --request-endpoint "$REQ" --apns "https://127.0.0.1:$FAPNS_PORT" --apns-ca "$W/ca.pem" \
        --push-cert "$W/push.pem" --connections "$POOL" --log-level warn > "$W/pusher.log" 2>&1 &
    PUSHER_PID=$!
    PIDS+=($!)
    sleep 1
    "$TT/push_drv" --request-endpoint "$REQ" enroll --n "$NB" --prefix b --topic "$TOPIC" > /dev/null 2>&1 \
        || { echo "bus: enroll failed"; exit 1; }
    cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
    c0=(); for p in "$BROKER_PID" "$STORE_PID" "$PUSHER_PID" "$FAPNS_PID"; do c0+=("$(cpu "$p")"); done
    t0=$(date +%s%N)
    "$TT/push_drv" --request-endpoint "$REQ" wake --n "$NB" --prefix b > /dev/null || { echo "bus: wake failed"; exit 1; }
    "$TT/push_drv" --request-endpoint "$REQ" events --name push.sent --prefix b --count "$NB" \
        --timeout-ms 60000 > "$W/bus.out" || echo "  WARNING: $(cat "$W/bus.out")"
    t1=$(date +%s%N)
    c1=(); for p in "$BROKER_PID" "$STORE_PID" "$PUSHER_PID" "$FAPNS_PID"; do c1+=("$(cpu "$p")"); done
    ms=$(((t1 - t0) / 1000000))
    printf '%-28s %6d pushes in %6d ms = %6d pushes/s (wake -> every push.sent logged by the store; includes the event-log polling; load %s)\n' \
        "bus: wake of $NB" "$(sed -n 's/count=//p' "$W/bus.out")" "$ms" $((NB * 1000 / (ms > 0 ? ms : 1))) "$(cut -d' ' -f1-3 /proc/loadavg)"
    hz=$(getconf CLK_TCK)
    names=(broker store pusher stand-in)
    line="  CPU per push (us):"
    for i in 0 1 2 3; do
        line+=" ${names[$i]} $(( (c1[i] - c0[i]) * 1000000 / hz / NB ))"
    done
    echo "$line (the event-log polling client not included)"
fi
