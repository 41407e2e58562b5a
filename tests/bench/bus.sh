#!/bin/bash
# Bus benchmark: request round trips per second through picomdm-broker (one
# echo worker, one client) over ipc:// and tcp://127.0.0.1 with 64 and 256
# requests in flight; latency p50/p99; CPU seconds and peak RSS of broker,
# worker and client. Target: >= 30,000 round trips/s over ipc on 2 cores.
#   COUNT=200000 tests/bench/bus.sh      (KEEP_LOGS=1 keeps the broker/worker logs)
# Wall-clock rates depend on what else runs on the machine; the CPU seconds
# per run (sum / COUNT = CPU per round trip) are the steadier figure.
set -u
cd "$(dirname "$0")/../.."
BIN=${BIN:-$PWD/bin}
TT=${TT:-$PWD/build/rel/tt}
COUNT=${COUNT:-200000}
PAYLOAD=${PAYLOAD:-64}
[ -x "$BIN/picomdm-broker" ] && [ -x "$TT/bustest" ] || { echo "build first (make)"; exit 1; }
D=$(mktemp -d /tmp/pm-bench-bus.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done; wait 2>/dev/null; [ -n "${KEEP_LOGS:-}" ] && echo "logs kept in $D" || rm -rf "$D"' EXIT
TCK=$(getconf CLK_TCK)

free_port() {
    local p
    for _ in $(seq 1 50); do
        p=$((20000 + RANDOM % 40000))
        ss -ltnH "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
    done
    echo "no free port" >&2; exit 1
}

# cpu seconds and peak RSS (MB) of a live process
usage() {
    local stat
    stat=$(cut -d' ' -f14,15 "/proc/$1/stat")
    local ut=${stat% *} st=${stat#* }
    local rss
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$1/status")
    awk -v u="$ut" -v s="$st" -v t="$TCK" -v r="$rss" 'BEGIN { printf "cpu %.2fs rss %.1fMB", (u+s)/t, r/1024 }'
}

run() {
    local transport=$1 inflight=$2 req
    if [ "$transport" = ipc ]; then req=ipc://$D/request-$inflight
    else req=tcp://127.0.0.1:$(free_port); fi
    "$BIN/picomdm-broker" --request-endpoint "$req" --publish-endpoint "ipc://$D/pub-$transport-$inflight" \
        --subscribe-endpoint "ipc://$D/sub-$transport-$inflight" --log-level warn >"$D/broker.log" 2>&1 &
    local b=$!; PIDS+=("$b")
    sleep 0.2
    "$TT/bustest" worker --endpoint "$req" --name w1 --capacity 1000 --log-level info >"$D/worker-$transport-$inflight.log" 2>&1 &
    local w=$!; PIDS+=("$w")
    sleep 0.3
    /usr/bin/time -f "%U %S %M" -o "$D/client.time" "$TT/bustest" client --endpoint "$req" \
        --count "$COUNT" --inflight "$inflight" --payload-bytes "$PAYLOAD" --timeout-ms 10000 \
        --max-seconds 120 --log-level warn >"$D/client.out" 2>&1
    local rc=$?
    local bu wu
    bu=$(usage "$b"); wu=$(usage "$w")
    kill -TERM "$b" "$w" 2>/dev/null; wait "$b" "$w" 2>/dev/null
    read -r cu cs cm <"$D/client.time"
    local line; line=$(head -1 "$D/client.out")
    local f; f() { echo "$line" | grep -oE "(^| )$1=[^ ]+" | cut -d= -f2; }
    printf "%-4s inflight %-4s %8s round trips/s  p50 %6.2f ms  p99 %6.2f ms  (%s answered, %s failed%s)\n" \
        "$transport" "$inflight" "$(f rate | tr -d '/s')" "$(awk -v x="$(f p50_us)" 'BEGIN{print x/1000}')" \
        "$(awk -v x="$(f p99_us)" 'BEGIN{print x/1000}')" "$(f answered)" "$(f failed)" \
        "$([ $rc = 0 ] || echo ", client exit $rc")"
    printf "     broker %s | worker %s | client cpu %.2fs rss %.1fMB\n" "$bu" "$wu" \
        "$(awk -v a="$cu" -v b="$cs" 'BEGIN{print a+b}')" "$(awk -v m="$cm" 'BEGIN{print m/1024}')"
}

echo "bus: $COUNT echo requests of $PAYLOAD bytes per run, 1 broker + 1 worker + 1 client, $(nproc) cores"
for t in ipc tcp; do
    for k in 64 256; do run $t $k; done
done
