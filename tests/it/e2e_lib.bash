# e2e_lib.bash — shared helpers for the end-to-end and gateway integration
# tests and benchmarks (tests/it/e2e_*.sh, tests/it/gateway_*.sh,
# tests/bench/e2e.sh, tests/bench/gateway.sh). Sourced, never run.
#
# Real processes only: the broker, picomdm-store, picomdm-scheduler and the
# gateway, all from $BIN, on ipc:// endpoints in a private temp dir $T and a
# free loopback TCP port ($PORT); `picomdm watch` records every event in
# $T/events.jsonl; the CLI ($CLI, the operator's `picomdm`) is how tests look
# at the store (devices / queue / results). A test PKI is made with the
# openssl CLI. Every process started is killed on exit.

set -u
: "${BIN:?run through tests/run.sh (BIN unset)}"
T=$(mktemp -d /tmp/e2e_it.XXXXXX)
PIDS=()
gw_cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    sleep 0.2
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    wait 2>/dev/null
    [ "${KEEP_T:-0}" = 1 ] || rm -rf "$T"
}
trap gw_cleanup EXIT

fail() {
    echo "FAIL: $*"
    local f
    for f in "$T"/*.log; do [ -s "$f" ] && { echo "--- $f"; tail -n 15 "$f"; }; done
    exit 1
}
skip() { echo "$*"; exit 77; }

for b in picomdm-broker picomdm-gateway picomdm-store picomdm-scheduler; do
    [ -x "$BIN/$b" ] || skip "skipped: $BIN/$b is not built"
done
command -v curl >/dev/null || skip "skipped: curl not installed"
# the operator CLI; PICOMDM_CLI may point at another build of it
CLI=${PICOMDM_CLI:-$BIN/picomdm}
[ -x "$CLI" ] && "$CLI" help 2>&1 | grep -q '^  watch' ||
    skip "skipped: $CLI has no bus subcommands (enqueue/results/watch) yet"

free_port() {
    local p i
    for i in $(seq 1 50); do
        p=$((20000 + RANDOM % 12000))
        ss -ltn 2>/dev/null | awk '{print $4}' | grep -q ":$p\$" || { echo "$p"; return; }
    done
    echo 0
}

# wait_for SECONDS WHAT CMD...: until CMD succeeds, or fail
wait_for() {
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 20; i++)); do
        "$@" && return 0
        sleep 0.05
    done
    fail "timed out after ${secs}s waiting for $what"
}

# ---- PKI: device CA, devices, another CA, TLS server ----
gw_pki() {
    local d=$T/pki
    mkdir -p "$d"
    (
        cd "$d" || exit 1
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
            -out ca.pem -subj "/CN=PicoMDM IT Device CA" -days 30 \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other.key \
            -out other.pem -subj "/CN=Other CA" -days 30 \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
        for n in dev1 dev2 dev3 dev4 evil; do
            local ca=ca
            [ $n = evil ] && ca=other
            openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $n.key \
                -out $n.csr -subj "/CN=$n"
            openssl x509 -req -in $n.csr -CA $ca.pem -CAkey $ca.key -CAcreateserial -out $n.pem \
                -days 2 -extfile <(printf 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n')
        done
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout self.key \
            -x509 -out self.pem -subj "/CN=self" -days 2
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout tls.key \
            -out tls.csr -subj "/CN=127.0.0.1"
        openssl x509 -req -in tls.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out tls.pem -days 2 \
            -extfile <(printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n')
    ) >"$T/pki.out" 2>&1 || { cat "$T/pki.out"; fail "could not make the test PKI"; }
    PKI=$d
}

# gw_devcert NAME: one more device identity $PKI/NAME.{pem,key} from the device CA
gw_devcert() {
    (
        cd "$PKI" || exit 1
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" \
            -out "$1.csr" -subj "/CN=$1" &&
            openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" \
                -days 2 -extfile <(printf 'basicConstraints=critical,CA:FALSE\n')
    ) >>"$T/pki.out" 2>&1 || fail "could not issue the identity $1"
}

# ---- processes ----
gw_broker() {
    "$BIN/picomdm-broker" --request-endpoint "ipc://$T/req" --publish-endpoint "ipc://$T/pub" \
        --subscribe-endpoint "ipc://$T/sub" --run-dir "$T" --request-wait-ms 1000 ${BROKER_ARGS:-} \
        >>"$T/broker.log" 2>&1 &
    BROKER_PID=$!
    PIDS+=($!)
}

# log_has FILE PATTERN: PATTERN is in $T/FILE
log_has() { grep -q -- "$2" "$T/$1" 2>/dev/null; }

gw_store() { # [extra args]
    "$BIN/picomdm-store" --data-dir "$T/data" --request-endpoint "ipc://$T/req" \
        --publish-endpoint "ipc://$T/pub" "$@" >>"$T/store.log" 2>&1 &
    STORE_PID=$!
    PIDS+=($!)
    s_store_up() { log_has store.log "serving 'store'" || log_has broker.log "registered for 'store'"; }
    wait_for 30 "the store to register" s_store_up
}

gw_scheduler() { # [extra args]; each start waits for its own "serving" line
    local n # registrations so far (the broker logs each, whatever our log level)
    n=$(grep -c "registered for 'scheduler'" "$T/broker.log" 2>/dev/null)
    "$BIN/picomdm-scheduler" --request-endpoint "ipc://$T/req" --wake-sweep-s 0 "$@" \
        >>"$T/sched.log" 2>&1 &
    SCHED_PID=$!
    BACKEND_PID=$SCHED_PID
    PIDS+=($!)
    s_sched_up() { [ "$(grep -c "registered for 'scheduler'" "$T/broker.log" 2>/dev/null)" -gt "${n:-0}" ]; }
    wait_for 30 "the scheduler to register" s_sched_up
}

# the operator's CLI on this test's bus: cli SUBCOMMAND ARGS...
cli() {
    timeout 20 "$CLI" "$@" --request-endpoint "ipc://$T/req" --subscribe-endpoint "ipc://$T/sub"
}

# `picomdm watch`: every event as one JSON line in $T/events.jsonl
gw_watch() {
    "$CLI" watch --subscribe-endpoint "ipc://$T/sub" >"$T/events.jsonl" 2>"$T/watch.log" &
    WATCH_PID=$!
    PIDS+=($!)
    wait_for 30 "picomdm watch to subscribe" log_has watch.log "watching events"
    # the subscription travels to the broker's XPUB asynchronously, and no
    # event says when it is there: publish a probe event (it.probe, source
    # bustest) until watch has printed one, bounded
    local bt=${TT:-$BIN/../build/rel/tt}/bustest i
    if [ ! -x "$bt" ]; then sleep 1; return 0; fi
    for i in $(seq 1 20); do
        "$bt" pub --publish-endpoint "ipc://$T/pub" --topic it.probe --count 1 --delay-ms 200 \
            >/dev/null 2>&1
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            grep -q '"name":"it.probe"' "$T/events.jsonl" 2>/dev/null && return 0
            sleep 0.05
        done
    done
    fail "picomdm watch printed none of 20 probe events: its subscription never reached the broker"
}

# the real back end: store + scheduler, and the event recorder
gw_backend() {
    gw_watch
    gw_store
    gw_scheduler "$@"
}

gw_gateway() { # [extra args]
    PORT=$(free_port)
    [ "$PORT" != 0 ] || fail "no free port"
    "$BIN/picomdm-gateway" --listen "127.0.0.1:$PORT" --request-endpoint "ipc://$T/req" \
        --publish-endpoint "ipc://$T/pub" --device-ca "$PKI/ca.pem" "$@" >>"$T/gateway.log" 2>&1 &
    GW_PID=$!
    PIDS+=($GW_PID)
    local i
    for i in $(seq 1 400); do
        ss -ltn 2>/dev/null | awk '{print $4}' | grep -q ":$PORT\$" && return 0
        kill -0 $GW_PID 2>/dev/null || fail "gateway exited at start"
        sleep 0.05
    done
    fail "gateway did not listen on $PORT"
}

gw_tls() { # gateway with TLS (the normal case)
    gw_gateway --tls-cert "$PKI/tls.pem" --tls-key "$PKI/tls.key" "$@"
    URL=https://127.0.0.1:$PORT
}

# everything, the normal way: PKI, broker, store, scheduler, watch, TLS gateway
e2e_up() { # [gateway args]
    gw_pki
    gw_broker
    gw_backend
    gw_tls "$@"
}

# ---- the device simulator ----
# devsim IDENT SEED [args...]: one device with the identity $PKI/IDENT.{pem,key}
# (the same certificate on every run, as a real device keeps its identity)
devsim() {
    local who=$1 seed=$2
    shift 2
    timeout 60 "$BIN/picomdm-devsim" --url "$URL" --ca-bundle "$PKI/ca.pem" \
        --cert "$PKI/$who.pem" --key "$PKI/$who.key" --seed "$seed" --timeout-ms 10000 "$@"
}
# devsim_fleet N SEED TIMEOUT_MS [args...]: N simulated devices whose
# identities the simulator issues into $T/ids from the test CA (the same
# ones on every run with the same seed)
devsim_fleet() {
    local n=$1 seed=$2 tmo=$3
    shift 3
    timeout 50 "$BIN/picomdm-devsim" --url "$URL" --ca-bundle "$PKI/ca.pem" --ca-cert "$PKI/ca.pem" \
        --ca-key "$PKI/ca.key" --identity-dir "$T/ids" --devices "$n" --seed "$seed" \
        --timeout-ms "$tmo" --log-level warn "$@"
}
# devsim_id SEED [--kind K]: the UDID (or EnrollmentID) the simulator uses for that seed
devsim_id() {
    local seed=$1
    shift
    "$BIN/picomdm-devsim" --seed "$seed" "$@" --print authenticate 2>/dev/null |
        awk '/<key>(UDID|EnrollmentID)<\/key>/ { getline; gsub(/.*<string>|<\/string>.*/, ""); print; exit }'
}

