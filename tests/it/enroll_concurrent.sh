#!/bin/bash
# enroll_concurrent — many devices enroll from the enrollment URL at the same
# time (issue #6): `picomdm up`, then picomdm-devsim --enroll-url with
# --concurrency 12, each device in order profile -> GetCACert -> GetCACaps ->
# PKCSReq -> Authenticate -> TokenUpdate, its profile download, SCEP and
# check-ins each on its own new TLS connection (--enroll-connections device).
# Asserts: every device enrolled, requests of different devices really were
# in flight together, exactly 3 TLS connections per enrollment, each
# enrollment bound to its own certificate (distinct hashes in the store, one
# issuance per device in the ca's log), every one-time challenge used once
# and none refused; then a second batch over shared connections (fewer
# handshakes than devices) enrolls as well.
set -u
ROOT=${PICOMDM_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${BIN:-$ROOT/bin}
N=${ENROLL_CONCURRENT_N:-24}
C=12
. "$(dirname "$0")/common.inc"
need_bins picomdm picomdm-devsim picomdm-ca picomdm-gateway picomdm-broker picomdm-store picomdm-scheduler
command -v sqlite3 >/dev/null && command -v curl >/dev/null || { echo "sqlite3 and curl CLIs needed (make deps)"; exit 77; }
T=$(mktemp -d /tmp/enroll_concurrent.XXXXXX)
UP_PID=
DS_PID=
cleanup() {
    [ -n "$DS_PID" ] && kill -TERM "$DS_PID" 2>/dev/null
    up_stop "$UP_PID" "$T"
    rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "--- server log (errors, warnings):"; grep -E "^[EW]:" "$T/up.log" | tail -n 20; exit 1; }

PORT=$(free_port) || { echo "no free port found"; exit 77; }
PICOMDM_ENROLL_BASIC_AUTH= enroll_up 100

# the device keys are made once (key generation is the simulator's cost) and
# both batches read them: within a batch every device has its own key
timeout 50 "$BIN/picomdm-devsim" --enroll-url "$URL/mdm/enroll" --ca-bundle "$TLS" --devices "$N" \
    --concurrency "$C" --enroll-connections device --rounds 0 --timeout-ms 20000 --seed 4242 \
    --key-dir "$T/keys" --latency-log "$T/lat" >"$T/ds.out" 2>"$T/ds.err"
rc=$?
cat "$T/ds.out"
[ $rc = 0 ] || { tail -n 20 "$T/ds.err"; fail "devsim exited $rc"; }
grep -q "^scep: $N device(s) got their identity" "$T/ds.out" || fail "not every device got its identity over SCEP"
grep -q "^enroll     $N enrollments.*; $((N * 6)) requests.*; 0 failed" "$T/ds.out" || fail "want $N enrollments of 6 requests each, none failed"
grep -q "^enroll     connections opened (TLS handshakes): $((N * 3)) = 3.00 per enrollment" "$T/ds.out" \
    || fail "want 3 TLS connections per enrollment (profile, SCEP, check-ins): $(grep 'connections opened' "$T/ds.out")"

# concurrency: the most requests in flight at once (from the latency log's
# sent / reply times); one device's requests never overlap, so > 1 means
# several devices were enrolling together
inflight=$(awk '{ print $2, 1; print $3, -1 }' "$T/lat" | sort -g -k1,1 -k2,2n |
    awk '{ c += $2; if (c > m) m = c } END { print m + 0 }')
echo "at most $inflight requests in flight (concurrency $C)"
[ "$inflight" -ge 4 ] || fail "want several devices enrolling at once, at most $inflight requests were in flight"
[ "$inflight" -le "$C" ] || fail "more than --concurrency $C requests in flight: $inflight"

# each enrollment has its own certificate; the ca issued one per device
DB=$T/var/picomdm.db
q() { sqlite3 -cmd ".timeout 5000" "$DB" "$1"; }
got=$(q "SELECT count(*) || ' ' || count(DISTINCT cert_hash) FROM enrollments WHERE enrolled = 1 AND cert_hash IS NOT NULL")
[ "$got" = "$N $N" ] || fail "want $N enrolled devices with $N distinct certificates, got (enrolled, distinct) = $got"
issued=$(grep -o "scep: issued .*(enrollment, transaction [^,]*, sha256 [0-9a-f]*" "$T/up.log" | awk '{ print $NF }')
[ "$(echo "$issued" | grep -c .)" = "$N" ] || fail "want $N certificates issued in the ca's log, got $(echo "$issued" | grep -c .)"
[ "$(echo "$issued" | sort -u | grep -c .)" = "$N" ] || fail "a certificate was issued twice"
# every challenge used exactly once: one used row per device, none refused
used=$(q "SELECT count(*) || ' ' || count(DISTINCT hash) FROM scep_challenges WHERE used IS NOT NULL AND used > 0")
[ "$used" = "$N $N" ] || fail "want $N distinct one-time challenges used, got (used, distinct) = $used"
grep -q "challenge password rejected" "$T/up.log" && fail "a challenge was refused (used twice?)"

# a second batch (new devices) over the shared keep-alive connections
timeout 40 "$BIN/picomdm-devsim" --enroll-url "$URL/mdm/enroll" --ca-bundle "$TLS" --devices "$N" \
    --concurrency "$C" --enroll-connections shared --rounds 1 --timeout-ms 20000 --seed 4343 \
    --key-dir "$T/keys" >"$T/ds2.out" 2>"$T/ds2.err"
rc=$?
[ $rc = 0 ] || { tail -n 20 "$T/ds2.err"; fail "devsim (shared connections) exited $rc"; }
grep -q "^enroll     $N enrollments.*; 0 failed" "$T/ds2.out" || fail "shared connections: enrollments failed: $(cat "$T/ds2.out")"
grep -q "^session 1  $N sessions.*; 0 failed" "$T/ds2.out" || fail "shared connections: sessions after enrollment failed"
hs=$(awk '/^enroll +connections opened/ { print $(NF-4) }' "$T/ds2.out")
[ -n "$hs" ] && [ "$hs" -le "$C" ] || fail "shared connections: want at most $C TLS connections for $N enrollments, got ${hs:-none}"
got=$(q "SELECT count(*) || ' ' || count(DISTINCT cert_hash) FROM enrollments WHERE enrolled = 1")
[ "$got" = "$((2 * N)) $((2 * N))" ] || fail "want $((2 * N)) enrolled devices with distinct certificates, got $got"
echo "PASS: $N devices enrolled $C at a time (3 TLS connections each, own certificates, challenges used once); $N more over $hs shared connections"
