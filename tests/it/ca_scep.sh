#!/bin/bash
# ca_scep: the real picomdm-ca on a real broker, driven over the bus the way
# the gateway forwards device traffic (tests/tools/ca_client.c):
#   GetCACaps; a `profile` request whose one-time challenge enrolls a device
#   (PKCSReq over POST) exactly once — the second use is a CertRep FAILURE
#   badRequest; a second profile enrolls over GET; RenewalReq with the issued
#   certificate; garbage answered 400; ca.issued / ca.rejected / ca.profile
#   events seen by a subscriber; certificates checked with `openssl verify`;
#   then an EC CA (as `picomdm up` makes it) served through an RSA RA.
#   SIGTERM stops picomdm-ca cleanly.
. "$(dirname "$0")/broker_lib.bash"
[ -x "$BIN/picomdm-ca" ] || { echo "skip: $BIN/picomdm-ca not built (run make)"; exit 77; }
[ -x "$TT/ca_client" ] || { echo "skip: $TT/ca_client not built (run make)"; exit 77; }

start_broker broker
# one-time challenges are signed by the ca and consumed in the store (docs/enrollment.md, store_chal.h)
[ -x "$BIN/picomdm-store" ] || { echo "skip: $BIN/picomdm-store not built (run make)"; exit 77; }
"$BIN/picomdm-store" --request-endpoint "$REQ" --publish-endpoint "$PUB" --data-dir "$D/store" \
    >"$D/store.log" 2>&1 &
PIDS+=("$!")
wait_log broker "registered for 'store'" 1 20
"$TT/bustest" sub --subscribe-endpoint "$SUB" --prefix ca. --count 6 --max-seconds 50 \
    >"$D/events.out" 2>"$D/sub.log" &
SUBPID=$!
PIDS+=("$SUBPID")

start_ca() { # NAME [args]
    local name=$1; shift
    "$BIN/picomdm-ca" --request-endpoint "$REQ" --publish-endpoint "$PUB" --heartbeat-ms 200 \
        --data-dir "$D/$name" --server-url https://127.0.0.1:8443/mdm/server \
        --scep-url https://127.0.0.1:8443/scep --topic com.apple.mgmt.External.it "$@" \
        >"$D/$name.log" 2>&1 &
    CA=$!
    PIDS+=("$CA")
    wait_log "$name" "serving \"ca\"" 1 20
    wait_log broker "registered for 'ca'" 1 10
}
cli() { timeout 30 "$TT/ca_client" --endpoint "$REQ" "$@"; }
want() { grep -q -- "$2" "$D/$1" || { cat "$D/$1"; fail "$1: expected '$2'"; }; }

start_ca ca1 --challenge-mode one-time
grep -q "one-time" "$D/ca1.log" || fail "ca did not start in one-time mode"

cli caps >"$D/caps.out" || fail "caps"
want caps.out "status=200 content_type=text/plain"
for c in POSTPKIOperation Renewal SHA-256 AES SCEPStandard; do want caps.out "^$c\$"; done

cli profile --for it-user --out "$D/p1.mobileconfig" >"$D/p1.out" || fail "profile"
want p1.out "one_time=yes content_type=application/x-apple-aspen-config"
openssl cms -verify -inform DER -in "$D/p1.mobileconfig" -CAfile "$D/ca1/ca.crt" -binary \
    -out "$D/p1.plist" 2>/dev/null || fail "profile does not verify with openssl cms"
uuid=$(sed -n 's/^identity_uuid=\([^ ]*\).*/\1/p' "$D/p1.out")
grep -A1 IdentityCertificateUUID "$D/p1.plist" | grep -q "$uuid" || fail "identity uuid not in profile"

# enrollment with the profile's one-time challenge
cli enroll --profile "$D/p1.mobileconfig" --cn dev-1 --cert-out "$D/dev1.crt" --key-out "$D/dev1.key" \
    >"$D/e1.out" || { cat "$D/e1.out"; fail "enroll"; }
want e1.out "issued=1 failed=0 errors=0 status=SUCCESS"
want e1.out "chains_to_ca=yes"
openssl verify -CAfile "$D/ca1/ca.crt" -purpose sslclient "$D/dev1.crt" >/dev/null 2>&1 \
    || fail "openssl verify rejects the issued certificate"
