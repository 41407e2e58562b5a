#!/bin/bash
# doctor_push — `picomdm doctor` diagnoses created for real over the whole
# stack: `picomdm up` with a push certificate (UID = the topic) whose pushes go
# to the APNs stand-in (picomdm-fake-apns, accept-any), and one device
# simulated by picomdm-devsim that enrolls with an identity certificate issued
# here for 3 days and a clock 15 minutes fast (--clock-skew-s 900). It does not
# listen for pushes, so a push wakes nobody.
#   1. identity certificate near expiry: "identity certificate expires in 3
#      days (<date>): renew it (SCEP RenewalReq) or re-enroll";
#   2. clock skew: "the device's clock is 15m 0s ahead of the server's";
#   3. a command queued, the push accepted by APNs, the device does not come:
#      "device has not connected since the last push: APNs accepted it at";
#   4. the device fetches the command but never answers (devsim
#      --drop-after-command): "... at the head of the queue was delivered at
#      ... and never answered";
#   5. APNs answers 410 for its token: "push token stale: APNs answered 410",
#      with the hint that a TokenUpdate from the device clears it; after the
#      device's next TokenUpdate the finding is gone ("got 410 but the device
#      sent a new token since");
#   6. a correct clock and a long-lived certificate: no skew, no expiry finding;
#   7. a certificate that ends 15 s after it is issued: "expires in Ns", then,
#      once the gateway refuses it, "identity certificate expired on <date>";
#   8. the fleet summary counts them: 1 expired, 1 expiring, 1 clock off.
. "$(dirname "$0")/push_lib.inc"
for b in picomdm picomdm-broker picomdm-store picomdm-scheduler picomdm-gateway picomdm-pusher \
    picomdm-devsim; do
    [ -x "$BIN/$b" ] || skip "bin/$b is not built (run make)"
