#!/bin/bash
# ca_alloc: the rel picomdm-ca links mimalloc (Makefile ALLOC_PROCS;
# docs/enrollment.md "Session 11, cacpu": OpenSSL makes ~1,200 allocations
# per enrollment in the ca), says so when it is ready, and serves SCEP with it:
# an EC CA through an RSA RA (as `picomdm up` makes them), 40 PKCSReq with a
# static challenge, 8 in flight, every one issued, and the ca's peak RSS
# (VmHWM) under 64 MB (it is ~16 MB).
. "$(dirname "$0")/common.inc" # need_mimalloc; the lib below may redefine the rest
. "$(dirname "$0")/broker_lib.bash"
[ -x "$TT/ca_client" ] || { echo "skip: $TT/ca_client not built (run make)"; exit 77; }
need_mimalloc "$BIN/picomdm-ca"
start_broker broker
mkdir -p "$D/ca"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/O=PicoMDM/CN=EC CA" \
    -days 30 -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$D/ca/ca.key" -out "$D/ca/ca.crt" 2>/dev/null || fail "openssl EC CA"
PICOMDM_CHALLENGE=static-alloc-challenge "$BIN/picomdm-ca" --request-endpoint "$REQ" --publish-endpoint "$PUB" \
    --heartbeat-ms 200 --data-dir "$D/ca" --server-url https://127.0.0.1:8443/mdm/server \
    --scep-url https://127.0.0.1:8443/scep --topic com.apple.mgmt.External.it --challenge-mode static \
    >"$D/ca.log" 2>&1 &
CA=$!
PIDS+=("$CA")
wait_log ca "serving \"ca\"" 1 20
wait_log broker "registered for 'ca'" 1 10
grep -q "ready (SCEP via RSA RA, challenge static, allocator: mimalloc 2[0-9][0-9])" "$D/ca.log" ||
    fail "the ca does not say it runs on mimalloc: $(grep ready "$D/ca.log")"
grep -q 'libmimalloc\.so\.2' /proc/"$CA"/maps || fail "the running ca has no libmimalloc mapped"
timeout 60 "$TT/ca_client" --endpoint "$REQ" enroll --challenge static-alloc-challenge --cn dev-alloc \
    --count 40 --inflight 8 >"$D/e.out" 2>&1 || { cat "$D/e.out"; fail "enroll"; }
grep -q "issued=40 failed=0 errors=0 status=SUCCESS" "$D/e.out" || fail "ca_client: $(cat "$D/e.out")"
hwm=$(awk '/^VmHWM/ { print $2 }' /proc/"$CA"/status)
[ -n "$hwm" ] || fail "cannot read the ca's VmHWM"
[ "$hwm" -lt 65536 ] || fail "the ca's peak RSS is $hwm kB, more than 64 MB"
echo "ok: ca with mimalloc, 40 PKCSReq issued, peak RSS $hwm kB"
