#!/bin/bash
# The whole wake loop under load: `picomdm up` (broker, store, scheduler,
# pusher, ca, gateway), the APNs stand-in delivering to picomdm-devsim
# --push-listen with N enrolled devices. One `picomdm enqueue
# DeviceInformation` to all N, ROUNDS times; per round it prints the time from
# the enqueue until the stand-in has delivered every push and until `picomdm
# results` shows every device's Acknowledged (polled every 100 ms, so the
# last figure is up to ~0.1 s plus one CLI call late), then the simulator's
# session latency and CPU. The stand-in's delivery datagrams are dropped when
# the simulator's socket queue is full (net.unix.max_dgram_qlen, often 10):
# the count is printed, and the scheduler's wake sweep (WAKE_BENCH_SWEEP_S,
# default 2) re-pushes those devices, as it would after real APNs losses.
#   WAKE_BENCH_N=500 WAKE_BENCH_ROUNDS=3 WAKE_BENCH_CONC=32 tests/bench/wake.sh
. "$(dirname "$0")/../it/push_lib.inc"
for b in picomdm picomdm-devsim picomdm-pusher picomdm-gateway; do
    [ -x "$BIN/$b" ] || { echo "bin/$b is not built (run make)"; exit 1; }
done
N=${WAKE_BENCH_N:-500}
ROUNDS=${WAKE_BENCH_ROUNDS:-3}
CONC=${WAKE_BENCH_CONC:-32}
UP_PID= DS_PID=
bench_cleanup() {
    [ -n "$DS_PID" ] && kill "$DS_PID" 2>/dev/null
    if [ -n "$UP_PID" ]; then
        kill -TERM "$UP_PID" 2>/dev/null
        for _ in $(seq 80); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$UP_PID" 2>/dev/null
    fi
    for f in "$W"/var/run/*.pid; do [ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null; done
    cleanup
}
trap bench_cleanup EXIT
now_ms() { date +%s%3N; }
make_pki
start_fapns fapns --accept-any --deliver-unix "$W/push.sock"
port=$(free_port) || fail "no free port"
env PICOMDM_APNS="https://127.0.0.1:$FAPNS_PORT" PICOMDM_APNS_CA="$W/ca.pem" \
    PICOMDM_LOG_LEVEL=warning PICOMDM_WAKE_SWEEP_S=${WAKE_BENCH_SWEEP_S:-2} \
    "$BIN/picomdm" up --data-dir "$W/var" --listen "127.0.0.1:$port" --push-cert "$W/push.pem" \
    --stop-timeout 3000 >"$W/up.log" 2>&1 &
UP_PID=$!
export PICOMDM_CONFIG=$W/var/run/picomdm.cfg
P=("$BIN/picomdm" --timeout 10000 --retries 1)
for _ in $(seq 200); do "${P[@]}" devices >/dev/null 2>&1 && break; sleep 0.1; done
t0=$(now_ms)
"$BIN/picomdm-devsim" --url "https://127.0.0.1:$port" --ca-bundle "$W/var/pki/tls.crt" \
    --ca-cert "$W/var/pki/ca.crt" --ca-key "$W/var/pki/ca.key" --devices "$N" --concurrency "$CONC" \
    --topic "$TOPIC" --seed 99 --rounds 0 --push-listen "$W/push.sock" --log-level warning \
    >"$W/ds.out" 2>"$W/ds.err" &
DS_PID=$!
for _ in $(seq 1200); do grep -q "ready" "$W/ds.out" && break; kill -0 "$DS_PID" || break; sleep 0.1; done
grep -q "ready, $N of $N" "$W/ds.out" || { cat "$W/ds.out" "$W/ds.err" | tail; fail "devsim did not enroll $N"; }
echo "enrolled $N devices through the gateway in $(($(now_ms) - t0)) ms"
"${P[@]}" devices --json --limit 100000 | sed -n 's/.*"eid":"\([^"]*\)".*/\1/p' | paste -sd, >"$W/to"
acked() { "${P[@]}" results "$1" --limit 100000 --json 2>/dev/null | grep -c '"Acknowledged"'; }
for r in $(seq "$ROUNDS"); do
    u=$(tr a-z A-Z </proc/sys/kernel/random/uuid)
    d0=$(apns_stat delivered) e0=$(apns_stat deliver_errors)
    t0=$(now_ms) tp=
    "${P[@]}" enqueue DeviceInformation --to "$(cat "$W/to")" --set Queries=OSVersion --uuid "$u" \
        >/dev/null || fail "enqueue"
    end=$((t0 + 120000))
    while [ "$(now_ms)" -lt $end ]; do
        [ -z "$tp" ] && [ $(($(apns_stat delivered) - d0)) -ge "$N" ] && tp=$(($(now_ms) - t0))
        [ -n "$tp" ] && [ "$(acked "$u")" -ge "$N" ] && break
        sleep 0.1
    done
    a=$(acked "$u")
    printf 'round %d: one enqueue to %d devices: %d/%d Acknowledged in %d ms (%d pushes delivered, first %d by %s ms; %d datagrams dropped by the kernel, re-pushed by the sweep)\n' \
        "$r" "$N" "$a" "$N" $(($(now_ms) - t0)) $(($(apns_stat delivered) - d0)) "$N" "${tp:-never}" \
        $(($(apns_stat deliver_errors) - e0))
done
kill "$DS_PID"; wait "$DS_PID"; DS_PID=
grep -E "^(wake|answers|devsim|pushes)" "$W/ds.out"
