#!/bin/bash
# The push path through the real processes: broker + store + picomdm-pusher
# (bus service "push") + the APNs stand-in. Enrollments are made in the
# store (Authenticate + TokenUpdate), woken with `wake`; the pusher takes
# token/PushMagic/topic from the store (push.info), pushes, and reports
# every outcome to the store (push.outcome), which logs push.* events.
# Checks: sent (duplicates coalesced), 410 -> push.stale and the store's
# stale flag stops further pushes until the next TokenUpdate, 400 -> failed,
# unknown enrollment -> failed, every accepted push reached the delivery hook.
. "$(dirname "$0")/push_lib.inc"
TT=${TT:-$ROOT/build/rel/tt}
for b in picomdm-broker picomdm-store picomdm-pusher; do
    [ -x "$BIN/$b" ] || skip "bin/$b is not built (run make)"
done
[ -x "$TT/push_drv" ] || skip "build/rel/tt/push_drv is not built (run make)"
make_pki
REQ=ipc://$W/req PUB=ipc://$W/pub SUB=ipc://$W/sub
"$BIN/picomdm-broker" --request-endpoint "$REQ" --publish-endpoint "$PUB" \
    --subscribe-endpoint "$SUB" --run-dir "$W" > "$W/broker.log" 2>&1 &
PIDS+=($!)
"$BIN/picomdm-store" --data-dir "$W/data" --request-endpoint "$REQ" --publish-endpoint "$PUB" \
    > "$W/store.log" 2>&1 &
PIDS+=($!)
for i in 1 2 3 4 5 6; do tok "$i"; echo; done > "$W/tokens"
printf '%s 410 count=1\n' "$(tok 2)" > "$W/rules"
# token 7 (dev3) is not in the list: 400 BadDeviceToken
start_fapns fapns --tokens "$W/tokens" --rules "$W/rules" --deliver-file "$W/delivered"
"$PUSHER" --request-endpoint "$REQ" --apns "https://127.0.0.1:$FAPNS_PORT" --apns-ca "$W/ca.pem" \
    --push-cert "$W/push.pem" --backoff-ms 50 --max-attempts 3 > "$W/pusher.log" 2>&1 &
PUSHER_PID=$!
PIDS+=($!)
for _ in $(seq 300); do grep -q "serving 'push'" "$W/pusher.log" && break; sleep 0.1; done
grep -q "serving 'push'" "$W/pusher.log" || { cat "$W/pusher.log"; fail "pusher did not start"; }
drv() { timeout 60 "$TT/push_drv" --request-endpoint "$REQ" "$@"; }
logs() { for f in store pusher fapns; do echo "--- $f"; tail -15 "$W/$f.log"; done; }

drv enroll --n 5 --topic "$TOPIC" > "$W/enroll.out" 2>&1 || { logs; fail "enroll: $(cat "$W/enroll.out")"; }
# dev3 gets token 7, unknown to APNs
drv enroll --from 3 --n 1 --token-base 4 --topic "$TOPIC" > /dev/null 2>&1 || fail "re-enroll dev3"
drv wake --n 5 --dup 3 > /dev/null || { logs; fail "wake not accepted"; }
drv events --name push.sent --count 3 > "$W/ev.sent" || { logs; fail "push.sent events: $(cat "$W/ev.sent")"; }
drv events --name push.stale --count 1 --prefix dev2 > /dev/null || { logs; fail "no push.stale for dev2"; }
drv events --name push.failed --count 1 --prefix dev3 > "$W/ev3" || { logs; fail "no push.failed for dev3"; }
grep -q "reason=BadDeviceToken" "$W/ev3" || fail "dev3 reason: $(cat "$W/ev3")"
sleep 0.5
[ "$(drv events --name push.sent --count 99 --timeout-ms 1 | sed -n 's/count=//p')" = 3 ] \
    || fail "more than 3 push.sent: duplicates were not coalesced"
[ "$(apns_stat accepted)" = 3 ] || fail "the stand-in accepted $(apns_stat accepted), want 3"
[ "$(wc -l < "$W/delivered")" = 3 ] || fail "delivery hook got $(wc -l < "$W/delivered") pushes"
grep -q '"mdm":"magic-dev1"' "$W/delivered" || fail "PushMagic from the store not used"
echo "ok   5 enrollments x3 wakes: 3 sent (coalesced), dev2 410 -> push.stale, dev3 400 -> push.failed"

# the store's stale flag: no push to dev2 until its next TokenUpdate
reqs=$(apns_stat requests)
drv wake --n 1 --from 2 > /dev/null
drv events --name push.failed --count 1 --prefix dev2 > "$W/ev2" || { logs; fail "stale dev2 not refused"; }
grep -q "reason=stale token" "$W/ev2" || fail "dev2 reason: $(cat "$W/ev2")"
[ "$(apns_stat requests)" = "$reqs" ] || fail "a push went to the stale token"
echo "ok   stale token (store flag): refused without contacting APNs"
drv enroll --from 2 --n 1 --topic "$TOPIC" > /dev/null 2>&1 || fail "TokenUpdate dev2"
drv wake --n 1 --from 2 > /dev/null
drv events --name push.sent --count 1 --prefix dev2 > /dev/null || { logs; fail "dev2 not pushed after TokenUpdate"; }
echo "ok   after the next TokenUpdate dev2 is pushed again"

drv wake --n 1 --prefix nobody > /dev/null
drv events --name push.failed --count 1 --prefix nobody > "$W/evn" || { logs; fail "unknown id not reported"; }
grep -q "reason=unknown enrollment" "$W/evn" || fail "unknown reason: $(cat "$W/evn")"
echo "ok   unknown enrollment reported as push.failed"
kill -0 "$PUSHER_PID" || fail "pusher died"
grep -qiE "$(tok 1)" "$W/pusher.log" "$W/store.log" && fail "a token was logged"

# without a push certificate (picomdm up before one is installed) the pusher
# still serves "push" and reports every wake as push.failed with the next step
kill "$PUSHER_PID"; wait "$PUSHER_PID" 2>/dev/null
"$PUSHER" --request-endpoint "$REQ" > "$W/pusher2.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do grep -q "serving 'push'" "$W/pusher2.log" && break; sleep 0.1; done
grep -q "no push certificate configured" "$W/pusher2.log" || fail "no notice: $(cat "$W/pusher2.log")"
drv wake --n 1 --from 4 > /dev/null || fail "wake not accepted without a certificate"
drv events --name push.failed --count 1 --prefix dev4 > "$W/ev4" || fail "no push.failed without certificate"
grep -q "reason=no push certificate configured" "$W/ev4" || fail "dev4 reason: $(cat "$W/ev4")"
echo "ok   no certificate: wakes answered, push.failed says to install one"
echo "PASS"
