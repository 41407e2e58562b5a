#!/bin/bash
# gateway_robust — hostile input: 1,000 malformed, truncated, oversized,
# deeply nested, binary and wrong-typed bodies, plus slow clients holding
# connections; the gateway stays up, answers each bad request with 400/413
# (never 5xx, never 401), drops slow clients after idle-timeout, and keeps
# serving a good device throughout. Real back end (store + scheduler).
source "$(dirname "$0")/e2e_lib.bash"
command -v python3 >/dev/null || skip "skipped: python3 not installed"

gw_pki
gw_broker
gw_backend
# A: the normal TLS gateway; B: plain HTTP in lab mode, so that bad bodies
# reach the plist parser without needing a signature each.
gw_tls --idle-timeout 3 --body-max 65536
A_PORT=$PORT A_URL=$URL A_PID=$GW_PID
gw_gateway --plain-http --insecure-lab-mode --idle-timeout 3 --body-max 65536
B_PORT=$PORT B_PID=$GW_PID

plist MessageType Authenticate UDID ROBUST-1 Topic t >"$T/auth"
plist MessageType TokenUpdate UDID ROBUST-1 Topic t Token data:AAEC PushMagic PM >"$T/tok"
URL=$A_URL
expect 200 "$(put /mdm/checkin "$T/auth" dev1)" "good device before the flood"
expect 200 "$(put /mdm/checkin "$T/tok" dev1)" "good device TokenUpdate"
CU=$(cli enqueue DeviceInformation --to ROBUST-1 --set Queries=UDID) || fail "enqueue"

python3 - "$B_PORT" "$A_PORT" >"$T/flood.out" 2>&1 <<'EOF' || { cat "$T/flood.out"; fail "flood script failed"; }
import http.client, plistlib, random, socket, sys, time, collections
bport, aport = int(sys.argv[1]), int(sys.argv[2])
random.seed(7)
good = plistlib.dumps({"MessageType": "Authenticate", "UDID": "LAB-1", "Topic": "t"})
goodb = plistlib.dumps({"MessageType": "Authenticate", "UDID": "LAB-1"}, fmt=plistlib.FMT_BINARY)
def nested_xml(d):
    return (b'<?xml version="1.0"?><plist version="1.0">' + b"<array>" * d + b"</array>" * d + b"</plist>")
def nested_bin(d):
    v = "x"
    for _ in range(d):
        v = [v]
    return plistlib.dumps({"MessageType": "Authenticate", "UDID": "U", "X": v}, fmt=plistlib.FMT_BINARY)
deep_bin = nested_bin(200)
kinds = [
    ("truncated-xml", lambda i: good[: random.randint(1, len(good) - 2)]),
    ("truncated-bin", lambda i: goodb[: random.randint(1, len(goodb) - 2)]),
    ("garbage", lambda i: bytes(random.getrandbits(8) for _ in range(random.randint(1, 2000)))),
    ("bplist-garbage", lambda i: b"bplist00" + bytes(random.getrandbits(8) for _ in range(300))),
    ("deep-xml", lambda i: nested_xml(random.choice([40, 1000, 20000]))),
    ("deep-bin", lambda i: deep_bin),
    ("oversized", lambda i: b"<plist><string>" + b"A" * 70000 + b"</string></plist>"),
    ("wrong-type", lambda i: plistlib.dumps({"MessageType": 42, "UDID": "U"})),
    ("udid-dict", lambda i: plistlib.dumps({"MessageType": "TokenUpdate", "UDID": {"a": 1}})),
    ("not-dict", lambda i: plistlib.dumps(["MessageType", "Authenticate"])),
    ("empty", lambda i: b""),
    ("both", lambda i: plistlib.dumps({"MessageType": "Authenticate", "Status": "Idle", "UDID": "U"})),
    ("bitflip", lambda i: bytes(b ^ (1 << random.randint(0, 7)) if random.random() < 0.02 else b for b in good)),
]
codes = collections.Counter()
bad = []
c = http.client.HTTPConnection("127.0.0.1", bport, timeout=10)
for i in range(1000):
    name, make = kinds[i % len(kinds)]
    body = make(i)
    path = "/mdm/connect" if i % 2 else "/mdm/checkin"
    for attempt in range(2):
        try:
            c.request("PUT", path, body=body)
            r = c.getresponse(); r.read()
            break
        except (ConnectionError, http.client.HTTPException, socket.timeout):
            c.close(); c = http.client.HTTPConnection("127.0.0.1", bport, timeout=10)
    else:
        print("no answer for", name); sys.exit(1)
    codes[(name, r.status)] += 1
    # a bit flip can leave a valid plist: 200 is fine then; anything 5xx or 401 is not
    if r.status >= 500 or r.status == 401 or (r.status == 200 and name != "bitflip"):
        bad.append((name, r.status))
    if r.getheader("Connection", "").lower() == "close":
        c.close(); c = http.client.HTTPConnection("127.0.0.1", bport, timeout=10)
