#!/bin/bash
# picomdm-pusher's APNs client against the stand-in, one documented rule per
# case (docs/push.md "Outcome rules"): 200 sent; 410 stale and no more pushes
# to that token until a new one; 400 no retry; 429 per-token backoff then
# sent; 5xx and GOAWAY retried with backoff; 500 forever -> gives up after
# max-attempts; timeout retried; 403 holds the topic's pushes until SIGHUP
# reloads the certificate, then sends them; duplicate wakes coalesced; topic mismatch refused locally.
. "$(dirname "$0")/push_lib.inc"
[ -x "$PUSHER" ] || skip "bin/picomdm-pusher is not built (run make)"
make_pki
for i in $(seq 1 20); do tok "$i"; echo; done > "$W/tokens"   # 21.. are unknown to APNs
T() { tok "$1"; }
cat > "$W/rules" <<R
$(T 2) 410
$(T 4) 429 count=1
$(T 5) 503 count=2
$(T 6) 500
$(T 7) goaway count=1
$(T 8) delay delay=2500 count=1
R
start_fapns fapns --tokens "$W/tokens" --rules "$W/rules"
mkfifo "$W/in"
"$PUSHER" --stdin --apns "https://127.0.0.1:$FAPNS_PORT" --apns-ca "$W/ca.pem" \
    --push-cert "$W/push.pem" --backoff-ms 50 --backoff-max-ms 200 --max-attempts 3 \
    --timeout-ms 1000 --connections 2 < "$W/in" > "$W/out" 2> "$W/pusher.log" &
PUSHER_PID=$!
PIDS+=("$PUSHER_PID")
exec 3> "$W/in"
send() { printf '%s\n' "$@" >&3; }
# wait_for REGEX [COUNT]: until out has COUNT (default 1) lines matching (10 s max)
wait_for() {
    for _ in $(seq 100); do
        [ "$(grep -cE "$1" "$W/out")" -ge "${2:-1}" ] && return 0
        kill -0 "$PUSHER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "--- out:"; cat "$W/out"; echo "--- log:"; tail -20 "$W/pusher.log"
    fail "timed out waiting for $1"
}
ev() { grep "\"eid\":\"$1\"" "$W/out" | tail -1; }
has() { case "$(ev "$1")" in *"$2"*) echo "ok   $1: $2" ;; *) fail "$1: want $2, got: $(ev "$1")" ;; esac; }

send "wake dev1 $(T 1) MAGIC1" "wake dev1 $(T 1) MAGIC1" "wake dev1 $(T 1) MAGIC1" \
     "wake dev2 $(T 2) MAGIC2" "wake dev3 $(T 21) MAGIC3" "wake dev4 $(T 4) MAGIC4" \
     "wake dev5 $(T 5) MAGIC5" "wake dev6 $(T 6) MAGIC6" "wake dev7 $(T 7) MAGIC7" \
     "wake devX $(T 9) MAGICX com.apple.mgmt.External.other"
wait_for '"eid":"dev[1-7X]"' 8
has dev1 '"event":"push.sent","eid":"dev1","status":200'
[ "$(grep -c '"eid":"dev1"' "$W/out")" = 1 ] || fail "dev1 pushed more than once"
grep -q "MAGIC1" <<<"$(cat "$W/out")" && fail "PushMagic leaked into events"
echo "ok   three wakes for dev1 coalesced into one push"
has dev2 '"event":"push.stale","eid":"dev2","status":410,"reason":"Unregistered"'
has dev2 '"stale_since":'
has dev3 '"event":"push.failed","eid":"dev3","status":400,"reason":"BadDeviceToken"'
has dev4 '"event":"push.sent","eid":"dev4","status":200'
has dev4 '"attempts":2'
has dev5 '"event":"push.sent","eid":"dev5","status":200'
has dev5 '"attempts":3'
has dev6 '"event":"push.failed","eid":"dev6","status":500'
has dev6 'gave up after 3 attempts'
has dev7 '"event":"push.sent","eid":"dev7"'
has devX '"event":"push.failed","eid":"devX","status":0,"reason":"topic differs'
[ "$(apns_stat goaways)" = 1 ] || fail "the stand-in sent no GOAWAY"
[ "$(apns_stat s400)" = 1 ] && [ "$(apns_stat s429)" = 1 ] && [ "$(apns_stat s503)" = 2 ] && [ "$(apns_stat s500)" = 3 ] && [ "$(apns_stat s410)" = 1 ] \
    || fail "stand-in counters: $(curl -s "http://127.0.0.1:$CTL_PORT/stats" | tr '\n' ' ')"
