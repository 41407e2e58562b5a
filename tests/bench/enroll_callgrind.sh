#!/bin/bash
# enroll_callgrind: user-space instructions per enrollment of picomdm-ca and
# picomdm-gateway (callgrind counts do not depend on the load of the machine,
# unlike the CPU figures of enroll_e2e.sh). `picomdm up` runs with those two
# under `valgrind --tool=callgrind` (a BIN directory of links whose named
# binaries are scripts exec'ing valgrind); one device enrolls to warm them up;
# the counters are zeroed (callgrind_control -z) once the simulator has read
# its device keys, N devices enroll from the enrollment URL (profile + SCEP +
# Authenticate + TokenUpdate, 3 TLS connections each), and the counters are
# dumped. Prints the instructions per enrollment per process and keeps the
# dumps (cg.<binary>.<pid>.1) for callgrind_annotate, in OUTDIR (default a new
# /tmp/enroll_cg.XXXXXX, kept and named at the end; earlier dumps in a reused
# OUTDIR are removed first):
#   ENROLL_BENCH_KEYS=/tmp/ekeys tests/bench/enroll_callgrind.sh [OUTDIR]
#   callgrind_annotate --inclusive=yes OUTDIR/cg.picomdm-ca.*.1 | head -60
# ENROLL_CG_N (50 enrollments), ENROLL_CG_CONC (8 at once),
# ENROLL_CG_BINS ("picomdm-ca picomdm-gateway"), BIN (the binaries to run).
set -u
cd "$(dirname "$0")/../.." || exit 1
SRC_BIN=${BIN:-$PWD/bin}
OUT=${1:-$(mktemp -d /tmp/enroll_cg.XXXXXX)}
mkdir -p "$OUT" && rm -f "$OUT"/cg.*
N=${ENROLL_CG_N:-50}
CONC=${ENROLL_CG_CONC:-8}
KEYS=${ENROLL_BENCH_KEYS:-$OUT/keys}
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
    { echo "enroll_callgrind: valgrind (callgrind_control) is needed"; exit 1; }
. tests/it/common.inc
mkdir -p "$OUT/bin" "$OUT/t"
for f in "$SRC_BIN"/*; do ln -sf "$f" "$OUT/bin/$(basename "$f")"; done
for b in ${ENROLL_CG_BINS:-picomdm-ca picomdm-gateway}; do
    rm -f "$OUT/bin/$b"
    printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s/cg.%s.%%p "%s/%s" "$@"\n' \
        "$OUT" "$b" "$SRC_BIN" "$b" >"$OUT/bin/$b"
    chmod +x "$OUT/bin/$b"
done
T=$OUT/t
UP_PID=
DS=
cleanup() {
    [ -n "$DS" ] && kill -TERM "$DS" 2>/dev/null
    [ -n "$UP_PID" ] && kill -TERM "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null
}
trap cleanup EXIT
PORT=$(free_port) || { echo "no free port found"; exit 1; }
PICOMDM_ENROLL_BASIC_AUTH= up_enroll_server "$OUT/bin" 10000 120 --log-level warn ||
    { echo "the server did not come up:"; tail -20 "$T/up.log"; exit 1; }
sim() { # $1 devices, $2 concurrency, $3 seed, then more options
    local n=$1 c=$2 seed=$3
    shift 3
    "$OUT/bin/picomdm-devsim" --enroll-url "$URL/mdm/enroll" --ca-bundle "$TLS" --devices "$n" \
        --concurrency "$c" --enroll-connections device --rounds 0 --timeout-ms 60000 \
        --seed "$seed" --key-dir "$KEYS" "$@"
}
sim 1 1 7000 >"$T/warm.out" 2>&1 || { echo "the warm-up enrollment failed:"; tail -5 "$T/warm.out"; exit 1; }
cg_pids() { pgrep -f "valgrind.*callgrind-out-file=$OUT/cg\\."; }
sim "$N" "$CONC" 9000 --go-file "$T/go" >"$T/ds.out" 2>"$T/ds.err" &
DS=$!
n=0; while ! grep -qs "device keys" "$T/ds.out" && kill -0 $DS 2>/dev/null && [ $n -lt 12000 ]; do sleep 0.05; n=$((n + 1)); done
for p in $(cg_pids); do callgrind_control -z "$p" >/dev/null 2>&1; done
touch "$T/go"
wait $DS
rc=$?
DS=
for p in $(cg_pids); do callgrind_control -d "$p" >/dev/null 2>&1; done
[ $rc = 0 ] || { echo "devsim exited $rc:"; tail -5 "$T/ds.err"; exit 1; }
grep -E "^enroll " "$T/ds.out" | sed 's/^/  /'
echo "enroll_callgrind: user-space instructions per enrollment ($N enrollments, $CONC at once; dumps in $OUT)"
for f in "$OUT"/cg.*.1; do
    total=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
    name=$(basename "$f" | cut -d. -f2)
    printf '  %-18s %12s instructions = %9d per enrollment\n' "$name" "$total" $((total / N))
done
