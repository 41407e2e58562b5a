#!/bin/bash
# tls_handshake bench (figures, not pass/fail): what one new TLS connection
# costs the gateway — accept, a full handshake, one request, close.
# A TLS gateway (EC P-256 server certificate from a test CA, client
# certificates asked for as by default) with a broker only (the request
# chosen needs no back end: `GET /mdm/checkin` is answered 405 by the
# gateway itself, so the bus is not in the figures); build/rel/tt/tls_conns
# opens N connections one after the other. Prints, per connection:
#   cpu       gateway CPU from /proc (utime+stime; noisy, ±10-25 %)
#   strace    system calls (strace -c -f -p on the gateway)
#   callgrind user-space instructions (the gateway under valgrind
#             --tool=callgrind, zeroed/dumped around the N connections);
#             the profile is kept in $OUT (callgrind_annotate it)
#   perfstat  perf stat -e task-clock,context-switches,page-faults on the
#             gateway (per connection)
#   perf      a perf record -e cpu-clock profile of the gateway (PERF_CG=dwarf
#             or fp for call graphs; default flat), printed as shares per
#             shared object and the top symbols; perf.data kept in $OUT
#   s_server  for comparison: `openssl s_server -WWW` (same certificate and
#             key, TLS 1.3 TLS_AES_128_GCM_SHA256, one ticket, no client
#             certificate asked for) serving an empty file; perf stat on it
#             per connection: how much is libssl itself vs our set-up
#   tests/bench/tls_handshake.sh [N] [MODES]   (default 400 "cpu strace callgrind")
# Env: BIN (gateway build), TLS_ARGS (extra client args, e.g. "--resume",
# "--tls12", "--groups P-256"), GW_ARGS (extra gateway args), OUT (dir for
# the callgrind file, default $TMPDIR/tls_handshake-bench), PATH_REQ/EXPECT, CLIENT_CERT=1
# (the client presents a device identity certificate, as mdmd does),
# PAR=P (P clients connect in parallel, each N/P connections one after the
# other: the cold open loop's burst of new connections), PIN=CPUS (gateway
# and client pinned to those CPUs, e.g. PIN=1: with one CPU they never run
# at the same time; on a loaded machine it did not make the figures less
# noisy, docs/gateway.md "Session 9").
cd "$(dirname "$0")/../.."
export BIN=${BIN:-$PWD/bin} TT=${TT:-$PWD/build/rel/tt}
N=${1:-400}
MODES=${2:-cpu strace callgrind}
OUT=${OUT:-${TMPDIR:-/tmp}/tls_handshake-bench}
PATH_REQ=${PATH_REQ:-/mdm/checkin}
EXPECT=${EXPECT:-405}
mkdir -p "$OUT"
source tests/it/e2e_lib.bash
[ -x "$TT/tls_conns" ] || skip "skipped: $TT/tls_conns is not built (make tests)"
gw_pki
gw_broker
tck=$(getconf CLK_TCK)
CC_ARGS=()
[ -n "${CLIENT_CERT:-}" ] && CC_ARGS=(--cert "$PKI/dev1.pem" --key "$PKI/dev1.key")
PAR=${PAR:-1}
PIN=${PIN:-}
TS=()
[ -n "$PIN" ] && TS=(taskset -c "$PIN")
# pin the gateway (all its threads) to the CPUs $PIN too
pin_gw() { [ -z "$PIN" ] || taskset -a -p -c "$PIN" "$GW_PID" >/dev/null; }
drv() { "${TS[@]}" "$TT/tls_conns" "$PORT" "$1" --ca "$PKI/ca.pem" --path "$PATH_REQ" --expect "$EXPECT" --parallel "$(( PAR < $1 ? PAR : $1 ))" "${CC_ARGS[@]}" ${TLS_ARGS:-}; }
# sdrv: the same against openssl s_server ($SP, the s_server mode)
sdrv() { "${TS[@]}" "$TT/tls_conns" "$SP" "$1" --ca "$PKI/ca.pem" --path /empty --parallel 1 ${TLS_ARGS:-}; }
# perfstat_run LABEL PID FILE DRIVER: perf stat of PID while DRIVER makes $N
# connections; prints its counters per connection under LABEL
perfstat_run() {
    local label=$1 pid=$2 file=$3 driver=$4 r sp
    perf stat -x, -e task-clock,context-switches,page-faults,minor-faults -p "$pid" -o "$file" &
    sp=$!
    sleep 0.5
    r=$("$driver" "$N") || fail "driver ($label): $r"
    kill -INT $sp; wait $sp 2>/dev/null
    echo "  $label: $r"
    awk -F, -v n="$N" -v l="$label" '$3 ~ /^[a-z-]+$/ { v = $1; u = $2; if ($3 == "task-clock") { v = v * 1000; u = "us" }; printf "  %s: %-17s %9.2f %s per connection\n", l, $3, v / n, u }' "$file"
    echo "  $label: load $(cut -d' ' -f1 /proc/loadavg)"
}
echo "tls_handshake: $N connections ($PAR in parallel), BIN=$BIN, client args '${TLS_ARGS:-}', load $(cut -d' ' -f1-3 /proc/loadavg)"
for m in $MODES; do
    case $m in
    cpu)
        gw_tls --log-level warn ${GW_ARGS:-}
        pin_gw
        drv 50 >/dev/null || fail "warm-up"
        read -r u0 s0 < <(awk '{print $14, $15}' /proc/$GW_PID/stat)
        r=$(drv "$N") || fail "driver: $r"
        read -r u1 s1 < <(awk '{print $14, $15}' /proc/$GW_PID/stat)
        echo "  cpu: $r"
        echo "  cpu: gateway $(( (u1 + s1 - u0 - s0) * 1000000 / tck / N )) us per connection (user $(( (u1 - u0) * 1000000 / tck / N )), system $(( (s1 - s0) * 1000000 / tck / N )); load $(cut -d' ' -f1 /proc/loadavg))"
        kill "$GW_PID"; wait "$GW_PID" 2>/dev/null
        ;;
    strace)
        command -v strace >/dev/null || { echo "  strace: not installed"; continue; }
        gw_tls --log-level warn ${GW_ARGS:-}
        drv 20 >/dev/null || fail "warm-up"
        strace -c -f -p "$GW_PID" -o "$OUT/strace.txt" 2>/dev/null &
        sp=$!
        sleep 1
        r=$(drv "$N") || fail "driver: $r"
        sleep 0.3
        kill -INT $sp; wait $sp 2>/dev/null
        echo "  strace: $r"
        awk -v n="$N" '$1 ~ /^[0-9.]+$/ && NF >= 5 { printf "  strace: %-14s %6.2f per connection\n", $NF == "total" ? "all" : $NF, $4 / n }' "$OUT/strace.txt"
        kill "$GW_PID"; wait "$GW_PID" 2>/dev/null
        ;;
    perfstat)
        command -v perf >/dev/null || { echo "  perfstat: perf not installed"; continue; }
        gw_tls --log-level warn ${GW_ARGS:-}
        pin_gw
        drv 50 >/dev/null || fail "warm-up"
        perfstat_run perfstat "$GW_PID" "$OUT/perfstat.txt" drv
        kill "$GW_PID"; wait "$GW_PID" 2>/dev/null
        ;;
    perf)
        command -v perf >/dev/null || { echo "  perf: perf not installed"; continue; }
        gw_tls --log-level warn ${GW_ARGS:-}
        pin_gw
        drv 50 >/dev/null || fail "warm-up"
        CG=()
        [ -n "${PERF_CG:-}" ] && CG=(--call-graph "$PERF_CG")
        perf record -q -e cpu-clock -F 4000 "${CG[@]}" -p "$GW_PID" -o "$OUT/perf.data" >/dev/null 2>&1 &
        sp=$!
        sleep 0.5
        r=$(drv "$N") || fail "driver: $r"
        kill -INT $sp; wait $sp 2>/dev/null
        echo "  perf: $r (load $(cut -d' ' -f1 /proc/loadavg))"
        perf report -i "$OUT/perf.data" --no-children --sort dso --stdio 2>/dev/null |
            awk '/^ +[0-9.]+%/ { printf "  perf: dso %s\n", $0 }' | head -12
        perf report -i "$OUT/perf.data" --no-children --sort dso,sym --stdio 2>/dev/null |
            awk '/^ +[0-9.]+%/ { printf "  perf: sym %s\n", $0 }' | head -${PERF_TOP:-30}
        kill "$GW_PID"; wait "$GW_PID" 2>/dev/null
        ;;
    s_server)
        command -v perf >/dev/null || { echo "  s_server: perf not installed"; continue; }
        mkdir -p "$T/www"
        : >"$T/www/empty"
        SP=$(free_port)
        (cd "$T/www" && exec openssl s_server -quiet -accept "127.0.0.1:$SP" -cert "$PKI/tls.pem" \
            -key "$PKI/tls.key" -WWW -tls1_3 -ciphersuites TLS_AES_128_GCM_SHA256 -num_tickets 1 \
            >"$T/s_server.log" 2>&1) &
        SSP=$!
        PIDS+=($SSP)
        for i in $(seq 1 100); do ss -ltn | grep -q ":$SP " && break; sleep 0.1; done
        sdrv 20 >/dev/null || fail "s_server warm-up"
        perfstat_run s_server "$SSP" "$OUT/perfstat-s_server.txt" sdrv
        kill "$SSP"; wait "$SSP" 2>/dev/null
        ;;
    callgrind)
        command -v valgrind >/dev/null || { echo "  callgrind: valgrind not installed"; continue; }
        W=$T/wrapbin
        mkdir -p "$W"
        printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s/callgrind.%%p "%s/picomdm-gateway" "$@"\n' "$OUT" "$BIN" >"$W/picomdm-gateway"
        chmod +x "$W/picomdm-gateway"
        RBIN=$BIN
        BIN=$W gw_tls --log-level warn ${GW_ARGS:-}
        BIN=$RBIN
        for i in $(seq 1 200); do drv 1 >/dev/null 2>&1 && break; sleep 0.1; done
        drv 20 >/dev/null || fail "warm-up"
        callgrind_control -z "$GW_PID" >/dev/null
        r=$(drv "$N") || fail "driver: $r"
        callgrind_control -d "$GW_PID" >/dev/null
        echo "  callgrind: $r"
        f=$(ls -t "$OUT"/callgrind.*.[0-9]* 2>/dev/null | head -1)
        [ -n "$f" ] || f=$(ls -t "$OUT"/callgrind.* | head -1)
        tot=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
        echo "  callgrind: $tot instructions, $((tot / N)) per connection ($f)"
        kill "$GW_PID"; wait "$GW_PID" 2>/dev/null
        ;;
    esac
done
