#!/bin/bash
# gw_openloop benchmark (figures, not pass/fail): what a device request costs
# the gateway in a closed loop (requests in bursts) against an open loop
# (requests spread out), per thread of the gateway: its event loop and
# libzmq's I/O thread (docs/gateway.md, "Session 9"). One server set (broker,
# store, scheduler, TLS gateway), N devices enrolled, then per phase one more
# DeviceInformation for every device and one session each (2 requests):
#   closed  picomdm-devsim --concurrency 32 (the e2e bench's closed loop)
#   open    --rate RATE --warm-connections (128 connections opened before the
#           timetable, but inside the measured window: their 128 TLS
#           handshakes add ~5 us of gateway CPU and ~0.2 system calls per
#           request at 10,000 devices, the same for every build compared)
# Printed per phase and thread, per device request: CPU (/proc), voluntary and
# involuntary context switches, system calls by kind (perf stat on the
# syscalls tracepoints, per thread: load-independent, unlike the CPU), page
# faults, epoll_wait returns and events per return (perf record of
# syscalls:sys_exit_epoll_wait). Pick a RATE the machine keeps (the "achieved"
# figure equals the offered one): a saturated open loop batches like a closed one.
#   tests/bench/gw_openloop.sh [N]      (default 10000 devices)
#   RATE=300 (sessions/s) PHASES="closed open" PERFREC=1 (also perf record -g
#   of the gateway per phase, into OUT) OUT=DIR (keep the raw files; default: a
#   temp dir, removed) BIN=...
cd "$(dirname "$0")/../.."
export BIN=${BIN:-$PWD/bin}
N=${1:-10000}
RATE=${RATE:-300}
source tests/it/e2e_lib.bash
command -v perf >/dev/null || skip "skipped: perf is not installed"
perf stat -e syscalls:sys_enter_poll -- true >/dev/null 2>&1 || skip "skipped: perf cannot read the syscalls tracepoints here (root or perf_event_paranoid)"
OUT=${OUT:-$T/out}
mkdir -p "$OUT"
gw_pki
gw_broker
gw_watch
gw_store
gw_scheduler --log-level warn
gw_tls --log-level warn ${GW_ARGS:-}
DS=("$BIN/picomdm-devsim" --url "$URL" --ca-bundle "$PKI/ca.pem" --ca-cert "$PKI/ca.pem"
    --ca-key "$PKI/ca.key" --identity-dir "$T/ids" --devices "$N" --seed $((7000 + N))
    --key-type ec --timeout-ms 30000 --log-level warn)
echo "--- gw_openloop: $N devices, open loop $RATE sessions/s ($((2 * RATE)) requests/s offered)"
"${DS[@]}" --concurrency 32 --rounds 0 >"$OUT/enroll.out" 2>&1 || { tail "$OUT/enroll.out"; fail "enrollment failed"; }
cli devices --limit $((N + 10)) | awk 'NR > 1 { print $1 }' >"$T/eids"
queue_all() {
    split -l 1000 "$T/eids" "$T/chunk."
    for f in "$T"/chunk.*; do
        cli enqueue DeviceInformation --no-push --set Queries=OSVersion --to "$(paste -sd, "$f")" \
            >/dev/null 2>>"$T/enqueue.err" || fail "enqueue failed: $(tail -n 2 "$T/enqueue.err")"
    done
    rm -f "$T"/chunk.*
}
tck=$(getconf CLK_TCK)
thr() { # per thread of the gateway: tid comm ticks voluntary involuntary
    local t
    for t in /proc/$GW_PID/task/*; do
        echo "$(basename "$t") $(tr ' ' _ <"$t/comm") $(awk '{ print $14 + $15 }' "$t/stat") $(awk '/^voluntary_ctxt/ { v = $2 } /^nonvoluntary_ctxt/ { n = $2 } END { print v, n }' "$t/status")"
    done
}
SC=syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_ctl
SC+=,syscalls:sys_enter_poll,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_madvise
SC+=,exceptions:page_fault_user,raw_syscalls:sys_enter
for ph in ${PHASES:-closed open}; do
    queue_all
    case $ph in
        closed) args=(--no-enroll --rounds 1 --concurrency 32) ;;
        open) args=(--no-enroll --rounds 1 --rate "$RATE" --concurrency 128 --warm-connections) ;;
        *) fail "unknown phase $ph (closed, open)" ;;
    esac
    thr >"$OUT/$ph.t0"
    perf stat --per-thread -e "$SC" -p "$GW_PID" -o "$OUT/$ph.stat" &
    sp=$!
    perf record -q -e syscalls:sys_exit_epoll_wait -p "$GW_PID" -o "$OUT/$ph.ew.data" >/dev/null 2>&1 &
    ep=$!
    rp=
    if [ -n "${PERFREC:-}" ]; then
        perf record -q -e cpu-clock -g -p "$GW_PID" -o "$OUT/$ph.perf.data" >/dev/null 2>&1 &
        rp=$!
    fi
    load0=$(cut -d' ' -f1 /proc/loadavg)
    "${DS[@]}" "${args[@]}" >"$OUT/$ph.out" 2>&1
    kill -INT $sp $ep $rp 2>/dev/null
    wait $sp $ep $rp 2>/dev/null
    thr >"$OUT/$ph.t1"
    reqs=$(awk '/requests, latency/ { for (i = 1; i <= NF; i++) if ($(i) ~ /^requests,/) s += $(i - 1) } END { print s + 0 }' "$OUT/$ph.out")
    [ "$reqs" -gt 0 ] || { tail -n 3 "$OUT/$ph.out"; fail "devsim $ph: no requests"; }
    ach=$(grep -o 'achieved [0-9.]* device requests/s' "$OUT/$ph.out")
    echo "  $ph: $reqs device requests${ach:+, $ach}; load average $load0 -> $(cut -d' ' -f1 /proc/loadavg)"
    join <(sort "$OUT/$ph.t0") <(sort "$OUT/$ph.t1") | awk -v r="$reqs" -v t="$tck" '$2 !~ /Reaper/ {
        printf "    %-16s CPU %6.1f us, context switches %.2f voluntary + %.2f involuntary per request\n", $2, ($7 - $3) / t / r * 1e6, ($8 - $4) / r, ($9 - $5) / r }'
    awk -v r="$reqs" '$2 ~ /^[0-9]+$/ && /syscalls:|raw_syscalls:|exceptions:/ { n = split($1, a, "-"); th = a[1]; for (i = 2; i < n; i++) th = th "-" a[i]
            ev = $3; sub(/.*:(sys_enter_)?/, "", ev); if (ev == "sys_enter") ev = "all"; v[th] = v[th] sprintf(" %s %.2f", ev, $2 / r) }
        END { for (k in v) printf "    %-16s per request:%s\n", k, v[k] }' "$OUT/$ph.stat"
    perf script -i "$OUT/$ph.ew.data" 2>/dev/null | perl -ne 'if (/^\s*(.+?)\s+\d+\s+\[\d+\].*sys_exit_epoll_wait: (0x[0-9a-f]+)/) { $n{$1}++; $e{$1} += hex($2) } END { printf "    %-16s epoll_wait returns %.2f per request, %.2f events per return\n", $_, $n{$_} / '"$reqs"', $e{$_} / $n{$_} for sort keys %n }'
done
echo "  gateway peak RSS $(awk '/VmHWM/ { print int($2 / 1024) }' /proc/$GW_PID/status) MB"
