#!/bin/bash
# gateway_proxy — plain HTTP behind a TLS-terminating proxy: the client
# certificate arrives URL-escaped in a header (nginx $ssl_client_escaped_cert)
# and is trusted only from trusted-proxies; Mdm-Signature still works there.
source "$(dirname "$0")/e2e_lib.bash"

command -v python3 >/dev/null || skip "skipped: python3 not installed"
gw_pki
gw_broker
gw_backend
esc() { python3 -c 'import sys,urllib.parse; print(urllib.parse.quote(open(sys.argv[1]).read(), safe=""))' "$1"; }
DEV1=$(esc "$PKI/dev1.pem")
EVIL=$(esc "$PKI/evil.pem")

# 1. the proxy (127.0.0.1) is trusted
gw_gateway --plain-http --trusted-proxies "127.0.0.1" --proxy-cert-header X-Client-Cert
URL=http://127.0.0.1:$PORT
plist MessageType Authenticate UDID PROXY-1 Topic t >"$T/auth"
expect 200 "$(put /mdm/checkin "$T/auth" - -H "X-Client-Cert: $DEV1")" "certificate from a trusted proxy"
wait_event 1 checkin.Authenticate '"eid":"PROXY-1"'
# the proxy's certificate was bound: another device's certificate is refused for PROXY-1
plist MessageType TokenUpdate UDID PROXY-1 Topic t Token data:AAEC PushMagic PM >"$T/tok"
DEV2=$(esc "$PKI/dev2.pem")
expect 400 "$(put /mdm/checkin "$T/tok" - -H "X-Client-Cert: $DEV2")" "another device's certificate via the proxy"
expect 200 "$(put /mdm/checkin "$T/tok" - -H "X-Client-Cert: $DEV1")" "the bound certificate via the proxy"
expect 400 "$(put /mdm/checkin "$T/auth" - -H "X-Client-Cert: $EVIL")" "proxy header, wrong CA"
expect 400 "$(put /mdm/checkin "$T/auth" - -H "X-Client-Cert: garbage")" "proxy header, garbage"
expect 400 "$(put /mdm/checkin "$T/auth" -)" "no header, unsigned"
expect 200 "$(put /mdm/checkin "$T/auth" dev1)" "Mdm-Signature behind the proxy"
kill $GW_PID; wait $GW_PID 2>/dev/null

# 2. the same header from an address that is not a trusted proxy
n0=$(events)
gw_gateway --plain-http --trusted-proxies "192.0.2.1" --proxy-cert-header X-Client-Cert
URL=http://127.0.0.1:$PORT
expect 400 "$(put /mdm/checkin "$T/auth" - -H "X-Client-Cert: $DEV1")" "header from an untrusted peer"
wait_events $((n0 + 1))
grep -q '"reason":"untrusted_proxy' "$T/events.jsonl" || fail "no untrusted_proxy event"
echo "gateway_proxy: all checks passed"