for k in sorted(codes):
    print("%-16s %d: %d" % (k[0], k[1], codes[k]))
if bad:
    print("BAD", bad[:10]); sys.exit(1)
# slow clients: 40 sockets that send half a request and stall
slow = []
for i in range(40):
    s = socket.create_connection(("127.0.0.1", bport if i % 2 else aport))
    s.sendall(b"PUT /mdm/checkin HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n<plist>" if i % 2 else b"\x16\x03\x01")
    slow.append(s)
# while they stall, a good lab request is served
c = http.client.HTTPConnection("127.0.0.1", bport, timeout=10)
t0 = time.time()
c.request("PUT", "/mdm/checkin", body=good); r = c.getresponse(); r.read()
print("good request during slow clients:", r.status, "%.0f ms" % ((time.time() - t0) * 1000))
if r.status != 200:
    sys.exit(1)
# the gateway drops them after idle-timeout (3 s)
time.sleep(5)
closed = 0
for s in slow:
    s.settimeout(0.5)
    try:
        if s.recv(100) == b"":
            closed += 1
    except ConnectionResetError:
        closed += 1
    except socket.timeout:
        pass
print("slow clients closed by the gateway:", closed, "of", len(slow))
if closed != len(slow):
    sys.exit(1)
EOF
cat "$T/flood.out"
kill -0 $A_PID && kill -0 $B_PID || fail "a gateway died during the flood"
# the real device still gets through, signed, on the TLS gateway
URL=$A_URL
plist Status Idle UDID ROBUST-1 >"$T/idle"
expect 200 "$(put /mdm/connect "$T/idle" dev1)" "good device after the flood"
grep -q "<string>$CU</string>" "$T/resp" || fail "good device did not get its command"
kill -0 "$SCHED_PID" && kill -0 "$STORE_PID" || fail "the back end died during the flood"
grep -qi 'sanitizer\|segfault\|assert' "$T/gateway.log" && fail "gateway log shows a crash"
# every 400 made by the gateway raised an event (413s are answered by the HTTP
# layer before the gateway sees the request)
n400=$(awk '$2 == "400:" { s += $3 } END { print s + 0 }' "$T/flood.out")
[ "$n400" -ge 800 ] || fail "only $n400 requests were answered 400"
wait_events "$n400"
echo "security.rejected events: $(events) for $n400 answers 400"
# lab mode with no device CA at all: /health and /metrics answer, the gateway
# stays up (it once dereferenced the missing verifier's cache counters)
C_PORT=$(free_port)
"$BIN/picomdm-gateway" --listen "127.0.0.1:$C_PORT" --plain-http --insecure-lab-mode \
    --admin-listen off --request-endpoint "ipc://$T/req" --publish-endpoint "ipc://$T/pub" \
    >>"$T/gateway-noca.log" 2>&1 &
C_PID=$!
PIDS+=($C_PID)
for i in $(seq 1 400); do ss -ltn | awk '{print $4}' | grep -q ":$C_PORT\$" && break; sleep 0.05; done
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$C_PORT/health")
[ "$code" = 200 ] || [ "$code" = 503 ] || fail "lab gateway without a device CA: /health answered $code"
kill -0 $C_PID || fail "lab gateway without a device CA died on /health"
echo "gateway_robust: all checks passed"
