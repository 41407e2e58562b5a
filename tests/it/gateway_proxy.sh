#!/bin/bash
# gateway_proxy — plain HTTP behind a TLS-terminating proxy: the client
# certificate arrives URL-escaped in a header (nginx $ssl_client_escaped_cert)
# and is trusted only from trusted-proxies; Mdm-Signature still works there.
source "$(dirname "$0")/../../gateway/gw_it_lib.sh"

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
grep -q "^REQ checkin Authenticate eid=PROXY-1 kind=device cert=yes" "$T/backend.out" ||
    fail "cert_hash not forwarded from the proxy header"
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
grep -q "reason=untrusted_proxy" "$T/backend.out" || fail "no untrusted_proxy event"
echo "gateway_proxy: all checks passed"
