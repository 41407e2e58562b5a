#!/bin/bash
# The APNs stand-in alone, driven by curl: HTTP/2 only, client certificate
# from the configured CA, topic = certificate UID, token format and list,
# body exactly {"mdm":"..."}, Apple's status codes and JSON reasons, injected
# failures (410 with timestamp, 429 count=1, 503, GOAWAY), the delivery hook.
. "$(dirname "$0")/push_lib.inc"
command -v curl >/dev/null || skip "curl CLI missing"
command -v python3 >/dev/null || skip "python3 missing (make deps)"
make_pki
KNOWN=$(tok 1); OTHER=$(tok 2); UNKNOWN=$(tok 3)
printf '%s\n%s com.apple.mgmt.External.elsewhere\n' "$KNOWN" "$OTHER" > "$W/tokens"
# the delivery hook: a UNIX datagram receiver that writes what it gets
# (the datagram is a msgpack map of str values; Python's standard library has
# no msgpack, so this reads exactly that shape and writes it as a JSON line)
python3 - "$W/deliver.sock" "$W/datagrams" <<'PY' &
import json, socket, sys
def strs(d, i):
    t = d[i]
    if 0xa0 <= t <= 0xbf: n, i = t & 0x1f, i + 1
    elif t == 0xd9: n, i = d[i + 1], i + 2
    elif t == 0xda: n, i = int.from_bytes(d[i + 1:i + 3], "big"), i + 3
    else: raise ValueError("not a str")
    return d[i:i + n].decode(), i + n
def unpack(d):
    if not 0x80 <= d[0] <= 0x8f: raise ValueError("not a small map")
    m, i = {}, 1
    for _ in range(d[0] & 0x0f):
        k, i = strs(d, i); v, i = strs(d, i); m[k] = v
    if i != len(d): raise ValueError("trailing bytes")
    return m
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1]); s.settimeout(30)
with open(sys.argv[2], "a") as f:
    while True:
        try: d = s.recv(65536)
        except socket.timeout: break
        try: f.write(json.dumps(unpack(d), separators=(",", ":")) + "\n")
        except (ValueError, IndexError, UnicodeDecodeError) as e: f.write("bad datagram: %s\n" % e)
        f.flush()
PY
PIDS+=($!)
for _ in $(seq 200); do [ -S "$W/deliver.sock" ] && break; sleep 0.1; done
start_fapns fapns --tokens "$W/tokens" --deliver-file "$W/delivered" --deliver-unix "$W/deliver.sock"
URL=https://127.0.0.1:$FAPNS_PORT

# req CERT TOKEN [curl args...]: prints "<status> <body>"
req() {
    local cert=$1 token=$2; shift 2
    local code
    code=$(curl -s --http2 --max-time 10 --cacert "$W/ca.pem" ${cert:+--cert "$W/$cert.pem"} \
        -o "$W/body" -w '%{http_code}' "$@" "$URL/3/device/$token")
    echo "$code $(cat "$W/body" 2>/dev/null)"
}
DEFBODY='{"mdm":"MAGIC-1"}'
good() { req push "$1" -H "apns-topic: $TOPIC" -H 'apns-push-type: mdm' -H 'apns-priority: 10' \
    -H 'apns-expiration: 0' --data-binary "${2:-$DEFBODY}"; }
expect() { # what got want
    case "$2" in "$3"*) echo "ok   $1: $2" ;; *) fail "$1: got '$2', want '$3'" ;; esac
}

expect "accepted push" "$(good "$KNOWN")" "200 "
expect "space in body" "$(good "$KNOWN" '{"mdm": "MAGIC-2"}')" "200 "
grep -q '"mdm":"MAGIC-1"' "$W/delivered" || fail "push not delivered to the file hook"
for _ in $(seq 200); do grep -q MAGIC-2 "$W/datagrams" 2>/dev/null && break; sleep 0.1; done
grep -q "\"token\":\"$KNOWN\".*\"mdm\":\"MAGIC-2\"" "$W/datagrams" || fail "no datagram delivery"
echo "ok   delivery hook: file and UNIX datagram"

# transport: HTTP/1.1, no client certificate, a certificate from another CA
before=$(apns_stat alpn_refused)
out=$(curl -s --http1.1 --max-time 10 --cacert "$W/ca.pem" --cert "$W/push.pem" \
    -H "apns-topic: $TOPIC" -d '{"mdm":"x"}' "$URL/3/device/$KNOWN" -w '%{http_code}')
[ $? != 0 ] || fail "HTTP/1.1 request succeeded ($out)"
[ "$(apns_stat alpn_refused)" -gt "$before" ] || fail "ALPN refusal not counted"
echo "ok   HTTP/1.1 refused (ALPN h2 only)"
tls=$(apns_stat tls_failures)
curl -s --http2 --max-time 10 --cacert "$W/ca.pem" -H "apns-topic: $TOPIC" -d '{"mdm":"x"}' \
    "$URL/3/device/$KNOWN" >/dev/null && fail "request without a client certificate succeeded"
curl -s --http2 --max-time 10 --cacert "$W/ca.pem" --cert "$W/rogue.pem" -H "apns-topic: $TOPIC" \
    -d '{"mdm":"x"}' "$URL/3/device/$KNOWN" >/dev/null && fail "certificate from another CA accepted"
