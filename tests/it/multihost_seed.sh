#!/bin/bash
# multihost_seed — PicoMDM on three "hosts" (network namespaces joined by veth
# pairs, 10.200.{1,2,3}.0/24 only inside them; tests/it/multihost_lib.inc):
# broker + store + scheduler + ca on A, gateway + pusher on B, APNs stand-in,
# device simulator and operator CLI on C. Every bus endpoint (ipc on A, tcp
# across hosts) is under CURVE with an allow-list of client keys; hosts A and
# B run deploy/examples/picomdm-multihost.cfg. Checks: the seed flow end to end
# (devsim enrolls through B, `picomdm enqueue` from C with its own key, the
# device gets and acknowledges the command, `picomdm results` shows it); an
# injector and a subscriber whose key is not allowed get nothing and change
# nothing (store checked), and a worker with such a key never serves; the A-B
# link cut for a while loses no acknowledged command and the system carries
# on by itself. The push and enrollment paths across the hosts are in
# multihost_push.sh. Needs root (CAP_NET_ADMIN): otherwise it says why and
# exits 77.
. "$(dirname "$0")/multihost_lib.inc"
mh_setup

# ---- host C: devices and the operator
# one device identity, issued by the ca's CA and kept across devsim runs (the
# enrollment is bound to it)
(
    cd "$T" && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout dev.key \
        -out dev.csr -subj "/CN=multihost-device" &&
        openssl x509 -req -in dev.csr -CA data/ca/ca.crt -CAkey data/ca/ca.key -CAcreateserial \
            -out dev.pem -days 2 -extfile <(printf 'basicConstraints=critical,CA:FALSE\n')
) >"$T/devpki.log" 2>&1 || fail "device identity: $(tail -n 3 "$T/devpki.log")"
DS=(on c "$BIN/picomdm-devsim" --url "https://$GW" --ca-bundle "$T/tlsca.pem"
    --cert "$T/dev.pem" --key "$T/dev.key" --seed 7 --timeout-ms 8000)
OPS=("${OPS_C[@]}" "${CURVE[@]}")

"${DS[@]}" --rounds 1 >"$T/enroll.log" 2>&1 || fail "devsim enrolment through B failed: $(tail -n 3 "$T/enroll.log")"
EID=$(cli devices --json --timeout 3000 | sed -n 's/.*"eid":"\([^"]*\)".*/\1/p' | head -n 1)
[ -n "$EID" ] || fail "the enrolled device is not listed by \`picomdm devices\` from C"

# the operator's key: the config-file and environment routes work too
printf 'picomdm\n    curve-cert = "%s"\n' "$OPKEY" >"$T/op.cfg"
on c env PICOMDM_SERVER_KEY="$SKEY" "$BIN/picomdm" devices --config "$T/op.cfg" \
    --request-endpoint tcp://10.200.2.1:7401 --timeout 3000 >/dev/null ||
    fail "CLI with the key from PICOMDM_SERVER_KEY and the cert from --config failed"

# seed flow: enqueue from C, the device gets it (through B) and acknowledges it
U1=$(cli enqueue DeviceInformation --set Queries=UDID,OSVersion --to "$EID" --no-push 2>"$T/enq.log") ||
    fail "enqueue from C: $(cat "$T/enq.log")"
"${DS[@]}" --no-enroll --rounds 1 >"$T/round1.log" 2>&1 || fail "devsim session: $(tail -n 3 "$T/round1.log")"
cli results "$U1" >"$T/res1.out" 2>&1 || fail "results $U1: $(cat "$T/res1.out")"
grep -q "^DeviceInformation $U1  Acknowledged  on $EID" "$T/res1.out" || fail "results: $(cat "$T/res1.out")"

# a key not on the allow list: gets nothing, changes nothing
before=$(db "SELECT COUNT(*) FROM commands; SELECT MAX(seq) FROM events;" | tr '\n' ' ')
on c timeout 10 "$BIN/picomdm" watch --count 1 "${OPS[@]}" --curve-cert "$EVILKEY" \
    >"$T/evilwatch.out" 2>"$T/evilwatch.log" &
