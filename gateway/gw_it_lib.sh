# gw_it_lib.sh — shared helpers for the gateway's integration tests and
# benchmark (tests/it/gateway_*.sh, tests/bench/gateway.sh). Sourced, never run.
#
# Gives: a temp dir $T, a test PKI made with the openssl CLI, a broker on ipc
# endpoints in $T, the stand-in back end ($TT/gw_backend), a gateway on a free
# loopback port ($PORT), and helpers to send signed requests with curl.
# Every process started is killed on exit.

set -u
: "${BIN:?run through tests/run.sh (BIN unset)}"
: "${TT:?run through tests/run.sh (TT unset)}"
T=$(mktemp -d /tmp/gw_it.XXXXXX)
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

fail() { echo "FAIL: $*"; [ -f "$T/gateway.log" ] && tail -n 20 "$T/gateway.log"; exit 1; }
skip() { echo "$*"; exit 77; }

for b in "$BIN/picomdm-broker" "$BIN/picomdm-gateway" "$TT/gw_backend"; do
    [ -x "$b" ] || skip "skipped: $b is not built (needs the bus library)"
done
command -v curl >/dev/null || skip "skipped: curl not installed"

free_port() {
    local p i
    for i in $(seq 1 50); do
        p=$((20000 + RANDOM % 40000))
        ss -ltn 2>/dev/null | awk '{print $4}' | grep -q ":$p\$" || { echo "$p"; return; }
    done
    echo 0
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
        for n in dev1 dev2 dev3 evil; do
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
    ) >"$T/pki.log" 2>&1 || { cat "$T/pki.log"; fail "could not make the test PKI"; }
    PKI=$d
}

# ---- processes ----
gw_broker() {
    "$BIN/picomdm-broker" --request-endpoint "ipc://$T/req" --publish-endpoint "ipc://$T/pub" \
        --subscribe-endpoint "ipc://$T/sub" --request-wait-ms 1000 >"$T/broker.log" 2>&1 &
    PIDS+=($!)
    BROKER_PID=$!
}

gw_backend() { # [extra args]
    "$TT/gw_backend" --endpoint "ipc://$T/req" --subscribe-endpoint "ipc://$T/sub" "$@" \
        >"$T/backend.out" 2>"$T/backend.log" &
    BACKEND_PID=$!
    PIDS+=($BACKEND_PID)
    local i
    for i in $(seq 1 100); do
        grep -q READY "$T/backend.out" 2>/dev/null && return 0
        sleep 0.05
    done
    fail "gw_backend did not start"
}

gw_gateway() { # [extra args]
    PORT=$(free_port)
    [ "$PORT" != 0 ] || fail "no free port"
    "$BIN/picomdm-gateway" --listen "127.0.0.1:$PORT" --request-endpoint "ipc://$T/req" \
        --publish-endpoint "ipc://$T/pub" --device-ca "$PKI/ca.pem" "$@" >>"$T/gateway.log" 2>&1 &
    GW_PID=$!
    PIDS+=($GW_PID)
    local i
    for i in $(seq 1 100); do
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

# ---- requests ----
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
        -X PUT --data-binary "@$file" "${hdr[@]}" "$@" "$URL$path" 2>>"$T/curl.log"
}

expect() { # expect WANT GOT what
    [ "$1" = "$2" ] || fail "$3: HTTP $2, expected $1 (response: $(head -c 300 "$T/resp" 2>/dev/null))"
    echo "ok  $3 -> $2"
}

events() { grep -c "^EVENT security.rejected" "$T/backend.out"; }

wait_events() { # wait_events N: until at least N security.rejected events were seen
    local i
    for i in $(seq 1 40); do
        [ "$(events)" -ge "$1" ] && return 0
        sleep 0.05
    done
    fail "expected $1 security.rejected events, saw $(events)"
}
