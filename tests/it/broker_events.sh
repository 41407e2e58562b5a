#!/bin/bash
# Events: a publisher's events reach subscribers through the broker, filtered
# by topic prefix.
. "$(dirname "$0")/broker_lib.bash"
# no stats: the broker's own stats.broker snapshot (first one 1 s after its
# start) would be one of the catch-all subscriber's 10 events whenever its
# subscription got there in time, and it would stop one checkin event short
start_broker broker --stats-interval-s 0

timeout 20 "$TT/bustest" sub --subscribe-endpoint "$SUB" --prefix checkin. --count 5 --max-seconds 10 \
    >"$D/sub1.out" 2>"$D/sub1.log" &
S1=$!
timeout 20 "$TT/bustest" sub --subscribe-endpoint "$SUB" --count 10 --max-seconds 10 \
    >"$D/sub2.out" 2>"$D/sub2.log" &
S2=$!
PIDS+=("$S1" "$S2")
for _ in $(seq 1 100); do
    [ "$(cat "$D/sub1.out" "$D/sub2.out" 2>/dev/null | grep -c subscribed)" = 2 ] && break; sleep 0.05
done
# push.sent first: a subscriber that ignored its prefix would stop on those.
"$TT/bustest" pub --publish-endpoint "$PUB" --topic push.sent --count 5 --delay-ms 1000 >"$D/pub1.out" 2>&1 \
    || fail "publisher 1 failed"
"$TT/bustest" pub --publish-endpoint "$PUB" --topic checkin.Authenticate --count 5 --delay-ms 1000 \
    >"$D/pub2.out" 2>&1 || fail "publisher 2 failed"
wait "$S1" || { cat "$D/sub1.out"; fail "prefix subscriber did not get its 5 events"; }
wait "$S2" || { cat "$D/sub2.out"; fail "catch-all subscriber did not get 10 events"; }
[ "$(grep -c '^event topic=checkin.Authenticate name=checkin.Authenticate' "$D/sub1.out")" = 5 ] \
    || fail "prefix subscriber: wrong events"
grep -q "topic=push.sent" "$D/sub1.out" && fail "prefix subscriber got push.sent"
[ "$(grep -c '^event topic=push.sent' "$D/sub2.out")" = 5 ] || fail "catch-all subscriber: push.sent missing"
[ "$(grep -c '^event topic=checkin' "$D/sub2.out")" = 5 ] || fail "catch-all subscriber: checkin missing"
echo "PASS: events delivered through the broker and filtered by prefix"