echo "ok   stand-in saw 400 x1 (not retried), 429 x1, 503 x2, 500 x3 (capped), 410 x1, one GOAWAY"

# a timeout (answer held 2.5 s, timeout-ms 1000) is retried
send "wake dev8 $(T 8) MAGIC8"
wait_for '"eid":"dev8"' 1
has dev8 '"event":"push.sent","eid":"dev8"'
has dev8 '"attempts":2'

# the stale token gets no more pushes; a new token (next TokenUpdate) does
req410=$(apns_stat s410)
send "wake dev2 $(T 2) MAGIC2"
wait_for '"eid":"dev2".*stale token' 1
[ "$(apns_stat s410)" = "$req410" ] || fail "a push went to the stale token"
echo "ok   stale token: refused locally, nothing sent to APNs"
send "wake dev2 $(T 12) MAGIC2b"
wait_for '"event":"push.sent","eid":"dev2"' 1
echo "ok   new token after the stale one: sent"

# 403: the alert once, then the topic's pushes are held (the failing push and
# later wakes, coalesced) until SIGHUP loads a certificate; then they go out
ctl POST /rules "$(T 10) 403 count=1" | grep -q 'added 1' || fail "rule not added"
send "wake dev10 $(T 10) MAGIC10"
wait_for '"event":"push.cert_problem","eid":"dev10","status":403,"reason":"BadCertificate"' 1
sent_before=$(apns_stat accepted)
req_before=$(apns_stat requests)
send "wake dev11 $(T 11) MAGIC11" "wake dev11 $(T 11) MAGIC11" "wake dev13 $(T 13) MAGIC13" "stats"
wait_for '"event":"push.stats".*"held":3' 1
sleep 0.3
[ "$(apns_stat requests)" = "$req_before" ] || fail "a request went out for a stopped topic"
grep -qE '"eid":"dev1[013]".*"event":"push.(sent|failed)"|"event":"push.(sent|failed)","eid":"dev1[013]"' "$W/out" \
    && fail "a held push was reported before the certificate was fixed: $(grep '"eid":"dev1[013]"' "$W/out")"
[ "$(grep -c '"event":"push.cert_problem"' "$W/out")" = 1 ] || fail "cert_problem raised more than once"
echo "ok   403: one cert_problem alert, dev10 + dev11 (coalesced) + dev13 held, nothing sent"
grep -q "APNs refused the push certificate" "$W/pusher.log" || fail "no alert in the log"
kill -HUP "$PUSHER_PID"
wait_for '"event":"push.sent","eid":"dev1[013]"' 3
has dev10 '"event":"push.sent","eid":"dev10","status":200'
has dev11 '"event":"push.sent","eid":"dev11","status":200'
[ "$(grep -c '"eid":"dev11"' "$W/out")" = 1 ] || fail "dev11 pushed more than once"
[ "$(apns_stat accepted)" = "$((sent_before + 3))" ] || fail "stand-in accepted $(apns_stat accepted), want $((sent_before + 3))"
echo "ok   after SIGHUP (certificate reloaded) the 3 held pushes went out"

# held pushes still pending at end of input are reported as failed
ctl POST /rules "$(T 14) 403 count=1" | grep -q 'added 1' || fail "rule not added"
send "wake dev14 $(T 14) MAGIC14"
wait_for '"event":"push.cert_problem","eid":"dev14"' 1

exec 3>&-
for _ in $(seq 100); do kill -0 "$PUSHER_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$PUSHER_PID" 2>/dev/null && fail "pusher did not exit at end of input"
wait "$PUSHER_PID" || fail "pusher exited with an error"
has dev14 '"event":"push.failed","eid":"dev14","status":0,"reason":"held push dropped at end of input'
grep -q '"event":"push.summary".*"coalesced":3' "$W/out" || fail "summary: $(tail -1 "$W/out")"
echo "ok   summary: $(tail -1 "$W/out")"
grep -qiE "$(T 1)|$(T 2)" "$W/pusher.log" && fail "a device token was logged"
echo "PASS"
