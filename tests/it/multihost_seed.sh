#!/bin/bash
# multihost_seed — PicoMDM on three "hosts" (network namespaces joined by veth
# pairs, 10.200.{1,2,3}.0/24 only inside them): broker + store + scheduler on
# A, gateway on B, device simulator and operator CLI on C. Every bus endpoint
# is tcp under CURVE with an allow-list of client keys. Checks: the seed flow
# end to end (devsim enrolls through B, `picomdm enqueue` from C with its own
# key, the device gets and acknowledges the command, `picomdm results` shows
# it); an injector and a subscriber whose key is not allowed get nothing and
# change nothing (store checked); the A-B link cut for a while loses no
# acknowledged command and the system carries on by itself. Needs root
# (CAP_NET_ADMIN): otherwise it says why and exits 77.
set -u
BIN=${BIN:-$PWD/bin}
for p in picomdm picomdm-broker picomdm-store picomdm-scheduler picomdm-gateway picomdm-devsim; do
    [ -x "$BIN/$p" ] || { echo "needs $BIN/$p (not built yet)"; exit 77; }
done
"$BIN/picomdm-store" --help | grep -q -- --curve-cert ||
    { echo "picomdm-store has no --curve-cert: it cannot join a CURVE broker"; exit 77; }
command -v ip >/dev/null || { echo "needs iproute2 (ip)"; exit 77; }
command -v sqlite3 >/dev/null || { echo "needs the sqlite3 command"; exit 77; }
NS=pmmh$$
if ! ip netns add "${NS}a" 2>/dev/null; then
    echo "cannot create network namespaces (needs root / CAP_NET_ADMIN): skipped"
    exit 77
fi
T=$(mktemp -d /tmp/multihost.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    wait 2>/dev/null
    for h in a b c; do ip netns del "${NS}$h" 2>/dev/null; done
    [ -n "${KEEP:-}" ] || rm -rf "$T"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*"
    for f in "$T"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 15 "$f"; }; done
    exit 1
}
on() { local h=$1; shift; ip netns exec "${NS}$h" "$@"; }
bg() { # HOST LOG CMD...: start in a namespace, in the background
    local h=$1 log=$2; shift 2
    ip netns exec "${NS}$h" "$@" >>"$T/$log.log" 2>&1 &
    PIDS+=($!)
    LAST_PID=$!
}
wait_log() { # LOG PATTERN SECONDS
    local i
    for ((i = 0; i < $3 * 10; i++)); do grep -q -- "$2" "$T/$1.log" 2>/dev/null && return 0; sleep 0.1; done
    fail "timed out waiting for '$2' in $1.log"
}

# ---- the hosts: A-B 10.200.1.0/24, A-C 10.200.2.0/24, B-C 10.200.3.0/24
ip netns add "${NS}b" && ip netns add "${NS}c" || fail "ip netns add"
link() { # H1 IP1 H2 IP2
    ip link add "v$1$3" netns "${NS}$1" type veth peer name "v$3$1" netns "${NS}$3" ||
        fail "cannot create a veth pair $1-$3"
    on "$1" ip addr add "$2/24" dev "v$1$3" && on "$3" ip addr add "$4/24" dev "v$3$1" &&
        on "$1" ip link set "v$1$3" up && on "$3" ip link set "v$3$1" up || fail "link $1-$3"
}
for h in a b c; do on $h ip link set lo up; done
link a 10.200.1.1 b 10.200.1.2
link a 10.200.2.1 c 10.200.2.3
link b 10.200.3.2 c 10.200.3.3

# ---- keys: the broker's, one per client; the allow list holds all but evil's
mkdir -p "$T/keys" "$T/allow"
SKEY=$("$BIN/picomdm-broker" --keygen "$T/keys/broker") || fail "keygen"
for k in store scheduler gateway operator evil; do
    "$BIN/picomdm-broker" --keygen "$T/keys/$k" >/dev/null || fail "keygen $k"
done
cp "$T/keys/store" "$T/keys/scheduler" "$T/keys/gateway" "$T/keys/operator" "$T/allow/"
CURVE=(--server-key "$SKEY")

# ---- host A: broker (tcp, every address of A, CURVE), store, scheduler
bg a broker "$BIN/picomdm-broker" --request-endpoint tcp://0.0.0.0:7401 \
    --publish-endpoint tcp://0.0.0.0:7402 --subscribe-endpoint tcp://0.0.0.0:7403 \
    --curve-secret "$T/keys/broker_secret" --curve-allow "$T/allow"
wait_log broker "ready" 10
bg a store "$BIN/picomdm-store" --data-dir "$T/data" --request-endpoint tcp://127.0.0.1:7401 \
    --publish-endpoint tcp://127.0.0.1:7402 "${CURVE[@]}" --curve-cert "$T/keys/store_secret"
bg a sched "$BIN/picomdm-scheduler" --request-endpoint tcp://127.0.0.1:7401 --wake-sweep-s 0 \
    --delivered-timeout-s 0 "${CURVE[@]}" --curve-cert "$T/keys/scheduler_secret"
