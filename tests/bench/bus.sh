#!/bin/bash
# Bus benchmark: request round trips through picomdm-broker (one echo worker,
# one client) over ipc:// and tcp://127.0.0.1, with K requests in flight.
# Per run: round trips/s, latency p50/p99, and per round trip the CPU time
# and context switches of the broker, the worker and the client, in total and
# per thread (main = the process's own thread, io = libzmq's I/O thread).
# On a paravirtualised VM a context switch (a thread put to sleep and woken)
# costs ~10 µs of CPU: the switches per round trip are the steadiest figure.
#   tests/bench/bus.sh                         ipc+tcp, in flight 1, 32, 256
#   INFLIGHT="1 32" TRANSPORTS=ipc COUNT=50000 COUNT1=5000 tests/bench/bus.sh
#   (COUNT1: round trips of the runs with 1 in flight; KEEP_LOGS=1 keeps logs;
#    BROKER_ARGS, WORKER_ARGS: extra options for picomdm-broker / bustest worker)
#   EVENTS=N (default 20000; 0: none): then the event plane over ipc://, N
#   events published as fast as one publisher can (bustest pub) through the
#   broker's XSUB/XPUB proxy to SUBS subscribers (default 1 2): the broker's
#   CPU and context switches per event forwarded.
#   STRACE=1: the broker's system calls per round trip (per event), strace -c
#   -f (slows everything: its rates and CPU figures are not comparable)
# Wall-clock rates depend on what else runs on the machine; the load average
# is printed with every run.
set -u
cd "$(dirname "$0")/../.."
BIN=${BIN:-$PWD/bin}
TT=${TT:-$PWD/build/rel/tt}
COUNT=${COUNT:-100000}
COUNT1=${COUNT1:-10000}
PAYLOAD=${PAYLOAD:-64}
INFLIGHT=${INFLIGHT:-1 32 256}
TRANSPORTS=${TRANSPORTS:-ipc tcp}
BROKER_ARGS=${BROKER_ARGS:-}
WORKER_ARGS=${WORKER_ARGS:-}
[ -x "$BIN/picomdm-broker" ] && [ -x "$TT/bustest" ] || { echo "build first (make)"; exit 1; }
D=$(mktemp -d /tmp/pm-bench-bus.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done; wait 2>/dev/null; [ -n "${KEEP_LOGS:-}" ] && echo "logs kept in $D" || rm -rf "$D"' EXIT
TCK=$(getconf CLK_TCK)

. tests/it/common.inc # free_port

# One line per thread of a live process: "thread NAME ticks=U+S vol=V invol=I"
# (the format bustest client --thread-stats prints for itself).
threads() {
    local t comm ticks vol invol
    for t in /proc/"$1"/task/*; do
        comm=$(tr ' ' _ <"$t/comm" 2>/dev/null) || continue
        ticks=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "$t/stat" 2>/dev/null) || continue
        vol=$(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status")
        invol=$(awk '/^nonvoluntary_ctxt_switches/ {print $2}' "$t/status")
        echo "thread $comm ticks=$ticks vol=$vol invol=$invol"
    done
}

# Per round trip from two thread snapshots (before may be empty):
# "cpu X µs, cs Y (main a, io b)"; threads named ZMQbg/IO/* are io, ZMQbg/Reaper
# is counted in the total only, any other is main.
per_rt() {
    local before=$1 after=$2 n=$3
    awk -v n="$n" -v tck="$TCK" '
        function kind(name) { return name ~ /^ZMQbg\/IO/ ? "io" : (name ~ /^ZMQbg/ ? "other" : "main") }
        /^thread / {
            split($3, a, "="); split($4, b, "="); split($5, c, "=")
            k = kind($2); sign = FILENAME == ARGV[1] ? -1 : 1
            ticks[k] += sign * a[2]; cs[k] += sign * (b[2] + c[2]); invol[k] += sign * c[2]
        }
        END {
            t = ticks["main"] + ticks["io"] + ticks["other"]
            s = cs["main"] + cs["io"] + cs["other"]
            printf "cpu %6.1f µs  cs %5.2f (main %5.2f, io %5.2f; involuntary %4.2f)",
                t / tck * 1e6 / n, s / n, cs["main"] / n, cs["io"] / n,
                (invol["main"] + invol["io"] + invol["other"]) / n
        }' "$before" "$after"
}

run() {
    local transport=$1 inflight=$2 count=$3 req
    if [ "$transport" = ipc ]; then req=ipc://$D/request-$inflight
    else req=tcp://127.0.0.1:$(free_port) || { echo "no free TCP port" >&2; exit 1; }; fi
    # shellcheck disable=SC2086
    "$BIN/picomdm-broker" --request-endpoint "$req" --publish-endpoint "ipc://$D/pub-$transport-$inflight" \
        --subscribe-endpoint "ipc://$D/sub-$transport-$inflight" --log-level warn $BROKER_ARGS >"$D/broker.log" 2>&1 &
    local b=$!; PIDS+=("$b")
    strace_start "$b"
    sleep 0.2
    # shellcheck disable=SC2086
    "$TT/bustest" worker --endpoint "$req" --name w1 --capacity 1000 --log-level info $WORKER_ARGS \
        >"$D/worker-$transport-$inflight.log" 2>&1 &
    local w=$!; PIDS+=("$w")
    sleep 0.3
    threads "$b" >"$D/b0"; threads "$w" >"$D/w0"
    local load; load=$(cut -d' ' -f1-3 /proc/loadavg)
    "$TT/bustest" client --endpoint "$req" --count "$count" --inflight "$inflight" \
        --payload-bytes "$PAYLOAD" --timeout-ms 10000 --max-seconds 120 --thread-stats \
        --log-level warn >"$D/client.out" 2>&1
    local rc=$?
    threads "$b" >"$D/b1"; threads "$w" >"$D/w1"
    strace_stop "$count" "round trip" >"$D/strace.sum"
    kill -TERM "$b" "$w" 2>/dev/null; wait "$b" "$w" 2>/dev/null
    local line; line=$(head -1 "$D/client.out")
    local f; f() { echo "$line" | grep -oE "(^| )$1=[^ ]+" | cut -d= -f2; }
    printf "%-4s in flight %-4s %7s round trips/s  p50 %6.2f ms  p99 %6.2f ms  (%s answered, %s failed%s; load %s)\n" \
        "$transport" "$inflight" "$(f rate | tr -d '/s')" "$(awk -v x="$(f p50_us)" 'BEGIN{print x/1000}')" \
        "$(awk -v x="$(f p99_us)" 'BEGIN{print x/1000}')" "$(f answered)" "$(f failed)" \
        "$([ $rc = 0 ] || echo ", client exit $rc")" "$load"
    printf "     per round trip: broker %s\n" "$(per_rt "$D/b0" "$D/b1" "$count")"
    printf "                     worker %s\n" "$(per_rt "$D/w0" "$D/w1" "$count")"
    printf "                     client %s\n" "$(per_rt /dev/null "$D/client.out" "$count")"
    cat "$D/strace.sum"
}

# STRACE=1: strace -c -f on the broker from here to strace_stop
STRACE_PID=
strace_start() {
    [ -n "${STRACE:-}" ] || return 0
    sleep 0.2
    strace -c -f -p "$1" -o "$D/strace.txt" 2>/dev/null &
    STRACE_PID=$!
    PIDS+=("$STRACE_PID")
    sleep 0.5 # attached to every thread
}
# strace_stop N WHAT: "broker system calls per WHAT: total T (call n, ...)" (nothing without STRACE)
strace_stop() {
    [ -n "$STRACE_PID" ] || return 0
    kill -INT "$STRACE_PID" 2>/dev/null; wait "$STRACE_PID" 2>/dev/null; STRACE_PID=
    awk -v n="$1" -v what="$2" '
        $1 ~ /^[0-9.]+$/ && $NF != "total" { c[$NF] = $4; t += $4 }
        END { s = ""; for (k in c) if (c[k] / n >= 0.05) s = s sprintf("%s%s %.2f", s == "" ? "" : ", ", k, c[k] / n)
              printf "     broker system calls per %s (strace -c -f): total %.2f (%s)\n", what, t / n, s }' "$D/strace.txt"
}

# The event plane: N events from one publisher through the broker to K subscribers.
events() {
    local n=$1 k=$2 i subs=()
    "$BIN/picomdm-broker" --request-endpoint "ipc://$D/ereq-$k" --publish-endpoint "ipc://$D/epub-$k" \
        --subscribe-endpoint "ipc://$D/esub-$k" --log-level warn $BROKER_ARGS >"$D/broker-ev.log" 2>&1 &
    local b=$!; PIDS+=("$b")
    for i in $(seq 1 "$k"); do
        "$TT/bustest" sub --subscribe-endpoint "ipc://$D/esub-$k" --prefix device. --count "$n" --max-seconds 120 \
            --log-level warn >"$D/sub-$k-$i.out" 2>&1 &
        subs+=($!); PIDS+=($!)
    done
    sleep 0.5
    strace_start "$b"
    threads "$b" >"$D/e0"
    local load; load=$(cut -d' ' -f1-3 /proc/loadavg)
    local t0; t0=$(date +%s%N)
    "$TT/bustest" pub --publish-endpoint "ipc://$D/epub-$k" --topic device.bench --count "$n" --delay-ms 300 \
        --hold-ms 120000 --log-level warn >"$D/pub.out" 2>&1 &
    local p=$!; PIDS+=("$p")
    wait "${subs[@]}" 2>/dev/null
    local t1; t1=$(date +%s%N)
    threads "$b" >"$D/e1"
    strace_stop "$n" "event" >"$D/strace.sum"
    kill -TERM "$p" "$b" 2>/dev/null; wait "$p" "$b" 2>/dev/null
    local got=0
    for i in $(seq 1 "$k"); do got=$((got + $(grep -c '^event topic=device.bench ' "$D/sub-$k-$i.out"))); done
    printf "events to %s subscriber(s): %s of %s delivered in %.2f s (load %s)\n" "$k" "$got" "$((n * k))" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print (b - a - 300e6) / 1e9 }')" "$load"
    printf "     per event: broker %s\n" "$(per_rt "$D/e0" "$D/e1" "$n")"
    cat "$D/strace.sum"
}

echo "bus: echo requests of $PAYLOAD bytes, 1 broker + 1 worker + 1 client, $(nproc) cores;" \
    "$COUNT1 round trips with 1 in flight, $COUNT otherwise"
for t in $TRANSPORTS; do
    for k in $INFLIGHT; do
        if [ "$k" = 1 ]; then run "$t" "$k" "$COUNT1"; else run "$t" "$k" "$COUNT"; fi
    done
done
if [ "${EVENTS:-20000}" != 0 ]; then
    for k in ${SUBS:-1 2}; do events "${EVENTS:-20000}" "$k"; done
fi
