#!/bin/bash
# devsim_spoof: every --spoof and --malformed variant is refused (HTTP 400)
# by a signature-checking server and the simulator exits 0; against a server
# that wrongly accepts everything, the simulator exits 1 (so tests can assert).
source "$(dirname "$0")/devsim_lib.inc"
"$DEVSIM" --make-ca "$W/ca" >/dev/null || fail "--make-ca"
start_stub strict --device-ca "$W/ca.pem"
URL=http://127.0.0.1:$STUB_PORT
COMMON=(--url "$URL" --ca-cert "$W/ca.pem" --ca-key "$W/ca.key" --timeout-ms 20000)
for v in unsigned wrong-ca expired self-signed tampered two-signers zero-signers bad-base64 another; do
    timeout 60 "$DEVSIM" "${COMMON[@]}" --spoof $v >"$W/out" 2>&1
    rc=$?
    cat "$W/out"
    [ $rc = 0 ] || fail "--spoof $v: exit $rc (want 0: rejected)"
    grep -q "HTTP 400 rejected" "$W/out" || fail "--spoof $v: no 400 seen"
done
for v in truncated nested oversized garbage wrong-types; do
    timeout 60 "$DEVSIM" "${COMMON[@]}" --malformed $v >"$W/out" 2>&1
    rc=$?
    cat "$W/out"
    [ $rc = 0 ] || fail "--malformed $v: exit $rc (want 0: rejected)"
done
kill -0 "$STUB_PID" || fail "the stub died under bad input"
stop_stub
[ "$(stat_of rejected)" -ge 17 ] || fail "stub counted $(stat_of rejected) rejections, want >= 17"

# A server that accepts everything must make the simulator fail.
start_stub lax --accept-all
for v in unsigned wrong-ca zero-signers; do
    timeout 60 "$DEVSIM" --url "http://127.0.0.1:$STUB_PORT" --spoof $v >"$W/out" 2>&1
    rc=$?
    cat "$W/out"
    [ $rc = 1 ] || fail "--spoof $v against an accept-all server: exit $rc (want 1)"
    grep -q ACCEPTED "$W/out" || fail "--spoof $v: ACCEPTED not printed"
done
echo "devsim_spoof: ok"