wait_log broker "registered for 'store'" 10
wait_log broker "registered for 'scheduler'" 10

# ---- host B: the gateway (TLS), reaching the broker over the A-B link
(
    cd "$T" && "$BIN/picomdm-devsim" --make-ca "$T/devca" &&
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout tlsca.key \
            -out tlsca.pem -subj "/CN=IT TLS CA" -days 2 -addext basicConstraints=critical,CA:TRUE &&
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout tls.key \
            -out tls.csr -subj "/CN=10.200.3.2" &&
        openssl x509 -req -in tls.csr -CA tlsca.pem -CAkey tlsca.key -CAcreateserial -out tls.pem \
            -days 2 -extfile <(printf 'subjectAltName=IP:10.200.3.2\nextendedKeyUsage=serverAuth\n') &&
        # one device identity kept across devsim runs (the enrollment is bound to it)
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout dev.key \
            -out dev.csr -subj "/CN=multihost-device" &&
        openssl x509 -req -in dev.csr -CA devca.pem -CAkey devca.key -CAcreateserial -out dev.pem \
            -days 2 -extfile <(printf 'basicConstraints=critical,CA:FALSE\n')
) >"$T/pki.log" 2>&1 || fail "test PKI: $(tail -n 3 "$T/pki.log")"
bg b gateway "$BIN/picomdm-gateway" --listen 0.0.0.0:8443 --tls-cert "$T/tls.pem" \
    --tls-key "$T/tls.key" --tls-client-cert=false --device-ca "$T/devca.pem" \
    --request-endpoint tcp://10.200.1.1:7401 --publish-endpoint tcp://10.200.1.1:7402 \
    "${CURVE[@]}" --curve-cert "$T/keys/gateway_secret" --backend-timeout-ms 3000 --retry-after 1
GW_PID=$LAST_PID
for _ in $(seq 100); do on c bash -c "exec 3<>/dev/tcp/10.200.3.2/8443" 2>/dev/null && break; sleep 0.1; done

# ---- host C: devices and the operator
DS=(on c "$BIN/picomdm-devsim" --url https://10.200.3.2:8443 --ca-bundle "$T/tlsca.pem"
    --cert "$T/dev.pem" --key "$T/dev.key" --seed 7 --timeout-ms 8000)
OPS=(--request-endpoint tcp://10.200.2.1:7401 --subscribe-endpoint tcp://10.200.2.1:7403 "${CURVE[@]}")
cli() { on c "$BIN/picomdm" "$@" "${OPS[@]}" --curve-cert "$T/keys/operator_secret"; }

"${DS[@]}" --rounds 1 >"$T/enroll.log" 2>&1 || fail "devsim enrolment through B failed: $(tail -n 3 "$T/enroll.log")"
EID=$(cli devices --json --timeout 3000 | sed -n 's/.*"eid":"\([^"]*\)".*/\1/p' | head -n 1)
[ -n "$EID" ] || fail "the enrolled device is not listed by \`picomdm devices\` from C"

# the operator's key: the config-file and environment routes work too
printf 'picomdm\n    curve-cert = "%s"\n' "$T/keys/operator_secret" >"$T/op.cfg"
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
db() { sqlite3 -cmd ".timeout 2000" "$T/data/picomdm.db" "$@"; }
before=$(db "SELECT COUNT(*) FROM commands; SELECT MAX(seq) FROM events;" | tr '\n' ' ')
on c timeout 10 "$BIN/picomdm" watch --count 1 "${OPS[@]}" --curve-cert "$T/keys/evil_secret" \
    >"$T/evilwatch.out" 2>"$T/evilwatch.log" &
EW=$!
sleep 0.5
on c "$BIN/picomdm" enqueue DeviceLock --to "$EID" --no-push "${OPS[@]}" \
    --curve-cert "$T/keys/evil_secret" --timeout 1000 --retries 1 >"$T/evil.out" 2>"$T/evil.log"
rc=$?
[ $rc = 3 ] || fail "enqueue with a key not allowed exited $rc (want 3, no answer): $(cat "$T/evil.out" "$T/evil.log")"
on c "$BIN/picomdm" enqueue DeviceLock --to "$EID" --no-push --request-endpoint tcp://10.200.2.1:7401 \
    --timeout 1000 --retries 0 >/dev/null 2>&1 && fail "enqueue without CURVE was answered"
cli enqueue DeviceInformation --set Queries=UDID --to "$EID" --no-push >/dev/null 2>&1 ||
    fail "allowed enqueue (to make an event for the evil subscriber) failed"
wait $EW
[ -s "$T/evilwatch.out" ] && fail "a subscriber with a key not allowed received: $(head -c 200 "$T/evilwatch.out")"
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
echo "ok: seed flow across 3 namespaces under CURVE; evil key refused; A-B cut survived"
exit 0
