#!/bin/bash
# The pusher re-checks its push certificate while running (docs/push.md):
# a certificate that expires while the pusher runs (notAfter a few seconds
# ahead) stops the pushes with one alert, without crashing: later wakes are
# held (nothing reaches APNs). `picomdm pushcert install` of a valid
# certificate over it is picked up without a signal (the file changed), and
# the held pushes go out.
. "$(dirname "$0")/push_lib.inc"
[ -x "$PUSHER" ] || skip "bin/picomdm-pusher is not built (run make)"
[ -x "$BIN/picomdm" ] || skip "bin/picomdm is not built (run make)"
make_pki
# a push certificate valid for 5 more seconds, from the test CA (openssl ca
# takes an exact end date; openssl x509 only whole days)
(
    cd "$W" || exit 1
    printf '[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\n[p]\nUID = optional\nCN = optional\nC = optional\n' > ca.cnf
    : > index.txt
    echo 1000 > serial
    openssl ca -batch -config ca.cnf -preserveDN -notext -cert ca.pem -keyfile ca.key -in push.csr \
        -out short.crt -startdate "$(date -u -d '-1 min' +%Y%m%d%H%M%SZ)" \
        -enddate "$(date -u -d '+5 sec' +%Y%m%d%H%M%SZ)" > ca.log 2>&1 || exit 1
    cat short.crt push.key > active.pem
) || fail "openssl ca could not issue the short-lived certificate: $(cat "$W/ca.log")"
expires=$(date -d "$(openssl x509 -in "$W/short.crt" -noout -enddate | cut -d= -f2)" +%s)
start_fapns fapns --accept-any
mkfifo "$W/in"
"$PUSHER" --stdin --apns "https://127.0.0.1:$FAPNS_PORT" --apns-ca "$W/ca.pem" \
    --push-cert "$W/active.pem" --cert-check-s 1 --cert-watch-ms 200 \
    < "$W/in" > "$W/out" 2> "$W/pusher.log" &
PUSHER_PID=$!
PIDS+=("$PUSHER_PID")
exec 3> "$W/in"
send() { printf '%s\n' "$@" >&3; }
wait_for() { # REGEX FILE [COUNT] [TENTHS]
    for _ in $(seq "${4:-100}"); do
        [ "$(grep -cE "$1" "$2")" -ge "${3:-1}" ] && return 0
        kill -0 "$PUSHER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "--- out:"; cat "$W/out"; echo "--- log:"; tail -20 "$W/pusher.log"
    fail "timed out waiting for $1 in $(basename "$2")"
}
send "wake dev1 $(tok 1) M1"
wait_for '"event":"push.sent","eid":"dev1"' "$W/out"
[ "$(date +%s)" -lt "$expires" ] || skip "the machine is too slow for a 5-second certificate"
echo "ok   pushed with the certificate while it was valid"
grep -q "expires in 0 days" "$W/pusher.log" || fail "no expiry warning at start: $(cat "$W/pusher.log")"
echo "ok   warned at start that it expires within 30 days"
# it expires: one alert (the check runs every second), pushes held
wait_for "push certificate for .* is expired.*pushes are held" "$W/pusher.log" 1 150
req=$(apns_stat requests)
send "wake dev2 $(tok 2) M2" "wake dev3 $(tok 3) M3" "stats"
wait_for '"event":"push.stats".*"held":2' "$W/out"
sleep 1.5
kill -0 "$PUSHER_PID" || fail "the pusher died after the certificate expired"
[ "$(apns_stat requests)" = "$req" ] || fail "a push went out with an expired certificate"
[ "$(grep -c "is expired" "$W/pusher.log")" = 1 ] || fail "the expiry alert was repeated: $(grep -c "is expired" "$W/pusher.log")"
grep -qE '"eid":"dev[23]"' "$W/out" && fail "a held push was reported: $(grep -E '"eid":"dev[23]"' "$W/out")"
echo "ok   expired: one alert, the pusher runs on, 2 wakes held, nothing sent to APNs"
# install a valid certificate (same topic) over it: picked up, held pushes go out
"$BIN/picomdm" pushcert install "$W/push.pem" --dest "$W/active.pem" > "$W/install.out" 2>&1 \
    || fail "pushcert install: $(cat "$W/install.out")"
wait_for '"event":"push.sent","eid":"dev[23]"' "$W/out" 2
grep -q "certificate file changed" "$W/pusher.log" || fail "the reload was not triggered by the file change"
[ "$(apns_stat accepted)" = 3 ] || fail "stand-in accepted $(apns_stat accepted), want 3"
echo "ok   pushcert install picked up without a signal: the 2 held pushes went out"
send "wake dev4 $(tok 4) M4"
wait_for '"event":"push.sent","eid":"dev4"' "$W/out"
echo "ok   later wakes are pushed again"
exec 3>&-
for _ in $(seq 100); do kill -0 "$PUSHER_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$PUSHER_PID" 2>/dev/null && fail "pusher did not exit at end of input"
wait "$PUSHER_PID" || fail "pusher exited with an error"
echo "PASS"