done
UP_PID=
doc_cleanup() {
    if [ -n "$UP_PID" ]; then
        kill -TERM "$UP_PID" 2>/dev/null
        for _ in $(seq 80); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$UP_PID" 2>/dev/null
    fi
    for f in "$W"/var/run/*.pid; do [ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null; done
    cleanup
}
trap doc_cleanup EXIT
die() {
    for f in up.log fapns.log ds.out; do echo "--- $f"; tail -n 15 "$W/$f" 2>/dev/null; done
    grep -h "E:\|W:" "$W"/var/log/*.log 2>/dev/null | tail -n 10
    fail "$*"
}
# doc_wait SECONDS PATTERN: until `picomdm doctor $eid` prints PATTERN (output in $W/doc.txt)
doc_wait() {
    local n=$(($1 * 10))
    while [ $n -gt 0 ]; do
        "${P[@]}" doctor "$eid" "${DOPTS[@]}" >"$W/doc.txt" 2>&1
        grep -q -- "$2" "$W/doc.txt" && return 0
        sleep 0.1
        n=$((n - 1))
    done
    cat "$W/doc.txt"
    return 1
}

make_pki
start_fapns fapns --accept-any
port=$(free_port) || fail "no free port"
env PICOMDM_APNS="https://127.0.0.1:$FAPNS_PORT" PICOMDM_APNS_CA="$W/ca.pem" PICOMDM_BACKOFF_MS=100 \
    "$BIN/picomdm" up --data-dir "$W/var" --listen "127.0.0.1:$port" --push-cert "$W/push.pem" \
    --stop-timeout 3000 >"$W/up.log" 2>&1 &
UP_PID=$!
export PICOMDM_CONFIG=$W/var/run/picomdm.cfg
P=("$BIN/picomdm" --timeout 5000 --retries 1)
for _ in $(seq 200); do "${P[@]}" devices >/dev/null 2>&1 && break; sleep 0.1; done
"${P[@]}" devices >/dev/null 2>&1 || die "the scheduler does not answer"

# a device identity from the server's device CA, valid for 3 days
openssl ecparam -name prime256v1 -genkey -noout -out "$W/dev.key" 2>/dev/null &&
    openssl req -new -key "$W/dev.key" -subj "/CN=doctor-push-device" -out "$W/dev.csr" 2>/dev/null &&
    openssl x509 -req -in "$W/dev.csr" -CA "$W/var/pki/ca.crt" -CAkey "$W/var/pki/ca.key" \
        -CAcreateserial -days 3 -out "$W/dev.crt" 2>/dev/null || die "cannot issue a device certificate"
not_after=$(date -u -d "$(openssl x509 -in "$W/dev.crt" -noout -enddate | cut -d= -f2)" '+%Y-%m-%d %H:%M:%S UTC')
DS=("$BIN/picomdm-devsim" --url "https://127.0.0.1:$port" --ca-bundle "$W/var/pki/tls.crt"
    --cert "$W/dev.crt" --key "$W/dev.key" --topic "$TOPIC" --timeout-ms 10000 --seed 77
    --clock-skew-s 900)
timeout 30 "${DS[@]}" --rounds 1 >"$W/ds.out" 2>&1 || die "enrollment failed"
eid=$("${P[@]}" devices --json | sed -n 's/.*"eid":"\([^"]*\)".*/\1/p' | head -1)
[ -n "$eid" ] || die "no enrollment after devsim"
DOPTS=(--push-cert "$W/push.crt")

# 1 + 2. identity certificate near expiry, clock skew
"${P[@]}" doctor "$eid" "${DOPTS[@]}" >"$W/d1.txt" 2>&1
rc=$?
cat "$W/d1.txt"
[ $rc -eq 1 ] || die "doctor exit $rc with a certificate expiring in 3 days (expected 1)"
grep -q "^WARN  identity certificate expires in 3 days ($not_after): renew it (SCEP RenewalReq) or re-enroll" "$W/d1.txt" ||
    die "doctor does not report the identity certificate expiring on $not_after"
grep -q "^WARN  clock skew: the device's clock is 1[45]m\( [0-9]*s\)\? ahead of the server's" "$W/d1.txt" ||
    die "doctor does not report the device clock 15 minutes ahead"
grep -q "TLS and certificate checks fail" "$W/d1.txt" || die "the skew finding does not say why it matters"
grep -q "not checked" "$W/d1.txt" && die "doctor still says identity/clock are not checked"
# the gateway computes the skew (signingTime, whole seconds, against its
# clock when it verifies): the second boundaries and the time the request
# took on a loaded machine make it up to a few seconds less than 900
grep -q "W: (store) .*the device's clock is 89[5-9] s ahead of the server's\|W: (store) .*the device's clock is 900 s ahead of the server's" "$W/up.log" ||
    die "the store did not log the skew"
echo "ok   identity certificate near expiry and clock skew (+900 s) reported"

# 3. a push accepted by APNs, the device does not come
acc0=$(apns_stat accepted)
u1=$("${P[@]}" enqueue DeviceInformation --to "$eid" --set Queries=OSVersion 2>/dev/null) || die "enqueue 1"
doc_wait 15 "device has not connected since the last push: APNs accepted it at" ||
    die "doctor does not say the device has not connected since the push"
[ "$(apns_stat accepted)" -gt "${acc0:-0}" ] || die "the stand-in accepted no push"
grep -q "^WARN  device has not connected since the last push" "$W/doc.txt" || die "not a WARN"
cat "$W/doc.txt"
echo "ok   pushed, device has not connected since: reported"

# 4. the device fetches the command and never answers
timeout 30 "${DS[@]}" --no-enroll --rounds 1 --drop-after-command >"$W/ds2.out" 2>&1 ||
    { cat "$W/ds2.out"; die "devsim --drop-after-command failed"; }
grep -q "drop-after-command" "$W/ds2.out" || { cat "$W/ds2.out"; die "devsim did not get the command"; }
sleep 1.2
DOPTS=(--push-cert "$W/push.crt" --delivered-timeout 1s)
doc_wait 5 "command DeviceInformation ($u1) at the head of the queue was delivered at .* (1 deliveries) and never answered" ||
    die "doctor does not name the delivered-but-unanswered command"
grep -q "has not connected since the last push" "$W/doc.txt" && die "still 'not connected since the push' after the device connected"
cat "$W/doc.txt"
echo "ok   delivered but unanswered at the head of the queue: reported"

# 5. APNs answers 410 for the device's token
ctl POST /rules "* 410 count=1" >/dev/null || die "cannot set the 410 rule"
"${P[@]}" enqueue ProfileList --to "$eid" >/dev/null 2>&1 || die "enqueue 2"
doc_wait 15 "push token stale: APNs answered 410" || die "doctor does not report the stale token"
[ "$(apns_stat s410)" = 1 ] || die "the stand-in did not answer 410 once"
grep -q "^FAIL  push token stale: .*a TokenUpdate from the device clears this" "$W/doc.txt" ||
    die "the stale-token finding does not say a TokenUpdate clears it"
cat "$W/doc.txt"
echo "ok   410 from APNs: stale token reported (a TokenUpdate clears it)"
# the device checks in again (Authenticate + TokenUpdate with its token): cleared
timeout 30 "${DS[@]}" --rounds 0 >"$W/ds2b.out" 2>&1 || { cat "$W/ds2b.out"; die "re-enrollment failed"; }
"${P[@]}" doctor "$eid" "${DOPTS[@]}" >"$W/doc.txt" 2>&1
cat "$W/doc.txt"
grep -q "push token stale" "$W/doc.txt" && die "the stale-token finding stays after a TokenUpdate"
grep -q "^info  the last push (.*) got 410 but the device sent a new token since" "$W/doc.txt" ||
    die "doctor does not say the 410 was cleared by a new token"
echo "ok   after the device's TokenUpdate: no stale token, the 410 shown as cleared"

# 6. a healthy identity and clock: a second device, a one-year certificate, no skew
openssl req -new -key "$W/dev.key" -subj "/CN=doctor-push-device-2" -out "$W/dev2.csr" 2>/dev/null &&
    openssl x509 -req -in "$W/dev2.csr" -CA "$W/var/pki/ca.crt" -CAkey "$W/var/pki/ca.key" \
        -CAcreateserial -days 365 -out "$W/dev2.crt" 2>/dev/null || die "cannot issue certificate 2"
timeout 30 "$BIN/picomdm-devsim" --url "https://127.0.0.1:$port" --ca-bundle "$W/var/pki/tls.crt" \
    --cert "$W/dev2.crt" --key "$W/dev.key" --topic "$TOPIC" --timeout-ms 10000 --seed 78 \
    --rounds 1 >"$W/ds3.out" 2>&1 || { cat "$W/ds3.out"; die "enrollment 2 failed"; }
eid2=$("${P[@]}" devices --json | sed -n 's/.*"eid":"\([^"]*\)".*/\1/p' | grep -v "^$eid\$" | head -1)
[ -n "$eid2" ] || die "no second enrollment"
"${P[@]}" doctor "$eid2" --push-cert "$W/push.crt" >"$W/d6.txt" 2>&1
cat "$W/d6.txt"
grep -q "^info  identity certificate valid until" "$W/d6.txt" || die "no identity certificate info for device 2"
grep -q "^info  device clock within [0-9]*s of the server's" "$W/d6.txt" || die "no clock info for device 2"
grep -q "identity certificate expires\|clock skew" "$W/d6.txt" && die "a healthy device gets an identity/clock warning"
echo "ok   healthy certificate and clock: information only"

# 7. an identity certificate that expires: first "expires in", then "expired on";
#    the gateway refuses the device once it has expired (openssl ca: an end
#    date to the second)
mkdir -p "$W/ca3" && : >"$W/ca3/index.txt" && echo 01 >"$W/ca3/serial"
printf '[ca]\ndefault_ca = c\n[c]\ndatabase = %s\nnew_certs_dir = %s\nserial = %s\ndefault_md = sha256\npolicy = p\nunique_subject = no\n[p]\ncommonName = supplied\n' \
    "$W/ca3/index.txt" "$W/ca3" "$W/ca3/serial" >"$W/ca3/ca.cnf"
openssl req -new -key "$W/dev.key" -subj "/CN=doctor-push-device-3" -out "$W/dev3.csr" 2>/dev/null &&
    openssl ca -batch -config "$W/ca3/ca.cnf" -cert "$W/var/pki/ca.crt" -keyfile "$W/var/pki/ca.key" \
        -in "$W/dev3.csr" -out "$W/dev3.crt" -notext -startdate "$(date -u -d '-1 min' +%y%m%d%H%M%SZ)" \
        -enddate "$(date -u -d '+15 sec' +%y%m%d%H%M%SZ)" >/dev/null 2>&1 || die "cannot issue certificate 3"
end3=$(date -u -d "$(openssl x509 -in "$W/dev3.crt" -noout -enddate | cut -d= -f2)" +%s)
DS3=("$BIN/picomdm-devsim" --url "https://127.0.0.1:$port" --ca-bundle "$W/var/pki/tls.crt"
    --cert "$W/dev3.crt" --key "$W/dev.key" --topic "$TOPIC" --timeout-ms 10000 --seed 79)
timeout 30 "${DS3[@]}" --rounds 1 >"$W/ds4.out" 2>&1 || { cat "$W/ds4.out"; die "enrollment 3 failed"; }
eid3=$("${P[@]}" devices --json | sed -n 's/.*"eid":"\([^"]*\)".*/\1/p' | grep -v "^$eid\$" | grep -v "^$eid2\$" | head -1)
[ -n "$eid3" ] || die "no third enrollment"
"${P[@]}" doctor "$eid3" >"$W/d7.txt" 2>&1
grep -q "^WARN  identity certificate expires in [0-9]*s (" "$W/d7.txt" || { cat "$W/d7.txt"; die "no 'expires in Ns' for a certificate expiring in seconds"; }
while [ "$(date +%s)" -le "$end3" ]; do sleep 0.5; done
timeout 30 "${DS3[@]}" --no-enroll --rounds 1 >"$W/ds5.out" 2>&1 && die "the gateway accepted an expired identity certificate"
"${P[@]}" doctor "$eid3" >"$W/d7.txt" 2>&1
cat "$W/d7.txt"
grep -q "^FAIL  identity certificate expired on $(date -u -d "@$end3" '+%Y-%m-%d %H:%M:%S UTC'): the gateway refuses" "$W/d7.txt" ||
    die "doctor does not report the expired identity certificate"
grep -q "re-enroll it" "$W/d7.txt" || die "the expired-certificate finding does not say to re-enroll"
echo "ok   identity certificate expired: reported (and the gateway refuses the device)"

# 8. the fleet: the expired, the expiring and the skewed device are counted
"${P[@]}" doctor >"$W/fleet.txt" 2>&1 || { cat "$W/fleet.txt"; die "doctor (fleet) failed"; }
cat "$W/fleet.txt"
grep -q "^identity: 1 certificate(s) expired, 1 expiring within 30d; 1 device clock(s) off by more than 5m" "$W/fleet.txt" ||
    die "the fleet summary does not count the identity/clock problems"
echo "ok   fleet summary counts expired/expiring identity certificates and skewed clocks"

kill -TERM "$UP_PID"; wait "$UP_PID"; UP_PID=
echo "PASS"
