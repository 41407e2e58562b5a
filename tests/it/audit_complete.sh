#!/bin/bash
# audit_complete — `picomdm audit` keeps a complete, ordered copy of the
# store's event log whatever happens to it: events while it is stopped
# (SIGTERM) or killed (-9, plus a torn last line), a burst while it is frozen
# (SIGSTOP: high-water-mark drops on the broker), a broker restart, and a
# SIGHUP rotation (mv + SIGHUP: the new file continues with no gap or
# duplicate). Checked against the store's database (sqlite3: every seq exactly
# once, in order, same name/eid/source) and against a fresh replay-only audit
# of the same log (same lines, `ts` aside: see docs/audit.md).
BIN=${BIN:-$PWD/bin}
TT=${TT:-$PWD/build/rel/tt}
for p in "$BIN/picomdm" "$BIN/picomdm-store" "$BIN/picomdm-scheduler" "$TT/queuedrv"; do
    [ -x "$p" ] || { echo "needs $p (not built yet)"; exit 77; }
done
command -v sqlite3 >/dev/null || { echo "needs the sqlite3 command (apt-get install sqlite3)"; exit 77; }
. "$(dirname "$0")/queue_lib.bash"

AF=$D/audit.jsonl
AUDIT_PID=
# --poll-ms 60000: no periodic catch-up during the test, so what is filled is
# filled by the start-up replay or by a gap seen in the live sequence
start_audit() { # FILE
    "$BIN/picomdm" audit --file "$1" --request-endpoint "$REQ" --subscribe-endpoint "$SUB" \
        --poll-ms 60000 --timeout 2000 --log-level info >>"$D/audit.log" 2>&1 &
    AUDIT_PID=$!; PIDS+=($!)
}
db() { sqlite3 -cmd ".timeout 2000" "$D/data/picomdm.db" "$@"; }
db_max() { db "SELECT IFNULL(MAX(seq),0) FROM events;"; }
last_seq() { [ -s "$1" ] && tail -n 1 "$1" | sed -n 's/^{"seq":\([0-9]*\),.*/\1/p' || echo 0; }
# caught_up FILE: the file's last line is the log's last event (bounded wait)
caught_up() {
    local want i
    for ((i = 0; i < 150; i++)); do
        want=$(db_max)
        [ "$want" -gt 0 ] && [ "$(last_seq "$1")" = "$want" ] && return 0
        sleep 0.1
    done
    fail "$1 stops at seq $(last_seq "$1"), the store's log at $(db_max)"
}
# synced FILE SECONDS: the file's last line is the log's last event within SECONDS (0/1)
synced() {
    local want i
    for ((i = 0; i < $2 * 10; i++)); do
        want=$(db_max)
        [ "$want" -gt 0 ] && [ "$(last_seq "$1")" = "$want" ] && return 0
        sleep 0.1
    done
    return 1
}
stop_audit() { # SIGNAL
    kill -"$1" "$AUDIT_PID"
    for _ in $(seq 200); do kill -0 "$AUDIT_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$AUDIT_PID" 2>/dev/null && fail "audit did not stop on SIG$1 within 20 s"
    wait "$AUDIT_PID" 2>/dev/null
}
events() { # PREFIX: enroll 2 devices, queue a command for them, answer it
    drv enroll --n 2 --prefix "$1" >"$D/drv.out" 2>&1 || fail "enroll $1: $(cat "$D/drv.out")"
    drv enqueue --n 2 --prefix "$1" >"$D/drv.out" 2>&1 || fail "enqueue $1: $(cat "$D/drv.out")"
    local u; u=$(field uuid "$D/drv.out")
    drv sessions --n 2 --prefix "$1" --uuid "$u" >"$D/drv.out" 2>&1 || fail "sessions $1: $(cat "$D/drv.out")"
}

start_all
start_audit "$AF"
events a-
caught_up "$AF"
n1=$(db_max)
[ "$n1" -ge 8 ] || fail "only $n1 events for 2 enrollments, an enqueue and 2 answers"

# SIGTERM, events while stopped, restart: resumes from its last line
stop_audit TERM
grep -q "audit stopped at seq $n1" "$D/audit.log" || fail "no clean stop line at seq $n1"
events b-
start_audit "$AF"
caught_up "$AF"

