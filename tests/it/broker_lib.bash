# Helpers for tests/it/broker_*.sh (sourced; not a test itself: the runner
# only runs *.sh). Every test gets its own temp dir for ipc endpoints and
# logs, kills everything it started on exit, and bounds every wait.
# KEEP_LOGS=1 keeps the temp dir (e.g. to read sanitizer reports).
set -u
BIN=${BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/bin}
TT=${TT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build/rel/tt}
[ -x "$BIN/picomdm-broker" ] || { echo "skip: $BIN/picomdm-broker not built (run make)"; exit 77; }
[ -x "$TT/bustest" ] || { echo "skip: $TT/bustest not built (run make)"; exit 77; }

D=$(mktemp -d /tmp/pm-broker-it.XXXXXX)
PIDS=()
REQ=ipc://$D/request
PUB=ipc://$D/publish
SUB=ipc://$D/subscribe

cleanup() {
    local rc=$?
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 0.2
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    if [ $rc != 0 ] && [ $rc != 77 ]; then
        for f in "$D"/*.log; do [ -f "$f" ] && { echo "---- $(basename "$f") (last 15 lines)"; tail -n 15 "$f"; }; done
    fi
    if [ -n "${KEEP_LOGS:-}" ]; then echo "logs kept in $D"; else rm -rf "$D"; fi
    exit $rc
}
trap cleanup EXIT

fail() { echo "FAIL: $*"; exit 1; }

# A free TCP port on 127.0.0.1 (random, checked with ss).
free_port() {
    local p
    for _ in $(seq 1 50); do
        p=$((20000 + RANDOM % 12000))
        ss -ltnH "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
    done
    fail "no free port found"
}

# start_broker LOGNAME [extra args]: broker on the test's endpoints.
start_broker() {
    local log=$1; shift
    "$BIN/picomdm-broker" --request-endpoint "$REQ" --publish-endpoint "$PUB" \
        --subscribe-endpoint "$SUB" --heartbeat-ms 200 "$@" >"$D/$log.log" 2>&1 &
    BROKER=$!
    PIDS+=("$BROKER")
    wait_log "$log" "broker .* ready" 1 20
}

# start_worker NAME [extra args]
start_worker() {
    local name=$1; shift
    "$TT/bustest" worker --endpoint "$REQ" --name "$name" --heartbeat-ms 200 "$@" \
        >"$D/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# wait_log LOGNAME REGEX COUNT SECONDS: until REGEX matched COUNT lines.
wait_log() {
    local f="$D/$1.log" i n
    for i in $(seq 1 $(($4 * 20))); do
        n=$(grep -cE "$2" "$f" 2>/dev/null)
        [ "${n:-0}" -ge "$3" ] && return 0
        sleep 0.05
    done
    fail "timed out after $4 s waiting for $3 x '$2' in $1.log"
}

# field NAME FILE: value of NAME=value on the client's summary line.
field() { grep -m1 -oE "(^| )$1=[^ ]+" "$2" | head -1 | cut -d= -f2; }
