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
#   tests/bench/tls_handshake.sh [N] [MODES]   (default 400 "cpu strace callgrind")
# Env: BIN (gateway build), TLS_ARGS (extra client args, e.g. "--resume",
# "--tls12", "--groups P-256"), GW_ARGS (extra gateway args), OUT (dir for
# the callgrind file, default $TMPDIR/tls_handshake-bench), PATH_REQ/EXPECT, CLIENT_CERT=1
# (the client presents a device identity certificate, as mdmd does).
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
drv() { "$TT/tls_conns" "$PORT" "$1" --ca "$PKI/ca.pem" --path "$PATH_REQ" --expect "$EXPECT" "${CC_ARGS[@]}" ${TLS_ARGS:-}; }
echo "tls_handshake: $N connections, BIN=$BIN, client args '${TLS_ARGS:-}', load $(cut -d' ' -f1-3 /proc/loadavg)"
for m in $MODES; do
    case $m in
    cpu)
        gw_tls --log-level warn ${GW_ARGS:-}
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
