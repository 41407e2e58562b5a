#!/bin/bash
# The store's thread outside SQLite (docs/queue.md, "Session 7,
# storereply"): broker + scheduler + picomdm-store + queuedrv; N enrollments,
# one DeviceInformation for all, then N sessions (Idle -> command ->
# Acknowledged with QueryResponses: 2 store.connect and 3 events per
# session). Printed for the sessions phase only:
#  - callgrind (valgrind --tool=callgrind on the store, counters zeroed before
#    the sessions and dumped after them): instructions per request of all
#    the store's threads, and inclusive per request of publishing events
#    (s_publish), receiving (s_drain), replying (pm_bus_job_reply), applying
#    (store_svc_apply) and committing (store_db_commit). Exact whatever the
#    load (the number of commits, though, depends on the batching).
#  - perf stat (tracepoints, no ptrace): system calls per request per thread.
#    strace would slow each call so much that libzmq's 1 ms throttle in
#    zmq_send fires on every send and inflates getpid/poll several times.
#  - the store's CPU per request and context switches (noisy).
#   tests/bench/store_thread.sh                 (N=500 callgrind, N=2000 perf)
#   BIN=/path/to/other/bin tests/bench/store_thread.sh   (compare a build)
#   CG_N=500 PERF_N=2000 SKIP_CG=1 SKIP_PERF=1 KEEP_LOGS=1
set -u
cd "$(dirname "$0")/../.."
BIN=${BIN:-$PWD/bin}
TT=${TT:-$PWD/build/rel/tt}
[ -x "$BIN/picomdm-store" ] && [ -x "$TT/queuedrv" ] || { echo "build first (make)"; exit 1; }
D=$(mktemp -d /tmp/pm-bench-store-thread.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done; wait 2>/dev/null; [ -n "${KEEP_LOGS:-}" ] && echo "logs kept in $D" || rm -rf "$D"' EXIT
SC=(getpid poll read write pwrite64 pread64 fdatasync fcntl epoll_wait epoll_ctl sendto recvfrom futex madvise mmap munmap)

# callgrind figures of one dump: per request, inclusive
cg_report() { # TREE REQUESTS
    local tree=$1 reqs=$2 k
    awk -v r="$reqs" '/PROGRAM TOTALS/ { gsub(",", "", $1); printf "  instructions per request, all the store'"'"'s threads: %.1f k\n", $1 / r / 1000 }' "$tree"
    for k in s_publish s_drain pm_bus_job_reply store_svc_apply store_db_commit; do
        grep -E "[*]  [^ ]*:$k(\.[a-z0-9.]*)? \[" "$tree" | head -n 1 |
            awk -v k="$k" -v r="$reqs" '{ gsub(",", "", $1); printf "    %-18s %7.1f k per request\n", k, $1 / r / 1000 }'
    done
    grep -E "> +[^ ]*:s_publish \([0-9,]+x\)" "$tree" | head -n 1 |
        sed 's/.*(\([0-9,]*\)x).*/\1/; s/,//g' |
        awk -v r="$reqs" '{ printf "    (%d events = %.2f per request)\n", $1, $1 / r }'
}

# run MODE N: one store run; MODE cg (callgrind) or perf (perf stat)
run() {
    local mode=$1 n=$2 R=$D/$1 sp= pre=()
    mkdir -p "$R"
    local req=ipc://$R/req
    "$BIN/picomdm-broker" --request-endpoint "$req" --publish-endpoint "ipc://$R/pub" \
        --subscribe-endpoint "ipc://$R/sub" --run-dir "$R" >"$R/broker.log" 2>&1 &
    PIDS+=($!)
    "$BIN/picomdm-scheduler" --request-endpoint "$req" --delivered-timeout-s 0 \
        --wake-sweep-s 0 >"$R/sched.log" 2>&1 &
    PIDS+=($!)
    [ "$mode" = cg ] && pre=(valgrind --tool=callgrind --separate-threads=no
        --callgrind-out-file="$R/cg.out")
    "${pre[@]}" "$BIN/picomdm-store" --data-dir "$R/data" --request-endpoint "$req" \
        --publish-endpoint "ipc://$R/pub" >"$R/store.log" 2>&1 &
    local store=$!
    PIDS+=($store)
    for _ in $(seq 150); do grep -q "serving 'store'" "$R/store.log" && break; sleep 0.2; done
    grep -q "serving 'store'" "$R/store.log" || { echo "  the store did not start: see $R/store.log"; return 1; }
    drv() { timeout 300 "$TT/queuedrv" --request-endpoint "$req" --timeout-ms 20000 "$@"; }
    drv enroll --n "$n" --window 32 >"$R/e.out" 2>&1 || { echo "  enroll failed"; return 1; }
    drv enqueue --n "$n" --uuid BENCH-1 >"$R/q.out" 2>&1 || { echo "  enqueue failed"; return 1; }
    if [ "$mode" = cg ]; then
        callgrind_control -z "$store" >/dev/null 2>&1
    else
        local ev
        ev=$(printf "syscalls:sys_enter_%s," "${SC[@]}")
        perf stat --per-thread -e "${ev%,}" -o "$R/perf.txt" -p "$store" 2>/dev/null &
        sp=$!
        sleep 0.5
    fi
    local c0 c1 sw0 sw1 reqs=$((2 * n))
    c0=$(awk '{ print $14 + $15 }' /proc/$store/stat)
    sw0=$(cat /proc/$store/task/*/status | awk '/ctxt_switches/ { s += $2 } END { print s }')
    drv sessions --n "$n" --uuid BENCH-1 --window 32 --query-responses >"$R/s.out" 2>&1 ||
        { echo "  sessions failed: $(tail -n 2 "$R/s.out")"; return 1; }
    c1=$(awk '{ print $14 + $15 }' /proc/$store/stat)
    sw1=$(cat /proc/$store/task/*/status | awk '/ctxt_switches/ { s += $2 } END { print s }')
    [ "$mode" = cg ] && callgrind_control -d "$store" >/dev/null 2>&1
    [ -n "$sp" ] && { kill -INT "$sp"; wait "$sp" 2>/dev/null; }
    echo "  $mode, $n sessions = $reqs store requests: $(sed -n 's/^per_s=//p' "$R/s.out") sessions/s;" \
        "store CPU $(((c1 - c0) * 1000000 / $(getconf CLK_TCK) / reqs)) us per request," \
        "$(awk -v a="$sw0" -v b="$sw1" -v r=$reqs 'BEGIN { printf "%.2f", (b - a) / r }') context switches per request" \
        "(all threads); load $(cut -d' ' -f1 /proc/loadavg)"
    kill -INT "$store"
    for _ in $(seq 100); do kill -0 "$store" 2>/dev/null || break; sleep 0.1; done
    if [ "$mode" = cg ]; then
        local f
        f=$(ls "$R"/cg.out.* 2>/dev/null | head -n 1)
        [ -n "$f" ] || { echo "  no callgrind dump"; return 1; }
        callgrind_annotate --inclusive=yes --tree=calling "$f" 2>/dev/null >"$R/tree.txt"
        cg_report "$R/tree.txt" "$reqs"
    else
        echo "  system calls per request, per thread (perf stat):"
        awk -v r=$reqs '$2 ~ /^[0-9]+$/ && $2 > 0 && $3 ~ /^syscalls:/ {
            t = $1; sub(/-[0-9]+$/, "", t); s = $3; sub(/syscalls:sys_enter_/, "", s)
            line[$1] = line[$1] sprintf(" %s %.2f", s, $2 / r); name[$1] = t }
            END { for (k in line) printf "    %-16s%s\n", name[k], line[k] }' "$R/perf.txt"
    fi
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    PIDS=()
}

echo "store thread bench: $BIN/picomdm-store"
rc=0 # a run that could not be made fails the bench (tests/bench.sh reports it)
if [ -z "${SKIP_CG:-}" ]; then
    if command -v valgrind >/dev/null && command -v callgrind_control >/dev/null; then
        run cg "${CG_N:-500}" || rc=1
    else echo "  (no valgrind: callgrind figures skipped)"; fi
fi
if [ -z "${SKIP_PERF:-}" ]; then
    if perf stat -e syscalls:sys_enter_getpid true >/dev/null 2>&1; then
        run perf "${PERF_N:-2000}" || rc=1
    else echo "  (perf cannot count syscall tracepoints here: system calls skipped)"; fi
fi
exit $rc
