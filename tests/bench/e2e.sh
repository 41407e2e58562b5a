#!/bin/bash
# e2e benchmark (figures, not pass/fail): the whole server — broker, store,
# scheduler, TLS gateway checking every Mdm-Signature — driven by the device
# simulator. For each N: N devices enroll (Authenticate + TokenUpdate), the
# operator queues one DeviceInformation for all of them (picomdm enqueue),
# and each device runs one session (Idle -> command -> Acknowledged -> empty):
# a closed loop (CONCURRENCY sessions always in flight: the maximum
# throughput). Then one more DeviceInformation for every device and an open
# loop (picomdm-devsim --rate RATE): session i starts at i / RATE s whatever
# the server does, and each session's first request is timed from its
# scheduled start, so p99 is the latency at that offered load (a server that
# falls behind is charged for the wait). Issue #4's rate target is judged on
# the open loop (RATE 1,520 sessions/s = 3,040 device requests/s offered).
# Then the same open loop once more with warm connections (picomdm-devsim
# --warm-connections: the RATE_CONCURRENCY connections opened, each a TLS
# handshake, before the timetable starts, outside the phase's figures): its
# p99 and the share of requests over 20 ms in each second of the phase show
# the steady state without the burst of handshakes at t = 0. It does not
# judge the target line (the cold open loop above does, as a fleet's first
# check-ins would find no connection open).
# Printed per phase: device requests/s, latency p50/p99 (devsim), CPU seconds
# per process and per device request; at the end peak RSS (VmHWM) per process.
#   tests/bench/e2e.sh [N...]          (default: 1000 10000)
#   CONCURRENCY=32 RATE=1520 (0: no open-loop phase; "1500 1250 1000": one
#   open-loop phase per rate, in that order, a sweep) RATE_CONCURRENCY=128
#   KEY_TYPE=ec|rsa GW_ARGS="--cert-cache 0" PERF=gateway|devsim LIST_ALL=1
#   LATENCY_LOG=DIR (each phase's requests, one line each: DIR/latency-<N>-<phase>.txt)
#   SETTLE_S=0 (seconds to wait after each enqueue, before the phase it is for)
#   DEVSIM_WRAP="strace -c -o FILE" (a command the simulator runs under)
#   DEVSIM=PATH (another build of picomdm-devsim, e.g. for a before/after)
#   WARM=0 (no open loop with warm connections; WARM=1, the default: one, at
#   the first RATE)
#   STORE_ARGS="--log-level debug" (extra picomdm-store options), BROKER_ARGS="--cpu 0"
#   (extra picomdm-broker options)
#   KEEP_LOGS=DIR (copy each size's server logs to DIR/<N>-*.log, and the wall
#   clock at each phase's start to DIR/<N>-phases.txt, before they are removed)
#   THREADS=store (default; broker, scheduler, gateway; "" for none): that
#   process's CPU and context switches per device request by thread, per phase
cd "$(dirname "$0")/../.."
export BIN=${BIN:-$PWD/bin}
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(1000 10000)
CONC=${CONCURRENCY:-32}
RATE=${RATE:-1520}                  # open loop: sessions started per second (a list: a sweep)
RCONC=${RATE_CONCURRENCY:-128}      # open loop: the cap on transfers in flight
source tests/it/e2e_lib.bash
DEVSIM=${DEVSIM:-$BIN/picomdm-devsim}
[ -x "$DEVSIM" ] || skip "skipped: $DEVSIM is not built"

tck=$(getconf CLK_TCK)
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; } # clock ticks, user + system
# context switches (voluntary + involuntary) of every thread of a process: on
# this paravirtualised VM each sleep/wake costs tens of µs, the main cost of a bus hop
csw() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }'; }
# per thread of a process, one line each: tid name cpu-ticks voluntary involuntary
threads() { local t; for t in /proc/"$1"/task/*; do
    { awk -v tid="${t##*/}" '{ i = index($0, "("); j = match($0, /\) [A-Za-z] /); c = substr($0, i + 1, j - i - 1); gsub(/ /, "_", c)
        split(substr($0, j + 2), f, " "); printf "%s %s %d", tid, c, f[12] + f[13] }' "$t/stat"
      awk '/^voluntary_ctxt/ { v = $2 } /^nonvoluntary_ctxt/ { n = $2 } END { printf " %d %d\n", v, n }' "$t/status"; } 2>/dev/null
  done; }
