#!/bin/bash
# 10,000 malformed frames of every kind at the broker (and, through it, at a
# worker): nothing crashes, the log is not flooded, normal requests still work.
. "$(dirname "$0")/broker_lib.bash"

start_broker broker
start_worker w1
wait_log broker "registered for 'echo'" 1 20

timeout 30 "$TT/bustest" garbage --endpoint "$REQ" --count 10000 >"$D/garbage.out" 2>"$D/garbage.log" \
    || fail "garbage sender failed"
sleep 0.5
kill -0 "$BROKER" 2>/dev/null || fail "broker died"
timeout 30 "$TT/bustest" client --endpoint "$REQ" --count 200 --inflight 16 >"$D/client.out" 2>"$D/client.log" \
    || { cat "$D/client.out"; fail "normal requests failed after the garbage"; }
cat "$D/client.out"
[ "$(field answered "$D/client.out")" = 200 ] || fail "answered != 200"
lines=$(wc -l <"$D/broker.log")
[ "$lines" -lt 200 ] || fail "broker log flooded: $lines lines"
kill -TERM "$LAST_PID"
for _ in $(seq 1 400); do grep -q "^worker w1" "$D/w1.log" && break; sleep 0.05; done
bad=$(grep -oE "bad=[0-9]+" "$D/w1.log" | cut -d= -f2)
[ "${bad:-0}" -gt 0 ] || fail "worker never saw (and rejected) an undecodable body"
kill -TERM "$BROKER"
for _ in $(seq 1 400); do grep -q "broker stopping" "$D/broker.log" && break; sleep 0.05; done
badb=$(grep -oE "[0-9]+ bad frames" "$D/broker.log" | cut -d' ' -f1)
# 10 of the 13 kinds are counted bad (~7,690); REPLY/unknown command from an
# unregistered worker get DISCONNECT instead, a bad body is rejected by the worker.
[ "${badb:-0}" -ge 7500 ] || fail "broker counted only ${badb:-0} bad frames"
echo "PASS: broker survived 10000 malformed messages ($badb counted bad, worker rejected $bad bodies, $lines log lines), then served 200 requests"