# kill -9, events while dead, and a torn last line (as a crash mid-write leaves)
stop_audit KILL
events c-
printf '{"seq":%d,"ts":1,"name":"torn' "$(($(last_seq "$AF") + 1))" >>"$AF"
start_audit "$AF"
caught_up "$AF"
grep -q "torn line" "$D/audit.log" || fail "the torn line was not reported"

# frozen auditor during a burst: the broker drops what exceeds its high-water mark
kill -STOP "$AUDIT_PID"
drv enroll --n 1 --prefix burst- >/dev/null 2>&1 || fail "enroll burst-"
drv enqueue-many --eid burst-0 --count 1500 --log "$D/burst.log" >"$D/drv.out" 2>&1 || fail "burst: $(cat "$D/drv.out")"
kill -CONT "$AUDIT_PID"
caught_up "$AF"

# broker restart while the auditor is frozen: the events published meanwhile
# never reach it (no subscription on the new broker); the next live event
# shows the gap and the auditor fills it from the store
before_d=$(last_seq "$AF")
kill -STOP "$AUDIT_PID"
kill -9 "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null
start_broker
wait_log store "serving 'store'" 1 10
events d-
kill -CONT "$AUDIT_PID"
# its SUB socket reconnects to the new broker and subscribes again some time
# after this (no event says when): more events until it has caught up, bounded
for i in $(seq 10); do
    events "d2$i-"
    synced "$AF" 3 && break
done
caught_up "$AF"
grep -q "^I.*gap: got seq [0-9]* after $before_d;" "$D/audit.log" ||
    fail "no gap reported by the auditor after the broker restart"

# rotation: mv + SIGHUP; the new file starts exactly after the old one
before=$(last_seq "$AF")
mv "$AF" "$AF.1"
kill -HUP "$AUDIT_PID"
for _ in $(seq 200); do [ -e "$AF" ] && break; sleep 0.1; done
[ -e "$AF" ] || fail "SIGHUP did not reopen $AF"
events e-
caught_up "$AF"
first=$(head -n 1 "$AF" | sed -n 's/^{"seq":\([0-9]*\),.*/\1/p')
[ "$first" = "$((before + 1))" ] || fail "after rotation the new file starts at seq $first, want $((before + 1))"
[ "$(last_seq "$AF.1")" = "$before" ] || fail "the rotated file grew after SIGHUP"
stop_audit TERM

# the whole story: old file + new file == the store's log, every seq once, in order
cat "$AF.1" "$AF" >"$D/all.jsonl"
total=$(db_max)
[ "$(wc -l <"$D/all.jsonl")" = "$total" ] || fail "$(wc -l <"$D/all.jsonl") lines for $total events"
db -separator '|' "SELECT seq, name, IFNULL(eid,''), IFNULL(source,'store') FROM events ORDER BY seq" >"$D/db.txt"
python3 - "$D/all.jsonl" "$D/db.txt" <<'EOF' || fail "the audit file differs from the store's log"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
rows = [l.rstrip("\n").split("|") for l in open(sys.argv[2])]
assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1)), "seq not 1..n in order"
assert len(rows) == len(lines), (len(rows), len(lines))
for e, r in zip(lines, rows):
    got = [str(e["seq"]), e["name"], e.get("eid", ""), e["source"]]
    assert got == r, (got, r)
    assert isinstance(e["data"], dict) and isinstance(e["ts"], int) and e["ts"] > 0, e
EOF

# and the content (data included) equals a replay-only audit of the same log
start_audit "$D/replay.jsonl"
caught_up "$D/replay.jsonl"
stop_audit TERM
strip_ts() { sed 's/^\({"seq":[0-9]*\),"ts":[0-9]*,/\1,/' "$1"; }
cmp <(strip_ts "$D/all.jsonl") <(strip_ts "$D/replay.jsonl") >/dev/null ||
    fail "live and replayed lines differ: $(diff <(strip_ts "$D/all.jsonl") <(strip_ts "$D/replay.jsonl") | head -n 4)"
echo "ok: $total events audited, every seq once, in order"
exit 0
