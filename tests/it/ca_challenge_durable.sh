#!/bin/bash
# ca_challenge_durable — one-time SCEP challenges survive picomdm-ca (issue #6,
# docs/enrollment.md "Challenge passwords"): they are signed (HMAC under
# challenge.key beside the CA key), and the store records each one's use.
#  * `picomdm up`; two enrollment profiles downloaded from the gateway (no
#    store row is made for them);
#  * picomdm-ca is killed with SIGKILL (`picomdm up` restarts it);
#  * a simulated device (devsim --enroll-url) enrolls with the first profile,
#    downloaded before the kill: its challenge is still known and accepted;
#  * a second device with the same profile is refused (SCEP FAILURE);
#  * two ca processes: a second picomdm-ca joins the bus, the first is
#    stopped (SIGSTOP: the broker drops it), and a device enrolls with the
#    second profile, which the first ca made: served by the other process;
#  * an expired challenge (a profile made by a ca with challenge-ttl 1) and a
#    forged one (altered tag) are refused;
#  * the store holds only hashes (no challenge in the database file or logs).
set -u
ROOT=${PICOMDM_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${BIN:-$ROOT/bin}
. "$(dirname "$0")/common.inc"
need_bins picomdm picomdm-devsim picomdm-ca picomdm-gateway picomdm-broker picomdm-store picomdm-scheduler
command -v openssl >/dev/null && command -v curl >/dev/null || { echo "openssl and curl CLIs needed (make deps)"; exit 77; }
T=$(mktemp -d /tmp/ca_challenge_durable.XXXXXX)
UP_PID=
WWW_PID=
CA2_PID=
CA3_PID=
STOPPED=
cleanup() {
    [ -n "$STOPPED" ] && kill -CONT "$STOPPED" 2>/dev/null
    for p in $WWW_PID $CA2_PID $CA3_PID; do kill -TERM "$p" 2>/dev/null; done
    up_stop "$UP_PID" "$T"
    for p in $WWW_PID $CA2_PID $CA3_PID; do kill -KILL "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*"
    echo "--- server log (errors, warnings, ca):"; grep -E "^[EW]:|\(ca\)" "$T/up.log" | tail -n 25
    [ -f "$T/ca2.log" ] && { echo "--- second ca:"; tail -n 10 "$T/ca2.log"; }
    exit 1
}
PORT=$(free_port) && WPORT=$(free_port) && [ "$PORT" != "$WPORT" ] || { echo "no free ports found"; exit 77; }

PICOMDM_ENROLL_AUTH= PICOMDM_ENROLL_BASIC_AUTH= enroll_up 150
grep -q "challenge one-time" "$T/up.log" || fail "picomdm up's ca is not in one-time challenge mode"

mkdir -p "$T/www"
for i in 1 2; do
    code=$(curl -s --cacert "$TLS" -o "$T/www/p$i.mobileconfig" -w '%{http_code}' "$URL/mdm/enroll")
    [ "$code" = 200 ] && [ -s "$T/www/p$i.mobileconfig" ] || fail "profile $i download: HTTP $code"
done
# the challenges, read from the signed profiles
chal() {
    openssl cms -verify -noverify -inform DER -in "$1" 2>/dev/null |
        tr -d '\n\t ' | sed -n 's/.*<key>Challenge<\/key><string>\([^<]*\)<\/string>.*/\1/p'
}
C1=$(chal "$T/www/p1.mobileconfig")
C2=$(chal "$T/www/p2.mobileconfig")
[ ${#C1} -eq 64 ] && [ ${#C2} -eq 64 ] && [ "$C1" != "$C2" ] || fail "profiles do not carry two distinct signed one-time challenges (64 characters)"
grep -q "signed one-time challenge" "$T/up.log" || fail "the ca did not make a signed challenge"
KEYF=$T/var/pki/challenge.key
[ -f "$KEYF" ] || KEYF=$(find "$T/var" -name challenge.key | head -1)
[ -n "$KEYF" ] && [ -f "$KEYF" ] || fail "no challenge.key beside the CA key"
[ "$(stat -c %a "$KEYF")" = 600 ] || fail "challenge.key is not 0600"
# a profile download writes no challenge row
rows() { sqlite3 "$T/var/picomdm.db" "SELECT count(*) FROM scep_challenges" 2>/dev/null; }
HAVE_SQLITE=
command -v sqlite3 >/dev/null && HAVE_SQLITE=1
[ -z "$HAVE_SQLITE" ] || [ "$(rows)" = 0 ] || fail "profile downloads made rows in scep_challenges ($(rows))"

# kill -9 picomdm-ca; `picomdm up` restarts it
CA_PID=$(cat "$T/var/run/ca.pid")
kill -0 "$CA_PID" 2>/dev/null || fail "no picomdm-ca process ($CA_PID)"
kill -KILL "$CA_PID"
new_ca() { local p; p=$(cat "$T/var/run/ca.pid" 2>/dev/null) && [ -n "$p" ] && [ "$p" != "$CA_PID" ] && kill -0 "$p" 2>/dev/null; }
wait_for 30 new_ca || fail "picomdm-ca was not restarted after kill -9"
wait_for 20 health || fail "the restarted ca does not answer"
echo "picomdm-ca killed (pid $CA_PID) and restarted (pid $(cat "$T/var/run/ca.pid"))"

# the saved profiles are served by a plain HTTPS file server (a device that
# downloaded its profile before the crash installs it afterwards)
(cd "$T/www" && exec openssl s_server -quiet -accept "$WPORT" -cert "$T/var/pki/tls.crt" \
    -key "$T/var/pki/tls.key" -WWW) >"$T/www.log" 2>&1 &
WWW_PID=$!
www() { curl -sf --cacert "$TLS" -o /dev/null "https://localhost:$WPORT/p1.mobileconfig"; }
wait_for 15 www || fail "the test's HTTPS file server (openssl s_server) does not start: $(tail -3 "$T/www.log")"

enroll() { # profile out -> devsim exit status
    "$BIN/picomdm-devsim" --enroll-url "https://localhost:$WPORT/$1" --ca-bundle "$TLS" --devices 1 \
        --rounds 0 --timeout-ms 20000 >"$T/$2" 2>&1
}
enroll p1.mobileconfig ds1.out || fail "devsim with a profile made before the ca's kill -9: $(tail -5 "$T/ds1.out")"
grep -q "^scep: 1 device(s) got their identity" "$T/ds1.out" || fail "devsim: no SCEP identity: $(cat "$T/ds1.out")"
grep -q "^enroll     1 enrollments.*; 0 failed" "$T/ds1.out" || fail "devsim: check-in failed: $(cat "$T/ds1.out")"
echo "a device enrolled with a challenge issued before picomdm-ca's kill -9"

# a second device with the same profile: the challenge is spent
enroll p1.mobileconfig ds1b.out && fail "a second device enrolled with a used one-time challenge"
grep -qi "failure\|fail" "$T/ds1b.out" || fail "the second use did not end in a SCEP failure: $(tail -3 "$T/ds1b.out")"
grep -q "challenge password rejected" "$T/up.log" || fail "the ca did not log the refused challenge"
echo "a second use of that challenge was refused"

# two ca processes on the bus share the challenges: a second ca joins, the
# first (which made p2) is stopped, and p2 is served by the second
"$BIN/picomdm-ca" --config "$PICOMDM_CONFIG" --heartbeat-ms 500 >"$T/ca2.log" 2>&1 &
CA2_PID=$!
wait_for 20 grep -q 'serving "ca"' "$T/ca2.log" || fail "the second picomdm-ca does not start"
CA1=$(cat "$T/var/run/ca.pid")
# the broker drops a worker silent for 3 heartbeats: wait for its line
ca_dropped() { grep -c "of 'ca' removed" "$T/up.log"; }
dropped=$(ca_dropped)
kill -STOP "$CA1"
STOPPED=$CA1
wait_for 30 eval '[ "$(ca_dropped)" -gt "$dropped" ]' || fail "the broker did not drop the stopped ca"
enroll p2.mobileconfig ds2.out || fail "devsim through the second ca: $(tail -5 "$T/ds2.out")"
grep -q "^scep: 1 device(s) got their identity" "$T/ds2.out" || fail "devsim (second ca): no SCEP identity: $(cat "$T/ds2.out")"
grep -q "scep: issued" "$T/ca2.log" || fail "the certificate was not issued by the second ca process"
ca_regs() { grep -c "registered for 'ca'" "$T/up.log"; }
regs=$(ca_regs)
kill -CONT "$CA1"
STOPPED=
echo "a challenge made by one ca process was accepted by another"

# an expired challenge: a third ca with challenge-ttl 1 (same key files)
# makes a profile offline-equivalent through the bus, and it is used late
"$BIN/picomdm-ca" --config "$PICOMDM_CONFIG" --heartbeat-ms 500 --challenge-ttl 1 >"$T/ca3.log" 2>&1 &
CA3_PID=$!
wait_for 20 grep -qs 'serving "ca"' "$T/ca3.log" || fail "the third picomdm-ca does not start"
# the first ca registers again after its stop, the third for the first time
wait_for 30 eval '[ "$(ca_regs)" -ge $((regs + 2)) ]' || fail "the first and third ca did not both register"
kill -TERM "$CA2_PID" 2>/dev/null
dropped=$(ca_dropped)
kill -STOP "$CA1"
STOPPED=$CA1
# the broker drops the stopped worker; the third ca serves
wait_for 30 eval '[ "$(ca_dropped)" -gt "$dropped" ]' || fail "the broker did not drop the stopped ca"
code=$(curl -s --cacert "$TLS" -o "$T/www/p3.mobileconfig" -w '%{http_code}' "$URL/mdm/enroll")
[ "$code" = 200 ] || fail "profile from the third ca: HTTP $code"
C3=$(chal "$T/www/p3.mobileconfig")
[ ${#C3} -eq 64 ] || fail "the third ca's profile carries no signed challenge"
sleep 2 # expired now (ttl 1 s)
enroll p3.mobileconfig ds3.out && fail "a device enrolled with an expired challenge"
grep -qi "fail" "$T/ds3.out" || fail "the expired challenge did not end in a SCEP failure: $(tail -3 "$T/ds3.out")"
[ "$(grep -c "challenge password rejected" "$T/ca3.log")" -ge 1 ] || fail "the ca did not refuse the expired challenge itself: $(tail -3 "$T/ca3.log")"
echo "an expired challenge was refused"
# a forged challenge: p2's challenge with one character of its tag changed
# (the simulator's --scep-challenge replaces the profile's)
F=${C2:0:50}X${C2:51}
[ "${C2:50:1}" = X ] && F=${C2:0:50}Y${C2:51}
enroll() { # profile out [challenge] -> devsim exit status
    "$BIN/picomdm-devsim" --enroll-url "https://localhost:$WPORT/$1" --ca-bundle "$TLS" --devices 1 \
        --rounds 0 --timeout-ms 20000 ${3:+--scep-challenge "$3"} >"$T/$2" 2>&1
}
enroll p3.mobileconfig ds4.out "$F" && fail "a device enrolled with a forged challenge"
grep -qi "fail" "$T/ds4.out" || fail "the forged challenge did not end in a SCEP failure: $(tail -3 "$T/ds4.out")"
[ "$(grep -c "challenge password rejected" "$T/ca3.log")" -ge 2 ] || fail "the ca did not refuse the forged challenge itself: $(tail -3 "$T/ca3.log")"
echo "a forged challenge was refused"
kill -TERM "$CA3_PID" 2>/dev/null
kill -CONT "$CA1"
STOPPED=

# only hashes in the store; no challenge in any log
H1=$(printf %s "$C1" | openssl dgst -sha256 -r | cut -d' ' -f1)
grep -q "$C1\|$C2" "$T/var/picomdm.db" "$T/var/picomdm.db-wal" 2>/dev/null && fail "a challenge is in the store's database"
grep -q "$H1" "$T/var/picomdm.db" "$T/var/picomdm.db-wal" 2>/dev/null || fail "the challenge's SHA-256 is not in the store's database"
[ -z "$HAVE_SQLITE" ] || [ "$(rows)" = 2 ] || fail "the store should hold the two used challenges' hashes, not $(rows) rows"
grep -q "$C1\|$C2\|$C3\|$F" "$T/up.log" "$T/ca2.log" "$T/ca3.log" && fail "a challenge appears in a log"
grep -q "$(head -c 64 "$KEYF")" "$T/up.log" "$T/ca2.log" "$T/ca3.log" && fail "the challenge key appears in a log"
echo "PASS: signed one-time challenges survive kill -9 of picomdm-ca, are used once, shared by two ca processes, refused when expired or forged, stored as hashes"
exit 0
