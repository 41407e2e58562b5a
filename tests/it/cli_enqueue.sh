#!/bin/bash
# cli_enqueue — the picomdm CLI against the real broker, store and scheduler
# (started with `picomdm up --only broker,store,scheduler`): enrollments made
# by check-in messages (queuedrv, as the gateway would send them) show in
# `devices`; `enqueue DeviceInformation --set Queries=LastCloudBackupDate`
# prints a CommandUUID that `queue` shows; `cancel` removes it for one target
# and not the other; a device's answer shows in `results`; bad input exits 2
# (usage) or 1 (the scheduler refused), an unreachable bus exits 3.
set -u
BIN=${BIN:-$PWD/bin}
TT=${TT:-$PWD/build/rel/tt}
for p in "$BIN/picomdm" "$BIN/picomdm-broker" "$BIN/picomdm-store" "$BIN/picomdm-scheduler" "$TT/queuedrv"; do
    [ -x "$p" ] || { echo "needs $p (not built yet)"; exit 77; }
done
T=$(mktemp -d /tmp/cli_enqueue.XXXXXX)
UP_PID=
cleanup() {
    if [ -n "$UP_PID" ]; then
        kill -TERM "$UP_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$UP_PID" 2>/dev/null
    fi
    for f in "$T"/var/run/*.pid; do [ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "--- up log:"; tail -n 30 "$T/up.log"; exit 1; }
. "$(dirname "$0")/common.inc"
# run EXPECTED_RC CMD...: run picomdm, keep stdout/stderr in $out/$err, check the exit code
run() {
    local want=$1; shift
    "$BIN/picomdm" "$@" >"$T/out" 2>"$T/err"; rc=$?
    out=$(cat "$T/out"); err=$(cat "$T/err")
    [ "$rc" = "$want" ] || fail "picomdm $*: exit $rc, want $want; stdout: $out; stderr: $err"
}

"$BIN/picomdm" up --data-dir "$T/var" --only broker,store,scheduler --stop-timeout 5000 >"$T/up.log" 2>&1 &
UP_PID=$!
export PICOMDM_CONFIG=$T/var/run/picomdm.cfg
wait_for 15 "$BIN/picomdm" devices --timeout 500 --retries 0 >/dev/null 2>&1 || fail "the scheduler does not answer"
EP=$(sed -n 's/^request-endpoint = "\(.*\)"$/\1/p' "$PICOMDM_CONFIG")
[ -n "$EP" ] || fail "no request-endpoint in $PICOMDM_CONFIG"

# enrollments, by Authenticate + TokenUpdate check-ins
P=cli-$$-
"$TT/queuedrv" enroll --request-endpoint "$EP" --n 2 --prefix "$P" >"$T/enroll.log" 2>&1 || fail "queuedrv enroll: $(cat "$T/enroll.log")"
run 0 devices
grep -q "^${P}0 " <<<"$out" && grep -q "^${P}1 " <<<"$out" || fail "devices does not list ${P}0 and ${P}1: $out"
run 0 devices --json
[ "$(grep -c "\"eid\":\"$P" <<<"$out")" = 2 ] || fail "devices --json: want 2 lines for $P: $out"

# enqueue: prints the CommandUUID; queue shows it for both targets
run 0 enqueue DeviceInformation --set Queries=LastCloudBackupDate --to "${P}0" "${P}1" --no-push
uuid=$out
[[ $uuid =~ ^[0-9A-Fa-f-]{36}$ ]] || fail "enqueue printed '$uuid', not a CommandUUID"
grep -q "queued DeviceInformation for 2 enrollment" <<<"$err" || fail "enqueue summary: $err"
for i in 0 1; do
    run 0 queue "${P}$i"
    grep -q "^$uuid  DeviceInformation" <<<"$out" || fail "queue ${P}$i does not show $uuid: $out"
done
run 0 queue "${P}0" --json
python3 -c 'import json,sys; d=json.loads(sys.stdin.readline()); assert d["command_uuid"]==sys.argv[1] and d["request_type"]=="DeviceInformation", d' "$uuid" <<<"$out" || fail "queue --json: $out"

# cancel for one target only: gone there, still queued for the other
run 0 cancel "$uuid" --to "${P}0"
[ "$out" = "cancelled 1 queue entry" ] || fail "cancel said: $out"
run 0 queue "${P}0"
grep -q "$uuid" <<<"$out" && fail "cancelled command still queued for ${P}0: $out"
run 0 queue "${P}1"
grep -q "$uuid" <<<"$out" || fail "cancel --to ${P}0 also removed it for ${P}1"
run 1 cancel "$uuid" --to "${P}0"
grep -q "nothing to cancel" <<<"$err" || fail "second cancel: $err"

# a device answers (queuedrv plays the device: Idle -> the command -> Acknowledged)
Q=clir-$$-
"$TT/queuedrv" enroll --request-endpoint "$EP" --n 1 --prefix "$Q" >/dev/null 2>&1 || fail "enroll $Q"
run 0 enqueue DeviceInformation --set Queries=UDID,OSVersion --to "${Q}0" --no-push
uuid2=$out
"$TT/queuedrv" sessions --request-endpoint "$EP" --n 1 --prefix "$Q" --uuid "$uuid2" >"$T/sessions.log" 2>&1 || fail "queuedrv sessions: $(cat "$T/sessions.log")"
run 0 results "$uuid2"
grep -q "^DeviceInformation $uuid2  Acknowledged  on ${Q}0" <<<"$out" || fail "results $uuid2: $out"
run 0 results "${Q}0" --json
grep -q "\"command_uuid\":\"$uuid2\"" <<<"$out" || fail "results by enrollment --json: $out"

# watch: the command.queued event of the next enqueue, as one JSON line
timeout 40 "$BIN/picomdm" watch command. --count 1 >"$T/watch.out" 2>"$T/watch.err" &
WATCH=$!
wait_for 15 grep -q "watching events" "$T/watch.err" || fail "watch did not start: $(cat "$T/watch.err")"
# the subscription reaches the broker some time after that (slow joiner; no
# event says when): enqueue again each second until watch has printed one,
# bounded; what it printed must be one of these enqueues
uuids=
for _ in $(seq 20); do
    run 0 enqueue DeviceInformation --set Queries=UDID --to "${P}1" --no-push
    uuids="$uuids $out"
    wait_for 1 eval '! kill -0 "$WATCH" 2>/dev/null' && break
done
wait "$WATCH"; rc=$?
[ $rc = 0 ] || fail "watch exited $rc after $(wc -w <<<"$uuids") enqueues: $(cat "$T/watch.err")"
python3 -c 'import json,sys; d=json.loads(open(sys.argv[1]).readline()); b=d["body"]; assert b["name"]=="command.queued" and b["data"]["command_uuid"] in sys.argv[2].split(), d' "$T/watch.out" "$uuids" || fail "watch printed: $(cat "$T/watch.out") (enqueued:$uuids)"

# bad input: usage errors exit 2, refused requests exit 1, no bus exits 3
run 2 enqueue DeviceInfo --to "${P}0"
grep -q "did you mean DeviceInformation" <<<"$err" || fail "no suggestion: $err"
run 2 enqueue DeviceLock --set Pin=123456 --to "${P}0"
grep -q "DeviceLock has no key 'Pin'; did you mean PIN? Valid keys: Message, PhoneNumber, PIN" <<<"$err" || fail "unknown key message: $err"
run 2 enqueue DeviceInformation --to "${P}0"
grep -q "missing required key Queries" <<<"$err" || fail "missing key message: $err"
run 2 enqueue DeviceInformation --set Queries=LastCloudBackupDate
grep -q "needs at least one target" <<<"$err" || fail "missing --to message: $err"
run 2 enqueue EraseDevice --set ObliterationBehavior=Never --to "${P}0"
grep -q "'Never' is not an allowed value" <<<"$err" || fail "allowed values: $err"
run 2 enqueue DeviceInformation --set Queries=UDID --to "${P}0" --ttl soon
run 1 enqueue DeviceInformation --set Queries=UDID --to "no-such-device-$$" --no-push
[ -n "$err" ] || fail "unknown target: no message"
run 3 devices --request-endpoint "ipc://$T/nobody.sock" --timeout 300 --retries 0
grep -q "no reply" <<<"$err" || fail "unreachable bus message: $err"

# stop: up exits 0
kill -TERM "$UP_PID"; wait "$UP_PID"; rc=$?; UP_PID=
[ $rc = 0 ] || fail "picomdm up exited $rc"
echo "ok"
exit 0
