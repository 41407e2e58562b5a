#!/bin/bash
# e2e_backend_down — the back end goes away under the real gateway:
#   1. the scheduler is killed (-9): on the direct device path (the default,
#      docs/queue.md) devices are still served by the store with the policy
#      the gateway fetched — the queued command is delivered and acknowledged
#      — while the operator CLI says the bus did not answer (exit 3);
#   2. the scheduler comes back: the result is there for the operator;
#   3. the store is killed: devices get 503 with Retry-After promptly (never
#      a hang, never 401), /health says the back end is down, and service
#      resumes when the store is restarted on the same database, nothing lost;
#   4. a gateway with --device-path scheduler (every request through the
#      scheduler): the scheduler killed -> 503 with Retry-After, /health down;
#      back -> served.
source "$(dirname "$0")/e2e_lib.bash"
[ -x "$BIN/picomdm-devsim" ] || skip "skipped: $BIN/picomdm-devsim is not built"

SCHED_OPTS=(--store-timeout-ms 500 --store-retries 1)
gw_pki
gw_broker
gw_backend "${SCHED_OPTS[@]}"
gw_tls --backend-timeout-ms 2000 --retry-after 7
U=$(devsim_id 501)
devsim dev1 501 --rounds 0 >"$T/e.out" 2>&1 || { cat "$T/e.out"; fail "enroll"; }
CU=$(cli enqueue DeviceInformation --to "$U" --set Queries=OSVersion) || fail enqueue
plist Status Idle UDID "$U" >"$T/idle"
health() { curl -sS -m 5 --cacert "$PKI/ca.pem" "$URL/health"; }
health | grep -q '^backend: up' || fail "/health: back end not up at start"

# unavailable WHAT: the device gets 503 + Retry-After: 7 within 5 s
unavailable() {
    local start ms
    start=$(date +%s%N)
    expect 503 "$(put /mdm/connect "$T/idle" dev1)" "$1"
    ms=$((($(date +%s%N) - start) / 1000000))
    grep -qi '^Retry-After: 7' "$T/resp.h" || fail "$1: 503 without Retry-After: 7"
    # without the back-end timeout curl would give up after 15 s (put's -m 15);
    # the time includes signing and a TLS handshake on a loaded machine
    [ $ms -lt 10000 ] || fail "$1: 503 took $ms ms (backend-timeout-ms is 2000)"
    echo "ok  $1: 503 Retry-After after $ms ms"
}

# ---- 1. scheduler down ----
wait_for 10 "the gateway to take the direct device path" eval 'health | grep -q "^device_path: direct"'
kill -9 "$SCHED_PID"
wait "$SCHED_PID" 2>/dev/null
expect 200 "$(put /mdm/connect "$T/idle" dev1)" "Idle with the scheduler killed (direct to the store)"
grep -q "<string>$CU</string>" "$T/resp" || fail "the queued command was not delivered: $(head -c 300 "$T/resp")"
plist Status Acknowledged CommandUUID "$CU" UDID "$U" >"$T/ack"
expect 200 "$(put /mdm/connect "$T/ack" dev1)" "Acknowledged with the scheduler killed"
health | grep -q '^backend: up' || fail "/health reports the device path down: $(health)"
# (until the broker has missed 3 heartbeats it answers `busy`, exit 1)
wait_for 10 "the broker to drop the killed scheduler" log_has broker.log "of 'scheduler' removed"
cli devices >/dev/null 2>"$T/cli.err"
rc=$?
[ $rc = 3 ] || fail "picomdm devices with no scheduler: exit $rc, expected 3 ($(cat "$T/cli.err"))"
echo "ok  picomdm devices: exit 3 ($(head -n 1 "$T/cli.err"))"

gw_scheduler "${SCHED_OPTS[@]}"
wait_for 10 "picomdm devices to answer again" eval 'cli devices >/dev/null 2>&1'
cli results "$CU" | grep -q "Acknowledged  *on $U " || fail "result not stored while the scheduler was down"
[ "$(cli results "$CU" | grep -c "Acknowledged  *on $U ")" = 1 ] || fail "result recorded more than once"
echo "ok  result recorded once, visible after the scheduler restart"

CU2=$(cli enqueue ProfileList --to "$U") || fail enqueue
kill -9 "$STORE_PID"
wait "$STORE_PID" 2>/dev/null
unavailable "store killed"
health | grep -q '^backend: down' || fail "/health does not report the store down: $(health)"
gw_store
# the broker routes to the dead store until it misses 3 heartbeats; a request
# sent before that times out (503) and may still be applied by the new store
# later (the command then counts as delivered-but-unanswered), so wait for it
wait_for 10 "the broker to drop the killed store" log_has broker.log "of 'store' removed"
expect 200 "$(put /mdm/connect "$T/idle" dev1)" "Idle after the store restart"
grep -q "<string>$CU2</string>" "$T/resp" || fail "command queued before the store crash was lost"
cli queue "$U" --all | grep -q "^$CU " || fail "first command missing after the store restart"
kill -0 "$GW_PID" || fail "gateway died"

# 4. every request through the scheduler (--device-path scheduler)
gw_tls --backend-timeout-ms 2000 --retry-after 7 --device-path scheduler --log-level debug
health | grep -q '^device_path: through the scheduler' || fail "/health: $(health)"
expect 200 "$(put /mdm/connect "$T/idle" dev1)" "Idle through the scheduler"
kill -9 "$SCHED_PID"
wait "$SCHED_PID" 2>/dev/null
unavailable "scheduler killed (--device-path scheduler)"
unavailable "scheduler still down (second request)"
health | grep -q '^backend: down' || fail "/health does not report the back end down: $(health)"
gw_scheduler "${SCHED_OPTS[@]}"
wait_for 10 "/health to report the back end up" eval 'health | grep -q "^backend: up"'
expect 200 "$(put /mdm/connect "$T/idle" dev1)" "Idle after the scheduler restart"
kill -0 "$GW_PID" || fail "gateway died"
grep -qi 'sanitizer\|segfault' "$T/gateway.log" && fail "gateway log shows a crash"
grep -q ' 401' "$T/curl.out" 2>/dev/null && fail "a 401 was sent"
echo "e2e_backend_down: all checks passed"