EW=$!
# a worker with that key offering the scheduler service: never registered,
# so it can never be handed device traffic or operator requests
bg c evilsched "$BIN/picomdm-scheduler" --request-endpoint tcp://10.200.2.1:7401 "${CURVE[@]}" \
    --curve-cert "$EVILKEY"
EVIL_SCHED=$LAST_PID
sleep 0.5
on c "$BIN/picomdm" enqueue DeviceLock --to "$EID" --no-push "${OPS[@]}" \
    --curve-cert "$EVILKEY" --timeout 1000 --retries 1 >"$T/evil.out" 2>"$T/evil.log"
rc=$?
[ $rc = 3 ] || fail "enqueue with a key not allowed exited $rc (want 3, no answer): $(cat "$T/evil.out" "$T/evil.log")"
on c "$BIN/picomdm" enqueue DeviceLock --to "$EID" --no-push --request-endpoint tcp://10.200.2.1:7401 \
    --timeout 1000 --retries 0 >/dev/null 2>&1 && fail "enqueue without CURVE was answered"
cli enqueue DeviceInformation --set Queries=UDID --to "$EID" --no-push >/dev/null 2>&1 ||
    fail "allowed enqueue (to make an event for the evil subscriber) failed"
wait $EW
[ -s "$T/evilwatch.out" ] && fail "a subscriber with a key not allowed received: $(head -c 200 "$T/evilwatch.out")"
kill -0 "$EVIL_SCHED" 2>/dev/null || fail "the evil scheduler exited early: $(tail -n 3 "$T/evilsched.log")"
[ "$(grep -c "registered for 'scheduler'" "$T/broker.log")" = 1 ] ||
    fail "a scheduler with a key not allowed was registered: $(grep "registered for" "$T/broker.log")"
for _ in $(seq 300); do grep -q "keeps trying to register" "$T/evilsched.log" && break; sleep 0.1; done
grep -q "keeps trying to register" "$T/evilsched.log" ||
    fail "the evil scheduler did not find itself unanswered: $(tail -n 3 "$T/evilsched.log")"
kill "$EVIL_SCHED"
after=$(db "SELECT COUNT(*) FROM commands; SELECT MAX(seq) FROM events;" | tr '\n' ' ')
set -- $before; c0=$1; s0=$2; set -- $after
[ "$1" = $((c0 + 1)) ] || fail "commands: $c0 before, $1 after: want exactly the one allowed enqueue"
[ "$(db "SELECT COUNT(*) FROM events WHERE seq > $s0 AND data LIKE '%DeviceLock%'")" = 0 ] ||
    fail "the evil DeviceLock reached the store"

# cut A-B for a while: the device cannot be served meanwhile; after the link
# is back the gateway carries on by itself (no restart) and nothing
# acknowledged is lost
U2=$(cli enqueue DeviceInformation --set Queries=OSVersion --to "$EID" --no-push 2>/dev/null) || fail "enqueue U2"
on a ip link set vab down
"${DS[@]}" --no-enroll --rounds 1 --timeout-ms 4000 >"$T/cut.log" 2>&1 && fail "a session succeeded with A-B down"
sleep 3
on a ip link set vab up
ok=
for _ in $(seq 20); do
    "${DS[@]}" --no-enroll --rounds 1 >"$T/after.log" 2>&1 && { ok=1; break; }
    sleep 1
done
[ -n "$ok" ] || fail "the system did not recover after the A-B link came back: $(tail -n 3 "$T/after.log")"
kill -0 "$GW_PID" 2>/dev/null || fail "the gateway died"
cli results "$EID" --limit 10 >"$T/res2.out" 2>&1 || fail "results by enrollment"
for u in "$U1" "$U2"; do
    grep -q "$u  Acknowledged" "$T/res2.out" || fail "$u not Acknowledged after the cut: $(cat "$T/res2.out")"
done
[ "$(db "SELECT COUNT(*) FROM queue WHERE status='acknowledged'")" -ge 3 ] ||
    fail "fewer acknowledged queue entries than commands answered: $(db "SELECT status, COUNT(*) FROM queue GROUP BY status")"
echo "ok: seed flow across 3 namespaces under CURVE (ca on A, pusher on B, APNs stand-in on C);"
echo "ok: evil key refused (injector, subscriber, worker); A-B cut survived"
exit 0