openssl x509 -in "$D/dev1.crt" -noout -subject | grep -q "CN *= *dev-1" || fail "subject"
# the spent challenge: CertRep FAILURE badRequest (failInfo 2), nothing issued
cli enroll --profile "$D/p1.mobileconfig" --cn dev-1b >"$D/e2.out"
want e2.out "issued=0 failed=1 errors=0 status=FAILURE fail_info=2"
# a wrong challenge: the same
cli enroll --challenge not-a-real-challenge-000000000000 >"$D/e3.out"
want e3.out "issued=0 failed=1 errors=0 status=FAILURE fail_info=2"

# a second profile, PKIOperation over GET
cli profile --out "$D/p2.mobileconfig" >/dev/null || fail "profile 2"
cli enroll --profile "$D/p2.mobileconfig" --cn dev-2 --get >"$D/e4.out"
want e4.out "issued=1 failed=0 errors=0 status=SUCCESS"

# renewal signed with the issued certificate
cli renew --cert "$D/dev1.crt" --key "$D/dev1.key" --cn dev-1 --cert-out "$D/dev1b.crt" >"$D/r1.out" \
    || { cat "$D/r1.out"; fail "renew"; }
want r1.out "status=SUCCESS"
openssl verify -CAfile "$D/ca1/ca.crt" "$D/dev1b.crt" >/dev/null 2>&1 || fail "renewed cert"
cmp -s "$D/dev1.crt" "$D/dev1b.crt" && fail "renewal returned the old certificate"

# garbage PKIOperation: 400 with a reason, the service stays up
head -c 300 /dev/urandom >"$D/garbage.bin"
cli raw --method POST --operation PKIOperation --message-file "$D/garbage.bin" >"$D/g.out"
want g.out "status=400 content_type=text/plain"
cli raw --method DELETE --operation GetCACaps >"$D/g2.out"
want g2.out "status=405"
cli caps >/dev/null || fail "ca died after garbage"

# events: ca.profile x2, ca.issued x3, ca.rejected x>=1 (subscriber stops at 6)
for _ in $(seq 1 100); do kill -0 "$SUBPID" 2>/dev/null || break; sleep 0.1; done
for t in ca.profile ca.issued ca.rejected; do
    grep -q "name=$t" "$D/events.out" || { cat "$D/events.out"; fail "no $t event"; }
done
ch1=$(grep -A1 '<key>Challenge</key>' "$D/p1.plist" | sed -n 's/.*<string>\(.*\)<\/string>.*/\1/p')
[ ${#ch1} = 64 ] || fail "no signed one-time challenge (64 characters) in the profile"
grep -qF -e "$ch1" -e not-a-real-challenge "$D/ca1.log" && fail "a challenge was logged"

# SIGTERM: clean exit
kill -TERM "$CA"
for _ in $(seq 1 100); do kill -0 "$CA" 2>/dev/null || break; sleep 0.05; done
kill -0 "$CA" 2>/dev/null && fail "picomdm-ca ignored SIGTERM"
wait "$CA"; rc=$?
[ $rc = 0 ] || fail "picomdm-ca exit status $rc after SIGTERM"
wait_log ca1 "stopping" 1 2

# an EC CA (as `picomdm up` makes it): SCEP through an RSA RA, static challenge
mkdir -p "$D/ca2"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/O=PicoMDM/CN=EC CA" \
    -days 30 -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$D/ca2/ca.key" -out "$D/ca2/ca.crt" 2>/dev/null || fail "openssl EC CA"
PICOMDM_CHALLENGE=static-it-challenge start_ca ca2 --challenge-mode static
grep -q "via RSA RA" "$D/ca2.log" || fail "EC CA not served through an RA"
cli enroll --challenge static-it-challenge --cn dev-ec --count 3 --cert-out "$D/dev-ec.crt" >"$D/e5.out"
want e5.out "issued=3 failed=0 errors=0 status=SUCCESS"
openssl verify -CAfile "$D/ca2/ca.crt" "$D/dev-ec.crt" >/dev/null 2>&1 || fail "EC-CA-issued cert"
# several requests in flight at once: each answered once, to its own transaction
cli enroll --challenge static-it-challenge --cn dev-pipe --count 8 --inflight 4 >"$D/e6.out"
want e6.out "issued=8 failed=0 errors=0 status=SUCCESS"
echo "PASS: SCEP and profiles over the bus (one-time and static challenges, RSA CA and EC CA + RA)"
