#!/bin/bash
# CURVE: a broker bound on tcp://127.0.0.1 with --curve-secret serves a client
# whose key is in the allow directory; a client with another key (or none)
# gets nothing and the worker never sees its requests; a non-loopback bind
# without keys is refused at start.
. "$(dirname "$0")/broker_lib.bash"
P1=$(free_port); P2=$P1; P3=$P1
while [ "$P2" = "$P1" ]; do P2=$(free_port); done
while [ "$P3" = "$P1" ] || [ "$P3" = "$P2" ]; do P3=$(free_port); done
REQ=tcp://127.0.0.1:$P1
PUB=tcp://127.0.0.1:$P2
SUB=tcp://127.0.0.1:$P3
mkdir -p "$D/allow" "$D/keys"
SKEY=$("$BIN/picomdm-broker" --keygen "$D/keys/broker") || fail "keygen failed"
[ ${#SKEY} = 40 ] || fail "keygen printed '$SKEY', not a Z85 public key"
[ "$(stat -c %a "$D/keys/broker_secret")" = 600 ] || fail "secret key file is not mode 0600"
"$BIN/picomdm-broker" --keygen "$D/keys/worker" >/dev/null || fail "keygen worker"
"$BIN/picomdm-broker" --keygen "$D/keys/good" >/dev/null || fail "keygen good"
"$BIN/picomdm-broker" --keygen "$D/keys/evil" >/dev/null || fail "keygen evil"
cp "$D/keys/worker" "$D/keys/good" "$D/allow/"

# 1. a non-loopback bind without keys is refused
set +e
"$BIN/picomdm-broker" --request-endpoint "tcp://0.0.0.0:$P1" --publish-endpoint "$PUB" \
    --subscribe-endpoint "$SUB" >"$D/refused.log" 2>&1
rc=$?
set -e
[ $rc != 0 ] || fail "broker started on tcp://0.0.0.0 without CURVE"
grep -q "refusing to bind tcp://0.0.0.0:$P1 without CURVE" "$D/refused.log" || fail "no clear refusal message"
grep -q -- "--keygen" "$D/refused.log" || fail "refusal does not say how to make keys"
set +e

# 2. curve broker; the worker authenticates with its allowed key
start_broker broker --curve-secret "$D/keys/broker_secret" --curve-allow "$D/allow"
grep -q "CURVE" "$D/broker.log" || fail "broker did not turn CURVE on"
start_worker w1 --curve-server-key "$SKEY" --cert "$D/keys/worker_secret"
WPID=$LAST_PID
wait_log broker "registered for 'echo'" 1 20

C="$TT/bustest client --endpoint $REQ --curve-server-key $SKEY"
timeout 30 $C --cert "$D/keys/good_secret" --count 50 --inflight 8 >"$D/good.out" 2>"$D/good.log" \
    || { cat "$D/good.out"; fail "allowed client was not served"; }
[ "$(field answered "$D/good.out")" = 50 ] || fail "allowed client: answered != 50"

timeout 30 $C --cert "$D/keys/evil_secret" --count 5 --inflight 5 --timeout-ms 500 --retries 1 \
    >"$D/evil.out" 2>"$D/evil.log"
[ $? = 1 ] || fail "client with a key not in the allow list did not fail"
[ "$(field answered "$D/evil.out")" = 0 ] || fail "client with a key not in the allow list got answers"
grep -q "no reply from service 'echo' after 2 attempts" "$D/evil.log" || fail "no clear timeout message"

timeout 30 "$TT/bustest" client --endpoint "$REQ" --count 5 --inflight 5 --timeout-ms 500 --retries 0 \
    >"$D/plain.out" 2>"$D/plain.log"
[ $? = 1 ] || fail "plain (no CURVE) client did not fail"
[ "$(field answered "$D/plain.out")" = 0 ] || fail "plain client got answers"

# the event plane is guarded too: a subscriber with a bad key sees nothing.
# Both count only the publisher's topic (not the broker's own stats.broker).
# A publisher's PUB socket drops what it sends before the broker's
# subscription reached it (CURVE handshake first), and nothing tells a test
# when that happened: publishers are started one after another (each one
# waits a little longer before its events) until the allowed subscriber has
# its 3 events, bounded.
timeout 60 "$TT/bustest" sub --subscribe-endpoint "$SUB" --curve-server-key "$SKEY" \
    --cert "$D/keys/evil_secret" --prefix curve.test --count 1 --max-seconds 50 >"$D/evilsub.out" 2>&1 &
ES=$!
timeout 60 "$TT/bustest" sub --subscribe-endpoint "$SUB" --curve-server-key "$SKEY" \
    --cert "$D/keys/good_secret" --prefix curve.test --count 3 --max-seconds 50 >"$D/goodsub.out" 2>&1 &
GS=$!
PIDS+=("$ES" "$GS")
npub=0
for delay in 300 600 1000 1000 1500 1500 2000 2000 3000 3000; do
    kill -0 "$GS" 2>/dev/null || break
    timeout 20 "$TT/bustest" pub --publish-endpoint "$PUB" --curve-server-key "$SKEY" \
        --cert "$D/keys/good_secret" --topic curve.test --count 3 --delay-ms "$delay" >"$D/pub.out" 2>&1 ||
        fail "publisher failed: $(cat "$D/pub.out")"
    npub=$((npub + 1))
done
wait $GS || { cat "$D/goodsub.out"; fail "allowed subscriber missed events ($npub publishers of 3 events each)"; }
# one more publisher after the allowed one got its events: the bad key's
# subscriber had every chance to see them
timeout 20 "$TT/bustest" pub --publish-endpoint "$PUB" --curve-server-key "$SKEY" \
    --cert "$D/keys/good_secret" --topic curve.test --count 3 --delay-ms 1000 >"$D/pub.out" 2>&1 ||
    fail "publisher failed: $(cat "$D/pub.out")"
kill -0 "$ES" 2>/dev/null || { cat "$D/evilsub.out"; fail "the bad key's subscriber ended early"; }
kill -TERM "$ES"
wait "$ES" 2>/dev/null
grep -q "^event topic=" "$D/evilsub.out" && fail "subscriber with a key not in the allow list received events"
grep -q "^events=0$" "$D/evilsub.out" || fail "the bad key's subscriber did not report: $(cat "$D/evilsub.out")"

kill -TERM "$WPID"
for _ in $(seq 1 400); do grep -q "^worker w1" "$D/w1.log" && break; sleep 0.05; done
jobs=$(grep -oE "jobs=[0-9]+" "$D/w1.log" | cut -d= -f2)
[ "$jobs" = 50 ] || fail "worker handled ${jobs:-?} requests, want exactly the 50 allowed ones"
echo "PASS: CURVE allow-list enforced on requests and events; non-loopback bind without keys refused"
