#!/bin/bash
# enroll_e2e: enrollments from zero through the whole server, as a device does
# them: profile download (/mdm/enroll) + SCEP (GetCACaps, GetCACert, PKCSReq)
# + Authenticate + TokenUpdate, signed. Prints enrollments/s and the server's
# CPU per enrollment (every PicoMDM process that `picomdm up` started, from
# /proc/<pid>/stat), context switches and minor page faults per enrollment
# per process, next to the simulator's own CPU.
#   ENROLL_BENCH_N=200 tests/bench/enroll_e2e.sh
# ENROLL_BENCH_KEEPALIVE=false: a new TLS connection per enrollment request
# (the simulator's behaviour before it kept one per device).
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
PICOMDM_ENROLL_BASIC_AUTH= "$BIN/picomdm" up --data-dir "$T/var" --bin-dir "$BIN" \
    --listen "127.0.0.1:$PORT" --stop-timeout 3000 --log-level warn >"$T/up.log" 2>&1 &
UP_PID=$!
export PICOMDM_CONFIG=$T/var/run/picomdm.cfg
TLS=$T/var/pki/tls.crt
URL=https://localhost:$PORT
health() { curl -sf --cacert "$TLS" "$URL/scep?operation=GetCACaps" 2>/dev/null | grep -q POSTPKIOperation; }
wait_for 30 health || { echo "the server did not come up:"; tail -20 "$T/up.log"; exit 1; }

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
# the simulator makes every device's RSA key first, says so, and waits for
# $T/go: the server's CPU is counted from then on, over the exchanges alone
"$BIN/picomdm-devsim" --enroll-url "$URL/mdm/enroll" --ca-bundle "$TLS" --devices "$N" \
    --concurrency 16 --rounds 0 --timeout-ms 30000 --enroll-keepalive="${ENROLL_BENCH_KEEPALIVE:-true}" \
    --go-file "$T/go" >"$T/ds.out" 2>"$T/ds.err" &
DS=$!
keys_made() { grep -q "device keys made" "$T/ds.out"; }
n=0; while ! keys_made && kill -0 $DS 2>/dev/null && [ $n -lt 12000 ]; do sleep 0.05; n=$((n + 1)); done
keys_made || { echo "the simulator did not make its keys (exited, or > 600 s):"; tail -5 "$T/ds.err"; exit 1; }
PROF_PIDS=
if [ -n "${ENROLL_BENCH_PROFILE:-}" ]; then
    mkdir -p "$ENROLL_BENCH_PROFILE"
    tools=${ENROLL_BENCH_PROFILE_TOOLS:-perf stat strace}
    for pid in $(pgrep -P "$UP_PID") $DS; do
        name=$(awk '{gsub(/[()]/, "", $2); print $2}' "/proc/$pid/stat")
        case " $tools " in *" perf "*)
            perf record -q --call-graph "${ENROLL_BENCH_PERF_CG:-fp}" -p "$pid" -o "$ENROLL_BENCH_PROFILE/perf.$name.data" >/dev/null 2>&1 &
            PROF_PIDS="$PROF_PIDS $!";; esac
        case " $tools " in *" stat "*)
            perf stat -e context-switches,cpu-migrations,task-clock -p "$pid" \
                -o "$ENROLL_BENCH_PROFILE/stat.$name.txt" >/dev/null 2>&1 &
            PROF_PIDS="$PROF_PIDS $!";; esac
        case " $tools " in *" strace "*)
            strace -c -f -p "$pid" -o "$ENROLL_BENCH_PROFILE/strace.$name.txt" >/dev/null 2>&1 &
            PROF_PIDS="$PROF_PIDS $!";; esac
    done
    sleep 1 # let them attach
fi
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
echo "enroll_e2e: $N devices from the enrollment URL (profile + SCEP + Authenticate + TokenUpdate), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  wall          $ms ms = $((N * 1000 / (ms > 0 ? ms : 1))) enrollments/s (device keys made before; the simulator shares the cores)"
echo "  server CPU    $cpu_ms ms = $((cpu_ms * 1000 / N)) µs per enrollment (all PicoMDM processes; target ≤ 3,000 µs)"
echo "                net of the idle server ($idle_ms ms over the same time): $((net_ms * 1000 / N)) µs per enrollment"
# per process: CPU over the run, and net of that process's own idle cost
join "$T/idle0" "$T/idle1" | join - "$T/before" | join - "$T/after" | awk -v hz="$HZ" -v n="$N" -v ms="$ms" \
    '{run = ($5 - $4) * 1000 / hz; idle = ($3 - $2) * 1000 / hz * ms / 5000;
      printf "  %-18s %6d ms CPU = %6d µs per enrollment (net of idle: %6d µs)\n", $1, run, run * 1000 / n, (run - idle) * 1000 / n}'
join "$T/csw0" "$T/csw1" | awk -v n="$N" '{ d = $3 - $2; t += d; l = l sprintf(" %s %.0f", substr($1, 9), d / n) }
    END { printf "  context switches per enrollment: %.0f (%s)\n", t / n, substr(l, 2) }'
join "$T/flt0" "$T/flt1" | awk -v n="$N" '{ d = $3 - $2; t += d; l = l sprintf(" %s %.1f", substr($1, 9), d / n) }
    END { printf "  minor page faults per enrollment: %.1f (%s)\n", t / n, substr(l, 2) }'
# the simulator's own CPU over the exchanges: its total at exit (it prints it)
# minus what it had used when the keys were made
awk -v b="$sim_before" -v hz="$HZ" -v n="$N" '/^devsim +cpu user/ {
    printf "  %-18s %6d ms CPU = %6d µs per enrollment (the simulator, keys excluded)\n",
        "picomdm-devsim", ($4 + $7) * 1000 - b * 1000 / hz, (($4 + $7) * 1000 - b * 1000 / hz) * 1000 / n }' "$T/ds.out"
grep -E "^(scep|enroll|devsim) " "$T/ds.out" | sed 's/^/  /'
