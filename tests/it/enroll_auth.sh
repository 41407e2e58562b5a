#!/bin/bash
# enroll_auth — protection of the enrollment route (docs/enrollment.md):
#  * basic auth (a second gateway with --enroll-auth basic): no credentials and
#    wrong credentials get 401 with a challenge, the right ones the profile;
#  * one-time tokens (`picomdm up` with PICOMDM_ENROLL_AUTH=token): no or a
#    malformed token 403; `picomdm enroll-token new` prints URLs; a token works
#    once (?token= and /<token> forms), the second use is 403; revoked and
#    expired tokens are 403; eight concurrent downloads with one token give
#    exactly one profile; list shows the states; a device enrolls end to end
#    from a token URL (devsim --enroll-url); a download the ca cannot serve (503)
#    gives the token back; every refusal is an enroll.refused
#    event; the token never appears in the server's logs.
set -u
ROOT=${PICOMDM_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${BIN:-$ROOT/bin}
. "$(dirname "$0")/common.inc"
need_bins picomdm picomdm-devsim picomdm-ca picomdm-gateway picomdm-broker picomdm-store picomdm-scheduler
command -v openssl >/dev/null && command -v curl >/dev/null || { echo "openssl and curl CLIs needed (make deps)"; exit 77; }
T=$(mktemp -d /tmp/enroll_auth.XXXXXX)
UP_PID=
GW2_PID=
W_PID=
cleanup() {
    for p in $W_PID $GW2_PID; do kill -TERM "$p" 2>/dev/null; done
    up_stop "$UP_PID" "$T"
    [ -n "$GW2_PID" ] && kill -KILL "$GW2_PID" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*"
    echo "--- server log (errors, warnings):"; grep -E "^[EW]:" "$T/up.log" | tail -n 20
    [ -f "$T/gw2.log" ] && { echo "--- second gateway:"; tail -n 10 "$T/gw2.log"; }
    exit 1
}
PORT=$(free_port) && PORT2=$(free_port) && [ "$PORT" != "$PORT2" ] || { echo "no free ports found"; exit 77; }

PICOMDM_ENROLL_AUTH=token PICOMDM_ENROLL_BASIC_AUTH= enroll_up 150

# every enroll.refused, as an operator would watch them (published after the store logged them)
timeout 100 "$BIN/picomdm" watch enroll.refused >"$T/watch.out" 2>"$T/watch.err" &
W_PID=$!
wait_for 20 grep -q "watching events" "$T/watch.err" || fail "picomdm watch did not start: $(cat "$T/watch.err")"
sleep 0.5 # the subscription travels to the broker (no event says when it is there)

code() { curl -s --cacert "$TLS" -o "${2:-/dev/null}" -w '%{http_code}' "$1"; }
verifies() {
    openssl cms -verify -inform DER -in "$1" -CAfile "$T/var/pki/ca.crt" -binary -purpose any \
        -out "$1.plist" 2>/dev/null && grep -q IdentityCertificateUUID "$1.plist"
}

# ---- basic auth: a second gateway on the same bus
PICOMDM_ENROLL_BASIC_AUTH='alice:s3cret pass' timeout 100 "$BIN/picomdm-gateway" \
    --listen "127.0.0.1:$PORT2" --enroll-auth basic >"$T/gw2.log" 2>&1 &
GW2_PID=$!
URL2=https://localhost:$PORT2
health2() { curl -sf --cacert "$TLS" "$URL2/scep?operation=GetCACaps" 2>/dev/null | grep -q POSTPKIOperation; }
wait_for 20 health2 || fail "the basic-auth gateway does not come up on $URL2"
h=$(curl -s --cacert "$TLS" -D - -o "$T/b0.body" "$URL2/mdm/enroll")
echo "$h" | head -1 | grep -q " 401" || fail "basic, no credentials: want 401, got: $(echo "$h" | head -1)"
echo "$h" | grep -qi '^WWW-Authenticate: Basic realm="PicoMDM enrollment"' || fail "basic: no WWW-Authenticate challenge"
[ "$(curl -s --cacert "$TLS" -o /dev/null -w '%{http_code}' -u 'alice:wrong' "$URL2/mdm/enroll")" = 401 ] \
    || fail "basic, wrong password: want 401"
[ "$(curl -s --cacert "$TLS" -o /dev/null -w '%{http_code}' -u 'bob:s3cret pass' "$URL2/mdm/enroll")" = 401 ] \
    || fail "basic, wrong user: want 401"
r=$(curl -s --cacert "$TLS" -o "$T/b.mobileconfig" -w '%{http_code} %{content_type}' -u 'alice:s3cret pass' "$URL2/mdm/enroll")
[ "$r" = "200 application/x-apple-aspen-config" ] || fail "basic, right credentials: want 200 profile, got $r"
verifies "$T/b.mobileconfig" || fail "basic: the profile does not verify to the device CA"
grep -q "s3cret" "$T/gw2.log" && fail "the basic-auth password is in the gateway's log"
kill -TERM "$GW2_PID"; wait "$GW2_PID" 2>/dev/null; GW2_PID=

# ---- tokens on the main gateway
[ "$(code "$URL/mdm/enroll")" = 403 ] || fail "token mode, no token: want 403"
[ "$(code "$URL/mdm/enroll" "$T/nt.body")" = 403 ] && grep -q "enrollment link" "$T/nt.body" \
    || fail "token mode: the 403 has no plain explanation: $(cat "$T/nt.body")"
[ "$(code "$URL/mdm/enroll?token=short")" = 403 ] || fail "malformed token: want 403"
[ "$(code "$URL/mdm/enroll?token=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")" = 403 ] || fail "unknown token: want 403"
[ "$(code "$URL/mdm/enroll/a/b")" = 404 ] || fail "/mdm/enroll/a/b: want 404"

"$BIN/picomdm" enroll-token new --count 6 --ttl 1h --note "test batch" >"$T/new.out" 2>"$T/new.err" \
    || fail "enroll-token new: $(cat "$T/new.err")"
[ "$(grep -c "^$URL/mdm/enroll?token=[A-Za-z0-9_-]\{43\}$" "$T/new.out")" = 6 ] \
    || fail "enroll-token new: want 6 URLs on $URL/mdm/enroll, got: $(cat "$T/new.out")"
grep -q "6 enrollment token(s), each usable once" "$T/new.err" || fail "enroll-token new said: $(cat "$T/new.err")"
mapfile -t U <"$T/new.out"
tok() { echo "${1##*token=}"; }
tid() { printf '%s' "$(tok "$1")" | sha256sum | cut -c1-12; }

# once, and never again (query form)
r=$(curl -s --cacert "$TLS" -o "$T/t0.mobileconfig" -w '%{http_code} %{content_type}' "${U[0]}")
[ "$r" = "200 application/x-apple-aspen-config" ] || fail "token: first use want 200 profile, got $r"
verifies "$T/t0.mobileconfig" || fail "token: the profile does not verify to the device CA"
[ "$(code "${U[0]}" "$T/t0b.body")" = 403 ] || fail "token: second use is not 403"
grep -q "already been used" "$T/t0b.body" || fail "second use: message: $(cat "$T/t0b.body")"
# path form
[ "$(code "$URL/mdm/enroll/$(tok "${U[1]}")" "$T/t1.mobileconfig")" = 200 ] || fail "token in the path: want 200"
verifies "$T/t1.mobileconfig" || fail "path-form token: profile does not verify"
[ "$(code "$URL/mdm/enroll/$(tok "${U[1]}")")" = 403 ] || fail "path-form token: second use is not 403"

# revoked
"$BIN/picomdm" enroll-token revoke "$(tid "${U[2]}")" >"$T/rev.out" 2>&1 || fail "revoke: $(cat "$T/rev.out")"
[ "$(code "${U[2]}" "$T/t2.body")" = 403 ] || fail "revoked token: want 403"
grep -q "revoked" "$T/t2.body" || fail "revoked: message: $(cat "$T/t2.body")"
"$BIN/picomdm" enroll-token revoke "$(tid "${U[0]}")" >/dev/null 2>&1 && fail "revoking a used token succeeded"

# expired
"$BIN/picomdm" enroll-token new --ttl 1s >"$T/exp.out" 2>/dev/null || fail "enroll-token new --ttl 1s"
sleep 1.5
[ "$(code "$(cat "$T/exp.out")" "$T/exp.body")" = 403 ] || fail "expired token: want 403"
grep -q "expired" "$T/exp.body" || fail "expired: message: $(cat "$T/exp.body")"

# eight concurrent downloads with one token: exactly one profile
for i in 1 2 3 4 5 6 7 8; do
    curl -s --cacert "$TLS" -o "$T/c$i.body" -w '%{http_code}\n' "${U[3]}" >"$T/c$i.code" &
done
wait_codes() { [ "$(cat "$T"/c*.code 2>/dev/null | grep -c .)" = 8 ]; }
wait_for 20 wait_codes || fail "concurrent downloads did not finish"
ok=$(cat "$T"/c*.code | grep -c '^200$'); no=$(cat "$T"/c*.code | grep -c '^403$')
[ "$ok" = 1 ] && [ "$no" = 7 ] || fail "8 concurrent downloads with one token: want 1 x 200 + 7 x 403, got $ok x 200, $no x 403"

# the ca cannot serve the profile (a gateway relaying to a service nobody runs):
# 503, and the token is given back, so the link still works on the real gateway
PICOMDM_ENROLL_BASIC_AUTH= timeout 60 "$BIN/picomdm-gateway" --listen "127.0.0.1:$PORT2" \
    --enroll-auth token --ca-service no-such-ca --backend-timeout-ms 1000 >"$T/gw3.log" 2>&1 &
GW2_PID=$!
listening() { ss -ltn | grep -q ":$PORT2 "; }
wait_for 20 listening || fail "the third gateway does not listen on $PORT2"
r=$(curl -s --cacert "$TLS" -o /dev/null -w '%{http_code}' "$URL2/mdm/enroll?token=$(tok "${U[5]}")")
[ "$r" = 503 ] || fail "profile with the ca away: want 503, got $r"
kill -TERM "$GW2_PID"; wait "$GW2_PID" 2>/dev/null; GW2_PID=
grep -q "its token is usable again" "$T/gw3.log" || fail "the gateway did not give the token back: $(tail -3 "$T/gw3.log")"
released() { [ "$(code "${U[5]}" "$T/t5.mobileconfig")" = 200 ]; }
wait_for 20 released || fail "the token is not usable again after the failed download"
verifies "$T/t5.mobileconfig" || fail "given-back token: the profile does not verify"

# list: the states
"$BIN/picomdm" enroll-token list --all >"$T/list.out" 2>&1 || fail "list --all: $(cat "$T/list.out")"
for i in 0 1 3 5; do grep -q "^$(tid "${U[$i]}") *used .*test batch (by " "$T/list.out" || fail "list: token $i not used: $(cat "$T/list.out")"; done
grep -q "^$(tid "${U[2]}") *revoked" "$T/list.out" || fail "list: token 2 not revoked"
grep -q "^$(tid "${U[4]}") *usable" "$T/list.out" || fail "list: token 4 not usable"
grep -q " expired " "$T/list.out" || fail "list: no expired token"
"$BIN/picomdm" enroll-token list >"$T/list2.out" 2>&1
[ "$(grep -c " usable " "$T/list2.out")" = 1 ] && ! grep -q " used \| revoked " "$T/list2.out" \
    || fail "list (usable only): $(cat "$T/list2.out")"
"$BIN/picomdm" --json enroll-token list --all 2>/dev/null | grep -q '"state":"revoked"' \
    || "$BIN/picomdm" enroll-token list --all --json 2>/dev/null | grep -q '"state":"revoked"' || fail "list --json"

# a device enrolls end to end from a token URL, and that token is spent
"$BIN/picomdm-devsim" --enroll-url "${U[4]}" --ca-bundle "$TLS" --devices 1 --rounds 0 \
    --timeout-ms 20000 >"$T/ds.out" 2>"$T/ds.err" || { tail -5 "$T/ds.err"; fail "devsim with a token URL"; }
grep -q "^scep: 1 device(s) got their identity" "$T/ds.out" || fail "devsim: no SCEP identity: $(cat "$T/ds.out")"
grep -q "^enroll     1 enrollments.*; 0 failed" "$T/ds.out" || fail "devsim: check-in failed: $(cat "$T/ds.out")"
[ "$("$BIN/picomdm" devices 2>/dev/null | grep -c '^0000')" = 1 ] || fail "the token-enrolled device is not known"
"$BIN/picomdm-devsim" --enroll-url "${U[4]}" --ca-bundle "$TLS" --devices 1 --rounds 0 \
    --timeout-ms 20000 >"$T/ds2.out" 2>&1 && fail "devsim enrolled twice with one token"
grep -q "403" "$T/ds2.out" || fail "devsim, spent token: want a 403: $(tail -3 "$T/ds2.out")"

# the refusals are events (basic 3, token: none, malformed, unknown, second uses 2,
# revoked, expired, 7 concurrent, devsim's second try = 18 at least)
wait_events() { [ "$(grep -c '"enroll.refused"' "$T/watch.out")" -ge 18 ]; }
wait_for 10 wait_events || fail "want >= 18 enroll.refused events, got $(grep -c '"enroll.refused"' "$T/watch.out"): $(head -3 "$T/watch.out") $(cat "$T/watch.err")"
grep -q '"reason":"token used ' "$T/watch.out" || fail "no 'token used' refusal event"
grep -q '"reason":"token revoked ' "$T/watch.out" || fail "no 'token revoked' refusal event"
grep -q '"reason":"token expired ' "$T/watch.out" || fail "no 'token expired' refusal event"
grep -q '"reason":"wrong basic-auth credentials"' "$T/watch.out" || fail "no basic-auth refusal event"
# tokens are secrets: never in logs or events
for u in "${U[@]}"; do
    t=$(tok "$u")
    grep -rq -- "$t" "$T/up.log" "$T/watch.out" "$T"/var/log 2>/dev/null && fail "a token appears in the logs or events"
done
# a flood of guessed links: answered 403 each, but at most 50 a second become a
# log line and an event (the store's log is not anyone's to fill); one line
# says how many were not logged
# the limit is per second of the clock: start the flood in a second that
# no earlier refusal of this test has used
sleep 1.1
before=$(grep -c '"enroll.refused"' "$T/watch.out")
urls=()
for i in $(seq 1 500); do urls+=("$URL/mdm/enroll?token=guess$i"); done
curl -s -Z --parallel-max 32 --cacert "$TLS" -o /dev/null -w '%{http_code}\n' "${urls[@]}" >"$T/flood.codes"
[ "$(grep -c '^403$' "$T/flood.codes")" = 500 ] || fail "flood: want 500 x 403, got $(sort "$T/flood.codes" | uniq -c | tr '\n' ' ')"
sleep 1.2
code "$URL/mdm/enroll?token=guess-after" >/dev/null # the next second: reports what was not logged
wait_for 10 eval 'grep -q "were refused without a log line or event" "$T/up.log"' ||
    fail "flood: no line counting the refusals that were not logged"
# the events reach `picomdm watch` through the broker: wait for the first
# second's 50 (at most 10 s), then count
wait_for 10 eval '[ $(($(grep -c "\"enroll.refused\"" "$T/watch.out") - before)) -ge 50 ]'
flood_ev=$(($(grep -c '"enroll.refused"' "$T/watch.out") - before))
[ "$flood_ev" -lt 500 ] || fail "flood: $flood_ev enroll.refused events for 500 refusals (not rate-limited)"
[ "$flood_ev" -ge 50 ] || fail "flood: only $flood_ev enroll.refused events"
echo "ok  500 guessed links: 500 x 403, $flood_ev events, the rest counted in one line"

echo "PASS: enrollment route: basic auth (401 x3, 200), one-time tokens (once, revoked, expired, 8 concurrent -> 1 profile), device enrolled from a token URL, $(grep -c '"enroll.refused"' "$T/watch.out") enroll.refused events"
