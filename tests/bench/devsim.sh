#!/bin/bash
# Benchmark of the device simulator itself against the small MDM stub
# ($TT/devsim_stubmdm): N devices enroll, then R rounds of sessions with 4
# commands each. Prints the simulator's figures (enrollments/s, command round
# trips/s, latency p50/p99/max, its own CPU) and the stub's CPU. The stub is
# single-threaded and small: these figures bound the loopback setup, they are
# not PicoMDM's. DEVSIM_BENCH_DEVICES / _CONCURRENCY / _ROUNDS override.
set -u
ROOT=${PICOMDM_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${BIN:-$ROOT/bin}; TT=${TT:-$ROOT/build/rel/tt}
N=${DEVSIM_BENCH_DEVICES:-1000}; C=${DEVSIM_BENCH_CONCURRENCY:-32}; R=${DEVSIM_BENCH_ROUNDS:-2}
W=$(mktemp -d); STUB_PID=
trap '[ -n "$STUB_PID" ] && kill $STUB_PID 2>/dev/null; rm -rf "$W"' EXIT
[ -x "$BIN/picomdm-devsim" ] && [ -x "$TT/devsim_stubmdm" ] || { echo "build first (make)"; exit 1; }
"$BIN/picomdm-devsim" --make-ca "$W/ca" >/dev/null || exit 1
for _ in $(seq 100); do
    P=$((20000 + RANDOM % 12000)); ss -ltn | awk '{print $4}' | grep -q ":$P\$" || break
done
"$TT/devsim_stubmdm" --port "$P" --device-ca "$W/ca.pem" --refill 4 \
    --commands DeviceInformation,ProfileList,SecurityInfo,CertificateList 2>"$W/stub.log" &
STUB_PID=$!
for _ in $(seq 50); do grep -q listening "$W/stub.log" && break; sleep 0.1; done
echo "devsim: $N iphone devices, concurrency $C, $R rounds x 4 commands, EC P-256, SHA-256 signatures"
timeout 900 "$BIN/picomdm-devsim" --url "http://127.0.0.1:$P" --ca-cert "$W/ca.pem" --ca-key "$W/ca.key" \
    --devices "$N" --concurrency "$C" --rounds "$R" --log-level warn
rc=$?
echo "stub:   cpu $(ps -o time= -p $STUB_PID) rss $(( $(ps -o rss= -p $STUB_PID) / 1024 )) MiB"
exit $rc
