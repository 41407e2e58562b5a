#!/bin/bash
# gateway_reuseport — two gateway processes share one port (SO_REUSEPORT):
# both start, the kernel spreads new connections over both, all answered.
source "$(dirname "$0")/e2e_lib.bash"
gw_pki
gw_broker
gw_backend
gw_tls --log-level debug
P1=$GW_PID
"$BIN/picomdm-gateway" --listen "127.0.0.1:$PORT" --request-endpoint "ipc://$T/req" \
    --publish-endpoint "ipc://$T/pub" --device-ca "$PKI/ca.pem" --tls-cert "$PKI/tls.pem" \
    --tls-key "$PKI/tls.key" --log-level debug >"$T/gw2.log" 2>&1 &
P2=$!
PIDS+=($P2)
for i in $(seq 1 200); do grep -q 'listening on' "$T/gw2.log" && break; kill -0 $P2 2>/dev/null || break; sleep 0.1; done
kill -0 $P2 2>/dev/null || fail "second gateway could not share port $PORT: $(cat "$T/gw2.log")"
grep -q 'listening on' "$T/gw2.log" || fail "second gateway does not listen after 20 s: $(cat "$T/gw2.log")"
plist MessageType Authenticate UDID REUSE-1 Topic t >"$T/a"
sig=$(sign "$T/a" dev1)
for i in $(seq 1 40); do # a new connection each time
    curl -sS -m 5 --cacert "$PKI/ca.pem" -o /dev/null -w '%{http_code}\n' -X PUT \
        --data-binary "@$T/a" -H "Mdm-Signature: $sig" "$URL/mdm/checkin"
done >"$T/codes"
[ "$(grep -c '^200$' "$T/codes")" = 40 ] || fail "not all 40 answered 200: $(sort "$T/codes" | uniq -c)"
n1=$(grep -c 'Authenticate -> 200' "$T/gateway.log")
n2=$(grep -c 'Authenticate -> 200' "$T/gw2.log")
echo "connections served: first gateway $n1, second $n2"
[ "$n1" -gt 0 ] && [ "$n2" -gt 0 ] || fail "one gateway got no connection"
[ $((n1 + n2)) = 40 ] || fail "served $((n1 + n2)) of 40"
echo "gateway_reuseport: all checks passed"
