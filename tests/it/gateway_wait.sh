#!/bin/bash
# gateway_wait — what a client does while its request waits for the back end.
# Bytes that arrive during that wait (a pipelined request, garbage) must
# wait for evhttp's next request, a client that leaves must only drop the
# answer. The store is stopped (SIGSTOP) so that the wait is
# long and certain; each case then checks the answers and that the gateway
# is still up and serving. Real back end (broker, store, scheduler), TLS.
source "$(dirname "$0")/e2e_lib.bash"
command -v python3 >/dev/null || skip "skipped: python3 not installed"

gw_pki
gw_broker
gw_backend
gw_tls

plist MessageType Authenticate UDID WAIT-1 Topic t >"$T/auth"
plist MessageType TokenUpdate UDID WAIT-1 Topic t Token data:AAEC PushMagic PM >"$T/tok"
expect 200 "$(put /mdm/checkin "$T/auth" dev1)" "Authenticate"
expect 200 "$(put /mdm/checkin "$T/tok" dev1)" "TokenUpdate"
plist Status Idle UDID WAIT-1 >"$T/idle"
sign "$T/idle" dev1 >"$T/idle.sig"

cont_store() { kill -CONT "$STORE_PID" 2>/dev/null; }
trap 'cont_store; gw_cleanup' EXIT

# The client stops the store itself, so that nothing else waits on it.
timeout 50 python3 - "$PORT" "$PKI/ca.pem" "$T/idle" "$T/idle.sig" "$STORE_PID" >"$T/wait.out" 2>&1 <<'EOF' || { cat "$T/wait.out"; fail "wait script failed"; }
import http.client, os, signal, socket, ssl, sys, time
port, ca, body, sig, store = int(sys.argv[1]), sys.argv[2], open(sys.argv[3], "rb").read(), open(sys.argv[4]).read().strip(), int(sys.argv[5])
ctx = ssl.create_default_context(cafile=ca)
req = (b"PUT /mdm/connect HTTP/1.1\r\nHost: 127.0.0.1\r\nMdm-Signature: " + sig.encode() +
       b"\r\nContent-Type: application/x-apple-aspen-mdm\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
def conn():
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20), server_hostname="127.0.0.1")
    return s
def answer(s):
    r = http.client.HTTPResponse(s)
    r.begin()
    r.read()
    return r.status

# 1. a second (pipelined) request arrives while the first waits: both answered, in order
os.kill(store, signal.SIGSTOP)
s = conn()
s.sendall(req)
time.sleep(0.4)   # the first request is now waiting for the stopped store
s.sendall(req)    # read during the wait, kept for evhttp
time.sleep(0.4)
os.kill(store, signal.SIGCONT)
a, b = answer(s), answer(s)
print("pipelined during the wait:", a, b)
assert (a, b) == (200, 200), (a, b)
s.close()

# 2. the client leaves while its request waits: the late answer is dropped
os.kill(store, signal.SIGSTOP)
s = conn()
s.sendall(req)
time.sleep(0.4)
s.close()
time.sleep(0.2)
os.kill(store, signal.SIGCONT)
time.sleep(0.3)

# 3. garbage after the request, during the wait: the request is answered,
# then evhttp refuses the garbage (400 or a close), nothing else happens
os.kill(store, signal.SIGSTOP)
s = conn()
s.sendall(req)
time.sleep(0.4)
s.sendall(b"\x00\x01garbage that is not HTTP\r\n\r\n")
time.sleep(0.2)
os.kill(store, signal.SIGCONT)
a = answer(s)
print("request with garbage after it:", a)
assert a == 200, a
try:
    rest = answer(s)
except Exception as e:
    rest = type(e).__name__
print("then:", rest)
assert rest in (400, "RemoteDisconnected", "BadStatusLine", "ConnectionResetError"), rest
s.close()

# 4. the same connection again after a normal request: still keep-alive
s = conn()
for _ in range(3):
    s.sendall(req)
    assert answer(s) == 200
print("keep-alive after the waits: 3 x 200")
EOF
cat "$T/wait.out"
kill -0 "$GW_PID" 2>/dev/null || fail "the gateway died (log: $(tail -n 5 "$T/gateway.log"))"
! grep -qiE 'illegal connection state|assert|abort' "$T/gateway.log" || fail "gateway log: $(grep -iE 'illegal|assert|abort' "$T/gateway.log" | head -3)"
expect 200 "$(put /mdm/connect "$T/idle" dev1)" "a normal request after the waits"
curl -sS -m 5 --cacert "$PKI/ca.pem" "$URL/health" | grep -q '^ok' || fail "/health after the waits"
echo "gateway_wait: pipelined, closed and garbage-trailed requests during a back-end wait handled; gateway up"