[ "$(apns_stat tls_failures)" -ge $((tls + 2)) ] || fail "TLS failures not counted"
echo "ok   no client certificate / wrong CA refused in the handshake"

expect "certificate without UID" "$(req no-uid "$KNOWN" -H "apns-topic: $TOPIC" -d '{"mdm":"x"}')" \
    '403 {"reason":"BadCertificate"}'
expect "topic of another certificate" "$(req other-topic "$KNOWN" -H "apns-topic: $TOPIC" -d '{"mdm":"x"}')" \
    '400 {"reason":"BadTopic"}'
expect "wrong topic" "$(req push "$KNOWN" -H 'apns-topic: com.example.other' -d '{"mdm":"x"}')" \
    '400 {"reason":"BadTopic"}'
expect "missing topic" "$(req push "$KNOWN" -d '{"mdm":"x"}')" '400 {"reason":"MissingTopic"}'
expect "short token" "$(good "${KNOWN:1}")" '400 {"reason":"BadDeviceToken"}'
expect "non-hex token" "$(good "${KNOWN:1}g")" '400 {"reason":"BadDeviceToken"}'
expect "unknown token" "$(good "$UNKNOWN")" '400 {"reason":"BadDeviceToken"}'
expect "token of another topic" "$(good "$OTHER")" '400 {"reason":"DeviceTokenNotForTopic"}'
expect "extra key in body" "$(good "$KNOWN" '{"mdm":"x","aps":{}}')" '400 {"reason":"BadPayload"}'
expect "not JSON" "$(good "$KNOWN" 'mdm=x')" '400 {"reason":"BadPayload"}'
expect "empty body" "$(req push "$KNOWN" -H "apns-topic: $TOPIC" -X POST)" '400 {"reason":"PayloadEmpty"}'
big=$(head -c 5000 /dev/zero | tr '\0' a)
expect "body over 4096 bytes" "$(good "$KNOWN" "{\"mdm\":\"$big\"}")" '413 {"reason":"PayloadTooLarge"}'
expect "push type not mdm" "$(req push "$KNOWN" -H "apns-topic: $TOPIC" -H 'apns-push-type: alert' -d '{"mdm":"x"}')" \
    '400 {"reason":"InvalidPushType"}'
expect "bad priority" "$(req push "$KNOWN" -H "apns-topic: $TOPIC" -H 'apns-priority: 7' -d '{"mdm":"x"}')" \
    '400 {"reason":"BadPriority"}'
expect "bad expiration" "$(req push "$KNOWN" -H "apns-topic: $TOPIC" -H 'apns-expiration: soon' -d '{"mdm":"x"}')" \
    '400 {"reason":"BadExpirationDate"}'
expect "GET" "$(req push "$KNOWN" -H "apns-topic: $TOPIC")" '405 {"reason":"MethodNotAllowed"}'
code=$(curl -s --http2 --max-time 10 --cacert "$W/ca.pem" --cert "$W/push.pem" -o "$W/body" \
    -w '%{http_code}' -H "apns-topic: $TOPIC" -d '{"mdm":"x"}' "$URL/4/other")
expect "bad path" "$code $(cat "$W/body")" '404 {"reason":"BadPath"}'

# injected failures through the control endpoint
ctl POST /rules "$KNOWN 410
$KNOWN 429 count=1" >/dev/null
out=$(good "$KNOWN")
case "$out" in '410 {"reason":"Unregistered","timestamp":'[0-9]*'}') echo "ok   410: $out" ;;
    *) fail "410 rule: $out" ;; esac
ctl DELETE /rules >/dev/null
ctl POST /rules "$KNOWN 429 count=1
* 503 count=1" | grep -q 'added 2' || fail "control endpoint did not take the rules"
expect "429 once" "$(good "$KNOWN")" '429 {"reason":"TooManyRequests"}'
expect "then 503 once (wildcard)" "$(good "$KNOWN")" '503 {"reason":"ServiceUnavailable"}'
expect "then accepted" "$(good "$KNOWN")" '200 '
ctl POST /rules "bogus rule" | grep -q 'bad rule' || fail "a bad rule was not refused"
ctl POST /rules "$KNOWN delay delay=700 count=1" >/dev/null
t0=$(date +%s%N); out=$(good "$KNOWN"); t1=$(date +%s%N)
expect "delayed answer" "$out" '200 '
[ $(((t1 - t0) / 1000000)) -ge 650 ] || fail "delay rule answered after $(((t1 - t0) / 1000000)) ms"
echo "ok   delay=700 took $(((t1 - t0) / 1000000)) ms"
ctl POST /rules "$KNOWN goaway count=1" >/dev/null
good "$KNOWN" >/dev/null
[ "$(apns_stat goaways)" = 1 ] || fail "GOAWAY not sent (goaways=$(apns_stat goaways))"
echo "ok   GOAWAY sent"
[ "$(apns_stat accepted)" = 4 ] || fail "accepted counter $(apns_stat accepted)"
kill -0 "$FAPNS_PID" || fail "fake-apns died"
echo "PASS"
