#!/bin/bash
# store and scheduler behind a CURVE broker: with the broker's public key and
# an allowed certificate they register and serve a whole enroll / enqueue /
# session round trip; a client whose key is not allowed gets nothing.
. "$(dirname "$0")/queue_lib.bash"
mkdir -p "$D/allow" "$D/keys"
SKEY=$("$BIN/picomdm-broker" --keygen "$D/keys/broker") || fail "keygen failed"
for n in store sched drv evil; do
    "$BIN/picomdm-broker" --keygen "$D/keys/$n" >/dev/null || fail "keygen $n"
done
cp "$D/keys/store" "$D/keys/sched" "$D/keys/drv" "$D/allow/"
"$BIN/picomdm-broker" --request-endpoint "$REQ" --publish-endpoint "$PUB" --subscribe-endpoint "$SUB" \
    --run-dir "$D" --curve-secret "$D/keys/broker_secret" --curve-allow "$D/allow" >>"$D/broker.log" 2>&1 &
PIDS+=($!)
start_store --server-key "$SKEY" --curve-cert "$D/keys/store_secret"
start_sched --server-key "$SKEY" --curve-cert "$D/keys/sched_secret"
wait_log broker "registered for 'store'" 1 10
wait_log broker "registered for 'scheduler'" 1 10
K=(--server-key "$SKEY" --curve-cert "$D/keys/drv_secret")
drv enroll --n 3 "${K[@]}" >"$D/enroll.out" 2>"$D/enroll.log" || fail "enroll over CURVE failed: $(tail -3 "$D/enroll.log")"
drv enqueue --n 3 --uuid CURVE-1 "${K[@]}" >"$D/enq.out" 2>"$D/enq.log" || fail "enqueue over CURVE failed"
drv sessions --n 3 --uuid CURVE-1 "${K[@]}" >"$D/sess.out" 2>"$D/sess.log" || fail "sessions over CURVE failed"
[ "$(field ops "$D/sess.out")" = 6 ] || fail "sessions: ops != 6"
drv devices --server-key "$SKEY" --curve-cert "$D/keys/evil_secret" --timeout-ms 500 --retries 0 \
    >"$D/evil.out" 2>"$D/evil.log" && fail "a client whose key is not allowed was served"
grep -q "no reply" "$D/evil.log" || fail "the refused client did not time out: $(tail -2 "$D/evil.log")"
echo "ok"
