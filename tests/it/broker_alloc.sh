#!/bin/bash
# broker_alloc: the rel broker links mimalloc (Makefile ALLOC_PROCS; docs/bus.md
# "Session 10, buscpu3") and its memory stays small under load: 20,000 echo
# round trips of 4 KB bodies with 256 in flight (the bodies are allocated by
# libzmq's I/O thread and freed by the loop thread, or the other way round),
# every one answered exactly once, and the broker's peak RSS (VmHWM) under
# 48 MB (it is ~11 MB; issue #4 wants the whole server under 150 MB at
# 10,000 devices). The event plane's allocations are the same frames:
# broker_events.sh covers its behaviour.
. "$(dirname "$0")/common.inc" # need_mimalloc; the lib below may redefine the rest
. "$(dirname "$0")/broker_lib.bash"
need_mimalloc "$BIN/picomdm-broker"
start_broker broker
grep -q 'libmimalloc\.so\.2' /proc/"$BROKER"/maps || fail "the running broker has no libmimalloc mapped"
grep -q "ready (allocator: mimalloc 2[0-9][0-9])" "$D/broker.log" || fail "the broker does not log its allocator: $(grep ready "$D/broker.log")"
start_worker w1 --capacity 1000
timeout 60 "$TT/bustest" client --endpoint "$REQ" --count 20000 --inflight 256 --payload-bytes 4000 \
    --timeout-ms 20000 --max-seconds 50 >"$D/client.out" 2>&1 ||
    { cat "$D/client.out"; fail "not every request was answered exactly once"; }
grep -q 'answered=20000 failed=0 double=0' "$D/client.out" || fail "client: $(head -1 "$D/client.out")"
hwm=$(awk '/^VmHWM/ { print $2 }' /proc/"$BROKER"/status)
[ -n "$hwm" ] || fail "cannot read the broker's VmHWM"
[ "$hwm" -lt 49152 ] || fail "the broker's peak RSS is $hwm kB, more than 48 MB"
kill -TERM "$BROKER"
wait_log broker "broker stopping: 20000 requests, 20000 replies" 1 10
echo "ok: broker with mimalloc, 20,000 round trips of 4 KB, peak RSS $hwm kB"
