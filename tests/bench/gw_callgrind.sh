#!/bin/bash
# gw_callgrind benchmark (figures, not pass/fail): the gateway's user-space
# instructions per device request, deterministic whatever the machine's load.
# The whole server as tests/bench/e2e.sh runs it (broker, store, scheduler,
# TLS gateway checking every Mdm-Signature, EC P-256 device keys), with the
# gateway under valgrind --tool=callgrind; N devices enroll, one
# DeviceInformation is queued for each, then the session phase (each device
# Idle -> command -> Acknowledged -> empty: 2 signed requests, concurrency
# CONCURRENCY) runs between `callgrind_control -z` and `-d`, so the profile
# holds exactly that phase (its TLS handshakes included: one per simulator
# connection). Printed: instructions per device request, all and without the
# ECDSA verification (EVP_PKEY_verify, inclusive) and the handshakes
# (SSL_do_handshake, inclusive), then the top functions
# inclusive and self, per device request. The callgrind file is kept in OUT.
#   tests/bench/gw_callgrind.sh [N]     (default 300)
#   BIN=... (another build), OUT=/tmp/gw_callgrind (where the profile goes),
#   CONCURRENCY=32, TOP=40 (functions listed), GW_ARGS="..." (gateway options),
#   CG_ARGS="..." (more valgrind options, e.g. "--toggle-collect=EVP_PKEY_verify
#   --toggle-collect=SSL_do_handshake": the profile without the ECDSA
#   verification and the handshakes, whose self costs then list what is left)
cd "$(dirname "$0")/../.."
export BIN=${BIN:-$PWD/bin}
N=${1:-300}
CONC=${CONCURRENCY:-32}
OUT=${OUT:-/tmp/gw_callgrind}
TOP=${TOP:-40}
source tests/it/e2e_lib.bash
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
    skip "skipped: valgrind (callgrind) not installed"
mkdir -p "$OUT"
rm -f "$OUT"/callgrind.*
gw_pki
gw_broker
gw_watch
gw_store
gw_scheduler --log-level warn
W=$T/wrapbin
mkdir -p "$W"
printf '#!/bin/sh\nexec valgrind --tool=callgrind ${CG_ARGS:-} --callgrind-out-file=%s/callgrind.%%p "%s/picomdm-gateway" "$@"\n' \
    "$OUT" "$BIN" >"$W/picomdm-gateway"
chmod +x "$W/picomdm-gateway"
RBIN=$BIN
BIN=$W gw_tls --log-level warn ${GW_ARGS:-}
BIN=$RBIN
DS=("$BIN/picomdm-devsim" --url "$URL" --ca-bundle "$PKI/ca.pem" --ca-cert "$PKI/ca.pem"
    --ca-key "$PKI/ca.key" --identity-dir "$T/ids" --devices "$N" --concurrency "$CONC"
    --seed 7300 --key-type ec --timeout-ms 60000 --log-level warn)
"${DS[@]}" --rounds 0 >"$T/enroll.out" 2>&1 || { cat "$T/enroll.out"; fail "enrollment failed"; }
cli devices --limit $((N + 10)) | awk 'NR > 1 { print $1 }' >"$T/eids"
[ "$(wc -l <"$T/eids")" -eq "$N" ] || fail "expected $N enrollments, have $(wc -l <"$T/eids")"
split -l 1000 "$T/eids" "$T/chunk."
for f in "$T"/chunk.*; do
    cli enqueue DeviceInformation --no-push --set Queries=OSVersion,LastCloudBackupDate \
        --to "$(paste -sd, "$f")" >/dev/null || fail "enqueue failed"
done
callgrind_control -z "$GW_PID" >/dev/null || fail "callgrind_control -z"
"${DS[@]}" --no-enroll --rounds 1 >"$T/session.out" 2>&1 || { cat "$T/session.out"; fail "session phase failed"; }
callgrind_control -d "$GW_PID" >/dev/null || fail "callgrind_control -d"
grep -q 'http errors 0, transport errors 0, bad replies 0' "$T/session.out" ||
    echo "WARNING: devsim saw errors: $(tail -n 1 "$T/session.out")"
reqs=$(awk '/requests, latency/ { for (i = 1; i <= NF; i++) if ($(i) ~ /^requests,/) s += $(i - 1) } END { print s + 0 }' "$T/session.out")
[ "$reqs" -gt 0 ] || fail "no requests counted: $(cat "$T/session.out")"
kill "$GW_PID"
wait "$GW_PID" 2>/dev/null
f=$(ls -t "$OUT"/callgrind.*.[0-9]* 2>/dev/null | head -1)
[ -n "$f" ] || fail "no callgrind dump in $OUT"
cp "$f" "$OUT/session.callgrind"
callgrind_annotate --inclusive=yes --auto=no --threshold=100 --show-percs=no "$f" >"$OUT/inclusive.txt" 2>/dev/null
callgrind_annotate --auto=no --threshold=100 --show-percs=no "$f" >"$OUT/self.txt" 2>/dev/null
incl() { # the inclusive count of a function (first match, summed over its objects)
    awk -v fn="$1" '$3 ~ ("^[^:]*:" fn "$") { gsub(",", "", $1); s += $1 } END { print s + 0 }' "$OUT/inclusive.txt"
}
tot=$(awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }' "$OUT/self.txt")
ecdsa=$(incl EVP_PKEY_verify)
hs=$(incl SSL_do_handshake)
echo "--- gateway under callgrind, session phase of $N devices (concurrency $CONC): $reqs device requests"
awk -v t="$tot" -v e="$ecdsa" -v h="$hs" -v r="$reqs" 'BEGIN {
    printf "instructions: %.1f M in all, %.0f per device request\n", t / 1e6, t / r
    printf "  ECDSA verification (EVP_PKEY_verify, inclusive) %.0f, TLS handshakes (SSL_do_handshake) %.0f per device request\n", e / r, h / r
    printf "  the rest: %.0f per device request\n", (t - e - h) / r }'
echo "top $TOP, inclusive, instructions per device request:"
top() { awk -v r="$reqs" -v top="$TOP" '/file:function/ { on = 1; next } on && /^ *[0-9,]+ / && n < top { c = $1; gsub(",", "", c); printf "  %9.0f %s %s\n", c / r, $3, $4; n++ }' "$1"; }
top "$OUT/inclusive.txt"
echo "top $TOP, self, instructions per device request:"
top "$OUT/self.txt"
echo "profile: $OUT/session.callgrind"