# ---- requests by hand (curl + openssl cms) ----
# plist BODY for a check-in or command-loop message: plist KEY VALUE ...
plist() {
    printf '<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n<plist version="1.0">\n<dict>\n'
    while [ $# -ge 2 ]; do
        case "$2" in
        data:*) printf '<key>%s</key><data>%s</data>\n' "$1" "${2#data:}" ;;
        *) printf '<key>%s</key><string>%s</string>\n' "$1" "$2" ;;
        esac
        shift 2
    done
    printf '</dict>\n</plist>\n'
}

# sign FILE IDENT -> base64 detached CMS on stdout
sign() {
    openssl cms -sign -binary -in "$1" -signer "$PKI/$2.pem" -inkey "$PKI/$2.key" -outform DER \
        -md "${MD:-sha256}" | base64 -w0
}

# put PATH BODYFILE SIGNER|- [curl args...] -> "CODE" on stdout, response in $T/resp
put() {
    local path=$1 file=$2 who=$3
    shift 3
    local hdr=()
    if [ "$who" != - ]; then hdr=(-H "Mdm-Signature: $(sign "$file" "$who")"); fi
    curl -sS -m 15 --cacert "$PKI/ca.pem" -o "$T/resp" -D "$T/resp.h" -w '%{http_code}' \
        -X PUT --data-binary "@$file" "${hdr[@]}" "$@" "$URL$path" 2>>"$T/curl.out"
}

expect() { # expect WANT GOT what
    [ "$1" = "$2" ] || fail "$3: HTTP $2, expected $1 (response: $(head -c 300 "$T/resp" 2>/dev/null))"
    echo "ok  $3 -> $2"
}

# ---- events (from picomdm watch) ----
# nevents NAME [GREP]: how many NAME events (optionally also matching GREP) were seen
nevents() {
    grep -F "\"name\":\"$1\"" "$T/events.jsonl" 2>/dev/null | grep -c -- "${2:-.}"
}
events() { nevents security.rejected; }
# wait_event N NAME [GREP]: until at least N such events were seen
wait_event() {
    local i
    for i in $(seq 1 400); do
        [ "$(nevents "$2" "${3:-.}")" -ge "$1" ] && return 0
        sleep 0.05
    done
    fail "expected $1 '$2' events${3:+ matching $3}, saw $(nevents "$2" "${3:-.}")"
}
wait_events() { wait_event "$1" security.rejected; } # wait_events N: N security.rejected
