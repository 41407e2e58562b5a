#!/bin/bash
# Enrollment benchmark (SCEP PKCSReq, RSA-2048 device keys, release build).
#  1. the SCEP core alone (build/rel/test/ca_scep_server in CA_SCEP_BENCH mode):
#     server CPU per enrollment, measured around the server call only;
#  2. the real picomdm-ca behind a real broker, driven by tests/tools/ca_client
#     over the bus, requests pre-built and 8 in flight (the server works back
#     to back): enrollments/s and the ca process's CPU (utime+stime of all its
#     threads, from /proc) per enrollment, bus, ZeroMQ and msgpack included;
#     then the same one request at a time (each arrives at an idle process).
# Target: <= 3 ms server CPU per enrollment. ENROLL_N sets the count (default 300).
set -u
cd "$(dirname "$0")/../.."
N=${ENROLL_N:-300}
BIN=${BIN:-$PWD/bin} TT=${TT:-$PWD/build/rel/tt}
core=build/rel/test/ca_scep_server
for f in "$core" "$BIN/picomdm-ca" "$BIN/picomdm-broker" "$TT/ca_client"; do
    [ -x "$f" ] || { echo "enroll bench: $f missing; run make first"; exit 1; }
done

echo "-- SCEP core (in process)"
CA_SCEP_BENCH=$N "$core" || exit 1

echo "-- picomdm-ca over the bus"
D=$(mktemp -d /tmp/pm-enroll-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done; sleep 0.2
            for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
REQ=ipc://$D/request
"$BIN/picomdm-broker" --request-endpoint "$REQ" --publish-endpoint "ipc://$D/publish" \
    --subscribe-endpoint "ipc://$D/subscribe" >"$D/broker.log" 2>&1 &
BROKER=$!; PIDS+=("$BROKER")
PICOMDM_CHALLENGE=bench-static-challenge "$BIN/picomdm-ca" --request-endpoint "$REQ" \
    --publish-endpoint "ipc://$D/publish" --data-dir "$D/ca" --challenge-mode static \
    --log-level warn >"$D/ca.log" 2>&1 &
CA=$!; PIDS+=("$CA")
for _ in $(seq 1 200); do
    timeout 5 "$TT/ca_client" --endpoint "$REQ" --timeout-ms 500 caps >/dev/null 2>&1 && break
    sleep 0.1
done
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # clock ticks
HZ=$(getconf CLK_TCK)
# warm-up (first request, key loading) outside the measurement
timeout 60 "$TT/ca_client" --endpoint "$REQ" enroll --challenge bench-static-challenge --count 2 >/dev/null \
    || { echo "enroll bench: warm-up failed"; cat "$D/ca.log"; exit 1; }
measure() { # LABEL INFLIGHT
    local c0 b0 t0 t1 c1 b1
    c0=$(cpu $CA); b0=$(cpu $BROKER); t0=$(date +%s%N)
    timeout 600 "$TT/ca_client" --endpoint "$REQ" enroll --challenge bench-static-challenge \
        --count "$N" --inflight "$2" >"$D/out" || { cat "$D/out"; exit 1; }
    t1=$(date +%s%N); c1=$(cpu $CA); b1=$(cpu $BROKER)
    grep -q "issued=$N failed=0 errors=0" "$D/out" || { cat "$D/out"; exit 1; }
    local rate
    rate=$(sed -n 's/.*rate=\([0-9.]*\).*/\1/p' "$D/out")
    awk -v l="$1" -v n="$N" -v ns=$((t1 - t0)) -v ca=$((c1 - c0)) -v br=$((b1 - b0)) -v hz="$HZ" -v rate="$rate" 'BEGIN {
        if (rate != "") printf "enroll(bus, %s): %d PKCSReq, %.0f enrollments/s while the requests flow\n", l, n, rate
        else printf "enroll(bus, %s): %d PKCSReq, %.0f enrollments/s end to end (client builds each request in turn)\n", l, n, n / (ns / 1e9)
        printf "enroll(bus, %s): picomdm-ca CPU %.2f ms per enrollment (target <= 3 ms), broker %.2f ms\n", l, ca * 1000 / hz / n, br * 1000 / hz / n
    }'
}
measure "8 in flight" 8
measure "one at a time" 1
rss=$(awk '/VmRSS/ {print $2}' "/proc/$CA/status")
echo "enroll(bus): picomdm-ca RSS ${rss} kB"