# THREADS=store (default; "" for none): that process's CPU and context
# switches per device request by thread after each phase: "main" (the
# process's first thread), the others by name (the store's checkpoint thread
# keeps the process's name; libzmq's are ZMQbg/...), threads of one name summed
thread_report() { # thread_report NAME BEFORE-FILE AFTER-FILE REQUESTS
    awk -v r="$4" -v t=$tck -v who="$1" -v pid="${P[$1]}" 'NR == FNR { c[$1] = $3; v[$1] = $4; n[$1] = $5; next }
        { k = $1 == pid ? "main" : $2; cpu[k] += $3 - c[$1]; vol[k] += $4 - v[$1]; inv[k] += $5 - n[$1]; if (!(k in seen)) { seen[k] = 1; order[++m] = k } }
        END { line = sprintf("  %s %s threads, per device request: CPU µs, context switches voluntary/involuntary:", ph, who)
            for (i = 1; i <= m; i++) { k = order[i]; line = line sprintf(" %s %.0f %.2f/%.2f;", k, r ? cpu[k] / t / r * 1e6 : 0, r ? vol[k] / r : 0, r ? inv[k] / r : 0) }
            print line }' ph="$5" "$2" "$3"
}
declare -A P
run_size() {
    local n=$1 ids=$T/ids-$n seed=$((7000 + $1))
    gw_pki
    gw_broker
    gw_watch
    gw_store ${STORE_ARGS:-}
    gw_scheduler --log-level warn
    gw_tls --log-level warn ${GW_ARGS:-} # GW_ARGS: extra gateway options (e.g. --cert-cache 0)
    P=([broker]=$BROKER_PID [store]=$STORE_PID [scheduler]=$SCHED_PID [gateway]=$GW_PID)
    local DS=("$DEVSIM" --url "$URL" --ca-bundle "$PKI/ca.pem" --ca-cert "$PKI/ca.pem"
        --ca-key "$PKI/ca.key" --identity-dir "$ids" --devices "$n" --concurrency "$CONC"
        --seed "$seed" --key-type "${KEY_TYPE:-ec}" --timeout-ms 30000 --log-level warn)
    echo "--- $n devices, concurrency $CONC, ${KEY_TYPE:-ec} device keys, TLS + Mdm-Signature"
    phase() { # phase NAME REQUESTS-PER-DEVICE devsim-args...
        local name=$1 per=$2 k before total=0 line
        shift 2
        declare -A c0
        declare -A s0
        for k in "${!P[@]}"; do c0[$k]=$(cpu "${P[$k]}"); s0[$k]=$(csw "${P[$k]}"); done
        local tw=${THREADS-store}
        [ -z "$tw" ] || threads "${P[$tw]}" >"$T/threads0"
        local perf_pid=
        [ -z "${KEEP_LOGS:-}" ] || echo "$name $(date +%s.%N)" >>"$KEEP_LOGS/$n-phases.txt"
        if [ -n "${PERF:-}" ] && [ "$PERF" != devsim ]; then # PERF=gateway: perf record that process (perf report -i perf-<name>.data)
            perf record -q --call-graph ${PERF_CG:-fp} -p "${P[$PERF]}" -o "${PERF_DIR:-/tmp}/perf-$name.data" >/dev/null 2>&1 &
            perf_pid=$!
        fi
        local pre=(${DEVSIM_WRAP:-}) # e.g. DEVSIM_WRAP="strace -c -o /tmp/ds.strace": a command the simulator runs under
        [ "${PERF:-}" != devsim ] || pre=(perf record -q --call-graph "${PERF_CG:-dwarf}" -o "${PERF_DIR:-/tmp}/perf-devsim-$name.data" --)
        local llog=${LATENCY_LOG:+$LATENCY_LOG/latency-$n-$name.txt}
        [ -n "$llog" ] || [[ $name != *-warm ]] || llog=$T/latency-$name.txt # the warm loop's per-second figures
        "${pre[@]}" "${DS[@]}" "$@" ${llog:+--latency-log "$llog"} >"$T/$name.out" 2>&1 || { cat "$T/$name.out"; fail "devsim $name failed"; }
        [ -z "$perf_pid" ] || { kill -INT $perf_pid; wait $perf_pid; }
        grep -E '^(enroll|session|devsim)' "$T/$name.out" | sed 's/^/  /'
        grep -q 'http errors 0, transport errors 0, bad replies 0' "$T/$name.out" ||
            echo "  WARNING: devsim saw errors: $(tail -n 1 "$T/$name.out")"
        local reqs=$(awk '/requests, latency/ { for (i = 1; i <= NF; i++) if ($(i) ~ /^requests,/) s += $(i - 1) } END { print s + 0 }' "$T/$name.out")
        line="  $name CPU (s):"
        for k in broker store scheduler gateway; do
            local d=$(($(cpu "${P[$k]}") - c0[$k]))
            total=$((total + d))
            line+=" $k $(awk -v d=$d -v t=$tck 'BEGIN { printf "%.2f", d / t }')"
        done
        echo "$line"
        line="  $name context switches per device request:"
        for k in broker store scheduler gateway; do
            line+=" $k $(awk -v d=$(($(csw "${P[$k]}") - s0[$k])) -v r=$reqs 'BEGIN { printf "%.1f", r ? d / r : 0 }')"
        done
        echo "$line"
        [ -z "$tw" ] || { threads "${P[$tw]}" >"$T/threads1"; thread_report "$tw" "$T/threads0" "$T/threads1" "$reqs" "$name"; }
        awk -v t=$total -v tck=$tck -v r=$reqs 'BEGIN { printf "  %s: %d device requests, server CPU %.2f s = %.0f us per device request\n", "'"$name"'", r, t / tck, r ? t / tck / r * 1e6 : 0 }'
        # the simulator's own CPU in this phase (its "devsim <phase>: cpu" line:
        # start-up and identity loading excluded), next to the server's
        awk -v t=$total -v tck=$tck -v r=$reqs -v n="$name" '/^devsim +[a-z]+( [0-9]+)?: cpu user/ { for (i = 1; i <= NF; i++) { if ($i == "user") u += $(i + 1); if ($i == "sys") s += $(i + 1) } }
            END { printf "  %s: simulator CPU %.2f s (user %.2f sys %.2f) = %.0f us per device request; server %.0f us; simulator share of the CPU used %.0f %%\n", n, u + s, u, s, (r ? (u + s) / r * 1e6 : 0), (r ? t / tck / r * 1e6 : 0), (u + s + t / tck ? 100 * (u + s) / (u + s + t / tck) : 0) }' "$T/$name.out"
    }
    phase enroll 2 --rounds 0
    # the enrollment ids, 1,000 per listing (as an operator script pages them:
    # one listing of all 10,000 costs the scheduler ~16 MB of msgpack for a moment)
    # (LIST_ALL=1: one listing of all, as before)
    local after= page
    : >"$T/eids"
    [ -z "${LIST_ALL:-}" ] || cli devices --limit $((n + 10)) | awk 'NR > 1 { print $1 }' >"$T/eids"
    while [ -z "${LIST_ALL:-}" ]; do
        # (the page after the last one says "no enrollments yet" on stderr: not an error)
        page=$(cli devices --limit 1000 ${after:+--after "$after"} 2>"$T/devices.err" | awk 'NR > 1 { print $1 }')
        grep -v '^no enrollments yet' "$T/devices.err" >&2
        [ -n "$page" ] || break
        echo "$page" >>"$T/eids"
        after=$(tail -n 1 <<<"$page")
        [ "$(wc -l <<<"$page")" -eq 1000 ] || break
    done
    # one DeviceInformation for every device, in chunks of 1000 targets per enqueue
    queue_all() {
        local t0=$(date +%s%N) f
        split -l 1000 "$T/eids" "$T/chunk."
        for f in "$T"/chunk.*; do
            cli enqueue DeviceInformation --no-push --set Queries=OSVersion,LastCloudBackupDate \
                --to "$(paste -sd, "$f")" >/dev/null 2>>"$T/enqueue.err" || fail "enqueue failed: $(tail -n 2 "$T/enqueue.err")"
        done
        rm -f "$T"/chunk.*
        echo "  enqueue: $(wc -l <"$T/eids") targets in $((($(date +%s%N) - t0) / 1000000)) ms"
        [ "${SETTLE_S:-0}" = 0 ] || sleep "$SETTLE_S"
    }
    queue_all
    echo "  closed loop: concurrency $CONC"
    phase session 2 --no-enroll --rounds 1
    grep '^answers' "$T/session.out" | sed 's/^/  /'
    # peak RSS (VmHWM) of every process so far (kB); after the closed loop it
    # is comparable with earlier sessions' figure; the RSS target is judged
    # on the peak of the whole run (below)
    hwm() { local k s=0; for k in broker store scheduler gateway; do s=$((s + $(awk '/VmHWM/ { print $2 }' "/proc/${P[$k]}/status"))); done; echo $s; }
    local rss_closed=$(($(hwm) / 1024))
    local rate rates=()
    [ "$RATE" = 0 ] || read -r -a rates <<<"$RATE"
    for rate in "${rates[@]}"; do
        queue_all
        echo "  open loop: $rate sessions/s, at most $RCONC transfers in flight"
        phase "open-$rate" 2 --no-enroll --rounds 1 --rate "$rate" --concurrency "$RCONC"
    done
    local wrate=
    [ "${WARM:-1}" = 0 ] || [ ${#rates[@]} -eq 0 ] || wrate=${rates[0]}
    if [ -n "$wrate" ]; then
        queue_all
        echo "  open loop with warm connections: $wrate sessions/s, at most $RCONC transfers in flight, $RCONC connections opened before the timetable (not in the figures)"
        phase "open-$wrate-warm" 2 --no-enroll --rounds 1 --rate "$wrate" --concurrency "$RCONC" --warm-connections
    fi
    echo "  gateway /health: $(curl -sS -m 5 --cacert "$PKI/ca.pem" "$URL/health" | grep cache | tr '\n' ';')"
    local line="  peak RSS (MB):" sum=0 k
    for k in broker store scheduler gateway; do
        local kb=$(awk '/VmHWM/ { print $2 }' "/proc/${P[$k]}/status")
        sum=$((sum + kb))
        line+=" $k $((kb / 1024))"
    done
    echo "$line; all $((sum / 1024)) MB (after the closed loop: $rss_closed MB)"
    # issue #4's targets (one command round trip per device: Idle -> command,
    # Acknowledged -> empty reply; 2 requests each). The closed loop gives the
    # maximum throughput; its latency is fixed by the loop (mean = concurrency
    # / rate, Little), so it does not judge the latency target.
    awk -v n="$n" -v c="$CONC" -v rss=$((sum / 1024)) -v rssc=$rss_closed -v open="$RATE" '/^session [0-9]+ .* requests, latency/ {
            for (i = 1; i <= NF; i++) { if ($i == "in") t = $(i + 1); if ($i == "requests,") r = $(i - 1); if ($i == "p50") p50 = $(i + 1); if ($i == "p99") p99 = $(i + 1) } }
        /^session [0-9]+ +on an open connection/ { for (i = 1; i <= NF; i++) if ($i == "p99") k99 = $(i + 1) }
        END { rate = t > 0 ? r / t : 0
            printf "  closed loop (%d devices, concurrency %d): maximum %.0f device requests/s, p50 %.1f ms, p99 %.1f ms (the requests on an already open connection alone: p99 %s), mean %.1f ms (= concurrency / rate, Little)%s; peak RSS of the run %d MB (< 150 MB: %s; %d MB after the closed loop)\n",
                n, c, rate, p50, p99, (k99 == "" ? "n/a" : k99 " ms"), (rate > 0 ? 1000 * c / rate : 0), (open == 0 ? (rate >= 3000 ? "; >= 3000/s: met" : "; >= 3000/s: NOT met") : ""), rss, (rss < 150 ? "met" : "NOT met"), rssc
            print rate > "'"$T/closed.rate"'" }' "$T/session.out"
    # the rate target, on the open loop: achieved >= 3,000 device requests/s
    # (jobs completed per second from the first session's end to the last
    # one's, times the requests per session; strictly: the default offers
    # 1,520 sessions/s, 1.3 % above the target, because a server that keeps
    # up with exactly 3,000/s measures 3,000 +- the last sessions' spread)
    # and p99 < 20 ms, every first request timed from its scheduled start
    for rate in "${rates[@]}"; do awk -v n="$n" -v rc="$RCONC" -v cmax="$(cat "$T/closed.rate")" '
        /^session [0-9]+ .* requests, latency/ { for (i = 1; i <= NF; i++) if ($i == "failed") f = $(i - 1) }
        / open loop: / { for (i = 1; i < NF; i++) {
                if ($i == "offered") { os = $(i + 1); gsub(/[(=]/, "", $(i + 4)); o = $(i + 4) }
                if ($i == "achieved") a = $(i + 1)
                if ($i == "(corrected:") { for (k = i; k < NF; k++) if ($k == "p99") { p99 = $(k + 1); break } }
                if ($i == "last" && $(i + 1) == "started") b = $(i + 2) } }
        END { if (a > o) a = o # a completion-time estimate can read a little above what was offered
            rok = a >= 3000 && o >= 3000; lok = p99 != "" && p99 < 20
            printf "  targets (%d devices, open loop %s sessions/s, at most %d in flight): offered %.0f device requests/s, achieved %.0f (>= 3000: %s), p99 %.1f ms from the scheduled start (< 20 ms: %s), last session started %s ms behind schedule; rate target (3,000/s with p99 < 20 ms) %s; closed-loop maximum %.0f device requests/s\n",
                n, os, rc, o, a, (rok ? "met" : "NOT met"), p99, (lok ? "met" : "NOT met"), b, (rok && lok && f == 0 ? "met" : "NOT met"), cmax }' "$T/open-$rate.out"; done
    # the open loops' requests over 20 ms in each second of the phase (from
    # the latency log: a request counts in the second it was due, i.e. its
    # scheduled start for a session's first request, its sending otherwise);
    # always for the warm loop, for the others with LATENCY_LOG
    persec() { # persec FILE LABEL (log lines: phase, sent, reply, latency ms, first; the phase name has a space)
        [ -s "$1" ] || return 0
        awk -v label="$2" '{ due = $(NF - 2) - $(NF - 1) / 1000; d[NR] = due; l[NR] = $(NF - 1); if (NR == 1 || due < t0) t0 = due }
            END { for (i = 1; i <= NR; i++) { s = int(d[i] - t0); n[s]++; if (l[i] > 20) o[s]++; if (s > m) m = s; if (l[i] > 20) all++ }
                line = sprintf("  %s: requests over 20 ms, %d of %d (%.1f %%); per second of the phase:", label, all, NR, NR ? 100 * all / NR : 0)
                for (s = 0; s <= m; s++) line = line sprintf(" %ds %.1f%% (%d/%d)", s, n[s] ? 100 * o[s] / n[s] : 0, o[s], n[s])
                print line }' "$1"
    }
    if [ -n "${LATENCY_LOG:-}" ]; then
        for rate in "${rates[@]}"; do persec "$LATENCY_LOG/latency-$n-open-$rate.txt" "open loop $rate sessions/s (cold: connections opened during the phase, as needed)"; done
    fi
    if [ -n "$wrate" ]; then
        local wlog=${LATENCY_LOG:+$LATENCY_LOG/latency-$n-open-$wrate-warm.txt}
        wlog=${wlog:-$T/latency-open-$wrate-warm.txt}
        awk -v n="$n" -v rc="$RCONC" '
            / warm-up \(--warm-connections/ { for (i = 1; i < NF; i++) if ($i == "connections" && $(i + 1) == "opened") wc = $(i - 1) }
            /^session [0-9]+ +connections opened \(TLS handshakes\)/ { pc = $7 }
            / open loop: / { for (i = 1; i < NF; i++) {
                    if ($i == "offered") { os = $(i + 1); gsub(/[(=]/, "", $(i + 4)); o = $(i + 4) }
                    if ($i == "achieved") a = $(i + 1)
                    if ($i == "(corrected:") { for (k = i; k < NF; k++) { if ($k == "p50") p50 = $(k + 1); if ($k == "p99") { p99 = $(k + 1); break } } }
                    if ($i == "last" && $(i + 1) == "started") b = $(i + 2) } }
            END { if (a > o) a = o
                printf "  open loop with warm connections (%d devices, %s sessions/s, at most %d in flight; %s connections opened before the timetable, %s during the phase; not the target line): offered %.0f device requests/s, achieved %.0f, p50 %.1f ms, p99 %.1f ms from the scheduled start (< 20 ms: %s), last session started %s ms behind schedule\n",
                    n, os, rc, wc, pc, o, a, p50, p99, (p99 != "" && p99 < 20 ? "met" : "NOT met"), b }' "$T/open-$wrate-warm.out"
        persec "$wlog" "open loop $wrate sessions/s with warm connections"
    fi
    echo "  database: $(du -sh "$T/data" | cut -f1)"
    # stop this set before the next size
    for k in gateway scheduler store broker; do kill "${P[$k]}" 2>/dev/null; done
    kill "$WATCH_PID" 2>/dev/null
    wait 2>/dev/null
    if [ -n "${KEEP_LOGS:-}" ]; then for k in "$T"/*.log; do cp "$k" "$KEEP_LOGS/$n-$(basename "$k")"; done; fi
    rm -rf "$T/data" "$T/pki" "$ids" "$T"/*.log "$T/events.jsonl"
}
for n in "${SIZES[@]}"; do run_size "$n"; done
