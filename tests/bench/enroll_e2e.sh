#!/bin/bash
# enroll_e2e: enrollments from zero through the whole server, as a device does
# them: profile download (/mdm/enroll) + SCEP (GetCACaps, GetCACert, PKCSReq)
# + Authenticate + TokenUpdate, signed. Prints enrollments/s and the server's
# CPU per enrollment (every PicoMDM process that `picomdm up` started, from
# /proc/<pid>/stat), context switches and minor page faults per enrollment
# per process, next to the simulator's own CPU.
#   ENROLL_BENCH_N=200 tests/bench/enroll_e2e.sh
# Three runs against one server (each with N new devices, new UDIDs):
#   c1-device:  one device at a time (as sessions 3-5 measured, but NOT
#               comparable with their figures: they made ~1.1 TLS handshakes
#               per enrollment, this run 3), each device's profile download, SCEP and
#               check-ins on its own new TLS connection: 3 full handshakes per
#               enrollment, as a real device (Safari, the profile installer,
#               mdmd: three programs, three connections);
#   c16-device: 16 devices enrolling at once (a fleet), same connections;
#   c16-shared: 16 at once over 16 kept-alive connections shared by all
#               devices (~0 handshakes per enrollment: a lower bound, what the
#               e2e session bench does), not what devices cost.
# ENROLL_BENCH_RUNS="16:device 16:request" picks others (concurrency:connections,
# connections = device, shared or request: a new connection per request).
# The RSA-2048 device keys (the simulator's cost, made before the timed
# phase) are made once into a key directory and read by every run: each
# device of a run has its own key.
# ENROLL_BENCH_PROFILE=DIR: over the exchanges, also run `perf record -g`,
# `perf stat -e context-switches` and `strace -c -f` on every server process
# and on the simulator
# (one at a time is not needed: all attach after the keys are made) and keep
# their output in DIR (perf.<name>.data, stat.<name>.txt, strace.<name>.txt).
# The tools' own overhead inflates the CPU figures of that run: use it to see
# where the time goes and to count system calls and wakeups, not for the
# headline figure. ENROLL_BENCH_PROFILE_TOOLS="perf stat strace" picks some;
# ENROLL_BENCH_PERF_CG=dwarf for call graphs through libraries built without
# frame pointers (OpenSSL, libzmq).
set -u
cd "$(dirname "$0")/../.." || exit 1
BIN=${BIN:-$PWD/bin}
N=${ENROLL_BENCH_N:-200}
T=$(mktemp -d /tmp/enroll_bench.XXXXXX)
UP_PID=
DS=
cleanup() {
    [ -n "$DS" ] && kill -TERM "$DS" 2>/dev/null
    [ -n "$UP_PID" ] && kill -TERM "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
. tests/it/common.inc

PORT=$(free_port) || { echo "no free port found"; exit 1; }
PICOMDM_ENROLL_BASIC_AUTH= up_enroll_server "$BIN" 3000 30 --log-level warn ||
    { echo "the server did not come up:"; tail -20 "$T/up.log"; exit 1; }

# CPU ticks (user + system) of every process `picomdm up` supervises
server_ticks() {
    local sum=0 pid
    for pid in $(pgrep -P "$UP_PID"); do
        [ -r "/proc/$pid/stat" ] || continue
        sum=$((sum + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$sum"
}
HZ=$(getconf CLK_TCK)
# per process: "name ticks" lines
per_process() {
    local pid
    for pid in $(pgrep -P "$UP_PID"); do
        [ -r "/proc/$pid/stat" ] && awk '{gsub(/[()]/, "", $2); print $2, $14 + $15}' "/proc/$pid/stat"
    done | sort
}
# per process: "name context-switches" lines (voluntary + involuntary, every
# thread): on this paravirtualised VM each sleep/wake costs ~10 µs or more
per_process_csw() {
    local pid
    for pid in $(pgrep -P "$UP_PID"); do
        [ -r "/proc/$pid/stat" ] || continue
        echo "$(awk '{gsub(/[()]/, "", $2); print $2}' "/proc/$pid/stat") $(cat /proc/"$pid"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }')"
    done | sort
}
# per process: "name minor-page-faults" lines (first touches of memory the
# allocator got from, or gave back to, the kernel)
per_process_minflt() {
    local pid
    for pid in $(pgrep -P "$UP_PID"); do
        [ -r "/proc/$pid/stat" ] && awk '{gsub(/[()]/, "", $2); print $2, $10}' "/proc/$pid/stat"
    done | sort
}
# what the idle server costs (heartbeats, sweeps), to report the enrollment cost net of it
idle0=$(server_ticks)
per_process >"$T/idle0"
sleep 5
idle_ticks=$(($(server_ticks) - idle0))
per_process >"$T/idle1"

# one run: $1 = concurrency, $2 = connection mode (devsim --enroll-connections)
run_one() {
    local conc=$1 conns=$2 label="c$1-$2" seed=$3 pid name p tools
    # the simulator reads (or makes) every device's RSA key first, says so, and
    # waits for $T/go: the server's CPU is counted from then on, over the
    # exchanges alone
    rm -f "$T/go"
    "$BIN/picomdm-devsim" --enroll-url "$URL/mdm/enroll" --ca-bundle "$TLS" --devices "$N" \
        --concurrency "$conc" --enroll-connections "$conns" --rounds 0 --timeout-ms 30000 \
        --seed "$seed" --key-dir "$KEYS" --go-file "$T/go" >"$T/ds.out" 2>"$T/ds.err" &
    DS=$!
    keys_made() { grep -q "device keys" "$T/ds.out"; }
    n=0; while ! keys_made && kill -0 $DS 2>/dev/null && [ $n -lt 12000 ]; do sleep 0.05; n=$((n + 1)); done
    keys_made || { echo "the simulator did not make its keys (exited, or > 600 s):"; tail -5 "$T/ds.err"; exit 1; }
    PROF_PIDS=
    if [ -n "${ENROLL_BENCH_PROFILE:-}" ]; then
        p=$ENROLL_BENCH_PROFILE/$label
        mkdir -p "$p"
        tools=${ENROLL_BENCH_PROFILE_TOOLS:-perf stat strace}
        for pid in $(pgrep -P "$UP_PID") $DS; do
            name=$(awk '{gsub(/[()]/, "", $2); print $2}' "/proc/$pid/stat")
            case " $tools " in *" perf "*)
                perf record -q --call-graph "${ENROLL_BENCH_PERF_CG:-fp}" -p "$pid" -o "$p/perf.$name.data" >/dev/null 2>&1 &
                PROF_PIDS="$PROF_PIDS $!";; esac
            case " $tools " in *" stat "*)
                perf stat -e context-switches,cpu-migrations,task-clock -p "$pid" \
                    -o "$p/stat.$name.txt" >/dev/null 2>&1 &
                PROF_PIDS="$PROF_PIDS $!";; esac
            case " $tools " in *" strace "*)
                strace -c -f -p "$pid" -o "$p/strace.$name.txt" >/dev/null 2>&1 &
                PROF_PIDS="$PROF_PIDS $!";; esac
        done
        sleep 1 # let them attach
    fi
    local before after sim_before start ms rc cpu_ms idle_ms net_ms
    before=$(server_ticks)
    per_process >"$T/before"
    per_process_csw >"$T/csw0"
    per_process_minflt >"$T/flt0"
    sim_before=$(awk '{print $14 + $15}' "/proc/$DS/stat")
    touch "$T/go"
    start=$(date +%s%N)
    wait $DS
    rc=$?
    DS=
    for p in $PROF_PIDS; do kill -INT "$p" 2>/dev/null; done
    for p in $PROF_PIDS; do wait "$p" 2>/dev/null; done
    ms=$((($(date +%s%N) - start) / 1000000))
    after=$(server_ticks)
    per_process >"$T/after"
    per_process_csw >"$T/csw1"
    per_process_minflt >"$T/flt1"
    [ $rc = 0 ] || { echo "devsim exited $rc:"; tail -5 "$T/ds.err"; exit 1; }
    grep -q "^scep: $N device(s) got their identity" "$T/ds.out" || { cat "$T/ds.out"; exit 1; }
    cpu_ms=$(((after - before) * 1000 / HZ))
    idle_ms=$((idle_ticks * 1000 / HZ * ms / 5000))
    net_ms=$((cpu_ms - idle_ms))
    local hs csw
    hs=$(awk '/^enroll +connections opened/ { print $(NF-2) }' "$T/ds.out")
    echo "enroll_e2e [$label]: $N devices from the enrollment URL (profile + SCEP + Authenticate + TokenUpdate), concurrency $conc, connections: $conns; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "  wall          $ms ms = $((N * 1000 / (ms > 0 ? ms : 1))) enrollments/s (device keys made before; the simulator shares the cores)"
    echo "  server CPU    $cpu_ms ms = $((cpu_ms * 1000 / N)) µs per enrollment (all PicoMDM processes; target ≤ 3,000 µs)"
    echo "                net of the idle server ($idle_ms ms over the same time): $((net_ms * 1000 / N)) µs per enrollment"
    # per process: CPU over the run, and net of that process's own idle cost
    join "$T/idle0" "$T/idle1" | join - "$T/before" | join - "$T/after" | awk -v hz="$HZ" -v n="$N" -v ms="$ms" \
        '{run = ($5 - $4) * 1000 / hz; idle = ($3 - $2) * 1000 / hz * ms / 5000;
          printf "  %-18s %6d ms CPU = %6d µs per enrollment (net of idle: %6d µs)\n", $1, run, run * 1000 / n, (run - idle) * 1000 / n}'
    csw=$(join "$T/csw0" "$T/csw1" | awk -v n="$N" '{ d = $3 - $2; t += d; l = l sprintf(" %s %.0f", substr($1, 9), d / n) }
        END { printf "%.0f (%s)", t / n, substr(l, 2) }')
    echo "  context switches per enrollment: $csw"
    join "$T/flt0" "$T/flt1" | awk -v n="$N" '{ d = $3 - $2; t += d; l = l sprintf(" %s %.1f", substr($1, 9), d / n) }
        END { printf "  minor page faults per enrollment: %.1f (%s)\n", t / n, substr(l, 2) }'
    # the simulator's own CPU over the exchanges: its total at exit (it prints it)
    # minus what it had used when the keys were made
    awk -v b="$sim_before" -v hz="$HZ" -v n="$N" '/^devsim +cpu user/ {
        printf "  %-18s %6d ms CPU = %6d µs per enrollment (the simulator, keys excluded)\n",
            "picomdm-devsim", ($4 + $7) * 1000 - b * 1000 / hz, (($4 + $7) * 1000 - b * 1000 / hz) * 1000 / n }' "$T/ds.out"
    grep -E "^(scep|enroll|devsim) " "$T/ds.out" | sed 's/^/  /'
    SUMMARY="$SUMMARY$(printf '  %-11s %4d/s  %6d µs (net %6d)  %s TLS handshakes  %s context switches  load %s' \
        "$label" $((N * 1000 / (ms > 0 ? ms : 1))) $((cpu_ms * 1000 / N)) $((net_ms * 1000 / N)) "${hs:-?}" "$csw" \
        "$(cut -d' ' -f1 /proc/loadavg)")
"
}

KEYS=${ENROLL_BENCH_KEYS:-$T/keys}
SUMMARY=
seed=$(( $(date +%s) % 100000 * 1000 + 1 ))
for r in ${ENROLL_BENCH_RUNS:-1:device 16:device 16:shared}; do
    run_one "${r%%:*}" "${r#*:}" "$seed"
    seed=$((seed + 1))
    echo
done
echo "enroll_e2e summary, $N devices per run (server CPU per enrollment, all processes; target ≤ 3,000 µs):"
echo "  run         enroll/s  µs per enrollment   TLS handshakes per enrollment   context switches per enrollment (per process)"
printf '%s' "$SUMMARY"
echo "  (device = 3 new connections per enrollment as a real device makes them; shared = the simulator's pooled connections, a lower bound no fleet reaches)"
